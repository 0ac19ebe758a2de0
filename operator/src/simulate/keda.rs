//! KEDA's Kafka scaler under the Horizontal Pod Autoscaler's defaults, as
//! the baseline `weir simulate` compares with.
//!
//! KEDA's `kafka` trigger reports the group's total lag as an external
//! metric with an `AverageValue` target of `lagThreshold` per replica; with
//! `allowIdleConsumers: false` (the default) the metric is capped at
//! `partitions * lagThreshold`, so replicas never exceed the partitions
//! (kedacore/keda `pkg/scalers/kafka_scaler.go`, `getTotalLag`;
//! <https://keda.sh/docs/latest/scalers/apache-kafka/>). The HPA, every 15 s
//! (`--horizontal-pod-autoscaler-sync-period`), turns it into replicas
//! (kubernetes `pkg/controller/podautoscaler/replica_calculator.go`,
//! `GetExternalPerPodMetricReplicas`): `usageRatio = metric / (target *
//! current)`; outside the 0.1 tolerance, `desired = ceil(metric / target)`.
//! A scale-down takes the highest recommendation of the last 300 s (the
//! downscale stabilization window); a scale-up is not stabilized and is
//! limited to `max(2 * current, 4)` per sync, the rate of an HPA without
//! `behavior`, which is what KEDA creates unless the ScaledObject sets one
//! (`horizontal.go`, `normalizeDesiredReplicas` and
//! `calculateScaleUpLimit`). `activationLagThreshold` only decides between 0
//! and 1 replica: with `minReplicaCount` 1, as here, it never applies.

use std::collections::VecDeque;

use super::model::{Job, Scaler};

/// The HPA's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const HPA_TOLERANCE: f64 = 0.1;
/// The HPA's default sync period, in seconds.
pub const HPA_SYNC_SECS: u64 = 15;
/// The HPA's default downscale stabilization window, in seconds.
pub const HPA_SCALE_DOWN_WINDOW_SECS: u64 = 300;
/// KEDA's default `lagThreshold`, for reference: at 10 events of lag per
/// replica any real backlog asks for every partition.
pub const KEDA_DEFAULT_LAG_THRESHOLD: u64 = 10;

/// A ScaledObject with one `kafka` trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct KedaConfig {
    /// `lagThreshold`: target lag per replica.
    pub lag_threshold: u64,
    /// `minReplicaCount`.
    pub min_replicas: i32,
    /// `maxReplicaCount`.
    pub max_replicas: i32,
    /// Partitions of the topic (the metric's cap without idle consumers).
    pub partitions: i32,
}

/// The metric KEDA's Kafka scaler reports for `total_lag`: the lag, capped
/// so that `metric / lagThreshold` never exceeds the partition count.
pub fn kafka_metric(total_lag: u64, lag_threshold: u64, partitions: i32) -> u64 {
    let threshold = lag_threshold.max(1);
    let partitions = u64::try_from(partitions.max(1)).unwrap_or(1);
    if total_lag / threshold > partitions {
        partitions * threshold
    } else {
        total_lag
    }
}

/// The replicas the HPA computes for an external metric with an
/// `AverageValue` target, before stabilization and rate limits.
pub fn hpa_replicas(current: i32, metric: u64, target: u64) -> i32 {
    let target = target.max(1) as f64;
    let usage_ratio = metric as f64 / (target * f64::from(current.max(1)));
    if (1.0 - usage_ratio).abs() > HPA_TOLERANCE {
        (metric as f64 / target).ceil() as i32
    } else {
        current
    }
}

/// The HPA of one ScaledObject: its configuration and the recommendations
/// of the stabilization window.
#[derive(Clone, Debug)]
pub struct Hpa {
    config: KedaConfig,
    recommendations: VecDeque<(u64, i32)>,
}

impl Hpa {
    /// An HPA with no history.
    pub fn new(config: KedaConfig) -> Self {
        Self {
            config,
            recommendations: VecDeque::new(),
        }
    }

    /// One sync at `now_secs`: the replicas to run given `current` replicas
    /// and the group's `total_lag`.
    pub fn sync(&mut self, now_secs: u64, current: i32, total_lag: u64) -> i32 {
        let config = &self.config;
        let metric = kafka_metric(total_lag, config.lag_threshold, config.partitions);
        let desired = hpa_replicas(current, metric, config.lag_threshold);
        // Stabilization: the highest recommendation within the window
        // (this one included) wins, so scale-downs wait for it.
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| at + HPA_SCALE_DOWN_WINDOW_SECS <= now_secs)
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now_secs, desired));
        let stabilized = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(desired);
        let scale_up_limit = (2 * current).max(4);
        let max = config.max_replicas.min(scale_up_limit);
        stabilized.min(max).max(config.min_replicas)
    }
}

/// KEDA and the HPA over a simulated job: a sync every
/// [`HPA_SYNC_SECS`], whether or not the job is rebalancing.
#[derive(Clone, Debug)]
pub struct KedaScaler {
    hpa: Hpa,
}

impl KedaScaler {
    /// The scaler of a ScaledObject configured as `config`.
    pub fn new(config: KedaConfig) -> Self {
        Self {
            hpa: Hpa::new(config),
        }
    }
}

impl Scaler for KedaScaler {
    fn after_tick(&mut self, now_secs: u64, job: &Job) -> Option<i32> {
        now_secs
            .is_multiple_of(HPA_SYNC_SECS)
            .then(|| self.hpa.sync(now_secs, job.parallelism(), job.lag()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KedaConfig {
        KedaConfig {
            lag_threshold: 10_000,
            min_replicas: 1,
            max_replicas: 12,
            partitions: 12,
        }
    }

    #[test]
    fn the_metric_is_capped_at_partitions_times_the_threshold() {
        assert_eq!(kafka_metric(45_000, 10_000, 12), 45_000);
        assert_eq!(kafka_metric(129_999, 10_000, 12), 129_999);
        assert_eq!(kafka_metric(130_000, 10_000, 12), 120_000);
        assert_eq!(kafka_metric(5_000_000, 10, 12), 120);
    }

    #[test]
    fn hpa_arithmetic_on_hand_computed_cases() {
        // 3 replicas, lag 45k, 10k per replica: ratio 1.5, ceil(4.5) = 5.
        assert_eq!(hpa_replicas(3, 45_000, 10_000), 5);
        // 4 replicas, lag 43k: ratio 1.075 is within the tolerance.
        assert_eq!(hpa_replicas(4, 43_000, 10_000), 4);
        // 4 replicas, lag 45k: ratio 1.125 is not; ceil(4.5) = 5.
        assert_eq!(hpa_replicas(4, 45_000, 10_000), 5);
        // No lag asks for no replica (minReplicaCount then applies).
        assert_eq!(hpa_replicas(6, 0, 10_000), 0);
    }

    #[test]
    fn scale_up_is_limited_to_doubling_or_four_per_sync() {
        let mut hpa = Hpa::new(config());
        // Lag worth 12 replicas: 1 -> 4 -> 8 -> 12, one sync apart.
        assert_eq!(hpa.sync(15, 1, 500_000), 4);
        assert_eq!(hpa.sync(30, 4, 500_000), 8);
        assert_eq!(hpa.sync(45, 8, 500_000), 12);
    }

    #[test]
    fn scale_down_waits_for_the_highest_recommendation_of_five_minutes() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.sync(0, 6, 60_000), 6);
        // The lag is gone: 0 replicas wanted, but 6 was wanted within 300 s.
        for now in (15..300).step_by(15) {
            assert_eq!(hpa.sync(now, 6, 0), 6, "at {now}s");
        }
        // The recommendation of second 0 leaves the window; minReplicaCount.
        assert_eq!(hpa.sync(300, 6, 0), 1);
    }
}

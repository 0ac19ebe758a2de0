//! The autoscaler's decision: a pure function of the job's autoscaler policy,
//! its current parallelism and the samples observed over time. No clock, no
//! I/O: the controller (or local mode) gathers [`Sample`]s from Kafka and the
//! workers and asks [`Autoscaler::decide`] what to do.
//!
//! The rule, per DESIGN.md:
//! `ceil((inputRate + lag / catchUpDuration) / (truePerWorkerRate * targetUtilization))`,
//! clamped to `[min, min(max, partitions)]`, then raised to the next
//! parallelism that spreads tasks evenly. The true per-worker rate is the
//! processing rate divided by the busy ratio (what a worker would do at 100%
//! busy). Before any worker reports a busy ratio the fallback is KEDA's rule,
//! `ceil(lag / lagThreshold)`. Scale-up waits for the cooldown since the last
//! rescale; scale-down happens only when every recommendation over the
//! stabilization window was lower than the current parallelism, and then to
//! the highest of them (as the Horizontal Pod Autoscaler does).

use std::collections::VecDeque;

use weir_crds::job::AutoscalerSpec;

/// Relative change of the required capacity below which the autoscaler keeps
/// the current parallelism (as the HPA's 10% tolerance), so that noise does
/// not cause rescales.
pub const TOLERANCE: f64 = 0.1;

/// What was observed of a job at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Sum over the source partitions of the high watermarks (the next offset
    /// to be written): its growth is the input rate.
    pub high_watermarks: i64,
    /// Total lag of the job's group: high watermarks minus committed offsets.
    pub lag: i64,
    /// Records processed by all workers since they started, when they report
    /// it (summed over workers; restarts are detected as decreases).
    pub processed: Option<u64>,
    /// Mean busy ratio of the workers (share of wall time spent processing
    /// rather than waiting for input), when they report one.
    pub busy_ratio: Option<f64>,
    /// Parallelism of the job when sampled.
    pub parallelism: i32,
}

/// The autoscaler's settings for one job, from its spec and its topics.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Lowest parallelism.
    pub min: i32,
    /// Highest parallelism (already capped by the partition count).
    pub max: i32,
    /// Partitions of the source topics: the number of tasks.
    pub partitions: i32,
    /// Share of a worker's capacity to aim for.
    pub target_utilization: f64,
    /// Time in which accumulated lag should be worked off, in seconds.
    pub catch_up_secs: f64,
    /// Minimum time between a rescale and a scale-up, in milliseconds.
    pub scale_up_cooldown_ms: i64,
    /// Time over which every recommendation must be lower before a
    /// scale-down, in milliseconds.
    pub scale_down_window_ms: i64,
    /// Time over which rates are averaged, in milliseconds.
    pub metrics_window_ms: i64,
    /// Lag per worker the fallback rule tolerates.
    pub lag_threshold: i64,
}

impl Policy {
    /// The policy of a job's autoscaler spec for source topics with
    /// `partitions` partitions each.
    pub fn new(spec: &AutoscalerSpec, partitions: i32) -> Self {
        let partitions = partitions.max(1);
        let max = spec
            .max_parallelism
            .unwrap_or(partitions)
            .min(partitions)
            .max(1);
        Self {
            min: spec.min_parallelism.clamp(1, max),
            max,
            partitions,
            target_utilization: spec.target_utilization,
            catch_up_secs: spec.catch_up_duration.as_std().as_secs_f64().max(1e-3),
            scale_up_cooldown_ms: spec.scale_up_cooldown.as_millis(),
            scale_down_window_ms: spec.scale_down_stabilization_window.as_millis(),
            metrics_window_ms: spec.metrics_window.as_millis().max(1),
            lag_threshold: spec.lag_threshold.max(1),
        }
    }

    /// The smallest parallelism of at least `wanted` that gives no worker
    /// more tasks than needed: with 12 tasks, 5 workers would leave some with
    /// 3 tasks, no faster than 4 workers, so a need for 5 becomes 6. Within
    /// `[min, max]`, where `max` itself is lowered to an even spread.
    pub fn even_parallelism(&self, wanted: i32) -> i32 {
        let spread = |p: i32| {
            let tasks_per_worker = (self.partitions + p - 1) / p;
            (self.partitions + tasks_per_worker - 1) / tasks_per_worker
        };
        let max = spread(self.max);
        let wanted = wanted.clamp(self.min, self.max);
        // The fewest tasks per worker that still gives `wanted` workers'
        // worth of capacity, and the fewest workers that achieves it.
        let tasks_per_worker = (self.partitions / wanted).max(1);
        let even = (self.partitions + tasks_per_worker - 1) / tasks_per_worker;
        even.clamp(self.min, max.max(self.min))
    }
}

/// The rates derived from the samples of the metrics window.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Records per second arriving on the source topics.
    pub input_rate: f64,
    /// Records per second the workers process (all workers).
    pub processing_rate: Option<f64>,
    /// Mean busy ratio over the window.
    pub busy_ratio: Option<f64>,
    /// Records per second one worker would process at 100% busy.
    pub per_worker_rate: Option<f64>,
    /// The newest lag.
    pub lag: i64,
}

/// What the autoscaler computed from the samples, before cooldowns and
/// stabilization.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// When it was computed (the newest sample's time).
    pub at_ms: i64,
    /// The parallelism the numbers call for.
    pub parallelism: i32,
    /// The rates behind it.
    pub rates: Rates,
    /// The numbers in words, for events and status.scalingHistory.
    pub reason: String,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Keep the current parallelism.
    Keep {
        /// Why, in words.
        reason: String,
    },
    /// Rescale to `to` (a savepoint, a restart and a restore).
    Rescale {
        /// The new parallelism.
        to: i32,
        /// The recommendation behind it.
        recommendation: Recommendation,
    },
}

/// The autoscaler of one job: its policy and the recent samples and
/// recommendations it keeps to average rates and stabilize scale-downs.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    policy: Policy,
    samples: VecDeque<Sample>,
    recommendations: VecDeque<(i64, i32)>,
}

impl Autoscaler {
    /// An autoscaler with no history.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            samples: VecDeque::new(),
            recommendations: VecDeque::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Records a sample; samples older than the metrics window (and those of
    /// another parallelism, whose rates no longer apply) are dropped.
    pub fn observe(&mut self, sample: Sample) {
        if let Some(last) = self.samples.back() {
            if sample.at_ms <= last.at_ms {
                return;
            }
            if sample.parallelism != last.parallelism {
                self.samples.clear();
            }
        }
        let horizon = sample.at_ms - self.policy.metrics_window_ms;
        self.samples.push_back(sample);
        while self.samples.len() > 2 && self.samples[1].at_ms <= horizon {
            self.samples.pop_front();
        }
    }

    /// The rates over the metrics window, once two samples span some time.
    pub fn rates(&self) -> Option<Rates> {
        let first = self.samples.front()?;
        let last = self.samples.back()?;
        let seconds = (last.at_ms - first.at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return None;
        }
        let average_input = (last.high_watermarks - first.high_watermarks).max(0) as f64 / seconds;
        // Lag that grew over each of the last two intervals means the input
        // now outruns the job: the newest interval's rate is the load to
        // plan for, where the window average would still mix in the load
        // before a step and scale up in a staircase. Without growing lag,
        // the window average smooths noise.
        let n = self.samples.len();
        let input_rate = if n >= 3
            && self.samples[n - 1].lag > self.samples[n - 2].lag
            && self.samples[n - 2].lag > self.samples[n - 3].lag
        {
            let (a, b) = (&self.samples[n - 2], &self.samples[n - 1]);
            let newest = (b.high_watermarks - a.high_watermarks).max(0) as f64
                / ((b.at_ms - a.at_ms) as f64 / 1000.0);
            newest.max(average_input)
        } else {
            average_input
        };
        let processing_rate = match (first.processed, last.processed) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / seconds),
            _ => None,
        };
        let busy: Vec<f64> = self.samples.iter().filter_map(|s| s.busy_ratio).collect();
        let busy_ratio = (!busy.is_empty()).then(|| busy.iter().sum::<f64>() / busy.len() as f64);
        let per_worker_rate = match (processing_rate, busy_ratio) {
            // A worker busy less than 1% of the time tells nothing of its capacity.
            (Some(rate), Some(busy)) if busy >= 0.01 && rate > 0.0 => {
                Some(rate / busy / f64::from(last.parallelism.max(1)))
            }
            _ => None,
        };
        Some(Rates {
            input_rate,
            processing_rate,
            busy_ratio,
            per_worker_rate,
            lag: last.lag,
        })
    }

    /// The parallelism the current numbers call for.
    pub fn recommend(&self) -> Option<Recommendation> {
        let rates = self.rates()?;
        let last = self.samples.back()?;
        let policy = &self.policy;
        let current = last.parallelism;
        let (wanted, reason) = match rates.per_worker_rate {
            Some(per_worker) => {
                let needed = rates.input_rate + rates.lag as f64 / policy.catch_up_secs;
                let capacity = per_worker * policy.target_utilization;
                let exact = needed / capacity;
                // Within the tolerance of the current parallelism, keep it.
                let wanted = if (exact / f64::from(current) - 1.0).abs() <= TOLERANCE {
                    current
                } else {
                    // Rates are ratios of measured counts: 2.0000000001
                    // workers is two workers, not three.
                    (exact - 1e-6).ceil() as i32
                };
                let reason = format!(
                    "input {:.0}/s + lag {} over {:.0}s = {:.0}/s needed; one worker does {:.0}/s at 100% busy, {:.0}/s at the {:.0}% target: {:.2} workers",
                    rates.input_rate,
                    rates.lag,
                    policy.catch_up_secs,
                    needed,
                    per_worker,
                    capacity,
                    policy.target_utilization * 100.0,
                    exact
                );
                (wanted, reason)
            }
            None => {
                let wanted = ((rates.lag + policy.lag_threshold - 1) / policy.lag_threshold) as i32;
                let reason = format!(
                    "no busy ratio yet: lag {} at {} per worker calls for {} workers",
                    rates.lag, policy.lag_threshold, wanted
                );
                (wanted, reason)
            }
        };
        let parallelism = policy.even_parallelism(wanted.max(1));
        let reason = if parallelism == wanted {
            reason
        } else {
            format!(
                "{reason}; {parallelism} spreads {} tasks evenly within [{}, {}]",
                policy.partitions, policy.min, policy.max
            )
        };
        Some(Recommendation {
            at_ms: last.at_ms,
            parallelism,
            rates,
            reason,
        })
    }

    /// Decides whether to rescale now. `current` is the running parallelism
    /// and `last_rescale_ms` when the job last changed parallelism (or
    /// started). Every call records its recommendation for the
    /// scale-down stabilization window.
    pub fn decide(&mut self, current: i32, last_rescale_ms: i64) -> Decision {
        let Some(recommendation) = self.recommend() else {
            return Decision::Keep {
                reason: "not enough samples yet".into(),
            };
        };
        let now = recommendation.at_ms;
        self.recommendations
            .push_back((now, recommendation.parallelism));
        // Keep the newest recommendation older than the window: it was in
        // force at the window's start.
        let horizon = now - self.policy.scale_down_window_ms;
        while self.recommendations.len() > 1 && self.recommendations[1].0 <= horizon {
            self.recommendations.pop_front();
        }
        let target = recommendation.parallelism;
        if target > current {
            let since = now - last_rescale_ms;
            if since < self.policy.scale_up_cooldown_ms {
                return Decision::Keep {
                    reason: format!(
                        "scale-up to {target} waits for the cooldown ({}s of {}s)",
                        since / 1000,
                        self.policy.scale_up_cooldown_ms / 1000
                    ),
                };
            }
            return Decision::Rescale {
                to: target,
                recommendation,
            };
        }
        if target < current {
            let covered = self
                .recommendations
                .front()
                .is_some_and(|(at, _)| *at <= horizon);
            let highest = self
                .recommendations
                .iter()
                .map(|(_, p)| *p)
                .max()
                .unwrap_or(current);
            if !covered
                || highest >= current
                || now - last_rescale_ms < self.policy.scale_down_window_ms
            {
                return Decision::Keep {
                    reason: format!(
                        "scale-down to {target} waits until every recommendation over {}s is below {current}",
                        self.policy.scale_down_window_ms / 1000
                    ),
                };
            }
            return Decision::Rescale {
                to: highest,
                recommendation,
            };
        }
        Decision::Keep {
            reason: recommendation.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: i64 = 1000;
    const MINUTE: i64 = 60 * SECOND;

    fn policy(partitions: i32) -> Policy {
        Policy::new(&AutoscalerSpec::default(), partitions)
    }

    /// A job whose workers each process `capacity` records/s, fed `load(t)`
    /// records/s, sampled every 15 s; a rescale stops processing for one
    /// interval (savepoint, restart, restore).
    struct Simulation {
        autoscaler: Autoscaler,
        capacity: f64,
        parallelism: i32,
        now: i64,
        high_watermarks: f64,
        lag: f64,
        processed: f64,
        last_rescale: i64,
        restarting: bool,
        rescales: Vec<i32>,
    }

    impl Simulation {
        fn new(policy: Policy, parallelism: i32, capacity: f64) -> Self {
            Self {
                autoscaler: Autoscaler::new(policy),
                capacity,
                parallelism,
                now: 0,
                high_watermarks: 0.0,
                lag: 0.0,
                processed: 0.0,
                last_rescale: 0,
                restarting: false,
                rescales: Vec::new(),
            }
        }

        fn run(&mut self, until: i64, load: impl Fn(i64) -> f64) {
            let step = 15 * SECOND;
            while self.now < until {
                self.now += step;
                let seconds = step as f64 / 1000.0;
                let arrived = load(self.now) * seconds;
                self.high_watermarks += arrived;
                let capacity = if self.restarting {
                    0.0
                } else {
                    self.capacity * f64::from(self.parallelism) * seconds
                };
                let done = (self.lag + arrived).min(capacity);
                self.lag += arrived - done;
                self.processed += done;
                let busy = if self.restarting {
                    None
                } else {
                    Some(done / capacity)
                };
                self.restarting = false;
                self.autoscaler.observe(Sample {
                    at_ms: self.now,
                    high_watermarks: self.high_watermarks as i64,
                    lag: self.lag as i64,
                    processed: Some(self.processed as u64),
                    busy_ratio: busy,
                    parallelism: self.parallelism,
                });
                if let Decision::Rescale { to, .. } =
                    self.autoscaler.decide(self.parallelism, self.last_rescale)
                {
                    self.rescales.push(to);
                    self.parallelism = to;
                    self.last_rescale = self.now;
                    self.restarting = true;
                }
            }
        }
    }

    /// Deterministic noise in [-amplitude, +amplitude].
    fn noise(t: i64, amplitude: f64) -> f64 {
        let x = (t / 1000) as u64;
        let hash = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xD1B5_4A32_D192_ED03;
        let unit = (hash % 10_000) as f64 / 10_000.0;
        (unit * 2.0 - 1.0) * amplitude
    }

    #[test]
    fn a_step_of_load_is_met_in_one_rescale() {
        // 12 partitions, 10k/s per worker, 70% target: 35k/s needs 5 workers,
        // which spread 12 tasks unevenly, so 6.
        let mut sim = Simulation::new(policy(12), 2, 10_000.0);
        sim.run(10 * MINUTE, |_| 10_000.0);
        assert!(sim.rescales.is_empty(), "steady load: {:?}", sim.rescales);
        sim.run(40 * MINUTE, |_| 35_000.0);
        assert_eq!(sim.rescales, [6], "one rescale, straight to 6");
        assert!(sim.lag < 35_000.0, "the lag is worked off: {}", sim.lag);
    }

    #[test]
    fn noise_of_twenty_percent_does_not_cause_rescales() {
        // 40k/s needs 5.7 workers at 70%: noise pushes single readings past
        // 6, which must not send the job to 12.
        let mut sim = Simulation::new(policy(12), 6, 10_000.0);
        sim.run(60 * MINUTE, |t| 40_000.0 * (1.0 + noise(t, 0.2)));
        assert!(sim.rescales.is_empty(), "flapped: {:?}", sim.rescales);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut sim = Simulation::new(policy(12), 12, 10_000.0);
        // 14k/s needs 2 workers at 70%.
        sim.run(9 * MINUTE, |_| 14_000.0);
        assert!(
            sim.rescales.is_empty(),
            "scaled down within the window: {:?}",
            sim.rescales
        );
        sim.run(30 * MINUTE, |_| 14_000.0);
        assert_eq!(sim.rescales, [2]);
    }

    #[test]
    fn scale_up_waits_for_the_cooldown() {
        let mut autoscaler = Autoscaler::new(policy(12));
        let saturated = |at_ms: i64, hw: i64, lag: i64, processed: u64| Sample {
            at_ms,
            high_watermarks: hw,
            lag,
            processed: Some(processed),
            busy_ratio: Some(1.0),
            parallelism: 2,
        };
        autoscaler.observe(saturated(0, 0, 0, 0));
        autoscaler.observe(saturated(15_000, 600_000, 300_000, 300_000));
        autoscaler.observe(saturated(30_000, 1_200_000, 600_000, 600_000));
        let decision = autoscaler.decide(2, 0);
        let Decision::Keep { reason } = decision else {
            panic!("rescaled within the cooldown: {decision:?}");
        };
        assert!(reason.contains("cooldown"), "{reason}");
        assert!(matches!(
            autoscaler.decide(2, -10 * MINUTE),
            Decision::Rescale { .. }
        ));
    }

    #[test]
    fn without_a_busy_ratio_the_lag_threshold_rule_applies() {
        let mut autoscaler = Autoscaler::new(policy(12));
        for (i, lag) in [0, 20_000, 45_000].into_iter().enumerate() {
            autoscaler.observe(Sample {
                at_ms: i as i64 * 15_000,
                high_watermarks: lag,
                lag,
                processed: None,
                busy_ratio: None,
                parallelism: 1,
            });
        }
        let recommendation = autoscaler.recommend().unwrap();
        // ceil(45000 / 10000) = 5 workers, raised to 6 to spread 12 tasks.
        assert_eq!(recommendation.parallelism, 6);
        assert!(
            recommendation.reason.contains("no busy ratio"),
            "{}",
            recommendation.reason
        );
    }

    #[test]
    fn even_parallelism_table() {
        let p = policy(12);
        let cases = [
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 6),
            (6, 6),
            (7, 12),
            (11, 12),
            (40, 12),
        ];
        for (wanted, even) in cases {
            assert_eq!(p.even_parallelism(wanted), even, "wanted {wanted}");
        }
        let capped = Policy {
            max: 5,
            ..policy(12)
        };
        // Five workers would run no faster than four.
        assert_eq!(capped.even_parallelism(5), 4);
        let floor = Policy {
            min: 5,
            ..policy(12)
        };
        // Raised to the minimum, then to the next even spread.
        assert_eq!(floor.even_parallelism(1), 6);
    }

    #[test]
    fn policy_caps_max_at_the_partition_count() {
        let spec = AutoscalerSpec {
            max_parallelism: Some(100),
            min_parallelism: 2,
            ..AutoscalerSpec::default()
        };
        let policy = Policy::new(&spec, 8);
        assert_eq!((policy.min, policy.max), (2, 8));
    }

    proptest! {
        #[test]
        fn recommendations_stay_within_bounds(
            partitions in 1i32..64,
            min in 1i32..8,
            max in 1i32..64,
            load in 0f64..1e6,
            lag in 0i64..10_000_000,
            busy in proptest::option::of(0f64..1.0),
            parallelism in 1i32..64,
        ) {
            let spec = AutoscalerSpec {
                min_parallelism: min.min(max),
                max_parallelism: Some(max),
                ..AutoscalerSpec::default()
            };
            let policy = Policy::new(&spec, partitions);
            let mut autoscaler = Autoscaler::new(policy.clone());
            for i in 0..3i64 {
                autoscaler.observe(Sample {
                    at_ms: i * 15_000,
                    high_watermarks: (load * 15.0 * i as f64) as i64,
                    lag: lag * i / 2,
                    processed: Some((load * 10.0 * i as f64) as u64),
                    busy_ratio: busy,
                    parallelism,
                });
            }
            let recommendation = autoscaler.recommend().unwrap();
            prop_assert!(recommendation.parallelism >= policy.min);
            prop_assert!(recommendation.parallelism <= policy.max);
            prop_assert!(recommendation.parallelism <= partitions);
        }

        #[test]
        fn even_parallelism_never_lowers_capacity(partitions in 1i32..200, wanted in 1i32..200) {
            let policy = policy(partitions);
            let even = policy.even_parallelism(wanted);
            let wanted = wanted.min(partitions);
            let tasks_per_worker = |p: i32| (partitions + p - 1) / p;
            // Capacity in workers' worth: tasks / the busiest worker's tasks.
            let capacity = |p: i32| f64::from(partitions) / f64::from(tasks_per_worker(p));
            prop_assert!(capacity(even) >= f64::from(wanted) - 1e-9);
            prop_assert!(even >= wanted);
            // And no smaller parallelism gives the same capacity.
            prop_assert!(even == 1 || capacity(even - 1) < capacity(even));
        }
    }
}

//! `spec.autoscaler`: how the operator sizes a job's parallelism, and
//! scales it to zero when idle.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Automatic parallelism.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.catchUpDuration) > duration('0s')",
        "message": "catchUpDuration must be greater than 0",
        "fieldPath": ".catchUpDuration"
    },
    {
        "rule": "duration(self.metricsWindow) > duration('0s')",
        "message": "metricsWindow must be greater than 0",
        "fieldPath": ".metricsWindow"
    },
    {
        "rule": "!has(self.idleAfter) || duration(self.idleAfter) > duration('0s')",
        "message": "idleAfter must be greater than 0",
        "fieldPath": ".idleAfter"
    }
]))]
pub struct AutoscalerSpec {
    /// Whether the autoscaler manages spec.parallelism. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Lowest parallelism. Default 1.
    #[serde(default = "default_min_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_parallelism: i32,

    /// Highest parallelism. Defaults to the partition count of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_parallelism: Option<i32>,

    /// Share of a worker's capacity the autoscaler aims to use, in (0, 1].
    /// Default 0.7: headroom for bursts.
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub target_utilization: f64,

    /// How quickly accumulated lag should be worked off after a scale-up.
    /// Default 5m.
    #[serde(default = "default_catch_up_duration")]
    pub catch_up_duration: Duration,

    /// Minimum time between a rescale and the next scale-up. Default 3m.
    #[serde(default = "default_scale_up_cooldown")]
    pub scale_up_cooldown: Duration,

    /// A scale-down happens only when every recommendation over this window
    /// was lower than the current parallelism. Default 10m.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization_window: Duration,

    /// Time span over which rates are averaged. Default 2m.
    #[serde(default = "default_metrics_window")]
    pub metrics_window: Duration,

    /// Lag per worker that the fallback rule (used before workers report a
    /// busy ratio) tolerates, as KEDA's lagThreshold. Default 10000.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,

    /// Scale to zero: a job whose lag has stayed at zero this long is
    /// stopped with a savepoint and left with no workers; the operator keeps
    /// reading the lag and resumes it from that savepoint once the lag
    /// exceeds activationLag. Unset (the default): never scale to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_after: Option<Duration>,

    /// Lag (records) above which a job scaled to zero by idleAfter is
    /// resumed. Default 0: the first record wakes it.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_lag: i64,
}

impl Default for AutoscalerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            min_parallelism: default_min_parallelism(),
            max_parallelism: None,
            target_utilization: default_target_utilization(),
            catch_up_duration: default_catch_up_duration(),
            scale_up_cooldown: default_scale_up_cooldown(),
            scale_down_stabilization_window: default_scale_down_stabilization(),
            metrics_window: default_metrics_window(),
            lag_threshold: default_lag_threshold(),
            idle_after: None,
            activation_lag: 0,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_min_parallelism() -> i32 {
    1
}

fn default_target_utilization() -> f64 {
    0.7
}

fn default_catch_up_duration() -> Duration {
    Duration::from_secs(300)
}

fn default_scale_up_cooldown() -> Duration {
    Duration::from_secs(180)
}

fn default_scale_down_stabilization() -> Duration {
    Duration::from_secs(600)
}

fn default_metrics_window() -> Duration {
    Duration::from_secs(120)
}

fn default_lag_threshold() -> i64 {
    10_000
}

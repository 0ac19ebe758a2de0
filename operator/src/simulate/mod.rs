//! `weir simulate`: the operator's autoscaler ([`crate::autoscaler`]) against
//! a discrete-time model of a job ([`model`]) under load scenarios
//! ([`scenario`]), side by side with KEDA's Kafka scaler under the
//! Horizontal Pod Autoscaler's defaults ([`keda`]) on the same load and the
//! same job, including the same pause for every change of parallelism.
//! [`report`] computes and prints the numbers, [`svg`] draws them. Pure: the
//! command line does the printing and the writing.

pub mod keda;
pub mod model;
pub mod report;
pub mod scenario;
pub mod svg;
pub mod weir;

use weir_crds::job::AutoscalerSpec;

use crate::autoscaler::Policy;
use keda::{KedaConfig, KedaScaler};
use model::{JobParams, Trace};
use report::{Comparison, Summary};
use scenario::Scenario;
use weir::WeirScaler;

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Scenarios to run, by name; empty for all of them.
    pub scenarios: Vec<String>,
    /// Simulated seconds per scenario, stretching or squeezing its profile;
    /// `None` for each scenario's own length.
    pub duration_secs: Option<u64>,
    /// Seed of the noise.
    pub seed: u64,
    /// Noise amplitude: the load is multiplied by a factor drawn from
    /// `[1 - noise, 1 + noise]`.
    pub noise: f64,
    /// Events per second one worker processes at 100% busy.
    pub capacity: f64,
    /// Partitions of the source topic.
    pub partitions: i32,
    /// Seconds without processing per change of parallelism, for both
    /// autoscalers.
    pub pause_secs: u64,
    /// Seconds between offset commits (a StreamingJob commits them with each
    /// checkpoint, by default every 10 s), for both.
    pub commit_interval_secs: u64,
    /// KEDA's `lagThreshold`.
    pub lag_threshold: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scenarios: Vec::new(),
            duration_secs: None,
            seed: 1,
            noise: 0.2,
            capacity: 10_000.0,
            partitions: 12,
            pause_secs: 30,
            commit_interval_secs: 10,
            lag_threshold: AutoscalerSpec::default().lag_threshold.max(1) as u64,
        }
    }
}

/// Why a simulation cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimulateError {
    /// A scenario name that is not built in.
    #[error("unknown scenario {0:?}; the scenarios are {names}", names = scenario::NAMES.join(", "))]
    UnknownScenario(String),
    /// An option out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// One scenario run under both autoscalers.
#[derive(Clone, Debug)]
pub struct Run {
    /// The numbers.
    pub comparison: Comparison,
    /// The parallelism both started with.
    pub initial: i32,
    /// Events arriving in each second.
    pub input: Vec<u64>,
    /// What Weir's autoscaler did.
    pub weir: Trace,
    /// What KEDA and the HPA did.
    pub keda: Trace,
}

impl Options {
    fn validate(&self) -> Result<(), SimulateError> {
        if !(self.capacity.is_finite() && self.capacity >= 1.0) {
            return Err(SimulateError::Invalid(
                "--capacity must be at least 1 event/s",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(SimulateError::Invalid(
                "--partitions must be within 1..=1024",
            ));
        }
        if !(0.0..1.0).contains(&self.noise) {
            return Err(SimulateError::Invalid("--noise must be within [0, 1)"));
        }
        if self.duration_secs.is_some_and(|d| d < 60) {
            return Err(SimulateError::Invalid("--duration must be at least 60 s"));
        }
        if self.lag_threshold == 0 {
            return Err(SimulateError::Invalid("--lag-threshold must be at least 1"));
        }
        Ok(())
    }

    /// The scenarios to run, in order.
    pub fn selected(&self) -> Result<Vec<Scenario>, SimulateError> {
        if self.scenarios.is_empty() {
            return Ok(Scenario::all());
        }
        self.scenarios
            .iter()
            .map(|name| {
                Scenario::named(name).ok_or_else(|| SimulateError::UnknownScenario(name.clone()))
            })
            .collect()
    }

    /// The job every run simulates.
    pub fn job(&self) -> JobParams {
        JobParams {
            capacity: self.capacity,
            partitions: self.partitions,
            pause_secs: self.pause_secs,
            commit_interval_secs: self.commit_interval_secs,
        }
    }

    /// Weir's autoscaler policy: the defaults of a StreamingJob's
    /// `autoscaler` over the partitions.
    pub fn policy(&self) -> Policy {
        Policy::new(&AutoscalerSpec::default(), self.partitions)
    }

    /// The ScaledObject KEDA runs with: the same bounds as Weir's policy.
    pub fn keda(&self) -> KedaConfig {
        let policy = self.policy();
        KedaConfig {
            lag_threshold: self.lag_threshold,
            min_replicas: policy.min,
            max_replicas: policy.max,
            partitions: self.partitions,
        }
    }

    /// The assumptions behind the numbers, for under the tables.
    pub fn notes(&self) -> String {
        let policy = self.policy();
        format!(
            "Both autoscalers drive the same job on the same load (seed {seed}, ±{noise:.0}% noise held 15 s): \
             {partitions} partitions, {capacity}/s per worker, and every change of parallelism stops \
             processing for {pause} s (savepoint or rebalance, restart, state restore) for both alike; \
             offsets are committed every {commit} s and at each rescale.\n\
             Weir: the operator's autoscaler with the StreamingJob defaults ({target:.0}% target \
             utilization, {catch_up:.0} s catch-up, {cooldown} s scale-up cooldown, {window} s scale-down \
             window), sampled every 15 s while the job runs.\n\
             KEDA: kafka trigger, lagThreshold {threshold} (KEDA's own default is {keda_default}), \
             allowIdleConsumers false, minReplicaCount {min}, maxReplicaCount {max}; HPA defaults: sync \
             every 15 s, tolerance 0.1, 300 s scale-down stabilization, scale-up at most max(2x, 4) per \
             sync.\n\
             KEDA reads the committed-offset lag, which also counts up to one commit interval of \
             processed events; --lag-threshold trades its workers against its lag.\n\
             lag = events arrived and not yet processed (the autoscalers see the committed-offset lag); \
             over-provisioning = worker-seconds above ceil(input / capacity); catch-up = from a step up \
             until the lag is under one second of input.",
            seed = self.seed,
            noise = self.noise * 100.0,
            partitions = self.partitions,
            capacity = report::si(self.capacity),
            pause = self.pause_secs,
            commit = self.commit_interval_secs,
            target = policy.target_utilization * 100.0,
            catch_up = policy.catch_up_secs,
            cooldown = policy.scale_up_cooldown_ms / 1000,
            window = policy.scale_down_window_ms / 1000,
            threshold = self.lag_threshold,
            keda_default = keda::KEDA_DEFAULT_LAG_THRESHOLD,
            min = policy.min,
            max = policy.max,
        )
    }
}

/// Runs every selected scenario under both autoscalers.
pub fn simulate(options: &Options) -> Result<Vec<Run>, SimulateError> {
    options.validate()?;
    Ok(options
        .selected()?
        .iter()
        .map(|scenario| run_scenario(scenario, options))
        .collect())
}

/// Runs one scenario under both autoscalers, both starting at the
/// parallelism Weir's policy gives the initial load.
pub fn run_scenario(scenario: &Scenario, options: &Options) -> Run {
    let scenario = match options.duration_secs {
        Some(secs) => scenario.with_duration(secs),
        None => scenario.clone(),
    };
    let input = scenario.rates(options.noise, options.seed);
    let policy = options.policy();
    let job = options.job();
    let first = scenario.nominal_rates().first().copied().unwrap_or(0.0);
    let initial = policy
        .even_parallelism((first / (options.capacity * policy.target_utilization)).ceil() as i32);
    let weir = model::run(&input, &job, initial, &mut WeirScaler::new(policy));
    let keda = model::run(&input, &job, initial, &mut KedaScaler::new(options.keda()));
    let steps = scenario.step_ups();
    let comparison = Comparison {
        scenario: scenario.name.to_string(),
        description: scenario.description.to_string(),
        duration_secs: input.len() as u64,
        weir: Summary::of(&weir, &job, &steps),
        keda: Summary::of(&keda, &job, &steps),
    };
    Run {
        comparison,
        initial,
        input,
        weir,
        keda,
    }
}

#[cfg(test)]
mod tests;

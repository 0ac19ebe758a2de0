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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weir_crds::job::AutoscalerSpec;
use weir_crds::status::ScalingRecord;

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

    /// Replaces the policy (the job's spec or partition count changed),
    /// keeping the samples and recommendations.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
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

/// Annotation of a StreamingJob that pauses its autoscaler when `"true"`:
/// no rescale, no scale to zero (a job scaled to zero is woken up, so that a
/// paused autoscaler never leaves a job stopped).
pub const PAUSED_ANNOTATION: &str = "weir.dev/autoscaler-paused";
/// Annotation choosing what the autoscaler does with its decisions:
/// `act` (the default) writes them, `recommend` only publishes the target in
/// `status.targetParallelism` and an Event.
pub const MODE_ANNOTATION: &str = "weir.dev/autoscaler-mode";
/// Annotation the autoscaler sets (to the time, RFC 3339) on a job it scaled
/// to zero, and removes to wake it. The operator runs such a job as if
/// `spec.suspend` were set.
pub const SCALED_TO_ZERO_ANNOTATION: &str = "weir.dev/scaled-to-zero";
/// Prefix of the reasons of the scalingHistory records the autoscaler writes.
pub const REASON_PREFIX: &str = "autoscaler: ";

/// What the autoscaler does with its decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Writes the new parallelism through the scale subresource.
    #[default]
    Act,
    /// Publishes the target in status without acting.
    Recommend,
}

/// Scale-to-zero settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// How long the lag must stay at zero, in milliseconds.
    pub idle_after_ms: i64,
    /// Lag above which a job scaled to zero resumes.
    pub activation_lag: i64,
}

/// How a job's autoscaler is set up, from its spec and annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct Controls {
    /// `spec.autoscaler` is set and enabled.
    pub enabled: bool,
    /// Paused by [`PAUSED_ANNOTATION`].
    pub paused: bool,
    /// From [`MODE_ANNOTATION`].
    pub mode: Mode,
    /// From `spec.autoscaler.idleAfter` and `activationLag`.
    pub idle: Option<IdlePolicy>,
    /// Annotations whose values cannot be used, in words (they are ignored).
    pub problems: Vec<String>,
}

impl Controls {
    /// The controls of a job with autoscaler spec `spec` and `annotations`.
    pub fn new(
        spec: Option<&AutoscalerSpec>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let mut problems = Vec::new();
        let value = |key: &str| annotations.get(key).map(|v| v.trim());
        let paused = match value(PAUSED_ANNOTATION) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                problems.push(format!(
                    "{PAUSED_ANNOTATION}: {other:?} is neither \"true\" nor \"false\"; the autoscaler is paused"
                ));
                true
            }
        };
        let mode = match value(MODE_ANNOTATION) {
            None | Some("act") => Mode::Act,
            Some("recommend") => Mode::Recommend,
            Some(other) => {
                problems.push(format!(
                    "{MODE_ANNOTATION}: {other:?} is neither \"act\" nor \"recommend\"; recommending only"
                ));
                Mode::Recommend
            }
        };
        let idle_after = spec
            .and_then(|s| s.idle_after)
            .filter(|d| !d.is_zero())
            .map(|d| d.as_millis());
        let activation_lag = spec.map_or(0, |s| s.activation_lag.max(0));
        Self {
            enabled: spec.is_some_and(|s| s.enabled),
            paused,
            mode,
            idle: idle_after.map(|idle_after_ms| IdlePolicy {
                idle_after_ms,
                activation_lag,
            }),
            problems,
        }
    }

    /// Whether decisions are carried out: enabled, not paused, acting.
    pub fn acting(&self) -> bool {
        self.enabled && !self.paused && self.mode == Mode::Act
    }
}

/// Whether a job goes to zero workers, comes back, or stays as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleDecision {
    /// Stop the job with a savepoint and scale it to zero.
    ScaleToZero,
    /// Resume a job scaled to zero from its savepoint.
    Wake,
    /// Nothing to do.
    Stay,
}

/// Since when the lag has been zero, given since when it was before the
/// newest reading `lag` at `now_ms`.
pub fn zero_lag_since(previous: Option<i64>, lag: i64, now_ms: i64) -> Option<i64> {
    (lag == 0).then(|| previous.unwrap_or(now_ms))
}

/// The scale-to-zero decision. A job scaled to zero (`parked`) wakes when
/// its lag exceeds the activation threshold, or when scale to zero no longer
/// applies (the policy is gone, the autoscaler is paused, disabled or only
/// recommends): nothing else would ever resume it. A running job goes to
/// zero once its lag has been zero (since `zero_since_ms`) for the policy's
/// duration, if the autoscaler acts.
pub fn idle_decision(
    idle: Option<&IdlePolicy>,
    acting: bool,
    parked: bool,
    lag: i64,
    zero_since_ms: Option<i64>,
    now_ms: i64,
) -> IdleDecision {
    match (parked, idle) {
        (true, Some(policy)) if acting && lag <= policy.activation_lag => IdleDecision::Stay,
        (true, _) => IdleDecision::Wake,
        (false, Some(policy))
            if acting
                && lag == 0
                && zero_since_ms.is_some_and(|since| now_ms - since >= policy.idle_after_ms) =>
        {
            IdleDecision::ScaleToZero
        }
        (false, _) => IdleDecision::Stay,
    }
}

/// What the sampler knows of a job when the autoscaler evaluates it.
#[derive(Clone, Debug, PartialEq)]
pub struct Situation {
    /// Now, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// The job's autoscaler controls.
    pub controls: Controls,
    /// Workers running.
    pub running: i32,
    /// Running with no operation in flight or backing off, at
    /// spec.parallelism: the only state in which a rescale may start.
    pub settled: bool,
    /// Scaled to zero by the autoscaler ([`SCALED_TO_ZERO_ANNOTATION`]).
    pub parked: bool,
    /// When the job last changed parallelism (or was created), in
    /// milliseconds since the Unix epoch.
    pub last_rescale_ms: i64,
    /// The lag to act on: source lag and records in transit.
    pub lag: i64,
    /// Since when the lag has been zero ([`zero_lag_since`]).
    pub zero_lag_since_ms: Option<i64>,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing to do.
    Hold {
        /// Why, in words.
        reason: String,
    },
    /// Write parallelism `to` (from `from`).
    Scale {
        /// The running parallelism.
        from: i32,
        /// The new parallelism.
        to: i32,
        /// The numbers behind it.
        recommendation: Recommendation,
    },
    /// Recommend-only mode: publish `to` as the target, do nothing.
    Recommend {
        /// The running parallelism.
        from: i32,
        /// The recommended parallelism (possibly `from`).
        to: i32,
        /// Why, in words.
        reason: String,
    },
    /// Stop the job with a savepoint and scale it to zero.
    ScaleToZero {
        /// The running parallelism.
        from: i32,
        /// For how long the lag has been zero, in milliseconds.
        idle_ms: i64,
    },
    /// Resume a job scaled to zero.
    Wake {
        /// Why, in words.
        reason: String,
    },
}

/// One evaluation of a job: the scale-to-zero decision first, then (for a
/// settled, enabled, unpaused job) the autoscaler's own, acted upon or only
/// recommended. Pure but for the recommendations `autoscaler` keeps for its
/// stabilization window.
pub fn evaluate(autoscaler: &mut Autoscaler, situation: &Situation) -> Outcome {
    let controls = &situation.controls;
    let idle = idle_decision(
        controls.idle.as_ref(),
        controls.acting(),
        situation.parked,
        situation.lag,
        situation.zero_lag_since_ms,
        situation.now_ms,
    );
    match idle {
        IdleDecision::Wake => {
            let reason = match &controls.idle {
                Some(policy) if controls.acting() => format!(
                    "lag {} is above the activation threshold {}",
                    situation.lag, policy.activation_lag
                ),
                _ => "scale to zero no longer applies (autoscaler paused, disabled, recommending or without idleAfter)".to_owned(),
            };
            return Outcome::Wake { reason };
        }
        IdleDecision::ScaleToZero if situation.settled => {
            return Outcome::ScaleToZero {
                from: situation.running,
                idle_ms: situation.now_ms - situation.zero_lag_since_ms.unwrap_or(situation.now_ms),
            };
        }
        IdleDecision::ScaleToZero | IdleDecision::Stay => {}
    }
    if situation.parked {
        return Outcome::Hold {
            reason: "scaled to zero; waiting for lag".into(),
        };
    }
    if !controls.enabled {
        return Outcome::Hold {
            reason: "the autoscaler is not enabled".into(),
        };
    }
    if controls.paused {
        return Outcome::Hold {
            reason: format!("paused by {PAUSED_ANNOTATION}"),
        };
    }
    if !situation.settled {
        return Outcome::Hold {
            reason: "waiting until the job runs at spec.parallelism with no operation in flight"
                .into(),
        };
    }
    let decision = autoscaler.decide(situation.running, situation.last_rescale_ms);
    match (controls.mode, decision) {
        (Mode::Act, Decision::Rescale { to, recommendation }) => Outcome::Scale {
            from: situation.running,
            to,
            recommendation,
        },
        (Mode::Act, Decision::Keep { reason }) => Outcome::Hold { reason },
        (Mode::Recommend, Decision::Rescale { to, recommendation }) => Outcome::Recommend {
            from: situation.running,
            to,
            reason: recommendation.reason,
        },
        (Mode::Recommend, Decision::Keep { reason }) => match autoscaler.recommend() {
            Some(_) => Outcome::Recommend {
                from: situation.running,
                to: situation.running,
                reason,
            },
            None => Outcome::Hold { reason },
        },
    }
}

/// The scalingHistory record of an outcome that changes the parallelism, at
/// `time`, with the numbers behind it. `parallelism` is spec.parallelism
/// (what a woken job resumes at).
pub fn history_record(outcome: &Outcome, parallelism: i32, time: Time) -> Option<ScalingRecord> {
    let (from, to, reason, rates) = match outcome {
        Outcome::Scale {
            from,
            to,
            recommendation,
        } => (
            *from,
            *to,
            recommendation.reason.clone(),
            Some(&recommendation.rates),
        ),
        Outcome::ScaleToZero { from, idle_ms } => (
            *from,
            0,
            format!(
                "lag has been zero for {}s: stop with a savepoint and scale to zero",
                idle_ms / 1000
            ),
            None,
        ),
        Outcome::Wake { reason } => (0, parallelism, format!("wake: {reason}"), None),
        Outcome::Hold { .. } | Outcome::Recommend { .. } => return None,
    };
    Some(ScalingRecord {
        time,
        from,
        to,
        reason: format!("{REASON_PREFIX}{reason}"),
        input_rate: rates.map(|r| r.input_rate),
        lag: rates.map(|r| r.lag),
        per_worker_rate: rates.and_then(|r| r.per_worker_rate),
    })
}

/// When the job last changed parallelism: the newest scalingHistory record,
/// else its creation, in milliseconds since the Unix epoch. Derived from the
/// status, so a restarted operator keeps the cooldown.
pub fn last_rescale_ms(history: &[ScalingRecord], created: Option<&Time>) -> i64 {
    history
        .iter()
        .map(|r| r.time.0.as_millisecond())
        .max()
        .or_else(|| created.map(|t| t.0.as_millisecond()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

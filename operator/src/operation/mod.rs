//! The operation protocol: every change that stops the workers goes through
//! one state machine kept in `status.operation`, so that an operator
//! restarted at any point resumes it from the status alone.
//!
//! ```text
//! Savepointing -> Rescaling -> Restoring -> done     (rescale, upgrade and
//!                                                      restart in savepoint mode)
//! Savepointing -> Rescaling -> done                  (suspend)
//! Savepointing -> done                               (manual and periodic savepoints)
//!                 Rescaling -> Restoring -> done     (resume, upgrade and restart
//!                                                      in lastState or stateless mode)
//! ```
//!
//! - Savepointing: every worker is asked for the savepoint (stop-with-
//!   savepoint unless it is a manual or periodic one); the stage ends when
//!   each reports it completed and its `_metadata` is in storage. A failure
//!   or the deadline (`spec.savepoint.timeout`) resumes the workers, records
//!   a Warning and the failure (retried after a backoff), and leaves the
//!   parallelism alone.
//! - Rescaling: the generation is bumped and written to `fence.json`, the
//!   StatefulSet is scaled to zero, and the stage waits until every old pod
//!   is gone, so that old and new owners of a task never overlap. Without a
//!   savepoint the fence is written once the old pods are gone: their last
//!   checkpoint on SIGTERM still commits, and a lingering one cannot commit
//!   after the new workers start.
//! - Restoring: the StatefulSet runs the target parallelism at the new
//!   generation on the current pod template, restoring from the savepoint
//!   (or `latest`, or `none` for a stateless upgrade); the stage ends when
//!   every worker is ready and reports what it restored.
//!
//! Everything here is pure: [`plan`] decides whether an operation starts,
//! [`step`] maps an operation and what was observed to the next stage and
//! the effects to carry out, [`settle`] writes the result into the status,
//! and [`rollout`] tells what the StatefulSet runs at each stage.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use weir_crds::StreamingJob;
use weir_crds::job::UpgradeMode;
use weir_crds::status::{
    FailedOperation, MAX_SAVEPOINT_HISTORY, MAX_SCALING_HISTORY, Operation, OperationKind,
    OperationStage, SavepointInfo, ScalingRecord, StreamingJobStatus,
};

use crate::builders::{Rollout, TERMINATION_GRACE_SECONDS};
use crate::control::{SavepointState, WorkerReport};

/// How long the old workers may take to go before a Warning says so.
pub const RESCALING_TIMEOUT: Duration = Duration::from_secs(TERMINATION_GRACE_SECONDS as u64 + 60);
/// How long the new workers may take to restore before a Warning says so.
pub const RESTORING_TIMEOUT: Duration = Duration::from_secs(600);
/// Backoff after the first failed operation; it doubles with every further
/// failure of the same kind, up to [`MAX_FAILURE_BACKOFF`].
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// Longest backoff after failed operations.
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

/// The backoff after `attempts` consecutive failures.
pub fn failure_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(10);
    FAILURE_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_FAILURE_BACKOFF)
}

/// `time` plus `duration`.
fn after(time: &Time, duration: Duration) -> Time {
    let duration = SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
    Time(time.0.checked_add(duration).unwrap_or(Timestamp::MAX))
}

fn past(deadline: Option<&Time>, now: &Time) -> bool {
    deadline.is_some_and(|deadline| now.0 >= deadline.0)
}

mod plan;

pub use plan::{Live, next_periodic_savepoint, plan, start_event, until_periodic_savepoint};

/// The name of a kind, in lowercase (savepoint ids, history reasons).
fn kind_name(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Rescale => "rescale",
        OperationKind::Upgrade => "upgrade",
        OperationKind::Savepoint => "manual",
        OperationKind::PeriodicSavepoint => "periodic",
        OperationKind::Suspend => "suspend",
        OperationKind::Restart => "restart",
        OperationKind::Resume => "resume",
    }
}

/// The fencing generation of the running workers: the newest of what the
/// StatefulSet runs and what the status records.
pub fn current_generation(status: Option<&StreamingJobStatus>, deployed: &Rollout) -> i64 {
    status
        .and_then(|s| s.worker_generation)
        .unwrap_or(0)
        .max(deployed.generation)
}

/// What was observed of the job for one step.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The current time.
    pub now: Time,
    /// The fencing generation of the running workers ([`current_generation`]).
    pub generation: i64,
    /// Worker pods that still exist, terminating ones included.
    pub pods: usize,
    /// The status of each worker [`workers_to_observe`] names, by ordinal
    /// (`None`: unreachable).
    pub reports: &'a [Option<WorkerReport>],
    /// Whether the savepoint's `_metadata` is in storage (only read when
    /// [`awaits_manifest`] says so).
    pub savepoint_stored: bool,
}

/// Something the reconciler does for a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `POST /v1/savepoints` to these workers.
    RequestSavepoint {
        /// Worker ordinals.
        ordinals: Vec<i32>,
        /// The savepoint id.
        id: String,
        /// Stop consuming after it.
        stop: bool,
    },
    /// `POST /v1/resume` to these workers.
    Resume {
        /// Worker ordinals.
        ordinals: Vec<i32>,
    },
    /// Write `fence.json` with this generation.
    WriteFence {
        /// The generation allowed to commit from now on.
        generation: i64,
    },
    /// Record an event about the job.
    Event {
        /// Warning rather than Normal.
        warning: bool,
        /// The reason.
        reason: &'static str,
        /// The note.
        note: String,
    },
}

/// Where an operation goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// On, at this (possibly new) stage.
    Stay(Operation),
    /// Completed.
    Done,
    /// Given up, for this reason; the workers resume unchanged.
    Failed(String),
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Where the operation goes.
    pub next: Next,
    /// The operation's savepoint completed in this step.
    pub savepoint_completed: bool,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

/// How many workers (ordinals from 0) a step of `op` needs the status of:
/// the running ones while savepointing, the new ones while restoring.
pub fn workers_to_observe(op: &Operation, deployed: &Rollout) -> i32 {
    match op.stage {
        OperationStage::Savepointing => deployed.replicas,
        OperationStage::Rescaling => 0,
        OperationStage::Restoring => op.target_parallelism.unwrap_or(deployed.parallelism),
    }
}

/// Whether the step of `op` needs to know if the savepoint's `_metadata`
/// exists: savepointing, and every worker reports the savepoint completed.
pub fn awaits_manifest(op: &Operation, reports: &[Option<WorkerReport>]) -> bool {
    op.stage == OperationStage::Savepointing
        && reports.iter().all(|report| {
            savepoint_of(report.as_ref(), op)
                .is_some_and(|(state, _)| state == SavepointState::Completed)
        })
}

/// The state (and error) of `op`'s savepoint on a worker, if it knows it.
fn savepoint_of<'a>(
    report: Option<&'a WorkerReport>,
    op: &Operation,
) -> Option<(SavepointState, Option<&'a str>)> {
    let savepoint = report?.savepoint.as_ref()?;
    (Some(&savepoint.id) == op.savepoint_id.as_ref())
        .then_some((savepoint.state, savepoint.error.as_deref()))
}

fn ordinal(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

fn event(warning: bool, reason: &'static str, note: String) -> Effect {
    Effect::Event {
        warning,
        reason,
        note,
    }
}

/// The next step of `op` given what was observed (see the module doc).
pub fn step(op: &Operation, observed: &Observation<'_>) -> Transition {
    match op.stage {
        OperationStage::Savepointing => savepointing(op, observed),
        OperationStage::Rescaling => rescaling(op, observed),
        OperationStage::Restoring => restoring(op, observed),
    }
}

fn stay(op: Operation, effects: Vec<Effect>) -> Transition {
    Transition {
        next: Next::Stay(op),
        savepoint_completed: false,
        effects,
    }
}

fn savepointing(op: &Operation, observed: &Observation<'_>) -> Transition {
    let id = op.savepoint_id.clone().unwrap_or_default();
    let stop = !restarts_nothing(op.kind);
    let mut completed = 0;
    let mut unasked = Vec::new();
    let mut failures = Vec::new();
    for (index, report) in observed.reports.iter().enumerate() {
        match (report, savepoint_of(report.as_ref(), op)) {
            (_, Some((SavepointState::Completed, _))) => completed += 1,
            (_, Some((SavepointState::Failed, error))) => failures.push(format!(
                "worker {index}: {}",
                error.unwrap_or("failed without a reason")
            )),
            (Some(_), None) => unasked.push(ordinal(index)),
            // In progress, or unreachable: wait (until the deadline).
            _ => {}
        }
    }
    let total = observed.reports.len();
    let failure = if !failures.is_empty() {
        Some(format!("savepoint {id} failed: {}", failures.join("; ")))
    } else if completed == total && observed.savepoint_stored {
        None
    } else if past(op.deadline.as_ref(), &observed.now) {
        let manifest = if completed == total {
            ", its _metadata never appeared in storage"
        } else {
            ""
        };
        Some(format!(
            "savepoint {id} timed out: {completed}/{total} workers completed{manifest}"
        ))
    } else {
        let effects = if unasked.is_empty() {
            Vec::new()
        } else {
            vec![Effect::RequestSavepoint {
                ordinals: unasked,
                id,
                stop,
            }]
        };
        return stay(op.clone(), effects);
    };
    if let Some(message) = failure {
        let mut effects = Vec::new();
        let reachable: Vec<i32> = observed
            .reports
            .iter()
            .enumerate()
            .filter(|(_, report)| report.is_some())
            .map(|(index, _)| ordinal(index))
            .collect();
        if stop && !reachable.is_empty() {
            effects.push(Effect::Resume {
                ordinals: reachable,
            });
        }
        let note = format!("{message}; the workers resume unchanged");
        effects.push(event(true, "SavepointFailed", note));
        return Transition {
            next: Next::Failed(message),
            savepoint_completed: false,
            effects,
        };
    }
    if restarts_nothing(op.kind) {
        return Transition {
            next: Next::Done,
            savepoint_completed: true,
            effects: vec![event(
                false,
                "SavepointCompleted",
                format!("savepoint {id} completed by {total} workers; nothing restarted"),
            )],
        };
    }
    let generation = observed.generation + 1;
    let next = Operation {
        stage: OperationStage::Rescaling,
        worker_generation: Some(generation),
        stage_started_at: Some(observed.now.clone()),
        deadline: Some(after(&observed.now, RESCALING_TIMEOUT)),
        ..op.clone()
    };
    Transition {
        next: Next::Stay(next),
        savepoint_completed: true,
        effects: vec![
            Effect::WriteFence { generation },
            event(
                false,
                "SavepointCompleted",
                format!(
                    "savepoint {id} completed by {total} workers; fencing generation {} with {generation} and stopping the workers",
                    observed.generation
                ),
            ),
        ],
    }
}

/// Whether operations of `kind` only take a savepoint (the workers go on).
pub fn restarts_nothing(kind: OperationKind) -> bool {
    matches!(
        kind,
        OperationKind::Savepoint | OperationKind::PeriodicSavepoint
    )
}

fn rescaling(op: &Operation, observed: &Observation<'_>) -> Transition {
    let generation = op.worker_generation.unwrap_or(observed.generation + 1);
    // After a savepoint the old workers are stopped: fence them at once.
    // Otherwise they checkpoint on SIGTERM; fence once they are gone.
    let fence_now = op.savepoint_id.is_some() || observed.pods == 0;
    let mut effects = if fence_now {
        vec![Effect::WriteFence { generation }]
    } else {
        Vec::new()
    };
    if observed.pods > 0 {
        if past(op.deadline.as_ref(), &observed.now) {
            effects.push(event(
                true,
                "OperationStalled",
                format!(
                    "{} old workers are still terminating after {}s",
                    observed.pods,
                    RESCALING_TIMEOUT.as_secs()
                ),
            ));
            let next = Operation {
                deadline: Some(after(&observed.now, RESCALING_TIMEOUT)),
                ..op.clone()
            };
            return stay(next, effects);
        }
        return stay(op.clone(), effects);
    }
    if op.kind == OperationKind::Suspend {
        effects.push(event(
            false,
            "Suspended",
            format!(
                "every worker stopped after savepoint {}",
                op.savepoint_id.as_deref().unwrap_or("none")
            ),
        ));
        return Transition {
            next: Next::Done,
            savepoint_completed: false,
            effects,
        };
    }
    let target = op.target_parallelism.unwrap_or(0);
    effects.push(event(
        false,
        "Restoring",
        format!(
            "the old workers are gone; starting {target} workers of generation {generation} {}",
            restore_description(op)
        ),
    ));
    let next = Operation {
        stage: OperationStage::Restoring,
        worker_generation: Some(generation),
        stage_started_at: Some(observed.now.clone()),
        deadline: Some(after(&observed.now, RESTORING_TIMEOUT)),
        ..op.clone()
    };
    stay(next, effects)
}

/// What the new workers of `op` restore from (`WEIR_RESTORE_FROM`): its
/// savepoint, else nothing for a stateless upgrade, else the newest
/// committed checkpoint.
fn restore_source(op: &Operation) -> String {
    match (&op.savepoint_id, op.upgrade_mode) {
        (Some(id), _) => id.clone(),
        (None, Some(UpgradeMode::Stateless)) => "none".to_owned(),
        (None, _) => "latest".to_owned(),
    }
}

/// [`restore_source`] in words, for events.
fn restore_description(op: &Operation) -> String {
    match restore_source(op).as_str() {
        "latest" => "from the newest committed checkpoint (latest)".to_owned(),
        "none" => "with empty state (none)".to_owned(),
        id => format!("from {id}"),
    }
}

/// Why a new worker does not count as restored yet, if it does not.
fn not_restored(report: Option<&WorkerReport>, op: &Operation) -> Option<String> {
    let Some(report) = report else {
        return Some("unreachable".to_owned());
    };
    let generation = op.worker_generation.unwrap_or_default();
    if report.generation != generation {
        return Some(format!("still generation {}", report.generation));
    }
    if !report.ready {
        return Some(match &report.error {
            Some(error) => format!("not ready: {error}"),
            None => "not ready".to_owned(),
        });
    }
    let restored = report.restored_from.as_deref().unwrap_or("none");
    // A worker that restarted since restores a checkpoint of its new lineage.
    if restored.starts_with("checkpoint:") {
        return None;
    }
    match restore_source(op).as_str() {
        "latest" => None,
        "none" if restored == "none" => None,
        "none" => Some(format!("restored from {restored}, not empty state")),
        id => {
            let expected = format!("savepoint:{id}");
            (restored != expected).then(|| format!("restored from {restored}, not {expected}"))
        }
    }
}

fn restoring(op: &Operation, observed: &Observation<'_>) -> Transition {
    let target = op.target_parallelism.unwrap_or(0);
    let waiting: Vec<String> = (0..usize::try_from(target).unwrap_or(0))
        .filter_map(|index| {
            let report = observed.reports.get(index).and_then(Option::as_ref);
            not_restored(report, op).map(|why| format!("worker {index}: {why}"))
        })
        .collect();
    if waiting.is_empty() {
        let (reason, what) = match op.kind {
            OperationKind::Resume => ("Resumed", "resumed"),
            OperationKind::Upgrade => ("Upgraded", "upgraded"),
            OperationKind::Restart => ("Restarted", "restarted"),
            _ => ("Rescaled", "rescaled"),
        };
        return Transition {
            next: Next::Done,
            savepoint_completed: false,
            effects: vec![event(
                false,
                reason,
                format!(
                    "{what}: {target} workers of generation {} {} {} and consuming",
                    op.worker_generation.unwrap_or_default(),
                    if restore_source(op) == "none" {
                        "started"
                    } else {
                        "restored"
                    },
                    restore_description(op)
                ),
            )],
        };
    }
    if past(op.deadline.as_ref(), &observed.now) {
        let next = Operation {
            deadline: Some(after(&observed.now, RESTORING_TIMEOUT)),
            ..op.clone()
        };
        let note = format!(
            "the new workers are not all restored after {}s: {}",
            RESTORING_TIMEOUT.as_secs(),
            waiting.join("; ")
        );
        return stay(next, vec![event(true, "OperationStalled", note)]);
    }
    stay(op.clone(), Vec::new())
}

/// Why `op` is stalled at `now`, if it is: its Rescaling or Restoring stage
/// has run past its timeout. The stage goes on waiting (a Warning event
/// says so at each timeout); the status reports it as Stalled and Degraded
/// until it moves on. A Savepointing stage never stalls: its deadline fails
/// the operation.
pub fn stalled(op: &Operation, now: &Time) -> Option<String> {
    let started = op.stage_started_at.as_ref().unwrap_or(&op.started_at);
    let (timeout, what) = match op.stage {
        OperationStage::Savepointing => return None,
        OperationStage::Rescaling => (RESCALING_TIMEOUT, "the old workers are not all gone"),
        OperationStage::Restoring => (RESTORING_TIMEOUT, "the new workers are not all restored"),
    };
    (now.0 >= after(started, timeout).0).then(|| {
        format!(
            "{what} {}s after the {:?} stage started (progress deadline); see the OperationStalled events",
            timeout.as_secs(),
            op.stage
        )
    })
}

/// What the StatefulSet of `job` runs while `op` (if any) is in flight,
/// given what it runs now (`deployed`; `None` before it exists).
pub fn rollout(job: &StreamingJob, op: Option<&Operation>, deployed: Option<&Rollout>) -> Rollout {
    let base = deployed.cloned().unwrap_or_else(|| Rollout::initial(job));
    let Some(op) = op else { return base };
    match op.stage {
        OperationStage::Savepointing => base,
        OperationStage::Rescaling => Rollout {
            replicas: 0,
            ..base
        },
        OperationStage::Restoring => {
            let target = op.target_parallelism.unwrap_or(base.parallelism);
            Rollout {
                replicas: target,
                parallelism: target,
                generation: op.worker_generation.unwrap_or(base.generation),
                restore_from: restore_source(op),
            }
        }
    }
}

/// Writes the result of a step of `op` into `status`: the next operation,
/// the savepoint and scaling histories (bounded by `history_limit` and
/// [`MAX_SCALING_HISTORY`]), the worker generation, the observed savepoint
/// trigger, and the failure to back off from.
pub fn settle(
    status: &mut StreamingJobStatus,
    op: &Operation,
    transition: &Transition,
    history_limit: u32,
    now: &Time,
) {
    if transition.savepoint_completed
        && let Some(id) = &op.savepoint_id
    {
        let info = SavepointInfo {
            id: id.clone(),
            time: now.clone(),
            parallelism: op.from_parallelism.unwrap_or_default(),
            reason: kind_name(op.kind).to_owned(),
        };
        status.savepoint_history.insert(0, info.clone());
        let limit = usize::try_from(history_limit).unwrap_or(MAX_SAVEPOINT_HISTORY);
        status
            .savepoint_history
            .truncate(limit.clamp(1, MAX_SAVEPOINT_HISTORY));
        status.last_savepoint = Some(info);
    }
    match &transition.next {
        Next::Stay(next) => status.operation = Some(next.clone()),
        Next::Done => {
            status.operation = None;
            status.last_failed_operation = None;
            match op.kind {
                OperationKind::Savepoint => {
                    status.observed_savepoint_trigger_nonce = op.trigger_nonce;
                }
                OperationKind::Restart => status.observed_restart_nonce = op.trigger_nonce,
                _ => {}
            }
            if !restarts_nothing(op.kind) {
                status.worker_generation = op.worker_generation.or(status.worker_generation);
            }
            let from = op.from_parallelism.unwrap_or_default();
            let to = op.target_parallelism.unwrap_or_default();
            let reason = match op.kind {
                OperationKind::Suspend => {
                    Some("spec.suspend set: stopped with a savepoint".to_owned())
                }
                OperationKind::Resume => Some("spec.suspend cleared: resumed".to_owned()),
                OperationKind::Rescale => {
                    Some(format!("spec.parallelism changed from {from} to {to}"))
                }
                // The parallelism stays: nothing to record.
                _ => None,
            };
            // The autoscaler recorded this change already, with the numbers
            // behind it, before the operation started: one entry per change.
            let recorded = status.scaling_history.first().is_some_and(|r| {
                r.from == from
                    && r.to == to
                    && r.reason.starts_with(crate::autoscaler::REASON_PREFIX)
                    && r.time.0 <= op.started_at.0
            });
            if let Some(reason) = reason.filter(|_| !recorded) {
                status.scaling_history.insert(
                    0,
                    ScalingRecord {
                        time: op.started_at.clone(),
                        from,
                        to,
                        reason,
                        input_rate: None,
                        lag: None,
                        per_worker_rate: None,
                    },
                );
                status.scaling_history.truncate(MAX_SCALING_HISTORY);
            }
        }
        Next::Failed(message) => {
            status.operation = None;
            let attempts = status
                .last_failed_operation
                .as_ref()
                .filter(|failure| failure.kind == op.kind)
                .map_or(1, |failure| failure.attempts.saturating_add(1));
            status.last_failed_operation = Some(FailedOperation {
                kind: op.kind,
                time: now.clone(),
                message: message.clone(),
                attempts,
            });
            if op.kind == OperationKind::Savepoint {
                // A manual savepoint is not retried: the trigger is answered.
                status.observed_savepoint_trigger_nonce = op.trigger_nonce;
            }
        }
    }
}

/// Forgets a failed operation once its backoff is over and nothing is left
/// to retry (the spec no longer asks for it).
pub fn forget_failure(status: &mut StreamingJobStatus, now: &Time) {
    if let Some(failure) = &status.last_failed_operation
        && now.0 >= after(&failure.time, failure_backoff(failure.attempts)).0
    {
        status.last_failed_operation = None;
    }
}

#[cfg(test)]
mod tests;

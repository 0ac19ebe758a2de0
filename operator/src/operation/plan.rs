//! Which operation starts, and how it announces itself.
//!
//! [`plan`] is pure: given the job, what its StatefulSet runs, how many of
//! its pods run an older pod template, and the time, it returns the
//! operation to start, if any. An operation that takes a savepoint starts at
//! Savepointing; one that does not (resume, and upgrades and restarts in
//! `lastState` or `stateless` mode) starts at Rescaling with the next
//! fencing generation already chosen.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weir_crds::StreamingJob;
use weir_crds::job::UpgradeMode;
use weir_crds::status::{Operation, OperationKind, OperationStage, StreamingJobStatus};

use super::{Effect, RESCALING_TIMEOUT, after, current_generation, failure_backoff, kind_name};
use crate::builders::Rollout;

/// What the operator sees of the running workers when it plans.
#[derive(Clone, Copy, Debug)]
pub struct Live<'a> {
    /// What the StatefulSet runs.
    pub rollout: &'a Rollout,
    /// Worker pods that run an older pod template than the StatefulSet's
    /// (see [`crate::restart::outdated_pods`]): a change of the spec or the
    /// image that the workers have not picked up yet.
    pub outdated_pods: usize,
}

/// When the next periodic savepoint of `job` is due: its
/// `spec.savepoint.periodicInterval` after the newest savepoint of any kind
/// (or after the job was created). `None` without periodic savepoints.
pub fn next_periodic_savepoint(job: &StreamingJob) -> Option<Time> {
    let interval = job.spec.savepoint.periodic_interval?;
    let since = job
        .status
        .as_ref()
        .and_then(|s| s.last_savepoint.as_ref())
        .map(|sp| sp.time.clone())
        .or_else(|| job.metadata.creation_timestamp.clone());
    Some(match since {
        Some(since) => after(&since, interval.as_std()),
        // Unknown age: due now.
        None => Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    })
}

/// How long until the next periodic savepoint of `job` is due (zero when it
/// is), so that the reconciler comes back in time; `None` without periodic
/// savepoints.
pub fn until_periodic_savepoint(job: &StreamingJob, now: &Time) -> Option<Duration> {
    let due = next_periodic_savepoint(job)?;
    let left = due.0.duration_since(now.0);
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// The savepoint a resume restores: the one its suspend took; else, for a
/// job that never went through an operation (created suspended), its
/// `spec.restoreFrom`; else nothing (the newest committed checkpoint).
fn resume_source(job: &StreamingJob, status: Option<&StreamingJobStatus>) -> Option<String> {
    let suspended_at = status
        .and_then(|s| s.last_savepoint.as_ref())
        .filter(|sp| sp.reason == kind_name(OperationKind::Suspend))
        .map(|sp| sp.id.clone());
    let never_operated =
        status.is_none_or(|s| s.savepoint_history.is_empty() && s.scaling_history.is_empty());
    suspended_at.or_else(|| {
        never_operated
            .then(|| job.spec.restore_from.clone())
            .flatten()
    })
}

/// The operation to start for `job` when none is in flight: suspend,
/// resume, rescale, restart (`spec.restartNonce`), upgrade (pods on an
/// older template), manual savepoint, periodic savepoint, in that order of
/// precedence (a rescale or a restart also moves every worker to the
/// current template). Nothing starts without workers to act on (no
/// StatefulSet yet), nor during the backoff after a failure.
pub fn plan(job: &StreamingJob, live: Live<'_>, now: &Time) -> Option<Operation> {
    let deployed = live.rollout;
    let status = job.status.as_ref();
    if status.is_some_and(|s| s.operation.is_some()) {
        return None;
    }
    if let Some(failure) = status.and_then(|s| s.last_failed_operation.as_ref())
        && now.0 < after(&failure.time, failure_backoff(failure.attempts)).0
    {
        return None;
    }
    let spec = &job.spec;
    let running = deployed.replicas > 0;
    let observed_nonce = status.and_then(|s| s.observed_savepoint_trigger_nonce);
    let observed_restart = status.and_then(|s| s.observed_restart_nonce);
    let periodic_due = next_periodic_savepoint(job).is_some_and(|due| now.0 >= due.0);
    let (kind, target, nonce) = if spec.suspend && running {
        (OperationKind::Suspend, 0, None)
    } else if !spec.suspend && !running {
        (OperationKind::Resume, spec.parallelism, None)
    } else if !running {
        return None;
    } else if spec.parallelism != deployed.parallelism {
        (OperationKind::Rescale, spec.parallelism, None)
    } else if spec.restart_nonce.is_some() && spec.restart_nonce != observed_restart {
        (
            OperationKind::Restart,
            deployed.parallelism,
            spec.restart_nonce,
        )
    } else if live.outdated_pods > 0 {
        (OperationKind::Upgrade, deployed.parallelism, None)
    } else if spec.savepoint_trigger_nonce.is_some()
        && spec.savepoint_trigger_nonce != observed_nonce
    {
        (
            OperationKind::Savepoint,
            deployed.parallelism,
            spec.savepoint_trigger_nonce,
        )
    } else if periodic_due {
        (OperationKind::PeriodicSavepoint, deployed.parallelism, None)
    } else {
        return None;
    };
    let upgrade_mode = matches!(kind, OperationKind::Upgrade | OperationKind::Restart)
        .then_some(spec.upgrade_mode);
    let takes_savepoint = kind != OperationKind::Resume
        && upgrade_mode.is_none_or(|mode| mode == UpgradeMode::Savepoint);
    let (stage, savepoint_id, worker_generation, deadline) = if takes_savepoint {
        (
            OperationStage::Savepointing,
            Some(format!("{}-{}", kind_name(kind), now.0.as_second())),
            None,
            after(now, spec.savepoint.timeout.as_std()),
        )
    } else {
        // Nothing to save first: straight to the fence.
        let restored = (kind == OperationKind::Resume)
            .then(|| resume_source(job, status))
            .flatten();
        (
            OperationStage::Rescaling,
            restored,
            Some(current_generation(status, deployed) + 1),
            after(now, RESCALING_TIMEOUT),
        )
    };
    Some(Operation {
        kind,
        stage,
        target_parallelism: Some(target),
        savepoint_id,
        started_at: now.clone(),
        stage_started_at: Some(now.clone()),
        deadline: Some(deadline),
        from_parallelism: Some(if running { deployed.parallelism } else { 0 }),
        worker_generation,
        trigger_nonce: nonce,
        upgrade_mode,
    })
}

/// How an upgrade or restart in `mode` stops and restarts the workers, in
/// words.
fn mode_note(op: &Operation, savepoint: &str) -> String {
    match op.upgrade_mode.unwrap_or_default() {
        UpgradeMode::Savepoint => {
            format!("upgradeMode savepoint: stop-with-savepoint {savepoint}, then restore it")
        }
        UpgradeMode::LastState => "upgradeMode lastState: stopping the workers without a savepoint; the new ones restore the newest committed checkpoint".to_owned(),
        UpgradeMode::Stateless => "upgradeMode stateless: stopping the workers; the new ones start with empty state from the committed offsets".to_owned(),
    }
}

/// The Normal event announcing a started operation.
pub fn start_event(op: &Operation) -> Effect {
    let from = op.from_parallelism.unwrap_or(0);
    let to = op.target_parallelism.unwrap_or(0);
    let savepoint = op.savepoint_id.as_deref().unwrap_or("none");
    let (reason, note) = match op.kind {
        OperationKind::Suspend => (
            "SuspendStarted",
            format!("suspending: stop-with-savepoint {savepoint} of {from} workers"),
        ),
        OperationKind::Resume => (
            "ResumeStarted",
            match &op.savepoint_id {
                Some(id) => format!("resuming {to} workers from savepoint {id}"),
                None => format!("resuming {to} workers from the newest committed checkpoint"),
            },
        ),
        OperationKind::Savepoint => (
            "SavepointStarted",
            format!(
                "savepoint {savepoint} of {from} workers for savepointTriggerNonce {}",
                op.trigger_nonce.unwrap_or_default()
            ),
        ),
        OperationKind::PeriodicSavepoint => (
            "SavepointStarted",
            format!(
                "periodic savepoint {savepoint} of {from} workers (spec.savepoint.periodicInterval)"
            ),
        ),
        OperationKind::Upgrade => (
            "UpgradeStarted",
            format!(
                "{from} workers run an older pod template (spec or image changed); {}",
                mode_note(op, savepoint)
            ),
        ),
        OperationKind::Restart => (
            "RestartStarted",
            format!(
                "restarting {from} workers for restartNonce {}; {}",
                op.trigger_nonce.unwrap_or_default(),
                mode_note(op, savepoint)
            ),
        ),
        OperationKind::Rescale => (
            "RescaleStarted",
            format!("rescaling from {from} to {to} workers through savepoint {savepoint}"),
        ),
    };
    Effect::Event {
        warning: false,
        reason,
        note,
    }
}

//! The observed state of a StreamingJob, computed by a pure function of the
//! job, the validation result, its StatefulSet, its pods and what its
//! workers report.
//!
//! Five conditions follow the Kubernetes and kstatus conventions, so that
//! `kubectl wait`, Flux and Argo CD report jobs truthfully:
//! - `Ready`: every wanted worker runs the current pod template, is ready,
//!   and reports (`GET /v1/status`) that it restored and consumes at the
//!   current fencing generation;
//! - `Reconciling` (kstatus, abnormal-true): the job is moving towards its
//!   spec (creating, an operation in flight, workers starting or restoring,
//!   workers on an older template waiting for their upgrade);
//! - `Stalled` (kstatus, abnormal-true): the job cannot get there without
//!   help: an invalid spec, a conflict, a stage or rollout past its progress
//!   deadline, an operation that keeps failing;
//! - `Progressing` (as Deployments): the same as Reconciling, for tools that
//!   read that one;
//! - `Degraded`: something needs a human (invalid spec, failing workers, a
//!   failed operation, a missed progress deadline).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::SignedDuration;
use kube::{Resource, ResourceExt};
use weir_crds::StreamingJob;
use weir_crds::status::{OperationStage, Phase, StreamingJobStatus};

use crate::builders::{self, Rollout};
use crate::control::WorkerReport;
use crate::operation;
use crate::restart;

/// Type of the condition true when every wanted worker is ready.
pub const READY: &str = "Ready";
/// Type of the kstatus condition true while the job moves towards its spec.
pub const RECONCILING: &str = "Reconciling";
/// Type of the kstatus condition true when the job cannot make progress.
pub const STALLED: &str = "Stalled";
/// Type of the condition true while the job moves towards its spec.
pub const PROGRESSING: &str = "Progressing";
/// Type of the condition true when the job needs attention.
pub const DEGRADED: &str = "Degraded";
/// Reason of the conditions of a job whose spec failed validation.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Reason of the Degraded condition of a job whose latest operation failed.
pub const OPERATION_FAILED: &str = "OperationFailed";
/// Reason of the Stalled and Degraded conditions of a job past its progress
/// deadline.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// How long workers may take to start, become ready and restore outside an
/// operation (a new job, pods recreated after a crash or a node loss)
/// before the job is reported Stalled and Degraded.
pub const PROGRESS_DEADLINE: Duration = operation::RESTORING_TIMEOUT;

/// Consecutive failures of the same operation after which the job is
/// reported Stalled (it is still retried after each backoff).
pub const STALLED_AFTER_FAILURES: u32 = 3;

/// Container waiting reasons that mean a worker cannot start on its own.
const FAILING_REASONS: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What the operator observed of a job's workers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    /// The job's StatefulSet, if it exists.
    pub stateful_set: Option<&'a StatefulSet>,
    /// The job's worker pods.
    pub pods: &'a [Pod],
    /// The status report of each worker the StatefulSet runs, by ordinal
    /// (`None`: unreachable); `None` when the workers were not asked.
    pub workers: Option<&'a [Option<WorkerReport>]>,
}

/// A condition's status, reason and message before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    status: bool,
    reason: &'static str,
    message: String,
}

impl Verdict {
    fn new(status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The phase and every condition's verdict.
struct Assessment {
    phase: Phase,
    ready: Verdict,
    /// Reconciling, and Progressing, which says the same.
    reconciling: Verdict,
    stalled: Verdict,
    degraded: Verdict,
}

/// Counts taken from the StatefulSet.
struct Workers {
    desired: i32,
    current: i32,
    ready: i32,
    updated: i32,
    synced: bool,
}

impl Workers {
    fn of(job: &StreamingJob, sts: &StatefulSet) -> Self {
        let status = sts.status.clone().unwrap_or_default();
        let synced = match (status.observed_generation, sts.metadata.generation) {
            (Some(observed), Some(generation)) => observed >= generation,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        Self {
            desired: builders::desired_replicas(job),
            current: status.replicas,
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            synced,
        }
    }
}

/// Pods that cannot start on their own, with the reason, as `pod: reason`.
fn failing_pods(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            if status.phase.as_deref() == Some("Failed") {
                return Some(format!("{}: pod failed", pod.name_any()));
            }
            status
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .find(|reason| FAILING_REASONS.contains(&reason.as_str()))
                .map(|reason| format!("{}: {reason}", pod.name_any()))
        })
        .collect()
}

fn stage_phase(stage: OperationStage) -> (Phase, &'static str) {
    match stage {
        OperationStage::Savepointing => (Phase::Savepointing, "Savepointing"),
        OperationStage::Rescaling => (Phase::Rescaling, "Rescaling"),
        OperationStage::Restoring => (Phase::Restoring, "Restoring"),
    }
}

/// Why the workers of a StatefulSet running `rollout` do not all report
/// that they restored and consume, if they do not: `desired` workers are
/// wanted, `reports` is what each answered.
fn not_restored(
    reports: &[Option<WorkerReport>],
    desired: i32,
    rollout: Option<&Rollout>,
) -> Option<String> {
    let wanted = usize::try_from(desired).unwrap_or(0);
    let waiting: Vec<String> = (0..wanted)
        .filter_map(|ordinal| {
            let why = match reports.get(ordinal).and_then(Option::as_ref) {
                None => "unreachable".to_owned(),
                Some(report) => match rollout {
                    Some(r) if report.generation != r.generation => {
                        format!("still generation {}", report.generation)
                    }
                    _ if !report.ready => match &report.error {
                        Some(error) => format!("not restored: {error}"),
                        None => "restoring".to_owned(),
                    },
                    _ => return None,
                },
            };
            Some(format!("worker {ordinal}: {why}"))
        })
        .collect();
    (!waiting.is_empty()).then(|| waiting.join("; "))
}

/// Whether `kind` has been True since before `deadline` ago, by the
/// previous conditions.
fn true_for_longer_than(
    previous: &[Condition],
    kind: &str,
    deadline: Duration,
    now: &Time,
) -> bool {
    previous
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .is_some_and(|c| {
            let elapsed = now.0.duration_since(c.last_transition_time.0);
            elapsed >= SignedDuration::try_from(deadline).unwrap_or(SignedDuration::MAX)
        })
}

/// The phase and the verdicts (see the module documentation).
fn assess(
    job: &StreamingJob,
    problems: &[String],
    observed: Observed<'_>,
    now: &Time,
) -> Assessment {
    let status = job.status.as_ref();
    let previous: &[Condition] = status.map_or(&[], |s| &s.conditions);
    let failing = failing_pods(observed.pods);
    let failure = status.and_then(|s| s.last_failed_operation.as_ref());
    let degraded = if !problems.is_empty() {
        Verdict::new(true, INVALID_SPEC, problems.join("; "))
    } else if !failing.is_empty() {
        Verdict::new(true, "WorkersFailing", failing.join("; "))
    } else if let Some(failure) = failure {
        Verdict::new(
            true,
            OPERATION_FAILED,
            format!(
                "{:?} failed ({} in a row): {}; the workers run unchanged and it is retried after a backoff",
                failure.kind, failure.attempts, failure.message
            ),
        )
    } else {
        Verdict::new(false, "AsExpected", "no problem detected")
    };
    if !problems.is_empty() {
        let message = format!("the spec is invalid: {}", problems.join("; "));
        return Assessment {
            phase: Phase::Failed,
            ready: Verdict::new(false, INVALID_SPEC, message.clone()),
            reconciling: Verdict::new(false, INVALID_SPEC, message.clone()),
            stalled: Verdict::new(true, INVALID_SPEC, message),
            degraded,
        };
    }
    let not_stalled = Verdict::new(false, "Progressing", "no progress deadline missed");
    if let Some(op) = status.and_then(|s| s.operation.as_ref()) {
        let (phase, reason) = stage_phase(op.stage);
        let target = op
            .target_parallelism
            .map(|p| format!(" to parallelism {p}"))
            .unwrap_or_default();
        let message = format!("{:?}{target} in progress: {reason}", op.kind);
        let (stalled, degraded) = match operation::stalled(op, now) {
            Some(why) if failing.is_empty() => (
                Verdict::new(true, PROGRESS_DEADLINE_EXCEEDED, why.clone()),
                Verdict::new(true, PROGRESS_DEADLINE_EXCEEDED, why),
            ),
            Some(why) => (
                Verdict::new(true, PROGRESS_DEADLINE_EXCEEDED, why),
                degraded,
            ),
            None => (not_stalled, degraded),
        };
        return Assessment {
            phase,
            ready: Verdict::new(false, reason, message.clone()),
            reconciling: Verdict::new(true, reason, message),
            stalled,
            degraded,
        };
    }
    let (phase, ready, reconciling) = settle_workers(job, observed);
    // Moving for too long, outside an operation: past the deadline.
    let late =
        reconciling.status && true_for_longer_than(previous, RECONCILING, PROGRESS_DEADLINE, now);
    let repeated = failure.filter(|f| f.attempts >= STALLED_AFTER_FAILURES);
    let (stalled, degraded) = if late {
        let why = format!(
            "{} for more than {}s (progress deadline)",
            reconciling.message,
            PROGRESS_DEADLINE.as_secs()
        );
        let degraded = if degraded.status {
            degraded
        } else {
            Verdict::new(true, PROGRESS_DEADLINE_EXCEEDED, why.clone())
        };
        (
            Verdict::new(true, PROGRESS_DEADLINE_EXCEEDED, why),
            degraded,
        )
    } else if let Some(failure) = repeated {
        let why = format!(
            "{:?} failed {} times in a row: {}",
            failure.kind, failure.attempts, failure.message
        );
        (Verdict::new(true, OPERATION_FAILED, why), degraded)
    } else {
        (not_stalled, degraded)
    };
    Assessment {
        phase,
        ready,
        reconciling,
        stalled,
        degraded,
    }
}

/// Phase, Ready and Reconciling of a job with no operation in flight, from
/// its StatefulSet and what its workers report.
fn settle_workers(job: &StreamingJob, observed: Observed<'_>) -> (Phase, Verdict, Verdict) {
    let Some(sts) = observed.stateful_set else {
        if job.spec.suspend {
            let verdict = Verdict::new(false, "Suspended", "the job is suspended");
            return (Phase::Suspended, verdict.clone(), verdict);
        }
        let message = "the workers are being created";
        return (
            Phase::Pending,
            Verdict::new(false, "Creating", message),
            Verdict::new(true, "Creating", message),
        );
    };
    let w = Workers::of(job, sts);
    let rollout = Rollout::of(sts);
    let restoring = observed
        .workers
        .and_then(|reports| not_restored(reports, w.desired, rollout.as_ref()));
    let outdated = restart::outdated_pods(sts, observed.pods).len();
    let reconciling = if !w.synced {
        Verdict::new(
            true,
            "Updating",
            "the StatefulSet controller has not yet observed the latest spec",
        )
    } else if w.current != w.desired {
        let reason = if job.spec.suspend {
            "Suspending"
        } else {
            "Scaling"
        };
        Verdict::new(
            true,
            reason,
            format!("{} workers running, {} wanted", w.current, w.desired),
        )
    } else if w.ready < w.desired {
        Verdict::new(
            true,
            "WaitingForWorkers",
            format!("{}/{} workers ready", w.ready, w.desired),
        )
    } else if w.updated < w.current || outdated > 0 {
        Verdict::new(
            true,
            "UpgradePending",
            format!(
                "{} of {} workers run an older pod template; an upgrade (spec.upgradeMode) replaces them",
                (w.current - w.updated).max(i32::try_from(outdated).unwrap_or(i32::MAX)),
                w.current
            ),
        )
    } else if let Some(waiting) = restoring {
        Verdict::new(
            true,
            "WaitingForRestore",
            format!("not every worker reports it restored and consumes: {waiting}"),
        )
    } else if job.spec.suspend {
        Verdict::new(false, "Suspended", "the job is suspended")
    } else {
        Verdict::new(false, "Stable", "the workers run the latest spec")
    };
    if job.spec.suspend {
        let ready = Verdict::new(false, "Suspended", "the job is suspended (spec.suspend)");
        return (Phase::Suspended, ready, reconciling);
    }
    if reconciling.status {
        let ready = Verdict::new(false, "WorkersNotReady", reconciling.message.clone());
        return (Phase::Pending, ready, reconciling);
    }
    let ready = Verdict::new(
        true,
        "WorkersReady",
        format!(
            "{}/{} workers ready on the current pod template",
            w.ready, w.desired
        ),
    );
    (Phase::Running, ready, reconciling)
}

fn condition(
    kind: &str,
    verdict: Verdict,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if verdict.status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The conditions of an assessment, in a stable order.
fn conditions(
    assessment: Assessment,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> (Phase, Vec<Condition>) {
    let Assessment {
        phase,
        ready,
        reconciling,
        stalled,
        degraded,
    } = assessment;
    let conditions = vec![
        condition(READY, ready, generation, previous, now),
        condition(RECONCILING, reconciling.clone(), generation, previous, now),
        condition(STALLED, stalled, generation, previous, now),
        condition(PROGRESSING, reconciling, generation, previous, now),
        condition(DEGRADED, degraded, generation, previous, now),
    ];
    (phase, conditions)
}

/// The status of `job` given its validation problems (empty when valid),
/// what was observed of its workers, and the current time. Fields the
/// operator does not own here (lag, rates, histories, operation) are kept
/// from the job's current status; a condition keeps its lastTransitionTime
/// while its status does not change.
pub fn compute(
    job: &StreamingJob,
    problems: &[String],
    observed: Observed<'_>,
    now: &Time,
) -> StreamingJobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let (phase, conditions) = conditions(
        assess(job, problems, observed, now),
        generation,
        &previous.conditions,
        now,
    );
    // An invalid spec is judged without reading the workers, which keep
    // running untouched: their count stays as last observed.
    let parallelism = match observed.stateful_set {
        Some(sts) => sts.status.as_ref().map_or(0, |s| s.replicas),
        None if !problems.is_empty() => previous.parallelism.unwrap_or(0),
        None => 0,
    };
    StreamingJobStatus {
        phase: Some(phase),
        observed_generation: generation,
        parallelism: Some(parallelism),
        selector: Some(builders::selector_string(&job.name_any())),
        worker_generation: previous.worker_generation.or_else(|| {
            observed
                .stateful_set
                .and_then(Rollout::of)
                .map(|rollout| rollout.generation)
        }),
        conditions,
        ..previous
    }
}

/// The status of `job` when the reconciliation is stopped by something that
/// needs a human (see [`crate::Error::condition`]): Ready, Reconciling and
/// Progressing are False and Stalled and Degraded are True, all with
/// `reason` and `message`; the phase and the observed worker counts stay as
/// last computed.
pub fn blocked(
    job: &StreamingJob,
    reason: &'static str,
    message: &str,
    now: &Time,
) -> StreamingJobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let verdict = |status| Verdict::new(status, reason, message);
    let assessment = Assessment {
        phase: previous.phase.unwrap_or(Phase::Pending),
        ready: verdict(false),
        reconciling: verdict(false),
        stalled: verdict(true),
        degraded: verdict(true),
    };
    let (phase, conditions) = conditions(assessment, generation, &previous.conditions, now);
    StreamingJobStatus {
        phase: Some(phase),
        observed_generation: generation,
        parallelism: Some(previous.parallelism.unwrap_or(0)),
        selector: Some(builders::selector_string(&job.name_any())),
        conditions,
        ..previous
    }
}

/// The conditions of a job the operator cannot read (see
/// [`crate::controller::report_undecodable`]): Ready, Reconciling and
/// Progressing False, Stalled and Degraded True, with `reason` and
/// `message`; `previous` gives the transition times to keep.
pub fn unreadable(
    previous: &[Condition],
    generation: Option<i64>,
    reason: &'static str,
    message: &str,
    now: &Time,
) -> Vec<Condition> {
    let verdict = |status| Verdict::new(status, reason, message);
    let assessment = Assessment {
        phase: Phase::Failed,
        ready: verdict(false),
        reconciling: verdict(false),
        stalled: verdict(true),
        degraded: verdict(true),
    };
    conditions(assessment, generation, previous, now).1
}

/// Whether two condition lists say the same (transition times aside).
pub fn same_conditions(old: &[Condition], new: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    old.len() == new.len() && old.iter().map(key).eq(new.iter().map(key))
}

/// The status fields the operator owns, as the body of a server-side apply
/// of the status subresource: what [`compute`] sets and what the operation
/// protocol ([`crate::operation`]) records. A field left out (None or
/// empty) is removed.
pub fn apply_body(status: &StreamingJobStatus) -> serde_json::Value {
    let owned = StreamingJobStatus {
        phase: status.phase,
        observed_generation: status.observed_generation,
        parallelism: status.parallelism,
        selector: status.selector.clone(),
        worker_generation: status.worker_generation,
        conditions: status.conditions.clone(),
        operation: status.operation.clone(),
        last_savepoint: status.last_savepoint.clone(),
        savepoint_history: status.savepoint_history.clone(),
        scaling_history: status.scaling_history.clone(),
        observed_savepoint_trigger_nonce: status.observed_savepoint_trigger_nonce,
        observed_restart_nonce: status.observed_restart_nonce,
        last_failed_operation: status.last_failed_operation.clone(),
        ..StreamingJobStatus::default()
    };
    serde_json::json!({
        "apiVersion": StreamingJob::api_version(&()),
        "kind": StreamingJob::kind(&()),
        "status": owned,
    })
}

/// Whether the fields owned here differ between two statuses.
pub fn owned_fields_changed(old: Option<&StreamingJobStatus>, new: &StreamingJobStatus) -> bool {
    old.is_none_or(|old| apply_body(old) != apply_body(new))
}

#[cfg(test)]
mod tests;

//! The observed state of a StreamingJob, computed by a pure function of the
//! job, the validation result, its StatefulSet and its pods.
//!
//! Three conditions follow the usual Kubernetes conventions:
//! - `Ready`: every wanted worker is ready (`kubectl wait --for=condition=Ready`);
//! - `Progressing`: the job is moving towards its spec (creating, scaling,
//!   waiting for workers, an operation in flight);
//! - `Degraded`: something needs a human (invalid spec, failing workers).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};
use weir_crds::StreamingJob;
use weir_crds::status::{OperationStage, Phase, StreamingJobStatus};

use crate::builders;

/// Type of the condition true when every wanted worker is ready.
pub const READY: &str = "Ready";
/// Type of the condition true while the job moves towards its spec.
pub const PROGRESSING: &str = "Progressing";
/// Type of the condition true when the job needs attention.
pub const DEGRADED: &str = "Degraded";
/// Reason of the conditions of a job whose spec failed validation.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// Reason of the Degraded condition of a job whose latest operation failed.
pub const OPERATION_FAILED: &str = "OperationFailed";

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

/// Phase and the three verdicts, in the order Ready, Progressing, Degraded.
fn assess(
    job: &StreamingJob,
    problems: &[String],
    observed: Observed<'_>,
) -> (Phase, [Verdict; 3]) {
    let failing = failing_pods(observed.pods);
    let degraded = if !problems.is_empty() {
        Verdict::new(true, INVALID_SPEC, problems.join("; "))
    } else if !failing.is_empty() {
        Verdict::new(true, "WorkersFailing", failing.join("; "))
    } else if let Some(failure) = job
        .status
        .as_ref()
        .and_then(|s| s.last_failed_operation.as_ref())
    {
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
        return (
            Phase::Failed,
            [
                Verdict::new(false, INVALID_SPEC, message.clone()),
                Verdict::new(false, INVALID_SPEC, message),
                degraded,
            ],
        );
    }
    if let Some(op) = job.status.as_ref().and_then(|s| s.operation.as_ref()) {
        let (phase, reason) = stage_phase(op.stage);
        let target = op
            .target_parallelism
            .map(|p| format!(" to parallelism {p}"))
            .unwrap_or_default();
        let message = format!("{:?}{target} in progress: {reason}", op.kind);
        return (
            phase,
            [
                Verdict::new(false, reason, message.clone()),
                Verdict::new(true, reason, message),
                degraded,
            ],
        );
    }
    let Some(sts) = observed.stateful_set else {
        let (phase, ready) = if job.spec.suspend {
            (
                Phase::Suspended,
                Verdict::new(false, "Suspended", "the job is suspended"),
            )
        } else {
            (
                Phase::Pending,
                Verdict::new(false, "Creating", "the workers are being created"),
            )
        };
        let progressing = Verdict::new(!job.spec.suspend, ready.reason, ready.message.clone());
        return (phase, [ready, progressing, degraded]);
    };
    let w = Workers::of(job, sts);
    let progressing = if !w.synced {
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
    } else if w.updated < w.current {
        Verdict::new(
            true,
            "RestartPending",
            format!(
                "{} of {} workers run an older pod template; they are replaced at the next restart (updateStrategy OnDelete)",
                w.current - w.updated,
                w.current
            ),
        )
    } else if job.spec.suspend {
        Verdict::new(false, "Suspended", "the job is suspended")
    } else {
        Verdict::new(false, "Stable", "the workers run the latest spec")
    };
    if job.spec.suspend {
        let ready = Verdict::new(false, "Suspended", "the job is suspended (spec.suspend)");
        return (Phase::Suspended, [ready, progressing, degraded]);
    }
    let ready_message = format!("{}/{} workers ready", w.ready, w.desired);
    if w.synced && w.ready >= w.desired && w.current == w.desired {
        let ready = Verdict::new(true, "WorkersReady", ready_message);
        (Phase::Running, [ready, progressing, degraded])
    } else {
        let ready = Verdict::new(false, "WorkersNotReady", ready_message);
        (Phase::Pending, [ready, progressing, degraded])
    }
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
    let (phase, [ready, progressing, degraded]) = assess(job, problems, observed);
    let generation = job.metadata.generation;
    let conditions = vec![
        condition(READY, ready, generation, &previous.conditions, now),
        condition(
            PROGRESSING,
            progressing,
            generation,
            &previous.conditions,
            now,
        ),
        condition(DEGRADED, degraded, generation, &previous.conditions, now),
    ];
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
                .and_then(builders::Rollout::of)
                .map(|rollout| rollout.generation)
        }),
        conditions,
        ..previous
    }
}

/// The status of `job` when the reconciliation is stopped by something that
/// needs a human (see [`crate::Error::condition`]): Ready and Progressing are
/// False and Degraded is True, all with `reason` and `message`; the phase and
/// the observed worker counts stay as last computed.
pub fn blocked(
    job: &StreamingJob,
    reason: &'static str,
    message: &str,
    now: &Time,
) -> StreamingJobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let verdict = |status| Verdict::new(status, reason, message);
    let conditions = vec![
        condition(READY, verdict(false), generation, &previous.conditions, now),
        condition(
            PROGRESSING,
            verdict(false),
            generation,
            &previous.conditions,
            now,
        ),
        condition(
            DEGRADED,
            verdict(true),
            generation,
            &previous.conditions,
            now,
        ),
    ];
    StreamingJobStatus {
        phase: Some(previous.phase.unwrap_or(Phase::Pending)),
        observed_generation: generation,
        parallelism: Some(previous.parallelism.unwrap_or(0)),
        selector: Some(builders::selector_string(&job.name_any())),
        conditions,
        ..previous
    }
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
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::testing::sample_job;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn sts(generation: i64, observed: i64, replicas: i32, ready: i32, updated: i32) -> StatefulSet {
        StatefulSet {
            metadata: kube::api::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: None,
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                ..Default::default()
            }),
        }
    }

    fn pod(name: &str, waiting: Option<&str>) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "worker".into(),
                    state: Some(ContainerState {
                        waiting: waiting.map(|r| ContainerStateWaiting {
                            reason: Some(r.into()),
                            message: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn cond<'a>(status: &'a StreamingJobStatus, kind: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == kind).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    struct Case {
        name: &'static str,
        suspend: bool,
        problems: Vec<String>,
        sts: Option<StatefulSet>,
        pods: Vec<Pod>,
        phase: Phase,
        ready: (&'static str, &'static str),
        progressing: (&'static str, &'static str),
        degraded: (&'static str, &'static str),
    }

    #[test]
    fn status_table() {
        let cases = vec![
            Case {
                name: "no statefulset yet",
                suspend: false,
                problems: vec![],
                sts: None,
                pods: vec![],
                phase: Phase::Pending,
                ready: ("False", "Creating"),
                progressing: ("True", "Creating"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "all workers ready",
                suspend: false,
                problems: vec![],
                sts: Some(sts(1, 1, 2, 2, 2)),
                pods: vec![pod("clicks-0", None), pod("clicks-1", None)],
                phase: Phase::Running,
                ready: ("True", "WorkersReady"),
                progressing: ("False", "Stable"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "pods not ready",
                suspend: false,
                problems: vec![],
                sts: Some(sts(1, 1, 2, 1, 2)),
                pods: vec![
                    pod("clicks-0", None),
                    pod("clicks-1", Some("ContainerCreating")),
                ],
                phase: Phase::Pending,
                ready: ("False", "WorkersNotReady"),
                progressing: ("True", "WaitingForWorkers"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "crash looping worker",
                suspend: false,
                problems: vec![],
                sts: Some(sts(1, 1, 2, 1, 2)),
                pods: vec![
                    pod("clicks-0", None),
                    pod("clicks-1", Some("CrashLoopBackOff")),
                ],
                phase: Phase::Pending,
                ready: ("False", "WorkersNotReady"),
                progressing: ("True", "WaitingForWorkers"),
                degraded: ("True", "WorkersFailing"),
            },
            Case {
                name: "statefulset spec not yet observed",
                suspend: false,
                problems: vec![],
                sts: Some(sts(2, 1, 2, 2, 2)),
                pods: vec![],
                phase: Phase::Pending,
                ready: ("False", "WorkersNotReady"),
                progressing: ("True", "Updating"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "statefulset rolling (pods on an older revision)",
                suspend: false,
                problems: vec![],
                sts: Some(sts(2, 2, 2, 2, 1)),
                pods: vec![],
                phase: Phase::Running,
                ready: ("True", "WorkersReady"),
                progressing: ("True", "RestartPending"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "scaling up",
                suspend: false,
                problems: vec![],
                sts: Some(sts(2, 2, 1, 1, 1)),
                pods: vec![],
                phase: Phase::Pending,
                ready: ("False", "WorkersNotReady"),
                progressing: ("True", "Scaling"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "invalid spec",
                suspend: false,
                problems: vec!["spec.source.topics: must not be empty".into()],
                sts: Some(sts(1, 1, 2, 2, 2)),
                pods: vec![],
                phase: Phase::Failed,
                ready: ("False", INVALID_SPEC),
                progressing: ("False", INVALID_SPEC),
                degraded: ("True", INVALID_SPEC),
            },
            Case {
                name: "suspending",
                suspend: true,
                problems: vec![],
                sts: Some(sts(2, 2, 2, 2, 2)),
                pods: vec![],
                phase: Phase::Suspended,
                ready: ("False", "Suspended"),
                progressing: ("True", "Suspending"),
                degraded: ("False", "AsExpected"),
            },
            Case {
                name: "suspended",
                suspend: true,
                problems: vec![],
                sts: Some(sts(2, 2, 0, 0, 0)),
                pods: vec![],
                phase: Phase::Suspended,
                ready: ("False", "Suspended"),
                progressing: ("False", "Suspended"),
                degraded: ("False", "AsExpected"),
            },
        ];
        for case in cases {
            let mut job = sample_job();
            job.spec.suspend = case.suspend;
            let observed = Observed {
                stateful_set: case.sts.as_ref(),
                pods: &case.pods,
            };
            let status = compute(&job, &case.problems, observed, &time(100));
            assert_eq!(status.phase, Some(case.phase), "{}", case.name);
            assert_eq!(cond(&status, READY), case.ready, "{}", case.name);
            assert_eq!(
                cond(&status, PROGRESSING),
                case.progressing,
                "{}",
                case.name
            );
            assert_eq!(cond(&status, DEGRADED), case.degraded, "{}", case.name);
            assert_eq!(status.observed_generation, Some(1), "{}", case.name);
            assert_eq!(
                status.selector.as_deref(),
                Some("app.kubernetes.io/instance=clicks,app.kubernetes.io/name=weir-worker"),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn invalid_spec_message_lists_every_problem() {
        let job = sample_job();
        let problems = vec!["spec.a: bad".to_owned(), "spec.b: worse".to_owned()];
        let status = compute(&job, &problems, Observed::default(), &time(1));
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            ready.message,
            "the spec is invalid: spec.a: bad; spec.b: worse"
        );
        assert_eq!(status.parallelism, Some(0));

        let mut running = sample_job();
        running.status = Some(StreamingJobStatus {
            parallelism: Some(2),
            ..Default::default()
        });
        let status = compute(&running, &problems, Observed::default(), &time(1));
        assert_eq!(
            status.parallelism,
            Some(2),
            "untouched workers are still counted"
        );
    }

    #[test]
    fn a_blocked_job_is_degraded_and_keeps_its_counts() {
        let mut job = sample_job();
        let ready_sts = sts(1, 1, 2, 2, 2);
        let observed = Observed {
            stateful_set: Some(&ready_sts),
            pods: &[],
        };
        job.status = Some(compute(&job, &[], observed, &time(10)));
        let status = blocked(
            &job,
            "SecretNotFound",
            "Secret streams/kafka is missing",
            &time(20),
        );
        assert_eq!(cond(&status, READY), ("False", "SecretNotFound"));
        assert_eq!(cond(&status, PROGRESSING), ("False", "SecretNotFound"));
        assert_eq!(cond(&status, DEGRADED), ("True", "SecretNotFound"));
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(degraded.message, "Secret streams/kafka is missing");
        assert_eq!(degraded.last_transition_time, time(20));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.parallelism, Some(2));
        assert_eq!(status.observed_generation, Some(1));

        let fresh = blocked(&sample_job(), "ApplyFailed", "rejected", &time(1));
        assert_eq!(fresh.phase, Some(Phase::Pending));
        assert_eq!(fresh.parallelism, Some(0));
    }

    #[test]
    fn operation_in_flight_sets_the_phase() {
        let mut job = sample_job();
        job.status = Some(StreamingJobStatus {
            operation: Some(weir_crds::status::Operation {
                kind: weir_crds::status::OperationKind::Rescale,
                stage: OperationStage::Savepointing,
                target_parallelism: Some(4),
                savepoint_id: Some("sp".into()),
                started_at: time(1),
                stage_started_at: None,
                deadline: None,
                from_parallelism: Some(2),
                worker_generation: None,
                trigger_nonce: None,
            }),
            ..Default::default()
        });
        let sts = sts(1, 1, 2, 2, 2);
        let observed = Observed {
            stateful_set: Some(&sts),
            pods: &[],
        };
        let status = compute(&job, &[], observed, &time(2));
        assert_eq!(status.phase, Some(Phase::Savepointing));
        assert_eq!(cond(&status, PROGRESSING), ("True", "Savepointing"));
        assert!(status.operation.is_some(), "the operation is kept");
    }

    #[test]
    fn transition_time_only_moves_when_the_status_changes() {
        let mut job = sample_job();
        let ready_sts = sts(1, 1, 2, 2, 2);
        let observed = Observed {
            stateful_set: Some(&ready_sts),
            pods: &[],
        };
        let first = compute(&job, &[], observed, &time(10));
        job.status = Some(first.clone());
        let second = compute(&job, &[], observed, &time(20));
        assert_eq!(first.conditions, second.conditions);
        assert!(!owned_fields_changed(Some(&first), &second));

        job.status = Some(second.clone());
        let degraded = compute(&job, &["spec.x: bad".into()], observed, &time(30));
        let ready = degraded
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(ready.last_transition_time, time(30));
        assert!(owned_fields_changed(Some(&second), &degraded));
    }
}

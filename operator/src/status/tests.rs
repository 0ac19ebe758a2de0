//! Tests of the status and its conditions.

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
            name: "pods on an older template are not ready: an upgrade is due",
            suspend: false,
            problems: vec![],
            sts: Some(sts(2, 2, 2, 2, 1)),
            pods: vec![],
            phase: Phase::Pending,
            ready: ("False", "WorkersNotReady"),
            progressing: ("True", "UpgradePending"),
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
            workers: None,
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
        assert_eq!(
            cond(&status, RECONCILING),
            case.progressing,
            "{}: Reconciling says what Progressing says",
            case.name
        );
        let stalled = if case.problems.is_empty() {
            ("False", "Progressing")
        } else {
            ("True", INVALID_SPEC)
        };
        assert_eq!(cond(&status, STALLED), stalled, "{}", case.name);
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
        workers: None,
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
    assert_eq!(cond(&status, STALLED), ("True", "SecretNotFound"));
    assert_eq!(cond(&status, RECONCILING), ("False", "SecretNotFound"));
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
            upgrade_mode: None,
        }),
        ..Default::default()
    });
    let sts = sts(1, 1, 2, 2, 2);
    let observed = Observed {
        stateful_set: Some(&sts),
        pods: &[],
        workers: None,
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
        workers: None,
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

fn report(generation: i64, ready: bool) -> Option<WorkerReport> {
    Some(WorkerReport {
        generation,
        ready,
        ..WorkerReport::default()
    })
}

#[test]
fn ready_waits_until_every_worker_reports_it_restored() {
    let job = sample_job();
    let ready_sts = sts(1, 1, 2, 2, 2);
    let status = |workers: &[Option<WorkerReport>]| {
        let observed = Observed {
            stateful_set: Some(&ready_sts),
            pods: &[],
            workers: Some(workers),
        };
        compute(&job, &[], observed, &time(10))
    };
    let restoring = status(&[report(0, true), report(0, false)]);
    assert_eq!(cond(&restoring, READY), ("False", "WorkersNotReady"));
    assert_eq!(cond(&restoring, RECONCILING), ("True", "WaitingForRestore"));
    let message = &restoring.conditions[0].message;
    assert!(message.contains("worker 1: restoring"), "{message}");
    let unreachable = status(&[report(0, true), None]);
    assert_eq!(cond(&unreachable, READY).0, "False");
    let running = status(&[report(0, true), report(0, true)]);
    assert_eq!(cond(&running, READY), ("True", "WorkersReady"));
    assert_eq!(cond(&running, RECONCILING), ("False", "Stable"));
    assert_eq!(running.phase, Some(Phase::Running));
}

#[test]
fn a_rollout_past_its_progress_deadline_is_stalled_and_degraded() {
    let mut job = sample_job();
    let slow_sts = sts(1, 1, 2, 1, 2);
    let observed = Observed {
        stateful_set: Some(&slow_sts),
        pods: &[],
        workers: None,
    };
    let first = compute(&job, &[], observed, &time(1000));
    assert_eq!(cond(&first, RECONCILING), ("True", "WaitingForWorkers"));
    assert_eq!(cond(&first, STALLED).0, "False");
    job.status = Some(first);
    let deadline = i64::try_from(PROGRESS_DEADLINE.as_secs()).unwrap();
    let before = compute(&job, &[], observed, &time(1000 + deadline - 1));
    assert_eq!(cond(&before, STALLED).0, "False");
    let late = compute(&job, &[], observed, &time(1000 + deadline));
    assert_eq!(cond(&late, STALLED), ("True", PROGRESS_DEADLINE_EXCEEDED));
    assert_eq!(cond(&late, DEGRADED), ("True", PROGRESS_DEADLINE_EXCEEDED));
    assert_eq!(cond(&late, RECONCILING).0, "True", "still trying");
}

#[test]
fn an_operation_stage_past_its_timeout_is_stalled() {
    let mut job = sample_job();
    let op = weir_crds::status::Operation {
        kind: weir_crds::status::OperationKind::Upgrade,
        stage: OperationStage::Restoring,
        target_parallelism: Some(2),
        savepoint_id: Some("upgrade-1".into()),
        started_at: time(0),
        stage_started_at: Some(time(100)),
        deadline: None,
        from_parallelism: Some(2),
        worker_generation: Some(2),
        trigger_nonce: None,
        upgrade_mode: Some(weir_crds::job::UpgradeMode::Savepoint),
    };
    job.status = Some(StreamingJobStatus {
        operation: Some(op),
        ..Default::default()
    });
    let restoring_sts = sts(1, 1, 2, 1, 2);
    let observed = Observed {
        stateful_set: Some(&restoring_sts),
        pods: &[],
        workers: None,
    };
    let timeout = i64::try_from(operation::RESTORING_TIMEOUT.as_secs()).unwrap();
    let on_time = compute(&job, &[], observed, &time(100 + timeout - 1));
    assert_eq!(cond(&on_time, RECONCILING), ("True", "Restoring"));
    assert_eq!(cond(&on_time, STALLED).0, "False");
    let late = compute(&job, &[], observed, &time(100 + timeout));
    assert_eq!(cond(&late, STALLED), ("True", PROGRESS_DEADLINE_EXCEEDED));
    assert_eq!(cond(&late, DEGRADED), ("True", PROGRESS_DEADLINE_EXCEEDED));
    assert_eq!(late.phase, Some(Phase::Restoring));
}

#[test]
fn an_operation_failing_again_and_again_is_stalled() {
    let mut job = sample_job();
    job.spec.parallelism = 3;
    let sts = sts(1, 1, 2, 2, 2);
    let observed = Observed {
        stateful_set: Some(&sts),
        pods: &[],
        workers: None,
    };
    for (attempts, stalled) in [(1, "False"), (STALLED_AFTER_FAILURES, "True")] {
        job.status = Some(StreamingJobStatus {
            last_failed_operation: Some(weir_crds::status::FailedOperation {
                kind: weir_crds::status::OperationKind::Rescale,
                time: time(0),
                message: "savepoint timed out".into(),
                attempts,
            }),
            ..Default::default()
        });
        let status = compute(&job, &[], observed, &time(10));
        assert_eq!(cond(&status, STALLED).0, stalled, "{attempts}");
        assert_eq!(cond(&status, DEGRADED), ("True", OPERATION_FAILED));
        assert_eq!(cond(&status, RECONCILING), ("True", "Scaling"));
    }
}

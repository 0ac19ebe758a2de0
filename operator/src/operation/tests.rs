//! Transition tables of the operation state machine.

use weir_crds::status::SavepointInfo;

use super::*;
use crate::control::{SavepointReport, WorkerPhase};
use crate::testing::sample_job;

mod history;
mod plans;
mod runs;

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

fn deployed(replicas: i32, parallelism: i32) -> Rollout {
    Rollout {
        replicas,
        parallelism,
        generation: 1,
        restore_from: "latest".into(),
    }
}

fn op(kind: OperationKind, stage: OperationStage) -> Operation {
    Operation {
        kind,
        stage,
        target_parallelism: Some(if kind == OperationKind::Suspend { 0 } else { 3 }),
        savepoint_id: Some("sp".into()),
        started_at: at(0),
        stage_started_at: Some(at(0)),
        deadline: Some(at(100)),
        from_parallelism: Some(2),
        worker_generation: (stage != OperationStage::Savepointing).then_some(2),
        trigger_nonce: matches!(kind, OperationKind::Savepoint | OperationKind::Restart)
            .then_some(7),
        upgrade_mode: matches!(kind, OperationKind::Upgrade | OperationKind::Restart)
            .then_some(UpgradeMode::Savepoint),
    }
}

/// An upgrade in `mode` at `stage`: without a savepoint unless the mode
/// takes one.
fn upgrade(mode: UpgradeMode, stage: OperationStage) -> Operation {
    Operation {
        upgrade_mode: Some(mode),
        target_parallelism: Some(2),
        savepoint_id: (mode == UpgradeMode::Savepoint).then(|| "sp".to_owned()),
        ..op(OperationKind::Upgrade, stage)
    }
}

fn live(rollout: &Rollout, outdated_pods: usize) -> Live<'_> {
    Live {
        rollout,
        outdated_pods,
    }
}

/// A reachable worker: generation, ready, restored from, savepoint state.
fn worker(
    generation: i64,
    ready: bool,
    restored: &str,
    savepoint: Option<SavepointState>,
) -> Option<WorkerReport> {
    Some(WorkerReport {
        generation,
        phase: if ready {
            WorkerPhase::Running
        } else {
            WorkerPhase::Restoring
        },
        ready,
        restored_from: Some(restored.to_owned()),
        savepoint: savepoint.map(|state| SavepointReport {
            id: "sp".into(),
            state,
            error: (state == SavepointState::Failed).then(|| "disk full".to_owned()),
        }),
        error: (!ready).then(|| "cannot reach the brokers".to_owned()),
        ..WorkerReport::default()
    })
}

fn running() -> Option<WorkerReport> {
    worker(1, true, "none", None)
}

fn sp(state: SavepointState) -> Option<WorkerReport> {
    worker(1, true, "none", Some(state))
}

fn restored(from: &str) -> Option<WorkerReport> {
    worker(2, true, from, None)
}

fn describe(effect: &Effect) -> String {
    match effect {
        Effect::RequestSavepoint { ordinals, id, stop } => {
            format!("savepoint {id} stop={stop} {ordinals:?}")
        }
        Effect::Resume { ordinals } => format!("resume {ordinals:?}"),
        Effect::WriteFence { generation } => format!("fence {generation}"),
        Effect::Event {
            warning, reason, ..
        } => format!("{} {reason}", if *warning { "Warning" } else { "Normal" }),
    }
}

/// Where the operation should go: a stage (and whether the deadline
/// moved), done, or failed with a message containing the text.
#[derive(Debug)]
enum Expect {
    Stay(OperationStage, bool),
    Done,
    Failed(&'static str),
}

struct Case {
    name: &'static str,
    op: Operation,
    now: i64,
    pods: usize,
    reports: Vec<Option<WorkerReport>>,
    stored: bool,
    expect: Expect,
    savepoint_completed: bool,
    effects: Vec<&'static str>,
}

fn case(name: &'static str, op: Operation, reports: Vec<Option<WorkerReport>>) -> Case {
    Case {
        name,
        op,
        now: 10,
        pods: 0,
        reports,
        stored: false,
        expect: Expect::Done,
        savepoint_completed: false,
        effects: vec![],
    }
}

#[test]
fn transition_table() {
    use OperationKind::{Rescale, Resume, Savepoint, Suspend};
    use OperationStage::{Restoring, Savepointing};
    use SavepointState::{Completed, Failed, InProgress};
    let rescaling = OperationStage::Rescaling;
    let cases = vec![
        Case {
            expect: Expect::Stay(Savepointing, false),
            effects: vec!["savepoint sp stop=true [0, 1]"],
            ..case(
                "workers are asked for the savepoint",
                op(Rescale, Savepointing),
                vec![running(), running()],
            )
        },
        Case {
            expect: Expect::Stay(Savepointing, false),
            effects: vec!["savepoint sp stop=false [1]"],
            ..case(
                "a manual savepoint does not stop; a restarted worker is asked again",
                op(Savepoint, Savepointing),
                vec![sp(InProgress), running()],
            )
        },
        Case {
            expect: Expect::Stay(Savepointing, false),
            ..case(
                "an unreachable worker is waited for",
                op(Rescale, Savepointing),
                vec![sp(InProgress), None],
            )
        },
        Case {
            expect: Expect::Stay(Savepointing, false),
            ..case(
                "completed everywhere but the manifest is not stored yet",
                op(Rescale, Savepointing),
                vec![sp(Completed), sp(Completed)],
            )
        },
        Case {
            stored: true,
            expect: Expect::Stay(rescaling, true),
            savepoint_completed: true,
            effects: vec!["fence 2", "Normal SavepointCompleted"],
            ..case(
                "a complete savepoint fences the next generation",
                op(Rescale, Savepointing),
                vec![sp(Completed), sp(Completed)],
            )
        },
        Case {
            stored: true,
            expect: Expect::Stay(rescaling, true),
            savepoint_completed: true,
            effects: vec!["fence 2", "Normal SavepointCompleted"],
            ..case(
                "a suspend goes on to stop the workers",
                op(Suspend, Savepointing),
                vec![sp(Completed), sp(Completed)],
            )
        },
        Case {
            stored: true,
            expect: Expect::Done,
            savepoint_completed: true,
            effects: vec!["Normal SavepointCompleted"],
            ..case(
                "a manual savepoint ends there",
                op(Savepoint, Savepointing),
                vec![sp(Completed), sp(Completed)],
            )
        },
        Case {
            stored: true,
            expect: Expect::Stay(rescaling, true),
            savepoint_completed: true,
            effects: vec!["fence 2", "Normal SavepointCompleted"],
            ..case(
                "restart after the StatefulSet went to zero: the stored manifest is enough",
                op(Rescale, Savepointing),
                vec![],
            )
        },
        Case {
            expect: Expect::Failed("worker 1: disk full"),
            effects: vec!["resume [0, 1]", "Warning SavepointFailed"],
            ..case(
                "a failed savepoint resumes the workers",
                op(Rescale, Savepointing),
                vec![sp(Completed), sp(Failed)],
            )
        },
        Case {
            now: 100,
            expect: Expect::Failed("timed out: 1/2 workers completed"),
            effects: vec!["resume [0]", "Warning SavepointFailed"],
            ..case(
                "a timed out savepoint resumes the reachable workers",
                op(Suspend, Savepointing),
                vec![sp(Completed), None],
            )
        },
        Case {
            now: 100,
            expect: Expect::Failed("_metadata never appeared"),
            effects: vec!["Warning SavepointFailed"],
            ..case(
                "a timed out manual savepoint stopped nothing",
                op(Savepoint, Savepointing),
                vec![sp(Completed)],
            )
        },
        Case {
            pods: 2,
            expect: Expect::Stay(rescaling, false),
            effects: vec!["fence 2"],
            ..case(
                "the old pods are waited for",
                op(Rescale, rescaling),
                vec![],
            )
        },
        Case {
            pods: 1,
            now: 100,
            expect: Expect::Stay(rescaling, true),
            effects: vec!["fence 2", "Warning OperationStalled"],
            ..case(
                "pods that do not go are reported",
                op(Rescale, rescaling),
                vec![],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, true),
            effects: vec!["fence 2", "Normal Restoring"],
            ..case(
                "once the old pods are gone the new ones start",
                op(Rescale, rescaling),
                vec![],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, true),
            effects: vec!["fence 2", "Normal Restoring"],
            ..case("a resume starts its workers", op(Resume, rescaling), vec![])
        },
        Case {
            expect: Expect::Done,
            effects: vec!["fence 2", "Normal Suspended"],
            ..case(
                "a suspend ends with no pod left",
                op(Suspend, rescaling),
                vec![],
            )
        },
        Case {
            expect: Expect::Done,
            effects: vec!["Normal Rescaled"],
            ..case(
                "every worker restored the savepoint",
                op(Rescale, Restoring),
                vec![
                    restored("savepoint:sp"),
                    restored("savepoint:sp"),
                    restored("checkpoint:12"),
                ],
            )
        },
        Case {
            expect: Expect::Done,
            effects: vec!["Normal Resumed"],
            ..case(
                "a resumed job runs",
                op(Resume, Restoring),
                vec![
                    restored("savepoint:sp"),
                    restored("savepoint:sp"),
                    restored("savepoint:sp"),
                ],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, false),
            ..case(
                "a worker failing during restore is waited for",
                op(Rescale, Restoring),
                vec![
                    restored("savepoint:sp"),
                    worker(2, false, "none", None),
                    restored("savepoint:sp"),
                ],
            )
        },
        Case {
            now: 100,
            expect: Expect::Stay(Restoring, true),
            effects: vec!["Warning OperationStalled"],
            ..case(
                "a restore past its deadline is reported",
                op(Rescale, Restoring),
                vec![restored("savepoint:sp"), worker(2, false, "none", None)],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, false),
            ..case(
                "old-generation or wrongly restored workers do not count",
                op(Rescale, Restoring),
                vec![
                    worker(1, true, "savepoint:sp", None),
                    restored("savepoint:other"),
                    restored("savepoint:sp"),
                ],
            )
        },
        Case {
            stored: true,
            expect: Expect::Done,
            savepoint_completed: true,
            effects: vec!["Normal SavepointCompleted"],
            ..case(
                "a periodic savepoint restarts nothing",
                op(OperationKind::PeriodicSavepoint, Savepointing),
                vec![sp(Completed), sp(Completed)],
            )
        },
        Case {
            expect: Expect::Stay(Savepointing, false),
            effects: vec!["savepoint sp stop=false [0]"],
            ..case(
                "a periodic savepoint does not stop the workers",
                op(OperationKind::PeriodicSavepoint, Savepointing),
                vec![running()],
            )
        },
        Case {
            expect: Expect::Stay(Savepointing, false),
            effects: vec!["savepoint sp stop=true [0, 1]"],
            ..case(
                "an upgrade in savepoint mode stops the workers with a savepoint",
                upgrade(UpgradeMode::Savepoint, Savepointing),
                vec![running(), running()],
            )
        },
        Case {
            stored: true,
            expect: Expect::Stay(rescaling, true),
            savepoint_completed: true,
            effects: vec!["fence 2", "Normal SavepointCompleted"],
            ..case(
                "an upgrade's savepoint fences the next generation",
                upgrade(UpgradeMode::Savepoint, Savepointing),
                vec![sp(Completed), sp(Completed)],
            )
        },
        Case {
            pods: 2,
            expect: Expect::Stay(rescaling, false),
            ..case(
                "lastState: the old workers checkpoint on SIGTERM, unfenced",
                upgrade(UpgradeMode::LastState, rescaling),
                vec![],
            )
        },
        Case {
            pods: 1,
            now: 100,
            expect: Expect::Stay(rescaling, true),
            effects: vec!["Warning OperationStalled"],
            ..case(
                "lastState: old workers that do not go are reported",
                upgrade(UpgradeMode::LastState, rescaling),
                vec![],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, true),
            effects: vec!["fence 2", "Normal Restoring"],
            ..case(
                "lastState: fenced once the old workers are gone, then started",
                upgrade(UpgradeMode::LastState, rescaling),
                vec![],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, true),
            effects: vec!["fence 2", "Normal Restoring"],
            ..case(
                "stateless: fenced once the old workers are gone, then started",
                upgrade(UpgradeMode::Stateless, rescaling),
                vec![],
            )
        },
        Case {
            expect: Expect::Done,
            effects: vec!["Normal Upgraded"],
            ..case(
                "lastState: any restore point counts",
                upgrade(UpgradeMode::LastState, Restoring),
                vec![restored("checkpoint:12"), restored("none")],
            )
        },
        Case {
            expect: Expect::Done,
            effects: vec!["Normal Upgraded"],
            ..case(
                "stateless: every worker started empty",
                upgrade(UpgradeMode::Stateless, Restoring),
                vec![restored("none"), restored("none")],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, false),
            ..case(
                "stateless: a worker that restored a savepoint does not count",
                upgrade(UpgradeMode::Stateless, Restoring),
                vec![restored("none"), restored("savepoint:sp")],
            )
        },
        Case {
            expect: Expect::Done,
            effects: vec!["Normal Upgraded"],
            ..case(
                "savepoint mode: every worker restored the savepoint",
                upgrade(UpgradeMode::Savepoint, Restoring),
                vec![restored("savepoint:sp"), restored("savepoint:sp")],
            )
        },
        Case {
            expect: Expect::Stay(Restoring, false),
            ..case(
                "an upgraded worker failing during restore is waited for",
                upgrade(UpgradeMode::Savepoint, Restoring),
                vec![restored("savepoint:sp"), worker(2, false, "none", None)],
            )
        },
        Case {
            now: 100,
            expect: Expect::Stay(Restoring, true),
            effects: vec!["Warning OperationStalled"],
            ..case(
                "an upgraded worker failing past the deadline is reported",
                upgrade(UpgradeMode::Savepoint, Restoring),
                vec![restored("savepoint:sp"), worker(2, false, "none", None)],
            )
        },
        Case {
            now: 100,
            expect: Expect::Failed("timed out"),
            effects: vec!["resume [0, 1]", "Warning SavepointFailed"],
            ..case(
                "an upgrade whose savepoint times out resumes the old workers",
                upgrade(UpgradeMode::Savepoint, Savepointing),
                vec![sp(InProgress), sp(InProgress)],
            )
        },
        Case {
            expect: Expect::Done,
            effects: vec!["Normal Restarted"],
            ..case(
                "a restart ends when every worker restored",
                op(OperationKind::Restart, Restoring),
                vec![
                    restored("savepoint:sp"),
                    restored("savepoint:sp"),
                    restored("savepoint:sp"),
                ],
            )
        },
    ];
    for c in cases {
        let observation = Observation {
            now: at(c.now),
            generation: 1,
            pods: c.pods,
            reports: &c.reports,
            savepoint_stored: c.stored,
        };
        let transition = step(&c.op, &observation);
        let effects: Vec<String> = transition.effects.iter().map(describe).collect();
        assert_eq!(effects, c.effects, "{}", c.name);
        assert_eq!(
            transition.savepoint_completed, c.savepoint_completed,
            "{}",
            c.name
        );
        match (&transition.next, &c.expect) {
            (Next::Stay(next), Expect::Stay(stage, moved)) => {
                assert_eq!(next.stage, *stage, "{}", c.name);
                assert_eq!(next.deadline != c.op.deadline, *moved, "{}", c.name);
                assert!(next.deadline > Some(at(c.now)), "{}", c.name);
            }
            (Next::Done, Expect::Done) => {}
            (Next::Failed(message), Expect::Failed(text)) => {
                assert!(message.contains(text), "{}: {message}", c.name);
            }
            (next, expect) => panic!("{}: {next:?}, expected {expect:?}", c.name),
        }
        // An operator restarted at this point reads the operation back
        // from the status and takes the same step.
        let status = StreamingJobStatus {
            operation: Some(c.op.clone()),
            ..Default::default()
        };
        let json = serde_json::to_string(&status).unwrap();
        let reread: StreamingJobStatus = serde_json::from_str(&json).unwrap();
        let again = step(reread.operation.as_ref().unwrap(), &observation);
        assert_eq!(again, transition, "{}: after a restart", c.name);
    }
}

/// Name, job, what the StatefulSet runs, seconds after the failure, and
/// the kind, stage and target of the operation expected to start.
type PlanCase = (
    &'static str,
    StreamingJob,
    Rollout,
    i64,
    Option<(OperationKind, OperationStage, i32)>,
);

#[test]
fn rollout_per_stage() {
    let job = sample_job();
    let live = deployed(2, 2);
    let mut op = op(OperationKind::Rescale, OperationStage::Savepointing);
    assert_eq!(rollout(&job, None, None), Rollout::initial(&job));
    assert_eq!(rollout(&job, None, Some(&live)), live);
    assert_eq!(rollout(&job, Some(&op), Some(&live)), live);
    op.stage = OperationStage::Rescaling;
    op.worker_generation = Some(2);
    assert_eq!(
        rollout(&job, Some(&op), Some(&live)),
        Rollout {
            replicas: 0,
            ..live.clone()
        }
    );
    op.stage = OperationStage::Restoring;
    assert_eq!(
        rollout(&job, Some(&op), Some(&live)),
        Rollout {
            replicas: 3,
            parallelism: 3,
            generation: 2,
            restore_from: "sp".into()
        }
    );
}

#[test]
fn settling_fills_bounded_histories_and_records_failures() {
    let mut status = StreamingJobStatus::default();
    for i in 0..25 {
        let mut rescale = op(OperationKind::Rescale, OperationStage::Restoring);
        rescale.savepoint_id = Some(format!("sp-{i}"));
        let completed = Transition {
            next: Next::Stay(rescale.clone()),
            savepoint_completed: true,
            effects: vec![],
        };
        settle(&mut status, &rescale, &completed, 3, &at(i));
        let done = Transition {
            next: Next::Done,
            savepoint_completed: false,
            effects: vec![],
        };
        settle(&mut status, &rescale, &done, 3, &at(i));
    }
    assert_eq!(status.operation, None);
    assert_eq!(status.savepoint_history.len(), 3);
    assert_eq!(status.savepoint_history[0].id, "sp-24");
    assert_eq!(status.savepoint_history[0].reason, "rescale");
    assert_eq!(status.last_savepoint.as_ref().unwrap().id, "sp-24");
    assert_eq!(status.scaling_history.len(), MAX_SCALING_HISTORY);
    let record = &status.scaling_history[0];
    assert_eq!((record.from, record.to), (2, 3));
    assert_eq!(status.worker_generation, Some(2));

    let manual = op(OperationKind::Savepoint, OperationStage::Savepointing);
    let failed = Transition {
        next: Next::Failed("timed out".into()),
        savepoint_completed: false,
        effects: vec![],
    };
    settle(&mut status, &manual, &failed, 3, &at(100));
    settle(&mut status, &manual, &failed, 3, &at(200));
    let failure = status.last_failed_operation.clone().unwrap();
    assert_eq!(
        (failure.kind, failure.attempts),
        (OperationKind::Savepoint, 2)
    );
    assert_eq!(
        status.observed_savepoint_trigger_nonce,
        Some(7),
        "not retried"
    );
    forget_failure(&mut status, &at(259));
    assert!(status.last_failed_operation.is_some());
    forget_failure(&mut status, &at(260));
    assert!(status.last_failed_operation.is_none());
}

#[test]
fn stages_stall_past_their_timeout() {
    let mut rescaling = op(OperationKind::Rescale, OperationStage::Rescaling);
    rescaling.stage_started_at = Some(at(0));
    let timeout = i64::try_from(RESCALING_TIMEOUT.as_secs()).unwrap();
    assert_eq!(stalled(&rescaling, &at(timeout - 1)), None);
    let why = stalled(&rescaling, &at(timeout)).unwrap();
    assert!(why.contains("old workers are not all gone"), "{why}");
    let restoring = Operation {
        stage: OperationStage::Restoring,
        ..rescaling.clone()
    };
    assert_eq!(
        stalled(&restoring, &at(timeout)),
        None,
        "restoring takes longer"
    );
    let savepointing = Operation {
        stage: OperationStage::Savepointing,
        ..rescaling
    };
    assert_eq!(
        stalled(&savepointing, &at(100_000)),
        None,
        "it fails instead"
    );
}

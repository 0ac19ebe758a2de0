//! Whole operations run against a simulated cluster, from plan to end.

use super::*;

/// What a run of the whole machine went through.
struct Run {
    kind: OperationKind,
    stages: Vec<OperationStage>,
    /// Normal and Warning event reasons, in order.
    events: Vec<String>,
    live: Rollout,
    status: StreamingJobStatus,
    fence: Option<i64>,
}

/// The whole machine against a simulated cluster: the operation `plan`
/// starts for `job` (whose StatefulSet runs `live`, with `outdated` pods on
/// an older template) runs to its end; the StatefulSet's pods follow the
/// rollout a step late, the workers complete savepoints and restore what their
/// environment names, and the operator is "restarted" (its status re-read)
/// before every step.
fn run(mut job: StreamingJob, mut live: Rollout, outdated: usize) -> Run {
    let mut now = 0;
    let mut op = plan(&job, self::live(&live, outdated), &at(now)).expect("an operation starts");
    let kind = op.kind;
    let mut events = vec![describe(&start_event(&op))];
    let mut status = job.status.clone().unwrap_or_default();
    status.operation = Some(op.clone());
    job.status = Some(status);
    // Pods take a step to go after the StatefulSet scales down.
    let mut previous_replicas = live.replicas;
    live = rollout(&job, Some(&op), Some(&live));
    let mut fence = None;
    let mut stages = vec![op.stage];
    for _ in 0..10 {
        now += 5;
        let count = workers_to_observe(&op, &live);
        let restored = match live.restore_from.as_str() {
            "latest" => "checkpoint:5".to_owned(),
            "none" => "none".to_owned(),
            id => format!("savepoint:{id}"),
        };
        let reports: Vec<Option<WorkerReport>> = (0..count)
            .map(|_| match (op.stage, &op.savepoint_id) {
                (OperationStage::Savepointing, Some(id)) => Some(WorkerReport {
                    savepoint: Some(SavepointReport {
                        id: id.clone(),
                        state: SavepointState::Completed,
                        error: None,
                    }),
                    ..running().unwrap()
                }),
                _ => worker(live.generation, true, &restored, None),
            })
            .collect();
        let pods = usize::try_from(previous_replicas.max(live.replicas)).unwrap();
        let observation = Observation {
            now: at(now),
            generation: current_generation(job.status.as_ref(), &live),
            pods,
            reports: &reports,
            savepoint_stored: awaits_manifest(&op, &reports),
        };
        let transition = step(&op, &observation);
        for effect in &transition.effects {
            match effect {
                Effect::WriteFence { generation } => {
                    assert!(
                        pods == 0 || op.savepoint_id.is_some(),
                        "running workers fenced before their last checkpoint"
                    );
                    fence = Some(*generation);
                }
                Effect::Event { .. } => events.push(describe(effect)),
                _ => {}
            }
        }
        let mut status = job.status.clone().unwrap_or_default();
        settle(&mut status, &op, &transition, 10, &at(now));
        let json = serde_json::to_string(&status).unwrap();
        job.status = Some(serde_json::from_str(&json).unwrap());
        let next = job.status.as_ref().unwrap().operation.clone();
        let target = rollout(&job, next.as_ref(), Some(&live));
        if target.replicas > 0 && target.generation != live.generation {
            assert!(
                fence >= Some(target.generation),
                "workers of generation {} start before the fence",
                target.generation
            );
        }
        previous_replicas = live.replicas;
        live = target;
        match next {
            Some(next) => {
                if stages.last() != Some(&next.stage) {
                    stages.push(next.stage);
                }
                op = next;
            }
            None => break,
        }
    }
    Run {
        kind,
        stages,
        events,
        live,
        status: job.status.unwrap(),
        fence,
    }
}

#[test]
fn a_rescale_runs_through_every_stage() {
    let mut job = sample_job();
    job.spec.parallelism = 3;
    let run = run(job, deployed(2, 2), 0);
    assert_eq!(run.kind, OperationKind::Rescale);
    assert_eq!(
        run.stages,
        [
            OperationStage::Savepointing,
            OperationStage::Rescaling,
            OperationStage::Restoring
        ]
    );
    let status = run.status;
    assert_eq!(status.operation, None, "done");
    let savepoint = status.savepoint_history[0].id.clone();
    assert!(savepoint.starts_with("rescale-"), "{savepoint}");
    assert_eq!(
        run.live,
        Rollout {
            replicas: 3,
            parallelism: 3,
            generation: 2,
            restore_from: savepoint
        }
    );
    assert_eq!(run.fence, Some(2));
    assert_eq!(status.worker_generation, Some(2));
    assert_eq!(status.savepoint_history.len(), 1);
    assert_eq!(status.scaling_history[0].to, 3);
    assert_eq!(
        run.events,
        [
            "Normal RescaleStarted",
            "Normal SavepointCompleted",
            "Normal Restoring",
            "Normal Rescaled"
        ]
    );
}

#[test]
fn an_upgrade_runs_through_every_stage_in_each_mode() {
    use OperationStage::{Rescaling, Restoring, Savepointing};
    let cases = [
        (
            UpgradeMode::Savepoint,
            vec![Savepointing, Rescaling, Restoring],
            vec![
                "Normal UpgradeStarted",
                "Normal SavepointCompleted",
                "Normal Restoring",
                "Normal Upgraded",
            ],
        ),
        (
            UpgradeMode::LastState,
            vec![Rescaling, Restoring],
            vec![
                "Normal UpgradeStarted",
                "Normal Restoring",
                "Normal Upgraded",
            ],
        ),
        (
            UpgradeMode::Stateless,
            vec![Rescaling, Restoring],
            vec![
                "Normal UpgradeStarted",
                "Normal Restoring",
                "Normal Upgraded",
            ],
        ),
    ];
    for (mode, stages, events) in cases {
        let mut job = sample_job();
        job.spec.upgrade_mode = mode;
        let run = run(job, deployed(2, 2), 1);
        assert_eq!(run.kind, OperationKind::Upgrade, "{mode:?}");
        assert_eq!(run.stages, stages, "{mode:?}");
        assert_eq!(run.events, events, "{mode:?}");
        assert_eq!(run.fence, Some(2), "{mode:?}");
        let status = &run.status;
        assert_eq!(status.operation, None, "{mode:?}");
        assert_eq!(status.worker_generation, Some(2), "{mode:?}");
        assert!(status.scaling_history.is_empty(), "the parallelism stays");
        let restore_from = match mode {
            UpgradeMode::Savepoint => {
                let savepoint = status.last_savepoint.as_ref().expect("a savepoint");
                assert_eq!(savepoint.reason, "upgrade");
                savepoint.id.clone()
            }
            UpgradeMode::LastState => "latest".to_owned(),
            UpgradeMode::Stateless => "none".to_owned(),
        };
        assert_eq!(
            run.live,
            Rollout {
                replicas: 2,
                parallelism: 2,
                generation: 2,
                restore_from
            },
            "{mode:?}"
        );
    }
}

#[test]
fn a_restart_answers_its_nonce_and_a_periodic_savepoint_restarts_nothing() {
    let mut job = sample_job();
    job.spec.restart_nonce = Some(4);
    job.spec.upgrade_mode = UpgradeMode::LastState;
    let restart = run(job, deployed(2, 2), 0);
    assert_eq!(restart.kind, OperationKind::Restart);
    assert_eq!(restart.status.observed_restart_nonce, Some(4));
    assert_eq!(restart.live.generation, 2);
    assert_eq!(restart.events.last().unwrap(), "Normal Restarted");

    let mut job = sample_job();
    job.spec.savepoint.periodic_interval = Some(weir_crds::duration::Duration::from_secs(3600));
    let periodic = run(job, deployed(2, 2), 0);
    assert_eq!(periodic.kind, OperationKind::PeriodicSavepoint);
    assert_eq!(periodic.stages, [OperationStage::Savepointing]);
    assert_eq!(periodic.live, deployed(2, 2), "nothing restarted");
    let savepoint = periodic.status.last_savepoint.unwrap();
    assert_eq!(savepoint.reason, "periodic");
    assert_eq!(periodic.status.savepoint_history.len(), 1);
    assert_eq!(
        periodic.events,
        ["Normal SavepointStarted", "Normal SavepointCompleted"]
    );
}

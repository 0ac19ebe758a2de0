//! Which operation starts when: [`plan`] over the job's spec and status
//! and what its workers run.

use super::*;

#[test]
fn plan_table() {
    let job = |f: &dyn Fn(&mut StreamingJob)| {
        let mut job = sample_job();
        f(&mut job);
        job
    };
    let failed = |attempts| {
        move |j: &mut StreamingJob| {
            j.spec.parallelism = 3;
            j.status = Some(StreamingJobStatus {
                last_failed_operation: Some(FailedOperation {
                    kind: OperationKind::Rescale,
                    time: at(0),
                    message: "timed out".into(),
                    attempts,
                }),
                ..Default::default()
            });
        }
    };
    let cases: Vec<PlanCase> = vec![
        ("steady", job(&|_| {}), deployed(2, 2), 0, None),
        (
            "spec.parallelism changed",
            job(&|j| j.spec.parallelism = 4),
            deployed(2, 2),
            0,
            Some((OperationKind::Rescale, OperationStage::Savepointing, 4)),
        ),
        (
            "suspend wins over a rescale",
            job(&|j| {
                j.spec.parallelism = 4;
                j.spec.suspend = true;
            }),
            deployed(2, 2),
            0,
            Some((OperationKind::Suspend, OperationStage::Savepointing, 0)),
        ),
        (
            "suspended",
            job(&|j| j.spec.suspend = true),
            deployed(0, 2),
            0,
            None,
        ),
        (
            "resume at the spec's parallelism",
            job(&|j| j.spec.parallelism = 5),
            deployed(0, 2),
            0,
            Some((OperationKind::Resume, OperationStage::Rescaling, 5)),
        ),
        (
            "a new savepoint trigger",
            job(&|j| j.spec.savepoint_trigger_nonce = Some(1)),
            deployed(2, 2),
            0,
            Some((OperationKind::Savepoint, OperationStage::Savepointing, 2)),
        ),
        (
            "an answered savepoint trigger",
            job(&|j| {
                j.spec.savepoint_trigger_nonce = Some(1);
                j.status = Some(StreamingJobStatus {
                    observed_savepoint_trigger_nonce: Some(1),
                    ..Default::default()
                });
            }),
            deployed(2, 2),
            0,
            None,
        ),
        ("backing off", job(&failed(1)), deployed(2, 2), 29, None),
        (
            "backoff over",
            job(&failed(1)),
            deployed(2, 2),
            30,
            Some((OperationKind::Rescale, OperationStage::Savepointing, 3)),
        ),
        (
            "the backoff doubles",
            job(&failed(2)),
            deployed(2, 2),
            59,
            None,
        ),
    ];
    for (name, job, deployed, now, expected) in cases {
        let planned = plan(&job, live(&deployed, 0), &at(now));
        let got = planned
            .as_ref()
            .map(|op| (op.kind, op.stage, op.target_parallelism.unwrap()));
        assert_eq!(got, expected, "{name}");
        if let Some(op) = planned {
            assert_eq!(
                op.from_parallelism,
                Some(deployed.replicas.min(deployed.parallelism)),
                "{name}"
            );
            assert!(op.deadline > Some(at(now)), "{name}");
        }
    }
    assert_eq!(failure_backoff(1), Duration::from_secs(30));
    assert_eq!(failure_backoff(3), Duration::from_secs(120));
    assert_eq!(failure_backoff(40), MAX_FAILURE_BACKOFF);
}

#[test]
fn a_resume_restores_the_savepoint_of_its_suspend_only() {
    let mut job = sample_job();
    let info = |reason: &str| SavepointInfo {
        id: format!("{reason}-1"),
        time: at(0),
        parallelism: 2,
        reason: reason.into(),
    };
    job.status = Some(StreamingJobStatus {
        last_savepoint: Some(info("suspend")),
        worker_generation: Some(4),
        ..Default::default()
    });
    let stopped = deployed(0, 2);
    let op = plan(&job, live(&stopped, 0), &at(0)).unwrap();
    assert_eq!(op.savepoint_id.as_deref(), Some("suspend-1"));
    assert_eq!(op.worker_generation, Some(5));
    let status = job.status.as_mut().unwrap();
    status.last_savepoint = Some(info("manual"));
    status.savepoint_history = vec![info("manual")];
    let op = plan(&job, live(&stopped, 0), &at(0)).unwrap();
    assert_eq!(op.savepoint_id, None);
    assert_eq!(
        rollout(
            &job,
            Some(&Operation {
                stage: OperationStage::Restoring,
                ..op
            }),
            None
        )
        .restore_from,
        "latest"
    );
}

#[test]
fn plan_upgrades_restarts_and_periodic_savepoints() {
    let running = deployed(2, 2);
    let hour = weir_crds::duration::Duration::from_secs(3600);
    let periodic = |last: Option<i64>| {
        let mut job = sample_job();
        job.spec.savepoint.periodic_interval = Some(hour);
        job.status = Some(StreamingJobStatus {
            last_savepoint: last.map(|secs| SavepointInfo {
                id: "rescale-1".into(),
                time: at(secs),
                parallelism: 2,
                reason: "rescale".into(),
            }),
            ..Default::default()
        });
        job
    };
    let mut lasting = sample_job();
    lasting.spec.upgrade_mode = UpgradeMode::LastState;
    let mut stateless = sample_job();
    stateless.spec.upgrade_mode = UpgradeMode::Stateless;
    let mut rescaled = sample_job();
    rescaled.spec.parallelism = 3;
    let mut restart = sample_job();
    restart.spec.restart_nonce = Some(1);
    let mut answered = restart.clone();
    answered.status = Some(StreamingJobStatus {
        observed_restart_nonce: Some(1),
        ..Default::default()
    });
    let mut manual = sample_job();
    manual.spec.savepoint_trigger_nonce = Some(1);
    let suspended = {
        let mut job = periodic(None);
        job.spec.suspend = true;
        job
    };
    type Expected = Option<(OperationKind, OperationStage, Option<UpgradeMode>)>;
    let cases: Vec<(&str, StreamingJob, Rollout, usize, i64, Expected)> = vec![
        (
            "pods on an older template: an upgrade with a savepoint",
            sample_job(),
            running.clone(),
            1,
            0,
            Some((
                OperationKind::Upgrade,
                OperationStage::Savepointing,
                Some(UpgradeMode::Savepoint),
            )),
        ),
        (
            "lastState: straight to the fence",
            lasting,
            running.clone(),
            2,
            0,
            Some((
                OperationKind::Upgrade,
                OperationStage::Rescaling,
                Some(UpgradeMode::LastState),
            )),
        ),
        (
            "stateless: straight to the fence",
            stateless,
            running.clone(),
            2,
            0,
            Some((
                OperationKind::Upgrade,
                OperationStage::Rescaling,
                Some(UpgradeMode::Stateless),
            )),
        ),
        (
            "a rescale also upgrades: it wins",
            rescaled,
            running.clone(),
            2,
            0,
            Some((OperationKind::Rescale, OperationStage::Savepointing, None)),
        ),
        (
            "a new restartNonce",
            restart,
            running.clone(),
            0,
            0,
            Some((
                OperationKind::Restart,
                OperationStage::Savepointing,
                Some(UpgradeMode::Savepoint),
            )),
        ),
        (
            "an answered restartNonce",
            answered,
            running.clone(),
            0,
            0,
            None,
        ),
        (
            "an upgrade before a manual savepoint",
            manual.clone(),
            running.clone(),
            1,
            0,
            Some((
                OperationKind::Upgrade,
                OperationStage::Savepointing,
                Some(UpgradeMode::Savepoint),
            )),
        ),
        (
            "a manual savepoint before a periodic one",
            {
                let mut job = periodic(None);
                job.spec.savepoint_trigger_nonce = Some(1);
                job
            },
            running.clone(),
            0,
            0,
            Some((OperationKind::Savepoint, OperationStage::Savepointing, None)),
        ),
        (
            "periodic: not due yet",
            periodic(Some(0)),
            running.clone(),
            0,
            3599,
            None,
        ),
        (
            "periodic: due an interval after the newest savepoint",
            periodic(Some(0)),
            running.clone(),
            0,
            3600,
            Some((
                OperationKind::PeriodicSavepoint,
                OperationStage::Savepointing,
                None,
            )),
        ),
        (
            "periodic: nothing to save while suspended",
            suspended,
            deployed(0, 2),
            0,
            3600,
            None,
        ),
    ];
    for (name, job, deployed, outdated, now, expected) in cases {
        let planned = plan(&job, live(&deployed, outdated), &at(now));
        let got = planned
            .as_ref()
            .map(|op| (op.kind, op.stage, op.upgrade_mode));
        assert_eq!(got, expected, "{name}");
        if let Some(op) = planned {
            let fresh_generation = op.stage == OperationStage::Rescaling;
            assert_eq!(op.worker_generation.is_some(), fresh_generation, "{name}");
            assert_eq!(op.savepoint_id.is_some(), !fresh_generation, "{name}");
            assert!(matches!(
                start_event(&op),
                Effect::Event { warning: false, .. }
            ));
        }
    }
    let job = periodic(Some(0));
    assert_eq!(
        until_periodic_savepoint(&job, &at(600)),
        Some(Duration::from_secs(3000))
    );
    assert_eq!(
        until_periodic_savepoint(&job, &at(7200)),
        Some(Duration::ZERO)
    );
    assert_eq!(until_periodic_savepoint(&sample_job(), &at(0)), None);
}

#[test]
fn a_resume_of_a_job_created_suspended_restores_its_restore_from() {
    let mut job = sample_job();
    job.spec.restore_from = Some("sp-old-job".into());
    let stopped = deployed(0, 2);
    let op = plan(&job, live(&stopped, 0), &at(0)).unwrap();
    assert_eq!(op.kind, OperationKind::Resume);
    assert_eq!(op.savepoint_id.as_deref(), Some("sp-old-job"));
}

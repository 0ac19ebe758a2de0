//! Lifecycle scenarios of the reconciler against kube's tower-test mock API
//! server and the fake workers: upgrades in each upgradeMode, periodic
//! savepoints, restoreFrom, and children the job does not own. Every step
//! is one reconciliation, started from the status the previous one wrote
//! (as an operator restarted between any two steps would).

use std::sync::Arc;

use crate::support::*;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use weir_operator::control::FakeWorkers;
use weir_operator::reconciler;

/// A StatefulSet running `replicas` workers of generation `generation`
/// restoring `restore`, whose update revision is `r2` (its pod template
/// changed when `outdated`).
fn sts(replicas: i32, generation: i64, restore: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "1", "generation": 2, "ownerReferences": [owned()]},
        "spec": {"replicas": replicas, "selector": {}, "template": {"spec": {"containers": [{
            "name": "worker",
            "env": [
                {"name": "WEIR_PARALLELISM", "value": "2"},
                {"name": "WEIR_GENERATION", "value": generation.to_string()},
                {"name": "WEIR_RESTORE_FROM", "value": restore}
            ]}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": 0,
                   "observedGeneration": 2, "currentRevision": "r1", "updateRevision": "r2"}
    })
}

/// Both worker pods, on revision `revision`.
fn pods(revision: &str) -> Step {
    worker_pods(json!([
        worker_pod("clicks-0", revision),
        worker_pod("clicks-1", revision)
    ]))
}

/// Fake workers 0 and 1 reporting `report`.
fn workers(report: Value) -> Arc<FakeWorkers> {
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(pod, crate::support::report(report.clone()));
    }
    workers
}

fn fence(dir: &tempfile::TempDir) -> Option<String> {
    std::fs::read_to_string(dir.path().join("streams/clicks/fence.json")).ok()
}

fn savepoint_manifest(dir: &tempfile::TempDir, id: &str) {
    let manifest = dir
        .path()
        .join(format!("streams/clicks/savepoints/{id}/_metadata"));
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, b"{}").unwrap();
}

/// An upgrade operation of `mode` at `stage` (with a savepoint in savepoint
/// mode), fencing generation 2.
fn upgrade_op(mode: &str, stage: &str) -> Value {
    let mut op = json!({"kind": "upgrade", "stage": stage, "targetParallelism": 2,
                        "fromParallelism": 2, "workerGeneration": 2, "upgradeMode": mode,
                        "startedAt": "2026-11-21T08:00:00Z", "stageStartedAt": "2099-01-01T00:00:00Z",
                        "deadline": LATER});
    if mode == "savepoint" {
        op["savepointId"] = json!("upgrade-1");
    }
    op
}

#[tokio::test]
async fn a_changed_template_starts_an_upgrade_with_a_stop_with_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let live = sts(2, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            pods("r1"),
            event(
                "Normal",
                "UpgradeStarted",
                "upgradeMode savepoint: stop-with-savepoint upgrade-",
            ),
            operation_status(|body| {
                let op = &body["status"]["operation"];
                assert_eq!(op["kind"], "upgrade", "{body}");
                assert_eq!(op["stage"], "Savepointing", "{body}");
                assert_eq!(op["upgradeMode"], "savepoint", "{body}");
                assert_eq!(condition(body, "Reconciling")["status"], "True", "{body}");
                assert_eq!(condition(body, "Ready")["status"], "False", "{body}");
            }),
        ],
        // The old workers keep running until they stopped with the savepoint.
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let workers = workers(json!({"generation": 1, "phase": "running", "ready": true}));
    let job = job_with(dir.path(), json!({}), json!({}));
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::OPERATION_REQUEUE)
    );
    let posts = savepoint_calls(&workers);
    assert_eq!(posts.len(), 2);
    for (_, _, path, body) in posts {
        assert_eq!(path, "/v1/savepoints");
        assert_eq!(body["stop"], true);
        assert!(body["id"].as_str().unwrap().starts_with("upgrade-"));
    }
}

#[tokio::test]
async fn a_savepoint_upgrade_restores_its_savepoint_on_the_new_template() {
    let dir = tempfile::tempdir().unwrap();
    savepoint_manifest(&dir, "upgrade-1");
    // Savepoint done: fenced, scaled to zero.
    let live = sts(2, 1, "latest");
    let mut op = upgrade_op("savepoint", "Savepointing");
    op["workerGeneration"] = Value::Null;
    let steps = operation_steps(
        &live,
        vec![
            pods("r1"),
            event(
                "Normal",
                "SavepointCompleted",
                "fencing generation 1 with 2",
            ),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["stage"], "Rescaling", "{body}");
                assert_eq!(
                    body["status"]["lastSavepoint"]["reason"], "upgrade",
                    "{body}"
                );
            }),
        ],
        apply_sts(&live, 0, 2, 1, "latest"),
    );
    let stopped = workers(json!({"generation": 1, "phase": "stopped",
                                 "savepoint": {"id": "upgrade-1", "state": "completed"}}));
    let job = job_with(dir.path(), json!({}), json!({"operation": op}));
    let (result, _) = reconcile_with(job, steps, 0, stopped).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(fence(&dir).as_deref(), Some(r#"{"generation":2}"#));

    // The old pods are gone: the new template restores the savepoint.
    let live = sts(0, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([])),
            event("Normal", "Restoring", "generation 2 from upgrade-1"),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["stage"], "Restoring", "{body}")
            }),
        ],
        apply_sts(&live, 2, 2, 2, "upgrade-1"),
    );
    let job = job_with(
        dir.path(),
        json!({}),
        json!({"operation": upgrade_op("savepoint", "Rescaling")}),
    );
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert!(result.is_ok(), "{result:?}");

    // Every new worker restored it: done, and Ready.
    let mut live = sts(2, 2, "upgrade-1");
    live["status"]["updatedReplicas"] = json!(2);
    live["status"]["currentRevision"] = json!("r2");
    let steps = operation_steps(
        &live,
        vec![
            pods("r2"),
            event(
                "Normal",
                "Upgraded",
                "2 workers of generation 2 restored from upgrade-1",
            ),
            operation_status(|body| {
                let status = &body["status"];
                assert!(status.get("operation").is_none(), "{body}");
                assert_eq!(status["workerGeneration"], 2, "{body}");
                assert!(status.get("scalingHistory").is_none(), "{body}");
                assert_eq!(condition(body, "Ready")["status"], "True", "{body}");
                assert_eq!(condition(body, "Reconciling")["status"], "False", "{body}");
                assert_eq!(condition(body, "Stalled")["status"], "False", "{body}");
            }),
        ],
        apply_sts(&live, 2, 2, 2, "upgrade-1"),
    );
    let restored = workers(json!({"generation": 2, "phase": "running", "ready": true,
                                  "restoredFrom": "savepoint:upgrade-1"}));
    let job = job_with(
        dir.path(),
        json!({}),
        json!({"operation": upgrade_op("savepoint", "Restoring"), "workerGeneration": 1}),
    );
    let (result, _) = reconcile_with(job, steps, 0, restored).await;
    assert_eq!(result.unwrap(), Action::requeue(reconciler::STABLE_REQUEUE));
}

#[tokio::test]
async fn a_last_state_upgrade_stops_without_a_savepoint_and_fences_once_the_pods_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let live = sts(2, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            pods("r1"),
            event(
                "Normal",
                "UpgradeStarted",
                "upgradeMode lastState: stopping the workers without a savepoint",
            ),
            operation_status(|body| {
                let op = &body["status"]["operation"];
                assert_eq!(op["stage"], "Rescaling", "{body}");
                assert_eq!(op["workerGeneration"], 2, "{body}");
                assert!(op.get("savepointId").is_none(), "{body}");
            }),
        ],
        apply_sts(&live, 0, 2, 1, "latest"),
    );
    let workers = workers(json!({"generation": 1, "phase": "running", "ready": true}));
    let job = job_with(dir.path(), json!({"upgradeMode": "lastState"}), json!({}));
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(savepoint_calls(&workers).is_empty(), "no savepoint");
    assert_eq!(
        fence(&dir),
        None,
        "the old workers' last checkpoint commits"
    );

    let live = sts(0, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([])),
            event(
                "Normal",
                "Restoring",
                "from the newest committed checkpoint (latest)",
            ),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["stage"], "Restoring", "{body}")
            }),
        ],
        apply_sts(&live, 2, 2, 2, "latest"),
    );
    let job = job_with(
        dir.path(),
        json!({"upgradeMode": "lastState"}),
        json!({"operation": upgrade_op("lastState", "Rescaling")}),
    );
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(fence(&dir).as_deref(), Some(r#"{"generation":2}"#));
}

#[tokio::test]
async fn a_stateless_upgrade_starts_the_workers_with_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let live = sts(0, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([])),
            event("Normal", "Restoring", "with empty state (none)"),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["stage"], "Restoring", "{body}")
            }),
        ],
        apply_sts(&live, 2, 2, 2, "none"),
    );
    let job = job_with(
        dir.path(),
        json!({"upgradeMode": "stateless"}),
        json!({"operation": upgrade_op("stateless", "Rescaling")}),
    );
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(fence(&dir).as_deref(), Some(r#"{"generation":2}"#));

    // A worker that restored a savepoint is not what was asked; past the
    // stage's timeout that is a Warning, and Stalled.
    let live = sts(2, 2, "none");
    let steps = operation_steps(
        &live,
        vec![
            pods("r2"),
            event(
                "Warning",
                "OperationStalled",
                "worker 0: restored from savepoint:upgrade-0, not empty state",
            ),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["stage"], "Restoring", "{body}");
                let stalled = condition(body, "Stalled");
                assert_eq!(stalled["status"], "True", "{body}");
                assert_eq!(stalled["reason"], "ProgressDeadlineExceeded", "{body}");
                assert_eq!(condition(body, "Degraded")["status"], "True", "{body}");
            }),
        ],
        apply_sts(&live, 2, 2, 2, "none"),
    );
    let wrong = workers(json!({"generation": 2, "phase": "running", "ready": true,
                               "restoredFrom": "savepoint:upgrade-0"}));
    let mut op = upgrade_op("stateless", "Restoring");
    op["stageStartedAt"] = json!("2026-11-21T08:00:00Z");
    op["deadline"] = json!(EARLIER);
    let job = job_with(
        dir.path(),
        json!({"upgradeMode": "stateless"}),
        json!({"operation": op, "workerGeneration": 1}),
    );
    let (result, _) = reconcile_with(job, steps, 0, wrong).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_periodic_savepoint_restarts_nothing_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = sts(2, 1, "latest");
    live["status"]["updatedReplicas"] = json!(2);
    live["status"]["currentRevision"] = json!("r2");
    let spec = json!({"savepoint": {"periodicInterval": "1h", "historyLimit": 2}});
    let old = |id: &str| json!({"id": id, "time": EARLIER, "parallelism": 2, "reason": "manual"});
    let history = json!({"lastSavepoint": old("manual-2"),
                         "savepointHistory": [old("manual-2"), old("manual-1")]});
    let steps = operation_steps(
        &live,
        vec![
            pods("r2"),
            event("Normal", "SavepointStarted", "periodic savepoint periodic-"),
            operation_status(|body| {
                assert_eq!(
                    body["status"]["operation"]["kind"], "periodicSavepoint",
                    "{body}"
                );
            }),
        ],
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let running = workers(json!({"generation": 1, "phase": "running", "ready": true}));
    let job = job_with(dir.path(), spec.clone(), history.clone());
    let (result, _) = reconcile_with(job, steps, 0, running.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    let posts = savepoint_calls(&running);
    assert_eq!(posts.len(), 2);
    assert!(posts.iter().all(|(_, _, _, body)| body["stop"] == false));

    savepoint_manifest(&dir, "periodic-1");
    let steps = operation_steps(
        &live,
        vec![
            pods("r2"),
            event("Normal", "SavepointCompleted", "nothing restarted"),
            operation_status(|body| {
                let status = &body["status"];
                assert!(status.get("operation").is_none(), "{body}");
                let history = status["savepointHistory"].as_array().unwrap();
                assert_eq!(history.len(), 2, "bounded by historyLimit: {body}");
                assert_eq!(history[0]["id"], "periodic-1", "{body}");
                assert_eq!(history[0]["reason"], "periodic", "{body}");
                assert_eq!(status["lastSavepoint"]["id"], "periodic-1", "{body}");
                assert_eq!(status["phase"], "Running", "{body}");
            }),
        ],
        // Same workers, same generation: nothing restarted.
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let completed = workers(json!({"generation": 1, "phase": "running", "ready": true,
                                   "savepoint": {"id": "periodic-1", "state": "completed"}}));
    let mut status = history;
    status["operation"] = json!({"kind": "periodicSavepoint", "stage": "Savepointing",
                                 "targetParallelism": 2, "fromParallelism": 2,
                                 "savepointId": "periodic-1",
                                 "startedAt": "2026-11-21T08:00:00Z", "deadline": LATER});
    let job = job_with(dir.path(), spec, status);
    let (result, _) = reconcile_with(job, steps, 0, completed).await;
    // The next one is an hour away: the stable requeue comes first.
    assert_eq!(result.unwrap(), Action::requeue(reconciler::STABLE_REQUEUE));
}

/// The requests that create a job's children, up to the StatefulSet read
/// (not found).
fn creating() -> Vec<Step> {
    let core = format!("/api/v1/namespaces/{NS}");
    vec![
        get(&format!("{core}/secrets/clicks-control")).not_found(),
        apply(&format!("{core}/secrets/clicks-control")),
        get(&format!("{core}/configmaps/clicks-job")).not_found(),
        apply(&format!("{core}/configmaps/clicks-job")),
        get(&format!("{core}/services/clicks-workers")).not_found(),
        apply(&format!("{core}/services/clicks-workers")),
        get(&format!(
            "/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"
        ))
        .not_found(),
    ]
}

#[tokio::test]
async fn a_new_job_restores_its_restore_from_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    savepoint_manifest(&dir, "sp-old");
    let mut steps = creating();
    let created_sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "7", "generation": 1},
        "spec": {"selector": {}, "template": {"spec": {"containers": []}}},
        "status": {"replicas": 0, "observedGeneration": 1}
    });
    steps.extend([
        apply(&format!(
            "/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"
        ))
        .check(|body| {
            assert_eq!(env_of(body, "WEIR_RESTORE_FROM"), "sp-old", "{body}");
            assert_eq!(env_of(body, "WEIR_GENERATION"), "1", "{body}");
            let resources = &body["spec"]["template"]["spec"]["containers"][0]["resources"];
            assert_eq!(resources["requests"]["memory"], "2Gi", "{body}");
        })
        .reply(created_sts),
        get(&format!(
            "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks"
        ))
        .not_found(),
        apply(&format!(
            "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks"
        )),
        worker_pods(json!([])),
    ]);
    for _ in 0..5 {
        steps.push(event("Normal", "Created", "Created"));
    }
    steps.extend([
        event(
            "Normal",
            "Starting",
            "starting 2 workers of generation 1 from savepoint sp-old (spec.restoreFrom)",
        ),
        operation_status(|body| {
            assert_eq!(condition(body, "Ready")["status"], "False", "{body}");
            assert_eq!(condition(body, "Reconciling")["status"], "True", "{body}");
        }),
    ]);
    let job = job_with(dir.path(), json!({"restoreFrom": "sp-old"}), json!({}));
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::PROGRESSING_REQUEUE)
    );
}

#[tokio::test]
async fn a_missing_restore_from_savepoint_starts_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut steps = creating();
    steps.extend([
        operation_status(|body| {
            let stalled = condition(body, "Stalled");
            assert_eq!(stalled["status"], "True", "{body}");
            assert_eq!(stalled["reason"], "SavepointNotFound", "{body}");
            assert!(
                stalled["message"]
                    .as_str()
                    .unwrap()
                    .contains("savepoint sp-gone"),
                "{body}"
            );
            assert_eq!(condition(body, "Ready")["status"], "False", "{body}");
        }),
        event("Warning", "SavepointNotFound", "no worker starts"),
    ]);
    let job = job_with(dir.path(), json!({"restoreFrom": "sp-gone"}), json!({}));
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::PROGRESSING_REQUEUE)
    );
}

#[tokio::test]
async fn an_unowned_object_with_a_child_name_is_a_conflict_never_taken_over() {
    let core = format!("/api/v1/namespaces/{NS}");
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "clicks-control", "namespace": NS, "resourceVersion": "1",
                     "ownerReferences": [{"apiVersion": "weir.dev/v1alpha1", "kind": "StreamingJob",
                         "name": "clicks", "uid": "6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b",
                         "controller": true}]},
        "data": {"token": "c2VjcmV0"}});
    let steps = vec![
        get(&format!("{core}/secrets/clicks-control")).reply(secret.clone()),
        apply(&format!("{core}/secrets/clicks-control")).reply(secret),
        // A ConfigMap someone created by hand, without any owner.
        get(&format!("{core}/configmaps/clicks-job")).reply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "clicks-job", "namespace": NS, "resourceVersion": "3"},
            "data": {"config": "theirs"}
        })),
        apply_status()
            .check(|body| {
                let degraded = condition(body, "Degraded");
                assert_eq!(degraded["reason"], "ChildConflict", "{body}");
                let text = degraded["message"].as_str().unwrap();
                assert!(
                    text.contains("ConfigMap streams/clicks-job is controlled by no controller"),
                    "{text}"
                );
                assert_eq!(condition(body, "Stalled")["status"], "True", "{body}");
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
        event("Warning", "ChildConflict", "ConfigMap streams/clicks-job"),
    ];
    let (result, _) = reconcile_with(
        job(json!({}), json!({})),
        steps,
        0,
        Arc::new(FakeWorkers::default()),
    )
    .await;
    assert_eq!(result.unwrap_err().reason(), "child_conflict");
}

//! The reconciler against kube's tower-test mock API server: every request
//! is checked (method, path, field manager, body) and answered with a canned
//! response, in the order the reconciler must send them.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use weir_crds::StreamingJob;
use weir_operator::control::FakeWorkers;
use weir_operator::reconciler::{self, Context};

use crate::support::*;

/// A Normal `Created` event about the job naming the child in `related`.
fn created(kind: &'static str, name: &'static str) -> Step {
    let mut step = event("Normal", "Created", "Created");
    let check = step.check;
    step.check = Box::new(move |body| {
        check(body);
        assert_eq!(body["note"], format!("Created {kind} {name}"), "{body}");
        assert_eq!(body["related"]["kind"], kind, "{body}");
        assert_eq!(body["related"]["name"], name, "{body}");
    });
    step
}

/// Runs one reconciliation of `job` against the scripted API server.
async fn reconcile(
    job: StreamingJob,
    steps: Vec<Step>,
) -> (Result<Action, weir_operator::Error>, Arc<Context>) {
    reconcile_after_failures(job, steps, 0).await
}

/// Runs one reconciliation of `job`, which failed `failures` times in a row
/// before, against the scripted API server.
async fn reconcile_after_failures(
    job: StreamingJob,
    steps: Vec<Step>,
    failures: u32,
) -> (Result<Action, weir_operator::Error>, Arc<Context>) {
    reconcile_with(job, steps, failures, Arc::new(FakeWorkers::default())).await
}

fn owned_by_the_job(body: &Value) {
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StreamingJob", "{body}");
    assert_eq!(owner["name"], "clicks", "{body}");
    assert_eq!(
        owner["uid"], "6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b",
        "{body}"
    );
    assert_eq!(owner["controller"], true, "{body}");
    let labels = &body["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "weir-worker", "{body}");
    assert_eq!(labels["app.kubernetes.io/instance"], "clicks", "{body}");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"], "weir-operator",
        "{body}"
    );
}

#[tokio::test]
async fn create_path_applies_every_child_then_the_status() {
    let core = format!("/api/v1/namespaces/{NS}");
    let steps = vec![
        get(&format!("{core}/secrets/clicks-control")).not_found(),
        apply(&format!("{core}/secrets/clicks-control")).check(|body| {
            assert_eq!(body["kind"], "Secret");
            owned_by_the_job(body);
            let token = body["data"]["token"].as_str().expect("a token");
            // 32 random bytes, hex: 64 characters, base64 in `data`.
            assert_eq!(token.len(), 88, "{token}");
        }),
        get(&format!("{core}/configmaps/clicks-job")).not_found(),
        apply(&format!("{core}/configmaps/clicks-job")).check(|body| {
            assert_eq!(body["kind"], "ConfigMap");
            owned_by_the_job(body);
            let file = body["data"]["job.yaml"].as_str().unwrap();
            let rendered: StreamingJob = serde_yaml::from_str(file).unwrap();
            assert_eq!(rendered.metadata.name.as_deref(), Some("clicks"));
            assert_eq!(rendered.metadata.namespace.as_deref(), Some(NS));
            assert!(rendered.metadata.uid.is_none() && rendered.status.is_none());
            // Defaults are written out for the worker.
            assert!(file.contains("guarantee: exactlyOnce"), "{file}");
            assert!(file.contains("interval: 10s"), "{file}");
        }),
        get(&format!("{core}/services/clicks-workers")).not_found(),
        apply(&format!("{core}/services/clicks-workers")).check(|body| {
            assert_eq!(body["kind"], "Service");
            owned_by_the_job(body);
            assert_eq!(body["spec"]["clusterIP"], "None");
        }),
        get(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets/clicks")).not_found(),
        apply(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"))
            .check(|body| {
                assert_eq!(body["kind"], "StatefulSet");
                owned_by_the_job(body);
                let spec = &body["spec"];
                assert_eq!(spec["replicas"], 2);
                assert_eq!(spec["podManagementPolicy"], "Parallel");
                assert_eq!(spec["updateStrategy"]["type"], "OnDelete");
                assert_eq!(spec["serviceName"], "clicks-workers");
                let container = &spec["template"]["spec"]["containers"][0];
                assert_eq!(container["image"], "weir-worker:test");
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
                let token = container["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == "WEIR_CONTROL_TOKEN")
                    .unwrap();
                assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "clicks-control");
            })
            .reply(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "7", "generation": 1},
                "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "weir-worker"}},
                         "template": {"spec": {"containers": []}}},
                "status": {"replicas": 0, "observedGeneration": 1}
            })),
        get(&format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks")).not_found(),
        apply(&format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks")).check(|body| {
            assert_eq!(body["kind"], "PodDisruptionBudget");
            owned_by_the_job(body);
            assert_eq!(body["spec"]["maxUnavailable"], 1);
        }),
        get(&format!("{core}/pods"))
            .query(vec![
                "labelSelector=app.kubernetes.io%2Finstance%3Dclicks%2Capp.kubernetes.io%2Fname%3Dweir-worker",
            ])
            .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
        created("Secret", "clicks-control"),
        created("ConfigMap", "clicks-job"),
        created("Service", "clicks-workers"),
        created("StatefulSet", "clicks"),
        created("PodDisruptionBudget", "clicks"),
        event(
            "Normal",
            "Starting",
            "starting 2 workers of generation 1 from the newest committed checkpoint",
        ),
        apply_status()
            .check(|body| {
                assert_eq!(body["kind"], "StreamingJob");
                assert_eq!(body["status"]["observedGeneration"], 3);
                assert_eq!(body["status"]["phase"], "Pending");
                assert_eq!(body["status"]["parallelism"], 0);
                assert_eq!(
                    body["status"]["selector"],
                    "app.kubernetes.io/instance=clicks,app.kubernetes.io/name=weir-worker"
                );
                assert_eq!(condition(body, "Ready")["status"], "False");
                assert_eq!(condition(body, "Ready")["reason"], "WorkersNotReady");
                assert_eq!(condition(body, "Progressing")["status"], "True");
                assert_eq!(condition(body, "Degraded")["status"], "False");
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
    ];
    let (result, _) = reconcile(job(json!({}), json!({})), steps).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::PROGRESSING_REQUEUE)
    );
}

#[tokio::test]
async fn an_existing_token_is_kept_and_unchanged_children_emit_no_event() {
    let core = format!("/api/v1/namespaces/{NS}");
    let existing_secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "clicks-control", "namespace": NS, "resourceVersion": "1", "ownerReferences": [owned()]},
        "data": {"token": "c2VjcmV0"}
    });
    let unchanged = |kind: &str, name: &str| json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": NS, "resourceVersion": "1", "ownerReferences": [owned()]}});
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "1", "generation": 1, "ownerReferences": [owned()]},
        "spec": {"selector": {}, "template": {"spec": {"containers": []}}},
        "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1}
    });
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "1", "ownerReferences": [owned()]}
    });
    let steps = vec![
        get(&format!("{core}/secrets/clicks-control")).reply(existing_secret.clone()),
        apply(&format!("{core}/secrets/clicks-control"))
            .check(|body| assert_eq!(body["data"]["token"], "c2VjcmV0", "the token must be kept"))
            .reply(existing_secret),
        get(&format!("{core}/configmaps/clicks-job")).reply(unchanged("ConfigMap", "clicks-job")),
        apply(&format!("{core}/configmaps/clicks-job")).reply(unchanged("ConfigMap", "clicks-job")),
        get(&format!("{core}/services/clicks-workers"))
            .reply(unchanged("Service", "clicks-workers")),
        apply(&format!("{core}/services/clicks-workers"))
            .reply(unchanged("Service", "clicks-workers")),
        get(&format!(
            "/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"
        ))
        .reply(sts.clone()),
        apply(&format!(
            "/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"
        ))
        .reply(sts),
        get(&format!(
            "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks"
        ))
        .reply(pdb.clone()),
        apply(&format!(
            "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks"
        ))
        .reply(pdb),
        get(&format!("{core}/pods"))
            .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
        apply_status()
            .check(|body| {
                assert_eq!(body["status"]["phase"], "Running");
                assert_eq!(body["status"]["parallelism"], 2);
                assert_eq!(condition(body, "Ready")["status"], "True");
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
    ];
    // Ready: the workers report they restored and consume.
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            report(json!({"generation": 1, "phase": "running", "ready": true})),
        );
    }
    let (result, _) = reconcile_with(job(json!({}), json!({})), steps, 0, workers).await;
    assert_eq!(result.unwrap(), Action::requeue(reconciler::STABLE_REQUEUE));
}

#[tokio::test]
async fn invalid_spec_patches_status_and_warns_without_touching_children() {
    let steps = vec![
        apply_status()
            .check(|body| {
                assert_eq!(body["status"]["phase"], "Failed");
                let ready = condition(body, "Ready");
                assert_eq!(ready["status"], "False");
                assert_eq!(ready["reason"], "InvalidSpec");
                let message = ready["message"].as_str().unwrap();
                assert!(
                    message.contains("spec.parallelism: must be at least 1"),
                    "{message}"
                );
                assert_eq!(condition(body, "Degraded")["status"], "True");
                assert_eq!(body["status"]["observedGeneration"], 3);
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
        event(
            "Warning",
            "InvalidSpec",
            "spec.parallelism: must be at least 1",
        ),
    ];
    let (result, ctx) = reconcile(job(json!({}), json!({"parallelism": 0})), steps).await;
    // No hot loop: wait for the next change of the job.
    assert_eq!(result.unwrap(), Action::await_change());
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("weir_operator_reconciliations_total{result=\"success\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_new_job_gets_the_finalizer_first() {
    let steps = vec![
        step(
            Method::PATCH,
            &format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/streamingjobs/clicks"),
        )
        .check(|body| {
            assert_eq!(
                body,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["weir.dev/cleanup"]}
                ])
            );
        })
        .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
    ];
    let (result, _) = reconcile(job(json!({"finalizers": null}), json!({})), steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn delete_path_keeps_checkpoints_and_removes_the_finalizer() {
    let deleting = json!({"deletionTimestamp": "2026-11-21T08:00:00Z"});
    let steps = vec![
        event(
            "Normal",
            "Deleted",
            "checkpoints and savepoints are kept under s3://bucket/weir/streams/clicks",
        ),
        step(
            Method::PATCH,
            &format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/streamingjobs/clicks"),
        )
        .check(|body| {
            assert_eq!(
                body,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": "weir.dev/cleanup"},
                    {"op": "remove", "path": "/metadata/finalizers/0"}
                ])
            );
        })
        .reply(serde_json::to_value(job(json!({"finalizers": null}), json!({}))).unwrap()),
    ];
    let (result, _) = reconcile(job(deleting, json!({})), steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn an_api_error_fails_the_reconciliation_with_a_warning_and_backs_off() {
    let core = format!("/api/v1/namespaces/{NS}");
    let mut forbidden = get(&format!("{core}/secrets/clicks-control")).reply(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "secrets is forbidden", "reason": "Forbidden", "code": 403
    }));
    forbidden.status = StatusCode::FORBIDDEN;
    let steps = vec![
        forbidden,
        event(
            "Warning",
            "ReconcileFailed",
            "cannot get Secret streams/clicks-control",
        ),
    ];
    let job = job(json!({}), json!({}));
    let (result, ctx) = reconcile(job.clone(), steps).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "kube_get");
    let job = Arc::new(job);
    assert_eq!(
        reconciler::error_policy(job.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        reconciler::error_policy(job, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("weir_operator_reconcile_errors_total{reason=\"kube_get\"} 1"),
        "{metrics}"
    );
}

/// A checkpoint file of the job `streams/clicks` and one of another job in a
/// temporary `file://` storage.
struct Storage {
    _dir: tempfile::TempDir,
    url: String,
    task: std::path::PathBuf,
    other: std::path::PathBuf,
}

fn storage() -> Storage {
    let dir = tempfile::tempdir().unwrap();
    let task = dir
        .path()
        .join("streams/clicks/checkpoints/00000001/task-0.json");
    std::fs::create_dir_all(task.parent().unwrap()).unwrap();
    std::fs::write(&task, b"{}").unwrap();
    let other = dir.path().join("streams/other/fence.json");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"{}").unwrap();
    let url = format!("file://{}", dir.path().display());
    Storage {
        _dir: dir,
        url,
        task,
        other,
    }
}

fn deleting() -> Value {
    json!({"deletionTimestamp": "2026-11-21T08:00:00Z"})
}

fn namespace(phase: &str) -> Step {
    get(&format!("/api/v1/namespaces/{NS}")).reply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS}, "status": {"phase": phase}
    }))
}

/// The StatefulSet is scaled to zero before the storage is touched.
fn scale_to_zero() -> Step {
    step(
        Method::PATCH,
        &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"),
    )
    .check(|body| assert_eq!(body, &json!({"spec": {"replicas": 0}})))
    .reply(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "9"},
        "spec": {"replicas": 0, "selector": {}, "template": {"spec": {"containers": []}}}
    }))
}

fn remove_finalizer() -> Step {
    step(
        Method::PATCH,
        &format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/streamingjobs/clicks"),
    )
    .check(|body| {
        assert_eq!(
            body,
            &json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "weir.dev/cleanup"},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        )
    })
    .reply(serde_json::to_value(job(json!({"finalizers": null}), json!({}))).unwrap())
}

fn disposing(url: &str) -> Value {
    json!({
        "checkpoint": {"storage": url, "credentialsSecret": {"name": "ckpt"}},
        "savepoint": {"disposeOnDelete": true},
    })
}

#[tokio::test]
async fn delete_path_stops_the_workers_then_disposes_of_the_storage() {
    let storage = storage();
    let steps = vec![
        namespace("Active"),
        scale_to_zero(),
        worker_pods(json!([])),
        get(&format!("/api/v1/namespaces/{NS}/secrets/ckpt")).reply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "ckpt", "namespace": NS},
            "data": {"AWS_REGION": "ZXUtd2VzdC0x"}
        })),
        event(
            "Normal",
            "Disposed",
            "deleted 1 checkpoint and savepoint objects under file://",
        ),
        remove_finalizer(),
    ];
    let (result, _) = reconcile(job(deleting(), disposing(&storage.url)), steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        !storage.task.exists(),
        "the job's checkpoint files are deleted"
    );
    assert!(storage.other.exists(), "other jobs' files are kept");
}

#[tokio::test]
async fn disposal_waits_while_workers_still_run() {
    let storage = storage();
    let steps = vec![
        namespace("Active"),
        scale_to_zero(),
        worker_pods(json!([worker_pod("clicks-1", "clicks-new")])),
    ];
    let (result, _) = reconcile(job(deleting(), disposing(&storage.url)), steps).await;
    // Checked again soon, with the finalizer (no patch of the job) and the
    // files (a running worker may still write a checkpoint) kept.
    assert_eq!(
        result.unwrap(),
        Action::requeue(weir_operator::finalizer::DRAIN_REQUEUE)
    );
    assert!(storage.task.exists());
}

#[tokio::test]
async fn a_failed_disposal_keeps_the_finalizer_and_warns() {
    let spec = json!({"savepoint": {"disposeOnDelete": true}, "checkpoint": {"storage": "s3://bucket/weir", "credentialsSecret": {"name": "ckpt"}}});
    let steps = vec![
        namespace("Active"),
        scale_to_zero(),
        worker_pods(json!([])),
        get(&format!("/api/v1/namespaces/{NS}/secrets/ckpt")).not_found(),
        event(
            "Warning",
            "DisposeFailed",
            "set spec.savepoint.disposeOnDelete=false",
        ),
        event(
            "Warning",
            "ReconcileFailed",
            "cannot get Secret streams/ckpt",
        ),
    ];
    let (result, _) = reconcile(job(deleting(), spec), steps).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "kube_get");
}

#[tokio::test]
async fn disposal_is_abandoned_when_the_namespace_is_being_deleted() {
    let storage = storage();
    let steps = vec![
        namespace("Terminating"),
        event(
            "Warning",
            "DisposeAbandoned",
            "namespace streams is being deleted: disposal abandoned",
        ),
        remove_finalizer(),
    ];
    let (result, _) = reconcile(job(deleting(), disposing(&storage.url)), steps).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(storage.task.exists(), "nothing is deleted");
}

#[tokio::test]
async fn disposal_is_abandoned_after_repeated_failures() {
    let storage = storage();
    let steps = vec![
        event(
            "Warning",
            "DisposeAbandoned",
            "the clean-up failed 5 times in a row: disposal abandoned",
        ),
        remove_finalizer(),
    ];
    let job = job(deleting(), disposing(&storage.url));
    let (result, _) = reconcile_after_failures(job, steps, 5).await;
    assert_eq!(result.unwrap(), Action::await_change());
    // Four failures are not enough: the clean-up goes on.
    let steps = vec![
        namespace("Active"),
        scale_to_zero(),
        worker_pods(json!([worker_pod("clicks-0", "clicks-new")])),
    ];
    let job2 = self::job(deleting(), disposing(&storage.url));
    let (result, _) = reconcile_after_failures(job2, steps, 4).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(weir_operator::finalizer::DRAIN_REQUEUE)
    );
}

fn api_failure(step: Step, code: u16, reason: &str, message: &str) -> Step {
    let mut step = step.reply(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    }));
    step.status = StatusCode::from_u16(code).unwrap();
    step
}

#[tokio::test]
async fn a_rejected_apply_is_reported_in_the_status_and_an_event() {
    let message = "StatefulSet.apps \"clicks\" is invalid: spec.template.spec.containers[0].image: Required value";
    let mut steps = unchanged_until_the_stateful_set();
    let sts_path = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/clicks");
    steps.extend([
        get(&sts_path).not_found(),
        api_failure(apply(&sts_path), 422, "Invalid", message),
        apply_status()
            .check(move |body| {
                let ready = condition(body, "Ready");
                assert_eq!(ready["status"], "False", "{body}");
                assert_eq!(ready["reason"], "ApplyFailed", "{body}");
                let degraded = condition(body, "Degraded");
                assert_eq!(degraded["status"], "True", "{body}");
                assert_eq!(degraded["reason"], "ApplyFailed", "{body}");
                let text = degraded["message"].as_str().unwrap();
                assert!(text.contains("StatefulSet streams/clicks"), "{text}");
                assert!(text.contains("422 Invalid"), "{text}");
                assert!(
                    text.contains("containers[0].image: Required value"),
                    "{text}"
                );
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
        event(
            "Warning",
            "ApplyFailed",
            "containers[0].image: Required value",
        ),
    ]);
    let job = job(json!({}), json!({}));
    let (result, ctx) = reconcile(job.clone(), steps).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "kube_apply");
    // Retried with backoff.
    assert_eq!(
        reconciler::error_policy(Arc::new(job), &error, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_child_controlled_by_another_owner_is_not_adopted() {
    let mut steps = unchanged_until_the_stateful_set();
    steps.truncate(2);
    steps.extend([
        get(&format!("/api/v1/namespaces/{NS}/configmaps/clicks-job")).reply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "clicks-job", "namespace": NS, "resourceVersion": "3",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "someone-else", "uid": "other-uid",
                                              "controller": true}]},
            "data": {"config": "theirs"}
        })),
        // No apply of the ConfigMap, nor of anything after it.
        apply_status()
            .check(|body| {
                let degraded = condition(body, "Degraded");
                assert_eq!(degraded["status"], "True", "{body}");
                assert_eq!(degraded["reason"], "ChildConflict", "{body}");
                let text = degraded["message"].as_str().unwrap();
                assert!(
                    text.contains(
                        "ConfigMap streams/clicks-job is controlled by Deployment/someone-else"
                    ),
                    "{text}"
                );
                assert_eq!(condition(body, "Ready")["status"], "False", "{body}");
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
        event("Warning", "ChildConflict", "ConfigMap streams/clicks-job"),
    ]);
    let (result, _) = reconcile(job(json!({}), json!({})), steps).await;
    assert_eq!(result.unwrap_err().reason(), "child_conflict");
}

#[tokio::test]
async fn a_missing_referenced_secret_is_reported() {
    let spec = json!({"kafka": {"bootstrapServers": "kafka:9092",
                                "credentialsSecret": {"name": "kafka-creds"}}});
    let steps = vec![
        get(&format!("/api/v1/namespaces/{NS}/secrets/kafka-creds")).not_found(),
        apply_status()
            .check(|body| {
                let degraded = condition(body, "Degraded");
                assert_eq!(degraded["status"], "True", "{body}");
                assert_eq!(degraded["reason"], "SecretNotFound", "{body}");
                assert_eq!(
                    degraded["message"],
                    "Secret streams/kafka-creds named by spec.kafka.credentialsSecret does not exist",
                    "{body}"
                );
                let ready = condition(body, "Ready");
                assert_eq!(ready["status"], "False", "{body}");
                assert_eq!(ready["reason"], "SecretNotFound", "{body}");
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
        event("Warning", "SecretNotFound", "Secret streams/kafka-creds"),
    ];
    let job = job(json!({}), spec);
    let (result, ctx) = reconcile(job.clone(), steps).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "secret_not_found");
    let job = Arc::new(job);
    assert_eq!(
        reconciler::error_policy(job.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        reconciler::error_policy(job, &error, ctx),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn present_referenced_secrets_are_checked_then_the_children_applied() {
    let spec = json!({"kafka": {"bootstrapServers": "kafka:9092",
                                "credentialsSecret": {"name": "kafka-creds"}},
                      "checkpoint": {"storage": "s3://bucket/weir",
                                     "credentialsSecret": {"name": "ckpt"}}});
    let secret = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": NS}, "data": {}})
    };
    let mut steps = vec![
        get(&format!("/api/v1/namespaces/{NS}/secrets/kafka-creds")).reply(secret("kafka-creds")),
        get(&format!("/api/v1/namespaces/{NS}/secrets/ckpt")).reply(secret("ckpt")),
    ];
    // The first child request follows: the reconciliation went on (and
    // stops here on an unavailable API server, which is not a spec problem:
    // no status patch, a ReconcileFailed event).
    steps.push(api_failure(
        get(&format!("/api/v1/namespaces/{NS}/secrets/clicks-control")),
        503,
        "ServiceUnavailable",
        "try again",
    ));
    steps.push(event(
        "Warning",
        "ReconcileFailed",
        "cannot get Secret streams/clicks-control",
    ));
    let (result, _) = reconcile(job(json!({}), spec), steps).await;
    assert_eq!(result.unwrap_err().reason(), "kube_get");
}

fn rolling_status() -> Value {
    json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 1, "observedGeneration": 2,
           "currentRevision": "clicks-old", "updateRevision": "clicks-new"})
}

#[tokio::test]
async fn workers_on_an_older_template_are_not_deleted_outside_an_upgrade() {
    // The pods are replaced only by an upgrade (see the lifecycle tests);
    // until then the job is not Ready and says an upgrade is pending.
    let pods = json!([
        worker_pod("clicks-0", "clicks-old"),
        worker_pod("clicks-1", "clicks-new")
    ]);
    let mut steps = unchanged_children(rolling_status(), pods);
    steps.push(
        apply_status()
            .check(|body| {
                assert_eq!(
                    condition(body, "Progressing")["reason"],
                    "UpgradePending",
                    "{body}"
                );
                assert_eq!(condition(body, "Ready")["status"], "False", "{body}");
                assert_eq!(condition(body, "Reconciling")["status"], "True", "{body}");
            })
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
    );
    let (result, _) = reconcile(job(json!({}), json!({})), steps).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn no_restart_while_an_operation_is_in_flight() {
    let pods = json!([
        worker_pod("clicks-0", "clicks-old"),
        worker_pod("clicks-1", "clicks-new")
    ]);
    let mut steps = unchanged_children(rolling_status(), pods);
    steps.push(
        apply_status()
            .check(|body| assert_eq!(body["status"]["phase"], "Savepointing", "{body}"))
            .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap()),
    );
    let mut job = job(json!({}), json!({}));
    job.status = Some(
        serde_json::from_value(json!({
            "operation": {"kind": "rescale", "stage": "Savepointing", "targetParallelism": 3,
                          "savepointId": "rescale-1", "startedAt": "2026-11-21T08:00:00Z"}
        }))
        .unwrap(),
    );
    let (result, _) = reconcile(job, steps).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn an_unchanged_invalid_verdict_is_not_repeated() {
    // The job already carries the InvalidSpec status computed for this
    // generation: no request at all (no status patch, no event, no child).
    let invalid = job(json!({}), json!({"parallelism": 0}));
    let problems: Vec<String> = weir_crds::validate::validate_job(&invalid)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(!problems.is_empty());
    let status = weir_operator::status::compute(
        &invalid,
        &problems,
        weir_operator::status::Observed::default(),
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let mut again = invalid.clone();
    again.status = Some(status);
    let (result, _) = reconcile(again, vec![]).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

// The operation protocol: every step persists the operation in the status
// before the StatefulSet changes; the workers' control API is the fake.

/// A StatefulSet that runs `replicas` workers of `parallelism` at
/// `generation`, restoring from `restore`.
fn live_sts(replicas: i32, parallelism: i32, generation: i64, restore: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "1", "generation": 2, "ownerReferences": [owned()]},
        "spec": {"replicas": replicas, "selector": {}, "template": {"spec": {"containers": [{
            "name": "worker",
            "env": [
                {"name": "WEIR_PARALLELISM", "value": parallelism.to_string()},
                {"name": "WEIR_GENERATION", "value": generation.to_string()},
                {"name": "WEIR_RESTORE_FROM", "value": restore}
            ]}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
                   "observedGeneration": 2}
    })
}

fn running_op(kind: &str, stage: &str, deadline: &str) -> Value {
    json!({"kind": kind, "stage": stage, "targetParallelism": 3, "savepointId": "rescale-1",
           "fromParallelism": 2, "workerGeneration": 2,
           "startedAt": "2026-11-21T08:00:00Z", "deadline": deadline})
}

#[tokio::test]
async fn a_parallelism_change_starts_a_rescale_with_a_stop_with_savepoint() {
    // `kubectl scale sj/clicks --replicas=3` writes the same field through
    // the scale subresource: the reconciler sees spec.parallelism change.
    let dir = tempfile::tempdir().unwrap();
    let live = live_sts(2, 2, 1, "latest");
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            report(json!({"generation": 1, "phase": "running", "ready": true})),
        );
    }
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([
                worker_pod("clicks-0", "r1"),
                worker_pod("clicks-1", "r1")
            ])),
            event(
                "Normal",
                "RescaleStarted",
                "rescaling from 2 to 3 workers through savepoint rescale-",
            ),
            operation_status(|body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "Savepointing", "{body}");
                let op = &status["operation"];
                assert_eq!(op["kind"], "rescale", "{body}");
                assert_eq!(op["stage"], "Savepointing", "{body}");
                assert_eq!(op["targetParallelism"], 3, "{body}");
                assert_eq!(op["fromParallelism"], 2, "{body}");
                assert!(
                    op["savepointId"].as_str().unwrap().starts_with("rescale-"),
                    "{body}"
                );
                assert!(op["deadline"].is_string(), "{body}");
                assert_eq!(condition(body, "Progressing")["reason"], "Savepointing");
            }),
        ],
        // The old workers keep running, unchanged, until the savepoint.
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let job = job_with(dir.path(), json!({"parallelism": 3}), json!({}));
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::OPERATION_REQUEUE)
    );
    let posts = savepoint_calls(&workers);
    assert_eq!(posts.len(), 2);
    for (i, (pod, _, path, body)) in posts.iter().enumerate() {
        assert_eq!(pod, &format!("clicks-{i}"));
        assert_eq!(*path, "/v1/savepoints");
        assert_eq!(body["stop"], true);
        assert!(body["id"].as_str().unwrap().starts_with("rescale-"));
    }
}

#[tokio::test]
async fn a_completed_savepoint_fences_and_scales_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir
        .path()
        .join("streams/clicks/savepoints/rescale-1/_metadata");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, b"{}").unwrap();
    let live = live_sts(2, 2, 1, "latest");
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            report(json!({"generation": 1, "phase": "stopped",
            "savepoint": {"id": "rescale-1", "state": "completed"}})),
        );
    }
    let mut op = running_op("rescale", "Savepointing", LATER);
    op["workerGeneration"] = Value::Null;
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([
                worker_pod("clicks-0", "r1"),
                worker_pod("clicks-1", "r1")
            ])),
            event(
                "Normal",
                "SavepointCompleted",
                "fencing generation 1 with 2",
            ),
            operation_status(|body| {
                let status = &body["status"];
                assert_eq!(status["operation"]["stage"], "Rescaling", "{body}");
                assert_eq!(status["operation"]["workerGeneration"], 2, "{body}");
                assert_eq!(status["lastSavepoint"]["id"], "rescale-1", "{body}");
                assert_eq!(status["lastSavepoint"]["reason"], "rescale", "{body}");
                assert_eq!(status["lastSavepoint"]["parallelism"], 2, "{body}");
                assert_eq!(status["savepointHistory"][0]["id"], "rescale-1", "{body}");
                assert_eq!(status["phase"], "Rescaling", "{body}");
            }),
        ],
        apply_sts(&live, 0, 2, 1, "latest"),
    );
    let job = job_with(
        dir.path(),
        json!({"parallelism": 3}),
        json!({"operation": op}),
    );
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::OPERATION_REQUEUE)
    );
    let fence = std::fs::read_to_string(dir.path().join("streams/clicks/fence.json")).unwrap();
    assert_eq!(fence, r#"{"generation":2}"#);
    assert!(savepoint_calls(&workers).is_empty(), "nothing asked again");
}

#[tokio::test]
async fn once_the_old_pods_are_gone_the_new_parallelism_restores_the_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_sts(0, 2, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([])),
            event(
                "Normal",
                "Restoring",
                "starting 3 workers of generation 2 from rescale-1",
            ),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["stage"], "Restoring", "{body}");
                assert_eq!(body["status"]["phase"], "Restoring", "{body}");
            }),
        ],
        apply_sts(&live, 3, 3, 2, "rescale-1"),
    );
    let job = job_with(
        dir.path(),
        json!({"parallelism": 3}),
        json!({"operation": running_op("rescale", "Rescaling", LATER)}),
    );
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::OPERATION_REQUEUE)
    );
    let fence = std::fs::read_to_string(dir.path().join("streams/clicks/fence.json")).unwrap();
    assert_eq!(
        fence, r#"{"generation":2}"#,
        "fenced before the new workers start"
    );
}

#[tokio::test]
async fn the_rescale_completes_when_every_worker_restored_the_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_sts(3, 3, 2, "rescale-1");
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1", "clicks-2"] {
        workers.report(
            pod,
            report(json!({"generation": 2, "phase": "running", "ready": true,
            "restoredFrom": "savepoint:rescale-1"})),
        );
    }
    let pods = json!([
        worker_pod("clicks-0", "r2"),
        worker_pod("clicks-1", "r2"),
        worker_pod("clicks-2", "r2")
    ]);
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(pods),
            event(
                "Normal",
                "Rescaled",
                "3 workers of generation 2 restored from rescale-1",
            ),
            operation_status(|body| {
                let status = &body["status"];
                assert!(status.get("operation").is_none(), "{body}");
                assert_eq!(status["phase"], "Running", "{body}");
                assert_eq!(status["workerGeneration"], 2, "{body}");
                let record = &status["scalingHistory"][0];
                assert_eq!(
                    (record["from"].clone(), record["to"].clone()),
                    (json!(2), json!(3)),
                    "{body}"
                );
                assert_eq!(condition(body, "Ready")["status"], "True", "{body}");
            }),
        ],
        apply_sts(&live, 3, 3, 2, "rescale-1"),
    );
    let job = job_with(
        dir.path(),
        json!({"parallelism": 3}),
        json!({"operation": running_op("rescale", "Restoring", LATER), "workerGeneration": 1}),
    );
    let (result, _) = reconcile_with(job, steps, 0, workers).await;
    assert_eq!(result.unwrap(), Action::requeue(reconciler::STABLE_REQUEUE));
}

#[tokio::test]
async fn a_timed_out_savepoint_resumes_the_workers_and_leaves_the_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_sts(2, 2, 1, "latest");
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            report(json!({"generation": 1, "phase": "running", "ready": true,
            "savepoint": {"id": "rescale-1", "state": "inProgress"}})),
        );
    }
    let mut op = running_op("rescale", "Savepointing", EARLIER);
    op["workerGeneration"] = Value::Null;
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([
                worker_pod("clicks-0", "r1"),
                worker_pod("clicks-1", "r1")
            ])),
            event(
                "Warning",
                "SavepointFailed",
                "savepoint rescale-1 timed out: 0/2 workers completed",
            ),
            operation_status(|body| {
                let status = &body["status"];
                assert!(status.get("operation").is_none(), "{body}");
                assert_eq!(status["lastFailedOperation"]["kind"], "rescale", "{body}");
                assert_eq!(status["lastFailedOperation"]["attempts"], 1, "{body}");
                let degraded = condition(body, "Degraded");
                assert_eq!(degraded["status"], "True", "{body}");
                assert_eq!(degraded["reason"], "OperationFailed", "{body}");
            }),
        ],
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let job = job_with(
        dir.path(),
        json!({"parallelism": 3}),
        json!({"operation": op}),
    );
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::PROGRESSING_REQUEUE)
    );
    let posts = savepoint_calls(&workers);
    let resumed: Vec<_> = posts
        .iter()
        .map(|(pod, _, path, _)| (pod.as_str(), *path))
        .collect();
    assert_eq!(
        resumed,
        [("clicks-0", "/v1/resume"), ("clicks-1", "/v1/resume")]
    );
}

#[tokio::test]
async fn a_savepoint_trigger_takes_a_savepoint_without_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir
        .path()
        .join("streams/clicks/savepoints/manual-1/_metadata");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, b"{}").unwrap();
    let live = live_sts(2, 2, 1, "latest");
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            report(json!({"generation": 1, "phase": "running", "ready": true,
            "savepoint": {"id": "manual-1", "state": "completed"}})),
        );
    }
    let op = json!({"kind": "savepoint", "stage": "Savepointing", "targetParallelism": 2,
                    "savepointId": "manual-1", "fromParallelism": 2, "triggerNonce": 5,
                    "startedAt": "2026-11-21T08:00:00Z", "deadline": LATER});
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([
                worker_pod("clicks-0", "r1"),
                worker_pod("clicks-1", "r1")
            ])),
            event("Normal", "SavepointCompleted", "nothing restarted"),
            operation_status(|body| {
                let status = &body["status"];
                assert!(status.get("operation").is_none(), "{body}");
                assert_eq!(status["observedSavepointTriggerNonce"], 5, "{body}");
                assert_eq!(status["lastSavepoint"]["reason"], "manual", "{body}");
                assert_eq!(status["phase"], "Running", "{body}");
            }),
        ],
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let job = job_with(
        dir.path(),
        json!({"savepointTriggerNonce": 5}),
        json!({"operation": op}),
    );
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    // No pod deleted: the pods run the current revision (no update
    // revision reported), and the nonce is not in the pod template.
    assert_eq!(result.unwrap(), Action::requeue(reconciler::STABLE_REQUEUE));
    assert!(savepoint_calls(&workers).is_empty());
}

#[tokio::test]
async fn suspend_stops_with_a_savepoint_first() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_sts(2, 2, 1, "latest");
    let workers = Arc::new(FakeWorkers::default());
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            report(json!({"generation": 1, "phase": "running", "ready": true})),
        );
    }
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([
                worker_pod("clicks-0", "r1"),
                worker_pod("clicks-1", "r1")
            ])),
            event("Normal", "SuspendStarted", "stop-with-savepoint suspend-"),
            operation_status(|body| {
                assert_eq!(body["status"]["operation"]["kind"], "suspend", "{body}");
                assert_eq!(
                    body["status"]["operation"]["targetParallelism"], 0,
                    "{body}"
                );
            }),
        ],
        // Still running until the savepoint completes.
        apply_sts(&live, 2, 2, 1, "latest"),
    );
    let job = job_with(dir.path(), json!({"suspend": true}), json!({}));
    let (result, _) = reconcile_with(job, steps, 0, workers.clone()).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::OPERATION_REQUEUE)
    );
    let posts = savepoint_calls(&workers);
    assert_eq!(posts.len(), 2);
    assert!(
        posts
            .iter()
            .all(|(_, _, path, body)| *path == "/v1/savepoints" && body["stop"] == true)
    );
}

#[tokio::test]
async fn resume_fences_and_restores_the_suspend_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let live = live_sts(0, 2, 1, "latest");
    let steps = operation_steps(
        &live,
        vec![
            worker_pods(json!([])),
            event(
                "Normal",
                "ResumeStarted",
                "resuming 2 workers from savepoint suspend-9",
            ),
            event(
                "Normal",
                "Restoring",
                "starting 2 workers of generation 3 from suspend-9",
            ),
            operation_status(|body| {
                let op = &body["status"]["operation"];
                assert_eq!(op["kind"], "resume", "{body}");
                assert_eq!(op["stage"], "Restoring", "{body}");
                assert_eq!(op["workerGeneration"], 3, "{body}");
            }),
        ],
        apply_sts(&live, 2, 2, 3, "suspend-9"),
    );
    let status = json!({
        "workerGeneration": 2,
        "lastSavepoint": {"id": "suspend-9", "time": "2026-11-21T08:00:00Z", "parallelism": 2,
                          "reason": "suspend"}
    });
    let job = job_with(dir.path(), json!({}), status);
    let (result, _) = reconcile_with(job, steps, 0, Arc::new(FakeWorkers::default())).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(reconciler::OPERATION_REQUEUE)
    );
    let fence = std::fs::read_to_string(dir.path().join("streams/clicks/fence.json")).unwrap();
    assert_eq!(fence, r#"{"generation":3}"#);
}

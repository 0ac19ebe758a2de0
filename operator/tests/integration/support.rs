//! The harness of the scenario tests: kube's tower-test mock API server
//! answering a scripted list of requests (each checked: method, path,
//! query, body), a job builder and the fake workers.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};
use weir_crds::StreamingJob;
use weir_operator::backoff::Backoff;
use weir_operator::builders::Settings;
use weir_operator::control::{FakeWorkers, WorkerReport};
use weir_operator::metrics::Metrics;
use weir_operator::reconciler::{self, Context};

pub const NS: &str = "streams";

pub fn job(extra_metadata: Value, spec_overrides: Value) -> StreamingJob {
    let mut metadata = json!({
        "name": "clicks",
        "namespace": NS,
        "uid": "6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b",
        "generation": 3,
        "resourceVersion": "100",
        "finalizers": ["weir.dev/cleanup"],
    });
    merge(&mut metadata, extra_metadata);
    let mut spec = json!({
        "kafka": {"bootstrapServers": "kafka:9092"},
        "source": {"topics": ["clicks"]},
        "sink": {"topic": "clicks-out"},
        "checkpoint": {"storage": "s3://bucket/weir"},
        "parallelism": 2,
    });
    merge(&mut spec, spec_overrides);
    serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "StreamingJob",
        "metadata": metadata,
        "spec": spec,
    }))
    .unwrap()
}

pub fn merge(base: &mut Value, patch: Value) {
    if let (Value::Object(base), Value::Object(patch)) = (base, patch) {
        for (k, v) in patch {
            base.insert(k, v);
        }
    }
}

/// One expected request and its canned answer.
pub struct Step {
    pub method: Method,
    pub path: String,
    /// Query parameters the request must carry (`key=value`).
    pub query: Vec<&'static str>,
    /// Checks on the JSON body (Null when the request has none).
    pub check: Box<dyn Fn(&Value) + Send>,
    pub status: StatusCode,
    /// The response body; `None` echoes the request body with a
    /// resourceVersion, as a server-side apply that created the object does.
    pub reply: Option<Value>,
}

pub fn step(method: Method, path: &str) -> Step {
    Step {
        method,
        path: path.to_owned(),
        query: Vec::new(),
        check: Box::new(|_| {}),
        status: StatusCode::OK,
        reply: None,
    }
}

impl Step {
    pub fn query(mut self, query: Vec<&'static str>) -> Self {
        self.query = query;
        self
    }
    pub fn check(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }
    pub fn not_found(mut self) -> Self {
        self.status = StatusCode::NOT_FOUND;
        self.reply = Some(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404
        }));
        self
    }
    pub fn reply(mut self, reply: Value) -> Self {
        self.reply = Some(reply);
        self
    }
}

pub const APPLY: [&str; 2] = ["fieldManager=weir-operator", "force=true"];

pub fn get(path: &str) -> Step {
    step(Method::GET, path)
}

pub fn apply(path: &str) -> Step {
    step(Method::PATCH, path).query(APPLY.to_vec())
}

pub const APPLY_STATUS: [&str; 2] = ["fieldManager=weir-operator-status", "force=true"];

/// The server-side apply of the job's status, under its own field manager.
pub fn apply_status() -> Step {
    step(
        Method::PATCH,
        &format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/streamingjobs/clicks/status"),
    )
    .query(APPLY_STATUS.to_vec())
}

pub fn event(type_: &'static str, reason: &'static str, note_contains: &'static str) -> Step {
    step(
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
    )
    .check(move |body| {
        assert_eq!(body["type"], type_, "{body}");
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(body["regarding"]["kind"], "StreamingJob", "{body}");
        assert_eq!(body["regarding"]["name"], "clicks", "{body}");
        assert_eq!(body["reportingController"], "weir-operator", "{body}");
        let note = body["note"].as_str().unwrap_or_default();
        assert!(
            note.contains(note_contains),
            "note {note:?} lacks {note_contains:?}"
        );
    })
}

pub async fn serve(handle: Handle<Request<Body>, Response<Body>>, steps: Vec<Step>) {
    let mut handle = pin!(handle);
    for (i, step) in steps.into_iter().enumerate() {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("request {i} ({} {}) never came", step.method, step.path));
        let uri = request.uri().clone();
        assert_eq!(request.method(), step.method, "request {i}: {uri}");
        assert_eq!(uri.path(), step.path, "request {i}");
        let query = uri.query().unwrap_or_default();
        for param in &step.query {
            assert!(
                query.split('&').any(|p| p == *param),
                "request {i}: {uri} lacks {param}"
            );
        }
        if step.method == Method::PATCH && step.query.contains(&"force=true") {
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml",
                "request {i}: {uri}"
            );
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (step.check)(&body);
        let reply = step.reply.unwrap_or_else(|| {
            let mut echoed = body.clone();
            echoed["metadata"]["resourceVersion"] = json!("1");
            echoed
        });
        let response = Response::builder()
            .status(step.status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap();
        send.send_response(response);
    }
}

pub fn context(client: Client, workers: Arc<FakeWorkers>) -> Arc<Context> {
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "weir-operator".into(),
                instance: Some("weir-operator-0".into()),
            },
        ),
        client,
        settings: Settings {
            worker_image: "weir-worker:test".into(),
        },
        metrics: Arc::new(Metrics::new().unwrap()),
        backoff: Backoff::default(),
        workers,
        sampler: None,
    })
}

/// Runs one reconciliation of `job` against the scripted API server and the
/// scripted `workers`.
pub async fn reconcile_with(
    job: StreamingJob,
    steps: Vec<Step>,
    failures: u32,
    workers: Arc<FakeWorkers>,
) -> (Result<Action, weir_operator::Error>, Arc<Context>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, steps));
    let ctx = context(Client::new(service, "default"), workers);
    for _ in 0..failures {
        ctx.backoff.failed(&reconciler::key(&job));
    }
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconciler::reconcile(Arc::new(job), ctx.clone()),
    )
    .await
    .expect("the reconciler hung waiting for an unexpected request");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("expected requests were not all made")
        .unwrap();
    (result, ctx)
}

/// The owner reference of every child the job controls.
pub fn owned() -> Value {
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamingJob", "name": "clicks",
           "uid": "6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b", "controller": true})
}

/// The requests of a reconciliation whose children all exist unchanged,
/// with `sts_status` as the StatefulSet's status and `pods` as its pods.
pub fn unchanged_children(sts_status: Value, pods: Value) -> Vec<Step> {
    let core = format!("/api/v1/namespaces/{NS}");
    let object = |api_version: &str, kind: &str, name: &str| {
        json!({"apiVersion": api_version, "kind": kind,
               "metadata": {"name": name, "namespace": NS, "resourceVersion": "1",
                            "ownerReferences": [owned()]},
               "data": {"token": "c2VjcmV0"}})
    };
    let secret = object("v1", "Secret", "clicks-control");
    let config_map = object("v1", "ConfigMap", "clicks-job");
    let service = object("v1", "Service", "clicks-workers");
    let pdb = object("policy/v1", "PodDisruptionBudget", "clicks");
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "1", "generation": 2, "ownerReferences": [owned()]},
        "spec": {"selector": {}, "template": {"spec": {"containers": []}}},
        "status": sts_status
    });
    let sts_path = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/clicks");
    let pdb_path = format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks");
    vec![
        get(&format!("{core}/secrets/clicks-control")).reply(secret.clone()),
        apply(&format!("{core}/secrets/clicks-control")).reply(secret),
        get(&format!("{core}/configmaps/clicks-job")).reply(config_map.clone()),
        apply(&format!("{core}/configmaps/clicks-job")).reply(config_map),
        get(&format!("{core}/services/clicks-workers")).reply(service.clone()),
        apply(&format!("{core}/services/clicks-workers")).reply(service),
        get(&sts_path).reply(sts.clone()),
        apply(&sts_path).reply(sts),
        get(&pdb_path).reply(pdb.clone()),
        apply(&pdb_path).reply(pdb),
        get(&format!("{core}/pods"))
            .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})),
    ]
}

pub fn worker_pod(name: &str, revision: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "labels": {"controller-revision-hash": revision}},
        "status": {"phase": "Running"}
    })
}

pub fn env_of(body: &Value, name: &str) -> Value {
    body["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {body}"))["value"]
        .clone()
}

/// The StatefulSet is applied running `replicas` workers of `parallelism`
/// at `generation` from `restore` (answered with `live`, unchanged).
pub fn apply_sts(
    live: &Value,
    replicas: i32,
    parallelism: i32,
    generation: i64,
    restore: &'static str,
) -> Step {
    apply(&format!(
        "/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"
    ))
    .check(move |body| {
        assert_eq!(body["spec"]["replicas"], replicas, "{body}");
        assert_eq!(env_of(body, "WEIR_PARALLELISM"), parallelism.to_string());
        assert_eq!(env_of(body, "WEIR_GENERATION"), generation.to_string());
        assert_eq!(env_of(body, "WEIR_RESTORE_FROM"), restore);
    })
    .reply(live.clone())
}

/// The requests before the StatefulSet: Secret, ConfigMap and Service exist
/// unchanged.
pub fn unchanged_until_the_stateful_set() -> Vec<Step> {
    let mut steps = unchanged_children(json!({}), json!([]));
    steps.truncate(6);
    steps
}

/// The requests of one reconciliation of a job whose StatefulSet is `live`:
/// the unchanged Secret, ConfigMap and Service, the StatefulSet read,
/// `operation` (events, pods, status), the StatefulSet applied as `sts`,
/// and the unchanged PodDisruptionBudget.
pub fn operation_steps(live: &Value, operation: Vec<Step>, sts: Step) -> Vec<Step> {
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                     "metadata": {"name": "clicks", "namespace": NS, "resourceVersion": "1", "ownerReferences": [owned()]}});
    let pdb_path = format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/clicks");
    let mut steps = unchanged_until_the_stateful_set();
    steps.push(
        get(&format!(
            "/apis/apps/v1/namespaces/{NS}/statefulsets/clicks"
        ))
        .reply(live.clone()),
    );
    steps.extend(operation);
    steps.push(sts);
    steps.push(get(&pdb_path).reply(pdb.clone()));
    steps.push(apply(&pdb_path).reply(pdb));
    steps
}

/// The status patch of an operation step, checked by `check`.
pub fn operation_status(check: impl Fn(&Value) + Send + 'static) -> Step {
    apply_status()
        .check(check)
        .reply(serde_json::to_value(job(json!({}), json!({}))).unwrap())
}

/// A job with `spec` (over the defaults, with the checkpoint storage in
/// `storage`) and `status`.
pub fn job_with(storage: &std::path::Path, spec: Value, status: Value) -> StreamingJob {
    let mut spec = spec;
    merge(
        &mut spec,
        json!({"checkpoint": {"storage": format!("file://{}", storage.display())}}),
    );
    let mut job = job(json!({}), spec);
    job.status = Some(serde_json::from_value(status).unwrap());
    job
}

pub fn report(value: Value) -> WorkerReport {
    serde_json::from_value(value).unwrap()
}

pub fn condition<'a>(body: &'a Value, kind: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {body}"))
}

pub const LATER: &str = "2099-01-01T00:00:00Z";

pub const EARLIER: &str = "2000-01-01T00:00:00Z";

pub fn savepoint_calls(workers: &FakeWorkers) -> Vec<(String, &'static str, &'static str, Value)> {
    workers
        .take_calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .map(|c| {
            assert_eq!(c.token.as_deref(), Some("secret"), "the control token");
            (c.pod, c.method, c.path, c.body)
        })
        .collect()
}

pub fn worker_pods(pods: Value) -> Step {
    get(&format!("/api/v1/namespaces/{NS}/pods"))
        .query(vec![
            "labelSelector=app.kubernetes.io%2Finstance%3Dclicks%2Capp.kubernetes.io%2Fname%3Dweir-worker",
        ])
        .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}))
}

//! The autoscaler through whole reconciliations: simulated lag (a fake lag
//! source and fake workers) makes the reconciler write a new parallelism
//! through the scale subresource, and the job that the API server then
//! holds starts a savepoint-driven rescale in the operation state machine.
//! The API server is kube's tower-test mock, answering every request from
//! the state of a running job and recording it.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock;
use weir_crds::StreamingJob;
use weir_operator::backoff::Backoff;
use weir_operator::builders::Settings;
use weir_operator::control::{FakeWorkers, SAVEPOINTS_PATH, WorkerLoad, WorkerReport};
use weir_operator::lag::sampler::Sampler;
use weir_operator::lag::{FakeLagSource, PartitionOffsets};
use weir_operator::metrics::Metrics;
use weir_operator::reconciler::{self, Context};

const NS: &str = "streams";
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/streams/streamingjobs/clicks";
const PARTITIONS: i32 = 12;

/// A request the API server received.
#[derive(Clone, Debug)]
struct Received {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

fn owned() -> Value {
    json!([{"apiVersion": "weir.dev/v1alpha1", "kind": "StreamingJob", "name": "clicks",
            "uid": "6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b", "controller": true}])
}

/// The job, running 2 workers at `parallelism` 2 (or the `parallelism` the
/// scale subresource wrote), with the autoscaler on.
fn job(parallelism: i32) -> StreamingJob {
    serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "StreamingJob",
        "metadata": {"name": "clicks", "namespace": NS,
                     "uid": "6f1c2a52-8d4e-4c1e-9a57-0c1d2e3f4a5b", "generation": 3,
                     "resourceVersion": "100", "finalizers": ["weir.dev/cleanup"],
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "kafka": {"bootstrapServers": "kafka:9092"},
            "source": {"topics": ["clicks"]},
            "sink": {"topic": "clicks-out"},
            "checkpoint": {"storage": "s3://bucket/weir"},
            "parallelism": parallelism,
            "autoscaler": {"enabled": true},
        },
        "status": {"phase": "Running", "parallelism": 2, "workerGeneration": 1,
                   "observedGeneration": 3},
    }))
    .unwrap()
}

/// What the API server answers to a GET of `path`: the children of a job
/// running two workers of generation 1.
fn get_reply(path: &str) -> Value {
    let meta = |name: &str| json!({"name": name, "namespace": NS, "resourceVersion": "1", "ownerReferences": owned()});
    if path.ends_with("/secrets/clicks-control") {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("clicks-control"),
               "data": {"token": "c2VjcmV0"}})
    } else if path.ends_with("/configmaps/clicks-job") {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("clicks-job")})
    } else if path.ends_with("/services/clicks-workers") {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("clicks-workers")})
    } else if path.ends_with("/statefulsets/clicks") {
        let mut metadata = meta("clicks");
        metadata["generation"] = json!(2);
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata,
               "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{
                   "name": "worker",
                   "env": [{"name": "WEIR_PARALLELISM", "value": "2"},
                           {"name": "WEIR_GENERATION", "value": "1"},
                           {"name": "WEIR_RESTORE_FROM", "value": "latest"}]}]}}},
               "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                          "observedGeneration": 2, "currentRevision": "r1", "updateRevision": "r1"}})
    } else if path.ends_with("/poddisruptionbudgets/clicks") {
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("clicks")})
    } else if path.ends_with("/pods") {
        let pod = |name: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                                "labels": {"controller-revision-hash": "r1"}},
                   "status": {"phase": "Running"}})
        };
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
               "items": [pod("clicks-0"), pod("clicks-1")]})
    } else {
        panic!("unexpected GET {path}")
    }
}

/// An API server holding `job` and its running children (which every apply
/// leaves unchanged), recording every request.
fn api_server(job: &StreamingJob) -> (Client, Arc<Mutex<Vec<Received>>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let job = serde_json::to_value(job).unwrap();
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let reply = if method == Method::GET {
                get_reply(&path)
            } else if path.ends_with("/scale") {
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                       "metadata": {"name": "clicks", "namespace": NS},
                       "spec": {"replicas": body["spec"]["replicas"]}})
            } else if path.starts_with(JOB) {
                job.clone()
            } else if method == Method::PATCH {
                // The children are applied unchanged.
                get_reply(&path)
            } else {
                let mut echoed = body.clone();
                echoed["metadata"]["resourceVersion"] = json!("1");
                echoed
            };
            log.lock().unwrap().push(Received {
                method,
                path,
                query,
                body,
            });
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), received)
}

/// Kafka and the workers after `seconds` of a load of 5000 records/s that
/// two workers process at 1000/s each, 100% busy.
fn overloaded(lag: &FakeLagSource, workers: &FakeWorkers, seconds: i64) {
    let arrived = 5_000 * seconds / i64::from(PARTITIONS);
    let processed = 1_000 * seconds;
    let committed = 2 * processed / i64::from(PARTITIONS);
    lag.set(Some(
        (0..PARTITIONS)
            .map(|partition| PartitionOffsets {
                topic: "clicks".into(),
                partition,
                low_watermark: 0,
                high_watermark: arrived,
                committed: Some(committed),
            })
            .collect(),
    ));
    for pod in ["clicks-0", "clicks-1"] {
        workers.report(
            pod,
            WorkerReport {
                generation: 1,
                ready: true,
                load: WorkerLoad {
                    busy_ratio: Some(1.0),
                    records_in: Some(processed as u64),
                    tasks: Vec::new(),
                },
                ..WorkerReport::default()
            },
        );
    }
}

/// One reconciliation of `job` against a new API server, with the sampler
/// (sampling at every reconciliation) and the fakes.
async fn reconcile(
    job: StreamingJob,
    sampler: &Arc<Sampler>,
    workers: &Arc<FakeWorkers>,
) -> Vec<Received> {
    let (client, received) = api_server(&job);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "weir-operator".into(),
                instance: None,
            },
        ),
        client,
        settings: Settings {
            worker_image: "weir-worker:test".into(),
        },
        metrics: Arc::new(Metrics::new().unwrap()),
        backoff: Backoff::default(),
        workers: workers.clone(),
        sampler: Some(sampler.clone()),
    });
    tokio::time::timeout(
        Duration::from_secs(10),
        reconciler::reconcile(Arc::new(job), ctx),
    )
    .await
    .expect("the reconciler hung")
    .expect("the reconciliation succeeded");
    tokio::task::yield_now().await;
    received.lock().unwrap().clone()
}

#[tokio::test]
async fn simulated_lag_rescales_the_job_through_the_savepoint_state_machine() {
    let lag = Arc::new(FakeLagSource::default());
    let workers = Arc::new(FakeWorkers::default());
    // Sampling at every reconciliation; the reconciliations are far enough
    // apart in wall time for the rates to be measured.
    let sampler = Arc::new(Sampler::new(lag.clone(), Duration::ZERO));

    overloaded(&lag, &workers, 0);
    let first = reconcile(job(2), &sampler, &workers).await;
    assert!(
        !first.iter().any(|r| r.path.ends_with("/scale")),
        "one sample decides nothing"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    overloaded(&lag, &workers, 15);
    let second = reconcile(job(2), &sampler, &workers).await;
    let lag_status = second
        .iter()
        .find(|r| r.path == format!("{JOB}/status") && r.query.contains("weir-autoscaler"))
        .expect("the autoscaler's status");
    assert_eq!(lag_status.body["status"]["lag"]["total"], 75_000 - 30_000);
    let record = &lag_status.body["status"]["scalingHistory"][0];
    assert_eq!(record["from"], 2);
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .starts_with("autoscaler: ")
    );
    let scale = second
        .iter()
        .find(|r| r.path == format!("{JOB}/scale"))
        .expect("the scale subresource is written");
    assert_eq!(scale.method, Method::PATCH);
    assert!(
        scale.query.contains("fieldManager=weir-autoscaler"),
        "{scale:?}"
    );
    let target = scale.body["spec"]["replicas"].as_i64().unwrap();
    assert!(target > 2, "scaled up: {target}");
    assert_eq!(record["to"], target);

    // The API server now holds the new parallelism: the operation state
    // machine starts a rescale with a stop-with-savepoint of both workers.
    workers.take_calls();
    let third = reconcile(job(target as i32), &sampler, &workers).await;
    let operation = third
        .iter()
        .find(|r| r.path == format!("{JOB}/status") && r.query.contains("weir-operator-status"))
        .expect("the operation is recorded");
    let op = &operation.body["status"]["operation"];
    assert_eq!(op["kind"], "rescale", "{op}");
    assert_eq!(op["stage"], "Savepointing", "{op}");
    assert_eq!(op["targetParallelism"], target, "{op}");
    let savepoints: Vec<_> = workers
        .take_calls()
        .into_iter()
        .filter(|c| c.path == SAVEPOINTS_PATH)
        .collect();
    assert_eq!(savepoints.len(), 2, "{savepoints:?}");
    assert!(savepoints.iter().all(|c| c.body["stop"] == true));
    assert!(
        !third.iter().any(|r| r.path.ends_with("/scale")),
        "no decision while the rescale is in flight"
    );
}

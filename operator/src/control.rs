//! The workers' control API as the operator uses it: `GET /v1/status`,
//! `POST /v1/savepoints` and `POST /v1/resume` on port 9400 of each worker
//! pod, reached through the job's headless Service
//! (`<pod>.<service>.<namespace>.svc`), with the bearer token of the job's
//! control Secret.
//!
//! [`WorkerControl`] is the seam: [`HttpWorkerControl`] talks HTTP with
//! timeouts and retries, [`FakeWorkers`] answers from scripted reports and
//! records every request for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::builders::HTTP_PORT;

/// Path of the status report.
pub const STATUS_PATH: &str = "/v1/status";
/// Path of savepoint requests.
pub const SAVEPOINTS_PATH: &str = "/v1/savepoints";
/// Path of resume requests.
pub const RESUME_PATH: &str = "/v1/resume";

/// What a worker is doing (`phase` of its status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkerPhase {
    /// Downloading state and seeking partitions.
    #[default]
    Restoring,
    /// Consuming and processing.
    Running,
    /// Not consuming after a stop-with-savepoint, until resumed.
    Stopped,
    /// Shut down (cancelled, fenced or failed).
    Finished,
}

/// Where a savepoint request stands on a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SavepointState {
    /// Accepted, waiting for the end of the current batch.
    Pending,
    /// Checkpointing and copying.
    InProgress,
    /// Every task the worker owns is in the savepoint.
    Completed,
    /// It failed; see `error`.
    Failed,
}

/// The latest savepoint request a worker knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointReport {
    /// The savepoint id.
    pub id: String,
    /// Where it stands.
    pub state: SavepointState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The part of a worker's `GET /v1/status` the operator acts on (other
/// fields are ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerReport {
    /// The fencing generation the worker runs with.
    #[serde(default)]
    pub generation: i64,
    /// What the worker is doing.
    #[serde(default)]
    pub phase: WorkerPhase,
    /// Whether it restored and consumes.
    #[serde(default)]
    pub ready: bool,
    /// What it restored from: `savepoint:<id>`, `checkpoint:<id>` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Its latest savepoint request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<SavepointReport>,
    /// Why it finished or failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How busy it is and where its tasks stand (what the autoscaler reads).
    #[serde(flatten)]
    pub load: WorkerLoad,
}

/// The load a worker reports in its status: what the autoscaler and the
/// job's rates are computed from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerLoad {
    /// Share of wall time spent processing rather than waiting for input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_ratio: Option<f64>,
    /// Source records read since the worker started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_in: Option<u64>,
    /// The tasks it owns, with the position of each of their partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskReport>,
}

/// One task of a worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// The task number.
    pub task: i32,
    /// Its input partitions: one per source topic, and the repartition topic.
    #[serde(default)]
    pub partitions: Vec<PartitionReport>,
}

/// Where a task stands on one input partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionReport {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset the task processes.
    pub offset: i64,
    /// The partition's high watermark when the worker last fetched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
}

/// One worker to talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    /// The pod name (`<job>-<ordinal>`).
    pub pod: String,
    /// Where its API is: `http://host:port`, without a trailing slash.
    pub base_url: String,
    /// The job's control token.
    pub token: String,
}

impl Worker {
    /// The worker `ordinal` of the job `job` in `namespace`, through the
    /// headless Service `service`.
    pub fn in_cluster(
        job: &str,
        ordinal: i32,
        service: &str,
        namespace: &str,
        token: &str,
    ) -> Self {
        let pod = format!("{job}-{ordinal}");
        Self {
            base_url: format!("http://{pod}.{service}.{namespace}.svc:{HTTP_PORT}"),
            pod,
            token: token.to_owned(),
        }
    }
}

/// Why a request to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No answer (connection refused, DNS, timeout) after every attempt.
    #[error("worker {pod} is unreachable: {message}")]
    Unreachable {
        /// The pod.
        pod: String,
        /// The last transport error.
        message: String,
    },
    /// The worker answered with an error status.
    #[error("worker {pod} answered {path} with {code}: {body}")]
    Refused {
        /// The pod.
        pod: String,
        /// The request path.
        path: &'static str,
        /// The HTTP status code.
        code: u16,
        /// The response body.
        body: String,
    },
    /// The status report could not be decoded.
    #[error("worker {pod} sent an invalid status: {message}")]
    Invalid {
        /// The pod.
        pod: String,
        /// The decoder's error.
        message: String,
    },
}

/// The workers' control API.
pub trait WorkerControl: Send + Sync {
    /// `GET /v1/status`.
    fn status<'a>(
        &'a self,
        worker: &'a Worker,
    ) -> BoxFuture<'a, Result<WorkerReport, ControlError>>;
    /// `POST /v1/savepoints {"id": id, "stop": stop}` (idempotent per id).
    fn savepoint<'a>(
        &'a self,
        worker: &'a Worker,
        id: &'a str,
        stop: bool,
    ) -> BoxFuture<'a, Result<(), ControlError>>;
    /// `POST /v1/resume`.
    fn resume<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, Result<(), ControlError>>;
}

/// Time one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a request whose transport fails or that gets a 5xx.
pub const ATTEMPTS: u32 = 3;
/// Pause between attempts.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// The control API over HTTP.
#[derive(Clone, Debug)]
pub struct HttpWorkerControl {
    client: reqwest::Client,
}

impl HttpWorkerControl {
    /// A client with [`REQUEST_TIMEOUT`] per request.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(REQUEST_TIMEOUT)
                .build()?,
        })
    }

    /// Sends one request, retrying transport failures and 5xx answers up to
    /// [`ATTEMPTS`] times; returns the body of a 2xx answer.
    async fn send(
        &self,
        worker: &Worker,
        path: &'static str,
        body: Option<&Value>,
    ) -> Result<String, ControlError> {
        let url = format!("{}{path}", worker.base_url);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(RETRY_DELAY).await;
            }
            let request = match body {
                Some(body) => self
                    .client
                    .post(&url)
                    .bearer_auth(&worker.token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
                None => self.client.get(&url),
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    last = error.to_string();
                    continue;
                }
            };
            let code = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            if (200..300).contains(&code) {
                return Ok(text);
            }
            let refused = ControlError::Refused {
                pod: worker.pod.clone(),
                path,
                code,
                body: text,
            };
            if code < 500 || attempt == ATTEMPTS {
                return Err(refused);
            }
            last = refused.to_string();
        }
        Err(ControlError::Unreachable {
            pod: worker.pod.clone(),
            message: last,
        })
    }
}

impl WorkerControl for HttpWorkerControl {
    fn status<'a>(
        &'a self,
        worker: &'a Worker,
    ) -> BoxFuture<'a, Result<WorkerReport, ControlError>> {
        Box::pin(async move {
            let text = self.send(worker, STATUS_PATH, None).await?;
            serde_json::from_str(&text).map_err(|e| ControlError::Invalid {
                pod: worker.pod.clone(),
                message: e.to_string(),
            })
        })
    }

    fn savepoint<'a>(
        &'a self,
        worker: &'a Worker,
        id: &'a str,
        stop: bool,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let body = json!({"id": id, "stop": stop});
            self.send(worker, SAVEPOINTS_PATH, Some(&body)).await?;
            Ok(())
        })
    }

    fn resume<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            self.send(worker, RESUME_PATH, Some(&json!({}))).await?;
            Ok(())
        })
    }
}

/// A request [`FakeWorkers`] received.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The pod addressed.
    pub pod: String,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// The JSON body (`Null` for a GET).
    pub body: Value,
    /// The bearer token sent with a POST.
    pub token: Option<String>,
}

/// Scripted workers for tests: a pod with a report answers, any other is
/// unreachable; every request is recorded.
#[derive(Debug, Default)]
pub struct FakeWorkers {
    reports: Mutex<BTreeMap<String, WorkerReport>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeWorkers {
    /// Sets what `pod` reports from now on.
    pub fn report(&self, pod: &str, report: WorkerReport) {
        lock(&self.reports).insert(pod.to_owned(), report);
    }

    /// Takes the requests received so far, in order.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *lock(&self.calls))
    }

    fn answer(
        &self,
        worker: &Worker,
        method: &'static str,
        path: &'static str,
        body: Value,
    ) -> Result<WorkerReport, ControlError> {
        lock(&self.calls).push(Call {
            pod: worker.pod.clone(),
            method,
            path,
            body,
            token: (method == "POST").then(|| worker.token.clone()),
        });
        lock(&self.reports)
            .get(&worker.pod)
            .cloned()
            .ok_or_else(|| ControlError::Unreachable {
                pod: worker.pod.clone(),
                message: "no such pod".to_owned(),
            })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WorkerControl for FakeWorkers {
    fn status<'a>(
        &'a self,
        worker: &'a Worker,
    ) -> BoxFuture<'a, Result<WorkerReport, ControlError>> {
        Box::pin(async move { self.answer(worker, "GET", STATUS_PATH, Value::Null) })
    }

    fn savepoint<'a>(
        &'a self,
        worker: &'a Worker,
        id: &'a str,
        stop: bool,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let body = json!({"id": id, "stop": stop});
            self.answer(worker, "POST", SAVEPOINTS_PATH, body).map(drop)
        })
    }

    fn resume<'a>(&'a self, worker: &'a Worker) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            self.answer(worker, "POST", RESUME_PATH, json!({}))
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    use super::*;

    #[test]
    fn workers_are_addressed_through_the_headless_service() {
        let worker = Worker::in_cluster("clicks", 1, "clicks-workers", "streams", "t");
        assert_eq!(worker.pod, "clicks-1");
        assert_eq!(
            worker.base_url,
            "http://clicks-1.clicks-workers.streams.svc:9400"
        );
    }

    #[test]
    fn the_worker_status_wire_format_is_read() {
        let report: WorkerReport = serde_json::from_value(json!({
            "job": "clicks", "ordinal": 0, "parallelism": 2, "generation": 3,
            "phase": "stopped", "stopped": true, "ready": false,
            "restoredFrom": "savepoint:sp-1",
            "tasks": [{"task": 1, "watermarkMs": 5, "partitions": [
                {"topic": "clicks", "partition": 1, "offset": 40, "highWatermark": 42, "lag": 2}
            ]}],
            "rates": {"inputPerSec": 1.0, "outputPerSec": 1.0}, "busyRatio": 0.5,
            "recordsIn": 1, "recordsOut": 1,
            "savepoint": {"id": "sp-2", "stop": true, "state": "inProgress",
                          "requestedAt": "2026-01-01T00:00:00Z"}
        }))
        .unwrap();
        assert_eq!(report.generation, 3);
        assert_eq!(report.phase, WorkerPhase::Stopped);
        assert_eq!(report.restored_from.as_deref(), Some("savepoint:sp-1"));
        assert_eq!(report.load.busy_ratio, Some(0.5));
        assert_eq!(report.load.records_in, Some(1));
        let partition = &report.load.tasks[0].partitions[0];
        assert_eq!(
            (
                partition.partition,
                partition.offset,
                partition.high_watermark
            ),
            (1, 40, Some(42))
        );
        let savepoint = report.savepoint.unwrap();
        assert_eq!(
            (savepoint.id.as_str(), savepoint.state),
            ("sp-2", SavepointState::InProgress)
        );
    }

    /// A worker API on a local port: the status fails once with a 503, POSTs
    /// need the bearer token `t0ken`.
    async fn serve() -> (String, Arc<AtomicU32>) {
        let status_calls = Arc::new(AtomicU32::new(0));
        let calls = status_calls.clone();
        let authorized = |headers: &HeaderMap| {
            headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer t0ken")
        };
        let app = Router::new()
            .route(
                STATUS_PATH,
                get(move || {
                    let calls = calls.clone();
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting".to_owned())
                        } else {
                            let body = json!({"phase": "running", "ready": true, "generation": 2});
                            (StatusCode::OK, body.to_string())
                        }
                    }
                }),
            )
            .route(
                SAVEPOINTS_PATH,
                post(move |headers: HeaderMap, body: String| async move {
                    let body: Value = serde_json::from_str(&body).unwrap_or_default();
                    if !authorized(&headers) {
                        (StatusCode::UNAUTHORIZED, String::new())
                    } else if body == json!({"id": "sp-1", "stop": true}) {
                        (StatusCode::ACCEPTED, "{}".to_owned())
                    } else {
                        (StatusCode::BAD_REQUEST, body.to_string())
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}"), status_calls)
    }

    #[tokio::test]
    async fn http_requests_carry_the_token_and_retry_server_errors() {
        let (base_url, status_calls) = serve().await;
        let control = HttpWorkerControl::new().unwrap();
        let worker = Worker {
            pod: "clicks-0".into(),
            base_url,
            token: "t0ken".into(),
        };
        let report = control.status(&worker).await.unwrap();
        assert_eq!(report.generation, 2);
        assert!(report.ready);
        assert_eq!(status_calls.load(Ordering::SeqCst), 2, "a 503 is retried");
        control.savepoint(&worker, "sp-1", true).await.unwrap();
        let wrong = Worker {
            token: "nope".into(),
            ..worker.clone()
        };
        let error = control.savepoint(&wrong, "sp-1", true).await.unwrap_err();
        assert!(
            matches!(error, ControlError::Refused { code: 401, .. }),
            "{error}"
        );
        let unreachable = Worker {
            base_url: "http://127.0.0.1:1".into(),
            ..worker
        };
        let error = control.resume(&unreachable).await.unwrap_err();
        assert!(matches!(error, ControlError::Unreachable { .. }), "{error}");
    }

    #[tokio::test]
    async fn the_fake_records_requests_and_answers_from_reports() {
        let fake = FakeWorkers::default();
        let worker = Worker::in_cluster("clicks", 0, "clicks-workers", "streams", "t");
        assert!(fake.status(&worker).await.is_err());
        fake.report("clicks-0", WorkerReport::default());
        fake.savepoint(&worker, "sp", false).await.unwrap();
        let calls = fake.take_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].path, SAVEPOINTS_PATH);
        assert_eq!(calls[1].body, json!({"id": "sp", "stop": false}));
        assert_eq!(calls[1].token.as_deref(), Some("t"));
        assert!(fake.take_calls().is_empty());
    }
}

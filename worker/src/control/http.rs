//! The worker's HTTP port: Prometheus metrics, health and readiness probes,
//! the status report and the control API (savepoints, resume).
//!
//! Control requests are handed to the processing loop as [`Command`]s; the
//! loop reports their progress in the shared [`WorkerStatus`].

use std::sync::{Arc, Mutex, mpsc};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::layout::validate_savepoint_id;
use crate::control::heartbeat::HEARTBEAT_TIMEOUT;
use crate::control::metrics::WorkerMetrics;
use crate::control::status::{SavepointState, SavepointStatus, WorkerPhase, WorkerStatus};

/// A request from the control API to the processing loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Take a savepoint with this id; stop consuming after it when `stop`.
    Savepoint {
        /// The savepoint id.
        id: String,
        /// Stop consuming once it is complete.
        stop: bool,
    },
    /// Resume consuming after a stop.
    Resume,
}

/// What the HTTP handlers share with the processing loop.
pub struct ControlState {
    /// The worker's metrics.
    pub metrics: WorkerMetrics,
    /// The worker's status, updated by the loop.
    pub status: Arc<Mutex<WorkerStatus>>,
    /// Sends commands to the processing loop.
    pub commands: mpsc::Sender<Command>,
    /// The bearer token POSTs must carry; without one every POST is refused.
    pub token: Option<String>,
}

/// Body of `POST /v1/savepoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// The savepoint id.
    pub id: String,
    /// Stop consuming after the savepoint (stop-with-savepoint).
    #[serde(default)]
    pub stop: bool,
}

/// The router serving every endpoint.
pub fn router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/savepoints", post(savepoint))
        .route("/v1/resume", post(resume))
        .with_state(state)
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn metrics(State(state): State<Arc<ControlState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Alive unless the processing loop stopped beating for
/// [`HEARTBEAT_TIMEOUT`]: then 503 with the reason.
async fn healthz(State(state): State<Arc<ControlState>>) -> Response {
    match state
        .metrics
        .heartbeat
        .stuck_at(std::time::Instant::now(), HEARTBEAT_TIMEOUT)
    {
        None => (StatusCode::OK, "ok").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn readyz(State(state): State<Arc<ControlState>>) -> Response {
    if lock(&state.status).ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn status(State(state): State<Arc<ControlState>>) -> Json<WorkerStatus> {
    Json(lock(&state.status).clone())
}

async fn savepoint(
    State(state): State<Arc<ControlState>>,
    headers: HeaderMap,
    body: Result<Json<SavepointRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !authorized(&headers, state.token.as_deref()) {
        return unauthorized();
    }
    let Json(req) = match body {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    if let Err(e) = validate_savepoint_id(&req.id) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let mut status = lock(&state.status);
    match decide_savepoint(&status, &req) {
        Decision::Existing(code) => {
            let current = status.savepoint.clone();
            (code, Json(current)).into_response()
        }
        Decision::Refuse(code, reason) => error(code, &reason),
        Decision::Start => {
            let sp = SavepointStatus {
                id: req.id.clone(),
                stop: req.stop,
                state: SavepointState::Pending,
                error: None,
                requested_at: jiff::Timestamp::now().to_string(),
                finished_at: None,
            };
            if state
                .commands
                .send(Command::Savepoint {
                    id: req.id,
                    stop: req.stop,
                })
                .is_err()
            {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the worker is shutting down",
                );
            }
            status.savepoint = Some(sp.clone());
            (StatusCode::ACCEPTED, Json(Some(sp))).into_response()
        }
    }
}

/// What to do with a savepoint request, given the worker's status.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Start it.
    Start,
    /// The same request is known: report it with this code.
    Existing(StatusCode),
    /// Refuse it.
    Refuse(StatusCode, String),
}

fn decide_savepoint(status: &WorkerStatus, req: &SavepointRequest) -> Decision {
    match status.phase {
        WorkerPhase::Running | WorkerPhase::Stopped => {}
        WorkerPhase::Restoring => {
            return Decision::Refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the worker is restoring".into(),
            );
        }
        WorkerPhase::Finished => {
            return Decision::Refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the worker has finished".into(),
            );
        }
    }
    match &status.savepoint {
        Some(sp) if sp.id == req.id => match sp.state {
            SavepointState::Completed => Decision::Existing(StatusCode::OK),
            SavepointState::Pending | SavepointState::InProgress => {
                Decision::Existing(StatusCode::ACCEPTED)
            }
            SavepointState::Failed => Decision::Start,
        },
        Some(sp)
            if matches!(
                sp.state,
                SavepointState::Pending | SavepointState::InProgress
            ) =>
        {
            Decision::Refuse(
                StatusCode::CONFLICT,
                format!("savepoint {} is in progress", sp.id),
            )
        }
        _ => Decision::Start,
    }
}

async fn resume(State(state): State<Arc<ControlState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers, state.token.as_deref()) {
        return unauthorized();
    }
    if state.commands.send(Command::Resume).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker is shutting down",
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "resuming": true })),
    )
        .into_response()
}

fn lock(status: &Mutex<WorkerStatus>) -> std::sync::MutexGuard<'_, WorkerStatus> {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": "a valid bearer token is required" })),
    )
        .into_response()
}

/// Whether the request carries `Authorization: Bearer <token>`. Without a
/// configured token nothing is authorized.
fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Compares in time independent of where the inputs differ (only of the
/// length of `expected`).
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_token_is_required() {
        assert!(authorized(&headers("Bearer abc"), Some("abc")));
        assert!(!authorized(&headers("Bearer abd"), Some("abc")));
        assert!(!authorized(&headers("Bearer ab"), Some("abc")));
        assert!(!authorized(&headers("Bearer abcd"), Some("abc")));
        assert!(!authorized(&headers("abc"), Some("abc")));
        assert!(!authorized(&HeaderMap::new(), Some("abc")));
        assert!(!authorized(&headers("Bearer "), None));
        assert!(constant_time_eq(b"", b""));
    }

    fn with_savepoint(phase: WorkerPhase, id: &str, state: SavepointState) -> WorkerStatus {
        WorkerStatus {
            phase,
            savepoint: Some(SavepointStatus {
                id: id.into(),
                stop: false,
                state,
                error: None,
                requested_at: String::new(),
                finished_at: None,
            }),
            ..WorkerStatus::default()
        }
    }

    fn control(metrics: WorkerMetrics) -> Arc<ControlState> {
        Arc::new(ControlState {
            metrics,
            status: Arc::new(Mutex::new(WorkerStatus::default())),
            commands: mpsc::channel().0,
            token: None,
        })
    }

    #[tokio::test]
    async fn healthz_follows_the_loop_heartbeat() {
        let mut metrics = WorkerMetrics::new().unwrap();
        let response = healthz(State(control(metrics.clone()))).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "restoring counts as alive"
        );
        metrics.heartbeat.beat();
        let response = healthz(State(control(metrics.clone()))).await;
        assert_eq!(response.status(), StatusCode::OK);
        metrics.heartbeat = crate::control::heartbeat::Heartbeat::beaten(
            HEARTBEAT_TIMEOUT * 3,
            HEARTBEAT_TIMEOUT * 2,
        );
        let response = healthz(State(control(metrics))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("has not made progress for 240 s"), "{body}");
    }

    #[test]
    fn savepoint_decisions() {
        let req = SavepointRequest {
            id: "a".into(),
            stop: true,
        };
        let running = WorkerStatus {
            phase: WorkerPhase::Running,
            ..WorkerStatus::default()
        };
        assert_eq!(decide_savepoint(&running, &req), Decision::Start);
        let restoring = WorkerStatus::default();
        assert!(matches!(
            decide_savepoint(&restoring, &req),
            Decision::Refuse(StatusCode::SERVICE_UNAVAILABLE, _)
        ));
        use SavepointState::*;
        let cases = [
            ("a", Completed, Decision::Existing(StatusCode::OK)),
            ("a", InProgress, Decision::Existing(StatusCode::ACCEPTED)),
            ("a", Failed, Decision::Start),
            ("b", Completed, Decision::Start),
            ("b", Failed, Decision::Start),
        ];
        for (id, state, expected) in cases {
            let s = with_savepoint(WorkerPhase::Stopped, id, state);
            assert_eq!(decide_savepoint(&s, &req), expected, "{id} {state:?}");
        }
        let busy = with_savepoint(WorkerPhase::Running, "b", Pending);
        assert!(matches!(
            decide_savepoint(&busy, &req),
            Decision::Refuse(StatusCode::CONFLICT, _)
        ));
    }
}

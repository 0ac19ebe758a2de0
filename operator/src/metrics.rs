//! The operator's Prometheus metrics and its HTTP endpoint (`/metrics`,
//! `/healthz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Why the metrics could not be registered or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be created or registered.
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
    /// The HTTP listener could not be bound or failed.
    #[error("metrics server on {addr}: {source}")]
    Serve {
        /// The listen address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The operator's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    failures: IntCounterVec,
    duration: Histogram,
    leader: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics in a new registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "weir_operator_reconciliations_total",
                "Reconciliations of StreamingJobs, by result.",
            ),
            &["result"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "weir_operator_reconcile_errors_total",
                "Failed reconciliations, by reason.",
            ),
            &["reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "weir_operator_reconcile_duration_seconds",
                "Duration of reconciliations.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let leader = IntGauge::new(
            "weir_operator_leader",
            "1 while this replica holds the leader lease.",
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciliations,
            failures,
            duration,
            leader,
        })
    }

    /// Records a finished reconciliation that started at `started`; `error`
    /// is the reason label of its failure, if it failed.
    pub fn reconciled(&self, started: Instant, error: Option<&str>) {
        self.duration.observe(started.elapsed().as_secs_f64());
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciliations.with_label_values(&[result]).inc();
        if let Some(reason) = error {
            self.failures.with_label_values(&[reason]).inc();
        }
    }

    /// Records whether this replica is the leader.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode metrics: {e}\n"))
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// The HTTP routes: `/metrics` and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(metrics)
}

/// Binds the metrics endpoint (separately from serving, so that a busy port
/// stops the operator at start-up).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Serve { addr, source })
}

/// Serves [`router`] on `listener` until the process stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> Result<(), MetricsError> {
    let addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Serve {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
    axum::serve(listener, router(metrics))
        .await
        .map_err(|source| MetricsError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliations_errors_and_durations_are_exported() {
        let metrics = Metrics::new().unwrap();
        metrics.reconciled(Instant::now(), None);
        metrics.reconciled(Instant::now(), Some("kube_apply"));
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains("weir_operator_reconciliations_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_operator_reconciliations_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_operator_reconcile_errors_total{reason=\"kube_apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("weir_operator_leader 1"), "{text}");
    }

    #[tokio::test]
    async fn healthz_and_metrics_are_served() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        tokio::spawn(serve(listener, metrics));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}

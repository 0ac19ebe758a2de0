//! The operator's Prometheus metrics and its HTTP endpoint (`/metrics`,
//! `/healthz`): reconciliations, leadership, and per job (labels
//! `namespace` and `job`) the lag, parallelism, phase, rescales and
//! savepoints by outcome, autoscaler decisions and the age of the last
//! savepoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use weir_crds::status::Phase;

/// Every phase, for the one-hot `weir_job_phase` gauge.
const PHASES: [Phase; 7] = [
    Phase::Pending,
    Phase::Running,
    Phase::Savepointing,
    Phase::Rescaling,
    Phase::Restoring,
    Phase::Suspended,
    Phase::Failed,
];

/// Outcome label of a completed rescale or savepoint.
pub const COMPLETED: &str = "completed";
/// Outcome label of a failed rescale or savepoint.
pub const FAILED: &str = "failed";

/// The decision labels of `weir_autoscaler_decisions_total`.
pub const DECISIONS: [&str; 5] = [
    "scale_up",
    "scale_down",
    "scale_to_zero",
    "wake",
    "recommend",
];

/// What one sample of a job found, for its gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobGauges {
    /// Source lag (`status.lag.total`), if it could be read.
    pub lag: Option<i64>,
    /// Records in transit on the job's internal topics.
    pub internal_backlog: i64,
    /// Workers running.
    pub parallelism: i32,
    /// The job's phase.
    pub phase: Option<Phase>,
    /// Seconds since the last savepoint completed, if there is one.
    pub last_savepoint_age: Option<f64>,
}

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
    job_lag: IntGaugeVec,
    job_backlog: IntGaugeVec,
    job_parallelism: IntGaugeVec,
    job_phase: IntGaugeVec,
    job_savepoint_age: GaugeVec,
    job_rescales: IntCounterVec,
    job_savepoints: IntCounterVec,
    job_decisions: IntCounterVec,
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
        let job = ["namespace", "job"];
        let job_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &job)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let job_lag = job_gauge(
            "weir_job_lag",
            "Records of the source topics the job's group has not committed (status.lag.total).",
        )?;
        let job_backlog = job_gauge(
            "weir_job_internal_backlog",
            "Records on the job's repartition topic its workers have not processed yet.",
        )?;
        let job_parallelism = job_gauge("weir_job_parallelism", "Workers running the job.")?;
        let job_phase = IntGaugeVec::new(
            Opts::new(
                "weir_job_phase",
                "1 for the job's current phase, 0 for the others.",
            ),
            &["namespace", "job", "phase"],
        )?;
        registry.register(Box::new(job_phase.clone()))?;
        let job_savepoint_age = GaugeVec::new(
            Opts::new(
                "weir_job_last_savepoint_age_seconds",
                "Seconds since the job's last savepoint completed, as of its latest sample.",
            ),
            &job,
        )?;
        registry.register(Box::new(job_savepoint_age.clone()))?;
        let job_counter = |name: &str, help: &str, label: &str| {
            let counter = IntCounterVec::new(Opts::new(name, help), &["namespace", "job", label])?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let job_rescales = job_counter(
            "weir_job_rescales_total",
            "Parallelism changes of the job (rescales, scale to zero and back), by outcome.",
            "outcome",
        )?;
        let job_savepoints = job_counter(
            "weir_job_savepoints_total",
            "Savepoints of the job, by outcome.",
            "outcome",
        )?;
        let job_decisions = job_counter(
            "weir_autoscaler_decisions_total",
            "Decisions of the job's autoscaler that change or recommend a parallelism, by decision.",
            "decision",
        )?;
        Ok(Self {
            registry,
            reconciliations,
            failures,
            duration,
            leader,
            job_lag,
            job_backlog,
            job_parallelism,
            job_phase,
            job_savepoint_age,
            job_rescales,
            job_savepoints,
            job_decisions,
        })
    }

    /// Sets the gauges of the job `name` in `namespace` from a sample.
    pub fn observe_job(&self, namespace: &str, name: &str, gauges: &JobGauges) {
        let labels = [namespace, name];
        match gauges.lag {
            Some(lag) => self.job_lag.with_label_values(&labels).set(lag),
            None => {
                let _ = self.job_lag.remove_label_values(&labels);
            }
        }
        self.job_backlog
            .with_label_values(&labels)
            .set(gauges.internal_backlog);
        self.job_parallelism
            .with_label_values(&labels)
            .set(i64::from(gauges.parallelism));
        for phase in PHASES {
            let value = i64::from(gauges.phase == Some(phase));
            self.job_phase
                .with_label_values(&[namespace, name, phase_name(phase)])
                .set(value);
        }
        match gauges.last_savepoint_age {
            Some(age) => self.job_savepoint_age.with_label_values(&labels).set(age),
            None => {
                let _ = self.job_savepoint_age.remove_label_values(&labels);
            }
        }
    }

    /// Counts a rescale of the job with `outcome` ([`COMPLETED`], [`FAILED`]).
    pub fn count_rescale(&self, namespace: &str, name: &str, outcome: &str) {
        self.job_rescales
            .with_label_values(&[namespace, name, outcome])
            .inc();
    }

    /// Counts a savepoint of the job with `outcome` ([`COMPLETED`], [`FAILED`]).
    pub fn count_savepoint(&self, namespace: &str, name: &str, outcome: &str) {
        self.job_savepoints
            .with_label_values(&[namespace, name, outcome])
            .inc();
    }

    /// Counts an autoscaler decision of the job (one of [`DECISIONS`]).
    pub fn count_decision(&self, namespace: &str, name: &str, decision: &str) {
        self.job_decisions
            .with_label_values(&[namespace, name, decision])
            .inc();
    }

    /// Removes every series of a deleted job.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        let _ = self.job_lag.remove_label_values(&labels);
        let _ = self.job_backlog.remove_label_values(&labels);
        let _ = self.job_parallelism.remove_label_values(&labels);
        let _ = self.job_savepoint_age.remove_label_values(&labels);
        for phase in PHASES {
            let _ = self
                .job_phase
                .remove_label_values(&[namespace, name, phase_name(phase)]);
        }
        for outcome in [COMPLETED, FAILED] {
            let _ = self
                .job_rescales
                .remove_label_values(&[namespace, name, outcome]);
            let _ = self
                .job_savepoints
                .remove_label_values(&[namespace, name, outcome]);
        }
        for decision in DECISIONS {
            let _ = self
                .job_decisions
                .remove_label_values(&[namespace, name, decision]);
        }
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

/// The name of a phase, as status.phase spells it.
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Savepointing => "Savepointing",
        Phase::Rescaling => "Rescaling",
        Phase::Restoring => "Restoring",
        Phase::Suspended => "Suspended",
        Phase::Failed => "Failed",
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

    #[test]
    fn per_job_metrics_are_exported_and_forgotten() {
        let metrics = Metrics::new().unwrap();
        let gauges = JobGauges {
            lag: Some(1_500),
            internal_backlog: 20,
            parallelism: 3,
            phase: Some(Phase::Running),
            last_savepoint_age: Some(42.0),
        };
        metrics.observe_job("streams", "clicks", &gauges);
        metrics.count_rescale("streams", "clicks", COMPLETED);
        metrics.count_savepoint("streams", "clicks", FAILED);
        metrics.count_decision("streams", "clicks", "scale_up");
        let text = metrics.render();
        for line in [
            r#"weir_job_lag{job="clicks",namespace="streams"} 1500"#,
            r#"weir_job_internal_backlog{job="clicks",namespace="streams"} 20"#,
            r#"weir_job_parallelism{job="clicks",namespace="streams"} 3"#,
            r#"weir_job_phase{job="clicks",namespace="streams",phase="Running"} 1"#,
            r#"weir_job_phase{job="clicks",namespace="streams",phase="Suspended"} 0"#,
            r#"weir_job_last_savepoint_age_seconds{job="clicks",namespace="streams"} 42"#,
            r#"weir_job_rescales_total{job="clicks",namespace="streams",outcome="completed"} 1"#,
            r#"weir_job_savepoints_total{job="clicks",namespace="streams",outcome="failed"} 1"#,
            r#"weir_autoscaler_decisions_total{decision="scale_up",job="clicks",namespace="streams"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        metrics.forget_job("streams", "clicks");
        let text = metrics.render();
        assert!(!text.contains("clicks"), "{text}");
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

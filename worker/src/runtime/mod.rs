//! One worker instance, in-process: [`Worker::start`] binds the HTTP port,
//! then a dedicated thread restores the owned tasks, assigns their
//! partitions and runs the processing loop until cancelled, killed, fenced
//! or failed. Several workers can run in one process, each with its own
//! state directory, port, metrics registry and Kafka clients.
//!
//! The loop is synchronous (librdkafka's consumer is polled in batches on the
//! worker's thread); object storage calls run on a small runtime owned by
//! that thread, so the caller's runtime only serves HTTP.
//!
//! `start` restores (through the checkpoint coordinator, which fences
//! first), `event_loop` processes, checkpoints and serves commands, and
//! `dispatch` moves records between the tasks and Kafka.

mod dispatch;
mod event_loop;
mod input_gate;
mod start;
pub mod throttle;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::compatibility::IncompatibleState;
use crate::checkpoint::coordinator::{CheckpointCoordinator, CoordinatorError, PipelineRecord};
use crate::checkpoint::storage::StorageError;
use crate::config::WorkerConfig;
use crate::control::http::{Command, ControlState};
use crate::control::metrics::{MetricsError, TaskCounters, WorkerMetrics};
use crate::control::progress::ProgressWindow;
use crate::control::status::{WorkerPhase, WorkerStatus};
use crate::engine::record::{Counters, Outputs};
use crate::engine::task::TaskProcessor;
use crate::engine::watermark::UpstreamReport;
use crate::kafka::client::KafkaSetupError;
use crate::kafka::lag::LagMonitor;
use crate::kafka::output::KafkaOutput;
use crate::kafka::producer::ProduceError;
use crate::kafka::repartition::{Purger, RepartitionError};
use crate::kafka::source_queue::{SourceQueue, SourceQueueError};
use crate::state::StateError;

/// Why a worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The worker's thread or runtime could not be created, or it panicked.
    #[error("worker thread: {0}")]
    Thread(String),
    /// The checkpoint storage could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Kafka could not be set up.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// A Kafka consumer operation failed.
    #[error("Kafka consumer: {operation}: {source}")]
    Consumer {
        /// What was attempted.
        operation: &'static str,
        /// The underlying error.
        source: rdkafka::error::KafkaError,
    },
    /// The source records could not be read.
    #[error("source queue: {0}")]
    Source(#[from] SourceQueueError),
    /// The pipeline does not compile.
    #[error("pipeline: {0}")]
    Pipeline(String),
    /// The repartition topic could not be set up.
    #[error(transparent)]
    Repartition(#[from] RepartitionError),
    /// A task's state failed.
    #[error("task {task}: state: {source}")]
    State {
        /// The task.
        task: i32,
        /// The underlying error.
        source: StateError,
    },
    /// A task's processing failed (not a record: records that fail go to
    /// the dead-letter topic).
    #[error("task {task}: {message}")]
    Task {
        /// The task.
        task: i32,
        /// What failed.
        message: String,
    },
    /// The local state directory could not be prepared.
    #[error("state directory {}: {source}", dir.display())]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The checkpoint protocol failed (restore, checkpoint or fencing):
    /// the worker restarts from the last committed checkpoint.
    #[error(transparent)]
    Coordinator(Box<CoordinatorError>),
    /// Restored state cannot be read by this pipeline.
    #[error("restore refused: {0}")]
    Incompatible(#[from] IncompatibleState),
    /// Output could not be written.
    #[error(transparent)]
    Produce(#[from] ProduceError),
}

impl From<CoordinatorError> for WorkerError {
    fn from(e: CoordinatorError) -> Self {
        Self::Coordinator(Box::new(e))
    }
}

/// How a worker ended without error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Cancelled: the batch in hand was finished and checkpointed (when
    /// anything was processed since the last checkpoint), unless the output
    /// queue was full and did not drain: then it stopped at once, without
    /// a last checkpoint.
    Stopped {
        /// The last completed checkpoint, if any.
        last_checkpoint: Option<u64>,
    },
    /// Killed: stopped at once, without checkpoint or commit, as a crash
    /// would.
    Killed,
}

/// Runs worker instances.
pub struct Worker;

/// A running worker.
pub struct WorkerHandle {
    addr: SocketAddr,
    status: Arc<Mutex<WorkerStatus>>,
    metrics: WorkerMetrics,
    kill: Arc<AtomicBool>,
    cancel: CancellationToken,
    done: tokio::sync::oneshot::Receiver<Result<WorkerExit, WorkerError>>,
    http: tokio::task::JoinHandle<()>,
    http_cancel: CancellationToken,
}

impl Worker {
    /// Starts one worker: binds its HTTP port (port 0 picks one, see
    /// [`WorkerHandle::addr`]) and starts its thread, which restores and then
    /// processes until `cancel` fires (finish the batch, checkpoint, stop).
    /// Must be called within a Tokio runtime, which serves HTTP.
    pub async fn start(
        config: WorkerConfig,
        cancel: CancellationToken,
    ) -> Result<WorkerHandle, WorkerError> {
        let metrics = WorkerMetrics::new()?;
        let status = Arc::new(Mutex::new(WorkerStatus {
            job: config.job_name.clone(),
            ordinal: config.ordinal,
            parallelism: config.parallelism,
            generation: config.generation,
            ..WorkerStatus::default()
        }));
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| WorkerError::Listen {
                addr: config.http_addr,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| WorkerError::Listen {
                addr: config.http_addr,
                source,
            })?;
        let (commands_tx, commands_rx) = mpsc::channel();
        let control = Arc::new(ControlState {
            metrics: metrics.clone(),
            status: status.clone(),
            commands: commands_tx,
            token: config.control_token.clone(),
        });
        if config.control_token.is_none() {
            tracing::warn!(
                "no control token (WEIR_CONTROL_TOKEN): the control API refuses every POST"
            );
        }
        let http_cancel = CancellationToken::new();
        let http = tokio::spawn({
            let router = crate::control::http::router(control);
            let http_cancel = http_cancel.clone();
            async move {
                if let Err(e) = crate::control::http::serve(listener, router, http_cancel).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }
        });

        let kill = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let ctx = Context {
            config,
            metrics: metrics.clone(),
            status: status.clone(),
            commands: commands_rx,
            cancel: cancel.clone(),
            kill: kill.clone(),
        };
        let name = format!("weir-worker-{}", ctx.config.ordinal);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let status = ctx.status.clone();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ctx)))
                    .unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "panic".to_owned());
                        Err(WorkerError::Thread(format!("panicked: {message}")))
                    });
                {
                    let mut s = lock(&status);
                    s.phase = WorkerPhase::Finished;
                    s.ready = false;
                    if let Err(e) = &result {
                        s.error = Some(e.to_string());
                    }
                }
                if let Err(e) = &result {
                    tracing::error!(error = %e, "worker failed");
                }
                let _ = done_tx.send(result);
            })
            .map_err(|e| WorkerError::Thread(e.to_string()))?;
        Ok(WorkerHandle {
            addr,
            status,
            metrics,
            kill,
            cancel,
            done,
            http,
            http_cancel,
        })
    }
}

impl WorkerHandle {
    /// The address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current status report.
    pub fn status(&self) -> WorkerStatus {
        lock(&self.status).clone()
    }

    /// Records the worker has read from its sources so far, counted at the
    /// end of each batch (at most a few milliseconds behind): finer than
    /// the status report, which is refreshed every half second.
    pub fn records_in(&self) -> u64 {
        self.metrics.records_in_total()
    }

    /// The worker's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Asks the worker to finish its batch, checkpoint and stop.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Stops the worker at once, without checkpoint or commit, as a crash
    /// would (its open transactions are aborted by the next owner).
    pub fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Waits until the worker has stopped, then stops its HTTP server.
    pub async fn wait(self) -> Result<WorkerExit, WorkerError> {
        let result = match self.done.await {
            Ok(result) => result,
            Err(_) => Err(WorkerError::Thread("the worker thread vanished".to_owned())),
        };
        self.http_cancel.cancel();
        let _ = self.http.await;
        result
    }
}

/// What the worker thread starts with.
struct Context {
    config: WorkerConfig,
    metrics: WorkerMetrics,
    status: Arc<Mutex<WorkerStatus>>,
    commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    kill: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run(ctx: Context) -> Result<WorkerExit, WorkerError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Thread(format!("cannot build the storage runtime: {e}")))?;
    Running::start(ctx, rt)?.run()
}

/// One owned task.
struct Task {
    id: i32,
    processor: TaskProcessor,
    /// Next offset per input topic (indexed like [`Running::topics`]).
    offsets: Vec<i64>,
    outputs: Outputs,
    counters: TaskCounters,
    /// Engine counters already reported to the metrics.
    reported: Counters,
    /// Records read since the last report.
    unreported_in: u64,
    /// What the task last broadcast to the repartition topic, and when.
    last_report: Option<(UpstreamReport, Instant)>,
    /// The last drain (savepoint id) each upstream task reported as ended
    /// on this task's repartition partition.
    drained: HashMap<usize, String>,
    /// The task read its partition of the join's table and its forwarded
    /// rows are written: its reports on the repartition topic say so.
    table_read: bool,
    /// The upstream tasks that reported on this task's repartition
    /// partition, since it started, that they read and forwarded their
    /// partition of the table.
    tables_forwarded: HashSet<usize>,
    /// The end of this task's repartition partition when it started: the
    /// reports before it were sent before this run.
    fresh_reports_from: i64,
}

impl Task {
    /// The upstream tasks among the first `upstreams` that have not yet
    /// reported forwarding their partition of the join's table.
    fn tables_missing(&self, upstreams: usize) -> impl Iterator<Item = usize> + '_ {
        (0..upstreams).filter(|u| !self.tables_forwarded.contains(u))
    }
}

/// A stop-with-savepoint waiting for the repartition topic to drain.
struct Drain {
    /// The savepoint id.
    id: String,
    /// When the savepoint is given up.
    deadline: Instant,
}

/// Output topics of the job.
struct Destinations {
    sink: String,
    dead_letter: Option<String>,
    late_data: Option<String>,
    /// The repartition topic and its partition count.
    repartition: Option<(String, i32)>,
    /// The producers' `message.max.bytes`: larger outputs are dead-lettered.
    max_message_bytes: usize,
}

/// A restored worker running its loop.
struct Running {
    config: WorkerConfig,
    rt: tokio::runtime::Runtime,
    /// Drives checkpoints and savepoints through the protocol.
    coordinator: CheckpointCoordinator,
    /// The producers, as the protocol's output side.
    output: KafkaOutput,
    /// What every manifest records about the pipeline.
    pipeline_record: PipelineRecord,
    consumer: Arc<BaseConsumer>,
    /// The assigned partitions' records, read in batches.
    source: SourceQueue,
    /// The topics every task reads partition `t` of: the source topics,
    /// then the repartition topic if the pipeline has one.
    topics: Vec<String>,
    /// Index of the repartition topic in `topics`.
    repartition_input: Option<usize>,
    /// Deletes what the tasks committed past on the repartition topic.
    purger: Option<Purger>,
    /// Per task, the lowest repartition offset a savepoint restores from:
    /// purging never goes below it.
    purge_floor: HashMap<i32, i64>,
    partitions: i32,
    tasks: Vec<Task>,
    /// Task index by partition number.
    task_of_partition: Vec<Option<usize>>,
    destinations: Destinations,
    metrics: WorkerMetrics,
    status: Arc<Mutex<WorkerStatus>>,
    commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    kill: Arc<AtomicBool>,
    last_checkpoint_id: Option<u64>,
    checkpoint_interval: Duration,
    /// Something was processed since the last checkpoint.
    dirty: bool,
    /// Some task's watermark report changed (at-least-once).
    pending_reports: bool,
    stopped: bool,
    /// The drain in progress, if any.
    draining: Option<Drain>,
    /// The stop-with-savepoint this worker's output ended for, from its
    /// drain's start until the sources read again: every report says so,
    /// also those after the drain completed (a report without it tells
    /// the other workers the drain was given up).
    output_ended_for: Option<String>,
    /// Which input partitions are paused, by a drain or while a task reads
    /// its join's table.
    inputs: input_gate::InputGate,
    /// When the tasks waiting for other tasks' table reports were last
    /// named in the log.
    table_wait_logged: Instant,
    records_in: u64,
    records_out: u64,
    idle: Duration,
    /// The cap on records per second, if any.
    throttle: Option<throttle::Throttle>,
    progress: ProgressWindow,
    lag: LagMonitor,
}

/// Task numbers are partition numbers, never negative.
fn task_number(task: i32) -> u32 {
    u32::try_from(task).unwrap_or(0)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

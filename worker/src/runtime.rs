//! One worker instance, in-process: [`Worker::start`] binds the HTTP port,
//! then a dedicated thread restores the owned tasks, assigns their
//! partitions and runs the processing loop until cancelled, killed, fenced
//! or failed. Several workers can run in one process, each with its own
//! state directory, port, metrics registry and Kafka clients.
//!
//! The loop is synchronous (librdkafka's consumer is polled in batches on the
//! worker's thread); object storage calls run on a small runtime owned by
//! that thread, so the caller's runtime only serves HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rdkafka::config::FromClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir_crds::job::{Guarantee, StartingOffsets};

use crate::checkpoint::{
    CheckpointError, CheckpointRequest, TaskCheckpointer, mark_committed, next_checkpoint_id,
};
use crate::config::WorkerConfig;
use crate::fence::{FenceError, check_fence};
use crate::http::{Command, ControlState};
use crate::kafka::{self, KafkaSetupError};
use crate::layout::JobLayout;
use crate::manifest::SourceOffset;
use crate::metrics::{MetricsError, TaskCounters, WorkerMetrics};
use crate::partitioner::partition_for_key;
use crate::pipeline::Pipeline;
use crate::producer::{OutputProducer, ProduceError};
use crate::progress::{ProgressWindow, Sample};
use crate::record::{Counters, DeadLetter, Outputs, SourcePosition, SourceRecord};
use crate::repartition::{self, Purger, RepartitionError, RepartitionMessage};
use crate::restore::{RestoreError, RestoredFrom, restore_task};
use crate::savepoint::{self, SavepointError};
use crate::state::{StateError, StateOptions, TaskState};
use crate::status::{
    CheckpointStatus, PartitionStatus, Rates, SavepointState, TaskStatus, WorkerPhase, WorkerStatus,
};
use crate::storage::{StorageError, open_store};
use crate::task::{TaskProcessor, TaskSnapshot};
use crate::transfer::TransferError;
use crate::watermark::UpstreamReport;

/// Most records handed to the tasks between two output flushes.
const MAX_BATCH: usize = 8192;
/// How long a poll waits for input when none is buffered.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often processing time is advanced (idle partitions, timers).
const ADVANCE_EVERY: Duration = Duration::from_millis(100);
/// How often, at most, a changed watermark report is broadcast to the
/// repartition topic under at-least-once.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// How often the status report is refreshed.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// How often high watermarks are fetched for lag.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// Timeout of metadata, watermark and committed-offset queries.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A restore failed.
    #[error(transparent)]
    Restore(Box<RestoreError>),
    /// A checkpoint failed.
    #[error(transparent)]
    Checkpoint(Box<CheckpointError>),
    /// An object storage operation failed.
    #[error("object storage: {operation}: {source}")]
    Store {
        /// What was attempted.
        operation: &'static str,
        /// The underlying error.
        source: Box<TransferError>,
    },
    /// A committed marker could not be written.
    #[error("checkpoint {checkpoint_id}: committed marker of task {task}: {source}")]
    Marker {
        /// The checkpoint.
        checkpoint_id: u64,
        /// The task.
        task: i32,
        /// The underlying error.
        source: Box<TransferError>,
    },
    /// Output could not be written or committed.
    #[error(transparent)]
    Produce(#[from] ProduceError),
    /// A newer generation owns the job, or the fence could not be read: the
    /// worker stopped without committing.
    #[error(transparent)]
    Fenced(Box<FenceError>),
}

impl From<RestoreError> for WorkerError {
    fn from(e: RestoreError) -> Self {
        Self::Restore(Box::new(e))
    }
}

impl From<CheckpointError> for WorkerError {
    fn from(e: CheckpointError) -> Self {
        Self::Checkpoint(Box::new(e))
    }
}

impl From<FenceError> for WorkerError {
    fn from(e: FenceError) -> Self {
        Self::Fenced(Box::new(e))
    }
}

/// How a worker ended without error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Cancelled: the batch in hand was finished and checkpointed (when
    /// anything was processed since the last checkpoint).
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
            let router = crate::http::router(control);
            let http_cancel = http_cancel.clone();
            async move {
                if let Err(e) = crate::http::serve(listener, router, http_cancel).await {
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
    let mut worker = Running::start(ctx, rt)?;
    let result = worker.run();
    worker.shutdown();
    result
}

/// One owned task.
struct Task {
    id: i32,
    processor: TaskProcessor,
    checkpointer: TaskCheckpointer,
    /// Next offset per source topic (indexed like the job's topics).
    offsets: Vec<i64>,
    outputs: Outputs,
    counters: TaskCounters,
    /// Engine counters already reported to the metrics.
    reported: Counters,
    /// Records read since the last report.
    unreported_in: u64,
    /// Index of the task's producer.
    producer: usize,
    /// What the task last broadcast to the repartition topic, and when.
    last_report: Option<(UpstreamReport, Instant)>,
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
    store: Arc<dyn ObjectStore>,
    layout: JobLayout,
    consumer: BaseConsumer,
    group: ConsumerGroupMetadata,
    /// The topics every task reads partition `t` of: the source topics,
    /// then the repartition topic if the pipeline has one.
    topics: Vec<String>,
    /// Index of the repartition topic in `topics`.
    repartition_input: Option<usize>,
    /// Deletes what the tasks committed past on the repartition topic.
    purger: Option<Purger>,
    partitions: i32,
    tasks: Vec<Task>,
    /// Task index by partition number.
    task_of_partition: Vec<Option<usize>>,
    producers: Vec<OutputProducer>,
    destinations: Destinations,
    metrics: WorkerMetrics,
    status: Arc<Mutex<WorkerStatus>>,
    commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    kill: Arc<AtomicBool>,
    next_checkpoint_id: u64,
    last_checkpoint_id: Option<u64>,
    checkpoint_interval: Duration,
    /// Something was processed since the last checkpoint.
    dirty: bool,
    /// Some task's watermark report changed (at-least-once).
    pending_reports: bool,
    stopped: bool,
    records_in: u64,
    records_out: u64,
    idle: Duration,
    progress: ProgressWindow,
    high_watermarks: Arc<Mutex<HashMap<(String, i32), i64>>>,
    lag_stop: Arc<AtomicBool>,
    lag_thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Opens storage and Kafka, restores every owned task and assigns its
    /// partitions.
    fn start(ctx: Context, rt: tokio::runtime::Runtime) -> Result<Self, WorkerError> {
        let started = Instant::now();
        let Context {
            config,
            metrics,
            status,
            commands,
            cancel,
            kill,
        } = ctx;
        let spec = &config.spec;
        let (store, base) = open_store(&spec.checkpoint.storage)?;
        let layout = JobLayout::new(&base, &config.namespace, &config.job_name);
        let pipeline =
            Arc::new(Pipeline::compile(spec).map_err(|e| WorkerError::Pipeline(e.to_string()))?);

        let base_config = kafka::base_config(&spec.kafka, config.kafka_credentials_dir.as_deref())?;
        let consumer: BaseConsumer =
            BaseConsumer::from_config(&kafka::consumer_config(&base_config, &config.group_id()))
                .map_err(|source| KafkaSetupError::Client {
                    what: "consumer",
                    source,
                })?;
        let mut topics = spec.source.topics.clone();
        let partitions = kafka::source_partitions(&consumer, &topics, QUERY_TIMEOUT)?;
        let source_topics = topics.len();
        let repartition_topic = pipeline.repartition_step().map(|step| {
            repartition::topic_name(
                &config.namespace,
                &config.job_name,
                &pipeline.steps()[step].name,
            )
        });
        if let Some(topic) = &repartition_topic {
            rt.block_on(repartition::ensure_topic(
                &kafka::metadata_config(&base_config),
                topic,
                partitions,
                QUERY_TIMEOUT,
            ))?;
            topics.push(topic.clone());
        }
        let repartition_input = repartition_topic.as_ref().map(|_| source_topics);
        if repartition_topic.is_some() && pipeline.idle_timeout() == 0 {
            tracing::warn!(
                "source.watermark.idleTimeout is 0s and records go through a repartition topic: a source partition without records holds back every window of the job, not only its own task's"
            );
        }
        // Upstream tasks repeat their watermark report at every checkpoint;
        // one not repeated for three intervals no longer counts as idle.
        let idle_lease_ms = spec
            .checkpoint
            .interval
            .as_millis()
            .saturating_mul(3)
            .max(10_000);
        let owned = kafka::owned_tasks(partitions, config.ordinal, config.parallelism);
        tracing::info!(
            job = %config.job_name,
            ordinal = config.ordinal,
            parallelism = config.parallelism,
            partitions,
            tasks = ?owned,
            "starting worker"
        );

        // The group's committed offsets, for the restore choice and as the
        // fallback start position.
        let mut all = TopicPartitionList::new();
        for &t in &owned {
            for topic in &topics {
                all.add_partition(topic, t);
            }
        }
        let committed: HashMap<(String, i32), i64> = if owned.is_empty() {
            HashMap::new()
        } else {
            consumer
                .committed_offsets(all.clone(), QUERY_TIMEOUT)
                .map_err(|source| WorkerError::Consumer {
                    operation: "committed offsets",
                    source,
                })?
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                })
                .collect()
        };

        // Restore every task concurrently.
        let state_options = state_options(spec);
        let source = config.restore_from.clone();
        let lookup =
            |topic: &str, partition: i32| committed.get(&(topic.to_owned(), partition)).copied();
        let dirs: Vec<(i32, PathBuf, PathBuf)> = owned
            .iter()
            .map(|&t| {
                let dir = config.state_dir.join(format!("task-{t}"));
                let db = dir.join("db");
                (t, dir, db)
            })
            .collect();
        for (_, dir, _) in &dirs {
            std::fs::create_dir_all(dir).map_err(|source| WorkerError::StateDir {
                dir: dir.clone(),
                source,
            })?;
        }
        let restored = rt.block_on(futures::future::try_join_all(dirs.iter().map(
            |(t, _, db)| {
                restore_task(
                    store.as_ref(),
                    &layout,
                    task_number(*t),
                    &source,
                    &lookup,
                    db,
                )
            },
        )))?;

        let mut tasks = Vec::with_capacity(owned.len());
        let mut assignment = TopicPartitionList::new();
        let mut restored_from = Vec::new();
        for ((t, dir, db_dir), restored) in dirs.into_iter().zip(restored) {
            if restored.is_none() {
                // Whatever is there is not a committed state: start empty.
                remove_dir(&db_dir)?;
            }
            let state = TaskState::open(&db_dir, &state_options)
                .map_err(|source| WorkerError::State { task: t, source })?;
            let task_count = usize::try_from(partitions).unwrap_or(0);
            let mut processor = TaskProcessor::new(pipeline.clone(), state, task_count)
                .with_idle_lease(idle_lease_ms);
            for topic in &topics[..source_topics] {
                processor.register_partition(topic, t);
            }
            let mut checkpointer = TaskCheckpointer::new(
                store.clone(),
                layout.clone(),
                task_number(t),
                dir.join("staging"),
            );
            let mut offsets = Vec::with_capacity(topics.len());
            let manifest_offset = |topic: &str| {
                restored.as_ref().and_then(|r| {
                    r.manifest
                        .offsets
                        .iter()
                        .find(|o| o.topic == topic && o.partition == t)
                        .map(|o| o.offset)
                })
            };
            for (index, topic) in topics.iter().enumerate() {
                // The repartition topic is read from its start: what tasks
                // wrote before this one started is this task's input.
                let starting = if index < source_topics {
                    spec.source.starting_offsets
                } else {
                    StartingOffsets::Earliest
                };
                let (low, high) =
                    consumer
                        .fetch_watermarks(topic, t, QUERY_TIMEOUT)
                        .map_err(|source| WorkerError::Consumer {
                            operation: "fetch watermarks",
                            source,
                        })?;
                let restored_offset = manifest_offset(topic);
                if index >= source_topics
                    && let Some(o) = restored_offset.filter(|o| *o < low)
                {
                    return Err(WorkerError::Task {
                        task: t,
                        message: format!(
                            "the restored checkpoint reads {topic} from offset {o}, but its records before {low} were deleted: they were purged after a newer checkpoint committed, so this restore point is too old for a pipeline with a repartition"
                        ),
                    });
                }
                let offset = kafka::start_offset(
                    restored_offset,
                    committed.get(&(topic.clone(), t)).copied(),
                    starting,
                    low,
                    high,
                );
                assignment
                    .add_partition_offset(topic, t, Offset::Offset(offset))
                    .map_err(|source| WorkerError::Consumer {
                        operation: "build assignment",
                        source,
                    })?;
                offsets.push(offset);
            }
            if let Some(restored) = &restored {
                let snapshot: TaskSnapshot =
                    serde_json::from_value(restored.manifest.engine.clone()).map_err(|e| {
                        WorkerError::Task {
                            task: t,
                            message: format!(
                                "invalid engine snapshot in the restored manifest: {e}"
                            ),
                        }
                    })?;
                if pipeline.repartition_step().is_some() && snapshot.upstream.is_none() {
                    return Err(WorkerError::Task {
                        task: t,
                        message: "the restored checkpoint was taken without the repartition this pipeline now has (a keyBy that is not sourcePartitioned), so its keyed state is laid out by source partition: restore it with sourcePartitioned: true, or start without state (restore from none)".to_owned(),
                    });
                }
                processor.restore_meta(snapshot);
                checkpointer.seed(&restored.manifest);
                restored_from.push(restored.from.clone());
            }
            tasks.push(Task {
                id: t,
                processor,
                checkpointer,
                offsets,
                outputs: Outputs::default(),
                counters: metrics.task(t),
                reported: Counters::default(),
                unreported_in: 0,
                producer: 0,
                last_report: None,
            });
        }
        consumer
            .assign(&assignment)
            .map_err(|source| WorkerError::Consumer {
                operation: "assign",
                source,
            })?;
        let group = consumer.group_metadata().ok_or(WorkerError::Consumer {
            operation: "group metadata",
            source: rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Fail),
        })?;

        // Producers: one transactional producer per task (its init fences
        // the task's previous owner), or one shared idempotent producer.
        let producers = match spec.guarantee {
            Guarantee::ExactlyOnce => {
                let producer_config = kafka::with_transaction_timeout(
                    &base_config,
                    spec.checkpoint.interval.as_millis(),
                );
                let mut producers = Vec::with_capacity(tasks.len());
                for (i, task) in tasks.iter_mut().enumerate() {
                    let transactional_id = config.transactional_id(task.id);
                    producers.push(OutputProducer::new(
                        &producer_config,
                        Some(transactional_id.as_str()),
                    )?);
                    task.producer = i;
                }
                producers
            }
            Guarantee::AtLeastOnce => vec![OutputProducer::new(&base_config, None)?],
        };

        let next_checkpoint_id = rt
            .block_on(next_checkpoint_id(store.as_ref(), &layout))
            .map_err(|source| WorkerError::Store {
                operation: "listing of checkpoint ids",
                source: Box::new(source),
            })?;
        let mut task_of_partition = vec![None; usize::try_from(partitions).unwrap_or(0)];
        for (i, task) in tasks.iter().enumerate() {
            if let Some(slot) = usize::try_from(task.id)
                .ok()
                .and_then(|p| task_of_partition.get_mut(p))
            {
                *slot = Some(i);
            }
        }

        let restore_duration = started.elapsed();
        metrics.restore_duration.set(restore_duration.as_secs_f64());
        {
            let mut s = lock(&status);
            s.restored_from = Some(describe_restore(&restored_from));
            s.restore_duration_ms = Some(duration_ms(restore_duration));
        }
        let high_watermarks = Arc::new(Mutex::new(HashMap::new()));
        let lag_stop = Arc::new(AtomicBool::new(false));
        let lag_thread = spawn_lag_monitor(
            &base_config,
            assignment_pairs(&topics, &owned),
            high_watermarks.clone(),
            lag_stop.clone(),
        );
        let destinations = Destinations {
            sink: spec.sink.topic.clone(),
            dead_letter: spec.dead_letter.as_ref().map(|t| t.topic.clone()),
            late_data: spec.late_data.as_ref().map(|t| t.topic.clone()),
            repartition: repartition_topic.map(|t| (t, partitions)),
            max_message_bytes: base_config
                .get("message.max.bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        };
        let purger = match &destinations.repartition {
            Some((topic, _)) => Some(Purger::start(
                &kafka::metadata_config(&base_config),
                topic.clone(),
            )?),
            None => None,
        };
        let checkpoint_interval = Duration::from_millis(
            u64::try_from(spec.checkpoint.interval.as_millis())
                .unwrap_or(10_000)
                .max(1),
        );
        tracing::info!(
            restored = %describe_restore(&restored_from),
            duration_ms = duration_ms(restore_duration),
            "restored"
        );
        let mut running = Self {
            config,
            rt,
            store,
            layout,
            consumer,
            group,
            topics,
            repartition_input,
            purger,
            partitions,
            tasks,
            task_of_partition,
            producers,
            destinations,
            metrics,
            status,
            commands,
            cancel,
            kill,
            next_checkpoint_id,
            last_checkpoint_id: None,
            checkpoint_interval,
            dirty: false,
            pending_reports: false,
            stopped: false,
            records_in: 0,
            records_out: 0,
            idle: Duration::ZERO,
            progress: ProgressWindow::new(Duration::from_secs(10)),
            high_watermarks,
            lag_stop,
            lag_thread,
        };
        running.publish(WorkerPhase::Running);
        Ok(running)
    }

    /// The processing loop.
    fn run(&mut self) -> Result<WorkerExit, WorkerError> {
        let mut next_checkpoint = Instant::now() + self.checkpoint_interval;
        let mut last_advance = Instant::now();
        let mut last_publish = Instant::now();
        loop {
            if self.kill.load(Ordering::SeqCst) {
                tracing::warn!("killed: stopping without checkpoint");
                return Ok(WorkerExit::Killed);
            }
            if self.cancel.is_cancelled() {
                if self.dirty {
                    self.checkpoint()?;
                }
                return Ok(WorkerExit::Stopped {
                    last_checkpoint: self.last_checkpoint_id,
                });
            }
            while let Ok(command) = self.commands.try_recv() {
                self.handle(command)?;
                next_checkpoint = Instant::now() + self.checkpoint_interval;
            }
            if self.stopped {
                std::thread::sleep(POLL_WAIT);
                self.idle += POLL_WAIT;
            } else {
                self.poll_batch()?;
                self.emit_all()?;
            }
            let now = Instant::now();
            if now.duration_since(last_advance) >= ADVANCE_EVERY && !self.stopped {
                last_advance = now;
                self.advance_time()?;
            }
            if now >= next_checkpoint && !self.stopped {
                // With a repartition, the checkpoint also carries the tasks'
                // watermark heartbeat, so it runs even when nothing changed.
                if self.dirty || self.destinations.repartition.is_some() {
                    self.checkpoint()?;
                }
                next_checkpoint = Instant::now() + self.checkpoint_interval;
            }
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                last_publish = now;
                let phase = if self.stopped {
                    WorkerPhase::Stopped
                } else {
                    WorkerPhase::Running
                };
                self.publish(phase);
            }
        }
    }

    /// Polls and processes up to [`MAX_BATCH`] records, waiting up to
    /// [`POLL_WAIT`] only when nothing is buffered.
    fn poll_batch(&mut self) -> Result<(), WorkerError> {
        let mut processed = 0;
        while processed < MAX_BATCH {
            let message = match self.consumer.poll(Duration::ZERO) {
                Some(m) => m,
                None if processed > 0 => break,
                None => {
                    let waiting = Instant::now();
                    let m = self.consumer.poll(POLL_WAIT);
                    self.idle += waiting.elapsed();
                    match m {
                        Some(m) => m,
                        None => break,
                    }
                }
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    // Broker and transport errors are retried by librdkafka.
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
            };
            let partition = message.partition();
            let Some(index) = usize::try_from(partition)
                .ok()
                .and_then(|p| self.task_of_partition.get(p).copied().flatten())
            else {
                continue;
            };
            let topic = message.topic();
            let Some(topic_index) = self.topics.iter().position(|t| t == topic) else {
                continue;
            };
            let task = &mut self.tasks[index];
            let record = SourceRecord {
                topic,
                partition,
                offset: message.offset(),
                key: message.key(),
                value: message.payload(),
                timestamp_ms: message.timestamp().to_millis(),
            };
            let result = if Some(topic_index) == self.repartition_input {
                let headers = message
                    .headers()
                    .into_iter()
                    .flat_map(|h| h.iter())
                    .map(|h| (h.key, h.value));
                dispatch_repartitioned(task, &record, repartition::classify(headers))
            } else {
                task.unreported_in += 1;
                task.processor.process(&record, &mut task.outputs)
            };
            result.map_err(|e| WorkerError::Task {
                task: task.id,
                message: e.to_string(),
            })?;
            task.offsets[topic_index] = message.offset() + 1;
            processed += 1;
        }
        if processed > 0 {
            self.dirty = true;
        }
        Ok(())
    }

    /// Gives every task the processing time (idle partitions, timers),
    /// sends what that produced, then broadcasts the source watermarks that
    /// changed to the repartition topic (after the records they cover).
    fn advance_time(&mut self) -> Result<(), WorkerError> {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        for task in &mut self.tasks {
            task.processor
                .advance_time(now_ms, &mut task.outputs)
                .map_err(|e| WorkerError::Task {
                    task: task.id,
                    message: e.to_string(),
                })?;
        }
        self.emit_all()?;
        // Under at-least-once reports are visible at once: send them when
        // they change, at most every second. Under exactly-once they become
        // visible when the transaction commits: the checkpoint sends them,
        // and one must come soon when they change.
        let at_least_once = self.config.spec.guarantee == Guarantee::AtLeastOnce;
        for task in &self.tasks {
            let report = task.processor.source_report();
            match task.last_report {
                Some((last, _)) if last == report => {}
                Some((_, at)) if at.elapsed() < REPORT_EVERY => {}
                _ if at_least_once => self.pending_reports = true,
                _ => self.dirty = true,
            }
        }
        if std::mem::take(&mut self.pending_reports) {
            self.broadcast_watermarks(false)?;
        }
        Ok(())
    }

    /// Sends the source watermark of every task to every partition of the
    /// repartition topic (after the records it covers, which were sent
    /// first): all of them, or only those that changed.
    fn broadcast_watermarks(&mut self, all: bool) -> Result<(), WorkerError> {
        let Some((topic, partitions)) = &self.destinations.repartition else {
            return Ok(());
        };
        for task in &mut self.tasks {
            let report = task.processor.source_report();
            let changed = task.last_report.is_none_or(|(last, _)| last != report);
            if !(all || changed) || (report.watermark.is_none() && !report.idle) {
                continue;
            }
            let producer = &self.producers[task.producer];
            for partition in 0..*partitions {
                producer.send_to_partition(
                    topic,
                    partition,
                    None,
                    &[],
                    None,
                    repartition::watermark_headers(task.id, report),
                )?;
            }
            task.last_report = Some((report, Instant::now()));
        }
        Ok(())
    }

    /// Sends every task's outputs to Kafka and updates the counters.
    fn emit_all(&mut self) -> Result<(), WorkerError> {
        for task in &mut self.tasks {
            let producer = &self.producers[task.producer];
            let emitted = emit(task, producer, &self.destinations)?;
            if emitted > 0 {
                self.dirty = true;
            }
            let c = task.outputs.counters;
            task.counters.records_in.inc_by(task.unreported_in);
            self.records_in += task.unreported_in;
            task.unreported_in = 0;
            let out = c.records_out.saturating_sub(task.reported.records_out);
            task.counters.records_out.inc_by(out);
            self.records_out += out;
            task.counters
                .records_late
                .inc_by(c.late.saturating_sub(task.reported.late));
            task.counters
                .records_dead_lettered
                .inc_by(c.dead_lettered.saturating_sub(task.reported.dead_lettered));
            task.counters
                .records_repartitioned
                .inc_by(c.repartitioned.saturating_sub(task.reported.repartitioned));
            task.reported = c;
        }
        Ok(())
    }

    /// Handles a control command.
    fn handle(&mut self, command: Command) -> Result<(), WorkerError> {
        match command {
            Command::Resume => {
                if self.stopped {
                    tracing::info!("resuming");
                }
                self.stopped = false;
                self.publish(WorkerPhase::Running);
                Ok(())
            }
            Command::Savepoint { id, stop } => {
                tracing::info!(%id, stop, "savepoint requested");
                self.set_savepoint(&id, SavepointState::InProgress, None);
                match self.savepoint(&id) {
                    Ok(()) => {
                        self.metrics.savepoints.inc();
                        self.set_savepoint(&id, SavepointState::Completed, None);
                        if stop {
                            self.stopped = true;
                        }
                        let phase = if self.stopped {
                            WorkerPhase::Stopped
                        } else {
                            WorkerPhase::Running
                        };
                        self.publish(phase);
                        tracing::info!(%id, stopped = self.stopped, "savepoint completed");
                        Ok(())
                    }
                    Err(SavepointFailure::Copy(e)) => {
                        // The checkpoint committed; only the copy failed: the
                        // worker keeps running and the request can be retried.
                        tracing::warn!(%id, error = %e, "savepoint failed");
                        self.set_savepoint(&id, SavepointState::Failed, Some(e.to_string()));
                        Ok(())
                    }
                    Err(SavepointFailure::Checkpoint(e)) => {
                        self.set_savepoint(&id, SavepointState::Failed, Some(e.to_string()));
                        Err(e)
                    }
                }
            }
        }
    }

    /// Takes a checkpoint and copies it into `savepoints/<id>/`.
    fn savepoint(&mut self, id: &str) -> Result<(), SavepointFailure> {
        let checkpoint_id = match self.last_checkpoint_id {
            Some(last) if !self.dirty => last,
            _ => self.checkpoint().map_err(SavepointFailure::Checkpoint)?,
        };
        let store = self.store.as_ref();
        let layout = &self.layout;
        let tasks: Vec<u32> = self.tasks.iter().map(|t| task_number(t.id)).collect();
        let total = task_number(self.partitions);
        self.rt
            .block_on(async {
                for task in tasks {
                    savepoint::copy_task(store, layout, checkpoint_id, task, id).await?;
                }
                savepoint::complete(store, layout, id, total).await
            })
            .map_err(|e| SavepointFailure::Copy(Box::new(e)))?;
        Ok(())
    }

    /// The checkpoint protocol; returns the checkpoint id. Any failure fails
    /// the worker, which restarts from the last committed checkpoint.
    fn checkpoint(&mut self) -> Result<u64, WorkerError> {
        let started = Instant::now();
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        // 1. The batch in hand is processed; make its output durable, with
        // the tasks' watermark reports after it.
        self.broadcast_watermarks(true)?;
        for producer in &self.producers {
            producer.flush()?;
        }
        // 2. Per task: write the cache back, checkpoint RocksDB, upload.
        let mut uploaded = 0u64;
        let mut size = 0u64;
        for task in &mut self.tasks {
            task.processor
                .state_mut()
                .flush_cache()
                .map_err(|source| WorkerError::State {
                    task: task.id,
                    source,
                })?;
            let request = CheckpointRequest {
                checkpoint_id: id,
                generation: self.config.generation,
                offsets: source_offsets(&self.topics, task),
                engine: serde_json::to_value(task.processor.snapshot_meta()).map_err(|e| {
                    WorkerError::Task {
                        task: task.id,
                        message: format!("cannot encode the engine snapshot: {e}"),
                    }
                })?,
            };
            let db = task.processor.state_mut().db();
            let (_, stats) = self
                .rt
                .block_on(task.checkpointer.checkpoint(db, request))?;
            uploaded += stats.bytes_uploaded;
            size += stats.state_bytes;
        }
        // 3. Fencing, then commit output and offsets, then the markers.
        if let Err(e) = self.rt.block_on(check_fence(
            self.store.as_ref(),
            &self.layout,
            self.config.generation,
        )) {
            for producer in self.producers.iter().filter(|p| p.is_transactional()) {
                if let Err(abort) = producer.abort_transaction() {
                    tracing::warn!(error = %abort, "abort after fencing failed");
                }
            }
            return Err(e.into());
        }
        let all = self.offsets_list(None)?;
        match self.config.spec.guarantee {
            Guarantee::ExactlyOnce => {
                for task in &self.tasks {
                    let offsets = self.offsets_list(Some(task))?;
                    self.producers[task.producer].commit_transaction(&offsets, &self.group)?;
                }
                // The transaction stored the offsets; committing them again
                // outside is harmless and keeps lag visible everywhere.
                if let Err(e) = self.consumer.commit(&all, CommitMode::Async) {
                    tracing::debug!(error = %e, "offset commit outside the transaction");
                }
            }
            Guarantee::AtLeastOnce => {
                if all.count() > 0 {
                    self.consumer
                        .commit(&all, CommitMode::Sync)
                        .map_err(|source| WorkerError::Consumer {
                            operation: "commit offsets",
                            source,
                        })?;
                }
            }
        }
        let store = self.store.as_ref();
        let layout = &self.layout;
        let retain = usize::try_from(self.config.spec.checkpoint.retain).unwrap_or(1);
        let task_ids: Vec<i32> = self.tasks.iter().map(|t| t.id).collect();
        self.rt.block_on(async {
            for &task in &task_ids {
                mark_committed(store, layout, id, task_number(task))
                    .await
                    .map_err(|source| WorkerError::Marker {
                        checkpoint_id: id,
                        task,
                        source: Box::new(source),
                    })?;
            }
            // 4. Retention: failures only leave garbage behind.
            for &task in &task_ids {
                if let Err(e) =
                    crate::retention::collect_garbage(store, layout, task_number(task), retain)
                        .await
                {
                    tracing::warn!(error = %e, "checkpoint retention");
                }
            }
            Ok::<_, WorkerError>(())
        })?;
        if let (Some(purger), Some(input)) = (&self.purger, self.repartition_input) {
            purger.purge(
                self.tasks
                    .iter()
                    .map(|t| (t.id, t.offsets[input]))
                    .collect(),
            );
        }
        let duration = started.elapsed();
        self.dirty = false;
        self.last_checkpoint_id = Some(id);
        self.metrics
            .checkpoint_duration
            .observe(duration.as_secs_f64());
        self.metrics
            .checkpoint_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        self.metrics.checkpoint_uploaded_bytes.inc_by(uploaded);
        lock(&self.status).last_checkpoint = Some(CheckpointStatus {
            id: id.to_string(),
            time: jiff::Timestamp::now().to_string(),
            duration_ms: duration_ms(duration),
            bytes_uploaded: uploaded,
            size_bytes: size,
        });
        tracing::debug!(checkpoint = id, ?duration, uploaded, "checkpoint committed");
        Ok(id)
    }

    /// The next offsets of one task's partitions, or of every owned one.
    fn offsets_list(&self, only: Option<&Task>) -> Result<TopicPartitionList, WorkerError> {
        let mut list = TopicPartitionList::new();
        let tasks: Vec<&Task> = match only {
            Some(task) => vec![task],
            None => self.tasks.iter().collect(),
        };
        for task in tasks {
            for (topic, offset) in self.topics.iter().zip(&task.offsets) {
                list.add_partition_offset(topic, task.id, Offset::Offset(*offset))
                    .map_err(|source| WorkerError::Consumer {
                        operation: "build offsets",
                        source,
                    })?;
            }
        }
        Ok(list)
    }

    fn set_savepoint(&self, id: &str, state: SavepointState, error: Option<String>) {
        let mut s = lock(&self.status);
        if let Some(sp) = s.savepoint.as_mut().filter(|sp| sp.id == id) {
            sp.state = state;
            sp.error = error;
            if matches!(state, SavepointState::Completed | SavepointState::Failed) {
                sp.finished_at = Some(jiff::Timestamp::now().to_string());
            }
        }
    }

    /// Refreshes the status report and the gauges.
    fn publish(&mut self, phase: WorkerPhase) {
        self.progress.push(Sample {
            at: Instant::now(),
            records_in: self.records_in,
            records_out: self.records_out,
            idle: self.idle,
        });
        let progress = self.progress.progress();
        self.metrics.busy_ratio.set(progress.busy_ratio);
        let high = lock(&self.high_watermarks).clone();
        let mut tasks = Vec::with_capacity(self.tasks.len());
        for task in &self.tasks {
            let watermark_ms = task.processor.watermark();
            if let Some(w) = watermark_ms {
                self.metrics.set_watermark(task.id, w);
            }
            let partitions = self
                .topics
                .iter()
                .zip(&task.offsets)
                .map(|(topic, &offset)| {
                    let high_watermark = high.get(&(topic.clone(), task.id)).copied();
                    let lag = high_watermark.map(|h| (h - offset).max(0));
                    self.metrics.set_partition(topic, task.id, offset, lag);
                    PartitionStatus {
                        topic: topic.clone(),
                        partition: task.id,
                        offset,
                        high_watermark,
                        lag,
                    }
                })
                .collect();
            tasks.push(TaskStatus {
                task: task.id,
                partitions,
                watermark_ms,
            });
        }
        let mut s = lock(&self.status);
        s.phase = phase;
        s.stopped = self.stopped;
        s.ready = true;
        s.tasks = tasks;
        s.rates = Rates {
            input_per_sec: progress.input_per_sec,
            output_per_sec: progress.output_per_sec,
        };
        s.busy_ratio = progress.busy_ratio;
        s.records_in = self.records_in;
        s.records_out = self.records_out;
    }

    /// Stops the lag monitor; the clients close when dropped.
    fn shutdown(&mut self) {
        self.lag_stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.lag_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why a savepoint failed.
enum SavepointFailure {
    /// Its checkpoint failed: the worker fails.
    Checkpoint(WorkerError),
    /// Copying the committed checkpoint failed.
    Copy(Box<SavepointError>),
}

/// Sends a task's collected outputs and clears them; returns how many
/// records were sent.
fn emit(
    task: &mut Task,
    producer: &OutputProducer,
    to: &Destinations,
) -> Result<usize, ProduceError> {
    let outputs = &mut task.outputs;
    outputs.divert_oversized(to.max_message_bytes);
    let mut sent = 0;
    for record in &outputs.records {
        producer.send(&to.sink, record.key.as_deref(), &record.value, None)?;
        sent += 1;
    }
    if let Some(topic) = &to.dead_letter {
        for dead in &outputs.dead_letters {
            let headers = kafka::dead_letter_headers(&dead.reason, dead.source.as_ref());
            producer.send(topic, None, &dead.value, Some(headers))?;
            sent += 1;
        }
    }
    if let Some(topic) = &to.late_data {
        for late in &outputs.late {
            producer.send(topic, late.key.as_deref(), &late.value, None)?;
            sent += 1;
        }
    }
    if let Some((topic, partitions)) = &to.repartition {
        for record in &outputs.repartitioned {
            // Records reach the cut straight from the source, so they have
            // a source position; without one the reader dead-letters them.
            let headers = match &record.source {
                Some(source) => repartition::data_headers(source, record.time),
                None => rdkafka::message::OwnedHeaders::new(),
            };
            producer.send_to_partition(
                topic,
                partition_for_key(&record.key, *partitions),
                Some(&record.key),
                &record.value,
                None,
                headers,
            )?;
            sent += 1;
        }
    }
    outputs.clear();
    Ok(sent)
}

/// Hands a record of the repartition topic to its task: a watermark report,
/// or a keyed record named by its source position (a record whose headers
/// cannot be read goes to the dead-letter topic).
fn dispatch_repartitioned(
    task: &mut Task,
    record: &SourceRecord<'_>,
    message: Result<RepartitionMessage<'_>, String>,
) -> Result<(), crate::task::TaskError> {
    match message {
        Ok(RepartitionMessage::Watermark { upstream, report }) => {
            if !task
                .processor
                .report_upstream(upstream, report, &mut task.outputs)?
            {
                tracing::warn!(
                    task = task.id,
                    upstream,
                    "watermark of an unknown task on the repartition topic ignored"
                );
            }
            Ok(())
        }
        Ok(RepartitionMessage::Data {
            source: (topic, partition, offset),
            time,
        }) => {
            let origin = SourceRecord {
                topic,
                partition,
                offset,
                timestamp_ms: time,
                ..*record
            };
            task.processor
                .process_repartitioned(&origin, &mut task.outputs)
        }
        Err(reason) => {
            task.outputs.counters.dead_lettered += 1;
            task.outputs.dead_letters.push(DeadLetter {
                value: record.value.unwrap_or_default().to_vec(),
                reason,
                source: Some(SourcePosition::of(record)),
            });
            Ok(())
        }
    }
}

/// The next offsets of a task, for its manifest.
fn source_offsets(topics: &[String], task: &Task) -> Vec<SourceOffset> {
    topics
        .iter()
        .zip(&task.offsets)
        .map(|(topic, &offset)| SourceOffset {
            topic: topic.clone(),
            partition: task.id,
            offset,
        })
        .collect()
}

fn assignment_pairs(topics: &[String], tasks: &[i32]) -> Vec<(String, i32)> {
    tasks
        .iter()
        .flat_map(|&t| topics.iter().map(move |topic| (topic.clone(), t)))
        .collect()
}

/// Fetches the high watermarks of the owned partitions every [`LAG_EVERY`]
/// on a thread of its own, with a client of its own.
fn spawn_lag_monitor(
    base: &rdkafka::ClientConfig,
    partitions: Vec<(String, i32)>,
    high_watermarks: Arc<Mutex<HashMap<(String, i32), i64>>>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let client: BaseConsumer = match BaseConsumer::from_config(&kafka::metadata_config(base)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the lag monitor: lag is not reported");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("weir-lag".to_owned())
        .spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    for (topic, partition) in &partitions {
                        match client.fetch_watermarks(topic, *partition, LAG_EVERY) {
                            Ok((_, high)) => {
                                lock(&high_watermarks).insert((topic.clone(), *partition), high);
                            }
                            Err(e) => tracing::debug!(%topic, partition, error = %e, "watermarks"),
                        }
                    }
                    next = Instant::now() + LAG_EVERY;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the lag monitor: lag is not reported");
            None
        }
    }
}

/// The state options from the spec (block cache and write buffer sizes).
fn state_options(spec: &weir_crds::StreamingJobSpec) -> StateOptions {
    let bytes =
        |q: Option<u64>, default: usize| q.and_then(|b| usize::try_from(b).ok()).unwrap_or(default);
    let block_cache = spec
        .state
        .block_cache_size
        .as_ref()
        .and_then(|q| weir_crds::quantity::to_bytes(q).ok());
    let write_buffer = spec
        .state
        .write_buffer_size
        .as_ref()
        .and_then(|q| weir_crds::quantity::to_bytes(q).ok());
    StateOptions::new(bytes(block_cache, 128 << 20), bytes(write_buffer, 16 << 20))
}

fn describe_restore(from: &[RestoredFrom]) -> String {
    if let Some(RestoredFrom::Savepoint(id)) = from
        .iter()
        .find(|f| matches!(f, RestoredFrom::Savepoint(_)))
    {
        return format!("savepoint:{id}");
    }
    from.iter()
        .filter_map(|f| match f {
            RestoredFrom::Checkpoint(id) => Some(*id),
            RestoredFrom::Savepoint(_) => None,
        })
        .max()
        .map_or_else(|| "none".to_owned(), |id| format!("checkpoint:{id}"))
}

fn remove_dir(dir: &LocalPath) -> Result<(), WorkerError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WorkerError::StateDir {
            dir: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Task numbers are partition numbers, never negative.
fn task_number(task: i32) -> u32 {
    u32::try_from(task).unwrap_or(0)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_descriptions() {
        assert_eq!(describe_restore(&[]), "none");
        assert_eq!(
            describe_restore(&[RestoredFrom::Checkpoint(3), RestoredFrom::Checkpoint(7)]),
            "checkpoint:7"
        );
        assert_eq!(
            describe_restore(&[RestoredFrom::Savepoint("sp".into())]),
            "savepoint:sp"
        );
    }

    #[test]
    fn assignment_pairs_cover_every_topic() {
        assert_eq!(
            assignment_pairs(&["a".into(), "b".into()], &[1, 4]),
            vec![
                ("a".to_owned(), 1),
                ("b".to_owned(), 1),
                ("a".to_owned(), 4),
                ("b".to_owned(), 4)
            ]
        );
    }
}

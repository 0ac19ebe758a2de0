//! Local mode, `weir run FILE`: a StreamingJob run on one machine with the
//! operator's own controller core — the operation state machine and the
//! autoscaler — driving in-process workers (each its own state directory
//! and control port), checkpoints in a local directory, Kafka embedded
//! (librdkafka's mock cluster) unless `--kafka` names a broker, and a feed
//! of generated events at a rate that changes over time. It shows the job
//! live, stops it with a savepoint at the end, and compares what the job
//! wrote with what the events must produce ([`model`]).
//!
//! The samples name cluster addresses and cloud buckets; local mode runs
//! them as they are by replacing the Kafka address, the storage URL and
//! the Secrets with the local ones, and says so.

pub mod controller;
pub mod feed;
pub mod generate;
pub mod generator;
mod join_feed;
pub mod kafka;
pub mod model;
pub mod profile;
pub mod view;
pub mod workers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::RngCore;
use weir_crds::StreamingJob;
use weir_crds::job::StreamingJobSpec;

use crate::control::HttpWorkerControl;
use crate::disposal::JobStorage;
use crate::lag;
use controller::{LocalController, Reading};
use feed::{Events, Feed, Produced};
use generator::{EventShape, EventSource, GeneratedEvent};
use kafka::LocalKafka;
use model::{Comparison, Model};
use profile::RateProfile;
use view::{Frame, LiveView, Summary};

/// The partitions of an embedded source topic when the job sets no
/// maximum parallelism.
const DEFAULT_PARTITIONS: i32 = 8;
/// The most partitions local mode gives an embedded topic.
const MAX_PARTITIONS: i32 = 16;
/// How often the controller reconciles and the view redraws.
const TICK: Duration = Duration::from_secs(1);
/// How often, between two ticks, the controller steps an operation in
/// flight, so that no stage of a rescale (savepoint, stop, start) waits a
/// whole tick to be seen done.
const OPERATION_TICK: Duration = Duration::from_millis(200);
/// The longest wait for the job to catch up after the feed stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Autoscaler settings local mode shortens when the file leaves them to
/// their defaults, so that a run of two minutes shows a scale-up and a
/// scale-down: (field, local value).
const LOCAL_AUTOSCALER: [(&str, &str); 3] = [
    ("metricsWindow", "10s"),
    ("scaleUpCooldown", "10s"),
    ("scaleDownStabilizationWindow", "20s"),
];

/// What `weir run` is asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The StreamingJob manifest.
    pub file: PathBuf,
    /// A Kafka broker instead of the embedded one.
    pub kafka: Option<String>,
    /// A checkpoint storage URL instead of `DIR/storage`.
    pub storage: Option<String>,
    /// The local directory (checkpoints, worker state).
    pub dir: PathBuf,
    /// The input rate over time.
    pub profile: RateProfile,
    /// How long to feed events (default: the profile's length).
    pub duration: Option<Duration>,
    /// JSON lines to feed instead of generated events.
    pub input: Option<PathBuf>,
    /// Events per second each worker may process (a pod's CPU limit).
    pub worker_capacity: u64,
    /// Distinct keys of the generated events.
    pub keys: u32,
    /// Seed of the generated events.
    pub seed: u64,
    /// Kill worker 0 this long after the start, once, as a crash would
    /// (it restarts and restores its last checkpoint).
    pub kill_worker_after: Option<Duration>,
    /// Show the live view on standard error.
    pub live: bool,
}

/// Reads the job and applies local mode's settings; returns it with the
/// notes to show.
fn load_job(options: &RunOptions) -> anyhow::Result<(StreamingJob, Vec<String>)> {
    let text = std::fs::read_to_string(&options.file)
        .with_context(|| format!("cannot read {}", options.file.display()))?;
    let mut job = weir_worker::config::parse_job(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", options.file.display()))?;
    let mut notes = Vec::new();
    let raw: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
    let set_in_file = |field: &str| {
        raw.get("spec")
            .and_then(|s| s.get("autoscaler"))
            .and_then(|a| a.get(field))
            .is_some()
    };
    if let Some(autoscaler) = &mut job.spec.autoscaler {
        let mut value = serde_json::to_value(&*autoscaler)?;
        for (field, local) in LOCAL_AUTOSCALER {
            if !set_in_file(field) {
                value[field] = serde_json::Value::from(local);
                notes.push(format!(
                    "autoscaler.{field}: {local} (not set in the file; shortened for a local run)"
                ));
            }
        }
        *autoscaler = serde_json::from_value(value)?;
    }
    Ok((job, notes))
}

/// Points `spec` at the local Kafka and storage, without Secrets.
fn localize(spec: &mut StreamingJobSpec, bootstrap: &str, storage: &str, notes: &mut Vec<String>) {
    if spec.kafka.bootstrap_servers != bootstrap {
        notes.push(format!(
            "kafka.bootstrapServers: {bootstrap} (the file says {})",
            spec.kafka.bootstrap_servers
        ));
        spec.kafka.bootstrap_servers = bootstrap.to_owned();
    }
    if spec.kafka.credentials_secret.take().is_some() {
        notes.push("kafka.credentialsSecret: none (no Secrets locally)".to_owned());
    }
    if spec.checkpoint.storage != storage {
        notes.push(format!(
            "checkpoint.storage: {storage} (the file says {})",
            spec.checkpoint.storage
        ));
        spec.checkpoint.storage = storage.to_owned();
    }
    if spec.checkpoint.credentials_secret.take().is_some() {
        notes.push("checkpoint.credentialsSecret: none (no Secrets locally)".to_owned());
    }
}

/// The partitions of the embedded source topics: one per worker the
/// autoscaler may run.
fn embedded_partitions(spec: &StreamingJobSpec) -> i32 {
    let wanted = spec
        .autoscaler
        .as_ref()
        .and_then(|a| a.max_parallelism)
        .unwrap_or(DEFAULT_PARTITIONS)
        .max(spec.parallelism);
    wanted.clamp(1, MAX_PARTITIONS)
}

/// The events of `--input`: one JSON object per line, keyed by the field
/// the shape keys by.
fn read_lines(path: &Path, shape: &EventShape) -> anyhow::Result<Vec<GeneratedEvent>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), number + 1))?;
        let key = shape
            .key_field()
            .and_then(|field| value.get(field))
            .map(|k| match k {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        events.push(GeneratedEvent {
            key,
            value: line.as_bytes().to_vec(),
        });
    }
    Ok(events)
}

/// Reads positions, rates and lag off the workers and Kafka.
fn read(
    controller: &LocalController,
    kafka: &LocalKafka,
    topic: &str,
    partitions: i32,
    previous: &Reading,
) -> anyhow::Result<(Reading, Vec<(i64, i64)>)> {
    let watermarks = kafka.watermarks(topic, partitions)?;
    let mut reading = Reading {
        positions: previous.positions.clone(),
        join_positions: previous.join_positions.clone(),
        ..Reading::default()
    };
    let statuses: Vec<_> = controller
        .workers
        .handles()
        .iter()
        .map(|handle| handle.status())
        .collect();
    let join_topic = controller.job.spec.join().map(|join| join.topic.clone());
    for status in &statuses {
        reading.records_in += status.records_in;
        reading.records_out += status.records_out;
        for p in status.tasks.iter().flat_map(|t| &t.partitions) {
            if p.topic == topic {
                reading.positions.insert(p.partition, p.offset);
            } else if join_topic.as_ref() == Some(&p.topic) {
                reading.join_positions.insert(p.partition, p.offset);
            }
        }
    }
    if !statuses.is_empty() {
        reading.busy_ratio =
            Some(statuses.iter().map(|s| s.busy_ratio).sum::<f64>() / statuses.len() as f64);
    }
    reading.high_watermarks = watermarks.iter().map(|(_, high)| high).sum();
    reading.lag = unread(&watermarks, &reading.positions);
    // Records between the stages of a repartitioned job, as the operator
    // counts them.
    reading.in_transit = lag::backlog(
        statuses
            .iter()
            .flat_map(|s| &s.tasks)
            .flat_map(|t| &t.partitions)
            .map(|p| (p.topic.as_str(), p.offset, p.high_watermark)),
        &controller.job.spec.input_topics(),
        lag::control_tail(controller.job.spec.guarantee, partitions),
    );
    // A join's topic not read yet is backlog too.
    if let Some(join_topic) = &join_topic {
        let marks = kafka.watermarks(join_topic, partitions)?;
        reading.in_transit += unread(&marks, &reading.join_positions);
    }
    Ok((reading, watermarks))
}

/// Records of a topic's partitions (their low and high watermarks) past
/// the positions read (none read: from 0).
fn unread(watermarks: &[(i64, i64)], positions: &BTreeMap<i32, i64>) -> i64 {
    watermarks
        .iter()
        .enumerate()
        .map(|(partition, (_, high))| {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            (high - positions.get(&partition).copied().unwrap_or(0)).max(0)
        })
        .sum()
}

/// Runs the job of `options` to the end; the summary says what happened.
pub async fn run(options: RunOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (mut job, mut notes) = load_job(&options)?;
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    job.metadata.namespace = Some(namespace.clone());
    let kafka = match &options.kafka {
        Some(bootstrap) => LocalKafka::connect(bootstrap)?,
        None => LocalKafka::embedded()?,
    };
    let spec = &job.spec;
    let topic = spec
        .source
        .topics
        .first()
        .cloned()
        .context("the job has no source topic")?;
    let partitions = if kafka.is_embedded() {
        let partitions = embedded_partitions(spec);
        let mut topics = spec.input_topics();
        topics.push(spec.sink.topic.clone());
        topics.extend(spec.dead_letter.as_ref().map(|t| t.topic.clone()));
        topics.extend(spec.late_data.as_ref().map(|t| t.topic.clone()));
        // The mock cluster does not create topics through the admin API:
        // the repartition topic the workers would create is made here.
        let pipeline = weir_worker::engine::pipeline::Pipeline::compile(spec)
            .map_err(|e| anyhow::anyhow!("the pipeline: {e}"))?;
        if let Some(step) = pipeline.repartition_step() {
            topics.push(weir_worker::kafka::repartition::topic_name(
                &namespace,
                &name,
                &pipeline.steps()[step].name,
            ));
        }
        for t in &topics {
            kafka.create_topic(t, partitions)?;
        }
        notes.push(format!(
            "Kafka: embedded at {}, topics {} with {partitions} partitions",
            kafka.bootstrap(),
            topics.join(", ")
        ));
        let planned = options
            .profile
            .events_until(options.duration.unwrap_or_else(|| options.profile.length()));
        if let Some(warning) = kafka::retention_risk(planned, partitions) {
            notes.push(warning);
        }
        partitions
    } else {
        kafka.partitions(&topic)?
    };
    anyhow::ensure!(partitions > 0, "source topic {topic} has no partitions");
    let dir = std::path::absolute(&options.dir)
        .with_context(|| format!("cannot resolve {}", options.dir.display()))?;
    let storage_url = match &options.storage {
        Some(url) => url.clone(),
        None => {
            let local = dir.join("storage");
            if kafka.is_embedded() {
                // A new embedded Kafka has none of the offsets an earlier
                // run's checkpoints point at: start afresh.
                let _ = std::fs::remove_dir_all(local.join(&namespace).join(&name));
            }
            std::fs::create_dir_all(&local)
                .with_context(|| format!("cannot create {}", local.display()))?;
            url::Url::from_directory_path(&local)
                .map_err(|()| anyhow::anyhow!("{} is not an absolute path", local.display()))?
                .to_string()
        }
    };
    localize(&mut job.spec, kafka.bootstrap(), &storage_url, &mut notes);
    job.spec.parallelism = job.spec.parallelism.clamp(1, partitions);
    let job_dir = dir.join("jobs").join(&namespace).join(&name);
    if kafka.is_embedded() {
        let _ = std::fs::remove_dir_all(&job_dir);
    }
    std::fs::create_dir_all(&job_dir)
        .with_context(|| format!("cannot create {}", job_dir.display()))?;
    let resumed = RunState::load(&job_dir)?;
    if let Some(state) = &resumed {
        let savepoint = state
            .status
            .last_savepoint
            .as_ref()
            .map_or("-", |s| s.id.as_str());
        notes.push(format!(
            "resuming the job an earlier run stopped with savepoint {savepoint} (remove {} to start afresh)",
            job_dir.display()
        ));
    }
    for note in &notes {
        eprintln!("local mode: {note}");
    }

    let shape = EventShape::infer(&job.spec, options.keys);
    let events = match &options.input {
        Some(path) => Events::Lines(read_lines(path, &shape)?.into_iter()),
        None => Events::Generated(Box::new(EventSource::new(shape, options.seed))),
    };
    let model_path = job_dir.join("model");
    if resumed.is_none() {
        let _ = std::fs::remove_dir_all(&model_path);
    }
    let (model_tx, model_rx) = mpsc::channel::<Produced>();
    let model_spec = job.spec.clone();
    let model_resumed = resumed.as_ref().map(|state| state.model.clone());
    let model_thread = std::thread::spawn(move || -> Result<Model, String> {
        let mut model = Model::new(&model_spec, partitions, &model_path, model_resumed)
            .map_err(|e| e.to_string())?;
        for event in model_rx {
            model
                .feed(
                    &event.topic,
                    event.partition,
                    event.key.as_deref(),
                    &event.value,
                    event.timestamp_ms,
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(model)
    });

    let mut token = [0u8; 16];
    rand::rng().fill_bytes(&mut token);
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let workers = workers::LocalWorkers::new(
        &name,
        &namespace,
        job.spec.clone(),
        job_dir.join("workers"),
        token,
        Some(options.worker_capacity),
    );
    let storage = JobStorage::open(&storage_url, &namespace, &name, &BTreeMap::new())?;
    let control = HttpWorkerControl::new().context("cannot create the control client")?;
    let mut controller = LocalController::new(job, workers, Box::new(control), storage, partitions);
    if let Some(state) = resumed {
        // The job stands stopped, as a StatefulSet at zero replicas: the
        // first tick resumes it from its savepoint through the machine.
        let generation = state.status.worker_generation.unwrap_or(1);
        controller.job.status = Some(state.status);
        controller.workers.assume(crate::builders::Rollout {
            replicas: 0,
            parallelism: controller.job.spec.parallelism,
            generation,
            restore_from: "latest".to_owned(),
        });
    }
    controller.tick().await?;
    let join_feed = join_feed::JoinFeed::start(
        &mut controller,
        &kafka,
        (partitions, options.keys, options.seed),
        &options.profile,
        model_tx.clone(),
    )
    .await?;
    let feed = Feed::start(
        kafka.bootstrap(),
        &topic,
        partitions,
        events,
        options.profile.clone(),
        None,
        model_tx,
    )
    .map_err(anyhow::Error::msg)?;

    let duration = options.duration.unwrap_or_else(|| options.profile.length());
    let mut view = LiveView::new(options.live);
    let mut kill_at = options.kill_worker_after;
    let mut reading = Reading::default();
    let mut failure = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last = (Instant::now(), 0i64, 0u64);
    let checkpoint_interval = controller.job.spec.checkpoint.interval.as_std();
    // Feeding, then draining.
    loop {
        // A tick; an operation in flight is stepped every OPERATION_TICK
        // meanwhile. Ctrl-C is heard while waiting, never in a step.
        let next_tick = Instant::now() + TICK;
        let mut interrupted = false;
        loop {
            let left = next_tick.saturating_duration_since(Instant::now());
            let wait = if operation_in_flight(&controller) {
                left.min(OPERATION_TICK)
            } else {
                left
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut ctrl_c => {
                    interrupted = true;
                    break;
                }
            }
            if Instant::now() >= next_tick {
                break;
            }
            if let Err(e) = controller.tick().await {
                failure = Some(format!("{e:#}"));
                break;
            }
        }
        if interrupted {
            eprintln!("\nCtrl-C: stopping with a savepoint");
            break;
        }
        if failure.is_some() {
            break;
        }
        if let Err(e) = controller.tick().await {
            failure = Some(format!("{e:#}"));
            break;
        }
        let idle = !operation_in_flight(&controller);
        if let Some(at) = kill_at.filter(|at| started.elapsed() >= *at && idle) {
            kill_at = None;
            controller.workers.crash_and_restart(0).await?;
            controller.happen(
                true,
                "WorkerKilled",
                format!(
                    "worker 0 killed {:.0}s in (--kill-worker-after) and restarted from its last checkpoint",
                    at.as_secs_f64()
                ),
            );
        }
        let (next, watermarks) = read(&controller, &kafka, &topic, partitions, &reading)?;
        if let Err(message) = kafka.check_retention(&topic, &next.positions, &watermarks) {
            failure = Some(message);
            break;
        }
        controller.autoscale(&next);
        let seconds = last.0.elapsed().as_secs_f64().max(1e-3);
        let frame = Frame {
            elapsed_secs: started.elapsed().as_secs_f64(),
            total_secs: Some(duration.as_secs_f64()),
            input_rate: (next.high_watermarks - last.1).max(0) as f64 / seconds,
            target_rate: options.profile.rate_at(started.elapsed()),
            output_rate: next.records_out.saturating_sub(last.2) as f64 / seconds,
            lag: next.lag,
            parallelism: controller.workers.deployed().map_or(0, |d| d.replicas),
            phase: phase(&controller),
            last_savepoint: last_savepoint(&controller),
        };
        last = (Instant::now(), next.high_watermarks, next.records_out);
        view.draw(&frame, &controller.happenings);
        reading = next;
        if started.elapsed() >= duration || feed.ended() {
            break;
        }
    }
    let events_in = feed.stop().map_err(anyhow::Error::msg)? + join_feed.stop()?;
    // Let the job catch up and fire what the last events closed.
    if failure.is_none() {
        let drain_started = Instant::now();
        let caught_up_at = loop {
            tokio::time::sleep(TICK).await;
            controller.tick().await?;
            let (next, _) = read(&controller, &kafka, &topic, partitions, &reading)?;
            reading = next;
            // A job scaled to zero must wake to work off what is left.
            controller.autoscale(&reading);
            view.draw(
                &settling_frame(&controller, started, reading.lag),
                &controller.happenings,
            );
            if reading.lag == 0 && reading.in_transit == 0 {
                break Instant::now();
            }
            if drain_started.elapsed() > DRAIN_TIMEOUT {
                failure = Some(format!(
                    "the job did not catch up within {}s after the input ended: {} records unread ({})",
                    DRAIN_TIMEOUT.as_secs(),
                    reading.lag + reading.in_transit,
                    phase(&controller)
                ));
                break Instant::now();
            }
        };
        // Two checkpoints: the watermarks that close the last windows
        // travel through the repartition topic with a checkpoint.
        while failure.is_none() && caught_up_at.elapsed() < checkpoint_interval * 2 + TICK {
            tokio::time::sleep(TICK).await;
            controller.tick().await?;
            view.draw(
                &settling_frame(&controller, started, 0),
                &controller.happenings,
            );
        }
    }
    // Stop with a savepoint, through the machine, as a suspend.
    controller.job.spec.suspend = true;
    let stop_started = Instant::now();
    loop {
        controller.tick().await?;
        if !operation_in_flight(&controller) && controller.workers.live() == 0 {
            break;
        }
        view.draw(
            &settling_frame(&controller, started, 0),
            &controller.happenings,
        );
        if stop_started.elapsed() > DRAIN_TIMEOUT {
            let warning = controller
                .happenings
                .iter()
                .rev()
                .find(|h| h.warning)
                .map_or(String::new(), |h| {
                    format!("; last warning {}: {}", h.reason, h.note)
                });
            failure.get_or_insert(format!(
                "the stop with a savepoint did not complete within {}s (stage {}, {} workers running{warning})",
                DRAIN_TIMEOUT.as_secs(),
                phase(&controller),
                controller.workers.live()
            ));
            break;
        }
        tokio::time::sleep(OPERATION_TICK).await;
    }
    view.draw(
        &settling_frame(&controller, started, 0),
        &controller.happenings,
    );
    view.finish();
    let mut model = model_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the model panicked"))?
        .map_err(anyhow::Error::msg)?;
    RunState {
        status: controller.job.status.clone().unwrap_or_default(),
        model: model.save()?,
    }
    .store(&job_dir)?;
    let written = kafka.read_committed(&controller.job.spec.sink.topic)?;
    let comparison = Comparison::of(model.expected(), &written);
    let status = controller.job.status.clone().unwrap_or_default();
    Ok(Summary {
        job: format!("{namespace}/{name}"),
        duration_secs: started.elapsed().as_secs_f64(),
        events_in,
        records_out: comparison.written,
        checkpoints: controller.checkpoints_taken,
        rescales: controller.rescales.clone(),
        final_savepoint: status
            .last_savepoint
            .filter(|s| s.reason == "suspend")
            .map(|s| s.id),
        comparison,
        dead_letters: model.dead_letters(),
        late: model.late(),
        failure,
        events: controller.happenings.clone(),
    })
}

/// What a run leaves for the next one against the same broker: the job's
/// status (its generation and the savepoint it stopped with) and the model.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunState {
    status: weir_crds::status::StreamingJobStatus,
    model: model::ModelSnapshot,
}

impl RunState {
    const FILE: &str = "run.json";

    /// The state an earlier run left in `dir`, if any.
    fn load(dir: &Path) -> anyhow::Result<Option<RunState>> {
        let path = dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not the state of a run", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn store(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(Self::FILE);
        std::fs::write(&path, serde_json::to_vec(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A frame of the view after the input ended (catching up, stopping):
/// no rates, the lag left, the workers, the phase and the last savepoint.
fn settling_frame(controller: &LocalController, started: Instant, lag: i64) -> Frame {
    Frame {
        elapsed_secs: started.elapsed().as_secs_f64(),
        lag,
        parallelism: controller.workers.deployed().map_or(0, |d| d.replicas),
        phase: phase(controller),
        last_savepoint: last_savepoint(controller),
        ..Frame::default()
    }
}

/// The id of the job's last completed savepoint, if any.
fn last_savepoint(controller: &LocalController) -> Option<String> {
    let status = controller.job.status.as_ref()?;
    status.last_savepoint.as_ref().map(|s| s.id.clone())
}

/// The phase to show: the operation's stage while one runs.
fn phase(controller: &LocalController) -> String {
    let status = controller.job.status.as_ref();
    match status.and_then(|s| s.operation.as_ref()) {
        Some(op) => format!("{:?}", op.stage),
        None if controller.workers.live() == 0 => "Stopped".to_owned(),
        None => "Running".to_owned(),
    }
}

/// Whether an operation (savepoint, rescale, upgrade, suspend) is in
/// flight.
fn operation_in_flight(controller: &LocalController) -> bool {
    controller
        .job
        .status
        .as_ref()
        .is_some_and(|s| s.operation.is_some())
}

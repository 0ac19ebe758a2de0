//! The checkpoint protocol under crashes at every step, with the real
//! coordinator, the real task processor and RocksDB, a fake broker with
//! Kafka's exactly-once semantics and an object store that fails on demand.
//!
//! Each scenario processes keyed tumbling-window counts with some workers,
//! crashes one exactly at a protocol step (the injected failure, after which
//! every worker of that run is dropped, as a pod would die), restarts at the
//! same or another parallelism, finishes the input and compares the
//! committed output with a plain model: every (key, window) result exactly
//! once, with the model's count. Nothing lost, nothing counted twice.

use std::collections::BTreeMap;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;

use crate::fakes::{Broker, FakeOutput, Faults, FaultyStore};
use object_store::ObjectStore;
use object_store::path::Path;
use weir_worker::checkpoint::coordinator::{
    CheckpointCoordinator, CoordinatorError, PipelineRecord, RestoreTarget, TaskCheckpointInput,
};
use weir_worker::checkpoint::fence::write_fence;
use weir_worker::checkpoint::layout::JobLayout;
use weir_worker::checkpoint::manifest::SourceOffset;
use weir_worker::checkpoint::restore::{RestoreSource, RestoredFrom};
use weir_worker::engine::pipeline::Pipeline;
use weir_worker::engine::record::{Outputs, SourceRecord};
use weir_worker::engine::task::{TaskProcessor, TaskSnapshot};
use weir_worker::state::{StateOptions, TaskState};

const TOPIC: &str = "in";
const PARTITIONS: u32 = 4;
const BASE_TS: i64 = 1_700_000_000_000;
const END_KEY: &str = "~end";

const JOB: &str = r#"
kafka: {bootstrapServers: "k:9092"}
source:
  topics: [in]
  eventTime: {field: ts}
  watermark: {maxOutOfOrderness: 0s, idleTimeout: 0s}
sink: {topic: out}
checkpoint: {storage: "memory://"}
pipeline:
  - {keyBy: {expr: record.user, sourcePartitioned: true}}
  - {window: {type: tumbling, size: 10s}}
  - {aggregate: {fields: [{name: n, function: count}]}}
"#;

/// The input, per partition: keyed JSON events in event-time order, each
/// user on one partition, then an end marker far ahead.
fn input(events: usize, users: u32, seed: u64) -> Vec<Vec<Vec<u8>>> {
    let mut x = seed | 1;
    let mut partitions = vec![Vec::new(); PARTITIONS as usize];
    for i in 0..events {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = (x % u64::from(users)) as u32;
        let ts = BASE_TS + i as i64 * 700;
        partitions[(user % PARTITIONS) as usize]
            .push(format!(r#"{{"user":"u{user}","ts":{ts}}}"#).into_bytes());
    }
    for p in &mut partitions {
        let ts = BASE_TS + 100_000_000;
        p.push(format!(r#"{{"user":"{END_KEY}","ts":{ts}}}"#).into_bytes());
    }
    partitions
}

type Results = BTreeMap<(String, i64), u64>;

/// The plain model: events per (user, 10 s window).
fn model(input: &[Vec<Vec<u8>>]) -> Results {
    let mut out = Results::new();
    for record in input.iter().flatten() {
        let v: serde_json::Value = serde_json::from_slice(record).unwrap();
        let user = v["user"].as_str().unwrap().to_owned();
        if user == END_KEY {
            continue;
        }
        let ts = v["ts"].as_i64().unwrap();
        *out.entry((user, ts - ts.rem_euclid(10_000))).or_default() += 1;
    }
    out
}

/// The committed results; fails on a (key, window) committed twice.
fn committed(broker: &Broker) -> Results {
    let mut out = Results::new();
    for record in broker.log() {
        let v: serde_json::Value = serde_json::from_slice(&record).unwrap();
        let key = (
            v["key"].as_str().unwrap().to_owned(),
            v["window_start"].as_i64().unwrap(),
        );
        let n = v["n"].as_u64().unwrap();
        if let Some(before) = out.insert(key.clone(), n) {
            panic!("{key:?} committed twice ({before}, then {n})");
        }
    }
    out
}

/// A job: the input, the broker, the store and the failures to inject.
struct Job {
    input: Vec<Vec<Vec<u8>>>,
    broker: Broker,
    faults: Faults,
    store: Arc<FaultyStore>,
    layout: JobLayout,
    dir: tempfile::TempDir,
    exactly_once: bool,
}

impl Job {
    fn new(exactly_once: bool) -> Job {
        let faults = Faults::default();
        Job {
            input: input(3000, 60, 7),
            broker: Broker::default(),
            store: Arc::new(FaultyStore::new(faults.clone())),
            faults,
            layout: JobLayout::new(&Path::from("ckpt"), "ns", "job"),
            dir: tempfile::tempdir().unwrap(),
            exactly_once,
        }
    }

    /// Starts the workers of one run; each has its own state directory
    /// under `run` (a new pod's empty disk, or the same pod's old one).
    async fn start(
        &self,
        parallelism: u32,
        generation: u64,
        source: &RestoreSource,
        run: &str,
    ) -> Result<Vec<Worker>, CoordinatorError> {
        let mut workers = Vec::new();
        for ordinal in 0..parallelism {
            workers.push(Worker::start(self, ordinal, parallelism, generation, source, run).await?);
        }
        Ok(workers)
    }

    /// Processes the first `fraction` (in 1/3s) of every partition.
    fn process(&self, workers: &mut [Worker], thirds: usize) {
        for w in workers {
            w.process(&self.input, thirds);
        }
    }

    /// The expected results.
    fn model(&self) -> Results {
        model(&self.input)
    }

    async fn objects(&self, under: &str) -> usize {
        use futures::TryStreamExt;
        let prefix = self.layout.root().clone().join(under);
        let list: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.unwrap();
        list.len()
    }
}

/// One worker: its tasks, with real processors and RocksDB.
struct Worker {
    coordinator: CheckpointCoordinator,
    output: FakeOutput,
    tasks: Vec<Task>,
    record: PipelineRecord,
    restored: Vec<Option<RestoredFrom>>,
    /// The id of the last checkpoint this worker committed.
    last_checkpoint: u64,
}

struct Task {
    id: u32,
    processor: TaskProcessor,
    offset: i64,
}

impl Worker {
    async fn start(
        job: &Job,
        ordinal: u32,
        parallelism: u32,
        generation: u64,
        source: &RestoreSource,
        run: &str,
    ) -> Result<Worker, CoordinatorError> {
        let spec = weir_worker::config::parse_job(&format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: job}}\nspec:{}",
            JOB.replace('\n', "\n  ")
        ))
        .unwrap()
        .spec;
        let pipeline = Arc::new(Pipeline::compile(&spec).unwrap());
        let store: Arc<dyn ObjectStore> = job.store.clone();
        let mut coordinator =
            CheckpointCoordinator::new(store, job.layout.clone(), generation, source.clone(), 2);
        let mut output = job.broker.output(job.exactly_once, job.faults.clone());
        let state_dir = job.dir.path().join(run).join(format!("worker-{ordinal}"));
        let targets: Vec<RestoreTarget> = (0..PARTITIONS)
            .filter(|t| t % parallelism == ordinal)
            .map(|t| RestoreTarget {
                task: t,
                partitions: vec![(TOPIC.to_owned(), t as i32)],
                db_dir: db_dir(&state_dir, t),
            })
            .collect();
        let restore = coordinator
            .restore(&mut output, &job.broker, &targets)
            .await?;
        let mut tasks = Vec::new();
        let mut restored_from = Vec::new();
        for (target, restored) in targets.iter().zip(&restore.tasks) {
            if restored.is_none() {
                let _ = std::fs::remove_dir_all(&target.db_dir);
            }
            let state =
                TaskState::open(&target.db_dir, &StateOptions::new(8 << 20, 1 << 20)).unwrap();
            let mut processor = TaskProcessor::new(pipeline.clone(), state, PARTITIONS as usize);
            processor.register_partition(TOPIC, target.task as i32);
            let mut offset = 0;
            if let Some(r) = restored {
                let snapshot: TaskSnapshot =
                    serde_json::from_value(r.manifest.engine.clone()).unwrap();
                processor.restore_meta(snapshot);
                offset = r.manifest.offsets[0].offset;
            } else if let Some(g) = restore.group.get(&(TOPIC.to_owned(), target.task as i32)) {
                offset = g.offset;
            }
            coordinator
                .register(
                    target.task,
                    state_dir.join(format!("staging-{}", target.task)),
                    restored.as_ref().map(|r| &r.manifest),
                )
                .await?;
            restored_from.push(restored.as_ref().map(|r| r.from.clone()));
            tasks.push(Task {
                id: target.task,
                processor,
                offset,
            });
        }
        Ok(Worker {
            coordinator,
            output,
            tasks,
            record: PipelineRecord {
                steps: pipeline.step_states(),
                source_partitions: PARTITIONS,
            },
            restored: restored_from,
            last_checkpoint: 0,
        })
    }

    fn process(&mut self, input: &[Vec<Vec<u8>>], thirds: usize) {
        for task in &mut self.tasks {
            let records = &input[task.id as usize];
            let end = if thirds >= 3 {
                records.len()
            } else {
                (records.len() - 1) * thirds / 3
            };
            let mut outputs = Outputs::default();
            while (task.offset as usize) < end {
                let value = &records[task.offset as usize];
                let record = SourceRecord {
                    topic: TOPIC,
                    partition: task.id as i32,
                    offset: task.offset,
                    key: None,
                    value: Some(value),
                    timestamp_ms: None,
                };
                task.processor.process(&record, &mut outputs).unwrap();
                task.offset += 1;
            }
            for record in outputs.records.drain(..) {
                self.output.send(task.id, record.value);
            }
        }
    }

    async fn checkpoint(&mut self) -> Result<u64, CoordinatorError> {
        for task in &mut self.tasks {
            task.processor.state_mut().flush_cache().unwrap();
        }
        let inputs = self
            .tasks
            .iter()
            .map(|task| TaskCheckpointInput {
                task: task.id,
                db: task.processor.state().db(),
                offsets: vec![SourceOffset {
                    topic: TOPIC.to_owned(),
                    partition: task.id as i32,
                    offset: task.offset,
                }],
                engine: serde_json::to_value(task.processor.snapshot_meta()).unwrap(),
            })
            .collect();
        let outcome = self
            .coordinator
            .checkpoint(&mut self.output, inputs, &self.record)
            .await?;
        // Retention runs on a thread of its own: wait for it, so that a
        // failure injected there happens before the test goes on.
        self.coordinator.finish_housekeeping();
        self.last_checkpoint = outcome.checkpoint_id;
        Ok(outcome.checkpoint_id)
    }
}

fn db_dir(state_dir: &LocalPath, task: u32) -> PathBuf {
    state_dir.join(format!("task-{task}"))
}

/// Checkpoints every worker, returning the failures.
async fn checkpoint_all(workers: &mut [Worker]) -> Vec<CoordinatorError> {
    let mut failures = Vec::new();
    for w in workers {
        if let Err(e) = w.checkpoint().await {
            failures.push(e);
        }
    }
    failures
}

/// Where a crash happens, as the failure that stands for it.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// Flushing the output, before any snapshot.
    BeforeSnapshot,
    /// Uploading the first new SST file.
    MidUpload,
    /// Writing the first manifest (a task's upload is complete but for it).
    AtManifest,
    /// The first task's commit: manifests exist, nothing is committed.
    AfterManifestBeforeCommit,
    /// The second task's commit: the first task committed, no marker.
    BetweenCommits,
    /// Writing the first marker: the worker's tasks committed.
    AfterCommitBeforeMarker,
    /// Retention: markers written, old checkpoints not yet deleted.
    AfterMarkerBeforeRetention,
}

impl CrashPoint {
    const ALL: [CrashPoint; 7] = [
        CrashPoint::BeforeSnapshot,
        CrashPoint::MidUpload,
        CrashPoint::AtManifest,
        CrashPoint::AfterManifestBeforeCommit,
        CrashPoint::BetweenCommits,
        CrashPoint::AfterCommitBeforeMarker,
        CrashPoint::AfterMarkerBeforeRetention,
    ];

    fn arm(self, faults: &Faults, second_task: u32) {
        match self {
            CrashPoint::BeforeSnapshot => faults.fail("flush", "", 0),
            CrashPoint::MidUpload => faults.fail("put", "/shared/", 0),
            CrashPoint::AtManifest => faults.fail("create", ".json", 0),
            CrashPoint::AfterManifestBeforeCommit => faults.fail("commit", "", 0),
            CrashPoint::BetweenCommits => faults.fail("commit", &second_task.to_string(), 0),
            CrashPoint::AfterCommitBeforeMarker => faults.fail("put", ".committed", 0),
            CrashPoint::AfterMarkerBeforeRetention => faults.fail("list", "/shared", 0),
        }
    }

    /// Whether the checkpoint still succeeds (retention failures only
    /// leave garbage behind).
    fn checkpoint_succeeds(self) -> bool {
        matches!(self, CrashPoint::AfterMarkerBeforeRetention)
    }
}

/// One crash scenario: run at parallelism 2, checkpoint, process more,
/// crash worker 0 at `point` during the next checkpoint, drop every worker,
/// restart at `restart_parallelism` (mid-restore failure first when asked),
/// finish and compare with the model.
async fn crash_scenario(point: CrashPoint, restart_parallelism: u32, fail_restore: bool) {
    let job = Job::new(true);
    let mut workers = job
        .start(2, 1, &RestoreSource::Latest, "run-1")
        .await
        .unwrap();
    job.process(&mut workers, 1);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    job.process(&mut workers, 2);
    // Worker 0 owns tasks 0 and 2.
    point.arm(&job.faults, 2);
    let result = workers[0].checkpoint().await;
    assert_eq!(
        result.is_ok(),
        point.checkpoint_succeeds(),
        "{point:?}: {result:?}"
    );
    assert!(
        !job.faults.armed(),
        "{point:?}: the failure was never reached"
    );
    // The other worker completes its checkpoint; then every pod dies.
    assert!(checkpoint_all(&mut workers[1..]).await.is_empty());
    drop(workers);

    let (generation, run) = if restart_parallelism == 2 {
        (1, "run-1")
    } else {
        (2, "run-2")
    };
    if fail_restore {
        job.faults.fail("get", "/shared/", 0);
        let failed = job
            .start(restart_parallelism, generation, &RestoreSource::Latest, run)
            .await;
        assert!(failed.is_err(), "{point:?}: the restore should have failed");
    }
    let mut workers = job
        .start(restart_parallelism, generation, &RestoreSource::Latest, run)
        .await
        .unwrap();
    job.process(&mut workers, 3);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    assert_eq!(committed(&job.broker), job.model(), "{point:?}");
}

#[tokio::test]
async fn a_crash_at_any_checkpoint_step_loses_and_repeats_nothing() {
    for point in CrashPoint::ALL {
        crash_scenario(point, 2, false).await;
    }
}

#[tokio::test]
async fn a_crash_at_any_checkpoint_step_then_a_rescale_loses_and_repeats_nothing() {
    for point in CrashPoint::ALL {
        crash_scenario(point, 3, false).await;
        crash_scenario(point, 1, false).await;
    }
}

#[tokio::test]
async fn a_crash_mid_restore_is_retried_from_the_same_point() {
    for point in [
        CrashPoint::AfterCommitBeforeMarker,
        CrashPoint::AfterManifestBeforeCommit,
    ] {
        crash_scenario(point, 2, true).await;
        crash_scenario(point, 3, true).await;
    }
}

#[tokio::test]
async fn a_checkpoint_committed_without_its_marker_is_restored_and_its_marker_repaired() {
    let job = Job::new(true);
    let mut workers = job.start(1, 1, &RestoreSource::Latest, "a").await.unwrap();
    job.process(&mut workers, 1);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    job.process(&mut workers, 2);
    job.faults.fail("put", ".committed", 0);
    let err = workers[0].checkpoint().await.unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::Marker {
                checkpoint_id: 2,
                ..
            }
        ),
        "{err}"
    );
    drop(workers);
    let workers = job.start(1, 1, &RestoreSource::Latest, "a").await.unwrap();
    assert!(
        workers[0]
            .restored
            .iter()
            .all(|r| *r == Some(RestoredFrom::Checkpoint(2))),
        "{:?}",
        workers[0].restored
    );
    let marker = job.layout.checkpoint_marker(2, 0);
    assert!(
        object_store::ObjectStoreExt::head(job.store.as_ref(), &marker)
            .await
            .is_ok(),
        "marker not repaired"
    );
}

#[tokio::test]
async fn a_savepoint_restore_is_not_repeated_after_the_new_generation_committed() {
    let job = Job::new(true);
    let mut workers = job.start(2, 1, &RestoreSource::Latest, "g1").await.unwrap();
    job.process(&mut workers, 1);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    for w in &workers {
        w.coordinator
            .savepoint(w.last_checkpoint, "rescale-1", PARTITIONS)
            .await
            .unwrap();
    }
    drop(workers);
    // The operator bumps the generation and starts three workers from the
    // savepoint; they commit a checkpoint of their own, then crash.
    write_fence(job.store.as_ref(), &job.layout, 2)
        .await
        .unwrap();
    let source = RestoreSource::Savepoint("rescale-1".into());
    let mut workers = job.start(3, 2, &source, "g2").await.unwrap();
    assert!(
        workers
            .iter()
            .flat_map(|w| &w.restored)
            .all(|r| *r == Some(RestoredFrom::Savepoint("rescale-1".into())))
    );
    job.process(&mut workers, 2);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    drop(workers);
    // The pods restart with the same environment, savepoint id included:
    // the generation's own checkpoint wins.
    let mut workers = job.start(3, 2, &source, "g2").await.unwrap();
    for w in &workers {
        for r in &w.restored {
            assert!(
                matches!(r, Some(RestoredFrom::Checkpoint(_))),
                "restored {r:?} instead of the generation's checkpoint"
            );
        }
    }
    job.process(&mut workers, 3);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    assert_eq!(committed(&job.broker), job.model());
}

#[tokio::test]
async fn a_savepoint_that_failed_mid_copy_is_never_restored() {
    let job = Job::new(true);
    let mut workers = job.start(2, 1, &RestoreSource::Latest, "g1").await.unwrap();
    job.process(&mut workers, 1);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    job.faults.fail("copy", "/savepoints/", 1);
    let (first, second) = (workers[0].last_checkpoint, workers[1].last_checkpoint);
    assert!(
        workers[0]
            .coordinator
            .savepoint(first, "sp", PARTITIONS)
            .await
            .is_err()
    );
    workers[1]
        .coordinator
        .savepoint(second, "sp", PARTITIONS)
        .await
        .unwrap();
    drop(workers);
    let err = job
        .start(2, 2, &RestoreSource::Savepoint("sp".into()), "g2")
        .await
        .err()
        .expect("an incomplete savepoint must not restore");
    assert!(err.to_string().contains("not found or incomplete"), "{err}");
    // The job goes on from its last checkpoint instead.
    let mut workers = job.start(2, 1, &RestoreSource::Latest, "g1").await.unwrap();
    job.process(&mut workers, 3);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    assert_eq!(committed(&job.broker), job.model());
}

#[tokio::test]
async fn a_savepoint_copies_off_the_processing_path_and_keeps_its_checkpoint_meanwhile() {
    let job = Job::new(true);
    let mut workers = job.start(1, 1, &RestoreSource::Latest, "g1").await.unwrap();
    job.process(&mut workers, 1);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    let saved = workers[0].last_checkpoint;
    // A slow store: the copy waits while the worker goes on.
    let held = job.store.hold_copies();
    workers[0]
        .coordinator
        .start_savepoint(saved, "sp", PARTITIONS);
    // Two more checkpoints: retention keeps two, so the saved checkpoint
    // would go but for the copy reading it.
    for thirds in 2..=3 {
        job.process(&mut workers, thirds);
        assert!(checkpoint_all(&mut workers).await.is_empty());
        assert!(
            workers[0].coordinator.copied_savepoints(false).is_empty(),
            "the copy cannot have finished while the store holds it"
        );
    }
    assert!(workers[0].last_checkpoint > saved + 1);
    held.store(false, std::sync::atomic::Ordering::SeqCst);
    let copied = workers[0].coordinator.copied_savepoints(true);
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].id, "sp");
    assert!(copied[0].result.is_ok(), "{:?}", copied[0].result);
    drop(workers);
    // It stands alone: a new generation at another parallelism restores it.
    write_fence(job.store.as_ref(), &job.layout, 2)
        .await
        .unwrap();
    let source = RestoreSource::Savepoint("sp".into());
    let workers = job.start(2, 2, &source, "g2").await.unwrap();
    for r in workers.iter().flat_map(|w| &w.restored) {
        assert_eq!(*r, Some(RestoredFrom::Savepoint("sp".into())));
    }
}

#[tokio::test]
async fn a_zombie_of_an_old_generation_writes_nothing_the_new_owner_sees() {
    let job = Job::new(true);
    let mut old = job
        .start(1, 1, &RestoreSource::Latest, "old")
        .await
        .unwrap();
    job.process(&mut old, 1);
    assert!(checkpoint_all(&mut old).await.is_empty());
    job.process(&mut old, 2);

    // A rescale: the operator writes the fence, the new worker fences and
    // restores while the old one is still running. A second worker of the
    // new generation started just before it (a duplicate pod, which the
    // fence file cannot tell apart) is fenced at the broker.
    write_fence(job.store.as_ref(), &job.layout, 2)
        .await
        .unwrap();
    let mut duplicate = job
        .start(1, 2, &RestoreSource::Latest, "dup")
        .await
        .unwrap();
    let mut new = job
        .start(1, 2, &RestoreSource::Latest, "new")
        .await
        .unwrap();
    let checkpoints = job.objects("checkpoints").await;
    let shared = job.objects("tasks").await;
    let log = job.broker.log().len();

    let err = old[0].checkpoint().await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::Fenced(_)),
        "the zombie was not fenced: {err}"
    );
    assert_eq!(job.objects("checkpoints").await, checkpoints);
    assert_eq!(job.objects("tasks").await, shared);
    assert_eq!(job.broker.log().len(), log);

    job.process(&mut duplicate, 3);
    let err = duplicate[0].checkpoint().await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::Output { .. }),
        "a fenced producer committed: {err}"
    );
    job.process(&mut new, 3);
    assert!(checkpoint_all(&mut new).await.is_empty());
    assert_eq!(committed(&job.broker), job.model());
}

#[tokio::test]
async fn a_rescale_during_the_upload_stops_the_commit() {
    let job = Job::new(true);
    let mut workers = job.start(1, 1, &RestoreSource::Latest, "a").await.unwrap();
    job.process(&mut workers, 1);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    job.process(&mut workers, 2);
    let log = job.broker.log().len();
    // The operator writes the fence after the worker's first check.
    job.store.fence_during_upload(job.layout.fence(), 2);
    let err = workers[0].checkpoint().await.unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced(_)), "{err}");
    // Nothing of the refused checkpoint is committed or marked, and its
    // open output is discarded.
    assert_eq!(job.broker.log().len(), log);
    let marker = job.layout.checkpoint_marker(2, 0);
    assert!(
        object_store::ObjectStoreExt::head(job.store.as_ref(), &marker)
            .await
            .is_err()
    );
    let mut workers = job.start(1, 2, &RestoreSource::Latest, "b").await.unwrap();
    job.process(&mut workers, 3);
    assert!(checkpoint_all(&mut workers).await.is_empty());
    assert_eq!(committed(&job.broker), job.model());
}

#[tokio::test]
async fn a_worker_of_an_older_generation_refuses_to_start() {
    let job = Job::new(true);
    write_fence(job.store.as_ref(), &job.layout, 3)
        .await
        .unwrap();
    let err = job
        .start(1, 2, &RestoreSource::Latest, "x")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("generation 2"), "{err}");
}

#[tokio::test]
async fn at_least_once_crashes_count_every_event_once_in_state() {
    // At-least-once output may repeat, but each repeated result carries the
    // model's count: state never counts an event twice.
    for point in [
        CrashPoint::AfterManifestBeforeCommit,
        CrashPoint::AfterCommitBeforeMarker,
        CrashPoint::MidUpload,
    ] {
        let job = Job::new(false);
        let mut workers = job.start(2, 1, &RestoreSource::Latest, "r").await.unwrap();
        job.process(&mut workers, 1);
        assert!(checkpoint_all(&mut workers).await.is_empty());
        job.process(&mut workers, 2);
        point.arm(&job.faults, 2);
        assert!(workers[0].checkpoint().await.is_err(), "{point:?}");
        assert!(
            !job.faults.armed(),
            "{point:?}: the failure was never reached"
        );
        drop(workers);
        let mut workers = job.start(3, 2, &RestoreSource::Latest, "r2").await.unwrap();
        job.process(&mut workers, 3);
        assert!(checkpoint_all(&mut workers).await.is_empty());
        let mut last = Results::new();
        for record in job.broker.log() {
            let v: serde_json::Value = serde_json::from_slice(&record).unwrap();
            last.insert(
                (
                    v["key"].as_str().unwrap().to_owned(),
                    v["window_start"].as_i64().unwrap(),
                ),
                v["n"].as_u64().unwrap(),
            );
        }
        assert_eq!(last, job.model(), "{point:?}");
    }
}

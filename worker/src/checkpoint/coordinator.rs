//! The checkpoint coordinator: the one place where the exactly-once
//! protocol is spelled out, step by step, for restore, checkpoint and
//! savepoint.
//!
//! Restore (per worker, before anything else is read):
//! 1. refuse to start when `fence.json` names a newer generation;
//! 2. fence: initialise every owned task's transactional producer, which
//!    aborts what the previous owner left open and stops it from committing;
//! 3. only then read the group's committed offsets and choose each task's
//!    restore point (see [`crate::checkpoint::restore`]); a checkpoint known
//!    to have committed by its token alone gets its marker written.
//!
//! Checkpoint (all owned tasks):
//! 1. flush the output sent so far;
//! 2. check `fence.json`: a fenced worker writes nothing to the store;
//! 3. take an id above every id in the store, and upload every task
//!    concurrently, each manifest last and create-only (two owners of a task
//!    can never overwrite each other);
//! 4. check `fence.json` again (a rescale may have begun meanwhile);
//! 5. commit each task's output with its offsets, which carry the
//!    checkpoint's token;
//! 6. write the committed markers;
//! 7. retention, unless fenced meanwhile, on a thread of its own (its
//!    failures only leave garbage; the next checkpoint waits for it).
//!
//! Savepoint: a committed checkpoint copied server-side into
//! `savepoints/<id>/`. Stop-with-savepoint copies before the worker stops
//! ([`CheckpointCoordinator::savepoint`]); a savepoint that stops nothing is
//! copied on a thread of its own while processing goes on
//! ([`CheckpointCoordinator::start_savepoint`]), and retention keeps the
//! checkpoint it copies until the copy is done.
//!
//! It is generic over the output ([`OutputCommitter`]) and the group's
//! offsets ([`CommittedOffsets`]); the store is any [`ObjectStore`]. The
//! runtime plugs in Kafka; the tests plug in fakes that fail at every step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use object_store::ObjectStore;

use crate::checkpoint::evidence::{CommitToken, Evidence, GroupOffsets};
use crate::checkpoint::fence::{FenceError, check_fence};
use crate::checkpoint::layout::JobLayout;
use crate::checkpoint::manifest::{SourceOffset, StepState, TaskManifest};
use crate::checkpoint::restore::{RestoreError, RestoreSource, RestoredTask, restore_task};
use crate::checkpoint::retention::collect_garbage;
use crate::checkpoint::savepoint::{self, SavepointError};
use crate::checkpoint::transfer::TransferError;
use crate::checkpoint::upload::{
    CheckpointError, CheckpointRequest, TaskCheckpointer, mark_committed, next_checkpoint_id,
};

/// A failed step of the output side, with what was attempted.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct CommitError {
    /// What was attempted.
    pub operation: &'static str,
    /// Why it failed.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl CommitError {
    /// A failure of `operation`.
    pub fn new(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> CommitError {
        CommitError {
            operation,
            source: source.into(),
        }
    }
}

/// The output side of a worker as the protocol sees it: Kafka transactions
/// per task (exactly-once), or flushed output and an offset commit
/// (at-least-once).
pub trait OutputCommitter {
    /// Fences every earlier owner of `tasks`' output: exactly-once
    /// initialises each task's transactional producer (aborting what the
    /// previous owner left open); at-least-once has nothing to fence at the
    /// broker. Called once, before the restore point is chosen.
    fn fence(&mut self, tasks: &[u32]) -> Result<(), CommitError>;
    /// Waits until everything sent so far is durable (or in the open
    /// transaction), failing if anything was not delivered.
    fn flush(&mut self) -> Result<(), CommitError>;
    /// Commits `task`'s output together with its next `offsets`, which
    /// carry `token` as their metadata, in one atomic step.
    fn commit(
        &mut self,
        task: u32,
        offsets: &[SourceOffset],
        token: &CommitToken,
    ) -> Result<(), CommitError>;
    /// Discards the output not committed yet (after a refused checkpoint).
    fn abort(&mut self);
}

/// The consumer group's committed offsets.
pub trait CommittedOffsets {
    /// The committed offset and metadata of each of `partitions` that has
    /// one.
    fn committed(&self, partitions: &[(String, i32)]) -> Result<GroupOffsets, CommitError>;
}

/// Why the coordinator stopped; every error fails the worker, which then
/// restarts from the last committed checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A newer generation owns the job (or `fence.json` could not be read).
    #[error(transparent)]
    Fenced(#[from] FenceError),
    /// The output side failed.
    #[error("task {task}: {source}")]
    Output {
        /// The task, if the failure was one task's.
        task: String,
        /// The failure.
        source: CommitError,
    },
    /// A task's upload failed.
    #[error(transparent)]
    Upload(#[from] CheckpointError),
    /// A restore failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A committed marker could not be written.
    #[error("checkpoint {checkpoint_id}: committed marker of task {task}: {source}")]
    Marker {
        /// The checkpoint.
        checkpoint_id: u64,
        /// The task.
        task: u32,
        /// The store error.
        source: TransferError,
    },
    /// The store could not be listed for the next checkpoint id.
    #[error("listing of checkpoint ids: {0}")]
    Listing(TransferError),
}

impl CoordinatorError {
    /// The output side failed, for `task` or for all (`None`).
    pub(crate) fn output(task: Option<u32>, source: CommitError) -> CoordinatorError {
        CoordinatorError::Output {
            task: task.map_or_else(|| "all".to_owned(), |t| t.to_string()),
            source,
        }
    }
}

/// A task to restore: its partitions (every input topic's partition `t`)
/// and the directory its database goes to.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    /// The task.
    pub task: u32,
    /// The input partitions of the task.
    pub partitions: Vec<(String, i32)>,
    /// Where the task's RocksDB directory is restored to.
    pub db_dir: PathBuf,
}

/// One task's part of a checkpoint, taken once its cache is written back.
pub struct TaskCheckpointInput<'a> {
    /// The task.
    pub task: u32,
    /// Its database.
    pub db: &'a rocksdb::DB,
    /// The next offset of each of its input partitions.
    pub offsets: Vec<SourceOffset>,
    /// The engine's snapshot, opaque JSON.
    pub engine: serde_json::Value,
}

/// What every manifest of the job records about the pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineRecord {
    /// The stateful steps and their slots.
    pub steps: Vec<StepState>,
    /// The source partition count.
    pub source_partitions: u32,
}

/// What a worker's restore found.
#[derive(Clone, Debug)]
pub struct Restored {
    /// One entry per target, `None` where the task starts empty.
    pub tasks: Vec<Option<RestoredTask>>,
    /// The group's committed offsets, read after the fence (where a task
    /// restored nothing, its partitions resume from them).
    pub group: GroupOffsets,
}

/// A committed checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// Its id.
    pub checkpoint_id: u64,
    /// Bytes uploaded by all tasks.
    pub bytes_uploaded: u64,
    /// The state size of all tasks.
    pub state_bytes: u64,
    /// Wall time from the flush to the markers.
    pub duration: Duration,
}

/// Drives restore, checkpoint and savepoint for the tasks of one worker.
pub struct CheckpointCoordinator {
    store: Arc<dyn ObjectStore>,
    layout: JobLayout,
    generation: u64,
    /// What the worker was started from, recorded in every manifest.
    origin: RestoreSource,
    retain: usize,
    checkpointers: BTreeMap<u32, TaskCheckpointer>,
    /// The next checkpoint id, unless the store already has higher ones.
    next_id: u64,
    /// The retention of the last checkpoint, running off the processing
    /// path.
    retention: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Savepoints being copied off the processing path.
    copies: Vec<SavepointCopy>,
    /// The checkpoints those copies read, with how many copies read each:
    /// retention keeps them.
    pinned: Arc<Mutex<BTreeMap<u64, usize>>>,
    /// Copies that ended and were not reported yet.
    copied: Vec<CopiedSavepoint>,
}

/// A savepoint copied on a thread of its own.
struct SavepointCopy {
    id: String,
    handle: std::thread::JoinHandle<Result<Result<(), SavepointError>, String>>,
}

/// How a savepoint copy begun by [`CheckpointCoordinator::start_savepoint`]
/// ended.
#[derive(Debug)]
pub struct CopiedSavepoint {
    /// The savepoint id.
    pub id: String,
    /// Whether the savepoint is complete (as far as this worker's tasks go).
    pub result: Result<(), SavepointError>,
}

/// Runs `work` to completion on a new thread named `name`, with a runtime of
/// its own.
fn spawn_on_own_thread<T, F>(
    name: &str,
    work: F,
) -> std::io::Result<std::thread::JoinHandle<Result<T, String>>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime: {e}"))?;
            Ok(rt.block_on(work))
        })
}

/// Copies checkpoint `checkpoint_id` of the `owned` tasks into savepoint
/// `id` and completes it when the job's `tasks` tasks are all there.
async fn copy_savepoint(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    checkpoint_id: u64,
    id: &str,
    owned: &[u32],
    tasks: u32,
) -> Result<(), SavepointError> {
    futures::future::try_join_all(
        owned
            .iter()
            .map(|task| savepoint::copy_task(store, layout, checkpoint_id, *task, id)),
    )
    .await?;
    savepoint::complete(store, layout, id, tasks).await?;
    Ok(())
}

/// Releases one copy's hold on `checkpoint_id`.
fn unpin(pinned: &Mutex<BTreeMap<u64, usize>>, checkpoint_id: u64) {
    let mut pins = pinned.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(count) = pins.get_mut(&checkpoint_id) {
        *count -= 1;
        if *count == 0 {
            pins.remove(&checkpoint_id);
        }
    }
}

/// The checkpoints savepoint copies are reading.
fn pinned_ids(pinned: &Mutex<BTreeMap<u64, usize>>) -> BTreeSet<u64> {
    pinned
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .copied()
        .collect()
}

impl CheckpointCoordinator {
    /// A coordinator for a worker of `generation` started from `origin`
    /// (`WEIR_RESTORE_FROM`), keeping `retain` committed checkpoints per
    /// task.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        layout: JobLayout,
        generation: u64,
        origin: RestoreSource,
        retain: usize,
    ) -> CheckpointCoordinator {
        CheckpointCoordinator {
            store,
            layout,
            generation,
            origin,
            retain: retain.max(1),
            checkpointers: BTreeMap::new(),
            next_id: 1,
            retention: None,
            copies: Vec::new(),
            pinned: Arc::default(),
            copied: Vec::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The job's layout in the store.
    pub fn layout(&self) -> &JobLayout {
        &self.layout
    }

    /// Fences the previous owners of `targets`, then restores each from
    /// what [`crate::checkpoint::restore::choose`] picks (concurrently).
    pub async fn restore(
        &mut self,
        committer: &mut dyn OutputCommitter,
        offsets: &dyn CommittedOffsets,
        targets: &[RestoreTarget],
    ) -> Result<Restored, CoordinatorError> {
        check_fence(self.store.as_ref(), &self.layout, self.generation).await?;
        let tasks: Vec<u32> = targets.iter().map(|t| t.task).collect();
        committer
            .fence(&tasks)
            .map_err(|e| CoordinatorError::output(None, e))?;
        let partitions: Vec<(String, i32)> = targets
            .iter()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect();
        let group = if partitions.is_empty() {
            GroupOffsets::new()
        } else {
            offsets
                .committed(&partitions)
                .map_err(|e| CoordinatorError::output(None, e))?
        };
        let store = self.store.as_ref();
        let layout = &self.layout;
        let generation = self.generation;
        let source = &self.origin;
        let group_ref = &group;
        let tasks = futures::future::try_join_all(targets.iter().map(|target| async move {
            let restored = restore_task(
                store,
                layout,
                target.task,
                source,
                generation,
                group_ref,
                &target.db_dir,
            )
            .await?;
            if let Some(r) = &restored
                && r.evidence == Some(Evidence::Token)
            {
                // Died between the commit and the marker: repair it, so
                // that retention counts this checkpoint as committed.
                mark_committed(store, layout, r.manifest.checkpoint_id, target.task)
                    .await
                    .map_err(|source| CoordinatorError::Marker {
                        checkpoint_id: r.manifest.checkpoint_id,
                        task: target.task,
                        source,
                    })?;
            }
            Ok::<_, CoordinatorError>(restored)
        }))
        .await?;
        Ok(Restored { tasks, group })
    }

    /// Registers a task whose database was just opened (restored from
    /// `restored`, or empty): a fresh incarnation that adopts the restored
    /// manifest's files (see [`TaskCheckpointer::adopt`]).
    pub async fn register(
        &mut self,
        task: u32,
        staging_dir: PathBuf,
        restored: Option<&TaskManifest>,
    ) -> Result<(), CoordinatorError> {
        let mut checkpointer =
            TaskCheckpointer::new(self.store.clone(), self.layout.clone(), task, staging_dir);
        if let Some(manifest) = restored {
            checkpointer.adopt(manifest).await?;
        }
        self.checkpointers.insert(task, checkpointer);
        Ok(())
    }

    /// Takes a checkpoint of every task in `inputs` (each registered) and
    /// commits it; see the module documentation for the steps.
    pub async fn checkpoint(
        &mut self,
        committer: &mut dyn OutputCommitter,
        inputs: Vec<TaskCheckpointInput<'_>>,
        pipeline: &PipelineRecord,
    ) -> Result<CheckpointOutcome, CoordinatorError> {
        let started = Instant::now();
        committer
            .flush()
            .map_err(|e| CoordinatorError::output(None, e))?;
        self.check_fence(committer).await?;
        // The last retention must be done: it deletes shared files no
        // manifest references, which this checkpoint's uploads are until
        // their manifest is written.
        self.finish_housekeeping();
        // Ids above anything in the store: a fenced owner that is still
        // running may have written manifests after this worker started.
        let listed = next_checkpoint_id(self.store.as_ref(), &self.layout)
            .await
            .map_err(CoordinatorError::Listing)?;
        let checkpoint_id = self.next_id.max(listed);
        self.next_id = checkpoint_id + 1;

        let generation = self.generation;
        let origin = self.origin.origin();
        let mut uploads = Vec::with_capacity(inputs.len());
        let mut by_task: BTreeMap<u32, TaskCheckpointInput<'_>> =
            inputs.into_iter().map(|i| (i.task, i)).collect();
        for (task, checkpointer) in &mut self.checkpointers {
            let Some(input) = by_task.remove(task) else {
                continue;
            };
            let request = CheckpointRequest {
                checkpoint_id,
                generation,
                offsets: input.offsets,
                engine: input.engine,
                origin: origin.clone(),
                steps: pipeline.steps.clone(),
                source_partitions: pipeline.source_partitions,
            };
            let db = input.db;
            uploads.push(async move { checkpointer.checkpoint(db, request).await });
        }
        let uploaded = futures::future::try_join_all(uploads).await?;
        self.check_fence(committer).await?;

        let mut outcome = CheckpointOutcome {
            checkpoint_id,
            ..CheckpointOutcome::default()
        };
        for (manifest, stats) in &uploaded {
            committer
                .commit(manifest.task, &manifest.offsets, &CommitToken::of(manifest))
                .map_err(|e| CoordinatorError::output(Some(manifest.task), e))?;
            outcome.bytes_uploaded += stats.bytes_uploaded;
            outcome.state_bytes += stats.state_bytes;
        }
        let store = self.store.as_ref();
        let layout = &self.layout;
        futures::future::try_join_all(uploaded.iter().map(|(manifest, _)| async move {
            mark_committed(store, layout, checkpoint_id, manifest.task)
                .await
                .map_err(|source| CoordinatorError::Marker {
                    checkpoint_id,
                    task: manifest.task,
                    source,
                })
        }))
        .await?;
        self.start_retention(uploaded.iter().map(|(m, _)| m.task).collect());
        outcome.duration = started.elapsed();
        Ok(outcome)
    }

    /// Runs retention of `tasks` on a thread of its own, off the
    /// processing path; the next checkpoint waits for it. A worker fenced
    /// since its commit deletes nothing: the new owner's files in flight are
    /// referenced by no manifest yet.
    fn start_retention(&mut self, tasks: Vec<u32>) {
        let store = self.store.clone();
        let layout = self.layout.clone();
        let (generation, retain) = (self.generation, self.retain);
        let pinned = pinned_ids(&self.pinned);
        let work = async move {
            if check_fence(store.as_ref(), &layout, generation)
                .await
                .is_err()
            {
                return;
            }
            let results = futures::future::join_all(
                tasks
                    .iter()
                    .map(|&task| collect_garbage(store.as_ref(), &layout, task, retain, &pinned)),
            )
            .await;
            for result in results {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "checkpoint retention");
                }
            }
        };
        match spawn_on_own_thread("weir-retention", work) {
            Ok(handle) => self.retention = Some(handle),
            Err(e) => tracing::warn!(error = %e, "checkpoint retention skipped"),
        }
    }

    /// Waits until the retention of the last checkpoint is done (before the
    /// next checkpoint, and when the worker stops).
    pub fn finish_housekeeping(&mut self) {
        match self.retention.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Err(e))) => tracing::warn!(error = %e, "checkpoint retention skipped"),
            Some(Err(_)) => tracing::warn!("checkpoint retention panicked"),
            Some(Ok(Ok(()))) | None => {}
        }
    }

    /// Begins copying committed checkpoint `checkpoint_id` of every
    /// registered task into savepoint `id`, on a thread of its own, and
    /// returns at once; [`CheckpointCoordinator::copied_savepoints`] tells
    /// when it ended. Retention keeps the checkpoint meanwhile.
    pub fn start_savepoint(&mut self, checkpoint_id: u64, id: &str, tasks: u32) {
        *self
            .pinned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(checkpoint_id)
            .or_default() += 1;
        let store = self.store.clone();
        let layout = self.layout.clone();
        let owned: Vec<u32> = self.checkpointers.keys().copied().collect();
        let pinned = self.pinned.clone();
        let savepoint = id.to_owned();
        let work = async move {
            let result = copy_savepoint(
                store.as_ref(),
                &layout,
                checkpoint_id,
                &savepoint,
                &owned,
                tasks,
            )
            .await;
            unpin(&pinned, checkpoint_id);
            result
        };
        match spawn_on_own_thread("weir-savepoint", work) {
            Ok(handle) => self.copies.push(SavepointCopy {
                id: id.to_owned(),
                handle,
            }),
            Err(e) => {
                unpin(&self.pinned, checkpoint_id);
                self.copied.push(CopiedSavepoint {
                    id: id.to_owned(),
                    result: Err(SavepointError::Copy {
                        id: id.to_owned(),
                        reason: format!("could not start: {e}"),
                    }),
                });
            }
        }
    }

    /// The savepoint copies that ended since the last call; with `wait`,
    /// waits for every copy still running first (when the worker stops).
    pub fn copied_savepoints(&mut self, wait: bool) -> Vec<CopiedSavepoint> {
        let (done, running) = std::mem::take(&mut self.copies)
            .into_iter()
            .partition(|copy| wait || copy.handle.is_finished());
        self.copies = running;
        for copy in done {
            let id = copy.id;
            let result = match copy.handle.join() {
                Ok(Ok(result)) => result,
                Ok(Err(reason)) => Err(SavepointError::Copy {
                    id: id.clone(),
                    reason,
                }),
                Err(_) => Err(SavepointError::Copy {
                    id: id.clone(),
                    reason: "panicked".to_owned(),
                }),
            };
            self.copied.push(CopiedSavepoint { id, result });
        }
        std::mem::take(&mut self.copied)
    }
    /// Copies committed checkpoint `checkpoint_id` of every registered task
    /// into savepoint `id` and completes it when the job's `tasks` tasks are
    /// all there (whichever worker copies last completes it).
    pub async fn savepoint(
        &self,
        checkpoint_id: u64,
        id: &str,
        tasks: u32,
    ) -> Result<(), SavepointError> {
        let owned: Vec<u32> = self.checkpointers.keys().copied().collect();
        copy_savepoint(
            self.store.as_ref(),
            &self.layout,
            checkpoint_id,
            id,
            &owned,
            tasks,
        )
        .await
    }

    /// Refuses, after discarding the open output, when a newer generation
    /// owns the job.
    async fn check_fence(
        &self,
        committer: &mut dyn OutputCommitter,
    ) -> Result<(), CoordinatorError> {
        if let Err(e) = check_fence(self.store.as_ref(), &self.layout, self.generation).await {
            committer.abort();
            return Err(e.into());
        }
        Ok(())
    }
}

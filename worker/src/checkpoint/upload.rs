//! Incremental checkpoints of one task's RocksDB to object storage.
//!
//! Per checkpoint: a RocksDB checkpoint (hard links) into a local staging
//! directory; upload of the immutable SST/blob files not yet in the store to
//! `tasks/<t>/shared/<incarnation>-<file>`; upload of the small metadata files
//! to `checkpoints/<id>/task-<t>/<incarnation>-<file>`; then the task
//! manifest, last and create-only. Once the Kafka transaction holding the
//! checkpoint's output and offsets has committed, [`mark_committed`] writes
//! the committed marker. The order of these steps across tasks is the
//! [`crate::checkpoint::coordinator`]'s.

use std::collections::HashMap;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;

use crate::checkpoint::layout::{CheckpointObjectKind, JobLayout};
use crate::checkpoint::manifest::{
    MANIFEST_FORMAT, ManifestFile, SourceOffset, StepState, TaskManifest, is_immutable_file,
};
use crate::checkpoint::transfer::{self, TransferError};

/// Files uploaded or downloaded at once per task.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Why a checkpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// RocksDB could not create its checkpoint.
    #[error("task {task}: RocksDB checkpoint into {}: {source}", dir.display())]
    RocksDb {
        /// The task.
        task: u32,
        /// The staging directory.
        dir: PathBuf,
        /// The RocksDB error.
        source: rocksdb::Error,
    },
    /// The local staging directory could not be prepared or read.
    #[error("task {task}: staging directory {}: {source}", dir.display())]
    Staging {
        /// The task.
        task: u32,
        /// The staging directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file name RocksDB produced is not valid UTF-8.
    #[error("task {task}: non UTF-8 file name {name:?} in {}", dir.display())]
    FileName {
        /// The task.
        task: u32,
        /// The staging directory.
        dir: PathBuf,
        /// The file name.
        name: std::ffi::OsString,
    },
    /// An upload failed.
    #[error("task {task}: {source}")]
    Transfer {
        /// The task.
        task: u32,
        /// The transfer error.
        source: TransferError,
    },
}

/// What one task checkpoint needs besides the database.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointRequest {
    /// The checkpoint id (greater than every id already in the store; see
    /// [`next_checkpoint_id`]).
    pub checkpoint_id: u64,
    /// The worker's generation.
    pub generation: u64,
    /// The next offset to read per source partition of the task.
    pub offsets: Vec<SourceOffset>,
    /// The engine's per-task snapshot, opaque JSON.
    pub engine: serde_json::Value,
    /// What the worker's lineage was started from
    /// ([`crate::checkpoint::restore::RestoreSource::origin`]).
    pub origin: String,
    /// The pipeline's stateful steps and their slots.
    pub steps: Vec<StepState>,
    /// The source partition count.
    pub source_partitions: u32,
}

/// What a task checkpoint cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Bytes uploaded: new immutable files, metadata files and the manifest.
    pub bytes_uploaded: u64,
    /// Files uploaded (new immutable files and metadata files, not the
    /// manifest).
    pub files_uploaded: usize,
    /// Of those, immutable (SST/blob) files.
    pub shared_files_uploaded: usize,
    /// Bytes of those immutable files.
    pub shared_bytes_uploaded: u64,
    /// Immutable files already in the store and referenced again.
    pub files_reused: usize,
    /// Total size of the checkpoint's files (the state size).
    pub state_bytes: u64,
    /// Wall time of the whole checkpoint.
    pub duration: Duration,
}

/// Checkpoints one task's RocksDB instance. Create one per database open:
/// each draws a fresh incarnation id, so immutable file names never collide
/// across restores. It remembers which immutable files are already in the
/// store, so each checkpoint uploads only new ones.
#[derive(Debug)]
pub struct TaskCheckpointer {
    store: Arc<dyn ObjectStore>,
    layout: JobLayout,
    task: u32,
    staging_root: PathBuf,
    incarnation: String,
    /// Immutable files in the store, by local file name.
    uploaded: HashMap<String, ManifestFile>,
    concurrency: usize,
}

/// A file of a staged RocksDB checkpoint.
struct StagedFile {
    name: String,
    local: PathBuf,
    size: u64,
}

impl TaskCheckpointer {
    /// A checkpointer for `task` whose RocksDB checkpoints are staged under
    /// `staging_root` (which must be on the same file system as the
    /// database, for hard links).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        layout: JobLayout,
        task: u32,
        staging_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            store,
            layout,
            task,
            staging_root: staging_root.into(),
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            uploaded: HashMap::new(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Adopts the immutable files of the manifest a database was restored
    /// from, so that the next checkpoint uploads only what is new. Files in
    /// this task's shared directory are reused as they are; files elsewhere
    /// (a savepoint's, which may be deleted) are first copied server-side
    /// into it under this incarnation. So the first checkpoint after a
    /// savepoint restore is incremental too, and cannot outlast the
    /// transaction it commits with. Returns the bytes copied.
    pub async fn adopt(&mut self, manifest: &TaskManifest) -> Result<u64, CheckpointError> {
        let task = self.task;
        let shared = self.layout.shared_dir(task);
        let mut copies = Vec::new();
        for file in manifest.files.iter().filter(|f| is_immutable_file(&f.name)) {
            let Some(location) = self.layout.resolve(&file.path) else {
                continue;
            };
            if location.prefix_matches(&shared) {
                self.uploaded.insert(file.name.clone(), file.clone());
            } else {
                let target = self.layout.shared_file(task, &self.incarnation, &file.name);
                copies.push((file, location, target));
            }
        }
        let store = self.store.as_ref();
        let layout = &self.layout;
        let copied: Vec<ManifestFile> = futures::stream::iter(copies)
            .map(|(file, from, to)| async move {
                transfer::copy(store, &from, &to).await?;
                Ok::<_, TransferError>(ManifestFile {
                    name: file.name.clone(),
                    path: layout
                        .relative(&to)
                        .expect("shared files are under the job root"),
                    size: file.size,
                })
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
            .map_err(|source| CheckpointError::Transfer { task, source })?;
        let bytes = copied.iter().map(|f| f.size).sum();
        self.uploaded
            .extend(copied.into_iter().map(|f| (f.name.clone(), f)));
        Ok(bytes)
    }

    /// Sets how many files are uploaded at once (at least 1).
    pub fn set_concurrency(&mut self, concurrency: usize) {
        self.concurrency = concurrency.max(1);
    }

    /// This database open's incarnation id.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The task.
    pub fn task(&self) -> u32 {
        self.task
    }

    /// Checkpoints `db` and uploads what is new; the task manifest is written
    /// last. Call the engine's cache flush before, and [`mark_committed`]
    /// once the checkpoint's Kafka transaction has committed.
    pub async fn checkpoint(
        &mut self,
        db: &rocksdb::DB,
        request: CheckpointRequest,
    ) -> Result<(TaskManifest, CheckpointStats), CheckpointError> {
        let started = Instant::now();
        let dir = self.stage(db, request.checkpoint_id)?;
        let result = self.upload(&dir, request, started).await;
        // The staging directory only holds hard links and small copies.
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// Creates the RocksDB checkpoint in a fresh staging directory.
    fn stage(&self, db: &rocksdb::DB, checkpoint_id: u64) -> Result<PathBuf, CheckpointError> {
        let dir = self
            .staging_root
            .join(format!("checkpoint-{checkpoint_id}"));
        let staging = |source| CheckpointError::Staging {
            task: self.task,
            dir: dir.clone(),
            source,
        };
        transfer::remove_dir_if_present(&dir).map_err(staging)?;
        std::fs::create_dir_all(&self.staging_root).map_err(staging)?;
        rocksdb::checkpoint::Checkpoint::new(db)
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(|source| CheckpointError::RocksDb {
                task: self.task,
                dir: dir.clone(),
                source,
            })?;
        Ok(dir)
    }

    fn staged_files(&self, dir: &LocalPath) -> Result<Vec<StagedFile>, CheckpointError> {
        let staging = |source| CheckpointError::Staging {
            task: self.task,
            dir: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(staging)? {
            let entry = entry.map_err(staging)?;
            let meta = entry.metadata().map_err(staging)?;
            if !meta.is_file() {
                continue;
            }
            let name =
                entry
                    .file_name()
                    .into_string()
                    .map_err(|name| CheckpointError::FileName {
                        task: self.task,
                        dir: dir.to_path_buf(),
                        name,
                    })?;
            files.push(StagedFile {
                name,
                local: entry.path(),
                size: meta.len(),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    async fn upload(
        &mut self,
        dir: &LocalPath,
        request: CheckpointRequest,
        started: Instant,
    ) -> Result<(TaskManifest, CheckpointStats), CheckpointError> {
        let task = self.task;
        let transfer_error = |source| CheckpointError::Transfer { task, source };
        let mut stats = CheckpointStats::default();
        let mut entries = Vec::new();
        let mut uploads = Vec::new();
        for file in self.staged_files(dir)? {
            let immutable = is_immutable_file(&file.name);
            if immutable
                && let Some(known) = self.uploaded.get(&file.name)
                && known.size == file.size
            {
                stats.files_reused += 1;
                entries.push(known.clone());
                continue;
            }
            let location = if immutable {
                self.layout.shared_file(task, &self.incarnation, &file.name)
            } else {
                self.layout.checkpoint_metadata_file(
                    request.checkpoint_id,
                    task,
                    &self.incarnation,
                    &file.name,
                )
            };
            uploads.push((file, location, immutable));
        }

        let store = self.store.as_ref();
        let uploaded: Vec<(StagedFile, Path, bool)> = futures::stream::iter(uploads)
            .map(|(file, location, immutable)| async move {
                transfer::upload_file(store, &file.local, &location).await?;
                Ok::<_, TransferError>((file, location, immutable))
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
            .map_err(transfer_error)?;
        for (file, location, immutable) in uploaded {
            stats.files_uploaded += 1;
            stats.bytes_uploaded += file.size;
            if immutable {
                stats.shared_files_uploaded += 1;
                stats.shared_bytes_uploaded += file.size;
            }
            entries.push(ManifestFile {
                name: file.name,
                path: self
                    .layout
                    .relative(&location)
                    .expect("checkpoint files are under the job root"),
                size: file.size,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));

        let mut offsets = request.offsets;
        offsets.sort();
        let manifest = TaskManifest {
            format: MANIFEST_FORMAT,
            checkpoint_id: request.checkpoint_id,
            generation: request.generation,
            task,
            incarnation: self.incarnation.clone(),
            created_at: jiff::Timestamp::now().to_string(),
            offsets,
            engine: request.engine,
            files: entries,
            origin: request.origin,
            steps: request.steps,
            source_partitions: request.source_partitions,
        };
        let json = manifest.to_json();
        stats.bytes_uploaded += json.len() as u64;
        let location = self
            .layout
            .checkpoint_manifest(manifest.checkpoint_id, task);
        // Create-only: two owners of a task (a zombie and its successor)
        // can pick the same id, and must never overwrite each other.
        transfer::put_bytes_create(store, &location, Bytes::from(json))
            .await
            .map_err(transfer_error)?;

        // From now on the index is exactly this checkpoint's immutable files:
        // files compacted away are never reused.
        self.uploaded = manifest
            .files
            .iter()
            .filter(|f| is_immutable_file(&f.name))
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        stats.state_bytes = manifest.state_size();
        stats.duration = started.elapsed();
        Ok((manifest, stats))
    }
}

/// Writes the committed marker of a task's checkpoint: call it once the
/// Kafka transaction with the checkpoint's output and offsets committed (or,
/// at-least-once, once the offsets are committed).
pub async fn mark_committed(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    checkpoint_id: u64,
    task: u32,
) -> Result<(), TransferError> {
    transfer::put_bytes(
        store,
        &layout.checkpoint_marker(checkpoint_id, task),
        Bytes::from_static(b"{}"),
    )
    .await
}

/// One more than the highest checkpoint id with any object in the store (1
/// for an empty store): a restored worker continues the numbering, so its
/// checkpoints are newer than any left behind, committed or not.
pub async fn next_checkpoint_id(
    store: &dyn ObjectStore,
    layout: &JobLayout,
) -> Result<u64, TransferError> {
    let dir = layout.checkpoints_dir();
    let listing = store
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|source| TransferError::Store {
            op: "list",
            location: dir.clone(),
            source,
        })?;
    let highest = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(crate::checkpoint::layout::parse_checkpoint_id)
        .max()
        .unwrap_or(0);
    Ok(highest + 1)
}

/// What the store holds of each checkpoint of `task`, newest first.
pub async fn list_task_checkpoints(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
) -> Result<Vec<TaskCheckpointListing>, TransferError> {
    let objects = transfer::list(store, &layout.checkpoints_dir()).await?;
    Ok(summarize_task_checkpoints(
        objects
            .iter()
            .filter_map(|o| layout.parse_checkpoint_object(&o.location)),
        task,
    ))
}

/// What the store holds of one task's checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskCheckpointListing {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The task manifest exists (the upload completed).
    pub has_manifest: bool,
    /// The committed marker exists.
    pub has_marker: bool,
}

/// Groups parsed checkpoint objects of `task` by checkpoint id, newest first.
pub fn summarize_task_checkpoints(
    objects: impl IntoIterator<Item = crate::checkpoint::layout::CheckpointObject>,
    task: u32,
) -> Vec<TaskCheckpointListing> {
    let mut by_id: HashMap<u64, TaskCheckpointListing> = HashMap::new();
    for object in objects.into_iter().filter(|o| o.task == task) {
        let entry = by_id
            .entry(object.checkpoint_id)
            .or_insert_with(|| TaskCheckpointListing {
                checkpoint_id: object.checkpoint_id,
                ..Default::default()
            });
        match object.kind {
            CheckpointObjectKind::Manifest => entry.has_manifest = true,
            CheckpointObjectKind::Marker => entry.has_marker = true,
            CheckpointObjectKind::MetadataFile => {}
        }
    }
    let mut listings: Vec<_> = by_id.into_values().collect();
    listings.sort_by_key(|l| std::cmp::Reverse(l.checkpoint_id));
    listings
}

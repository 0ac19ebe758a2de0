//! Restoring one task's RocksDB directory from a savepoint or the newest
//! committed checkpoint.
//!
//! A checkpoint counts as committed when its committed marker is present, or
//! when the consumer group's committed offsets equal the manifest's offsets
//! (the worker died between the Kafka commit and the marker). The group's
//! offsets come through [`CommittedOffsets`], so the choice is testable
//! without a broker. Everything is per task: a savepoint taken at parallelism
//! P restores at any P'.

use std::path::{Path as LocalPath, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;

use crate::checkpoint::{DEFAULT_CONCURRENCY, list_task_checkpoints};
use crate::layout::{InvalidSavepointId, JobLayout, validate_savepoint_id};
use crate::manifest::{SourceOffset, TaskManifest};
use crate::savepoint::SavepointMetadata;
use crate::transfer::{self, TransferError, remove_dir_if_present};

/// Where a worker restores its tasks from (`WEIR_RESTORE_FROM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreSource {
    /// The newest committed checkpoint of each task (`latest`).
    Latest,
    /// A savepoint, by id.
    Savepoint(String),
    /// Start with empty state (`none`).
    None,
}

impl FromStr for RestoreSource {
    type Err = InvalidSavepointId;

    /// Parses `latest`, `none` or a savepoint id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "latest" => Ok(Self::Latest),
            "none" => Ok(Self::None),
            id => {
                validate_savepoint_id(id)?;
                Ok(Self::Savepoint(id.to_owned()))
            }
        }
    }
}

/// The consumer group's committed offsets, as far as the caller knows them.
pub trait CommittedOffsets: Sync {
    /// The committed (next) offset of a partition, if any.
    fn committed_offset(&self, topic: &str, partition: i32) -> Option<i64>;
}

impl<F> CommittedOffsets for F
where
    F: Fn(&str, i32) -> Option<i64> + Sync,
{
    fn committed_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self(topic, partition)
    }
}

/// Whether a task checkpoint counts as committed: its marker is present, or
/// it has offsets and the group's committed offsets equal every one of them.
pub fn is_committed(
    has_marker: bool,
    offsets: &[SourceOffset],
    committed: &dyn CommittedOffsets,
) -> bool {
    has_marker
        || (!offsets.is_empty()
            && offsets
                .iter()
                .all(|o| committed.committed_offset(&o.topic, o.partition) == Some(o.offset)))
}

/// Where a restored task's state came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoredFrom {
    /// A checkpoint, by id.
    Checkpoint(u64),
    /// A savepoint, by id.
    Savepoint(String),
}

/// A task's state as restored into a local directory.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredTask {
    /// The manifest: seek every partition to its offsets, give the engine
    /// its snapshot, seed the task's checkpointer with it.
    pub manifest: TaskManifest,
    /// Where it came from.
    pub from: RestoredFrom,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Files downloaded.
    pub files_downloaded: usize,
    /// Wall time of the restore.
    pub duration: Duration,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The savepoint has no `_metadata`: it does not exist or was never
    /// completed.
    #[error("savepoint {id:?} not found or incomplete: no {location}")]
    SavepointNotFound {
        /// The savepoint id.
        id: String,
        /// The metadata object looked for.
        location: Path,
    },
    /// The savepoint is complete but has no manifest for the task.
    #[error("savepoint {id:?} has no manifest for task {task} ({location})")]
    SavepointTaskMissing {
        /// The savepoint id.
        id: String,
        /// The task.
        task: u32,
        /// The manifest looked for.
        location: Path,
    },
    /// A manifest is for another task, or lists an unusable file.
    #[error("manifest {location} is not usable for task {task}: {reason}")]
    BadManifest {
        /// The manifest object.
        location: Path,
        /// The task being restored.
        task: u32,
        /// What is wrong.
        reason: String,
    },
    /// A downloaded file does not have the size the manifest says.
    #[error("{location}: expected {expected} bytes, downloaded {actual}")]
    SizeMismatch {
        /// The object.
        location: Path,
        /// The size in the manifest.
        expected: u64,
        /// The size downloaded.
        actual: u64,
    },
    /// The local task directory could not be prepared.
    #[error("task {task}: restore directory {}: {source}", dir.display())]
    LocalDir {
        /// The task.
        task: u32,
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading from the store failed.
    #[error("task {task}: {source}")]
    Transfer {
        /// The task.
        task: u32,
        /// The transfer error.
        source: TransferError,
    },
}

/// Finds the manifest to restore `task` from: the savepoint's, or the newest
/// committed checkpoint's. `None` when there is nothing to restore (source
/// `None`, or no committed checkpoint yet).
pub async fn find_restore_point(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    source: &RestoreSource,
    committed: &dyn CommittedOffsets,
) -> Result<Option<(TaskManifest, RestoredFrom)>, RestoreError> {
    let transfer_error = |source| RestoreError::Transfer { task, source };
    match source {
        RestoreSource::None => Ok(None),
        RestoreSource::Savepoint(id) => {
            let location = layout.savepoint_metadata(id);
            let metadata: Option<SavepointMetadata> = transfer::get_json(store, &location)
                .await
                .map_err(transfer_error)?;
            if metadata.is_none() {
                return Err(RestoreError::SavepointNotFound {
                    id: id.clone(),
                    location,
                });
            }
            let location = layout.savepoint_manifest(id, task);
            let manifest = transfer::get_json(store, &location)
                .await
                .map_err(transfer_error)?
                .ok_or_else(|| RestoreError::SavepointTaskMissing {
                    id: id.clone(),
                    task,
                    location: location.clone(),
                })?;
            check_manifest(&manifest, &location, task)?;
            Ok(Some((manifest, RestoredFrom::Savepoint(id.clone()))))
        }
        RestoreSource::Latest => {
            let listings = list_task_checkpoints(store, layout, task)
                .await
                .map_err(transfer_error)?;
            for listing in listings.iter().filter(|l| l.has_manifest) {
                let location = layout.checkpoint_manifest(listing.checkpoint_id, task);
                let Some(manifest): Option<TaskManifest> = transfer::get_json(store, &location)
                    .await
                    .map_err(transfer_error)?
                else {
                    // Deleted by retention since the listing.
                    continue;
                };
                if is_committed(listing.has_marker, &manifest.offsets, committed) {
                    check_manifest(&manifest, &location, task)?;
                    return Ok(Some((
                        manifest,
                        RestoredFrom::Checkpoint(listing.checkpoint_id),
                    )));
                }
            }
            Ok(None)
        }
    }
}

fn check_manifest(manifest: &TaskManifest, location: &Path, task: u32) -> Result<(), RestoreError> {
    let bad = |reason: String| RestoreError::BadManifest {
        location: location.clone(),
        task,
        reason,
    };
    if manifest.task != task {
        return Err(bad(format!("it is the manifest of task {}", manifest.task)));
    }
    for file in &manifest.files {
        let plain_name = !file.name.is_empty()
            && file.name != "."
            && file.name != ".."
            && !file.name.contains(['/', '\\']);
        if !plain_name {
            return Err(bad(format!(
                "file name {:?} is not a plain name",
                file.name
            )));
        }
    }
    Ok(())
}

/// Restores `task` into `dir` (replacing whatever is there) from `source`.
/// Files are downloaded concurrently into a sibling staging directory that
/// is renamed to `dir` once complete. `None` when there is nothing to
/// restore; `dir` is then left untouched.
pub async fn restore_task(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    source: &RestoreSource,
    committed: &dyn CommittedOffsets,
    dir: &LocalPath,
) -> Result<Option<RestoredTask>, RestoreError> {
    let started = Instant::now();
    let Some((manifest, from)) = find_restore_point(store, layout, task, source, committed).await?
    else {
        return Ok(None);
    };
    let files_downloaded = manifest.files.len();
    let bytes_downloaded = download(store, layout, &manifest, dir, DEFAULT_CONCURRENCY).await?;
    Ok(Some(RestoredTask {
        manifest,
        from,
        bytes_downloaded,
        files_downloaded,
        duration: started.elapsed(),
    }))
}

/// Downloads every file of `manifest` into `dir` (replacing it), at most
/// `concurrency` at once. Returns the bytes downloaded.
pub async fn download(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    manifest: &TaskManifest,
    dir: &LocalPath,
    concurrency: usize,
) -> Result<u64, RestoreError> {
    let task = manifest.task;
    let mut staging_name = dir.file_name().unwrap_or_default().to_os_string();
    staging_name.push(".restoring");
    let staging = dir.with_file_name(staging_name);
    let local_error = |dir: &LocalPath| {
        let dir = dir.to_path_buf();
        move |source| RestoreError::LocalDir { task, dir, source }
    };
    remove_dir_if_present(&staging).map_err(local_error(&staging))?;
    std::fs::create_dir_all(&staging).map_err(local_error(&staging))?;

    let mut jobs = Vec::with_capacity(manifest.files.len());
    for file in &manifest.files {
        let location = layout
            .resolve(&file.path)
            .ok_or_else(|| RestoreError::BadManifest {
                location: layout.checkpoint_manifest(manifest.checkpoint_id, task),
                task,
                reason: format!("file path {:?} is not a valid object path", file.path),
            })?;
        jobs.push((location, staging.join(&file.name), file.size));
    }
    let sizes: Vec<u64> = futures::stream::iter(jobs)
        .map(|(location, local, expected)| async move {
            let actual = transfer::download_file(store, &location, &local)
                .await
                .map_err(|source| RestoreError::Transfer { task, source })?;
            if actual != expected {
                return Err(RestoreError::SizeMismatch {
                    location,
                    expected,
                    actual,
                });
            }
            Ok(actual)
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;

    remove_dir_if_present(dir).map_err(local_error(dir))?;
    std::fs::rename(&staging, dir).map_err(local_error(dir))?;
    Ok(sizes.iter().sum())
}

//! Restoring one task's RocksDB directory from a savepoint or the newest
//! committed checkpoint.
//!
//! A checkpoint counts as committed only on evidence (see
//! [`crate::checkpoint::evidence`]): its marker, or the group's offsets
//! carrying its token. The choice follows Flink's initial savepoint: the
//! newest committed checkpoint of the worker's generation wins over
//! everything, so a worker restarted after a crash never goes back to the
//! savepoint it was first started from; only a job without such a
//! checkpoint uses the savepoint named by `WEIR_RESTORE_FROM` (or, for
//! `latest`, the newest committed checkpoint of any generation). Everything
//! is per task: a savepoint taken at parallelism P restores at any P'.

use std::path::{Path as LocalPath, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;

use crate::checkpoint::evidence::{Evidence, GroupOffsets, evidence};
use crate::checkpoint::layout::{InvalidSavepointId, JobLayout, validate_savepoint_id};
use crate::checkpoint::manifest::TaskManifest;
use crate::checkpoint::savepoint::SavepointMetadata;
use crate::checkpoint::transfer::{self, TransferError, remove_dir_if_present};
use crate::checkpoint::upload::{DEFAULT_CONCURRENCY, list_task_checkpoints};

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

impl RestoreSource {
    /// How manifests record the source their lineage started from:
    /// `latest`, `none` or `savepoint:<id>`.
    pub fn origin(&self) -> String {
        match self {
            RestoreSource::Latest => "latest".to_owned(),
            RestoreSource::None => "none".to_owned(),
            RestoreSource::Savepoint(id) => format!("savepoint:{id}"),
        }
    }
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
    /// For a checkpoint: how it is known to have committed (a checkpoint
    /// known by its token alone gets its marker written).
    pub evidence: Option<Evidence>,
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

/// What a task is restored from, before anything is read: the rule of the
/// module documentation as a table. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreChoice {
    /// The task's newest committed checkpoint.
    NewestCheckpoint,
    /// A savepoint, by id.
    Savepoint(String),
    /// Nothing: start with empty state.
    Nothing,
}

/// Chooses what to restore given the generation and origin of the task's
/// newest committed checkpoint (if any), the worker's generation and the
/// requested source. Pure.
pub fn choose(
    newest_committed: Option<(u64, &str)>,
    generation: u64,
    source: &RestoreSource,
) -> RestoreChoice {
    // The checkpoint continues this worker's own lineage: same generation,
    // started from the same source (a format 1 manifest records none).
    let own =
        |g: u64, origin: &str| g >= generation && (origin.is_empty() || origin == source.origin());
    match (newest_committed, source) {
        // This lineage has committed: the job has moved on from its initial
        // restore point.
        (Some((g, origin)), _) if own(g, origin) => RestoreChoice::NewestCheckpoint,
        (_, RestoreSource::Savepoint(id)) => RestoreChoice::Savepoint(id.clone()),
        (Some(_), RestoreSource::Latest) => RestoreChoice::NewestCheckpoint,
        (None, RestoreSource::Latest) | (_, RestoreSource::None) => RestoreChoice::Nothing,
    }
}

/// A manifest chosen for a restore.
#[derive(Clone, Debug, PartialEq)]
pub struct RestorePoint {
    /// The manifest.
    pub manifest: TaskManifest,
    /// Where it came from.
    pub from: RestoredFrom,
    /// For a checkpoint: how it is known to have committed.
    pub evidence: Option<Evidence>,
}

/// The newest checkpoint of `task` with evidence that it committed.
pub async fn newest_committed(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    group: &GroupOffsets,
) -> Result<Option<RestorePoint>, RestoreError> {
    let transfer_error = |source| RestoreError::Transfer { task, source };
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
        if let Some(evidence) = evidence(listing.has_marker, &manifest, group) {
            check_manifest(&manifest, &location, task)?;
            return Ok(Some(RestorePoint {
                manifest,
                from: RestoredFrom::Checkpoint(listing.checkpoint_id),
                evidence: Some(evidence),
            }));
        }
    }
    Ok(None)
}

/// Reads the manifest of `task` in complete savepoint `id`.
pub async fn savepoint_manifest(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    id: &str,
) -> Result<RestorePoint, RestoreError> {
    let transfer_error = |source| RestoreError::Transfer { task, source };
    let location = layout.savepoint_metadata(id);
    let metadata: Option<SavepointMetadata> = transfer::get_json(store, &location)
        .await
        .map_err(transfer_error)?;
    if metadata.is_none() {
        return Err(RestoreError::SavepointNotFound {
            id: id.to_owned(),
            location,
        });
    }
    let location = layout.savepoint_manifest(id, task);
    let manifest = transfer::get_json(store, &location)
        .await
        .map_err(transfer_error)?
        .ok_or_else(|| RestoreError::SavepointTaskMissing {
            id: id.to_owned(),
            task,
            location: location.clone(),
        })?;
    check_manifest(&manifest, &location, task)?;
    Ok(RestorePoint {
        manifest,
        from: RestoredFrom::Savepoint(id.to_owned()),
        evidence: None,
    })
}

/// Finds what to restore `task` from, by [`choose`]: `None` when the task
/// starts with empty state.
pub async fn find_restore_point(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    source: &RestoreSource,
    generation: u64,
    group: &GroupOffsets,
) -> Result<Option<RestorePoint>, RestoreError> {
    let newest = newest_committed(store, layout, task, group).await?;
    match choose(
        newest
            .as_ref()
            .map(|p| (p.manifest.generation, p.manifest.origin.as_str())),
        generation,
        source,
    ) {
        RestoreChoice::NewestCheckpoint => Ok(newest),
        RestoreChoice::Savepoint(id) => {
            Ok(Some(savepoint_manifest(store, layout, task, &id).await?))
        }
        RestoreChoice::Nothing => Ok(None),
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

/// Restores `task` into `dir` (replacing whatever is there) from what
/// [`find_restore_point`] chooses. Files are downloaded concurrently into a
/// sibling staging directory that is renamed to `dir` once complete. `None`
/// when there is nothing to restore; `dir` is then left untouched.
pub async fn restore_task(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    source: &RestoreSource,
    generation: u64,
    group: &GroupOffsets,
    dir: &LocalPath,
) -> Result<Option<RestoredTask>, RestoreError> {
    let started = Instant::now();
    let Some(point) = find_restore_point(store, layout, task, source, generation, group).await?
    else {
        return Ok(None);
    };
    let files_downloaded = point.manifest.files.len();
    let bytes_downloaded =
        download(store, layout, &point.manifest, dir, DEFAULT_CONCURRENCY).await?;
    Ok(Some(RestoredTask {
        manifest: point.manifest,
        from: point.from,
        evidence: point.evidence,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_savepoint_is_used_until_the_lineage_commits() {
        let sp = RestoreSource::Savepoint("sp-1".into());
        let own = "savepoint:sp-1";
        let table = [
            // A pod restarted after its generation committed resumes it,
            // even though WEIR_RESTORE_FROM still names the savepoint.
            (Some((2, own)), 2, &sp, RestoreChoice::NewestCheckpoint),
            // The rescale's first start: only the old generation committed.
            (
                Some((1, own)),
                2,
                &sp,
                RestoreChoice::Savepoint("sp-1".into()),
            ),
            (
                Some((1, "latest")),
                2,
                &sp,
                RestoreChoice::Savepoint("sp-1".into()),
            ),
            (None, 2, &sp, RestoreChoice::Savepoint("sp-1".into())),
            // A job recreated from a savepoint does not resume the old
            // job's checkpoints of the same generation.
            (
                Some((1, "latest")),
                1,
                &sp,
                RestoreChoice::Savepoint("sp-1".into()),
            ),
            // Format 1 manifests record no origin: they count as own.
            (Some((1, "")), 1, &sp, RestoreChoice::NewestCheckpoint),
            (
                Some((1, "latest")),
                2,
                &RestoreSource::Latest,
                RestoreChoice::NewestCheckpoint,
            ),
            (None, 2, &RestoreSource::Latest, RestoreChoice::Nothing),
            // A stateless start, then a crash: its own checkpoint.
            (
                Some((3, "none")),
                3,
                &RestoreSource::None,
                RestoreChoice::NewestCheckpoint,
            ),
            (
                Some((2, "none")),
                3,
                &RestoreSource::None,
                RestoreChoice::Nothing,
            ),
            (
                Some((3, "latest")),
                3,
                &RestoreSource::None,
                RestoreChoice::Nothing,
            ),
        ];
        for (newest, generation, source, expected) in table {
            assert_eq!(
                choose(newest, generation, source),
                expected,
                "{newest:?} at generation {generation} from {source:?}"
            );
        }
    }
}

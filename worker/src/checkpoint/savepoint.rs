//! Savepoints: server-side copies of completed task checkpoints under
//! `savepoints/<id>/`, standing alone so they outlive checkpoint retention.
//!
//! Each worker copies the tasks it owns with [`copy_task`] (the rewritten
//! task manifest is written after the task's files) and then calls
//! [`complete`], which writes `_metadata` once every task of the job has its
//! manifest. Whichever worker finishes last completes the savepoint; a
//! savepoint without `_metadata` is never restored. Both steps are
//! idempotent, so a failed savepoint can simply be retried.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::checkpoint::layout::{InvalidSavepointId, JobLayout, validate_savepoint_id};
use crate::checkpoint::manifest::{ManifestFile, TaskManifest};
use crate::checkpoint::transfer::{self, TransferError};

/// Copies in flight at once per task.
const COPIES_IN_FLIGHT: usize = 16;

/// `savepoints/<id>/_metadata`: the savepoint is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointMetadata {
    /// The savepoint id.
    pub id: String,
    /// Every task, with the checkpoint it was copied from.
    pub tasks: Vec<SavepointTask>,
    /// When the savepoint was completed (RFC 3339).
    pub created_at: String,
}

/// One task of a savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointTask {
    /// The task.
    pub task: u32,
    /// The checkpoint its state was copied from.
    pub checkpoint_id: u64,
    /// Its state size in bytes.
    pub state_bytes: u64,
}

/// What copying one task cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavepointTaskStats {
    /// Files copied.
    pub files_copied: usize,
    /// Bytes copied (server-side).
    pub bytes_copied: u64,
    /// The task was already copied from the same checkpoint: nothing done.
    pub already_done: bool,
}

/// Why a savepoint step failed.
#[derive(Debug, thiserror::Error)]
pub enum SavepointError {
    /// The savepoint id is not usable.
    #[error(transparent)]
    InvalidId(#[from] InvalidSavepointId),
    /// The savepoint is complete already and cannot take other state.
    #[error("savepoint {id:?} already exists (completed), it cannot be rewritten")]
    AlreadyComplete {
        /// The savepoint id.
        id: String,
    },
    /// The checkpoint to copy has no manifest for the task.
    #[error(
        "savepoint {id:?}: checkpoint {checkpoint_id} has no manifest for task {task} ({location})"
    )]
    CheckpointMissing {
        /// The savepoint id.
        id: String,
        /// The checkpoint id.
        checkpoint_id: u64,
        /// The task.
        task: u32,
        /// The manifest looked for.
        location: Path,
    },
    /// A manifest lists a path outside the job root.
    #[error("savepoint {id:?}: manifest {location} lists invalid path {path:?}")]
    BadPath {
        /// The savepoint id.
        id: String,
        /// The manifest.
        location: Path,
        /// The path.
        path: String,
    },
    /// The copy could not run or ended abnormally.
    #[error("savepoint {id:?}: the copy {reason}")]
    Copy {
        /// The savepoint id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// A store operation failed.
    #[error("savepoint {id:?}: {source}")]
    Transfer {
        /// The savepoint id.
        id: String,
        /// The transfer error.
        source: TransferError,
    },
}

/// Copies checkpoint `checkpoint_id` of `task` into savepoint `savepoint_id`
/// server-side: every file its manifest references, then the rewritten
/// manifest. Does nothing if the task was already copied from that
/// checkpoint.
pub async fn copy_task(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    checkpoint_id: u64,
    task: u32,
    savepoint_id: &str,
) -> Result<SavepointTaskStats, SavepointError> {
    validate_savepoint_id(savepoint_id)?;
    let id = savepoint_id.to_owned();
    let transfer_error = |source| SavepointError::Transfer {
        id: id.clone(),
        source,
    };
    if transfer::exists(store, &layout.savepoint_metadata(savepoint_id))
        .await
        .map_err(transfer_error)?
    {
        return Err(SavepointError::AlreadyComplete { id: id.clone() });
    }
    let target = layout.savepoint_manifest(savepoint_id, task);
    let existing: Option<TaskManifest> = transfer::get_json(store, &target)
        .await
        .map_err(transfer_error)?;
    if existing.is_some_and(|m| m.checkpoint_id == checkpoint_id) {
        return Ok(SavepointTaskStats {
            already_done: true,
            ..Default::default()
        });
    }

    let source = layout.checkpoint_manifest(checkpoint_id, task);
    let manifest: TaskManifest = transfer::get_json(store, &source)
        .await
        .map_err(transfer_error)?
        .ok_or_else(|| SavepointError::CheckpointMissing {
            id: id.clone(),
            checkpoint_id,
            task,
            location: source.clone(),
        })?;

    let mut copies = Vec::with_capacity(manifest.files.len());
    let mut files = Vec::with_capacity(manifest.files.len());
    for file in &manifest.files {
        let from = layout
            .resolve(&file.path)
            .ok_or_else(|| SavepointError::BadPath {
                id: id.clone(),
                location: source.clone(),
                path: file.path.clone(),
            })?;
        let to = layout.savepoint_file(savepoint_id, task, &file.name);
        files.push(ManifestFile {
            name: file.name.clone(),
            path: layout
                .relative(&to)
                .expect("savepoint files are under the job root"),
            size: file.size,
        });
        copies.push((from, to));
    }
    futures::stream::iter(copies)
        .map(|(from, to)| async move { transfer::copy(store, &from, &to).await })
        .buffer_unordered(COPIES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .map_err(transfer_error)?;

    let stats = SavepointTaskStats {
        files_copied: files.len(),
        bytes_copied: manifest.state_size(),
        already_done: false,
    };
    let rewritten = TaskManifest { files, ..manifest };
    transfer::put_json(store, &target, &rewritten)
        .await
        .map_err(transfer_error)?;
    Ok(stats)
}

/// Completes savepoint `savepoint_id` of a job with `tasks` tasks: if every
/// task has its manifest, writes `_metadata` (last) and returns it; `None`
/// while some task is still missing. Returns the existing metadata if the
/// savepoint is already complete.
pub async fn complete(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    savepoint_id: &str,
    tasks: u32,
) -> Result<Option<SavepointMetadata>, SavepointError> {
    validate_savepoint_id(savepoint_id)?;
    let transfer_error = |source| SavepointError::Transfer {
        id: savepoint_id.to_owned(),
        source,
    };
    if let Some(metadata) = read_metadata(store, layout, savepoint_id).await? {
        return Ok(Some(metadata));
    }
    let mut entries = Vec::with_capacity(tasks as usize);
    for task in 0..tasks {
        let manifest: Option<TaskManifest> =
            transfer::get_json(store, &layout.savepoint_manifest(savepoint_id, task))
                .await
                .map_err(transfer_error)?;
        let Some(manifest) = manifest else {
            return Ok(None);
        };
        entries.push(SavepointTask {
            task,
            checkpoint_id: manifest.checkpoint_id,
            state_bytes: manifest.state_size(),
        });
    }
    let metadata = SavepointMetadata {
        id: savepoint_id.to_owned(),
        tasks: entries,
        created_at: jiff::Timestamp::now().to_string(),
    };
    transfer::put_json(store, &layout.savepoint_metadata(savepoint_id), &metadata)
        .await
        .map_err(transfer_error)?;
    Ok(Some(metadata))
}

/// The metadata of a complete savepoint; `None` if it does not exist or is
/// not complete.
pub async fn read_metadata(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    savepoint_id: &str,
) -> Result<Option<SavepointMetadata>, SavepointError> {
    validate_savepoint_id(savepoint_id)?;
    transfer::get_json(store, &layout.savepoint_metadata(savepoint_id))
        .await
        .map_err(|source| SavepointError::Transfer {
            id: savepoint_id.to_owned(),
            source,
        })
}

/// The lowest offset of `topic` partition `t` that any complete savepoint
/// restores task `t` from, for each of `tasks` some savepoint has: records
/// of the repartition topic from there on must be kept for the savepoints
/// to stay restorable.
pub async fn lowest_offsets(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    tasks: &[u32],
    topic: &str,
) -> Result<BTreeMap<u32, i64>, TransferError> {
    let listing = store
        .list_with_delimiter(Some(&layout.savepoints_dir()))
        .await
        .map_err(|source| TransferError::Store {
            op: "list",
            location: layout.savepoints_dir(),
            source,
        })?;
    let mut lowest = BTreeMap::new();
    for id in listing.common_prefixes.iter().filter_map(|p| p.filename()) {
        if validate_savepoint_id(id).is_err()
            || !transfer::exists(store, &layout.savepoint_metadata(id)).await?
        {
            continue;
        }
        for &task in tasks {
            let manifest: Option<TaskManifest> =
                transfer::get_json(store, &layout.savepoint_manifest(id, task)).await?;
            let offset = manifest.and_then(|m| {
                m.offsets
                    .iter()
                    .find(|o| o.topic == topic)
                    .map(|o| o.offset)
            });
            if let Some(offset) = offset {
                lowest
                    .entry(task)
                    .and_modify(|o: &mut i64| *o = (*o).min(offset))
                    .or_insert(offset);
            }
        }
    }
    Ok(lowest)
}

/// Deletes a savepoint (for the savepoint history limit): `_metadata` first,
/// so a half-deleted savepoint is never restored, then everything else.
/// Returns the number of objects deleted besides `_metadata`.
pub async fn delete(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    savepoint_id: &str,
) -> Result<usize, SavepointError> {
    validate_savepoint_id(savepoint_id)?;
    let transfer_error = |source| SavepointError::Transfer {
        id: savepoint_id.to_owned(),
        source,
    };
    let metadata = layout.savepoint_metadata(savepoint_id);
    transfer::delete_all(store, vec![metadata.clone()])
        .await
        .map_err(transfer_error)?;
    let rest: Vec<Path> = transfer::list(store, &layout.savepoint_dir(savepoint_id))
        .await
        .map_err(transfer_error)?
        .into_iter()
        .map(|o| o.location)
        .filter(|l| *l != metadata)
        .collect();
    let count = rest.len();
    transfer::delete_all(store, rest)
        .await
        .map_err(transfer_error)?;
    Ok(count)
}

//! Checkpoint retention and garbage collection, per task.
//!
//! Keeps the newest `retain` committed checkpoints, every checkpoint newer
//! than the newest committed one (in flight) and every checkpoint a savepoint
//! is being copied from (pinned), deletes the other checkpoint
//! objects of the task, then deletes the task's shared (immutable) files that
//! no kept manifest references. Savepoints are self-contained copies and are
//! never touched.
//!
//! Run it for a task only from the worker that owns the task, between two of
//! its checkpoints (after [`crate::checkpoint::upload::mark_committed`]): files of a
//! checkpoint still uploading are referenced by no manifest yet.

use std::collections::{BTreeSet, HashSet};

use object_store::ObjectStore;
use object_store::path::Path;

use crate::checkpoint::layout::{CheckpointObjectKind, JobLayout};
use crate::checkpoint::manifest::TaskManifest;
use crate::checkpoint::transfer::{self, TransferError};
use crate::checkpoint::upload::{TaskCheckpointListing, summarize_task_checkpoints};

/// Which checkpoints of a task to keep and which to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Checkpoint ids kept, newest first.
    pub keep: Vec<u64>,
    /// Checkpoint ids deleted, newest first.
    pub delete: Vec<u64>,
}

/// Chooses the checkpoints of one task to keep: the newest `retain` (at
/// least 1) committed ones (manifest and marker present), everything newer
/// than the newest committed one, and the `pinned` ones. Without any
/// committed checkpoint nothing is deleted. Pure.
pub fn plan(
    listings: &[TaskCheckpointListing],
    retain: usize,
    pinned: &BTreeSet<u64>,
) -> RetentionPlan {
    let mut committed: Vec<u64> = listings
        .iter()
        .filter(|l| l.has_manifest && l.has_marker)
        .map(|l| l.checkpoint_id)
        .collect();
    committed.sort_unstable_by_key(|id| std::cmp::Reverse(*id));
    committed.truncate(retain.max(1));
    let mut all: Vec<u64> = listings.iter().map(|l| l.checkpoint_id).collect();
    all.sort_unstable_by_key(|id| std::cmp::Reverse(*id));
    all.dedup();
    let Some(&newest_committed) = committed.first() else {
        return RetentionPlan {
            keep: all,
            delete: Vec::new(),
        };
    };
    let (keep, delete) = all
        .into_iter()
        .partition(|id| *id > newest_committed || committed.contains(id) || pinned.contains(id));
    RetentionPlan { keep, delete }
}

/// The shared files not referenced by any kept manifest. Pure.
pub fn unreferenced(shared: Vec<Path>, referenced: &HashSet<Path>) -> Vec<Path> {
    shared
        .into_iter()
        .filter(|p| !referenced.contains(p))
        .collect()
}

/// What a garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Checkpoints of the task deleted.
    pub checkpoints_deleted: usize,
    /// Checkpoint objects (manifests, markers, metadata files) deleted.
    pub checkpoint_objects_deleted: usize,
    /// Shared files deleted.
    pub shared_files_deleted: usize,
    /// Bytes of shared files deleted.
    pub shared_bytes_deleted: u64,
}

/// Why a garbage collection failed (it deletes nothing it is unsure of).
#[derive(Debug, thiserror::Error)]
#[error("retention of task {task}: {source}")]
pub struct RetentionError {
    /// The task.
    pub task: u32,
    /// The transfer error.
    pub source: TransferError,
}

/// Applies retention to `task`: deletes old checkpoints (but the `pinned`
/// ones), then unreferenced shared files.
pub async fn collect_garbage(
    store: &dyn ObjectStore,
    layout: &JobLayout,
    task: u32,
    retain: usize,
    pinned: &BTreeSet<u64>,
) -> Result<GcStats, RetentionError> {
    let error = |source| RetentionError { task, source };
    let objects: Vec<(Path, crate::checkpoint::layout::CheckpointObject)> =
        transfer::list(store, &layout.checkpoints_dir())
            .await
            .map_err(error)?
            .into_iter()
            .filter_map(|o| {
                let parsed = layout.parse_checkpoint_object(&o.location)?;
                (parsed.task == task).then_some((o.location, parsed))
            })
            .collect();
    let listings = summarize_task_checkpoints(objects.iter().map(|(_, o)| o.clone()), task);
    let plan = plan(&listings, retain, pinned);

    let mut referenced = HashSet::new();
    for listing in listings
        .iter()
        .filter(|l| l.has_manifest && plan.keep.contains(&l.checkpoint_id))
    {
        let location = layout.checkpoint_manifest(listing.checkpoint_id, task);
        let manifest: Option<TaskManifest> =
            transfer::get_json(store, &location).await.map_err(error)?;
        let Some(manifest) = manifest else {
            // A kept manifest vanished: someone else is collecting; stop.
            return Ok(GcStats::default());
        };
        referenced.extend(
            manifest
                .files
                .iter()
                .filter_map(|f| layout.resolve(&f.path)),
        );
    }

    // Manifests and markers first, so a half-deleted checkpoint is never
    // mistaken for a complete one.
    let doomed = |first: bool| -> Vec<Path> {
        objects
            .iter()
            .filter(|(_, o)| plan.delete.contains(&o.checkpoint_id))
            .filter(|(_, o)| (o.kind != CheckpointObjectKind::MetadataFile) == first)
            .map(|(p, _)| p.clone())
            .collect()
    };
    let (heads, tails) = (doomed(true), doomed(false));
    let checkpoint_objects_deleted = heads.len() + tails.len();
    transfer::delete_all(store, heads).await.map_err(error)?;
    transfer::delete_all(store, tails).await.map_err(error)?;

    let shared = transfer::list(store, &layout.shared_dir(task))
        .await
        .map_err(error)?;
    let sizes: std::collections::HashMap<Path, u64> = shared
        .iter()
        .map(|o| (o.location.clone(), o.size))
        .collect();
    let garbage = unreferenced(
        shared.into_iter().map(|o| o.location).collect(),
        &referenced,
    );
    let stats = GcStats {
        checkpoints_deleted: plan.delete.len(),
        checkpoint_objects_deleted,
        shared_files_deleted: garbage.len(),
        shared_bytes_deleted: garbage.iter().map(|p| sizes[p]).sum(),
    };
    transfer::delete_all(store, garbage).await.map_err(error)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(id, manifest, marker)` rows.
    fn listings(rows: &[(u64, bool, bool)]) -> Vec<TaskCheckpointListing> {
        rows.iter()
            .map(
                |&(checkpoint_id, has_manifest, has_marker)| TaskCheckpointListing {
                    checkpoint_id,
                    has_manifest,
                    has_marker,
                },
            )
            .collect()
    }

    #[test]
    fn plan_table() {
        struct Case {
            name: &'static str,
            rows: &'static [(u64, bool, bool)],
            retain: usize,
            pinned: &'static [u64],
            keep: &'static [u64],
            delete: &'static [u64],
        }
        let cases = [
            Case {
                name: "empty",
                rows: &[],
                retain: 3,
                pinned: &[],
                keep: &[],
                delete: &[],
            },
            Case {
                name: "nothing committed yet: keep everything",
                rows: &[(1, true, false), (2, false, false)],
                retain: 1,
                pinned: &[],
                keep: &[2, 1],
                delete: &[],
            },
            Case {
                name: "keep the newest retain committed",
                rows: &[
                    (1, true, true),
                    (2, true, true),
                    (3, true, true),
                    (4, true, true),
                ],
                retain: 2,
                pinned: &[],
                keep: &[4, 3],
                delete: &[2, 1],
            },
            Case {
                name: "in-flight newer than newest committed are kept",
                rows: &[
                    (1, true, true),
                    (2, true, true),
                    (3, true, false),
                    (4, false, false),
                ],
                retain: 1,
                pinned: &[],
                keep: &[4, 3, 2],
                delete: &[1],
            },
            Case {
                name: "uncommitted between committed ones are deleted",
                rows: &[
                    (1, true, true),
                    (2, true, false),
                    (3, true, true),
                    (4, false, false),
                ],
                retain: 2,
                pinned: &[],
                keep: &[4, 3, 1],
                delete: &[2],
            },
            Case {
                name: "partial uploads older than newest committed are deleted",
                rows: &[(5, false, false), (6, true, true)],
                retain: 3,
                pinned: &[],
                keep: &[6],
                delete: &[5],
            },
            Case {
                name: "a marker without manifest is not committed",
                rows: &[(1, true, true), (2, false, true)],
                retain: 1,
                pinned: &[],
                keep: &[2, 1],
                delete: &[],
            },
            Case {
                name: "retain 0 behaves as 1",
                rows: &[(1, true, true), (2, true, true)],
                retain: 0,
                pinned: &[],
                keep: &[2],
                delete: &[1],
            },
            Case {
                name: "a checkpoint a savepoint is copied from is kept",
                rows: &[(1, true, true), (2, true, true), (3, true, true)],
                retain: 1,
                pinned: &[1],
                keep: &[3, 1],
                delete: &[2],
            },
        ];
        for case in cases {
            let pinned = case.pinned.iter().copied().collect();
            let plan = plan(&listings(case.rows), case.retain, &pinned);
            assert_eq!(plan.keep, case.keep, "{}", case.name);
            assert_eq!(plan.delete, case.delete, "{}", case.name);
        }
    }

    #[test]
    fn unreferenced_keeps_referenced_files() {
        let a = Path::from("t/shared/a.sst");
        let b = Path::from("t/shared/b.sst");
        let c = Path::from("t/shared/c.sst");
        let referenced = HashSet::from([b.clone()]);
        assert_eq!(
            unreferenced(vec![a.clone(), b, c.clone()], &referenced),
            vec![a, c]
        );
        assert!(unreferenced(vec![], &referenced).is_empty());
    }
}

//! Where a job's checkpoints, savepoints and fence live in object storage.
//!
//! Pure path building and parsing, no I/O. Every object of a job sits under
//! its job root `<prefix>/<namespace>/<name>/` (`/` occurs in neither part,
//! so two jobs never share a root):
//!
//! ```text
//! tasks/<t>/shared/<incarnation>-<file>       immutable SST/blob files
//! checkpoints/<id>/task-<t>/<inc>-<file>      MANIFEST-*, CURRENT, OPTIONS-*, ...
//! checkpoints/<id>/task-<t>.json              task manifest (written last)
//! checkpoints/<id>/task-<t>.committed         committed marker
//! savepoints/<sp>/tasks/<t>/files/<file>      self-contained copy of every file
//! savepoints/<sp>/tasks/<t>/manifest.json     rewritten task manifest
//! savepoints/<sp>/_metadata                   written once every task is copied
//! fence.json                                  {"generation": N}
//! ```
//!
//! Nothing here depends on a worker ordinal or the parallelism: state is per
//! task, so any worker can find any task's files. Checkpoint ids are written
//! zero-padded so that listings sort by id.

use object_store::path::Path;

/// File name suffix of a task manifest inside a checkpoint directory.
const MANIFEST_SUFFIX: &str = ".json";
/// File name suffix of a committed marker inside a checkpoint directory.
const MARKER_SUFFIX: &str = ".committed";
/// Longest savepoint id accepted.
const MAX_SAVEPOINT_ID_LEN: usize = 128;

/// The object store layout of one job, rooted at `<prefix>/<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLayout {
    root: Path,
}

/// What an object below `checkpoints/` is, as told by its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointObject {
    /// The checkpoint id (the directory under `checkpoints/`).
    pub checkpoint_id: u64,
    /// The task the object belongs to.
    pub task: u32,
    /// Manifest, marker or metadata file.
    pub kind: CheckpointObjectKind,
}

/// The kinds of object a checkpoint directory holds for a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointObjectKind {
    /// `task-<t>.json`, the task manifest.
    Manifest,
    /// `task-<t>.committed`, the committed marker.
    Marker,
    /// `task-<t>/<file>`, a RocksDB metadata file (MANIFEST, CURRENT, ...).
    MetadataFile,
}

impl JobLayout {
    /// The layout of job `namespace/name` under `base` (the path part of the
    /// checkpoint storage URL).
    pub fn new(base: &Path, namespace: &str, name: &str) -> Self {
        Self {
            root: base.clone().join(namespace).join(name),
        }
    }

    /// The job root, `<prefix>/<namespace>/<name>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `fence.json`, holding the generation allowed to commit.
    pub fn fence(&self) -> Path {
        self.root.clone().join("fence.json")
    }

    /// `tasks/<t>/shared`, the directory of a task's immutable files.
    pub fn shared_dir(&self, task: u32) -> Path {
        self.root
            .clone()
            .join("tasks")
            .join(task.to_string())
            .join("shared")
    }

    /// `tasks/<t>/shared/<incarnation>-<file>`.
    pub fn shared_file(&self, task: u32, incarnation: &str, file: &str) -> Path {
        self.shared_dir(task).join(format!("{incarnation}-{file}"))
    }

    /// `checkpoints`, the directory of all checkpoints.
    pub fn checkpoints_dir(&self) -> Path {
        self.root.clone().join("checkpoints")
    }

    /// `checkpoints/<id>`.
    pub fn checkpoint_dir(&self, checkpoint_id: u64) -> Path {
        self.checkpoints_dir()
            .join(format_checkpoint_id(checkpoint_id))
    }

    /// `checkpoints/<id>/task-<t>.json`, the task manifest.
    pub fn checkpoint_manifest(&self, checkpoint_id: u64, task: u32) -> Path {
        self.checkpoint_dir(checkpoint_id)
            .join(format!("task-{task}{MANIFEST_SUFFIX}"))
    }

    /// `checkpoints/<id>/task-<t>.committed`, the committed marker.
    pub fn checkpoint_marker(&self, checkpoint_id: u64, task: u32) -> Path {
        self.checkpoint_dir(checkpoint_id)
            .join(format!("task-{task}{MARKER_SUFFIX}"))
    }

    /// `checkpoints/<id>/task-<t>/<incarnation>-<file>`, a metadata file of
    /// one checkpoint (per incarnation, so that two owners of a task never
    /// overwrite each other's files).
    pub fn checkpoint_metadata_file(
        &self,
        checkpoint_id: u64,
        task: u32,
        incarnation: &str,
        file: &str,
    ) -> Path {
        self.checkpoint_dir(checkpoint_id)
            .join(format!("task-{task}"))
            .join(format!("{incarnation}-{file}"))
    }

    /// `savepoints`, the directory of all savepoints.
    pub fn savepoints_dir(&self) -> Path {
        self.root.clone().join("savepoints")
    }

    /// `savepoints/<sp>`.
    pub fn savepoint_dir(&self, savepoint_id: &str) -> Path {
        self.savepoints_dir().join(savepoint_id)
    }

    /// `savepoints/<sp>/_metadata`, written once the savepoint is complete.
    pub fn savepoint_metadata(&self, savepoint_id: &str) -> Path {
        self.savepoint_dir(savepoint_id).join("_metadata")
    }

    /// `savepoints/<sp>/tasks/<t>/manifest.json`.
    pub fn savepoint_manifest(&self, savepoint_id: &str, task: u32) -> Path {
        self.savepoint_task_dir(savepoint_id, task)
            .join("manifest.json")
    }

    /// `savepoints/<sp>/tasks/<t>/files/<file>`.
    pub fn savepoint_file(&self, savepoint_id: &str, task: u32, file: &str) -> Path {
        self.savepoint_task_dir(savepoint_id, task)
            .join("files")
            .join(file)
    }

    fn savepoint_task_dir(&self, savepoint_id: &str, task: u32) -> Path {
        self.savepoint_dir(savepoint_id)
            .join("tasks")
            .join(task.to_string())
    }

    /// `location` relative to the job root, as stored in manifests so that
    /// they stay valid whatever the storage prefix. `None` if `location` is
    /// not under the job root.
    pub fn relative(&self, location: &Path) -> Option<String> {
        let parts: Vec<String> = location
            .prefix_match(&self.root)?
            .map(|part| part.as_ref().to_owned())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    /// The absolute location of a path relative to the job root (the inverse
    /// of [`JobLayout::relative`]). `None` if `relative` is not a valid
    /// object path.
    pub fn resolve(&self, relative: &str) -> Option<Path> {
        let relative = Path::parse(relative).ok()?;
        if relative.parts().count() == 0 {
            return None;
        }
        Some(self.root.parts().chain(relative.parts()).collect())
    }

    /// Parses an object location listed under `checkpoints/`.
    pub fn parse_checkpoint_object(&self, location: &Path) -> Option<CheckpointObject> {
        let parts: Vec<String> = location
            .prefix_match(&self.checkpoints_dir())?
            .map(|part| part.as_ref().to_owned())
            .collect();
        let checkpoint_id = parse_checkpoint_id(parts.first()?)?;
        match parts.as_slice() {
            [_, file] => {
                let (stem, kind) = if let Some(stem) = file.strip_suffix(MANIFEST_SUFFIX) {
                    (stem, CheckpointObjectKind::Manifest)
                } else {
                    (
                        file.strip_suffix(MARKER_SUFFIX)?,
                        CheckpointObjectKind::Marker,
                    )
                };
                Some(CheckpointObject {
                    checkpoint_id,
                    task: parse_task_dir(stem)?,
                    kind,
                })
            }
            [_, dir, _file] => Some(CheckpointObject {
                checkpoint_id,
                task: parse_task_dir(dir)?,
                kind: CheckpointObjectKind::MetadataFile,
            }),
            _ => None,
        }
    }
}

/// The directory name of a checkpoint id: zero-padded so listings sort.
pub fn format_checkpoint_id(checkpoint_id: u64) -> String {
    format!("{checkpoint_id:020}")
}

/// Parses a checkpoint directory name written by [`format_checkpoint_id`].
pub fn parse_checkpoint_id(segment: &str) -> Option<u64> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok()
}

fn parse_task_dir(segment: &str) -> Option<u32> {
    let digits = segment.strip_prefix("task-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks that a user-visible savepoint id is one safe path segment: 1 to 128
/// characters out of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
pub fn validate_savepoint_id(id: &str) -> Result<(), InvalidSavepointId> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_SAVEPOINT_ID_LEN {
        "it is longer than 128 characters"
    } else if id == "." || id == ".." {
        "`.` and `..` are not ids"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only letters, digits, `.`, `_` and `-` are allowed"
    } else {
        return Ok(());
    };
    Err(InvalidSavepointId {
        id: id.to_owned(),
        reason,
    })
}

/// A savepoint id that cannot be used as a path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid savepoint id {id:?}: {reason}")]
pub struct InvalidSavepointId {
    /// The rejected id.
    pub id: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> JobLayout {
        JobLayout::new(&Path::from("weir/ckpt"), "prod", "clicks")
    }

    #[test]
    fn paths_follow_the_design_layout() {
        let l = layout();
        assert_eq!(l.fence().as_ref(), "weir/ckpt/prod/clicks/fence.json");
        assert_eq!(
            l.shared_file(3, "inc1", "000012.sst").as_ref(),
            "weir/ckpt/prod/clicks/tasks/3/shared/inc1-000012.sst"
        );
        assert_eq!(
            l.checkpoint_manifest(42, 3).as_ref(),
            "weir/ckpt/prod/clicks/checkpoints/00000000000000000042/task-3.json"
        );
        assert_eq!(
            l.checkpoint_marker(42, 3).as_ref(),
            "weir/ckpt/prod/clicks/checkpoints/00000000000000000042/task-3.committed"
        );
        assert_eq!(
            l.checkpoint_metadata_file(42, 3, "inc", "CURRENT").as_ref(),
            "weir/ckpt/prod/clicks/checkpoints/00000000000000000042/task-3/inc-CURRENT"
        );
        assert_eq!(
            l.savepoint_manifest("sp-1", 3).as_ref(),
            "weir/ckpt/prod/clicks/savepoints/sp-1/tasks/3/manifest.json"
        );
        assert_eq!(
            l.savepoint_file("sp-1", 3, "000012.sst").as_ref(),
            "weir/ckpt/prod/clicks/savepoints/sp-1/tasks/3/files/000012.sst"
        );
        assert_eq!(
            l.savepoint_metadata("sp-1").as_ref(),
            "weir/ckpt/prod/clicks/savepoints/sp-1/_metadata"
        );
    }

    #[test]
    fn jobs_whose_names_join_alike_never_share_a_root() {
        // Namespace `a-b` with job `c`, and namespace `a` with job `b-c`.
        let one = JobLayout::new(&Path::ROOT, "a-b", "c");
        let two = JobLayout::new(&Path::ROOT, "a", "b-c");
        assert_ne!(one.root(), two.root());
        assert!(!one.root().prefix_matches(two.root()));
        assert!(!two.root().prefix_matches(one.root()));
    }

    #[test]
    fn empty_base_puts_the_job_at_the_store_root() {
        let l = JobLayout::new(&Path::ROOT, "ns", "job");
        assert_eq!(l.fence().as_ref(), "ns/job/fence.json");
    }

    #[test]
    fn relative_and_resolve_are_inverse() {
        let l = layout();
        let p = l.shared_file(1, "abc", "000007.sst");
        let rel = l.relative(&p).unwrap();
        assert_eq!(rel, "tasks/1/shared/abc-000007.sst");
        assert_eq!(l.resolve(&rel).unwrap(), p);
        assert_eq!(l.relative(&Path::from("elsewhere/x")), None);
        assert_eq!(l.relative(l.root()), None);
        assert_eq!(l.resolve(""), None);
        assert_eq!(l.resolve("a//b"), None);
    }

    #[test]
    fn checkpoint_objects_parse_back() {
        let l = layout();
        let cases = [
            (l.checkpoint_manifest(7, 2), CheckpointObjectKind::Manifest),
            (l.checkpoint_marker(7, 2), CheckpointObjectKind::Marker),
            (
                l.checkpoint_metadata_file(7, 2, "inc", "MANIFEST-000005"),
                CheckpointObjectKind::MetadataFile,
            ),
        ];
        for (path, kind) in cases {
            assert_eq!(
                l.parse_checkpoint_object(&path),
                Some(CheckpointObject {
                    checkpoint_id: 7,
                    task: 2,
                    kind
                }),
                "{path}"
            );
        }
        for junk in [
            l.checkpoint_dir(7).join("other.txt"),
            l.checkpoints_dir().join("x1").join("task-1.json"),
            l.checkpoint_dir(7).join("task-.json"),
            l.checkpoint_dir(7).join("task-1").join("a").join("b"),
            l.fence(),
        ] {
            assert_eq!(l.parse_checkpoint_object(&junk), None, "{junk}");
        }
    }

    #[test]
    fn checkpoint_ids_sort_as_strings() {
        let a = format_checkpoint_id(9);
        let b = format_checkpoint_id(10);
        assert!(a < b);
        assert_eq!(parse_checkpoint_id(&b), Some(10));
        assert_eq!(parse_checkpoint_id("+1"), None);
        assert_eq!(parse_checkpoint_id(""), None);
    }

    #[test]
    fn savepoint_ids_are_single_safe_segments() {
        for ok in ["sp-1", "rescale_2026.11.21", "A"] {
            assert_eq!(validate_savepoint_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(validate_savepoint_id(bad).is_err(), "{bad}");
        }
    }
}

//! The task manifest: what one task's checkpoint (or savepoint) consists of.
//!
//! A manifest is the last object written for a task's checkpoint, so its
//! presence means every file it lists is in the store. File paths are
//! relative to the job root (see [`crate::checkpoint::layout::JobLayout::relative`]).

use serde::{Deserialize, Serialize};

/// Version of the manifest format written by this code. Format 2 added the
/// stateful steps and the source partition count; a format 1 manifest is
/// read with positional step ids, as it was written.
pub const MANIFEST_FORMAT: u32 = 2;

/// One task's checkpoint: offsets, engine snapshot and RocksDB files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManifest {
    /// Manifest format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The generation (fence) of the worker that wrote it.
    pub generation: u64,
    /// The task.
    pub task: u32,
    /// The incarnation of the RocksDB instance that was checkpointed.
    pub incarnation: String,
    /// When the checkpoint was taken (RFC 3339).
    pub created_at: String,
    /// The next offset to read per source topic/partition.
    pub offsets: Vec<SourceOffset>,
    /// The engine's per-task snapshot (watermarks, ...), opaque here.
    pub engine: serde_json::Value,
    /// Every file of the RocksDB checkpoint.
    pub files: Vec<ManifestFile>,
    /// What the job lineage that wrote it was first started from
    /// (`latest`, `none` or `savepoint:<id>`; empty in format 1
    /// manifests): a worker started from the same source resumes this
    /// lineage's checkpoints, one started from another does not.
    #[serde(default)]
    pub origin: String,
    /// The stateful steps whose state the checkpoint holds (empty in format
    /// 1 manifests).
    #[serde(default)]
    pub steps: Vec<StepState>,
    /// How many partitions each source topic had (0 in format 1
    /// manifests): tasks are partitions, so state written for one count
    /// cannot be read with another.
    #[serde(default)]
    pub source_partitions: u32,
}

/// The state of one stateful step, as a checkpoint records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    /// The step's stable id: its `name`, or `<operation>#<n>`, n being its
    /// rank among the steps of that operation.
    pub id: String,
    /// The byte its state keys and timers are stored under.
    pub slot: u8,
    /// The fingerprint of what the state's layout depends on (operation,
    /// window, accumulator functions): equal fingerprints read each
    /// other's state.
    pub fingerprint: String,
}

/// The next offset to read from one source partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
}

/// One file of a RocksDB checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// The file name in the RocksDB directory.
    pub name: String,
    /// Where it is stored, relative to the job root.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

impl TaskManifest {
    /// The total size of the files, in bytes.
    pub fn state_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The manifest as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Every field serializes: the engine snapshot is already a Value.
        serde_json::to_vec_pretty(self).expect("a TaskManifest always serializes")
    }
}

/// Whether a RocksDB file is immutable once written (SST and blob files),
/// and so stored once under the task's shared directory and reused by later
/// checkpoints. Everything else (MANIFEST-*, CURRENT, OPTIONS-*, WAL) changes
/// and is stored per checkpoint.
pub fn is_immutable_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_through_json() {
        let m = TaskManifest {
            format: MANIFEST_FORMAT,
            checkpoint_id: 4,
            generation: 2,
            task: 1,
            incarnation: "inc".into(),
            created_at: "2026-11-21T08:00:00Z".into(),
            offsets: vec![SourceOffset {
                topic: "in".into(),
                partition: 1,
                offset: 100,
            }],
            engine: serde_json::json!({"watermark": 5}),
            files: vec![
                ManifestFile {
                    name: "000009.sst".into(),
                    path: "tasks/1/shared/inc-000009.sst".into(),
                    size: 10,
                },
                ManifestFile {
                    name: "CURRENT".into(),
                    path: "checkpoints/4/task-1/CURRENT".into(),
                    size: 16,
                },
            ],
            origin: "savepoint:sp-1".into(),
            steps: vec![StepState {
                id: "totals".into(),
                slot: 3,
                fingerprint: "aggregate(tumbling 60000ms; count,sum)".into(),
            }],
            source_partitions: 4,
        };
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"checkpointId\": 4"), "{text}");
        let back: TaskManifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.state_size(), 26);
    }

    #[test]
    fn format_1_manifests_still_read() {
        let old = r#"{"format": 1, "checkpointId": 4, "generation": 2, "task": 1,
            "incarnation": "inc", "createdAt": "", "offsets": [], "engine": null,
            "files": []}"#;
        let m: TaskManifest = serde_json::from_str(old).unwrap();
        assert_eq!((m.format, m.steps.len(), m.source_partitions), (1, 0, 0));
    }

    #[test]
    fn only_sst_and_blob_files_are_immutable() {
        assert!(is_immutable_file("000012.sst"));
        assert!(is_immutable_file("000013.blob"));
        for name in ["CURRENT", "MANIFEST-000005", "OPTIONS-000007", "000004.log"] {
            assert!(!is_immutable_file(name), "{name}");
        }
    }
}

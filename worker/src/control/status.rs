//! The worker's self-report, served as JSON by `GET /v1/status` and read by
//! the operator (and local mode) to drive savepoints, rescales and the
//! autoscaler. Field names are camelCase on the wire.

use serde::{Deserialize, Serialize};

/// What a worker is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkerPhase {
    /// Downloading state and seeking partitions.
    #[default]
    Restoring,
    /// Consuming and processing.
    Running,
    /// Not consuming after a stop-with-savepoint, until `POST /v1/resume`.
    Stopped,
    /// Shut down (cancelled, fenced or failed).
    Finished,
}

/// The state of a savepoint request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SavepointState {
    /// Accepted, waiting for the end of the current batch.
    Pending,
    /// Checkpointing and copying.
    InProgress,
    /// Every owned task's manifest is under `savepoints/<id>/`.
    Completed,
    /// It failed; see `error`.
    Failed,
}

/// Progress of the latest savepoint request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    /// The savepoint id.
    pub id: String,
    /// Whether the worker stops consuming after it.
    pub stop: bool,
    /// Where it stands.
    pub state: SavepointState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was requested (RFC 3339).
    pub requested_at: String,
    /// When it completed or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// The latest completed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// The checkpoint id.
    pub id: String,
    /// When it completed (RFC 3339).
    pub time: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Bytes uploaded by it (new SST files and metadata).
    pub bytes_uploaded: u64,
    /// Total size of the state it references, in bytes.
    pub size_bytes: u64,
}

/// One source partition of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to process.
    pub offset: i64,
    /// The partition's high watermark when last fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
    /// High watermark minus the next offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// One task (partition number) owned by the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The task number.
    pub task: i32,
    /// Its partitions, one per source topic.
    pub partitions: Vec<PartitionStatus>,
    /// The task's event-time watermark in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
}

/// Throughput over the last few seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    /// Records read per second.
    pub input_per_sec: f64,
    /// Records written to the sink per second.
    pub output_per_sec: f64,
}

/// Everything `GET /v1/status` reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// The job's name.
    pub job: String,
    /// This worker's ordinal.
    pub ordinal: u32,
    /// Number of workers of the job.
    pub parallelism: u32,
    /// The fencing generation the worker runs with.
    pub generation: u64,
    /// What the worker is doing.
    pub phase: WorkerPhase,
    /// Whether the worker stopped consuming after a stop-with-savepoint.
    pub stopped: bool,
    /// Whether it restored and consumes (what `/readyz` reports).
    pub ready: bool,
    /// What the tasks were restored from: `savepoint:<id>`,
    /// `checkpoint:<id>` (the newest one among tasks) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Restore duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_duration_ms: Option<u64>,
    /// The owned tasks.
    pub tasks: Vec<TaskStatus>,
    /// Records per second.
    pub rates: Rates,
    /// Share of wall time spent processing rather than waiting for input.
    pub busy_ratio: f64,
    /// Records read since start.
    pub records_in: u64,
    /// Records written to the sink since start.
    pub records_out: u64,
    /// The latest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// The latest savepoint request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<SavepointStatus>,
    /// Why the worker finished or failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_camel_case() {
        let status = WorkerStatus {
            job: "j".into(),
            phase: WorkerPhase::Stopped,
            savepoint: Some(SavepointStatus {
                id: "sp".into(),
                stop: true,
                state: SavepointState::InProgress,
                error: None,
                requested_at: "t".into(),
                finished_at: None,
            }),
            ..WorkerStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "stopped");
        assert_eq!(json["busyRatio"], 0.0);
        assert_eq!(json["savepoint"]["state"], "inProgress");
        assert_eq!(json["rates"]["inputPerSec"], 0.0);
        let back: WorkerStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}

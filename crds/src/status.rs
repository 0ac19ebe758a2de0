//! The observed state of a `StreamingJob`, written by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::UpgradeMode;

/// How many entries `scalingHistory` keeps at most.
pub const MAX_SCALING_HISTORY: usize = 20;

/// How many entries `savepointHistory` keeps at most (the largest
/// spec.savepoint.historyLimit).
pub const MAX_SAVEPOINT_HISTORY: usize = 100;

/// The observed state of a StreamingJob.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingJobStatus {
    /// Where the job is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The metadata.generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of workers currently running the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,

    /// Parallelism the job is moving to, while a rescale is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parallelism: Option<i32>,

    /// Label selector of the worker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Fencing generation of the running workers; bumped at every restart
    /// so that workers of an older generation cannot commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_generation: Option<i64>,

    /// Ready, Reconciling, Stalled, Progressing and Degraded, with reasons
    /// and messages (Reconciling and Stalled follow the kstatus conventions
    /// that Flux and Argo CD read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Consumer lag of the job's group on the source topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,

    /// Records per second arriving on the source topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_rate: Option<f64>,

    /// Records per second the workers process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_rate: Option<f64>,

    /// The newest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointInfo>,

    /// The newest completed savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointInfo>,

    /// Recent savepoints, newest first (bounded by savepoint.historyLimit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub savepoint_history: Vec<SavepointInfo>,

    /// Recent parallelism changes, newest first, with the numbers behind them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub scaling_history: Vec<ScalingRecord>,

    /// The operation in flight (rescale, upgrade, savepoint, suspend), kept
    /// here so that a restarted operator resumes where it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,

    /// The spec.savepointTriggerNonce last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_savepoint_trigger_nonce: Option<i64>,

    /// The spec.restartNonce last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_restart_nonce: Option<i64>,

    /// The latest operation that failed (a savepoint that timed out or
    /// failed): the job resumed unchanged, and the operation is tried again
    /// only after a backoff. Cleared when an operation completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_operation: Option<FailedOperation>,
}

/// Where a job is in its lifecycle.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; workers are not all running yet.
    Pending,
    /// Every worker is running and consuming.
    Running,
    /// A savepoint is being taken.
    Savepointing,
    /// Workers are being restarted at a new parallelism or spec.
    Rescaling,
    /// New workers are restoring state.
    Restoring,
    /// Stopped on request (spec.suspend).
    Suspended,
    /// The job cannot run (invalid spec or repeated failures); see conditions.
    Failed,
}

/// Consumer lag of the job's group.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagStatus {
    /// Sum over all partitions of high watermark minus committed offset.
    pub total: i64,

    /// Lag of each partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionLag>,
}

/// Lag of one partition.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// High watermark minus committed offset.
    pub lag: i64,
}

/// A completed checkpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointInfo {
    /// Checkpoint id (increasing).
    pub id: u64,
    /// When it completed.
    pub time: Time,
}

/// A completed savepoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    /// Savepoint id: what spec.restoreFrom and WEIR_RESTORE_FROM name.
    pub id: String,
    /// When it completed.
    pub time: Time,
    /// Parallelism of the job that took it.
    pub parallelism: i32,
    /// Why it was taken: rescale, upgrade, suspend, periodic or manual.
    pub reason: String,
}

/// A parallelism change and the numbers behind it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRecord {
    /// When the rescale was decided.
    pub time: Time,
    /// Parallelism before.
    pub from: i32,
    /// Parallelism after.
    pub to: i32,
    /// Why, in words (for example "lag 120000 would take 9m at 1 worker").
    pub reason: String,
    /// Input rate (records/s) when decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_rate: Option<f64>,
    /// Total lag when decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// True processing rate of one worker (records/s at 100% busy) when decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_worker_rate: Option<f64>,
}

/// An operation in flight.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// What is being done.
    pub kind: OperationKind,
    /// The stage reached.
    pub stage: OperationStage,
    /// Parallelism the operation moves the job to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parallelism: Option<i32>,
    /// Id of the savepoint the operation takes and restores from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_id: Option<String>,
    /// When the operation started.
    pub started_at: Time,
    /// When the current stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_started_at: Option<Time>,
    /// When the current stage is given up (Savepointing: the workers resume
    /// unchanged) or reported as stalled (Rescaling, Restoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// Parallelism of the workers when the operation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_parallelism: Option<i32>,
    /// Fencing generation of the workers the operation starts, set when it
    /// enters Rescaling (and written to `fence.json` before they start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_generation: Option<i64>,
    /// The nonce the operation answers: spec.savepointTriggerNonce for a
    /// manual savepoint, spec.restartNonce for a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_nonce: Option<i64>,
    /// How an upgrade or a restart stops and restarts the workers (the
    /// spec.upgradeMode when it started): savepoint, lastState or stateless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_mode: Option<UpgradeMode>,
}

/// An operation that failed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedOperation {
    /// What was being done.
    pub kind: OperationKind,
    /// When it failed.
    pub time: Time,
    /// Why, in words.
    pub message: String,
    /// Consecutive failures of operations of this kind.
    pub attempts: u32,
}

/// The kind of an operation.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    /// A change of parallelism.
    Rescale,
    /// A change of spec that restarts the workers.
    Upgrade,
    /// A savepoint without a restart, for spec.savepointTriggerNonce.
    Savepoint,
    /// A savepoint without a restart, every spec.savepoint.periodicInterval.
    PeriodicSavepoint,
    /// Stop-with-savepoint for spec.suspend.
    Suspend,
    /// A restart requested through spec.restartNonce.
    Restart,
    /// Restart of a suspended job from its last savepoint.
    Resume,
}

/// A stage of the rescale and upgrade protocol.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum OperationStage {
    /// Waiting for every worker to complete the savepoint.
    Savepointing,
    /// Fencing the old generation and restarting the workers.
    Rescaling,
    /// Waiting for every new worker to restore and become ready.
    Restoring,
}

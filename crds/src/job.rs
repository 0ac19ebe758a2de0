//! The `StreamingJob` custom resource: what a user writes to run a job.
//!
//! Every doc comment on a field here is the text `kubectl explain` shows.
//! Invariants the API server can check on its own are CEL rules in
//! `x-kubernetes-validations`; everything else is checked by
//! [`crate::validate()`] and reported as a status condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::status::StreamingJobStatus;

mod autoscaler;
mod pipeline;
pub use autoscaler::AutoscalerSpec;
pub use pipeline::{
    AggregateField, AggregateFunction, AggregateStep, Contiguity, DedupeStep, FieldExpr, JoinKind,
    JoinMode, JoinStep, KeyByStep, MapStep, PatternStage, PatternStep, Step, WindowKind,
    WindowStep,
};

/// The upper bound on the number of pipeline steps, so that the API server
/// can bound the cost of the CEL rules evaluated on each step.
pub const MAX_PIPELINE_STEPS: usize = 32;

/// The highest parallelism a job may ask for.
pub const MAX_PARALLELISM: i32 = 1024;

/// A StreamingJob runs a stateful stream-processing pipeline from Kafka to
/// Kafka as a StatefulSet of Weir workers, with keyed state in RocksDB,
/// checkpoints in object storage and autoscaling on consumer lag.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamingJob",
    plural = "streamingjobs",
    shortname = "sj",
    category = "weir",
    namespaced,
    status = "StreamingJobStatus",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    doc = "A stateful stream-processing job: Kafka in, keyed state in RocksDB with checkpoints in object storage, Kafka out."
)]
// Printer columns as raw JSON: the same `type_ = ...` in two printcolumn
// attributes trips clippy's duplicated_attributes lint.
#[kube(
    printcolumn = r#"{"name":"Parallelism","type":"integer","jsonPath":".status.parallelism"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag.total"}"#,
    printcolumn = r#"{"name":"Last Savepoint","type":"date","jsonPath":".status.lastSavepoint.time"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.autoscaler) || !has(self.autoscaler.maxParallelism) || self.autoscaler.minParallelism <= self.autoscaler.maxParallelism",
        "message": "autoscaler.minParallelism must be less than or equal to autoscaler.maxParallelism",
        "fieldPath": ".autoscaler.minParallelism"
    },
    {
        "rule": "!has(self.sink) || !(self.sink.topic in self.source.topics)",
        "message": "sink.topic must not be one of source.topics",
        "fieldPath": ".sink.topic"
    }
]))]
pub struct StreamingJobSpec {
    /// Container image of the Weir worker. Defaults to the worker image the
    /// operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of each worker container (CPU, memory). Memory must
    /// cover the RocksDB block cache and write buffers configured in `state`.
    /// Unset: requests of 1 CPU and 2Gi of memory, and a memory limit of 2Gi
    /// (no CPU limit, so that a worker catching up is not throttled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Overrides applied to every worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,

    /// Where and how each worker keeps its local RocksDB state.
    #[serde(default)]
    pub state: StateSpec,

    /// How workers connect to the Kafka cluster.
    pub kafka: KafkaSpec,

    /// The input topics and how their records are read.
    pub source: SourceSpec,

    /// The ordered processing steps applied to every input record. An empty
    /// pipeline copies records from the source to the sink.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub pipeline: Vec<Step>,

    /// Where results are written.
    pub sink: SinkSpec,

    /// Topic receiving records that fail to decode or to evaluate, with the
    /// reason and the source topic, partition and offset in headers. Without
    /// it such records are counted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<TopicRef>,

    /// Topic receiving events that arrive after their window closed (later
    /// than the window's allowedLateness). Without it late events are counted
    /// and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_data: Option<TopicRef>,

    /// Processing guarantee. `exactlyOnce` writes output in Kafka
    /// transactions committed with the source offsets at every checkpoint
    /// (consumers must read with isolation.level=read_committed);
    /// `atLeastOnce` may repeat output after a failure but adds no latency.
    #[serde(default)]
    pub guarantee: Guarantee,

    /// Periodic checkpoints of state and offsets to object storage.
    pub checkpoint: CheckpointSpec,

    /// Number of worker pods. Each worker owns the partitions whose number
    /// modulo the parallelism equals its ordinal, so the useful maximum is
    /// the partition count of the source topics. Managed by the autoscaler
    /// when it is enabled; otherwise set it here or with `kubectl scale`.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,

    /// Automatic choice of the parallelism from consumer lag and throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,

    /// How the workers are restarted when a change of the spec or the image
    /// changes their pod template, or when restartNonce changes: `savepoint`
    /// stops them with a savepoint and restores it, `lastState` stops them
    /// without a savepoint and restores the newest committed checkpoint,
    /// `stateless` starts them with empty state from the committed offsets.
    /// In every mode the old workers are fenced and gone before the new ones
    /// start. Rescales and suspends always go through a savepoint.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,

    /// Savepoint settings.
    #[serde(default)]
    pub savepoint: SavepointSpec,

    /// Id of a savepoint (under this job's checkpoint storage) to start from
    /// when the job first starts (or first resumes, when created suspended).
    /// Until that savepoint is complete in storage no worker starts and the
    /// job reports Stalled with reason SavepointNotFound. Ignored once the
    /// job has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub restore_from: Option<String>,

    /// Allows a restore to drop the state of stateful steps that are no
    /// longer in the pipeline (as Flink's allowNonRestoredState). Without
    /// it, such a restore is refused with the step named, so that state is
    /// never lost by accident. A step is matched to its restored state by
    /// its `name`, or, unnamed, by its operation and its rank among the
    /// steps of that operation.
    #[serde(default)]
    pub allow_non_restored_state: bool,

    /// Stops the job with a savepoint and keeps it stopped (no worker pod)
    /// until set back to false; it then resumes from that savepoint.
    #[serde(default)]
    pub suspend: bool,

    /// Changing this number triggers a savepoint of the running job, which
    /// restarts nothing; status.observedSavepointTriggerNonce reports it
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,

    /// Changing this number restarts every worker (following upgradeMode);
    /// status.observedRestartNonce reports it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
}

fn default_parallelism() -> i32 {
    1
}

/// Overrides applied to every worker pod.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodOverrides {
    /// Extra labels on the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Node labels a worker pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Extra environment variables of the worker container. Variables named
    /// `WEIR_*` are reserved for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Service account the worker pods run as (for cloud credentials through
    /// workload identity, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Name of the priority class of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Local state of each worker.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.volume) == has(oldSelf.volume) && (!has(self.volume) || self.volume == oldSelf.volume)",
    "message": "state.volume cannot change once the job exists: a StatefulSet's volume claims are immutable (take a savepoint, delete the job and create it again with restoreFrom)",
    "fieldPath": ".volume"
}]))]
pub struct StateSpec {
    /// The volume holding RocksDB. Without it an emptyDir is used: state is
    /// restored from object storage whenever a pod starts anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<StateVolume>,

    /// Size of the RocksDB block cache shared by all tasks of a worker
    /// (a Kubernetes quantity, for example `256Mi`). Default 128Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_cache_size: Option<Quantity>,

    /// Size of each RocksDB write buffer (memtable) per task. Default 16Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_buffer_size: Option<Quantity>,
}

/// A persistent volume for worker state, one claim per worker.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateVolume {
    /// Requested size of each worker's volume, for example `10Gi`.
    pub size: Quantity,

    /// Storage class of the claims. Defaults to the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// How workers reach Kafka.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of Kafka brokers.
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: String,

    /// Extra librdkafka client properties (for example
    /// `security.protocol: SASL_SSL`, `compression.type: zstd`). Properties
    /// Weir manages itself (bootstrap.servers, group.id, transactional.id,
    /// enable.auto.commit, isolation.level, ...) are rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,

    /// Secret with the SASL credentials and TLS material of the Kafka client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<KafkaCredentials>,
}

/// Names the keys of a Secret holding Kafka client credentials.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaCredentials {
    /// Name of the Secret, in the job's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// Key of the SASL username in the Secret. Default `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,

    /// Key of the SASL password in the Secret. Default `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,

    /// Key of the PEM CA certificate in the Secret, to verify the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,

    /// Key of the PEM client certificate in the Secret (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<String>,

    /// Key of the PEM client private key in the Secret (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_key: Option<String>,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// A SASL authentication mechanism.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    /// Username and password in clear (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// The input of a job.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Input topics. Several topics must be co-partitioned (same partition
    /// count and the same key partitioning): task t reads partition t of
    /// every topic.
    #[schemars(length(min = 1, max = 16))]
    pub topics: Vec<String>,

    /// Encoding of the input records.
    #[serde(default)]
    pub format: Format,

    /// Where each record's event time comes from. Required by windows.
    /// Without it, records carry no event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeSpec>,

    /// How event-time watermarks advance.
    #[serde(default)]
    pub watermark: WatermarkSpec,

    /// Where a job with no checkpoint and no committed offsets starts
    /// reading: `earliest` or `latest`.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
}

/// A record encoding.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// One JSON object per Kafka record value.
    #[default]
    Json,
}

/// Where a record's event time comes from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTimeSpec {
    /// Top-level field of the record holding the event time. Without it the
    /// Kafka record timestamp is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub field: Option<String>,

    /// How the field is written.
    #[serde(default)]
    pub format: TimestampFormat,
}

/// How an event-time field is written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimestampFormat {
    /// An RFC 3339 string, or a number of milliseconds since the Unix epoch.
    #[default]
    Auto,
    /// An RFC 3339 string such as `2026-11-21T08:00:00Z`.
    Rfc3339,
    /// A number of milliseconds since the Unix epoch.
    EpochMillis,
    /// A number of seconds since the Unix epoch.
    EpochSeconds,
}

/// How event-time watermarks advance.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatermarkSpec {
    /// How far out of order events may arrive: a partition's watermark is
    /// the highest event time seen minus this. Default 5s.
    #[serde(default = "default_max_out_of_orderness")]
    pub max_out_of_orderness: Duration,

    /// A partition with no records for this long stops holding back the
    /// watermark of its task. Default 30s; `0s` disables idleness.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl StreamingJobSpec {
    /// The topics the job reads, each partition `t` by task `t`: the source
    /// topics, then the topic of a join step.
    pub fn input_topics(&self) -> Vec<String> {
        let mut topics = self.source.topics.clone();
        topics.extend(self.join().map(|join| join.topic.clone()));
        topics
    }

    /// The join step of the pipeline, if it has one.
    pub fn join(&self) -> Option<&JoinStep> {
        self.pipeline.iter().find_map(|step| step.join.as_ref())
    }
}

impl Default for WatermarkSpec {
    fn default() -> Self {
        Self {
            max_out_of_orderness: default_max_out_of_orderness(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_out_of_orderness() -> Duration {
    Duration::from_secs(5)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Where reading starts when there is nothing to resume from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartingOffsets {
    /// The oldest retained record of each partition.
    #[default]
    Earliest,
    /// Only records produced after the job starts.
    Latest,
}

/// Where results go.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkSpec {
    /// Output topic.
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,

    /// Encoding of the output records.
    #[serde(default)]
    pub format: Format,
}

/// A Kafka topic.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicRef {
    /// Topic name.
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
}

/// The processing guarantee.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Guarantee {
    /// Output is committed in Kafka transactions with the source offsets.
    #[default]
    ExactlyOnce,
    /// Output may be repeated after a failure.
    AtLeastOnce,
}

/// Periodic checkpoints.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "duration(self.interval) > duration('0s')",
    "message": "interval must be greater than 0",
    "fieldPath": ".interval"
}]))]
pub struct CheckpointSpec {
    /// Time between checkpoints. With exactlyOnce it is also the output
    /// latency, since output becomes visible when its checkpoint commits.
    /// Default 10s.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Duration,

    /// Object storage URL under which the job keeps checkpoints and
    /// savepoints: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, or `file:///path` for a local directory.
    #[schemars(length(min = 1, max = 2048))]
    pub storage: String,

    /// Secret whose keys become the workers' object storage environment
    /// (for example AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT,
    /// GOOGLE_SERVICE_ACCOUNT_KEY, AZURE_STORAGE_ACCOUNT_KEY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretRef>,

    /// How many completed checkpoints are kept. Default 3.
    #[serde(default = "default_retained_checkpoints")]
    #[schemars(range(min = 1, max = 100))]
    pub retain: u32,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_retained_checkpoints() -> u32 {
    3
}

/// A Secret in the job's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// How the workers are stopped and restarted for an upgrade or a restart.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UpgradeMode {
    /// Stop with a savepoint and restore from it.
    #[default]
    Savepoint,
    /// Restore from the latest completed checkpoint.
    LastState,
    /// Start with empty state from the committed offsets.
    Stateless,
}

/// Savepoint settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.timeout) > duration('0s')",
        "message": "timeout must be greater than 0",
        "fieldPath": ".timeout"
    },
    {
        "rule": "!has(self.periodicInterval) || duration(self.periodicInterval) >= duration('1m')",
        "message": "periodicInterval must be at least 1m",
        "fieldPath": ".periodicInterval"
    }
]))]
pub struct SavepointSpec {
    /// How long a savepoint may take before it is abandoned and the job
    /// resumes unchanged. Default 5m.
    #[serde(default = "default_savepoint_timeout")]
    pub timeout: Duration,

    /// Takes a savepoint this often (counted from the newest savepoint of
    /// any kind) without restarting anything, besides those before rescales,
    /// upgrades and suspends. At least 1m. Unset: no periodic savepoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_interval: Option<Duration>,

    /// How many savepoints status.savepointHistory lists. Default 10. The
    /// savepoints themselves stay in storage until deleted by hand (or with
    /// the job, with disposeOnDelete).
    #[serde(default = "default_savepoint_history")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,

    /// Deletes this job's checkpoints and savepoints from storage when the
    /// StreamingJob is deleted. Default false: they outlive the job.
    #[serde(default)]
    pub dispose_on_delete: bool,
}

impl Default for SavepointSpec {
    fn default() -> Self {
        Self {
            timeout: default_savepoint_timeout(),
            periodic_interval: None,
            history_limit: default_savepoint_history(),
            dispose_on_delete: false,
        }
    }
}

fn default_savepoint_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_savepoint_history() -> u32 {
    10
}

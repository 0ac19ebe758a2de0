//! The Kubernetes objects the operator owns for each StreamingJob, built by
//! pure functions of the job (no I/O, no clock, no randomness) so that they
//! can be snapshot-tested and dumped by `weir render`.
//!
//! Per job `NAME` the operator owns:
//! - ConfigMap `NAME-job` with the rendered, defaulted job (the worker's job file);
//! - headless Service `NAME-workers` (stable DNS names of the workers);
//! - StatefulSet `NAME` (the workers);
//! - Secret `NAME-control` (the bearer token of the workers' control API);
//! - PodDisruptionBudget `NAME`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use weir_crds::StreamingJob;

/// Label naming the application of every worker object.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label naming the job an object belongs to.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label naming the tool that manages an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_NAME`] on worker objects.
pub const WORKER_APP: &str = "weir-worker";
/// Value of [`LABEL_MANAGED_BY`], and the server-side-apply field manager.
pub const MANAGER: &str = "weir-operator";

/// The worker's HTTP port (metrics, probes, control API).
pub const HTTP_PORT: i32 = 9400;
/// Where the job file is mounted in the worker container.
pub const JOB_DIR: &str = "/etc/weir";
/// Key of the job file in the ConfigMap.
pub const JOB_FILE_KEY: &str = "job.yaml";
/// Where the RocksDB state volume is mounted.
pub const STATE_DIR: &str = "/var/lib/weir/state";
/// Where the Kafka credentials Secret is mounted, when the job names one
/// (`spec.kafka.credentialsSecret`); the workers get this path as
/// `WEIR_KAFKA_CREDENTIALS_DIR`.
///
/// The contract with the worker: the whole Secret is mounted read-only
/// (mode 0440, group [`WORKER_UID`] through the pod's fsGroup), one file
/// per Secret key, named exactly as the key. The worker reads the keys the
/// job file names in `spec.kafka.credentialsSecret`:
///
/// | file (key)                               | content                          |
/// |------------------------------------------|----------------------------------|
/// | `<usernameKey>` (default `username`)     | SASL username                    |
/// | `<passwordKey>` (default `password`)     | SASL password                    |
/// | `<caKey>` (optional)                     | PEM CA certificate of the brokers |
/// | `<certificateKey>` (optional, with key)  | PEM client certificate (mTLS)    |
/// | `<privateKeyKey>` (optional, with cert)  | PEM client private key (mTLS)    |
///
/// For example `username`, `password` and `ca.crt` under
/// `/var/run/secrets/weir/kafka/`. A key the Secret lacks is a missing file
/// (the volume is not optional: the pod does not start without the Secret,
/// and the operator reports a missing Secret as `SecretNotFound`).
pub const KAFKA_CREDENTIALS_DIR: &str = "/var/run/secrets/weir/kafka";
/// Key of the control token in the control Secret.
pub const CONTROL_TOKEN_KEY: &str = "token";
/// User and group id the workers run as (the distroless `nonroot` user).
pub const WORKER_UID: i64 = 65532;
/// Seconds a worker gets after SIGTERM to finish its batch and checkpoint.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;

/// Why objects cannot be built for a job.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The job lacks a field the objects need (name, namespace or uid).
    #[error("StreamingJob has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// The rendered job file could not be serialized.
    #[error("cannot render the job file of {job}: {source}")]
    Render {
        /// Name of the job.
        job: String,
        /// The serializer's error.
        #[source]
        source: serde_yaml::Error,
    },
}

/// Operator-wide settings that shape the built objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Worker image used when a job does not name one.
    pub worker_image: String,
}

/// The names of the objects owned by a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The job (and StatefulSet, PodDisruptionBudget) name.
    pub job: String,
    /// The namespace of the job and of every child.
    pub namespace: String,
    /// ConfigMap holding the job file.
    pub config_map: String,
    /// Headless Service of the workers.
    pub service: String,
    /// Secret holding the control token.
    pub control_secret: String,
}

impl Names {
    /// The names of the children of `job`.
    pub fn of(job: &StreamingJob) -> Result<Self, BuildError> {
        let name = job
            .metadata
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let namespace = job
            .metadata
            .namespace
            .clone()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        Ok(Self {
            config_map: format!("{name}-job"),
            service: format!("{name}-workers"),
            control_secret: format!("{name}-control"),
            job: name,
            namespace,
        })
    }
}

/// Every object the operator applies for a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The job file.
    pub config_map: ConfigMap,
    /// The workers' headless Service.
    pub service: Service,
    /// The workers.
    pub stateful_set: StatefulSet,
    /// The control token.
    pub control_secret: Secret,
    /// The disruption budget of the workers.
    pub pdb: PodDisruptionBudget,
}

/// The labels selecting the worker pods of the job `job`.
pub fn selector_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), WORKER_APP.to_owned()),
        (LABEL_INSTANCE.to_owned(), job.to_owned()),
    ])
}

/// The label selector of the worker pods as a string (`status.selector`).
pub fn selector_string(job: &str) -> String {
    selector_labels(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The labels of every object owned by the job `job`.
pub fn labels(job: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(job);
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned());
    labels
}

fn owner_reference(job: &StreamingJob) -> Result<OwnerReference, BuildError> {
    let uid = job
        .metadata
        .uid
        .clone()
        .ok_or(BuildError::MissingMetadata("uid"))?;
    Ok(OwnerReference {
        api_version: StreamingJob::api_version(&()).into_owned(),
        kind: StreamingJob::kind(&()).into_owned(),
        name: job.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn metadata(job: &StreamingJob, names: &Names, name: &str) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(&names.job)),
        owner_references: Some(vec![owner_reference(job)?]),
        ..ObjectMeta::default()
    })
}

/// The job file the workers read: the StreamingJob with its name, namespace
/// and fully defaulted spec, without status or server-set metadata.
pub fn job_file(job: &StreamingJob) -> Result<String, BuildError> {
    let mut rendered = StreamingJob::new(&job.name_any(), job.spec.clone());
    rendered.metadata.namespace = job.metadata.namespace.clone();
    serde_yaml::to_string(&rendered).map_err(|source| BuildError::Render {
        job: job.name_any(),
        source,
    })
}

/// The ConfigMap holding the job file.
pub fn config_map(job: &StreamingJob) -> Result<ConfigMap, BuildError> {
    let names = Names::of(job)?;
    Ok(ConfigMap {
        metadata: metadata(job, &names, &names.config_map)?,
        data: Some(BTreeMap::from([(JOB_FILE_KEY.to_owned(), job_file(job)?)])),
        ..ConfigMap::default()
    })
}

/// The headless Service giving every worker a stable DNS name.
pub fn service(job: &StreamingJob) -> Result<Service, BuildError> {
    let names = Names::of(job)?;
    Ok(Service {
        metadata: metadata(job, &names, &names.service)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&names.job)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The control Secret holding `token`, the bearer token the workers require
/// on their control API. The caller generates the token once and reuses it.
pub fn control_secret(job: &StreamingJob, token: &str) -> Result<Secret, BuildError> {
    let names = Names::of(job)?;
    Ok(Secret {
        metadata: metadata(job, &names, &names.control_secret)?,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            CONTROL_TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The PodDisruptionBudget letting voluntary disruptions (node drains) take
/// down one worker at a time; workers that are not ready can always be
/// evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`).
pub fn pdb(job: &StreamingJob) -> Result<PodDisruptionBudget, BuildError> {
    let names = Names::of(job)?;
    Ok(PodDisruptionBudget {
        metadata: metadata(job, &names, &names.job)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.job)),
                ..LabelSelector::default()
            }),
            // A crash-looping or never-ready worker must not block node
            // drains: unhealthy pods can always be evicted.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Pod template annotation holding [`job_file_hash`] of the job file the
/// pods were created with: a change of the job file changes the pod template,
/// so the StatefulSet reports the running workers as out of date
/// (updateStrategy OnDelete replaces them only when they are restarted).
pub const JOB_HASH_ANNOTATION: &str = "weir.dev/job-hash";

/// The job as far as the workers' behaviour depends on it: the spec without
/// the fields only the operator acts on (parallelism, suspend, restoreFrom:
/// the workers get those through their environment; upgradeMode, the
/// autoscaler, the savepoint and restart triggers, and the savepoint settings
/// other than the timeout the workers apply). A restart is an operation of
/// its own ([`crate::operation`]), not a template change. Its job file is what
/// [`JOB_HASH_ANNOTATION`] hashes, so that changing those restarts nothing.
pub fn worker_view(job: &StreamingJob) -> StreamingJob {
    let mut view = job.clone();
    let spec = &mut view.spec;
    let defaults = weir_crds::job::SavepointSpec::default();
    spec.parallelism = 1;
    spec.suspend = false;
    spec.restore_from = None;
    spec.upgrade_mode = weir_crds::job::UpgradeMode::default();
    spec.autoscaler = None;
    spec.savepoint_trigger_nonce = None;
    spec.restart_nonce = None;
    spec.savepoint = weir_crds::job::SavepointSpec {
        timeout: spec.savepoint.timeout,
        ..defaults
    };
    view
}

/// A stable 64-bit FNV-1a hash of the job file, in hex. (The standard
/// library's hasher may change between Rust releases; this may not.)
pub fn job_file_hash(job_file: &str) -> String {
    let hash = job_file
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// The number of workers the spec asks for: the parallelism, or none while
/// the job is suspended.
pub fn desired_replicas(job: &StreamingJob) -> i32 {
    if job.spec.suspend {
        0
    } else {
        job.spec.parallelism
    }
}

/// What the StatefulSet runs: how many workers, at which parallelism and
/// fencing generation, restoring from what. The spec does not set these
/// directly once the workers exist: the operation protocol
/// ([`crate::operation`]) moves them, so that a new parallelism never reaches
/// running workers without a savepoint and a fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// StatefulSet replicas.
    pub replicas: i32,
    /// `WEIR_PARALLELISM`.
    pub parallelism: i32,
    /// `WEIR_GENERATION`.
    pub generation: i64,
    /// `WEIR_RESTORE_FROM`: `latest`, `none` or a savepoint id.
    pub restore_from: String,
}

/// Environment variable holding the parallelism of the workers.
const PARALLELISM_VAR: &str = "WEIR_PARALLELISM";
/// Environment variable holding the fencing generation of the workers.
const GENERATION_VAR: &str = "WEIR_GENERATION";
/// Environment variable naming what the workers restore from.
const RESTORE_FROM_VAR: &str = "WEIR_RESTORE_FROM";

impl Rollout {
    /// What a job without workers starts with: its spec (no replicas while
    /// suspended), the generation in its status (1 at first), and
    /// `spec.restoreFrom` or else the latest checkpoint.
    pub fn initial(job: &StreamingJob) -> Self {
        Self {
            replicas: desired_replicas(job),
            parallelism: job.spec.parallelism,
            generation: job
                .status
                .as_ref()
                .and_then(|s| s.worker_generation)
                .unwrap_or(1),
            restore_from: job
                .spec
                .restore_from
                .clone()
                .unwrap_or_else(|| "latest".to_owned()),
        }
    }

    /// What an existing StatefulSet runs, read from its replicas and its
    /// worker environment; `None` when it does not carry them all.
    pub fn of(stateful_set: &StatefulSet) -> Option<Self> {
        let spec = stateful_set.spec.as_ref()?;
        let container = spec
            .template
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "worker")?;
        let var = |name: &str| {
            container
                .env
                .iter()
                .flatten()
                .find(|v| v.name == name)?
                .value
                .clone()
        };
        Some(Self {
            replicas: spec.replicas.unwrap_or(1),
            parallelism: var(PARALLELISM_VAR)?.parse().ok()?,
            generation: var(GENERATION_VAR)?.parse().ok()?,
            restore_from: var(RESTORE_FROM_VAR)?,
        })
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn worker_env(job: &StreamingJob, names: &Names, rollout: &Rollout) -> Vec<EnvVar> {
    // The ordinal (WEIR_ORDINAL) is left to the worker: it defaults to the
    // numeric suffix of HOSTNAME, which is the pod name in a StatefulSet.
    let mut vars = vec![
        env("WEIR_JOB_FILE", format!("{JOB_DIR}/{JOB_FILE_KEY}")),
        env(PARALLELISM_VAR, rollout.parallelism.to_string()),
        env(GENERATION_VAR, rollout.generation.to_string()),
        env(RESTORE_FROM_VAR, rollout.restore_from.clone()),
        env("WEIR_STATE_DIR", STATE_DIR),
        env("WEIR_HTTP_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
        EnvVar {
            name: "WEIR_CONTROL_TOKEN".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.control_secret.clone(),
                    key: CONTROL_TOKEN_KEY.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
    ];
    if job.spec.kafka.credentials_secret.is_some() {
        vars.push(env("WEIR_KAFKA_CREDENTIALS_DIR", KAFKA_CREDENTIALS_DIR));
    }
    if let Some(overrides) = &job.spec.pod_template {
        // Reserved names are rejected by validation; skipping them here keeps
        // the operator's values authoritative whatever reaches the builder.
        vars.extend(
            overrides
                .env
                .iter()
                .filter(|var| !var.name.starts_with("WEIR_"))
                .cloned(),
        );
    }
    vars
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn volumes(job: &StreamingJob, names: &Names) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "job".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: JOB_FILE_KEY.to_owned(),
                    path: JOB_FILE_KEY.to_owned(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("tmp"),
    ];
    let mut mounts = vec![
        mount("job", JOB_DIR, true),
        mount("tmp", "/tmp", false),
        mount("state", STATE_DIR, false),
    ];
    if job.spec.state.volume.is_none() {
        volumes.push(empty_dir("state"));
    }
    if let Some(credentials) = &job.spec.kafka.credentials_secret {
        volumes.push(Volume {
            name: "kafka-credentials".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(credentials.name.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("kafka-credentials", KAFKA_CREDENTIALS_DIR, true));
    }
    (volumes, mounts)
}

fn volume_claim_templates(job: &StreamingJob, names: &Names) -> Option<Vec<PersistentVolumeClaim>> {
    let volume = job.spec.state.volume.as_ref()?;
    Some(vec![PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("state".to_owned()),
            labels: Some(labels(&names.job)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    volume.size.clone(),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }])
}

fn container(
    job: &StreamingJob,
    names: &Names,
    settings: &Settings,
    rollout: &Rollout,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: "worker".to_owned(),
        image: Some(
            job.spec
                .image
                .clone()
                .unwrap_or_else(|| settings.worker_image.clone()),
        ),
        env: Some(worker_env(job, names, rollout)),
        env_from: job
            .spec
            .checkpoint
            .credentials_secret
            .as_ref()
            .map(|secret| {
                vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: secret.name.clone(),
                        optional: Some(false),
                    }),
                    ..EnvFromSource::default()
                }]
            }),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: Some(job.spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_owned()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// CPU request of a worker whose job sets no `spec.resources`.
pub const DEFAULT_CPU_REQUEST: &str = "1";
/// Memory request and limit of a worker whose job sets no `spec.resources`:
/// room for the default RocksDB block cache (128Mi) and write buffers of
/// many tasks, the Kafka client's queues and the state cache.
pub const DEFAULT_MEMORY: &str = "2Gi";

/// The resources of a worker whose job sets none: [`DEFAULT_CPU_REQUEST`]
/// and [`DEFAULT_MEMORY`] requested, the memory also as the limit (an
/// over-budget worker is restarted rather than starving its node), and no
/// CPU limit (a worker catching up uses idle CPU instead of being throttled).
pub fn default_resources() -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(DEFAULT_CPU_REQUEST)),
            ("memory".to_owned(), quantity(DEFAULT_MEMORY)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(DEFAULT_MEMORY),
        )])),
        claims: None,
    }
}

fn non_empty<K, V>(map: &BTreeMap<K, V>) -> Option<BTreeMap<K, V>>
where
    K: Clone + Ord,
    V: Clone,
{
    (!map.is_empty()).then(|| map.clone())
}

/// The StatefulSet of workers running `rollout`: one pod per unit of
/// parallelism, started in parallel, replaced only when the operator deletes
/// them (OnDelete).
pub fn stateful_set(
    job: &StreamingJob,
    settings: &Settings,
    rollout: &Rollout,
) -> Result<StatefulSet, BuildError> {
    let names = Names::of(job)?;
    let overrides = job.spec.pod_template.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(&names.job));
    let mut pod_annotations = overrides.annotations.clone();
    pod_annotations.insert(
        JOB_HASH_ANNOTATION.to_owned(),
        job_file_hash(&job_file(&worker_view(job))?),
    );
    let (volumes, mounts) = volumes(job, &names);
    Ok(StatefulSet {
        metadata: metadata(job, &names, &names.job)?,
        spec: Some(StatefulSetSpec {
            replicas: Some(rollout.replicas),
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: job.spec.state.volume.as_ref().map(|_| {
                // State is restored from object storage, so claims are
                // disposable: they go with the StatefulSet and with scale-down.
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".to_owned()),
                    when_scaled: Some("Delete".to_owned()),
                }
            }),
            revision_history_limit: Some(5),
            service_name: Some(names.service.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&names.job)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    service_account_name: overrides.service_account_name.clone(),
                    priority_class_name: overrides.priority_class_name.clone(),
                    node_selector: non_empty(&overrides.node_selector),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        fs_group: Some(WORKER_UID),
                        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container(job, &names, settings, rollout, mounts)],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: volume_claim_templates(job, &names),
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

/// Builds every child of `job`, its workers running `rollout`; `token` is
/// the control token to store.
pub fn children(
    job: &StreamingJob,
    settings: &Settings,
    rollout: &Rollout,
    token: &str,
) -> Result<Children, BuildError> {
    Ok(Children {
        config_map: config_map(job)?,
        service: service(job)?,
        stateful_set: stateful_set(job, settings, rollout)?,
        control_secret: control_secret(job, token)?,
        pdb: pdb(job)?,
    })
}

#[cfg(test)]
mod tests;

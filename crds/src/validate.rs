//! The full validation of a StreamingJob: what the CRD's schema and CEL rules
//! cannot check (expressions, pipeline order, topic names, URLs, reserved
//! names), plus everything they do check, so that `weir validate` catches
//! every problem before `kubectl apply` does.
//!
//! This is the one validation the CLI, the operator and the worker run. It is
//! pure: it reads the spec and returns problems, each naming the field path
//! and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::api::ObjectMeta;

use crate::duration::Duration;
use crate::expr;
use crate::job::{
    AggregateFunction, AggregateStep, AutoscalerSpec, CheckpointSpec, JoinKind, JoinMode, JoinStep,
    KafkaSpec, PatternStep, PodOverrides, SourceSpec, StateSpec, Step, StreamingJob,
    StreamingJobSpec, TimestampFormat, WindowKind, WindowStep,
};
use crate::quantity;
use crate::schema;

mod documents;
mod pipeline;
pub use documents::{Document, parse_documents, report};

/// The apiVersion of a StreamingJob document.
pub const API_VERSION: &str = "weir.dev/v1alpha1";

/// The kind of a StreamingJob document.
pub const KIND: &str = "StreamingJob";

/// The longest job name: pods are named `<job>-<ordinal>` and the StatefulSet
/// controller adds a 10-character revision hash to a 63-character label.
pub const MAX_NAME_LENGTH: usize = 52;

/// librdkafka properties that Weir sets itself and a job may not override.
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "transactional.id",
    "isolation.level",
    "enable.idempotence",
    "enable.partition.eof",
    "sasl.username",
    "sasl.password",
];

/// The shortest spec.savepoint.periodicInterval.
pub const MIN_PERIODIC_SAVEPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Names of fields every pattern match carries, which stage names may not
/// reuse.
pub const PATTERN_RESERVED_FIELDS: &[&str] = &["key", "match_start", "match_end"];

/// The most count windows one event may fall into (`count / slideCount`).
pub const MAX_COUNT_PANES: u32 = 1000;

/// The shortest tumbling window a `timeZone` may align (one hour), in
/// milliseconds.
pub const MIN_ZONED_WINDOW_MS: i64 = 3_600_000;

/// Names of fields every aggregate output carries, which aggregate fields
/// may not reuse.
pub const AGGREGATE_RESERVED_FIELDS: &[&str] = &["key", "window_start", "window_end", "window_seq"];

/// The versions of a row a temporal join keeps per key unless
/// `join.history` says otherwise.
pub const DEFAULT_JOIN_HISTORY: u32 = 16;

/// One thing wrong with a StreamingJob: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field, such as `spec.pipeline[2].window.size`.
    pub path: String,
    /// Why the value is wrong, such as `must be greater than 0`.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Validates a whole StreamingJob: its name and its spec.
pub fn validate_job(job: &StreamingJob) -> Vec<Problem> {
    let mut problems = Vec::new();
    match job.metadata.name.as_deref() {
        None | Some("") => problems.push(Problem::new("metadata.name", "required")),
        Some(name) => {
            if name.len() > MAX_NAME_LENGTH {
                problems.push(Problem::new(
                    "metadata.name",
                    format!("must be at most {MAX_NAME_LENGTH} characters (pods are named <job>-<ordinal>)"),
                ));
            }
            if !is_dns_label(name) {
                problems.push(Problem::new(
                    "metadata.name",
                    "must consist of lower-case letters, digits and '-', start with a letter and end with a letter or digit",
                ));
            }
        }
    }
    problems.extend(validate(&job.spec));
    problems
}

/// Validates a StreamingJob spec. Returns every problem found, each with the
/// path of the field (`spec.…`) and the reason; an empty list means valid.
pub fn validate(spec: &StreamingJobSpec) -> Vec<Problem> {
    let mut checks = Checks::default();
    // First what the API server checks (the CRD's schema), so that the
    // limits are the same everywhere; then what it cannot check.
    match serde_json::to_value(spec) {
        Ok(value) => checks
            .problems
            .extend(schema::check(schema::spec_schema(), &value, "spec")),
        Err(error) => checks.add("spec", format!("cannot be serialized: {error}")),
    }
    if let Some(image) = &spec.image
        && image.trim().is_empty()
    {
        checks.add("spec.image", "must not be empty");
    }
    if let Some(overrides) = &spec.pod_template {
        checks.pod_overrides(overrides);
    }
    if let Some(resources) = &spec.resources {
        checks.resources(resources);
    }
    checks.state(&spec.state);
    checks.kafka(&spec.kafka);
    checks.source(&spec.source);
    let has_window = checks.pipeline(spec);
    checks.topics(spec, has_window);
    checks.checkpoint(&spec.checkpoint);
    if let Some(autoscaler) = &spec.autoscaler {
        checks.autoscaler(autoscaler);
    }
    checks.positive("spec.savepoint.timeout", spec.savepoint.timeout);
    if let Some(interval) = spec.savepoint.periodic_interval
        && interval.as_std() < MIN_PERIODIC_SAVEPOINT_INTERVAL
    {
        checks.add(
            "spec.savepoint.periodicInterval",
            "must be at least 1m (a savepoint copies the whole state)",
        );
    }
    checks.problems
}

/// Whether `id` can name a savepoint (it becomes part of object paths).
pub fn is_savepoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_dns_label(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// The name part of a label key, or a label value: at most 63 characters.
fn is_qualified_name_part(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[derive(Default)]
struct Checks {
    problems: Vec<Problem>,
}

impl Checks {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn positive(&mut self, path: &str, duration: Duration) {
        if duration.is_zero() {
            self.add(path, "must be greater than 0");
        }
    }

    fn expression(&mut self, path: String, source: &str) {
        if let Err(error) = expr::compile(source) {
            self.add(path, format!("invalid expression: {error}"));
        }
    }

    fn quantity(
        &mut self,
        path: &str,
        value: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    ) {
        if let Some(value) = value {
            match quantity::to_bytes(value) {
                Ok(0) => self.add(path, "must be greater than 0"),
                Ok(_) => {}
                Err(error) => self.add(path, error.to_string()),
            }
        }
    }

    fn pod_overrides(&mut self, overrides: &PodOverrides) {
        let path = "spec.podTemplate";
        for (key, value) in &overrides.labels {
            self.label(&format!("{path}.labels[{key:?}]"), key, Some(value));
        }
        for key in overrides.annotations.keys() {
            self.label(&format!("{path}.annotations[{key:?}]"), key, None);
        }
        for (key, value) in &overrides.node_selector {
            self.label(&format!("{path}.nodeSelector[{key:?}]"), key, Some(value));
        }
        for (i, var) in overrides.env.iter().enumerate() {
            let var_path = format!("{path}.env[{i}].name");
            if var.name.starts_with("WEIR_") {
                self.add(
                    var_path,
                    format!(
                        "{} is reserved: WEIR_* variables are set by the operator",
                        var.name
                    ),
                );
            } else if !is_env_name(&var.name) {
                self.add(
                    var_path,
                    format!(
                        "{:?} is not an environment variable name (letters, digits, '_', '-', '.'; not starting with a digit)",
                        var.name
                    ),
                );
            }
        }
        for (field, name) in [
            ("serviceAccountName", &overrides.service_account_name),
            ("priorityClassName", &overrides.priority_class_name),
        ] {
            if let Some(name) = name
                && !is_dns_subdomain(name)
            {
                self.add(
                    format!("{path}.{field}"),
                    format!("{name:?} is not a valid name (lower-case letters, digits, '-' and '.', at most 253)"),
                );
            }
        }
    }

    /// A label or annotation key (a qualified name with an optional DNS
    /// prefix) and, for labels, the value.
    fn label(&mut self, path: &str, key: &str, value: Option<&String>) {
        let (prefix_ok, name) = match key.split_once('/') {
            Some((prefix, name)) => (is_dns_subdomain(prefix), name),
            None => (true, key),
        };
        if !prefix_ok || !is_qualified_name_part(name) {
            self.add(
                path,
                "is not a valid key: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            );
        }
        if let Some(value) = value
            && !(value.is_empty() || is_qualified_name_part(value))
        {
            self.add(
                path,
                format!(
                    "{value:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ),
            );
        }
    }

    fn resources(&mut self, resources: &ResourceRequirements) {
        for (field, quantities) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for (name, value) in quantities.iter().flatten() {
                if let Err(error) = quantity::to_f64(value) {
                    self.add(
                        format!("spec.resources.{field}[{name:?}]"),
                        error.to_string(),
                    );
                }
            }
        }
        let (Some(requests), Some(limits)) = (&resources.requests, &resources.limits) else {
            return;
        };
        for (name, request) in requests {
            let Some(limit) = limits.get(name) else {
                continue;
            };
            if let (Ok(request_value), Ok(limit_value)) =
                (quantity::to_f64(request), quantity::to_f64(limit))
                && request_value > limit_value
            {
                self.add(
                    format!("spec.resources.requests[{name:?}]"),
                    format!("{} is more than the limit {}", request.0, limit.0),
                );
            }
        }
    }

    fn state(&mut self, state: &StateSpec) {
        if let Some(volume) = &state.volume {
            self.quantity("spec.state.volume.size", Some(&volume.size));
        }
        self.quantity("spec.state.blockCacheSize", state.block_cache_size.as_ref());
        self.quantity(
            "spec.state.writeBufferSize",
            state.write_buffer_size.as_ref(),
        );
    }

    fn kafka(&mut self, kafka: &KafkaSpec) {
        let servers: Vec<&str> = kafka
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() && !kafka.bootstrap_servers.is_empty() {
            self.add(
                "spec.kafka.bootstrapServers",
                "must list at least one host:port",
            );
        }
        for server in servers {
            let valid = server.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                self.add(
                    "spec.kafka.bootstrapServers",
                    format!("{server:?} is not host:port"),
                );
            }
        }
        for key in kafka.properties.keys() {
            let path = format!("spec.kafka.properties[{key:?}]");
            if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                self.add(path, "is managed by Weir and cannot be set");
            } else if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
            {
                self.add(
                    path,
                    "is not a librdkafka property name (lower-case words separated by '.')",
                );
            }
        }
        if let Some(credentials) = &kafka.credentials_secret
            && !is_dns_subdomain(&credentials.name)
        {
            self.add(
                "spec.kafka.credentialsSecret.name",
                format!(
                    "{:?} is not a Secret name (lower-case letters, digits, '-' and '.')",
                    credentials.name
                ),
            );
        }
        if let Some(credentials) = &kafka.credentials_secret
            && credentials.certificate_key.is_some() != credentials.private_key_key.is_some()
        {
            self.add(
                "spec.kafka.credentialsSecret",
                "certificateKey and privateKeyKey go together (mutual TLS needs both)",
            );
        }
    }

    fn source(&mut self, source: &SourceSpec) {
        let mut seen = BTreeSet::new();
        for (i, topic) in source.topics.iter().enumerate() {
            if !is_topic_name(topic) {
                self.add(
                    format!("spec.source.topics[{i}]"),
                    format!("{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"),
                );
            }
            if !seen.insert(topic) {
                self.add(
                    format!("spec.source.topics[{i}]"),
                    format!("{topic:?} is listed twice"),
                );
            }
        }
        if let Some(event_time) = &source.event_time {
            match &event_time.field {
                Some(field) if field.trim().is_empty() => {
                    self.add("spec.source.eventTime.field", "must not be empty")
                }
                None if event_time.format != TimestampFormat::Auto => self.add(
                    "spec.source.eventTime.format",
                    "applies to a field; without a field the Kafka timestamp is used",
                ),
                _ => {}
            }
        }
    }

    fn topics(&mut self, spec: &StreamingJobSpec, has_window: bool) {
        let sources: BTreeSet<&str> = spec.source.topics.iter().map(String::as_str).collect();
        let mut outputs = vec![("spec.sink.topic", spec.sink.topic.as_str())];
        if let Some(dead_letter) = &spec.dead_letter {
            outputs.push(("spec.deadLetter.topic", dead_letter.topic.as_str()));
        }
        if let Some(late) = &spec.late_data {
            outputs.push(("spec.lateData.topic", late.topic.as_str()));
            if !has_window {
                self.add(
                    "spec.lateData",
                    "the pipeline has no event-time window, pattern, temporal or interval join, so no event can be late",
                );
            }
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (path, topic) in outputs {
            if !is_topic_name(topic) {
                self.add(
                    path,
                    format!("{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"),
                );
            }
            if sources.contains(topic) {
                self.add(path, format!("{topic:?} is also a source topic"));
            }
            if let Some(other) = seen.insert(topic, path) {
                self.add(path, format!("{topic:?} is already used by {other}"));
            }
        }
    }

    fn checkpoint(&mut self, checkpoint: &CheckpointSpec) {
        self.positive("spec.checkpoint.interval", checkpoint.interval);
        if let Err(reason) = check_storage_url(&checkpoint.storage) {
            self.add("spec.checkpoint.storage", reason);
        }
        if let Some(secret) = &checkpoint.credentials_secret
            && !is_dns_subdomain(&secret.name)
        {
            self.add(
                "spec.checkpoint.credentialsSecret.name",
                format!(
                    "{:?} is not a Secret name (lower-case letters, digits, '-' and '.')",
                    secret.name
                ),
            );
        }
    }

    fn autoscaler(&mut self, autoscaler: &AutoscalerSpec) {
        let path = "spec.autoscaler";
        if let Some(max) = autoscaler.max_parallelism
            && autoscaler.min_parallelism > max
        {
            self.add(
                format!("{path}.minParallelism"),
                format!("must be less than or equal to maxParallelism ({max})"),
            );
        }
        self.positive(
            &format!("{path}.catchUpDuration"),
            autoscaler.catch_up_duration,
        );
        self.positive(&format!("{path}.metricsWindow"), autoscaler.metrics_window);
        if let Some(idle_after) = autoscaler.idle_after {
            self.positive(&format!("{path}.idleAfter"), idle_after);
        }
    }
}

/// Checks that a checkpoint storage URL names a supported object store.
pub fn check_storage_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a URL: use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///path"
        ));
    };
    match scheme {
        "s3" | "gs" | "az" | "memory" => {
            let bucket = rest.split('/').next().unwrap_or_default();
            if bucket.is_empty() && scheme != "memory" {
                return Err(format!("{url:?} names no bucket or container"));
            }
            Ok(())
        }
        "file" => {
            if rest.starts_with('/') {
                Ok(())
            } else {
                Err(format!("{url:?} must be an absolute path: file:///path"))
            }
        }
        other => Err(format!(
            "unsupported scheme {other:?}: use s3, gs, az or file"
        )),
    }
}

//! The configuration of one worker instance: the job it runs (a
//! StreamingJob YAML file) and its identity from the environment, as the
//! operator sets it on every worker pod.
//!
//! Parsing is pure: [`WorkerConfig::from_vars`] takes the variables as a map
//! and the job file's text, so every rule is testable without touching the
//! process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use weir_crds::{StreamingJob, StreamingJobSpec};

use crate::checkpoint::layout::InvalidSavepointId;
use crate::checkpoint::restore::RestoreSource;

/// Variable naming the job file when `--job` is not given.
pub const JOB_FILE_VAR: &str = "WEIR_JOB_FILE";
/// Variable holding the worker's ordinal (its StatefulSet index).
pub const ORDINAL_VAR: &str = "WEIR_ORDINAL";
/// Variable holding the number of workers of the job.
pub const PARALLELISM_VAR: &str = "WEIR_PARALLELISM";
/// Variable holding the job's fencing generation.
pub const GENERATION_VAR: &str = "WEIR_GENERATION";
/// Variable choosing what to restore from: `latest`, `none` or a savepoint id.
pub const RESTORE_FROM_VAR: &str = "WEIR_RESTORE_FROM";
/// Variable naming the directory holding the worker's RocksDB state.
pub const STATE_DIR_VAR: &str = "WEIR_STATE_DIR";
/// Variable holding the bearer token the control API requires.
pub const CONTROL_TOKEN_VAR: &str = "WEIR_CONTROL_TOKEN";
/// Variable holding the address of the HTTP server.
pub const HTTP_ADDR_VAR: &str = "WEIR_HTTP_ADDR";
/// Variable holding the job's Kubernetes namespace.
pub const NAMESPACE_VAR: &str = "WEIR_NAMESPACE";
/// Variable naming the directory where the job's Kafka credentials Secret
/// (`spec.kafka.credentialsSecret`) is mounted, one file per Secret key.
pub const KAFKA_CREDENTIALS_DIR_VAR: &str = "WEIR_KAFKA_CREDENTIALS_DIR";
/// Variable holding the pod's host name, whose numeric suffix is the default
/// ordinal.
pub const HOSTNAME_VAR: &str = "HOSTNAME";

/// Default address of the HTTP server.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9400";
/// Default namespace when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weir/state";

/// Everything one worker instance needs to run.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Name of the StreamingJob.
    pub job_name: String,
    /// Namespace of the StreamingJob.
    pub namespace: String,
    /// The job's spec, validated.
    pub spec: StreamingJobSpec,
    /// This worker's index among the job's workers, below `parallelism`.
    pub ordinal: u32,
    /// Number of workers of the job.
    pub parallelism: u32,
    /// Fencing generation: a worker whose generation is older than the one
    /// in the job's `fence.json` refuses to commit.
    pub generation: u64,
    /// What the tasks are restored from at start.
    pub restore_from: RestoreSource,
    /// Directory holding this worker's RocksDB instances (one per task).
    pub state_dir: PathBuf,
    /// Bearer token of the control API. Without one every POST is refused.
    pub control_token: Option<String>,
    /// Address of the HTTP server (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// Directory where the Kafka credentials Secret is mounted; set when
    /// the job names one.
    pub kafka_credentials_dir: Option<PathBuf>,
    /// At most this many records per second (see
    /// [`crate::runtime::throttle`]); set by local mode (`weir run`) to
    /// stand for a pod's CPU limit, never by the operator.
    pub max_records_per_second: Option<u64>,
}

/// Why a worker configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{var} is not set: {reason}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What it is needed for.
        reason: &'static str,
    },
    /// A variable is set to something unusable.
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The job file cannot be read.
    #[error("cannot read the job file {path}: {source}")]
    ReadJob {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The job file does not hold exactly one StreamingJob.
    #[error("the job file is not a StreamingJob: {0}")]
    ParseJob(String),
    /// The job fails validation.
    #[error("the job is invalid:\n  {}", .0.join("\n  "))]
    InvalidJob(Vec<String>),
}

impl WorkerConfig {
    /// Reads the job file and builds the configuration from the process
    /// environment.
    pub fn load(job_file: &Path) -> Result<Self, ConfigError> {
        let yaml = std::fs::read_to_string(job_file).map_err(|source| ConfigError::ReadJob {
            path: job_file.to_owned(),
            source,
        })?;
        Self::from_vars(&std::env::vars().collect(), &yaml)
    }

    /// Builds the configuration from the job file's text (a StreamingJob in
    /// YAML) and the given variables. Refuses an invalid job with every
    /// problem listed.
    pub fn from_vars(vars: &HashMap<String, String>, job_yaml: &str) -> Result<Self, ConfigError> {
        let job = parse_job(job_yaml)?;
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let get = |var: &str| vars.get(var).map(|v| v.trim()).filter(|v| !v.is_empty());

        let namespace = get(NAMESPACE_VAR)
            .map(str::to_owned)
            .or_else(|| job.metadata.namespace.clone())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());

        let parallelism = match get(PARALLELISM_VAR) {
            Some(v) => parse_number::<u32>(PARALLELISM_VAR, v)?,
            None => u32::try_from(job.spec.parallelism).unwrap_or(0),
        };
        if parallelism == 0 {
            return Err(ConfigError::Invalid {
                var: PARALLELISM_VAR,
                value: parallelism.to_string(),
                reason: "the parallelism must be at least 1".to_owned(),
            });
        }

        let ordinal = match (get(ORDINAL_VAR), get(HOSTNAME_VAR)) {
            (Some(v), _) => parse_number::<u32>(ORDINAL_VAR, v)?,
            (None, Some(host)) => ordinal_from_hostname(host).ok_or_else(|| ConfigError::Invalid {
                var: HOSTNAME_VAR,
                value: host.to_owned(),
                reason: format!(
                    "{ORDINAL_VAR} is not set and the host name has no numeric suffix (as in `job-2`)"
                ),
            })?,
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: ORDINAL_VAR,
                    reason: "the worker's ordinal comes from it or from the numeric suffix of HOSTNAME",
                });
            }
        };
        if ordinal >= parallelism {
            return Err(ConfigError::Invalid {
                var: ORDINAL_VAR,
                value: ordinal.to_string(),
                reason: format!("the ordinal must be below the parallelism ({parallelism})"),
            });
        }

        let generation = match get(GENERATION_VAR) {
            Some(v) => parse_number::<u64>(GENERATION_VAR, v)?,
            None => 0,
        };
        let restore_from = match get(RESTORE_FROM_VAR) {
            Some(v) => v
                .parse()
                .map_err(|e: InvalidSavepointId| ConfigError::Invalid {
                    var: RESTORE_FROM_VAR,
                    value: v.to_owned(),
                    reason: format!("expected `latest`, `none` or a savepoint id: {e}"),
                })?,
            None => RestoreSource::Latest,
        };
        let state_dir = PathBuf::from(get(STATE_DIR_VAR).unwrap_or(DEFAULT_STATE_DIR));
        let control_token = get(CONTROL_TOKEN_VAR).map(str::to_owned);
        let addr = get(HTTP_ADDR_VAR).unwrap_or(DEFAULT_HTTP_ADDR);
        let http_addr = addr.parse().map_err(|e| ConfigError::Invalid {
            var: HTTP_ADDR_VAR,
            value: addr.to_owned(),
            reason: format!("expected host:port with an IP address ({e})"),
        })?;
        let kafka_credentials_dir = get(KAFKA_CREDENTIALS_DIR_VAR).map(PathBuf::from);
        if job.spec.kafka.credentials_secret.is_some() && kafka_credentials_dir.is_none() {
            return Err(ConfigError::Missing {
                var: KAFKA_CREDENTIALS_DIR_VAR,
                reason: "the job names a Kafka credentials Secret (spec.kafka.credentialsSecret), which the worker reads from the directory this variable names",
            });
        }

        Ok(Self {
            job_name,
            namespace,
            spec: job.spec,
            ordinal,
            parallelism,
            generation,
            restore_from,
            state_dir,
            control_token,
            http_addr,
            kafka_credentials_dir,
            max_records_per_second: None,
        })
    }

    /// The consumer group under which offsets are committed:
    /// `weir.<namespace>.<job>`. Namespaces cannot contain a dot, so the
    /// first dot after `weir.` ends the namespace and no two jobs share a
    /// group.
    pub fn group_id(&self) -> String {
        format!("weir.{}.{}", self.namespace, self.job_name)
    }

    /// The transactional id of a task's producer:
    /// `weir.<namespace>.<job>.<task>` (the task is the last part).
    pub fn transactional_id(&self, task: u32) -> String {
        format!("weir.{}.{}.{task}", self.namespace, self.job_name)
    }
}

/// Reads the single StreamingJob of a YAML text, with its defaults applied,
/// and refuses it with every problem listed when it is invalid.
pub fn parse_job(job_yaml: &str) -> Result<StreamingJob, ConfigError> {
    let mut documents = weir_crds::validate::parse_documents(job_yaml);
    if documents.len() != 1 {
        return Err(ConfigError::ParseJob(format!(
            "expected one StreamingJob document, found {}",
            documents.len()
        )));
    }
    let document = documents.remove(0);
    match (document.job, document.problems.is_empty()) {
        (Some(job), true) => Ok(job),
        _ => Err(ConfigError::InvalidJob(
            document.problems.iter().map(ToString::to_string).collect(),
        )),
    }
}

fn parse_number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: format!("expected a non-negative integer ({e})"),
    })
}

/// The ordinal of a StatefulSet pod from its host name: the digits after
/// the last `-` (`orders-3` is 3).
pub fn ordinal_from_hostname(host: &str) -> Option<u32> {
    let (_, suffix) = host.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata:
  name: orders
spec:
  kafka:
    bootstrapServers: localhost:9092
  source:
    topics: [orders]
  sink:
    topic: totals
  checkpoint:
    storage: memory://
  parallelism: 3
"#;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_come_from_hostname_and_spec() {
        let cfg = WorkerConfig::from_vars(&vars(&[("HOSTNAME", "orders-2")]), JOB).unwrap();
        assert_eq!(cfg.ordinal, 2);
        assert_eq!(cfg.parallelism, 3);
        assert_eq!(cfg.generation, 0);
        assert_eq!(cfg.restore_from, RestoreSource::Latest);
        assert_eq!(cfg.namespace, "default");
        assert_eq!(cfg.http_addr, "0.0.0.0:9400".parse().unwrap());
        assert_eq!(cfg.control_token, None);
        assert_eq!(cfg.kafka_credentials_dir, None);
        assert_eq!(cfg.group_id(), "weir.default.orders");
        assert_eq!(cfg.transactional_id(5), "weir.default.orders.5");
    }

    #[test]
    fn variables_override_defaults() {
        let cfg = WorkerConfig::from_vars(
            &vars(&[
                ("HOSTNAME", "orders-2"),
                ("WEIR_ORDINAL", "4"),
                ("WEIR_PARALLELISM", "5"),
                ("WEIR_GENERATION", "7"),
                ("WEIR_RESTORE_FROM", "sp-1"),
                ("WEIR_STATE_DIR", "/tmp/x"),
                ("WEIR_CONTROL_TOKEN", "s3cret"),
                ("WEIR_HTTP_ADDR", "127.0.0.1:0"),
                ("WEIR_NAMESPACE", "prod"),
                ("WEIR_KAFKA_CREDENTIALS_DIR", "/run/kafka"),
            ]),
            JOB,
        )
        .unwrap();
        assert_eq!((cfg.ordinal, cfg.parallelism, cfg.generation), (4, 5, 7));
        assert_eq!(cfg.restore_from, RestoreSource::Savepoint("sp-1".into()));
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.control_token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.http_addr.port(), 0);
        assert_eq!(cfg.kafka_credentials_dir, Some(PathBuf::from("/run/kafka")));
        assert_eq!(cfg.transactional_id(0), "weir.prod.orders.0");
    }

    #[test]
    fn jobs_whose_names_join_alike_never_share_kafka_names() {
        let with = |namespace: &str, job: &str| {
            let yaml = JOB.replacen("name: orders", &format!("name: {job}"), 1);
            let cfg = WorkerConfig::from_vars(
                &vars(&[("HOSTNAME", "w-0"), ("WEIR_NAMESPACE", namespace)]),
                &yaml,
            )
            .unwrap();
            (cfg.group_id(), cfg.transactional_id(1))
        };
        // Namespace `a-b` with job `c`, and namespace `a` with job `b-c`.
        let (one, two) = (with("a-b", "c"), with("a", "b-c"));
        assert_ne!(one.0, two.0);
        assert_ne!(one.1, two.1);
        assert_eq!(one.0, "weir.a-b.c");
    }

    #[test]
    fn errors_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            WorkerConfig::from_vars(&vars(pairs), JOB)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[]).starts_with("WEIR_ORDINAL is not set"));
        assert!(err(&[("HOSTNAME", "orders")]).starts_with("HOSTNAME=\"orders\" is invalid"));
        assert!(err(&[("WEIR_ORDINAL", "x")]).starts_with("WEIR_ORDINAL=\"x\" is invalid"));
        assert!(err(&[("WEIR_ORDINAL", "3")]).contains("below the parallelism (3)"));
        assert!(err(&[("WEIR_ORDINAL", "0"), ("WEIR_PARALLELISM", "0")]).contains("at least 1"));
        assert!(
            err(&[("WEIR_ORDINAL", "0"), ("WEIR_GENERATION", "-1")]).starts_with("WEIR_GENERATION")
        );
        assert!(
            err(&[("WEIR_ORDINAL", "0"), ("WEIR_RESTORE_FROM", "../x")])
                .starts_with("WEIR_RESTORE_FROM")
        );
        assert!(
            err(&[("WEIR_ORDINAL", "0"), ("WEIR_HTTP_ADDR", "localhost")])
                .starts_with("WEIR_HTTP_ADDR")
        );
    }

    #[test]
    fn a_credentials_secret_needs_its_directory() {
        let job = JOB.replace(
            "bootstrapServers: localhost:9092",
            "bootstrapServers: localhost:9092\n    credentialsSecret:\n      name: kafka-creds",
        );
        let err = WorkerConfig::from_vars(&vars(&[("WEIR_ORDINAL", "0")]), &job)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "WEIR_KAFKA_CREDENTIALS_DIR is not set: the job names a Kafka credentials Secret"
            ),
            "{err}"
        );
        let cfg = WorkerConfig::from_vars(
            &vars(&[
                ("WEIR_ORDINAL", "0"),
                ("WEIR_KAFKA_CREDENTIALS_DIR", "/var/run/secrets/weir/kafka"),
            ]),
            &job,
        )
        .unwrap();
        assert_eq!(
            cfg.kafka_credentials_dir,
            Some(PathBuf::from("/var/run/secrets/weir/kafka"))
        );
    }

    #[test]
    fn invalid_jobs_are_refused() {
        let v = vars(&[("WEIR_ORDINAL", "0")]);
        assert!(matches!(
            WorkerConfig::from_vars(&v, "").unwrap_err(),
            ConfigError::ParseJob(_)
        ));
        assert!(matches!(
            WorkerConfig::from_vars(&v, &format!("{JOB}\n---\n{JOB}")).unwrap_err(),
            ConfigError::ParseJob(_)
        ));
        let no_name = JOB.replace("name: orders", "labels: {}");
        assert!(
            WorkerConfig::from_vars(&v, &no_name)
                .unwrap_err()
                .to_string()
                .contains("metadata.name")
        );
        let bad = JOB.replace("topic: totals", "topic: orders");
        match WorkerConfig::from_vars(&v, &bad).unwrap_err() {
            ConfigError::InvalidJob(problems) => assert!(!problems.is_empty()),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn hostname_suffixes() {
        assert_eq!(ordinal_from_hostname("web-0"), Some(0));
        assert_eq!(ordinal_from_hostname("my-job-12"), Some(12));
        assert_eq!(ordinal_from_hostname("job-"), None);
        assert_eq!(ordinal_from_hostname("job-a1"), None);
        assert_eq!(ordinal_from_hostname("job"), None);
    }
}

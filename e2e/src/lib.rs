//! The kind end-to-end suite of Weir: the scenarios of
//! `e2e/tests/scenarios` run against a real cluster that `e2e/run.sh`
//! creates (kind, a one-node Kafka in KRaft mode, MinIO, the operator's Helm
//! chart with locally built images).
//!
//! This library holds what the scenarios share: the cluster's addresses
//! ([`Settings`]), Kubernetes helpers ([`cluster`]), the StreamingJobs the
//! scenarios apply ([`manifest`]) and their status ([`status`]), bounded
//! waits ([`wait`]), the load generator run as a Kubernetes Job ([`load`]),
//! Kafka ([`kafka`]) and the comparison of a job's output with the model
//! `weir run` uses ([`expected`]).
//!
//! Every scenario starts with [`enabled`]: without `WEIR_E2E=1` it says it is
//! skipped and returns, so `cargo test --workspace` passes it at once.

#![warn(missing_docs)]

pub mod cluster;
pub mod expected;
pub mod kafka;
pub mod load;
pub mod manifest;
pub mod status;
pub mod wait;

use std::sync::OnceLock;

/// Namespace of the scenarios' StreamingJobs and load generators.
pub const JOBS_NAMESPACE: &str = "analytics";
/// Namespace the operator's chart is installed in.
pub const OPERATOR_NAMESPACE: &str = "weir-system";
/// Helm release of the operator (its objects are named after it).
pub const RELEASE: &str = "weir-operator";
/// Kafka as pods reach it (the broker's internal listener).
pub const CLUSTER_KAFKA: &str = "kafka.weir-e2e.svc:9092";
/// The Secret in [`JOBS_NAMESPACE`] with the MinIO credentials and endpoint
/// (AWS_* variables the workers' S3 client reads).
pub const S3_CREDENTIALS_SECRET: &str = "weir-s3-credentials";
/// The MinIO bucket of checkpoints and savepoints.
pub const BUCKET: &str = "weir-state";

/// The line a skipped scenario prints.
pub const SKIPPED: &str = "skipped: the kind suite runs from e2e/run.sh (WEIR_E2E=1)";

/// Whether the kind suite is asked for (`WEIR_E2E=1`); otherwise prints
/// [`SKIPPED`]. Every scenario returns at once when this is false.
pub fn enabled() -> bool {
    let enabled = std::env::var("WEIR_E2E").is_ok_and(|value| value == "1");
    if !enabled {
        println!("{SKIPPED}");
    }
    enabled
}

/// What the scenarios need to know about the cluster `e2e/run.sh` made,
/// from the environment it sets (with the same defaults).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Kafka as this process reaches it: the broker's external listener
    /// behind a NodePort mapped to the host (`WEIR_E2E_KAFKA`, default
    /// `localhost:30092`).
    pub host_kafka: String,
    /// The kubeconfig context of the kind cluster (`WEIR_E2E_CONTEXT`,
    /// default `kind-weir-e2e`).
    pub context: String,
    /// The operator image, which also runs `weir generate`
    /// (`WEIR_E2E_OPERATOR_IMAGE`, default `ghcr.io/weir-dev/weir-operator:e2e`).
    pub operator_image: String,
    /// The worker image under a second tag, loaded into kind for the
    /// upgrade scenario (`WEIR_E2E_UPGRADE_IMAGE`, default
    /// `ghcr.io/weir-dev/weir-worker:e2e-b`).
    pub upgrade_image: String,
}

impl Settings {
    /// The settings from the environment.
    pub fn from_env() -> Settings {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Settings {
            host_kafka: var("WEIR_E2E_KAFKA", "localhost:30092"),
            context: var("WEIR_E2E_CONTEXT", "kind-weir-e2e"),
            operator_image: var(
                "WEIR_E2E_OPERATOR_IMAGE",
                "ghcr.io/weir-dev/weir-operator:e2e",
            ),
            upgrade_image: var(
                "WEIR_E2E_UPGRADE_IMAGE",
                "ghcr.io/weir-dev/weir-worker:e2e-b",
            ),
        }
    }
}

/// A tag unique to this test process (seconds since the epoch, base 36):
/// the scenarios name their topics and storage prefixes with it, so that a
/// scenario run again on a kept cluster (`KEEP=1`) starts from nothing.
pub fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        base36(seconds)
    })
}

fn base36(mut value: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_lowercase_base36() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(1_767_225_600), "t85s00");
    }
}

//! Kafka client set-up: client configurations, task ownership, partition
//! discovery, start-offset choice and the headers of dead-letter records.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use weir_crds::job::{KafkaSpec, StartingOffsets};

use crate::engine::record::SourcePosition;
use crate::kafka::credentials::{self, CredentialsError};

/// Header of a dead-letter record holding why it failed.
pub const ERROR_HEADER: &str = "weir.error";
/// Header of a dead-letter record holding its source topic.
pub const SOURCE_TOPIC_HEADER: &str = "weir.source.topic";
/// Header of a dead-letter record holding its source partition.
pub const SOURCE_PARTITION_HEADER: &str = "weir.source.partition";
/// Header of a dead-letter record holding its source offset.
pub const SOURCE_OFFSET_HEADER: &str = "weir.source.offset";

/// Client properties Weir sets itself and a job may not override.
const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "auto.offset.reset",
    "enable.idempotence",
];

/// Why the Kafka side of a worker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A client could not be created.
    #[error("cannot create the Kafka {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// The underlying error.
        source: rdkafka::error::KafkaError,
    },
    /// Topic metadata could not be read.
    #[error("cannot read the metadata of topic {topic}: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The underlying error.
        source: rdkafka::error::KafkaError,
    },
    /// A source topic does not exist or has no partitions.
    #[error("source topic {topic} does not exist or has no partitions")]
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// The input topics (the source topics and a join's) differ in
    /// partition count.
    #[error(
        "the input topics (source and join topics) are not co-partitioned: task t reads partition t of each, so their partition counts must be equal: {counts}"
    )]
    NotCoPartitioned {
        /// Each topic with its partition count.
        counts: String,
    },
    /// The job's Kafka credentials Secret could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// The client configuration shared by every client of a job: the brokers,
/// the job's extra properties (except those Weir manages) and the SASL and
/// TLS properties of its credentials Secret, mounted in `credentials_dir`
/// (see [`credentials::client_properties`]). The Secret's properties win
/// over extra properties of the same name; an extra `security.protocol`
/// wins over the one derived from the Secret.
pub fn base_config(
    kafka: &KafkaSpec,
    credentials_dir: Option<&Path>,
) -> Result<ClientConfig, KafkaSetupError> {
    let credentials = credentials::client_properties(kafka, credentials_dir)?;
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        if !MANAGED_PROPERTIES.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    for (key, value) in credentials {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    Ok(config)
}

/// The source consumer's configuration: manual assignment and commits under
/// `group_id`, reading committed data only.
pub fn consumer_config(base: &ClientConfig, group_id: &str) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    set_default(&mut config, "fetch.wait.max.ms", "100");
    set_default(&mut config, "queued.min.messages", "200000");
    config
}

/// A configuration for metadata and watermark queries (no group).
pub fn metadata_config(base: &ClientConfig) -> ClientConfig {
    let mut config = base.clone();
    config.set("enable.auto.commit", "false");
    config
}

/// A producer's configuration: transactional with `transactional_id`
/// (exactly-once) or idempotent (at-least-once).
///
/// The queue limits default to `queue_bytes`, the budget all output
/// producers of the worker share ([`crate::kafka::producer::QueueBudget`]),
/// instead of librdkafka's 1 GiB per producer: `queue.buffering.max.kbytes`
/// to the budget and `queue.buffering.max.messages` to the records of
/// [`crate::kafka::producer::QUEUED_RECORD_OVERHEAD`] bytes it holds. Each
/// producer keeps to its equal share of the budget itself (so the sum
/// stays within it however many producers there are); librdkafka's limits
/// are the backstop. A job setting them in `spec.kafka.properties` keeps
/// its values.
pub fn producer_config(
    base: &ClientConfig,
    transactional_id: Option<&str>,
    queue_bytes: usize,
) -> ClientConfig {
    let mut config = base.clone();
    config.set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
        // A transaction spans a checkpoint interval (see
        // `with_transaction_timeout`); a crashed owner's transaction is
        // aborted sooner anyway when the task's next owner initialises the
        // same transactional id.
        set_default(&mut config, "transaction.timeout.ms", "600000");
    }
    // 5 ms for exactly-once too. Its output is read at the commit, which
    // sends what lingers (as do the checkpoint's flush and a send waiting
    // for room, see `crate::kafka::native_send::NativeProducer::flush`), so
    // a longer linger would delay nothing a reader sees, and a producer
    // per task sends batches of one or two records per partition at 5 ms.
    // But on the mock cluster 100 ms made Flink's windowed workload (its
    // records pass the repartition topic) about 10% dearer per event, for
    // about 3% on its stateless one, inside the noise; why is not known,
    // and the mock shows read_committed readers records before their
    // commit, unlike a broker. A job may set its own.
    set_linger_default(&mut config, "5");
    set_default(&mut config, "batch.num.messages", "10000");
    set_default(&mut config, "batch.size", "1000000");
    let messages = (queue_bytes / crate::kafka::producer::QUEUED_RECORD_OVERHEAD).max(1000);
    let kbytes = (queue_bytes / 1024).clamp(1024, i32::MAX as usize);
    set_default(
        &mut config,
        "queue.buffering.max.messages",
        &messages.to_string(),
    );
    set_default(
        &mut config,
        "queue.buffering.max.kbytes",
        &kbytes.to_string(),
    );
    config
}

/// `base` with the transaction timeout of a job checkpointing every
/// `checkpoint_interval_ms` (unless the job sets one): three intervals, at
/// least a minute and at most the brokers' default maximum of 15 minutes.
/// A transaction spans one interval; the timeout bounds how long a crashed
/// owner's open transaction holds back read_committed readers (the last
/// stable offset), which with a repartition topic is every task of the job.
pub fn with_transaction_timeout(base: &ClientConfig, checkpoint_interval_ms: i64) -> ClientConfig {
    let mut config = base.clone();
    let timeout = checkpoint_interval_ms
        .saturating_mul(3)
        .clamp(60_000, 900_000);
    set_default(&mut config, "transaction.timeout.ms", &timeout.to_string());
    config
}

fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

/// Sets `linger.ms` to `value` unless the job set it under either of its
/// names (`queue.buffering.max.ms` is librdkafka's alias: with both set,
/// which one wins is not defined).
fn set_linger_default(config: &mut ClientConfig, value: &str) {
    if config.get("queue.buffering.max.ms").is_none() {
        set_default(config, "linger.ms", value);
    }
}

/// The tasks (partition numbers) worker `ordinal` of `parallelism` owns:
/// those whose number modulo the parallelism is the ordinal.
pub fn owned_tasks(partitions: i32, ordinal: u32, parallelism: u32) -> Vec<i32> {
    (0..partitions)
        .filter(|t| u32::try_from(*t).is_ok_and(|t| t % parallelism.max(1) == ordinal))
        .collect()
}

/// The partition count shared by the source topics, read from the brokers.
pub fn source_partitions(
    consumer: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<i32, KafkaSetupError> {
    let mut counts = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| KafkaSetupError::Metadata {
                topic: topic.clone(),
                source,
            })?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        counts.insert(topic.clone(), count);
    }
    co_partition_count(&counts)
}

/// The common partition count of topics, or why there is none.
pub fn co_partition_count(counts: &BTreeMap<String, usize>) -> Result<i32, KafkaSetupError> {
    if let Some((topic, _)) = counts.iter().find(|(_, c)| **c == 0) {
        return Err(KafkaSetupError::MissingTopic {
            topic: topic.clone(),
        });
    }
    let mut distinct: Vec<usize> = counts.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    match distinct.as_slice() {
        [count] => Ok(i32::try_from(*count).unwrap_or(i32::MAX)),
        _ => Err(KafkaSetupError::NotCoPartitioned {
            counts: counts
                .iter()
                .map(|(t, c)| format!("{t}={c}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Where a partition starts: the restored manifest's offset, else the
/// group's committed offset, else the earliest or latest retained offset.
/// Offsets outside the retained range are clamped into it (records before
/// the low watermark were deleted).
pub fn start_offset(
    manifest: Option<i64>,
    committed: Option<i64>,
    starting: StartingOffsets,
    low: i64,
    high: i64,
) -> i64 {
    let chosen = manifest.or(committed.filter(|o| *o >= 0));
    match chosen {
        Some(offset) => offset.clamp(low, high.max(low)),
        None => match starting {
            StartingOffsets::Earliest => low,
            StartingOffsets::Latest => high,
        },
    }
}

/// The headers of a dead-letter record: the reason and, for a source
/// record (not a window result), where it came from.
pub fn dead_letter_headers(reason: &str, source: Option<&SourcePosition>) -> OwnedHeaders {
    let headers = OwnedHeaders::new_with_capacity(4).insert(Header {
        key: ERROR_HEADER,
        value: Some(reason),
    });
    let Some(source) = source else {
        return headers;
    };
    headers
        .insert(Header {
            key: SOURCE_TOPIC_HEADER,
            value: Some(&source.topic),
        })
        .insert(Header {
            key: SOURCE_PARTITION_HEADER,
            value: Some(&source.partition.to_string()),
        })
        .insert(Header {
            key: SOURCE_OFFSET_HEADER,
            value: Some(&source.offset.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn tasks_are_spread_by_modulo() {
        assert_eq!(owned_tasks(8, 0, 3), vec![0, 3, 6]);
        assert_eq!(owned_tasks(8, 2, 3), vec![2, 5]);
        assert_eq!(owned_tasks(2, 2, 3), Vec::<i32>::new());
        assert_eq!(owned_tasks(4, 0, 1), vec![0, 1, 2, 3]);
    }

    #[test]
    fn every_task_has_exactly_one_owner() {
        for partitions in 1..20 {
            for parallelism in 1..12u32 {
                let mut all: Vec<i32> = (0..parallelism)
                    .flat_map(|o| owned_tasks(partitions, o, parallelism))
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn co_partitioning() {
        let counts = |pairs: &[(&str, usize)]| {
            pairs
                .iter()
                .map(|(t, c)| ((*t).to_owned(), *c))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            co_partition_count(&counts(&[("a", 4), ("b", 4)])).unwrap(),
            4
        );
        let err = co_partition_count(&counts(&[("a", 4), ("b", 2)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the input topics (source and join topics) are not co-partitioned: task t reads partition t of each, so their partition counts must be equal: a=4, b=2"
        );
        assert!(matches!(
            co_partition_count(&counts(&[("a", 4), ("b", 0)])),
            Err(KafkaSetupError::MissingTopic { .. })
        ));
    }

    #[test]
    fn start_offsets_prefer_manifest_then_group_then_policy() {
        use StartingOffsets::*;
        assert_eq!(start_offset(Some(50), Some(70), Earliest, 0, 100), 50);
        assert_eq!(start_offset(None, Some(70), Earliest, 0, 100), 70);
        assert_eq!(start_offset(None, Some(-1001), Latest, 0, 100), 100);
        assert_eq!(start_offset(None, None, Earliest, 10, 100), 10);
        assert_eq!(start_offset(None, None, Latest, 10, 100), 100);
        assert_eq!(start_offset(Some(5), None, Latest, 10, 100), 10);
        assert_eq!(start_offset(Some(500), None, Latest, 10, 100), 100);
    }

    #[test]
    fn managed_properties_cannot_be_overridden() {
        let kafka = KafkaSpec {
            bootstrap_servers: "b:9092".into(),
            properties: [
                ("group.id".to_owned(), "x".to_owned()),
                ("linger.ms".to_owned(), "50".to_owned()),
            ]
            .into(),
            credentials_secret: None,
        };
        let base = base_config(&kafka, None).unwrap();
        assert_eq!(base.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(base.get("group.id"), None);
        let consumer = consumer_config(&base, "weir-ns-job");
        assert_eq!(consumer.get("group.id"), Some("weir-ns-job"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        let producer = producer_config(&base, Some("weir-ns-job-3"), 64 << 20);
        assert_eq!(producer.get("transactional.id"), Some("weir-ns-job-3"));
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(
            producer_config(&base, None, 64 << 20).get("transactional.id"),
            None
        );
    }

    /// Producers linger 5 ms unless the job sets the linger, under either
    /// of its names.
    #[test]
    fn producers_linger_five_milliseconds_unless_the_job_says() {
        let linger = |base: &ClientConfig, id: Option<&str>| {
            producer_config(base, id, 64 << 20)
                .get("linger.ms")
                .map(str::to_owned)
        };
        let base = ClientConfig::new();
        assert_eq!(linger(&base, Some("weir-ns-job-0")).as_deref(), Some("5"));
        assert_eq!(linger(&base, None).as_deref(), Some("5"));
        let mut own = ClientConfig::new();
        own.set("linger.ms", "20");
        assert_eq!(linger(&own, Some("weir-ns-job-0")).as_deref(), Some("20"));
        assert_eq!(linger(&own, None).as_deref(), Some("20"));
        // Set by its alias, the job's value is the only one.
        let mut alias = ClientConfig::new();
        alias.set("queue.buffering.max.ms", "20");
        for id in [Some("weir-ns-job-0"), None] {
            let config = producer_config(&alias, id, 64 << 20);
            assert_eq!(config.get("linger.ms"), None);
            assert_eq!(config.get("queue.buffering.max.ms"), Some("20"));
        }
    }

    #[test]
    fn producer_queues_follow_the_memory_budget_unless_set() {
        let base = ClientConfig::new();
        let config = producer_config(&base, Some("t"), 128 << 20);
        assert_eq!(config.get("queue.buffering.max.kbytes"), Some("131072"));
        assert_eq!(config.get("queue.buffering.max.messages"), Some("524288"));
        let mut custom = ClientConfig::new();
        custom
            .set("queue.buffering.max.kbytes", "2048")
            .set("queue.buffering.max.messages", "5000");
        let config = producer_config(&custom, None, 128 << 20);
        assert_eq!(config.get("queue.buffering.max.kbytes"), Some("2048"));
        assert_eq!(config.get("queue.buffering.max.messages"), Some("5000"));
    }

    /// A credentials Secret with a SASL login under the default keys.
    fn sasl_secret(mechanism: weir_crds::job::SaslMechanism) -> weir_crds::job::KafkaCredentials {
        weir_crds::job::KafkaCredentials {
            name: "kafka-creds".into(),
            sasl_mechanism: Some(mechanism),
            username_key: "username".into(),
            password_key: "password".into(),
            ca_key: None,
            certificate_key: None,
            private_key_key: None,
        }
    }

    #[test]
    fn the_credentials_secret_wins_over_properties() {
        use weir_crds::job::SaslMechanism;

        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("username"), "alice\n").unwrap();
        std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
        let kafka = KafkaSpec {
            bootstrap_servers: "b:9092".into(),
            properties: [
                ("sasl.mechanism", "OAUTHBEARER"),
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", "probe"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
            credentials_secret: Some(sasl_secret(SaslMechanism::ScramSha256)),
        };
        let base = base_config(&kafka, Some(dir.path())).unwrap();
        assert_eq!(base.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(base.get("sasl.username"), Some("alice"));
        assert_eq!(base.get("sasl.password"), Some("s3cret"));
        assert_eq!(base.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(base.get("ssl.ca.location"), Some("probe"));
        assert_eq!(
            producer_config(&base, None, 64 << 20).get("sasl.username"),
            Some("alice")
        );
        assert!(matches!(
            base_config(&kafka, None),
            Err(KafkaSetupError::Credentials(
                CredentialsError::NoDirectory { .. }
            ))
        ));
    }

    #[test]
    fn librdkafka_accepts_the_credential_properties() {
        use rdkafka::config::FromClientConfig;
        use weir_crds::job::SaslMechanism;

        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("username"), "alice").unwrap();
        std::fs::write(dir.path().join("password"), "s3cret").unwrap();
        for mechanism in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ] {
            let kafka = KafkaSpec {
                bootstrap_servers: "localhost:9092".into(),
                properties: BTreeMap::new(),
                credentials_secret: Some(sasl_secret(mechanism)),
            };
            let base = base_config(&kafka, Some(dir.path())).unwrap();
            assert_eq!(base.get("security.protocol"), Some("SASL_PLAINTEXT"));
            if let Err(e) = BaseConsumer::from_config(&metadata_config(&base)) {
                panic!("{mechanism:?}: {e}");
            }
        }
    }

    #[test]
    fn dead_letter_headers_name_the_source() {
        let pairs = |headers: OwnedHeaders| -> Vec<(String, String)> {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        };
        let source = SourcePosition {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
        };
        assert_eq!(
            pairs(dead_letter_headers("window", None)),
            vec![("weir.error".to_owned(), "window".to_owned())]
        );
        assert_eq!(
            pairs(dead_letter_headers("bad json", Some(&source))),
            [
                ("weir.error", "bad json"),
                ("weir.source.topic", "orders"),
                ("weir.source.partition", "3"),
                ("weir.source.offset", "42")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn transaction_timeouts_follow_the_checkpoint_interval() {
        let base = ClientConfig::new();
        let timeout = |interval| {
            with_transaction_timeout(&base, interval)
                .get("transaction.timeout.ms")
                .map(str::to_owned)
        };
        assert_eq!(timeout(10_000).as_deref(), Some("60000"));
        assert_eq!(timeout(120_000).as_deref(), Some("360000"));
        assert_eq!(timeout(3_600_000).as_deref(), Some("900000"));
        let mut custom = ClientConfig::new();
        custom.set("transaction.timeout.ms", "5000");
        assert_eq!(
            with_transaction_timeout(&custom, 10_000).get("transaction.timeout.ms"),
            Some("5000")
        );
        assert_eq!(
            producer_config(
                &with_transaction_timeout(&base, 10_000),
                Some("t"),
                64 << 20
            )
            .get("transaction.timeout.ms"),
            Some("60000")
        );
    }
}

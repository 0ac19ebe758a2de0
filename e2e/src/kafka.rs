//! Kafka from the host, through the broker's external listener: the
//! scenarios' topics, every record of a source topic, the committed records
//! of a sink (read_committed), a job's consumer lag, and records produced
//! from the test.
//!
//! Reading is blocking (librdkafka's consumer); the scenarios call it
//! through [`tokio::task::spawn_blocking`] (see [`crate::expected`]).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use weir_operator::local::kafka::LocalKafka;
use weir_operator::local::model::OutputCounts;

/// How long a metadata or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest a full read of a topic may take.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// One record of a source topic, as the job read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The Kafka key.
    pub key: Option<Vec<u8>>,
    /// The JSON value.
    pub value: Vec<u8>,
    /// The Kafka timestamp (milliseconds since the epoch).
    pub timestamp_ms: i64,
}

/// The broker as the test process reaches it.
#[derive(Clone, Debug)]
pub struct Kafka {
    bootstrap: String,
}

impl Kafka {
    /// The broker at `bootstrap`.
    pub fn new(bootstrap: &str) -> Kafka {
        Kafka {
            bootstrap: bootstrap.to_owned(),
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            // kind maps the broker's port on 127.0.0.1 only: never try ::1.
            .set("broker.address.family", "v4");
        config
    }

    /// Creates the `(topic, partitions)` that do not exist yet (replication
    /// factor 1: the cluster has one broker).
    pub async fn create_topics(&self, topics: &[(String, i32)]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().with_context(|| {
                format!("cannot create a Kafka admin client for {}", self.bootstrap)
            })?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .with_context(|| format!("cannot create topics at {}", self.bootstrap))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
        Ok(())
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> anyhow::Result<i32> {
        LocalKafka::connect(&self.bootstrap)?
            .partitions(topic)
            .with_context(|| format!("cannot count the partitions of {topic}"))
    }

    /// Every record of `topic`, up to the high watermarks of the moment,
    /// partition by partition in offset order.
    pub fn read_all(&self, topic: &str) -> anyhow::Result<Vec<InputRecord>> {
        let kafka = LocalKafka::connect(&self.bootstrap)?;
        let partitions = kafka.partitions(topic)?;
        anyhow::ensure!(partitions > 0, "topic {topic} does not exist");
        let ends: Vec<i64> = kafka
            .watermarks(topic, partitions)?
            .into_iter()
            .map(|(_, high)| high)
            .collect();
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "weir-e2e-reader")
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the reading consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .with_context(|| format!("cannot assign {topic}/{partition}"))?;
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("cannot assign {topic}"))?;
        let mut next: Vec<i64> = vec![0; ends.len()];
        let mut records = Vec::new();
        let started = Instant::now();
        let done = |next: &[i64]| next.iter().zip(&ends).all(|(next, end)| next >= end);
        while !done(&next) {
            anyhow::ensure!(
                started.elapsed() < READ_TIMEOUT,
                "reading {topic} took more than {}s: {} of {} records read",
                READ_TIMEOUT.as_secs(),
                records.len(),
                ends.iter().sum::<i64>()
            );
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.with_context(|| format!("cannot read {topic}"))?;
            let partition = message.partition();
            let slot = usize::try_from(partition)
                .ok()
                .and_then(|p| next.get_mut(p))
                .with_context(|| format!("{topic} returned a record of partition {partition}"))?;
            *slot = message.offset() + 1;
            if message.offset() >= ends[usize::try_from(partition).unwrap_or(0)] {
                // Produced after the read started: not part of this read.
                continue;
            }
            records.push(InputRecord {
                partition,
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().unwrap_or_default().to_vec(),
                timestamp_ms: message.timestamp().to_millis().with_context(|| {
                    format!("{topic}/{partition}@{} has no timestamp", message.offset())
                })?,
            });
        }
        Ok(records)
    }

    /// The committed records of `topic` (read_committed: what a downstream
    /// consumer sees), values counted.
    pub fn read_committed(&self, topic: &str) -> anyhow::Result<OutputCounts> {
        LocalKafka::connect(&self.bootstrap)?
            .read_committed(topic)
            .with_context(|| format!("cannot read the committed records of {topic}"))
    }

    /// Records of `topic` not yet committed by `group`: the sum over its
    /// partitions of the high watermark minus the group's committed offset
    /// (the whole partition where the group committed nothing).
    pub fn group_lag(&self, group: &str, topic: &str) -> anyhow::Result<i64> {
        let kafka = LocalKafka::connect(&self.bootstrap)?;
        let partitions = kafka.partitions(topic)?;
        let watermarks = kafka.watermarks(topic, partitions)?;
        // Only reads the group's offsets: it never joins the group.
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the offset reader")?;
        let mut wanted = TopicPartitionList::new();
        for partition in 0..partitions {
            wanted.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(wanted, REQUEST_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of group {group} on {topic}"))?;
        let mut lag = 0;
        for (partition, (low, high)) in (0..partitions).zip(watermarks) {
            let position = match committed
                .find_partition(topic, partition)
                .map(|entry| entry.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => low,
            };
            lag += (high - position).max(0);
        }
        Ok(lag)
    }

    /// Produces `records` (key, JSON value) to `topic`, timestamped now,
    /// partitioned by key as the Java client does (murmur2), and waits
    /// until the broker acknowledged each.
    pub async fn produce(
        &self,
        topic: &str,
        records: &[(Option<Vec<u8>>, Vec<u8>)],
    ) -> anyhow::Result<()> {
        let producer: FutureProducer = self
            .config()
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .create()
            .context("cannot create the producer")?;
        for (key, value) in records {
            let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(value.as_slice())
                .timestamp(now_ms);
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            producer
                .send(record, REQUEST_TIMEOUT)
                .await
                .map_err(|(error, _)| error)
                .with_context(|| format!("cannot produce to {topic}"))?;
        }
        Ok(())
    }
}

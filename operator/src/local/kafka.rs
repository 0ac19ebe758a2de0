//! Kafka for `weir run`: librdkafka's embedded mock cluster unless a
//! broker is named, the job's topics, the source's offsets, and the sink's
//! committed records.
//!
//! The mock cluster keeps at most 100,000 records or 5 MiB per partition
//! and deletes older ones, read or not. [`LocalKafka::check_retention`]
//! finds a source partition whose oldest kept offset passed what the job
//! has consumed: records the job never read were deleted, and the run
//! stops with that said rather than hang or lose them silently.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long a metadata or offset request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The mock cluster's records kept per partition.
pub const MOCK_RECORDS_PER_PARTITION: i64 = 100_000;

/// Bytes of a generated event, about (for the mock's 5 MiB per partition).
const EVENT_BYTES: i64 = 128;

/// A warning when `events` spread over `partitions` exceed what the mock
/// cluster keeps per partition: if the job falls behind, records it has
/// not read may be deleted (which the run then reports).
pub fn retention_risk(events: u64, partitions: i32) -> Option<String> {
    let per_partition = i64::try_from(events).unwrap_or(i64::MAX) / i64::from(partitions.max(1));
    let kept = MOCK_RECORDS_PER_PARTITION.min((5 << 20) / EVENT_BYTES);
    (per_partition > kept).then(|| {
        format!(
            "the profile produces about {per_partition} events per partition and the embedded Kafka keeps about {kept}: if the job falls that far behind, unread records are deleted (the run stops and says so)"
        )
    })
}

/// Why a Kafka step failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct KafkaError {
    /// What was attempted.
    pub operation: String,
    /// Why it failed.
    pub message: String,
}

fn error(operation: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaError {
    let operation = operation.into();
    move |e| KafkaError {
        operation,
        message: e.to_string(),
    }
}

/// The cluster the run uses.
pub struct LocalKafka {
    bootstrap: String,
    /// The embedded cluster, alive as long as the run.
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// Reads offsets (no group).
    offsets: BaseConsumer,
}

impl LocalKafka {
    /// An embedded cluster of three brokers.
    pub fn embedded() -> Result<LocalKafka, KafkaError> {
        let mock = MockCluster::new(3).map_err(error("start the embedded Kafka"))?;
        let bootstrap = mock.bootstrap_servers();
        let mut kafka = LocalKafka::connect(&bootstrap)?;
        kafka.mock = Some(mock);
        Ok(kafka)
    }

    /// A broker at `bootstrap`.
    pub fn connect(bootstrap: &str) -> Result<LocalKafka, KafkaError> {
        let offsets = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "weir-run-offsets")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(error(format!("connect to Kafka at {bootstrap}")))?;
        Ok(LocalKafka {
            bootstrap: bootstrap.to_owned(),
            mock: None,
            offsets,
        })
    }

    /// Whether this is the embedded cluster.
    pub fn is_embedded(&self) -> bool {
        self.mock.is_some()
    }

    /// The bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates `topic` with `partitions` on the embedded cluster (a real
    /// broker's topics must exist, or be created by its auto-creation).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        if let Some(mock) = &self.mock {
            mock.create_topic(topic, partitions, 1)
                .map_err(error(format!("create topic {topic}")))?;
        }
        Ok(())
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<i32, KafkaError> {
        let metadata = self
            .offsets
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(error(format!("read the metadata of {topic}")))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        i32::try_from(count).map_err(|e| KafkaError {
            operation: format!("count the partitions of {topic}"),
            message: e.to_string(),
        })
    }

    /// The (low, high) watermarks of every partition of `topic`.
    pub fn watermarks(&self, topic: &str, partitions: i32) -> Result<Vec<(i64, i64)>, KafkaError> {
        (0..partitions)
            .map(|p| {
                self.offsets
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .map_err(error(format!("read the offsets of {topic}/{p}")))
            })
            .collect()
    }

    /// The first source partition of `topic` whose oldest kept record is
    /// past `consumed[p]` (the next offset the job reads): records nobody
    /// read are gone.
    pub fn check_retention(
        &self,
        topic: &str,
        consumed: &BTreeMap<i32, i64>,
        watermarks: &[(i64, i64)],
    ) -> Result<(), String> {
        for (partition, (low, _)) in watermarks.iter().enumerate() {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let read = consumed.get(&partition).copied().unwrap_or(0);
            if *low > read {
                return Err(format!(
                    "{topic}/{partition}: records {read}..{low} were deleted before the job read them (the embedded Kafka keeps at most {MOCK_RECORDS_PER_PARTITION} records or 5 MiB per partition): lower the --profile, raise the worker capacity, or use --kafka"
                ));
            }
        }
        Ok(())
    }

    /// Every committed record of `topic` (read_committed), values counted.
    pub fn read_committed(&self, topic: &str) -> Result<BTreeMap<Vec<u8>, u64>, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "weir-run-verify")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(error("create the verifying consumer"))?;
        let partitions = self.partitions(topic)?;
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(error(format!("assign {topic}/{p}")))?;
        }
        consumer
            .assign(&list)
            .map_err(error(format!("assign {topic}")))?;
        let ends = self.watermarks(topic, partitions)?;
        let mut counts = BTreeMap::new();
        let mut last_record = Instant::now();
        let started = Instant::now();
        // Until every partition's position reached its end (transaction
        // markers included), or nothing came for a while.
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    last_record = Instant::now();
                    *counts
                        .entry(message.payload().unwrap_or_default().to_vec())
                        .or_default() += 1;
                }
                Some(Err(e)) => {
                    return Err(KafkaError {
                        operation: format!("read {topic}"),
                        message: e.to_string(),
                    });
                }
                None => {
                    let positions = consumer.position().map_err(error("read positions"))?;
                    let done = (0..partitions).all(|p| {
                        let end = ends[usize::try_from(p).unwrap_or(0)].1;
                        match positions.find_partition(topic, p).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => o >= end,
                            _ => end == 0,
                        }
                    });
                    if done
                        || last_record.elapsed() > Duration::from_secs(5)
                        || started.elapsed() > Duration::from_secs(120)
                    {
                        break;
                    }
                }
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_fits_the_embedded_kafka() {
        assert_eq!(retention_risk(380_000, 12), None);
        let warning = retention_risk(3_000_000, 12).unwrap();
        assert!(warning.contains("250000 events per partition"), "{warning}");
    }
}

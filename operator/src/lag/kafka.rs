//! [`LagSource`] over librdkafka: a short-lived consumer of the job's group
//! (it never joins the group or consumes: it only asks for metadata,
//! watermarks and the group's committed offsets) on a blocking thread, with
//! a timeout per request and one for the whole read.
//!
//! A client is created per read: reads happen every few seconds per job, a
//! client costs a connection to each broker it asks, and nothing is left
//! behind when a job is deleted or changes brokers or credentials.

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{LagError, LagQuery, LagSource, PartitionOffsets};

/// Time one Kafka request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads offsets from the job's Kafka cluster.
#[derive(Clone, Debug)]
pub struct KafkaLagSource {
    request_timeout: Duration,
    total_timeout: Duration,
}

impl Default for KafkaLagSource {
    fn default() -> Self {
        Self::new(REQUEST_TIMEOUT, REQUEST_TIMEOUT * 4)
    }
}

impl KafkaLagSource {
    /// A source whose requests each take at most `request_timeout`, and a
    /// whole read at most `total_timeout`.
    pub fn new(request_timeout: Duration, total_timeout: Duration) -> Self {
        Self {
            request_timeout,
            total_timeout,
        }
    }
}

impl LagSource for KafkaLagSource {
    fn offsets<'a>(
        &'a self,
        query: &'a LagQuery,
    ) -> BoxFuture<'a, Result<Vec<PartitionOffsets>, LagError>> {
        Box::pin(async move {
            let owned = query.clone();
            let timeout = self.request_timeout;
            let task = tokio::task::spawn_blocking(move || read(&owned, timeout));
            match tokio::time::timeout(self.total_timeout, task).await {
                Ok(Ok(result)) => result,
                Ok(Err(join)) => Err(LagError::Task {
                    group: query.group.clone(),
                    message: join.to_string(),
                }),
                Err(_) => Err(LagError::TimedOut {
                    group: query.group.clone(),
                    seconds: self.total_timeout.as_secs(),
                }),
            }
        })
    }
}

/// The consumer configuration of a query: the job's properties, then the
/// brokers and the group, with automatic commits off (it commits nothing).
fn config(query: &LagQuery) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &query.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &query.bootstrap_servers)
        .set("group.id", &query.group)
        .set("enable.auto.commit", "false")
        .set("client.id", "weir-operator-lag");
    config
}

/// Reads the offsets of every partition of the query's topics (blocking).
fn read(query: &LagQuery, timeout: Duration) -> Result<Vec<PartitionOffsets>, LagError> {
    let consumer: BaseConsumer = config(query).create().map_err(|source| LagError::Kafka {
        action: "create the client",
        target: query.bootstrap_servers.clone(),
        source,
    })?;
    let mut offsets = Vec::new();
    let mut partitions = TopicPartitionList::new();
    for topic in &query.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| LagError::Kafka {
                action: "fetch the metadata",
                target: format!("topic {topic}"),
                source,
            })?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            return Err(LagError::NoTopic(topic.clone()));
        }
        for partition in ids {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|source| LagError::Kafka {
                    action: "fetch the watermarks",
                    target: format!("{topic}/{partition}"),
                    source,
                })?;
            partitions.add_partition(topic, partition);
            offsets.push(PartitionOffsets {
                topic: topic.clone(),
                partition,
                low_watermark: low,
                high_watermark: high,
                committed: None,
            });
        }
    }
    let committed = consumer
        .committed_offsets(partitions, timeout)
        .map_err(|source| LagError::Kafka {
            action: "fetch the committed offsets",
            target: format!("group {}", query.group),
            source,
        })?;
    for entry in committed.elements() {
        if let Offset::Offset(offset) = entry.offset()
            && let Some(o) = offsets
                .iter_mut()
                .find(|o| o.topic == entry.topic() && o.partition == entry.partition())
        {
            o.committed = Some(offset);
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::consumer::CommitMode;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;

    fn produce(bootstrap: &str, topic: &str, per_partition: &[(i32, usize)]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        for &(partition, count) in per_partition {
            for i in 0..count {
                let payload = format!("{{\"n\":{i}}}");
                let mut record: BaseRecord<'_, str, str> =
                    BaseRecord::to(topic).partition(partition).payload(&payload);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            producer.poll(Duration::from_millis(10));
                        }
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Commits offsets for `group` as a worker's at-least-once checkpoint
    /// does (the mock does not store offsets sent to a transaction).
    fn commit(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            list.add_partition_offset(topic, partition, Offset::Offset(offset))
                .unwrap();
        }
        consumer.commit(&list, CommitMode::Sync).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_watermarks_and_the_groups_commits_from_the_cluster() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("clicks", 3, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        produce(&bootstrap, "clicks", &[(0, 10), (1, 4), (2, 0)]);
        commit(
            &bootstrap,
            "weir.streams.clicks",
            "clicks",
            &[(0, 7), (1, 4)],
        );
        // Another job's group does not count.
        commit(&bootstrap, "weir.streams.other", "clicks", &[(0, 10)]);

        let source = KafkaLagSource::default();
        let query = LagQuery {
            bootstrap_servers: bootstrap.clone(),
            properties: BTreeMap::new(),
            group: "weir.streams.clicks".into(),
            topics: vec!["clicks".into()],
        };
        let mut offsets = source.offsets(&query).await.unwrap();
        offsets.sort_by_key(|o| o.partition);
        let read: Vec<(i32, i64, Option<i64>)> = offsets
            .iter()
            .map(|o| (o.partition, o.high_watermark, o.committed))
            .collect();
        assert_eq!(read, [(0, 10, Some(7)), (1, 4, Some(4)), (2, 0, None)]);
        let lag = super::super::source_lag(&offsets, weir_crds::job::StartingOffsets::Earliest);
        assert_eq!(lag.total, 3);

        let missing = LagQuery {
            topics: vec!["nope".into()],
            ..query
        };
        let error = source.offsets(&missing).await.unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_within_the_timeout() {
        let source = KafkaLagSource::new(Duration::from_millis(300), Duration::from_secs(3));
        let query = LagQuery {
            bootstrap_servers: "127.0.0.1:1".into(),
            properties: BTreeMap::new(),
            group: "weir.streams.clicks".into(),
            topics: vec!["clicks".into()],
        };
        let started = std::time::Instant::now();
        let error = source.offsets(&query).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4), "{error}");
        assert!(error.to_string().contains("clicks"), "{error}");
    }
}

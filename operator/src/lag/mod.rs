//! Lag and rates from the source of truth: the Kafka cluster for the lag
//! (per source partition, high watermark minus the offset the job's group
//! `weir.<namespace>.<job>` committed with its latest checkpoint) and the
//! workers' `GET /v1/status` for what they process and how busy they are.
//!
//! [`LagSource`] is the seam: [`kafka::KafkaLagSource`] asks the brokers with
//! librdkafka (off the async runtime, with timeouts), [`FakeLagSource`]
//! answers scripted offsets in tests. The arithmetic is pure
//! ([`source_lag`], [`internal_backlog`]); [`sampler`] gathers the samples,
//! feeds the autoscaler ([`crate::autoscaler`]) and writes what it found.
//!
//! # Which records count
//!
//! `status.lag` counts the records of the job's *source* topics that the job
//! has not yet committed as processed: the records a user produced and is
//! waiting on. An idle job shows zero there, because the worker commits the
//! next offset after the last record it processed.
//!
//! The internal repartition topic (`weir.<namespace>.<job>.<step>`) is left
//! out of `status.lag`, because its committed offsets can never reach its
//! high watermark: each task broadcasts a watermark record to every
//! partition at every checkpoint, after the offsets of that checkpoint are
//! fixed, and under exactly-once every transaction leaves a commit marker
//! after its records, which no consumer receives as a record. High watermark
//! minus committed offset stays positive on an idle job there, and a Kafka
//! tool would show that tail as lag forever.
//!
//! What is still in transit between the two stages of a repartitioned job
//! is work the autoscaler must see (a job whose second stage falls behind
//! has no source lag). It is read from the workers' own positions
//! ([`internal_backlog`]): a worker reads every watermark record, so after
//! the last record it has read only commit markers can follow, at most one
//! per upstream task (each task has one producer, hence one transaction
//! open at a time). That tail, the partition count under exactly-once and
//! zero under at-least-once, is subtracted. The backlog is added to the lag
//! the autoscaler plans with and that keeps a job from idling, and exported
//! as a metric; it is not part of `status.lag`.

pub mod credentials;
pub mod kafka;
pub mod sampler;

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use rdkafka::error::KafkaError;
use weir_crds::job::{Guarantee, StartingOffsets};
use weir_crds::status::{LagStatus, PartitionLag};

use crate::control::WorkerReport;

/// The consumer group a job's workers commit under: `weir.<namespace>.<job>`
/// (dots cannot occur in either part, so two jobs never share a group).
pub fn group_id(namespace: &str, job: &str) -> String {
    format!("weir.{namespace}.{job}")
}

/// What to read from the Kafka cluster for one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LagQuery {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Client properties: the job's `spec.kafka.properties` and those of its
    /// credentials Secret (which win).
    pub properties: BTreeMap<String, String>,
    /// The job's consumer group.
    pub group: String,
    /// The topics to read, every partition of each.
    pub topics: Vec<String>,
}

/// The offsets of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The oldest offset still retained.
    pub low_watermark: i64,
    /// The offset the next record will get.
    pub high_watermark: i64,
    /// The offset the group committed (the next one to process), if any.
    pub committed: Option<i64>,
}

/// Why the offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    /// A Kafka request failed.
    #[error("cannot {action} of {target}: {source}")]
    Kafka {
        /// What was asked.
        action: &'static str,
        /// Of what (a topic, a partition, a group).
        target: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// A topic of the query does not exist or has no partitions.
    #[error("topic {0} does not exist or has no partitions")]
    NoTopic(String),
    /// The whole read took longer than allowed.
    #[error("reading the offsets of group {group} took more than {seconds}s")]
    TimedOut {
        /// The group.
        group: String,
        /// The time allowed.
        seconds: u64,
    },
    /// The blocking task reading the offsets failed.
    #[error("the task reading the offsets of group {group} failed: {message}")]
    Task {
        /// The group.
        group: String,
        /// The join error.
        message: String,
    },
}

/// Reads the high watermarks and committed offsets of a job's partitions.
pub trait LagSource: Send + Sync {
    /// The offsets of every partition of `query.topics` and the commits of
    /// `query.group` on them.
    fn offsets<'a>(
        &'a self,
        query: &'a LagQuery,
    ) -> BoxFuture<'a, Result<Vec<PartitionOffsets>, LagError>>;
}

/// The lag of one partition: records after the committed offset (or, before
/// the group committed anything, those the job will start with: every
/// retained record with `earliest`, none with `latest`). Records purged by
/// retention are not waited on.
pub fn partition_lag(offsets: &PartitionOffsets, starting: StartingOffsets) -> i64 {
    let next = match (offsets.committed, starting) {
        (Some(committed), _) => committed.max(offsets.low_watermark),
        (None, StartingOffsets::Earliest) => offsets.low_watermark,
        (None, StartingOffsets::Latest) => offsets.high_watermark,
    };
    (offsets.high_watermark - next).max(0)
}

/// The lag of the source partitions among `offsets`, total and per
/// partition (sorted by topic and partition), as `status.lag` shows it.
pub fn source_lag(offsets: &[PartitionOffsets], starting: StartingOffsets) -> LagStatus {
    let mut partitions: Vec<PartitionLag> = offsets
        .iter()
        .map(|o| PartitionLag {
            topic: o.topic.clone(),
            partition: o.partition,
            lag: partition_lag(o, starting),
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    LagStatus {
        total: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    }
}

/// The sum of the high watermarks: its growth between two samples is the
/// number of records that arrived.
pub fn high_watermark_sum(offsets: &[PartitionOffsets]) -> i64 {
    offsets.iter().map(|o| o.high_watermark).sum()
}

/// The partitions of the first source topic (all source topics are
/// co-partitioned): the job's number of tasks.
pub fn task_count(offsets: &[PartitionOffsets]) -> i32 {
    let Some(first) = offsets.first() else {
        return 0;
    };
    let count = offsets.iter().filter(|o| o.topic == first.topic).count();
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Commit markers that may follow the last record of a repartition
/// partition a reader has read: one per upstream task (`tasks`) under
/// exactly-once, none under at-least-once.
pub fn control_tail(guarantee: Guarantee, tasks: i32) -> i64 {
    match guarantee {
        Guarantee::ExactlyOnce => i64::from(tasks.max(0)),
        Guarantee::AtLeastOnce => 0,
    }
}

/// Records on the job's internal topics (every input partition the workers
/// report that is not of a `source_topics` topic) not yet processed, from the
/// workers' positions, less the commit-marker tail `tail` of each partition
/// (see the module doc). Workers that did not answer count nothing.
pub fn internal_backlog(
    reports: &[Option<WorkerReport>],
    source_topics: &[String],
    tail: i64,
) -> i64 {
    backlog(
        reports
            .iter()
            .flatten()
            .flat_map(|report| &report.load.tasks)
            .flat_map(|task| &task.partitions)
            .map(|p| (p.topic.as_str(), p.offset, p.high_watermark)),
        source_topics,
        tail,
    )
}

/// [`internal_backlog`] of input partitions given as (topic, next offset,
/// high watermark), for callers that hold the workers' own status.
pub fn backlog<'a>(
    partitions: impl IntoIterator<Item = (&'a str, i64, Option<i64>)>,
    source_topics: &[String],
    tail: i64,
) -> i64 {
    partitions
        .into_iter()
        .filter(|(topic, _, _)| !source_topics.iter().any(|s| s == topic))
        .filter_map(|(_, offset, high)| Some((high? - offset - tail).max(0)))
        .sum()
}

/// Scripted offsets for tests: answers what [`FakeLagSource::set`] gave (or
/// a broker error when nothing was set) and records every query.
#[derive(Debug, Default)]
pub struct FakeLagSource {
    offsets: Mutex<Option<Vec<PartitionOffsets>>>,
    queries: Mutex<Vec<LagQuery>>,
}

impl FakeLagSource {
    /// Answers `offsets` from now on (`None`: the brokers are unreachable).
    pub fn set(&self, offsets: Option<Vec<PartitionOffsets>>) {
        *lock(&self.offsets) = offsets;
    }

    /// The queries received so far, in order.
    pub fn queries(&self) -> Vec<LagQuery> {
        lock(&self.queries).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LagSource for FakeLagSource {
    fn offsets<'a>(
        &'a self,
        query: &'a LagQuery,
    ) -> BoxFuture<'a, Result<Vec<PartitionOffsets>, LagError>> {
        Box::pin(async move {
            lock(&self.queries).push(query.clone());
            lock(&self.offsets).clone().ok_or_else(|| LagError::Kafka {
                action: "fetch the watermarks",
                target: query.topics.join(","),
                source: KafkaError::MetadataFetch(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{PartitionReport, TaskReport, WorkerLoad};

    fn offsets(topic: &str, partition: i32, high: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            topic: topic.into(),
            partition,
            low_watermark: 0,
            high_watermark: high,
            committed,
        }
    }

    fn worker(partitions: &[(&str, i32, i64, i64)]) -> Option<WorkerReport> {
        let tasks = partitions
            .iter()
            .map(|(topic, partition, offset, high)| TaskReport {
                task: *partition,
                partitions: vec![PartitionReport {
                    topic: (*topic).into(),
                    partition: *partition,
                    offset: *offset,
                    high_watermark: Some(*high),
                }],
            })
            .collect();
        Some(WorkerReport {
            load: WorkerLoad {
                tasks,
                ..WorkerLoad::default()
            },
            ..WorkerReport::default()
        })
    }

    #[test]
    fn lag_is_high_watermark_minus_committed_per_partition() {
        let lag = source_lag(
            &[
                offsets("clicks", 1, 500, Some(200)),
                offsets("clicks", 0, 1_000, Some(1_000)),
            ],
            StartingOffsets::Earliest,
        );
        assert_eq!(lag.total, 300);
        assert_eq!(
            lag.partitions
                .iter()
                .map(|p| (p.partition, p.lag))
                .collect::<Vec<_>>(),
            [(0, 0), (1, 300)],
            "sorted by partition"
        );
    }

    #[test]
    fn without_a_commit_the_starting_offsets_decide() {
        let fresh = PartitionOffsets {
            low_watermark: 100,
            ..offsets("clicks", 0, 1_000, None)
        };
        assert_eq!(partition_lag(&fresh, StartingOffsets::Earliest), 900);
        assert_eq!(partition_lag(&fresh, StartingOffsets::Latest), 0);
        // Records deleted by retention are not waited on.
        let behind_retention = PartitionOffsets {
            committed: Some(10),
            ..fresh
        };
        assert_eq!(
            partition_lag(&behind_retention, StartingOffsets::Earliest),
            900
        );
    }

    #[test]
    fn an_idle_repartitioned_job_shows_zero() {
        // The source is fully committed; the repartition partitions end with
        // watermark records the workers read and one commit marker per
        // upstream task (4 tasks) that nobody receives as a record.
        let topics = vec!["clicks".to_owned()];
        let offsets = [
            offsets("clicks", 0, 7_000, Some(7_000)),
            offsets("clicks", 1, 9_000, Some(9_000)),
        ];
        assert_eq!(source_lag(&offsets, StartingOffsets::Earliest).total, 0);
        let repartition = "weir.streams.clicks.byUser";
        let reports = [
            worker(&[(repartition, 0, 1_204, 1_208), ("clicks", 0, 7_000, 7_000)]),
            worker(&[(repartition, 1, 990, 993)]),
        ];
        let tail = control_tail(Guarantee::ExactlyOnce, 4);
        assert_eq!(internal_backlog(&reports, &topics, tail), 0);
        // Under at-least-once there are no markers: what is left is records.
        assert_eq!(
            internal_backlog(&reports, &topics, control_tail(Guarantee::AtLeastOnce, 4)),
            7
        );
    }

    #[test]
    fn records_in_transit_between_the_stages_are_backlog() {
        let topics = vec!["clicks".to_owned()];
        let repartition = "weir.streams.clicks.byUser";
        let reports = [
            worker(&[(repartition, 0, 1_000, 6_004)]),
            None,
            worker(&[(repartition, 1, 500, 502)]),
        ];
        let tail = control_tail(Guarantee::ExactlyOnce, 4);
        assert_eq!(internal_backlog(&reports, &topics, tail), 5_000);
    }

    #[test]
    fn task_count_and_high_watermarks() {
        let offsets = [
            offsets("a", 0, 10, None),
            offsets("a", 1, 20, None),
            offsets("b", 0, 5, None),
            offsets("b", 1, 5, None),
        ];
        assert_eq!(task_count(&offsets), 2);
        assert_eq!(task_count(&[]), 0);
        assert_eq!(high_watermark_sum(&offsets), 40);
        assert_eq!(group_id("streams", "clicks"), "weir.streams.clicks");
    }
}

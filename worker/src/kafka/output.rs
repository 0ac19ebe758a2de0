//! The Kafka side of the checkpoint protocol: the worker's producers as an
//! [`OutputCommitter`], and the consumer group's offsets as
//! [`CommittedOffsets`].
//!
//! Exactly-once: one transactional producer per task (`transactional.id`
//! `weir.<ns>.<job>.<task>`), created when the coordinator fences, so that a
//! new owner of a task aborts what the old one left open before choosing
//! its restore point. A commit sends the task's offsets, with the
//! checkpoint's token as metadata, to the transaction and commits it.
//! At-least-once: one shared idempotent producer; a commit flushes, then
//! commits the offsets with the token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_crds::job::Guarantee;

use crate::checkpoint::coordinator::{CommitError, CommittedOffsets, OutputCommitter};
use crate::checkpoint::evidence::{CommitToken, GroupOffset, GroupOffsets};
use crate::checkpoint::manifest::SourceOffset;
use crate::kafka::producer::{OutputProducer, ProduceError};

/// The worker's output producers.
pub struct KafkaOutput {
    guarantee: Guarantee,
    config: ClientConfig,
    transactional_id: Box<dyn Fn(u32) -> String + Send>,
    consumer: Arc<BaseConsumer>,
    group: ConsumerGroupMetadata,
    producers: Vec<OutputProducer>,
    producer_of_task: BTreeMap<u32, usize>,
}

impl KafkaOutput {
    /// The output of a worker: `config` is the producers' base
    /// configuration, `transactional_id` names a task's producer, and
    /// `consumer` is the worker's (its group receives the offsets). No
    /// producer exists before [`OutputCommitter::fence`].
    pub fn new(
        guarantee: Guarantee,
        config: ClientConfig,
        transactional_id: impl Fn(u32) -> String + Send + 'static,
        consumer: Arc<BaseConsumer>,
        group: ConsumerGroupMetadata,
    ) -> KafkaOutput {
        KafkaOutput {
            guarantee,
            config,
            transactional_id: Box::new(transactional_id),
            consumer,
            group,
            producers: Vec::new(),
            producer_of_task: BTreeMap::new(),
        }
    }

    /// The producer that writes `task`'s output.
    ///
    /// # Panics
    /// If the task was not fenced: the worker only sends for tasks it
    /// restored, which the coordinator fenced first.
    pub fn producer(&self, task: u32) -> &OutputProducer {
        let index = self.producer_of_task[&task];
        &self.producers[index]
    }

    /// Every producer.
    pub fn producers(&self) -> &[OutputProducer] {
        &self.producers
    }

    fn offsets_with_token(
        offsets: &[SourceOffset],
        token: &CommitToken,
    ) -> Result<TopicPartitionList, CommitError> {
        let token = token.encode();
        let mut list = TopicPartitionList::new();
        for o in offsets {
            let mut element = list.add_partition(&o.topic, o.partition);
            element
                .set_offset(Offset::Offset(o.offset))
                .map_err(|e| CommitError::new("build offsets", e))?;
            element.set_metadata(&token);
        }
        Ok(list)
    }
}

fn produce(operation: &'static str) -> impl Fn(ProduceError) -> CommitError {
    move |e| CommitError::new(operation, e)
}

impl OutputCommitter for KafkaOutput {
    fn fence(&mut self, tasks: &[u32]) -> Result<(), CommitError> {
        self.producers.clear();
        self.producer_of_task.clear();
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                for &task in tasks {
                    let id = (self.transactional_id)(task);
                    self.producers.push(
                        OutputProducer::new(&self.config, Some(&id))
                            .map_err(produce("init transactions"))?,
                    );
                    self.producer_of_task.insert(task, self.producers.len() - 1);
                }
            }
            Guarantee::AtLeastOnce => {
                self.producers.push(
                    OutputProducer::new(&self.config, None).map_err(produce("create producer"))?,
                );
                self.producer_of_task = tasks.iter().map(|&t| (t, 0)).collect();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CommitError> {
        // A producer's lingering batches go out only while its own flush
        // waits: the producers of the tasks are flushed at once, so the
        // flush takes one round trip to the brokers, not one per task. A
        // producer whose thread cannot be started is flushed here after.
        std::thread::scope(|scope| {
            let others: Vec<_> = self
                .producers
                .iter()
                .skip(1)
                .map(|producer| {
                    let thread = std::thread::Builder::new()
                        .name("weir-flush".to_owned())
                        .spawn_scoped(scope, || producer.flush());
                    (producer, thread.ok())
                })
                .collect();
            let mut flushed = self.producers.first().map_or(Ok(()), OutputProducer::flush);
            for (producer, thread) in others {
                let result = match thread {
                    Some(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    None => producer.flush(),
                };
                flushed = flushed.and(result);
            }
            flushed
        })
        .map_err(produce("flush"))
    }

    fn commit(
        &mut self,
        task: u32,
        offsets: &[SourceOffset],
        token: &CommitToken,
    ) -> Result<(), CommitError> {
        let list = Self::offsets_with_token(offsets, token)?;
        match self.guarantee {
            // The transaction stores the offsets: nothing is committed
            // outside it, which a fenced owner could still do.
            Guarantee::ExactlyOnce => self
                .producer(task)
                .commit_transaction(&list, &self.group)
                .map_err(produce("commit transaction")),
            Guarantee::AtLeastOnce if list.count() == 0 => Ok(()),
            Guarantee::AtLeastOnce => self
                .consumer
                .commit(&list, CommitMode::Sync)
                .map_err(|e| CommitError::new("commit offsets", e)),
        }
    }

    fn abort(&mut self) {
        for producer in self.producers.iter().filter(|p| p.is_transactional()) {
            if let Err(e) = producer.abort_transaction() {
                tracing::warn!(error = %e, "abort of the open transaction failed");
            }
        }
    }
}

/// The consumer group's offsets, read through the worker's consumer.
pub struct KafkaGroupOffsets<'a> {
    /// The consumer (of the job's group).
    pub consumer: &'a BaseConsumer,
    /// How long the query may take.
    pub timeout: Duration,
}

impl CommittedOffsets for KafkaGroupOffsets<'_> {
    fn committed(&self, partitions: &[(String, i32)]) -> Result<GroupOffsets, CommitError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let committed = self
            .consumer
            .committed_offsets(list, self.timeout)
            .map_err(|e| CommitError::new("read committed offsets", e))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((
                    (e.topic().to_owned(), e.partition()),
                    GroupOffset {
                        offset,
                        metadata: metadata_text(e),
                    },
                )),
                _ => None,
            })
            .collect())
    }
}

/// An element's metadata, or empty when it is not UTF-8 (rdkafka panics on
/// that, and another tool may have committed anything).
fn metadata_text(element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        element.metadata().to_owned()
    }))
    .unwrap_or_default()
}

//! Records between the tasks and Kafka: a task's outputs to their topics,
//! and records of the repartition topic to the task that reads them.

use super::{Destinations, Task};
use crate::checkpoint::manifest::SourceOffset;
use crate::engine::record::{DeadLetter, SourcePosition, SourceRecord};
use crate::kafka::client;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::producer::{OutputProducer, ProduceError};
use crate::kafka::repartition::{self, RepartitionMessage};

/// Sends a task's collected outputs and clears them; returns how many
/// records were sent.
pub(super) fn emit(
    task: &mut Task,
    producer: &OutputProducer,
    to: &Destinations,
) -> Result<usize, ProduceError> {
    let outputs = &mut task.outputs;
    outputs.divert_oversized(to.max_message_bytes);
    let mut sent = 0;
    for record in &outputs.records {
        producer.send(&to.sink, record.key.as_deref(), &record.value, None)?;
        sent += 1;
    }
    if let Some(topic) = &to.dead_letter {
        for dead in &outputs.dead_letters {
            let headers = client::dead_letter_headers(&dead.reason, dead.source.as_ref());
            producer.send(topic, None, &dead.value, Some(headers))?;
            sent += 1;
        }
    }
    if let Some(topic) = &to.late_data {
        for late in &outputs.late {
            producer.send(topic, late.key.as_deref(), &late.value, None)?;
            sent += 1;
        }
    }
    if let Some((topic, partitions)) = &to.repartition {
        for record in &outputs.repartitioned {
            // Records reach the cut straight from the source, so they have
            // a source position; without one the reader dead-letters them.
            let headers = match &record.source {
                Some(source) => repartition::data_headers(source, record.time),
                None => rdkafka::message::OwnedHeaders::new(),
            };
            producer.send_to_partition(
                topic,
                partition_for_key(&record.key, *partitions),
                Some(&record.key),
                &record.value,
                headers,
            )?;
            sent += 1;
        }
    }
    outputs.clear();
    Ok(sent)
}

/// Hands a record of the repartition topic to its task: a watermark report,
/// or a keyed record named by its source position (a record whose headers
/// cannot be read goes to the dead-letter topic).
pub(super) fn dispatch_repartitioned(
    task: &mut Task,
    record: &SourceRecord<'_>,
    message: Result<RepartitionMessage<'_>, String>,
) -> Result<(), crate::engine::task::TaskError> {
    match message {
        Ok(RepartitionMessage::Watermark {
            upstream,
            report,
            drained,
            table_read,
        }) => {
            // A report without a drain id ends the upstream's last drain:
            // given up, it does not count for a later one of the same id.
            match drained {
                Some(id) => {
                    task.drained.insert(upstream, id.to_owned());
                }
                None => {
                    task.drained.remove(&upstream);
                }
            }
            // A report of the run before this task started says nothing
            // of the rows forwarded since.
            if table_read && record.offset >= task.fresh_reports_from {
                task.tables_forwarded.insert(upstream);
            }
            if !task
                .processor
                .report_upstream(upstream, report, &mut task.outputs)?
            {
                tracing::warn!(
                    task = task.id,
                    upstream,
                    "watermark of an unknown task on the repartition topic ignored"
                );
            }
            Ok(())
        }
        Ok(RepartitionMessage::Data {
            source: (topic, partition, offset),
            time,
        }) => {
            let origin = SourceRecord {
                topic,
                partition,
                offset,
                timestamp_ms: time,
                ..*record
            };
            task.processor
                .process_repartitioned(&origin, &mut task.outputs)
        }
        Err(reason) => {
            task.outputs.counters.dead_lettered += 1;
            task.outputs.dead_letters.push(DeadLetter {
                value: record.value.unwrap_or_default().to_vec(),
                reason,
                source: Some(SourcePosition::of(record)),
            });
            Ok(())
        }
    }
}

/// The next offsets of a task, for its manifest.
pub(super) fn source_offsets(topics: &[String], task: &Task) -> Vec<SourceOffset> {
    topics
        .iter()
        .zip(&task.offsets)
        .map(|(topic, &offset)| SourceOffset {
            topic: topic.clone(),
            partition: task.id,
            offset,
        })
        .collect()
}

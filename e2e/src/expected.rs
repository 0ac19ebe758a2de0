//! What a job must have written, and whether it did: the model `weir run`
//! checks its output against ([`weir_operator::local::model::Model`], the
//! job's own pipeline run as one task with no Kafka, checkpoint, rescale or
//! crash) fed with every record of the job's source topic, compared with
//! the committed records of its sink.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use anyhow::Context as _;
use weir_crds::StreamingJob;
use weir_crds::job::StreamingJobSpec;
use weir_operator::local::model::{Comparison, Model, OutputCounts};

use crate::kafka::{InputRecord, Kafka};
use crate::wait::{self, Check};

/// What the model expects from a source topic.
#[derive(Clone, Debug)]
pub struct Expectation {
    /// The records the sink must hold, counted.
    pub output: OutputCounts,
    /// Records read from the source topic.
    pub input_records: usize,
    /// Of those, records the model sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Of those, records the model found late.
    pub late: u64,
}

/// The records in the order the model is fed: the partitions merged by
/// timestamp (ties by partition), each partition in offset order. Sorting
/// by timestamp alone would do when every partition's timestamps grow with
/// its offsets (one producer per partition at a time, as here); the merge
/// keeps each partition in the order the job reads it even when they do
/// not, which is what the model's offsets and watermarks assume.
pub fn feeding_order(records: Vec<InputRecord>) -> Vec<InputRecord> {
    let mut partitions: Vec<Vec<InputRecord>> = Vec::new();
    for record in records {
        let index = usize::try_from(record.partition).unwrap_or(0);
        if partitions.len() <= index {
            partitions.resize_with(index + 1, Vec::new);
        }
        partitions[index].push(record);
    }
    for partition in &mut partitions {
        partition.sort_by_key(|record| record.offset);
    }
    let mut heads: BinaryHeap<Reverse<(i64, usize, usize)>> = partitions
        .iter()
        .enumerate()
        .filter_map(|(p, records)| records.first().map(|r| Reverse((r.timestamp_ms, p, 0))))
        .collect();
    let mut ordered = Vec::with_capacity(partitions.iter().map(Vec::len).sum());
    while let Some(Reverse((_, p, index))) = heads.pop() {
        ordered.push(partitions[p][index].clone());
        if let Some(next) = partitions[p].get(index + 1) {
            heads.push(Reverse((next.timestamp_ms, p, index + 1)));
        }
    }
    ordered
}

/// Runs the model of `spec` over `records` of a topic of `partitions`.
pub fn run_model(
    spec: &StreamingJobSpec,
    partitions: i32,
    records: Vec<InputRecord>,
) -> anyhow::Result<Expectation> {
    let state = tempfile::tempdir().context("cannot create the model's state directory")?;
    let mut model = Model::new(spec, partitions, state.path(), None)?;
    let input_records = records.len();
    // The suite's records are of the (first) source topic.
    let topic = spec.source.topics.first().cloned().unwrap_or_default();
    for record in feeding_order(records) {
        model
            .feed(
                &topic,
                record.partition,
                record.key.as_deref(),
                &record.value,
                record.timestamp_ms,
            )
            .with_context(|| {
                format!(
                    "the model failed on partition {} offset {}",
                    record.partition, record.offset
                )
            })?;
    }
    Ok(Expectation {
        output: model.expected().clone(),
        input_records,
        dead_letters: model.dead_letters(),
        late: model.late(),
    })
}

/// The model's expectation for `job`: every record its source topic holds
/// now, fed to the model of its spec.
pub async fn expectation(kafka: &Kafka, job: &StreamingJob) -> anyhow::Result<Expectation> {
    let kafka = kafka.clone();
    let spec = job.spec.clone();
    let source = source_topic(job)?;
    tokio::task::spawn_blocking(move || {
        let partitions = kafka.partitions(&source)?;
        let records = kafka.read_all(&source)?;
        run_model(&spec, partitions, records)
    })
    .await
    .context("the model's thread panicked")?
}

fn source_topic(job: &StreamingJob) -> anyhow::Result<String> {
    job.spec
        .source
        .topics
        .first()
        .cloned()
        .context("the job has no source topic")
}

/// Waits until the job `job` has consumed every record of its source topic:
/// its consumer group committed (with the checkpoint that holds their
/// output) up to every partition's high watermark.
pub async fn wait_until_consumed(
    kafka: &Kafka,
    job: &StreamingJob,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let source = source_topic(job)?;
    let group = weir_operator::lag::group_id(crate::JOBS_NAMESPACE, &name);
    let what = format!("{name} to consume all of {source} (group {group})");
    wait::until(&what, timeout, move || {
        let (kafka, source, group) = (kafka.clone(), source.clone(), group.clone());
        async move {
            let lag = tokio::task::spawn_blocking(move || kafka.group_lag(&group, &source))
                .await
                .context("the lag reader panicked")??;
            Ok(if lag == 0 {
                Check::Done(())
            } else {
                Check::Waiting(format!("lag {lag}"))
            })
        }
    })
    .await
}

/// Waits until the committed records of the job's sink are exactly the
/// model's `expected` ones. Records still missing may be on their way (a
/// window fires once the watermark passes it, after the records that close
/// it went through the repartition topic), so the wait goes on while
/// records are only missing; a record written more often than the model has
/// it never goes away, so that fails at once.
pub async fn wait_for_model_output(
    kafka: &Kafka,
    job: &StreamingJob,
    expected: &Expectation,
    timeout: Duration,
) -> anyhow::Result<Comparison> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let sink = job.spec.sink.topic.clone();
    let what = format!(
        "the committed records of {sink} to equal the model's ({} records from {} input events)",
        expected.output.values().sum::<u64>(),
        expected.input_records
    );
    wait::until(&what, timeout, move || {
        let (kafka, sink, name) = (kafka.clone(), sink.clone(), name.clone());
        async move {
            let written = {
                let sink = sink.clone();
                tokio::task::spawn_blocking(move || kafka.read_committed(&sink))
                    .await
                    .context("the sink reader panicked")??
            };
            let comparison = Comparison::of(&expected.output, &written);
            anyhow::ensure!(
                comparison.duplicated == 0,
                "{name} wrote records the model does not have: {} duplicated ({} unexpected), {} lost, {} written, {} expected",
                comparison.duplicated,
                comparison.unexpected,
                comparison.lost,
                comparison.written,
                comparison.expected
            );
            Ok(if comparison.matches() {
                Check::Done(comparison)
            } else {
                Check::Waiting(format!(
                    "{} lost, {} duplicated, {} of {} written",
                    comparison.lost, comparison.duplicated, comparison.written, comparison.expected
                ))
            })
        }
    })
    .await
}

/// Once the input is complete (every load generator done): waits until the
/// job consumed its source, then until its sink equals the model's output
/// exactly (0 lost, 0 duplicated). Returns the comparison.
pub async fn assert_output_equals_model(
    kafka: &Kafka,
    job: &StreamingJob,
    timeout: Duration,
) -> anyhow::Result<Comparison> {
    wait_until_consumed(kafka, job, timeout).await?;
    let expected = expectation(kafka, job).await?;
    anyhow::ensure!(
        expected.input_records > 0,
        "the source topic of {} is empty: nothing was tested",
        job.metadata.name.as_deref().unwrap_or_default()
    );
    let comparison = wait_for_model_output(kafka, job, &expected, timeout).await?;
    println!(
        "output equals the model: {} input events, {} records written, 0 lost, 0 duplicated ({} dead letters, {} late in the model)",
        expected.input_records, comparison.written, expected.dead_letters, expected.late
    );
    Ok(comparison)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, timestamp_ms: i64) -> InputRecord {
        InputRecord {
            partition,
            offset,
            key: None,
            value: Vec::new(),
            timestamp_ms,
        }
    }

    fn positions(records: &[InputRecord]) -> Vec<(i32, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    #[test]
    fn partitions_are_merged_by_timestamp_ties_by_partition() {
        let records = vec![
            record(1, 0, 10),
            record(0, 1, 20),
            record(0, 0, 10),
            record(1, 1, 15),
        ];
        assert_eq!(
            positions(&feeding_order(records)),
            vec![(0, 0), (1, 0), (1, 1), (0, 1)]
        );
    }

    #[test]
    fn each_partition_keeps_its_offset_order_even_when_timestamps_go_back() {
        let records = vec![record(0, 0, 30), record(0, 1, 5), record(1, 0, 10)];
        assert_eq!(
            positions(&feeding_order(records)),
            vec![(1, 0), (0, 0), (0, 1)]
        );
    }
}

//! What the generated events must produce, and how the job's output
//! compares with it.
//!
//! The model runs the job's pipeline the plainest way there is: one task
//! that owns every partition, fed each event once in the order it was
//! produced, with no Kafka, no checkpoint, no rescale and no crash (keyBy
//! steps are taken as partitioned already, since one task holds every key).
//! Whatever the real run emits beyond that is duplicated, whatever it misses
//! is lost: the protocol is measured against the engine's own semantics, not
//! assumed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use weir_crds::job::StreamingJobSpec;
use weir_worker::engine::pipeline::Pipeline;
use weir_worker::engine::record::{Outputs, SourceRecord};
use weir_worker::engine::task::{TaskProcessor, TaskSnapshot};
use weir_worker::state::{StateOptions, TaskState};

/// A multiset of output records (their JSON values).
pub type OutputCounts = BTreeMap<Vec<u8>, u64>;

/// What a model keeps between two runs (besides its RocksDB directory): a
/// later `weir run` against the same broker resumes the job and the model.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSnapshot {
    /// The next offset per partition.
    pub offsets: Vec<i64>,
    /// The next offset per partition of the join's topic.
    #[serde(default)]
    pub join_offsets: Vec<i64>,
    /// The engine's watermarks.
    pub engine: TaskSnapshot,
    /// The records expected so far (JSON text) with their counts.
    pub expected: Vec<(String, u64)>,
    /// Dead letters so far.
    pub dead_letters: u64,
    /// Late events so far.
    pub late: u64,
}

/// The reference run.
pub struct Model {
    processor: TaskProcessor,
    topic: String,
    offsets: Vec<i64>,
    /// The join's topic, if the job has a join.
    join_topic: Option<String>,
    join_offsets: Vec<i64>,
    outputs: Outputs,
    expected: OutputCounts,
    dead_letters: u64,
    late: u64,
}

/// Why the model could not run.
#[derive(Debug, thiserror::Error)]
#[error("the model of the job: {0}")]
pub struct ModelError(String);

impl Model {
    /// A model of `spec` over `partitions` partitions of its first source
    /// topic, keeping its state under `dir`; with `resumed`, it goes on from
    /// where [`Model::save`] left it (in the same `dir`).
    pub fn new(
        spec: &StreamingJobSpec,
        partitions: i32,
        dir: &Path,
        resumed: Option<ModelSnapshot>,
    ) -> Result<Model, ModelError> {
        let mut plain = spec.clone();
        for step in &mut plain.pipeline {
            if let Some(key_by) = &mut step.key_by {
                key_by.source_partitioned = true;
            }
        }
        let pipeline = Pipeline::compile(&plain).map_err(|e| ModelError(e.to_string()))?;
        let state = TaskState::open(dir, &StateOptions::default())
            .map_err(|e| ModelError(e.to_string()))?;
        let mut processor = TaskProcessor::new(Arc::new(pipeline), state, 1);
        let topic = spec.source.topics.first().cloned().unwrap_or_default();
        let join_topic = spec.join().map(|join| join.topic.clone());
        for partition in 0..partitions {
            processor.register_inputs(std::slice::from_ref(&topic), partition);
        }
        let slots = usize::try_from(partitions).unwrap_or(0);
        let mut model = Model {
            processor,
            topic,
            offsets: vec![0; slots],
            join_offsets: vec![0; if join_topic.is_some() { slots } else { 0 }],
            join_topic,
            outputs: Outputs::default(),
            expected: OutputCounts::new(),
            dead_letters: 0,
            late: 0,
        };
        if let Some(snapshot) = resumed {
            if snapshot.offsets.len() != model.offsets.len() {
                return Err(ModelError(format!(
                    "the saved model has {} partitions, the topic {}",
                    snapshot.offsets.len(),
                    model.offsets.len()
                )));
            }
            model.processor.restore_meta(snapshot.engine);
            model.offsets = snapshot.offsets;
            if snapshot.join_offsets.len() == model.join_offsets.len() {
                model.join_offsets = snapshot.join_offsets;
            }
            model.expected = snapshot
                .expected
                .into_iter()
                .map(|(record, count)| (record.into_bytes(), count))
                .collect();
            model.dead_letters = snapshot.dead_letters;
            model.late = snapshot.late;
        }
        Ok(model)
    }

    /// Writes the model's state to its directory and returns the rest, for
    /// a later run to resume.
    pub fn save(&mut self) -> Result<ModelSnapshot, ModelError> {
        self.processor
            .state_mut()
            .flush_cache()
            .map_err(|e| ModelError(e.to_string()))?;
        Ok(ModelSnapshot {
            offsets: self.offsets.clone(),
            join_offsets: self.join_offsets.clone(),
            engine: self.processor.snapshot_meta(),
            expected: self
                .expected
                .iter()
                .map(|(record, count)| (String::from_utf8_lossy(record).into_owned(), *count))
                .collect(),
            dead_letters: self.dead_letters,
            late: self.late,
        })
    }

    /// Feeds one event, as produced to `partition` of `topic` (the source
    /// topic or the join's) at `timestamp_ms`.
    pub fn feed(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), ModelError> {
        let offsets = if self.join_topic.as_deref() == Some(topic) {
            &mut self.join_offsets
        } else if topic == self.topic {
            &mut self.offsets
        } else {
            return Err(ModelError(format!("the job does not read {topic}")));
        };
        let slot = usize::try_from(partition)
            .ok()
            .and_then(|p| offsets.get_mut(p))
            .ok_or_else(|| ModelError(format!("no partition {partition} of {topic}")))?;
        let record = SourceRecord {
            topic,
            partition,
            offset: *slot,
            key,
            value: Some(value),
            timestamp_ms: Some(timestamp_ms),
        };
        *slot += 1;
        let error = |e: weir_worker::engine::task::TaskError| ModelError(e.to_string());
        self.processor
            .process(&record, &mut self.outputs)
            .map_err(error)?;
        while self.processor.has_due_timers() {
            self.processor
                .fire_due_timers(&mut self.outputs)
                .map_err(error)?;
        }
        self.collect();
        Ok(())
    }

    fn collect(&mut self) {
        for record in self.outputs.records.drain(..) {
            *self.expected.entry(record.value).or_default() += 1;
        }
        self.dead_letters += self.outputs.dead_letters.drain(..).count() as u64;
        self.late += self.outputs.late.drain(..).count() as u64;
    }

    /// The records the job must have written to its sink.
    pub fn expected(&self) -> &OutputCounts {
        &self.expected
    }

    /// Events the model sent to the dead-letter topic.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters
    }

    /// Events the model found late.
    pub fn late(&self) -> u64 {
        self.late
    }
}

/// How the job's output compares with the model.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Records the model has.
    pub expected: u64,
    /// Records the job wrote.
    pub written: u64,
    /// Model records missing from the output.
    pub lost: u64,
    /// Output records beyond the model's (a repeat or a wrong value).
    pub duplicated: u64,
    /// Of those, records the model does not have at all (a wrong value, or
    /// an output nothing explains); the rest repeat a model record.
    pub unexpected: u64,
    /// A few of the lost records, to look into.
    pub lost_examples: Vec<String>,
    /// A few of the records written beyond the model's.
    pub duplicated_examples: Vec<String>,
}

/// How many examples of each difference a comparison keeps.
const EXAMPLES: usize = 3;

impl Comparison {
    /// Compares the `written` records with the `expected` ones.
    pub fn of(expected: &OutputCounts, written: &OutputCounts) -> Comparison {
        let mut comparison = Comparison {
            expected: expected.values().sum(),
            written: written.values().sum(),
            ..Comparison::default()
        };
        let example = |record: &[u8]| String::from_utf8_lossy(record).into_owned();
        for (record, &want) in expected {
            let got = written.get(record).copied().unwrap_or(0);
            comparison.lost += want.saturating_sub(got);
            if got < want && comparison.lost_examples.len() < EXAMPLES {
                comparison.lost_examples.push(example(record));
            }
        }
        for (record, &got) in written {
            let want = expected.get(record).copied().unwrap_or(0);
            comparison.duplicated += got.saturating_sub(want);
            if got > want && comparison.duplicated_examples.len() < EXAMPLES {
                comparison.duplicated_examples.push(example(record));
            }
            if want == 0 {
                comparison.unexpected += got;
            }
        }
        comparison
    }

    /// Whether the output is exactly the model's.
    pub fn matches(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(records: &[&str]) -> OutputCounts {
        let mut counts = OutputCounts::new();
        for r in records {
            *counts.entry(r.as_bytes().to_vec()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn lost_and_duplicated_are_counted_with_multiplicity() {
        let expected = counts(&["a", "b", "b", "c"]);
        let written = counts(&["a", "b", "c", "c", "d"]);
        let comparison = Comparison::of(&expected, &written);
        assert_eq!(comparison.expected, 4);
        assert_eq!(comparison.written, 5);
        assert_eq!(comparison.lost, 1, "one b missing");
        assert_eq!(comparison.duplicated, 2, "a second c and an unknown d");
        assert_eq!(comparison.unexpected, 1, "d");
        assert_eq!(comparison.lost_examples, ["b"]);
        assert_eq!(comparison.duplicated_examples, ["c", "d"]);
        assert!(!comparison.matches());
        assert!(Comparison::of(&expected, &expected).matches());
    }
}

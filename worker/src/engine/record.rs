//! The records going into and out of the engine, and JSON decoding that keeps
//! only the fields a pipeline reads.

use std::fmt;

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use thiserror::Error;
use weir_crds::expr::{FieldValue, Fields, MAX_FIELDS};

pub use crate::engine::flat_json::RecordShape;
use crate::engine::flat_json::{KeyTable, decode_flat};

/// A record read from a source partition, borrowed from the consumer's
/// buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRecord<'a> {
    /// Topic the record was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The Kafka key.
    pub key: Option<&'a [u8]>,
    /// The Kafka value (a JSON object).
    pub value: Option<&'a [u8]>,
    /// The Kafka timestamp in epoch milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// Where a record that went to the dead-letter or late-data topic came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePosition {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl SourcePosition {
    /// The position of a source record.
    pub fn of(record: &SourceRecord<'_>) -> SourcePosition {
        SourcePosition {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
        }
    }
}

/// A record for the sink topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    /// The Kafka key: the source key when no keyBy ran, else the text of the
    /// key (see [`weir_crds::expr::Expression::eval_key`]).
    pub key: Option<Vec<u8>>,
    /// The JSON value.
    pub value: Vec<u8>,
}

/// A record for the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The value as read from the source (or as emitted by a window, for
    /// records that failed in a step after an aggregate).
    pub value: Vec<u8>,
    /// Why it failed, e.g. `filter-0: no such field 'amount'`.
    pub reason: String,
    /// The source record, `None` for records emitted by a window firing.
    pub source: Option<SourcePosition>,
}

/// An event that arrived after its windows were closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateRecord {
    /// The Kafka key of the source record.
    pub key: Option<Vec<u8>>,
    /// The value as read from the source.
    pub value: Vec<u8>,
    /// The source record.
    pub source: SourcePosition,
}

/// A record on its way to the task that owns its key, through the job's
/// repartition topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepartitionRecord {
    /// The key bytes (what [`weir_crds::expr::Expression::eval_key`] made
    /// of the keyBy expression); the partition is murmur2 of it.
    pub key: Vec<u8>,
    /// The JSON value after the steps before the keyBy.
    pub value: Vec<u8>,
    /// Its event time, if the source has event time.
    pub time: Option<i64>,
    /// The source record it came from, for dead-letter and late-data
    /// headers further on.
    pub source: Option<SourcePosition>,
}

/// Counts of what the engine did, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Source records processed.
    pub records_in: u64,
    /// Records emitted to the sink.
    pub records_out: u64,
    /// Records dropped by a filter, or by an inner join without a match.
    pub filtered: u64,
    /// Records dropped as duplicates by a dedupe step.
    pub deduplicated: u64,
    /// Records later than the allowed lateness.
    pub late: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records sent to the repartition topic.
    pub repartitioned: u64,
    /// Partial matches of pattern steps dropped for the per-key bound.
    pub partial_matches_dropped: u64,
    /// Row versions of temporal joins dropped for the per-key history
    /// before the watermark passed them.
    pub join_versions_dropped: u64,
}

/// Everything processing produces; the runtime drains it after each batch.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Records for the sink.
    pub records: Vec<OutputRecord>,
    /// Records for the dead-letter topic.
    pub dead_letters: Vec<DeadLetter>,
    /// Records for the late-data topic.
    pub late: Vec<LateRecord>,
    /// Records for the repartition topic.
    pub repartitioned: Vec<RepartitionRecord>,
    /// Cumulative counters (never cleared by [`Outputs::clear`]).
    pub counters: Counters,
}

/// How much of its value the dead letter of a record too large to send
/// keeps (less when `message.max.bytes` leaves less room).
pub const OVERSIZED_VALUE_KEPT: usize = 64 * 1024;
/// The longest reason a dead letter carries (in its header); longer ones
/// are cut.
pub const MAX_REASON_BYTES: usize = 4 * 1024;
/// Room left in a message for headers and Kafka's record framing.
const RECORD_OVERHEAD: usize = 1024;
/// Room kept for the note a truncated dead letter's reason gets.
const TRUNCATION_NOTE: usize = 160;
/// The header names and numbers of a dead letter's source position.
const SOURCE_HEADERS: usize = 96;

impl Outputs {
    /// Makes every output fit a producer limited to `max_bytes` per message
    /// (librdkafka's `message.max.bytes`), so that no record can make the
    /// producer fail and the job crash-loop on it:
    /// - sink, repartition and late records too large move to the dead
    ///   letters, with the reason and the first [`OVERSIZED_VALUE_KEPT`]
    ///   bytes of their value: one oversized result or event must not stop
    ///   the job;
    /// - dead letters too large (a huge undecodable record, or one of the
    ///   above) keep the head of their value that fits, with the original
    ///   size in the reason; reasons are cut to [`MAX_REASON_BYTES`].
    ///
    /// Returns how many records moved to the dead letters.
    pub fn divert_oversized(&mut self, max_bytes: usize) -> usize {
        let fits = |key: usize, value: usize| {
            key.saturating_add(value).saturating_add(RECORD_OVERHEAD) <= max_bytes
        };
        let dead_letter = |what: &str, value: &[u8], source: Option<SourcePosition>| DeadLetter {
            value: value[..value.len().min(OVERSIZED_VALUE_KEPT)].to_vec(),
            reason: format!(
                "{what} of {} bytes is larger than the producer's message.max.bytes ({max_bytes}); the first {OVERSIZED_VALUE_KEPT} bytes at most are kept here",
                value.len()
            ),
            source,
        };
        let mut diverted = Vec::new();
        self.records.retain(|r| {
            let ok = fits(r.key.as_ref().map_or(0, Vec::len), r.value.len());
            if !ok {
                diverted.push(dead_letter("output record", &r.value, None));
            }
            ok
        });
        let sink = diverted.len();
        self.repartitioned.retain(|r| {
            let ok = fits(r.key.len(), r.value.len());
            if !ok {
                diverted.push(dead_letter(
                    "repartitioned record",
                    &r.value,
                    r.source.clone(),
                ));
            }
            ok
        });
        let repartitioned = diverted.len() - sink;
        self.late.retain(|r| {
            let ok = fits(r.key.as_ref().map_or(0, Vec::len), r.value.len());
            if !ok {
                diverted.push(dead_letter("late record", &r.value, Some(r.source.clone())));
            }
            ok
        });
        let moved = diverted.len();
        let late = moved - sink - repartitioned;
        self.counters.records_out = self.counters.records_out.saturating_sub(sink as u64);
        self.counters.repartitioned = self
            .counters
            .repartitioned
            .saturating_sub(repartitioned as u64);
        self.counters.late = self.counters.late.saturating_sub(late as u64);
        self.counters.dead_lettered += moved as u64;
        self.dead_letters.extend(diverted);
        for dead in &mut self.dead_letters {
            fit_dead_letter(dead, max_bytes);
        }
        moved
    }

    /// Drops the collected records, keeping the counters.
    pub fn clear(&mut self) {
        self.records.clear();
        self.dead_letters.clear();
        self.late.clear();
        self.repartitioned.clear();
    }
}

/// Cuts a dead letter to fit a message of `max_bytes`: its reason to
/// [`MAX_REASON_BYTES`], its value to what is left after the headers, with
/// a note in the reason.
fn fit_dead_letter(dead: &mut DeadLetter, max_bytes: usize) {
    if dead.reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - 3;
        while !dead.reason.is_char_boundary(end) {
            end -= 1;
        }
        dead.reason.truncate(end);
        dead.reason.push_str("...");
    }
    let headers = dead.reason.len()
        + dead
            .source
            .as_ref()
            .map_or(0, |s| s.topic.len() + SOURCE_HEADERS);
    let size = dead.value.len() + headers + RECORD_OVERHEAD;
    if size <= max_bytes {
        return;
    }
    let room = max_bytes.saturating_sub(headers + RECORD_OVERHEAD + TRUNCATION_NOTE);
    let original = dead.value.len();
    dead.value.truncate(room);
    dead.reason.push_str(&format!(
        " (value truncated from {original} to {room} bytes to fit message.max.bytes {max_bytes})"
    ));
}

/// Why a record value could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The value is not valid JSON or not an object.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Which top-level fields decoding keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodePlan {
    /// Every field (a map keeps its input, or an expression reads the whole
    /// record).
    All,
    /// Only these fields; the others are skipped without being built.
    Fields(FieldPlan),
}

/// The fields a plan keeps: their names, sorted, and the keys the fast
/// decoder matches them by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPlan {
    names: Vec<String>,
    keys: KeyTable,
}

impl DecodePlan {
    /// A plan keeping the fields `names` (sorted, without duplicates).
    pub fn fields(names: Vec<String>) -> DecodePlan {
        let keys = KeyTable::new(&names);
        DecodePlan::Fields(FieldPlan { names, keys })
    }

    /// Decodes a JSON object, keeping the fields of the plan. The value must
    /// be an object either way.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let map = match self {
            DecodePlan::All => ObjectSeed { keep: None }.deserialize(&mut de)?,
            DecodePlan::Fields(plan) => ObjectSeed {
                keep: Some(plan.names.as_slice()),
            }
            .deserialize(&mut de)?,
        };
        de.end()?;
        Ok(Value::Object(map))
    }

    /// The fields [`DecodePlan::decode_fields`] can decode a record into:
    /// `None` when the plan keeps every field, or more than [`MAX_FIELDS`].
    pub fn field_names(&self) -> Option<&[String]> {
        match self {
            DecodePlan::Fields(plan) if plan.names.len() <= MAX_FIELDS => Some(&plan.names),
            _ => None,
        }
    }

    /// The slot the field `name` is decoded into (its position among
    /// [`DecodePlan::field_names`]), if the plan decodes into fields and
    /// keeps it.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.field_names()?.iter().position(|n| n == name)
    }

    /// Decodes a JSON object into `fields` (made with [`Fields::new`] from
    /// the plan's [`DecodePlan::field_names`]), without building a
    /// document: the other fields are skipped, strings without escapes
    /// borrow from `bytes`, and only nested values of those fields are
    /// built. A flat object of plain strings and numbers takes one pass of
    /// a scanner of its own; any other, serde_json driven field by field.
    /// The result reads like [`DecodePlan::decode`]'s, and the same inputs
    /// are refused. `shape` is the layout of the last record decoded with
    /// this plan (start with [`RecordShape::default`] and keep it between
    /// records): the scanner checks a record against it before it scans
    /// keys.
    pub fn decode_fields<'a>(
        &self,
        shape: &mut RecordShape,
        fields: &mut Fields<'a>,
        bytes: &'a [u8],
    ) -> Result<(), DecodeError> {
        let keys = match self {
            DecodePlan::Fields(plan) => &plan.keys,
            DecodePlan::All => &KeyTable::NONE,
        };
        if decode_flat(fields, keys, shape, bytes).is_some() {
            return Ok(());
        }
        fields.clear();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        FieldsSeed { fields }.deserialize(&mut de)?;
        de.end()?;
        Ok(())
    }
}

/// Deserializes a JSON object into [`Fields`].
struct FieldsSeed<'f, 'a> {
    fields: &'f mut Fields<'a>,
}

impl<'a> DeserializeSeed<'a> for FieldsSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'a> Visitor<'a> for FieldsSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut access: A) -> Result<(), A::Error> {
        while let Some(position) = access.next_key_seed(PositionSeed {
            fields: &*self.fields,
        })? {
            match position {
                Some(i) => {
                    let value = access.next_value_seed(FieldValueSeed)?;
                    self.fields.set(i, value);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Deserializes an object key into its position among the kept fields.
struct PositionSeed<'f, 'a> {
    fields: &'f Fields<'a>,
}

impl<'de> DeserializeSeed<'de> for PositionSeed<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for PositionSeed<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.fields.position(key))
    }
}

/// Deserializes the value of a kept field.
struct FieldValueSeed;

impl<'a> DeserializeSeed<'a> for FieldValueSeed {
    type Value = FieldValue<'a>;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for FieldValueSeed {
    type Value = FieldValue<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(FieldValue::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
        Ok(FieldValue::Int(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(u).map_or(FieldValue::Uint(u), FieldValue::Int))
    }

    fn visit_f64<E: de::Error>(self, d: f64) -> Result<Self::Value, E> {
        Ok(FieldValue::Double(d))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'a str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(|v| FieldValue::Json(Box::new(v)))
    }

    fn visit_map<A: MapAccess<'a>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(|v| FieldValue::Json(Box::new(v)))
    }
}

/// Deserializes a JSON object, keeping the listed fields (all when `None`).
struct ObjectSeed<'f> {
    keep: Option<&'f [String]>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed { keep: self.keep })? {
            match key {
                Some(name) => {
                    let value: Value = access.next_value()?;
                    map.insert(name, value);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(map)
    }
}

/// Deserializes an object key into `Some(owned name)` when it is kept,
/// without allocating for skipped keys.
struct KeySeed<'f> {
    keep: Option<&'f [String]>,
}

impl KeySeed<'_> {
    fn select<E>(&self, key: &str) -> Result<Option<String>, E> {
        Ok(match self.keep {
            None => Some(key.to_owned()),
            Some(fields) => fields
                .binary_search_by(|f| f.as_str().cmp(key))
                .ok()
                .map(|i| fields[i].clone()),
        })
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        self.select(key)
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        self.select(key)
    }

    fn visit_string<E: de::Error>(self, key: String) -> Result<Self::Value, E> {
        match self.keep {
            None => Ok(Some(key)),
            Some(_) => self.select(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const RECORD: &[u8] = br#"{"user_id":"u123","amount":12.5,"country":"DE","ts":1732176000000,"nested":{"a":[1,2]}}"#;

    #[test]
    fn oversized_outputs_become_dead_letters() {
        let mut out = Outputs::default();
        let big = vec![b'x'; 200_000];
        out.records.push(OutputRecord {
            key: Some(b"k".to_vec()),
            value: b"{}".to_vec(),
        });
        out.records.push(OutputRecord {
            key: None,
            value: big.clone(),
        });
        out.repartitioned.push(RepartitionRecord {
            key: b"k".to_vec(),
            value: big,
            time: None,
            source: Some(SourcePosition {
                topic: "in".into(),
                partition: 2,
                offset: 9,
            }),
        });
        out.counters.records_out = 2;
        out.counters.repartitioned = 1;
        assert_eq!(out.divert_oversized(100_000), 2);
        assert_eq!(out.records.len(), 1);
        assert!(out.repartitioned.is_empty());
        assert_eq!(out.dead_letters.len(), 2);
        assert!(
            out.dead_letters[0]
                .reason
                .starts_with("output record of 200000 bytes is larger than the producer's message.max.bytes (100000)"),
            "{}",
            out.dead_letters[0].reason
        );
        assert_eq!(out.dead_letters[0].value.len(), OVERSIZED_VALUE_KEPT);
        assert_eq!(out.dead_letters[1].source.as_ref().unwrap().offset, 9);
        assert_eq!(
            (
                out.counters.records_out,
                out.counters.repartitioned,
                out.counters.dead_lettered
            ),
            (1, 0, 2)
        );
        assert_eq!(out.divert_oversized(100_000), 0, "what fits stays");
    }

    #[test]
    fn dead_letters_and_late_records_fit_the_message_size() {
        let max = 100_000;
        let huge = vec![b'{'; 2_000_000];
        let source = SourcePosition {
            topic: "in".into(),
            partition: 1,
            offset: 7,
        };
        let mut out = Outputs::default();
        // An undecodable record of 2 MB with a long reason, as a topic
        // accepting larger messages than the producer would deliver it.
        out.dead_letters.push(DeadLetter {
            value: huge.clone(),
            reason: format!("invalid JSON: {}", "é".repeat(10_000)),
            source: Some(source.clone()),
        });
        out.late.push(LateRecord {
            key: Some(b"k".to_vec()),
            value: huge,
            source: source.clone(),
        });
        out.late.push(LateRecord {
            key: None,
            value: b"{}".to_vec(),
            source,
        });
        out.counters.late = 2;
        out.counters.dead_lettered = 1;
        assert_eq!(out.divert_oversized(max), 1);
        assert_eq!(out.late.len(), 1, "the small late record stays");
        assert_eq!(out.dead_letters.len(), 2);
        for dead in &out.dead_letters {
            let size = dead.value.len()
                + dead.reason.len()
                + dead.source.as_ref().map_or(0, |s| s.topic.len() + 64)
                + 64;
            assert!(size <= max, "a dead letter of {size} bytes");
            assert!(dead.reason.len() <= MAX_REASON_BYTES + TRUNCATION_NOTE);
        }
        assert!(
            out.dead_letters[0]
                .reason
                .contains("value truncated from 2000000 to"),
            "{}",
            out.dead_letters[0].reason
        );
        assert!(out.dead_letters[0].value.len() > 80_000, "as much as fits");
        assert!(
            out.dead_letters[1]
                .reason
                .starts_with("late record of 2000000 bytes"),
            "{}",
            out.dead_letters[1].reason
        );
        assert_eq!(out.dead_letters[1].source.as_ref().unwrap().offset, 7);
        assert_eq!((out.counters.late, out.counters.dead_lettered), (1, 2));
        // With a small limit the diverted head is cut further.
        let mut out = Outputs::default();
        out.records.push(OutputRecord {
            key: None,
            value: vec![b'x'; 50_000],
        });
        out.divert_oversized(20_000);
        assert!(out.dead_letters[0].value.len() + out.dead_letters[0].reason.len() < 20_000);
    }

    #[test]
    fn keeps_only_the_planned_fields() {
        let plan = DecodePlan::fields(vec!["amount".into(), "nested".into(), "zzz".into()]);
        assert_eq!(
            plan.decode(RECORD).unwrap(),
            json!({"amount": 12.5, "nested": {"a": [1, 2]}})
        );
        let all = DecodePlan::All.decode(RECORD).unwrap();
        assert_eq!(all, serde_json::from_slice::<Value>(RECORD).unwrap());
    }

    #[test]
    fn escaped_keys_are_matched() {
        let plan = DecodePlan::fields(vec!["a\"b".into()]);
        assert_eq!(
            plan.decode(br#"{"a\"b": 1, "c": 2}"#).unwrap(),
            json!({"a\"b": 1})
        );
    }

    #[test]
    fn rejects_non_objects_and_garbage() {
        let plan = DecodePlan::fields(vec!["a".into()]);
        for bad in [&b"[1]"[..], b"1", b"{\"a\":", b"{\"b\": tru}", b"{} x", b""] {
            assert!(
                plan.decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(DecodePlan::All.decode(bad).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DecodePlan::All.decode(&bytes);
            let plan = DecodePlan::fields(vec!["a".into()]);
            let _ = plan.decode(&bytes);
            let names = vec!["a".to_owned()];
            let _ = plan.decode_fields(&mut RecordShape::default(), &mut Fields::new(&names), &bytes);
        }
    }

    /// A JSON value of a field: scalars of every kind (strings with
    /// escapes, integers beyond `i64`, doubles), and nested values.
    fn field_json() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|u| u.to_string()),
            (-1e6f64..1e6).prop_map(|d| format!("{d:?}")),
            "[a-zA-Z0-9 é\\\\\"]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("\"\\u00e9\\n\"".to_owned()),
            Just(r#"{"x": [1, "y", {"z": null}]}"#.to_owned()),
            Just("[1, 2.5, \"a\"]".to_owned()),
        ]
    }

    proptest! {
        /// Decoding into borrowed fields reads exactly like decoding a
        /// JSON value with the same plan: every expression gives the same
        /// result or the same error, the event time is the same, and the
        /// same records are refused.
        #[test]
        fn borrowed_fields_read_like_the_decoded_value(
            entries in proptest::collection::vec((prop::sample::select(vec!["a", "b", "ts", "n", "other"]), field_json()), 0..8),
            garbage in any::<bool>(),
        ) {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
            let mut text = format!("{{{}}}", body.join(", "));
            if garbage {
                text.push_str(" x");
            }
            let names: Vec<String> = ["a", "b", "n", "ts"].map(str::to_owned).to_vec();
            let plan = DecodePlan::fields(names.clone());
            let mut fields = Fields::new(&names);
            let borrowed = plan.decode_fields(&mut RecordShape::default(), &mut fields, text.as_bytes());
            let decoded = plan.decode(text.as_bytes());
            prop_assert_eq!(borrowed.is_ok(), decoded.is_ok(), "{}", text);
            let Ok(json) = decoded else { return Ok(()) };
            prop_assert_eq!(Value::Object(fields.to_json()), json.clone());
            for source in [
                "record.a", "record.b == record.a", "record.a > 1", "record.n + 1", "size(record.b)",
                "string(record.a)", "has(record.n)", "record.ts", "double(record.n) * 2.0",
                "record.a.x", "record.a[0]", "record.b.startsWith('a')",
                "record.n == 3", "record.a != 0", "record.n <= -1", "record.b == 'a'",
                "record.b != 'ab'", "record.b < 'b'", "record.b >= 'a'", "record.b == 1",
                "record.n > 'a'", "record.n > 1.5", "record.n == 2.0",
            ] {
                let expr = weir_crds::expr::compile(source).unwrap();
                let mut from_fields = Vec::new();
                let mut from_json = Vec::new();
                let a = expr.eval_json(&fields, &mut from_fields);
                let b = expr.eval_json(&json, &mut from_json);
                prop_assert_eq!(a, b, "{} over {}", source, text);
                prop_assert_eq!(from_fields, from_json, "{} over {}", source, text);
                let mut key_a = Vec::new();
                let mut key_b = Vec::new();
                prop_assert_eq!(expr.eval_key(&fields, &mut key_a), expr.eval_key(&json, &mut key_b));
                prop_assert_eq!(key_a, key_b);
                prop_assert_eq!(expr.eval_bool(&fields), expr.eval_bool(&json));
            }
            let time = crate::engine::event_time::EventTimeSource::Field {
                name: "ts".into(),
                format: weir_crds::job::TimestampFormat::Auto,
                slot: None,
            };
            // Read by name, and from the slot the plan gives it.
            let bound = time.clone().bind(&plan);
            prop_assert_eq!(time.extract(&fields, None), time.extract(&json, None));
            prop_assert_eq!(bound.extract(&fields, None), time.extract(&json, None));
        }
    }
}

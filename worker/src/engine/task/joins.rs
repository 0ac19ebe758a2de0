//! The join step of a task. Records of the join's topic (the *other*
//! side) come in through [`TaskProcessor::process_join_input`], go through
//! the repartition topic when the pipeline has one, and are kept per key;
//! the pipeline's records reaching the step pair with them:
//!
//! - table join: with the key's latest row, at once;
//! - temporal table join: with the row version valid at their event time,
//!   once the watermark passes them (a timer at the key's earliest waiting
//!   record);
//! - interval join: with every record of the other stream within the
//!   interval, each pair once, when its second record arrives; a timer at
//!   the key's earliest expiry drops what can no longer pair.

use super::windows::{Emitted, late, state_key_of, step_is_keyed};
use super::*;
use crate::engine::join::{
    Join, JoinKind, in_interval, insert_by_time, insert_version, other_expiry, own_expiry,
    prune_versions, version_at,
};
use crate::state::JoinRow;

/// A record of the join's topic, decoded: its key, its JSON (empty for a
/// table row's deletion) and event time.
struct OtherRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    time: Option<i64>,
}

impl TaskProcessor {
    /// A record of the join topic read from the source: decoded, keyed and
    /// either sent to the repartition topic or applied to the join.
    pub(super) fn process_join_input(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        join: &Join,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let name = &pipeline.steps()[index].name;
        let table = matches!(join.kind, JoinKind::Table { .. });
        let bytes = record.value.unwrap_or_default();
        let deletion = bytes.is_empty();
        if deletion && !table {
            dead_letter_source(record, "record has no value".into(), out);
            return Ok(());
        }
        let value = if deletion {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(bytes) {
                Ok(v) => v,
                Err(e) => {
                    dead_letter_source(record, format!("invalid JSON: {e}"), out);
                    return Ok(());
                }
            }
        };
        let time = if !join.is_timed() {
            None
        } else if deletion {
            // A tombstone has no fields: it is dated by its Kafka timestamp.
            match record.timestamp_ms {
                Some(t) => Some(t),
                None => {
                    dead_letter_source(
                        record,
                        format!("{name}: a deletion in a temporal join needs a Kafka timestamp"),
                        out,
                    );
                    return Ok(());
                }
            }
        } else {
            match self
                .pipeline
                .event_time()
                .extract(&value, record.timestamp_ms)
            {
                Ok(t) => t,
                Err(e) => {
                    dead_letter_source(record, e.to_string(), out);
                    return Ok(());
                }
            }
        };
        if !self.observe_event_time(record, time, out) {
            return Ok(());
        }
        let key = match (&join.key, deletion) {
            (Some(_), true) => {
                dead_letter_source(
                    record,
                    format!(
                        "{name}: a deletion (a record without value) needs the table keyed by the Kafka key: join.key is set"
                    ),
                    out,
                );
                return Ok(());
            }
            (Some(expr), false) => {
                let mut key = Vec::new();
                if let Err(e) = expr.eval_key(&value, &mut key) {
                    dead_letter_source(record, format!("{name}: join.key: {e}"), out);
                    return Ok(());
                }
                key
            }
            (None, _) => match record.key {
                Some(key) => key.to_vec(),
                None => {
                    dead_letter_source(
                        record,
                        format!("{name}: record has no Kafka key and join.key is unset"),
                        out,
                    );
                    return Ok(());
                }
            },
        };
        if self.cut.is_some() {
            push_repartition(
                key,
                bytes.to_vec(),
                time,
                Some(SourcePosition::of(record)),
                out,
            );
        } else {
            let other = OtherRecord {
                key,
                value: bytes.to_vec(),
                time,
            };
            self.join_other(pipeline, index, join, other, record, out)?;
        }
        self.fire_chunk(pipeline, out)?;
        Ok(())
    }

    /// A record of the join topic read back from the repartition topic,
    /// keyed and dated there.
    pub(super) fn process_repartitioned_join_input(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        join: &Join,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let other = OtherRecord {
            key: record.key.unwrap_or_default().to_vec(),
            value: record.value.unwrap_or_default().to_vec(),
            time: if join.is_timed() {
                record.timestamp_ms
            } else {
                None
            },
        };
        if join.is_timed() && other.time.is_none() {
            dead_letter_source(record, "record has no event time".into(), out);
            return Ok(());
        }
        self.join_other(pipeline, index, join, other, record, out)?;
        self.fire_chunk(pipeline, out)?;
        Ok(())
    }

    /// Applies a record of the join's topic to its key's state, emitting
    /// the pairs it completes.
    fn join_other(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        join: &Join,
        other: OtherRecord,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let step_id = pipeline.steps()[index].id;
        let clock = self.clock(index);
        self.payload.clear();
        keyed_payload(&mut self.payload, &other.key, None);
        state_key(&mut self.scratch, step_id, &self.payload);
        let row = JoinRow {
            time: other.time.unwrap_or(0),
            value: other.value,
        };
        // A table row behind the watermark still counts for the records
        // after it; an interval join's record would pair with records
        // joined already.
        if matches!(join.kind, JoinKind::Interval { .. })
            && clock.watermark.is_some_and(|wm| row.time <= wm)
        {
            late(&side_flow(record), out);
            return Ok(());
        }
        match join.kind {
            JoinKind::Table { history: None, .. } => {
                let slot = self.state.get_mut(&self.scratch)?;
                *slot = (!row.value.is_empty()).then(|| StateValue::Join {
                    own: Vec::new(),
                    other: vec![row],
                });
            }
            JoinKind::Table {
                history: Some(history),
                ..
            } => {
                let slot = self.state.get_mut(&self.scratch)?;
                let (own, mut versions) = take_rows(slot);
                // Records this row's watermark made due are joined when
                // their timer fires, after this: keep what they need.
                let settled = match (clock.watermark, own.first()) {
                    (Some(wm), Some(waiting)) => Some(wm.min(waiting.time)),
                    (wm, _) => wm,
                };
                out.counters.join_versions_dropped +=
                    insert_version(&mut versions, row, settled, history) as u64;
                *slot = rows(own, versions);
            }
            JoinKind::Interval { before, after } => {
                let slot = self.state.get_mut(&self.scratch)?;
                let (own, mut others) = take_rows(slot);
                let other_json = parse_row(&row.value);
                let expiry = other_expiry(row.time, before);
                let earliest = earliest_expiry(&own, &others, before, after);
                let pairs = arrive(&mut others, &own, row, |o, r| {
                    in_interval(o.time, r.time, before, after)
                });
                *slot = rows(own, others);
                if earliest.is_none_or(|e| expiry < e) {
                    self.state.register_timer(
                        clock.domain,
                        expiry,
                        step_id,
                        JOIN,
                        &self.payload,
                    )?;
                }
                let keyed = step_is_keyed(pipeline, index);
                for (own_value, time) in pairs {
                    let value = joined(parse_row(&own_value), &join.field, other_json.clone());
                    let flow = Flow {
                        value: Doc::Json(value),
                        modified: true,
                        key: keyed.then(|| other.key.clone()),
                        keyed,
                        time: Some(time),
                        source: None,
                    };
                    self.run(pipeline, index + 1, flow, out)?;
                }
            }
        }
        Ok(())
    }

    /// A record of the pipeline reaching the join step at `index`.
    pub(super) fn join_record(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        join: &Join,
        flow: Flow<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let step = &pipeline.steps()[index];
        if !flow.record().is_object() {
            dead_letter_reason(
                &flow,
                format!(
                    "{}: the record is not a JSON object, so {} cannot be added to it",
                    step.name, join.field
                ),
                out,
            );
            return Ok(());
        }
        let key = state_key_of(&flow);
        self.payload.clear();
        keyed_payload(&mut self.payload, key, None);
        state_key(&mut self.scratch, step.id, &self.payload);
        let interval = match join.kind {
            JoinKind::Table {
                left,
                history: None,
            } => {
                let row = match self.state.get(&self.scratch)? {
                    Some(StateValue::Join { other, .. }) => {
                        other.last().map(|r| parse_row(&r.value))
                    }
                    _ => None,
                };
                return self.emit_table_join(pipeline, index, join, left, row, flow, out);
            }
            JoinKind::Table { .. } => None,
            JoinKind::Interval { before, after } => Some((before, after)),
        };
        let Some(t) = flow.time else {
            dead_letter_reason(
                &flow,
                format!("{}: record has no event time", step.name),
                out,
            );
            return Ok(());
        };
        let clock = self.clock(index);
        if clock.watermark.is_some_and(|wm| t <= wm) {
            late(&flow, out);
            return Ok(());
        }
        let value = encoded(&flow);
        let slot = self.state.get_mut(&self.scratch)?;
        let (mut own, others) = take_rows(slot);
        let Some((before, after)) = interval else {
            // Temporal: the record waits until the watermark passes it.
            let at = insert_by_time(&mut own, JoinRow { time: t, value });
            *slot = rows(own, others);
            if at == 0 {
                self.state
                    .register_timer(clock.domain, t, step.id, JOIN, &self.payload)?;
            }
            return Ok(());
        };
        let earliest = earliest_expiry(&own, &others, before, after);
        let pairs = arrive(&mut own, &others, JoinRow { time: t, value }, |o, r| {
            in_interval(r.time, o.time, before, after)
        });
        *slot = rows(own, others);
        let expiry = own_expiry(t, after);
        if earliest.is_none_or(|e| expiry < e) {
            self.state
                .register_timer(clock.domain, expiry, step.id, JOIN, &self.payload)?;
        }
        for (other_value, time) in pairs {
            let next = Flow {
                value: Doc::Json(joined(
                    flow.json().into_owned(),
                    &join.field,
                    parse_row(&other_value),
                )),
                modified: true,
                key: flow.key.clone(),
                keyed: flow.keyed,
                time: Some(time),
                source: flow.source,
            };
            self.run(pipeline, index + 1, next, out)?;
        }
        Ok(())
    }

    /// Emits a record of a table join with its row, or without one when
    /// the join is a left join.
    #[allow(clippy::too_many_arguments)]
    fn emit_table_join(
        &mut self,
        pipeline: &Pipeline,
        index: usize,
        join: &Join,
        left: bool,
        row: Option<Value>,
        mut flow: Flow<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        if row.is_none() && !left {
            out.counters.filtered += 1;
            return Ok(());
        }
        let record = flow.take_json();
        flow.value = Doc::Json(joined(record, &join.field, row.unwrap_or(Value::Null)));
        flow.modified = true;
        self.run(pipeline, index + 1, flow, out)
    }

    /// The join timer of a key (the state key is in `scratch`): a temporal
    /// join emits the records the watermark passed, with the version valid
    /// at their event time; both kinds drop what no record can join any
    /// more.
    pub(super) fn join_timer(
        &mut self,
        index: usize,
        join: &Join,
        timer: &Timer,
        emitted: &mut Vec<(Emitted, Option<i64>)>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let clock = self.clock(index);
        let watermark = clock.watermark.unwrap_or(timer.time).max(timer.time);
        let slot = self.state.get_mut(&self.scratch)?;
        let (mut own, mut others) = take_rows(slot);
        let next = match join.kind {
            JoinKind::Table { left, history } => {
                let history = history.unwrap_or(1);
                let due = own.partition_point(|o| o.time <= watermark);
                for record in own.drain(..due) {
                    let row = version_at(&others, record.time).map(parse_row);
                    if row.is_none() && !left {
                        out.counters.filtered += 1;
                        continue;
                    }
                    emitted.push((
                        Emitted::Json(joined(
                            parse_row(&record.value),
                            &join.field,
                            row.unwrap_or(Value::Null),
                        )),
                        Some(record.time),
                    ));
                }
                out.counters.join_versions_dropped +=
                    prune_versions(&mut others, Some(watermark), history) as u64;
                own.first().map(|o| o.time)
            }
            JoinKind::Interval { before, after } => {
                own.retain(|o| own_expiry(o.time, after) > watermark);
                others.retain(|o| other_expiry(o.time, before) > watermark);
                earliest_expiry(&own, &others, before, after)
            }
        };
        *slot = rows(own, others);
        if let Some(time) = next {
            self.state
                .register_timer(clock.domain, time, timer.step, JOIN, &timer.payload)?;
        }
        Ok(())
    }
}

/// The rows a key holds at a join step, taken out of its slot.
fn take_rows(slot: &mut Option<StateValue>) -> (Vec<JoinRow>, Vec<JoinRow>) {
    match slot.take() {
        Some(StateValue::Join { own, other }) => (own, other),
        _ => (Vec::new(), Vec::new()),
    }
}

/// The slot of a key holding `own` and `other`: empty when both are.
fn rows(own: Vec<JoinRow>, other: Vec<JoinRow>) -> Option<StateValue> {
    (!own.is_empty() || !other.is_empty()).then_some(StateValue::Join { own, other })
}

/// An interval join's `row` arriving on one side: kept among `mine`
/// (sorted by time), it pairs with the rows of `theirs` that `pairs(their
/// row, row)` accepts; returns their values with the time of each pair,
/// the later of the two.
fn arrive(
    mine: &mut Vec<JoinRow>,
    theirs: &[JoinRow],
    row: JoinRow,
    pairs: impl Fn(&JoinRow, &JoinRow) -> bool,
) -> Vec<(Vec<u8>, i64)> {
    let found = theirs
        .iter()
        .filter(|their| pairs(their, &row))
        .map(|their| (their.value.clone(), their.time.max(row.time)))
        .collect();
    insert_by_time(mine, row);
    found
}

/// The earliest time an interval join's rows of a key expire.
fn earliest_expiry(own: &[JoinRow], others: &[JoinRow], before: i64, after: i64) -> Option<i64> {
    let own = own.first().map(|o| own_expiry(o.time, after));
    let other = others.first().map(|o| other_expiry(o.time, before));
    own.into_iter().chain(other).min()
}

/// A row kept in state as JSON; corrupt state is reported and joins as
/// `null`.
fn parse_row(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|error| {
        tracing::error!(%error, "a joined record in state is not JSON");
        Value::Null
    })
}

/// The record with `other` as its field `field`; `record` is an object.
fn joined(record: Value, field: &str, other: Value) -> Value {
    match record {
        Value::Object(mut map) => {
            map.insert(field.to_owned(), other);
            Value::Object(map)
        }
        other_kind => other_kind,
    }
}

/// A record of the join's topic as a flow, for the late-data output.
fn side_flow<'a>(record: &'a SourceRecord<'a>) -> Flow<'a> {
    Flow {
        value: Doc::Json(Value::Null),
        modified: false,
        key: record.key.map(<[u8]>::to_vec),
        keyed: false,
        time: None,
        source: Some(record),
    }
}

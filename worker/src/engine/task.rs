//! The processor of one task: runs every record of the task's partitions
//! through the pipeline over the task's RocksDB state, tracks watermarks and
//! fires windows and TTLs.
//!
//! # Semantics
//!
//! - A record that cannot be decoded, has no usable event time or makes an
//!   expression fail goes to the dead-letter output with the step and the
//!   reason; nothing in a record can make processing panic or fail.
//! - A window `[start, end)` fires once the task watermark reaches `end - 1`
//!   (its last millisecond, as in Flink). Its state is kept for the allowed
//!   lateness after that: an event for it arriving meanwhile updates it and
//!   re-emits the result at once. An event whose windows are all past
//!   `end - 1 + allowedLateness` goes to the late output.
//! - Aggregate results are JSON objects: `key` (the key's text, `null`
//!   without keyBy), `window_start` and `window_end` in epoch milliseconds
//!   (windowed aggregates only; `window_end` exclusive) and the named
//!   fields. Without a window an aggregate emits the updated result for every
//!   record (a changelog, like a Kafka Streams KTable).
//! - Output keys: the source key until a keyBy, then the key's text.
//! - Dedupe remembers a key for its TTL in event time (processing time when
//!   the source has no event time); the state expires through a timer.
//! - With a repartition (a `keyBy` that is not source-partitioned), the steps
//!   up to the `keyBy` run on the task reading the source and the record goes
//!   to [`Outputs::repartitioned`]; the steps after it run on the task reading
//!   it back ([`TaskProcessor::process_repartitioned`]) and follow the
//!   upstream watermarks ([`TaskProcessor::report_upstream`]), with timers of
//!   their own ([`TimeDomain::Repartitioned`]). Dead letters and late events
//!   of those steps carry the record as it crossed the repartition topic
//!   and the position of the original source record. A source record the
//!   task already applied (a replay) is skipped, so state counts each once.
//! - An event time more than [`MAX_CLOCK_SKEW_MS`] ahead of processing time
//!   (a record dated 9999, a producer with a broken clock) goes to the
//!   dead-letter output and does not move the watermark: otherwise one such
//!   record would make every record after it late.
//! - Processing time starts at the wall clock when the processor is built
//!   and moves with [`TaskProcessor::advance_time`], so dedupe TTLs in
//!   processing time and idle leases are right before the first tick.
//! - Due timers fire in chunks of at most [`TIMER_CHUNK`]: each call that
//!   moves time fires one chunk, and the caller sends the outputs and calls
//!   [`TaskProcessor::fire_due_timers`] while
//!   [`TaskProcessor::has_due_timers`], so a watermark jump over a million
//!   windows never holds a million timers or results in memory. A record
//!   is only processed once every due timer has fired (the rest of a
//!   backlog fires first), so results do not depend on the chunk size.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use weir_crds::expr::{EvalError, Fields, Record};
use weir_crds::job::AggregateFunction;

use crate::engine::aggregate::{Accumulator, Accumulators, Input, Num};
use crate::engine::event_time::EventTimeSource;
use crate::engine::hll::hash64;
use crate::engine::pipeline::{AggregateField, MapField, Operation, Pipeline, WindowOp};
use crate::engine::record::{
    DeadLetter, DecodeError, DecodePlan, LateRecord, OutputRecord, Outputs, RecordShape,
    RepartitionRecord, SourcePosition, SourceRecord,
};
use crate::engine::watermark::{
    PartitionId, UpstreamReport, UpstreamSnapshot, UpstreamWatermarks, WatermarkSnapshot,
    WatermarkTracker,
};
use crate::engine::window::{Window, WindowAssigner};
use crate::state::{
    Session, StateError, StateValue, TaskState, TimeDomain, Timer, keyed_payload,
    parse_keyed_payload, state_key,
};

/// How long an upstream task's idle report holds without being repeated,
/// unless set with [`TaskProcessor::with_idle_lease`].
pub const DEFAULT_IDLE_LEASE_MS: i64 = 60_000;

/// How far ahead of processing time (the wall clock) an event time may be:
/// one hour, the tolerance Kafka brokers apply to record timestamps
/// (`log.message.timestamp.after.max.ms`). A record dated further ahead
/// goes to the dead-letter output, as Flink users would set a clock-skew
/// tolerance on a bounded-out-of-orderness strategy.
pub const MAX_CLOCK_SKEW_MS: i64 = 3_600_000;

/// Most timers fired between two hand-backs to the caller (see
/// [`TaskProcessor::fire_due_timers`]).
pub const TIMER_CHUNK: usize = 4096;

/// The wall clock in epoch milliseconds.
fn wall_clock_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The order timers fire in: event-time timers of the steps before the cut
/// (or of all steps), then those after it, then processing-time timers.
const FIRING_ORDER: [TimeDomain; 3] = [
    TimeDomain::Event,
    TimeDomain::Repartitioned,
    TimeDomain::Processing,
];

/// Timer kinds.
const FIRE: u8 = 1;
const CLEANUP: u8 = 2;
const EXPIRE: u8 = 3;
const SESSION: u8 = 4;
const PATTERN: u8 = 5;
const JOIN: u8 = 6;

/// Processing failed for a reason other than the record: the state store.
#[derive(Debug, Error)]
pub enum TaskError {
    /// Reading or writing state failed.
    #[error("task state: {0}")]
    State(#[from] StateError),
}

/// What a task checkpoint must hold besides RocksDB and the offsets: the
/// watermark state, so that a restore resumes event time where it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    /// Per-partition maximum event times and the task watermark.
    pub watermarks: WatermarkSnapshot,
    /// The upstream watermarks of the repartition topic, if the pipeline
    /// has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSnapshot>,
    /// The highest source offset applied per source partition, of the
    /// records read back from the repartition topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<AppliedOffset>,
}

/// The highest offset of a source partition whose record a task applied
/// after the repartition. Records of one source partition reach a task in
/// offset order, so one at or below it is a replay (an upstream task
/// restored to an earlier point, or a retry under at-least-once) and is
/// skipped: state counts every source record once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedOffset {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Highest offset applied.
    pub offset: i64,
}

/// The event-time clock a step follows.
#[derive(Clone, Copy, Debug)]
struct Clock {
    /// Where its timers go.
    domain: TimeDomain,
    /// Its watermark.
    watermark: Option<i64>,
}

/// A record's value on its way through the steps.
enum Doc<'a> {
    /// The fields the steps read, decoded from the source bytes and
    /// borrowing from them (see [`DecodePlan::decode_fields`]).
    Fields(&'a Fields<'a>),
    /// A decoded or computed JSON value.
    Json(Value),
}

/// A record on its way through the steps.
struct Flow<'a> {
    value: Doc<'a>,
    /// Whether `value` differs from the source bytes.
    modified: bool,
    /// The output key.
    key: Option<Vec<u8>>,
    /// Whether a keyBy ran (the key is then its text).
    keyed: bool,
    /// Event time, if the source has one.
    time: Option<i64>,
    /// The source record; `None` for records emitted by timers.
    source: Option<&'a SourceRecord<'a>>,
}

/// Processes the records of one task.
pub struct TaskProcessor {
    pipeline: Arc<Pipeline>,
    state: TaskState,
    watermarks: WatermarkTracker,
    /// Index (in the pipeline's steps) of the `keyBy` that repartitions.
    cut: Option<usize>,
    /// The watermark of the steps after the cut.
    upstream: UpstreamWatermarks,
    /// The highest source offsets applied after the cut.
    applied: Vec<AppliedOffset>,
    payload: Vec<u8>,
    key_buf: Vec<u8>,
    scratch: Vec<u8>,
    windows: Vec<Window>,
    /// Due timers taken from the state, reused between chunks.
    due: Vec<Timer>,
    /// What a record contributes to an aggregate's fields, reused.
    record_inputs: Vec<Input>,
    /// What a timer emits, reused.
    emitted: Vec<(windows::Emitted, Option<i64>)>,
    /// Most timers fired per chunk.
    timer_chunk: usize,
    /// How far ahead of processing time an event time may be.
    max_clock_skew: i64,
    /// Due timers are left from the last chunk.
    backlog: bool,
    /// The layout of the last source record decoded.
    source_shape: RecordShape,
    /// The layout of the last repartitioned record decoded.
    repartitioned_shape: RecordShape,
}

impl std::fmt::Debug for TaskProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskProcessor")
            .field("state", &self.state)
            .field("watermark", &self.watermarks.watermark())
            .finish_non_exhaustive()
    }
}

impl Doc<'_> {
    /// The record as expressions read it.
    fn record(&self) -> Record<'_> {
        match self {
            Doc::Fields(fields) => Record::Fields(fields),
            Doc::Json(json) => Record::Json(json),
        }
    }
}

/// Decodes `bytes` with `plan`: into `fields` (the caller's, so that the
/// record can borrow them) when the plan names few enough fields, else into
/// a JSON value.
fn decode<'f, 'a: 'f>(
    plan: &DecodePlan,
    shape: &mut RecordShape,
    fields: &'f mut Fields<'a>,
    bytes: &'a [u8],
) -> Result<Doc<'f>, DecodeError> {
    if plan.field_names().is_some() {
        plan.decode_fields(shape, fields, bytes)?;
        Ok(Doc::Fields(&*fields))
    } else {
        plan.decode(bytes).map(Doc::Json)
    }
}

impl Flow<'_> {
    /// The record as expressions read it.
    fn record(&self) -> Record<'_> {
        self.value.record()
    }

    /// The record as a JSON value.
    fn json(&self) -> Cow<'_, Value> {
        match &self.value {
            Doc::Fields(fields) => Cow::Owned(Value::Object(fields.to_json())),
            Doc::Json(json) => Cow::Borrowed(json),
        }
    }

    /// Takes the record as a JSON value, leaving null.
    fn take_json(&mut self) -> Value {
        match std::mem::replace(&mut self.value, Doc::Json(Value::Null)) {
            Doc::Fields(fields) => Value::Object(fields.to_json()),
            Doc::Json(json) => json,
        }
    }
}

impl TaskProcessor {
    /// A processor of `pipeline` over `state`, with no watermark yet (call
    /// [`TaskProcessor::restore_meta`] after a restore) and processing time
    /// at the wall clock. `tasks` is the job's task count: with a
    /// repartition, the steps after it wait for the watermark of every
    /// task; an idle report of a task holds for [`DEFAULT_IDLE_LEASE_MS`]
    /// unless [`TaskProcessor::with_idle_lease`] says otherwise.
    pub fn new(pipeline: Arc<Pipeline>, state: TaskState, tasks: usize) -> TaskProcessor {
        let mut watermarks =
            WatermarkTracker::new(pipeline.max_out_of_orderness(), pipeline.idle_timeout());
        watermarks.start_at(wall_clock_ms());
        let cut = pipeline.repartition_step();
        TaskProcessor {
            pipeline,
            state,
            watermarks,
            cut,
            upstream: UpstreamWatermarks::new(
                if cut.is_some() { tasks } else { 0 },
                DEFAULT_IDLE_LEASE_MS,
            ),
            applied: Vec::new(),
            payload: Vec::new(),
            key_buf: Vec::new(),
            scratch: Vec::new(),
            windows: Vec::new(),
            due: Vec::new(),
            record_inputs: Vec::new(),
            emitted: Vec::new(),
            timer_chunk: TIMER_CHUNK,
            max_clock_skew: MAX_CLOCK_SKEW_MS,
            backlog: false,
            source_shape: RecordShape::default(),
            repartitioned_shape: RecordShape::default(),
        }
    }

    /// Starts processing time at `now_ms` instead of the wall clock (a
    /// replay of recorded time). Call it before registering partitions.
    pub fn with_processing_time(mut self, now_ms: i64) -> TaskProcessor {
        self.watermarks.start_at(now_ms);
        self
    }

    /// Fires at most `timers` timers per chunk instead of [`TIMER_CHUNK`].
    pub fn with_timer_chunk(mut self, timers: usize) -> TaskProcessor {
        self.timer_chunk = timers.max(1);
        self
    }

    /// Refuses event times more than `skew_ms` ahead of processing time
    /// instead of [`MAX_CLOCK_SKEW_MS`].
    pub fn with_clock_skew_tolerance(mut self, skew_ms: i64) -> TaskProcessor {
        self.max_clock_skew = skew_ms.max(0);
        self
    }

    /// The processing time: the wall clock when the processor was built, or
    /// the latest given to [`TaskProcessor::advance_time`].
    pub fn processing_time(&self) -> i64 {
        self.watermarks.now().unwrap_or_else(wall_clock_ms)
    }

    /// Sets how long an upstream task's idle report holds without being
    /// repeated (it repeats it at every checkpoint).
    pub fn with_idle_lease(mut self, lease_ms: i64) -> TaskProcessor {
        let tasks = self.upstream.snapshot().upstreams.len();
        self.upstream = UpstreamWatermarks::new(tasks, lease_ms);
        self
    }

    /// Declares a partition the task reads: it holds back the watermark
    /// until it delivers records or turns idle.
    pub fn register_partition(&mut self, topic: &str, partition: i32) {
        self.watermarks.register(PartitionId {
            topic: topic.to_owned(),
            partition,
        });
    }

    /// Declares partition `partition` of every input that takes part in
    /// event time: of each of `source_topics`, and of the join's topic when
    /// the join is timed (a table that is not temporal does not hold back
    /// the watermark).
    pub fn register_inputs(&mut self, source_topics: &[String], partition: i32) {
        for topic in source_topics {
            self.register_partition(topic, partition);
        }
        let pipeline = Arc::clone(&self.pipeline);
        if let Some((_, join)) = pipeline.join().filter(|(_, join)| join.is_timed()) {
            self.register_partition(&join.topic, partition);
        }
    }

    /// The task's state, for checkpoints.
    pub fn state(&self) -> &TaskState {
        &self.state
    }

    /// The task's state, to flush its cache before a checkpoint.
    pub fn state_mut(&mut self) -> &mut TaskState {
        &mut self.state
    }

    /// The watermark of the task's last steps: that of the records read
    /// back from the repartition topic if the pipeline has one, else that
    /// of the source partitions.
    pub fn watermark(&self) -> Option<i64> {
        match self.cut {
            Some(_) => self.upstream.watermark(),
            None => self.watermarks.watermark(),
        }
    }

    /// What this task tells the tasks after the repartition: the watermark
    /// of its source partitions and whether they are all idle.
    pub fn source_report(&self) -> UpstreamReport {
        UpstreamReport {
            watermark: self.watermarks.watermark(),
            idle: self.watermarks.is_idle(),
        }
    }

    /// The watermark state to store in the checkpoint manifest.
    pub fn snapshot_meta(&self) -> TaskSnapshot {
        TaskSnapshot {
            watermarks: self.watermarks.snapshot(),
            upstream: self.cut.map(|_| self.upstream.snapshot()),
            applied: self.applied.clone(),
        }
    }

    /// Resumes the watermark state of a checkpoint.
    pub fn restore_meta(&mut self, snapshot: TaskSnapshot) {
        self.watermarks.restore(snapshot.watermarks);
        if let Some(upstream) = snapshot.upstream {
            self.upstream.restore(upstream);
        }
        self.applied = snapshot.applied;
    }

    /// Whether the source record at `topic`/`partition`/`offset` was applied
    /// after the cut already; remembers it if not.
    fn already_applied(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        match self
            .applied
            .iter_mut()
            .find(|a| a.partition == partition && a.topic == topic)
        {
            Some(a) if a.offset >= offset => true,
            Some(a) => {
                a.offset = offset;
                false
            }
            None => {
                self.applied.push(AppliedOffset {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                });
                false
            }
        }
    }

    /// The clock of the step at `index`: the steps after the cut follow the
    /// upstream watermarks.
    fn clock(&self, index: usize) -> Clock {
        let domain = match self.cut {
            Some(cut) if index > cut => TimeDomain::Repartitioned,
            _ => TimeDomain::Event,
        };
        Clock {
            domain,
            watermark: self.domain_watermark(domain),
        }
    }

    /// The watermark event-time timers of `domain` follow.
    fn domain_watermark(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::Repartitioned => self.upstream.watermark(),
            TimeDomain::Event | TimeDomain::Processing => self.watermarks.watermark(),
        }
    }

    /// Processes one source record, appending what it produces to `out`.
    /// Errors come only from the state store, never from the record.
    pub fn process(
        &mut self,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let pipeline = Arc::clone(&self.pipeline);
        self.complete_backlog(&pipeline, out)?;
        out.counters.records_in += 1;
        if let Some((index, join)) = pipeline.join_of(record.topic) {
            return self.process_join_input(&pipeline, index, join, record, out);
        }
        let Some(bytes) = record.value else {
            dead_letter_source(record, "record has no value".into(), out);
            return Ok(());
        };
        let plan = pipeline.decode_plan();
        let mut fields = Fields::new(plan.field_names().unwrap_or_default());
        let value = match decode(plan, &mut self.source_shape, &mut fields, bytes) {
            Ok(v) => v,
            Err(e) => {
                dead_letter_source(record, format!("invalid JSON: {e}"), out);
                return Ok(());
            }
        };
        let time = match pipeline
            .event_time()
            .extract(value.record(), record.timestamp_ms)
        {
            Ok(t) => t,
            Err(e) => {
                dead_letter_source(record, e.to_string(), out);
                return Ok(());
            }
        };
        if !self.observe_event_time(record, time, out) {
            return Ok(());
        }
        let flow = Flow {
            value,
            modified: false,
            key: record.key.map(<[u8]>::to_vec),
            keyed: false,
            time,
            source: Some(record),
        };
        self.run(&pipeline, 0, flow, out)?;
        if !pipeline.is_stateless() {
            self.fire_chunk(&pipeline, out)?;
        }
        Ok(())
    }

    /// Moves the watermark of `record`'s partition to its event time `time`;
    /// `false` (the record dead-lettered) when that time is further ahead
    /// of processing time than the clock-skew tolerance.
    fn observe_event_time(
        &mut self,
        record: &SourceRecord<'_>,
        time: Option<i64>,
        out: &mut Outputs,
    ) -> bool {
        let Some(t) = time else {
            return true;
        };
        let now = self.processing_time();
        if t.saturating_sub(now) > self.max_clock_skew {
            dead_letter_source(record, clock_skew_reason(t, now, self.max_clock_skew), out);
            return false;
        }
        self.watermarks.observe(record.topic, record.partition, t);
        true
    }

    /// Processes a record read back from the repartition topic: `record`
    /// carries the repartition record's key and value, its event time as
    /// `timestamp_ms`, and the position of the source record it came from.
    /// Runs the steps after the cut, unless that source record was applied
    /// already (a replay, counted as deduplicated).
    pub fn process_repartitioned(
        &mut self,
        record: &SourceRecord<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        let pipeline = Arc::clone(&self.pipeline);
        self.complete_backlog(&pipeline, out)?;
        let Some(cut) = self.cut else {
            dead_letter_source(record, "the pipeline has no repartition".into(), out);
            return Ok(());
        };
        if self.already_applied(record.topic, record.partition, record.offset) {
            out.counters.deduplicated += 1;
            return Ok(());
        }
        if let Some((index, join)) = pipeline.join_of(record.topic) {
            return self.process_repartitioned_join_input(&pipeline, index, join, record, out);
        }
        let Some(bytes) = record.value else {
            dead_letter_source(record, "record has no value".into(), out);
            return Ok(());
        };
        let plan = pipeline.repartitioned_decode_plan();
        let mut fields = Fields::new(plan.field_names().unwrap_or_default());
        let value = match decode(plan, &mut self.repartitioned_shape, &mut fields, bytes) {
            Ok(v) => v,
            Err(e) => {
                dead_letter_source(record, format!("invalid JSON: {e}"), out);
                return Ok(());
            }
        };
        let time = match self.pipeline.event_time() {
            EventTimeSource::None => None,
            _ => record.timestamp_ms,
        };
        let flow = Flow {
            value,
            modified: false,
            key: Some(record.key.unwrap_or_default().to_vec()),
            keyed: true,
            time,
            source: Some(record),
        };
        self.run(&pipeline, cut + 1, flow, out)?;
        self.fire_chunk(&pipeline, out)?;
        Ok(())
    }

    /// Takes the watermark report of upstream task `upstream`, read from the
    /// repartition topic, and fires what it makes due; `false` when no such
    /// task is expected.
    pub fn report_upstream(
        &mut self,
        upstream: usize,
        report: UpstreamReport,
        out: &mut Outputs,
    ) -> Result<bool, TaskError> {
        let now = self.processing_time();
        if !self.upstream.report(upstream, report, now) {
            return Ok(false);
        }
        let pipeline = Arc::clone(&self.pipeline);
        self.fire_chunk(&pipeline, out)?;
        Ok(true)
    }

    /// Advances processing time to `now_ms`: idle partitions stop holding
    /// back the watermark, due windows fire and processing-time TTLs expire
    /// (the first [`TIMER_CHUNK`] of them; see
    /// [`TaskProcessor::fire_due_timers`]). Call it regularly, also when no
    /// records arrive.
    pub fn advance_time(&mut self, now_ms: i64, out: &mut Outputs) -> Result<(), TaskError> {
        self.watermarks.advance(now_ms);
        self.upstream.expire(now_ms);
        let pipeline = Arc::clone(&self.pipeline);
        self.fire_chunk(&pipeline, out)?;
        Ok(())
    }

    /// Whether timers are due that were not fired yet: the calls that move
    /// time fire one chunk of at most [`TIMER_CHUNK`] and leave the rest.
    pub fn has_due_timers(&self) -> bool {
        FIRING_ORDER
            .into_iter()
            .any(|domain| self.due_until(domain).is_some())
    }

    /// Fires the next chunk of due timers into `out`; returns whether more
    /// are due. Send what `out` holds between two calls: that bounds the
    /// memory of a watermark jump over many windows. Whatever is left fires
    /// before the next record is processed anyway.
    pub fn fire_due_timers(&mut self, out: &mut Outputs) -> Result<bool, TaskError> {
        let pipeline = Arc::clone(&self.pipeline);
        self.fire_chunk(&pipeline, out)
    }

    /// Runs `flow` through the steps from `from` on.
    fn run(
        &mut self,
        pipeline: &Pipeline,
        from: usize,
        mut flow: Flow<'_>,
        out: &mut Outputs,
    ) -> Result<(), TaskError> {
        for (index, step) in pipeline.steps().iter().enumerate().skip(from) {
            match &step.operation {
                Operation::Filter(condition) => match condition.test(flow.record()) {
                    Ok(true) => {}
                    Ok(false) => {
                        out.counters.filtered += 1;
                        return Ok(());
                    }
                    Err(e) => {
                        dead_letter(&flow, &step.name, &e, out);
                        return Ok(());
                    }
                },
                Operation::Map { fields, keep_input } => {
                    if !keep_input && pipeline.is_last(index) {
                        return emit_mapped(flow, fields, &step.name, out);
                    }
                    let mut computed = Vec::with_capacity(fields.len());
                    for f in fields {
                        match f.expr.eval(flow.record()) {
                            Ok(v) => computed.push((f.name.clone(), v)),
                            Err(e) => {
                                let e = first_declared_error(fields, flow.record(), f, e);
                                dead_letter(&flow, &step.name, &e, out);
                                return Ok(());
                            }
                        }
                    }
                    let mut map = match (keep_input, flow.take_json()) {
                        (true, Value::Object(map)) => map,
                        _ => Map::with_capacity(computed.len()),
                    };
                    map.extend(computed);
                    flow.value = Doc::Json(Value::Object(map));
                    flow.modified = true;
                }
                Operation::KeyBy { expr, .. } => {
                    let mut key = Vec::new();
                    if let Err(e) = expr.eval_key(flow.record(), &mut key) {
                        dead_letter(&flow, &step.name, &e, out);
                        return Ok(());
                    }
                    if self.cut == Some(index) {
                        repartition(flow, key, out);
                        return Ok(());
                    }
                    flow.key = Some(key);
                    flow.keyed = true;
                }
                Operation::Dedupe { key, ttl } => {
                    self.key_buf.clear();
                    if let Err(e) = key.eval_key(flow.record(), &mut self.key_buf) {
                        dead_letter(&flow, &step.name, &e, out);
                        return Ok(());
                    }
                    let (domain, now) = match flow.time {
                        Some(t) => (self.clock(index).domain, t),
                        None => (TimeDomain::Processing, self.processing_time()),
                    };
                    if self.is_duplicate(step.id, domain, now, *ttl)? {
                        out.counters.deduplicated += 1;
                        return Ok(());
                    }
                }
                Operation::Pattern(pattern) => {
                    return self.pattern_event(pipeline, index, pattern, flow, out);
                }
                Operation::Join(join) => {
                    return self.join_record(pipeline, index, join, flow, out);
                }
                Operation::Aggregate { window, fields, .. } => {
                    return self.aggregate(pipeline, index, window.as_ref(), fields, flow, out);
                }
            }
        }
        emit(flow, out);
        Ok(())
    }

    /// Whether the dedupe key in `key_buf` was seen within the TTL at time
    /// `now`; remembers it if not.
    fn is_duplicate(
        &mut self,
        step: u8,
        domain: TimeDomain,
        now: i64,
        ttl: i64,
    ) -> Result<bool, TaskError> {
        self.payload.clear();
        keyed_payload(&mut self.payload, &self.key_buf, None);
        state_key(&mut self.scratch, step, &self.payload);
        if let Some(StateValue::Expiry(expiry)) = self.state.get(&self.scratch)?
            && *expiry > now
        {
            return Ok(true);
        }
        let expiry = now.saturating_add(ttl);
        *self.state.get_mut(&self.scratch)? = Some(StateValue::Expiry(expiry));
        self.state
            .register_timer(domain, expiry, step, EXPIRE, &self.payload)?;
        Ok(false)
    }
}

/// Sends a record to the repartition topic, keyed by `key`.
fn repartition(flow: Flow<'_>, key: Vec<u8>, out: &mut Outputs) {
    let value = encoded(&flow);
    push_repartition(
        key,
        value,
        flow.time,
        flow.source.map(SourcePosition::of),
        out,
    );
}

/// Sends `value` at `time` to the repartition topic, keyed by `key`.
fn push_repartition(
    key: Vec<u8>,
    value: Vec<u8>,
    time: Option<i64>,
    source: Option<SourcePosition>,
    out: &mut Outputs,
) {
    out.counters.repartitioned += 1;
    out.repartitioned.push(RepartitionRecord {
        key,
        value,
        time,
        source,
    });
}

/// The record's value as bytes: the bytes read when no step changed it.
fn encoded(flow: &Flow<'_>) -> Vec<u8> {
    match (flow.modified, flow.source.and_then(|s| s.value)) {
        (false, Some(bytes)) => bytes.to_vec(),
        _ => serde_json::to_vec(&flow.json()).unwrap_or_default(),
    }
}

/// Sends a record through a map step that is the last step (and does not
/// keep its input) to the sink, writing the fields' JSON text straight
/// into the output value, in name order as a JSON value would have them.
fn emit_mapped(
    flow: Flow<'_>,
    fields: &[MapField],
    step: &str,
    out: &mut Outputs,
) -> Result<(), TaskError> {
    let mut value = Vec::with_capacity(16 * fields.len() + 2);
    value.push(b'{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(&f.json_key);
        if f.write_from_slot(flow.record(), &mut value) {
            continue;
        }
        if let Err(e) = f.expr.eval_json(flow.record(), &mut value) {
            let e = first_declared_error(fields, flow.record(), f, e);
            dead_letter(&flow, step, &e, out);
            return Ok(());
        }
    }
    value.push(b'}');
    send(flow.key, value, out);
    Ok(())
}

/// The error of the first declared map field that fails on `record`,
/// `failed` having failed with `error`. Fields are evaluated in name order
/// (the output's), so on a failure those declared before it are tried, to
/// report the same field whichever order they are written in.
fn first_declared_error(
    fields: &[MapField],
    record: Record<'_>,
    failed: &MapField,
    error: EvalError,
) -> EvalError {
    fields
        .iter()
        .filter(|f| f.declared < failed.declared)
        .filter_map(|f| f.expr.eval(record).err().map(|e| (f.declared, e)))
        .min_by_key(|(declared, _)| *declared)
        .map_or(error, |(_, e)| e)
}

/// Sends a record that went through every step to the sink.
fn emit(flow: Flow<'_>, out: &mut Outputs) {
    let value = encoded(&flow);
    send(flow.key, value, out);
}

/// Sends a record to the sink.
fn send(key: Option<Vec<u8>>, value: Vec<u8>, out: &mut Outputs) {
    out.counters.records_out += 1;
    out.records.push(OutputRecord { key, value });
}

fn dead_letter(flow: &Flow<'_>, step: &str, error: &EvalError, out: &mut Outputs) {
    dead_letter_reason(flow, format!("{step}: {error}"), out);
}

fn dead_letter_reason(flow: &Flow<'_>, reason: String, out: &mut Outputs) {
    match flow.source {
        Some(source) if !flow.modified => dead_letter_source(source, reason, out),
        source => {
            out.counters.dead_lettered += 1;
            out.dead_letters.push(DeadLetter {
                value: serde_json::to_vec(&flow.json()).unwrap_or_default(),
                reason,
                source: source.map(SourcePosition::of),
            });
        }
    }
}

/// Why an event time too far ahead of processing time is refused.
fn clock_skew_reason(time: i64, now: i64, tolerance: i64) -> String {
    let show = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
    };
    format!(
        "event time {} is more than {} s ahead of processing time {}: refused as clock skew, so that it does not move the watermark",
        show(time),
        tolerance / 1000,
        show(now),
    )
}

fn dead_letter_source(record: &SourceRecord<'_>, reason: String, out: &mut Outputs) {
    out.counters.dead_lettered += 1;
    out.dead_letters.push(DeadLetter {
        value: record.value.unwrap_or_default().to_vec(),
        reason,
        source: Some(SourcePosition::of(record)),
    });
}

mod count_windows;
#[cfg(test)]
mod join_tests;
mod joins;
#[cfg(test)]
mod limits_tests;
mod patterns;
#[cfg(test)]
mod tests;
mod windows;

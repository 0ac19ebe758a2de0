//! The steps of a StreamingJob's pipeline: filter, map, keyBy, window,
//! aggregate, dedupe, pattern and join.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// One step of the pipeline. Exactly one of its operations is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.filter), has(self.map), has(self.keyBy), has(self.window), has(self.aggregate), has(self.dedupe), has(self.pattern), has(self.join)].filter(x, x).size() == 1",
    "message": "a step sets exactly one of filter, map, keyBy, window, aggregate, dedupe, pattern, join"
}]))]
pub struct Step {
    /// Name of the step, used in metrics and in internal topic names.
    /// Defaults to the operation and its position (`filter-0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,

    /// Keeps the records for which this CEL expression over `record` is
    /// true, for example `record.amount > 0 && record.country != "XX"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,

    /// Replaces each record with the fields computed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapStep>,

    /// Groups records by a key for the stateful steps after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<KeyByStep>,

    /// Assigns records to event-time windows; an aggregate must follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStep>,

    /// Aggregates the records of each key (and window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateStep>,

    /// Drops records whose key was already seen within a time to live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<DedupeStep>,

    /// Detects a sequence of events of each key (complex event
    /// processing), such as three failed logins then a password change
    /// within 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<PatternStep>,

    /// Joins each record with the records of another topic that have its
    /// key: the latest row of a table (enrichment), or the records of a
    /// second stream within a time interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinStep>,
}

/// Computes new fields from each record.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MapStep {
    /// The output fields, in order, each a CEL expression over `record`.
    #[schemars(length(min = 1, max = 128))]
    pub fields: Vec<FieldExpr>,

    /// Keeps the input record's fields and adds or overwrites the computed
    /// ones. Default false: the output holds only the computed fields.
    #[serde(default)]
    pub keep_input: bool,
}

/// A named CEL expression.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldExpr {
    /// Name of the output field.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// CEL expression over `record`, for example `record.amount * 100`.
    #[schemars(length(min = 1, max = 4096))]
    pub expr: String,
}

/// Chooses the key of each record.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyByStep {
    /// CEL expression over `record` giving the key, for example
    /// `record.user_id`. Unless the source is already partitioned by this
    /// key, records go through the job's repartition topic
    /// `weir.<namespace>.<job>.<step name>` (as many partitions as the
    /// source, created by the workers when they may): give the step a
    /// `name`, since renaming it renames the topic.
    #[schemars(length(min = 1, max = 4096))]
    pub expr: String,

    /// Declares that the source topics are already partitioned by this key
    /// (murmur2 of the key, as the Java client does), so no repartition topic
    /// is needed and each task aggregates the records it reads.
    #[serde(default)]
    pub source_partitioned: bool,
}

/// Event-time windows.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type == 'session' || self.type == 'count' || has(self.size)",
        "message": "tumbling and sliding windows need a size",
        "fieldPath": ".size"
    },
    {
        "rule": "self.type != 'sliding' || (has(self.slide) && has(self.size) && duration(self.slide) <= duration(self.size))",
        "message": "a sliding window needs a slide no longer than its size",
        "fieldPath": ".slide"
    },
    {
        "rule": "self.type != 'session' || has(self.gap)",
        "message": "a session window needs a gap",
        "fieldPath": ".gap"
    },
    {
        "rule": "!has(self.size) || duration(self.size) > duration('0s')",
        "message": "size must be greater than 0",
        "fieldPath": ".size"
    },
    {
        "rule": "!has(self.slide) || duration(self.slide) > duration('0s')",
        "message": "slide must be greater than 0",
        "fieldPath": ".slide"
    },
    {
        "rule": "!has(self.gap) || duration(self.gap) > duration('0s')",
        "message": "gap must be greater than 0",
        "fieldPath": ".gap"
    },
    {
        "rule": "self.type != 'count' || has(self.count)",
        "message": "a count window needs a count",
        "fieldPath": ".count"
    },
    {
        "rule": "self.type == 'count' || (!has(self.count) && !has(self.slideCount))",
        "message": "count and slideCount apply to count windows only",
        "fieldPath": ".count"
    },
    {
        "rule": "!has(self.slideCount) || (has(self.count) && self.count % self.slideCount == 0 && self.count / self.slideCount <= 1000)",
        "message": "slideCount divides count, at most 1000 times",
        "fieldPath": ".slideCount"
    },
    {
        "rule": "!has(self.timeZone) || self.type == 'tumbling'",
        "message": "timeZone applies to tumbling windows only",
        "fieldPath": ".timeZone"
    },
    {
        "rule": "!has(self.timeZone) || !has(self.size) || duration(self.size) >= duration('1h')",
        "message": "a window with a timeZone lasts at least 1h",
        "fieldPath": ".timeZone"
    }
]))]
pub struct WindowStep {
    /// `tumbling` (fixed, non-overlapping), `sliding` (fixed size, a new
    /// window every slide), `session` (closes after a gap with no events),
    /// all in event time, or `count` (a number of events of a key).
    #[serde(rename = "type")]
    pub kind: WindowKind,

    /// Length of each tumbling or sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Duration>,

    /// How often a sliding window starts; at most its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<Duration>,

    /// Inactivity that closes a session window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Duration>,

    /// Events per `count` window: every `count` events of a key (in the
    /// order the task reads them, whatever their event time) make one
    /// result, with `window_seq` numbering the key's windows from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub count: Option<u32>,

    /// Makes a `count` window slide: a result every `slideCount` events of
    /// a key, over its last `count` events (fewer until `count` have come).
    /// Divides `count`, at most 1000 times. Default: `count` (tumbling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub slide_count: Option<u32>,

    /// How long after the watermark passes a window's end it still accepts
    /// events (each late event updates and re-emits the result). Events later
    /// than that go to lateData. Default 0s.
    #[serde(default)]
    pub allowed_lateness: Duration,

    /// IANA time zone, such as `Europe/Berlin`, whose wall clock aligns a
    /// tumbling window of an hour or more: a `24h` window then runs from
    /// local midnight to local midnight (23 or 25 hours on the days the
    /// clocks change) and `window_start`/`window_end` are those instants.
    /// Without it windows are aligned to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
}

/// The kind of an event-time window.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WindowKind {
    /// Fixed-size, non-overlapping windows.
    Tumbling,
    /// Fixed-size windows starting every slide.
    Sliding,
    /// Per-key windows that close after a gap with no events.
    Session,
    /// Windows of a number of events per key, in the order they are read;
    /// they need no event time.
    Count,
}

/// Aggregates records per key (and window).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregateStep {
    /// The aggregated output fields. The output record also holds `key`,
    /// and `window_start` and `window_end` after a window.
    #[schemars(length(min = 1, max = 64))]
    pub fields: Vec<AggregateField>,
}

/// One aggregated output field.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.__function__ == 'count' || has(self.expr)",
    "message": "every aggregate function but count needs an expr",
    "fieldPath": ".expr"
}]))]
pub struct AggregateField {
    /// Name of the output field.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// The aggregate function.
    pub function: AggregateFunction,

    /// CEL expression over `record` giving the aggregated value (numbers for
    /// sum, min, max and avg; any value for approxDistinct, first and last).
    /// Not used by count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub expr: Option<String>,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFunction {
    /// Number of records.
    Count,
    /// Sum of a number.
    Sum,
    /// Smallest number.
    Min,
    /// Largest number.
    Max,
    /// Arithmetic mean of a number.
    Avg,
    /// Approximate number of distinct values (HyperLogLog, about 1% error).
    ApproxDistinct,
    /// The value of the earliest record by event time.
    First,
    /// The value of the latest record by event time.
    Last,
}

/// Drops duplicates.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "duration(self.ttl) > duration('0s')",
    "message": "ttl must be greater than 0",
    "fieldPath": ".ttl"
}]))]
pub struct DedupeStep {
    /// CEL expression over `record` identifying duplicates, for example
    /// `record.event_id`.
    #[schemars(length(min = 1, max = 4096))]
    pub key: String,

    /// How long a key is remembered (in event time when the source has
    /// event time, else in processing time).
    pub ttl: Duration,
}

/// Detects a sequence of events of one key, in event-time order: the
/// stages in turn, within a time bound. Each match is one output record
/// with `key`, `match_start`, `match_end` (epoch milliseconds) and, per
/// stage, the list of the records it took. Events wait in state until the
/// watermark passes them; events behind the watermark go to lateData.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.sequence.size() == 0 || !has(self.sequence[self.sequence.size() - 1].absent) || !self.sequence[self.sequence.size() - 1].absent || has(self.within)",
    "message": "an absent last stage needs within",
    "fieldPath": ".within"
}]))]
pub struct PatternStep {
    /// The stages, in order; every event that meets the first stage's
    /// condition starts a partial match. A completed match drops the
    /// partial matches that started before its last event, so matches
    /// never share events.
    #[schemars(length(min = 1, max = 16))]
    pub sequence: Vec<PatternStage>,

    /// The longest a match may last, from its first event to its last (or,
    /// with an absent last stage, until the absence is confirmed). Unset:
    /// no bound, but then partial matches only end by completing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,

    /// `relaxed` (default): events that meet no awaited condition may come
    /// in between and are skipped. `strict`: such an event ends the partial
    /// match.
    #[serde(default)]
    pub contiguity: Contiguity,
}

/// One stage of a pattern.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.times) || !has(self.oneOrMore) || !self.oneOrMore",
    "message": "times and oneOrMore exclude each other",
    "fieldPath": ".oneOrMore"
}]))]
pub struct PatternStage {
    /// Name of the stage: the output field that lists its records.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub name: String,

    /// CEL expression over `record` that an event of this stage meets,
    /// for example `record.type == "login_failed"`.
    #[schemars(length(min = 1, max = 4096))]
    pub condition: String,

    /// Exactly this many events meeting the condition. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub times: Option<u32>,

    /// One or more events, greedily: the stage takes every event meeting
    /// its condition until one meets the next stage's. Not on the last
    /// stage, nor before an absent one.
    #[serde(default)]
    pub one_or_more: bool,

    /// The stage matches the absence of such an event: the match completes
    /// `within` after its first event unless one came by then ("A not
    /// followed by B within T"). Last stage only, and not the first.
    #[serde(default)]
    pub absent: bool,
}

/// Whether other events may come between a pattern's events.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Contiguity {
    /// They may, and are skipped.
    #[default]
    Relaxed,
    /// They may not: such an event ends the partial match.
    Strict,
}

/// Joins each record (after a `keyBy`) with the records of another topic
/// whose key equals its key. The output is the record with the other
/// record added as the field named by `as`.
///
/// The other topic has as many partitions as the source; task `t` reads its
/// partition `t`. When the `keyBy` repartitions, the other topic's records
/// go through the repartition topic too, keyed by `key`; when the `keyBy`
/// is `sourcePartitioned`, the other topic must be partitioned by the same
/// key. Its records use the source's format and `eventTime`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'interval' || (has(self.before) && has(self.after))",
        "message": "an interval join needs before and after",
        "fieldPath": ".before"
    },
    {
        "rule": "self.type == 'interval' || (!has(self.before) && !has(self.after))",
        "message": "before and after apply to interval joins only",
        "fieldPath": ".before"
    },
    {
        "rule": "self.type == 'table' || ((!has(self.mode) || self.mode == 'inner') && (!has(self.temporal) || !self.temporal))",
        "message": "an interval join is inner and not temporal",
        "fieldPath": ".mode"
    },
    {
        "rule": "!has(self.history) || (has(self.temporal) && self.temporal)",
        "message": "history applies to temporal table joins only",
        "fieldPath": ".history"
    }
]))]
pub struct JoinStep {
    /// `table`: the other topic is a table (a compacted topic such as
    /// `users`: the latest record per key wins, a record without value
    /// deletes the key), read from its start and kept as state of the
    /// task. `interval`: the other topic is a stream, and records pair up
    /// when their event times are close enough.
    #[serde(rename = "type")]
    pub kind: JoinKind,

    /// The other topic.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub topic: String,

    /// CEL expression over the other topic's `record` giving its key, to
    /// compare with the `keyBy` key, for example `record.id`. Unset: the
    /// Kafka key of its records (as text), which a table needs for
    /// tombstones to delete a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub key: Option<String>,

    /// Name of the output field holding the other record (`null` when a
    /// left join found none); it replaces a field of the record with that
    /// name.
    #[serde(rename = "as")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub as_field: String,

    /// `inner` (default): a record without a matching row is dropped.
    /// `left`: it is emitted with the `as` field `null`. Table joins only.
    #[serde(default)]
    pub mode: JoinMode,

    /// Table joins: join each record with the row as it was at the
    /// record's event time (Flink's temporal join) instead of the latest
    /// row read. Records then wait in state until the watermark, which
    /// the table's partitions take part in, passes them; a table record
    /// behind the watermark counts for the records after the watermark
    /// (unless a newer one came first). Needs event time.
    #[serde(default)]
    pub temporal: bool,

    /// Temporal joins: the most versions of a row kept per key that the
    /// watermark has not passed yet (only the newest one behind it is
    /// kept). Beyond it the oldest are dropped, and counted in
    /// `weir_join_versions_dropped_total`: give room for the updates a key
    /// gets within maxOutOfOrderness. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub history: Option<u32>,

    /// Interval joins: how long before a record's event time the other
    /// stream's event time may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Duration>,

    /// Interval joins: how long after a record's event time the other
    /// stream's event time may be. A pair is emitted once, when its second
    /// record arrives, with the later of the two event times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
}

impl JoinStep {
    /// Whether the join follows event time (temporal or interval): its
    /// records wait for, or are late by, the watermark.
    pub fn is_timed(&self) -> bool {
        self.kind == JoinKind::Interval || self.temporal
    }
}

impl WindowStep {
    /// Whether the window is in event time (not a count window).
    pub fn is_event_time(&self) -> bool {
        self.kind != WindowKind::Count
    }
}

/// What the other topic of a join is.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JoinKind {
    /// A table: the latest record per key.
    #[default]
    Table,
    /// A stream joined over an event-time interval.
    Interval,
}

/// Whether a record without a match is kept.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JoinMode {
    /// Dropped.
    #[default]
    Inner,
    /// Kept, with the joined field `null`.
    Left,
}

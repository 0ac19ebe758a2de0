//! Engine tests of the bounds on bad input and memory: timers fired in
//! chunks, event times far ahead of processing time, and processing time
//! starting at the wall clock.

use serde_json::{Value, json};

use super::*;
use crate::engine::watermark::UpstreamReport;
use crate::state::StateOptions;

fn processor(
    source_extra: &str,
    pipeline: &str,
    tasks: usize,
) -> (TaskProcessor, tempfile::TempDir) {
    let yaml = format!(
        r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in]{source_extra}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {pipeline}
"#
    );
    let spec: weir_crds::StreamingJobSpec = serde_yaml::from_str(&yaml).unwrap();
    let pipeline = Arc::new(Pipeline::compile(&spec).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let state = TaskState::open(dir.path(), &StateOptions::new(8 << 20, 1 << 20)).unwrap();
    (TaskProcessor::new(pipeline, state, tasks), dir)
}

fn feed(p: &mut TaskProcessor, offset: i64, value: &Value, out: &mut Outputs) {
    let bytes = serde_json::to_vec(value).unwrap();
    let record = SourceRecord {
        topic: "in",
        partition: 0,
        offset,
        key: None,
        value: Some(&bytes),
        timestamp_ms: None,
    };
    p.process(&record, out).unwrap();
}

const EVENT_TIME: &str =
    ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 0s, idleTimeout: 0s}";
const KEYED_WINDOW: &str = r#"[{keyBy: {expr: record.user, sourcePartitioned: true}},
    {window: {type: tumbling, size: 10s}}, {aggregate: {fields: [{name: n, function: count}]}}]"#;

/// A processor holding one open 10 s window for each of `users` users.
fn open_windows(users: usize, chunk: usize) -> (TaskProcessor, tempfile::TempDir, Outputs) {
    let (p, dir) = processor(EVENT_TIME, KEYED_WINDOW, 1);
    let mut p = p.with_timer_chunk(chunk);
    let mut out = Outputs::default();
    for user in 0..users {
        feed(
            &mut p,
            user as i64,
            &json!({"user": format!("u{user}"), "ts": 5_000}),
            &mut out,
        );
    }
    assert!(out.records.is_empty());
    (p, dir, out)
}

#[test]
fn a_watermark_jump_fires_timers_in_bounded_chunks() {
    let (mut p, _dir, mut out) = open_windows(1000, 100);
    // One record moves the watermark past all 1000 windows.
    feed(&mut p, 1000, &json!({"user": "x", "ts": 100_000}), &mut out);
    let mut fired = out.records.len();
    assert!(fired <= 100, "{fired} results at once");
    assert!(p.has_due_timers());
    let mut chunks = 1;
    while p.has_due_timers() {
        out.clear();
        p.fire_due_timers(&mut out).unwrap();
        assert!(
            out.records.len() <= 100,
            "{} results at once",
            out.records.len()
        );
        fired += out.records.len();
        chunks += 1;
    }
    assert_eq!(fired, 1000, "every window fired once");
    assert_eq!(chunks, 10);
    assert!(!p.fire_due_timers(&mut out).unwrap());
}

#[test]
fn a_record_after_an_undrained_jump_sees_every_window_fired_first() {
    let (mut p, _dir, mut out) = open_windows(300, 100);
    feed(&mut p, 300, &json!({"user": "x", "ts": 100_000}), &mut out);
    assert!(p.has_due_timers());
    // The caller does not drain: the next record fires the rest first.
    feed(&mut p, 301, &json!({"user": "u1", "ts": 100_001}), &mut out);
    assert_eq!(out.records.len(), 300);
    assert!(!p.has_due_timers());
    assert_eq!(out.counters.late, 0);
}

#[test]
fn event_time_far_ahead_is_dead_lettered_and_keeps_the_watermark() {
    let (mut p, _dir) = processor(EVENT_TIME, KEYED_WINDOW, 1);
    let mut out = Outputs::default();
    let now = p.processing_time();
    let minute = 60_000;
    feed(
        &mut p,
        0,
        &json!({"user": "a", "ts": now - 5 * minute}),
        &mut out,
    );
    let watermark = p.watermark();
    assert_eq!(watermark, Some(now - 5 * minute));
    // A record dated 9999 and one two hours ahead: refused, watermark kept.
    feed(
        &mut p,
        1,
        &json!({"user": "b", "ts": "9999-06-01T00:00:00Z"}),
        &mut out,
    );
    feed(
        &mut p,
        2,
        &json!({"user": "b", "ts": now + 120 * minute}),
        &mut out,
    );
    assert_eq!(p.watermark(), watermark);
    assert_eq!(out.dead_letters.len(), 2);
    assert!(
        out.dead_letters[0].reason.contains("9999-06-01T00:00:00Z")
            && out.dead_letters[0].reason.contains("clock skew"),
        "{}",
        out.dead_letters[0].reason
    );
    assert_eq!(out.dead_letters[1].source.as_ref().unwrap().offset, 2);
    // Within the tolerance is fine, and what follows is not late.
    feed(
        &mut p,
        3,
        &json!({"user": "c", "ts": now + 30 * minute}),
        &mut out,
    );
    feed(
        &mut p,
        4,
        &json!({"user": "d", "ts": now - 4 * minute}),
        &mut out,
    );
    assert_eq!(
        out.counters.late, 1,
        "only the record behind the +30 min one"
    );
    assert_eq!(out.dead_letters.len(), 2);
}

#[test]
fn processing_time_dedupe_holds_before_the_first_tick() {
    let (mut p, _dir) = processor("", r#"[{dedupe: {key: record.id, ttl: 1h}}]"#, 1);
    let mut out = Outputs::default();
    // Before any advance_time, as right after a start.
    feed(&mut p, 0, &json!({"id": 1}), &mut out);
    let now = jiff::Timestamp::now().as_millisecond();
    p.advance_time(now, &mut out).unwrap();
    feed(&mut p, 1, &json!({"id": 1}), &mut out);
    assert_eq!(out.records.len(), 1);
    assert_eq!(
        out.counters.deduplicated, 1,
        "the TTL runs from the wall clock"
    );
}

#[test]
fn idle_leases_taken_before_the_first_tick_hold() {
    let pipeline = r#"[{keyBy: {expr: record.user}},
        {window: {type: tumbling, size: 10s}}, {aggregate: {fields: [{name: n, function: count}]}}]"#;
    let (mut p, _dir) = processor(EVENT_TIME, pipeline, 2);
    let mut out = Outputs::default();
    let report = |watermark, idle| UpstreamReport { watermark, idle };
    p.report_upstream(1, report(None, true), &mut out).unwrap();
    p.report_upstream(0, report(Some(1_000), false), &mut out)
        .unwrap();
    assert_eq!(p.watermark(), Some(1_000));
    let now = jiff::Timestamp::now().as_millisecond();
    p.advance_time(now, &mut out).unwrap();
    // Upstream 1 is still idle within its lease: upstream 0 alone counts.
    p.report_upstream(0, report(Some(2_000), false), &mut out)
        .unwrap();
    assert_eq!(p.watermark(), Some(2_000));
}

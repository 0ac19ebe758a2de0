//! Engine tests: the task processor against an in-memory model, across a
//! restart, and on bad input.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::state::StateOptions;

fn spec(source_extra: &str, pipeline: &str) -> weir_crds::StreamingJobSpec {
    let yaml = format!(
        r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in]{source_extra}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {pipeline}
"#
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn processor(
    dir: &Path,
    source_extra: &str,
    pipeline: &str,
    cache_entries: usize,
) -> TaskProcessor {
    let pipeline = Arc::new(Pipeline::compile(&spec(source_extra, pipeline)).unwrap());
    let options = small_cache(cache_entries);
    TaskProcessor::new(pipeline, TaskState::open(dir, &options).unwrap(), 1)
}

/// Options whose write-back cache holds about `entries` entries of these
/// tests (short keys, a few accumulators).
fn small_cache(entries: usize) -> StateOptions {
    StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(entries * 320)
}

fn feed(p: &mut TaskProcessor, offset: i64, value: &[u8], out: &mut Outputs) {
    let record = SourceRecord {
        topic: "in",
        partition: 0,
        offset,
        key: None,
        value: Some(value),
        timestamp_ms: None,
    };
    p.process(&record, out).unwrap();
}

fn values(out: &Outputs) -> Vec<Value> {
    out.records
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect()
}

const WINDOWED: &str = r#"[{keyBy: {expr: record.user, sourcePartitioned: true}},
    {window: {type: tumbling, size: 10s, allowedLateness: LATENESS}},
    {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}}]"#;
const WATERMARK: &str =
    ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 2s, idleTimeout: 0s}";

#[derive(Clone, Debug)]
struct Event {
    user: u32,
    ts: i64,
    amount: i64,
}

impl Event {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"user": format!("u{}", self.user), "amount": self.amount, "ts": self.ts, "pad": "x"}))
            .unwrap()
    }
}

/// Events with bounded disorder, and a few far behind (late).
fn events(seed: u64, n: usize) -> Vec<Event> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            let disorder = if r % 37 == 0 {
                15_000
            } else {
                (r >> 8) as i64 % 2_500
            };
            Event {
                user: (next() % 40) as u32,
                ts: 1_700_000_000_000 + i as i64 * 50 - disorder,
                amount: (next() % 1000) as i64,
            }
        })
        .collect()
}

/// The plain in-memory model of the windowed pipeline: emissions as
/// ((user, window start) -> (count, sum)) in emission order, and the late
/// count.
#[derive(Default)]
struct Model {
    lateness: i64,
    watermark: Option<i64>,
    state: BTreeMap<(String, i64), (u64, i64, bool)>,
    emitted: Vec<((String, i64), (u64, i64))>,
    late: u64,
}

impl Model {
    fn event(&mut self, e: &Event) {
        let candidate = e.ts - 2_000;
        self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
        let wm = self.watermark.unwrap_or(i64::MIN);
        let start = e.ts - e.ts.rem_euclid(10_000);
        let last = start + 10_000 - 1;
        if last + self.lateness <= wm {
            self.late += 1;
            return;
        }
        let key = (format!("u{}", e.user), start);
        let entry = self.state.entry(key.clone()).or_insert((0, 0, false));
        entry.0 += 1;
        entry.1 += e.amount;
        if last <= wm {
            entry.2 = true;
            self.emitted.push((key, (entry.0, entry.1)));
        }
        self.fire();
    }

    fn fire(&mut self) {
        let wm = self.watermark.unwrap_or(i64::MIN);
        for (key, (n, total, fired)) in &mut self.state {
            if !*fired && key.1 + 10_000 - 1 <= wm {
                *fired = true;
                self.emitted.push((key.clone(), (*n, *total)));
            }
        }
        let lateness = self.lateness;
        self.state.retain(|k, _| k.1 + 10_000 - 1 + lateness > wm);
    }
}

fn as_model_emissions(out: &Outputs) -> Vec<((String, i64), (u64, i64))> {
    let mut got: Vec<_> = values(out)
        .into_iter()
        .map(|v| {
            assert_eq!(
                v["window_end"].as_i64().unwrap() - v["window_start"].as_i64().unwrap(),
                10_000
            );
            (
                (
                    v["key"].as_str().unwrap().to_owned(),
                    v["window_start"].as_i64().unwrap(),
                ),
                (v["n"].as_u64().unwrap(), v["total"].as_i64().unwrap()),
            )
        })
        .collect();
    got.sort();
    got
}

fn run_model(events: &[Event], lateness: i64) -> Model {
    let mut model = Model {
        lateness,
        ..Model::default()
    };
    for e in events {
        model.event(e);
    }
    model.emitted.sort();
    model
}

#[test]
fn windowed_counts_and_sums_equal_the_model() {
    for lateness in [0, 4_000] {
        let events = events(7 + lateness as u64, 4_000);
        let model = run_model(&events, lateness);
        let dir = tempfile::tempdir().unwrap();
        let pipeline = WINDOWED.replace("LATENESS", &format!("{lateness}ms"));
        // A small cache so that eviction and reloading are exercised.
        let mut p = processor(dir.path(), WATERMARK, &pipeline, 16);
        let mut out = Outputs::default();
        for (i, e) in events.iter().enumerate() {
            feed(&mut p, i as i64, &e.json(), &mut out);
        }
        assert!(
            model.late > 10 && model.emitted.len() > 500,
            "the data exercises lateness"
        );
        assert_eq!(
            as_model_emissions(&out),
            model.emitted,
            "lateness {lateness}"
        );
        assert_eq!(out.counters.late, model.late);
        assert_eq!(out.late.len() as u64, model.late);
        assert_eq!(out.counters.records_in, events.len() as u64);
        assert_eq!(out.counters.dead_lettered, 0);
    }
}

#[test]
fn restart_from_flushed_state_equals_the_model() {
    let lateness = 3_000;
    let events = events(99, 4_000);
    let model = run_model(&events, lateness);
    let dir = tempfile::tempdir().unwrap();
    let pipeline = WINDOWED.replace("LATENESS", "3s");
    let mut out = Outputs::default();
    let (first, second) = events.split_at(events.len() / 2);
    let meta = {
        let mut p = processor(dir.path(), WATERMARK, &pipeline, 32);
        for (i, e) in first.iter().enumerate() {
            feed(&mut p, i as i64, &e.json(), &mut out);
        }
        p.state_mut().flush_cache().unwrap();
        serde_json::to_string(&p.snapshot_meta()).unwrap()
    };
    let mut p = processor(dir.path(), WATERMARK, &pipeline, 32);
    p.restore_meta(serde_json::from_str(&meta).unwrap());
    for (i, e) in second.iter().enumerate() {
        feed(&mut p, i as i64, &e.json(), &mut out);
    }
    assert_eq!(as_model_emissions(&out), model.emitted);
    assert_eq!(out.counters.late, model.late);
}

/// The model of the windowed pipeline behind a repartition: the watermark
/// is the minimum over the source partitions of their maximum event time
/// minus the out-of-orderness, none until every partition delivered.
fn run_partitioned_model(events: &[(usize, Event)], partitions: usize, lateness: i64) -> Model {
    let mut model = Model {
        lateness,
        ..Model::default()
    };
    let mut maxes = vec![None; partitions];
    for (partition, e) in events {
        let wm = model.watermark.unwrap_or(i64::MIN);
        let start = e.ts - e.ts.rem_euclid(10_000);
        let last = start + 10_000 - 1;
        if last + lateness <= wm {
            model.late += 1;
        } else {
            let entry = model
                .state
                .entry((format!("u{}", e.user), start))
                .or_insert((0, 0, false));
            entry.0 += 1;
            entry.1 += e.amount;
            if entry.2 {
                let (n, total) = (entry.0, entry.1);
                model
                    .emitted
                    .push(((format!("u{}", e.user), start), (n, total)));
            }
        }
        let m: &mut Option<i64> = &mut maxes[*partition];
        *m = Some(m.map_or(e.ts, |m: i64| m.max(e.ts)));
        if maxes.iter().all(Option::is_some) {
            let min = maxes.iter().flatten().min().copied().map(|m| m - 2_000);
            model.watermark = model.watermark.max(min);
        }
        model.fire();
    }
    model.emitted.sort();
    model
}

/// Runs `events` (each with its source partition) through one processor per
/// partition, routing repartitioned records by murmur2 and broadcasting each
/// task's watermark after every record, as the runtime does through Kafka.
fn run_repartitioned(
    dirs: &[tempfile::TempDir],
    pipeline: &str,
    events: &[(usize, Event)],
    out: &mut Outputs,
) -> Vec<TaskSnapshot> {
    let n = dirs.len();
    let compiled = Arc::new(Pipeline::compile(&spec(WATERMARK, pipeline)).unwrap());
    let options = small_cache(16);
    let mut tasks: Vec<TaskProcessor> = dirs
        .iter()
        .enumerate()
        .map(|(t, dir)| {
            let mut p = TaskProcessor::new(
                compiled.clone(),
                TaskState::open(dir.path(), &options).unwrap(),
                n,
            );
            p.register_partition("in", t as i32);
            p
        })
        .collect();
    let mut upstream_out = Outputs::default();
    for (offset, (partition, e)) in events.iter().enumerate() {
        let value = e.json();
        let record = SourceRecord {
            topic: "in",
            partition: *partition as i32,
            offset: offset as i64,
            key: None,
            value: Some(&value),
            timestamp_ms: None,
        };
        tasks[*partition]
            .process(&record, &mut upstream_out)
            .unwrap();
        for r in std::mem::take(&mut upstream_out.repartitioned) {
            let dest = crate::kafka::partitioner::partition_for_key(&r.key, n as i32) as usize;
            let source = r.source.unwrap();
            let record = SourceRecord {
                topic: &source.topic,
                partition: source.partition,
                offset: source.offset,
                key: Some(&r.key),
                value: Some(&r.value),
                timestamp_ms: r.time,
            };
            tasks[dest].process_repartitioned(&record, out).unwrap();
        }
        let report = tasks[*partition].source_report();
        for task in &mut tasks {
            assert!(task.report_upstream(*partition, report, out).unwrap());
        }
    }
    assert!(
        upstream_out.records.is_empty(),
        "nothing reaches the sink before the cut"
    );
    out.counters.records_in += upstream_out.counters.records_in;
    out.counters.repartitioned += upstream_out.counters.repartitioned;
    tasks
        .iter_mut()
        .map(|t| {
            t.state_mut().flush_cache().unwrap();
            t.snapshot_meta()
        })
        .collect()
}

#[test]
fn repartitioned_windows_equal_the_model() {
    let pipeline = r#"[{filter: "record.amount >= 0"}, {keyBy: {expr: record.user}},
        {window: {type: tumbling, size: 10s, allowedLateness: 3s}},
        {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}}]"#;
    // Source partitions not by user: round robin over three.
    let events: Vec<(usize, Event)> = events(17, 3_000)
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i % 3, e))
        .collect();
    let model = run_partitioned_model(&events, 3, 3_000);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut out = Outputs::default();
    run_repartitioned(&dirs, pipeline, &events, &mut out);
    assert!(
        model.emitted.len() > 300 && model.late > 10,
        "the data exercises lateness"
    );
    assert_eq!(as_model_emissions(&out), model.emitted);
    assert_eq!(out.counters.late, model.late);
    assert_eq!(out.counters.repartitioned, events.len() as u64);
    assert_eq!(out.counters.records_in, events.len() as u64);
    // Late events name the source record, not the repartition topic.
    assert!(out.late.iter().all(|l| l.source.topic == "in"));
    // Every key was counted by one task only.
    let mut seen = BTreeMap::new();
    for r in &out.records {
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(r.key.as_deref(), v["key"].as_str().map(str::as_bytes));
        seen.insert(v["key"].as_str().unwrap().to_owned(), ());
    }
    assert_eq!(seen.len(), 40);
}

#[test]
fn repartitioned_steps_wait_for_every_upstream_and_restore_their_watermarks() {
    let pipeline = r#"[{keyBy: {expr: record.user}},
        {window: {type: tumbling, size: 10s}},
        {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}}]"#;
    let e = |user, ts| Event {
        user,
        ts,
        amount: 1,
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut out = Outputs::default();
    // Partition 1 has delivered nothing: no window fires.
    let snapshots = run_repartitioned(
        &dirs,
        pipeline,
        &[(0, e(1, 1_000)), (0, e(2, 50_000))],
        &mut out,
    );
    assert!(out.records.is_empty());
    assert!(
        snapshots
            .iter()
            .all(|s| s.upstream.as_ref().is_some_and(|u| u.watermark.is_none()))
    );
    // Restored from those snapshots, a report of partition 1 fires [0, 10s).
    let compiled = Arc::new(Pipeline::compile(&spec(WATERMARK, pipeline)).unwrap());
    let mut fired = Vec::new();
    for (dir, snapshot) in dirs.iter().zip(snapshots) {
        let state = TaskState::open(dir.path(), &StateOptions::new(8 << 20, 1 << 20)).unwrap();
        let mut p = TaskProcessor::new(compiled.clone(), state, 2);
        p.restore_meta(snapshot);
        let report = crate::engine::watermark::UpstreamReport {
            watermark: Some(20_000),
            idle: false,
        };
        p.report_upstream(1, report, &mut out).unwrap();
        assert_eq!(p.watermark(), Some(20_000), "min(50s - 2s, 20s)");
        fired.extend(values(&out));
        out.clear();
    }
    assert_eq!(
        fired,
        vec![json!({"key": "u1", "window_start": 0, "window_end": 10_000, "n": 1, "total": 1})]
    );
}

#[test]
fn repartitioned_dead_letters_name_the_source_record() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = Arc::new(
        Pipeline::compile(&spec(
            "",
            r#"[{map: {fields: [{name: u, expr: record.user}, {name: x, expr: record.x}]}}, {keyBy: {expr: record.u}},
                {aggregate: {fields: [{name: s, function: sum, expr: record.x}]}}]"#,
        ))
        .unwrap(),
    );
    let state = TaskState::open(dir.path(), &StateOptions::new(8 << 20, 1 << 20)).unwrap();
    let mut p = TaskProcessor::new(compiled, state, 1);
    let mut out = Outputs::default();
    feed(&mut p, 7, br#"{"user": "a", "x": "text"}"#, &mut out);
    let r = out.repartitioned.pop().unwrap();
    assert_eq!(
        r.value, br#"{"u":"a","x":"text"}"#,
        "the mapped record crosses"
    );
    assert_eq!(r.key, b"a");
    let record = SourceRecord {
        topic: "in",
        partition: 0,
        offset: 7,
        key: Some(&r.key),
        value: Some(&r.value),
        timestamp_ms: None,
    };
    p.process_repartitioned(&record, &mut out).unwrap();
    assert_eq!(out.dead_letters.len(), 1);
    let dead = &out.dead_letters[0];
    assert!(
        dead.reason.starts_with("aggregate-2: s: "),
        "{}",
        dead.reason
    );
    assert_eq!(dead.source.as_ref().unwrap().offset, 7);
}

#[test]
fn replayed_source_records_are_applied_once_also_after_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline =
        r#"[{keyBy: {expr: record.k}}, {aggregate: {fields: [{name: n, function: count}]}}]"#;
    let compiled = Arc::new(Pipeline::compile(&spec("", pipeline)).unwrap());
    let open = || TaskState::open(dir.path(), &StateOptions::new(8 << 20, 1 << 20)).unwrap();
    let record = |partition: i32, offset: i64| SourceRecord {
        topic: "in",
        partition,
        offset,
        key: Some(b"a"),
        value: Some(br#"{"k": "a"}"#),
        timestamp_ms: None,
    };
    let mut out = Outputs::default();
    let snapshot = {
        let mut p = TaskProcessor::new(compiled.clone(), open(), 2);
        for (partition, offset) in [(0, 1), (0, 2), (1, 1), (0, 2), (0, 1), (1, 5)] {
            p.process_repartitioned(&record(partition, offset), &mut out)
                .unwrap();
        }
        p.state_mut().flush_cache().unwrap();
        p.snapshot_meta()
    };
    assert_eq!(out.counters.deduplicated, 2);
    let mut p = TaskProcessor::new(compiled, open(), 2);
    p.restore_meta(snapshot);
    for (partition, offset) in [(1, 5), (0, 2), (0, 3)] {
        p.process_repartitioned(&record(partition, offset), &mut out)
            .unwrap();
    }
    assert_eq!(out.counters.deduplicated, 4);
    let counts: Vec<i64> = values(&out)
        .iter()
        .map(|v| v["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        counts,
        [1, 2, 3, 4, 5],
        "one count per distinct source record"
    );
}

#[test]
fn bad_records_go_to_dead_letter_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(
        dir.path(),
        "",
        r#"[{filter: "record.amount / record.div > 1"}, {map: {fields: [{name: a, expr: record.amount}]}}]"#,
        16,
    );
    let mut out = Outputs::default();
    feed(&mut p, 1, b"{not json", &mut out);
    feed(&mut p, 2, br#"{"amount": 10, "div": 0}"#, &mut out);
    feed(&mut p, 3, br#"{"div": 1}"#, &mut out);
    feed(&mut p, 4, br#"{"amount": 10, "div": 2}"#, &mut out);
    feed(&mut p, 5, br#"[1, 2]"#, &mut out);
    p.process(
        &SourceRecord {
            topic: "in",
            partition: 3,
            offset: 6,
            key: None,
            value: None,
            timestamp_ms: None,
        },
        &mut out,
    )
    .unwrap();
    let reasons: Vec<(&str, i64)> = out
        .dead_letters
        .iter()
        .map(|d| (d.reason.as_str(), d.source.as_ref().unwrap().offset))
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].0.starts_with("invalid JSON"), "{reasons:?}");
    assert!(
        reasons[1].0.starts_with("filter-0: ") && reasons[1].0.contains("division"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].0.starts_with("filter-0: ") && reasons[2].0.contains("amount"),
        "{reasons:?}"
    );
    assert!(reasons[3].0.starts_with("invalid JSON"), "{reasons:?}");
    assert_eq!(reasons[4].0, "record has no value");
    assert_eq!(out.dead_letters[1].value, br#"{"amount": 10, "div": 0}"#);
    assert_eq!(out.dead_letters[4].source.as_ref().unwrap().partition, 3);
    assert_eq!(values(&out), vec![json!({"a": 10})]);
    assert_eq!(out.counters.dead_lettered, 5);
    assert_eq!(out.counters.records_in, 6);
}

#[test]
fn bad_event_times_go_to_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(dir.path(), WATERMARK, "[]", 16);
    let mut out = Outputs::default();
    feed(&mut p, 1, br#"{"ts": "noon"}"#, &mut out);
    feed(&mut p, 2, br#"{"x": 1}"#, &mut out);
    feed(&mut p, 3, br#"{"ts": 99999999999999999}"#, &mut out);
    feed(&mut p, 4, br#"{"ts": 5, "x": 1}"#, &mut out);
    assert_eq!(out.dead_letters.len(), 3);
    assert!(out.dead_letters[0].reason.contains("RFC 3339"));
    assert!(out.dead_letters[1].reason.contains("missing"));
    assert!(out.dead_letters[2].reason.contains("out of range"));
    // Passthrough keeps the source bytes as they were.
    assert_eq!(out.records[0].value, br#"{"ts": 5, "x": 1}"#);
    assert_eq!(p.watermark(), Some(5 - 2_000));
}

#[test]
fn late_events_go_to_late_output_and_allowed_lateness_re_emits() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = WINDOWED.replace("LATENESS", "5s");
    let wm = ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 0s, idleTimeout: 0s}";
    let mut p = processor(dir.path(), wm, &pipeline, 16);
    let mut out = Outputs::default();
    let e = |user: &str, ts: i64, amount: i64| {
        serde_json::to_vec(&json!({"user": user, "ts": ts, "amount": amount})).unwrap()
    };
    feed(&mut p, 0, &e("a", 1_000, 1), &mut out);
    feed(&mut p, 1, &e("a", 9_000, 2), &mut out);
    assert!(out.records.is_empty());
    // Watermark 9_999 fires [0, 10s).
    feed(&mut p, 2, &e("b", 9_999, 5), &mut out);
    let mut fired = values(&out);
    fired.sort_by_key(|v| v["key"].as_str().map(str::to_owned));
    assert_eq!(
        fired,
        vec![
            json!({"key": "a", "window_start": 0, "window_end": 10_000, "n": 2, "total": 3}),
            json!({"key": "b", "window_start": 0, "window_end": 10_000, "n": 1, "total": 5}),
        ]
    );
    out.clear();
    // Late but within the allowed 5s: updates and re-emits.
    feed(&mut p, 3, &e("c", 12_000, 1), &mut out);
    feed(&mut p, 4, &e("a", 3_000, 10), &mut out);
    assert_eq!(
        values(&out),
        vec![json!({"key": "a", "window_start": 0, "window_end": 10_000, "n": 3, "total": 13})]
    );
    out.clear();
    // Watermark 14_999 closes [0, 10s) for good.
    feed(&mut p, 5, &e("c", 14_999, 1), &mut out);
    feed(&mut p, 6, &e("a", 5_000, 100), &mut out);
    assert!(out.records.is_empty());
    assert_eq!(out.late.len(), 1);
    assert_eq!(out.late[0].source.offset, 6);
    assert_eq!(out.counters.late, 1);
}

#[test]
fn sliding_windows_count_every_containing_window() {
    let dir = tempfile::tempdir().unwrap();
    let wm = ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 0s, idleTimeout: 0s}";
    let mut p = processor(
        dir.path(),
        wm,
        r#"[{window: {type: sliding, size: 30s, slide: 10s}}, {aggregate: {fields: [{name: n, function: count}, {name: m, function: max, expr: record.v}]}}]"#,
        16,
    );
    let mut out = Outputs::default();
    feed(&mut p, 0, br#"{"ts": 15000, "v": 4}"#, &mut out);
    feed(&mut p, 1, br#"{"ts": 25000, "v": 2}"#, &mut out);
    feed(&mut p, 2, br#"{"ts": 100000, "v": 0}"#, &mut out);
    let got: Vec<(i64, u64, i64)> = values(&out)
        .iter()
        .map(|v| {
            assert_eq!(v["key"], Value::Null);
            (
                v["window_start"].as_i64().unwrap(),
                v["n"].as_u64().unwrap(),
                v["m"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(-10_000, 1, 4), (0, 2, 4), (10_000, 2, 4), (20_000, 1, 2)]
    );
}

#[test]
fn session_windows_merge() {
    let dir = tempfile::tempdir().unwrap();
    let wm = ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 20s, idleTimeout: 0s}";
    let mut p = processor(
        dir.path(),
        wm,
        r#"[{keyBy: {expr: record.k, sourcePartitioned: true}}, {window: {type: session, gap: 10s}},
            {aggregate: {fields: [{name: n, function: count}, {name: first, function: first, expr: record.v}, {name: last, function: last, expr: record.v}]}}]"#,
        16,
    );
    let mut out = Outputs::default();
    // Two sessions of "a" that a third event bridges, and one of "b".
    feed(&mut p, 0, br#"{"k": "a", "ts": 0, "v": "x"}"#, &mut out);
    feed(&mut p, 1, br#"{"k": "a", "ts": 15000, "v": "y"}"#, &mut out);
    feed(&mut p, 2, br#"{"k": "b", "ts": 5000, "v": "z"}"#, &mut out);
    feed(&mut p, 3, br#"{"k": "a", "ts": 8000, "v": "w"}"#, &mut out);
    assert!(out.records.is_empty(), "{:?}", values(&out));
    feed(
        &mut p,
        4,
        br#"{"k": "c", "ts": 60000, "v": "end"}"#,
        &mut out,
    );
    let mut got = values(&out);
    got.sort_by_key(|v| v["key"].as_str().map(str::to_owned));
    assert_eq!(
        got,
        vec![
            json!({"key": "a", "window_start": 0, "window_end": 25_000, "n": 3, "first": "x", "last": "y"}),
            json!({"key": "b", "window_start": 5_000, "window_end": 15_000, "n": 1, "first": "z", "last": "z"}),
        ]
    );
}

#[test]
fn dedupe_forgets_keys_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let wm = ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 0s, idleTimeout: 0s}";
    let mut p = processor(
        dir.path(),
        wm,
        r#"[{dedupe: {key: record.id, ttl: 10s}}]"#,
        4,
    );
    let mut out = Outputs::default();
    for (offset, (id, ts)) in [
        ("a", 0),
        ("a", 5_000),
        ("b", 6_000),
        ("a", 9_999),
        ("a", 10_000),
        ("b", 30_000),
        ("a", 30_000),
    ]
    .into_iter()
    .enumerate()
    {
        let value = serde_json::to_vec(&json!({"id": id, "ts": ts})).unwrap();
        feed(&mut p, offset as i64, &value, &mut out);
    }
    let ts: Vec<i64> = values(&out)
        .iter()
        .map(|v| v["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(ts, vec![0, 6_000, 10_000, 30_000, 30_000]);
    assert_eq!(out.counters.deduplicated, 2);
    // Expired entries were removed from state by their timers.
    p.state_mut().flush_cache().unwrap();
    let live = p
        .state_mut()
        .db()
        .iterator(rocksdb::IteratorMode::Start)
        .filter(|kv| kv.as_ref().is_ok_and(|(k, _)| k[0] == 0x01))
        .count();
    assert_eq!(live, 2, "only the entries of ts 30000 are left");
}

#[test]
fn unwindowed_aggregate_emits_a_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(
        dir.path(),
        "",
        r#"[{keyBy: {expr: record.k, sourcePartitioned: true}}, {aggregate: {fields: [{name: n, function: count}, {name: avg, function: avg, expr: record.v}, {name: d, function: approxDistinct, expr: record.v}]}}]"#,
        16,
    );
    let mut out = Outputs::default();
    feed(&mut p, 0, br#"{"k": "a", "v": 1}"#, &mut out);
    feed(&mut p, 1, br#"{"k": 7, "v": 2}"#, &mut out);
    feed(&mut p, 2, br#"{"k": "a", "v": 4}"#, &mut out);
    feed(&mut p, 3, br#"{"k": "a", "v": "x"}"#, &mut out);
    assert_eq!(
        values(&out),
        vec![
            json!({"key": "a", "n": 1, "avg": 1.0, "d": 1}),
            json!({"key": "7", "n": 1, "avg": 2.0, "d": 1}),
            json!({"key": "a", "n": 2, "avg": 2.5, "d": 2}),
        ]
    );
    assert_eq!(out.records[1].key.as_deref(), Some(&b"7"[..]));
    assert!(out.dead_letters[0].reason.contains("must be a number"));
}

#[test]
fn idle_partitions_let_windows_fire() {
    let dir = tempfile::tempdir().unwrap();
    let wm = ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 0s, idleTimeout: 30s}";
    let mut p = processor(
        dir.path(),
        wm,
        r#"[{window: {type: tumbling, size: 10s}}, {aggregate: {fields: [{name: n, function: count}]}}]"#,
        16,
    )
    .with_processing_time(0);
    let mut out = Outputs::default();
    p.advance_time(1_000_000, &mut out).unwrap();
    p.register_partition("in", 0);
    p.register_partition("in", 1);
    feed(&mut p, 0, br#"{"ts": 5000}"#, &mut out);
    feed(&mut p, 1, br#"{"ts": 25000}"#, &mut out);
    assert_eq!(p.watermark(), None, "partition 1 holds the watermark back");
    for now in (1_001_000..=1_029_000).step_by(1_000) {
        p.advance_time(now, &mut out).unwrap();
    }
    assert!(out.records.is_empty());
    p.advance_time(1_030_000, &mut out).unwrap();
    assert_eq!(p.watermark(), Some(25_000));
    assert_eq!(
        values(&out),
        vec![json!({"key": null, "window_start": 0, "window_end": 10_000, "n": 1})]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(
            dir.path(),
            WATERMARK,
            r#"[{filter: "record.amount > 1"}, {keyBy: {expr: record.user, sourcePartitioned: true}}, {dedupe: {key: record.id, ttl: 1s}},
                {window: {type: session, gap: 5s}}, {aggregate: {fields: [{name: n, function: count}, {name: s, function: sum, expr: record.amount}]}}]"#,
            4,
        );
        let mut out = Outputs::default();
        for (i, bytes) in records.iter().enumerate() {
            feed(&mut p, i as i64, bytes, &mut out);
        }
        let json_like = br#"{"amount": 1e308, "user": [1], "id": {"a": null}, "ts": -62167219200000}"#;
        feed(&mut p, 99, json_like, &mut out);
        p.advance_time(i64::MAX, &mut out).unwrap();
        prop_assert_eq!(out.counters.records_in, records.len() as u64 + 1);
    }
}

/// Runs `events` through `pipeline` with state `options`, flushing the
/// cache as for a checkpoint every `flush_every` records, then fires
/// every window.
fn run_with_state(
    pipeline: &str,
    events: &[Event],
    options: &StateOptions,
    flush_every: Option<usize>,
) -> (Vec<Value>, crate::engine::record::Counters) {
    let dir = tempfile::tempdir().unwrap();
    let compiled = Arc::new(Pipeline::compile(&spec(WATERMARK, pipeline)).unwrap());
    let mut p = TaskProcessor::new(compiled, TaskState::open(dir.path(), options).unwrap(), 1);
    let mut out = Outputs::default();
    for (i, e) in events.iter().enumerate() {
        feed(&mut p, i as i64, &e.json(), &mut out);
        if flush_every.is_some_and(|every| i % every == 0) {
            p.state_mut().flush_cache().unwrap();
        }
    }
    p.advance_time(i64::MAX, &mut out).unwrap();
    while p.fire_due_timers(&mut out).unwrap() {}
    (values(&out), out.counters)
}

/// Results grouped by their key, in their order.
fn results_by_key(results: Vec<Value>) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut by_key = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for result in results {
        by_key
            .entry(result["key"].to_string())
            .or_default()
            .push(result);
    }
    by_key
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The windows' state and timers held in memory (a cache for every key,
    /// no flush) and pushed through RocksDB (a cache of two entries that
    /// evicts on nearly every record, four timers in memory with the rest
    /// spilled, the cache flushed as for a checkpoint every few records)
    /// give the same results, in the same order for each key. (Windows of
    /// several keys that close at the same time close in no given order.)
    #[test]
    fn windows_in_memory_and_through_rocksdb_give_the_same_results(
        seed in any::<u64>(),
        flush_every in 1usize..50,
        window in prop::sample::select(vec![
            "{type: tumbling, size: 10s, allowedLateness: 5s}",
            "{type: sliding, size: 10s, slide: 5s}",
            "{type: session, gap: 3s}",
        ]),
    ) {
        let pipeline = format!(
            "[{{keyBy: {{expr: record.user, sourcePartitioned: true}}}}, {{window: {window}}},
              {{aggregate: {{fields: [{{name: n, function: count}}, {{name: total, function: sum, expr: record.amount}}]}}}}]"
        );
        let events = events(seed, 1_500);
        let memory = run_with_state(&pipeline, &events, &small_cache(100_000), None);
        let rocksdb = run_with_state(
            &pipeline,
            &events,
            &small_cache(2).with_memory_timers(4),
            Some(flush_every),
        );
        prop_assert!(memory.1.records_out > 0);
        prop_assert_eq!(memory.1, rocksdb.1);
        prop_assert_eq!(results_by_key(memory.0), results_by_key(rocksdb.0));
    }
}

/// An aggregate that is the last step writes its results' JSON text
/// directly; one followed by another step builds JSON values. Both write
/// the same bytes, for every kind of window and aggregate function, keys
/// that need escaping included.
#[test]
fn results_written_directly_are_the_bytes_of_the_json_values() {
    let aggregate = r#"{aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount},
        {name: mean, function: avg, expr: record.amount}, {name: lo, function: min, expr: record.amount},
        {name: first_pad, function: first, expr: record.pad}, {name: users, function: approxDistinct, expr: record.user},
        {name: a_last, function: last, expr: record.user}]}}"#;
    for window in [
        "{window: {type: tumbling, size: 10s, allowedLateness: 5s}}, ",
        "{window: {type: sliding, size: 10s, slide: 5s}}, ",
        "{window: {type: session, gap: 3s}}, ",
        "{window: {type: count, count: 4, slideCount: 2}}, ",
        "",
    ] {
        for key in ["record.user + 'é\\\"x'", "record.user"] {
            let last = format!(
                "[{{keyBy: {{expr: \"{key}\", sourcePartitioned: true}}}}, {window}{aggregate}]"
            );
            let followed = last.replace("}]}}]", "}]}}, {filter: \"true\"}]");
            assert_ne!(last, followed);
            let events = events(5, 600);
            let run = |pipeline: &str| {
                let dir = tempfile::tempdir().unwrap();
                let mut p = processor(dir.path(), WATERMARK, pipeline, 1000);
                let mut out = Outputs::default();
                for (i, e) in events.iter().enumerate() {
                    feed(&mut p, i as i64, &e.json(), &mut out);
                }
                p.advance_time(i64::MAX, &mut out).unwrap();
                while p.fire_due_timers(&mut out).unwrap() {}
                out.records
            };
            let direct = run(&last);
            let through_values = run(&followed);
            assert!(direct.len() > 100, "{window}: {}", direct.len());
            assert_eq!(direct.len(), through_values.len(), "{window} {key}");
            for (a, b) in direct.iter().zip(&through_values) {
                assert_eq!(
                    String::from_utf8_lossy(&a.value),
                    String::from_utf8_lossy(&b.value),
                    "{window} {key}"
                );
                assert_eq!(a.key, b.key);
            }
        }
    }
}

/// Day windows in Europe/Berlin across both daylight-saving changes of 2026,
/// against a model that buckets each event by its local date: the days of
/// 29 March and 25 October last 23 and 25 hours.
#[test]
fn day_windows_in_a_time_zone_follow_local_dates_across_daylight_saving() {
    let dir = tempfile::tempdir().unwrap();
    let wm = ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 0s, idleTimeout: 0s}";
    let mut p = processor(
        dir.path(),
        wm,
        r#"[{window: {type: tumbling, size: 24h, timeZone: Europe/Berlin}}, {aggregate: {fields: [{name: n, function: count}]}}]"#,
        16,
    );
    let berlin = jiff::tz::TimeZoneDatabase::bundled()
        .get("Europe/Berlin")
        .unwrap();
    let mut model: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
    let mut out = Outputs::default();
    let mut offset = 0;
    for first in ["2026-03-27T00:00:00Z", "2026-10-23T00:00:00Z"] {
        let first: jiff::Timestamp = first.parse().unwrap();
        // One event every 20 minutes for four days.
        for i in 0..4 * 72 {
            let ts = first.as_millisecond() + i * 1_200_000;
            feed(
                &mut p,
                offset,
                format!(r#"{{"ts": {ts}}}"#).as_bytes(),
                &mut out,
            );
            offset += 1;
            let local = jiff::Timestamp::from_millisecond(ts)
                .unwrap()
                .to_zoned(berlin.clone());
            let day = local.start_of_day().unwrap();
            let next = local.tomorrow().unwrap().start_of_day().unwrap();
            model
                .entry(day.timestamp().as_millisecond())
                .or_insert((next.timestamp().as_millisecond(), 0))
                .1 += 1;
        }
    }
    // A later event (in the past: event times far ahead of the wall clock
    // are refused) fires every day before it.
    let later: jiff::Timestamp = "2026-11-01T12:00:00Z".parse().unwrap();
    let later = later.as_millisecond();
    feed(
        &mut p,
        offset,
        format!(r#"{{"ts": {later}}}"#).as_bytes(),
        &mut out,
    );
    let got: BTreeMap<i64, (i64, u64)> = values(&out)
        .iter()
        .map(|v| {
            (
                v["window_start"].as_i64().unwrap(),
                (v["window_end"].as_i64().unwrap(), v["n"].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, model);
    let hours: Vec<i64> = got
        .iter()
        .map(|(start, (end, _))| (end - start) / 3_600_000)
        .collect();
    assert_eq!(hours, vec![24, 24, 23, 24, 24, 24, 24, 25, 24, 24]);
}

/// The plain model of count windows: after each event of a key whose
/// number is a multiple of `slide`, the window over that key's last `size`
/// events (fewer at first), as (key, window_seq) -> (count, sum, min, max).
fn count_window_model(events: &[Event], size: usize, slide: usize) -> Vec<Value> {
    let mut seen: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let mut emitted = Vec::new();
    for e in events {
        let amounts = seen.entry(e.user).or_default();
        amounts.push(e.amount);
        if amounts.len().is_multiple_of(slide) {
            let window = &amounts[amounts.len().saturating_sub(size)..];
            emitted.push(json!({
                "key": format!("u{}", e.user),
                "window_seq": amounts.len() / slide,
                "n": window.len(),
                "total": window.iter().sum::<i64>(),
                "low": window.iter().min(),
                "high": window.iter().max(),
            }));
        }
    }
    emitted
}

fn count_pipeline(size: usize, slide: usize) -> String {
    format!(
        r#"[{{keyBy: {{expr: record.user, sourcePartitioned: true}}}},
        {{window: {{type: count, count: {size}, slideCount: {slide}}}}},
        {{aggregate: {{fields: [{{name: n, function: count}}, {{name: total, function: sum, expr: record.amount}},
            {{name: low, function: min, expr: record.amount}}, {{name: high, function: max, expr: record.amount}}]}}}}]"#
    )
}

/// Count windows, tumbling and sliding, equal the model on disordered
/// input with late events (which count windows take like any other) and
/// duplicates (each a separate event), with a cache small enough to evict;
/// and so does a run that restarts from its flushed state halfway.
#[test]
fn count_windows_equal_the_model_also_across_a_restart() {
    for (size, slide) in [(4, 4), (6, 2), (5, 1)] {
        let mut events = events(size as u64 * 31 + slide as u64, 3_000);
        // Duplicates: every 50th event comes twice.
        let duplicates: Vec<Event> = events.iter().step_by(50).cloned().collect();
        events.extend(duplicates);
        let model = count_window_model(&events, size, slide);
        let pipeline = count_pipeline(size, slide);
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(dir.path(), WATERMARK, &pipeline, 8);
        let mut out = Outputs::default();
        for (i, e) in events.iter().enumerate() {
            feed(&mut p, i as i64, &e.json(), &mut out);
        }
        assert!(model.len() > 500, "{}", model.len());
        assert_eq!(values(&out), model, "count {size} slide {slide}");
        assert_eq!(out.counters.late, 0);
        assert_eq!(out.counters.dead_lettered, 0);

        // Through a flush and a restart halfway.
        let dir = tempfile::tempdir().unwrap();
        let mut out = Outputs::default();
        let half = events.len() / 2;
        let meta = {
            let mut p = processor(dir.path(), WATERMARK, &pipeline, 8);
            for (i, e) in events[..half].iter().enumerate() {
                feed(&mut p, i as i64, &e.json(), &mut out);
            }
            p.state_mut().flush_cache().unwrap();
            serde_json::to_string(&p.snapshot_meta()).unwrap()
        };
        let mut p = processor(dir.path(), WATERMARK, &pipeline, 8);
        p.restore_meta(serde_json::from_str(&meta).unwrap());
        for (i, e) in events[half..].iter().enumerate() {
            feed(&mut p, (half + i) as i64, &e.json(), &mut out);
        }
        assert_eq!(values(&out), model, "restarted: count {size} slide {slide}");
    }
}

/// A count window needs no event time: without eventTime on the source it
/// counts records as they come.
#[test]
fn count_windows_need_no_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = processor(
        dir.path(),
        "",
        r#"[{keyBy: {expr: record.k, sourcePartitioned: true}}, {window: {type: count, count: 2}},
            {aggregate: {fields: [{name: last, function: last, expr: record.v}]}}]"#,
        16,
    );
    let mut out = Outputs::default();
    for (i, (k, v)) in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5), ("a", 6)]
        .into_iter()
        .enumerate()
    {
        feed(
            &mut p,
            i as i64,
            format!(r#"{{"k": "{k}", "v": {v}}}"#).as_bytes(),
            &mut out,
        );
    }
    assert_eq!(
        values(&out),
        vec![
            json!({"key": "a", "window_seq": 1, "last": 3}),
            json!({"key": "b", "window_seq": 1, "last": 5}),
            json!({"key": "a", "window_seq": 2, "last": 6}),
        ]
    );
}

/// A match as the tests compare it: key, start, end and the (stage, event
/// time, amount) of each record it took.
type MatchSummary = (String, i64, i64, Vec<(String, i64, i64)>);

fn pattern_matches(out: &Outputs, stages: &[&str]) -> Vec<MatchSummary> {
    let mut got: Vec<MatchSummary> = values(out)
        .iter()
        .map(|v| {
            let mut taken = Vec::new();
            for stage in stages {
                for record in v[*stage].as_array().into_iter().flatten() {
                    taken.push((
                        (*stage).to_owned(),
                        record["ts"].as_i64().unwrap(),
                        record["amount"].as_i64().unwrap(),
                    ));
                }
            }
            (
                v["key"].as_str().unwrap().to_owned(),
                v["match_start"].as_i64().unwrap(),
                v["match_end"].as_i64().unwrap(),
                taken,
            )
        })
        .collect();
    got.sort();
    got
}

/// The plain model of a pattern step: drop the late events (at or behind
/// the watermark, the latest event time less 2 s, when they come), sort
/// each key's events by event time, run the pattern over them, and confirm
/// absences up to the final watermark.
fn pattern_model(pipeline: &str, events: &[Event]) -> Vec<MatchSummary> {
    let compiled = Pipeline::compile(&spec(WATERMARK, pipeline)).unwrap();
    let Some(Operation::Pattern(pattern)) = compiled.steps().last().map(|s| &s.operation) else {
        panic!("the pipeline ends with a pattern");
    };
    let mut max: Option<i64> = None;
    let mut by_key: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let late = max.is_some_and(|m| e.ts <= m - 2_000);
        max = Some(max.map_or(e.ts, |m| m.max(e.ts)));
        if !late {
            by_key
                .entry(format!("u{}", e.user))
                .or_default()
                .push((e.ts, i));
        }
    }
    let watermark = max.unwrap() - 2_000;
    let mut all = Vec::new();
    for (key, mut list) in by_key {
        list.sort();
        let mut partials = Vec::new();
        let mut matches = Vec::new();
        for (ts, i) in list.into_iter().filter(|(ts, _)| *ts <= watermark) {
            let record: Value = serde_json::from_slice(&events[i].json()).unwrap();
            let holds = pattern.conditions(&record).unwrap();
            pattern.advance(&mut partials, ts, false, &mut matches);
            pattern.feed(&mut partials, ts, &events[i].json(), holds, &mut matches);
        }
        pattern.advance(&mut partials, watermark, true, &mut matches);
        for m in matches {
            let taken = m
                .events
                .iter()
                .map(|c| {
                    let record: Value = serde_json::from_slice(&c.value).unwrap();
                    (
                        pattern.stages[usize::from(c.stage)].name.clone(),
                        c.time,
                        record["amount"].as_i64().unwrap(),
                    )
                })
                .collect();
            all.push((key.clone(), m.start, m.end, taken));
        }
    }
    all.sort();
    all
}

const PATTERNS: [(&str, &[&str]); 2] = [
    (
        r#"[{keyBy: {expr: record.user, sourcePartitioned: true}}, {pattern: {within: 20s, sequence: [
            {name: low, condition: "record.amount < 300", times: 2},
            {name: high, condition: "record.amount >= 700"}]}}]"#,
        &["low", "high"],
    ),
    (
        r#"[{keyBy: {expr: record.user, sourcePartitioned: true}}, {pattern: {within: 5s, contiguity: strict, sequence: [
            {name: big, condition: "record.amount >= 600", oneOrMore: true},
            {name: mid, condition: "record.amount >= 300 && record.amount < 600"},
            {name: none_small, condition: "record.amount < 100", absent: true}]}}]"#,
        &["big", "mid"],
    ),
];

/// Pattern steps on disordered input with late events and duplicates equal
/// the model, straight through and across a restart from flushed state.
#[test]
fn patterns_equal_the_model_also_across_a_restart() {
    for (n, (pipeline, stages)) in PATTERNS.iter().enumerate() {
        let mut events = events(41 + n as u64, 4_000);
        let duplicates: Vec<Event> = events.iter().step_by(40).cloned().collect();
        events.extend(duplicates);
        // A last event far ahead moves the watermark past everything.
        let end = events.iter().map(|e| e.ts).max().unwrap() + 600_000;
        events.push(Event {
            user: 999,
            ts: end,
            amount: 500,
        });
        let model = pattern_model(pipeline, &events);
        assert!(
            model.len() > 50,
            "pattern {n}: only {} matches",
            model.len()
        );

        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(dir.path(), WATERMARK, pipeline, 16);
        let mut out = Outputs::default();
        for (i, e) in events.iter().enumerate() {
            feed(&mut p, i as i64, &e.json(), &mut out);
        }
        assert!(out.counters.late > 10, "the data exercises lateness");
        assert_eq!(out.counters.late, out.late.len() as u64);
        assert_eq!(pattern_matches(&out, stages), model, "pattern {n}");

        let dir = tempfile::tempdir().unwrap();
        let mut out = Outputs::default();
        let half = events.len() / 2;
        let meta = {
            let mut p = processor(dir.path(), WATERMARK, pipeline, 16);
            for (i, e) in events[..half].iter().enumerate() {
                feed(&mut p, i as i64, &e.json(), &mut out);
            }
            p.state_mut().flush_cache().unwrap();
            serde_json::to_string(&p.snapshot_meta()).unwrap()
        };
        let mut p = processor(dir.path(), WATERMARK, pipeline, 16);
        p.restore_meta(serde_json::from_str(&meta).unwrap());
        for (i, e) in events[half..].iter().enumerate() {
            feed(&mut p, (half + i) as i64, &e.json(), &mut out);
        }
        assert_eq!(
            pattern_matches(&out, stages),
            model,
            "restarted: pattern {n}"
        );
    }
}

/// A map writes its fields in name order, but when several fail on a
/// record the dead letter names the first one the user declared, whether
/// the map is the last step (its output written directly) or not.
#[test]
fn a_map_reports_the_first_declared_field_that_fails() {
    for then in ["", r#", {filter: "true"}"#] {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(
            dir.path(),
            "",
            &format!(
                r#"[{{map: {{fields: [{{name: z, expr: record.first}}, {{name: m, expr: record.ok}}, {{name: a, expr: record.second}}]}}}}{then}]"#
            ),
            16,
        );
        let mut out = Outputs::default();
        feed(&mut p, 1, br#"{"ok": 1}"#, &mut out);
        feed(&mut p, 2, br#"{"ok": 1, "first": 2}"#, &mut out);
        feed(
            &mut p,
            3,
            br#"{"ok": 1, "first": 2, "second": 3}"#,
            &mut out,
        );
        let reasons: Vec<&str> = out.dead_letters.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{then}: {reasons:?}");
        assert!(
            reasons[0].starts_with("map-0: ") && reasons[0].contains("first"),
            "{then}: {reasons:?}"
        );
        assert!(
            reasons[1].starts_with("map-0: ") && reasons[1].contains("second"),
            "{then}: {reasons:?}"
        );
        assert_eq!(
            values(&out),
            vec![json!({"a": 3, "m": 1, "z": 2})],
            "{then}"
        );
    }
}

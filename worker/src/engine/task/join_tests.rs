//! Join tests: exact examples of each kind, and random disordered input
//! with late records, duplicates and deletions through the repartition
//! topic equal to a plain model, straight through and across a crash that
//! restores every task from a checkpoint and replays what followed it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::*;
use crate::state::StateOptions;

const WATERMARK: &str =
    ", eventTime: {field: ts}, watermark: {maxOutOfOrderness: 2s, idleTimeout: 0s}";

fn compile(pipeline: &str) -> Arc<Pipeline> {
    let yaml = format!(
        r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in]{WATERMARK}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {pipeline}
"#
    );
    Arc::new(Pipeline::compile(&serde_yaml::from_str(&yaml).unwrap()).unwrap())
}

fn options() -> StateOptions {
    StateOptions::new(8 << 20, 1 << 20).with_cache_bytes(16 * 320)
}

/// One task reading partition 0 of `in` and `other`.
fn single(dir: &Path, pipeline: &str) -> TaskProcessor {
    let pipeline = compile(pipeline);
    let timed = pipeline.join().is_some_and(|(_, j)| j.is_timed());
    let mut p = TaskProcessor::new(pipeline, TaskState::open(dir, &options()).unwrap(), 1);
    p.register_partition("in", 0);
    if timed {
        p.register_partition("other", 0);
    }
    p
}

fn send(
    p: &mut TaskProcessor,
    topic: &str,
    offset: i64,
    key: Option<&str>,
    value: Option<Value>,
    out: &mut Outputs,
) {
    let bytes = value.map(|v| serde_json::to_vec(&v).unwrap());
    let timestamp_ms = bytes
        .as_ref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v["ts"].as_i64());
    let record = SourceRecord {
        topic,
        partition: 0,
        offset,
        key: key.map(str::as_bytes),
        value: bytes.as_deref(),
        timestamp_ms,
    };
    p.process(&record, out).unwrap();
}

fn outputs(out: &Outputs) -> Vec<Value> {
    out.records
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect()
}

#[test]
fn a_table_join_enriches_with_the_latest_row_and_a_deletion_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = r#"[{keyBy: {expr: record.user, sourcePartitioned: true}},
        {join: {type: table, topic: other, as: profile, mode: left}},
        {filter: "record.amount > 0"}]"#;
    let mut p = single(dir.path(), pipeline);
    let mut out = Outputs::default();
    let click = |user: &str, amount: i64| json!({"user": user, "amount": amount, "ts": 1_000});
    send(&mut p, "in", 0, None, Some(click("a", 1)), &mut out);
    send(
        &mut p,
        "other",
        0,
        Some("a"),
        Some(json!({"tier": "gold"})),
        &mut out,
    );
    send(&mut p, "in", 1, None, Some(click("a", 2)), &mut out);
    send(
        &mut p,
        "other",
        1,
        Some("a"),
        Some(json!({"tier": "silver"})),
        &mut out,
    );
    send(&mut p, "in", 2, None, Some(click("a", 3)), &mut out);
    send(&mut p, "in", 3, None, Some(click("b", 4)), &mut out);
    send(&mut p, "other", 2, Some("a"), None, &mut out);
    send(&mut p, "in", 4, None, Some(click("a", 5)), &mut out);
    send(
        &mut p,
        "other",
        3,
        None,
        Some(json!({"tier": "x"})),
        &mut out,
    );
    let profiles: Vec<(i64, Value)> = outputs(&out)
        .into_iter()
        .map(|v| (v["amount"].as_i64().unwrap(), v["profile"].clone()))
        .collect();
    assert_eq!(
        profiles,
        [
            (1, Value::Null),
            (2, json!({"tier": "gold"})),
            (3, json!({"tier": "silver"})),
            (4, Value::Null),
            (5, Value::Null),
        ],
        "left join: the latest row, null without one or after a deletion; later steps run on the joined record"
    );
    let reasons: Vec<&str> = out.dead_letters.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("no Kafka key"), "{reasons:?}");

    // An inner join drops what has no row, counted as filtered.
    let dir = tempfile::tempdir().unwrap();
    let mut p = single(
        dir.path(),
        r#"[{keyBy: {expr: record.user, sourcePartitioned: true}},
        {join: {type: table, topic: other, key: record.id, as: profile}}]"#,
    );
    let mut out = Outputs::default();
    send(&mut p, "in", 0, None, Some(click("a", 1)), &mut out);
    send(
        &mut p,
        "other",
        0,
        None,
        Some(json!({"id": "a", "tier": "gold"})),
        &mut out,
    );
    send(&mut p, "in", 1, None, Some(click("a", 2)), &mut out);
    send(&mut p, "other", 1, Some("a"), None, &mut out);
    assert_eq!(outputs(&out).len(), 1);
    assert_eq!(outputs(&out)[0]["profile"]["tier"], "gold");
    assert_eq!(out.counters.filtered, 1);
    assert!(
        out.dead_letters[0].reason.contains("join.key is set"),
        "a deletion cannot be keyed by an expression: {:?}",
        out.dead_letters[0].reason
    );
}

#[test]
fn a_temporal_join_takes_the_version_valid_at_the_records_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = r#"[{keyBy: {expr: record.item, sourcePartitioned: true}},
        {join: {type: table, topic: other, key: record.item, as: rate, temporal: true, mode: left}}]"#;
    let mut p = single(dir.path(), pipeline);
    let mut out = Outputs::default();
    let rate = |ts: i64, eur: f64| json!({"item": "usd", "ts": ts, "eur": eur});
    let order = |ts: i64, id: i64| json!({"item": "usd", "ts": ts, "id": id});
    send(&mut p, "other", 0, None, Some(rate(10_000, 0.9)), &mut out);
    send(&mut p, "in", 0, None, Some(order(9_000, 1)), &mut out);
    send(&mut p, "in", 1, None, Some(order(12_000, 2)), &mut out);
    assert!(outputs(&out).is_empty(), "orders wait for the watermark");
    // A rate read after order 2 but valid before it.
    send(&mut p, "other", 1, None, Some(rate(11_000, 0.8)), &mut out);
    send(&mut p, "in", 2, None, Some(order(16_000, 3)), &mut out);
    send(&mut p, "other", 2, None, Some(rate(15_000, 0.7)), &mut out);
    // Both partitions move the watermark to 18 s.
    send(&mut p, "other", 3, None, Some(rate(20_000, 0.6)), &mut out);
    send(&mut p, "in", 3, None, Some(order(20_000, 4)), &mut out);
    let got: Vec<(i64, Value)> = outputs(&out)
        .into_iter()
        .map(|v| (v["id"].as_i64().unwrap(), v["rate"]["eur"].clone()))
        .collect();
    assert_eq!(
        got,
        [(1, Value::Null), (2, json!(0.8)), (3, json!(0.7))],
        "each order joins the rate of its own time, whatever the arrival order"
    );
    // An order behind the watermark is late.
    send(&mut p, "in", 4, None, Some(order(17_000, 5)), &mut out);
    assert_eq!(out.counters.late, 1);
    assert_eq!(out.late.len(), 1);
}

#[test]
fn an_interval_join_emits_each_pair_once_and_forgets_with_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = r#"[{keyBy: {expr: record.order, sourcePartitioned: true}},
        {join: {type: interval, topic: other, key: record.order, as: payment, before: 1s, after: 5s}}]"#;
    let mut p = single(dir.path(), pipeline);
    let mut out = Outputs::default();
    let order = |id: &str, ts: i64| json!({"order": id, "ts": ts});
    let pay = |id: &str, ts: i64, n: i64| json!({"order": id, "ts": ts, "n": n});
    send(&mut p, "in", 0, None, Some(order("a", 10_000)), &mut out);
    send(&mut p, "other", 0, None, Some(pay("a", 9_000, 1)), &mut out);
    send(
        &mut p,
        "other",
        1,
        None,
        Some(pay("a", 15_000, 2)),
        &mut out,
    );
    send(
        &mut p,
        "other",
        2,
        None,
        Some(pay("a", 15_001, 3)),
        &mut out,
    );
    send(
        &mut p,
        "other",
        3,
        None,
        Some(pay("b", 10_000, 4)),
        &mut out,
    );
    send(&mut p, "in", 1, None, Some(order("a", 14_500)), &mut out);
    let pairs: Vec<(i64, i64)> = outputs(&out)
        .into_iter()
        .map(|v| {
            (
                v["ts"].as_i64().unwrap(),
                v["payment"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [(10_000, 1), (10_000, 2), (14_500, 2), (14_500, 3)],
        "payments from 1 s before to 5 s after each order, bounds included, other keys apart"
    );
    // The watermark passes every expiry: the keys' state goes.
    send(&mut p, "in", 2, None, Some(order("z", 40_000)), &mut out);
    send(
        &mut p,
        "other",
        4,
        None,
        Some(pay("z", 40_000, 5)),
        &mut out,
    );
    p.state_mut().flush_cache().unwrap();
    let mut left = 0;
    for key in ["a", "b"] {
        let mut payload = Vec::new();
        keyed_payload(&mut payload, key.as_bytes(), None);
        let mut k = Vec::new();
        state_key(&mut k, 1, &payload);
        left += usize::from(p.state_mut().get(&k).unwrap().is_some());
    }
    assert_eq!(left, 0, "expired rows are dropped");
    assert_eq!(outputs(&out).len(), 5, "z pairs once");
    send(
        &mut p,
        "other",
        5,
        None,
        Some(pay("a", 20_000, 6)),
        &mut out,
    );
    assert_eq!(
        out.counters.late, 1,
        "a payment behind the watermark is late"
    );
}

/// An event of the model tests: on `in` (the pipeline's stream) or on
/// `other` (the join's topic); `deleted` is a table deletion.
#[derive(Clone, Debug)]
struct Event {
    other: bool,
    user: u32,
    ts: i64,
    id: usize,
    partition: usize,
    deleted: bool,
}

impl Event {
    fn key(&self) -> String {
        format!("u{}", self.user)
    }

    fn json(&self) -> Option<Vec<u8>> {
        (!self.deleted).then(|| {
            serde_json::to_vec(&json!({"user": self.key(), "ts": self.ts, "id": self.id})).unwrap()
        })
    }
}

fn random_events(seed: u64, n: usize, tasks: usize, deletions: bool) -> Vec<Event> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut events: Vec<Event> = (0..n)
        .map(|i| {
            let r = next();
            let disorder = if r % 41 == 0 {
                15_000
            } else {
                (r >> 8) as i64 % 2_500
            };
            let other = next() % 5 < 2;
            Event {
                other,
                user: (next() % 12) as u32,
                ts: 1_700_000_000_000 + i as i64 * 100 - disorder,
                id: i,
                partition: (next() % tasks as u64) as usize,
                deleted: deletions && other && next() % 9 == 0,
            }
        })
        .collect();
    // Duplicates: records read twice (a producer retry), at later offsets.
    let duplicates: Vec<Event> = events.iter().step_by(23).cloned().collect();
    for (i, d) in duplicates.into_iter().enumerate() {
        events.insert((i * 31 + 7).min(events.len()), d);
    }
    // Records far ahead on every partition move the watermark past the rest.
    let end = events.iter().map(|e| e.ts).max().unwrap() + 600_000;
    for partition in 0..tasks {
        for other in [false, true] {
            events.push(Event {
                other,
                user: 999,
                ts: end,
                id: 1_000_000,
                partition,
                deleted: false,
            });
        }
    }
    events
}

/// One output: the key, the record's id and the joined record's (`None`
/// for a left join without a row).
type Pair = (String, usize, Option<usize>);

fn pairs(out: &Outputs) -> Vec<Pair> {
    let mut got: Vec<Pair> = outputs(out)
        .into_iter()
        .map(|v| {
            (
                v["user"].as_str().unwrap().to_owned(),
                v["id"].as_u64().unwrap() as usize,
                v["o"]["id"].as_u64().map(|i| i as usize),
            )
        })
        .collect();
    got.sort();
    got
}

/// The plain model of each join over the events in arrival order: the
/// watermark is the minimum over the partitions taking part of their
/// latest event time less 2 s (none until each delivered), as the tasks
/// behind the repartition topic see it before the record's own task
/// reports it; a timed join's record at or behind it is late.
fn join_model(kind: &str, events: &[Event], tasks: usize) -> (Vec<Pair>, u64) {
    let timed = kind != "table";
    let mut maxes: BTreeMap<(bool, usize), i64> = BTreeMap::new();
    let mut watermark: Option<i64> = None;
    let mut late = 0;
    let mut got = Vec::new();
    // Table: key -> versions (time, arrival, id or deletion).
    let mut table: BTreeMap<String, Vec<(i64, usize, Option<usize>)>> = BTreeMap::new();
    let mut waiting: Vec<&Event> = Vec::new();
    let mut lefts: Vec<&Event> = Vec::new();
    let mut rights: Vec<&Event> = Vec::new();
    for (arrival, e) in events.iter().enumerate() {
        // A temporal table's rows are never late: one behind the
        // watermark counts for the records after it.
        let is_late =
            timed && !(kind == "temporal" && e.other) && watermark.is_some_and(|wm| e.ts <= wm);
        if is_late {
            late += 1;
        } else {
            match (kind, e.other) {
                ("table", true) | ("temporal", true) => {
                    let id = (!e.deleted).then_some(e.id);
                    let versions = table.entry(e.key()).or_default();
                    if kind == "table" {
                        versions.clear();
                    }
                    versions.push((e.ts, arrival, id));
                }
                ("table", false) => {
                    let row = table.get(&e.key()).and_then(|v| v.last()).and_then(|v| v.2);
                    if let Some(row) = row {
                        got.push((e.key(), e.id, Some(row)));
                    }
                }
                ("temporal", false) => waiting.push(e),
                ("interval", false) => {
                    for r in rights.iter().filter(|r| r.user == e.user) {
                        if r.ts >= e.ts - 3_000 && r.ts <= e.ts + 1_000 {
                            got.push((e.key(), e.id, Some(r.id)));
                        }
                    }
                    lefts.push(e);
                }
                (_, true) => {
                    for l in lefts.iter().filter(|l| l.user == e.user) {
                        if e.ts >= l.ts - 3_000 && e.ts <= l.ts + 1_000 {
                            got.push((e.key(), l.id, Some(e.id)));
                        }
                    }
                    rights.push(e);
                }
                _ => unreachable!(),
            }
        }
        if timed {
            let m = maxes.entry((e.other, e.partition)).or_insert(e.ts);
            *m = (*m).max(e.ts);
            if maxes.len() == 2 * tasks {
                watermark = watermark.max(maxes.values().min().map(|m| m - 2_000));
            }
        }
        if let Some(wm) = watermark {
            waiting.retain(|w| {
                if w.ts > wm {
                    return true;
                }
                let mut versions: Vec<_> = table.get(&w.key()).cloned().unwrap_or_default();
                versions.sort();
                let row = versions
                    .iter()
                    .rev()
                    .find(|v| v.0 <= w.ts)
                    .and_then(|v| v.2);
                got.push((w.key(), w.id, row));
                false
            });
        }
    }
    got.sort();
    (got, late)
}

/// Fails with the outputs only one side has, when the sides differ.
fn assert_same(got: &[Pair], model: &[Pair], what: &str) {
    let only = |a: &[Pair], b: &[Pair]| -> Vec<Pair> {
        let mut rest = b.to_vec();
        a.iter()
            .filter(|x| match rest.iter().position(|y| y == *x) {
                Some(i) => {
                    rest.swap_remove(i);
                    false
                }
                None => true,
            })
            .take(10)
            .cloned()
            .collect()
    };
    assert!(
        got == model,
        "{what}: {} outputs, the model {}; only emitted: {:?}; only in the model: {:?}",
        got.len(),
        model.len(),
        only(got, model),
        only(model, got)
    );
}

/// The pipelines of the model tests, by kind.
fn model_pipeline(kind: &str) -> &'static str {
    match kind {
        "table" => r#"[{keyBy: {expr: record.user}}, {join: {type: table, topic: other, as: o}}]"#,
        "temporal" => {
            r#"[{keyBy: {expr: record.user}}, {join: {type: table, topic: other, as: o, temporal: true, history: 1000, mode: left}}]"#
        }
        _ => {
            r#"[{filter: "record.id >= 0"}, {keyBy: {expr: record.user}}, {join: {type: interval, topic: other, key: record.user, as: o, before: 3s, after: 1s}}]"#
        }
    }
}

/// Tasks reading partition `t` of `in` and `other`, their joined records
/// meeting behind the repartition topic as the runtime routes them.
struct Cluster {
    tasks: Vec<TaskProcessor>,
}

impl Cluster {
    fn open(pipeline: &Arc<Pipeline>, dirs: &[&Path], metas: Option<&[TaskSnapshot]>) -> Cluster {
        let timed = pipeline.join().is_some_and(|(_, j)| j.is_timed());
        let tasks = dirs
            .iter()
            .enumerate()
            .map(|(t, dir)| {
                let state = TaskState::open(dir, &options()).unwrap();
                let mut p = TaskProcessor::new(pipeline.clone(), state, dirs.len())
                    .with_processing_time(1_700_000_000_000);
                p.register_partition("in", t as i32);
                if timed {
                    p.register_partition("other", t as i32);
                }
                if let Some(metas) = metas {
                    p.restore_meta(metas[t].clone());
                }
                p
            })
            .collect();
        Cluster { tasks }
    }

    fn feed(&mut self, offset: usize, e: &Event, out: &mut Outputs) {
        let n = self.tasks.len();
        let value = e.json();
        let key = e.key();
        let record = SourceRecord {
            topic: if e.other { "other" } else { "in" },
            partition: e.partition as i32,
            offset: offset as i64,
            key: Some(key.as_bytes()),
            value: value.as_deref(),
            timestamp_ms: Some(e.ts),
        };
        let mut upstream = Outputs::default();
        self.tasks[e.partition]
            .process(&record, &mut upstream)
            .unwrap();
        out.counters.late += upstream.counters.late;
        // Without a repartition the task emits at once.
        out.records.append(&mut upstream.records);
        for r in upstream.repartitioned {
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
            self.tasks[dest]
                .process_repartitioned(&record, out)
                .unwrap();
        }
        let report = self.tasks[e.partition].source_report();
        for task in self.tasks.iter_mut().filter(|t| t.cut.is_some()) {
            assert!(task.report_upstream(e.partition, report, out).unwrap());
        }
    }

    /// Flushes every task and copies its state to `dirs` (a checkpoint).
    fn checkpoint(&mut self, dirs: &[&Path]) -> Vec<TaskSnapshot> {
        self.tasks
            .iter_mut()
            .zip(dirs)
            .map(|(t, dir)| {
                t.state_mut().flush_cache().unwrap();
                rocksdb::checkpoint::Checkpoint::new(t.state().db())
                    .unwrap()
                    .create_checkpoint(dir)
                    .unwrap();
                t.snapshot_meta()
            })
            .collect()
    }
}

/// Without a repartition a record moves the watermark and is applied in
/// one go: a table row that moves it must not lose a version the records
/// it makes due still need.
#[test]
fn joins_equal_the_model_in_one_task_without_a_repartition() {
    for (seed, kind) in [(13, "table"), (15, "temporal"), (17, "interval")] {
        let events = random_events(seed, 3_000, 1, kind != "interval");
        let (model, model_late) = join_model(kind, &events, 1);
        let pipeline = compile(
            &model_pipeline(kind).replace("record.user}", "record.user, sourcePartitioned: true}"),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::open(&pipeline, &[dir.path()], None);
        let mut out = Outputs::default();
        for (offset, e) in events.iter().enumerate() {
            cluster.feed(offset, e, &mut out);
        }
        assert_same(&pairs(&out), &model, &format!("{kind}: one task"));
        assert_eq!(out.counters.late, model_late, "{kind}: late records");
    }
}

#[test]
fn joins_equal_the_model_also_after_a_crash_restored_from_a_checkpoint() {
    const TASKS: usize = 3;
    for (seed, kind) in [(3, "table"), (5, "temporal"), (7, "interval")] {
        let events = random_events(seed, 3_000, TASKS, kind != "interval");
        let (model, model_late) = join_model(kind, &events, TASKS);
        assert!(model.len() > 300, "{kind}: only {} outputs", model.len());
        let pipeline = compile(model_pipeline(kind));

        let live: Vec<tempfile::TempDir> =
            (0..TASKS).map(|_| tempfile::tempdir().unwrap()).collect();
        let live_paths: Vec<&Path> = live.iter().map(|d| d.path()).collect();
        let mut cluster = Cluster::open(&pipeline, &live_paths, None);
        let mut out = Outputs::default();
        for (offset, e) in events.iter().enumerate() {
            cluster.feed(offset, e, &mut out);
        }
        assert_same(&pairs(&out), &model, &format!("{kind}: straight through"));
        assert_eq!(out.counters.late, model_late, "{kind}: late records");
        if kind != "table" {
            assert!(model_late > 10, "{kind}: the data exercises lateness");
        }

        // A checkpoint at a third, progress after it lost in a crash, every
        // task restored from the checkpoint and the input replayed from it.
        let live: Vec<tempfile::TempDir> =
            (0..TASKS).map(|_| tempfile::tempdir().unwrap()).collect();
        let live_paths: Vec<&Path> = live.iter().map(|d| d.path()).collect();
        let saved: Vec<tempfile::TempDir> =
            (0..TASKS).map(|_| tempfile::tempdir().unwrap()).collect();
        let saved_paths: Vec<std::path::PathBuf> =
            saved.iter().map(|d| d.path().join("db")).collect();
        let saved_refs: Vec<&Path> = saved_paths.iter().map(|p| p.as_path()).collect();
        let third = events.len() / 3;
        let mut committed = Outputs::default();
        let metas = {
            let mut cluster = Cluster::open(&pipeline, &live_paths, None);
            for (offset, e) in events[..third].iter().enumerate() {
                cluster.feed(offset, e, &mut committed);
            }
            let metas = cluster.checkpoint(&saved_refs);
            let mut lost = Outputs::default();
            for (offset, e) in events[third..2 * third].iter().enumerate() {
                cluster.feed(third + offset, e, &mut lost);
            }
            assert!(!lost.records.is_empty(), "the crash loses outputs");
            serde_json::from_str::<Vec<TaskSnapshot>>(&serde_json::to_string(&metas).unwrap())
                .unwrap()
        };
        let mut restored = Cluster::open(&pipeline, &saved_refs, Some(&metas));
        for (offset, e) in events.iter().enumerate().skip(third) {
            restored.feed(offset, e, &mut committed);
        }
        assert_same(
            &pairs(&committed),
            &model,
            &format!("{kind}: across the crash"),
        );
    }
}

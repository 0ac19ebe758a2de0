//! Engine throughput in events per CPU-second (user + system time of the
//! whole process, all threads, including RocksDB's background threads), from
//! an in-memory source of ~65-byte JSON records into an in-memory sink:
//!
//! (a) stateless filter + map;
//! (b) keyBy user, 60 s tumbling window, count + sum, over 100k users in
//!     RocksDB (event time advancing 20k events per second, so about 12
//!     events per user and window; windows fire as the watermark passes);
//! (c) keyBy user, pattern "an amount over 80 then one under 10 within
//!     10 s" (every event waits in state for the watermark);
//! (d) keyBy user, interval join of every third record (read from a second
//!     topic) with the others of the user from 2 s before to 2 s after it
//!     (both sides wait in state until the watermark passes the interval);
//! (e) keyBy user, temporal table join of every third record (a row
//!     version of the user) into the others, at their event time.
//!
//! Run with `cargo bench -p weir-worker --bench engine` (optionally
//! `-- EVENTS`, default 2,000,000 per scenario).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use weir_worker::engine::pipeline::Pipeline;
use weir_worker::engine::record::{Outputs, SourceRecord};
use weir_worker::engine::task::TaskProcessor;
use weir_worker::state::{StateOptions, TaskState};

const USERS: u64 = 100_000;
const COUNTRIES: [&str; 6] = ["DE", "FR", "US", "GB", "XX", "JP"];

/// Process CPU time (user + system, all threads) in seconds, from
/// /proc/self/stat (fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name (field 2) may hold spaces: split after its ')'.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

fn records(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = x % USERS;
            let amount = (x >> 20) % 10_000;
            let country = COUNTRIES[((x >> 40) % COUNTRIES.len() as u64) as usize];
            // 20k events per second of event time, with up to 1 s of disorder.
            let ts = 1_732_176_000_000 + (i as i64) / 20 - ((x >> 50) % 1_000) as i64;
            format!(
                r#"{{"user_id":"u{user}","amount":{}.{:02},"country":"{country}","ts":{ts}}}"#,
                amount / 100,
                amount % 100
            )
            .into_bytes()
        })
        .collect()
}

fn spec(pipeline: &str) -> weir_crds::StreamingJobSpec {
    let yaml = format!(
        r#"
kafka: {{bootstrapServers: "k:9092"}}
source: {{topics: [in], eventTime: {{field: ts}}, watermark: {{maxOutOfOrderness: 5s, idleTimeout: 0s}}}}
sink: {{topic: out}}
checkpoint: {{storage: "memory://"}}
pipeline: {pipeline}
"#
    );
    serde_yaml::from_str(&yaml).expect("bench spec")
}

/// Runs `input` through `pipeline`; with `other_every`, every that many
/// records are read from the join's topic `other` instead of `in`.
fn run(name: &str, pipeline: &str, input: &[Vec<u8>], other_every: Option<usize>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = Arc::new(Pipeline::compile(&spec(pipeline)).expect("pipeline"));
    let state = TaskState::open(dir.path(), &StateOptions::default()).expect("state");
    let mut task = TaskProcessor::new(pipeline, state, 1);
    let mut out = Outputs::default();
    let mut sink_bytes = 0usize;
    let wall = Instant::now();
    let cpu = cpu_seconds();
    for (offset, value) in input.iter().enumerate() {
        let other = other_every.is_some_and(|every| offset % every == 0);
        let record = SourceRecord {
            topic: if other { "other" } else { "in" },
            partition: 0,
            offset: offset as i64,
            key: None,
            value: Some(value),
            timestamp_ms: None,
        };
        task.process(&record, &mut out).expect("process");
        if out.records.len() >= 1024 {
            sink_bytes += out.records.iter().map(|r| r.value.len()).sum::<usize>();
            out.clear();
        }
    }
    sink_bytes += out.records.iter().map(|r| r.value.len()).sum::<usize>();
    let cpu = cpu_seconds() - cpu;
    let wall = wall.elapsed().as_secs_f64();
    black_box(sink_bytes);
    let c = out.counters;
    println!(
        "{name}: {} events, {:.2} s CPU, {:.2} s wall: {:.0} events per CPU-second ({:.0} per wall second); out {}, filtered {}, late {}, dead-lettered {}, timers pending {}",
        input.len(),
        cpu,
        wall,
        input.len() as f64 / cpu,
        input.len() as f64 / wall,
        c.records_out,
        c.filtered,
        c.late,
        c.dead_lettered,
        task.state().pending_timers(),
    );
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(2_000_000);
    let input = records(n);
    let avg = input.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("{n} records of {avg:.1} bytes on average");
    run(
        "(a) stateless filter+map",
        r#"[{filter: "record.amount > 1.0 && record.country != 'XX'"},
            {map: {fields: [{name: user, expr: record.user_id}, {name: cents, expr: "record.amount * 100.0"}, {name: country, expr: record.country}]}}]"#,
        &input,
        None,
    );
    run(
        "(b) keyed 60s tumbling count+sum, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}}, {window: {type: tumbling, size: 60s}},
            {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}}]"#,
        &input,
        None,
    );
    run(
        "(c) keyed pattern big then small within 10s, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}}, {pattern: {within: 10s, sequence: [
            {name: big, condition: "record.amount > 80.0"}, {name: small, condition: "record.amount < 10.0"}]}}]"#,
        &input,
        None,
    );
    run(
        "(d) keyed interval join -2s..+2s, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}},
            {join: {type: interval, topic: other, key: record.user_id, as: o, before: 2s, after: 2s}}]"#,
        &input,
        Some(3),
    );
    run(
        "(e) keyed temporal table join, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}},
            {join: {type: table, topic: other, key: record.user_id, as: o, temporal: true, history: 4}}]"#,
        &input,
        Some(3),
    );
}

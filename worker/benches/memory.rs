//! Resident memory of the keyed tumbling-window engine as the key count
//! grows tenfold: keyBy user, 60 s tumbling window, count + sum, over 100k
//! and then 1M users in RocksDB, ten events per user over two windows; the
//! first window fires as one watermark jump over all its keys (the second
//! stays open: the input ends).
//!
//! Memory is bounded by bytes, not keys: the write-back cache by its budget
//! (given here explicitly, by default a share of the container's memory),
//! RocksDB by its block cache and memtables, due timers and their results
//! by the chunks they fire in (sent, here dropped, between chunks, as the
//! runtime does). So resident memory (VmRSS, sampled every 50k events; its
//! peak from VmHWM) stays about flat while the keys grow 10x. Throughput is
//! in events per CPU-second (user + system time of the whole process).
//!
//! Run with `cargo bench -p weir-worker --bench memory` (optionally
//! `-- KEYS`, the smaller key count, default 100,000).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use weir_worker::engine::pipeline::Pipeline;
use weir_worker::engine::record::{Outputs, SourceRecord};
use weir_worker::engine::task::TaskProcessor;
use weir_worker::state::{StateOptions, TaskState};

/// The write-back cache budget of the (single-task) worker.
const CACHE_BUDGET: usize = 32 << 20;
/// The RocksDB block cache.
const BLOCK_CACHE: usize = 32 << 20;
/// Each memtable (RocksDB keeps up to three).
const WRITE_BUFFER: usize = 16 << 20;
/// Events per key.
const EVENTS_PER_KEY: usize = 10;
/// The window size; each key gets half its events in each of two windows.
const WINDOW_MS: i64 = 60_000;
/// Start of event time (a day before the processing time of any run).
const BASE_TS: i64 = 1_732_176_000_000;

/// Process CPU time (user + system, all threads) in seconds, from
/// /proc/self/stat (fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// A field of /proc/self/status in MiB (`VmRSS`, `VmHWM`).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets VmHWM to the current RSS (Linux 4.0+; ignored elsewhere).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn spec() -> weir_crds::StreamingJobSpec {
    let yaml = r#"
kafka: {bootstrapServers: "k:9092"}
source: {topics: [in], eventTime: {field: ts}, watermark: {maxOutOfOrderness: 5s, idleTimeout: 0s}}
sink: {topic: out}
checkpoint: {storage: "memory://"}
pipeline:
  - keyBy: {expr: record.user_id, sourcePartitioned: true}
  - window: {type: tumbling, size: 60s}
  - aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}
"#;
    serde_yaml::from_str(yaml).expect("bench spec")
}

struct Run {
    rss_end: f64,
    rss_peak: f64,
    events_per_cpu_second: f64,
}

fn run(keys: u64) -> Run {
    let events = keys as usize * EVENTS_PER_KEY;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StateOptions::new(BLOCK_CACHE, WRITE_BUFFER).with_cache_bytes(CACHE_BUDGET);
    let state = TaskState::open(dir.path(), &options).expect("state");
    let mut task = TaskProcessor::new(
        Arc::new(Pipeline::compile(&spec()).expect("pipeline")),
        state,
        1,
    );
    let mut out = Outputs::default();
    let mut results = 0u64;
    let mut largest_chunk = 0usize;
    let mut sampled_peak: f64 = 0.0;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut value = Vec::with_capacity(128);
    // Event time advances so that each window holds events/2 events.
    let per_window = (events / 2) as i64;
    reset_peak();
    let wall = Instant::now();
    let cpu = cpu_seconds();
    for i in 0..events {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = x % keys;
        let amount = (x >> 20) % 10_000;
        let ts = BASE_TS + (i as i64) * WINDOW_MS / per_window - ((x >> 50) % 1_000) as i64;
        value.clear();
        write!(
            value,
            r#"{{"user_id":"u{user}","amount":{}.{:02},"ts":{ts}}}"#,
            amount / 100,
            amount % 100
        )
        .expect("format");
        let record = SourceRecord {
            topic: "in",
            partition: 0,
            offset: i as i64,
            key: None,
            value: Some(&value),
            timestamp_ms: None,
        };
        task.process(&record, &mut out).expect("process");
        // As the runtime: send (here: drop) the results between chunks.
        while task.has_due_timers() {
            largest_chunk = largest_chunk.max(out.records.len());
            results += out.records.len() as u64;
            out.clear();
            task.fire_due_timers(&mut out).expect("fire");
        }
        if out.records.len() >= 1024 {
            largest_chunk = largest_chunk.max(out.records.len());
            results += out.records.len() as u64;
            out.clear();
        }
        if i % 50_000 == 0 {
            sampled_peak = sampled_peak.max(status_mib("VmRSS"));
        }
    }
    results += out.records.len() as u64;
    out.clear();
    let cpu = cpu_seconds() - cpu;
    let wall = wall.elapsed().as_secs_f64();
    let rss_end = status_mib("VmRSS");
    let rss_peak = status_mib("VmHWM").max(sampled_peak).max(rss_end);
    let c = out.counters;
    println!(
        "{keys:>9} keys: {events} events, {results} window results (at most {largest_chunk} held at once), late {}, dead-lettered {}; \
         {cpu:.2} s CPU, {wall:.2} s wall: {:.0} events per CPU-second; \
         write-back cache {:.1} MiB in {} entries; RSS {rss_end:.1} MiB at the end, {rss_peak:.1} MiB at peak",
        c.late,
        c.dead_lettered,
        events as f64 / cpu,
        task.state().cached_bytes() as f64 / (1 << 20) as f64,
        task.state().cached_entries(),
    );
    Run {
        rss_end,
        rss_peak,
        events_per_cpu_second: events as f64 / cpu,
    }
}

fn main() {
    let small = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(100_000);
    println!(
        "budget: write-back cache {} MiB, block cache {} MiB, memtables up to 3 x {} MiB; RSS at start {:.1} MiB",
        CACHE_BUDGET >> 20,
        BLOCK_CACHE >> 20,
        WRITE_BUFFER >> 20,
        status_mib("VmRSS"),
    );
    let a = run(small);
    let b = run(small * 10);
    println!(
        "keys x10: peak RSS {:.1} -> {:.1} MiB (x{:.2}), RSS at the end {:.1} -> {:.1} MiB; events per CPU-second {:.0} -> {:.0}",
        a.rss_peak,
        b.rss_peak,
        b.rss_peak / a.rss_peak,
        a.rss_end,
        b.rss_end,
        a.events_per_cpu_second,
        b.events_per_cpu_second,
    );
}

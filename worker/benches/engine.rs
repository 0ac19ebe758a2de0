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
//! Then the workload Flink 2.3 was measured on (parallelism 1, RocksDB,
//! 10 s checkpoints): 5,000,000 lines
//! `{"user_id":<0..99999>,"amount":<0..999>,"country":"DE|FR|US|JP","ts":<+1 ms per event>}`,
//! about 0.6 events per user and 60 s window, so nearly every event creates
//! state and a timer:
//!
//! (f) stateless `amount > 100 && country == 'DE'`, map 3 fields (Flink
//!     about 1.0 µs of CPU per event);
//! (g) 60 s tumbling count + sum per user in RocksDB, with a checkpoint
//!     (cache flush and RocksDB checkpoint) every 500,000 events (Flink
//!     about 17 µs per event). Flink's checkpoints every 10 s of its
//!     processing time came every 590,000 events or so; this run takes
//!     less than 10 s in all, so checkpoints by its own time would never
//!     come.
//!
//! Run with `cargo bench -p weir-worker --bench engine` (optionally
//! `-- EVENTS`, default 2,000,000 per scenario of ours and Flink's 5,000,000
//! lines, fewer for a profile under callgrind, `-- flink` for (f) and (g)
//! only, scenario letters, e.g. `-- f g`, for those only, as when
//! profiling one, or `-- decode` for the cost of decoding Flink's lines
//! alone: into a serde_json value, with the SIMD decoders of simd-json (a
//! document) and sonic-rs (its lazy look-up of the four fields), and with
//! the engine's flat scanner into borrowed fields).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use weir_crds::expr::Fields;
use weir_worker::engine::pipeline::Pipeline;
use weir_worker::engine::record::{DecodePlan, Outputs, RecordShape, SourceRecord};
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

/// The lines of the workload Flink was measured on.
fn flink_records(n: usize) -> Vec<Vec<u8>> {
    const FLINK_COUNTRIES: [&str; 4] = ["DE", "FR", "US", "JP"];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!(
                r#"{{"user_id":{},"amount":{},"country":"{}","ts":{}}}"#,
                x % 100_000,
                (x >> 20) % 1000,
                FLINK_COUNTRIES[((x >> 40) % 4) as usize],
                1_732_176_000_000 + i as i64
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
/// records are read from the join's topic `other` instead of `in`; with
/// `checkpoint_every` events, the state is flushed and checkpointed.
fn run(
    name: &str,
    pipeline: &str,
    input: &[Vec<u8>],
    other_every: Option<usize>,
    checkpoint_every: Option<usize>,
) {
    let letter = name.chars().nth(1).unwrap_or_default();
    if SELECTED
        .get()
        .is_some_and(|s| !s.is_empty() && !s.contains(&letter))
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = Arc::new(Pipeline::compile(&spec(pipeline)).expect("pipeline"));
    let state = TaskState::open(dir.path(), &StateOptions::default()).expect("state");
    let mut task = TaskProcessor::new(pipeline, state, 1);
    let mut out = Outputs::default();
    let mut sink_bytes = 0usize;
    let checkpoints = tempfile::tempdir().expect("tempdir");
    let mut taken = 0;
    let wall = Instant::now();
    let cpu = cpu_seconds();
    for (offset, value) in input.iter().enumerate() {
        if checkpoint_every.is_some_and(|every| offset > 0 && offset.is_multiple_of(every)) {
            task.state_mut().flush_cache().expect("flush");
            rocksdb::checkpoint::Checkpoint::new(task.state().db())
                .and_then(|c| c.create_checkpoint(checkpoints.path().join(taken.to_string())))
                .expect("checkpoint");
            taken += 1;
        }
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
        "{name}: {} events, {:.2} s CPU, {:.2} s wall: {:.0} events per CPU-second, {:.2} µs CPU per event ({:.0} per wall second); out {}, filtered {}, late {}, dead-lettered {}, timers in memory {}, checkpoints {taken}",
        input.len(),
        cpu,
        wall,
        input.len() as f64 / cpu,
        cpu * 1e6 / input.len() as f64,
        input.len() as f64 / wall,
        c.records_out,
        c.filtered,
        c.late,
        c.dead_lettered,
        task.state().timers_in_memory(),
    );
}

/// The scenario letters given on the command line (all when empty).
static SELECTED: std::sync::OnceLock<Vec<char>> = std::sync::OnceLock::new();

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let letters = args
        .iter()
        .filter(|a| a.len() == 1 && a.chars().all(|c| ('a'..='g').contains(&c)))
        .filter_map(|a| a.chars().next())
        .collect();
    SELECTED.set(letters).expect("set once");
    let only_flink = SELECTED
        .get()
        .is_some_and(|s| s.iter().all(|c| *c >= 'f') && !s.is_empty());
    let given = args.iter().find_map(|a| a.parse::<usize>().ok());
    if !only_flink && !args.iter().any(|a| a == "decode" || a == "flink") {
        ours(given.unwrap_or(2_000_000));
    }
    let input = flink_records(given.unwrap_or(5_000_000));
    println!("Flink's workload: {} lines", input.len());
    if args.iter().any(|a| a == "decode") {
        decode_cost(&input);
        return;
    }
    run(
        "(f) stateless filter+map, Flink's workload (Flink ~1.0 µs/event)",
        r#"[{filter: "record.amount > 100 && record.country == 'DE'"},
            {map: {fields: [{name: user_id, expr: record.user_id}, {name: amount, expr: record.amount}, {name: ts, expr: record.ts}]}}]"#,
        &input,
        None,
        None,
    );
    run(
        "(g) 60s tumbling count+sum per user, RocksDB, a checkpoint per 500k events (Flink's 10s: ~590k), Flink's workload (Flink ~17 µs/event)",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}}, {window: {type: tumbling, size: 60s}},
            {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}}]"#,
        &input,
        None,
        Some(500_000),
    );
}

/// Scenarios (a) to (e) over `n` records.
fn ours(n: usize) {
    let input = records(n);
    let avg = input.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("{n} records of {avg:.1} bytes on average");
    run(
        "(a) stateless filter+map",
        r#"[{filter: "record.amount > 1.0 && record.country != 'XX'"},
            {map: {fields: [{name: user, expr: record.user_id}, {name: cents, expr: "record.amount * 100.0"}, {name: country, expr: record.country}]}}]"#,
        &input,
        None,
        None,
    );
    run(
        "(b) keyed 60s tumbling count+sum, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}}, {window: {type: tumbling, size: 60s}},
            {aggregate: {fields: [{name: n, function: count}, {name: total, function: sum, expr: record.amount}]}}]"#,
        &input,
        None,
        None,
    );
    run(
        "(c) keyed pattern big then small within 10s, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}}, {pattern: {within: 10s, sequence: [
            {name: big, condition: "record.amount > 80.0"}, {name: small, condition: "record.amount < 10.0"}]}}]"#,
        &input,
        None,
        None,
    );
    run(
        "(d) keyed interval join -2s..+2s, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}},
            {join: {type: interval, topic: other, key: record.user_id, as: o, before: 2s, after: 2s}}]"#,
        &input,
        Some(3),
        None,
    );
    run(
        "(e) keyed temporal table join, 100k users, RocksDB",
        r#"[{keyBy: {expr: record.user_id, sourcePartitioned: true}},
            {join: {type: table, topic: other, key: record.user_id, as: o, temporal: true, history: 4}}]"#,
        &input,
        Some(3),
        None,
    );
}

/// The cost of decoding alone, per line of `input`, four ways on the same
/// lines for the same four fields:
/// - into a serde_json value with the engine's field plan (serde_json
///   building a document: the engine's path for records its scanner does
///   not take);
/// - with simd-json, into its borrowed document (from a copy of the line:
///   it decodes in place);
/// - with sonic-rs, looking the four fields up lazily (`get_many`, which
///   skips the rest of the record);
/// - with the engine's flat scanner, into borrowed fields.
fn decode_cost(input: &[Vec<u8>]) {
    let names: Vec<String> = ["amount", "country", "ts", "user_id"]
        .map(str::to_owned)
        .to_vec();
    let plan = DecodePlan::fields(names.clone());
    let document = cpu_per_line(input, |line| {
        black_box(plan.decode(line).expect("decode"));
    });
    let mut copy = Vec::new();
    let simd_json = cpu_per_line(input, |line| {
        copy.clear();
        copy.extend_from_slice(line);
        black_box(simd_json::to_borrowed_value(&mut copy).expect("decode"));
    });
    let mut tree = sonic_rs::PointerTree::new();
    for name in &names {
        tree.add_path(&[name.as_str()]);
    }
    let sonic = cpu_per_line(input, |line| {
        black_box(sonic_rs::get_many(line, &tree).expect("decode"));
    });
    let mut shape = RecordShape::default();
    let borrowed = cpu_per_line(input, |line| {
        let mut fields = Fields::new(&names);
        plan.decode_fields(&mut shape, &mut fields, line)
            .expect("decode");
        black_box(&fields);
    });
    println!(
        "decoding Flink's lines, µs CPU per line: serde_json value {document:.3}, simd-json borrowed value {simd_json:.3}, sonic-rs lazy look-up of the four fields {sonic:.3}, the engine's flat scanner into borrowed fields {borrowed:.3}"
    );
}

/// µs of CPU per line that `decode` takes over every line of `input`.
fn cpu_per_line(input: &[Vec<u8>], mut decode: impl FnMut(&[u8])) -> f64 {
    let cpu = cpu_seconds();
    for line in input {
        decode(line);
    }
    (cpu_seconds() - cpu) * 1e6 / input.len() as f64
}

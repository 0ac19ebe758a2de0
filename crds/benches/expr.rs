//! The per-record cost of pipeline expressions over ~65-byte JSON records
//! like `{"user_id":"u123","amount":12.5,"country":"DE","ts":1732176000000}`.
//!
//! Every iteration handles one record (cycling through 1024 distinct ones),
//! so criterion's time per iteration is the cost per record. The time is the
//! CPU time of the benchmarking thread (`CLOCK_THREAD_CPUTIME_ID` on Linux,
//! wall-clock time elsewhere), as the performance targets are per CPU-second
//! and the machines that run this are often shared.
//!
//! Run with `cargo bench -p weir-crds --bench expr`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use weir_crds::expr::{self, Expression};

/// The CPU time of the current thread, in nanoseconds.
struct ThreadCpuTime;

/// The nanoseconds the current thread has run on a CPU.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut time = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec of the C layout (64-bit
    // Linux), and the clock id is Linux's CLOCK_THREAD_CPUTIME_ID.
    let status = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    u64::try_from(time.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(time.tv_nsec).unwrap_or(0)
}

/// Elsewhere, the nanoseconds since the first call (wall-clock time).
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos();
    u64::try_from(elapsed).unwrap_or(u64::MAX)
}

/// Formats like wall-clock time: both are nanoseconds.
static NANOSECONDS: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        NANOSECONDS.formatter()
    }
}

const FILTER: &str = r#"record.amount > 10.0 && record.country != "XX""#;

/// 1024 encoded records with varying users, amounts and countries.
fn records() -> Vec<Vec<u8>> {
    let countries = ["DE", "FR", "NL", "XX"];
    (0..1024_u32)
        .map(|i| {
            format!(
                r#"{{"user_id":"u{}","amount":{}.5,"country":"{}","ts":{}}}"#,
                100 + i % 900,
                i % 20,
                countries[i as usize % countries.len()],
                1_732_176_000_000_u64 + u64::from(i)
            )
            .into_bytes()
        })
        .collect()
}

/// Compiles `source`, which the benchmark knows to be valid.
fn compiled(source: &str) -> Expression {
    match expr::compile(source) {
        Ok(expression) => expression,
        Err(error) => panic!("{source}: {error}"),
    }
}

fn bench(c: &mut Criterion<ThreadCpuTime>) {
    let records = records();
    let average = records.iter().map(Vec::len).sum::<usize>() / records.len();
    println!("records of {average} bytes on average");
    let filter = compiled(FILTER);
    let map = [
        ("user", compiled("record.user_id")),
        ("cents", compiled("record.amount * 100.0")),
        ("country", compiled("record.country.lowerAscii()")),
    ];

    let mut group = c.benchmark_group("per_record");
    group.throughput(Throughput::Elements(1));

    let mut i = 0;
    let mut next = || {
        i = (i + 1) % records.len();
        &records[i]
    };
    group.bench_function("json_parse", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(next()).ok()))
    });
    group.bench_function("json_parse+filter", |b| {
        b.iter(|| {
            let record: Value = serde_json::from_slice(next()).unwrap_or_default();
            black_box(filter.eval_bool(&record).ok())
        })
    });
    group.bench_function("json_parse+map_3_fields", |b| {
        b.iter(|| {
            let record: Value = serde_json::from_slice(next()).unwrap_or_default();
            let mut out = serde_json::Map::new();
            for (name, expression) in &map {
                if let Ok(value) = expression.eval(&record) {
                    out.insert((*name).to_owned(), value);
                }
            }
            black_box(out)
        })
    });
    let mut encoded = Vec::with_capacity(256);
    let prefixes: Vec<String> = map.iter().map(|(name, _)| format!("{name:?}:")).collect();
    group.bench_function("json_parse+map_3_fields_written_as_json", |b| {
        b.iter(|| {
            let record: Value = serde_json::from_slice(next()).unwrap_or_default();
            encoded.clear();
            encoded.push(b'{');
            for (i, ((_, expression), prefix)) in map.iter().zip(&prefixes).enumerate() {
                if i > 0 {
                    encoded.push(b',');
                }
                encoded.extend_from_slice(prefix.as_bytes());
                if expression.eval_json(&record, &mut encoded).is_err() {
                    encoded.extend_from_slice(b"null");
                }
            }
            encoded.push(b'}');
            black_box(encoded.len())
        })
    });
    let parsed: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice(r).unwrap_or_default())
        .collect();
    let mut j = 0;
    group.bench_function("filter_only", |b| {
        b.iter(|| {
            j = (j + 1) % parsed.len();
            black_box(filter.eval_bool(&parsed[j]).ok())
        })
    });
    let program = match cel::Program::compile(FILTER) {
        Ok(program) => program,
        Err(error) => panic!("{FILTER}: {error}"),
    };
    let root = cel::Context::default();
    group.bench_function("json_parse+filter_with_cel_interpreter", |b| {
        b.iter(|| {
            let record: Value = serde_json::from_slice(next()).unwrap_or_default();
            let mut fields = HashMap::new();
            for (name, value) in record.as_object().into_iter().flatten() {
                let value = match value {
                    Value::String(s) => cel::Value::String(s.clone().into()),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => cel::Value::Int(i),
                        None => cel::Value::Float(n.as_f64().unwrap_or_default()),
                    },
                    _ => cel::Value::Null,
                };
                fields.insert(name.clone(), value);
            }
            let mut context = root.new_inner_scope();
            context.add_variable_from_value("record", fields);
            black_box(program.execute(&context).ok())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench
}
criterion_main!(benches);

//! The per-record cost of pipeline expressions over ~65-byte JSON records
//! like `{"user_id":"u123","amount":12.5,"country":"DE","ts":1732176000000}`.
//!
//! Every iteration handles one record (cycling through 1024 distinct ones),
//! so criterion's time per iteration is the cost per record.
//!
//! Run with `cargo bench -p weir-crds --bench expr`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use weir_crds::expr::{self, Expression};

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

fn bench(c: &mut Criterion) {
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
            let mut context = cel::Context::default();
            context.add_variable_from_value("record", fields);
            black_box(program.execute(&context).ok())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

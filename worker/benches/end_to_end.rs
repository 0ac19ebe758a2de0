//! End-to-end throughput of one worker through librdkafka's mock cluster:
//! events are produced to the source topic first, then a worker reads them,
//! runs the pipeline and writes the results, and the bench reports events
//! per second of wall time and per CPU-second of the whole process (every
//! thread: the worker, librdkafka's threads and the mock broker's).
//!
//! `cargo bench -p weir-worker --bench end_to_end [-- EVENTS]` (default and
//! maximum 240,000: what the mock cluster's partitions hold).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_util::sync::CancellationToken;
use weir_worker::config::WorkerConfig;
use weir_worker::runtime::Worker;

const PARTITIONS: i32 = 4;
/// Records the mock cluster keeps per partition before deleting the oldest
/// (it keeps at most 100,000 records and 5 MiB per partition): more events
/// than the partitions hold would never all be read.
const MOCK_PARTITION_CAPACITY: u64 = 60_000;
const USERS: u64 = 100_000;

/// Total CPU time of the process (user + system, all threads).
fn process_cpu() -> Duration {
    // Fields 14 and 15 of /proc/self/stat are utime and stime in clock
    // ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name, the state is field 3, so utime (14) is index 11.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn produce(bootstrap: &str, topic: &str, events: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let countries = ["DE", "FR", "US", "XX", "JP"];
    let mut value = String::new();
    for i in 0..events {
        let user = (i * 7919) % USERS;
        value.clear();
        use std::fmt::Write;
        let _ = write!(
            value,
            r#"{{"user_id":"u{user}","amount":{:.1},"country":"{}","ts":{}}}"#,
            (i % 500) as f64 / 10.0,
            countries[(i % 5) as usize],
            1_700_000_000_000 + i as i64
        );
        let partition = (user % PARTITIONS as u64) as i32;
        let mut record = BaseRecord::<str, str>::to(topic)
            .partition(partition)
            .payload(value.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

fn job(bootstrap: &str, storage: &str, name: &str, pipeline: &str, guarantee: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata:
  name: {name}
spec:
  kafka:
    bootstrapServers: "{bootstrap}"
  source:
    topics: [events-{name}]
    eventTime:
      field: ts
      format: epochMillis
  pipeline:
{pipeline}
  sink:
    topic: out-{name}
  guarantee: {guarantee}
  checkpoint:
    storage: "{storage}"
    interval: 10s
"#
    )
}

const STATELESS: &str = r#"    - filter: record.amount > 1.0 && record.country != "XX"
    - map:
        fields:
          - name: user_id
            expr: record.user_id
          - name: cents
            expr: record.amount * 100.0"#;

const TUMBLING: &str = r#"    - keyBy:
        expr: record.user_id
        sourcePartitioned: true
    - window:
        type: tumbling
        size: 60s
    - aggregate:
        fields:
          - name: count
            function: count
          - name: total
            function: sum
            expr: record.amount"#;

/// The tumbling job with its keyBy not partitioned like the source: every
/// record goes through the repartition topic.
fn repartitioned() -> String {
    TUMBLING.replace("sourcePartitioned: true", "sourcePartitioned: false")
}

async fn run_case(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    name: &str,
    pipeline: &str,
    guarantee: &str,
    events: u64,
) {
    let bootstrap = cluster.bootstrap_servers();
    let source = format!("events-{name}");
    cluster.create_topic(&source, PARTITIONS, 1).expect("topic");
    cluster
        .create_topic(&format!("out-{name}"), PARTITIONS, 1)
        .expect("topic");
    // The mock cluster does not answer the admin API the worker creates the
    // repartition topic with.
    let repartition = format!("weir.default.{name}.keyBy-0");
    cluster
        .create_topic(&repartition, PARTITIONS, 1)
        .expect("topic");
    produce(&bootstrap, &source, events);

    let dir = tempfile::tempdir().expect("temp dir");
    let storage = format!("file://{}", dir.path().join("store").display());
    let yaml = job(&bootstrap, &storage, name, pipeline, guarantee);
    let vars: HashMap<String, String> = [
        ("WEIR_ORDINAL", "0".to_owned()),
        ("WEIR_PARALLELISM", "1".to_owned()),
        (
            "WEIR_STATE_DIR",
            dir.path().join("state").display().to_string(),
        ),
        ("WEIR_HTTP_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = WorkerConfig::from_vars(&vars, &yaml).expect("valid job");

    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let handle = Worker::start(config, CancellationToken::new())
        .await
        .expect("worker");
    loop {
        let s = handle.status();
        if let Some(e) = s.error {
            panic!("worker failed: {e}");
        }
        // With a repartition, also wait until the tasks have read back
        // everything (no control markers at least once, so lag 0 is exact).
        let drained = s
            .tasks
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.topic == repartition)
            .all(|p| p.lag == Some(0) && p.high_watermark.is_some_and(|h| h > 0));
        if s.records_in >= events && (!pipeline.contains("sourcePartitioned: false") || drained) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop();
    handle.wait().await.expect("clean stop");
    let wall = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    println!(
        "{name:<28} {events:>9} events  {:>10.0} events/s wall  {:>10.0} events per CPU-second  ({:.2} s CPU, {:.2} s wall, {:.2} µs CPU/event)",
        events as f64 / wall.as_secs_f64(),
        events as f64 / cpu.as_secs_f64().max(1e-9),
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / events as f64,
    );
}

fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(240_000);
    let capacity = MOCK_PARTITION_CAPACITY * PARTITIONS as u64;
    assert!(
        events <= capacity,
        "at most {capacity} events: the mock cluster keeps at most 100k records and 5 MiB per partition"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = MockCluster::new(1).expect("mock cluster");
    println!(
        "end to end through the mock cluster, 1 worker, {PARTITIONS} partitions, includes the mock broker's CPU"
    );
    rt.block_on(async {
        run_case(
            &cluster,
            "stateless-at-least-once",
            STATELESS,
            "atLeastOnce",
            events,
        )
        .await;
        run_case(
            &cluster,
            "stateless-exactly-once",
            STATELESS,
            "exactlyOnce",
            events,
        )
        .await;
        run_case(
            &cluster,
            "tumbling-exactly-once",
            TUMBLING,
            "exactlyOnce",
            events,
        )
        .await;
        run_case(
            &cluster,
            "tumbling-repartitioned-alo",
            &repartitioned(),
            "atLeastOnce",
            events,
        )
        .await;
    });
}

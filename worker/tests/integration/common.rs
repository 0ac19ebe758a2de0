//! Shared fixtures of the worker integration tests: an in-process Kafka
//! (librdkafka's mock cluster), a generator of JSON events with a plain
//! in-memory model of the windowed aggregation, workers in temp dirs, and a
//! minimal HTTP client for the control API.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir_worker::checkpoint::restore::RestoreSource;
use weir_worker::config::WorkerConfig;
use weir_worker::control::status::{SavepointState, WorkerPhase};
use weir_worker::runtime::{Worker, WorkerHandle};

/// The control token of every test worker.
pub const TOKEN: &str = "test-token";
/// Source topic.
pub const EVENTS: &str = "events";
/// Sink topic.
pub const OUT: &str = "out";
/// Dead-letter topic.
pub const DLQ: &str = "dlq";
/// Late-data topic.
pub const LATE: &str = "late";
/// The repartition topic of the test job when its keyBy is not
/// source-partitioned. Workers create it with the admin API, which the mock
/// cluster does not answer, so [`Kafka::new`] creates it (the workers then
/// check its partition count).
pub const REPARTITION: &str = "weir.test.totals.keyBy-0";
/// Tumbling window size of the test job, in milliseconds.
pub const WINDOW_MS: i64 = 10_000;
/// Event time of the first generated event.
pub const BASE_TS: i64 = 1_700_000_000_000;
/// Key of the end markers (one per partition) that push the watermark past
/// every window; never part of the results.
pub const END_KEY: &str = "~end";

/// An in-process Kafka cluster with the test topics.
pub struct Kafka {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub bootstrap: String,
    pub partitions: i32,
}

impl Kafka {
    /// A one-broker cluster with `partitions` source partitions.
    pub fn new(partitions: i32) -> Self {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(EVENTS, partitions, 1).unwrap();
        cluster.create_topic(REPARTITION, partitions, 1).unwrap();
        for topic in [OUT, DLQ, LATE] {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
        let bootstrap = cluster.bootstrap_servers();
        Self {
            cluster,
            bootstrap,
            partitions,
        }
    }

    /// Produces raw values to explicit partitions and waits for delivery.
    pub fn produce(&self, records: &[(i32, Option<String>, Vec<u8>)]) {
        produce_to(&self.bootstrap, EVENTS, records);
    }

    /// Produces generated events to the partition of their key.
    pub fn produce_events(&self, events: &[Event]) {
        let records: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    partition_of(&e.user, self.partitions),
                    Some(e.user.clone()),
                    e.json().into_bytes(),
                )
            })
            .collect();
        self.produce(&records);
    }

    /// One end marker per partition, far in event time.
    pub fn produce_end_markers(&self, ts: i64) {
        let records: Vec<_> = (0..self.partitions)
            .map(|p| {
                let e = Event {
                    user: END_KEY.to_owned(),
                    amount: 0,
                    ts,
                };
                (p, Some(END_KEY.to_owned()), e.json().into_bytes())
            })
            .collect();
        self.produce(&records);
    }

    /// Every record of a single-partition topic (read committed).
    pub fn read_all(&self, topic: &str) -> Vec<ReadRecord> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut position = 0;
        while position < high && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    position = m.offset() + 1;
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(ReadRecord {
                        value: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {
                    // Control records (transaction markers) take offsets too.
                    if let Ok(pos) = consumer.position()
                        && let Some(e) = pos.find_partition(topic, 0)
                        && let Offset::Offset(o) = e.offset()
                    {
                        position = position.max(o);
                    }
                }
            }
        }
        out
    }
}

/// Produces raw values to explicit partitions of `topic` at `bootstrap`
/// and waits for delivery.
pub fn produce_to(bootstrap: &str, topic: &str, records: &[(i32, Option<String>, Vec<u8>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (partition, key, value) in records {
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).partition(*partition).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A record read back from an output topic.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl ReadRecord {
    /// The value as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("JSON output")
    }
}

/// Partition of a key: a stable hash, as the tests produce with explicit
/// partitions (the job declares the source partitioned by key).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let mut h: u32 = 2_166_136_261;
    for b in key.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    (h % partitions as u32) as i32
}

/// A generated event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub user: String,
    pub amount: i64,
    pub ts: i64,
}

impl Event {
    /// The event as the JSON the job reads.
    pub fn json(&self) -> String {
        format!(
            r#"{{"user":"{}","amount":{},"ts":{}}}"#,
            self.user, self.amount, self.ts
        )
    }
}

/// Deterministic events: `n` events of `users` users, 50 ms apart in event
/// time from `start`, each jittered by up to ±2 s (within the default 5 s
/// out-of-orderness, so none is late).
pub fn generate(n: usize, users: usize, start: i64, seed: u64) -> Vec<Event> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    (0..n)
        .map(|i| {
            let user = format!("u{}", next() % users as u64);
            let amount = (next() % 100) as i64 + 1;
            let jitter = (next() % 4001) as i64 - 2000;
            Event {
                user,
                amount,
                ts: start + i as i64 * 50 + jitter,
            }
        })
        .collect()
}

/// (key, window start) to (count, sum): what the job must output.
pub type Results = BTreeMap<(String, i64), (i64, i64)>;

/// The plain in-memory model of the job: tumbling windows of
/// [`WINDOW_MS`], count and sum of amount per user.
pub fn model(events: &[Event]) -> Results {
    let mut out = Results::new();
    for e in events.iter().filter(|e| e.user != END_KEY) {
        let start = e.ts - e.ts.rem_euclid(WINDOW_MS);
        let entry = out.entry((e.user.clone(), start)).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += e.amount;
    }
    out
}

/// The job's results from the sink records: the last value per (key,
/// window), since records of aborted transactions are visible on the mock
/// cluster (a known gap), so a window re-emitted after a restore appears
/// twice.
pub fn results(records: &[ReadRecord]) -> Results {
    let mut out = Results::new();
    for r in records {
        let v = r.json();
        let key = v["key"].as_str().expect("key").to_owned();
        if key == END_KEY {
            continue;
        }
        let start = time_ms(&v["window_start"]);
        let count = v["count"].as_i64().expect("count");
        let sum = v["total"].as_f64().expect("total") as i64;
        out.insert((key, start), (count, sum));
    }
    out
}

/// A window bound as epoch milliseconds or RFC 3339.
pub fn time_ms(v: &serde_json::Value) -> i64 {
    if let Some(ms) = v.as_i64() {
        return ms;
    }
    let s = v.as_str().expect("a time");
    s.parse::<jiff::Timestamp>()
        .expect("RFC 3339")
        .as_millisecond()
}

/// The test job: keyed tumbling count and sum, exactly-once.
pub fn job_yaml(bootstrap: &str, storage: &str, extra_steps: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata:
  name: totals
  namespace: test
spec:
  kafka:
    bootstrapServers: "{bootstrap}"
  source:
    topics: [{EVENTS}]
    eventTime:
      field: ts
      format: epochMillis
  pipeline:
{extra_steps}    - keyBy:
        expr: record.user
        sourcePartitioned: true
    - window:
        type: tumbling
        size: 10s
    - aggregate:
        fields:
          - name: count
            function: count
          - name: total
            function: sum
            expr: record.amount
  sink:
    topic: {OUT}
  deadLetter:
    topic: {DLQ}
  lateData:
    topic: {LATE}
  checkpoint:
    storage: "{storage}"
    interval: 1h
{extra_spec}"#
    )
}

/// Builds a worker configuration from a job and an identity.
pub fn worker_config(
    yaml: &str,
    ordinal: u32,
    parallelism: u32,
    generation: u64,
    restore: &str,
    state_dir: &Path,
) -> WorkerConfig {
    let vars: HashMap<String, String> = [
        ("WEIR_ORDINAL", ordinal.to_string()),
        ("WEIR_PARALLELISM", parallelism.to_string()),
        ("WEIR_GENERATION", generation.to_string()),
        ("WEIR_RESTORE_FROM", restore.to_owned()),
        ("WEIR_STATE_DIR", state_dir.display().to_string()),
        ("WEIR_CONTROL_TOKEN", TOKEN.to_owned()),
        ("WEIR_HTTP_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = WorkerConfig::from_vars(&vars, yaml).expect("valid test job");
    assert!(matches!(
        config.restore_from,
        RestoreSource::Latest | RestoreSource::None | RestoreSource::Savepoint(_)
    ));
    config
}

/// Starts `parallelism` workers of a job, each with its own state dir.
pub async fn start_workers(
    yaml: &str,
    parallelism: u32,
    generation: u64,
    restore: &str,
    state_root: &Path,
) -> Vec<WorkerHandle> {
    let mut handles = Vec::new();
    for ordinal in 0..parallelism {
        let dir = state_root.join(format!("g{generation}-w{ordinal}"));
        let config = worker_config(yaml, ordinal, parallelism, generation, restore, &dir);
        handles.push(
            Worker::start(config, CancellationToken::new())
                .await
                .expect("worker starts"),
        );
    }
    for h in &handles {
        wait_for(PATIENCE, "worker ready", || {
            let s = h.status();
            assert!(s.error.is_none(), "worker failed: {:?}", s.error);
            s.ready
        })
        .await;
    }
    handles
}

/// Waits until every partition of the workers reached its end offset.
pub async fn wait_processed(handles: &[WorkerHandle], ends: &HashMap<i32, i64>) {
    wait_for(PATIENCE, "records processed", || {
        let mut done = HashMap::new();
        for h in handles {
            let s = h.status();
            assert!(s.error.is_none(), "worker failed: {:?}", s.error);
            for t in s.tasks {
                for p in t.partitions.into_iter().filter(|p| p.topic == EVENTS) {
                    done.insert(p.partition, p.offset);
                }
            }
        }
        ends.iter()
            .all(|(p, end)| done.get(p).is_some_and(|o| o >= end))
    })
    .await;
}

/// Waits until the sink holds `expected` (the last value per key and
/// window), for jobs whose results come later than their input is read
/// (through a repartition topic).
pub async fn wait_results(kafka: &Kafka, expected: &Results) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = results(&kafka.read_all(OUT));
        if &got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the results: {} of {} windows, first difference: {:?}",
            got.len(),
            expected.len(),
            expected.iter().find(|(k, v)| got.get(*k) != Some(*v))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The test job with its keyBy not source-partitioned (so records go
/// through the repartition topic) and short checkpoints, since repartitioned
/// records become visible to the next task when their transaction commits.
pub fn repartitioned_job_yaml(bootstrap: &str, storage: &str) -> String {
    job_yaml(bootstrap, storage, "", "")
        .replace("sourcePartitioned: true", "sourcePartitioned: false")
        .replace("interval: 1h", "interval: 300ms")
}

/// Produces events round-robin over the partitions, not by key.
pub fn produce_round_robin(kafka: &Kafka, events: &[Event]) -> HashMap<i32, i64> {
    let records: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                i as i32 % kafka.partitions,
                Some(e.user.clone()),
                e.json().into_bytes(),
            )
        })
        .collect();
    kafka.produce(&records);
    let mut counts = HashMap::new();
    for (p, _, _) in &records {
        *counts.entry(*p).or_insert(0) += 1;
    }
    counts
}

/// Asks a worker for savepoint `id` (a checkpoint and its copy) and waits
/// until it is taken.
pub async fn take_savepoint(worker: &WorkerHandle, id: &str) {
    let (code, body) = http(
        worker.addr(),
        "POST",
        "/v1/savepoints",
        Some(TOKEN),
        &format!(r#"{{"id":"{id}"}}"#),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for(PATIENCE, "savepoint", || {
        worker
            .status()
            .savepoint
            .is_some_and(|s| s.state == SavepointState::Completed)
    })
    .await;
}

/// Asks every worker for savepoint `id` with `stop: true` and waits until
/// each has taken it and stopped consuming.
pub async fn stop_with_savepoint(workers: &[WorkerHandle], id: &str) {
    for w in workers {
        let (code, body) = http(
            w.addr(),
            "POST",
            "/v1/savepoints",
            Some(TOKEN),
            &format!(r#"{{"id":"{id}","stop":true}}"#),
        )
        .await;
        assert_eq!(code, 202, "{body}");
    }
    for w in workers {
        wait_for(PATIENCE, "stop with savepoint", || {
            let s = w.status();
            s.stopped
                && s.phase == WorkerPhase::Stopped
                && s.savepoint
                    .is_some_and(|s| s.state == SavepointState::Completed)
        })
        .await;
    }
}

/// Stops workers (final checkpoint) and waits for them.
pub async fn stop_all(handles: Vec<WorkerHandle>) {
    for h in &handles {
        h.stop();
    }
    for h in handles {
        h.wait().await.expect("worker stops cleanly");
    }
}

/// How long a wait for the workers may take: far more than they need on an
/// idle machine, for a CI machine of two cores running several tests (and
/// worker processes) at once. A passing test never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// End offsets per partition after producing `events` plus the end markers
/// (counts per partition, plus one marker each), given what was there.
pub fn end_offsets(
    base: &HashMap<i32, i64>,
    events: &[Event],
    partitions: i32,
    markers: bool,
) -> HashMap<i32, i64> {
    let mut ends = base.clone();
    for p in 0..partitions {
        ends.entry(p).or_insert(0);
    }
    for e in events {
        *ends.get_mut(&partition_of(&e.user, partitions)).unwrap() += 1;
    }
    if markers {
        for p in 0..partitions {
            *ends.get_mut(&p).unwrap() += 1;
        }
    }
    ends
}

/// A minimal HTTP/1.1 request; returns the status code and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

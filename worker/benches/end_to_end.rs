//! End-to-end throughput of one worker through librdkafka's mock cluster:
//! events are produced to the source topic first, then a worker reads them,
//! runs the pipeline and writes the results, and the bench reports events
//! per second of wall time and per CPU-second: of the worker (every thread
//! of the process but the mock cluster's and the bench's main thread, which
//! produces the events and polls the worker: the worker's threads and its
//! librdkafka clients') and, apart, of the mock broker's threads. The
//! figures per event are those of the steady state: from the first moment
//! the worker counts records read ([`WorkerHandle::records_in`], sampled
//! every millisecond) to the first it counts them all, so that neither
//! start-up (restore, assignment, first fetch) nor stop (the last
//! checkpoint) is in them; the whole run is reported beside, and so is the
//! number of checkpoints the steady state held. CPU times are read from
//! `/proc` in clock ticks (10 ms), about 2% of a steady state of 0.5 CPU-s.
//!
//! [`WorkerHandle::records_in`]: weir_worker::runtime::WorkerHandle::records_in
//!
//! Two workloads: ours (string user ids, decimal amounts) and the one Flink
//! 2.3 was measured on (`{"user_id":<0..99999>,"amount":<0..999>,
//! "country":"DE|FR|US|JP","ts":<+1 ms per event>}`, as in the engine
//! bench), each stateless and as a 60 s tumbling count + sum per user.
//!
//! `cargo bench -p weir-worker --bench end_to_end [-- EVENTS] [WORDS]`
//! (events default to and are at most 960,000: what the mock cluster's
//! partitions hold; words pick the cases whose name has one, e.g.
//! `flink`). With `WEIR_REAL_KAFKA=HOST:PORT` (e.g. the broker
//! `.ci/real-broker.sh` starts) the runs go through that broker instead,
//! each with topics of its own; its CPU is its own process's.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_util::sync::CancellationToken;
use weir_worker::config::WorkerConfig;
use weir_worker::runtime::Worker;

const PARTITIONS: i32 = 16;
/// The checkpoint interval of the windowed case of Flink's workload.
/// Flink's 10 s checkpoints came about every 590,000 events, at its 17 µs
/// per event. This run's steady state lasts some 3 to 5 s (750,000 events):
/// 10 s or 5 s left no checkpoint in it, 2 s leaves one or two, about as
/// many per event as Flink took. The other cases checkpoint every 10 s;
/// each says how many checkpoints its steady state held.
const FLINK_WINDOWED_INTERVAL: &str = "2s";
/// Records the mock cluster keeps per partition before deleting the oldest
/// (it keeps at most 100,000 records and 5 MiB per partition): more events
/// than the partitions hold would never all be read.
const MOCK_PARTITION_CAPACITY: u64 = 60_000;
const USERS: u64 = 100_000;
/// A steady state of less than this fraction of a run's events is too
/// short to measure: the case runs again, up to [`MAX_ATTEMPTS`] times.
const MIN_STEADY_FRACTION: f64 = 0.25;
/// The runs of a case at most.
const MAX_ATTEMPTS: u32 = 3;

/// The CPU time (user + system) a `/proc/.../stat` file reports, or zero
/// when it cannot be read (a thread that ended).
fn stat_cpu(path: &str) -> Duration {
    // Fields 14 and 15 of the stat file are utime and stime in clock ticks
    // (100 per second on Linux).
    let stat = std::fs::read_to_string(path).unwrap_or_default();
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

/// Total CPU time of the process (user + system, all threads).
fn process_cpu() -> Duration {
    stat_cpu("/proc/self/stat")
}

/// The thread ids of this process.
fn thread_ids() -> HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time (user + system) of the threads `tids` of this process that
/// still run.
fn threads_cpu(tids: &HashSet<String>) -> Duration {
    tids.iter()
        .map(|tid| stat_cpu(&format!("/proc/self/task/{tid}/stat")))
        .sum()
}

/// The shape of the produced events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `{"user_id":"u<n>","amount":<decimal>,"country":..,"ts":..}`.
    Ours,
    /// Flink's: integer user ids and amounts, four countries.
    Flink,
}

fn produce(bootstrap: &str, topic: &str, events: u64, workload: Workload) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let countries = ["DE", "FR", "US", "XX", "JP"];
    let flink_countries = ["DE", "FR", "US", "JP"];
    let mut value = String::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..events {
        value.clear();
        use std::fmt::Write;
        let user = match workload {
            Workload::Ours => {
                let user = (i * 7919) % USERS;
                let _ = write!(
                    value,
                    r#"{{"user_id":"u{user}","amount":{:.1},"country":"{}","ts":{}}}"#,
                    (i % 500) as f64 / 10.0,
                    countries[(i % 5) as usize],
                    1_700_000_000_000 + i as i64
                );
                user
            }
            Workload::Flink => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let user = x % USERS;
                let _ = write!(
                    value,
                    r#"{{"user_id":{user},"amount":{},"country":"{}","ts":{}}}"#,
                    (x >> 20) % 1000,
                    flink_countries[((x >> 40) % 4) as usize],
                    1_732_176_000_000 + i as i64
                );
                user
            }
        };
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

fn job(
    bootstrap: &str,
    storage: &str,
    name: &str,
    pipeline: &str,
    (guarantee, interval): (&str, &str),
) -> String {
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
    interval: {interval}
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

/// Flink's stateless query: `amount > 100 && country == 'DE'`, three
/// fields mapped.
const FLINK_STATELESS: &str = r#"    - filter: record.amount > 100 && record.country == "DE"
    - map:
        fields:
          - name: user_id
            expr: record.user_id
          - name: amount
            expr: record.amount
          - name: ts
            expr: record.ts"#;

/// The tumbling job with its keyBy not partitioned like the source: every
/// record goes through the repartition topic.
fn repartitioned() -> String {
    TUMBLING.replace("sourcePartitioned: true", "sourcePartitioned: false")
}

/// The brokers a run goes through.
enum Brokers {
    /// librdkafka's mock cluster, in this process.
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    /// A real broker at this address (`WEIR_REAL_KAFKA`), in another
    /// process: its CPU is not in the worker's. Topics are created through
    /// the admin client.
    Real(String, AdminClient<DefaultClientContext>),
}

impl Brokers {
    fn bootstrap(&self) -> String {
        match self {
            Brokers::Mock(cluster) => cluster.bootstrap_servers(),
            Brokers::Real(address, _) => address.clone(),
        }
    }

    async fn create_topic(&self, name: &str) {
        match self {
            Brokers::Mock(cluster) => cluster.create_topic(name, PARTITIONS, 1).expect("topic"),
            Brokers::Real(_, admin) => {
                let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
                for result in admin
                    .create_topics(&[topic], &AdminOptions::new())
                    .await
                    .expect("create topics")
                {
                    result.expect("topic created");
                }
            }
        }
    }
}

async fn run_case(
    brokers: &Brokers,
    name: &str,
    broker_threads: &HashSet<String>,
    pipeline: &str,
    (guarantee, interval): (&str, &str),
    (events, workload): (u64, Workload),
) -> (Span, Span, usize) {
    let bootstrap = brokers.bootstrap();
    // Each run has topics of its own: a real broker keeps those of earlier
    // runs, and a case may be run again.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = &format!("{name}-{run}");
    let source = format!("events-{name}");
    brokers.create_topic(&source).await;
    brokers.create_topic(&format!("out-{name}")).await;
    // The mock cluster does not answer the admin API the worker creates the
    // repartition topic with.
    let repartition = format!("weir.default.{name}.keyBy-0");
    brokers.create_topic(&repartition).await;
    produce(&bootstrap, &source, events, workload);

    let dir = tempfile::tempdir().expect("temp dir");
    let storage = format!("file://{}", dir.path().join("store").display());
    let yaml = job(&bootstrap, &storage, name, pipeline, (guarantee, interval));
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

    let start = Sample::now(0, broker_threads);
    let handle = Worker::start(config, CancellationToken::new())
        .await
        .expect("worker");
    // The steady state runs from the first sample that counts records read
    // to the first that counts them all: start-up (restore, assignment,
    // the first fetch) and stop (the last checkpoint) are outside it. The
    // count grows at the end of each batch (at most 8,192 records, a few
    // ms) and is sampled every ms, so both ends are exact to a batch.
    let mut first: Option<Sample> = None;
    // The checkpoints completed in the steady state: the ids seen from its
    // start on but the one completed before it. The status holds the last
    // one from its completion on, for an interval of at least 2 s.
    let mut seen = HashSet::new();
    let mut before_steady = None;
    let last = loop {
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
        let checkpoint = s.last_checkpoint.map(|c| c.id);
        let read = handle.records_in();
        if read > 0 && first.is_none() {
            first = Some(Sample::now(read, broker_threads));
            before_steady.clone_from(&checkpoint);
        }
        if first.is_some() {
            seen.extend(checkpoint);
        }
        if read >= events && (!pipeline.contains("sourcePartitioned: false") || drained) {
            break Sample::now(read, broker_threads);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    handle.stop();
    handle.wait().await.expect("clean stop");
    let whole = Sample::now(events, broker_threads).since(&start);
    let steady = last.since(&first.expect("a report counted records before the last"));
    let checkpoints = seen.len() - usize::from(before_steady.is_some());
    (steady, whole, checkpoints)
}

/// Where a run stood at one moment.
struct Sample {
    /// Records read by then.
    events: u64,
    at: Instant,
    /// CPU of the whole process.
    process: Duration,
    /// CPU of the mock broker's threads.
    broker: Duration,
    /// CPU of the bench's main thread, which produced the events and polls
    /// the worker (no part of the worker runs on it).
    bench: Duration,
}

/// What happened between two samples.
struct Span {
    events: f64,
    wall: f64,
    worker_cpu: f64,
    broker_cpu: f64,
}

impl Sample {
    fn now(events: u64, broker_threads: &HashSet<String>) -> Sample {
        Sample {
            events,
            at: Instant::now(),
            process: process_cpu(),
            broker: threads_cpu(broker_threads),
            bench: stat_cpu(&format!("/proc/self/task/{}/stat", std::process::id())),
        }
    }

    fn since(&self, earlier: &Sample) -> Span {
        let broker = self.broker.saturating_sub(earlier.broker);
        Span {
            events: self.events.saturating_sub(earlier.events) as f64,
            wall: (self.at - earlier.at).as_secs_f64(),
            worker_cpu: self
                .process
                .saturating_sub(earlier.process)
                .saturating_sub(broker)
                .saturating_sub(self.bench.saturating_sub(earlier.bench))
                .as_secs_f64(),
            broker_cpu: broker.as_secs_f64(),
        }
    }
}

fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(960_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The threads the mock cluster starts are the broker's.
    let before = thread_ids();
    let brokers = match std::env::var("WEIR_REAL_KAFKA") {
        Ok(address) if !address.is_empty() => {
            println!(
                "end to end through the broker at {address}, 1 worker, {PARTITIONS} partitions; the broker's CPU is its own process's (not measured here)"
            );
            let admin = ClientConfig::new()
                .set("bootstrap.servers", &address)
                .create()
                .expect("admin client");
            Brokers::Real(address, admin)
        }
        _ => {
            let capacity = MOCK_PARTITION_CAPACITY * PARTITIONS as u64;
            assert!(
                events <= capacity,
                "at most {capacity} events: the mock cluster keeps at most 100k records and 5 MiB per partition"
            );
            println!(
                "end to end through the mock cluster, 1 worker, {PARTITIONS} partitions; worker CPU excludes the mock broker's threads"
            );
            Brokers::Mock(MockCluster::new(1).expect("mock cluster"))
        }
    };
    let broker_threads: HashSet<String> = match brokers {
        Brokers::Mock(_) => thread_ids().difference(&before).cloned().collect(),
        // The admin client's threads are not a broker's.
        Brokers::Real(..) => HashSet::new(),
    };
    // The workload, and Flink 2.3's µs of process CPU per event on it at
    // parallelism 1, start-up excluded (as the engine bench gives them).
    let ours = (events, Workload::Ours, None);
    let flink_stateless = (events, Workload::Flink, Some("~1.0"));
    let flink_tumbling = (events, Workload::Flink, Some("~17"));
    let cases = [
        (
            "stateless-at-least-once",
            STATELESS.to_owned(),
            ("atLeastOnce", "10s"),
            ours,
        ),
        (
            "stateless-exactly-once",
            STATELESS.to_owned(),
            ("exactlyOnce", "10s"),
            ours,
        ),
        (
            "tumbling-exactly-once",
            TUMBLING.to_owned(),
            ("exactlyOnce", "10s"),
            ours,
        ),
        (
            "tumbling-repartitioned-alo",
            repartitioned(),
            ("atLeastOnce", "10s"),
            ours,
        ),
        (
            "flink-stateless-alo",
            FLINK_STATELESS.to_owned(),
            ("atLeastOnce", "10s"),
            flink_stateless,
        ),
        (
            "flink-stateless-eos",
            FLINK_STATELESS.to_owned(),
            ("exactlyOnce", "10s"),
            flink_stateless,
        ),
        (
            "flink-tumbling-eos",
            TUMBLING.to_owned(),
            ("exactlyOnce", FLINK_WINDOWED_INTERVAL),
            flink_tumbling,
        ),
    ];
    rt.block_on(async {
        // Words on the command line pick the cases whose name has one.
        let words: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a.parse::<u64>().is_err() && !a.starts_with("--"))
            .collect();
        for (name, pipeline, delivery, (events, workload, flink)) in cases {
            if !words.is_empty() && !words.iter().any(|w| name.contains(w.as_str())) {
                continue;
            }
            // The steady state lies between status reports (every 500 ms):
            // a run that read most of its events within one has too short
            // a one to measure, and is run again.
            let measurable = |steady: &Span| steady.events >= events as f64 * MIN_STEADY_FRACTION;
            let mut attempts = 0;
            let (steady, whole, checkpoints) = loop {
                attempts += 1;
                let (steady, whole, checkpoints) = run_case(&brokers, name, &broker_threads, &pipeline, delivery, (events, workload)).await;
                if measurable(&steady) || attempts == MAX_ATTEMPTS {
                    break (steady, whole, checkpoints);
                }
                eprintln!("{name}: the steady state held {:.0} of {events} events; running it again", steady.events);
            };
            if !measurable(&steady) {
                println!(
                    "{name:<28} {events:>7} events: the steady state held {:.0} events in the last of {MAX_ATTEMPTS} runs, too few to measure",
                    steady.events
                );
                continue;
            }
            let worker = steady.worker_cpu.max(1e-9);
            let broker = match brokers {
                Brokers::Mock(_) => format!(
                    "mock broker {:.2} µs/event",
                    steady.broker_cpu * 1e6 / steady.events.max(1.0)
                ),
                Brokers::Real(..) => "broker not measured (its own process)".to_owned(),
            };
            let flink = flink.map_or(String::new(), |figure| format!("; Flink {figure}"));
            println!(
                "{name:<28} {events:>7} events: worker {:>9.0} events per CPU-second ({:.2} µs/event{flink}) over {:.0} events of the steady state with {checkpoints} checkpoints (every {}), {broker}; whole run with start-up and stop {:>7.0} events/s wall, worker {:.2} s CPU",
                steady.events / worker,
                worker * 1e6 / steady.events.max(1.0),
                steady.events,
                delivery.1,
                whole.events / whole.wall,
                whole.worker_cpu,
            );
        }
    });
}

//! The worker's Kafka protocol against a real Kafka-protocol broker, where
//! librdkafka's mock cluster cannot show it: the mock drops offsets sent to
//! a transaction and lets a fenced producer commit. Checked here: the
//! output and offsets of a transaction, fencing of a zombie producer, the
//! at-least-once commit, the repartition topic's creation, and
//! exactly-once workers end to end (each window's result written once).
//!
//! The broker is named by `WEIR_REAL_KAFKA=HOST:PORT`; without it every test
//! here says it is skipped and passes. `.ci/run` starts one (see
//! `.ci/real-broker.sh`): a memory-only Tansu, which carries transactions,
//! offsets sent to a transaction and fencing. Three checks need a broker
//! that also stores the metadata of committed offsets (the checkpoint token
//! the worker commits with them), reports true high watermarks and deletes
//! records (Apache Kafka, or Tansu on PostgreSQL): the memory-only Tansu
//! stores offsets but drops their metadata, reports wrong high watermarks
//! and crashes on DeleteRecords. Those checks run only with
//! `WEIR_REAL_KAFKA_FULL=1`; without it a test checks the offsets and says
//! the token was not checked. (The token's part of the protocol is proven
//! against fakes in `protocol.rs`.)
//!
//! No test here depends on read_committed consumers skipping aborted
//! records: Tansu never reports aborted transactions, so it returns them.
//! Nor on transactional producers writing one partition at the same time:
//! Tansu 0.6 then can lose every record of one of them, committed, and
//! report no error to any (eight producers of 20 records each, under CPU
//! load: one producer's records gone in 4 runs of 35; plain producers lost
//! none in 20). So the end-to-end exactly-once run has one worker and one
//! task (one producer) on Tansu, and two workers of two tasks each on a
//! full broker; and the fencing test's zombie writes to a topic of its
//! own: sharing the new owner's partition, the owner's whole transaction
//! (output and offsets) was lost in about one run in 30 under load (5 in
//! 155; none in 45 with a topic each), whether glibc or mimalloc served
//! C's malloc.
//! Each test makes topics, groups and transactional ids of its own, so the
//! tests share one broker and can run again on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_crds::job::Guarantee;
use weir_worker::checkpoint::coordinator::{CommittedOffsets, OutputCommitter};
use weir_worker::checkpoint::evidence::{CommitToken, GroupOffset};
use weir_worker::checkpoint::manifest::SourceOffset;
use weir_worker::kafka::client::consumer_config;
use weir_worker::kafka::lag::LagMonitor;
use weir_worker::kafka::output::{KafkaGroupOffsets, KafkaOutput};
use weir_worker::kafka::repartition::{Purger, ensure_topic};

use crate::common::{
    BASE_TS, DLQ, END_KEY, EVENTS, Event, LATE, OUT, ReadRecord, generate, job_yaml, model,
    partition_of, produce_to, results, start_workers, stop_all, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The broker under test, or `None` (and a note) when none is given.
fn real_broker(test: &str) -> Option<String> {
    match std::env::var("WEIR_REAL_KAFKA") {
        Ok(bootstrap) if !bootstrap.trim().is_empty() => Some(bootstrap),
        _ => {
            eprintln!(
                "skipped {test}: no real broker (set WEIR_REAL_KAFKA=HOST:PORT; .ci/run starts one)"
            );
            None
        }
    }
}

/// Whether the broker stores offset-commit metadata, reports true high
/// watermarks and deletes records (`WEIR_REAL_KAFKA_FULL=1`).
fn is_full_broker() -> bool {
    std::env::var("WEIR_REAL_KAFKA_FULL").as_deref() == Ok("1")
}

/// The broker, when it is a full one (see [`is_full_broker`]).
fn full_broker(test: &str) -> Option<String> {
    let bootstrap = real_broker(test)?;
    if is_full_broker() {
        Some(bootstrap)
    } else {
        eprintln!(
            "skipped {test}: needs true high watermarks and DeleteRecords (WEIR_REAL_KAFKA_FULL=1), \
             which the memory-only Tansu of CI lacks"
        );
        None
    }
}

/// Names of this test's own topics, group and transactional ids.
struct Names {
    input: String,
    output: String,
    group: String,
    transactional_prefix: String,
}

impl Names {
    fn new(test: &str) -> Names {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Names {
            input: format!("{test}.{unique}.in"),
            output: format!("{test}.{unique}.out"),
            group: format!("{test}.{unique}"),
            transactional_prefix: format!("weir.{test}.{unique}"),
        }
    }
}

fn base(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Creates `topic` through the worker's own admin path.
async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    ensure_topic(&base(bootstrap), topic, partitions, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
}

/// A worker's consumer of `group` and the output committing to it.
fn output(
    bootstrap: &str,
    names: &Names,
    guarantee: Guarantee,
) -> (Arc<BaseConsumer>, KafkaOutput) {
    let consumer: Arc<BaseConsumer> = Arc::new(
        consumer_config(&base(bootstrap), &names.group)
            .create()
            .expect("consumer"),
    );
    let group = consumer.group_metadata().expect("group metadata");
    let prefix = names.transactional_prefix.clone();
    let output = KafkaOutput::new(
        guarantee,
        base(bootstrap),
        move |task| format!("{prefix}.{task}"),
        consumer.clone(),
        group,
    );
    (consumer, output)
}

fn send(output: &KafkaOutput, topic: &str, values: &[&str]) {
    for value in values {
        output
            .producer(0)
            .send_to_partition(topic, 0, None, value.as_bytes(), OwnedHeaders::new())
            .expect("send");
    }
}

fn token(checkpoint_id: u64, incarnation: &str) -> CommitToken {
    CommitToken {
        checkpoint_id,
        incarnation: incarnation.to_owned(),
    }
}

fn offsets(topic: &str, offset: i64) -> Vec<SourceOffset> {
    vec![SourceOffset {
        topic: topic.to_owned(),
        partition: 0,
        offset,
    }]
}

/// Asserts that the group holds `offset` for partition 0 of `topic`, with
/// `token` as its metadata where the broker stores metadata.
fn assert_group_offset(
    consumer: &BaseConsumer,
    topic: &str,
    offset: i64,
    token: &CommitToken,
    what: &str,
) {
    let committed = KafkaGroupOffsets {
        consumer,
        timeout: TIMEOUT,
    }
    .committed(&[(topic.to_owned(), 0)])
    .expect("read the group's offsets")
    .remove(&(topic.to_owned(), 0))
    .unwrap_or_else(|| panic!("{what}: the group holds no offset for {topic}"));
    assert_eq!(committed.offset, offset, "{what}");
    if is_full_broker() {
        assert_eq!(
            committed,
            GroupOffset {
                offset,
                metadata: token.encode()
            },
            "{what}, with the checkpoint's token"
        );
    } else {
        eprintln!(
            "{what}: offset checked; token not checked (this broker drops offset-commit metadata: \
             got {:?}; WEIR_REAL_KAFKA_FULL=1 checks it)",
            committed.metadata
        );
    }
}

/// The values of partition 0 of `topic`, read committed: at least
/// `expected` of them, and all there are when they came.
fn read_committed(bootstrap: &str, topic: &str, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = base(bootstrap)
        .set(
            "group.id",
            format!("reader.{}", uuid::Uuid::new_v4().simple()),
        )
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    // The records were all committed before the read starts. Read until
    // `expected` of them came and then a second passed with nothing new (so
    // a duplicate is read too), or the deadline passed: how long the first
    // fetch takes on a busy machine bounds nothing.
    let mut values = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let mut last = Instant::now();
    while Instant::now() < deadline
        && (values.len() < expected || last.elapsed() < Duration::from_secs(1))
    {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last = Instant::now();
                values.push(
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                );
            }
            Some(Err(e)) => panic!("read {topic}: {e}"),
            None => {}
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_commit_writes_the_output_and_the_offsets_with_their_token() {
    let Some(bootstrap) = real_broker("exactly_once_commit") else {
        return;
    };
    let names = Names::new("eos");
    create_topic(&bootstrap, &names.input, 1).await;
    create_topic(&bootstrap, &names.output, 1).await;
    let (consumer, mut output) = output(&bootstrap, &names, Guarantee::ExactlyOnce);

    output.fence(&[0]).expect("fence");
    send(&output, &names.output, &["a", "b", "c"]);
    output
        .commit(0, &offsets(&names.input, 42), &token(7, "1a2b"))
        .expect("commit");

    assert_group_offset(
        &consumer,
        &names.input,
        42,
        &token(7, "1a2b"),
        "the offsets sent to the transaction are the group's",
    );
    assert_eq!(
        read_committed(&bootstrap, &names.output, 3),
        ["a", "b", "c"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_of_a_task_fences_the_old_one_before_it_commits() {
    let Some(bootstrap) = real_broker("fencing") else {
        return;
    };
    let names = Names::new("fence");
    create_topic(&bootstrap, &names.input, 1).await;
    create_topic(&bootstrap, &names.output, 1).await;
    // A topic of the zombie's own: Tansu can lose a transaction that
    // shares a partition with another (see the module's note).
    let zombie_output = format!("{}.zombie", names.output);
    create_topic(&bootstrap, &zombie_output, 1).await;
    let (_, mut zombie) = output(&bootstrap, &names, Guarantee::ExactlyOnce);
    let (consumer, mut owner) = output(&bootstrap, &names, Guarantee::ExactlyOnce);
    zombie.fence(&[0]).expect("the first owner's fence");
    send(&zombie, &zombie_output, &["zombie"]);

    owner.fence(&[0]).expect("the new owner's fence");
    let zombie_commit = zombie.commit(0, &offsets(&names.input, 99), &token(3, "aaaa"));
    send(&owner, &names.output, &["owner"]);
    owner
        .commit(0, &offsets(&names.input, 10), &token(4, "bbbb"))
        .expect("the new owner commits");

    assert!(
        zombie_commit.is_err(),
        "a producer fenced by the task's new owner must not commit"
    );
    assert_group_offset(
        &consumer,
        &names.input,
        10,
        &token(4, "bbbb"),
        "the group holds the new owner's offsets, not the zombie's",
    );
    assert!(
        read_committed(&bootstrap, &names.output, 1).contains(&"owner".to_owned()),
        "the new owner's output is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_commit_stores_the_offsets_with_their_token() {
    let Some(bootstrap) = real_broker("at_least_once_commit") else {
        return;
    };
    let names = Names::new("alo");
    create_topic(&bootstrap, &names.input, 1).await;
    create_topic(&bootstrap, &names.output, 1).await;
    let (consumer, mut output) = output(&bootstrap, &names, Guarantee::AtLeastOnce);

    output.fence(&[0]).expect("fence");
    send(&output, &names.output, &["x"]);
    output.flush().expect("flush");
    output
        .commit(0, &offsets(&names.input, 5), &token(2, "cafe"))
        .expect("commit");

    assert_group_offset(
        &consumer,
        &names.input,
        5,
        &token(2, "cafe"),
        "the offsets committed at least once are the group's",
    );
    assert_eq!(read_committed(&bootstrap, &names.output, 1), ["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repartition_topic_is_created_once_and_its_partition_count_is_checked() {
    let Some(bootstrap) = real_broker("repartition_topic") else {
        return;
    };
    let topic = format!("weir.e2e.{}.by-user", uuid::Uuid::new_v4().simple());

    ensure_topic(&base(&bootstrap), &topic, 3, TIMEOUT)
        .await
        .expect("the first worker creates the topic");
    ensure_topic(&base(&bootstrap), &topic, 3, TIMEOUT)
        .await
        .expect("the next worker finds it as it is");
    let mismatch = ensure_topic(&base(&bootstrap), &topic, 5, TIMEOUT).await;

    let error = mismatch
        .expect_err("a topic with another partition count is refused")
        .to_string();
    assert!(error.contains(&topic), "{error}");
}

/// Produces `count` plain records to partition 0 of `topic`.
fn produce(bootstrap: &str, topic: &str, count: usize) {
    let producer: rdkafka::producer::BaseProducer = base(bootstrap).create().expect("producer");
    for i in 0..count {
        let value = i.to_string();
        producer
            .send(
                rdkafka::producer::BaseRecord::<(), _>::to(topic)
                    .partition(0)
                    .payload(&value),
            )
            .expect("send");
    }
    rdkafka::producer::Producer::flush(&producer, TIMEOUT).expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_read_from_the_brokers_high_watermarks() {
    let Some(bootstrap) = full_broker("high_watermarks") else {
        return;
    };
    let names = Names::new("lag");
    create_topic(&bootstrap, &names.input, 1).await;
    produce(&bootstrap, &names.input, 25);

    let monitor = LagMonitor::start(&base(&bootstrap), vec![(names.input.clone(), 0)]);
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = BTreeMap::new();
    while Instant::now() < deadline {
        seen = monitor.high_watermarks().into_iter().collect();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(seen, BTreeMap::from([((names.input.clone(), 0), 25)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purger_deletes_the_records_before_the_committed_offsets() {
    let Some(bootstrap) = full_broker("delete_records") else {
        return;
    };
    let names = Names::new("purge");
    create_topic(&bootstrap, &names.input, 1).await;
    produce(&bootstrap, &names.input, 30);

    let purger = Purger::start(&base(&bootstrap), names.input.clone()).expect("purger");
    purger.purge(vec![(0, 20)]);
    let reader: BaseConsumer = base(&bootstrap).create().expect("reader");
    let deadline = Instant::now() + TIMEOUT;
    let mut low = 0;
    while Instant::now() < deadline && low < 20 {
        low = reader
            .fetch_watermarks(&names.input, 0, TIMEOUT)
            .expect("watermarks")
            .0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(
        low, 20,
        "records before offset 20 are deleted, the rest kept"
    );
}

/// Produces `events` (and one end marker per partition, far in event time)
/// to `topic`, each to the partition of its key; returns how many.
fn produce_events(bootstrap: &str, topic: &str, partitions: i32, events: &[Event]) -> usize {
    let end = Event {
        user: END_KEY.to_owned(),
        amount: 0,
        ts: BASE_TS + 3_600_000,
    };
    let keyed = events
        .iter()
        .map(|e| (partition_of(&e.user, partitions), e))
        .chain((0..partitions).map(|p| (p, &end)));
    let records: Vec<_> = keyed
        .map(|(partition, e)| (partition, Some(e.user.clone()), e.json().into_bytes()))
        .collect();
    produce_to(bootstrap, topic, &records);
    records.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_workers_write_each_window_result_once() {
    let Some(bootstrap) = real_broker("exactly_once_workers") else {
        return;
    };
    // Tansu loses records of transactional producers writing one partition
    // at once (see the module's documentation): one task on it.
    let (partitions, parallelism) = if is_full_broker() { (4, 2) } else { (1, 1) };
    // A job, topics and group of this run alone.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let (events_topic, out_topic) = (format!("events.{unique}"), format!("out.{unique}"));
    let yaml = job_yaml(
        &bootstrap,
        &format!("memory://real-{unique}/checkpoints"),
        "",
        "",
    )
    .replace("name: totals", &format!("name: totals-{unique}"))
    .replace(
        &format!("topics: [{EVENTS}]"),
        &format!("topics: [{events_topic}]"),
    )
    .replace(&format!("topic: {OUT}"), &format!("topic: {out_topic}"))
    .replace(&format!("topic: {DLQ}"), &format!("topic: dlq.{unique}"))
    .replace(&format!("topic: {LATE}"), &format!("topic: late.{unique}"));
    create_topic(&bootstrap, &events_topic, partitions).await;
    for topic in [
        &out_topic,
        &format!("dlq.{unique}"),
        &format!("late.{unique}"),
    ] {
        create_topic(&bootstrap, topic, 1).await;
    }
    let events = generate(2_000, 30, BASE_TS, 11);
    let total = produce_events(&bootstrap, &events_topic, partitions, &events);

    let state = tempfile::tempdir().expect("state dir");
    let workers = start_workers(&yaml, parallelism, 1, "latest", state.path()).await;
    wait_for(Duration::from_secs(60), "every record processed", || {
        workers.iter().map(|w| w.status().records_in).sum::<u64>() == total as u64
    })
    .await;
    stop_all(workers).await;

    let expected = model(&events);
    let written: Vec<ReadRecord> = read_committed(&bootstrap, &out_topic, expected.len())
        .into_iter()
        .map(|value| ReadRecord {
            value: value.into_bytes(),
            headers: Default::default(),
        })
        .collect();
    let got = results(&written);
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(window, result)| got.get(*window) != Some(*result))
        .map(|(window, result)| format!("{window:?}: want {result:?}, got {:?}", got.get(window)))
        .collect();
    assert!(
        wrong.is_empty() && got.len() == expected.len(),
        "the windows' counts and sums: {} windows written, {} expected, {} wrong, e.g. {:?}",
        got.len(),
        expected.len(),
        wrong.len(),
        &wrong[..wrong.len().min(5)],
    );
    assert_eq!(
        written.len(),
        expected.len(),
        "each window's result written exactly once"
    );
}

//! Workers end to end through librdkafka's mock cluster, RocksDB in temp
//! dirs and object storage in memory or in a local directory: results equal
//! a plain model of the job after normal runs, a crash and a rescale; bad
//! and late records go to their topics; the control API wants its token.
//!
//! Known gaps of the mock cluster shape these tests: records of aborted
//! transactions are visible to read_committed consumers, so results are read
//! as the last value per (key, window) rather than checking that each is
//! written exactly once; offsets sent to a transaction are not stored, so
//! restores rely on the checkpoint manifests (as they do on a real broker).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use weir_worker::control::status::{SavepointState, WorkerPhase};

fn store_url(name: &str) -> String {
    format!(
        "memory://{name}-{}/checkpoints",
        uuid::Uuid::new_v4().simple()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_counts_equal_the_model() {
    let kafka = Kafka::new(4);
    let events = generate(4000, 40, BASE_TS, 1);
    kafka.produce_events(&events);
    let end_ts = BASE_TS + 3_600_000;
    kafka.produce_end_markers(end_ts);
    let ends = end_offsets(&HashMap::new(), &events, 4, true);

    let state = tempfile::tempdir().unwrap();
    let yaml = job_yaml(&kafka.bootstrap, &store_url("counts"), "", "");
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    wait_processed(&workers, &ends).await;
    let records_in: u64 = workers.iter().map(|w| w.status().records_in).sum();
    assert_eq!(records_in, events.len() as u64 + 4);
    stop_all(workers).await;

    let out = kafka.read_all(OUT);
    let expected = model(&events);
    assert_eq!(results(&out), expected);
    // Exactly one result per window when nothing failed.
    assert_eq!(out.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restore_from_the_latest_checkpoint() {
    let kafka = Kafka::new(2);
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().join("store").display());
    let yaml = job_yaml(&kafka.bootstrap, &storage, "", "");
    let all = generate(6000, 30, BASE_TS, 2);
    let (first, rest) = all.split_at(2000);
    let (second, third) = rest.split_at(2000);

    // Process the first part and checkpoint it (a savepoint is a checkpoint
    // plus a copy; the interval is long so no other checkpoint happens).
    kafka.produce_events(first);
    let ends1 = end_offsets(&HashMap::new(), first, 2, false);
    let workers = start_workers(&yaml, 1, 1, "latest", &dir.path().join("state")).await;
    wait_processed(&workers, &ends1).await;
    take_savepoint(&workers[0], "checkpoint-1").await;

    // Process more, then crash: no checkpoint, no commit.
    kafka.produce_events(second);
    let ends2 = end_offsets(&ends1, second, 2, false);
    wait_processed(&workers, &ends2).await;
    let crashed = workers.into_iter().next().unwrap();
    crashed.kill();
    assert_eq!(
        crashed.wait().await.unwrap(),
        weir_worker::runtime::WorkerExit::Killed
    );

    // Restart from the latest checkpoint (same state dir, stale RocksDB
    // files in it) and finish.
    kafka.produce_events(third);
    kafka.produce_end_markers(BASE_TS + 3_600_000);
    let ends3 = end_offsets(&ends2, third, 2, true);
    let workers = start_workers(&yaml, 1, 1, "latest", &dir.path().join("state")).await;
    assert_eq!(
        workers[0].status().restored_from.as_deref(),
        Some("checkpoint:1")
    );
    wait_processed(&workers, &ends3).await;
    // Only what followed the checkpoint is read again.
    assert_eq!(
        workers[0].status().records_in,
        (second.len() + third.len() + 2) as u64
    );
    stop_all(workers).await;

    assert_eq!(results(&kafka.read_all(OUT)), model(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_from_two_to_three_workers_through_a_savepoint() {
    let kafka = Kafka::new(6);
    let state = tempfile::tempdir().unwrap();
    let yaml = job_yaml(&kafka.bootstrap, &store_url("rescale"), "", "");
    let all = generate(6000, 60, BASE_TS, 3);
    let (first, second) = all.split_at(3000);

    kafka.produce_events(first);
    let ends1 = end_offsets(&HashMap::new(), first, 6, false);
    let old = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    wait_processed(&old, &ends1).await;
    stop_with_savepoint(&old, "rescale-1").await;
    // Stopped workers consume nothing more.
    kafka.produce_events(second);
    kafka.produce_end_markers(BASE_TS + 3_600_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        old.iter().map(|w| w.status().records_in).sum::<u64>(),
        first.len() as u64
    );
    stop_all(old).await;

    let ends2 = end_offsets(&ends1, second, 6, true);
    let new = start_workers(&yaml, 3, 2, "rescale-1", state.path()).await;
    for w in &new {
        assert_eq!(
            w.status().restored_from.as_deref(),
            Some("savepoint:rescale-1")
        );
        assert_eq!(w.status().tasks.len(), 2);
    }
    wait_processed(&new, &ends2).await;
    stop_all(new).await;

    assert_eq!(results(&kafka.read_all(OUT)), model(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioned_counts_equal_the_model() {
    let kafka = Kafka::new(4);
    let events = generate(4000, 40, BASE_TS, 4);
    produce_round_robin(&kafka, &events);
    kafka.produce_end_markers(BASE_TS + 3_600_000);

    let state = tempfile::tempdir().unwrap();
    let yaml = repartitioned_job_yaml(&kafka.bootstrap, &store_url("repartition"));
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    let expected = model(&events);
    wait_results(&kafka, &expected).await;
    // Every source record was read once (the status is refreshed twice a
    // second), and the repartition topic is one more input of every task.
    wait_for(Duration::from_secs(5), "status", || {
        workers.iter().map(|w| w.status().records_in).sum::<u64>() == events.len() as u64 + 4
    })
    .await;
    let status: Vec<_> = workers.iter().map(|w| w.status()).collect();
    let repartitioned: u64 = workers
        .iter()
        .flat_map(|w| {
            w.metrics_text()
                .lines()
                .filter(|l| l.starts_with("weir_records_repartitioned_total{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(repartitioned, events.len() as u64 + 4);
    stop_all(workers).await;
    for s in &status {
        for t in &s.tasks {
            let topics: Vec<&str> = t.partitions.iter().map(|p| p.topic.as_str()).collect();
            assert_eq!(topics, [EVENTS, REPARTITION]);
        }
    }
    // One result per window: each key was aggregated by one task only.
    let out = kafka.read_all(OUT);
    assert_eq!(out.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioned_rescale_from_two_to_three_workers() {
    let kafka = Kafka::new(6);
    let state = tempfile::tempdir().unwrap();
    let yaml = repartitioned_job_yaml(&kafka.bootstrap, &store_url("repartition-rescale"));
    let all = generate(6000, 60, BASE_TS, 5);
    let (first, second) = all.split_at(3000);

    let counts = produce_round_robin(&kafka, first);
    let old = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    wait_processed(&old, &counts).await;
    stop_with_savepoint(&old, "rescale-1").await;
    stop_all(old).await;

    // What the old workers had repartitioned but not yet aggregated is read
    // back by the new owners from the savepoint's offsets.
    produce_round_robin(&kafka, second);
    kafka.produce_end_markers(BASE_TS + 3_600_000);
    let new = start_workers(&yaml, 3, 2, "rescale-1", state.path()).await;
    wait_results(&kafka, &model(&all)).await;
    stop_all(new).await;
}

/// A worker may read another's report that it drained for a savepoint
/// before it is asked for that savepoint itself (the requests reach the
/// workers one by one): the report still counts, and both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_report_read_before_the_savepoint_request_still_counts() {
    let kafka = Kafka::new(4);
    let state = tempfile::tempdir().unwrap();
    // Checkpoints (which repeat a draining worker's report) far apart:
    // worker 0 reports once, before worker 1 is asked.
    let yaml = repartitioned_job_yaml(&kafka.bootstrap, &store_url("early-report"))
        .replace("interval: 300ms", "interval: 30s");
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    let counts = produce_round_robin(&kafka, &generate(2_000, 50, BASE_TS, 3));
    wait_processed(&workers, &counts).await;
    let request = |w: &weir_worker::runtime::WorkerHandle| {
        http(
            w.addr(),
            "POST",
            "/v1/savepoints",
            Some(TOKEN),
            r#"{"id":"staggered","stop":true}"#,
        )
    };
    let (code, body) = request(&workers[0]).await;
    assert_eq!(code, 202, "{body}");
    // Worker 1 reads worker 0's drain reports while still running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, body) = request(&workers[1]).await;
    assert_eq!(code, 202, "{body}");
    for w in &workers {
        wait_for(Duration::from_secs(20), "stop with savepoint", || {
            let s = w.status();
            s.stopped
                && s.savepoint
                    .is_some_and(|s| s.state == SavepointState::Completed)
        })
        .await;
    }
    stop_all(workers).await;
}

/// A stop-with-savepoint of a repartitioned job waits until every task has
/// read what every other task wrote to it: the savepoint stands alone, no
/// keyed record it needs is left on the repartition topic past its offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_savepoint_drains_the_repartition_topic() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use weir_worker::checkpoint::layout::JobLayout;
    use weir_worker::checkpoint::manifest::TaskManifest;

    let kafka = Kafka::new(4);
    let state = tempfile::tempdir().unwrap();
    let url = store_url("drain");
    let yaml = repartitioned_job_yaml(&kafka.bootstrap, &url);
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    // Ask while repartitioned records are still in flight.
    produce_round_robin(&kafka, &generate(20_000, 500, BASE_TS, 9));
    stop_with_savepoint(&workers, "drained").await;
    stop_all(workers).await;

    let (store, base) = weir_worker::checkpoint::storage::open_store(&url).unwrap();
    let layout = JobLayout::new(&base, "test", "totals");
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", "drain-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    for task in 0..4u32 {
        let manifest: TaskManifest = weir_worker::checkpoint::transfer::get_json(
            store.as_ref(),
            &layout.savepoint_manifest("drained", task),
        )
        .await
        .unwrap()
        .expect("every task is in the savepoint");
        let from = manifest
            .offsets
            .iter()
            .find(|o| o.topic == REPARTITION)
            .expect("the repartition offset is in the savepoint")
            .offset;
        let (_, high) = reader
            .fetch_watermarks(REPARTITION, task as i32, Duration::from_secs(10))
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(REPARTITION, task as i32, rdkafka::Offset::Offset(from))
            .unwrap();
        reader.assign(&list).unwrap();
        // Past the savepoint's offset only watermark reports (no value) may
        // follow: a keyed record there would be lost to the savepoint.
        // Transaction markers are never returned: stop once nothing more
        // comes.
        let mut keyed_after = 0;
        let mut position = from;
        let mut quiet_polls = 0;
        while position < high && quiet_polls < 5 {
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                quiet_polls += 1;
                continue;
            };
            quiet_polls = 0;
            let message = message.unwrap();
            position = message.offset() + 1;
            let is_report = message
                .headers()
                .is_some_and(|h| h.iter().any(|h| h.key == "weir.upstream"));
            if !is_report {
                keyed_after += 1;
            }
        }
        assert_eq!(
            keyed_after, 0,
            "task {task}: keyed records after the savepoint's offset {from}"
        );
    }
}

/// At least once there are no transactions, so the mock's gaps do not
/// apply: after a crash the restored upstream tasks write again what they
/// wrote since the checkpoint, and the restored downstream tasks read both
/// copies. State must still count each source record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioned_crash_at_least_once_counts_each_record_once() {
    let kafka = Kafka::new(2);
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().join("store").display());
    let yaml = job_yaml(&kafka.bootstrap, &storage, "", "  guarantee: atLeastOnce\n")
        .replace("sourcePartitioned: true", "sourcePartitioned: false");
    let all = generate(6000, 30, BASE_TS, 6);
    let (first, rest) = all.split_at(2000);
    let (second, third) = rest.split_at(2000);
    let state = dir.path().join("state");

    let counts = produce_round_robin(&kafka, first);
    let workers = start_workers(&yaml, 1, 1, "latest", &state).await;
    wait_processed(&workers, &counts).await;
    take_savepoint(&workers[0], "checkpoint-1").await;

    // More records, read back after the repartition (the tasks' watermark
    // follows the reports that come after them), then a crash.
    produce_round_robin(&kafka, second);
    // The smallest of the partitions' highest event times, less the
    // default 5 s out-of-orderness: where the reports end.
    let reported = (0..2)
        .map(|p| {
            second
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == p)
                .map(|(_, e)| e.ts)
                .max()
                .unwrap()
        })
        .min()
        .unwrap()
        - 5_000;
    wait_for(
        Duration::from_secs(20),
        "the second part repartitioned",
        || {
            workers[0]
                .status()
                .tasks
                .iter()
                .all(|t| t.watermark_ms.is_some_and(|w| w >= reported))
        },
    )
    .await;
    let crashed = workers.into_iter().next().unwrap();
    crashed.kill();
    crashed.wait().await.unwrap();

    produce_round_robin(&kafka, third);
    kafka.produce_end_markers(BASE_TS + 3_600_000);
    let workers = start_workers(&yaml, 1, 1, "latest", &state).await;
    assert_eq!(
        workers[0].status().restored_from.as_deref(),
        Some("checkpoint:1")
    );
    wait_results(&kafka, &model(&all)).await;
    stop_all(workers).await;
}

/// A result larger than a Kafka message may be goes to the dead-letter
/// topic (truncated, with the reason) instead of stopping the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_go_to_the_dead_letter_topic() {
    let kafka = Kafka::new(1);
    // The map comes first: the keyBy is step 1.
    kafka
        .cluster
        .create_topic("weir.test.totals.keyBy-1", 1, 1)
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let copies = "    - map:\n        keepInput: true\n        fields:\n          - name: u2\n            expr: record.user\n          - name: u3\n            expr: record.user\n";
    let yaml = job_yaml(
        &kafka.bootstrap,
        &store_url("oversized"),
        copies,
        "  guarantee: atLeastOnce\n",
    )
    .replace("sourcePartitioned: true", "sourcePartitioned: false");
    let small: Vec<Event> = (0..3)
        .map(|i| Event {
            user: format!("u{i}"),
            amount: 1,
            ts: BASE_TS + i * 1_000,
        })
        .collect();
    // 400 kB of key, copied twice by the map: 1.2 MB, over the 1 MB limit.
    let big = Event {
        user: "b".repeat(400_000),
        amount: 1,
        ts: BASE_TS + 1_500,
    };
    let mut records: Vec<_> = small
        .iter()
        .map(|e| (0, None, e.json().into_bytes()))
        .collect();
    records.insert(2, (0, None, big.json().into_bytes()));
    kafka.produce(&records);
    kafka.produce_end_markers(BASE_TS + 3_600_000);
    let workers = start_workers(&yaml, 1, 1, "none", state.path()).await;
    wait_results(&kafka, &model(&small)).await;
    assert!(workers[0].status().error.is_none());
    stop_all(workers).await;

    let dead = kafka.read_all(DLQ);
    assert_eq!(
        dead.len(),
        1,
        "{:?}",
        dead.iter().map(|d| &d.headers).collect::<Vec<_>>()
    );
    assert!(
        dead[0].headers["weir.error"].contains("message.max.bytes"),
        "{}",
        dead[0].headers["weir.error"]
    );
    assert_eq!(dead[0].headers["weir.source.offset"], "2");
    assert_eq!(dead[0].value.len(), 64 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_and_late_ones_to_late_data() {
    let kafka = Kafka::new(1);
    let state = tempfile::tempdir().unwrap();
    let yaml = job_yaml(
        &kafka.bootstrap,
        &store_url("dlq"),
        "    - filter: record.amount > 0\n",
        "  guarantee: atLeastOnce\n",
    );
    let on_time = Event {
        user: "a".into(),
        amount: 5,
        ts: BASE_TS + 60_000,
    };
    let late = Event {
        user: "a".into(),
        amount: 7,
        ts: BASE_TS,
    };
    kafka.produce(&[
        (0, Some("a".into()), on_time.json().into_bytes()),
        (0, None, b"{not json".to_vec()),
        (0, None, br#"{"user":"b","ts":1700000060000}"#.to_vec()),
        (0, Some("a".into()), late.json().into_bytes()),
    ]);
    let ends = HashMap::from([(0, 4)]);
    let workers = start_workers(&yaml, 1, 1, "none", state.path()).await;
    wait_processed(&workers, &ends).await;
    stop_all(workers).await;

    let dead = kafka.read_all(DLQ);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].value, b"{not json");
    assert_eq!(dead[0].headers["weir.source.offset"], "1");
    assert_eq!(dead[1].headers["weir.source.offset"], "2");
    for d in &dead {
        assert!(!d.headers["weir.error"].is_empty());
        assert_eq!(d.headers["weir.source.topic"], EVENTS);
        assert_eq!(d.headers["weir.source.partition"], "0");
    }
    let late_records = kafka.read_all(LATE);
    assert_eq!(late_records.len(), 1);
    assert_eq!(late_records[0].value, late.json().into_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_requires_the_token() {
    let kafka = Kafka::new(1);
    let state = tempfile::tempdir().unwrap();
    let yaml = job_yaml(&kafka.bootstrap, &store_url("auth"), "", "");
    let workers = start_workers(&yaml, 1, 1, "none", state.path()).await;
    let addr = workers[0].addr();
    let body = r#"{"id":"sp-1"}"#;
    assert_eq!(
        http(addr, "POST", "/v1/savepoints", None, body).await.0,
        401
    );
    assert_eq!(
        http(addr, "POST", "/v1/savepoints", Some("wrong"), body)
            .await
            .0,
        401
    );
    assert_eq!(http(addr, "POST", "/v1/resume", None, "").await.0, 401);
    assert_eq!(workers[0].status().savepoint, None);
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 200);
    let (code, status) = http(addr, "GET", "/v1/status", None, "").await;
    assert_eq!(code, 200);
    assert!(status.contains("\"busyRatio\""), "{status}");
    let (code, metrics) = http(addr, "GET", "/metrics", None, "").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("weir_busy_ratio"), "{metrics}");
    assert_eq!(
        http(
            addr,
            "POST",
            "/v1/savepoints",
            Some(TOKEN),
            r#"{"id":"../x"}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        http(addr, "POST", "/v1/savepoints", Some(TOKEN), body)
            .await
            .0,
        202
    );
    assert_eq!(
        http(addr, "POST", "/v1/resume", Some(TOKEN), "").await.0,
        202
    );
    stop_all(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_worker_stops_without_committing() {
    use weir_worker::checkpoint::coordinator::CoordinatorError;
    use weir_worker::checkpoint::fence::{FenceError, write_fence};
    use weir_worker::checkpoint::layout::JobLayout;
    use weir_worker::runtime::WorkerError;

    let kafka = Kafka::new(1);
    let state = tempfile::tempdir().unwrap();
    let url = store_url("fence");
    let yaml = job_yaml(&kafka.bootstrap, &url, "", "");
    let events = generate(100, 5, BASE_TS, 4);
    kafka.produce_events(&events);
    let workers = start_workers(&yaml, 1, 1, "latest", state.path()).await;
    wait_processed(&workers, &end_offsets(&HashMap::new(), &events, 1, false)).await;

    // A rescale moved the job to generation 2.
    let (store, base) = weir_worker::checkpoint::storage::open_store(&url).unwrap();
    let layout = JobLayout::new(&base, "test", "totals");
    write_fence(store.as_ref(), &layout, 2).await.unwrap();
    let (code, _) = http(
        workers[0].addr(),
        "POST",
        "/v1/savepoints",
        Some(TOKEN),
        r#"{"id":"too-late"}"#,
    )
    .await;
    assert_eq!(code, 202);
    let worker = workers.into_iter().next().unwrap();
    wait_for(Duration::from_secs(20), "the worker to finish", || {
        worker.status().phase == WorkerPhase::Finished
    })
    .await;
    let status = worker.status();
    assert!(!status.ready);
    assert!(status.error.is_some_and(|e| e.contains("fenced")));
    assert_eq!(
        status.savepoint.map(|s| s.state),
        Some(SavepointState::Failed)
    );
    let result = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker stops");
    match result {
        Err(WorkerError::Coordinator(e)) => assert!(
            matches!(
                *e,
                CoordinatorError::Fenced(FenceError::Stale {
                    mine: 1,
                    current: 2
                })
            ),
            "{e}"
        ),
        other => panic!("expected fencing, got {other:?}"),
    }
    // A fenced worker writes nothing to the store: no manifest, no marker.
    let listing =
        weir_worker::checkpoint::upload::list_task_checkpoints(store.as_ref(), &layout, 0)
            .await
            .unwrap();
    assert!(listing.is_empty(), "{listing:?}");
}

/// The join's topic of [`interval_join_yaml`].
const PAYMENTS: &str = "payments";

/// The test job with an interval join before its window: each event paired
/// with the payments of its user from 1 s before to 1 s after it, counted
/// and summed (the payment's amount) per user and window of the pair's
/// later time.
fn interval_join_yaml(bootstrap: &str, storage: &str) -> String {
    repartitioned_job_yaml(bootstrap, storage)
        .replace(
            "    - window:",
            &format!(
                "    - join:\n        type: interval\n        topic: {PAYMENTS}\n        key: record.user\n        as: p\n        before: 1s\n        after: 1s\n    - window:"
            ),
        )
        .replace("expr: record.amount", "expr: record.p.amount")
}

/// The plain model of [`interval_join_yaml`].
fn interval_join_model(events: &[Event], payments: &[Event]) -> Results {
    let mut out = Results::new();
    for e in events.iter().filter(|e| e.user != END_KEY) {
        for p in payments
            .iter()
            .filter(|p| p.user == e.user && (p.ts - e.ts).abs() <= 1_000)
        {
            let t = e.ts.max(p.ts);
            let start = t - t.rem_euclid(WINDOW_MS);
            let entry = out.entry((e.user.clone(), start)).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += p.amount;
        }
    }
    out
}

/// An interval join keeps its waiting records across a stop with a
/// savepoint and a restore at another parallelism: the pairs counted per
/// window equal the model's, whichever worker held each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_rescales_from_two_to_three_workers() {
    let kafka = Kafka::new(6);
    kafka.cluster.create_topic(PAYMENTS, 6, 1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let yaml = interval_join_yaml(&kafka.bootstrap, &store_url("join-rescale"));
    let events = generate(3000, 20, BASE_TS, 11);
    let payments = generate(3000, 20, BASE_TS, 12);
    let expected = interval_join_model(&events, &payments);
    assert!(expected.len() > 100, "{} windows", expected.len());
    let round_robin = |events: &[Event], from: usize| -> Vec<(i32, Option<String>, Vec<u8>)> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| (((from + i) % 6) as i32, None, e.json().into_bytes()))
            .collect()
    };

    let counts = produce_round_robin(&kafka, &events[..1500]);
    produce_to(
        &kafka.bootstrap,
        PAYMENTS,
        &round_robin(&payments[..1500], 0),
    );
    let old = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    wait_processed(&old, &counts).await;
    stop_with_savepoint(&old, "rescale-join").await;
    stop_all(old).await;

    produce_round_robin(&kafka, &events[1500..]);
    produce_to(
        &kafka.bootstrap,
        PAYMENTS,
        &round_robin(&payments[1500..], 1500),
    );
    let end = Event {
        user: END_KEY.to_owned(),
        amount: 0,
        ts: BASE_TS + 3_600_000,
    };
    kafka.produce_end_markers(end.ts);
    let markers: Vec<_> = (0..6).map(|p| (p, None, end.json().into_bytes())).collect();
    produce_to(&kafka.bootstrap, PAYMENTS, &markers);
    let new = start_workers(&yaml, 3, 2, "rescale-join", state.path()).await;
    wait_results(&kafka, &expected).await;
    stop_all(new).await;
}

/// The table of [`table_join_yaml`].
const USERS: &str = "users";

/// Asks `worker` alone to stop with savepoint `id`, without waiting.
async fn request_stop(worker: &weir_worker::runtime::WorkerHandle, id: &str) {
    let request = format!(r#"{{"id":"{id}","stop":true}}"#);
    let (code, body) = http(
        worker.addr(),
        "POST",
        "/v1/savepoints",
        Some(TOKEN),
        &request,
    )
    .await;
    assert_eq!(code, 202, "{body}");
}

/// Asks `worker` to resume, without waiting.
async fn request_resume(worker: &weir_worker::runtime::WorkerHandle) {
    let (code, body) = http(worker.addr(), "POST", "/v1/resume", Some(TOKEN), "").await;
    assert_eq!(code, 202, "{body}");
}

/// A resume while a stop-with-savepoint still drains gives the stop up:
/// the savepoint fails, saying why, and the worker goes on reading its
/// sources (a drain left running would take a savepoint missing what they
/// send next). What the given-up drain told the other worker no longer
/// counts when that worker is asked for the same savepoint id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_during_a_drain_gives_the_stop_up() {
    let kafka = Kafka::new(2);
    let events = generate(2000, 40, BASE_TS, 12);
    let (first, second) = events.split_at(1000);
    produce_round_robin(&kafka, first);
    let state = tempfile::tempdir().unwrap();
    let yaml = repartitioned_job_yaml(&kafka.bootstrap, &store_url("resume-drain"));
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    // Only worker 0 stops: the drain waits for worker 1's report, which
    // never comes, for the default timeout of minutes.
    request_stop(&workers[0], "resumed").await;
    request_resume(&workers[0]).await;
    wait_for(PATIENCE, "the stop given up", || {
        workers[0].status().savepoint.is_some_and(|s| {
            s.state == SavepointState::Failed
                && s.error.as_deref().is_some_and(|e| e.contains("resume"))
        })
    })
    .await;
    produce_round_robin(&kafka, second);
    kafka.produce_end_markers(BASE_TS + 3_600_000);
    wait_results(&kafka, &model(&events)).await;
    assert_eq!(workers[0].status().phase, WorkerPhase::Running);

    // Worker 0 told worker 1's tasks its output ended for "resumed", then
    // went on: asked the same id, worker 1 must wait for worker 0 again.
    request_stop(&workers[1], "resumed").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let savepoint = workers[1].status().savepoint.expect("asked");
    assert_eq!(
        savepoint.state,
        SavepointState::InProgress,
        "the report of a drain given up counted: {savepoint:?}"
    );
    request_resume(&workers[1]).await;
    stop_all(workers).await;
}

/// A table join after a source-partitioned keyBy: each event with its
/// user's row (inner), written as it comes.
fn table_join_yaml(bootstrap: &str, storage: &str) -> String {
    // At-least-once: the mock cluster stores offsets committed directly,
    // not those sent to a transaction.
    job_yaml(bootstrap, storage, "", "  guarantee: atLeastOnce\n")
        .replace(
            "    - window:\n        type: tumbling\n        size: 10s\n    - aggregate:\n        fields:\n          - name: count\n            function: count\n          - name: total\n            function: sum\n            expr: record.amount\n",
            &format!("    - join:\n        type: table\n        topic: {USERS}\n        as: u\n"),
        )
        .replace("interval: 1h", "interval: 300ms")
        .replace(&format!("  lateData:\n    topic: {LATE}\n"), "")
}

/// [`table_join_yaml`] behind a repartition, its table read slowly: one
/// batch of rows per fetch, each fetch from broker 1 a 100 ms round trip.
fn slow_table_join_yaml(kafka: &Kafka, storage: &str) -> String {
    kafka
        .cluster
        .broker_round_trip_time(1, Duration::from_millis(100))
        .unwrap();
    let yaml = table_join_yaml(&kafka.bootstrap, &store_url(storage))
        .replace(
            &format!("    bootstrapServers: \"{}\"\n", kafka.bootstrap),
            &format!(
                "    bootstrapServers: \"{}\"\n    properties:\n      max.partition.fetch.bytes: \"1\"\n",
                kafka.bootstrap
            ),
        )
        .replace("sourcePartitioned: true", "sourcePartitioned: false");
    assert!(
        yaml.contains("max.partition.fetch.bytes") && yaml.contains("sourcePartitioned: false"),
        "{yaml}"
    );
    yaml
}

/// Asserts that each output record carries its own user's row of
/// [`USERS`] (`t<n>` for user `u<n>`).
fn assert_joined_with_their_rows(out: &[ReadRecord]) {
    for record in out {
        let v = record.json();
        let user = v["user"].as_str().unwrap();
        assert_eq!(v["u"]["tier"], format!("t{}", &user[1..]), "{v}");
    }
}

/// A table join whose state is not restored reads its table from the start
/// again, whatever offsets the job's group committed: a job started afresh
/// (new checkpoint storage) still finds every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_restored_state_is_read_from_its_start() {
    let kafka = Kafka::new(2);
    kafka.cluster.create_topic(USERS, 2, 1).unwrap();
    let rows: Vec<_> = (0..10)
        .map(|u| {
            let user = format!("u{u}");
            let row = format!(r#"{{"tier":"t{u}"}}"#).into_bytes();
            (partition_of(&user, 2), Some(user), row)
        })
        .collect();
    produce_to(&kafka.bootstrap, USERS, &rows);
    let events = generate(200, 10, BASE_TS, 21);
    let state = tempfile::tempdir().unwrap();

    let yaml = table_join_yaml(&kafka.bootstrap, &store_url("table-first"));
    kafka.produce_events(&events[..100]);
    let first = start_workers(&yaml, 1, 1, "latest", state.path()).await;
    wait_for(PATIENCE, "the first events joined", || {
        kafka.read_all(OUT).len() >= 100
    })
    .await;
    stop_all(first).await;

    // New checkpoint storage: no state, but the group has committed where
    // both topics were read to.
    let yaml = table_join_yaml(&kafka.bootstrap, &store_url("table-again"));
    kafka.produce_events(&events[100..]);
    let second = start_workers(&yaml, 1, 2, "latest", state.path()).await;
    wait_for(PATIENCE, "the later events joined", || {
        kafka.read_all(OUT).len() >= 200
    })
    .await;
    stop_all(second).await;
    let out = kafka.read_all(OUT);
    assert_eq!(out.len(), 200, "no event read twice or dropped");
    assert_joined_with_their_rows(&out);
}

/// A stop-with-savepoint given up (its drain timed out: the other worker
/// was not asked, so its tasks never report) while a task is still reading
/// its join's table: the table is read to its end and the task's other
/// inputs resume after it, with no restart, and no event is joined with
/// part of the table. The table is read slowly (one batch of rows per
/// fetch, each fetch a 100 ms round trip) so that the drain starts and ends
/// while it is being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_given_up_while_a_table_is_read_lets_the_table_finish() {
    let kafka = Kafka::new(2);
    kafka.cluster.create_topic(USERS, 2, 1).unwrap();
    // Task 0's table is long, task 1's short: worker 1 reads its sources
    // at once and sends task 0 events to join while task 0 still reads its
    // table.
    let users = 1_000;
    let rows: Vec<_> = (0..users)
        .filter_map(|u| {
            let user = format!("u{u}");
            let partition = partition_of(&user, 2);
            let row = format!(r#"{{"tier":"t{u}"}}"#).into_bytes();
            (partition == 0 || u % 10 == 0).then_some((partition, Some(user), row))
        })
        .collect();
    let with_row: std::collections::HashSet<&str> = rows
        .iter()
        .filter_map(|(_, user, _)| user.as_deref())
        .collect();
    let events: Vec<_> = generate(300, users, BASE_TS, 5)
        .into_iter()
        .filter(|e| with_row.contains(e.user.as_str()))
        .collect();
    // Batches of about 20 rows: some 25 fetches for task 0's table.
    for chunk in rows.chunks(20) {
        produce_to(&kafka.bootstrap, USERS, chunk);
    }
    // A drain needs a repartition; a short savepoint timeout.
    let yaml = slow_table_join_yaml(&kafka, "drain-table").replace(
        "  guarantee: atLeastOnce\n",
        "  guarantee: atLeastOnce\n  savepoint:\n    timeout: 1s\n",
    );
    assert!(yaml.contains("timeout: 1s"), "{yaml}");
    produce_round_robin(&kafka, &events);
    let state = tempfile::tempdir().unwrap();
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    request_stop(&workers[0], "given-up").await;
    wait_for(PATIENCE, "the drain to be given up", || {
        workers[0]
            .status()
            .savepoint
            .is_some_and(|s| s.state == SavepointState::Failed)
    })
    .await;
    let table_read = |w: &weir_worker::runtime::WorkerHandle| {
        w.status().tasks.iter().all(|t| {
            t.partitions
                .iter()
                .filter(|p| p.topic == USERS)
                .all(|p| p.high_watermark.is_some_and(|high| p.offset >= high))
        })
    };
    assert!(
        !table_read(&workers[0]),
        "the table was still being read when the drain was given up"
    );

    assert_each_joined_once(&kafka, workers, events.len()).await;
}

/// Waits until `expected` events are joined, stops the workers, and
/// asserts that each was joined once, with its own user's row.
async fn assert_each_joined_once(
    kafka: &Kafka,
    workers: Vec<weir_worker::runtime::WorkerHandle>,
    expected: usize,
) {
    wait_for(PATIENCE, "every event joined", || {
        kafka.read_all(OUT).len() >= expected
    })
    .await;
    stop_all(workers).await;
    let out = kafka.read_all(OUT);
    assert_eq!(out.len(), expected, "no event read twice");
    assert_joined_with_their_rows(&out);
}

/// The users among `range` whose key belongs to task 1 of 2.
fn users_of_task_1(range: std::ops::Range<usize>) -> Vec<String> {
    use weir_worker::kafka::partitioner::partition_for_key;
    range
        .map(|u| format!("u{u}"))
        .filter(|user| partition_for_key(user.as_bytes(), 2) == 1)
        .collect()
}

/// A cluster of two partitions whose table holds the rows of `users`,
/// all of task 1, all in partition 0.
fn kafka_with_rows_of_task_1(users: &[String]) -> Kafka {
    let kafka = Kafka::new(2);
    kafka.cluster.create_topic(USERS, 2, 1).unwrap();
    produce_rows_of_task_1(&kafka, users);
    kafka
}

/// Rows of task 1's `users`, all in partition 0 of the table (task 0's),
/// in batches of ten.
fn produce_rows_of_task_1(kafka: &Kafka, users: &[String]) {
    let rows: Vec<_> = users
        .iter()
        .map(|user| {
            let row = format!(r#"{{"tier":"t{}"}}"#, &user[1..]).into_bytes();
            (0, Some(user.clone()), row)
        })
        .collect();
    for chunk in rows.chunks(10) {
        produce_to(&kafka.bootstrap, USERS, chunk);
    }
}

/// The events of `users` among `n` generated with `seed`.
fn events_of(users: &[String], n: usize, seed: u64) -> Vec<Event> {
    generate(n, 600, BASE_TS, seed)
        .into_iter()
        .filter(|e| users.contains(&e.user))
        .collect()
}

/// Behind a repartition, a table row reaches its task from whichever task
/// read it: here every row is read by task 0 (slowly) and belongs to task
/// 1, whose own partition of the table is empty. Task 1 still reads no
/// source record until task 0 reported its rows forwarded, so every event
/// finds its row:
///
/// 1. at the first start;
/// 2. with task 1 restarted alone, which goes on once it hears task 0's
///    next periodic report (its restored state holds the rows: this step
///    shows that it opens, not what it waits for);
/// 3. after a restart of both, with new rows for task 1 to wait for: task
///    0 stopped last, so its last report of the run before is still
///    unread on task 1's partition, and must not open task 1 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_forwarded_through_the_repartition_topic_come_before_any_event() {
    let users = users_of_task_1(0..400);
    let kafka = kafka_with_rows_of_task_1(&users);
    let events = events_of(&users, 400, 9);
    let (first, second) = events.split_at(events.len() / 2);
    let yaml = slow_table_join_yaml(&kafka, "forwarded-rows");
    produce_round_robin(&kafka, first);
    let state = tempfile::tempdir().unwrap();
    let mut workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    let mut expected = first.len();
    wait_for(PATIENCE, "the first events joined", || {
        kafka.read_all(OUT).len() >= expected
    })
    .await;

    stop_all(vec![workers.pop().unwrap()]).await;
    let config = worker_config(&yaml, 1, 2, 1, "latest", &state.path().join("g1-w1"));
    workers.push(
        weir_worker::runtime::Worker::start(config, tokio_util::sync::CancellationToken::new())
            .await
            .expect("worker 1 starts again"),
    );
    produce_round_robin(&kafka, second);
    expected += second.len();
    wait_for(PATIENCE, "the events after a lone restart joined", || {
        kafka.read_all(OUT).len() >= expected
    })
    .await;

    // Worker 1 first.
    stop_all(vec![workers.pop().unwrap()]).await;
    stop_all(workers).await;
    let new_users = users_of_task_1(400..600);
    produce_rows_of_task_1(&kafka, &new_users);
    let third = events_of(&new_users, 600, 10);
    produce_round_robin(&kafka, &third);
    expected += third.len();
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    assert_each_joined_once(&kafka, workers, expected).await;
}

/// Under exactly-once a task's report that it read its partition of the
/// table commits with the rows it forwarded (a checkpoint right away):
/// task 1 reads no event before task 0's rows are visible to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_exactly_once_forwarded_rows_commit_with_their_report() {
    let users = users_of_task_1(0..400);
    let kafka = kafka_with_rows_of_task_1(&users);
    let events = events_of(&users, 300, 11);
    let yaml = slow_table_join_yaml(&kafka, "forwarded-rows-eos")
        .replace("  guarantee: atLeastOnce\n", "");
    assert!(!yaml.contains("guarantee"), "{yaml}");
    produce_round_robin(&kafka, &events);
    let state = tempfile::tempdir().unwrap();
    let workers = start_workers(&yaml, 2, 1, "latest", state.path()).await;
    assert_each_joined_once(&kafka, workers, events.len()).await;
}

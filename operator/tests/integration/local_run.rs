//! `weir run` end to end: embedded Kafka, in-process workers, the
//! operator's autoscaler and savepoint protocol. A load step makes the job
//! scale up through a savepoint and back down; at the end it stops with a
//! savepoint, and what it wrote must equal the model of the events exactly.

use std::time::Duration;

use weir_operator::local::{self, RunOptions};

/// The runs share two cores; one at a time keeps their timing meaningful.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const JOB: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamingJob
metadata: {name: clicks, namespace: test}
spec:
  kafka: {bootstrapServers: "kafka:9092"}
  source:
    topics: [clicks]
    eventTime: {field: ts}
    watermark: {maxOutOfOrderness: 1s, idleTimeout: 1m}
  pipeline:
    - filter: record.amount >= 0.0
    - keyBy: {expr: record.user_id}
    - window: {type: tumbling, size: 2s}
    - aggregate:
        fields:
          - {name: clicks, function: count}
          - {name: revenue, function: sum, expr: record.amount}
  sink: {topic: clicks-per-user}
  checkpoint: {interval: 2s, storage: "s3://bucket/prefix"}
  autoscaler:
    minParallelism: 1
    maxParallelism: 4
    catchUpDuration: 10s
    metricsWindow: 6s
    scaleUpCooldown: 6s
    scaleDownStabilizationWindow: 6s
"#;

/// Options of a quiet run of [`JOB`], written into `dir`, on the embedded
/// Kafka with `profile`; tests change what they need.
fn run_options(dir: &tempfile::TempDir, profile: &str) -> RunOptions {
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, JOB).unwrap();
    RunOptions {
        file,
        kafka: None,
        storage: None,
        dir: dir.path().join(".weir"),
        profile: profile.parse().unwrap(),
        duration: None,
        input: None,
        worker_capacity: 1000,
        keys: 100,
        seed: 1,
        kill_worker_after: None,
        live: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_step_scales_up_and_down_through_savepoints_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let summary = local::run(RunOptions {
        worker_capacity: 500,
        keys: 200,
        seed: 3,
        ..run_options(&dir, "200:8s,1500:22s,150:60s")
    })
    .await
    .unwrap();
    println!("{}", summary.text());
    assert!(summary.failure.is_none(), "{:?}", summary.failure);
    assert!(summary.events_in > 30_000, "{}", summary.events_in);
    assert!(
        summary.comparison.expected > 1000,
        "{:?}",
        summary.comparison
    );
    assert!(summary.comparison.matches(), "{:?}", summary.comparison);
    let up = summary
        .rescales
        .iter()
        .position(|r| r.to > r.from)
        .expect("a scale-up");
    assert!(summary.rescales[up].savepoint.is_some());
    assert!(
        summary.rescales[up + 1..]
            .iter()
            .any(|r| r.to < r.from && r.to > 0),
        "a scale-down after the step: {:?}",
        summary.rescales
    );
    // The last rescale is the stop, with the savepoint a later run resumes.
    let last = summary.rescales.last().unwrap();
    assert_eq!(last.to, 0);
    assert_eq!(last.savepoint, summary.final_savepoint);
    assert!(summary.checkpoints > 5);
}

/// A run against a broker that outlives it (here a mock cluster the test
/// keeps) stops with a savepoint; the next run resumes from it, and the
/// model resumes with it: the output of both runs equals the model of all
/// their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_resumes_from_the_savepoint_the_first_stopped_with() {
    let _serial = SERIAL.lock().await;
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in ["clicks", "clicks-per-user", "weir.test.clicks.keyBy-1"] {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        kafka: Some(cluster.bootstrap_servers()),
        keys: 50,
        seed: 5,
        ..run_options(&dir, "300:6s")
    };
    let first = local::run(options.clone()).await.unwrap();
    println!("{}", first.text());
    assert!(first.ok(), "{:?}", first.comparison);
    let savepoint = first
        .final_savepoint
        .clone()
        .expect("stopped with a savepoint");
    let second = local::run(RunOptions { seed: 6, ..options }).await.unwrap();
    println!("{}", second.text());
    let resume = &second.rescales[0];
    assert_eq!((resume.from, resume.to), (0, 1));
    assert_eq!(resume.savepoint.as_ref(), Some(&savepoint));
    assert!(second.ok(), "{:?}", second.comparison);
    assert!(second.comparison.expected > first.comparison.expected);
}

/// A worker killed mid-run restarts from its last checkpoint and the job
/// goes on: nothing is lost and no output is wrong. librdkafka's mock
/// cluster returns the records of aborted transactions to read_committed
/// consumers, so the output the killed worker had not committed may show
/// up again here as exact repeats of model records; a real broker hides
/// them (exactly-once across a crash is proven against a fake broker in
/// weir-worker's protocol tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let summary = local::run(RunOptions {
        worker_capacity: 2000,
        seed: 9,
        kill_worker_after: Some(Duration::from_secs(7)),
        ..run_options(&dir, "400:16s")
    })
    .await
    .unwrap();
    println!("{}", summary.text());
    assert!(summary.failure.is_none(), "{:?}", summary.failure);
    assert!(
        summary.comparison.expected > 300,
        "{:?}",
        summary.comparison
    );
    assert_eq!(summary.comparison.lost, 0, "{:?}", summary.comparison);
    assert_eq!(summary.comparison.unexpected, 0, "{:?}", summary.comparison);
    assert!(
        summary.events.iter().any(|e| e.reason == "WorkerKilled"),
        "{:?}",
        summary.events
    );
}

/// With `autoscaler.idleAfter`, a job whose input stops is stopped with a
/// savepoint and scaled to zero, as the operator does; when records come
/// again it wakes from that savepoint, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_job_scales_to_zero_and_wakes_when_records_come() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let options = run_options(&dir, "300:8s,0:20s,300:8s");
    let job = std::fs::read_to_string(&options.file).unwrap().replace(
        "    scaleDownStabilizationWindow: 6s\n",
        "    scaleDownStabilizationWindow: 6s\n    idleAfter: 5s\n    activationLag: 0\n",
    );
    std::fs::write(&options.file, job).unwrap();
    let summary = local::run(RunOptions {
        keys: 50,
        seed: 11,
        ..options
    })
    .await
    .unwrap();
    println!("{}", summary.text());
    assert!(summary.failure.is_none(), "{:?}", summary.failure);
    assert!(summary.comparison.matches(), "{:?}", summary.comparison);
    let parked = summary
        .rescales
        .iter()
        .position(|r| r.to == 0)
        .expect("scaled to zero");
    assert!(summary.rescales[parked].savepoint.is_some());
    assert!(
        summary.rescales[parked + 1..]
            .iter()
            .any(|r| r.from == 0 && r.to > 0),
        "woken: {:?}",
        summary.rescales
    );
    for reason in ["ScalingToZero", "Waking"] {
        assert!(
            summary.events.iter().any(|e| e.reason == reason),
            "{reason}: {:?}",
            summary.events
        );
    }
}

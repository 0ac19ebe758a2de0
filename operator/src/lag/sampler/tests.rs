use std::collections::BTreeMap;
use std::pin::pin;

use http::{Method, Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::Value;
use tower_test::mock;
use weir_crds::job::AutoscalerSpec;
use weir_crds::status::{FailedOperation, SavepointInfo};

use super::*;
use crate::autoscaler::{MODE_ANNOTATION, PAUSED_ANNOTATION};
use crate::backoff::Backoff;
use crate::builders::Settings;
use crate::control::{FakeWorkers, PartitionReport, TaskReport, WorkerLoad};
use crate::lag::FakeLagSource;
use crate::testing::sample_job;

const JOB_PATH: &str = "/apis/weir.dev/v1alpha1/namespaces/streams/streamingjobs/clicks";
const T0: i64 = 1_800_000_000;
const PARTITIONS: i32 = 12;

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

/// A request the API server received.
#[derive(Clone, Debug)]
struct Received {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// A StreamingJob API server that records every request and answers it
/// successfully: the job for its paths, the Scale for `/scale`, the body
/// for the rest (events).
fn api_server(job: &StreamingJob) -> (Client, Arc<Mutex<Vec<Received>>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let job = serde_json::to_value(job).unwrap();
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let reply = if path.ends_with("/scale") {
                json!({
                    "apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": "clicks", "namespace": "streams"},
                    "spec": {"replicas": body["spec"]["replicas"]},
                })
            } else if path.starts_with(JOB_PATH) {
                job.clone()
            } else {
                body.clone()
            };
            log.lock().unwrap().push(Received {
                method,
                path,
                query,
                body,
            });
            let response = Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), received)
}

struct Harness {
    ctx: Context,
    lag: Arc<FakeLagSource>,
    workers: Arc<FakeWorkers>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Harness {
    fn new(job: &StreamingJob) -> Self {
        let (client, received) = api_server(job);
        let lag = Arc::new(FakeLagSource::default());
        let workers = Arc::new(FakeWorkers::default());
        let ctx = Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "weir-operator".into(),
                    instance: None,
                },
            ),
            client,
            settings: Settings {
                worker_image: "weir-worker:test".into(),
            },
            metrics: Arc::new(Metrics::new().unwrap()),
            backoff: Backoff::default(),
            workers: workers.clone(),
            sampler: Some(Arc::new(Sampler::new(lag.clone(), SAMPLE_INTERVAL))),
        };
        Self {
            ctx,
            lag,
            workers,
            received,
        }
    }

    /// Kafka shows `high` records per partition and `committed` committed;
    /// each of the `workers` reports `processed` records and `busy`.
    fn load(&self, high: i64, committed: i64, workers: i32, processed: u64, busy: f64) {
        self.lag.set(Some(
            (0..PARTITIONS)
                .map(|partition| PartitionOffsets {
                    topic: "clicks".into(),
                    partition,
                    low_watermark: 0,
                    high_watermark: high,
                    committed: Some(committed),
                })
                .collect(),
        ));
        for ordinal in 0..workers {
            self.workers.report(
                &format!("clicks-{ordinal}"),
                WorkerReport {
                    load: WorkerLoad {
                        busy_ratio: Some(busy),
                        records_in: Some(processed),
                        tasks: Vec::new(),
                    },
                    ..WorkerReport::default()
                },
            );
        }
    }

    async fn sample(&self, job: &StreamingJob, at: i64) -> Duration {
        let names = Names::of(job).unwrap();
        let status = job.status.clone().unwrap_or_default();
        let duration = sample_and_scale(job, &status, &self.ctx, &names, "t0ken", &time(at)).await;
        // Let the recording task see the last request.
        tokio::task::yield_now().await;
        duration
    }

    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

/// `streams/clicks`, running 2 workers at spec.parallelism 2, created an
/// hour before T0, with the autoscaler on.
fn running_job(annotations: &[(&str, &str)]) -> StreamingJob {
    let mut job = sample_job();
    job.metadata.creation_timestamp = Some(time(T0 - 3600));
    job.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    );
    job.spec.autoscaler = Some(AutoscalerSpec::default());
    job.status = Some(StreamingJobStatus {
        phase: Some(Phase::Running),
        parallelism: Some(2),
        ..StreamingJobStatus::default()
    });
    job
}

fn status_applies(received: &[Received]) -> Vec<&Received> {
    received
        .iter()
        .filter(|r| r.path == format!("{JOB_PATH}/status"))
        .collect()
}

fn events(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.path.ends_with("/events"))
        .map(|r| r.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Feeds a job whose input (5000/s) outruns its two workers (1000/s each at
/// 100% busy) for `samples` samples, 15 s apart.
async fn overload(harness: &Harness, job: &StreamingJob, samples: i64) -> Vec<Vec<Received>> {
    let mut rounds = Vec::new();
    for i in 0..samples {
        let seconds = 15 * i;
        let arrived = 5_000 * seconds / i64::from(PARTITIONS);
        let processed = 1_000 * seconds;
        let committed = 2 * processed / i64::from(PARTITIONS);
        harness.load(arrived, committed, 2, processed as u64, 1.0);
        harness.sample(job, T0 + seconds).await;
        rounds.push(harness.take());
    }
    rounds
}

#[tokio::test]
async fn simulated_lag_drives_a_rescale_through_the_scale_subresource() {
    let job = running_job(&[]);
    let harness = Harness::new(&job);
    let rounds = overload(&harness, &job, 2).await;

    // First sample: the lag is published, nothing is decided yet.
    let first = &rounds[0];
    assert_eq!(status_applies(first).len(), 1, "{first:?}");
    assert!(!first.iter().any(|r| r.path.ends_with("/scale")));

    // Second sample: the rates call for more workers. The status (with the
    // record) is written before the scale subresource.
    let second = &rounds[1];
    let paths: Vec<&str> = second.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths[..2],
        [format!("{JOB_PATH}/status"), format!("{JOB_PATH}/scale")],
        "{second:?}"
    );
    let status = &second[0];
    assert!(
        status.query.contains("fieldManager=weir-autoscaler"),
        "{status:?}"
    );
    assert!(status.query.contains("force=true"), "{status:?}");
    let body = &status.body["status"];
    assert_eq!(body["lag"]["total"], json!(5_000 * 15 - 2 * 1_000 * 15));
    assert_eq!(body["lag"]["partitions"].as_array().unwrap().len(), 12);
    assert_eq!(body["inputRate"], json!(5_000.0));
    assert_eq!(body["processingRate"], json!(2_000.0));
    let record = &body["scalingHistory"][0];
    assert_eq!(
        (record["from"].clone(), record["to"].clone()),
        (json!(2), json!(12))
    );
    assert_eq!(record["inputRate"], json!(5_000.0));
    assert_eq!(record["perWorkerRate"], json!(1_000.0));
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .starts_with(REASON_PREFIX),
        "{record}"
    );
    let scale = &second[1];
    assert_eq!(scale.method, Method::PATCH);
    assert!(
        scale.query.contains("fieldManager=weir-autoscaler"),
        "{scale:?}"
    );
    assert_eq!(scale.body["kind"], "Scale");
    assert_eq!(scale.body["spec"]["replicas"], 12);
    assert_eq!(events(second), ["AutoscalerScaleUp"]);
    let metrics = harness.ctx.metrics.render();
    assert!(
        metrics.contains(
            r#"weir_autoscaler_decisions_total{decision="scale_up",job="clicks",namespace="streams"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weir_job_lag{job="clicks",namespace="streams"} 45000"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn samples_are_taken_once_per_interval() {
    let job = running_job(&[]);
    let harness = Harness::new(&job);
    harness.load(100, 100, 2, 0, 0.0);
    assert_eq!(harness.sample(&job, T0).await, SAMPLE_INTERVAL);
    assert_eq!(harness.lag.queries().len(), 1);
    let wait = harness.sample(&job, T0 + 5).await;
    assert_eq!(wait, Duration::from_secs(10));
    assert_eq!(
        harness.lag.queries().len(),
        1,
        "not due: Kafka is not asked"
    );
    let query = &harness.lag.queries()[0];
    assert_eq!(query.group, "weir.streams.clicks");
    assert_eq!(query.topics, ["clicks"]);
    assert_eq!(query.bootstrap_servers, "kafka:9092");
}

#[tokio::test]
async fn recommend_only_publishes_the_target_without_acting() {
    let job = running_job(&[(MODE_ANNOTATION, "recommend")]);
    let harness = Harness::new(&job);
    let rounds = overload(&harness, &job, 3).await;
    let all: Vec<Received> = rounds.concat();
    assert!(!all.iter().any(|r| r.path.ends_with("/scale")), "{all:?}");
    let second = status_applies(&rounds[1]);
    assert_eq!(second[0].body["status"]["targetParallelism"], 12);
    assert!(
        second[0].body["status"].get("scalingHistory").is_none(),
        "a recommendation is not a change: {:?}",
        second[0].body
    );
    assert_eq!(events(&rounds[1]), ["ScalingRecommended"]);
}

#[tokio::test]
async fn a_paused_autoscaler_only_publishes_the_lag() {
    let job = running_job(&[(PAUSED_ANNOTATION, "true")]);
    let harness = Harness::new(&job);
    let all: Vec<Received> = overload(&harness, &job, 3).await.concat();
    assert!(!all.iter().any(|r| r.path.ends_with("/scale")), "{all:?}");
    assert!(events(&all).is_empty(), "{all:?}");
    let applies = status_applies(&all);
    assert!(!applies.is_empty());
    for apply in applies {
        assert!(apply.body["status"].get("targetParallelism").is_none());
        assert!(apply.body["status"]["lag"]["total"].is_i64());
    }
}

#[tokio::test]
async fn an_idle_job_goes_to_zero_and_wakes_up_when_lag_appears() {
    let mut job = running_job(&[]);
    job.spec.autoscaler = Some(AutoscalerSpec {
        idle_after: Some("1m".parse().unwrap()),
        ..AutoscalerSpec::default()
    });
    let harness = Harness::new(&job);
    let mut scaled_to_zero = None;
    for i in 0..=4 {
        harness.load(1_000, 1_000, 2, 50, 0.0);
        harness.sample(&job, T0 + 15 * i).await;
        let received = harness.take();
        let annotation: Vec<&Received> = received
            .iter()
            .filter(|r| r.path == JOB_PATH && r.method == Method::PATCH)
            .collect();
        if i < 4 {
            assert!(annotation.is_empty(), "idle for {}s only", 15 * i);
        } else {
            let patch = annotation[0];
            assert!(patch.query.contains("fieldManager=weir-autoscaler"));
            let value = &patch.body["metadata"]["annotations"][SCALED_TO_ZERO_ANNOTATION];
            assert!(value.is_string(), "{:?}", patch.body);
            assert_eq!(events(&received), ["ScalingToZero"]);
            let record = &status_applies(&received)[0].body["status"]["scalingHistory"][0];
            assert_eq!(
                (record["from"].clone(), record["to"].clone()),
                (json!(2), json!(0))
            );
            scaled_to_zero = Some(value.as_str().unwrap().to_owned());
        }
    }

    // Scaled to zero: the reconciler runs it as suspended (stop with a
    // savepoint; the resume restores that savepoint).
    let mut parked = job.clone();
    parked
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(SCALED_TO_ZERO_ANNOTATION.into(), scaled_to_zero.unwrap());
    parked.status = Some(StreamingJobStatus {
        phase: Some(Phase::Suspended),
        parallelism: Some(0),
        ..StreamingJobStatus::default()
    });
    assert!(effective(&parked).spec.suspend);
    assert!(!effective(&job).spec.suspend);

    // Still no lag: it stays at zero, and no worker is asked anything.
    harness.workers.take_calls();
    harness.load(1_000, 1_000, 0, 0, 0.0);
    harness.sample(&parked, T0 + 120).await;
    let received = harness.take();
    assert!(!received.iter().any(|r| r.path == JOB_PATH), "{received:?}");
    assert!(harness.workers.take_calls().is_empty());

    // Records arrive: it wakes up.
    harness.load(1_010, 1_000, 0, 0, 0.0);
    harness.sample(&parked, T0 + 135).await;
    let received = harness.take();
    let wake = received
        .iter()
        .find(|r| r.path == JOB_PATH && r.method == Method::PATCH)
        .expect("the annotation is removed");
    assert!(wake.body["metadata"]["annotations"][SCALED_TO_ZERO_ANNOTATION].is_null());
    assert_eq!(events(&received), ["Waking"]);
    let record = &status_applies(&received)[0].body["status"]["scalingHistory"][0];
    assert_eq!(
        (record["from"].clone(), record["to"].clone()),
        (json!(0), json!(2))
    );
}

#[tokio::test]
async fn an_unreachable_cluster_leaves_the_status_alone() {
    let job = running_job(&[]);
    let harness = Harness::new(&job);
    harness.lag.set(None);
    assert_eq!(harness.sample(&job, T0).await, SAMPLE_INTERVAL);
    assert!(harness.take().is_empty());
    // And it is asked again only at the next interval.
    harness.sample(&job, T0 + 1).await;
    assert_eq!(harness.lag.queries().len(), 1);
}

#[test]
fn digest_counts_records_in_transit_and_sums_the_workers() {
    let mut job = running_job(&[]);
    job.spec.source.topics = vec!["clicks".into()];
    let offsets: Vec<PartitionOffsets> = (0..4)
        .map(|partition| PartitionOffsets {
            topic: "clicks".into(),
            partition,
            low_watermark: 0,
            high_watermark: 100,
            committed: Some(100),
        })
        .collect();
    let worker = |offset: i64, busy: f64, records: u64| {
        Some(WorkerReport {
            load: WorkerLoad {
                busy_ratio: Some(busy),
                records_in: Some(records),
                tasks: vec![TaskReport {
                    task: 0,
                    partitions: vec![PartitionReport {
                        topic: "weir.streams.clicks.byUser".into(),
                        partition: 0,
                        offset,
                        high_watermark: Some(1_000),
                    }],
                }],
            },
            ..WorkerReport::default()
        })
    };
    // An idle job: the repartition partitions end with commit markers only.
    let idle = digest(
        &job,
        &offsets,
        &[worker(997, 0.0, 10), worker(999, 0.2, 5)],
        2,
        0,
    );
    assert_eq!(
        (idle.lag.total, idle.internal_backlog, idle.sample.lag),
        (0, 0, 0)
    );
    assert_eq!(idle.sample.processed, Some(15));
    assert_eq!(idle.sample.busy_ratio, Some(0.1));
    assert_eq!(idle.tasks, 4);
    // The second stage is behind: the autoscaler sees it.
    let behind = digest(&job, &offsets, &[worker(400, 1.0, 10), None], 2, 0);
    assert_eq!((behind.lag.total, behind.internal_backlog), (0, 596));
    assert_eq!(behind.sample.lag, 596);
    assert_eq!(behind.sample.processed, None, "a worker did not answer");
    assert_eq!(behind.sample.busy_ratio, None);
}

#[test]
fn savepoints_and_rescales_are_counted_once_by_outcome() {
    let record = |secs: i64, reason: &str, from: i32, to: i32| ScalingRecord {
        time: time(secs),
        from,
        to,
        reason: reason.into(),
        input_rate: None,
        lag: None,
        per_worker_rate: None,
    };
    let savepoint = |id: &str| SavepointInfo {
        id: id.into(),
        time: time(1),
        parallelism: 2,
        reason: "rescale".into(),
    };
    let before = StreamingJobStatus {
        savepoint_history: vec![savepoint("a")],
        scaling_history: vec![record(1, "spec.parallelism changed from 1 to 2", 1, 2)],
        ..StreamingJobStatus::default()
    };
    let seen = Seen::of(&before);
    assert_eq!(outcomes(&seen, &before), Outcomes::default());
    let after = StreamingJobStatus {
        savepoint_history: vec![savepoint("b"), savepoint("a")],
        scaling_history: vec![
            record(9, "spec.parallelism changed from 2 to 6", 2, 6),
            record(8, "autoscaler: input 5000/s", 2, 6),
            record(1, "spec.parallelism changed from 1 to 2", 1, 2),
        ],
        last_failed_operation: Some(FailedOperation {
            kind: OperationKind::Rescale,
            time: time(5),
            message: "timed out".into(),
            attempts: 1,
        }),
        ..StreamingJobStatus::default()
    };
    assert_eq!(
        outcomes(&seen, &after),
        Outcomes {
            savepoints_completed: 1,
            savepoints_failed: 1,
            rescales_completed: 1,
            rescales_failed: 1,
        }
    );
    assert_eq!(outcomes(&Seen::of(&after), &after), Outcomes::default());
}

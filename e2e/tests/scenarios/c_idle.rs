//! c: when the load stops the autoscaler scales the job down after its
//! stabilization window; with `autoscaler.idleAfter` it scales it to zero,
//! and new records wake it up, restored from the savepoint it stopped with.

use anyhow::ensure;
use serde_json::json;
use weir_e2e::expected::assert_output_equals_model;
use weir_e2e::load::LoadGenerator;
use weir_e2e::manifest::JobManifest;
use weir_e2e::status;
use weir_e2e::wait::minutes;
use weir_operator::autoscaler::SCALED_TO_ZERO_ANNOTATION;
use weir_operator::local::generator::{EventShape, EventSource};

use crate::Harness;

const NAME: &str = "e2e-idle";
const PROFILE: &str = "1k:60s";
const SEED: u64 = 21;
/// Records produced from the test to wake the job up.
const WAKE_EVENTS: usize = 500;
/// Distinct keys of those records.
const WAKE_KEYS: u32 = 50;

#[tokio::test]
async fn an_idle_job_scales_down_then_to_zero_and_wakes_up_on_new_records() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    // Starts at the most workers, so that the end of the load scales down.
    let job = JobManifest::scenario(NAME)?
        .autoscaled(1, 4)
        .set("spec.parallelism", json!(4))
        .build()?;
    harness.start_job(&job).await?;
    let load =
        LoadGenerator::start(&harness.cluster, &harness.settings, &job, PROFILE, SEED).await?;
    load.wait_done(&harness.cluster, minutes(4)).await?;

    let scale_down = harness
        .cluster
        .wait_for_job(
            NAME,
            "a scale-down from 4 workers in status.scalingHistory",
            minutes(8),
            |job| {
                status::scaling_history(job)
                    .into_iter()
                    .find(|record| record.from == 4 && (1..4).contains(&record.to))
            },
        )
        .await?;
    println!(
        "scaled down from {} to {}: {}",
        scale_down.from, scale_down.to, scale_down.reason
    );
    let ready = harness.cluster.wait_ready(NAME, minutes(10)).await?;
    ensure!(
        status::parallelism(&ready) < 4,
        "after scaling down the job still runs {}",
        status::describe(&ready)
    );
    harness
        .expect_events(NAME, &["AutoscalerScaleDown"])
        .await?;

    // Scale to zero: changing the autoscaler restarts nothing by itself.
    harness
        .cluster
        .patch_job(
            NAME,
            json!({"spec": {"autoscaler": {"idleAfter": "30s", "activationLag": 0}}}),
        )
        .await?;
    harness
        .cluster
        .wait_for_job(NAME, "scaled to zero", minutes(8), |job| {
            let parked = job
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|annotations| annotations.contains_key(SCALED_TO_ZERO_ANNOTATION));
            (parked && status::parallelism(job) == 0 && status::operation(job).is_none())
                .then_some(())
        })
        .await?;
    harness
        .cluster
        .wait_no_worker_pods(NAME, minutes(3))
        .await?;
    let parked = harness.cluster.job(NAME).await?;
    ensure!(
        status::scaling_history(&parked)
            .iter()
            .any(|record| record.to == 0),
        "scaled to zero without a scalingHistory record to 0: {}",
        status::describe_scaling(&status::scaling_history(&parked))
    );
    harness.expect_events(NAME, &["ScalingToZero"]).await?;

    // New records wake it.
    let mut events = EventSource::new(EventShape::infer(&job.spec, WAKE_KEYS), SEED + 1);
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..WAKE_EVENTS)
        .map(|_| {
            let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
            let event = events.next_event(now_ms);
            (event.key.map(String::into_bytes), event.value)
        })
        .collect();
    harness
        .kafka
        .produce(&job.spec.source.topics[0], &records)
        .await?;
    let wake = harness
        .cluster
        .wait_for_job(
            NAME,
            "woken up: a scalingHistory record from 0",
            minutes(5),
            |job| {
                status::scaling_history(job)
                    .into_iter()
                    .find(|record| record.from == 0 && record.to > 0)
            },
        )
        .await?;
    println!("woken up to {} workers: {}", wake.to, wake.reason);
    let awake = harness.cluster.wait_ready(NAME, minutes(10)).await?;
    ensure!(
        status::parallelism(&awake) > 0,
        "woken up, the job runs no worker: {}",
        status::describe(&awake)
    );
    harness.expect_events(NAME, &["Waking"]).await?;

    assert_output_equals_model(&harness.kafka, &job, minutes(10)).await?;
    load.delete(&harness.cluster).await?;
    harness.finish(NAME).await
}

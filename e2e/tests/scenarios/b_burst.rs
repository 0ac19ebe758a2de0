//! b: a burst of load makes the autoscaler scale the job up through a
//! savepoint, and once the job caught up its output equals the model's.

use anyhow::ensure;
use serde_json::json;
use weir_e2e::expected::assert_output_equals_model;
use weir_e2e::load::LoadGenerator;
use weir_e2e::manifest::JobManifest;
use weir_e2e::status;
use weir_e2e::wait::minutes;

use crate::Harness;

const NAME: &str = "e2e-burst";
/// 4,000 events/s for 90 s: more than one worker of a quarter CPU takes at
/// the 5% utilization the scenario's autoscaler aims at.
const PROFILE: &str = "4k:90s";
const SEED: u64 = 7;

#[tokio::test]
async fn a_burst_scales_up_through_a_savepoint_and_the_output_equals_the_model()
-> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    // No scale-down within this scenario (c covers it): a long window.
    let job = JobManifest::scenario(NAME)?
        .autoscaled(1, 4)
        .set("spec.autoscaler.scaleDownStabilizationWindow", json!("30m"))
        .build()?;
    harness.start_job(&job).await?;
    let load =
        LoadGenerator::start(&harness.cluster, &harness.settings, &job, PROFILE, SEED).await?;

    let scale_up = harness
        .cluster
        .wait_for_job(
            NAME,
            "a scale-up in status.scalingHistory",
            minutes(5),
            |job| {
                status::scaling_history(job)
                    .into_iter()
                    .find(|record| record.to > record.from)
            },
        )
        .await?;
    println!(
        "scaled up from {} to {}: {}",
        scale_up.from, scale_up.to, scale_up.reason
    );
    let savepoint = harness
        .cluster
        .wait_for_job(
            NAME,
            "the rescale's savepoint in status.savepointHistory",
            minutes(5),
            |job| {
                status::of(job)
                    .savepoint_history
                    .into_iter()
                    .find(|savepoint| savepoint.reason == "rescale")
            },
        )
        .await?;
    ensure!(
        savepoint.parallelism == scale_up.from,
        "the rescale's savepoint {} was taken by {} workers, want the {} the job ran before scaling up",
        savepoint.id,
        savepoint.parallelism,
        scale_up.from
    );
    let ready = harness.cluster.wait_ready(NAME, minutes(10)).await?;
    let parallelism = status::parallelism(&ready);
    ensure!(
        parallelism >= scale_up.to,
        "after scaling up to {} the job runs {parallelism} workers ({})",
        scale_up.to,
        status::describe(&ready)
    );
    harness
        .expect_events(
            NAME,
            &["AutoscalerScaleUp", "RescaleStarted", "SavepointCompleted"],
        )
        .await?;

    let produced = load.wait_done(&harness.cluster, minutes(5)).await?;
    println!("the load generator produced {produced} events");
    let comparison = assert_output_equals_model(&harness.kafka, &job, minutes(10)).await?;
    ensure!(
        comparison.expected > 0,
        "the model expects no output from {produced} events: nothing was compared"
    );

    load.delete(&harness.cluster).await?;
    harness.finish(NAME).await
}

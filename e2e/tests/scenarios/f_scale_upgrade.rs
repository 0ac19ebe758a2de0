//! f: `kubectl scale sj/NAME --replicas=3` rescales the job through a
//! savepoint, and a new worker image with `upgradeMode: savepoint` restarts
//! it from a savepoint too; the job's state survives both: its output
//! equals the model's.

use anyhow::ensure;
use serde_json::json;
use weir_e2e::cluster::pod_images;
use weir_e2e::expected::assert_output_equals_model;
use weir_e2e::load::LoadGenerator;
use weir_e2e::manifest::JobManifest;
use weir_e2e::status;
use weir_e2e::wait::minutes;

use crate::Harness;

const NAME: &str = "e2e-upgrade";
/// Long enough to span the rescale and the upgrade.
const PROFILE: &str = "1k:300s";
const SEED: u64 = 13;

#[tokio::test]
async fn scaling_and_an_image_upgrade_go_through_savepoints_and_keep_state() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    let job = JobManifest::scenario(NAME)?
        .fixed_parallelism(1)
        .set("spec.upgradeMode", json!("savepoint"))
        .build()?;
    harness.start_job(&job).await?;
    let load =
        LoadGenerator::start(&harness.cluster, &harness.settings, &job, PROFILE, SEED).await?;
    harness
        .cluster
        .wait_for_job(NAME, "a completed checkpoint", minutes(3), |job| {
            status::of(job).last_checkpoint
        })
        .await?;

    // kubectl scale sj/e2e-upgrade --replicas=3
    harness.cluster.scale_job(NAME, 3).await?;
    harness
        .cluster
        .wait_for_job(
            NAME,
            "the rescale 1 -> 3 recorded with its savepoint",
            minutes(10),
            |job| {
                let status = status::of(job);
                let scaled = status
                    .scaling_history
                    .iter()
                    .any(|record| record.from == 1 && record.to == 3);
                let saved = status
                    .savepoint_history
                    .iter()
                    .any(|savepoint| savepoint.reason == "rescale" && savepoint.parallelism == 1);
                (scaled && saved && status.operation.is_none()).then_some(())
            },
        )
        .await?;
    let rescaled = harness.cluster.wait_ready(NAME, minutes(10)).await?;
    ensure!(
        status::parallelism(&rescaled) == 3,
        "after kubectl scale --replicas=3: {}",
        status::describe(&rescaled)
    );
    harness
        .expect_events(NAME, &["RescaleStarted", "SavepointCompleted"])
        .await?;

    // The same worker under another tag, as an upgrade would bring.
    let image = harness.settings.upgrade_image.clone();
    harness
        .cluster
        .patch_job(NAME, json!({"spec": {"image": image}}))
        .await?;
    let upgrade_savepoint = harness
        .cluster
        .wait_for_job(
            NAME,
            "the upgrade's savepoint in status.savepointHistory",
            minutes(10),
            |job| {
                status::of(job)
                    .savepoint_history
                    .into_iter()
                    .find(|savepoint| savepoint.reason == "upgrade")
            },
        )
        .await?;
    println!("upgraded through savepoint {}", upgrade_savepoint.id);
    let upgraded = harness.cluster.wait_ready(NAME, minutes(10)).await?;
    ensure!(
        status::parallelism(&upgraded) == 3,
        "the upgrade changed the parallelism: {}",
        status::describe(&upgraded)
    );
    for pod in harness.cluster.worker_pods(NAME).await? {
        let images = pod_images(&pod);
        ensure!(
            images == vec![image.clone()],
            "worker pod {} runs {images:?} after the upgrade to {image}",
            kube::ResourceExt::name_any(&pod)
        );
    }
    harness.expect_events(NAME, &["UpgradeStarted"]).await?;

    load.wait_done(&harness.cluster, minutes(5)).await?;
    assert_output_equals_model(&harness.kafka, &job, minutes(10)).await?;
    load.delete(&harness.cluster).await?;
    harness.finish(NAME).await
}

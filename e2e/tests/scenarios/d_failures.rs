//! d: a worker pod deleted mid-run comes back, and the operator's leader
//! deleted while a rescale is under way is replaced by the standby, which
//! resumes the rescale from status.operation; nothing is lost or repeated.

use anyhow::{Context as _, ensure};
use kube::ResourceExt;
use weir_e2e::cluster::pod_is_serving;
use weir_e2e::expected::assert_output_equals_model;
use weir_e2e::load::LoadGenerator;
use weir_e2e::manifest::JobManifest;
use weir_e2e::wait::{self, Check, minutes};
use weir_e2e::{JOBS_NAMESPACE, OPERATOR_NAMESPACE, status};

use crate::Harness;

const NAME: &str = "e2e-failures";
/// Long enough to span both failures.
const PROFILE: &str = "1k:240s";
const SEED: u64 = 11;

#[tokio::test]
async fn a_killed_worker_and_a_killed_operator_lose_nothing() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    let job = JobManifest::scenario(NAME)?.fixed_parallelism(2).build()?;
    harness.start_job(&job).await?;
    let load =
        LoadGenerator::start(&harness.cluster, &harness.settings, &job, PROFILE, SEED).await?;
    harness
        .cluster
        .wait_for_job(NAME, "a completed checkpoint", minutes(3), |job| {
            status::of(job).last_checkpoint
        })
        .await?;

    // A worker pod deleted mid-run.
    let victim = format!("{NAME}-1");
    let pods = harness.cluster.worker_pods(NAME).await?;
    let old_uid = pods
        .iter()
        .find(|pod| pod.name_any() == victim)
        .and_then(|pod| pod.uid())
        .with_context(|| format!("no worker pod {victim} to delete"))?;
    harness.cluster.delete_pod(JOBS_NAMESPACE, &victim).await?;
    println!("deleted worker pod {victim}");
    let what = format!("worker pod {victim} to come back");
    let cluster = &harness.cluster;
    let (victim, old_uid) = (victim.as_str(), old_uid.as_str());
    wait::until(&what, minutes(5), move || async move {
        let pods = cluster.worker_pods(NAME).await?;
        let back = pods
            .iter()
            .find(|pod| pod.name_any() == victim && pod.uid().as_deref() != Some(old_uid));
        Ok(match back {
            Some(pod) if pod_is_serving(pod) => Check::Done(()),
            Some(_) => Check::Waiting("recreated, not ready yet".to_owned()),
            None => Check::Waiting("not recreated yet".to_owned()),
        })
    })
    .await?;
    harness.cluster.wait_ready(NAME, minutes(5)).await?;

    // The operator's leader deleted while a rescale is under way.
    harness.cluster.scale_job(NAME, 4).await?;
    let in_flight = harness
        .cluster
        .wait_for_job(
            NAME,
            "the rescale to 4 in status.operation",
            minutes(2),
            |job| status::operation(job).filter(|op| op.target_parallelism == Some(4)),
        )
        .await?;
    let leader = harness
        .cluster
        .operator_leader()
        .await?
        .context("no operator replica holds the Lease")?;
    harness
        .cluster
        .delete_pod(OPERATOR_NAMESPACE, &leader)
        .await?;
    println!(
        "deleted the operator leader {leader} while the rescale was at stage {:?}",
        in_flight.stage
    );
    let what = "another operator replica to lead";
    let old_leader = leader.as_str();
    let new_leader = wait::until(what, minutes(3), move || async move {
        Ok(match cluster.operator_leader().await? {
            Some(holder) if holder != old_leader => Check::Done(holder),
            holder => Check::Waiting(format!("Lease held by {holder:?}")),
        })
    })
    .await?;
    println!("{new_leader} leads now");
    let done = harness
        .cluster
        .wait_for_job(
            NAME,
            "the rescale to 4 completed by the new leader",
            minutes(10),
            |job| {
                (status::operation(job).is_none() && status::parallelism(job) == 4)
                    .then(|| job.clone())
            },
        )
        .await?;
    ensure!(
        status::scaling_history(&done)
            .iter()
            .any(|record| record.from == 2 && record.to == 4),
        "the completed rescale is not in status.scalingHistory: {}",
        status::describe_scaling(&status::scaling_history(&done))
    );
    harness.cluster.wait_ready(NAME, minutes(5)).await?;

    load.wait_done(&harness.cluster, minutes(5)).await?;
    assert_output_equals_model(&harness.kafka, &job, minutes(10)).await?;
    load.delete(&harness.cluster).await?;
    harness.finish(NAME).await
}

//! e: invalid StreamingJobs: one the API server refuses (a CEL rule of the
//! CRD), and one it accepts but the operator reports as InvalidSpec without
//! starting anything (an expression that does not compile).

use anyhow::ensure;
use weir_e2e::manifest::{JobManifest, JobTopics, SAMPLE_STORAGE};
use weir_e2e::status;
use weir_e2e::wait::minutes;
use weir_operator::status::{INVALID_SPEC, READY, STALLED};

use crate::Harness;

#[tokio::test]
async fn min_parallelism_above_max_is_refused_by_the_api_server() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    let name = "e2e-invalid-bounds";
    let job = JobManifest::sample_for_cluster(name, &JobTopics::sample(), SAMPLE_STORAGE)?
        .autoscaled(5, 2)
        .build()?;
    match harness.cluster.create_job(&job).await {
        Ok(_) => {
            harness.finish(name).await?;
            anyhow::bail!("the API server created {name} with minParallelism 5 > maxParallelism 2")
        }
        Err(kube::Error::Api(refusal)) => {
            ensure!(
                refusal.code == 422,
                "the refusal of {name} has code {}, want 422 (Invalid): {}",
                refusal.code,
                refusal.message
            );
            ensure!(
                refusal.message.contains("spec.autoscaler.minParallelism"),
                "the refusal of {name} does not name spec.autoscaler.minParallelism: {}",
                refusal.message
            );
            Ok(())
        }
        Err(other) => Err(anyhow::Error::new(other).context(format!("cannot create {name}"))),
    }
}

#[tokio::test]
async fn an_expression_that_does_not_compile_is_reported_as_invalid_spec() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    let name = "e2e-invalid-filter";
    let mut job =
        JobManifest::sample_for_cluster(name, &JobTopics::sample(), SAMPLE_STORAGE)?.build()?;
    job.spec.pipeline[0].filter = Some("record.amount >=".to_owned());
    harness.cluster.apply_fresh_job(&job).await?;

    let stalled = harness
        .cluster
        .wait_for_job(
            name,
            "Stalled=True with reason InvalidSpec",
            minutes(2),
            |job| {
                status::condition(job, STALLED)
                    .filter(|c| c.status == "True" && c.reason == INVALID_SPEC)
                    .cloned()
            },
        )
        .await?;
    ensure!(
        stalled.message.contains("spec.pipeline[0].filter"),
        "the InvalidSpec message does not name spec.pipeline[0].filter: {}",
        stalled.message
    );
    let reported = harness.cluster.job(name).await?;
    ensure!(
        status::of(&reported).phase == Some(weir_crds::status::Phase::Failed),
        "an invalid job's phase is Failed: {}",
        status::describe(&reported)
    );
    ensure!(
        !status::condition_is_true(&reported, READY),
        "an invalid job is not Ready: {}",
        status::describe(&reported)
    );
    ensure!(
        harness.cluster.stateful_set(name).await?.is_none(),
        "the operator created a StatefulSet for the invalid job {name}"
    );
    harness.expect_events(name, &[INVALID_SPEC]).await?;
    harness.finish(name).await
}

//! a: the sample, rewritten for the cluster, becomes Ready with the right
//! workers.

use anyhow::ensure;
use kube::ResourceExt;
use weir_e2e::manifest::{JobManifest, JobTopics, SAMPLE_NAME, SAMPLE_STORAGE};
use weir_e2e::status;
use weir_e2e::wait::minutes;
use weir_operator::builders::{selector_labels, selector_string};

use crate::Harness;

#[tokio::test]
async fn the_sample_becomes_ready_with_one_pod_per_worker() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    let job = JobManifest::sample_for_cluster(SAMPLE_NAME, &JobTopics::sample(), SAMPLE_STORAGE)?
        .build()?;

    let ready = harness.start_job(&job).await?;

    let parallelism = status::parallelism(&ready);
    ensure!(
        parallelism == job.spec.parallelism,
        "a new job runs spec.parallelism ({}) workers, status.parallelism is {parallelism}",
        job.spec.parallelism
    );
    let selector = status::of(&ready).selector;
    ensure!(
        selector.as_deref() == Some(selector_string(SAMPLE_NAME).as_str()),
        "status.selector (for the scale subresource) is {selector:?}, want {}",
        selector_string(SAMPLE_NAME)
    );
    let pods = harness.cluster.worker_pods(SAMPLE_NAME).await?;
    let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    let want: Vec<String> = (0..parallelism)
        .map(|ordinal| format!("{SAMPLE_NAME}-{ordinal}"))
        .collect();
    ensure!(
        names == want,
        "the worker pods are {names:?}, want one per worker: {want:?}"
    );
    for pod in &pods {
        let labels = pod.labels();
        for (key, value) in selector_labels(SAMPLE_NAME) {
            ensure!(
                labels.get(&key) == Some(&value),
                "pod {} lacks the label {key}={value}: {labels:?}",
                pod.name_any()
            );
        }
    }
    let stateful_set = harness.cluster.stateful_set(SAMPLE_NAME).await?;
    let replicas = stateful_set.and_then(|set| set.spec?.replicas);
    ensure!(
        replicas == Some(parallelism),
        "StatefulSet {SAMPLE_NAME} has replicas {replicas:?}, want {parallelism}"
    );

    harness.finish(SAMPLE_NAME).await?;
    harness
        .cluster
        .wait_no_worker_pods(SAMPLE_NAME, minutes(3))
        .await
        .map_err(|e| e.context("the worker pods outlive the deleted job"))
}

//! g (last: it uninstalls the operator): once the StreamingJobs are deleted
//! (their finalizer done) and the release uninstalled with `helm uninstall`,
//! nothing of the operator or of a job remains.
//!
//! The scenario runs `helm uninstall` itself, so that the suite is one
//! `cargo test` run; after it, the cluster has no operator until
//! `e2e/run.sh` installs it again.

use anyhow::{Context as _, ensure};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use weir_e2e::manifest::JobManifest;
use weir_e2e::wait::{self, Check, minutes};
use weir_e2e::{OPERATOR_NAMESPACE, RELEASE};
use weir_operator::builders::{LABEL_MANAGED_BY, LABEL_NAME, MANAGER, WORKER_APP};
use weir_operator::rbac::DEFAULT_LEASE_NAME;

use crate::Harness;

const NAME: &str = "e2e-uninstall";

#[tokio::test]
async fn helm_uninstall_leaves_no_orphans() -> anyhow::Result<()> {
    if !weir_e2e::enabled() {
        return Ok(());
    }
    let harness = Harness::connect().await?;
    let job = JobManifest::scenario(NAME)?.fixed_parallelism(2).build()?;
    harness.start_job(&job).await?;

    for name in harness.cluster.job_names().await? {
        harness.cluster.delete_job(&name, minutes(5)).await?;
    }
    uninstall(&harness.settings.context).await?;
    let cluster = &harness.cluster;
    wait::until(
        "the operator pods to be gone",
        minutes(3),
        move || async move {
            let pods = cluster.operator_pods().await?;
            Ok(if pods.is_empty() {
                Check::Done(())
            } else {
                let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
                Check::Waiting(format!("pods {names:?}"))
            })
        },
    )
    .await?;

    let client = harness.cluster.client();
    let children = format!("{LABEL_MANAGED_BY}={MANAGER}");
    let mut leftovers = Vec::new();
    leftovers.extend(labelled::<StatefulSet>(&client, &children).await?);
    leftovers.extend(labelled::<Service>(&client, &children).await?);
    leftovers.extend(labelled::<Secret>(&client, &children).await?);
    leftovers.extend(labelled::<ConfigMap>(&client, &children).await?);
    leftovers.extend(labelled::<PodDisruptionBudget>(&client, &children).await?);
    leftovers.extend(labelled::<Pod>(&client, &format!("{LABEL_NAME}={WORKER_APP}")).await?);
    if harness.cluster.operator_lease().await?.is_some() {
        leftovers.push(format!("Lease {OPERATOR_NAMESPACE}/{DEFAULT_LEASE_NAME}"));
    }
    ensure!(
        leftovers.is_empty(),
        "after deleting every StreamingJob and `helm uninstall {RELEASE}` these remain: {leftovers:?}"
    );
    Ok(())
}

/// `helm uninstall` of the operator's release, waiting for its resources
/// to be deleted.
async fn uninstall(context: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("helm")
        .args([
            "uninstall",
            RELEASE,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--kube-context",
            context,
            "--wait",
            "--timeout",
            "5m",
        ])
        .output()
        .await
        .context("cannot run helm (is it on PATH?)")?;
    ensure!(
        output.status.success(),
        "helm uninstall {RELEASE} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `Kind namespace/name` of every object of kind `K` with the labels of
/// `selector`, in every namespace.
async fn labelled<K>(client: &Client, selector: &str) -> anyhow::Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let objects = Api::<K>::all(client.clone())
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("cannot list the {kind}s labelled {selector}"))?;
    Ok(objects
        .items
        .iter()
        .map(|object| {
            format!(
                "{kind} {}/{}",
                object.namespace().unwrap_or_default(),
                object.name_any()
            )
        })
        .collect())
}

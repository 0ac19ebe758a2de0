//! Clean-up of a deleted StreamingJob, run before its finalizer is removed.
//!
//! The children (ConfigMap, Service, StatefulSet, Secret, PodDisruptionBudget)
//! carry an owner reference to the job, so the garbage collector deletes
//! them; the StatefulSet's claim retention policy deletes the state claims.
//! Checkpoints and savepoints in object storage outlive the job unless
//! `spec.savepoint.disposeOnDelete` is set; then they are deleted first, and
//! the job stays (with a Warning event) until that succeeds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use weir_crds::StreamingJob;

use crate::disposal::JobStorage;
use crate::error::Error;
use crate::events;
use crate::reconciler::Context;

/// The operator's finalizer on every StreamingJob.
pub const NAME: &str = "weir.dev/cleanup";

/// The object storage location of a job's checkpoints and savepoints, as the
/// workers lay it out: `<storage>/<namespace>-<name>`.
pub fn storage_root(job: &StreamingJob) -> String {
    format!(
        "{}/{}-{}",
        job.spec.checkpoint.storage.trim_end_matches('/'),
        job.namespace().unwrap_or_default(),
        job.name_any()
    )
}

/// The object storage configuration the workers get: the plain values of
/// `podTemplate.env`, then the keys of `checkpoint.credentialsSecret`.
async fn storage_options(
    job: &StreamingJob,
    ctx: &Context,
) -> Result<BTreeMap<String, String>, Error> {
    let mut options: BTreeMap<String, String> = job
        .spec
        .pod_template
        .iter()
        .flat_map(|p| &p.env)
        .filter_map(|var| Some((var.name.clone(), var.value.clone()?)))
        .collect();
    if let Some(secret) = &job.spec.checkpoint.credentials_secret {
        let namespace = job.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let secret = secrets
            .get(&secret.name)
            .await
            .map_err(|source| Error::Kube {
                action: "get",
                kind: "Secret",
                namespace: namespace.clone(),
                name: secret.name.clone(),
                source,
            })?;
        for (key, value) in secret.data.unwrap_or_default() {
            if let Ok(value) = String::from_utf8(value.0) {
                options.insert(key, value);
            }
        }
    }
    Ok(options)
}

async fn dispose(job: &StreamingJob, ctx: &Context) -> Result<usize, Error> {
    let root = storage_root(job);
    let disposal = |source| Error::Dispose {
        root: root.clone(),
        source,
    };
    let options = storage_options(job, ctx).await?;
    let storage = JobStorage::open(
        &job.spec.checkpoint.storage,
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        &options,
    )
    .map_err(disposal)?;
    storage.dispose().await.map_err(disposal)
}

/// Cleans up after a deleted job and lets the finalizer go.
pub async fn cleanup(job: &StreamingJob, ctx: &Context) -> Result<Action, Error> {
    let root = storage_root(job);
    if !job.spec.savepoint.dispose_on_delete {
        let note = format!(
            "workers are deleted with the job; checkpoints and savepoints are kept under {root}"
        );
        events::publish(
            &ctx.recorder,
            job,
            EventType::Normal,
            "Deleted",
            "Cleanup",
            &note,
            None,
        )
        .await;
        return Ok(Action::await_change());
    }
    match dispose(job, ctx).await {
        Ok(count) => {
            let note = format!(
                "deleted {count} checkpoint and savepoint objects under {root} (disposeOnDelete)"
            );
            events::publish(
                &ctx.recorder,
                job,
                EventType::Normal,
                "Disposed",
                "Cleanup",
                &note,
                None,
            )
            .await;
            Ok(Action::await_change())
        }
        Err(error) => {
            let note = format!(
                "{error}; the job is kept until its storage is disposed of (set spec.savepoint.disposeOnDelete=false to delete it and keep the files)"
            );
            events::publish(
                &ctx.recorder,
                job,
                EventType::Warning,
                "DisposeFailed",
                "Cleanup",
                &note,
                None,
            )
            .await;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_job;

    #[test]
    fn storage_root_follows_the_worker_layout() {
        let mut job = sample_job();
        assert_eq!(storage_root(&job), "s3://bucket/weir/streams-clicks");
        job.spec.checkpoint.storage = "file:///data/".into();
        assert_eq!(storage_root(&job), "file:///data/streams-clicks");
    }
}

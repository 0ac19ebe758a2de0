//! Clean-up of a deleted StreamingJob, run before its finalizer is removed.
//!
//! The children (ConfigMap, Service, StatefulSet, Secret, PodDisruptionBudget)
//! carry an owner reference to the job, so the garbage collector deletes
//! them; the StatefulSet's claim retention policy deletes the state claims.
//! Checkpoints and savepoints in object storage outlive the job unless
//! `spec.savepoint.disposeOnDelete` is set; then the workers are stopped and
//! awaited, the files deleted, and the job stays (with a Warning event per
//! failure) until that succeeds, at most [`MAX_DISPOSE_ATTEMPTS`] times and
//! never once its namespace is being deleted.
//!
//! The finalizer is added and removed here with JSON patches that test the
//! list first, as kube's finalizer helper does; unlike it, a clean-up can
//! ask to be checked again later without the finalizer going
//! ([`Cleanup::Wait`]).

use std::collections::BTreeMap;
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::Value;
use weir_crds::StreamingJob;

use crate::builders;
use crate::disposal::JobStorage;
use crate::error::Error;
use crate::events;
use crate::reconciler::{Context, kube_error};

/// The operator's finalizer on every StreamingJob.
pub const NAME: &str = "weir.dev/cleanup";

/// The object storage location of a job's checkpoints and savepoints, as the
/// workers lay it out: `<storage>/<namespace>/<name>`.
pub fn storage_root(job: &StreamingJob) -> String {
    format!(
        "{}/{}/{}",
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

/// Opens the job's checkpoint storage as the workers do.
pub(crate) async fn open_storage(
    job: &StreamingJob,
    ctx: &Context,
) -> Result<Result<JobStorage, crate::disposal::DisposeError>, Error> {
    let options = storage_options(job, ctx).await?;
    Ok(JobStorage::open(
        &job.spec.checkpoint.storage,
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        &options,
    ))
}

async fn dispose(job: &StreamingJob, ctx: &Context) -> Result<usize, Error> {
    let root = storage_root(job);
    let disposal = |source| Error::Dispose {
        root: root.clone(),
        source,
    };
    let storage = open_storage(job, ctx).await?.map_err(disposal)?;
    storage.dispose().await.map_err(disposal)
}

/// What the clean-up of a deleted job concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Done: the finalizer can go.
    Done,
    /// Not yet (workers still run): check again after this long, keeping the
    /// finalizer.
    Wait(Duration),
}

/// Consecutive failed clean-ups after which disposal is abandoned (with a
/// Warning event) so that the job, and its namespace, can go.
pub const MAX_DISPOSE_ATTEMPTS: u32 = 5;
/// How often a deleted job is checked while its workers shut down.
pub const DRAIN_REQUEUE: Duration = Duration::from_secs(5);

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// Adds the finalizer. The patch tests the current list first, so that a
/// concurrent change of the finalizers fails it instead of being lost.
pub async fn add(jobs: &Api<StreamingJob>, job: &StreamingJob) -> Result<(), Error> {
    let current = job.finalizers();
    let operations = if current.is_empty() {
        vec![
            PatchOperation::Test(TestOperation {
                path: pointer(&["metadata", "finalizers"]),
                value: Value::Null,
            }),
            PatchOperation::Add(AddOperation {
                path: pointer(&["metadata", "finalizers"]),
                value: serde_json::json!([NAME]),
            }),
        ]
    } else {
        vec![
            PatchOperation::Test(TestOperation {
                path: pointer(&["metadata", "finalizers"]),
                value: serde_json::json!(current),
            }),
            PatchOperation::Add(AddOperation {
                path: pointer(&["metadata", "finalizers", "-"]),
                value: Value::from(NAME),
            }),
        ]
    };
    patch_finalizers(jobs, job, "add finalizer", operations).await
}

/// Removes the finalizer at `index` (tested first, so that another
/// controller's finalizer is never removed).
pub async fn remove(
    jobs: &Api<StreamingJob>,
    job: &StreamingJob,
    index: usize,
) -> Result<(), Error> {
    let index = index.to_string();
    let path = pointer(&["metadata", "finalizers", &index]);
    let operations = vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: Value::from(NAME),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ];
    patch_finalizers(jobs, job, "remove finalizer", operations).await
}

async fn patch_finalizers(
    jobs: &Api<StreamingJob>,
    job: &StreamingJob,
    action: &'static str,
    operations: Vec<PatchOperation>,
) -> Result<(), Error> {
    let name = job.name_any();
    jobs.patch::<StreamingJob>(
        &name,
        &PatchParams::default(),
        &Patch::Json(json_patch::Patch(operations)),
    )
    .await
    .map_err(kube_error(
        action,
        "StreamingJob",
        &job.namespace().unwrap_or_default(),
        &name,
    ))?;
    Ok(())
}

/// Why disposal should be abandoned, if it should: it failed
/// [`MAX_DISPOSE_ATTEMPTS`] times in a row, or the namespace is being
/// deleted (its Secrets, and soon the job, are going anyway).
async fn abandon_disposal(job: &StreamingJob, ctx: &Context) -> Result<Option<String>, Error> {
    let failures = ctx.backoff.failures(&crate::reconciler::key(job));
    if failures >= MAX_DISPOSE_ATTEMPTS {
        return Ok(Some(format!(
            "the clean-up failed {failures} times in a row"
        )));
    }
    let name = job.namespace().unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace =
        namespaces
            .get_opt(&name)
            .await
            .map_err(kube_error("get", "Namespace", "", &name))?;
    let terminating = namespace.is_none_or(|ns| {
        ns.metadata.deletion_timestamp.is_some()
            || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
    });
    Ok(terminating.then(|| format!("namespace {name} is being deleted")))
}

/// Scales the job's StatefulSet to zero and reports whether worker pods
/// remain. The workers must be gone before their storage is disposed of: a
/// running worker would write a new checkpoint after the deletion.
async fn workers_remain(job: &StreamingJob, ctx: &Context) -> Result<bool, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let scale = serde_json::json!({"spec": {"replicas": 0}});
    match stateful_sets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&scale))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => {
            return Err(kube_error("scale", "StatefulSet", &namespace, &name)(
                source,
            ));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = builders::selector_string(&name);
    let remaining = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error("list", "Pod", &namespace, &selector))?
        .items
        .len();
    if remaining > 0 {
        tracing::info!(job = %name, %namespace, remaining, "waiting for the workers to stop before disposal");
    }
    Ok(remaining > 0)
}

/// Cleans up after a deleted job. Without `disposeOnDelete` there is nothing
/// to do. With it, the workers are stopped first (the StatefulSet is scaled
/// to zero and the clean-up waits until no worker pod remains), then the
/// storage is disposed of; disposal is abandoned with a Warning event when
/// the namespace is being deleted or it keeps failing, so that deletion
/// never hangs forever.
pub async fn cleanup(job: &StreamingJob, ctx: &Context) -> Result<Cleanup, Error> {
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
        return Ok(Cleanup::Done);
    }
    if let Some(why) = abandon_disposal(job, ctx).await? {
        let note = format!(
            "{why}: disposal abandoned; the checkpoints and savepoints under {root} are kept and must be deleted by hand"
        );
        events::publish(
            &ctx.recorder,
            job,
            EventType::Warning,
            "DisposeAbandoned",
            "Cleanup",
            &note,
            None,
        )
        .await;
        return Ok(Cleanup::Done);
    }
    if workers_remain(job, ctx).await? {
        return Ok(Cleanup::Wait(DRAIN_REQUEUE));
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
            Ok(Cleanup::Done)
        }
        Err(error) => {
            let note = format!(
                "{error}; the job is kept until its storage is disposed of (at most {MAX_DISPOSE_ATTEMPTS} attempts; set spec.savepoint.disposeOnDelete=false to delete it and keep the files)"
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
        assert_eq!(storage_root(&job), "s3://bucket/weir/streams/clicks");
        job.spec.checkpoint.storage = "file:///data/".into();
        assert_eq!(storage_root(&job), "file:///data/streams/clicks");
    }
}

//! One reconciliation of a StreamingJob: dereference -> validate -> build ->
//! server-side apply -> compute status -> patch status, under the finalizer.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_crds::StreamingJob;
use weir_crds::status::{Phase, StreamingJobStatus};

use crate::backoff::Backoff;
use crate::builders::{self, MANAGER, Names, Settings};
use crate::error::Error;
use crate::events;
use crate::finalizer::Cleanup;
use crate::metrics::Metrics;
use crate::restart::{self, Outdated};
use crate::status::{self, Observed};

/// Field manager of the status subresource. It differs from the children's
/// manager ([`MANAGER`]) so that the two kinds of apply never share field
/// ownership: a server-side apply drops the fields its manager owned and no
/// longer sends, and with one manager for both a status apply could remove
/// fields of the job that another writer (the autoscaler, kubectl) set under
/// the same name. Only the fields of [`status::apply_body`] are owned here.
pub const STATUS_MANAGER: &str = "weir-operator-status";

/// Requeue delay of a job whose workers all run the latest spec.
pub const STABLE_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue delay of a job still moving towards its spec (pods are not owned
/// by the job, so their readiness changes are not always watched).
pub const PROGRESSING_REQUEUE: Duration = Duration::from_secs(30);

/// What every reconciliation shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes events about jobs.
    pub recorder: Recorder,
    /// Operator-wide settings of the built objects.
    pub settings: Settings,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Failure counts for the error policy.
    pub backoff: Backoff,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// A new random control token: 32 bytes from the OS-seeded generator, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Maps a client error of `action` on an object to [`Error::Kube`].
pub(crate) fn kube_error(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let namespace = namespace.to_owned();
    let name = name.to_owned();
    move |source| Error::Kube {
        action,
        kind,
        namespace,
        name,
        source,
    }
}

/// A namespaced object kind the operator owns.
trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
    /// The kind, for messages.
    const KIND: &'static str;
}

impl Child for ConfigMap {
    const KIND: &'static str = "ConfigMap";
}
impl Child for Service {
    const KIND: &'static str = "Service";
}
impl Child for Secret {
    const KIND: &'static str = "Secret";
}
impl Child for StatefulSet {
    const KIND: &'static str = "StatefulSet";
}
impl Child for PodDisruptionBudget {
    const KIND: &'static str = "PodDisruptionBudget";
}

/// Reads and applies a job's children, remembering what changed.
struct Applier<'a> {
    client: &'a Client,
    namespace: &'a str,
    /// UID of the job: the controller every child must have, if any.
    owner_uid: &'a str,
    /// `(reason, message, child)` of every child created or updated.
    changes: Vec<(&'static str, String, ObjectReference)>,
}

impl Applier<'_> {
    fn api<K: Child>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    async fn get<K: Child>(&self, name: &str) -> Result<Option<K>, Error> {
        self.api::<K>().get_opt(name).await.map_err(kube_error(
            "get",
            K::KIND,
            self.namespace,
            name,
        ))
    }

    /// Server-side applies `desired` (force: the operator owns these
    /// fields), given the object as it was before, and records whether it was
    /// created or changed (a no-op apply keeps the resourceVersion). An
    /// existing object controlled by another owner is left alone
    /// ([`Error::ChildConflict`]): forcing the apply would adopt it.
    async fn apply<K: Child>(&mut self, before: Option<&K>, desired: &K) -> Result<K, Error> {
        let name = desired.meta().name.clone().unwrap_or_default();
        if let Some(owner) = before.and_then(|b| foreign_controller(b, self.owner_uid)) {
            return Err(Error::ChildConflict {
                kind: K::KIND,
                namespace: self.namespace.to_owned(),
                name,
                owner,
            });
        }
        let applied = self
            .api::<K>()
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(desired),
            )
            .await
            .map_err(kube_error("apply", K::KIND, self.namespace, &name))?;
        let reason = match before {
            None => Some("Created"),
            Some(before) if before.resource_version() != applied.resource_version() => {
                Some("Updated")
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            let message = format!("{reason} {} {name}", K::KIND);
            self.changes
                .push((reason, message, applied.object_ref(&())));
        }
        Ok(applied)
    }

    async fn get_and_apply<K: Child>(&mut self, desired: &K) -> Result<K, Error> {
        let name = desired.meta().name.clone().unwrap_or_default();
        let before = self.get::<K>(&name).await?;
        self.apply(before.as_ref(), desired).await
    }
}

/// The controller of `object` when it is not the owner with `uid`, as
/// `Kind/name (uid)`.
fn foreign_controller<K: Resource>(object: &K, uid: &str) -> Option<String> {
    object
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true) && owner.uid != uid)
        .map(|owner| format!("{}/{} (uid {})", owner.kind, owner.name, owner.uid))
}

async fn patch_status(
    ctx: &Context,
    names: &Names,
    status: &StreamingJobStatus,
) -> Result<(), Error> {
    let jobs: Api<StreamingJob> = Api::namespaced(ctx.client.clone(), &names.namespace);
    jobs.patch_status(
        &names.job,
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(status::apply_body(status)),
    )
    .await
    .map_err(kube_error(
        "patch status",
        "StreamingJob",
        &names.namespace,
        &names.job,
    ))?;
    Ok(())
}

/// An invalid spec: Ready=False with the problems and a Warning event (once
/// per new verdict: reconciliations triggered by the untouched workers'
/// StatefulSet do not repeat it), no child touched, and no requeue until
/// something changes.
async fn reject(
    job: &StreamingJob,
    ctx: &Context,
    names: &Names,
    problems: &[String],
) -> Result<Action, Error> {
    let status = status::compute(job, problems, Observed::default(), &now());
    if status::owned_fields_changed(job.status.as_ref(), &status) {
        patch_status(ctx, names, &status).await?;
        events::publish(
            &ctx.recorder,
            job,
            EventType::Warning,
            status::INVALID_SPEC,
            "Validate",
            &problems.join("; "),
            None,
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Checks that the Secrets the spec names exist (the workers could not
/// start without them).
async fn check_secrets(job: &StreamingJob, applier: &Applier<'_>) -> Result<(), Error> {
    let referenced = [
        (
            "spec.kafka.credentialsSecret",
            job.spec.kafka.credentials_secret.as_ref().map(|s| &s.name),
        ),
        (
            "spec.checkpoint.credentialsSecret",
            job.spec
                .checkpoint
                .credentials_secret
                .as_ref()
                .map(|s| &s.name),
        ),
    ];
    for (field, name) in referenced {
        let Some(name) = name else { continue };
        if applier.get::<Secret>(name).await?.is_none() {
            return Err(Error::SecretNotFound {
                field,
                namespace: applier.namespace.to_owned(),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Brings the children of a job that is not being deleted to its spec. An
/// error that needs a human ([`Error::condition`]) is also reported in the
/// status (Ready=False, Degraded=True) before it is returned for backoff.
async fn apply(job: &StreamingJob, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(job)?;
    let result = converge(job, ctx, &names).await;
    if let Err(error) = &result
        && let Some((reason, message)) = error.condition()
    {
        let status = status::blocked(job, reason, &message, &now());
        if status::owned_fields_changed(job.status.as_ref(), &status)
            && let Err(patch_error) = patch_status(ctx, &names, &status).await
        {
            tracing::warn!(error = %patch_error, "cannot report the failure in the status");
        }
    }
    result
}

/// Validates the job, applies its children and patches its status.
async fn converge(job: &StreamingJob, ctx: &Context, names: &Names) -> Result<Action, Error> {
    let problems: Vec<String> = weir_crds::validate::validate_job(job)
        .iter()
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        return reject(job, ctx, names, &problems).await;
    }

    let owner_uid = job.metadata.uid.clone().unwrap_or_default();
    let mut applier = Applier {
        client: &ctx.client,
        namespace: &names.namespace,
        owner_uid: &owner_uid,
        changes: Vec::new(),
    };
    // Dereference: the Secrets the spec names must exist, and the control
    // token is generated once and then kept.
    check_secrets(job, &applier).await?;
    let secret: Option<Secret> = applier.get(&names.control_secret).await?;
    let token = secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(builders::CONTROL_TOKEN_KEY))
        .and_then(|t| String::from_utf8(t.0.clone()).ok())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(new_token);
    let desired = builders::children(job, &ctx.settings, &token)?;

    applier
        .apply(secret.as_ref(), &desired.control_secret)
        .await?;
    applier.get_and_apply(&desired.config_map).await?;
    applier.get_and_apply(&desired.service).await?;
    let stateful_set = applier.get_and_apply(&desired.stateful_set).await?;
    applier.get_and_apply(&desired.pdb).await?;
    let changes = std::mem::take(&mut applier.changes);

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let selector = builders::selector_string(&names.job);
    let pods = pod_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error("list", "Pod", &names.namespace, &selector))?
        .items;

    for (reason, message, child) in changes {
        events::publish(
            &ctx.recorder,
            job,
            EventType::Normal,
            reason,
            "Apply",
            &message,
            Some(child),
        )
        .await;
    }

    let operation_in_flight = job.status.as_ref().is_some_and(|s| s.operation.is_some());
    if !operation_in_flight {
        restart_outdated(
            job,
            ctx,
            &pod_api,
            &restart::outdated_pods(&stateful_set, &pods),
        )
        .await?;
    }

    let observed = Observed {
        stateful_set: Some(&stateful_set),
        pods: &pods,
    };
    let status = status::compute(job, &[], observed, &now());
    if status::owned_fields_changed(job.status.as_ref(), &status) {
        patch_status(ctx, names, &status).await?;
    }
    Ok(if status.phase == Some(Phase::Running) {
        Action::requeue(STABLE_REQUEUE)
    } else {
        Action::requeue(PROGRESSING_REQUEUE)
    })
}

/// Deletes the workers that run an out-of-date pod template, so that the
/// StatefulSet recreates them from the current one (see [`restart`]). A pod
/// already gone, or replaced (the uid precondition fails), is skipped.
async fn restart_outdated(
    job: &StreamingJob,
    ctx: &Context,
    pods: &Api<Pod>,
    outdated: &[Outdated],
) -> Result<(), Error> {
    if outdated.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = outdated.iter().map(|p| p.name.as_str()).collect();
    let note = format!(
        "restarting {} on an older pod template to apply the spec; they checkpoint on SIGTERM and restore from the latest checkpoint",
        names.join(", ")
    );
    events::publish(
        &ctx.recorder,
        job,
        EventType::Normal,
        "Restarting",
        "Restart",
        &note,
        None,
    )
    .await;
    for pod in outdated {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&pod.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: "delete",
                    kind: "Pod",
                    namespace: job.namespace().unwrap_or_default(),
                    name: pod.name.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The backoff key of a job.
pub fn key(job: &StreamingJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// The finalizer step: a live job gets the finalizer before anything else
/// (the patch triggers the next reconciliation) and then its children; a
/// deleted one is cleaned up, and its finalizer removed once that is done.
async fn reconcile_job(job: &StreamingJob, ctx: &Context) -> Result<Action, Error> {
    let namespace = job
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(job.name_any()))?;
    let jobs: Api<StreamingJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let index = job
        .finalizers()
        .iter()
        .position(|f| f == crate::finalizer::NAME);
    match (job.metadata.deletion_timestamp.is_some(), index) {
        (false, Some(_)) => apply(job, ctx).await,
        (false, None) => {
            crate::finalizer::add(&jobs, job).await?;
            Ok(Action::await_change())
        }
        (true, Some(index)) => match crate::finalizer::cleanup(job, ctx).await? {
            Cleanup::Wait(delay) => Ok(Action::requeue(delay)),
            Cleanup::Done => {
                crate::finalizer::remove(&jobs, job, index).await?;
                Ok(Action::await_change())
            }
        },
        // Cleaned up already; the API server deletes the job.
        (true, None) => Ok(Action::await_change()),
    }
}

/// Reconciles one StreamingJob: adds the finalizer, applies the children
/// and the status, or cleans up when the job is being deleted. Failures are
/// reported as Warning events and counted in the metrics.
pub async fn reconcile(job: Arc<StreamingJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_job(&job, &ctx).await;
    match &result {
        Ok(_) => ctx.backoff.succeeded(&key(&job)),
        Err(error) => {
            events::publish(
                &ctx.recorder,
                &job,
                EventType::Warning,
                error.event_reason(),
                "Reconcile",
                &error.to_string(),
                None,
            )
            .await;
        }
    }
    ctx.metrics
        .reconciled(started, result.as_ref().err().map(Error::reason));
    result
}

/// The error policy: retry with exponential backoff per job.
pub fn error_policy(job: Arc<StreamingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(&job);
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(job = %key, %error, retry_in = ?delay, "reconciliation failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

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
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_crds::StreamingJob;
use weir_crds::status::{Phase, StreamingJobStatus};

use crate::backoff::Backoff;
use crate::builders::{self, MANAGER, Names, Rollout, Settings};
use crate::control::{Worker, WorkerControl, WorkerReport};
use crate::error::Error;
use crate::events;
use crate::finalizer::Cleanup;
use crate::metrics::Metrics;
use crate::operation::{self, Effect, Live, Observation};
use crate::restart;
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
/// Requeue delay of a job with an operation in flight (savepoint progress
/// is read from the workers, not watched): a second, so that no stage of a
/// rescale (savepoint, stop, start) waits long to be seen done, at the cost
/// of reading each worker's status once a second while it lasts.
pub const OPERATION_REQUEUE: Duration = Duration::from_secs(1);
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
    /// The workers' control API.
    pub workers: Arc<dyn WorkerControl>,
    /// Samples every job's lag and drives its autoscaler; `None`: lag is
    /// not read (tests of the lifecycle alone).
    pub sampler: Option<Arc<crate::lag::sampler::Sampler>>,
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
    /// existing object the job does not control (another controller, or
    /// none) is left alone ([`Error::ChildConflict`]): forcing the apply
    /// would take it over.
    async fn apply<K: Child>(&mut self, before: Option<&K>, desired: &K) -> Result<K, Error> {
        let name = desired.meta().name.clone().unwrap_or_default();
        if let Some(owner) = before.and_then(|b| not_controlled_by(b, self.owner_uid)) {
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

/// Who controls `object` when it is not the owner with `uid`: its
/// controller as `Kind/name (uid)`, or a note that it has none (an object a
/// user or another tool created under a child's name).
fn not_controlled_by<K: Resource>(object: &K, uid: &str) -> Option<String> {
    let controller = object
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true));
    match controller {
        Some(owner) if owner.uid == uid => None,
        Some(owner) => Some(format!("{}/{} (uid {})", owner.kind, owner.name, owner.uid)),
        None => Some("no controller (it has no controller ownerReference)".to_owned()),
    }
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
    // A job the autoscaler scaled to zero runs as suspended.
    let effective = crate::lag::sampler::effective(job);
    let result = converge(&effective, ctx, &names).await;
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

    applier
        .apply(secret.as_ref(), &builders::control_secret(job, &token)?)
        .await?;
    applier.get_and_apply(&builders::config_map(job)?).await?;
    applier.get_and_apply(&builders::service(job)?).await?;
    let live: Option<StatefulSet> = applier.get(&names.job).await?;
    if live.is_none()
        && let Some(missing) = missing_restore_point(job, ctx).await?
    {
        return report_missing_restore_point(job, ctx, names, &missing).await;
    }

    // The operation protocol moves what the StatefulSet runs; its state
    // is persisted before the StatefulSet changes.
    let deployed = live.as_ref().and_then(Rollout::of);
    let mut view = job.clone();
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut pods = None;
    if let Some(deployed) = &deployed {
        let (status, listed) =
            drive_operation(job, ctx, names, &token, deployed, &pod_api, live.as_ref()).await?;
        if let Some(status) = status {
            view.status = Some(status);
        }
        pods = Some(listed);
    }
    let in_flight = view.status.as_ref().and_then(|s| s.operation.as_ref());
    let rollout = operation::rollout(&view, in_flight, deployed.as_ref());
    let stateful_set = applier
        .apply(
            live.as_ref(),
            &builders::stateful_set(&view, &ctx.settings, &rollout)?,
        )
        .await?;
    applier.get_and_apply(&builders::pdb(job)?).await?;
    let changes = std::mem::take(&mut applier.changes);

    let pods = match pods {
        Some(pods) => pods,
        None => list_pods(&pod_api, names).await?,
    };

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

    if live.is_none() {
        events::publish(
            &ctx.recorder,
            job,
            EventType::Normal,
            "Starting",
            "Rollout",
            &starting_note(&rollout),
            None,
        )
        .await;
    }

    // Outside an operation the workers are asked whether they restored:
    // Ready waits for it.
    let operation_in_flight = view.status.as_ref().is_some_and(|s| s.operation.is_some());
    let reports = if operation_in_flight || rollout.replicas == 0 {
        None
    } else {
        Some(observe_workers(ctx, &workers(names, &token, rollout.replicas)).await)
    };
    let observed = Observed {
        stateful_set: Some(&stateful_set),
        pods: &pods,
        workers: reports.as_deref(),
    };
    let status = status::compute(&view, &[], observed, &now());
    if status::owned_fields_changed(view.status.as_ref(), &status) {
        patch_status(ctx, names, &status).await?;
    }
    let delay = if operation_in_flight {
        OPERATION_REQUEUE
    } else if status.last_failed_operation.is_some() {
        PROGRESSING_REQUEUE
    } else if status.phase == Some(Phase::Running) {
        // Back in time for the next periodic savepoint.
        operation::until_periodic_savepoint(&view, &now()).map_or(STABLE_REQUEUE, |due| {
            due.clamp(OPERATION_REQUEUE, STABLE_REQUEUE)
        })
    } else {
        PROGRESSING_REQUEUE
    };
    let next_sample =
        crate::lag::sampler::sample_and_scale(job, &status, ctx, names, &token, &now()).await;
    Ok(Action::requeue(delay.min(next_sample)))
}

async fn list_pods(pod_api: &Api<Pod>, names: &Names) -> Result<Vec<Pod>, Error> {
    let selector = builders::selector_string(&names.job);
    Ok(pod_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_error("list", "Pod", &names.namespace, &selector))?
        .items)
}

/// Runs one step of the operation in flight, or of the one [`operation::plan`]
/// starts, for a job whose StatefulSet runs `deployed`: observes the pods
/// (pods on an older template than `live`'s start an upgrade), the workers
/// and the storage, carries out the effects, and patches the status with
/// the result before anything else changes. Returns the new status (`None`
/// when no operation is involved; a failure whose backoff is over is then
/// forgotten in the returned status) and the pods listed.
async fn drive_operation(
    job: &StreamingJob,
    ctx: &Context,
    names: &Names,
    token: &str,
    deployed: &Rollout,
    pod_api: &Api<Pod>,
    live: Option<&StatefulSet>,
) -> Result<(Option<StreamingJobStatus>, Vec<Pod>), Error> {
    let now = now();
    let mut status = job.status.clone().unwrap_or_default();
    let pods = list_pods(pod_api, names).await?;
    let op = match status.operation.clone() {
        Some(op) => op,
        None => {
            let outdated_pods = live.map_or(0, |sts| restart::outdated_pods(sts, &pods).len());
            let running = Live {
                rollout: deployed,
                outdated_pods,
            };
            match operation::plan(job, running, &now) {
                Some(op) => {
                    execute(job, ctx, names, token, operation::start_event(&op)).await?;
                    op
                }
                None => {
                    if status.last_failed_operation.is_none() {
                        return Ok((None, pods));
                    }
                    operation::forget_failure(&mut status, &now);
                    return Ok((Some(status), pods));
                }
            }
        }
    };
    let workers = workers(names, token, operation::workers_to_observe(&op, deployed));
    let reports = observe_workers(ctx, &workers).await;
    let savepoint_stored = match (&op.savepoint_id, operation::awaits_manifest(&op, &reports)) {
        (Some(id), true) => storage(job, ctx, "open")
            .await?
            .savepoint_complete(id)
            .await
            .map_err(storage_error(job, "read the savepoint manifest"))?,
        _ => false,
    };
    let observation = Observation {
        now: now.clone(),
        generation: operation::current_generation(job.status.as_ref(), deployed),
        pods: pods.len(),
        reports: &reports,
        savepoint_stored,
    };
    let transition = operation::step(&op, &observation);
    for effect in transition.effects.clone() {
        execute(job, ctx, names, token, effect).await?;
    }
    operation::settle(
        &mut status,
        &op,
        &transition,
        job.spec.savepoint.history_limit,
        &now,
    );
    let mut view = job.clone();
    view.status = Some(status);
    let observed = Observed {
        stateful_set: live,
        pods: &pods,
        workers: None,
    };
    let computed = status::compute(&view, &[], observed, &now);
    if status::owned_fields_changed(job.status.as_ref(), &computed) {
        patch_status(ctx, names, &computed).await?;
    }
    Ok((Some(computed), pods))
}

/// The savepoint `spec.restoreFrom` names when the job's first workers
/// would restore it but its `_metadata` is not in storage (the workers
/// would fail to start).
async fn missing_restore_point(job: &StreamingJob, ctx: &Context) -> Result<Option<String>, Error> {
    let Some(id) = job.spec.restore_from.as_ref().filter(|_| !job.spec.suspend) else {
        return Ok(None);
    };
    let stored = storage(job, ctx, "open")
        .await?
        .savepoint_complete(id)
        .await
        .map_err(storage_error(job, "read the savepoint manifest"))?;
    Ok((!stored).then(|| id.clone()))
}

/// Reason of the conditions and the event of a job whose `spec.restoreFrom`
/// names a savepoint that is not in storage.
pub const SAVEPOINT_NOT_FOUND: &str = "SavepointNotFound";

/// A new job whose `spec.restoreFrom` savepoint `id` is missing: no worker
/// starts; Stalled and Degraded say why (with a Warning event once per
/// verdict), and the storage is checked again later.
async fn report_missing_restore_point(
    job: &StreamingJob,
    ctx: &Context,
    names: &Names,
    id: &str,
) -> Result<Action, Error> {
    let message = format!(
        "spec.restoreFrom names savepoint {id}, which is not complete in {} (no _metadata); no worker starts until it exists or restoreFrom is changed",
        crate::finalizer::storage_root(job)
    );
    let status = status::blocked(job, SAVEPOINT_NOT_FOUND, &message, &now());
    if status::owned_fields_changed(job.status.as_ref(), &status) {
        patch_status(ctx, names, &status).await?;
        events::publish(
            &ctx.recorder,
            job,
            EventType::Warning,
            SAVEPOINT_NOT_FOUND,
            "Rollout",
            &message,
            None,
        )
        .await;
    }
    Ok(Action::requeue(PROGRESSING_REQUEUE))
}

/// The note of the event announcing a job's first workers.
fn starting_note(rollout: &Rollout) -> String {
    let from = match rollout.restore_from.as_str() {
        "latest" => "from the newest committed checkpoint, if any".to_owned(),
        "none" => "with empty state".to_owned(),
        id => format!("from savepoint {id} (spec.restoreFrom)"),
    };
    format!(
        "starting {} workers of generation {} {from}",
        rollout.replicas, rollout.generation
    )
}

fn storage_error(
    job: &StreamingJob,
    action: &'static str,
) -> impl FnOnce(crate::disposal::DisposeError) -> Error {
    let root = crate::finalizer::storage_root(job);
    move |source| Error::Storage {
        action,
        root,
        source,
    }
}

async fn storage(
    job: &StreamingJob,
    ctx: &Context,
    action: &'static str,
) -> Result<crate::disposal::JobStorage, Error> {
    crate::finalizer::open_storage(job, ctx)
        .await?
        .map_err(storage_error(job, action))
}

/// The workers `0..count` of the job.
fn workers(names: &Names, token: &str, count: i32) -> Vec<Worker> {
    (0..count.max(0))
        .map(|ordinal| {
            Worker::in_cluster(&names.job, ordinal, &names.service, &names.namespace, token)
        })
        .collect()
}

/// The status of each worker, `None` for those that do not answer.
async fn observe_workers(ctx: &Context, workers: &[Worker]) -> Vec<Option<WorkerReport>> {
    let reports = futures::future::join_all(workers.iter().map(|w| ctx.workers.status(w))).await;
    reports
        .into_iter()
        .map(|report| {
            report
                .map_err(|error| tracing::info!(%error, "worker status unavailable"))
                .ok()
        })
        .collect()
}

/// Carries out one effect of a step. Requests to workers that fail are
/// logged (the next step asks again, and the deadline bounds the wait); a
/// fence that cannot be written fails the reconciliation, since no new
/// worker may start before it.
async fn execute(
    job: &StreamingJob,
    ctx: &Context,
    names: &Names,
    token: &str,
    effect: Effect,
) -> Result<(), Error> {
    match effect {
        Effect::RequestSavepoint { ordinals, id, stop } => {
            for ordinal in ordinals {
                let worker = Worker::in_cluster(
                    &names.job,
                    ordinal,
                    &names.service,
                    &names.namespace,
                    token,
                );
                if let Err(error) = ctx.workers.savepoint(&worker, &id, stop).await {
                    tracing::warn!(%error, savepoint = %id, "savepoint request failed");
                }
            }
        }
        Effect::Resume { ordinals } => {
            for ordinal in ordinals {
                let worker = Worker::in_cluster(
                    &names.job,
                    ordinal,
                    &names.service,
                    &names.namespace,
                    token,
                );
                if let Err(error) = ctx.workers.resume(&worker).await {
                    tracing::warn!(%error, "resume request failed");
                }
            }
        }
        Effect::WriteFence { generation } => {
            storage(job, ctx, "open")
                .await?
                .write_fence(generation)
                .await
                .map_err(storage_error(job, "write fence.json"))?;
        }
        Effect::Event {
            warning,
            reason,
            note,
        } => {
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            events::publish(&ctx.recorder, job, type_, reason, "Operation", &note, None).await;
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
                if let Some(sampler) = &ctx.sampler {
                    sampler.forget(&ctx.metrics, &namespace, &job.name_any());
                }
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
    retry_after(&key(&job), error, &ctx)
}

/// When to retry the job `key` (`namespace/name`) after `error`: an
/// exponential backoff per job.
pub fn retry_after(key: &str, error: &Error, ctx: &Context) -> Action {
    let delay = ctx.backoff.failed(key);
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

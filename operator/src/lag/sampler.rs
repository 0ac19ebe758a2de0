//! The I/O around the autoscaler: every [`SAMPLE_INTERVAL`] per job, read the
//! lag from Kafka ([`LagSource`]) and the load from the workers'
//! `/v1/status`, feed the job's [`Autoscaler`], and write what was found and
//! decided:
//!
//! 1. the status fields `lag`, `inputRate`, `processingRate`,
//!    `targetParallelism` (recommend-only mode) and, with each decision, a
//!    `scalingHistory` record with its numbers, applied with the field
//!    manager [`FIELD_MANAGER`] (those fields are not in the operator's
//!    status apply, [`crate::status::apply_body`], except the history, which
//!    both keep whole);
//! 2. then the decision: the new parallelism through the scale subresource
//!    (server-side apply, [`FIELD_MANAGER`]), which the operation state
//!    machine turns into a savepoint-driven rescale; or the
//!    [`SCALED_TO_ZERO_ANNOTATION`] set (scale to zero) or removed (wake),
//!    with which the reconciler runs the job as suspended ([`effective`]):
//!    stop-with-savepoint, zero workers, and a resume restoring that
//!    savepoint;
//! 3. an Event per decision and the job's metrics.
//!
//! The status is written before the decision so that whoever sees the new
//! parallelism also sees the record explaining it. What the autoscaler keeps
//! in memory (samples, recent recommendations, since when the lag is zero)
//! is rebuilt within a metrics window after an operator restart; the
//! cooldown comes from `status.scalingHistory`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use weir_crds::StreamingJob;
use weir_crds::status::{
    LagStatus, MAX_SCALING_HISTORY, OperationKind, Phase, ScalingRecord, StreamingJobStatus,
};

use super::credentials::{self, CredentialsError};
use super::{
    LagError, LagQuery, LagSource, PartitionOffsets, control_tail, group_id, high_watermark_sum,
    internal_backlog, source_lag, task_count,
};
use crate::autoscaler::{
    Autoscaler, Controls, Outcome, Policy, REASON_PREFIX, SCALED_TO_ZERO_ANNOTATION, Sample,
    Situation, evaluate, history_record, last_rescale_ms, zero_lag_since,
};
use crate::builders::Names;
use crate::control::{Worker, WorkerReport};
use crate::events;
use crate::metrics::{COMPLETED, FAILED, JobGauges, Metrics};
use crate::reconciler::Context;

/// Field manager of what the autoscaler writes: spec.parallelism through the
/// scale subresource, its status fields and the scale-to-zero annotation.
/// GitOps tools are told to leave spec.parallelism to it (README).
pub const FIELD_MANAGER: &str = "weir-autoscaler";

/// Time between two samples of a job.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Why a sample could not be taken or its result written.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The Kafka credentials Secret could not be read.
    #[error("cannot read the Kafka credentials Secret {namespace}/{name}: {source}")]
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The credentials Secret cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The offsets could not be read.
    #[error(transparent)]
    Lag(#[from] LagError),
    /// A write to the API server failed.
    #[error("cannot {action} of StreamingJob {namespace}/{name}: {source}")]
    Kube {
        /// What was written.
        action: &'static str,
        /// The job's namespace.
        namespace: String,
        /// The job's name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// What was last seen of a job's status, to count the savepoints and
/// rescales that completed or failed since.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    savepoints: Vec<String>,
    newest_record: Option<(Time, String)>,
    failure: Option<Time>,
}

impl Seen {
    /// What `status` shows.
    pub fn of(status: &StreamingJobStatus) -> Self {
        Self {
            savepoints: status
                .savepoint_history
                .iter()
                .map(|s| s.id.clone())
                .collect(),
            newest_record: status
                .scaling_history
                .first()
                .map(|r| (r.time.clone(), r.reason.clone())),
            failure: status
                .last_failed_operation
                .as_ref()
                .map(|f| f.time.clone()),
        }
    }
}

/// Savepoints and rescales that completed or failed between two statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Savepoints completed.
    pub savepoints_completed: u64,
    /// Savepoints failed (every failed operation failed in its savepoint).
    pub savepoints_failed: u64,
    /// Parallelism changes completed by the operation machine.
    pub rescales_completed: u64,
    /// Rescales given up.
    pub rescales_failed: u64,
}

/// What happened between `seen` and `status`.
pub fn outcomes(seen: &Seen, status: &StreamingJobStatus) -> Outcomes {
    let savepoints_completed = status
        .savepoint_history
        .iter()
        .filter(|s| !seen.savepoints.contains(&s.id))
        .count() as u64;
    let rescales_completed = status
        .scaling_history
        .iter()
        .take_while(|r| seen.newest_record.as_ref() != Some(&(r.time.clone(), r.reason.clone())))
        .filter(|r| !r.reason.starts_with(REASON_PREFIX) && r.from != r.to)
        .count() as u64;
    let failure = status
        .last_failed_operation
        .as_ref()
        .filter(|f| seen.failure.as_ref() != Some(&f.time));
    Outcomes {
        savepoints_completed,
        savepoints_failed: u64::from(failure.is_some()),
        rescales_completed,
        rescales_failed: u64::from(failure.is_some_and(|f| f.kind == OperationKind::Rescale)),
    }
}

/// What one sample found, before the autoscaler's verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Digest {
    /// The source lag, as status.lag shows it.
    pub lag: LagStatus,
    /// Records in transit on the internal topics.
    pub internal_backlog: i64,
    /// Partitions per source topic: the job's tasks.
    pub tasks: i32,
    /// The autoscaler's sample.
    pub sample: Sample,
}

/// Digests the offsets read from Kafka and the reports of the `running`
/// workers (`None`: unreachable) of `job` at `now_ms`. The processing count
/// and busy ratio are known only when every worker reported them.
pub fn digest(
    job: &StreamingJob,
    offsets: &[PartitionOffsets],
    reports: &[Option<WorkerReport>],
    running: i32,
    now_ms: i64,
) -> Digest {
    let lag = source_lag(offsets, job.spec.source.starting_offsets);
    let tasks = task_count(offsets);
    let backlog = internal_backlog(
        reports,
        &job.spec.input_topics(),
        control_tail(job.spec.guarantee, tasks),
    );
    let loads: Option<Vec<_>> = reports
        .iter()
        .map(|r| r.as_ref().map(|r| &r.load))
        .collect();
    let loads = loads.filter(|l| !l.is_empty());
    let processed = loads
        .as_ref()
        .and_then(|l| l.iter().map(|load| load.records_in).sum::<Option<u64>>());
    let busy_ratio = loads.as_ref().and_then(|l| {
        let busy: Option<Vec<f64>> = l.iter().map(|load| load.busy_ratio).collect();
        busy.map(|b| b.iter().sum::<f64>() / b.len() as f64)
    });
    Digest {
        sample: Sample {
            at_ms: now_ms,
            high_watermarks: high_watermark_sum(offsets),
            lag: lag.total + backlog,
            processed,
            busy_ratio,
            parallelism: running,
        },
        lag,
        internal_backlog: backlog,
        tasks,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the autoscaler scaled `job` to zero.
pub fn parked(job: &StreamingJob) -> bool {
    job.annotations().contains_key(SCALED_TO_ZERO_ANNOTATION)
}

/// The job as the reconciler must run it: one the autoscaler scaled to zero
/// runs as if `spec.suspend` were set, so that the operation state machine
/// stops it with a savepoint, and resumes it from that savepoint once the
/// annotation is gone.
pub fn effective(job: &StreamingJob) -> Cow<'_, StreamingJob> {
    if parked(job) && !job.spec.suspend {
        let mut view = job.clone();
        view.spec.suspend = true;
        Cow::Owned(view)
    } else {
        Cow::Borrowed(job)
    }
}

/// A rate rounded to a tenth, so that status is not rewritten for noise.
fn rounded(rate: f64) -> f64 {
    (rate * 10.0).round() / 10.0
}

/// The status fields the autoscaler writes, as the body of its server-side
/// apply of the status subresource.
fn status_body(status: &StreamingJobStatus) -> serde_json::Value {
    let owned = StreamingJobStatus {
        lag: status.lag.clone(),
        input_rate: status.input_rate,
        processing_rate: status.processing_rate,
        target_parallelism: status.target_parallelism,
        scaling_history: status.scaling_history.clone(),
        ..StreamingJobStatus::default()
    };
    json!({
        "apiVersion": StreamingJob::api_version(&()),
        "kind": StreamingJob::kind(&()),
        "status": owned,
    })
}

/// The per-job state kept between samples.
struct JobState {
    autoscaler: Autoscaler,
    zero_lag_since_ms: Option<i64>,
    seen: Seen,
    problems: Vec<String>,
}

/// What the sampler decided for one job, to write.
struct Verdict {
    outcome: Outcome,
    status: StreamingJobStatus,
    outcomes: Outcomes,
    problems: Option<Vec<String>>,
}

/// Samples every job and drives its autoscaler; shared by all
/// reconciliations (a field of [`Context`]).
pub struct Sampler {
    lag: Arc<dyn LagSource>,
    interval: Duration,
    jobs: Mutex<HashMap<String, JobState>>,
    next_due_ms: Mutex<HashMap<String, i64>>,
}

impl Sampler {
    /// A sampler reading offsets from `lag` every `interval` per job.
    pub fn new(lag: Arc<dyn LagSource>, interval: Duration) -> Self {
        Self {
            lag,
            interval,
            jobs: Mutex::new(HashMap::new()),
            next_due_ms: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobState>> {
        lock(&self.jobs)
    }

    /// Forgets a deleted job: its state and its metrics.
    pub fn forget(&self, metrics: &Metrics, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        self.jobs().remove(&key);
        lock(&self.next_due_ms).remove(&key);
        metrics.forget_job(namespace, name);
    }

    /// The time until the next sample of `key` is due, if it is not yet;
    /// otherwise the sample is taken now (successful or not), and the next
    /// one is due an interval later.
    fn claim(&self, key: &str, now_ms: i64) -> Option<Duration> {
        let mut due = lock(&self.next_due_ms);
        match due.get(key) {
            Some(&at) if now_ms < at => Some(Duration::from_millis(
                u64::try_from(at - now_ms).unwrap_or(0),
            )),
            _ => {
                let interval = i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX);
                due.insert(key.to_owned(), now_ms.saturating_add(interval));
                None
            }
        }
    }

    /// Feeds the digest to the job's autoscaler and evaluates it.
    fn decide(
        &self,
        key: &str,
        job: &StreamingJob,
        status: &StreamingJobStatus,
        digest: &Digest,
        now: &Time,
    ) -> Verdict {
        let now_ms = now.0.as_millisecond();
        let spec = job.spec.autoscaler.clone().unwrap_or_default();
        let policy = Policy::new(&spec, digest.tasks);
        let mut jobs = self.jobs();
        let state = jobs.entry(key.to_owned()).or_insert_with(|| JobState {
            autoscaler: Autoscaler::new(policy.clone()),
            zero_lag_since_ms: None,
            seen: Seen::of(status),
            problems: Vec::new(),
        });
        state.autoscaler.set_policy(policy);
        state.autoscaler.observe(digest.sample.clone());
        state.zero_lag_since_ms =
            zero_lag_since(state.zero_lag_since_ms, digest.sample.lag, now_ms);
        let controls = Controls::new(job.spec.autoscaler.as_ref(), job.annotations());
        let problems = (controls.problems != state.problems).then(|| controls.problems.clone());
        state.problems.clone_from(&controls.problems);
        let running = digest.sample.parallelism;
        let situation = Situation {
            now_ms,
            running,
            settled: status.phase == Some(Phase::Running)
                && status.operation.is_none()
                && status.last_failed_operation.is_none()
                && !job.spec.suspend
                && job.spec.parallelism == running,
            parked: parked(job),
            last_rescale_ms: last_rescale_ms(
                &status.scaling_history,
                job.metadata.creation_timestamp.as_ref(),
            ),
            lag: digest.sample.lag,
            zero_lag_since_ms: state.zero_lag_since_ms,
            controls,
        };
        let outcome = evaluate(&mut state.autoscaler, &situation);
        let rates = state.autoscaler.rates();
        let outcomes = outcomes(&state.seen, status);
        state.seen = Seen::of(status);
        let mut history: Vec<ScalingRecord> = status.scaling_history.clone();
        if let Some(record) = history_record(&outcome, job.spec.parallelism, now.clone()) {
            history.insert(0, record);
            history.truncate(MAX_SCALING_HISTORY);
        }
        let (input_rate, processing_rate) = match &rates {
            Some(rates) => (
                Some(rounded(rates.input_rate)),
                rates.processing_rate.map(rounded),
            ),
            // One sample so far (a new job, a restarted operator, a new
            // parallelism): the rates last published stand.
            None => (status.input_rate, status.processing_rate),
        };
        let written = StreamingJobStatus {
            lag: Some(digest.lag.clone()),
            input_rate,
            processing_rate,
            target_parallelism: match &outcome {
                Outcome::Recommend { to, .. } => Some(*to),
                _ => None,
            },
            scaling_history: history,
            ..status.clone()
        };
        Verdict {
            outcome,
            status: written,
            outcomes,
            problems,
        }
    }
}

/// Samples `job` if its sample is due, and acts on what its autoscaler
/// decides (see the module doc). `status` is the job's status as this
/// reconciliation leaves it. Returns the time until the next sample is due;
/// a failure is logged (and a write failure reported as a Warning event),
/// never returned: the job runs on, and the next sample tries again.
pub async fn sample_and_scale(
    job: &StreamingJob,
    status: &StreamingJobStatus,
    ctx: &Context,
    names: &Names,
    token: &str,
    now: &Time,
) -> Duration {
    let Some(sampler) = ctx.sampler.as_deref() else {
        return Duration::MAX;
    };
    let key = format!("{}/{}", names.namespace, names.job);
    if let Some(wait) = sampler.claim(&key, now.0.as_millisecond()) {
        return wait;
    }
    let subject = Subject {
        key: &key,
        job,
        status,
        names,
        token,
        now,
    };
    if let Err(error) = sample(sampler, ctx, &subject).await {
        tracing::warn!(job = %key, %error, "cannot sample the lag or act on it");
        if let SampleError::Kube { .. } = error {
            events::publish(
                &ctx.recorder,
                job,
                EventType::Warning,
                "AutoscalerFailed",
                "Autoscale",
                &error.to_string(),
                None,
            )
            .await;
        }
    }
    sampler.interval
}

/// The client properties of the job's Kafka connection, its credentials
/// Secret read through the API.
async fn client_properties(
    job: &StreamingJob,
    ctx: &Context,
    namespace: &str,
) -> Result<std::collections::BTreeMap<String, String>, SampleError> {
    let kafka = &job.spec.kafka;
    let Some(reference) = &kafka.credentials_secret else {
        return Ok(credentials::client_properties(kafka, None)?);
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get(&reference.name)
        .await
        .map_err(|source| SampleError::Secret {
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
            source,
        })?;
    Ok(credentials::client_properties(kafka, secret.data.as_ref())?)
}

/// The job one sample is about.
#[derive(Clone, Copy)]
struct Subject<'a> {
    key: &'a str,
    job: &'a StreamingJob,
    status: &'a StreamingJobStatus,
    names: &'a Names,
    token: &'a str,
    now: &'a Time,
}

async fn sample(
    sampler: &Sampler,
    ctx: &Context,
    subject: &Subject<'_>,
) -> Result<(), SampleError> {
    let Subject {
        key,
        job,
        status,
        names,
        token,
        now,
    } = *subject;
    let namespace = names.namespace.as_str();
    let query = LagQuery {
        bootstrap_servers: job.spec.kafka.bootstrap_servers.clone(),
        properties: client_properties(job, ctx, namespace).await?,
        group: group_id(namespace, &names.job),
        topics: job.spec.input_topics(),
    };
    let offsets = sampler.lag.offsets(&query).await?;
    let running = status.parallelism.unwrap_or(0).max(0);
    let workers: Vec<Worker> = (0..running)
        .map(|ordinal| Worker::in_cluster(&names.job, ordinal, &names.service, namespace, token))
        .collect();
    let reports: Vec<Option<WorkerReport>> =
        futures::future::join_all(workers.iter().map(|w| ctx.workers.status(w)))
            .await
            .into_iter()
            .map(Result::ok)
            .collect();
    let digest = digest(job, &offsets, &reports, running, now.0.as_millisecond());
    let verdict = sampler.decide(key, job, status, &digest, now);
    publish_metrics(&ctx.metrics, names, &verdict, &digest, now);
    if let Some(problems) = &verdict.problems
        && !problems.is_empty()
    {
        events::publish(
            &ctx.recorder,
            job,
            EventType::Warning,
            "InvalidAnnotation",
            "Autoscale",
            &problems.join("; "),
            None,
        )
        .await;
    }
    let kube_error = |action| {
        move |source| SampleError::Kube {
            action,
            namespace: namespace.to_owned(),
            name: names.job.clone(),
            source,
        }
    };
    let jobs: Api<StreamingJob> = Api::namespaced(ctx.client.clone(), namespace);
    if status_body(status) != status_body(&verdict.status) {
        jobs.patch_status(
            &names.job,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(status_body(&verdict.status)),
        )
        .await
        .map_err(kube_error("apply the lag and autoscaler status"))?;
    }
    act(job, status, ctx, names, &jobs, &verdict.outcome, now)
        .await
        .map_err(kube_error("apply the autoscaler's decision"))
}

/// Sets the job's gauges and counts what happened since the last sample.
fn publish_metrics(
    metrics: &Metrics,
    names: &Names,
    verdict: &Verdict,
    digest: &Digest,
    now: &Time,
) {
    let (namespace, job) = (names.namespace.as_str(), names.job.as_str());
    let status = &verdict.status;
    let age = status
        .last_savepoint
        .as_ref()
        .map(|s| (now.0.as_millisecond() - s.time.0.as_millisecond()) as f64 / 1000.0);
    metrics.observe_job(
        namespace,
        job,
        &JobGauges {
            lag: Some(digest.lag.total),
            internal_backlog: digest.internal_backlog,
            parallelism: digest.sample.parallelism,
            phase: status.phase,
            last_savepoint_age: age,
        },
    );
    let counts = verdict.outcomes;
    for _ in 0..counts.savepoints_completed {
        metrics.count_savepoint(namespace, job, COMPLETED);
    }
    for _ in 0..counts.savepoints_failed {
        metrics.count_savepoint(namespace, job, FAILED);
    }
    for _ in 0..counts.rescales_completed {
        metrics.count_rescale(namespace, job, COMPLETED);
    }
    for _ in 0..counts.rescales_failed {
        metrics.count_rescale(namespace, job, FAILED);
    }
    let decision = match &verdict.outcome {
        Outcome::Scale { from, to, .. } if to > from => Some("scale_up"),
        Outcome::Scale { .. } => Some("scale_down"),
        Outcome::ScaleToZero { .. } => Some("scale_to_zero"),
        Outcome::Wake { .. } => Some("wake"),
        Outcome::Recommend { from, to, .. } if from != to => Some("recommend"),
        Outcome::Recommend { .. } | Outcome::Hold { .. } => None,
    };
    if let Some(decision) = decision {
        metrics.count_decision(namespace, job, decision);
    }
}

/// Carries out a decision and records its Event.
async fn act(
    job: &StreamingJob,
    status: &StreamingJobStatus,
    ctx: &Context,
    names: &Names,
    jobs: &Api<StreamingJob>,
    outcome: &Outcome,
    now: &Time,
) -> Result<(), kube::Error> {
    let annotate = |value: serde_json::Value| {
        let patch = json!({"metadata": {"annotations": {SCALED_TO_ZERO_ANNOTATION: value}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        async move { jobs.patch(&names.job, &params, &Patch::Merge(patch)).await }
    };
    let (reason, note) = match outcome {
        Outcome::Hold { .. } => return Ok(()),
        Outcome::Recommend { from, to, reason } => {
            if status.target_parallelism == Some(*to) || from == to {
                return Ok(());
            }
            (
                "ScalingRecommended",
                format!(
                    "recommend-only: {to} workers instead of {from}; {reason}; set {} to act on it",
                    crate::autoscaler::MODE_ANNOTATION
                ),
            )
        }
        Outcome::Scale {
            from,
            to,
            recommendation,
        } => {
            let scale = json!({
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": names.job, "namespace": names.namespace},
                "spec": {"replicas": to},
            });
            jobs.patch_scale(
                &names.job,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(scale),
            )
            .await?;
            let reason = if to > from {
                "AutoscalerScaleUp"
            } else {
                "AutoscalerScaleDown"
            };
            (
                reason,
                format!("spec.parallelism {from} -> {to}: {}", recommendation.reason),
            )
        }
        Outcome::ScaleToZero { from, idle_ms } => {
            annotate(json!(now.0.to_string())).await?;
            (
                "ScalingToZero",
                format!(
                    "lag has been zero for {}s: stopping the {from} workers with a savepoint; they resume from it when lag appears",
                    idle_ms / 1000
                ),
            )
        }
        Outcome::Wake { reason } => {
            annotate(serde_json::Value::Null).await?;
            (
                "Waking",
                format!(
                    "resuming {} workers from the savepoint taken at scale to zero: {reason}",
                    job.spec.parallelism
                ),
            )
        }
    };
    events::publish(
        &ctx.recorder,
        job,
        EventType::Normal,
        reason,
        "Autoscale",
        &note,
        None,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests;

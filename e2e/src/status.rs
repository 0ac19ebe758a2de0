//! Reading a StreamingJob's status the way a user reads `kubectl get sj`:
//! conditions, phase, parallelism, the operation in flight and the
//! histories.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use weir_crds::StreamingJob;
use weir_crds::status::{Operation, ScalingRecord, StreamingJobStatus};

/// The job's status (empty before the operator wrote one).
pub fn of(job: &StreamingJob) -> StreamingJobStatus {
    job.status.clone().unwrap_or_default()
}

/// The condition of type `kind` (`Ready`, `Stalled`, ...).
pub fn condition<'a>(job: &'a StreamingJob, kind: &str) -> Option<&'a Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|condition| condition.type_ == kind)
}

/// Whether the condition `kind` is True and was computed for the current
/// spec (its observedGeneration is the job's generation), so that a Ready
/// left over from before a change does not count.
pub fn condition_is_true(job: &StreamingJob, kind: &str) -> bool {
    condition(job, kind).is_some_and(|condition| {
        condition.status == "True"
            && (condition.observed_generation.is_none()
                || condition.observed_generation == job.metadata.generation)
    })
}

/// The operation in flight, if any.
pub fn operation(job: &StreamingJob) -> Option<Operation> {
    of(job).operation
}

/// The number of running workers the status reports (0 when unset).
pub fn parallelism(job: &StreamingJob) -> i32 {
    of(job).parallelism.unwrap_or(0)
}

/// The scaling records, newest first.
pub fn scaling_history(job: &StreamingJob) -> Vec<ScalingRecord> {
    of(job).scaling_history
}

/// One line about the job for progress and timeout messages: phase,
/// parallelism, Ready with its reason and message, and the operation.
pub fn describe(job: &StreamingJob) -> String {
    let status = of(job);
    let ready = condition(job, weir_operator::status::READY).map_or_else(
        || "no Ready condition".to_owned(),
        |c| format!("Ready={} ({}: {})", c.status, c.reason, c.message),
    );
    let operation = status.operation.as_ref().map_or_else(String::new, |op| {
        format!(
            ", operation {:?} at {:?} to {}",
            op.kind,
            op.stage,
            op.target_parallelism
                .map_or_else(|| "-".to_owned(), |p| p.to_string())
        )
    });
    format!(
        "phase {:?}, spec.parallelism {}, status.parallelism {}, {ready}{operation}",
        status.phase,
        job.spec.parallelism,
        status
            .parallelism
            .map_or_else(|| "unset".to_owned(), |p| p.to_string()),
    )
}

/// The scaling records as `from->to` pairs, newest first, for messages.
pub fn describe_scaling(history: &[ScalingRecord]) -> String {
    if history.is_empty() {
        return "no scaling recorded".to_owned();
    }
    history
        .iter()
        .map(|record| format!("{}->{}", record.from, record.to))
        .collect::<Vec<_>>()
        .join(", ")
}

//! The controller of `weir run`: the operator's own core, its operation
//! state machine ([`crate::operation`]) and its autoscaler
//! ([`crate::autoscaler`]), driving in-process workers instead of a
//! StatefulSet. One [`LocalController::tick`] is one reconciliation: sample
//! the lag, let the autoscaler decide (it writes `spec.parallelism`, as it
//! does through the scale subresource), run one step of the operation in
//! flight or of the one [`operation::plan`] starts, then bring the workers
//! to what [`operation::rollout`] says they run.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use weir_crds::StreamingJob;
use weir_crds::status::{MAX_SCALING_HISTORY, OperationKind};

use super::workers::LocalWorkers;
use crate::autoscaler::{self, Autoscaler, Controls, Outcome, Policy, Sample, Situation};
use crate::control::{WorkerControl, WorkerReport};
use crate::disposal::JobStorage;
use crate::operation::{self, Effect, Live, Next, Observation};

/// Something that happened, for the live view and the summary.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Happening {
    /// Seconds since the run started.
    pub at_secs: f64,
    /// Warning rather than Normal.
    pub warning: bool,
    /// The event reason.
    pub reason: String,
    /// What happened.
    pub note: String,
}

/// A rescale (or suspend) carried out by the operation state machine.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rescale {
    /// Seconds since the run started when it began.
    pub at_secs: f64,
    /// Workers before.
    pub from: i32,
    /// Workers after.
    pub to: i32,
    /// The savepoint it went through.
    pub savepoint: Option<String>,
    /// Seconds from the savepoint request until every new worker was
    /// restored and consuming: the processing pause it caused.
    pub pause_secs: f64,
    /// Why.
    pub reason: String,
}

/// What the controller reads off the workers and Kafka at one tick.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Sum of the source partitions' high watermarks.
    pub high_watermarks: i64,
    /// Records not yet consumed, summed over the source partitions.
    pub lag: i64,
    /// Records on the repartition topic not yet processed by the keyed
    /// stage (the operator's internal backlog), and records of the join's
    /// topic not yet read.
    pub in_transit: i64,
    /// The next offset the job reads, per source partition (as last
    /// reported: a stopped worker keeps its last position).
    pub positions: BTreeMap<i32, i64>,
    /// The same, per partition of the join's topic, if the job has a join.
    pub join_positions: BTreeMap<i32, i64>,
    /// Records read and written by the running workers.
    pub records_in: u64,
    /// Records written by the running workers.
    pub records_out: u64,
    /// Mean busy ratio of the running workers.
    pub busy_ratio: Option<f64>,
}

/// The local controller of one job.
pub struct LocalController {
    /// The job, with the status the operator would keep.
    pub job: StreamingJob,
    /// Its workers.
    pub workers: LocalWorkers,
    control: Box<dyn WorkerControl>,
    storage: JobStorage,
    autoscaler: Autoscaler,
    started: Instant,
    /// When the running parallelism took effect, in ms since the epoch.
    last_rescale_ms: i64,
    /// Everything that happened.
    pub happenings: Vec<Happening>,
    /// Every rescale.
    pub rescales: Vec<Rescale>,
    /// Checkpoint ids seen per worker generation and ordinal.
    checkpoints: BTreeMap<(i64, usize), String>,
    /// Checkpoints seen completed.
    pub checkpoints_taken: u64,
    in_flight: Option<(OperationKind, Instant, i32, String)>,
    /// Scaled to zero by the autoscaler (the operator's
    /// [`autoscaler::SCALED_TO_ZERO_ANNOTATION`]).
    parked: bool,
    /// Since when the lag has been zero.
    zero_lag_since_ms: Option<i64>,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl LocalController {
    /// A controller of `job` with its `workers`, speaking to them through
    /// `control`, with the job's `storage`, its source having `partitions`
    /// partitions.
    pub fn new(
        job: StreamingJob,
        workers: LocalWorkers,
        control: Box<dyn WorkerControl>,
        storage: JobStorage,
        partitions: i32,
    ) -> LocalController {
        let policy = Policy::new(&job.spec.autoscaler.clone().unwrap_or_default(), partitions);
        LocalController {
            job,
            workers,
            control,
            storage,
            autoscaler: Autoscaler::new(policy),
            started: Instant::now(),
            last_rescale_ms: Timestamp::now().as_millisecond(),
            happenings: Vec::new(),
            rescales: Vec::new(),
            checkpoints: BTreeMap::new(),
            checkpoints_taken: 0,
            in_flight: None,
            parked: false,
            zero_lag_since_ms: None,
        }
    }

    fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records that something happened.
    pub fn happen(&mut self, warning: bool, reason: &str, note: String) {
        let at_secs = self.secs();
        self.happenings.push(Happening {
            at_secs,
            warning,
            reason: reason.to_owned(),
            note,
        });
    }

    /// The running workers' reports, by ordinal.
    pub async fn reports(&self, count: i32) -> Vec<Option<WorkerReport>> {
        let mut reports = Vec::new();
        for worker in self.workers.control(count) {
            reports.push(self.control.status(&worker).await.ok());
        }
        reports
    }

    /// Counts the checkpoints the workers report as they complete.
    fn note_checkpoints(&mut self, generation: i64) {
        for (ordinal, handle) in self.workers.handles().iter().enumerate() {
            if let Some(checkpoint) = handle.status().last_checkpoint {
                let previous = self
                    .checkpoints
                    .insert((generation, ordinal), checkpoint.id.clone());
                if previous.as_ref() != Some(&checkpoint.id) {
                    self.checkpoints_taken += 1;
                }
            }
        }
    }

    /// Feeds the autoscaler one sample and evaluates the job as the
    /// operator's lag sampler does ([`autoscaler::evaluate`]): a rescale
    /// sets `spec.parallelism`, which the operation machine then carries
    /// out; scale to zero (`autoscaler.idleAfter`) parks the job, which then
    /// runs as suspended until its lag wakes it; the pause and recommend
    /// annotations are honoured.
    pub fn autoscale(&mut self, reading: &Reading) {
        if self.job.spec.suspend {
            // The run is stopping.
            return;
        }
        let running = self.workers.deployed().map_or(0, |d| d.replicas);
        let status = self.job.status.clone().unwrap_or_default();
        let busy = status.operation.is_some();
        let now_ms = Timestamp::now().as_millisecond();
        if running > 0 && !busy {
            self.autoscaler.observe(Sample {
                at_ms: now_ms,
                high_watermarks: reading.high_watermarks,
                lag: reading.lag + reading.in_transit,
                processed: Some(reading.records_in),
                busy_ratio: reading.busy_ratio,
                parallelism: running,
            });
        }
        let backlog = reading.lag + reading.in_transit;
        self.zero_lag_since_ms =
            autoscaler::zero_lag_since(self.zero_lag_since_ms, backlog, now_ms);
        let situation = Situation {
            now_ms,
            controls: Controls::new(self.job.spec.autoscaler.as_ref(), self.job.annotations()),
            running,
            settled: running > 0
                && !busy
                && status.last_failed_operation.is_none()
                && !self.parked
                && self.job.spec.parallelism == running,
            parked: self.parked,
            last_rescale_ms: self.last_rescale_ms,
            lag: backlog,
            zero_lag_since_ms: self.zero_lag_since_ms,
        };
        let outcome = autoscaler::evaluate(&mut self.autoscaler, &situation);
        let record = autoscaler::history_record(&outcome, self.job.spec.parallelism, now());
        let status = self.job.status.get_or_insert_with(Default::default);
        status.target_parallelism = match &outcome {
            Outcome::Recommend { to, .. } => Some(*to),
            _ => None,
        };
        if let Some(mut record) = record {
            record.lag = Some(reading.lag);
            status.scaling_history.insert(0, record);
            status.scaling_history.truncate(MAX_SCALING_HISTORY);
        }
        match outcome {
            Outcome::Hold { .. } | Outcome::Recommend { .. } => {}
            Outcome::Scale {
                from,
                to,
                recommendation,
            } => {
                self.happen(
                    false,
                    "AutoscalerDecision",
                    format!("{from} -> {to}: {}", recommendation.reason),
                );
                self.job.spec.parallelism = to;
            }
            Outcome::ScaleToZero { from, idle_ms } => {
                self.parked = true;
                self.happen(
                    false,
                    "ScalingToZero",
                    format!(
                        "{from} -> 0: no lag for {:.0}s (autoscaler.idleAfter)",
                        idle_ms as f64 / 1000.0
                    ),
                );
            }
            Outcome::Wake { reason } => {
                self.parked = false;
                self.happen(false, "Waking", format!("resuming: {reason}"));
            }
        }
    }

    /// One reconciliation of the job as it must run: a parked job runs as
    /// if `spec.suspend` were set (as the operator's
    /// [`crate::lag::sampler::effective`] view), so the operation machine
    /// stops it with a savepoint and resumes it from there once woken.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
        let suspend = self.job.spec.suspend;
        self.job.spec.suspend |= self.parked;
        let result = self.reconcile().await;
        self.job.spec.suspend = suspend;
        result
    }

    /// One reconciliation: a step of the operation in flight (or of a new
    /// one), then the workers brought to what it says they run.
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let desired = match self.workers.deployed().cloned() {
            Some(deployed) => {
                self.step(&now(), &deployed).await?;
                let op = self.job.status.as_ref().and_then(|s| s.operation.as_ref());
                operation::rollout(&self.job, op, Some(&deployed))
            }
            // The first rollout, as the StatefulSet is first created.
            None => operation::rollout(&self.job, None, None),
        };
        let generation = self.workers.deployed().map_or(0, |d| d.generation);
        self.note_checkpoints(generation);
        self.workers.apply(&desired).await?;
        Ok(())
    }

    async fn step(
        &mut self,
        now: &Time,
        deployed: &crate::builders::Rollout,
    ) -> anyhow::Result<()> {
        let mut status = self.job.status.clone().unwrap_or_default();
        let op = match status.operation.clone() {
            Some(op) => op,
            None => {
                let live = Live {
                    rollout: deployed,
                    outdated_pods: 0,
                };
                match operation::plan(&self.job, live, now) {
                    Some(op) => {
                        self.in_flight = Some((
                            op.kind,
                            Instant::now(),
                            op.from_parallelism.unwrap_or_default(),
                            op.savepoint_id.clone().unwrap_or_default(),
                        ));
                        self.execute(operation::start_event(&op)).await?;
                        op
                    }
                    None => {
                        operation::forget_failure(&mut status, now);
                        self.job.status = Some(status);
                        return Ok(());
                    }
                }
            }
        };
        let reports = self
            .reports(operation::workers_to_observe(&op, deployed))
            .await;
        let savepoint_stored = match (&op.savepoint_id, operation::awaits_manifest(&op, &reports)) {
            (Some(id), true) => self.storage.savepoint_complete(id).await?,
            _ => false,
        };
        let observation = Observation {
            now: now.clone(),
            generation: operation::current_generation(self.job.status.as_ref(), deployed),
            pods: self.workers.live(),
            reports: &reports,
            savepoint_stored,
        };
        let transition = operation::step(&op, &observation);
        for effect in transition.effects.clone() {
            self.execute(effect).await?;
        }
        operation::settle(
            &mut status,
            &op,
            &transition,
            self.job.spec.savepoint.history_limit,
            now,
        );
        self.job.status = Some(status);
        match &transition.next {
            Next::Stay(_) => {}
            Next::Done => self.finished(&op, None),
            Next::Failed(message) => self.finished(&op, Some(message.clone())),
        }
        Ok(())
    }

    fn finished(&mut self, op: &weir_crds::status::Operation, failure: Option<String>) {
        let Some((kind, began, from, savepoint)) = self.in_flight.take() else {
            return;
        };
        if operation::restarts_nothing(kind) {
            return;
        }
        if failure.is_none() {
            self.last_rescale_ms = Timestamp::now().as_millisecond();
        }
        let at_secs = self.secs() - began.elapsed().as_secs_f64();
        self.rescales.push(Rescale {
            at_secs,
            from,
            to: if failure.is_some() {
                from
            } else {
                op.target_parallelism.unwrap_or(from)
            },
            savepoint: (!savepoint.is_empty()).then_some(savepoint),
            pause_secs: began.elapsed().as_secs_f64(),
            reason: failure.unwrap_or_else(|| format!("{kind:?}")),
        });
    }

    /// The control addresses of workers `ordinals`.
    fn addressed(&self, ordinals: &[i32]) -> Vec<crate::control::Worker> {
        let all = self
            .workers
            .control(ordinals.iter().max().map_or(0, |m| m + 1));
        ordinals
            .iter()
            .filter_map(|o| all.get(usize::try_from(*o).ok()?).cloned())
            .collect()
    }

    async fn execute(&mut self, effect: Effect) -> anyhow::Result<()> {
        match effect {
            Effect::RequestSavepoint { ordinals, id, stop } => {
                for worker in self.addressed(&ordinals) {
                    if let Err(error) = self.control.savepoint(&worker, &id, stop).await {
                        self.happen(true, "SavepointRequestFailed", error.to_string());
                    }
                }
            }
            Effect::Resume { ordinals } => {
                for worker in self.addressed(&ordinals) {
                    if let Err(error) = self.control.resume(&worker).await {
                        self.happen(true, "ResumeFailed", error.to_string());
                    }
                }
            }
            Effect::WriteFence { generation } => self.storage.write_fence(generation).await?,
            Effect::Event {
                warning,
                reason,
                note,
            } => self.happen(warning, reason, note),
        }
        Ok(())
    }
}

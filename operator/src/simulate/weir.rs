//! Weir's side: the operator's autoscaler ([`crate::autoscaler`]) fed the
//! samples the operator would take of a running job, every
//! [`SAMPLE_INTERVAL_SECS`]: high watermarks and lag from Kafka, records
//! processed and busy ratio from the workers. While a rescale is under way
//! the workers report nothing and the operator does not decide, so the
//! simulation takes no sample then; the cooldown counts from the decision,
//! as the operator counts it from the newest `status.scalingHistory` record.

use crate::autoscaler::{Autoscaler, Decision, Policy, Sample};

use super::model::{Job, Scaler};

/// Seconds between two samples of the operator.
pub const SAMPLE_INTERVAL_SECS: u64 = 15;

/// The operator's autoscaler loop over a simulated job.
#[derive(Clone, Debug)]
pub struct WeirScaler {
    autoscaler: Autoscaler,
    last_rescale_ms: i64,
    running: bool,
    /// When the current busy-ratio interval started, and the workers'
    /// busy worker-seconds then.
    interval_start: (u64, f64),
}

impl WeirScaler {
    /// The autoscaler of `policy` over a job that started at second 0.
    pub fn new(policy: Policy) -> Self {
        Self {
            autoscaler: Autoscaler::new(policy),
            last_rescale_ms: 0,
            running: true,
            interval_start: (0, 0.0),
        }
    }
}

impl Scaler for WeirScaler {
    fn after_tick(&mut self, now_secs: u64, job: &Job) -> Option<i32> {
        if !job.running() {
            self.running = false;
            return None;
        }
        if !self.running {
            // The rescale just completed: busy ratios start afresh.
            self.running = true;
            self.interval_start = (now_secs, job.busy_worker_secs());
        }
        if !now_secs.is_multiple_of(SAMPLE_INTERVAL_SECS) {
            return None;
        }
        let (since, busy_then) = self.interval_start;
        let elapsed = (now_secs - since) as f64;
        let busy_ratio = (elapsed > 0.0).then(|| {
            (job.busy_worker_secs() - busy_then) / (elapsed * f64::from(job.parallelism()))
        });
        self.interval_start = (now_secs, job.busy_worker_secs());
        self.autoscaler.observe(Sample {
            at_ms: now_secs as i64 * 1000,
            high_watermarks: job.high_watermark() as i64,
            lag: job.lag() as i64,
            processed: Some(job.processed_since_start()),
            busy_ratio,
            parallelism: job.parallelism(),
        });
        match self
            .autoscaler
            .decide(job.parallelism(), self.last_rescale_ms)
        {
            Decision::Rescale { to, .. } => {
                self.last_rescale_ms = now_secs as i64 * 1000;
                Some(to)
            }
            Decision::Keep { .. } => None,
        }
    }
}

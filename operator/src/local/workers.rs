//! The workers of `weir run`: in-process `weir-worker` runtimes, each with
//! its own state directory and control port. This stands in for the
//! StatefulSet: [`LocalWorkers::apply`] makes the running workers match a
//! [`Rollout`] the way the StatefulSet controller would (stopping every old
//! worker before any new one starts, since a rollout changes the workers'
//! identity), and the controller talks to them through the same HTTP
//! control API as in a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_crds::job::StreamingJobSpec;
use weir_worker::checkpoint::restore::RestoreSource;
use weir_worker::config::WorkerConfig;
use weir_worker::runtime::{Worker as WorkerRuntime, WorkerHandle};

use crate::builders::Rollout;
use crate::control::Worker;

/// How long a starting worker may take to restore and become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the workers could not be brought to a rollout.
#[derive(Debug, thiserror::Error)]
pub enum LocalWorkerError {
    /// A worker's configuration is invalid.
    #[error("worker {ordinal}: {message}")]
    Config {
        /// The worker's ordinal.
        ordinal: i32,
        /// Why.
        message: String,
    },
    /// A worker failed to start or stop.
    #[error("worker {ordinal} failed: {message}")]
    Failed {
        /// The worker's ordinal.
        ordinal: i32,
        /// Why.
        message: String,
    },
}

/// The in-process workers of one job.
pub struct LocalWorkers {
    name: String,
    namespace: String,
    spec: StreamingJobSpec,
    state_root: PathBuf,
    token: String,
    /// Records per second each worker may process (a pod's CPU limit).
    capacity: Option<u64>,
    running: Vec<WorkerHandle>,
    deployed: Option<Rollout>,
}

impl LocalWorkers {
    /// The workers of job `namespace/name` with `spec` (already pointed at
    /// the local Kafka and storage), keeping their state under
    /// `state_root`.
    pub fn new(
        name: &str,
        namespace: &str,
        spec: StreamingJobSpec,
        state_root: PathBuf,
        token: String,
        capacity: Option<u64>,
    ) -> LocalWorkers {
        LocalWorkers {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            spec,
            state_root,
            token,
            capacity,
            running: Vec::new(),
            deployed: None,
        }
    }

    /// What the workers run now (`None` before the first start).
    pub fn deployed(&self) -> Option<&Rollout> {
        self.deployed.as_ref()
    }

    /// Takes `rollout` as what runs, without starting anything: a job
    /// stopped by an earlier run (a StatefulSet at zero replicas).
    pub fn assume(&mut self, rollout: Rollout) {
        self.deployed = Some(rollout);
    }

    /// Workers alive now (the pods of a StatefulSet).
    pub fn live(&self) -> usize {
        self.running.len()
    }

    /// The running workers' handles, by ordinal.
    pub fn handles(&self) -> &[WorkerHandle] {
        &self.running
    }

    /// The control API addresses of workers `0..count` (as the operator
    /// addresses pods through the headless Service).
    pub fn control(&self, count: i32) -> Vec<Worker> {
        (0..count)
            .map(|ordinal| {
                let index = usize::try_from(ordinal).unwrap_or(usize::MAX);
                let base_url = self
                    .running
                    .get(index)
                    .map(|h| format!("http://{}", h.addr()))
                    // A worker not running: an address nobody answers.
                    .unwrap_or_else(|| format!("http://{}", SocketAddr::from(([127, 0, 0, 1], 9))));
                Worker {
                    pod: format!("{}-{ordinal}", self.name),
                    base_url,
                    token: self.token.clone(),
                }
            })
            .collect()
    }

    /// Makes the running workers match `desired`: nothing when they do
    /// already; otherwise every worker stops (gracefully: a worker stopped
    /// by a savepoint takes no further checkpoint), then `desired.replicas`
    /// new ones start and become ready.
    pub async fn apply(&mut self, desired: &Rollout) -> Result<(), LocalWorkerError> {
        if self.deployed.as_ref() == Some(desired) {
            return Ok(());
        }
        self.stop_all().await?;
        for ordinal in 0..desired.replicas {
            let config = self.config(ordinal, desired)?;
            let handle = WorkerRuntime::start(config, CancellationToken::new())
                .await
                .map_err(|e| LocalWorkerError::Failed {
                    ordinal,
                    message: e.to_string(),
                })?;
            self.running.push(handle);
        }
        self.deployed = Some(desired.clone());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        for (ordinal, handle) in self.running.iter().enumerate() {
            loop {
                let status = handle.status();
                if let Some(error) = status.error {
                    return Err(LocalWorkerError::Failed {
                        ordinal: i32::try_from(ordinal).unwrap_or(i32::MAX),
                        message: error,
                    });
                }
                if status.ready || tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Kills worker `ordinal` at once, as a crash would (no checkpoint, no
    /// commit), and starts it again with the same identity, as the kubelet
    /// restarts a crashed pod: it restores the newest committed checkpoint.
    pub async fn crash_and_restart(&mut self, ordinal: i32) -> Result<(), LocalWorkerError> {
        let Some(rollout) = self.deployed.clone() else {
            return Ok(());
        };
        let index = usize::try_from(ordinal).unwrap_or(usize::MAX);
        if index >= self.running.len() {
            return Ok(());
        }
        let crashed = self.running.remove(index);
        crashed.kill();
        // A killed worker ends as killed; any error it ends with is the
        // crash itself.
        let _ = crashed.wait().await;
        let config = self.config(ordinal, &rollout)?;
        let handle = WorkerRuntime::start(config, CancellationToken::new())
            .await
            .map_err(|e| LocalWorkerError::Failed {
                ordinal,
                message: e.to_string(),
            })?;
        self.running.insert(index, handle);
        Ok(())
    }

    /// Stops every worker and waits for each.
    pub async fn stop_all(&mut self) -> Result<(), LocalWorkerError> {
        for handle in &self.running {
            handle.stop();
        }
        for (ordinal, handle) in std::mem::take(&mut self.running).into_iter().enumerate() {
            handle.wait().await.map_err(|e| LocalWorkerError::Failed {
                ordinal: i32::try_from(ordinal).unwrap_or(i32::MAX),
                message: e.to_string(),
            })?;
        }
        if let Some(deployed) = &mut self.deployed {
            deployed.replicas = 0;
        }
        Ok(())
    }

    fn config(&self, ordinal: i32, rollout: &Rollout) -> Result<WorkerConfig, LocalWorkerError> {
        let invalid = |message: String| LocalWorkerError::Config { ordinal, message };
        let restore_from: RestoreSource = rollout
            .restore_from
            .parse()
            .map_err(|e| invalid(format!("restore source {:?}: {e}", rollout.restore_from)))?;
        Ok(WorkerConfig {
            job_name: self.name.clone(),
            namespace: self.namespace.clone(),
            spec: self.spec.clone(),
            ordinal: u32::try_from(ordinal).map_err(|e| invalid(e.to_string()))?,
            parallelism: u32::try_from(rollout.parallelism).map_err(|e| invalid(e.to_string()))?,
            generation: u64::try_from(rollout.generation).map_err(|e| invalid(e.to_string()))?,
            restore_from,
            state_dir: self
                .state_root
                .join(format!("g{}-w{ordinal}", rollout.generation)),
            control_token: Some(self.token.clone()),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kafka_credentials_dir: None,
            max_records_per_second: self.capacity,
        })
    }
}

//! The scenarios of the kind suite (see `e2e/README.md`), one module each.
//!
//! `e2e/run.sh` runs them one at a time (`--test-threads=1`), in the order
//! of their names (libtest sorts tests by name): `g_uninstall` uninstalls
//! the operator, so it comes last. Every scenario but `a_ready` and
//! `e_invalid` applies a job of its own, with topics and a checkpoint
//! storage prefix of this run, so one can run alone (`e2e/run.sh b_burst`)
//! and again on a kept cluster. Without `WEIR_E2E=1` each returns at once.

mod a_ready;
mod b_burst;
mod c_idle;
mod d_failures;
mod e_invalid;
mod f_scale_upgrade;
mod g_uninstall;

use weir_crds::StreamingJob;
use weir_e2e::cluster::Cluster;
use weir_e2e::kafka::Kafka;
use weir_e2e::manifest::JobTopics;
use weir_e2e::wait::minutes;
use weir_e2e::{Settings, status};

/// What every scenario works with.
pub struct Harness {
    /// The cluster's addresses and images.
    pub settings: Settings,
    /// The Kubernetes API.
    pub cluster: Cluster,
    /// Kafka from the host.
    pub kafka: Kafka,
}

impl Harness {
    /// Connects to the cluster and to Kafka as `e2e/run.sh` set them up.
    pub async fn connect() -> anyhow::Result<Harness> {
        let settings = Settings::from_env();
        let cluster = Cluster::connect(&settings).await?;
        let kafka = Kafka::new(&settings.host_kafka);
        Ok(Harness {
            settings,
            cluster,
            kafka,
        })
    }

    /// Creates the topics of `job`, applies it (deleting a job of its name
    /// left by an earlier run) and waits until it is Ready with its
    /// workers.
    pub async fn start_job(&self, job: &StreamingJob) -> anyhow::Result<StreamingJob> {
        let topics = JobTopics::of(job)?;
        self.kafka.create_topics(&topics.with_partitions()).await?;
        self.cluster.apply_fresh_job(job).await?;
        let ready = self
            .cluster
            .wait_ready(job.metadata.name.as_deref().unwrap_or_default(), minutes(5))
            .await?;
        println!(
            "{} is Ready: {}",
            job.metadata.name.as_deref().unwrap_or_default(),
            status::describe(&ready)
        );
        Ok(ready)
    }

    /// Deletes the job `name` (at the end of a scenario that passed; a
    /// failed one leaves its job for e2e/run.sh to collect).
    pub async fn finish(&self, name: &str) -> anyhow::Result<()> {
        self.cluster.delete_job(name, minutes(5)).await
    }

    /// Fails unless the Events of the job `name` include every one of
    /// `reasons`.
    pub async fn expect_events(&self, name: &str, reasons: &[&str]) -> anyhow::Result<()> {
        let recorded = self.cluster.job_event_reasons(name).await?;
        let missing: Vec<&&str> = reasons
            .iter()
            .filter(|reason| !recorded.iter().any(|r| r == *reason))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "StreamingJob {name} has no Event with reason {missing:?}; its Events: {recorded:?}"
        );
        Ok(())
    }
}

//! The StreamingJobs the scenarios apply: `config/samples/clickstream-counts.yaml`
//! rewritten for the kind cluster (its Kafka, its MinIO bucket, topics of
//! the scenario's own, workers small enough for one kind node), with the
//! settings a scenario changes on top.

use serde_json::{Value, json};
use weir_crds::StreamingJob;

use crate::{BUCKET, CLUSTER_KAFKA, JOBS_NAMESPACE, S3_CREDENTIALS_SECRET, run_id};

/// The sample every scenario's job is derived from.
pub const SAMPLE: &str = include_str!("../../config/samples/clickstream-counts.yaml");

/// The sample's name.
pub const SAMPLE_NAME: &str = "clickstream-counts";

/// The sample's own checkpoint storage (the bucket `e2e/run.sh` creates).
pub const SAMPLE_STORAGE: &str = "s3://weir-state/analytics";

/// Partitions of a scenario's source topic (the sample's `clicks` has as
/// many): at most 12 workers, and 1, 2, 3, 4, 6 or 12 spread them evenly.
pub const SOURCE_PARTITIONS: i32 = 12;

/// The Kafka topics of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTopics {
    /// The source topic (the generator's events).
    pub source: String,
    /// The sink topic (one record per user and minute).
    pub sink: String,
    /// Records that fail to decode or evaluate.
    pub dead_letter: String,
    /// Events later than the allowed lateness.
    pub late: String,
}

impl JobTopics {
    /// The sample's own topics, which `e2e/run.sh` creates.
    pub fn sample() -> JobTopics {
        JobTopics {
            source: "clicks".to_owned(),
            sink: "clicks-per-user-minute".to_owned(),
            dead_letter: "clicks-dead-letter".to_owned(),
            late: "clicks-late".to_owned(),
        }
    }

    /// Topics of the job `job` alone, in this run ([`run_id`]): a scenario
    /// run again on a kept cluster starts with empty topics.
    pub fn unique(job: &str) -> JobTopics {
        let topic = |role: &str| format!("{job}.{}.{role}", run_id());
        JobTopics {
            source: topic("clicks"),
            sink: topic("per-user-minute"),
            dead_letter: topic("dead-letter"),
            late: topic("late"),
        }
    }

    /// The topics `job` reads and writes.
    pub fn of(job: &StreamingJob) -> anyhow::Result<JobTopics> {
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let missing = |what: &str| anyhow::anyhow!("StreamingJob {name} has no {what} topic");
        Ok(JobTopics {
            source: job
                .spec
                .source
                .topics
                .first()
                .cloned()
                .ok_or_else(|| missing("source"))?,
            sink: job.spec.sink.topic.clone(),
            dead_letter: job
                .spec
                .dead_letter
                .as_ref()
                .map(|topic| topic.topic.clone())
                .ok_or_else(|| missing("dead-letter"))?,
            late: job
                .spec
                .late_data
                .as_ref()
                .map(|topic| topic.topic.clone())
                .ok_or_else(|| missing("late-data"))?,
        })
    }

    /// Every topic with its partition count.
    pub fn with_partitions(&self) -> Vec<(String, i32)> {
        vec![
            (self.source.clone(), SOURCE_PARTITIONS),
            (self.sink.clone(), SOURCE_PARTITIONS),
            (self.dead_letter.clone(), 1),
            (self.late.clone(), 1),
        ]
    }
}

/// Checkpoint storage of this run alone: a job that has the name of a
/// job of an earlier run on a kept cluster finds none of its checkpoints.
pub fn unique_storage() -> String {
    format!("s3://{BUCKET}/e2e-{}", run_id())
}

/// A StreamingJob manifest being prepared, as a JSON document.
#[derive(Clone, Debug)]
pub struct JobManifest {
    document: Value,
}

impl JobManifest {
    /// The sample, named `name` in the jobs' namespace, rewritten for the
    /// cluster: its Kafka ([`CLUSTER_KAFKA`]), the `topics`, checkpoints in
    /// `storage` with the MinIO credentials ([`S3_CREDENTIALS_SECRET`]),
    /// reading from the earliest offsets, and workers of 256 MiB and a
    /// quarter of a CPU (a 32 MiB block cache).
    pub fn sample_for_cluster(
        name: &str,
        topics: &JobTopics,
        storage: &str,
    ) -> anyhow::Result<JobManifest> {
        let document: Value = serde_yaml::from_str(SAMPLE)
            .map_err(|e| anyhow::anyhow!("config/samples/clickstream-counts.yaml: {e}"))?;
        let manifest = JobManifest { document }
            .set("metadata.name", json!(name))
            .set("metadata.namespace", json!(JOBS_NAMESPACE))
            .set("spec.kafka.bootstrapServers", json!(CLUSTER_KAFKA))
            .set("spec.source.topics", json!([topics.source]))
            .set("spec.source.startingOffsets", json!("earliest"))
            .set("spec.sink.topic", json!(topics.sink))
            .set("spec.deadLetter.topic", json!(topics.dead_letter))
            .set("spec.lateData.topic", json!(topics.late))
            .set("spec.checkpoint.storage", json!(storage))
            .set(
                "spec.checkpoint.credentialsSecret",
                json!({"name": S3_CREDENTIALS_SECRET}),
            )
            .set(
                "spec.resources",
                json!({
                    "requests": {"cpu": "50m", "memory": "256Mi"},
                    "limits": {"cpu": "250m", "memory": "512Mi"},
                }),
            )
            .set("spec.state.blockCacheSize", json!("32Mi"));
        Ok(manifest)
    }

    /// The job of scenario `name`, with topics and storage of its own, and
    /// without partition idleness, so that its output can be compared with
    /// the model (see [`JobManifest::without_idle_partitions`]).
    pub fn scenario(name: &str) -> anyhow::Result<JobManifest> {
        let manifest =
            JobManifest::sample_for_cluster(name, &JobTopics::unique(name), &unique_storage())?;
        Ok(manifest.without_idle_partitions())
    }

    /// Partitions never turn idle (`watermark.idleTimeout: 0s`). An idle
    /// partition stops holding the watermark back after a span of
    /// processing time, which fires windows that the model (fed the events
    /// one after the other, with no clock) never fires; without idleness
    /// both fire a window once every partition's events have passed it.
    pub fn without_idle_partitions(self) -> JobManifest {
        self.set("spec.source.watermark.idleTimeout", json!("0s"))
    }

    /// The autoscaler between `min` and `max` workers, with its windows
    /// shortened to fit a test (30s metrics window and scale-up cooldown,
    /// 1m catch-up and scale-down stabilization) and aiming at 5% of a
    /// worker's capacity, so that a load a kind node can produce needs
    /// several workers of a quarter CPU each.
    pub fn autoscaled(self, min: i32, max: i32) -> JobManifest {
        self.set(
            "spec.autoscaler",
            json!({
                "minParallelism": min,
                "maxParallelism": max,
                "targetUtilization": 0.05,
                "catchUpDuration": "1m",
                "metricsWindow": "30s",
                "scaleUpCooldown": "30s",
                "scaleDownStabilizationWindow": "1m",
                "lagThreshold": 2000,
            }),
        )
    }

    /// No autoscaler: the parallelism is `spec.parallelism` alone.
    pub fn fixed_parallelism(self, parallelism: i32) -> JobManifest {
        self.remove("spec.autoscaler")
            .set("spec.parallelism", json!(parallelism))
    }

    /// Sets the field at the dotted `path` (objects on the way are created).
    pub fn set(mut self, path: &str, value: Value) -> JobManifest {
        let mut node = &mut self.document;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if !node.is_object() {
                *node = json!({});
            }
            let Some(object) = node.as_object_mut() else {
                break;
            };
            if parts.peek().is_none() {
                object.insert(part.to_owned(), value);
                break;
            }
            node = object.entry(part.to_owned()).or_insert_with(|| json!({}));
        }
        self
    }

    /// Removes the field at the dotted `path`, if present.
    pub fn remove(mut self, path: &str) -> JobManifest {
        if let Some((parent, field)) = path.rsplit_once('.') {
            let pointer = format!("/{}", parent.replace('.', "/"));
            if let Some(object) = self
                .document
                .pointer_mut(&pointer)
                .and_then(Value::as_object_mut)
            {
                object.remove(field);
            }
        }
        self
    }

    /// The StreamingJob, with every default applied as the API types apply
    /// them.
    pub fn build(&self) -> anyhow::Result<StreamingJob> {
        serde_json::from_value(self.document.clone())
            .map_err(|e| anyhow::anyhow!("the scenario's StreamingJob does not parse: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_rewritten_for_the_cluster() {
        let topics = JobTopics::unique("e2e-test");
        let job = JobManifest::sample_for_cluster("e2e-test", &topics, "s3://weir-state/x")
            .unwrap()
            .autoscaled(1, 4)
            .without_idle_partitions()
            .build()
            .unwrap();
        assert_eq!(job.metadata.namespace.as_deref(), Some(JOBS_NAMESPACE));
        assert_eq!(job.spec.kafka.bootstrap_servers, CLUSTER_KAFKA);
        assert_eq!(job.spec.source.topics, vec![topics.source.clone()]);
        assert_eq!(job.spec.sink.topic, topics.sink);
        assert_eq!(JobTopics::of(&job).unwrap(), topics);
        assert_eq!(job.spec.checkpoint.storage, "s3://weir-state/x");
        let autoscaler = job.spec.autoscaler.unwrap();
        assert_eq!(
            (autoscaler.min_parallelism, autoscaler.max_parallelism),
            (1, Some(4))
        );
        assert_eq!(job.spec.source.watermark.idle_timeout.as_millis(), 0);
        assert_eq!(
            job.spec
                .checkpoint
                .credentials_secret
                .map(|secret| secret.name),
            Some(S3_CREDENTIALS_SECRET.to_owned())
        );
    }

    #[test]
    fn a_fixed_parallelism_has_no_autoscaler() {
        let job = JobManifest::scenario("e2e-fixed")
            .unwrap()
            .fixed_parallelism(2)
            .build()
            .unwrap();
        assert!(job.spec.autoscaler.is_none());
        assert_eq!(job.spec.parallelism, 2);
    }

    #[test]
    fn the_sample_keeps_its_own_topics_and_storage() {
        let job =
            JobManifest::sample_for_cluster(SAMPLE_NAME, &JobTopics::sample(), SAMPLE_STORAGE)
                .unwrap()
                .build()
                .unwrap();
        assert_eq!(job.spec.source.topics, vec!["clicks".to_owned()]);
        assert_eq!(job.spec.checkpoint.storage, SAMPLE_STORAGE);
    }
}

//! The load generator: `weir generate` (the operator image) as a Kubernetes
//! Job in the jobs' namespace, producing a StreamingJob's generated events
//! to its source topic at the rate of a profile, with the job's manifest
//! mounted from a ConfigMap at `/job/job.yaml`.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use weir_crds::StreamingJob;

use crate::cluster::Cluster;
use crate::wait::{self, Check};
use crate::{CLUSTER_KAFKA, JOBS_NAMESPACE, Settings};

/// Label of the load generators' Jobs, ConfigMaps and pods.
pub const LOAD_LABEL: &str = "app.kubernetes.io/name";
/// Its value.
pub const LOAD_APP: &str = "weir-e2e-load";

/// A load generator started in the cluster.
#[derive(Clone, Debug)]
pub struct LoadGenerator {
    name: String,
    profile: String,
}

impl LoadGenerator {
    /// Starts producing the events of `job` at `profile` (`RATE:DURATION,...`)
    /// drawn with `seed`; a generator of the same name left by an earlier
    /// run is deleted first. The name is `<job>-load-<seed>`.
    pub async fn start(
        cluster: &Cluster,
        settings: &Settings,
        job: &StreamingJob,
        profile: &str,
        seed: u64,
    ) -> anyhow::Result<LoadGenerator> {
        let name = format!("{}-load-{seed}", job.name_any());
        let generator = LoadGenerator {
            name,
            profile: profile.to_owned(),
        };
        generator.delete(cluster).await?;
        let manifest = serde_yaml::to_string(job).context("cannot render the job manifest")?;
        let labels = json!({ LOAD_LABEL: LOAD_APP });
        let config_map: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator.name, "labels": labels},
            "data": {"job.yaml": manifest},
        }))
        .context("cannot build the load generator's ConfigMap")?;
        let seed = seed.to_string();
        let batch_job: Job = serde_json::from_value(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": generator.name, "labels": labels},
            "spec": {
                // A second attempt would produce the profile twice.
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": 65532,
                            "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "generate",
                            "image": settings.operator_image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [
                                "generate", "/job/job.yaml",
                                "--kafka", CLUSTER_KAFKA,
                                "--profile", profile,
                                "--seed", seed,
                            ],
                            "resources": {
                                "requests": {"cpu": "200m", "memory": "64Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "job", "mountPath": "/job", "readOnly": true}],
                        }],
                        "volumes": [{"name": "job", "configMap": {"name": generator.name}}],
                    },
                },
            },
        }))
        .context("cannot build the load generator's Job")?;
        let client = cluster.client();
        Api::<ConfigMap>::namespaced(client.clone(), JOBS_NAMESPACE)
            .create(&PostParams::default(), &config_map)
            .await
            .with_context(|| format!("cannot create ConfigMap {}", generator.name))?;
        Api::<Job>::namespaced(client, JOBS_NAMESPACE)
            .create(&PostParams::default(), &batch_job)
            .await
            .with_context(|| format!("cannot create Job {}", generator.name))?;
        println!(
            "load generator {} started: {profile} to {}",
            generator.name,
            job.spec.source.topics.join(",")
        );
        Ok(generator)
    }

    /// Waits until the generator exits 0 and returns the events it
    /// produced (from its `produced N events to TOPIC` line). Fails with its
    /// logs when it fails.
    pub async fn wait_done(&self, cluster: &Cluster, timeout: Duration) -> anyhow::Result<u64> {
        let jobs: Api<Job> = Api::namespaced(cluster.client(), JOBS_NAMESPACE);
        let what = format!("load generator {} ({}) to finish", self.name, self.profile);
        let name = self.name.as_str();
        wait::until(&what, timeout, move || {
            let jobs = jobs.clone();
            async move {
                let job = jobs
                    .get(name)
                    .await
                    .with_context(|| format!("cannot read Job {name}"))?;
                let status = job.status.unwrap_or_default();
                if status.failed.unwrap_or(0) > 0 {
                    let logs = self
                        .logs(cluster)
                        .await
                        .unwrap_or_else(|e| format!("{e:#}"));
                    anyhow::bail!("load generator {name} failed; its logs:\n{logs}");
                }
                Ok(if status.succeeded.unwrap_or(0) > 0 {
                    Check::Done(())
                } else {
                    Check::Waiting(format!("{} pod(s) active", status.active.unwrap_or(0)))
                })
            }
        })
        .await?;
        let logs = self.logs(cluster).await?;
        produced_events(&logs).with_context(|| {
            format!("load generator {name} succeeded without a `produced N events` line:\n{logs}")
        })
    }

    async fn logs(&self, cluster: &Cluster) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(cluster.client(), JOBS_NAMESPACE);
        let selector = format!("batch.kubernetes.io/job-name={}", self.name);
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("cannot list the pods of Job {}", self.name))?;
        let mut logs = String::new();
        for pod in list.items {
            logs.push_str(&cluster.pod_logs(JOBS_NAMESPACE, &pod.name_any()).await?);
        }
        Ok(logs)
    }

    /// Deletes the generator's Job (with its pods) and ConfigMap, if they
    /// exist, and waits until the Job is gone.
    pub async fn delete(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let client = cluster.client();
        let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
        let config_maps: Api<ConfigMap> = Api::namespaced(client, JOBS_NAMESPACE);
        gone(jobs.delete(&self.name, &DeleteParams::foreground()).await)
            .with_context(|| format!("cannot delete Job {}", self.name))?;
        gone(
            config_maps
                .delete(&self.name, &DeleteParams::default())
                .await,
        )
        .with_context(|| format!("cannot delete ConfigMap {}", self.name))?;
        let what = format!("Job {} to be deleted", self.name);
        let name = self.name.as_str();
        wait::until(&what, wait::minutes(2), move || {
            let jobs = jobs.clone();
            async move {
                Ok(match jobs.get_opt(name).await? {
                    None => Check::Done(()),
                    Some(_) => Check::Waiting("still there".to_owned()),
                })
            }
        })
        .await
    }
}

/// `result` of a delete, with "not found" as success.
fn gone<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The event count of `weir generate`'s `produced N events to TOPIC` line.
pub fn produced_events(logs: &str) -> Option<u64> {
    logs.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("produced ")?;
        let (count, after) = rest.split_once(' ')?;
        after
            .starts_with("events to ")
            .then(|| count.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_count_is_read_from_the_generators_last_line() {
        let logs = "connecting\nproduced 360000 events to clicks (12 partitions)\n";
        assert_eq!(produced_events(logs), Some(360_000));
        assert_eq!(produced_events("produced many events to clicks"), None);
        assert_eq!(produced_events("nothing"), None);
    }
}

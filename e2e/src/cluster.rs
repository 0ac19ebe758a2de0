//! The kind cluster through the Kubernetes API: StreamingJobs (apply,
//! patch, scale, delete), their worker pods and Events, the operator's pods
//! and leader Lease, and the waits the scenarios share.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use weir_crds::StreamingJob;
use weir_operator::builders::selector_string;
use weir_operator::rbac::DEFAULT_LEASE_NAME;
use weir_operator::status::READY;

use crate::status;
use crate::wait::{self, Check};
use crate::{JOBS_NAMESPACE, OPERATOR_NAMESPACE, RELEASE, Settings};

/// Field manager of what the scenarios apply.
pub const FIELD_MANAGER: &str = "weir-e2e";

/// Labels selecting the operator's pods (the chart's selector labels).
pub fn operator_selector() -> String {
    format!("app.kubernetes.io/name=weir-operator,app.kubernetes.io/instance={RELEASE}")
}

/// A client of the kind cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

impl Cluster {
    /// Connects through the kubeconfig context of [`Settings::context`].
    pub async fn connect(settings: &Settings) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: Some(settings.context.clone()),
            ..KubeConfigOptions::default()
        };
        let config = Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("no usable kubeconfig context {}", settings.context))?;
        let client = Client::try_from(config).context("cannot create the Kubernetes client")?;
        Ok(Cluster { client })
    }

    /// The client, for APIs this module does not wrap.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// StreamingJobs of the jobs' namespace.
    pub fn jobs(&self) -> Api<StreamingJob> {
        Api::namespaced(self.client.clone(), JOBS_NAMESPACE)
    }

    /// Applies `job` (server-side apply, field manager [`FIELD_MANAGER`]).
    pub async fn apply_job(&self, job: &StreamingJob) -> anyhow::Result<StreamingJob> {
        let name = job.name_any();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.jobs()
            .patch(&name, &params, &Patch::Apply(job))
            .await
            .with_context(|| format!("cannot apply StreamingJob {JOBS_NAMESPACE}/{name}"))
    }

    /// Deletes a job of the name of `job` left by an earlier run, then
    /// applies `job`: a scenario starts from a job of its own.
    pub async fn apply_fresh_job(&self, job: &StreamingJob) -> anyhow::Result<StreamingJob> {
        self.delete_job(&job.name_any(), wait::minutes(5)).await?;
        self.apply_job(job).await
    }

    /// The job `name`.
    pub async fn job(&self, name: &str) -> anyhow::Result<StreamingJob> {
        self.jobs()
            .get(name)
            .await
            .with_context(|| format!("cannot read StreamingJob {JOBS_NAMESPACE}/{name}"))
    }

    /// Merge-patches the job `name` with `patch` (as `kubectl patch --type
    /// merge` does).
    pub async fn patch_job(
        &self,
        name: &str,
        patch: serde_json::Value,
    ) -> anyhow::Result<StreamingJob> {
        self.jobs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| {
                format!("cannot patch StreamingJob {JOBS_NAMESPACE}/{name} with {patch}")
            })
    }

    /// Sets the replicas of the job's scale subresource, as
    /// `kubectl scale sj/NAME --replicas=N` does.
    pub async fn scale_job(&self, name: &str, replicas: i32) -> anyhow::Result<()> {
        let patch = json!({"spec": {"replicas": replicas}});
        self.jobs()
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| {
                format!("cannot scale StreamingJob {JOBS_NAMESPACE}/{name} to {replicas}")
            })?;
        Ok(())
    }

    /// Deletes the job `name` (if it exists) and waits until it is gone,
    /// its finalizer done.
    pub async fn delete_job(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let jobs = self.jobs();
        match jobs.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot delete StreamingJob {JOBS_NAMESPACE}/{name}")
                });
            }
        }
        let what = format!("StreamingJob {JOBS_NAMESPACE}/{name} to be deleted");
        wait::until(&what, timeout, move || {
            let jobs = jobs.clone();
            async move {
                Ok(match jobs.get_opt(name).await? {
                    None => Check::Done(()),
                    Some(job) => Check::Waiting(format!(
                        "still there with finalizers {:?}; {}",
                        job.finalizers(),
                        status::describe(&job)
                    )),
                })
            }
        })
        .await
    }

    /// Every StreamingJob of the jobs' namespace, by name.
    pub async fn job_names(&self) -> anyhow::Result<Vec<String>> {
        let jobs = self
            .jobs()
            .list(&ListParams::default())
            .await
            .context("cannot list the StreamingJobs")?;
        Ok(jobs.items.iter().map(ResourceExt::name_any).collect())
    }

    /// The worker pods of the job `name` (by the operator's selector
    /// labels), sorted by name.
    pub async fn worker_pods(&self, name: &str) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), JOBS_NAMESPACE);
        let mut list = pods
            .list(&ListParams::default().labels(&selector_string(name)))
            .await
            .with_context(|| format!("cannot list the worker pods of {name}"))?
            .items;
        list.sort_by_key(ResourceExt::name_any);
        Ok(list)
    }

    /// Waits until the job `name` has no worker pod left.
    pub async fn wait_no_worker_pods(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("the worker pods of {name} to be gone");
        wait::until(&what, timeout, move || async move {
            let pods = self.worker_pods(name).await?;
            Ok(if pods.is_empty() {
                Check::Done(())
            } else {
                let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
                Check::Waiting(format!("pods {names:?}"))
            })
        })
        .await
    }

    /// The StatefulSet of the job `name`, if any.
    pub async fn stateful_set(&self, name: &str) -> anyhow::Result<Option<StatefulSet>> {
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), JOBS_NAMESPACE);
        sets.get_opt(name)
            .await
            .with_context(|| format!("cannot read StatefulSet {JOBS_NAMESPACE}/{name}"))
    }

    /// Deletes the pod `name` of `namespace` (as `kubectl delete pod`).
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("cannot delete pod {namespace}/{name}"))?;
        Ok(())
    }

    /// The logs of the pod `name` of `namespace`.
    pub async fn pod_logs(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.logs(name, &LogParams::default())
            .await
            .with_context(|| format!("cannot read the logs of pod {namespace}/{name}"))
    }

    /// The Events about the job `name` (what `kubectl describe sj` lists).
    pub async fn job_events(&self, name: &str) -> anyhow::Result<Vec<Event>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), JOBS_NAMESPACE);
        let selector = format!("involvedObject.kind=StreamingJob,involvedObject.name={name}");
        Ok(events
            .list(&ListParams::default().fields(&selector))
            .await
            .with_context(|| format!("cannot list the Events of {name}"))?
            .items)
    }

    /// The reasons of the Events about the job `name`.
    pub async fn job_event_reasons(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .job_events(name)
            .await?
            .into_iter()
            .filter_map(|event| event.reason)
            .collect())
    }

    /// The operator pods of the release, sorted by name.
    pub async fn operator_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let mut list = pods
            .list(&ListParams::default().labels(&operator_selector()))
            .await
            .context("cannot list the operator pods")?
            .items;
        list.sort_by_key(ResourceExt::name_any);
        Ok(list)
    }

    /// The operator's leader-election Lease, if it exists.
    pub async fn operator_lease(&self) -> anyhow::Result<Option<Lease>> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        leases
            .get_opt(DEFAULT_LEASE_NAME)
            .await
            .with_context(|| format!("cannot read Lease {OPERATOR_NAMESPACE}/{DEFAULT_LEASE_NAME}"))
    }

    /// The pod that holds the operator's Lease (the leading replica).
    pub async fn operator_leader(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .operator_lease()
            .await?
            .and_then(|lease| lease.spec?.holder_identity))
    }

    /// Waits until the job `name` runs: Ready=True for its current spec, no
    /// operation in flight, and exactly `status.parallelism` worker pods,
    /// each ready and none terminating. Returns the job as it was then.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> anyhow::Result<StreamingJob> {
        let what = format!("StreamingJob {JOBS_NAMESPACE}/{name} to be Ready");
        wait::until(&what, timeout, move || async move {
            let job = self.job(name).await?;
            if !status::condition_is_true(&job, READY) || status::operation(&job).is_some() {
                return Ok(Check::Waiting(status::describe(&job)));
            }
            let pods = self.worker_pods(name).await?;
            let running = pods.iter().filter(|pod| pod_is_serving(pod)).count();
            let wanted = status::parallelism(&job);
            if running == pods.len() && i32::try_from(running).ok() == Some(wanted) {
                Ok(Check::Done(job))
            } else {
                Ok(Check::Waiting(format!(
                    "{}; {running} of {} worker pods ready (want {wanted})",
                    status::describe(&job),
                    pods.len()
                )))
            }
        })
        .await
    }

    /// Waits until `found` finds something in the job `name` (returning it),
    /// describing the job while it does not.
    pub async fn wait_for_job<T>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        found: impl Fn(&StreamingJob) -> Option<T>,
    ) -> anyhow::Result<T> {
        let what = format!("StreamingJob {JOBS_NAMESPACE}/{name}: {what}");
        let found = &found;
        wait::until(&what, timeout, move || async move {
            let job = self.job(name).await?;
            Ok(match found(&job) {
                Some(value) => Check::Done(value),
                None => Check::Waiting(format!(
                    "{}; scaling {}",
                    status::describe(&job),
                    status::describe_scaling(&status::scaling_history(&job))
                )),
            })
        })
        .await
    }

    /// Creates `job` as it is, returning the API server's answer untouched
    /// (for a request it must refuse).
    pub async fn create_job(&self, job: &StreamingJob) -> Result<StreamingJob, kube::Error> {
        self.jobs().create(&PostParams::default(), job).await
    }
}

/// Whether `pod` is ready and not being deleted.
pub fn pod_is_serving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// The images of `pod`'s containers.
pub fn pod_images(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .filter_map(|container| container.image.clone())
        .collect()
}

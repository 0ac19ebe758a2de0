//! `weir operator`: wires the reconciler into kube's Controller, behind
//! leader election, next to the metrics server.
//!
//! StreamingJobs are watched as untyped objects ([`DynamicObject`]) and
//! decoded one by one before they are reconciled: a typed watcher fails its
//! whole list when one object does not decode (a field from a newer CRD, a
//! wrong type), which would stop the reconciliation of every job. A job
//! that does not decode is left alone, reported in its conditions
//! (Stalled, Degraded, reason `InvalidObject`) and with a Warning event.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_crds::StreamingJob;

use crate::backoff::Backoff;
use crate::builders::{self, MANAGER, Settings};
use crate::control::{HttpWorkerControl, WorkerControl};
use crate::error::Error;
use crate::lag::kafka::KafkaLagSource;
use crate::lag::sampler::{SAMPLE_INTERVAL, Sampler};
use crate::leader::{Elector, Timing};
use crate::metrics::{self, Metrics, MetricsError};
use crate::reconciler::{self, Context};
use crate::status;

/// How `weir operator` runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespaces to watch; empty: every namespace.
    pub namespaces: Vec<String>,
    /// Worker image of jobs that do not name one.
    pub worker_image: String,
    /// Address of the `/metrics` and `/healthz` endpoint.
    pub metrics_addr: SocketAddr,
    /// Whether to elect a leader (off for a single replica or local runs).
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub lease_namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Resolves once `leading` turns false (or its sender is gone).
async fn leadership_lost(mut leading: watch::Receiver<bool>) {
    loop {
        if !*leading.borrow_and_update() {
            return;
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the controller for one namespace (or all) until a signal or the loss
/// of leadership.
async fn run_controller(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    leading: watch::Receiver<bool>,
) {
    let ns = namespace.as_deref();
    // Only the operator's own children are watched.
    let children =
        watcher::Config::default().labels(&format!("{}={MANAGER}", builders::LABEL_MANAGED_BY));
    let resource = job_resource();
    let jobs = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    Controller::new_with(jobs, watcher::Config::default(), resource)
        .owns(api::<StatefulSet>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), children)
        .shutdown_on_signal()
        .graceful_shutdown_on(leadership_lost(leading))
        .run(reconcile_object, object_error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((job, _)) => tracing::debug!(%job, "reconciled"),
                Err(error) => tracing::warn!(%error, "controller error"),
            }
        })
        .await;
}

/// The StreamingJob resource, for untyped access.
fn job_resource() -> ApiResource {
    ApiResource::erase::<StreamingJob>(&())
}

/// Event and condition reason of a StreamingJob the operator cannot decode.
pub const INVALID_OBJECT: &str = "InvalidObject";

/// Decodes a watched object as a StreamingJob.
pub fn decode(object: &DynamicObject) -> Result<StreamingJob, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    // List items come without their type.
    value["apiVersion"] = StreamingJob::api_version(&()).into();
    value["kind"] = StreamingJob::kind(&()).into();
    serde_json::from_value(value)
}

/// Reconciles a watched object: a StreamingJob that decodes goes to
/// [`reconciler::reconcile`]; one that does not is reported
/// ([`report_undecodable`]) and otherwise left alone.
pub async fn reconcile_object(
    object: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match decode(&object) {
        Ok(job) => reconciler::reconcile(Arc::new(job), ctx).await,
        Err(error) => report_undecodable(&object, &error.to_string(), &ctx).await,
    }
}

/// The error policy of [`reconcile_object`]: [`reconciler::error_policy`]'s
/// backoff per job.
fn object_error_policy(object: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    reconciler::retry_after(&key, error, &ctx)
}

/// Reports a StreamingJob that does not decode (`error`): logged, and, when
/// its conditions do not say so yet, Stalled and Degraded with reason
/// [`INVALID_OBJECT`] (a merge patch of the status conditions, which
/// leaves the rest of the status, the operation in flight included, as it
/// is) and a Warning event. Nothing else is touched: its workers run on
/// unmanaged until the object is fixed or the operator upgraded.
pub async fn report_undecodable(
    object: &DynamicObject,
    error: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    tracing::error!(job = %format!("{namespace}/{name}"), %error, "cannot decode StreamingJob; leaving it alone");
    let message = format!(
        "the operator cannot read this StreamingJob ({error}); it is left alone, its workers run on unmanaged, until the object is fixed or the operator is upgraded to a version that knows its fields"
    );
    let previous: Vec<Condition> = object
        .data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let generation = object.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = status::unreadable(&previous, generation, INVALID_OBJECT, &message, &now);
    if status::same_conditions(&previous, &conditions) {
        return Ok(Action::await_change());
    }
    let resource = job_resource();
    let jobs: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let patch = serde_json::json!({
        "status": {"conditions": conditions, "observedGeneration": generation}
    });
    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(reconciler::kube_error(
            "patch status",
            "StreamingJob",
            &namespace,
            &name,
        ))?;
    let event = Event {
        type_: EventType::Warning,
        reason: INVALID_OBJECT.to_owned(),
        note: Some(crate::events::truncate_note(&message)),
        action: "Decode".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &object.object_ref(&resource))
        .await
    {
        tracing::warn!(%error, "cannot publish event");
    }
    Ok(Action::await_change())
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Resolves when the metrics server stops, with why: it serves until the
/// process ends, so any return is a failure the operator must not outlive
/// (its `/healthz` would be gone).
async fn server_stopped(server: &mut JoinHandle<Result<(), MetricsError>>) -> anyhow::Error {
    match server.await {
        Ok(Ok(())) => anyhow!("the metrics server stopped"),
        Ok(Err(error)) => anyhow::Error::new(error).context("the metrics server failed"),
        Err(error) => anyhow::Error::new(error).context("the metrics server task failed"),
    }
}

/// Runs the operator until SIGTERM or Ctrl-C. Returns an error when this
/// replica loses leadership, so that it restarts as a standby, or when the
/// metrics server fails.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;
    let metrics = Arc::new(Metrics::new()?);
    let workers: Arc<dyn WorkerControl> =
        Arc::new(HttpWorkerControl::new().context("cannot build the workers' HTTP client")?);
    let listener = metrics::bind(config.metrics_addr).await?;
    let mut server = tokio::spawn(metrics::serve(listener, metrics.clone()));

    if !config.leader_election {
        metrics.set_leader(true);
        let (_always, leading) = watch::channel(true);
        tokio::select! {
            () = run_all(&client, &config, &metrics, &workers, leading) => {}
            error = server_stopped(&mut server) => return Err(error),
        }
        server.abort();
        return Ok(());
    }

    let elector = Arc::new(Elector::new(
        Api::<Lease>::namespaced(client.clone(), &config.lease_namespace),
        &config.lease_name,
        &config.identity,
        Timing::default(),
    ));
    let (leading_tx, mut leading) = watch::channel(false);
    let campaign = tokio::spawn({
        let elector = elector.clone();
        async move { elector.run(leading_tx).await }
    });
    tracing::info!(lease = %config.lease_name, identity = %config.identity, "waiting for leadership");
    tokio::select! {
        result = leading.wait_for(|l| *l) => { result.context("leader election stopped")?; }
        () = shutdown_signal() => {
            campaign.abort();
            server.abort();
            return Ok(());
        }
        error = server_stopped(&mut server) => {
            campaign.abort();
            return Err(error);
        }
    }
    tracing::info!(identity = %config.identity, "leading");
    metrics.set_leader(true);
    let failure = tokio::select! {
        () = run_all(&client, &config, &metrics, &workers, leading.clone()) => None,
        error = server_stopped(&mut server) => Some(error),
    };
    metrics.set_leader(false);
    campaign.abort();
    server.abort();
    if !*leading.borrow() {
        bail!("lost the leader lease {}", config.lease_name);
    }
    if let Err(error) = elector.release().await {
        tracing::warn!(%error, "cannot release the leader lease");
    }
    failure.map_or(Ok(()), Err)
}

async fn run_all(
    client: &Client,
    config: &Config,
    metrics: &Arc<Metrics>,
    workers: &Arc<dyn WorkerControl>,
    leading: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: Some(config.identity.clone()),
            },
        ),
        settings: Settings {
            worker_image: config.worker_image.clone(),
        },
        metrics: metrics.clone(),
        backoff: Backoff::default(),
        workers: workers.clone(),
        sampler: Some(Arc::new(Sampler::new(
            Arc::new(KafkaLagSource::default()),
            SAMPLE_INTERVAL,
        ))),
    });
    let namespaces: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| run_controller(client.clone(), ns, ctx.clone(), leading.clone())),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use http::{Request, Response};
    use kube::api::ObjectList;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    use super::*;
    use crate::control::FakeWorkers;
    use crate::testing::sample_job;

    /// The sample job, and the same with a field from a newer CRD.
    fn good_and_newer() -> (Value, Value) {
        let good = serde_json::to_value(sample_job()).unwrap();
        let mut newer = good.clone();
        newer["metadata"]["name"] = json!("newer");
        newer["spec"]["fromTheFuture"] = json!(true);
        (good, newer)
    }

    #[test]
    fn one_undecodable_job_does_not_fail_the_whole_list() {
        let (good, newer) = good_and_newer();
        let list = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamingJobList",
                          "metadata": {}, "items": [good, newer]});
        assert!(
            serde_json::from_value::<ObjectList<StreamingJob>>(list.clone()).is_err(),
            "a typed list fails as a whole"
        );
        let objects: ObjectList<DynamicObject> = serde_json::from_value(list).unwrap();
        let decoded: Vec<_> = objects.items.iter().map(decode).collect();
        assert_eq!(decoded[0].as_ref().unwrap().spec, sample_job().spec);
        let error = decoded[1].as_ref().unwrap_err().to_string();
        assert!(error.contains("fromTheFuture"), "{error}");
    }

    fn context(client: Client) -> Context {
        Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: MANAGER.to_owned(),
                    instance: None,
                },
            ),
            client,
            settings: Settings {
                worker_image: "weir-worker:test".to_owned(),
            },
            metrics: Arc::new(Metrics::new().unwrap()),
            backoff: Backoff::default(),
            workers: Arc::new(FakeWorkers::default()),
            sampler: None,
        }
    }

    #[tokio::test]
    async fn an_undecodable_job_is_reported_in_its_conditions_and_an_event() {
        let (_, newer) = good_and_newer();
        let object: DynamicObject = serde_json::from_value(newer).unwrap();
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = pin!(handle);
            let (request, send) = handle.next_request().await.expect("a status patch");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/weir.dev/v1alpha1/namespaces/streams/streamingjobs/newer/status"
            );
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let conditions = body["status"]["conditions"].as_array().unwrap().clone();
            let stalled = conditions.iter().find(|c| c["type"] == "Stalled").unwrap();
            assert_eq!(stalled["status"], "True", "{body}");
            assert_eq!(stalled["reason"], INVALID_OBJECT, "{body}");
            assert!(
                stalled["message"]
                    .as_str()
                    .unwrap()
                    .contains("fromTheFuture")
            );
            assert_eq!(body["status"]["observedGeneration"], 1, "{body}");
            assert!(body["status"].get("operation").is_none(), "only conditions");
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
            let (request, send) = handle.next_request().await.expect("an event");
            assert_eq!(
                request.uri().path(),
                "/apis/events.k8s.io/v1/namespaces/streams/events"
            );
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let event: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(event["type"], "Warning", "{event}");
            assert_eq!(event["reason"], INVALID_OBJECT, "{event}");
            assert_eq!(event["regarding"]["name"], "newer", "{event}");
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&event).unwrap()))
                    .unwrap(),
            );
            conditions
        });
        let ctx = Arc::new(context(Client::new(service, "default")));
        let action = reconcile_object(Arc::new(object.clone()), ctx.clone())
            .await
            .unwrap();
        assert_eq!(
            action,
            Action::await_change(),
            "left alone until it changes"
        );
        let conditions = server.await.unwrap();

        // Reported already: nothing is patched or published again.
        let mut reported = object;
        reported.data["status"] = json!({"conditions": conditions});
        let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
        let ctx = Arc::new(context(Client::new(service, "default")));
        let action = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reconcile_object(Arc::new(reported), ctx),
        )
        .await
        .expect("no request is made")
        .unwrap();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_failed_or_finished_metrics_server_is_reported() {
        let mut failed = tokio::spawn(async {
            Err(MetricsError::Serve {
                addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                source: std::io::Error::other("accept failed"),
            })
        });
        let error = format!("{:#}", server_stopped(&mut failed).await);
        assert!(error.contains("the metrics server failed"), "{error}");
        assert!(error.contains("accept failed"), "{error}");

        let mut finished = tokio::spawn(async { Ok(()) });
        let error = server_stopped(&mut finished).await.to_string();
        assert_eq!(error, "the metrics server stopped");

        let mut panicked = tokio::spawn(async { panic!("boom") });
        let error = server_stopped(&mut panicked).await.to_string();
        assert_eq!(error, "the metrics server task failed");
    }
}

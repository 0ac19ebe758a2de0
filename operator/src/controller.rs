//! `weir operator`: wires the reconciler into kube's Controller, behind
//! leader election, next to the metrics server.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_crds::StreamingJob;

use crate::backoff::Backoff;
use crate::builders::{self, MANAGER, Settings};
use crate::control::{HttpWorkerControl, WorkerControl};
use crate::leader::{Elector, Timing};
use crate::metrics::{self, Metrics, MetricsError};
use crate::reconciler::{self, Context};

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
    Controller::new(api::<StreamingJob>(&client, ns), watcher::Config::default())
        .owns(api::<StatefulSet>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), children)
        .shutdown_on_signal()
        .graceful_shutdown_on(leadership_lost(leading))
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((job, _)) => tracing::debug!(%job, "reconciled"),
                Err(error) => tracing::warn!(%error, "controller error"),
            }
        })
        .await;
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
    use super::*;

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

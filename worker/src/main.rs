//! `weir-worker`: the process each worker pod runs.
//!
//! Reads the job file (`--job FILE` or `WEIR_JOB_FILE`) and the worker's
//! identity from the environment, runs one worker until it stops, and on
//! SIGTERM (or Ctrl-C) finishes the batch in hand, checkpoints and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use weir_worker::config::WorkerConfig;
use weir_worker::runtime::Worker;

/// Runs one Weir worker.
#[derive(Debug, Parser)]
#[command(name = "weir-worker", version, about)]
struct Args {
    /// The StreamingJob YAML file to run.
    #[arg(long, env = "WEIR_JOB_FILE")]
    job: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args = Args::parse();
    let config = match WorkerConfig::load(&args.job) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("weir-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(cancel.clone()));
    let handle = match Worker::start(config, cancel).await {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the worker");
            return ExitCode::FAILURE;
        }
    };
    match handle.wait().await {
        Ok(exit) => {
            tracing::info!(?exit, "worker stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("WEIR_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels the worker on SIGTERM or Ctrl-C.
async fn shutdown_on_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: checkpointing and stopping"),
            _ = ctrl_c => tracing::info!("interrupted: checkpointing and stopping"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    cancel.cancel();
}

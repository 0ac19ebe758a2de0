//! `weir`: the Weir command line. `weir crd` prints the CustomResourceDefinition,
//! `weir validate FILE...` checks StreamingJob manifests, `weir render`
//! writes the objects the operator builds for them, and `weir operator`
//! runs the in-cluster controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use weir_operator::builders::Settings;
use weir_operator::controller;

/// Weir: stateful stream processing on Kubernetes.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StreamingJob CustomResourceDefinition as YAML.
    Crd,
    /// Validate StreamingJob manifests (several documents per file allowed):
    /// prints `FILE: valid` or one line per problem, and exits 1 on any problem.
    Validate {
        /// YAML files holding StreamingJob documents.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Run the operator: reconcile StreamingJobs into StatefulSets of workers.
    Operator(OperatorArgs),
    /// Write the objects the operator builds for StreamingJob manifests into
    /// DIR/<namespace>-<name>/<kind>.yaml (placeholder uid and control token).
    Render {
        /// Directory to write to (created if missing).
        #[arg(long, short)]
        output_dir: PathBuf,
        /// Worker image of jobs that do not name one.
        #[arg(long, env = "WEIR_WORKER_IMAGE", default_value = DEFAULT_WORKER_IMAGE)]
        worker_image: String,
        /// YAML files holding StreamingJob documents.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// The worker image matching this build.
const DEFAULT_WORKER_IMAGE: &str =
    concat!("ghcr.io/weir-dev/weir-worker:", env!("CARGO_PKG_VERSION"));

/// Options of `weir operator`.
#[derive(Args)]
struct OperatorArgs {
    /// Namespace to watch (repeatable); default: every namespace.
    #[arg(long = "namespace", env = "WEIR_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Worker image of jobs that do not name one.
    #[arg(long, env = "WEIR_WORKER_IMAGE", default_value = DEFAULT_WORKER_IMAGE)]
    worker_image: String,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader on a Lease so that several replicas can run.
    #[arg(long, env = "WEIR_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "WEIR_LEASE_NAME", default_value = weir_operator::rbac::DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Namespace of the Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "weir-system")]
    lease_namespace: String,
    /// This replica's identity in the election: its pod name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "WEIR_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", weir_crds::crd::definition_yaml());
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate(&files),
        Command::Operator(args) => operator(args),
        Command::Render {
            output_dir,
            worker_image,
            files,
        } => render(&files, &output_dir, worker_image),
    }
}

fn render(files: &[PathBuf], output_dir: &std::path::Path, worker_image: String) -> ExitCode {
    let settings = Settings { worker_image };
    match weir_operator::render::render_files(files, output_dir, &settings) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("weir render: {error}");
            ExitCode::FAILURE
        }
    }
}

fn operator(args: OperatorArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()));
    let config = controller::Config {
        namespaces: args.namespaces,
        worker_image: args.worker_image,
        metrics_addr: args.metrics_addr,
        leader_election: args.leader_election,
        lease_name: args.lease_name,
        lease_namespace: args.lease_namespace,
        identity,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weir operator: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(controller::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(files: &[std::path::PathBuf]) -> ExitCode {
    let mut all_valid = true;
    for file in files {
        let name = file.display().to_string();
        let (lines, valid) = match std::fs::read_to_string(file) {
            Ok(text) => weir_crds::validate::report(&name, &text),
            Err(error) => (vec![format!("{name}: cannot read: {error}")], false),
        };
        for line in lines {
            println!("{line}");
        }
        all_valid &= valid;
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every `WEIR_*`/`POD_*` variable the chart's Deployment sets is one the
    /// operator command reads.
    #[test]
    fn the_chart_sets_only_variables_the_operator_reads() {
        let command = Cli::command();
        let operator = command.find_subcommand("operator").unwrap();
        let known: Vec<String> = operator
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .collect();
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/weir-operator/templates/deployment.yaml"
        ))
        .unwrap();
        let set: Vec<&str> = template
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- name: "))
            .filter(|name| name.starts_with("WEIR_") || name.starts_with("POD_"))
            .collect();
        assert!(set.len() >= 6, "{set:?}");
        for name in set {
            assert!(
                known.iter().any(|k| k == name),
                "{name} is not read by `weir operator`"
            );
        }
    }

    #[test]
    fn operator_options_parse() {
        let cli = Cli::try_parse_from([
            "weir",
            "operator",
            "--leader-election",
            "--namespace",
            "team-a",
            "--namespace",
            "team-b,team-c",
            "--identity",
            "weir-operator-0",
            "--metrics-addr",
            "127.0.0.1:9090",
        ])
        .unwrap();
        let Command::Operator(args) = cli.command else {
            panic!("expected the operator command");
        };
        assert!(args.leader_election);
        assert_eq!(args.namespaces, ["team-a", "team-b", "team-c"]);
        assert_eq!(args.identity.as_deref(), Some("weir-operator-0"));
        assert_eq!(args.metrics_addr, "127.0.0.1:9090".parse().unwrap());
    }
}

//! `weir`: the Weir command line. `weir crd` prints the CustomResourceDefinition,
//! `weir validate FILE...` checks StreamingJob manifests, `weir render`
//! writes the objects the operator builds for them, `weir operator`
//! runs the in-cluster controller, and `weir simulate` compares the
//! autoscaler with KEDA's on a simulated job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use weir_operator::builders::Settings;
use weir_operator::controller;
use weir_operator::simulate::{self, Options as SimulateOptions};

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
    /// Run the autoscaler against a simulated job under load scenarios,
    /// side by side with KEDA's Kafka scaler under the HPA's defaults:
    /// rescales, peak lag, lag-seconds, over-provisioning, catch-up time.
    Simulate(SimulateArgs),
    /// Run a StreamingJob on this machine: embedded Kafka, in-process
    /// workers, the operator's autoscaler and savepoint protocol, generated
    /// events at a changing rate, a live view, and a closing summary that
    /// compares the output with a model of the events (exit 1 on any
    /// difference).
    Run(RunArgs),
    /// Produce a job's generated events to its source topic on a Kafka
    /// broker at the rate of a profile, then exit: a load generator for a
    /// deployed StreamingJob (the kind suite runs it as a Kubernetes Job).
    Generate(GenerateArgs),
}

/// Options of `weir run`.
#[derive(Args)]
struct RunArgs {
    /// The StreamingJob manifest.
    file: PathBuf,
    /// A Kafka broker (HOST:PORT) instead of the embedded one; its topics
    /// must exist.
    #[arg(long)]
    kafka: Option<String>,
    /// A checkpoint storage URL instead of DIR/storage.
    #[arg(long)]
    storage: Option<String>,
    /// The local directory: checkpoints and worker state.
    #[arg(long, default_value = ".weir")]
    dir: PathBuf,
    /// The input rate over time: RATE:DURATION steps.
    #[arg(long, default_value = weir_operator::local::profile::DEFAULT_PROFILE)]
    profile: weir_operator::local::profile::RateProfile,
    /// Seconds to feed events, then stop with a savepoint (default: the
    /// profile's length).
    #[arg(long)]
    duration: Option<u64>,
    /// JSON lines to feed instead of generated events.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Events per second each worker may process, standing for a pod's CPU
    /// limit (all workers share this machine's cores).
    #[arg(long, default_value_t = 2_000)]
    worker_capacity: u64,
    /// Distinct keys of the generated events.
    #[arg(long, default_value_t = weir_operator::local::generator::DEFAULT_KEYS)]
    keys: u32,
    /// Seed of the generated events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Kill worker 0 this many seconds in, once, as a crash would: it
    /// restarts and restores its last checkpoint (a chaos check).
    #[arg(long)]
    kill_worker_after: Option<u64>,
}

/// Options of `weir generate`.
#[derive(Args)]
struct GenerateArgs {
    /// The StreamingJob manifest whose source the events are for.
    file: PathBuf,
    /// The Kafka broker (HOST:PORT[,HOST:PORT...]).
    #[arg(long)]
    kafka: String,
    /// The topic (it must exist); default: the job's first source topic.
    #[arg(long)]
    topic: Option<String>,
    /// The rate over time: RATE:DURATION steps; the run lasts its length.
    #[arg(long, default_value = weir_operator::local::profile::DEFAULT_PROFILE)]
    profile: weir_operator::local::profile::RateProfile,
    /// Distinct keys of the events.
    #[arg(long, default_value_t = weir_operator::local::generator::DEFAULT_KEYS)]
    keys: u32,
    /// Seed of the events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
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

/// Options of `weir simulate`.
#[derive(Args)]
struct SimulateArgs {
    /// Scenario to run (repeatable or comma-separated): steady, step, ramp,
    /// daily. Default: all.
    #[arg(long = "scenario", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Simulated seconds per scenario, stretching or squeezing its profile.
    /// Default: each scenario's own length (an hour; a day for daily).
    #[arg(long)]
    duration: Option<u64>,
    /// Seed of the load noise: the same seed gives the same numbers.
    #[arg(long, default_value_t = SimulateOptions::default().seed)]
    seed: u64,
    /// Noise amplitude: the load is multiplied by a factor drawn from
    /// [1 - noise, 1 + noise], held for 15 s.
    #[arg(long, default_value_t = SimulateOptions::default().noise)]
    noise: f64,
    /// Events per second one worker processes at 100% busy.
    #[arg(long, default_value_t = SimulateOptions::default().capacity)]
    capacity: f64,
    /// Partitions of the source topic (the highest parallelism).
    #[arg(long, default_value_t = SimulateOptions::default().partitions)]
    partitions: i32,
    /// Seconds without processing for every change of parallelism
    /// (savepoint or rebalance, restart, restore), for Weir and KEDA alike.
    #[arg(long, default_value_t = SimulateOptions::default().pause_secs)]
    pause: u64,
    /// Seconds between offset commits (with each checkpoint), for both.
    #[arg(long, default_value_t = SimulateOptions::default().commit_interval_secs)]
    commit_interval: u64,
    /// KEDA's lagThreshold (target lag per replica).
    #[arg(long, default_value_t = SimulateOptions::default().lag_threshold)]
    lag_threshold: u64,
    /// Also draw load, parallelism and lag over time into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print the numbers as JSON instead of tables.
    #[arg(long, default_value_t = false)]
    json: bool,
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
        Command::Simulate(args) => simulate(args),
        Command::Run(args) => run(args),
        Command::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> ExitCode {
    let options = weir_operator::local::generate::GenerateOptions {
        file: args.file,
        kafka: args.kafka,
        topic: args.topic,
        profile: args.profile,
        keys: args.keys,
        seed: args.seed,
    };
    match weir_operator::local::generate::generate(&options) {
        Ok(generated) => {
            println!(
                "produced {} events to {} ({} partitions)",
                generated.events, generated.topic, generated.partitions
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("weir generate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(args: SimulateArgs) -> ExitCode {
    let options = SimulateOptions {
        scenarios: args.scenarios,
        duration_secs: args.duration,
        seed: args.seed,
        noise: args.noise,
        capacity: args.capacity,
        partitions: args.partitions,
        pause_secs: args.pause,
        commit_interval_secs: args.commit_interval,
        lag_threshold: args.lag_threshold,
    };
    let runs = match weir_operator::simulate::simulate(&options) {
        Ok(runs) => runs,
        Err(error) => {
            eprintln!("weir simulate: {error}");
            return ExitCode::FAILURE;
        }
    };
    let output = if args.json {
        let comparisons: Vec<_> = runs.iter().map(|run| &run.comparison).collect();
        let document = serde_json::json!({ "notes": options.notes(), "scenarios": comparisons });
        format!("{document:#}\n")
    } else {
        let tables: Vec<String> = runs
            .iter()
            .map(|run| simulate::report::table(&run.comparison, run.initial))
            .collect();
        format!("{}\n{}\n", tables.join("\n"), options.notes())
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), output.as_bytes());
    if let Some(path) = args.plot {
        if let Err(error) = std::fs::write(&path, simulate::svg::plot(&runs)) {
            eprintln!("weir simulate: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("weir simulate: plot written to {}", path.display());
    }
    ExitCode::SUCCESS
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

fn run(args: RunArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The live view says what matters; librdkafka's connection errors
        // when the embedded cluster shuts down do not.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,rdkafka=off,librdkafka=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let options = weir_operator::local::RunOptions {
        file: args.file,
        kafka: args.kafka,
        storage: args.storage,
        dir: args.dir,
        profile: args.profile,
        duration: args.duration.map(std::time::Duration::from_secs),
        input: args.input,
        worker_capacity: args.worker_capacity,
        keys: args.keys,
        seed: args.seed,
        kill_worker_after: args.kill_worker_after.map(std::time::Duration::from_secs),
        live: true,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weir run: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let summary = match runtime.block_on(weir_operator::local::run(options)) {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("weir run: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary.text());
    if let Some(path) = args.json {
        let written = serde_json::to_string_pretty(&summary)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(&path, json).map_err(|e| e.to_string()));
        if let Err(error) = written {
            eprintln!("weir run: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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

    #[test]
    fn simulate_options_parse_and_default_to_the_library_s() {
        let cli = Cli::try_parse_from([
            "weir",
            "simulate",
            "--scenario",
            "step,ramp",
            "--pause",
            "45",
            "--plot",
            "out.svg",
        ])
        .unwrap();
        let Command::Simulate(args) = cli.command else {
            panic!("expected the simulate command");
        };
        assert_eq!(args.scenarios, ["step", "ramp"]);
        assert_eq!(args.pause, 45);
        assert_eq!(args.plot, Some(PathBuf::from("out.svg")));
        let defaults = SimulateOptions::default();
        assert_eq!(args.seed, defaults.seed);
        assert_eq!(args.partitions, defaults.partitions);
        assert_eq!(args.lag_threshold, defaults.lag_threshold);
    }
}

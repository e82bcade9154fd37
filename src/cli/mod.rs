//! The `regis` command line.
//!
//! One file per subcommand; this module holds the clap definitions and dispatch.

mod bench;
mod bench_apply;
mod bench_compare;
mod bench_hub;
mod bench_resp;
mod demo;
mod publish;
mod serve;
// Operating a hub: status, dead letters, verify/repair (issue 5).
mod bench_verify;
mod client;
mod dlq;
mod status;
mod verify;
mod worker;
// Remote workers over a WAN (issue 6).
mod bench_remote;
mod worker_hub;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Replicates Redis writes to a Redis in every region through a durable message bus.
#[derive(Debug, Parser)]
#[command(
    name = "regis",
    version,
    about,
    long_about = None,
    after_help = "Logs go to stderr. Choose what is logged with RUST_LOG, e.g. RUST_LOG=warn, \
                  RUST_LOG=regis=debug or RUST_LOG=info,regis::worker=debug (default: info; warn for `regis bench`)."
)]
pub struct Cli {
    /// Log format on stderr: human-readable lines, or one JSON object per line (for log
    /// shippers). Filter with RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a hub: HTTP ingress, the durable bus and a worker for every region.
    Serve {
        /// The config file (see regis.example.toml).
        #[arg(long, short, default_value = "regis.toml")]
        config: PathBuf,
    },
    /// Publish one command through a hub's HTTP API and print its message id.
    Publish {
        /// The hub, and the token it asks for.
        #[command(flatten)]
        hub: client::HubArgs,
        /// The Redis database the command targets.
        #[arg(long, default_value_t = 0)]
        db: u32,
        /// The command and its arguments, e.g. `-- SET greeting hello`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// A tour: two throwaway regions, a hub, a sample feed, an outage and convergence.
    Demo,
    /// Measure Regis side by side with the alternatives (direct fan-out, replicaof) on this
    /// machine: throughput, latency, hub memory, disk; writes JSON and an SVG plot (see
    /// BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Measure the RESP ingress with redis-benchmark against a plain redis-server (see
    /// BENCHMARKS.md, "RESP ingress").
    BenchResp(bench_resp::BenchRespArgs),
    /// Show every region's backlog, in-flight, dead letters, latency and Redis state.
    Status(status::StatusArgs),
    /// List, show, redrive or purge a region's dead letters.
    Dlq(dlq::DlqArgs),
    /// Compare every key of every region (exit 0: identical, 1: drift, 2: error); with
    /// `--repair --from REGION`, make the others match REGION.
    Verify(verify::VerifyArgs),
    /// Measure `regis verify` over two regions of many keys (see BENCHMARKS.md).
    BenchVerify(bench_verify::BenchVerifyArgs),
    /// Run one region's worker in the region: leasing from a hub over HTTP(S) (`--hub`), or
    /// against a NATS bus (bus.kind = "nats").
    Worker(worker::WorkerArgs),
    /// Measure replication through a remote worker over a link with injected latency (see
    /// BENCHMARKS.md, "Remote worker over a WAN").
    BenchRemote(bench_remote::BenchRemoteArgs),
}

impl Cli {
    /// The log filter when RUST_LOG is not set: `info`, but `warn` for the benchmarks, whose
    /// in-process hubs would otherwise log every start and stop between the report's lines.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Bench(_) => "warn",
            _ => "info",
        }
    }
}

/// Ends `regis` with this exit status; the command has already said why.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub u8);

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(&config).await,
        Command::Publish { hub, db, command } => publish::run(&hub, db, command).await,
        Command::Demo => demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchResp(args) => bench_resp::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::BenchVerify(args) => bench_verify::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::BenchRemote(args) => bench_remote::run(args).await,
    }
}

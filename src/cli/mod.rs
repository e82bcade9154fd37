//! The `regis` command line.
//!
//! One file per subcommand; this module holds the clap definitions and dispatch.

mod bench;
mod bench_apply;
mod bench_resp;
mod demo;
mod publish;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Replicates Redis writes to a Redis in every region through a durable message bus.
#[derive(Debug, Parser)]
#[command(name = "regis", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
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
        /// The hub's HTTP address.
        #[arg(long, env = "REGIS_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        /// The Redis database the command targets.
        #[arg(long, default_value_t = 0)]
        db: u32,
        /// The command and its arguments, e.g. `-- SET greeting hello`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// A tour: two throwaway regions, a hub, a sample feed, an outage and convergence.
    Demo,
    /// Measure replication throughput and latency on this machine (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Measure the RESP ingress with redis-benchmark against a plain redis-server (see
    /// BENCHMARKS.md, "RESP ingress").
    BenchResp(bench_resp::BenchRespArgs),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(&config).await,
        Command::Publish { url, db, command } => publish::run(&url, db, command).await,
        Command::Demo => demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchResp(args) => bench_resp::run(args).await,
    }
}

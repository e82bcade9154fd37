//! The `regis` binary.

use clap::Parser;
use regis::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

// The hub allocates many small buffers per message (frames, envelopes, script arguments);
// mimalloc serves them at a fraction of glibc malloc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    match regis::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<regis::cli::Exit>() {
            Some(regis::cli::Exit(code)) => std::process::ExitCode::from(*code),
            None => {
                eprintln!("regis: error: {err:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

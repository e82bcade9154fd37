//! `regis serve --config FILE`.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::server::Server;

/// Runs a hub until SIGINT or SIGTERM, then drains and exits.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let server = Server::start(&config)
        .await
        .with_context(|| format!("cannot start the hub from {}", config_path.display()))?;
    // Through tracing, not eprintln: with --log-format json, stderr must stay pure JSON.
    tracing::info!(
        "serving {} region(s) on http://{} (data in {}); Ctrl-C to stop",
        config.regions.len(),
        server.http_addr(),
        config.data_dir.display()
    );
    if let Some(addr) = server.resp_addr() {
        tracing::info!(
            "Redis clients publish on {addr} (e.g. redis-cli -p {})",
            addr.port()
        );
    }
    shutdown_signal().await;
    tracing::info!("stopping: finishing in-flight work");
    server.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

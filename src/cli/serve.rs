//! `regis serve --config FILE`.

use std::path::Path;

use anyhow::Context;

use crate::bus::Bus;
use crate::config::{BusConfig, Config};
use crate::server::Server;

/// Runs a hub until SIGINT or SIGTERM, then drains and exits. The bus is chosen here, once,
/// from `bus.kind`; everything after is generic over it.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let starting = || format!("cannot start the hub from {}", config_path.display());
    match &config.bus {
        BusConfig::Embedded {} => {
            let server = Server::start(&config).await.with_context(starting)?;
            announce(
                &config,
                &server,
                &format!("data in {}", config.data_dir.display()),
            );
            shutdown_signal().await;
            tracing::info!("stopping: finishing in-flight work");
            server.shutdown().await;
        }
        BusConfig::Nats(nats) => {
            if nats.replicas == 1 {
                // Contract 1 says "durable: fsync"; one JetStream replica acknowledges before
                // its fsync, and the client cannot see the server's sync_interval.
                tracing::warn!(
                    replicas = nats.replicas,
                    "bus.replicas = 1: nats-server acknowledges a publish before it fsyncs it (every 2 minutes by default), \
                     so a power loss or OS crash of the NATS server can lose acknowledged messages. For contract 1 \
                     (no acknowledged publish is lost) set bus.replicas = 3 on a three-server cluster, \
                     or run nats-server 2.10 or later with `sync_interval: always` in its jetstream block (see docs/nats.md)"
                );
            }
            let server = Server::start_nats(&config, nats)
                .await
                .with_context(starting)?;
            announce(
                &config,
                &server,
                &format!("NATS stream {} at {}", nats.stream, nats.url),
            );
            shutdown_signal().await;
            tracing::info!("stopping: finishing in-flight work");
            server.shutdown().await;
        }
    }
    Ok(())
}

fn announce<B: Bus>(config: &Config, server: &Server<B>, bus: &str) {
    // Through tracing, not eprintln: with --log-format json, stderr must stay pure JSON.
    tracing::info!(
        "serving {} region(s) on http://{} ({bus}); Ctrl-C to stop",
        config.regions.len(),
        server.http_addr(),
    );
    if let Some(addr) = server.resp_addr() {
        tracing::info!(
            "Redis clients publish on {addr} (e.g. redis-cli -p {})",
            addr.port()
        );
    }
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

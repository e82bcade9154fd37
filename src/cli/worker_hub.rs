//! `regis worker --hub URL --region NAME --redis URL`: one region's worker, run in the
//! region next to its Redis, leasing the region's messages from a hub over its HTTP lease
//! API ([`crate::bus::remote`]).
//!
//! It runs the same consumers as the workers inside `regis serve` ([`crate::worker::spawn`])
//! with the settings the hub gives for the region (convergence, retries, dead-lettering), so
//! a region applies exactly the same whether its worker is local or remote. The hub's config
//! marks the region `worker = "remote"` so that it runs no worker of its own for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::BusErrorKind;
use crate::bus::remote::{RemoteBus, RemoteOptions};
use crate::health::RedisHealth;
use crate::latency::LatencyWindow;
use crate::worker::{self, WorkerSettings, backoff};

/// Options of `regis worker --hub`.
#[derive(Clone, Debug, Args)]
pub struct HubWorkerArgs {
    /// The hub's HTTP(S) address, e.g. https://hub.example.com:7700: lease the region's
    /// messages over its HTTP API (docs/remote.md).
    #[arg(long, env = "REGIS_HUB")]
    pub hub: Option<String>,
    /// The hub's worker token (its `[auth] worker`), if it asks for one.
    #[arg(long, env = "REGIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// hub (besides the system's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --hub: most messages per lease (and per batch applied), default 1000; a larger
    /// batch pays the WAN round trip over more messages.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: Option<u32>,
    /// How long the hub holds a lease while the region has nothing to apply (at most 30s).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,
    /// Once a lease has a first message, how long the hub keeps filling the batch; by
    /// default the measured round trip divided among the consumers, so one of them is
    /// always waiting at the hub.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub linger: Option<Duration>,
    /// How long a request may take beyond --poll-wait before the link is taken for dead.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// Runs a remote worker for `region` against `redis` until SIGINT or SIGTERM, then finishes
/// and settles the batches in hand and exits.
pub async fn run(
    args: HubWorkerArgs,
    hub: &str,
    region: &str,
    redis: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    if args.poll_wait.is_zero() || args.poll_wait > Duration::from_secs(30) {
        bail!("--poll-wait must be between 1ms and 30s");
    }
    let batch_size = args.batch_size.unwrap_or(1000);
    let mut options = RemoteOptions::new(hub, region);
    options.token = args.token.clone().filter(|t| !t.is_empty());
    options.ca_file = args.ca.clone();
    options.poll_wait = args.poll_wait;
    options.linger = args.linger;
    options.request_timeout = args.request_timeout;
    let bus = RemoteBus::new(options)?;

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        stop.cancel();
    });

    // The worker may start before the hub (or the link to it) is up: keep trying while the
    // failure is one that can pass; a refusal (bad token, unknown region) ends it.
    let mut attempt = 0;
    let settings = loop {
        match bus.handshake(concurrency).await {
            Ok(settings) => break settings,
            Err(err) if err.kind() == BusErrorKind::Unavailable => {
                attempt += 1;
                tracing::warn!(region, error = %err, "cannot reach the hub yet; retrying");
                let pause = backoff(Duration::from_millis(200), Duration::from_secs(5), attempt);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot start the worker of region {region:?}"));
            }
        }
    };
    if settings.placement == "local" {
        tracing::warn!(
            region,
            "the hub runs a worker of its own for this region: both will apply its messages (harmless, but wasteful); set worker = \"remote\" in the hub's [[regions]] entry"
        );
    }

    let mut tasks = JoinSet::new();
    worker::spawn(
        WorkerSettings::from_hub(
            &settings,
            region,
            redis.to_string(),
            concurrency,
            batch_size as usize,
        ),
        bus.clone(),
        settings.applier(),
        Arc::new(LatencyWindow::default()),
        Arc::new(RedisHealth::new(region)),
        shutdown.clone(),
        &mut tasks,
    )?;
    tracing::info!(
        "worker of region {region} running {concurrency} consumer(s) against {hub} (convergence {}, batches of up to {}); Ctrl-C to stop",
        settings.convergence,
        batch_size
    );
    shutdown.cancelled().await;
    tracing::info!("stopping: finishing and settling the batches in hand");
    while tasks.join_next().await.is_some() {}
    bus.close(Duration::from_secs(10)).await;
    Ok(())
}

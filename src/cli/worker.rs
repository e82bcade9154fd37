//! `regis worker --region NAME [--redis URL] --config FILE`: one region's worker, run in
//! the region, next to its Redis.
//!
//! With `--hub URL` it leases the region's messages over the hub's HTTP API, whatever the
//! hub's bus ([`super::worker_hub`], docs/remote.md); it needs no config file then.
//!
//! With `bus.kind = "nats"` the worker talks to NATS directly — typically to a NATS server
//! in its own region (a leaf node of the hub's cluster, see docs/nats.md) — and needs no hub
//! at all: it leases from its region's consumer, applies to the region's Redis and settles,
//! exactly as the workers inside `regis serve` do. The hub's config marks the region
//! `worker = "remote"` so it runs no worker of its own for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::bus::nats::{NatsBus, NatsOptions};
use crate::config::{BusConfig, Config};
use crate::health::RedisHealth;
use crate::latency::LatencyWindow;
use crate::worker::{self, WorkerSettings, backoff};

use super::worker_hub::{self, HubWorkerArgs};

/// Options of `regis worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The region whose queue this worker drains: a `[[regions]]` name of the config.
    #[arg(long)]
    pub region: String,
    /// The region's Redis, e.g. `redis://127.0.0.1:6379`; defaults to the region's `redis`
    /// in the config.
    #[arg(long, env = "REGIS_REDIS")]
    pub redis: Option<String>,
    /// The config file: its `[bus]`, `[delivery]`, `[worker]` and `[[regions]]` are used
    /// (not with --hub, which takes them from the hub).
    #[arg(long, short, default_value = "regis.toml")]
    pub config: PathBuf,
    /// Consumers; defaults to the region's `concurrency` or `worker.concurrency` (with
    /// --hub: 8, one lease in flight each). At least 1.
    #[arg(long, value_parser = at_least_one)]
    pub concurrency: Option<usize>,
    /// Leasing from a hub over HTTP(S).
    #[command(flatten)]
    pub remote: HubWorkerArgs,
}

/// A count that must be at least 1 (clap rejects 0 before the worker starts).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// Runs the worker until SIGINT or SIGTERM, then finishes the batch in hand and exits.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if let Some(hub) = args.remote.hub.clone() {
        let Some(redis) = args.redis.clone() else {
            bail!(
                "regis worker --hub needs --redis URL (or REGIS_REDIS): the region's Redis, e.g. redis://127.0.0.1:6379"
            );
        };
        let concurrency = args.concurrency.unwrap_or(8);
        return worker_hub::run(args.remote, &hub, &args.region, &redis, concurrency).await;
    }
    let path = args.config.display().to_string();
    let config = Config::load(&args.config)?;
    let BusConfig::Nats(nats) = &config.bus else {
        bail!(
            "{path}: regis worker needs bus.kind = \"nats\"; with the embedded bus the workers run inside regis serve \
             (or lease from a hub over HTTP with --hub URL)"
        );
    };
    let Some(region) = config.regions.iter().find(|r| r.name == args.region) else {
        let names: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
        bail!(
            "region {:?} is not in {path} (it lists {}); the hub and its workers share one list of regions",
            args.region,
            names.join(", ")
        );
    };
    let redis_url = match (&args.redis, region.redis.as_str()) {
        (Some(url), _) => url.clone(),
        (None, "") => bail!(
            "no Redis for region {:?}: pass --redis redis://HOST:PORT or set its redis in {path}",
            region.name
        ),
        (None, url) => url.to_string(),
    };
    let concurrency = args.concurrency.unwrap_or(config.concurrency(region));

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        stop.cancel();
    });

    let options = NatsOptions::from_config(&config, vec![region.name.clone()]);
    // The worker may start before its NATS (or the leaf node's link to the hub) is up: keep
    // trying while the failure is one that can pass.
    let mut attempt = 0;
    let bus = loop {
        match NatsBus::connect(nats, options.clone()).await {
            Ok(bus) => break bus,
            Err(err) if err.is_retriable() => {
                attempt += 1;
                tracing::warn!(region = %region.name, error = %err, "cannot reach the NATS bus yet; retrying");
                let pause = backoff(Duration::from_millis(200), Duration::from_secs(5), attempt);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot start the worker from {path}"));
            }
        }
    };

    let mut tasks = JoinSet::new();
    worker::spawn(
        WorkerSettings {
            concurrency,
            ..WorkerSettings::from_config(&config, region, redis_url)
        },
        bus.clone(),
        Applier::new(config.convergence, config.tombstone_ttl()),
        Arc::new(LatencyWindow::default()),
        Arc::new(RedisHealth::new(&region.name)),
        shutdown.clone(),
        &mut tasks,
    )?;
    // Through tracing, not eprintln: with --log-format json, stderr must stay pure JSON.
    tracing::info!(
        "worker of region {} running {concurrency} consumer(s) on NATS stream {} at {}; Ctrl-C to stop",
        region.name,
        nats.stream,
        nats.url
    );
    shutdown.cancelled().await;
    tracing::info!("stopping: finishing the batch in hand");
    while tasks.join_next().await.is_some() {}
    bus.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn concurrency_zero_is_refused_by_the_parser() {
        let err = Cli::try_parse_from(["regis", "--region", "r0", "--concurrency", "0"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--concurrency") && err.contains("must be at least 1"),
            "{err}"
        );
        let ok = Cli::try_parse_from(["regis", "--region", "r0", "--concurrency", "3"]).unwrap();
        assert_eq!(ok.worker.concurrency, Some(3));
    }
}

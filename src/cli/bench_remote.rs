//! `regis bench-remote`: replication through one remote worker over a link with injected
//! latency, in one run on this machine. BENCHMARKS.md ("Remote worker over a WAN") records
//! its output.
//!
//! It starts a `redis-server` for the region, the hub as a `regis serve` child process (the
//! region marked `worker = "remote"`, `[auth]` on, producers publishing over RESP with the
//! `Publisher` library), a [`WanProxy`] adding `--delay` each way in front of the hub's HTTP
//! listener, and the remote worker in this process (the same [`RemoteBus`] +
//! [`worker::spawn`] that `regis worker --hub` runs, so its publish→applied latencies can be
//! read), then measures:
//!
//! 1. **latency**: `--rate` messages/s for `--duration`; publish→applied p50/p99/max as the
//!    worker records them (from the version's ingress time to the reply of the region's
//!    Redis; both clocks are this machine's);
//! 2. **backlog memory**: with no worker, `--backlog` messages published; the hub's RSS
//!    (`VmRSS`) and the bus file at every quarter, to show the backlog lives on disk;
//! 3. **throughput**: a worker drains that backlog through the link; messages (= commands)
//!    per second from its start until the hub's queue is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::bench::Workload;
use crate::apply::Applier;
use crate::bus::remote::{RemoteBus, RemoteOptions};
use crate::cli::bench_hub::{ChildHub, mib};
use crate::health::RedisHealth;
use crate::hub::MessageRequest;
use crate::latency::{LatencySummary, LatencyWindow};
use crate::publisher::{Publisher, PublisherOptions};
use crate::redis_process::RedisProcess;
use crate::wan::WanProxy;
use crate::worker::{self, WorkerSettings};

const WORKER_TOKEN: &str = "bench-worker-token-0123456789";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const PUBLISH_TOKEN: &str = "bench-publish-token-0123456789";

/// Options of `regis bench-remote`.
#[derive(Debug, Args)]
pub struct BenchRemoteArgs {
    /// Latency added each way between the hub and the worker.
    #[arg(long, default_value = "70ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Offered load of the latency run, messages (one SET each) per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Length of the latency run (at most 50s: latency is read from the last minute).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Messages published with no worker running, then drained through the link.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// The worker's consumers (each with one lease in flight).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Most messages per lease.
    #[arg(long, default_value_t = 2000)]
    pub batch_size: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The remote worker, in this process.
struct RemoteWorker {
    bus: RemoteBus,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    latency: Arc<LatencyWindow>,
    linger: Duration,
}

impl RemoteWorker {
    async fn start(
        hub: &str,
        region_url: &str,
        args: &BenchRemoteArgs,
    ) -> anyhow::Result<RemoteWorker> {
        let mut options = RemoteOptions::new(hub, "remote");
        options.token = Some(WORKER_TOKEN.into());
        let bus = RemoteBus::new(options)?;
        let settings = bus.handshake(args.concurrency).await?;
        let ms = Duration::from_millis;
        let latency = Arc::new(LatencyWindow::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        worker::spawn(
            WorkerSettings::from_hub(
                &settings,
                "remote",
                region_url.to_string(),
                args.concurrency,
                args.batch_size,
            ),
            bus.clone(),
            Applier::new(settings.convergence, ms(settings.tombstone_ttl_ms)),
            latency.clone(),
            Arc::new(RedisHealth::new("remote")),
            stop.clone(),
            &mut tasks,
        )?;
        let linger = bus.linger();
        Ok(RemoteWorker {
            bus,
            stop,
            tasks,
            latency,
            linger,
        })
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.bus.close(Duration::from_secs(10)).await;
    }
}

/// Runs the benchmark and prints a report.
pub async fn run(args: BenchRemoteArgs) -> anyhow::Result<()> {
    if args.duration > Duration::from_secs(50) {
        bail!("--duration is at most 50s (latency is read from the last minute)");
    }
    if args.rate == 0 || args.keys == 0 || args.concurrency == 0 || args.batch_size == 0 {
        bail!("--rate, --keys, --concurrency and --batch-size must be at least 1");
    }
    let region = RedisProcess::start().context("cannot start the region's redis-server")?;
    let dir = tempfile::tempdir()?;
    let hub = ChildHub::start(
        dir.path(),
        "",
        &format!(
            "[auth]\npublish = \"{PUBLISH_TOKEN}\"\nworker = \"{WORKER_TOKEN}\"\nadmin = \"{ADMIN_TOKEN}\"\n\
             [[regions]]\nname = \"remote\"\nredis = \"{}\"\nworker = \"remote\"\n",
            region.url()
        ),
        Some(ADMIN_TOKEN),
    )?;
    hub.wait_up().await?;
    let proxy = WanProxy::start(hub.http, args.delay).await?;
    let via = format!("http://{}", proxy.addr());
    let publisher = Publisher::with_client(
        redis::Client::open(format!("redis://:{PUBLISH_TOKEN}@{}", hub.resp))?,
        PublisherOptions::default(),
    )
    .await?;
    let workload = Workload {
        keys: args.keys,
        value: Bytes::from(vec![b'v'; args.value_size]),
    };
    let http = reqwest::Client::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "regis bench-remote: one region behind a link of {:?} each way ({:?} round trip); {}-byte SETs over {} keys; worker: {} consumers, leases of up to {}; {cpus} CPUs",
        args.delay,
        args.delay * 2,
        args.value_size,
        args.keys,
        args.concurrency,
        args.batch_size
    );

    // 1. Latency at a fixed rate.
    let worker = RemoteWorker::start(&via, &region.url(), &args).await?;
    eprintln!(
        "[1/3] {} messages/s for {:?} through the remote worker (linger {:?}) ...",
        args.rate, args.duration, worker.linger
    );
    let tick = Duration::from_millis(5);
    let per_tick = (args.rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut owed = 0.0f64;
    let mut inflight = JoinSet::new();
    while started.elapsed() < args.duration {
        interval.tick().await;
        owed += per_tick;
        let n = owed as usize;
        owed -= n as f64;
        let batch: Vec<MessageRequest> = (sent..sent + n).map(|i| workload.message(i)).collect();
        sent += n;
        let publisher = publisher.clone();
        inflight.spawn(async move { publisher.publish_batch(batch).await });
    }
    let mut refused = 0;
    while let Some(done) = inflight.join_next().await {
        refused += done?.into_iter().filter(|r| r.is_err()).count();
    }
    let offered_for = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.pending(&http).await?.iter().sum::<u64>() > 0 {
        if Instant::now() > deadline {
            bail!("the remote region did not catch up within 60s of the latency run");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latency: LatencySummary = worker.latency.last_minute();
    worker.stop().await;
    eprintln!(
        "      {sent} published in {offered_for:.1?} ({refused} refused); applied {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latency.count, latency.p50_ms, latency.p99_ms, latency.max_ms
    );

    // 2. A backlog with nobody to apply it: on the hub's disk, not in its memory.
    eprintln!(
        "[2/3] {} messages published with no worker running ...",
        args.backlog
    );
    let rss_start = hub.rss()?;
    let mut samples = vec![(0usize, rss_start, hub.bus_bytes())];
    let chunk = 1000;
    let producers = 8;
    let mut published = 0usize;
    let backlog_started = Instant::now();
    for quarter in 1..=4 {
        let target = args.backlog * quarter / 4;
        while published < target {
            let mut round = JoinSet::new();
            for _ in 0..producers {
                if published >= target {
                    break;
                }
                let n = chunk.min(target - published);
                let batch: Vec<MessageRequest> = (published..published + n)
                    .map(|i| workload.message(sent + i))
                    .collect();
                published += n;
                let publisher = publisher.clone();
                round.spawn(async move { publisher.publish_batch(batch).await });
            }
            while let Some(done) = round.join_next().await {
                if let Some(Err(err)) = done?.into_iter().find(|r| r.is_err()) {
                    bail!("a backlog publish failed: {err}");
                }
            }
        }
        let rss = hub.rss()?;
        let bytes = hub.bus_bytes();
        eprintln!(
            "      backlog {published:>9}: hub RSS {:7.1} MiB, bus file {:8.1} MiB",
            mib(rss),
            mib(bytes)
        );
        samples.push((published, rss, bytes));
    }
    let ingest = published as f64 / backlog_started.elapsed().as_secs_f64();

    // 3. Drain it through the link.
    eprintln!("[3/3] the remote worker drains the backlog through the link ...");
    let worker = RemoteWorker::start(&via, &region.url(), &args).await?;
    let drain_started = Instant::now();
    let mut drain_rss = hub.rss()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pending = hub.pending(&http).await?.iter().sum::<u64>();
        drain_rss = drain_rss.max(hub.rss()?);
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the backlog was not drained within 600s ({pending} left)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = drain_started.elapsed();
    worker.stop().await;
    let throughput = args.backlog as f64 / drained_in.as_secs_f64();
    let keys_in_region: u64 = {
        let client = redis::Client::open(region.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("DBSIZE").query_async(&mut conn).await?
    };

    let rtt_ms = args.delay.as_secs_f64() * 2000.0;
    let p99_target = rtt_ms + 30.0;
    println!();
    println!(
        "Remote worker over a link of {:.0} ms each way ({rtt_ms:.0} ms round trip), {} consumers, leases of up to {}:",
        args.delay.as_secs_f64() * 1000.0,
        args.concurrency,
        args.batch_size
    );
    println!();
    println!("| run | messages (= commands) | rate | publish→applied p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| {} msg/s offered for {:.0?} | {} | {:.0}/s | {:.1} ms | {:.1} ms | {:.1} ms |",
        args.rate,
        args.duration,
        latency.count,
        sent as f64 / offered_for.as_secs_f64(),
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms
    );
    println!(
        "| backlog drained through the link | {} | {:.0}/s | – | – | – |",
        args.backlog, throughput
    );
    println!();
    println!("| backlog (messages) | hub RSS | bus file on disk |");
    println!("|---:|---:|---:|");
    for (n, rss, bytes) in &samples {
        println!("| {n} | {:.1} MiB | {:.1} MiB |", mib(*rss), mib(*bytes));
    }
    println!("| (while draining, peak) | {:.1} MiB | – |", mib(drain_rss));
    println!();
    println!(
        "backlog published at {ingest:.0} msg/s; drained in {drained_in:.1?}; the region holds {keys_in_region} keys"
    );
    println!(
        "targets: p99 <= {p99_target:.0} ms at {} msg/s: {}; throughput >= 50000 commands/s: {}",
        args.rate,
        if latency.p99_ms <= p99_target {
            "met"
        } else {
            "NOT met"
        },
        if throughput >= 50_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    if let Some(path) = &args.json {
        let report = json!({
            "delay_ms": args.delay.as_secs_f64() * 1000.0,
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "latency": { "offered_per_sec": args.rate, "duration_secs": args.duration.as_secs_f64(), "summary": latency },
            "backlog": { "messages": args.backlog, "samples": samples.iter().map(|(n, rss, bytes)| json!({"backlog": n, "hub_rss_bytes": rss, "bus_bytes": bytes})).collect::<Vec<_>>(), "drain_peak_rss_bytes": drain_rss },
            "drain": { "seconds": drained_in.as_secs_f64(), "messages_per_sec": throughput },
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(proxy);
    Ok(())
}

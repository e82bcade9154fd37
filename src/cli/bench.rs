//! `regis bench`: replication throughput and latency on this machine, against the direct
//! fan-out baseline, in one run. BENCHMARKS.md records its output.
//!
//! It starts its own `redis-server` per region and an in-process hub on a temporary data
//! directory, and measures, on the same workload of SETs with `--value-size`-byte values over
//! a key space of `--keys` keys:
//!
//! 1. **direct**: the producer pipelines every write into every region itself (the naive
//!    fan-out the original design rejected; not durable, no retry);
//! 2. **saturation**: producers publish as fast as the hub acknowledges (durably, batched
//!    `--batch` messages per append), until both regions applied everything;
//! 3. **fixed rate**: `--rate` messages per second for `--duration`, reporting each region's
//!    publish→applied latency.
//!
//! Runs 2 and 3 are repeated for every bus of `--bus` (`embedded`, `nats` or both, in one
//! run, side by side); for `nats` the benchmark starts its own `nats-server` with JetStream
//! on a temporary store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::json;

use crate::bus::Bus;
use crate::bus::nats::NatsConfig;
use crate::command::Convergence;
use crate::config::{Config, RespConfig};
use crate::hub::MessageRequest;
use crate::latency::LatencySummary;
use crate::nats_process::NatsProcess;
use crate::redis_process::{RedisProcess, connect};
use crate::server::Server;

/// Which measurements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Regis side by side with the alternatives (ceiling, direct fan-out, replicaof) on a
    /// mixed workload, then the scale runs; writes JSON and an SVG plot.
    Compare,
    /// End to end through the hub into every region, against the direct fan-out.
    E2e,
    /// One region's apply path under each convergence mode, against the raw SET ceiling,
    /// and the memory cost of `lww` metadata.
    Apply,
}

/// Options of `regis bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which measurements to run.
    #[arg(long, value_enum, default_value_t = Suite::Compare)]
    pub suite: Suite,
    /// Distinct keys written for the memory measurements (`apply`, and `compare`'s scale
    /// runs).
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_keys: usize,
    /// Messages (one command each) in the saturation runs.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Distinct keys written (per data type in `compare`).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// `compare`: percentages of each command in the workload.
    #[arg(long, default_value = "set=60,hset=20,incrby=15,del=5")]
    pub mix: super::bench_compare::Mix,
    /// `compare`: percentage of SETs that carry a TTL (`EX 3600`).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub ttl_percent: u32,
    /// `compare`: the convergence modes to measure Regis in, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_convergence, default_value = "lww,none")]
    pub modes: Vec<Convergence>,
    /// `compare`: skip the run through the HTTP API (the RESP runs stay).
    #[arg(long = "no-http", action = clap::ArgAction::SetFalse)]
    pub http: bool,
    /// `compare`: messages of backlog in the scale run (one region stopped); 0 skips the
    /// scale runs.
    #[arg(long, default_value_t = 10_000_000)]
    pub backlog: usize,
    /// `compare`: directory for `bench.json` and `bench.svg`.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Regions (each its own redis-server).
    #[arg(long, default_value_t = 2)]
    pub regions: usize,
    /// Messages per publish call (and per pipeline in the direct run).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Offered load of the latency run, messages per second [default: 10000 for
    /// `compare`, 5000 for `e2e`].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Length of the latency run (at most 50s: latency is read from the last minute).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Convergence mode of the hub.
    #[arg(long, value_parser = parse_convergence, default_value = "lww")]
    pub convergence: Convergence,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The buses to measure, comma-separated: `embedded`, `nats` (starts its own
    /// nats-server), or both for a side-by-side comparison [default: embedded,nats for
    /// `compare`, embedded for `e2e`].
    #[arg(long, value_delimiter = ',')]
    pub bus: Vec<BusChoice>,
}

/// A bus `regis bench` can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BusChoice {
    /// The embedded SQLite bus.
    Embedded,
    /// NATS JetStream, on a nats-server the benchmark starts.
    Nats,
}

impl std::fmt::Display for BusChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BusChoice::Embedded => "embedded",
            BusChoice::Nats => "nats",
        })
    }
}

/// What one bus achieved.
struct BusResult {
    bus: BusChoice,
    saturation: f64,
    saturation_latency: LatencySummary,
    fixed: LatencySummary,
}

/// `lww` or `none`, for clap.
pub(super) fn parse_convergence(s: &str) -> Result<Convergence, String> {
    match s {
        "lww" => Ok(Convergence::Lww),
        "none" => Ok(Convergence::None),
        other => Err(format!("{other:?}: use lww or none")),
    }
}

/// SETs of one value over `keys` keys (`bench:0`, `bench:1`, ...), message `n` writing key
/// `n % keys`.
pub(super) struct Workload {
    pub(super) keys: usize,
    pub(super) value: Bytes,
}

impl Workload {
    fn key(&self, n: usize) -> String {
        format!("bench:{}", n % self.keys)
    }

    pub(super) fn message(&self, n: usize) -> MessageRequest {
        MessageRequest {
            commands: vec![vec![
                Bytes::from_static(b"SET"),
                Bytes::from(self.key(n)),
                self.value.clone(),
            ]],
            db: 0,
        }
    }
}

/// Runs the benchmark and prints a report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.suite {
        Suite::Apply => return super::bench_apply::run(&args).await,
        Suite::Compare => return super::bench_compare::run(&args).await,
        Suite::E2e => {}
    }
    let rate = args.rate.unwrap_or(5_000);
    if args.duration > Duration::from_secs(50) {
        bail!("--duration is at most 50s (latency is read from the last minute of each region)");
    }
    if args.regions == 0 || args.batch == 0 || args.producers == 0 || args.keys == 0 {
        bail!("--regions, --batch, --producers and --keys must be at least 1");
    }
    let workload = Arc::new(Workload {
        keys: args.keys,
        value: Bytes::from(vec![b'v'; args.value_size]),
    });
    let mut regions = Vec::new();
    for i in 0..args.regions {
        regions.push(
            RedisProcess::start()
                .with_context(|| format!("cannot start region {i}'s redis-server"))?,
        );
    }
    let urls: Vec<String> = regions.iter().map(RedisProcess::url).collect();
    eprintln!(
        "regis bench: {} regions, {}-byte SETs over {} keys, convergence = {}, {} CPUs",
        args.regions,
        args.value_size,
        args.keys,
        args.convergence,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    eprintln!(
        "[1/3] direct fan-out: {} writes pipelined into every region ...",
        args.messages
    );
    let direct = direct_fan_out(&urls, &workload, args.messages, args.batch).await?;
    flush(&urls).await?;

    let buses = dedup(if args.bus.is_empty() {
        vec![BusChoice::Embedded]
    } else {
        args.bus.clone()
    });
    let mut results = Vec::new();
    for bus in buses {
        eprintln!(
            "[2/3] regis on the {bus} bus at saturation: {} messages, {} producers, {} per append ...",
            args.messages, args.producers, args.batch
        );
        let (saturation, saturation_latency) =
            on_bus(&args, bus, &urls, &workload, Run::Saturation).await?;
        flush(&urls).await?;
        eprintln!(
            "[3/3] regis on the {bus} bus at {} messages/s for {:?} ...",
            rate, args.duration
        );
        let (_, fixed) = on_bus(&args, bus, &urls, &workload, Run::FixedRate(rate)).await?;
        flush(&urls).await?;
        results.push(BusResult {
            bus,
            saturation,
            saturation_latency,
            fixed,
        });
    }

    // With one bus the rows read as they always did; with several, each names its bus.
    let label = |bus: BusChoice| {
        if results.len() > 1 {
            format!("regis {} on {bus}", args.convergence)
        } else {
            format!("regis {}", args.convergence)
        }
    };
    println!();
    println!("| run | throughput (writes/s) | ratio to direct | publish→applied p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| direct fan-out, pipelined ({} regions) | {:.0} | 1.00 | – | – | – |",
        args.regions, direct
    );
    for r in &results {
        println!(
            "| {}, saturation | {:.0} | {:.2} | {:.1} ms | {:.1} ms | {:.1} ms |",
            label(r.bus),
            r.saturation,
            r.saturation / direct,
            r.saturation_latency.p50_ms,
            r.saturation_latency.p99_ms,
            r.saturation_latency.max_ms
        );
    }
    for r in &results {
        println!(
            "| {}, {} msg/s offered | {:.0} | – | {:.2} ms | {:.2} ms | {:.2} ms |",
            label(r.bus),
            rate,
            r.fixed.rate_per_sec,
            r.fixed.p50_ms,
            r.fixed.p99_ms,
            r.fixed.max_ms
        );
    }
    let embedded = results.iter().find(|r| r.bus == BusChoice::Embedded);
    let nats = results.iter().find(|r| r.bus == BusChoice::Nats);
    if let (Some(embedded), Some(nats)) = (embedded, nats) {
        println!();
        println!(
            "NATS / embedded saturation throughput: {:.2}",
            nats.saturation / embedded.saturation
        );
    }
    if let Some(path) = &args.json {
        let by_bus: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|r| {
                (
                    r.bus.to_string(),
                    json!({
                        "saturation_writes_per_sec": r.saturation,
                        "saturation_ratio": r.saturation / direct,
                        "saturation_latency": r.saturation_latency,
                        "fixed_rate": { "offered_per_sec": rate, "duration_secs": args.duration.as_secs_f64(), "latency": r.fixed },
                    }),
                )
            })
            .collect();
        let first = &results[0];
        let report = json!({
            "regions": args.regions,
            "value_size": args.value_size,
            "keys": args.keys,
            "messages": args.messages,
            "convergence": args.convergence.to_string(),
            "direct_writes_per_sec": direct,
            "saturation_writes_per_sec": first.saturation,
            "saturation_ratio": first.saturation / direct,
            "saturation_latency": first.saturation_latency,
            "fixed_rate": { "offered_per_sec": rate, "duration_secs": args.duration.as_secs_f64(), "latency": first.fixed },
            "buses": by_bus,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Empties every Redis in `urls`, between runs.
pub(super) async fn flush(urls: &[String]) -> anyhow::Result<()> {
    for url in urls {
        let mut conn = connect(url).await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

/// `items` without repeats, in their first order.
pub(super) fn dedup<T: PartialEq + Copy>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// A RESP listener on a free local port.
pub(super) fn local_resp() -> RespConfig {
    RespConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RespConfig::default()
    }
}

/// Writes/s of pipelining every write into every region from the producer.
async fn direct_fan_out(
    urls: &[String],
    workload: &Arc<Workload>,
    messages: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for url in urls {
        let mut conn = connect(url).await?;
        let workload = workload.clone();
        tasks.spawn(async move {
            let mut n = 0;
            while n < messages {
                let mut pipe = redis::pipe();
                for i in n..(n + batch).min(messages) {
                    pipe.cmd("SET")
                        .arg(workload.key(i))
                        .arg(workload.value.as_ref())
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                n += batch;
            }
            redis::RedisResult::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// A hub's config for the benchmark's regions (`region0`, `region1`, ...), every default
/// but `convergence`.
pub(super) fn hub_config(
    urls: &[String],
    data: &std::path::Path,
    convergence: Convergence,
) -> Config {
    let names: Vec<(String, String)> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("region{i}"), u.clone()))
        .collect();
    let named: Vec<(&str, String)> = names.iter().map(|(n, u)| (n.as_str(), u.clone())).collect();
    let mut config = Config::with_regions(data.to_path_buf(), &named);
    config.convergence = convergence;
    config
}

/// Waits until every region has applied everything published.
pub(super) async fn wait_drained<B: Bus>(server: &Server<B>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = server.bus().stats().await?;
        if stats.iter().all(|s| s.depth == 0 && s.in_flight == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("regions did not drain within 10 minutes: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The worst region's publish→applied figures over the last minute (by p99).
pub(super) fn worst<B: Bus>(server: &Server<B>) -> LatencySummary {
    server
        .regions()
        .iter()
        .map(|r| r.latency.last_minute())
        .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
        .unwrap_or_default()
}

/// Which measurement to run on a started hub.
#[derive(Clone, Copy)]
enum Run {
    Saturation,
    /// This many messages per second for `--duration`.
    FixedRate(u64),
}

/// Starts a hub on `bus` (and for NATS its nats-server), measures, stops everything.
async fn on_bus(
    args: &BenchArgs,
    bus: BusChoice,
    urls: &[String],
    workload: &Arc<Workload>,
    run: Run,
) -> anyhow::Result<(f64, LatencySummary)> {
    let data = tempfile::Builder::new().prefix("regis-bench-").tempdir()?;
    let mut config = hub_config(urls, data.path(), args.convergence);
    config.worker.batch_size = args.batch.max(64);
    match bus {
        BusChoice::Embedded => {
            let server = Server::start(&config).await?;
            let result = measure(args, &server, workload, run).await;
            server.shutdown().await;
            result
        }
        BusChoice::Nats => {
            let nats = NatsProcess::start().context("cannot start nats-server for the NATS bus")?;
            let server = Server::start_nats(
                &config,
                &NatsConfig {
                    url: nats.url(),
                    ..NatsConfig::default()
                },
            )
            .await?;
            let result = measure(args, &server, workload, run).await;
            server.shutdown().await;
            drop(nats);
            result
        }
    }
}

async fn measure<B: Bus>(
    args: &BenchArgs,
    server: &Server<B>,
    workload: &Arc<Workload>,
    run: Run,
) -> anyhow::Result<(f64, LatencySummary)> {
    match run {
        Run::Saturation => saturate(args, server, workload).await,
        Run::FixedRate(rate) => {
            let summary = offer(args, rate, server, workload).await?;
            Ok((summary.rate_per_sec, summary))
        }
    }
}

/// Writes/s end to end (published durably and applied in every region).
async fn saturate<B: Bus>(
    args: &BenchArgs,
    server: &Server<B>,
    workload: &Arc<Workload>,
) -> anyhow::Result<(f64, LatencySummary)> {
    let started = Instant::now();
    let per_producer = args.messages.div_ceil(args.producers);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.producers {
        let hub = server.hub().clone();
        let workload = workload.clone();
        let batch = args.batch;
        let (from, to) = (
            p * per_producer,
            ((p + 1) * per_producer).min(args.messages),
        );
        tasks.spawn(async move {
            let mut n = from;
            while n < to {
                let requests: Vec<MessageRequest> = (n..(n + batch).min(to))
                    .map(|i| workload.message(i))
                    .collect();
                for result in hub.publish_many(&requests).await {
                    result?;
                }
                n += batch;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    wait_drained(server).await?;
    let rate = args.messages as f64 / started.elapsed().as_secs_f64();
    Ok((rate, worst(server)))
}

/// Latency at a fixed offered load, each message its own publish (as independent producers
/// would send them): the worst region's figures.
async fn offer<B: Bus>(
    args: &BenchArgs,
    rate: u64,
    server: &Server<B>,
    workload: &Arc<Workload>,
) -> anyhow::Result<LatencySummary> {
    let hub = server.hub().clone();
    let workload = workload.clone();
    let (sent, _) = super::bench_compare::measure::fixed_rate(rate, args.duration, move |n| {
        let hub = hub.clone();
        let request = workload.message(n);
        async move {
            hub.publish(&request).await?;
            anyhow::Ok(())
        }
    })
    .await?;
    wait_drained(server).await?;
    let mut summary = worst(server);
    summary.rate_per_sec = sent as f64 / args.duration.as_secs_f64();
    Ok(summary)
}

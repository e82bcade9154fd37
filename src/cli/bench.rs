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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::json;

use crate::bus::Stats;
use crate::bus::embedded::EmbeddedBus;
use crate::command::Convergence;
use crate::config::Config;
use crate::hub::MessageRequest;
use crate::latency::LatencySummary;
use crate::redis_process::RedisProcess;
use crate::server::Server;

/// Which measurements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
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
    #[arg(long, value_enum, default_value_t = Suite::E2e)]
    pub suite: Suite,
    /// Distinct keys written for the memory measurement of `--suite apply`.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_keys: usize,
    /// Messages (one SET each) in the direct and saturation runs.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Regions (each its own redis-server).
    #[arg(long, default_value_t = 2)]
    pub regions: usize,
    /// Messages per publish call (and per pipeline in the direct run).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Offered load of the latency run, messages per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Length of the latency run (at most 50s: latency is read from the last minute).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Convergence mode of the hub.
    #[arg(long, value_parser = parse_convergence, default_value = "lww")]
    pub convergence: Convergence,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_convergence(s: &str) -> Result<Convergence, String> {
    match s {
        "lww" => Ok(Convergence::Lww),
        "none" => Ok(Convergence::None),
        other => Err(format!("{other:?}: use lww or none")),
    }
}

struct Workload {
    keys: usize,
    value: Bytes,
}

impl Workload {
    fn key(&self, n: usize) -> String {
        format!("bench:{}", n % self.keys)
    }

    fn message(&self, n: usize) -> MessageRequest {
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
    if args.suite == Suite::Apply {
        return super::bench_apply::run(&args).await;
    }
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

    eprintln!(
        "[2/3] regis at saturation: {} messages, {} producers, {} per append ...",
        args.messages, args.producers, args.batch
    );
    let (saturation, saturation_latency) = saturation(&args, &urls, &workload).await?;
    flush(&urls).await?;

    eprintln!(
        "[3/3] regis at {} messages/s for {:?} ...",
        args.rate, args.duration
    );
    let fixed = fixed_rate(&args, &urls, &workload).await?;

    let ratio = saturation / direct;
    println!();
    println!("| run | throughput (writes/s) | ratio to direct | publish→applied p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| direct fan-out, pipelined ({} regions) | {:.0} | 1.00 | – | – | – |",
        args.regions, direct
    );
    println!(
        "| regis {}, saturation | {:.0} | {:.2} | {:.1} ms | {:.1} ms | {:.1} ms |",
        args.convergence,
        saturation,
        ratio,
        saturation_latency.p50_ms,
        saturation_latency.p99_ms,
        saturation_latency.max_ms
    );
    println!(
        "| regis {}, {} msg/s offered | {:.0} | – | {:.2} ms | {:.2} ms | {:.2} ms |",
        args.convergence, args.rate, fixed.rate_per_sec, fixed.p50_ms, fixed.p99_ms, fixed.max_ms
    );
    if let Some(path) = &args.json {
        let report = json!({
            "regions": args.regions,
            "value_size": args.value_size,
            "keys": args.keys,
            "messages": args.messages,
            "convergence": args.convergence.to_string(),
            "direct_writes_per_sec": direct,
            "saturation_writes_per_sec": saturation,
            "saturation_ratio": ratio,
            "saturation_latency": saturation_latency,
            "fixed_rate": { "offered_per_sec": args.rate, "duration_secs": args.duration.as_secs_f64(), "latency": fixed },
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn flush(urls: &[String]) -> anyhow::Result<()> {
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    }
    Ok(())
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
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
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

async fn start_hub(
    args: &BenchArgs,
    urls: &[String],
    data: &std::path::Path,
) -> anyhow::Result<Server<EmbeddedBus>> {
    let names: Vec<(String, String)> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("region{i}"), u.clone()))
        .collect();
    let named: Vec<(&str, String)> = names.iter().map(|(n, u)| (n.as_str(), u.clone())).collect();
    let mut config = Config::with_regions(data.to_path_buf(), &named);
    config.convergence = args.convergence;
    config.worker.batch_size = args.batch.max(64);
    Ok(Server::start(&config).await?)
}

async fn wait_drained(server: &Server<EmbeddedBus>) -> anyhow::Result<()> {
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

fn worst(server: &Server<EmbeddedBus>) -> LatencySummary {
    server
        .regions()
        .iter()
        .map(|r| r.latency.last_minute())
        .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
        .unwrap_or_default()
}

/// Writes/s end to end (published durably and applied in every region).
async fn saturation(
    args: &BenchArgs,
    urls: &[String],
    workload: &Arc<Workload>,
) -> anyhow::Result<(f64, LatencySummary)> {
    let data = tempfile::Builder::new().prefix("regis-bench-").tempdir()?;
    let server = start_hub(args, urls, data.path()).await?;
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
    wait_drained(&server).await?;
    let rate = args.messages as f64 / started.elapsed().as_secs_f64();
    let latency = worst(&server);
    server.shutdown().await;
    Ok((rate, latency))
}

/// Latency at a fixed offered load: the worst region's figures.
async fn fixed_rate(
    args: &BenchArgs,
    urls: &[String],
    workload: &Arc<Workload>,
) -> anyhow::Result<LatencySummary> {
    let data = tempfile::Builder::new().prefix("regis-bench-").tempdir()?;
    let server = start_hub(args, urls, data.path()).await?;
    let hub = server.hub().clone();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    while started.elapsed() < args.duration {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as usize;
        while sent < due {
            // Each message is its own publish, as independent producers would send them.
            let hub = hub.clone();
            let request = workload.message(sent);
            inflight.spawn(async move { hub.publish(&request).await.map(|_| ()) });
            sent += 1;
        }
        while let Some(done) = inflight.try_join_next() {
            done??;
        }
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    wait_drained(&server).await?;
    let mut summary = worst(&server);
    summary.rate_per_sec = sent as f64 / args.duration.as_secs_f64();
    server.shutdown().await;
    Ok(summary)
}

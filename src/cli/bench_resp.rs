//! `regis bench-resp`: durable publish throughput and latency of the RESP ingress, measured
//! with `redis-benchmark` in the same run as a plain `redis-server`, reported as ratios.
//! BENCHMARKS.md ("RESP ingress") records its output.
//!
//! Three targets, same `redis-benchmark` command line (`-P`, `-c`, `-n`, `-d`, `-r`):
//!
//! 1. **redis-server**: a plain Redis (no persistence): the ceiling of the protocol and the
//!    tool on this machine;
//! 2. **ingress**: the RESP listener on a hub whose bus has no consumers, so only the
//!    durable publish path runs (parse, validate, version, append, fsync, reply);
//! 3. **hub**: `regis serve` as deployed: the same listener while every region's worker
//!    applies what arrives to its own `redis-server`; afterwards the regions are compared.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::bench::local_resp;
use crate::bus::Stats;
use crate::bus::embedded::EmbeddedBus;
use crate::command::Convergence;
use crate::config::Config;
use crate::hub::Hub;
use crate::ingress::resp::RespServer;
use crate::redis_process::RedisProcess;
use crate::server::Server;
use crate::snapshot::Snapshot;

/// Options of `regis bench-resp`.
#[derive(Debug, Args)]
pub struct BenchRespArgs {
    /// Requests per run (`redis-benchmark -n`).
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Parallel connections (`-c`).
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Commands per pipeline (`-P`).
    #[arg(long, default_value_t = 16)]
    pub pipeline: u32,
    /// Bytes per value (`-d`).
    #[arg(long, default_value_t = 3)]
    pub value_size: u32,
    /// Distinct keys (`-r`).
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Which tests (`-t`).
    #[arg(long, default_value = "set")]
    pub tests: String,
    /// Regions of the full-hub run (each its own redis-server); 0 skips that run.
    #[arg(long, default_value_t = 2)]
    pub regions: usize,
    /// Convergence mode of the hub.
    #[arg(long, default_value = "lww", value_parser = super::bench::parse_convergence)]
    pub convergence: Convergence,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One `redis-benchmark` result line.
#[derive(Clone, Debug)]
struct Row {
    target: &'static str,
    test: String,
    rps: f64,
    avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Runs the benchmark and prints a report.
pub async fn run(args: BenchRespArgs) -> anyhow::Result<()> {
    let found = Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!(
            "redis-benchmark not found: install redis-tools (Debian: apt-get install redis-tools)"
        );
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "bench-resp: redis-benchmark -P {} -c {} -n {} -d {} -r {} -t {} ({cpus} CPUs)",
        args.pipeline, args.clients, args.requests, args.value_size, args.keyspace, args.tests
    );
    let mut rows = Vec::new();

    // 1. A plain redis-server.
    {
        let redis = RedisProcess::start().context("cannot start redis-server for the baseline")?;
        rows.extend(redis_benchmark(&args, redis.port(), "redis-server").await?);
    }

    // 2. The ingress alone: no consumer competes for the CPU.
    {
        let data = tempfile::tempdir()?;
        let bus = crate::server::open_embedded(&Config::with_regions(
            data.path().to_path_buf(),
            &[("bench", String::new())],
        ))?;
        let hub = Hub::new(
            bus.clone(),
            0,
            args.convergence,
            crate::envelope::DEFAULT_MAX_MESSAGE_BYTES,
            crate::config::DEFAULT_DATABASES,
        )
        .await?;
        let resp = RespServer::start(&local_resp(), hub).await?;
        rows.extend(redis_benchmark(&args, resp.addr().port(), "ingress").await?);
        resp.stop().await;
        let depth: u64 = bus.stats().await?.iter().map(|s| s.depth).sum();
        eprintln!("bench-resp: ingress run left {depth} durable messages on the bus");
        bus.close().await;
    }

    // 3. The whole hub, regions applying while the producers publish.
    let mut verified = json!(null);
    if args.regions > 0 {
        let regions: Vec<RedisProcess> = (0..args.regions)
            .map(|_| RedisProcess::start())
            .collect::<Result<_, _>>()
            .context("cannot start the regions' redis-server")?;
        let data = tempfile::tempdir()?;
        let server = start_hub(&args, &regions, data.path()).await?;
        let port = server
            .resp_addr()
            .context("the hub has a RESP listener")?
            .port();
        rows.extend(redis_benchmark(&args, port, "hub").await?);
        let applying = Instant::now();
        super::bench::wait_drained(&server).await?;
        let catch_up = applying.elapsed();
        let first = Snapshot::read(&regions[0].url(), 0).await?;
        for (i, region) in regions.iter().enumerate().skip(1) {
            let other = Snapshot::read(&region.url(), 0).await?;
            let diffs = first.differences(&other, 1000, 5);
            if !diffs.is_empty() {
                bail!(
                    "region {i} differs from region 0:\n  {}",
                    diffs.join("\n  ")
                );
            }
        }
        eprintln!(
            "bench-resp: every region holds the same {} keys; they caught up {:.2}s after the last acknowledgement",
            first.len(),
            catch_up.as_secs_f64()
        );
        verified = json!({ "keys": first.len(), "catch_up_s": catch_up.as_secs_f64() });
        server.shutdown().await;
    }

    print_report(&args, &rows, cpus);
    if let Some(path) = &args.json {
        let rows_json: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({ "target": r.target, "test": r.test, "rps": r.rps, "avg_ms": r.avg_ms,
                        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms })
            })
            .collect();
        let doc = json!({
            "requests": args.requests, "clients": args.clients, "pipeline": args.pipeline,
            "value_size": args.value_size, "keyspace": args.keyspace, "cpus": cpus,
            "results": rows_json, "regions_verified": verified,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn start_hub(
    args: &BenchRespArgs,
    regions: &[RedisProcess],
    data: &Path,
) -> anyhow::Result<Server<EmbeddedBus>> {
    let urls: Vec<String> = regions.iter().map(RedisProcess::url).collect();
    let mut config = super::bench::hub_config(&urls, data, args.convergence);
    config.resp = Some(local_resp());
    Ok(Server::start(&config).await?)
}

async fn redis_benchmark(
    args: &BenchRespArgs,
    port: u16,
    target: &'static str,
) -> anyhow::Result<Vec<Row>> {
    let mut command = tokio::process::Command::new("redis-benchmark");
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-P",
        &args.pipeline.to_string(),
        "-c",
        &args.clients.to_string(),
        "-n",
        &args.requests.to_string(),
        "-d",
        &args.value_size.to_string(),
        "-r",
        &args.keyspace.to_string(),
        "-t",
        &args.tests,
        "--csv",
    ]);
    let output = command
        .output()
        .await
        .context("cannot run redis-benchmark")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark against {target} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let rows = parse_csv(&text, target);
    if rows.is_empty() {
        bail!("redis-benchmark against {target} printed no result: {text}");
    }
    for row in &rows {
        eprintln!(
            "bench-resp: {target:>12} {:>6}: {:>10.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            row.test, row.rps, row.p50_ms, row.p99_ms
        );
    }
    Ok(rows)
}

/// Reads `redis-benchmark --csv` output:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
fn parse_csv(text: &str, target: &'static str) -> Vec<Row> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            if fields.len() < 8 || fields[0] == "test" {
                return None;
            }
            let num = |i: usize| fields[i].parse::<f64>().ok();
            Some(Row {
                target,
                test: fields[0].to_string(),
                rps: num(1)?,
                avg_ms: num(2)?,
                p50_ms: num(4)?,
                p99_ms: num(6)?,
                max_ms: num(7)?,
            })
        })
        .collect()
}

fn print_report(args: &BenchRespArgs, rows: &[Row], cpus: usize) {
    println!(
        "redis-benchmark -P {} -c {} -n {} -d {} -r {} -t {} — {cpus} CPUs, convergence = {}, {} region(s) in the hub run",
        args.pipeline,
        args.clients,
        args.requests,
        args.value_size,
        args.keyspace,
        args.tests,
        args.convergence,
        args.regions
    );
    println!();
    println!(
        "| target | test | requests/s | avg ms | p50 ms | p99 ms | max ms | throughput vs redis-server | p50 vs redis-server |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let base = rows
            .iter()
            .find(|b| b.target == "redis-server" && b.test == row.test);
        let (ratio, latency) = match base {
            Some(b) if b.rps > 0.0 && b.p50_ms > 0.0 => (
                format!("{:.2}×", row.rps / b.rps),
                format!("{:.1}×", row.p50_ms / b.p50_ms),
            ),
            _ => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {ratio} | {latency} |",
            row.target, row.test, row.rps, row.avg_ms, row.p50_ms, row.p99_ms, row.max_ms
        );
    }
    println!();
    println!(
        "ingress: the RESP listener on a hub with no consumer (durable publish path only); hub: `regis serve` with every region's worker applying at the same time. Every acknowledged request was on disk (fsync, group commit) before its reply."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"104166.67\",\"7.321\",\"1.136\",\"7.071\",\"10.479\",\"12.239\",\"20.703\"\n";
        let rows = parse_csv(text, "ingress");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].test, "SET");
        assert!((rows[0].rps - 104_166.67).abs() < 0.01);
        assert!((rows[0].p99_ms - 12.239).abs() < 0.001);
    }
}

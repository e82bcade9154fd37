//! `regis bench` (the default suite, `compare`): Regis side by side with the alternatives,
//! on one workload, in one run, on this machine. BENCHMARKS.md records its output.
//!
//! The workload is a mix of `SET` (half with a TTL), `HSET`, `INCRBY` and `DEL` with
//! 200-byte values over a fixed key space ([`workload`]). Every configuration writes it at
//! saturation and at a fixed offered load (`--rate` commands/s for `--duration`):
//!
//! 1. **ceiling**: pipelined writes straight into one Redis;
//! 2. **direct fan-out**: the producer pipelining every write into every region itself,
//!    the naive approach the original design rejected (not durable, no retry);
//! 3. **replicaof**: Redis's own replication, a primary and one replica per further region,
//!    with how far the replicas fall behind ([`baselines`]);
//! 4. **Regis**: for every bus of `--bus` and mode of `--modes`, over RESP and over the HTTP
//!    API (unless `--no-http`): published durably, applied in every region ([`regis`]).
//!
//! Then the scale runs on a real `regis serve` child ([`scale`]): a `--backlog` of messages
//! with one region's Redis stopped (hub RSS, bus bytes per message), its drain once the
//! Redis is back, and `--memory-keys` distinct keys (metadata per key). It prints Markdown
//! tables, and writes `bench.json` and `bench.svg` ([`plot`]) to `--out`.

mod baselines;
pub(super) mod measure;
mod plot;
mod regis;
mod scale;
mod workload;

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;

use self::measure::{CpuMeter, CpuUse, SecondFigures};
use self::regis::{Api, Setup};
pub use self::workload::Mix;
use self::workload::Workload;
use super::bench::{BenchArgs, BusChoice, dedup, flush};
use crate::command::Convergence;
use crate::latency::LatencySummary;
use crate::redis_process::RedisProcess;

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
struct Row {
    label: String,
    /// Whether an acknowledged write survives a crash of the writer's side.
    durable: bool,
    saturation: f64,
    saturation_latency: Option<LatencySummary>,
    saturation_cpu: CpuUse,
    fixed: LatencySummary,
    fixed_cpu: CpuUse,
    timeline: Vec<SecondFigures>,
    replica_lag: Option<baselines::ReplicaLag>,
    #[serde(skip)]
    setup: Option<Setup>,
}

#[derive(Serialize)]
struct Report<'a> {
    machine: &'a str,
    command: String,
    regions: usize,
    messages: usize,
    keys: usize,
    value_size: usize,
    mix: String,
    ttl_percent: u32,
    rate: u64,
    duration_secs: f64,
    rows: &'a [Row],
    scale: Option<&'a scale::ScaleFigures>,
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1048576.0)
        });
    let version = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .and_then(|v| {
                v.split_whitespace()
                    .find(|w| w.starts_with("v=") || w.starts_with('v') && w.contains('.'))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "not found".into())
    };
    format!(
        "{cpus} CPUs, {memory}, Linux {kernel}, load average {load} at the start; redis-server {}, nats-server {}, regis {}",
        version("redis-server").trim_start_matches("v="),
        version("nats-server"),
        env!("CARGO_PKG_VERSION")
    )
}

fn ms(summary: &LatencySummary) -> String {
    format!(
        "{:.2} | {:.2} | {:.2}",
        summary.p50_ms, summary.p99_ms, summary.max_ms
    )
}

/// Runs the comparison and prints its report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let rate = args.rate.unwrap_or(10_000);
    if args.duration > Duration::from_secs(50) {
        bail!("--duration is at most 50s (latency is read from the last minute of each region)");
    }
    if args.regions < 2 || args.batch == 0 || args.producers == 0 || args.keys == 0 || rate == 0 {
        bail!(
            "--regions must be at least 2 (one stays up in the scale run), and --batch, --producers, --keys and --rate at least 1"
        );
    }
    let buses = dedup(if args.bus.is_empty() {
        vec![BusChoice::Embedded, BusChoice::Nats]
    } else {
        args.bus.clone()
    });
    let modes = dedup(args.modes.clone());
    let workload = Workload {
        keys: args.keys,
        mix: args.mix,
        ttl_percent: args.ttl_percent,
        ttl_secs: 3600,
        value: Bytes::from(vec![b'v'; args.value_size]),
        offset: 0,
    };
    let machine = machine();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!("regis bench: {machine}");
    eprintln!(
        "workload: {} regions, {}-byte values over {} keys per type, mix {} ({}% of SETs with a TTL); {} commands at saturation, {rate}/s for {:?} offered",
        args.regions,
        args.value_size,
        args.keys,
        args.mix,
        args.ttl_percent,
        args.messages,
        args.duration
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let mut regions = Vec::new();
    for i in 0..args.regions {
        regions.push(
            RedisProcess::start()
                .with_context(|| format!("cannot start region{i}'s redis-server"))?,
        );
    }
    let urls: Vec<String> = regions.iter().map(RedisProcess::url).collect();
    let redis_pids: Vec<(String, u32)> = regions
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((format!("redis region{i}"), r.pid()?)))
        .collect();
    let own = ("regis bench (producer)".to_string(), std::process::id());
    let mut with_own = vec![own.clone()];
    with_own.extend(redis_pids.iter().cloned());

    let mut apis = vec![Api::Resp];
    if args.http {
        apis.push(Api::Http);
    }
    let mut setups = Vec::new();
    for api in &apis {
        for bus in &buses {
            for mode in &modes {
                setups.push(Setup {
                    bus: *bus,
                    convergence: *mode,
                    api: *api,
                });
            }
        }
    }
    let steps = 3 + setups.len() + usize::from(args.backlog > 0);
    let mut step = 0;
    let mut next = |what: &str| {
        step += 1;
        eprintln!("[{step}/{steps}] {what}");
    };
    let mut rows = Vec::new();

    next("ceiling: pipelined writes into one Redis");
    rows.push(
        direct_row(
            "ceiling: pipelined into one Redis".into(),
            &urls[..1],
            &with_own[..2],
            &workload,
            args,
            rate,
        )
        .await?,
    );

    next("direct fan-out: the producer pipelines every write into every region");
    rows.push(
        direct_row(
            format!("direct fan-out to {} regions", args.regions),
            &urls,
            &with_own,
            &workload,
            args,
            rate,
        )
        .await?,
    );

    next("replicaof: a primary and its replicas");
    {
        // Redis's replication gets its own servers, so the regions' stay clean.
        let replicated = baselines::Replicated::start(args.regions - 1).await?;
        let mut processes = vec![own.clone()];
        if let Some(pid) = replicated.primary.pid() {
            processes.push(("redis primary".into(), pid));
        }
        for (i, r) in replicated.replicas.iter().enumerate() {
            if let Some(pid) = r.pid() {
                processes.push((format!("redis replica{}", i + 1), pid));
            }
        }
        let cpu = CpuMeter::start(&processes);
        let saturated = replicated
            .saturation(&workload, args.messages, args.batch)
            .await?;
        let saturation_cpu = cpu.stop();
        let cpu = CpuMeter::start(&processes);
        let (_, fixed) = replicated
            .fixed_rate(&workload, rate, args.duration)
            .await?;
        let fixed_cpu = cpu.stop();
        rows.push(Row {
            label: format!("replicaof: primary + {} replica(s)", args.regions - 1),
            durable: false,
            saturation: saturated.rate,
            saturation_latency: None,
            saturation_cpu,
            fixed: fixed.summary(args.duration),
            fixed_cpu,
            timeline: fixed.timeline(),
            replica_lag: saturated.replica_lag,
            setup: None,
        });
    }

    for setup in &setups {
        next(&format!("{}: saturation, then {rate}/s", setup.label()));
        let load = regis::Load {
            workload: &workload,
            messages: args.messages,
            batch: args.batch,
            producers: args.producers,
            rate,
            duration: args.duration,
            redis_pids: &redis_pids,
        };
        let saturated = regis::measure(setup, &urls, &load, regis::Run::Saturation).await?;
        flush(&urls).await?;
        let fixed = regis::measure(setup, &urls, &load, regis::Run::FixedRate).await?;
        flush(&urls).await?;
        eprintln!(
            "      {:.0} commands/s at saturation; at {rate}/s p99 {:.2} ms",
            saturated.rate, fixed.latency.p99_ms
        );
        rows.push(Row {
            label: setup.label(),
            durable: true,
            saturation: saturated.rate,
            saturation_latency: Some(saturated.latency),
            saturation_cpu: saturated.cpu,
            fixed: fixed.latency,
            fixed_cpu: fixed.cpu,
            timeline: fixed.timeline,
            replica_lag: None,
            setup: Some(*setup),
        });
    }
    drop(regions);

    let scale = if args.backlog > 0 {
        next(&format!(
            "scale: {} messages of backlog with one region stopped, its drain, {} distinct keys",
            args.backlog, args.memory_keys
        ));
        Some(
            scale::run(
                args.regions,
                args.backlog,
                args.memory_keys,
                args.producers,
                &workload,
            )
            .await?,
        )
    } else {
        None
    };

    report(args, rate, &machine, &command, &rows, scale.as_ref())
}

/// Writes straight into `urls` (one: the ceiling; all: the direct fan-out), at saturation
/// and at `rate`, with the CPU of `processes`.
async fn direct_row(
    label: String,
    urls: &[String],
    processes: &[(String, u32)],
    workload: &Workload,
    args: &BenchArgs,
    rate: u64,
) -> anyhow::Result<Row> {
    let cpu = CpuMeter::start(processes);
    let (saturation, recorder) =
        baselines::pipelined(urls, workload, args.messages, args.batch).await?;
    let saturation_cpu = cpu.stop();
    flush(urls).await?;
    let cpu = CpuMeter::start(processes);
    let (_, fixed) = baselines::fixed_rate_direct(urls, workload, rate, args.duration).await?;
    let fixed_cpu = cpu.stop();
    flush(urls).await?;
    Ok(Row {
        label,
        durable: false,
        saturation,
        saturation_latency: Some(recorder.summary(Duration::from_secs(1))),
        saturation_cpu,
        fixed: fixed.summary(args.duration),
        fixed_cpu,
        timeline: fixed.timeline(),
        replica_lag: None,
        setup: None,
    })
}

fn report(
    args: &BenchArgs,
    rate: u64,
    machine: &str,
    command: &str,
    rows: &[Row],
    scale: Option<&scale::ScaleFigures>,
) -> anyhow::Result<()> {
    let (ceiling, direct, replicaof) = (rows[0].saturation, rows[1].saturation, rows[2].saturation);
    println!();
    println!("machine: {machine}");
    println!("command: {command}");
    println!();
    println!(
        "| configuration | durable | commands/s at saturation | × ceiling | × direct fan-out | × replicaof |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            row.label,
            if row.durable { "yes" } else { "no" },
            row.saturation,
            row.saturation / ceiling,
            row.saturation / direct,
            row.saturation / replicaof
        );
    }
    println!();
    println!(
        "| configuration | saturation p50 ms | p99 | max | at {rate}/s: offered | p50 ms | p99 | max |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let saturation = match (&row.saturation_latency, &row.replica_lag) {
            (Some(l), _) => ms(l),
            (None, Some(lag)) => format!(
                "– | – | caught up {:.1} ms after the last write",
                lag.catch_up_ms
            ),
            (None, None) => "– | – | –".into(),
        };
        println!(
            "| {} | {} | {:.0}/s | {} |",
            row.label,
            saturation,
            row.fixed.rate_per_sec,
            ms(&row.fixed)
        );
    }
    println!();
    println!(
        "Regis latency at {rate}/s as a ratio to the alternatives' (publish→applied against each one's own latency at the same offered load; above 1 is slower):"
    );
    println!();
    println!(
        "| configuration | p50 × ceiling | × direct fan-out | × replicaof | p99 × ceiling | × direct fan-out | × replicaof |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let baseline = [&rows[0].fixed, &rows[1].fixed, &rows[2].fixed];
    for row in rows.iter().filter(|r| r.setup.is_some()) {
        let ratio = |mine: f64, theirs: f64| {
            if theirs > 0.0 {
                format!("{:.1}", mine / theirs)
            } else {
                "–".into()
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            ratio(row.fixed.p50_ms, baseline[0].p50_ms),
            ratio(row.fixed.p50_ms, baseline[1].p50_ms),
            ratio(row.fixed.p50_ms, baseline[2].p50_ms),
            ratio(row.fixed.p99_ms, baseline[0].p99_ms),
            ratio(row.fixed.p99_ms, baseline[1].p99_ms),
            ratio(row.fixed.p99_ms, baseline[2].p99_ms),
        );
    }
    println!();
    println!(
        "Latency: ceiling and direct, until every copy answered the write (at saturation, the pipeline's round trip); replicaof at {rate}/s, until `WAIT` saw every replica apply it; Regis, publish→applied in the slowest region (from the version's ingress time to the region Redis's reply)."
    );
    for row in rows {
        if let Some(lag) = &row.replica_lag {
            println!(
                "replicaof at saturation: replicas at most {} bytes (~{} commands) behind the primary; they caught up {:.1} ms after the last write was acknowledged",
                lag.max_bytes_behind, lag.max_commands_behind, lag.catch_up_ms
            );
        }
    }
    println!();
    println!("Where the CPU went (seconds of CPU per process over the run):");
    println!();
    println!("| configuration | at saturation | at {rate}/s |");
    println!("|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} |",
            row.label,
            row.saturation_cpu.describe(),
            row.fixed_cpu.describe()
        );
    }
    if let Some(scale) = scale {
        println!();
        println!(
            "Scale: {} messages published at {:.0}/s while region{}'s Redis was stopped (hub = `regis serve`, embedded bus, lww):",
            scale.backlog,
            scale.publish_rate,
            args.regions - 1
        );
        println!();
        println!("| backlog (messages) | hub RSS | bus file on disk |");
        println!("|---:|---:|---:|");
        for sample in &scale.samples {
            println!(
                "| {} | {:.1} MiB | {:.1} MiB |",
                sample.messages,
                crate::cli::bench_hub::mib(sample.hub_rss_bytes),
                crate::cli::bench_hub::mib(sample.bus_bytes)
            );
        }
        println!();
        println!(
            "hub RSS peak while the backlog built up: {:.1} MiB; bus file {:.0} bytes per message; the region drained {} messages in {:.1} s ({:.0} commands/s) after its Redis restarted, hub RSS peak while draining {:.1} MiB",
            crate::cli::bench_hub::mib(scale.peak_hub_rss_bytes),
            scale.bus_bytes_per_message,
            scale.backlog,
            scale.drain_secs,
            scale.drain_rate,
            crate::cli::bench_hub::mib(scale.peak_hub_rss_while_draining_bytes)
        );
        println!(
            "{} distinct keys of {} bytes: {:.0} bytes per key written plainly, {:.0} through regis lww: {:.0} bytes of metadata per key",
            scale.memory_keys,
            args.value_size,
            scale.plain_bytes_per_key,
            scale.regis_bytes_per_key,
            scale.regis_bytes_per_key - scale.plain_bytes_per_key
        );
    }

    println!();
    println!(
        "Targets (issue 8, set for a 2-core machine; this one has {}):",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let find = |mode: Convergence| {
        rows.iter().find(|r| {
            r.setup.is_some_and(|s| {
                s.bus == BusChoice::Embedded && s.api == Api::Resp && s.convergence == mode
            })
        })
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    if let Some(lww) = find(Convergence::Lww) {
        let ratio = lww.saturation / direct;
        println!(
            "- lww end to end >= 0.50 × direct fan-out: {ratio:.2}, {}",
            verdict(ratio >= 0.5)
        );
    }
    // The latency target holds for every way in, not only the fastest: one line per row.
    for row in rows.iter().filter(|r| r.setup.is_some()) {
        println!(
            "- p99 publish→applied < 10 ms at {rate}/s ({}): {:.2} ms, {}{}",
            row.label,
            row.fixed.p99_ms,
            verdict(row.fixed.p99_ms < 10.0),
            if rate < 10_000 {
                " (offered load below the target's 10,000/s)"
            } else {
                ""
            }
        );
    }
    if let Some(none) = find(Convergence::None) {
        let ratio = none.saturation / direct;
        println!(
            "- none end to end >= 0.70 × direct fan-out: {ratio:.2}, {}",
            verdict(ratio >= 0.7)
        );
    }
    if let Some(scale) = scale {
        let peak = crate::cli::bench_hub::mib(
            scale
                .peak_hub_rss_bytes
                .max(scale.peak_hub_rss_while_draining_bytes),
        );
        println!(
            "- hub RSS < 200 MiB with {} messages of backlog: peak {peak:.1} MiB, {}{}",
            scale.backlog,
            verdict(peak < 200.0),
            if scale.backlog < 10_000_000 {
                " (backlog below the target's 10M)"
            } else {
                ""
            }
        );
    }

    let series: Vec<plot::Series<'_>> = rows
        .iter()
        .map(|r| plot::Series {
            label: &r.label,
            throughput: r.saturation,
            timeline: &r.timeline,
        })
        .collect();
    let svg = plot::render(
        &format!(
            "regis bench: {} regions, {}-byte values, mix {}",
            args.regions, args.value_size, args.mix
        ),
        rate,
        &series,
    );
    let svg_path = args.out.join("bench.svg");
    std::fs::write(&svg_path, svg)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let json_path = args.out.join("bench.json");
    let report = Report {
        machine,
        command: command.to_string(),
        regions: args.regions,
        messages: args.messages,
        keys: args.keys,
        value_size: args.value_size,
        mix: args.mix.to_string(),
        ttl_percent: args.ttl_percent,
        rate,
        duration_secs: args.duration.as_secs_f64(),
        rows,
        scale,
    };
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!();
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}

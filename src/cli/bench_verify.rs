//! `regis bench-verify`: how fast `regis verify` compares two regions, and in how much memory.
//!
//! It starts two throwaway `redis-server`s, loads the same `--keys` keys of mixed types into
//! both (strings, half of them with a TTL; hashes, sets and sorted sets of a few members;
//! counters) — plus, by default, one `lww` state key per data key as a real hub leaves them —
//! changes `--drift` keys in the second region, then runs the real `regis verify` binary as
//! a child process and reports its wall-clock time, keys compared per second and peak RSS
//! (from `wait4`). BENCHMARKS.md records its output.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use redis::aio::MultiplexedConnection;

use crate::apply::lww::meta_key;
use crate::clock::now_ms;
use crate::redis_process::{RedisProcess, connect};

/// Options of `regis bench-verify`.
#[derive(Debug, Args)]
pub struct BenchVerifyArgs {
    /// Data keys in each region.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Keys changed in the second region before the comparison.
    #[arg(long, default_value_t = 0)]
    pub drift: u64,
    /// Leave out the per-key `lww` state keys.
    #[arg(long)]
    pub no_metadata: bool,
    /// Passed to `regis verify --chunk`.
    #[arg(long, default_value_t = 1000)]
    pub chunk: u32,
    /// Target: keys compared per second.
    #[arg(long, default_value_t = 200_000.0)]
    pub target_keys_per_sec: f64,
    /// Target: peak RSS of `regis verify`, MiB.
    #[arg(long, default_value_t = 100.0)]
    pub target_peak_mib: f64,
}

/// The key layout, by `i % 20`: what share of the keys is of which type.
const MIX: &str = "strings 40% (half with a TTL), hashes of 5 fields 20%, sets of 5 members 15%, sorted sets of 5 members 15%, counters 10%";

fn value(i: u64, len: usize) -> String {
    let seed = format!("{i:016x}");
    seed.repeat(len / seed.len() + 1)[..len].to_string()
}

/// Queues the writes of key `i` (and its metadata) on `pipe`.
fn write_key(pipe: &mut redis::Pipeline, i: u64, deadline_ms: u64, metadata: bool) {
    let key = match i % 20 {
        0..=7 => {
            let key = format!("fare:{i}");
            pipe.cmd("SET")
                .arg(&key)
                .arg(value(i, 60 + (i % 140) as usize));
            if i.is_multiple_of(2) {
                pipe.cmd("PEXPIREAT").arg(&key).arg(deadline_ms);
            }
            key
        }
        8..=11 => {
            let key = format!("hotel:{i}");
            pipe.cmd("HSET")
                .arg(&key)
                .arg("name")
                .arg(format!("Hotel {i}"))
                .arg("city")
                .arg(["Singapore", "Mumbai", "Tokyo"][(i % 3) as usize])
                .arg("stars")
                .arg(3 + i % 3)
                .arg("rate_usd")
                .arg(80 + i % 300)
                .arg("updated")
                .arg(value(i, 24));
            key
        }
        12..=14 => {
            let key = format!("city:{i}:hotels");
            pipe.cmd("SADD").arg(&key);
            for m in 0..5 {
                pipe.arg(format!("hotel:{}", i * 7 + m));
            }
            key
        }
        15..=17 => {
            let key = format!("rank:{i}");
            pipe.cmd("ZADD").arg(&key);
            for m in 0..5u64 {
                pipe.arg(m * 10 + i % 7).arg(format!("hotel:{}", i * 3 + m));
            }
            key
        }
        _ => {
            let key = format!("bookings:{i}");
            pipe.cmd("SET").arg(&key).arg(i % 1000);
            key
        }
    };
    if metadata {
        // The shape of an lww state string: a floor version and a TTL register.
        pipe.cmd("SET")
            .arg(meta_key(key.as_bytes()))
            .arg(format!("f{i:019}t{i:019}d0"));
    }
}

async fn load(
    conn: &mut MultiplexedConnection,
    keys: u64,
    deadline_ms: u64,
    metadata: bool,
) -> redis::RedisResult<()> {
    const BATCH: u64 = 5_000;
    let mut start = 0;
    while start < keys {
        let end = (start + BATCH).min(keys);
        let mut pipe = redis::pipe();
        for i in start..end {
            write_key(&mut pipe, i, deadline_ms, metadata);
        }
        pipe.query_async::<()>(conn).await?;
        start = end;
    }
    Ok(())
}

/// CPU seconds a `redis-server` has used so far (`INFO cpu`: user + system, all threads).
pub(super) async fn redis_cpu(conn: &mut MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum())
}

/// The 1/5/15-minute load averages (Linux), to judge how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the benchmark.
pub async fn run(args: BenchVerifyArgs) -> anyhow::Result<()> {
    let a = RedisProcess::start().context("cannot start the first region's redis-server")?;
    let b = RedisProcess::start().context("cannot start the second region's redis-server")?;
    let (mut ca, mut cb) = (connect(&a.url()).await?, connect(&b.url()).await?);
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut ca)
        .await?;
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "regis bench-verify: 2 regions (redis-server {version}) x {} keys: {MIX}{}",
        args.keys,
        if args.no_metadata {
            String::new()
        } else {
            "; plus one lww state key per key (scanned and skipped)".into()
        }
    );
    println!(
        "machine: {} CPUs available to this process; load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let loading = Instant::now();
    let deadline = now_ms() + 3_600_000;
    let metadata = !args.no_metadata;
    let (la, lb) = tokio::join!(
        load(&mut ca, args.keys, deadline, metadata),
        load(&mut cb, args.keys, deadline, metadata),
    );
    la.context("loading the first region")?;
    lb.context("loading the second region")?;
    for n in 0..args.drift.min(args.keys) {
        // Spread over the key space and the types: string keys get a new value.
        let i = (n * 7919) % args.keys;
        if i % 20 <= 7 {
            redis::cmd("SET")
                .arg(format!("fare:{i}"))
                .arg("drifted")
                .query_async::<()>(&mut cb)
                .await?;
        } else {
            redis::cmd("DEL")
                .arg(match i % 20 {
                    8..=11 => format!("hotel:{i}"),
                    12..=14 => format!("city:{i}:hotels"),
                    15..=17 => format!("rank:{i}"),
                    _ => format!("bookings:{i}"),
                })
                .query_async::<()>(&mut cb)
                .await?;
        }
    }
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut ca).await?;
    println!(
        "loaded {size} keys per region in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().context("cannot find the regis binary to run verify")?;
    let mut command = Command::new(exe);
    command
        .arg("verify")
        .arg("--redis")
        .arg(format!("a={}", a.url()))
        .arg("--redis")
        .arg(format!("b={}", b.url()))
        .arg("--chunk")
        .arg(args.chunk.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!(
        "running: regis verify --redis a={} --redis b={} --chunk {}",
        a.url(),
        b.url(),
        args.chunk
    );
    let cpu_before = (redis_cpu(&mut ca).await?, redis_cpu(&mut cb).await?);
    let started = Instant::now();
    let child = command.spawn().context("cannot run regis verify")?;
    let finished = crate::peak_rss::wait(child).context("waiting for regis verify")?;
    let elapsed = started.elapsed();
    let redis_used = (
        redis_cpu(&mut ca).await? - cpu_before.0,
        redis_cpu(&mut cb).await? - cpu_before.1,
    );
    print!("--- regis verify said ---\n{}", finished.stdout);
    if !finished.stderr.trim().is_empty() {
        print!("--- on stderr ---\n{}", finished.stderr);
    }
    println!("---");
    let expected = if args.drift == 0 { 0 } else { 1 };
    if finished.code != Some(expected) {
        bail!(
            "regis verify exited {:?}, expected {expected} ({} drifted keys)",
            finished.code,
            args.drift
        );
    }
    let rate = args.keys as f64 / elapsed.as_secs_f64();
    let mib = finished.peak_rss_bytes as f64 / (1024.0 * 1024.0);
    println!(
        "verify: {} keys compared in {:.2} s (wall clock, process start to exit) = {:.0} keys/s; peak RSS {:.1} MiB",
        args.keys,
        elapsed.as_secs_f64(),
        rate,
        mib
    );
    let total_cpu = finished.cpu_seconds + redis_used.0 + redis_used.1;
    println!(
        "CPU used during the run: regis verify {:.2} s, region a's redis-server {:.2} s, region b's {:.2} s; \
         total {:.2} s = {:.1} us per key",
        finished.cpu_seconds,
        redis_used.0,
        redis_used.1,
        total_cpu,
        total_cpu * 1e6 / args.keys as f64
    );
    println!("load average after the run: {}", load_average());
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: >= {:.0} keys/s: {}; peak RSS < {:.0} MiB: {}",
        args.target_keys_per_sec,
        verdict(rate >= args.target_keys_per_sec),
        args.target_peak_mib,
        verdict(mib < args.target_peak_mib)
    );
    drop((a, b));
    Ok(())
}

//! `regis bench --suite apply`: how fast one region's Redis takes replicated SETs under each
//! convergence mode, against that Redis's own pipelined SET ceiling, in one run; and what the
//! `lww` metadata costs in memory per key.
//!
//! It starts one `redis-server` and measures `--messages` 200-byte SETs over `--keys` keys:
//! the raw ceiling (plain pipelined SETs, `--batch` per pipeline), the `none` applier and the
//! `lww` applier (batches of `--batch` messages, two concurrent consumers as a region's worker
//! runs them). Then it writes `--memory-keys` distinct keys once plainly and once through
//! `lww`, and reports `used_memory` per key for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use super::bench::BenchArgs;
use super::bench::flush;
use crate::apply::{Applier, RegionRedis};
use crate::clock::{HybridClock, now_us};
use crate::command::{Command, Convergence};
use crate::envelope::{Envelope, MessageId};
use crate::redis_process::{RedisProcess, connect};

const CONSUMERS: usize = 2;

fn envelopes(
    clock: &HybridClock,
    from: usize,
    to: usize,
    keys: usize,
    value: &Bytes,
) -> Vec<Envelope> {
    (from..to)
        .map(|n| Envelope {
            id: MessageId::new(),
            version: clock.issue(1),
            published_at_us: now_us(),
            db: 0,
            commands: vec![Command(vec![
                Bytes::from_static(b"SET"),
                Bytes::from(format!("bench:{}", n % keys)),
                value.clone(),
            ])],
        })
        .collect()
}

async fn reset_stats(url: &str) -> anyhow::Result<()> {
    let mut conn = connect(url).await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// `used_memory` of the Redis at `url`, bytes.
pub(super) async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let mut conn = connect(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// SETs/s of plain pipelined SETs from `CONSUMERS` connections.
async fn raw_ceiling(
    url: &str,
    messages: usize,
    keys: usize,
    batch: usize,
    value: &Bytes,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = messages.div_ceil(CONSUMERS);
    for c in 0..CONSUMERS {
        let mut conn = connect(url).await?;
        let value = value.clone();
        let (from, to) = (c * per, ((c + 1) * per).min(messages));
        tasks.spawn(async move {
            let mut n = from;
            while n < to {
                let mut pipe = redis::pipe();
                for i in n..(n + batch).min(to) {
                    pipe.cmd("SET")
                        .arg(format!("bench:{}", i % keys))
                        .arg(value.as_ref())
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                n += batch;
            }
            redis::RedisResult::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Messages/s through an applier, `CONSUMERS` batches at a time.
async fn through_applier(
    url: &str,
    mode: Convergence,
    messages: usize,
    keys: usize,
    batch: usize,
    value: &Bytes,
) -> anyhow::Result<f64> {
    let clock = Arc::new(HybridClock::new(0, None));
    let applier = Applier::new(mode, Duration::from_secs(4 * 24 * 3600));
    // Encode the workload first: the measurement is the Redis side, not envelope building.
    let per = messages.div_ceil(CONSUMERS);
    let mut work = Vec::new();
    for c in 0..CONSUMERS {
        let (from, to) = (c * per, ((c + 1) * per).min(messages));
        let mut batches = Vec::new();
        let mut n = from;
        while n < to {
            batches.push(envelopes(&clock, n, (n + batch).min(to), keys, value));
            n += batch;
        }
        work.push(batches);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for batches in work {
        let applier = applier.clone();
        let mut redis = RegionRedis::new(url, Duration::from_secs(30))?;
        tasks.spawn(async move {
            for batch in batches {
                for outcome in applier
                    .apply(&mut redis, &batch)
                    .await
                    .map_err(|f| anyhow::anyhow!("{f:?}"))?
                {
                    outcome.map_err(|f| anyhow::anyhow!("{f:?}"))?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Runs the suite and prints a report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let redis = RedisProcess::start().context("cannot start redis-server")?;
    let url = redis.url();
    let value = Bytes::from(vec![b'v'; args.value_size]);
    eprintln!(
        "regis bench --suite apply: one redis-server, {} SETs of {} bytes over {} keys, batches of {}",
        args.messages, args.value_size, args.keys, args.batch
    );
    eprintln!("[1/4] raw pipelined SET ceiling ...");
    let raw = raw_ceiling(&url, args.messages, args.keys, args.batch, &value).await?;
    flush(std::slice::from_ref(&url)).await?;
    eprintln!("[2/4] none applier ...");
    let none = through_applier(
        &url,
        Convergence::None,
        args.messages,
        args.keys,
        args.batch,
        &value,
    )
    .await?;
    flush(std::slice::from_ref(&url)).await?;
    eprintln!("[3/4] lww applier ...");
    // Where the time goes inside Redis, on request: per-command call counts and µs per call.
    let commandstats = std::env::var_os("REGIS_BENCH_COMMANDSTATS").is_some();
    if commandstats {
        reset_stats(&url).await?;
    }
    let lww = through_applier(
        &url,
        Convergence::Lww,
        args.messages,
        args.keys,
        args.batch,
        &value,
    )
    .await?;
    if commandstats {
        let mut conn = connect(&url).await?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        eprintln!("{stats}");
    }
    flush(std::slice::from_ref(&url)).await?;

    eprintln!(
        "[4/4] memory: {} distinct keys, plain and through lww ...",
        args.memory_keys
    );
    let empty = used_memory(&url).await?;
    raw_ceiling(&url, args.memory_keys, args.memory_keys, args.batch, &value).await?;
    let plain = used_memory(&url).await?.saturating_sub(empty);
    flush(std::slice::from_ref(&url)).await?;
    let empty = used_memory(&url).await?;
    through_applier(
        &url,
        Convergence::Lww,
        args.memory_keys,
        args.memory_keys,
        args.batch,
        &value,
    )
    .await?;
    let with_meta = used_memory(&url).await?.saturating_sub(empty);
    let per_key = |bytes: u64| bytes as f64 / args.memory_keys.max(1) as f64;

    println!();
    println!("| apply path (one Redis) | SETs/s | ratio to raw ceiling |");
    println!("|---|---:|---:|");
    println!("| raw pipelined SET (ceiling) | {raw:.0} | 1.00 |");
    println!("| regis `none` applier | {none:.0} | {:.2} |", none / raw);
    println!("| regis `lww` applier | {lww:.0} | {:.2} |", lww / raw);
    println!();
    println!(
        "| memory, {} keys of {} bytes | bytes per key |",
        args.memory_keys, args.value_size
    );
    println!("|---|---:|");
    println!("| plain SET | {:.0} |", per_key(plain));
    println!(
        "| through `lww` (data + metadata) | {:.0} |",
        per_key(with_meta)
    );
    println!(
        "| `lww` metadata overhead | {:.0} |",
        per_key(with_meta.saturating_sub(plain))
    );
    Ok(())
}

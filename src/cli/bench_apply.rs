//! `regis bench --suite apply`: how fast one region's Redis takes replicated SETs under each
//! convergence mode, against that Redis's own pipelined SET ceiling, in one run; and what the
//! `lww` metadata costs in memory per key.
//!
//! It starts one `redis-server` and measures `--messages` 200-byte SETs over `--keys` keys:
//! the raw ceiling (plain pipelined SETs, `--batch` per pipeline), the `none` applier and the
//! `lww` applier (batches of `--batch` messages, two concurrent consumers as a region's worker
//! runs them), five times each, interleaved, reporting the median of each. Then it writes
//! `--memory-keys` distinct keys once plainly and once through `lww`, and reports
//! `used_memory` per key for both; and, for each shape of key the convergence metadata
//! treats differently (a string with a TTL, collections, counters, removed members), the
//! same comparison on up to 100,000 keys of that shape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;

use super::bench::BenchArgs;
use super::bench::flush;
use super::bench_verify::redis_cpu;
use crate::apply::{Applier, RegionRedis};
use crate::clock::{HybridClock, now_us};
use crate::command::{Command, Convergence};
use crate::envelope::{Envelope, MessageId};
use crate::redis_process::{RedisProcess, connect};

const CONSUMERS: usize = 2;

/// How many times each apply path is measured (see `run`).
const APPLY_ROUNDS: usize = 5;

/// The median of `values` (the upper one of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

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

/// Runs one apply measurement and answers (SETs/s, µs of Redis CPU per SET).
async fn with_redis_cpu(
    stats: &mut MultiplexedConnection,
    messages: usize,
    run: impl std::future::Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<(f64, f64)> {
    let before = redis_cpu(stats).await?;
    let rate = run.await?;
    let used = redis_cpu(stats).await? - before;
    Ok((rate, used * 1e6 / messages.max(1) as f64))
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

/// A shape of key whose `lww` metadata costs differ, as the messages that build one key.
struct Shape {
    label: &'static str,
    /// The messages (one command each, as a producer sends them) that build key `key`.
    messages: fn(key: &str, value: &Bytes) -> Vec<Vec<Bytes>>,
}

fn args(words: &[&str], value: &Bytes) -> Vec<Bytes> {
    words
        .iter()
        .map(|w| {
            if *w == "$v" {
                value.clone()
            } else {
                Bytes::copy_from_slice(w.as_bytes())
            }
        })
        .collect()
}

const SHAPES: &[Shape] = &[
    Shape {
        label: "string with a TTL (`SET k v EX 3600`)",
        messages: |k, v| vec![args(&["SET", k, "$v", "EX", "3600"], v)],
    },
    Shape {
        label: "hash of 5 fields (one `HSET`)",
        messages: |k, v| {
            vec![args(
                &[
                    "HSET", k, "f1", "$v", "f2", "$v", "f3", "$v", "f4", "$v", "f5", "$v",
                ],
                v,
            )]
        },
    },
    Shape {
        label: "hash of 5 fields after 5 others were removed (`HDEL`)",
        messages: |k, v| {
            let mut words = vec!["HSET", k];
            for f in ["f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10"] {
                words.extend([f, "$v"]);
            }
            vec![
                args(&words, v),
                args(&["HDEL", k, "f6", "f7", "f8", "f9", "f10"], v),
            ]
        },
    },
    Shape {
        label: "set of 5 members (one `SADD`)",
        messages: |k, v| vec![args(&["SADD", k, "m1", "m2", "m3", "m4", "m5"], v)],
    },
    Shape {
        label: "sorted set of 5 members (one `ZADD`)",
        messages: |k, v| {
            vec![args(
                &[
                    "ZADD", k, "1", "m1", "2", "m2", "3", "m3", "4", "m4", "5", "m5",
                ],
                v,
            )]
        },
    },
    Shape {
        label: "counter after 10 `INCRBY`s",
        messages: |k, v| (0..10).map(|_| args(&["INCRBY", k, "7"], v)).collect(),
    },
];

/// Keys per shape in the shape memory runs.
const SHAPE_KEYS: usize = 100_000;

/// `used_memory` added by `keys` keys of `shape` applied under `mode`, per key.
async fn shape_memory(
    url: &str,
    shape: &Shape,
    mode: Convergence,
    keys: usize,
    batch: usize,
    value: &Bytes,
) -> anyhow::Result<f64> {
    flush(&[url.to_string()]).await?;
    let empty = used_memory(url).await?;
    let clock = HybridClock::new(0, None);
    let applier = Applier::new(mode, Duration::from_secs(4 * 24 * 3600));
    let mut redis = RegionRedis::new(url, Duration::from_secs(30))?;
    let now = crate::clock::now_ms();
    // Message i of every key before message i + 1 of any: a key's messages apply in order.
    let per_key: Vec<Vec<Vec<Bytes>>> = (0..keys)
        .map(|k| (shape.messages)(&format!("shape:{k}"), value))
        .collect();
    let rounds = per_key.first().map_or(0, Vec::len);
    for round in 0..rounds {
        let mut envelopes = Vec::with_capacity(batch);
        for messages in &per_key {
            let command = crate::command::prepare(&messages[round], mode, now)
                .map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
            envelopes.push(Envelope {
                id: MessageId::new(),
                version: clock.issue(1),
                published_at_us: now_us(),
                db: 0,
                commands: vec![command],
            });
            if envelopes.len() == batch {
                apply_all(&applier, &mut redis, &envelopes).await?;
                envelopes.clear();
            }
        }
        apply_all(&applier, &mut redis, &envelopes).await?;
    }
    let added = used_memory(url).await?.saturating_sub(empty);
    Ok(added as f64 / keys.max(1) as f64)
}

async fn apply_all(
    applier: &Applier,
    redis: &mut RegionRedis,
    envelopes: &[Envelope],
) -> anyhow::Result<()> {
    if envelopes.is_empty() {
        return Ok(());
    }
    for outcome in applier
        .apply(redis, envelopes)
        .await
        .map_err(|f| anyhow::anyhow!("{f:?}"))?
    {
        outcome.map_err(|f| anyhow::anyhow!("{f:?}"))?;
    }
    Ok(())
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
    // One pass over 200,000 SETs takes a fraction of a second, so a single measurement of
    // each path catches whatever else the machine did in that moment (ceilings of 330k and
    // 980k SETs/s in two consecutive runs here). Each path is measured in every round, the
    // three interleaved, and the median round of each is reported.
    let commandstats = std::env::var_os("REGIS_BENCH_COMMANDSTATS").is_some();
    let mut stats = connect(&url).await?;
    let (mut raws, mut nones, mut lwws) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=APPLY_ROUNDS {
        eprintln!(
            "[{round}/{APPLY_ROUNDS}] raw pipelined SET ceiling, none applier, lww applier ..."
        );
        let raw = with_redis_cpu(
            &mut stats,
            args.messages,
            raw_ceiling(&url, args.messages, args.keys, args.batch, &value),
        )
        .await?;
        flush(std::slice::from_ref(&url)).await?;
        let none = with_redis_cpu(
            &mut stats,
            args.messages,
            through_applier(
                &url,
                Convergence::None,
                args.messages,
                args.keys,
                args.batch,
                &value,
            ),
        )
        .await?;
        flush(std::slice::from_ref(&url)).await?;
        // Where the time goes inside Redis, on request: per-command call counts and µs per
        // call, for the last round's lww run.
        let stats_now = commandstats && round == APPLY_ROUNDS;
        if stats_now {
            reset_stats(&url).await?;
        }
        let lww = with_redis_cpu(
            &mut stats,
            args.messages,
            through_applier(
                &url,
                Convergence::Lww,
                args.messages,
                args.keys,
                args.batch,
                &value,
            ),
        )
        .await?;
        if stats_now {
            let mut conn = connect(&url).await?;
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await?;
            eprintln!("{stats}");
        }
        flush(std::slice::from_ref(&url)).await?;
        eprintln!(
            "      ceiling {:.0}/s, none {:.0}/s ({:.2}), lww {:.0}/s ({:.2}); Redis CPU per SET {:.2} / {:.2} / {:.2} µs",
            raw.0,
            none.0,
            none.0 / raw.0,
            lww.0,
            lww.0 / raw.0,
            raw.1,
            none.1,
            lww.1
        );
        raws.push(raw);
        nones.push(none);
        lwws.push(lww);
    }
    let lww_ratios: Vec<f64> = lwws.iter().zip(&raws).map(|(l, r)| l.0 / r.0).collect();
    let rates = |runs: &[(f64, f64)]| median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
    let cpus = |runs: &[(f64, f64)]| median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
    let (raw, none, lww) = (rates(&raws), rates(&nones), rates(&lwws));
    let (raw_cpu, none_cpu, lww_cpu) = (cpus(&raws), cpus(&nones), cpus(&lwws));

    eprintln!(
        "memory: {} distinct keys, plain and through lww ...",
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

    let shape_keys = args.memory_keys.min(SHAPE_KEYS);
    let mut shapes = Vec::new();
    for shape in SHAPES {
        eprintln!(
            "      memory: {shape_keys} keys of {}, plain and through lww ...",
            shape.label
        );
        let plain = shape_memory(
            &url,
            shape,
            Convergence::None,
            shape_keys,
            args.batch,
            &value,
        )
        .await?;
        let lww = shape_memory(
            &url,
            shape,
            Convergence::Lww,
            shape_keys,
            args.batch,
            &value,
        )
        .await?;
        shapes.push((shape.label, plain, lww));
    }

    println!();
    println!(
        "| apply path (one Redis) | SETs/s | ratio to raw ceiling | Redis CPU per SET | × ceiling's |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!("| raw pipelined SET (ceiling) | {raw:.0} | 1.00 | {raw_cpu:.2} µs | 1.00 |");
    println!(
        "| regis `none` applier | {none:.0} | {:.2} | {none_cpu:.2} µs | {:.2} |",
        none / raw,
        none_cpu / raw_cpu
    );
    println!(
        "| regis `lww` applier | {lww:.0} | {:.2} | {lww_cpu:.2} µs | {:.2} |",
        lww / raw,
        lww_cpu / raw_cpu
    );
    println!();
    println!(
        "Medians of {APPLY_ROUNDS} interleaved rounds; the `lww` throughput ratio within each round: {}.",
        lww_ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
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
    println!();
    println!(
        "| memory by shape, {shape_keys} keys each, {}-byte values | plain bytes per key | through `lww` | `lww` metadata |",
        args.value_size
    );
    println!("|---|---:|---:|---:|");
    for (label, plain, lww) in shapes {
        println!("| {label} | {plain:.0} | {lww:.0} | {:.0} |", lww - plain);
    }
    Ok(())
}

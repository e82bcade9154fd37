//! The scale runs, on a real `regis serve` child process so that its memory is the hub's
//! alone: a backlog of `--backlog` messages built up while one region's Redis is stopped
//! (the hub's RSS and bus file as it grows), the drain once that Redis is back, and the
//! memory `lww` metadata costs per key over `--memory-keys` distinct keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::workload::Workload;
use crate::cli::bench_apply::used_memory;
use crate::cli::bench_hub::{ChildHub, mib};
use crate::hub::MessageRequest;
use crate::publisher::Publisher;
use crate::redis_process::{RedisProcess, connect};
use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

/// How long any region may take to drain in the scale runs.
const HOUR: Duration = Duration::from_secs(3600);

/// The hub's memory and disk at one size of the backlog.
#[derive(Clone, Debug, Serialize)]
pub struct BacklogSample {
    pub messages: usize,
    pub hub_rss_bytes: u64,
    pub bus_bytes: u64,
}

/// What the scale runs found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleFigures {
    pub backlog: usize,
    pub publish_rate: f64,
    pub samples: Vec<BacklogSample>,
    pub peak_hub_rss_bytes: u64,
    pub bus_bytes_per_message: f64,
    pub drain_secs: f64,
    pub drain_rate: f64,
    pub peak_hub_rss_while_draining_bytes: u64,
    pub memory_keys: usize,
    pub plain_bytes_per_key: f64,
    pub regis_bytes_per_key: f64,
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "      {msg} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Publishes `count` messages, `message(n)` each, from `producers` connections.
async fn publish_all(
    resp: std::net::SocketAddr,
    producers: usize,
    batch: usize,
    count: usize,
    message: Arc<dyn Fn(usize) -> MessageRequest + Send + Sync>,
    bar: &indicatif::ProgressBar,
    mut on_progress: impl FnMut(usize),
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let per = count.div_ceil(producers);
    for p in 0..producers {
        let publisher = Publisher::connect(&format!("redis://{resp}")).await?;
        let (from, to) = (p * per, ((p + 1) * per).min(count));
        let (message, done) = (message.clone(), done.clone());
        tasks.spawn(async move {
            let mut n = from;
            while n < to {
                let end = (n + batch).min(to);
                for outcome in publisher
                    .publish_batch((n..end).map(|i| message(i)).collect())
                    .await
                {
                    outcome?;
                }
                done.fetch_add((end - n) as u64, Ordering::Relaxed);
                n = end;
            }
            anyhow::Ok(())
        });
    }
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(result) => result??,
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let sofar = done.load(Ordering::Relaxed) as usize;
        bar.set_position(sofar as u64);
        on_progress(sofar);
    }
    let total = done.load(Ordering::Relaxed) as usize;
    bar.set_position(total as u64);
    on_progress(total);
    bar.finish_and_clear();
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Runs the scale measurements with `regions` fresh redis-servers.
pub async fn run(
    regions: usize,
    backlog: usize,
    memory_keys: usize,
    producers: usize,
    workload: &Workload,
) -> anyhow::Result<ScaleFigures> {
    let mut redis = Vec::new();
    for i in 0..regions.max(2) {
        redis.push(
            RedisProcess::start().with_context(|| format!("cannot start region{i}'s redis"))?,
        );
    }
    let urls: Vec<String> = redis.iter().map(RedisProcess::url).collect();
    let dir = tempfile::Builder::new()
        .prefix("regis-bench-scale-")
        .tempdir()?;
    let regions: String = urls
        .iter()
        .enumerate()
        .map(|(i, url)| format!("[[regions]]\nname = \"region{i}\"\nredis = \"{url}\"\n"))
        .collect();
    let hub = ChildHub::start(dir.path(), "convergence = \"lww\"\n", &regions, None)?;
    hub.wait_up().await?;
    let http = reqwest::Client::new();
    let stopped = redis.len() - 1;
    let mut figures = ScaleFigures {
        backlog,
        memory_keys,
        ..ScaleFigures::default()
    };

    // 1. The backlog, with the last region's Redis stopped.
    redis[stopped].stop();
    eprintln!(
        "      region{stopped}'s redis-server stopped; publishing {backlog} messages (hub RSS {:.1} MiB, bus {:.1} MiB)",
        mib(hub.rss().unwrap_or(0)),
        mib(hub.bus_bytes())
    );
    figures.samples.push(BacklogSample {
        messages: 0,
        hub_rss_bytes: hub.rss().unwrap_or(0),
        bus_bytes: hub.bus_bytes(),
    });
    let step = (backlog / 10).max(1);
    let mut next_sample = step;
    let mut peak = 0u64;
    let bar = progress(backlog as u64, "backlog");
    let mix = workload.clone();
    figures.publish_rate = publish_all(
        hub.resp,
        producers,
        1024,
        backlog,
        Arc::new(move |n| mix.message(n)),
        &bar,
        |sofar| {
            let rss = hub.rss().unwrap_or(0);
            peak = peak.max(rss);
            if sofar >= next_sample {
                let sample = BacklogSample {
                    messages: sofar,
                    hub_rss_bytes: rss,
                    bus_bytes: hub.bus_bytes(),
                };
                bar.suspend(|| {
                    eprintln!(
                        "      backlog {:>10}: hub RSS {:>7.1} MiB, bus file {:>8.1} MiB",
                        sample.messages,
                        mib(sample.hub_rss_bytes),
                        mib(sample.bus_bytes)
                    )
                });
                figures.samples.push(sample);
                next_sample = (sofar / step + 1) * step;
            }
        },
    )
    .await?;
    let peak_rss = AtomicU64::new(peak);
    for region in 0..stopped {
        hub.wait_pending(&http, region, &peak_rss, HOUR).await?;
    }
    figures.peak_hub_rss_bytes = peak_rss.load(Ordering::Relaxed);
    let full = hub.bus_bytes();
    figures.bus_bytes_per_message = full as f64 / backlog.max(1) as f64;
    eprintln!(
        "      {backlog} messages waiting for region{stopped}: bus file {:.1} MiB ({:.0} bytes per message), hub RSS {:.1} MiB, peak {:.1} MiB",
        mib(full),
        figures.bus_bytes_per_message,
        mib(hub.rss().unwrap_or(0)),
        mib(figures.peak_hub_rss_bytes)
    );

    // 2. The region comes back and drains.
    redis[stopped]
        .restart()
        .context("cannot restart the stopped region's redis-server")?;
    let started = Instant::now();
    let draining_peak = AtomicU64::new(0);
    let bar = progress(backlog as u64, "drain");
    let watch = async {
        loop {
            let pending = hub
                .pending(&http)
                .await
                .ok()
                .and_then(|p| p.get(stopped).copied());
            if let Some(pending) = pending {
                bar.set_position(backlog as u64 - pending.min(backlog as u64));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        result = hub.wait_pending(&http, stopped, &draining_peak, HOUR) => result?,
        _ = watch => {}
    }
    bar.finish_and_clear();
    figures.drain_secs = started.elapsed().as_secs_f64();
    figures.drain_rate = backlog as f64 / figures.drain_secs;
    figures.peak_hub_rss_while_draining_bytes = draining_peak.load(Ordering::Relaxed);
    eprintln!(
        "      region{stopped} drained {backlog} messages in {:.1}s ({:.0}/s); hub RSS peak while draining {:.1} MiB",
        figures.drain_secs,
        figures.drain_rate,
        mib(figures.peak_hub_rss_while_draining_bytes)
    );

    // 3. Metadata: distinct keys written plainly and through the hub.
    crate::cli::bench::flush(&urls).await?;
    let value = workload.value.clone();
    let plain = RedisProcess::start().context("cannot start the reference redis-server")?;
    let before_plain = used_memory(&plain.url()).await?;
    {
        let mut conn = connect(&plain.url()).await?;
        let mut n = 0;
        while n < memory_keys {
            let mut pipe = redis::pipe();
            for i in n..(n + 1000).min(memory_keys) {
                pipe.cmd("SET")
                    .arg(format!("bench:k:{i}"))
                    .arg(value.as_ref())
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            n += 1000;
        }
    }
    figures.plain_bytes_per_key = used_memory(&plain.url())
        .await?
        .saturating_sub(before_plain) as f64
        / memory_keys as f64;
    let before = used_memory(&urls[0]).await?;
    let bar = progress(memory_keys as u64, "keys");
    let distinct = value.clone();
    publish_all(
        hub.resp,
        producers,
        1024,
        memory_keys,
        Arc::new(move |n| MessageRequest {
            commands: vec![vec![
                Bytes::from_static(b"SET"),
                Bytes::from(format!("bench:k:{n}")),
                distinct.clone(),
            ]],
            db: 0,
        }),
        &bar,
        |_| {},
    )
    .await?;
    let ignored = AtomicU64::new(0);
    for region in 0..redis.len() {
        hub.wait_pending(&http, region, &ignored, HOUR).await?;
    }
    figures.regis_bytes_per_key =
        used_memory(&urls[0]).await?.saturating_sub(before) as f64 / memory_keys as f64;
    eprintln!(
        "      {memory_keys} distinct keys: {:.0} bytes per key written plainly, {:.0} through regis lww",
        figures.plain_bytes_per_key, figures.regis_bytes_per_key
    );
    Ok(figures)
}

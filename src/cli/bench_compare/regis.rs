//! Regis end to end, as a service would use it: producers publish over the RESP ingress
//! (the `Publisher` library) or the HTTP API to a hub running in this process, the hub
//! stores every message durably and its workers apply it in every region. Latency is the
//! hub's own publish→applied figure for every message in every region (from the version's
//! ingress time to the region Redis's reply), the worst region's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::json;

use super::measure::{self, CpuMeter, CpuUse, SecondFigures};
use super::workload::Workload;
use crate::bus::Bus;
use crate::bus::nats::NatsConfig;
use crate::cli::bench::{BusChoice, hub_config, local_resp, wait_drained, worst};
use crate::command::Convergence;
use crate::hub::MessageRequest;
use crate::latency::{LatencySummary, new_histogram};
use crate::nats_process::NatsProcess;
use crate::publisher::Publisher;
use crate::server::Server;

/// How producers reach the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// The RESP listener, through the `Publisher` library.
    Resp,
    /// `POST /v1/publish` (fixed rate) and `/v1/publish/batch` (saturation).
    Http,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Resp => "RESP",
            Api::Http => "HTTP",
        })
    }
}

/// One Regis configuration.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub bus: BusChoice,
    pub convergence: Convergence,
    pub api: Api,
}

impl Setup {
    pub fn label(&self) -> String {
        format!(
            "regis {}, {} bus, via {}",
            self.convergence, self.bus, self.api
        )
    }
}

/// The load a run puts on the hub.
pub struct Load<'a> {
    pub workload: &'a Workload,
    pub messages: usize,
    pub batch: usize,
    pub producers: usize,
    pub rate: u64,
    pub duration: Duration,
    /// The regions' redis-servers, by name, for the CPU accounting.
    pub redis_pids: &'a [(String, u32)],
}

/// What a saturation or fixed-rate run gave.
pub struct RunFigures {
    /// Commands per second applied in every region (saturation) or offered (fixed rate).
    pub rate: f64,
    pub latency: LatencySummary,
    pub timeline: Vec<SecondFigures>,
    pub cpu: CpuUse,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Saturation,
    FixedRate,
}

/// Starts a hub for `setup` on a fresh bus (for NATS, a fresh nats-server), runs `run`,
/// stops it.
pub async fn measure(
    setup: &Setup,
    urls: &[String],
    load: &Load<'_>,
    run: Run,
) -> anyhow::Result<RunFigures> {
    let data = tempfile::Builder::new().prefix("regis-bench-").tempdir()?;
    let mut config = hub_config(urls, data.path(), setup.convergence);
    config.worker.batch_size = load.batch.max(64);
    config.resp = Some(local_resp());
    let mut processes: Vec<(String, u32)> =
        vec![("regis (hub + producers)".into(), std::process::id())];
    processes.extend_from_slice(load.redis_pids);
    match setup.bus {
        BusChoice::Embedded => {
            let server = Server::start(&config).await?;
            let result = on_server(setup, &server, load, run, &processes).await;
            server.shutdown().await;
            result
        }
        BusChoice::Nats => {
            let nats = NatsProcess::start().context("cannot start nats-server for the NATS bus")?;
            if let Some(pid) = nats.pid() {
                processes.push(("nats-server".into(), pid));
            }
            let server = Server::start_nats(
                &config,
                &NatsConfig {
                    url: nats.url(),
                    ..NatsConfig::default()
                },
            )
            .await?;
            let result = on_server(setup, &server, load, run, &processes).await;
            server.shutdown().await;
            drop(nats);
            result
        }
    }
}

async fn on_server<B: Bus>(
    setup: &Setup,
    server: &Server<B>,
    load: &Load<'_>,
    run: Run,
    processes: &[(String, u32)],
) -> anyhow::Result<RunFigures> {
    let cpu = CpuMeter::start(processes);
    let (rate, timeline) = match run {
        Run::Saturation => {
            // Counted until every region applied everything: publishing alone is not done.
            let started = Instant::now();
            saturate(setup.api, server, load).await?;
            wait_drained(server).await?;
            (
                load.messages as f64 / started.elapsed().as_secs_f64(),
                Vec::new(),
            )
        }
        Run::FixedRate => {
            let producer = Producer::connect(setup.api, server).await?;
            let timeline = Timeline::start(server);
            let rate = offer(&producer, load).await?;
            wait_drained(server).await?;
            (rate, timeline.stop().await)
        }
    };
    Ok(RunFigures {
        rate,
        latency: worst(server),
        timeline,
        cpu: cpu.stop(),
    })
}

/// A client of the hub.
#[derive(Clone)]
enum Producer {
    Resp(Publisher),
    Http {
        client: reqwest::Client,
        base: String,
    },
}

impl Producer {
    async fn connect<B: Bus>(api: Api, server: &Server<B>) -> anyhow::Result<Producer> {
        Ok(match api {
            Api::Resp => {
                let addr = server.resp_addr().context("the hub has no RESP listener")?;
                Producer::Resp(Publisher::connect(&format!("redis://{addr}")).await?)
            }
            Api::Http => Producer::Http {
                client: reqwest::Client::builder().tcp_nodelay(true).build()?,
                base: format!("http://{}", server.http_addr()),
            },
        })
    }

    async fn publish_batch(&self, messages: Vec<MessageRequest>) -> anyhow::Result<()> {
        match self {
            Producer::Resp(publisher) => {
                for outcome in publisher.publish_batch(messages).await {
                    outcome?;
                }
            }
            Producer::Http { client, base } => {
                let body =
                    json!({ "messages": messages.iter().map(message_json).collect::<Vec<_>>() });
                let response = client
                    .post(format!("{base}/v1/publish/batch"))
                    .json(&body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("the hub refused a batch: {}", response.text().await?);
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, message: MessageRequest) -> anyhow::Result<()> {
        match self {
            Producer::Resp(publisher) => Ok(publisher.publish_message(message).await?),
            Producer::Http { client, base } => {
                let response = client
                    .post(format!("{base}/v1/publish"))
                    .json(&message_json(&message))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("the hub refused a message: {}", response.text().await?);
                }
                Ok(())
            }
        }
    }
}

fn message_json(message: &MessageRequest) -> serde_json::Value {
    let commands: Vec<Vec<String>> = message
        .commands
        .iter()
        .map(|args| {
            args.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .collect();
    json!({ "commands": commands, "db": message.db })
}

/// Publishes every message from `producers` concurrent producers, `batch` per call, each
/// with its own connection as separate services would have.
async fn saturate<B: Bus>(api: Api, server: &Server<B>, load: &Load<'_>) -> anyhow::Result<()> {
    let per_producer = load.messages.div_ceil(load.producers);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..load.producers {
        let producer = Producer::connect(api, server).await?;
        let workload = load.workload.clone();
        let batch = load.batch;
        let (from, to) = (
            p * per_producer,
            ((p + 1) * per_producer).min(load.messages),
        );
        tasks.spawn(async move {
            let mut n = from;
            while n < to {
                let end = (n + batch).min(to);
                producer
                    .publish_batch((n..end).map(|i| workload.message(i)).collect())
                    .await?;
                n = end;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// Offers `rate` messages/s for `duration`, each its own publish.
async fn offer(producer: &Producer, load: &Load<'_>) -> anyhow::Result<f64> {
    let workload = Arc::new(load.workload.clone());
    let producer = producer.clone();
    let (sent, _) = measure::fixed_rate(load.rate, load.duration, move |n| {
        let producer = producer.clone();
        let message = workload.message(n);
        async move { producer.publish(message).await }
    })
    .await?;
    Ok(sent as f64 / load.duration.as_secs_f64())
}

/// Each second's publish→applied figures of the worst region, read from the regions'
/// latency windows once a second (each reading minus the one before).
struct Timeline {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<SecondFigures>>,
}

impl Timeline {
    fn start<B: Bus>(server: &Server<B>) -> Timeline {
        let regions = server.regions().clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut before: Vec<Histogram<u64>> = regions
                .iter()
                .map(|r| r.latency.last_minute_histogram())
                .collect();
            let mut seconds = Vec::new();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            let mut second = 0;
            loop {
                let stopping = tokio::select! {
                    _ = ticker.tick() => false,
                    _ = token.cancelled() => true,
                };
                second += 1;
                let mut worst = SecondFigures::default();
                for (region, previous) in regions.iter().zip(before.iter_mut()) {
                    let now = region.latency.last_minute_histogram();
                    let mut this_second = now.clone();
                    if this_second.subtract(&*previous).is_err() {
                        // A slice left the window: this second cannot be told apart.
                        this_second = new_histogram();
                    }
                    *previous = now;
                    let figures = SecondFigures::of(second, &this_second);
                    if figures.p99_ms >= worst.p99_ms {
                        worst = figures;
                    }
                }
                if worst.count > 0 {
                    seconds.push(worst);
                }
                if stopping {
                    return seconds;
                }
            }
        });
        Timeline { stop, task }
    }

    async fn stop(self) -> Vec<SecondFigures> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

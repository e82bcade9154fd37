//! `regis demo`: a newcomer's first command.
//!
//! Two throwaway `redis-server`s play Singapore and Mumbai; an in-process hub replicates a
//! generated feed of hotel and flight records to both through its real HTTP API; Mumbai's
//! Redis goes down for a while (its backlog waits on the hub's disk and drains when it
//! returns); the two regions are compared key by key with `verify`. Then a poison message
//! lands in Singapore's dead letters, the operator removes its cause and redrives it, and
//! `verify` finds the regions identical again. Everything is cleaned up.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bus::{QueueStats, Stats};
use crate::config::Config;
use crate::redis_process::RedisProcess;
use crate::server::Server;
use crate::snapshot::Snapshot;

const CITIES: [&str; 6] = [
    "Singapore",
    "Mumbai",
    "Bangkok",
    "Delhi",
    "Jakarta",
    "Tokyo",
];

/// Runs the tour.
pub async fn run() -> anyhow::Result<()> {
    println!("Regis demo: one write, published once, applied in every region.\n");
    let mut singapore =
        RedisProcess::start().context("cannot start the Singapore region's redis-server")?;
    let mut mumbai =
        RedisProcess::start().context("cannot start the Mumbai region's redis-server")?;
    let data = tempfile::Builder::new().prefix("regis-demo-").tempdir()?;
    let mut config = Config::with_regions(
        data.path().to_path_buf(),
        &[("singapore", singapore.url()), ("mumbai", mumbai.url())],
    );
    config.delivery.retry_backoff = Duration::from_millis(100);
    config.delivery.max_receives = 3;
    config.delivery.retry_backoff_max = Duration::from_millis(800);
    let server = Server::start(&config)
        .await
        .context("cannot start the in-process hub")?;
    let hub_url = format!("http://{}", server.http_addr());
    println!("  region singapore  {}", singapore.url());
    println!("  region mumbai     {}", mumbai.url());
    println!(
        "  hub               {hub_url}  (embedded bus in {})\n",
        data.path().display()
    );

    let http = reqwest::Client::new();
    let publish = |commands: Value| {
        let http = http.clone();
        let url = format!("{hub_url}/v1/publish");
        async move {
            let response = http
                .post(&url)
                .json(&json!({ "commands": commands }))
                .send()
                .await?;
            let status = response.status();
            let body: Value = response.json().await?;
            if !status.is_success() {
                bail!("publish refused ({status}): {body}");
            }
            anyhow::Ok(())
        }
    };

    println!("1. Publishing a feed of hotels, flights, fares (1-hour TTL) and booking counters.");
    let started = Instant::now();
    let mut messages = 0;
    for id in 1..=40 {
        let city = CITIES[id % CITIES.len()];
        let rate = 80 + (id * 37) % 300;
        // One message, several commands: applied atomically in each region.
        publish(json!([
            [
                "HSET",
                format!("hotel:{id}"),
                "name",
                format!("Hotel {city} {id}"),
                "city",
                city,
                "stars",
                (3 + id % 3).to_string(),
                "rate_usd",
                rate.to_string()
            ],
            [
                "SADD",
                format!("city:{}:hotels", city.to_lowercase()),
                format!("hotel:{id}")
            ],
            [
                "ZADD",
                "hotels:by-rate",
                rate.to_string(),
                format!("hotel:{id}")
            ],
        ]))
        .await?;
        messages += 1;
    }
    for n in 0..30 {
        let flight = format!("SQ{}", 400 + n);
        let (from, to) = (CITIES[n % CITIES.len()], CITIES[(n + 1) % CITIES.len()]);
        publish(json!([[
            "HSET",
            format!("flight:{flight}"),
            "from",
            from,
            "to",
            to,
            "departs",
            format!("2026-12-{:02}T{:02}:15", 1 + n % 28, 6 + n % 12)
        ]]))
        .await?;
        publish(json!([[
            "SET",
            format!("fare:{flight}"),
            (120 + n * 7).to_string(),
            "EX",
            "3600"
        ]]))
        .await?;
        publish(json!([[
            "INCRBY",
            format!("bookings:{flight}"),
            (1 + n % 4).to_string()
        ]]))
        .await?;
        messages += 3;
    }
    println!(
        "   published {messages} messages through POST /v1/publish, each acknowledged only once on disk"
    );
    wait_drained(&server, Duration::from_secs(30)).await?;
    let (sg, mb) = (
        Snapshot::read(&singapore.url(), 0).await?,
        Snapshot::read(&mumbai.url(), 0).await?,
    );
    println!(
        "   both regions applied them in {:.0} ms: singapore holds {} keys, mumbai {} keys\n",
        started.elapsed().as_secs_f64() * 1000.0,
        sg.len(),
        mb.len()
    );

    println!("2. Mumbai's Redis goes down (maintenance: it saves and shuts down).");
    mumbai.shutdown_saving();
    let mut updates = 0;
    for round in 0..5 {
        for n in 0..20 {
            let flight = format!("SQ{}", 400 + n);
            publish(json!([[
                "SET",
                format!("fare:{flight}"),
                (150 + n * 7 + round * 11).to_string(),
                "EX",
                "3600"
            ]]))
            .await?;
            publish(json!([["INCR", format!("bookings:{flight}")]])).await?;
            updates += 2;
        }
    }
    let city = CITIES[40 % CITIES.len()].to_lowercase();
    publish(json!([
        ["DEL", "hotel:40"],
        ["SREM", format!("city:{city}:hotels"), "hotel:40"],
        ["ZREM", "hotels:by-rate", "hotel:40"]
    ]))
    .await?;
    updates += 1;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = server.bus().stats().await?;
    let waiting = region(&stats, "mumbai");
    println!(
        "   published {updates} more messages while it was down (fare changes, bookings, a hotel removed)"
    );
    println!(
        "   singapore applied them at once; mumbai's backlog waits on the hub's disk: {} waiting, {} in flight",
        waiting.depth, waiting.in_flight
    );
    println!(
        "   (its worker retried with exponential backoff and now waits for the Redis to answer)\n"
    );

    println!("3. Mumbai's Redis comes back on the same port.");
    let back = Instant::now();
    mumbai
        .restart()
        .context("cannot restart the Mumbai region's redis-server")?;
    wait_drained(&server, Duration::from_secs(60)).await?;
    println!(
        "   its backlog drained {:.1} s after it came back\n",
        back.elapsed().as_secs_f64()
    );

    println!("4. Comparing the regions key by key (type, value, TTL within a second).");
    let regions = [
        crate::verify::Region {
            name: "singapore".into(),
            url: singapore.url(),
        },
        crate::verify::Region {
            name: "mumbai".into(),
            url: mumbai.url(),
        },
    ];
    verify_identical(&regions).await?;

    poison_story(&server, &hub_url, &singapore, &regions).await?;

    server.shutdown().await;
    singapore.stop();
    mumbai.stop();
    drop(data);
    println!("Done. The Redis processes and the hub's data were removed.");
    println!(
        "Next: write a regis.toml (see regis.example.toml) and run `regis serve --config regis.toml`."
    );
    Ok(())
}

fn region<'a>(stats: &'a [QueueStats], name: &str) -> &'a QueueStats {
    static EMPTY: QueueStats = QueueStats {
        name: String::new(),
        depth: 0,
        in_flight: 0,
        dead_letters: 0,
        oldest_age_ms: None,
        estimated: false,
    };
    stats.iter().find(|s| s.name == name).unwrap_or(&EMPTY)
}

/// Waits until no region has anything waiting or in flight.
async fn wait_drained<B: crate::bus::Bus>(
    server: &Server<B>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = server.bus().stats().await?;
        if stats.iter().all(|s| s.depth == 0 && s.in_flight == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the regions did not catch up within {timeout:?}: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `regis verify` on both regions; fails the demo unless they are identical.
async fn verify_identical(regions: &[crate::verify::Region]) -> anyhow::Result<()> {
    let report = crate::verify::verify(
        regions,
        &crate::verify::Options::default(),
        std::sync::Arc::new(crate::verify::NoProgress),
    )
    .await?;
    if !report.agree() {
        bail!("the regions differ:\n{}", super::verify::summary(&report));
    }
    println!(
        "   regis verify: {} keys compared in {:.0} ms; the regions are identical.\n",
        report.keys_compared,
        report.elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// A poison message lands in Singapore's dead letters; the operator fixes the cause,
/// redrives it, and verify finds the regions identical again.
async fn poison_story<B: crate::bus::Bus>(
    server: &Server<B>,
    hub_url: &str,
    singapore: &RedisProcess,
    regions: &[crate::verify::Region],
) -> anyhow::Result<()> {
    let hub = super::client::HubClient::new(&super::client::HubArgs {
        url: hub_url.to_string(),
        token: None,
        ca: None,
    })?;
    println!(
        "5. A poison message. Someone wrote profile:ana into Singapore's Redis directly, as a string;"
    );
    println!("   then a service publishes HSET profile:ana (a hash) through Regis.");
    let client = redis::Client::open(singapore.url())?;
    let mut direct = client.get_multiplexed_async_connection().await?;
    redis::cmd("SET")
        .arg("profile:ana")
        .arg("written by hand")
        .query_async::<()>(&mut direct)
        .await?;
    let answer = hub
        .post(
            "/v1/publish",
            &json!({ "commands": [["HSET", "profile:ana", "name", "Ana", "tier", "gold"]] }),
        )
        .await?;
    let id = answer["id"]
        .as_str()
        .with_context(|| format!("publish answered {answer}"))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while region(&server.bus().stats().await?, "singapore").dead_letters == 0 {
        if Instant::now() > deadline {
            bail!("the poison message did not reach Singapore's dead letters within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = hub.get("/v1/regions/singapore/dead-letters").await?;
    println!("   Mumbai applied it. Singapore's Redis refused it every time, so it moved to");
    println!("   Singapore's dead letters. regis dlq list --region singapore shows:\n");
    for line in super::dlq::list_text("singapore", &listed).lines() {
        if line.is_empty() {
            println!();
        } else {
            println!("     {line}");
        }
    }
    println!();

    println!("6. The operator removes the stray string in Singapore and redrives the message");
    println!("   (regis dlq redrive --region singapore {id}).");
    redis::cmd("DEL")
        .arg("profile:ana")
        .query_async::<()>(&mut direct)
        .await?;
    let redriven = hub
        .post(
            "/v1/regions/singapore/dead-letters/redrive",
            &json!({ "ids": [id] }),
        )
        .await?;
    if redriven["redriven"].as_u64() != Some(1) {
        bail!("redrive answered {redriven}");
    }
    wait_drained(server, Duration::from_secs(30)).await?;
    let kind: String = redis::cmd("TYPE")
        .arg("profile:ana")
        .query_async(&mut direct)
        .await?;
    let dead = region(&server.bus().stats().await?, "singapore").dead_letters;
    println!(
        "   Applied on the next try: profile:ana is now a {kind} in Singapore; dead letters left: {dead}.\n"
    );

    println!("7. regis verify compares every key of both regions once more.");
    verify_identical(regions).await
}

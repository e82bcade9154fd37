//! Regions on other machines: a `regis worker --hub` child process leasing from a hub
//! through a proxy that imitates a WAN link (70 ms each way, partitions, resets) — real
//! `redis-server`s, real sockets, the real `regis` binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use regis::bus::embedded::EmbeddedBus;
use regis::config::{AuthConfig, Config, WorkerPlacement};
use regis::redis_process::{RedisProcess, free_port};
use regis::server::Server;
use regis::snapshot::Entry;
use regis::wan::WanProxy;
use serde_json::{Value, json};

const PUBLISH: &str = "publish-token-0123456789abcdef";
const WORKER: &str = "worker-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// One way; the round trip is twice this.
const WAN: Duration = Duration::from_millis(70);

/// Regions r0 (worker in the hub) and r1 (`worker = "remote"`), with `[auth]`.
fn remote_config(data_dir: &std::path::Path, regions: &[RedisProcess]) -> Config {
    let mut config = config(data_dir, regions);
    config.regions[1].worker = WorkerPlacement::Remote;
    config.auth = Some(AuthConfig {
        publish: Some(PUBLISH.into()),
        worker: Some(WORKER.into()),
        admin: Some(ADMIN.into()),
        healthz_open: true,
        ..AuthConfig::default()
    });
    config
}

/// Publishes one message with the publish token.
async fn publish_as(addr: SocketAddr, commands: Value) -> Result<String, (u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish"))
        .bearer_auth(PUBLISH)
        .json(&json!({ "commands": commands }))
        .send()
        .await
        .map_err(|err| (0, json!(err.to_string())))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 {
        Ok(body["id"].as_str().unwrap_or_default().to_string())
    } else {
        Err((status, body))
    }
}

/// The message of index `i`: a key of its own and a shared counter, so a region that lost
/// or doubled a message shows it.
fn message(i: usize) -> Value {
    json!([
        ["SET", format!("key{i}"), format!("value{i}")],
        ["INCRBY", "total", 1]
    ])
}

/// POSTs a lease for region r1 as its worker ([`lease_body`]).
async fn lease(addr: SocketAddr, session: u64, max: u32, wait_ms: u32) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/worker/regions/r1/lease"))
        .bearer_auth(WORKER)
        .body(lease_body(max, wait_ms, session))
        .send()
        .await
        .expect("the hub answers HTTP")
}

/// A lease for region r1 that the hub answered with 200, decoded.
async fn leased(
    addr: SocketAddr,
    session: u64,
    max: u32,
    wait_ms: u32,
) -> regis::bus::remote::wire::LeaseResponse {
    let answer = lease(addr, session, max, wait_ms).await;
    assert_eq!(answer.status(), 200);
    postcard::from_bytes(&answer.bytes().await.expect("a lease body")).expect("a lease response")
}

/// Two regions and an in-process hub on [`remote_config`] (nobody runs r1's worker).
async fn remote_hub() -> (Vec<RedisProcess>, tempfile::TempDir, Server<EmbeddedBus>) {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(&remote_config(&data.path().join("bus"), &regions)).await;
    (regions, data, hub)
}

/// Waits until every region holds every acknowledged message and all regions are equal.
async fn assert_acknowledged_everywhere(
    regions: &[RedisProcess],
    acked: &[usize],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut problems = Vec::new();
        let mut snaps = Vec::new();
        for (r, region) in regions.iter().enumerate() {
            let snap = snapshot(region).await;
            let missing: Vec<usize> = missing_acked(&snap, acked).into_iter().take(5).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "region r{r} lacks acknowledged messages {missing:?}"
                ));
            }
            snaps.push(snap);
        }
        for (r, snap) in snaps.iter().enumerate().skip(1) {
            let diffs = snaps[0].differences(snap, 1500, 5);
            if !diffs.is_empty() {
                problems.push(format!("region r{r} differs from r0: {diffs:?}"));
            }
        }
        if let Some(entry) = snaps[0].keys.get(b"total".as_slice()) {
            // Each message is counted once (lww counters are exactly-once), so the total is
            // the number of distinct messages applied: at least those acknowledged.
            let total: usize = match &entry.0 {
                Entry::String(v) => String::from_utf8_lossy(v).parse().unwrap_or(0),
                _ => 0,
            };
            let keys = snaps[0]
                .keys
                .keys()
                .filter(|k| k.starts_with(b"key"))
                .count();
            if total != keys {
                problems.push(format!(
                    "counter says {total} messages, {keys} keys are there"
                ));
            }
        } else if !acked.is_empty() {
            problems.push("no counter yet".into());
        }
        if problems.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{}", problems.join("\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hub (`regis serve` child) with r1 remote, a WAN proxy in front of it and a worker for
/// r1 behind the proxy.
struct Wan {
    regions: Vec<RedisProcess>,
    env: Env,
    config_path: std::path::PathBuf,
    addr: SocketAddr,
    serve: ServeProcess,
    proxy: WanProxy,
    worker: WorkerProcess,
}

impl Wan {
    async fn start() -> Wan {
        Wan::start_on(Backend::Embedded).await
    }

    async fn start_on(backend: Backend) -> Wan {
        let regions = regions(2);
        let env = Env::new(backend);
        let port = free_port().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = remote_config(&env.data.path().join("bus"), &regions);
        config.bus = env.bus_config();
        let config_path = write_config(env.data.path(), &config, port);
        let serve = ServeProcess::start(&config_path, addr).await;
        let proxy = WanProxy::start(addr, WAN).await.unwrap();
        let worker = Wan::worker(&proxy, &regions[1]);
        Wan {
            regions,
            env,
            config_path,
            addr,
            serve,
            proxy,
            worker,
        }
    }

    fn worker(proxy: &WanProxy, region: &RedisProcess) -> WorkerProcess {
        WorkerProcess::start(
            &format!("http://{}", proxy.addr()),
            "r1",
            &region.url(),
            &[
                "--concurrency",
                "4",
                "--batch-size",
                "200",
                "--request-timeout",
                "5s",
            ],
            &[("REGIS_TOKEN", WORKER)],
        )
    }

    async fn status(&self) -> Value {
        reqwest::Client::new()
            .get(format!("http://{}/v1/status", self.addr))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("the hub answers")
            .json()
            .await
            .expect("JSON")
    }

    async fn in_flight(&self, region: &str) -> u64 {
        self.region_status(region).await["in_flight"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The hub's `GET /metrics`: the value of `name` with exactly these labels (in any
    /// order), or `None` when it is not exported.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.addr))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("the hub answers")
            .text()
            .await
            .expect("text");
        sample(&text, name, labels)
    }

    /// `region`'s entry in `GET /v1/status`.
    async fn region_status(&self, region: &str) -> Value {
        let status = self.status().await;
        status["regions"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == region))
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// Publishes messages `from..to` one after another; returns the acknowledged indexes. A
/// publish that fails (the hub is down) is not retried: its fate is unknown, and only
/// acknowledged messages are owed.
async fn publish_range(addr: SocketAddr, from: usize, to: usize) -> Vec<usize> {
    let mut acked = Vec::new();
    for i in from..to {
        if publish_as(addr, message(i)).await.is_ok() {
            acked.push(i);
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_replicates_over_a_wan_link() {
    a_remote_worker_replicates_over_a_wan_link_on(Backend::Embedded).await
}

/// The lease API is generic over the bus: a hub on NATS serves remote workers the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_replicates_over_a_wan_link_on_nats() {
    a_remote_worker_replicates_over_a_wan_link_on(Backend::Nats).await
}

async fn a_remote_worker_replicates_over_a_wan_link_on(backend: Backend) {
    let wan = Wan::start_on(backend).await;
    let acked = publish_range(wan.addr, 0, 300).await;
    assert_eq!(acked.len(), 300, "every publish is acknowledged");
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(30)).await;

    // Publish→visible in the remote region, one message at a time: at least the one-way
    // latency (the lease answer crosses the link once), and not much more when idle.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let key = format!("probe{i}");
        let started = Instant::now();
        publish_as(wan.addr, json!([["SET", key, "x"]]))
            .await
            .unwrap();
        let seen = eventually(Duration::from_secs(10), || async {
            matches!(
                redis_cmd(&wan.regions[1], &["EXISTS", &key]).await,
                redis::Value::Int(1)
            )
        })
        .await;
        assert!(seen, "probe {i} reached the remote region");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "publish→visible in the remote region over a {WAN:?}-each-way link: p50 {p50:?}, max {max:?} (20 probes)"
    );
    assert!(
        latencies[0] >= WAN,
        "the link's latency is really there: {latencies:?}"
    );
    assert!(p50 < Duration::from_millis(1000), "p50 {p50:?}");
    assert!(wan.proxy.accepted_connections() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_session_s_waiting_lease_takes_nothing() {
    use regis::bus::Stats;
    let (_regions, _data, hub) = remote_hub().await;
    let addr = hub.http_addr();
    // A long-poll that the worker gives up on (its process died, the link dropped).
    let request = lease(addr, 7, 100, 20_000);
    let abandoned = tokio::time::timeout(Duration::from_millis(300), request).await;
    assert!(abandoned.is_err(), "the long-poll was still waiting");
    // The stopping worker releases its session (what RemoteBus::close does).
    let release =
        postcard::to_stdvec(&regis::bus::remote::wire::ReleaseRequest { session: 7 }).unwrap();
    let released = reqwest::Client::new()
        .post(format!("http://{addr}/v1/worker/regions/r1/release"))
        .bearer_auth(WORKER)
        .body(release)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 204);
    publish_as(addr, message(0)).await.unwrap();
    // Had the abandoned poll leased it, a live one would only get it after the visibility
    // timeout (3 s), as a second delivery.
    let started = Instant::now();
    let lease = leased(addr, 8, 100, 5_000).await;
    assert_eq!(lease.deliveries.len(), 1);
    assert_eq!(lease.deliveries[0].receive_count, 1, "first delivery");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stats = hub.bus().stats().await.unwrap();
    let r1 = stats.iter().find(|s| s.name == "r1").unwrap();
    assert_eq!((r1.depth, r1.in_flight), (0, 1), "{r1:?}");
    hub.shutdown().await;
}

/// Publishes messages 0, 1, 2, … one after another (with a pause between them) until
/// stopped; keeps the acknowledged indexes. Failures (the hub is down) are skipped.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, pause: Duration) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let stop = stop.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if publish_as(addr, message(i)).await.is_ok() {
                        acked.lock().unwrap().push(i);
                    }
                    i += 1;
                    tokio::time::sleep(pause).await;
                }
            })
        };
        Load { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        // Generous: each publish waits for an fsync, which a machine busy writing other files
        // can stretch to tens of milliseconds; passing runs take a few seconds.
        let reached = eventually(Duration::from_secs(120), || async { self.acked() >= n }).await;
        assert!(
            reached,
            "the load reached {n} acknowledged messages (at {})",
            self.acked()
        );
    }

    async fn finish(self) -> Vec<usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        self.acked.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_during_publishing_then_catch_up_loses_nothing() {
    let wan = Wan::start().await;
    let load = Load::start(wan.addr, Duration::from_millis(5));
    load.wait_for(100).await;
    let synced = eventually(Duration::from_secs(20), || async {
        snapshot(&wan.regions[1]).await.len() >= 50
    })
    .await;
    assert!(synced, "the remote region applies before the partition");

    wan.proxy.partition();
    let acked_at_cut = load.acked();
    // The scenario: the link stays down for 4 seconds while producers keep publishing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Nothing published after the cut can have crossed (the producer publishes one message
    // at a time, so at most one was in flight at the cut).
    let crossed: Vec<usize> = snapshot(&wan.regions[1])
        .await
        .keys
        .keys()
        .filter_map(|k| {
            std::str::from_utf8(k)
                .ok()?
                .strip_prefix("key")?
                .parse()
                .ok()
        })
        .filter(|i: &usize| *i > acked_at_cut)
        .collect();
    assert!(
        crossed.is_empty(),
        "nothing crosses a partitioned link, yet {} messages published after the cut reached the region",
        crossed.len()
    );
    assert!(
        load.acked() > acked_at_cut + 50,
        "publishing goes on while the region is cut off"
    );
    // The link comes back with its connections reset, as a NAT that lost its state would.
    wan.proxy.reset_all();
    wan.proxy.heal();
    let healed = Instant::now();
    let acked = load.finish().await;
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(60)).await;
    eprintln!(
        "partition of 4 s: {} messages acknowledged in all; the remote region caught up {:?} after the link returned",
        acked.len(),
        healed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_hub_under_load_loses_nothing_acknowledged() {
    let mut wan = Wan::start().await;
    let load = Load::start(wan.addr, Duration::from_millis(2));
    load.wait_for(200).await;
    wan.serve.kill_9();
    let before_restart = load.acked();
    wan.serve = ServeProcess::start(&wan.config_path, wan.addr).await;
    load.wait_for(before_restart + 200).await;
    let acked = load.finish().await;
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_remote_worker_mid_batch_loses_nothing() {
    let mut wan = Wan::start().await;
    let load = Load::start(wan.addr, Duration::from_millis(2));
    load.wait_for(100).await;
    // Mid-batch: the hub has leases out to it.
    let holding = eventually(Duration::from_secs(20), || async {
        wan.in_flight("r1").await > 0
    })
    .await;
    assert!(holding, "the worker holds leases");
    wan.worker.kill_9();
    load.wait_for(load.acked() + 200).await;
    wan.worker = Wan::worker(&wan.proxy, &wan.regions[1]);
    let acked = load.finish().await;
    // The dead worker's leases come back after the visibility timeout (3 s here).
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_regions_redis_restarted_under_load_loses_nothing() {
    let mut wan = Wan::start().await;
    let load = Load::start(wan.addr, Duration::from_millis(2));
    load.wait_for(100).await;
    wan.regions[1].shutdown_saving();
    load.wait_for(load.acked() + 300).await;
    wan.regions[1].restart().unwrap();
    load.wait_for(load.acked() + 100).await;
    let acked = load.finish().await;
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(60)).await;
    let transient = wan
        .metric(
            "regis_retries_total",
            &[("region", "r1"), ("reason", "transient")],
        )
        .await;
    assert!(
        transient.is_some_and(|n| n > 0.0),
        "the hub counts the remote worker's retries during the outage as transient: {transient:?}"
    );
    let dead = wan.status().await;
    assert!(
        dead["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["dead_letters"] == 0),
        "an outage is never a reason to dead-letter: {dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_restarted_while_a_worker_holds_leases_loses_nothing() {
    let mut wan = Wan::start().await;
    let load = Load::start(wan.addr, Duration::from_millis(2));
    load.wait_for(100).await;
    let holding = eventually(Duration::from_secs(20), || async {
        wan.in_flight("r1").await > 0
    })
    .await;
    assert!(holding, "the worker holds leases");
    let stopped = Instant::now();
    let status = wan.serve.terminate();
    assert!(
        status.success(),
        "regis serve exits 0 on SIGTERM: {status:?}"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "waiting long-polls do not hold up the hub's shutdown ({:?})",
        stopped.elapsed()
    );
    wan.serve = ServeProcess::start(&wan.config_path, wan.addr).await;
    load.wait_for(load.acked() + 200).await;
    let acked = load.finish().await;
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bus_refuses_publishes_clearly_and_recovers_as_the_region_drains() {
    let regions = regions(2);
    let data = tempfile::tempdir().unwrap();
    let mut config = remote_config(&data.path().join("bus"), &regions);
    // Nobody consumes r1 yet; r0 (local) drains as it goes.
    config.max_bus_bytes = Some(16 * 1024 * 1024);
    let hub = start_hub(&config).await;
    let addr = hub.http_addr();
    let value = "x".repeat(200 * 1024);
    let big = |i: usize| {
        json!([
            ["SET", format!("key{i}"), format!("value{i}")],
            ["SET", "padding", value],
            ["INCRBY", "total", 1]
        ])
    };
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        match publish_as(addr, big(i)).await {
            Ok(_) => acked.push(i),
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let (status, body) = refusal.expect("16 MiB cannot hold 200 messages of 200 KiB");
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bus is full") && message.contains("max_bus_bytes"),
        "the refusal says why and what to do: {message}"
    );
    assert!(
        (40..=90).contains(&acked.len()),
        "about 16 MiB of 200 KiB messages were accepted: {}",
        acked.len()
    );
    // Refused again, not acknowledged and lost.
    assert_eq!(publish_as(addr, big(1000)).await.unwrap_err().0, 503);

    // The region's worker arrives; as it applies, the bus frees room and publishing resumes.
    let _worker = WorkerProcess::start(
        &format!("http://{addr}"),
        "r1",
        &regions[1].url(),
        &["--batch-size", "16"],
        &[("REGIS_TOKEN", WORKER)],
    );
    let resumed = eventually(Duration::from_secs(60), || async {
        publish_as(addr, big(2000)).await.is_ok()
    })
    .await;
    assert!(
        resumed,
        "publishes are accepted again once the region caught up"
    );
    acked.push(2000);
    assert_acknowledged_everywhere(&regions, &acked, Duration::from_secs(60)).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_idle_region_every_waiting_lease_comes_back_within_its_wait() {
    let (_regions, _data, hub) = remote_hub().await;
    let addr = hub.http_addr();
    let started = Instant::now();
    let polls: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                assert!(leased(addr, 7, 10, 1_000).await.deliveries.is_empty());
            })
        })
        .collect();
    for poll in polls {
        poll.await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(1900),
        "four polls taking turns still answer after their own 1 s wait, not 4 s: {took:?}"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_large_messages_stops_at_its_byte_budget() {
    use regis::bus::remote::wire::MAX_LEASE_BYTES;
    let (_regions, _data, hub) = remote_hub().await;
    let addr = hub.http_addr();
    let padding = "x".repeat(200 * 1024);
    let published = 60;
    for i in 0..published {
        publish_as(addr, json!([["SET", format!("key{i}"), padding]]))
            .await
            .unwrap();
    }
    // 12 MiB waiting; a lease asking for 10,000 messages gets no more than its budget.
    let mut leased_messages = 0;
    let mut leases = 0;
    let mut total_bytes = 0;
    while leased_messages < published {
        let lease = leased(addr, 7, 10_000, 1_000).await;
        assert!(
            !lease.deliveries.is_empty(),
            "{leased_messages} of {published} leased"
        );
        let bytes: usize = lease.deliveries.iter().map(|d| d.body.len()).sum();
        assert!(
            bytes <= MAX_LEASE_BYTES,
            "a lease holds {bytes} bytes of bodies, above its budget of {MAX_LEASE_BYTES}"
        );
        leased_messages += lease.deliveries.len();
        leases += 1;
        total_bytes += bytes;
    }
    assert_eq!(leased_messages, published);
    // Each lease fills its budget: no more leases than the bytes need (12 MiB: two).
    assert_eq!(
        leases,
        total_bytes.div_ceil(MAX_LEASE_BYTES),
        "{total_bytes} bytes of bodies in {leases} leases of at most {MAX_LEASE_BYTES}"
    );
    hub.shutdown().await;
}

/// Stopped right after it applied a batch, a worker still settles it: the lease request
/// carrying its Ack is cancelled by the stop, and must not take the Ack with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_right_after_applying_settles_what_it_applied() {
    let mut wan = Wan::start().await;
    // A worker of our own for r1, whose log shows when it is stopping.
    wan.worker.kill_9();
    let log_path = wan.env.data.path().join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let hub = format!("http://{}", wan.proxy.addr());
    let redis = wan.regions[1].url();
    let mut worker = WorkerProcess::run_with_stderr(
        &[
            "worker",
            "--hub",
            &hub,
            "--region",
            "r1",
            "--redis",
            &redis,
            "--concurrency",
            "2",
        ],
        &[("REGIS_TOKEN", WORKER), ("RUST_LOG", "info")],
        log.into(),
    );
    let exists = |key: &'static str| {
        let region = &wan.regions[1];
        async move {
            matches!(
                redis_cmd(region, &["EXISTS", key]).await,
                redis::Value::Int(1)
            )
        }
    };
    let warm = eventually(Duration::from_secs(20), || async {
        publish_as(wan.addr, json!([["SET", "warm", "1"]]))
            .await
            .is_ok()
            && exists("warm").await
    })
    .await;
    assert!(warm, "the remote worker applies");
    publish_as(wan.addr, json!([["SET", "last", "1"]]))
        .await
        .unwrap();
    // The moment it is applied, its Ack is on its way to the hub, riding on the next lease
    // request (70 ms across the link). Hold it in the link, stop the worker, then drop
    // everything in the link: only what the worker sends after it was stopped arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exists("last").await {
        assert!(
            Instant::now() < deadline,
            "the remote worker applies the last message"
        );
    }
    wan.proxy.partition();
    worker.signal_term();
    let stopping = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("stopping"))
    })
    .await;
    assert!(stopping, "the worker logs that it is stopping");
    wan.proxy.reset_all();
    wan.proxy.heal();
    let status = worker.wait();
    assert!(
        status.success(),
        "regis worker exits 0 on SIGTERM: {status:?}"
    );
    // Settled, the message is gone from the hub's queue before its lease (3 s) expires; an
    // Ack lost in the stop would leave it in flight, then deliver it again.
    let settled = eventually(Duration::from_millis(2500), || async {
        let r1 = wan.region_status("r1").await;
        r1["in_flight"] == 0 && r1["depth"] == 0
    })
    .await;
    assert!(
        settled,
        "the stopped worker settled the batch it applied: {}\n{}",
        wan.region_status("r1").await,
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

/// The hub reports a remote region's applied rate and latency (and the applied metrics) from
/// the Acks its worker sends back, as it does for a region it applies itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_remote_region_s_applied_rate_and_latency() {
    let wan = Wan::start().await;
    let acked = publish_range(wan.addr, 0, 100).await;
    assert_eq!(acked.len(), 100);
    assert_acknowledged_everywhere(&wan.regions, &acked, Duration::from_secs(30)).await;
    // The last Acks may still be on their way back.
    let counted = eventually(Duration::from_secs(10), || async {
        wan.region_status("r1").await["latency"]["count"]
            .as_u64()
            .is_some_and(|n| n >= 100)
    })
    .await;
    let r1 = wan.region_status("r1").await;
    assert!(counted, "every message applied in r1 is counted: {r1}");
    let latency = &r1["latency"];
    assert!(
        latency["rate_per_sec"].as_f64().is_some_and(|r| r > 0.0),
        "{r1}"
    );
    // Publish to the hub receiving the Ack: the lease's trip out and the Ack's trip back.
    let round_trip = 2.0 * WAN.as_secs_f64() * 1000.0;
    for quantile in ["p50_ms", "p99_ms"] {
        assert!(
            latency[quantile]
                .as_f64()
                .is_some_and(|ms| ms >= round_trip && ms < 10_000.0),
            "{quantile} covers the round trip: {r1}"
        );
    }
    // The status table shows them too.
    let output = regis_env(
        &["status", "--url", &format!("http://{}", wan.addr)],
        &[("REGIS_TOKEN", ADMIN)],
    );
    assert!(output.status.success(), "{}", explain(&output));
    let row = stdout(&output)
        .lines()
        .find(|l| l.starts_with("r1 "))
        .map(str::to_string)
        .unwrap_or_default();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert!(columns.len() >= 8, "a row for r1: {row:?}");
    let (applied, p50, p99) = (columns[5], columns[6], columns[7]);
    assert!(
        applied.parse::<f64>().is_ok_and(|r| r > 0.0) && p50 != "-" && p99 != "-",
        "APPLIED/S, P50 and P99 of the remote region: {row:?}"
    );
    // And the metrics, except the Redis's reachability, which only the worker sees.
    let applied = wan
        .metric("regis_applied_messages_total", &[("region", "r1")])
        .await;
    assert!(applied.is_some_and(|n| n >= 100.0), "{applied:?}");
    let commands = wan
        .metric("regis_applied_commands_total", &[("region", "r1")])
        .await;
    assert!(
        commands.is_some_and(|n| n >= 200.0),
        "two commands a message: {commands:?}"
    );
    let end_to_end = wan
        .metric("regis_publish_to_apply_seconds_count", &[("region", "r1")])
        .await;
    assert!(end_to_end.is_some_and(|n| n >= 100.0), "{end_to_end:?}");
    // r0's worker runs in the hub, so the hub exports its gauge; r1's it cannot know.
    assert_eq!(
        wan.metric("regis_redis_up", &[("region", "r0")]).await,
        Some(1.0)
    );
    assert_eq!(
        wan.metric("regis_redis_up", &[("region", "r1")]).await,
        None
    );
}

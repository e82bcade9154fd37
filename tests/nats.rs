//! What only the NATS backend has: its server crashing under load, a region served through
//! its own NATS server (a leaf node of the hub's), and `regis worker`. The contract itself
//! runs on NATS in `tests/core.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use regis::bus::Stats;
use regis::bus::nats::NatsConfig;
use regis::config::{BusConfig, WorkerPlacement};
use regis::nats_process::{NatsProcess, NatsServerOptions};
use regis::redis_process::free_port;
use regis::snapshot::Entry;
use serde_json::json;

/// Concurrent producers publishing over HTTP.
const PRODUCERS: usize = 4;

/// Publishes `SET key<i> value<i>` over HTTP from several tasks, counting attempts.
struct Publisher {
    acked: Arc<std::sync::Mutex<Vec<usize>>>,
    attempts: Arc<AtomicUsize>,
    attempts_while_down: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(addr: std::net::SocketAddr, total: usize) -> Publisher {
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let attempts_while_down = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, attempts, attempts_while_down, failures, down) = (
                acked.clone(),
                attempts.clone(),
                attempts_while_down.clone(),
                failures.clone(),
                down.clone(),
            );
            // Several producers, so publishes are in flight whenever the server dies.
            tokio::spawn(async move {
                let mut producers = tokio::task::JoinSet::new();
                for producer in 0..PRODUCERS {
                    let (acked, attempts, attempts_while_down, failures, down) = (
                        acked.clone(),
                        attempts.clone(),
                        attempts_while_down.clone(),
                        failures.clone(),
                        down.clone(),
                    );
                    producers.spawn(async move {
                        for i in (producer..total).step_by(PRODUCERS) {
                            if down.load(Ordering::SeqCst) {
                                attempts_while_down.fetch_add(1, Ordering::SeqCst);
                            }
                            attempts.fetch_add(1, Ordering::SeqCst);
                            let sent = publish(
                                addr,
                                json!([["SET", format!("key{i}"), format!("value{i}")]]),
                            )
                            .await;
                            match sent {
                                Ok(_) => acked.lock().unwrap().push(i),
                                Err((status, body)) => {
                                    assert_eq!(status, 503, "only the bus may fail: {body}");
                                    failures.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    });
                }
                while let Some(done) = producers.join_next().await {
                    done.expect("a producer");
                }
            })
        };
        Publisher {
            acked,
            attempts,
            attempts_while_down,
            failures,
            down,
            task,
        }
    }

    fn acked(&self) -> Vec<usize> {
        self.acked.lock().unwrap().clone()
    }
}

/// Every acknowledged `key<i>` holds `value<i>` in every region.
async fn all_applied(regions: &[regis::redis_process::RedisProcess], acked: &[usize]) -> bool {
    for region in regions {
        let snap = snapshot(region).await;
        if !missing_acked(&snap, acked).is_empty() {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_nats_server_while_publishing_loses_nothing_acknowledged() {
    let regions = regions(2);
    let mut env = Env::new(Backend::Nats);
    let mut config = env.config(&regions);
    if let BusConfig::Nats(nats) = &mut config.bus {
        nats.request_timeout = Duration::from_secs(1);
    }
    let hub = env.start_hub(&config).await;
    let publisher = Publisher::start(hub.http_addr(), 1500);

    let started = eventually(Duration::from_secs(30), || async {
        publisher.acked().len() >= 300
    })
    .await;
    assert!(started, "publishing did not get going");
    let nats = env.nats.as_mut().expect("a NATS environment");
    publisher.down.store(true, Ordering::SeqCst);
    nats.kill_9();
    let acked_before = publisher.acked().len();
    // Keep the server down while the publisher keeps trying.
    let tried = publisher.attempts.load(Ordering::SeqCst);
    let waited = eventually(Duration::from_secs(30), || async {
        publisher.attempts.load(Ordering::SeqCst) >= tried + 3
    })
    .await;
    assert!(waited, "the publisher stalled while NATS was down");
    nats.restart().expect("nats-server restarts on its store");
    publisher.down.store(false, Ordering::SeqCst);

    tokio::time::timeout(Duration::from_secs(120), publisher.task)
        .await
        .expect("publishing finishes once NATS is back")
        .expect("the publisher task");
    let acked = publisher.acked.lock().unwrap().clone();
    assert!(
        publisher.attempts_while_down.load(Ordering::SeqCst) > 0,
        "the outage did not overlap publishing"
    );
    assert!(
        acked.len() > acked_before,
        "nothing was acknowledged after the restart"
    );
    eprintln!(
        "acknowledged {} of 1500; {} failed while NATS was down",
        acked.len(),
        publisher.failures.load(Ordering::SeqCst)
    );
    let applied = eventually(Duration::from_secs(60), || all_applied(&regions, &acked)).await;
    assert!(
        applied,
        "an acknowledged message is missing in a region after the NATS restart"
    );
    assert!(drained(hub.bus(), Duration::from_secs(30)).await);
    shutdown(hub).await;
}

/// The multi-region topology of docs/nats.md on one machine: the hub's NATS server (domain
/// `hub`) holds the stream; region r1 has a NATS server of its own, a leaf node of the hub's
/// with its own JetStream domain, and r1's worker runs as `regis worker` talking only to that
/// leaf. The hub runs r0's worker itself and none for r1 (`worker = "remote"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_region_is_served_through_its_own_leaf_node_and_catches_up_after_a_cut() {
    let regions = regions(2);
    let hub_nats = NatsProcess::start_with(NatsServerOptions {
        domain: Some("hub".into()),
        leaf_listen: true,
        leaf_remote: None,
    })
    .unwrap_or_else(|err| panic!("test needs nats-server: {err}"));
    let mut leaf_nats = NatsProcess::start_with(NatsServerOptions {
        domain: Some("mumbai".into()),
        leaf_listen: false,
        leaf_remote: hub_nats.leaf_port(),
    })
    .unwrap_or_else(|err| panic!("test needs nats-server: {err}"));

    let data = tempfile::tempdir().unwrap();
    let mut hub_config = config(&data.path().join("bus"), &regions);
    hub_config.regions[1].worker = WorkerPlacement::Remote;
    hub_config.regions[1].redis = String::new();
    hub_config.bus = BusConfig::Nats(NatsConfig {
        url: hub_nats.url(),
        ..NatsConfig::default()
    });
    let hub = start_any_hub(&hub_config).await;
    let addr = hub.http_addr();

    // The region's config: the same regions and delivery, its own NATS, the hub's domain.
    let region_dir = tempfile::tempdir().unwrap();
    let mut region_config = hub_config.clone();
    region_config.bus = BusConfig::Nats(NatsConfig {
        url: leaf_nats.url(),
        domain: Some("hub".into()),
        ..NatsConfig::default()
    });
    let region_path = write_config(region_dir.path(), &region_config, free_port().unwrap());
    let r1_redis = regions[1].url();
    let _worker = WorkerProcess::run(
        &[
            "worker",
            "--region",
            "r1",
            "--redis",
            &r1_redis,
            "--config",
            region_path.to_str().unwrap(),
        ],
        &[],
    );

    for i in 0..50 {
        publish(
            addr,
            json!([
                ["SET", format!("k{i}"), format!("first-{i}")],
                ["INCR", "n"]
            ]),
        )
        .await
        .unwrap();
    }
    let served = eventually(Duration::from_secs(30), || async {
        let r1 = snapshot(&regions[1]).await;
        r1.keys.get(b"n".as_slice()).map(|e| &e.0) == Some(&Entry::String(b"50".to_vec()))
    })
    .await;
    assert!(
        served,
        "r1's worker, behind its leaf node, did not apply the messages"
    );

    // Cut the region off: its backlog waits in the hub's stream; the hub's region goes on.
    leaf_nats.kill_9();
    for i in 0..50 {
        publish(
            addr,
            json!([
                ["SET", format!("k{i}"), format!("second-{i}")],
                ["INCR", "n"]
            ]),
        )
        .await
        .unwrap();
    }
    let waiting = eventually(Duration::from_secs(20), || async {
        let stats = hub.bus().stats().await.unwrap();
        stats[0].depth + stats[0].in_flight == 0 && stats[1].depth + stats[1].in_flight > 0
    })
    .await;
    assert!(waiting, "{:?}", hub.bus().stats().await.unwrap());

    leaf_nats.restart().expect("the leaf node restarts");
    assert!(
        drained(hub.bus(), Duration::from_secs(60)).await,
        "r1 did not catch up after its leaf node came back: {:?}",
        hub.bus().stats().await.unwrap()
    );
    let expected = snapshot(&regions[0]).await;
    assert_eq!(
        expected.keys[b"n".as_slice()].0,
        Entry::String(b"100".to_vec())
    );
    assert_converges(&regions, &expected, Duration::from_secs(10)).await;
    shutdown(hub).await;
}

/// Messages per request of [`BatchLoad`].
const LOAD_BATCH: usize = 10;

/// Publishes `SET key<i> value<i>` in batches of [`LOAD_BATCH`] messages per request
/// (`/v1/publish/batch`, so each request travels as one NATS message of several envelopes)
/// until stopped; keeps the indexes of the acknowledged messages.
struct BatchLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BatchLoad {
    fn start(addr: std::net::SocketAddr) -> BatchLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut first = 0;
                while !stop.load(Ordering::Relaxed) {
                    let messages: Vec<serde_json::Value> = (first..first + LOAD_BATCH)
                        .map(|i| json!({"commands": [["SET", format!("key{i}"), format!("value{i}")]]}))
                        .collect();
                    let sent = client
                        .post(format!("http://{addr}/v1/publish/batch"))
                        .json(&json!({ "messages": messages }))
                        .send()
                        .await;
                    if let Ok(response) = sent
                        && response.status() == 200
                        && let Ok(answer) = response.json::<serde_json::Value>().await
                    {
                        let results = answer["results"].as_array().cloned().unwrap_or_default();
                        let mut acked = acked.lock().unwrap();
                        for (k, result) in results.iter().enumerate() {
                            if result["id"].is_string() {
                                acked.push(first + k);
                            }
                        }
                    }
                    first += LOAD_BATCH;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        BatchLoad { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        let reached = eventually(Duration::from_secs(120), || async { self.acked() >= n }).await;
        assert!(
            reached,
            "the load reached {n} acknowledged messages (at {})",
            self.acked()
        );
    }

    async fn finish(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load task");
        self.acked.lock().unwrap().clone()
    }
}

/// The contract's "worker killed mid-batch" with a real process: `regis worker` serving
/// region r1 on the NATS bus is killed with SIGKILL while it holds leases, under a load of
/// batched publishes; another one is started, and every acknowledged message is applied in
/// r1 (the dead worker's leases come back after the visibility timeout, 3 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_regis_worker_mid_batch_loses_nothing_acknowledged() {
    let regions = regions(2);
    let env = Env::new(Backend::Nats);
    let mut config = env.config(&regions);
    config.regions[1].worker = WorkerPlacement::Remote;
    let hub = env.start_hub(&config).await;
    let addr = hub.http_addr();
    let path = write_config(env.data.path(), &config, free_port().unwrap());
    let path = path.to_str().unwrap().to_string();
    let r1_redis = regions[1].url();
    let worker = || {
        WorkerProcess::run(
            &[
                "worker",
                "--region",
                "r1",
                "--redis",
                &r1_redis,
                "--config",
                &path,
                "--concurrency",
                "4",
            ],
            &[],
        )
    };
    let r1_in_flight = || async {
        let stats = hub.bus().stats().await.unwrap();
        stats.iter().find(|s| s.name == "r1").unwrap().in_flight
    };

    let load = BatchLoad::start(addr);
    load.wait_for(200).await;
    // Kill a worker while it holds leases. Only r1's workers lease r1's messages, so leases
    // still out right after the kill are the dead worker's (until their visibility timeout);
    // if it happened to hold none at that instant, try again with a new one.
    let mut killed_holding = false;
    for _ in 0..5 {
        let mut doomed = worker();
        let holding = eventually(Duration::from_secs(20), || async {
            r1_in_flight().await > 0
        })
        .await;
        assert!(holding, "the worker leases r1's messages");
        doomed.kill_9();
        let held = r1_in_flight().await;
        if held > 0 {
            eprintln!("killed a regis worker holding about {held} leased messages");
            killed_holding = true;
            break;
        }
    }
    assert!(killed_holding, "no worker was killed while holding leases");
    // Publishing goes on while r1 has no worker; then another one takes over.
    load.wait_for(load.acked() + 200).await;
    let _successor = worker();
    load.wait_for(load.acked() + 200).await;
    let acked = load.finish().await;

    let applied = eventually(Duration::from_secs(60), || async {
        missing_acked(&snapshot(&regions[1]).await, &acked).is_empty()
    })
    .await;
    let missing = missing_acked(&snapshot(&regions[1]).await, &acked);
    assert!(
        applied,
        "{} of {} acknowledged messages are missing in r1, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(all_applied(&regions, &acked).await, "r0 has them all too");
    assert!(
        drained(hub.bus(), Duration::from_secs(30)).await,
        "{:?}",
        hub.bus().stats().await.unwrap()
    );
    shutdown(hub).await;
}

/// On one replica a JetStream server acknowledges before it fsyncs: `regis serve` says so
/// once at start, with what contract 1 needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regis_serve_warns_once_that_one_replica_does_not_meet_contract_1() {
    let regions = regions(1);
    let env = Env::new(Backend::Nats);
    let config = env.config(&regions);
    let port = free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let path = write_config(env.data.path(), &config, port);
    let log_path = env.data.path().join("stderr.log");
    let mut command = regis_command(&["--log-format", "json", "serve", "--config"]);
    command
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut serve = ServeProcess::spawn(command, addr).await;
    assert!(serve.terminate().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let warnings: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("bus.replicas = 1"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let message = warnings[0]["fields"]["message"].as_str().unwrap();
    for needed in ["fsync", "replicas = 3", "sync_interval: always", "2.10"] {
        assert!(message.contains(needed), "{needed:?} in {message}");
    }
}

/// A NATS bus for region r0 on `nats`, publishing as hub `node_id`.
async fn hub_bus(nats: &NatsProcess, node_id: u16) -> regis::bus::nats::NatsBus {
    regis::bus::nats::NatsBus::connect(
        &NatsConfig {
            url: nats.url(),
            ..NatsConfig::default()
        },
        regis::bus::nats::NatsOptions {
            regions: vec!["r0".into()],
            node_id,
            visibility_timeout: Duration::from_secs(2),
            max_receives: 5,
            dead_letter_retention: Duration::from_secs(3600),
            max_message_bytes: 1 << 18,
        },
    )
    .await
    .expect("the NATS bus connects")
}

/// Publishes `n` messages through `hub` in one call (batches of up to 128 on NATS).
async fn publish_n(hub: &regis::hub::Hub<regis::bus::nats::NatsBus>, n: usize) {
    let requests: Vec<regis::hub::MessageRequest> = (0..n)
        .map(|i| regis::hub::MessageRequest {
            commands: vec![vec!["SET".into(), format!("k{i}").into(), "v".into()]],
            db: 0,
        })
        .collect();
    for result in hub.publish_many(&requests).await {
        result.expect("published");
    }
}

/// Queue figures count Regis messages, not NATS messages (batches), with two hubs
/// publishing into one stream and one of them restarted: the depth is exact for every
/// process; the messages in flight are exact for the process holding their leases, and
/// marked estimated for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_figures_count_messages_with_two_hubs_publishing_batches() {
    use regis::bus::{Consume, QueueStats};
    let nats = nats_server();
    let (bus_a, bus_b) = (hub_bus(&nats, 0).await, hub_bus(&nats, 1).await);
    let convergence = regis::command::Convergence::Lww;
    let hub_a = regis::hub::Hub::new(bus_a.clone(), 0, convergence, 1 << 18, 16)
        .await
        .unwrap();
    let hub_b = regis::hub::Hub::new(bus_b.clone(), 1, convergence, 1 << 18, 16)
        .await
        .unwrap();
    let r0 = |stats: Vec<QueueStats>| stats.into_iter().next().unwrap();
    publish_n(&hub_a, 100).await;
    publish_n(&hub_b, 300).await;
    for _ in 0..7 {
        publish_n(&hub_a, 1).await;
    }
    publish_n(&hub_b, 40).await;
    let total = 100 + 300 + 7 + 40;
    for bus in [&bus_a, &bus_b] {
        let stats = r0(bus.stats().await.unwrap());
        assert_eq!(
            (stats.depth, stats.in_flight, stats.estimated),
            (total, 0, false),
            "{stats:?}"
        );
    }

    // Leased by A and not settled: exact for A, which holds the leases; estimated for B.
    let mut leased = Vec::new();
    while leased.len() < 150 {
        let got = bus_a
            .receive("r0", 150 - leased.len(), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!got.is_empty(), "messages to lease");
        leased.extend(got);
    }
    let held = leased.len() as u64;
    let a = r0(bus_a.stats().await.unwrap());
    assert_eq!(
        (a.depth, a.in_flight, a.estimated),
        (total - held, held, false),
        "{a:?}"
    );
    let b = r0(bus_b.stats().await.unwrap());
    assert_eq!(b.depth, total - held, "{b:?}");
    assert!(b.estimated && b.in_flight > 0, "{b:?}");

    // Hub A restarts: its numbering goes on from its last stored message.
    bus_a.close().await;
    drop(hub_a);
    let bus_a = hub_bus(&nats, 0).await;
    let hub_a = regis::hub::Hub::new(bus_a.clone(), 0, convergence, 1 << 18, 16)
        .await
        .unwrap();
    publish_n(&hub_a, 60).await;
    let a = r0(bus_a.stats().await.unwrap());
    assert_eq!(a.depth, total - held + 60, "{a:?}");

    // Once everything is applied, zero is zero.
    let settled = ack_all(&bus_a, "r0", total as usize + 60, Duration::from_secs(30)).await;
    assert_eq!(settled as u64, total + 60);
    assert!(drained(&bus_a, Duration::from_secs(10)).await);
    let a = r0(bus_a.stats().await.unwrap());
    assert_eq!((a.depth, a.in_flight, a.estimated), (0, 0, false), "{a:?}");
    bus_a.close().await;
    bus_b.close().await;
}

/// Interest retention: once every region acknowledged a message, the topic stream no longer
/// holds it, so the servers' disks hold only backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_leave_the_topic_stream() {
    let env = Env::new(Backend::Nats);
    let bus = env
        .bus_with(&["r0", "r1"], Duration::from_secs(30), 5)
        .await;
    let hub = regis::hub::Hub::new(
        bus.clone(),
        0,
        regis::command::Convergence::Lww,
        1 << 20,
        16,
    )
    .await
    .unwrap();
    let requests: Vec<regis::hub::MessageRequest> = (0..1000)
        .map(|i| regis::hub::MessageRequest {
            commands: vec![vec!["SET".into(), format!("k{i}").into(), "v".into()]],
            db: 0,
        })
        .collect();
    for chunk in requests.chunks(100) {
        for result in hub.publish_many(chunk).await {
            result.unwrap();
        }
    }
    let client = async_nats::connect(env.nats.as_ref().unwrap().url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let stored = || async {
        js.get_stream("REGIS")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages
    };
    assert!(stored().await > 0, "the backlog is in the stream");
    for region in ["r0", "r1"] {
        assert_eq!(
            ack_all(&bus, region, 1000, Duration::from_secs(20)).await,
            1000,
            "region {region}"
        );
    }
    let emptied = eventually(Duration::from_secs(10), || async { stored().await == 0 }).await;
    assert!(emptied, "{} messages left in the topic", stored().await);
    bus.close().await;
}

#[test]
fn regis_worker_and_serve_refuse_what_they_cannot_do_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = regis(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        stderr(&output)
    };
    let embedded = dir.path().join("embedded.toml");
    std::fs::write(
        &embedded,
        "[[regions]]\nname = \"r0\"\nredis = \"redis://127.0.0.1:1\"\n",
    )
    .unwrap();
    let embedded = embedded.to_str().unwrap();

    let hub = run(&[
        "worker",
        "--region",
        "r0",
        "--hub",
        "http://127.0.0.1:7700",
        "--config",
        embedded,
    ]);
    // --hub leases over HTTP (tests/remote.rs); without --redis it says what is missing.
    assert!(hub.contains("--hub") && hub.contains("--redis"), "{hub}");
    let needs_nats = run(&["worker", "--region", "r0", "--config", embedded]);
    assert!(needs_nats.contains("bus.kind = \"nats\""), "{needs_nats}");

    // Nothing listens on this port: serve says where it tried and what to check.
    let nowhere = dir.path().join("nowhere.toml");
    let port = free_port().unwrap();
    std::fs::write(
        &nowhere,
        format!(
            "[bus]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\nrequest_timeout = \"1s\"\n\
             [[regions]]\nname = \"r0\"\nredis = \"redis://127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let nowhere = nowhere.to_str().unwrap();
    let unknown = run(&["worker", "--region", "elsewhere", "--config", nowhere]);
    assert!(
        unknown.contains("\"elsewhere\"") && unknown.contains("r0"),
        "{unknown}"
    );
    let serve = run(&["serve", "--config", nowhere]);
    assert!(
        serve.contains(&format!("127.0.0.1:{port}")) && serve.contains("bus.url"),
        "{serve}"
    );
}

//! Convergence end to end, on the embedded bus and on NATS: a hub with a region behind a
//! delivery scrambler (reorders, delays, duplicates, lost acks), several publishers updating
//! the same keys, the region's Redis stopped and restarted, its worker killed mid-batch.
//! Under `lww` both regions end equal to a reference Redis that applied every message once
//! in version order, counters exact; under `none` the same delivery leaves stale values
//! behind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::scrambler::{Scrambler, Scrambling};
use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use regis::apply::Applier;
use regis::bus::embedded::EmbeddedBus;
use regis::command::Convergence;
use regis::config::WorkerPlacement;
use regis::latency::LatencyWindow;
use regis::redis_process::RedisProcess;
use regis::snapshot::{Entry, Snapshot};
use regis::worker::{self, WorkerSettings};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A message as published: its version and commands.
struct Published {
    version: u64,
    commands: Vec<Vec<String>>,
}

async fn publish_recorded(addr: std::net::SocketAddr, commands: Vec<Vec<String>>) -> Published {
    let answer = publish_answer(addr, json!(commands))
        .await
        .unwrap_or_else(|e| panic!("publish refused: {e:?}"));
    Published {
        version: version_of(&answer),
        commands,
    }
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// One publisher: rapid updates of a small set of keys, each key keeping one type.
async fn publisher(
    addr: std::net::SocketAddr,
    seed: u64,
    messages: usize,
    deadline_ms: u64,
) -> Vec<Published> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for n in 0..messages {
        let k = rng.random_range(0..4);
        let commands = match rng.random_range(0..10) {
            0..=2 => vec![vec![s("SET"), format!("k{k}"), format!("p{seed}-{n}")]],
            3 => vec![vec![
                s("SET"),
                format!("k{k}"),
                format!("t{seed}-{n}"),
                s("PXAT"),
                s(deadline_ms + n as u64),
            ]],
            4 => vec![vec![s("DEL"), format!("k{k}")]],
            5 => vec![vec![
                s("INCRBY"),
                format!("c{}", k % 2),
                s(rng.random_range(1..5)),
            ]],
            6 => vec![
                vec![
                    s("HSET"),
                    format!("h{}", k % 2),
                    format!("f{}", rng.random_range(0..3)),
                    format!("v{seed}-{n}"),
                ],
                vec![s("HINCRBY"), format!("h{}", k % 2), s("hits"), s(1)],
            ],
            7 => vec![vec![
                s("HDEL"),
                format!("h{}", k % 2),
                format!("f{}", rng.random_range(0..3)),
            ]],
            8 => vec![vec![
                s("SADD"),
                s("tags"),
                format!("t{}", rng.random_range(0..6)),
            ]],
            _ => vec![vec![
                s("SREM"),
                s("tags"),
                format!("t{}", rng.random_range(0..6)),
            ]],
        };
        out.push(publish_recorded(addr, commands).await);
    }
    out
}

/// Applies every message once, in version order, to the reference Redis.
async fn build_reference(reference: &RedisProcess, mut published: Vec<Published>) -> Snapshot {
    published.sort_by_key(|p| p.version);
    let client = redis::Client::open(reference.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for message in &published {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for command in &message.commands {
            let mut cmd = redis::cmd(&command[0]);
            for arg in &command[1..] {
                cmd.arg(arg);
            }
            pipe.add_command(cmd);
        }
        pipe.query_async::<redis::Value>(&mut conn)
            .await
            .map(|_| ())
            .unwrap_or_else(|err| {
                panic!("the reference rejected {:?}: {err}", message.commands);
            });
    }
    snapshot(reference).await
}

struct Scrambled {
    regions: Vec<RedisProcess>,
    hub: TestHub,
    scrambler: Scrambler<AnyBus>,
    workers: JoinSet<()>,
    stop: CancellationToken,
    mode: Convergence,
    _env: Env,
}

impl Scrambled {
    async fn start(mode: Convergence, how: Scrambling, backend: Backend) -> Scrambled {
        let regions = regions(2);
        let env = Env::new(backend);
        let mut config = env.config(&regions);
        config.convergence = mode;
        config.regions[1].worker = WorkerPlacement::Remote;
        // One consumer applies the unscrambled region strictly in publish order, the baseline
        // the `none` test compares with (two consumers could already reorder batches).
        config.regions[0].concurrency = Some(1);
        let hub = env.start_hub(&config).await;
        let scrambler = Scrambler::new(hub.bus().clone(), how, 7);
        let mut scrambled = Scrambled {
            regions,
            hub,
            scrambler,
            workers: JoinSet::new(),
            stop: CancellationToken::new(),
            mode,
            _env: env,
        };
        scrambled.spawn_worker();
        scrambled
    }

    fn spawn_worker(&mut self) {
        self.stop = CancellationToken::new();
        worker::spawn(
            WorkerSettings {
                region: region_name(1),
                redis_url: self.regions[1].url(),
                concurrency: 2,
                batch_size: 16,
                redis_timeout: Duration::from_secs(1),
                max_receives: 3,
                retry_backoff: Duration::from_millis(20),
                retry_backoff_max: Duration::from_millis(200),
            },
            self.scrambler.clone(),
            Applier::new(self.mode, Duration::from_secs(3600)),
            Arc::new(LatencyWindow::default()),
            Arc::new(regis::health::RedisHealth::new(&region_name(1))),
            self.stop.clone(),
            &mut self.workers,
        )
        .unwrap();
    }

    /// Kills the scrambled region's worker wherever it is (possibly between applying a batch
    /// and settling it), then starts a new one.
    fn kill_worker(&mut self) {
        self.workers.abort_all();
        self.spawn_worker();
    }

    async fn settled(&self) -> bool {
        drained(self.hub.bus(), Duration::from_secs(60)).await
            && eventually(Duration::from_secs(60), || async {
                self.scrambler.held() == 0
            })
            .await
            && drained(self.hub.bus(), Duration::from_secs(60)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lww_regions_equal_the_in_order_reference_under_scrambled_delivery() {
    lww_under_scrambled_delivery(Backend::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lww_regions_equal_the_in_order_reference_under_scrambled_delivery_on_nats() {
    lww_under_scrambled_delivery(Backend::Nats).await
}

async fn lww_under_scrambled_delivery(backend: Backend) {
    let run = scrambled_run(Convergence::Lww, backend).await;
    assert!(run.expected.len() > 10, "{}", run.expected);
    assert_converges(
        &run.scrambled.regions,
        &run.expected,
        Duration::from_secs(60),
    )
    .await;

    let counted: i64 = ["c0", "c1"]
        .iter()
        .map(
            |c| match run.expected.keys.get(c.as_bytes()).map(|e| &e.0) {
                Some(Entry::String(v)) => String::from_utf8_lossy(v).parse::<i64>().unwrap(),
                _ => 0,
            },
        )
        .sum();
    assert_eq!(
        counted, run.increments,
        "every increment counted exactly once"
    );
    run.scrambled.stop.cancel();
    shutdown(run.scrambled.hub).await;
}

/// Probe keys written twice in a row ("old", then "new") at the end of a scrambled run.
const PROBES: usize = 80;

/// What one scrambled run published and the state applying it once in version order gives.
struct ScrambledRun {
    scrambled: Scrambled,
    expected: Snapshot,
    /// The sum of every INCRBY published.
    increments: i64,
}

/// The end-to-end run both modes go through: several publishers updating the same keys while
/// the scrambled region's Redis is stopped and restarted and its worker killed mid-batch,
/// then [`PROBES`] keys written twice in a row; waits until everything was delivered.
async fn scrambled_run(mode: Convergence, backend: Backend) -> ScrambledRun {
    let how = Scrambling {
        hold: 0.3,
        max_hold: Duration::from_millis(400),
        duplicate: 0.2,
        lose_ack: 0.1,
    };
    let mut run = Scrambled::start(mode, how, backend).await;
    let reference = RedisProcess::start().expect("the test needs redis-server");
    let addr = run.hub.http_addr();
    let deadline_ms = regis::clock::now_ms() + 3_600_000;

    let mut publishers = JoinSet::new();
    for seed in 0..3 {
        publishers.spawn(publisher(addr, seed, 150, deadline_ms));
    }
    // While they publish: the scrambled region's Redis goes away and comes back, and its
    // worker is killed mid-batch. (The pauses place the faults inside the publishing; what
    // the test checks waits for conditions, not for time.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.regions[1].shutdown_saving();
    tokio::time::sleep(Duration::from_millis(700)).await;
    run.regions[1].restart().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.kill_worker();
    let mut published = Vec::new();
    while let Some(done) = publishers.join_next().await {
        published.extend(done.unwrap());
    }
    // The same key written twice in a row: the newer value must win everywhere.
    for i in 0..PROBES {
        published.push(
            publish_recorded(addr, vec![vec![s("SET"), format!("probe{i}"), s("old")]]).await,
        );
        published.push(
            publish_recorded(addr, vec![vec![s("SET"), format!("probe{i}"), s("new")]]).await,
        );
    }
    let increments: i64 = published
        .iter()
        .flat_map(|p| &p.commands)
        .filter(|c| c[0] == "INCRBY")
        .map(|c| c[2].parse::<i64>().unwrap())
        .sum();

    assert!(run.settled().await, "the bus did not drain");
    let expected = build_reference(&reference, published).await;
    ScrambledRun {
        scrambled: run,
        expected,
        increments,
    }
}

/// The same run under `convergence = "none"` leaves older values in place: the hole the
/// original design had and `lww` closes, shown by the very delivery `lww` converges under.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn none_leaves_stale_values_under_the_same_delivery() {
    let run = scrambled_run(Convergence::None, Backend::Embedded).await;
    let unscrambled = snapshot(&run.scrambled.regions[0]).await;
    let scrambled = snapshot(&run.scrambled.regions[1]).await;
    let stale = |snap: &Snapshot| {
        (0..PROBES)
            .filter(|i| {
                snap.keys.get(format!("probe{i}").as_bytes()).map(|e| &e.0)
                    == Some(&Entry::String(b"old".to_vec()))
            })
            .count()
    };
    assert_eq!(
        stale(&unscrambled),
        0,
        "in-order delivery applies the newest value last"
    );
    assert!(
        stale(&scrambled) > 0,
        "reordered delivery under convergence = \"none\" is expected to leave an older value in place (this is what lww prevents)"
    );
    let drift = run.expected.differences(&scrambled, 1500, 5);
    assert!(
        !drift.is_empty(),
        "under none the scrambled region should differ from the in-order reference"
    );
    run.scrambled.stop.cancel();
    shutdown(run.scrambled.hub).await;
}

/// A hub whose clock is now behind a version it issued before it restarted (a previous run
/// with a clock ahead, or a wall clock stepped back) still issues only newer versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_keep_increasing_across_a_hub_restart_even_when_the_clock_is_behind() {
    use regis::bus::embedded::StoreOptions;
    use regis::bus::{Outgoing, Publish};
    use regis::clock::{HybridClock, Version, now_ms};
    use regis::command::Command;
    use regis::envelope::{Envelope, MessageId};
    use regis::hub::{Hub, MessageRequest};

    let data = tempfile::tempdir().unwrap();
    let regions = vec!["r0".to_string()];
    let options = StoreOptions {
        visibility_timeout: Duration::from_secs(30),
        max_receives: 5,
        dead_letter_retention: Duration::from_secs(3600),
    };
    // What a previous run issued, one hour ahead of this machine's clock.
    let ahead = HybridClock::new(0, Some(Version::at_ms(now_ms() + 3_600_000))).issue(1);
    {
        let bus = EmbeddedBus::open(data.path(), &regions, options.clone()).unwrap();
        let envelope = Envelope {
            id: MessageId::new(),
            version: ahead,
            published_at_us: regis::clock::now_us(),
            db: 0,
            commands: vec![Command::from_strs(&["SET", "k", "from-the-future"])],
        };
        bus.publish(vec![Outgoing::new(&envelope, 1 << 20).unwrap()])
            .await
            .unwrap();
        bus.close().await;
    }
    let bus = EmbeddedBus::open(data.path(), &regions, options).unwrap();
    let hub = Hub::new(bus.clone(), 0, Convergence::Lww, 1 << 20, 16)
        .await
        .unwrap();
    let request = MessageRequest {
        commands: vec![vec!["SET".into(), "k".into(), "now".into()]],
        db: 0,
    };
    let after = hub.publish(&request).await.unwrap();
    assert!(
        after.version > ahead,
        "restarted hub issued {:?}, not above {:?}",
        after.version,
        ahead
    );
    bus.close().await;
}

/// The applier calls its scripts by SHA; a Redis that lost them (restarted, `SCRIPT FLUSH`)
/// gets them loaded again and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_a_region_are_loaded_again() {
    let regions = regions(1);
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(&config(data.path(), &regions)).await;
    let addr = hub.http_addr();
    publish(addr, json!([["SET", "a", "1"], ["HSET", "h", "f", "1"]]))
        .await
        .unwrap();
    assert!(drained(hub.bus(), Duration::from_secs(10)).await);
    redis_cmd(&regions[0], &["SCRIPT", "FLUSH"]).await;
    publish(addr, json!([["SET", "a", "2"]])).await.unwrap();
    publish(addr, json!([["HSET", "h", "f", "2"], ["INCR", "n"]]))
        .await
        .unwrap();
    assert!(drained(hub.bus(), Duration::from_secs(10)).await);
    let snap = snapshot(&regions[0]).await;
    assert_eq!(snap.keys[b"a".as_slice()].0, Entry::String(b"2".to_vec()));
    assert_eq!(
        snap.keys[b"h".as_slice()].0,
        Entry::Hash(vec![(b"f".to_vec(), b"2".to_vec())])
    );
    assert_eq!(snap.keys[b"n".as_slice()].0, Entry::String(b"1".to_vec()));
    use regis::bus::Stats;
    assert_eq!(hub.bus().stats().await.unwrap()[0].dead_letters, 0);
    hub.shutdown().await;
}

//! The contract suite: end-to-end tests of the replication path — real `redis-server`s, a
//! real hub, the real HTTP API — run once per bus backend. Every test of the contract is an
//! `async fn(Backend)` listed in [`contract_suite!`], which instantiates it as
//! `embedded::<name>` and `nats::<name>` (the NATS ones on a `nats-server` of their own).

mod common;

use std::time::Duration;

use common::*;
use regis::apply::{Applier, RegionRedis};
use regis::bus::embedded::{EmbeddedBus, StoreOptions};
use regis::bus::{Consume, DeadLetters, Publish, Selection, Settle, Stats};
use regis::command::Convergence;
use regis::envelope::Envelope;
use regis::hub::{Hub, MessageRequest};
use regis::redis_process::{RedisProcess, free_port};
use regis::snapshot::{Entry, Snapshot};
use serde_json::json;

/// Instantiates every contract test once per backend.
macro_rules! contract_suite {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Embedded).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Nats).await
                }
            )*
        }
    };
}

contract_suite!(
    publish_over_http_applies_in_every_region,
    a_region_down_while_publishing_gets_everything_when_it_returns,
    a_poison_message_is_dead_lettered_while_the_others_are_applied_and_can_be_redriven,
    a_lease_that_is_never_settled_is_delivered_again_after_the_visibility_timeout,
    retries_never_dead_letter_but_a_worker_crashing_on_a_message_does,
    messages_appended_together_are_settled_one_by_one,
    a_poison_message_inside_a_producers_batch_is_dead_lettered_alone,
    a_message_for_a_database_a_region_lacks_is_dead_lettered_there_alone,
    regions_converge_although_messages_are_applied_again_out_of_order,
    kill_9_of_the_hub_loses_nothing_acknowledged_and_versions_keep_growing,
    bad_input_gets_a_clear_error_and_publishes_nothing,
    serve_drains_and_exits_zero_on_sigterm_and_publish_cli_prints_the_id,
    a_batch_publishes_each_good_message_and_refuses_each_bad_one,
);

async fn publish_over_http_applies_in_every_region(backend: Backend) {
    let regions = regions(2);
    let env = Env::new(backend);
    let hub = env.start_hub(&env.config(&regions)).await;
    let addr = hub.http_addr();

    publish(addr, json!([["SET", "greeting", "hello"]]))
        .await
        .unwrap();
    publish(
        addr,
        json!([
            ["HSET", "hotel:1", "name", "Raffles", "stars", 5],
            ["SADD", "cities", "singapore"]
        ]),
    )
    .await
    .unwrap();
    publish(
        addr,
        json!([["SET", "blob", {"base64": "AP8KDQ=="}], ["INCRBY", "views", 3], ["INCR", "views"]]),
    )
    .await
    .unwrap();
    publish(
        addr,
        json!([
            ["ZADD", "by-rate", "120.5", "hotel:1"],
            ["SET", "fare", "99", "EX", "600"]
        ]),
    )
    .await
    .unwrap();

    assert!(
        drained(hub.bus(), Duration::from_secs(20)).await,
        "regions did not catch up"
    );
    for region in &regions {
        let snap = snapshot(region).await;
        assert_eq!(
            snap.keys[b"greeting".as_slice()].0,
            Entry::String(b"hello".to_vec())
        );
        assert_eq!(
            snap.keys[b"blob".as_slice()].0,
            Entry::String(vec![0, 255, 10, 13])
        );
        assert_eq!(
            snap.keys[b"views".as_slice()].0,
            Entry::String(b"4".to_vec())
        );
        assert_eq!(
            snap.keys[b"hotel:1".as_slice()].0,
            Entry::Hash(vec![
                (b"name".to_vec(), b"Raffles".to_vec()),
                (b"stars".to_vec(), b"5".to_vec())
            ])
        );
        assert_eq!(
            snap.keys[b"cities".as_slice()].0,
            Entry::Set(vec![b"singapore".to_vec()])
        );
        assert_eq!(
            snap.keys[b"by-rate".as_slice()].0,
            Entry::ZSet(vec![(b"hotel:1".to_vec(), 120.5)])
        );
        let fare_ttl = snap.keys[b"fare".as_slice()].1.expect("fare has a TTL");
        assert!(
            (590_000..=600_000).contains(&fare_ttl),
            "fare TTL {fare_ttl}"
        );
        assert_eq!(snap.len(), 7, "{snap}");
    }
    shutdown(hub).await;
}

async fn a_region_down_while_publishing_gets_everything_when_it_returns(backend: Backend) {
    let mut regions = regions(2);
    let env = Env::new(backend);
    let hub = env.start_hub(&env.config(&regions)).await;
    let addr = hub.http_addr();

    for i in 0..50 {
        publish(
            addr,
            json!([["SET", format!("k{i}"), format!("before-{i}")]]),
        )
        .await
        .unwrap();
    }
    assert!(drained(hub.bus(), Duration::from_secs(20)).await);

    regions[1].shutdown_saving();
    for i in 0..200 {
        publish(
            addr,
            json!([
                ["SET", format!("k{}", i % 80), format!("during-{i}")],
                ["INCR", "counter"]
            ]),
        )
        .await
        .unwrap();
    }
    // The stopped region's backlog waits on the bus; the other region keeps up.
    let backlog_seen = eventually(Duration::from_secs(10), || async {
        let stats = hub.bus().stats().await.unwrap();
        stats[1].depth + stats[1].in_flight > 0 && stats[0].depth == 0
    })
    .await;
    assert!(backlog_seen, "{:?}", hub.bus().stats().await.unwrap());

    regions[1].restart().unwrap();
    assert!(
        drained(hub.bus(), Duration::from_secs(30)).await,
        "backlog did not drain"
    );
    let expected = snapshot(&regions[0]).await;
    assert_eq!(
        expected.keys[b"counter".as_slice()].0,
        Entry::String(b"200".to_vec())
    );
    assert_eq!(
        expected.keys[b"k39".as_slice()].0,
        Entry::String(b"during-199".to_vec())
    );
    assert_eq!(
        expected.keys[b"k79".as_slice()].0,
        Entry::String(b"during-159".to_vec())
    );
    assert_converges(&regions, &expected, Duration::from_secs(5)).await;
    shutdown(hub).await;
}

async fn a_poison_message_is_dead_lettered_while_the_others_are_applied_and_can_be_redriven(
    backend: Backend,
) {
    let regions = regions(2);
    // In region 0 the key is a string, written there directly: an HSET on it is poison there.
    redis_cmd(&regions[0], &["SET", "profile", "not-a-hash"]).await;
    let env = Env::new(backend);
    let hub = env.start_hub(&env.config(&regions)).await;
    let addr = hub.http_addr();

    publish(addr, json!([["SET", "before", "1"]]))
        .await
        .unwrap();
    let poison = publish(
        addr,
        json!([
            ["HSET", "profile", "name", "Ana"],
            ["SET", "same-message", "x"]
        ]),
    )
    .await
    .unwrap();
    for i in 0..30 {
        publish(addr, json!([["SET", format!("after{i}"), i]]))
            .await
            .unwrap();
    }

    let dead = eventually(Duration::from_secs(20), || async {
        hub.bus().stats().await.unwrap()[0].dead_letters == 1
    })
    .await;
    assert!(dead, "{:?}", hub.bus().stats().await.unwrap());
    assert!(drained(hub.bus(), Duration::from_secs(20)).await);

    let letters = hub.bus().list("r0", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id.to_string(), poison);
    assert_eq!(letters[0].attempts, 3, "dead-lettered after max_receives");
    assert!(
        letters[0].last_error.contains("WRONGTYPE"),
        "{}",
        letters[0].last_error
    );

    let r0 = snapshot(&regions[0]).await;
    assert_eq!(
        r0.keys[b"profile".as_slice()].0,
        Entry::String(b"not-a-hash".to_vec())
    );
    assert!(
        !r0.keys.contains_key(b"same-message".as_slice()),
        "a poison message is applied all or nothing"
    );
    assert!(
        r0.keys.contains_key(b"after29".as_slice()) && r0.keys.contains_key(b"before".as_slice())
    );
    let r1 = snapshot(&regions[1]).await;
    assert_eq!(
        r1.keys[b"profile".as_slice()].0,
        Entry::Hash(vec![(b"name".to_vec(), b"Ana".to_vec())]),
        "the other region applied it"
    );
    assert_eq!(hub.bus().stats().await.unwrap()[1].dead_letters, 0);

    // The dead letter can be shown by id, and nothing else is there.
    let id = letters[0].id;
    let shown = hub.bus().get("r0", id).await.unwrap().expect("shown by id");
    assert_eq!((shown.id, shown.attempts), (id, 3));
    assert!(shown.first_failure_ms <= shown.last_failure_ms && shown.published_at_ms > 0);
    let decoded = Envelope::decode(&shown.body).expect("the original message is kept");
    assert_eq!(decoded.id, id);
    assert!(hub.bus().get("r1", id).await.unwrap().is_none());

    // Once the region is repaired, a redrive applies it there with a fresh receive count.
    redis_cmd(&regions[0], &["DEL", "profile"]).await;
    let unknown = regis::envelope::MessageId::new();
    assert_eq!(
        hub.bus()
            .redrive("r0", Selection::Ids(vec![unknown, id]))
            .await
            .unwrap(),
        1,
        "unknown ids are skipped"
    );
    let applied = eventually(Duration::from_secs(20), || async {
        let snap = snapshot(&regions[0]).await;
        snap.keys.get(b"profile".as_slice()).map(|e| &e.0)
            == Some(&Entry::Hash(vec![(b"name".to_vec(), b"Ana".to_vec())]))
            && snap.keys.contains_key(b"same-message".as_slice())
    })
    .await;
    assert!(applied, "the redriven message is applied in r0");
    assert!(drained(hub.bus(), Duration::from_secs(20)).await);
    assert!(hub.bus().list("r0", 10).await.unwrap().is_empty());
    assert_eq!(hub.bus().stats().await.unwrap()[0].dead_letters, 0);
    let expected = snapshot(&regions[1]).await;
    assert_converges(&regions, &expected, Duration::from_secs(10)).await;

    // Purge: by id, then everything.
    redis_cmd(&regions[0], &["SET", "poison2", "string"]).await;
    redis_cmd(&regions[0], &["SET", "poison3", "string"]).await;
    let second = publish(addr, json!([["SADD", "poison2", "x"]]))
        .await
        .unwrap();
    publish(addr, json!([["SADD", "poison3", "x"]]))
        .await
        .unwrap();
    let both = eventually(Duration::from_secs(20), || async {
        hub.bus().stats().await.unwrap()[0].dead_letters == 2
    })
    .await;
    assert!(both, "{:?}", hub.bus().stats().await.unwrap());
    let second = second.parse().unwrap();
    assert_eq!(
        hub.bus()
            .purge("r0", Selection::Ids(vec![second]))
            .await
            .unwrap(),
        1
    );
    assert!(hub.bus().get("r0", second).await.unwrap().is_none());
    assert_eq!(hub.bus().purge("r0", Selection::All).await.unwrap(), 1);
    assert_eq!(hub.bus().stats().await.unwrap()[0].dead_letters, 0);
    assert_eq!(hub.bus().redrive("r0", Selection::All).await.unwrap(), 0);
    shutdown(hub).await;
}

/// A consumer that leases messages and dies without settling them.
async fn a_lease_that_is_never_settled_is_delivered_again_after_the_visibility_timeout(
    backend: Backend,
) {
    let env = Env::new(backend);
    let bus = env.bus_with(&["r0"], Duration::from_millis(500), 5).await;
    let hub = Hub::new(bus.clone(), 0, Convergence::Lww, 1 << 20, 16)
        .await
        .unwrap();
    let request = MessageRequest {
        commands: vec![vec!["SET".into(), "k".into(), "v".into()]],
        db: 0,
    };
    let receipt = hub.publish(&request).await.unwrap();

    let first = bus.receive("r0", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    // While leased, nobody else gets it.
    assert!(
        bus.receive("r0", 10, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );

    let again = bus.receive("r0", 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "delivered again after the visibility timeout"
    );
    assert_eq!(again[0].receive_count, 2);
    let decoded = regis::envelope::Envelope::decode(&again[0].body).unwrap();
    assert_eq!(decoded.id, receipt.id);

    // The dead consumer's late Retry is ignored; the live one's Ack ends it; a repeated Ack
    // does no harm.
    bus.settle(
        "r0",
        vec![(
            first[0].receipt.clone(),
            Settle::Retry {
                after: Duration::ZERO,
                reason: "late".into(),
                transient: false,
            },
        )],
    )
    .await
    .unwrap();
    bus.settle("r0", vec![(again[0].receipt.clone(), Settle::Ack)])
        .await
        .unwrap();
    bus.settle("r0", vec![(again[0].receipt.clone(), Settle::Ack)])
        .await
        .unwrap();
    assert!(
        bus.receive("r0", 10, Duration::from_millis(700))
            .await
            .unwrap()
            .is_empty()
    );
    let stats = bus.stats().await.unwrap();
    assert_eq!(
        (stats[0].depth, stats[0].in_flight, stats[0].dead_letters),
        (0, 0, 0)
    );
    assert!(bus.high_water().await.unwrap() >= Some(receipt.version));
    bus.close().await;
}

async fn kill_9_of_the_hub_loses_nothing_acknowledged_and_versions_keep_growing(backend: Backend) {
    let mut regions = regions(2);
    let env = Env::new(backend);
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let path = write_config(env.data.path(), &env.config(&regions), port);
    // Region 1 is down, so its whole share is still on the bus when the hub dies.
    regions[1].shutdown_saving();
    let mut serve = ServeProcess::start(&path, addr).await;
    let mut acked = Vec::new();
    let mut last_version = 0u64;
    for i in 0..300 {
        let answer = publish_answer(
            addr,
            json!([
                ["SET", format!("key{i}"), format!("value{i}")],
                ["INCR", "acked"]
            ]),
        )
        .await
        .unwrap();
        last_version = version_of(&answer);
        acked.push(i);
    }
    serve.kill_9();

    regions[1].restart().unwrap();
    let serve = ServeProcess::start(&path, addr).await;
    // The restarted hub's clock starts above every version it issued before.
    let after = publish_answer(addr, json!([["SET", "after-restart", "1"]]))
        .await
        .unwrap();
    assert!(
        version_of(&after) > last_version,
        "version {} after the restart is not above {last_version}",
        version_of(&after)
    );
    let ok = eventually(Duration::from_secs(30), || async {
        let mut all = true;
        for region in &regions {
            let snap = snapshot(region).await;
            all &= missing_acked(&snap, &acked).is_empty();
            all &= snap.keys.get(b"acked".as_slice()).map(|e| &e.0)
                == Some(&Entry::String(b"300".to_vec()));
            all &= snap.keys.contains_key(b"after-restart".as_slice());
        }
        all
    })
    .await;
    assert!(
        ok,
        "after kill -9 and restart every acknowledged message is applied exactly as published"
    );
    drop(serve);
}

/// Messages settled with `Retry` come back however often; a message whose lease expires
/// unsettled once it has been received `max_receives` times (a worker crashing on it) is
/// dead-lettered by the bus itself, with its attempts and the reason.
async fn retries_never_dead_letter_but_a_worker_crashing_on_a_message_does(backend: Backend) {
    let env = Env::new(backend);
    let bus = env.bus_with(&["r0"], Duration::from_millis(500), 3).await;
    let hub = Hub::new(bus.clone(), 0, Convergence::Lww, 1 << 20, 16)
        .await
        .unwrap();
    let request = MessageRequest {
        commands: vec![vec!["SET".into(), "k".into(), "v".into()]],
        db: 0,
    };
    let published = hub.publish(&request).await.unwrap();

    // Twice max_receives retries (a Redis outage): still delivered every time.
    for attempt in 1..=6u32 {
        let got = bus.receive("r0", 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        bus.settle(
            "r0",
            vec![(
                got[0].receipt.clone(),
                Settle::Retry {
                    after: Duration::ZERO,
                    reason: format!("outage {attempt}"),
                    transient: true,
                },
            )],
        )
        .await
        .unwrap();
    }
    assert_eq!(bus.stats().await.unwrap()[0].dead_letters, 0);

    // Leased once more and never settled: the worker died applying it.
    let crashed = bus.receive("r0", 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(crashed.len(), 1);
    assert_eq!(crashed[0].receive_count, 7);
    let after_expiry = bus.receive("r0", 10, Duration::from_secs(3)).await.unwrap();
    assert!(
        after_expiry.is_empty(),
        "an expired lease past max_receives is not delivered again: {:?}",
        after_expiry
            .iter()
            .map(|d| d.receive_count)
            .collect::<Vec<_>>()
    );
    let dead = eventually(Duration::from_secs(5), || async {
        bus.stats().await.unwrap()[0].dead_letters == 1
    })
    .await;
    assert!(dead, "{:?}", bus.stats().await.unwrap());
    let letter = bus
        .get("r0", published.id)
        .await
        .unwrap()
        .expect("dead-lettered");
    assert_eq!(letter.attempts, 7);
    assert!(
        letter.last_error.contains("visibility timeout"),
        "{}",
        letter.last_error
    );
    let stats = bus.stats().await.unwrap();
    assert_eq!((stats[0].depth, stats[0].in_flight), (0, 0));

    // A message whose worker crashes from its first delivery on dies after max_receives.
    let second = hub.publish(&request).await.unwrap();
    for attempt in 1..=3u32 {
        let got = bus.receive("r0", 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].receive_count, attempt);
    }
    assert!(
        bus.receive("r0", 10, Duration::from_secs(3))
            .await
            .unwrap()
            .is_empty()
    );
    let letter = bus
        .get("r0", second.id)
        .await
        .unwrap()
        .expect("dead-lettered");
    assert_eq!(letter.attempts, 3);
    bus.close().await;
}

/// Receives until `n` deliveries are in hand or `timeout` passes.
async fn receive_at_least(
    bus: &AnyBus,
    region: &str,
    n: usize,
    timeout: Duration,
) -> Vec<regis::bus::Delivery> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && std::time::Instant::now() < deadline {
        got.extend(
            bus.receive(region, 10, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

/// Messages appended in one call (a producer's batch; on NATS one stored message) are still
/// leased and settled one by one, in as many settle calls as the consumer likes.
async fn messages_appended_together_are_settled_one_by_one(backend: Backend) {
    let env = Env::new(backend);
    let bus = env.bus_with(&["r0"], Duration::from_secs(5), 3).await;
    let hub = Hub::new(bus.clone(), 0, Convergence::Lww, 1 << 20, 16)
        .await
        .unwrap();
    let requests: Vec<MessageRequest> = (0..6)
        .map(|i| MessageRequest {
            commands: vec![vec!["SET".into(), format!("k{i}").into(), "v".into()]],
            db: 0,
        })
        .collect();
    let ids: Vec<_> = hub
        .publish_many(&requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    let id_of = |d: &regis::bus::Delivery| Envelope::decode(&d.body).unwrap().id;

    let got = receive_at_least(&bus, "r0", 6, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 6);
    let mut by_id: Vec<_> = got.iter().map(|d| (id_of(d), d.receipt.clone())).collect();
    by_id.sort_by_key(|(id, _)| ids.iter().position(|i| i == id).unwrap());
    let receipt = |i: usize| by_id[i].1.clone();
    let retry = |reason: &str| Settle::Retry {
        after: Duration::ZERO,
        reason: reason.into(),
        transient: false,
    };

    // Two settle calls: some now, the rest later, one of them repeated.
    bus.settle(
        "r0",
        vec![(receipt(0), Settle::Ack), (receipt(2), retry("once"))],
    )
    .await
    .unwrap();
    bus.settle(
        "r0",
        vec![
            (receipt(1), Settle::Ack),
            (receipt(0), Settle::Ack),
            (
                receipt(3),
                Settle::DeadLetter {
                    reason: "poison".into(),
                },
            ),
            (receipt(4), Settle::Ack),
            (receipt(5), retry("twice")),
        ],
    )
    .await
    .unwrap();

    // Only the two retried come back, each with its second receive.
    let again = receive_at_least(&bus, "r0", 2, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 2);
    let mut back_ids: Vec<_> = again.iter().map(id_of).collect();
    back_ids.sort();
    let mut expected = vec![ids[2], ids[5]];
    expected.sort();
    assert_eq!(back_ids, expected);
    assert!(again.iter().all(|d| d.receive_count == 2));
    let letter = bus.get("r0", ids[3]).await.unwrap().expect("dead-lettered");
    assert_eq!((letter.attempts, letter.last_error.as_str()), (1, "poison"));

    bus.settle(
        "r0",
        again
            .iter()
            .map(|d| (d.receipt.clone(), Settle::Ack))
            .collect(),
    )
    .await
    .unwrap();
    assert!(
        bus.receive("r0", 10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "nothing comes back once every message is settled"
    );
    let drained_now = eventually(Duration::from_secs(5), || async {
        let stats = bus.stats().await.unwrap();
        (stats[0].depth, stats[0].in_flight, stats[0].dead_letters) == (0, 0, 1)
    })
    .await;
    assert!(drained_now, "{:?}", bus.stats().await.unwrap());
    bus.close().await;
}

/// The end-to-end form: a producer's batch with one poison message in it.
async fn a_poison_message_inside_a_producers_batch_is_dead_lettered_alone(backend: Backend) {
    let regions = regions(2);
    redis_cmd(&regions[0], &["SET", "profile", "not-a-hash"]).await;
    let env = Env::new(backend);
    let hub = env.start_hub(&env.config(&regions)).await;
    let requests: Vec<MessageRequest> = (0..50)
        .map(|i| MessageRequest {
            commands: if i == 20 {
                vec![vec![
                    "HSET".into(),
                    "profile".into(),
                    "name".into(),
                    "Ana".into(),
                ]]
            } else {
                vec![
                    vec!["SET".into(), format!("b{i}").into(), format!("v{i}").into()],
                    vec!["INCR".into(), "n".into()],
                ]
            },
            db: 0,
        })
        .collect();
    let published: Vec<_> = hub
        .hub()
        .publish_many(&requests)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let dead = eventually(Duration::from_secs(20), || async {
        hub.bus().stats().await.unwrap()[0].dead_letters == 1
    })
    .await;
    assert!(dead, "{:?}", hub.bus().stats().await.unwrap());
    assert!(drained(hub.bus(), Duration::from_secs(20)).await);
    let letters = hub.bus().list("r0", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, published[20].id);
    assert_eq!(letters[0].attempts, 3);
    for (i, region) in regions.iter().enumerate() {
        let snap = snapshot(region).await;
        assert_eq!(
            snap.keys[b"n".as_slice()].0,
            Entry::String(b"49".to_vec()),
            "region {i}: every other message of the batch applied exactly once"
        );
        assert!((0..50).filter(|i| *i != 20).all(|i| {
            snap.keys.get(format!("b{i}").as_bytes()).map(|e| &e.0)
                == Some(&Entry::String(format!("v{i}").into_bytes()))
        }));
    }
    assert_eq!(hub.bus().stats().await.unwrap()[1].dead_letters, 0);
    shutdown(hub).await;
}

/// A region whose Redis has fewer databases than the hub accepts: a message for one it lacks
/// cannot be applied there (its `SELECT` is refused). That failure is the message's alone: it
/// is dead-lettered after `max_receives` while its batch neighbours, in its database's
/// neighbours 0 and 1, are applied; the other region applies everything.
async fn a_message_for_a_database_a_region_lacks_is_dead_lettered_there_alone(backend: Backend) {
    let small = RedisProcess::start_with(&["--databases", "2"])
        .unwrap_or_else(|err| panic!("test needs redis-server: {err}"));
    let regions = vec![small, regions(1).remove(0)];
    let env = Env::new(backend);
    let config = env.config(&regions);
    assert_eq!(config.databases(), 16, "the hub accepts database 5");
    let hub = env.start_hub(&config).await;
    let set = |key: String, db: u32| MessageRequest {
        commands: vec![vec!["SET".into(), key.into(), "v".into()]],
        db,
    };
    // One append, so the region's consumers lease the poison with its neighbours.
    let requests: Vec<MessageRequest> = (0..40)
        .map(|i| match i {
            17 => set("far".into(), 5),
            _ if i % 2 == 0 => set(format!("even{i}"), 0),
            _ => set(format!("odd{i}"), 1),
        })
        .collect();
    let published: Vec<_> = hub
        .hub()
        .publish_many(&requests)
        .await
        .into_iter()
        .map(|r| r.expect("published"))
        .collect();

    let dead = eventually(Duration::from_secs(20), || async {
        hub.bus().stats().await.unwrap()[0].dead_letters == 1
    })
    .await;
    assert!(dead, "{:?}", hub.bus().stats().await.unwrap());
    assert!(drained(hub.bus(), Duration::from_secs(20)).await);
    let letters = hub.bus().list("r0", 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].id, published[17].id);
    assert_eq!(letters[0].attempts, 3, "dead-lettered after max_receives");
    assert!(
        letters[0].last_error.contains("database 5")
            && letters[0].last_error.contains("DB index is out of range"),
        "{}",
        letters[0].last_error
    );
    assert_eq!(hub.bus().stats().await.unwrap()[1].dead_letters, 0);

    for (i, region) in regions.iter().enumerate() {
        let db0 = Snapshot::read(&region.url(), 0).await.unwrap();
        let db1 = Snapshot::read(&region.url(), 1).await.unwrap();
        for n in (0..40).filter(|n| *n != 17) {
            let (snap, key) = if n % 2 == 0 {
                (&db0, format!("even{n}"))
            } else {
                (&db1, format!("odd{n}"))
            };
            assert_eq!(
                snap.keys.get(key.as_bytes()).map(|e| &e.0),
                Some(&Entry::String(b"v".to_vec())),
                "region {i}: {key} applied"
            );
        }
        assert!(
            !db0.keys.contains_key(b"far".as_slice()) && !db1.keys.contains_key(b"far".as_slice())
        );
    }
    let far = Snapshot::read(&regions[1].url(), 5).await.unwrap();
    assert_eq!(
        far.keys.get(b"far".as_slice()).map(|e| &e.0),
        Some(&Entry::String(b"v".to_vec())),
        "the region that has database 5 applied it"
    );
    shutdown(hub).await;
}

/// Messages applied by a consumer that then dies are applied again after the visibility
/// timeout, after newer messages: duplicates and reordering must not change the end state.
async fn regions_converge_although_messages_are_applied_again_out_of_order(backend: Backend) {
    let regions = regions(2);
    let env = Env::new(backend);
    let mut config = env.config(&regions);
    config.delivery.visibility_timeout = Duration::from_secs(1);
    config.delivery.max_receives = 5;
    config.worker.redis_timeout = Duration::from_millis(500);
    // While publishing, the crashing consumer below is region 1's only consumer, so it takes
    // messages for sure; a real worker takes over afterwards.
    config.regions[1].worker = regis::config::WorkerPlacement::Remote;
    let hub = env.start_hub(&config).await;
    let addr = hub.http_addr();

    // A consumer of region 1 that applies every first delivery it gets and never settles it.
    let bus = hub.bus().clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let crashing = {
        let stop = stop.clone();
        let url = regions[1].url();
        tokio::spawn(async move {
            let applier = Applier::new(Convergence::Lww, Duration::from_secs(3600));
            let mut redis = RegionRedis::new(&url, Duration::from_secs(1)).unwrap();
            let mut abandoned = 0usize;
            while !stop.is_cancelled() {
                let got = bus
                    .receive("r1", 8, Duration::from_millis(50))
                    .await
                    .unwrap();
                let (first, again): (Vec<_>, Vec<_>) =
                    got.into_iter().partition(|d| d.receive_count == 1);
                let envelopes: Vec<Envelope> = first
                    .iter()
                    .map(|d| Envelope::decode(&d.body).unwrap())
                    .collect();
                if !envelopes.is_empty() {
                    applier.apply(&mut redis, &envelopes).await.unwrap();
                    abandoned += envelopes.len();
                }
                // Later deliveries go back at once, settled, so none expires twice.
                let back = again
                    .into_iter()
                    .map(|d| {
                        (
                            d.receipt,
                            Settle::Retry {
                                after: Duration::ZERO,
                                reason: "not mine".into(),
                                transient: false,
                            },
                        )
                    })
                    .collect::<Vec<_>>();
                bus.settle("r1", back).await.unwrap();
            }
            abandoned
        })
    };

    let n = 300usize;
    for i in 0..n {
        let mut commands = vec![
            json!(["SET", format!("k{}", i % 7), format!("v{i}")]),
            json!(["HSET", "h", format!("f{}", i % 5), format!("v{i}")]),
            json!(["INCR", "n"]),
            json!(["ZADD", "z", i, format!("m{}", i % 3)]),
        ];
        if i % 50 == 49 {
            commands.push(json!(["DEL", "k0"]));
        }
        publish(addr, json!(commands)).await.unwrap();
    }
    stop.cancel();
    let abandoned = crashing.await.unwrap();
    assert!(
        abandoned > 0,
        "the crashing consumer took no message: nothing was redelivered"
    );
    // The region's real worker now gets what the crashing one abandoned, after the
    // visibility timeout, and after messages published later.
    let worker_stop = tokio_util::sync::CancellationToken::new();
    let mut worker_tasks = tokio::task::JoinSet::new();
    regis::worker::spawn(
        regis::worker::WorkerSettings {
            region: region_name(1),
            redis_url: regions[1].url(),
            concurrency: 2,
            batch_size: 64,
            redis_timeout: config.worker.redis_timeout,
            max_receives: config.delivery.max_receives,
            retry_backoff: config.delivery.retry_backoff,
            retry_backoff_max: config.delivery.retry_backoff_max,
        },
        hub.bus().clone(),
        Applier::new(Convergence::Lww, Duration::from_secs(3600)),
        std::sync::Arc::new(regis::latency::LatencyWindow::default()),
        std::sync::Arc::new(regis::health::RedisHealth::new(&region_name(1))),
        worker_stop.clone(),
        &mut worker_tasks,
    )
    .unwrap();
    assert!(
        drained(hub.bus(), Duration::from_secs(60)).await,
        "{:?}",
        hub.bus().stats().await.unwrap()
    );
    let stats = hub.bus().stats().await.unwrap();
    assert_eq!(stats[1].dead_letters, 0, "{stats:?}");

    let expected = snapshot(&regions[0]).await;
    let last = |m: usize| (0..n).rev().find(|i| i % m == 0).unwrap();
    assert_eq!(
        expected.keys[b"n".as_slice()].0,
        Entry::String(n.to_string().into_bytes())
    );
    // k0 is set every 7th message and deleted every 50th: whichever came last wins.
    let k0_set = (0..n).rev().find(|i| i % 7 == 0).unwrap();
    let k0_del = (0..n).rev().find(|i| i % 50 == 49).unwrap();
    if k0_del > k0_set {
        assert!(!expected.keys.contains_key(b"k0".as_slice()));
    } else {
        assert_eq!(
            expected.keys[b"k0".as_slice()].0,
            Entry::String(format!("v{k0_set}").into_bytes())
        );
    }
    let k3 = (0..n).rev().find(|i| i % 7 == 3).unwrap();
    assert_eq!(
        expected.keys[b"k3".as_slice()].0,
        Entry::String(format!("v{k3}").into_bytes())
    );
    let Entry::ZSet(z) = &expected.keys[b"z".as_slice()].0 else {
        panic!("z is a sorted set");
    };
    assert!(z.contains(&(b"m0".to_vec(), last(3) as f64)), "{z:?}");
    assert_converges(&regions, &expected, Duration::from_secs(10)).await;
    worker_stop.cancel();
    while worker_tasks.join_next().await.is_some() {}
    shutdown(hub).await;
}

async fn bad_input_gets_a_clear_error_and_publishes_nothing(backend: Backend) {
    let regions = regions(1);
    let env = Env::new(backend);
    let mut config = env.config(&regions);
    config.max_message_bytes = 4096;
    let hub = env.start_hub(&config).await;
    let addr = hub.http_addr();

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"not json".to_vec(), 400, "not valid JSON"),
        (b"{\"commands\": 5}".to_vec(), 400, "commands"),
        (b"{\"commands\": []}".to_vec(), 422, "at least one command"),
        (
            json!({"commands": [["GET", "k"]]}).to_string().into_bytes(),
            422,
            "read from your regional Redis",
        ),
        (
            json!({"commands": [["FLUSHALL"]]}).to_string().into_bytes(),
            422,
            "FLUSHALL is refused",
        ),
        (
            json!({"commands": [["EVAL", "return 1", "0"]]})
                .to_string()
                .into_bytes(),
            422,
            "EVAL is refused",
        ),
        (
            json!({"commands": [["NOSUCH", "k"]]})
                .to_string()
                .into_bytes(),
            422,
            "unknown command 'NOSUCH'",
        ),
        (
            json!({"commands": [["SET", "k"]]}).to_string().into_bytes(),
            422,
            "wrong number of arguments for 'SET'",
        ),
        (
            json!({"commands": [["LPUSH", "l", "x"]]})
                .to_string()
                .into_bytes(),
            422,
            "convergence = \\\"none\\\" accepts it",
        ),
        // Regis's own metadata keys cannot be written by producers, at any key position.
        (
            json!({"commands": [["DEL", "a", "__regis:m:{a}"]]})
                .to_string()
                .into_bytes(),
            422,
            "reserved for the convergence metadata",
        ),
        // A database the hub does not accept: the limit is named, and what to do.
        (
            json!({"commands": [["SET", "k", "v"]], "db": 16})
                .to_string()
                .into_bytes(),
            422,
            "database 16 is out of range: this hub accepts databases 0 to 15",
        ),
        (
            json!({"commands": [["SET", "k", "v"]], "db": 4_000_000_000u64})
                .to_string()
                .into_bytes(),
            422,
            "raise `databases`",
        ),
        // One bad command refuses the whole message: its good command is not published.
        (
            json!({"commands": [["SET", "good", "1"], ["HSET", "h"]]})
                .to_string()
                .into_bytes(),
            422,
            "command 1",
        ),
        (
            json!({"commands": [["SET", "big", "x".repeat(5000)]]})
                .to_string()
                .into_bytes(),
            413,
            "4096 bytes",
        ),
        (vec![b'['; 200_000], 413, "too large"),
    ];
    for (body, status, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (got, answer) = publish_body(addr, body).await.expect_err(&shown);
        assert_eq!(got, status, "{shown}: {answer}");
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let text = format!("{message} {}", answer["error"]["code"]);
        assert!(
            text.contains(needle.trim_matches('\\')) || answer.to_string().contains(needle),
            "{shown}: {answer}"
        );
    }
    // The hub's own publish API (what the RESP ingress and the Publisher use) refuses it too.
    let refused = hub
        .hub()
        .publish(&MessageRequest {
            commands: vec![vec!["SET".into(), "k".into(), "v".into()]],
            db: 16,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "database_out_of_range", "{refused}");
    assert!(refused.is_bad_input());
    let stats = hub.bus().stats().await.unwrap();
    assert_eq!(
        stats[0].depth + stats[0].in_flight,
        0,
        "nothing was published"
    );
    // Still nothing published after workers had time to apply anything that slipped through.
    publish(addr, json!([["SET", "marker", "1"]]))
        .await
        .unwrap();
    assert!(drained(hub.bus(), Duration::from_secs(10)).await);
    let snap: Snapshot = snapshot(&regions[0]).await;
    assert_eq!(
        snap.keys
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>(),
        vec!["marker"]
    );
    shutdown(hub).await;
}

async fn serve_drains_and_exits_zero_on_sigterm_and_publish_cli_prints_the_id(backend: Backend) {
    let regions = regions(1);
    let env = Env::new(backend);
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let path = write_config(env.data.path(), &env.config(&regions), port);
    let mut serve = ServeProcess::start(&path, addr).await;

    let output = regis(&[
        "publish",
        "--url",
        &format!("http://{addr}"),
        "--",
        "SET",
        "cli-key",
        "cli value",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap();
    assert!(
        id.trim().parse::<uuid::Uuid>().is_ok(),
        "prints the message id, got {id:?}"
    );

    let refused = regis(&[
        "publish",
        "--url",
        &format!("http://{addr}"),
        "--",
        "GET",
        "cli-key",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read from your regional Redis"));

    assert!(
        eventually(Duration::from_secs(10), || async {
            snapshot(&regions[0])
                .await
                .keys
                .contains_key(b"cli-key".as_slice())
        })
        .await
    );
    let status = serve.terminate();
    assert!(
        status.success(),
        "regis serve exits 0 on SIGTERM, got {status}"
    );
}

#[test]
fn a_bad_config_fails_at_start_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\nmax_receives = 0\n[[regions]]\nname = \"a\"\nredis = \"redis://127.0.0.1:1\"\n").unwrap();
    let output = regis(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("delivery.max_receives"),
        "{stderr}"
    );
}

#[test]
fn the_demo_runs_and_exits_zero() {
    let output = regis(&["demo"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("identical"), "{stdout}");
}

/// Settled messages are collected: the topic empties and the file stops growing. (Embedded
/// only: its file; `tests/nats.rs` checks the NATS topic empties.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_messages_are_collected_so_the_file_does_not_grow() {
    let data = tempfile::tempdir().unwrap();
    let regions = vec!["r0".to_string(), "r1".to_string()];
    let bus = EmbeddedBus::open(
        data.path(),
        &regions,
        StoreOptions {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
            dead_letter_retention: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let hub = Hub::new(bus.clone(), 0, Convergence::Lww, 1 << 20, 16)
        .await
        .unwrap();
    let value = bytes::Bytes::from(vec![b'x'; 1000]);
    let mut in_use = Vec::new();
    for round in 0..3 {
        let requests: Vec<MessageRequest> = (0..2000)
            .map(|i| MessageRequest {
                commands: vec![vec![
                    "SET".into(),
                    format!("k{round}-{i}").into(),
                    value.clone(),
                ]],
                db: 0,
            })
            .collect();
        for result in hub.publish_many(&requests).await {
            result.unwrap();
        }
        for region in &regions {
            assert_eq!(
                ack_all(&bus, region, 2000, Duration::from_secs(30)).await,
                2000,
                "round {round}, region {region}"
            );
        }
        let collected = eventually(Duration::from_secs(10), || async {
            bus.footprint().await.unwrap().topic_messages == 0
        })
        .await;
        assert!(
            collected,
            "acked messages stay on disk: {:?}",
            bus.footprint().await.unwrap()
        );
        in_use.push(bus.footprint().await.unwrap());
    }
    // Each round stores ~2 MB; freed pages are reused, so the file does not grow round after round.
    assert!(in_use[0].file_bytes >= 2_000_000, "{in_use:?}");
    assert!(
        in_use[2].file_bytes <= in_use[0].file_bytes + 512 * 1024,
        "the file grew: {in_use:?}"
    );
    assert!(in_use[2].bytes_in_use < 512 * 1024, "{in_use:?}");
    bus.close().await;
}

async fn a_batch_publishes_each_good_message_and_refuses_each_bad_one(backend: Backend) {
    let regions = regions(1);
    let env = Env::new(backend);
    let mut config = env.config(&regions);
    // A batch body may then be at most 16 MiB (the floor of the batch limit).
    config.max_message_bytes = 4096;
    let hub = env.start_hub(&config).await;
    let addr = hub.http_addr();
    let post = |body: String| async move {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/publish/batch"))
            .body(body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    };

    let (status, answer) = post(
        json!({"messages": [
            {"commands": [["SET", "b1", "one"]]},
            {"commands": [["GET", "b1"]]},
            {"commands": [["HSET", "b2", "f", "v"], ["EXPIRE", "b2", 600]], "db": 0},
            {"commands": [["SET", "b3", "x"]], "db": 16},
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(
        results[3]["error"]["code"], "database_out_of_range",
        "{answer}"
    );
    assert!(
        results[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("databases 0 to 15"),
        "{answer}"
    );
    assert!(
        results[0]["id"].is_string() && results[2]["id"].is_string(),
        "{answer}"
    );
    assert_eq!(results[1]["error"]["code"], "read_command", "{answer}");

    for (body, needle) in [
        ("nope".to_string(), "not valid JSON"),
        (
            json!({"messages": [{"commands": "x"}]}).to_string(),
            "messages[0]",
        ),
        (json!({"msgs": []}).to_string(), "unknown field"),
        (
            json!({"messages": vec![json!({"commands": [["SET", "k", "v"]]}); 10_001]}).to_string(),
            "at most 10000",
        ),
    ] {
        let (status, answer) = post(body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{answer}"
        );
    }
    // Above the body limit: 413, saying the limit and what to do, as for one message.
    let (status, answer) = post("[".repeat(16 * 1024 * 1024 + 1)).await;
    assert_eq!(status, 413, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("request body too large: a batch may be at most 16777216 bytes")
            && message.contains("send fewer messages"),
        "{message}"
    );

    assert!(drained(hub.bus(), Duration::from_secs(10)).await);
    let snap = snapshot(&regions[0]).await;
    assert_eq!(
        snap.keys[b"b1".as_slice()].0,
        Entry::String(b"one".to_vec())
    );
    assert!(snap.keys[b"b2".as_slice()].1.is_some(), "b2 has its TTL");
    assert_eq!(snap.len(), 2, "{snap}");
    shutdown(hub).await;
}

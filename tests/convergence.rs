//! Convergence under `lww`: whatever order and however many times messages arrive, a region
//! ends in the state of applying every message once, in version order.
//!
//! The property test generates well-typed histories over a small keyspace (strings with and
//! without TTL, hashes, sets, sorted sets, integer and float counters mixed with SET/DEL on
//! the same keys, deletes, EXPIRE/PERSIST, multi-command messages), delivers them to a real
//! Redis through the `lww` applier in a random order, in random batches, with random
//! duplicates (a worker that died after applying and before acking) and retries of messages
//! that failed, and compares the result with a reference Redis that received the same history
//! once in version order through plain commands: every key's type, value and TTL (within a
//! second).
//!
//! The generator keeps to the histories the convergence contract covers (docs/convergence.md):
//! an expiry or PERSIST is only sent to a key that exists at that point; a collection is not
//! emptied by removals while it has a TTL, and changes type only through SET or DEL; a string
//! counter is either an integer or a float counter; float increments are exact binary
//! fractions (so their sum does not depend on the order of additions).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::{redis_cmd, snapshot};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use regis::apply::{Applier, RegionRedis};
use regis::clock::{HybridClock, now_ms, now_us};
use regis::command::{Command, Convergence, prepare};
use regis::envelope::{Envelope, MessageId};
use regis::redis_process::RedisProcess;

/// What the generator knows of a key, in version order.
#[derive(Clone, Debug, Default, PartialEq)]
enum Kind {
    #[default]
    None,
    Str,
    Int,
    Float,
    Hash,
    Set,
    ZSet,
}

#[derive(Clone, Debug, Default)]
struct KeyModel {
    kind: Kind,
    members: BTreeSet<String>,
    ttl: bool,
}

/// The keyspace: each key has a role that decides which commands it receives.
const KEYS: [&str; 8] = ["v0", "v1", "c0", "c1", "h0", "h1", "s0", "z0"];

struct Generator {
    model: BTreeMap<&'static str, KeyModel>,
    now_ms: u64,
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

impl Generator {
    fn new() -> Self {
        Generator {
            model: KEYS.iter().map(|k| (*k, KeyModel::default())).collect(),
            now_ms: now_ms(),
        }
    }

    fn ttl_suffix(&self, seed: u16, args: &mut Vec<String>) -> bool {
        match seed % 5 {
            0 => {
                args.extend([s("EX"), s(1000 + seed as u64)]);
                true
            }
            1 => {
                args.extend([s("PXAT"), s(self.now_ms + 500_000 + seed as u64)]);
                true
            }
            _ => false,
        }
    }

    /// One command for `key`, valid in the current state, applied to the model.
    fn command(&mut self, key: &'static str, op: u8, seed: u16) -> Vec<String> {
        let m = self.model[key].clone();
        let exists = m.kind != Kind::None;
        let member = |i: u16| format!("m{}", i % 4);
        let mut out: Vec<String>;
        // Whole-key and TTL commands, valid for every role.
        match op % 16 {
            0 if exists => {
                out = vec![s("DEL"), s(key)];
                self.set(key, KeyModel::default());
                return out;
            }
            1 if exists => {
                // A future deadline, or one already past (which deletes the key).
                if seed.is_multiple_of(7) {
                    out = vec![s("EXPIRE"), s(key), s("-1")];
                    self.set(key, KeyModel::default());
                } else if seed % 7 == 1 {
                    out = vec![
                        s("PEXPIREAT"),
                        s(key),
                        s(self.now_ms + 900_000 + seed as u64),
                    ];
                    self.model.get_mut(key).unwrap().ttl = true;
                } else {
                    out = vec![s("EXPIRE"), s(key), s(2000 + seed as u64)];
                    self.model.get_mut(key).unwrap().ttl = true;
                }
                return out;
            }
            2 if exists => {
                out = vec![s("PERSIST"), s(key)];
                self.model.get_mut(key).unwrap().ttl = false;
                return out;
            }
            _ => {}
        }
        let role = &key[..1];
        match (role, m.kind.clone()) {
            // Value strings.
            ("v", _) => {
                if op % 9 == 3 {
                    let other = if key == "v0" { "v1" } else { "v0" };
                    out = vec![
                        s("MSET"),
                        s(key),
                        format!("x{seed}"),
                        s(other),
                        format!("y{seed}"),
                    ];
                    for k in [key, other] {
                        self.set(
                            k,
                            KeyModel {
                                kind: Kind::Str,
                                ..Default::default()
                            },
                        );
                    }
                } else if op % 9 == 4 && exists {
                    out = vec![s("SET"), s(key), format!("kept{seed}"), s("KEEPTTL")];
                } else {
                    out = vec![s("SET"), s(key), format!("val{seed}")];
                    let ttl = self.ttl_suffix(seed, &mut out);
                    self.set(
                        key,
                        KeyModel {
                            kind: Kind::Str,
                            ttl,
                            ..Default::default()
                        },
                    );
                }
            }
            // Integer counter.
            ("c", _) if key == "c0" => {
                if op.is_multiple_of(5) {
                    out = vec![s("SET"), s(key), s(seed as i64 % 50 - 20)];
                    let ttl = self.ttl_suffix(seed / 7, &mut out);
                    self.set(
                        key,
                        KeyModel {
                            kind: Kind::Int,
                            ttl,
                            ..Default::default()
                        },
                    );
                } else {
                    out = match op % 3 {
                        0 => vec![s("INCR"), s(key)],
                        1 => vec![s("DECRBY"), s(key), s(seed % 9)],
                        _ => vec![s("INCRBY"), s(key), s(seed as i64 % 11 - 5)],
                    };
                    let mut next = m.clone();
                    next.kind = Kind::Int;
                    self.set(key, next);
                }
            }
            // Float counter: exact halves.
            ("c", _) => {
                if op.is_multiple_of(5) {
                    out = vec![s("SET"), s(key), format!("{}.5", seed % 40)];
                    self.set(
                        key,
                        KeyModel {
                            kind: Kind::Float,
                            ..Default::default()
                        },
                    );
                } else {
                    out = vec![
                        s("INCRBYFLOAT"),
                        s(key),
                        format!("{}.5", seed as i64 % 7 - 3),
                    ];
                    let mut next = m.clone();
                    next.kind = Kind::Float;
                    self.set(key, next);
                }
            }
            // A collection key that currently holds a string: only SET or DEL change it.
            (_, Kind::Str) => {
                out = vec![s("SET"), s(key), format!("str{seed}")];
                self.set(
                    key,
                    KeyModel {
                        kind: Kind::Str,
                        ..Default::default()
                    },
                );
            }
            ("h", _) => {
                let field = format!("f{}", seed % 3);
                match op % 7 {
                    0 | 1 => {
                        out = vec![
                            s("HSET"),
                            s(key),
                            field.clone(),
                            format!("hv{seed}"),
                            s("f2"),
                            format!("w{seed}"),
                        ];
                        self.add(key, Kind::Hash, &[&field, "f2"]);
                    }
                    2 => {
                        out = vec![s("HSET"), s(key), s("n0"), s(seed % 100)];
                        self.add(key, Kind::Hash, &["n0"]);
                    }
                    3 => {
                        out = vec![s("HINCRBY"), s(key), s("n0"), s(seed as i64 % 9 - 4)];
                        self.add(key, Kind::Hash, &["n0"]);
                    }
                    4 => {
                        out = vec![
                            s("HINCRBYFLOAT"),
                            s(key),
                            s("n1"),
                            format!("{}.25", seed % 5),
                        ];
                        self.add(key, Kind::Hash, &["n1"]);
                    }
                    5 if m.kind == Kind::Hash => {
                        let victim = m
                            .members
                            .iter()
                            .nth(seed as usize % m.members.len())
                            .cloned()
                            .unwrap_or(field);
                        if !self.remove(key, &victim) {
                            return self.command(key, 0, seed);
                        }
                        out = vec![s("HDEL"), s(key), victim];
                    }
                    _ => {
                        out = vec![s("SET"), s(key), format!("hs{seed}")];
                        self.set(
                            key,
                            KeyModel {
                                kind: Kind::Str,
                                ..Default::default()
                            },
                        );
                    }
                }
            }
            ("s", _) => match op % 4 {
                0 | 1 => {
                    let (a, b) = (member(seed), member(seed / 4 + 1));
                    out = vec![s("SADD"), s(key), a.clone(), b.clone()];
                    self.add(key, Kind::Set, &[&a, &b]);
                }
                2 if m.kind == Kind::Set => {
                    let victim = member(seed);
                    if !m.members.contains(&victim) || !self.remove(key, &victim) {
                        return self.command(key, 0, seed);
                    }
                    out = vec![s("SREM"), s(key), victim];
                }
                _ => {
                    let a = member(seed);
                    out = vec![s("SADD"), s(key), a.clone()];
                    self.add(key, Kind::Set, &[&a]);
                }
            },
            _ => match op % 5 {
                0 | 1 => {
                    let a = member(seed);
                    out = vec![s("ZADD"), s(key), format!("{}.5", seed % 30), a.clone()];
                    self.add(key, Kind::ZSet, &[&a]);
                }
                2 => {
                    let a = member(seed / 3);
                    out = vec![
                        s("ZINCRBY"),
                        s(key),
                        format!("{}.5", seed as i64 % 5 - 2),
                        a.clone(),
                    ];
                    self.add(key, Kind::ZSet, &[&a]);
                }
                3 if m.kind == Kind::ZSet => {
                    let victim = member(seed);
                    if !m.members.contains(&victim) || !self.remove(key, &victim) {
                        return self.command(key, 0, seed);
                    }
                    out = vec![s("ZREM"), s(key), victim];
                }
                _ => {
                    out = vec![s("ZADD"), s(key), s(seed % 10), member(seed + 1)];
                    self.add(key, Kind::ZSet, &[&member(seed + 1)]);
                }
            },
        }
        out
    }

    fn set(&mut self, key: &'static str, model: KeyModel) {
        self.model.insert(key, model);
    }

    fn add(&mut self, key: &'static str, kind: Kind, members: &[&str]) {
        let m = self.model.get_mut(key).unwrap();
        if m.kind == Kind::None {
            m.ttl = false;
        }
        m.kind = kind;
        m.members.extend(members.iter().map(|x| x.to_string()));
    }

    /// Removes a member unless that would empty a key that has a TTL.
    fn remove(&mut self, key: &'static str, member: &str) -> bool {
        let m = self.model.get_mut(key).unwrap();
        if m.members.len() == 1 && m.members.contains(member) {
            if m.ttl {
                return false;
            }
            *m = KeyModel::default();
            return true;
        }
        m.members.remove(member);
        true
    }
}

/// One generated step: a message of 1–3 commands.
type Step = Vec<(u8, u8, u16)>;

fn history(steps: &[Step]) -> Vec<Envelope> {
    let mut generator = Generator::new();
    let clock = HybridClock::new(1, None);
    steps
        .iter()
        .map(|step| {
            let commands: Vec<Command> = step
                .iter()
                .map(|&(k, op, seed)| {
                    let key = KEYS[k as usize % KEYS.len()];
                    let args: Vec<Bytes> = generator
                        .command(key, op, seed)
                        .into_iter()
                        .map(Bytes::from)
                        .collect();
                    prepare(&args, Convergence::Lww, generator.now_ms)
                        .expect("the generator only makes accepted commands")
                })
                .collect();
            Envelope {
                id: MessageId::new(),
                version: clock.issue(commands.len()),
                published_at_us: now_us(),
                db: 0,
                commands,
            }
        })
        .collect()
}

struct Servers {
    region: RedisProcess,
    reference: RedisProcess,
}

/// Delivers `messages` to the region in a scrambled order with duplicates, retrying failures.
async fn deliver_scrambled(
    region: &mut RegionRedis,
    applier: &Applier,
    messages: &[Envelope],
    seed: u64,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut queue: Vec<usize> = (0..messages.len()).collect();
    // Duplicates: redeliveries of messages that were applied but not acknowledged.
    for _ in 0..rng.random_range(0..=messages.len()) {
        queue.push(rng.random_range(0..messages.len()));
    }
    queue.shuffle(&mut rng);
    let mut attempts = vec![0u32; messages.len()];
    while !queue.is_empty() {
        let take = rng.random_range(1..=8).min(queue.len());
        let batch_idx: Vec<usize> = queue.drain(..take).collect();
        let batch: Vec<Envelope> = batch_idx.iter().map(|&i| messages[i].clone()).collect();
        let outcomes = applier
            .apply(region, &batch)
            .await
            .map_err(|f| format!("batch failed: {f:?}"))?;
        for (i, outcome) in batch_idx.into_iter().zip(outcomes) {
            if let Err(failure) = outcome {
                // The bus would deliver it again later, as it does after a Retry.
                attempts[i] += 1;
                if attempts[i] > 20 {
                    return Err(format!("message {i} keeps failing: {failure:?}"));
                }
                let at = rng.random_range(0..=queue.len());
                queue.insert(at, i);
            }
        }
    }
    Ok(())
}

async fn check(servers: &Servers, steps: Vec<Step>, seed: u64) -> Result<(), TestCaseError> {
    let messages = history(&steps);
    redis_cmd(&servers.region, &["FLUSHALL"]).await;
    redis_cmd(&servers.reference, &["FLUSHALL"]).await;

    // The reference: every message once, in version order, as plain commands.
    let plain = Applier::new(Convergence::None, Duration::from_secs(3600));
    let mut reference = RegionRedis::new(&servers.reference.url(), Duration::from_secs(5)).unwrap();
    for message in &messages {
        let outcome = plain
            .apply(&mut reference, std::slice::from_ref(message))
            .await
            .unwrap();
        prop_assert!(
            outcome[0].is_ok(),
            "the generated history is ill-typed: {:?} {:?}",
            message.commands,
            outcome
        );
    }

    let history = || {
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "{i}: {:?}",
                    m.commands.iter().map(|c| c.preview(80)).collect::<Vec<_>>()
                )
            })
            .collect::<Vec<_>>()
            .join("\n  ")
    };
    let lww = Applier::new(Convergence::Lww, Duration::from_secs(3600));
    let mut region = RegionRedis::new(&servers.region.url(), Duration::from_secs(5)).unwrap();
    deliver_scrambled(&mut region, &lww, &messages, seed)
        .await
        .map_err(|err| TestCaseError::fail(format!("{err}\nhistory:\n  {}", history())))?;

    let expected = snapshot(&servers.reference).await;
    let got = snapshot(&servers.region).await;
    let diffs = expected.differences(&got, 1000, 10);
    if !diffs.is_empty() {
        return Err(TestCaseError::fail(format!(
            "region differs from the in-order reference:\n  {}\nhistory:\n  {}",
            diffs.join("\n  "),
            history()
        )));
    }
    Ok(())
}

fn step() -> impl Strategy<Value = Step> {
    proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u16>()), 1..=3)
}

#[test]
fn lww_converges_to_the_in_order_state_under_any_delivery() {
    let config = ProptestConfig {
        // REGIS_CONVERGENCE_CASES=5000 for a longer soak.
        cases: std::env::var("REGIS_CONVERGENCE_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(300),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    // Owned by the test, so they are stopped when it ends (a static would never be dropped).
    let servers = Servers {
        region: RedisProcess::start().expect("the convergence tests need redis-server"),
        reference: RedisProcess::start().expect("the convergence tests need redis-server"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(config);
    let result = runner.run(
        &(proptest::collection::vec(step(), 1..40), any::<u64>()),
        |(steps, seed)| runtime.block_on(check(&servers, steps, seed)),
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}

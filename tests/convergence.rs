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
//!
//! Past the horizon (`tombstone_ttl`) the registers of removed members are pruned. A variant
//! of the property test starts every history with a prelude published two hours ago (the
//! tombstone ttl is one hour): many members added and removed on each collection, applied in
//! order, so the removals prune; redeliveries of the prelude then arrive scrambled among the
//! recent messages and must change nothing. `registers_of_removed_members_are_pruned_past_the_horizon`
//! shows the pruning itself, step by step.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::{redis_cmd, snapshot};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use regis::apply::lww::registers_key;
use regis::apply::{Applier, RegionRedis};
use regis::clock::{HybridClock, Version, now_ms, now_us};
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

/// The collection keys the prelude churns.
const PRELUDE_KEYS: [&str; 3] = ["h0", "s0", "z0"];

/// The members (hash fields) the main history writes on a collection key.
fn main_members(key: &str) -> Vec<String> {
    let names: &[&str] = if key.starts_with('h') {
        &["f0", "f1", "f2", "n0", "n1"]
    } else {
        &["m0", "m1", "m2", "m3"]
    };
    names.iter().copied().map(s).collect()
}

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

    /// Member churn on every collection key, enough for removals to prune: each round adds
    /// the members the main history uses plus a dozen of its own, then removes all but one of
    /// its own (and, in the last round, one of the main history's, picked by `seed`).
    fn prelude(&mut self, rounds: u8, seed: u16) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for key in PRELUDE_KEYS {
            let main = main_members(key);
            for round in 0..rounds {
                let own: Vec<String> = (0..12).map(|j| format!("o{round}_{j}")).collect();
                let added: Vec<String> = main.iter().cloned().chain(own.clone()).collect();
                let mut kept = vec![own[0].clone()];
                if round + 1 == rounds {
                    kept.push(main[seed as usize % main.len()].clone());
                }
                let removed: Vec<String> = added
                    .iter()
                    .filter(|m| !kept.contains(m))
                    .cloned()
                    .collect();
                let (add, remove, kind) = match &key[..1] {
                    "h" => ("HSET", "HDEL", Kind::Hash),
                    "s" => ("SADD", "SREM", Kind::Set),
                    _ => ("ZADD", "ZREM", Kind::ZSet),
                };
                let mut command = vec![s(add), s(key)];
                for m in &added {
                    match kind {
                        // Numbers: the main history increments some of these fields.
                        Kind::Hash => command.extend([m.clone(), s(round)]),
                        Kind::ZSet => command.extend([s(round), m.clone()]),
                        _ => command.push(m.clone()),
                    }
                }
                out.push(command);
                let refs: Vec<&str> = added.iter().map(String::as_str).collect();
                self.add(key, kind, &refs);
                out.push(
                    [s(remove), s(key)]
                        .into_iter()
                        .chain(removed.iter().cloned())
                        .collect(),
                );
                for m in &removed {
                    assert!(self.remove(key, m), "the prelude sets no TTL");
                }
            }
        }
        out
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

/// A message of `args` published at `version`'s millisecond.
fn message_at(version: Version, args: &[String]) -> Envelope {
    let args: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.clone())).collect();
    let published_ms = version.physical_ms();
    Envelope {
        id: MessageId::new(),
        version,
        published_at_us: published_ms * 1000,
        db: 0,
        commands: vec![
            prepare(&args, Convergence::Lww, published_ms)
                .expect("the test sends accepted commands"),
        ],
    }
}

/// The tombstone ttl the tests give the `lww` applier.
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// The first version of millisecond `ms` from origin 1.
fn version_at(ms: u64) -> Version {
    Version::from_packed(Version::at_ms(ms).packed() | 1)
}

/// Milliseconds since the epoch `ago` before now.
fn ms_ago(ago: Duration) -> u64 {
    now_ms() - ago.as_millis() as u64
}

/// The prelude of `rounds` rounds (see [`Generator::prelude`]), published two hours ago.
fn prelude(generator: &mut Generator, rounds: u8, seed: u16) -> Vec<Envelope> {
    let published = ms_ago(2 * TOMBSTONE_TTL);
    generator
        .prelude(rounds, seed)
        .iter()
        .enumerate()
        .map(|(i, args)| message_at(version_at(published + i as u64), args))
        .collect()
}

/// The messages of `steps`, published now, following whatever `generator` already made.
fn history_after(generator: &mut Generator, steps: &[Step]) -> Vec<Envelope> {
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

/// Delivers `messages` to the region in a scrambled order with duplicates, and redeliveries
/// of some of `applied` (messages applied before), retrying failures.
async fn deliver_scrambled(
    region: &mut RegionRedis,
    applier: &Applier,
    messages: &[Envelope],
    applied: &[Envelope],
    seed: u64,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut queue: Vec<usize> = (0..messages.len()).collect();
    // Duplicates: redeliveries of messages that were applied but not acknowledged.
    for _ in 0..rng.random_range(0..=messages.len()) {
        queue.push(rng.random_range(0..messages.len()));
    }
    if !applied.is_empty() {
        for _ in 0..rng.random_range(0..=applied.len()) {
            queue.push(messages.len() + rng.random_range(0..applied.len()));
        }
    }
    let messages: Vec<Envelope> = messages.iter().chain(applied).cloned().collect();
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
                // The bus would deliver it again later, as it does after a Retry. A message
                // that waits for another (a WRONGTYPE until the DEL that changes the key's
                // type arrives) can fail many times when that one sits at the back of a long
                // queue, and its duplicates count with it: the budget only catches a message
                // that never applies.
                attempts[i] += 1;
                if attempts[i] > 200 {
                    return Err(format!("message {i} keeps failing: {failure:?}"));
                }
                let at = rng.random_range(0..=queue.len());
                queue.insert(at, i);
            }
        }
    }
    Ok(())
}

/// A prelude published before the horizon: (rounds, seed) for [`Generator::prelude`].
type Prelude = (u8, u16);

async fn check(
    servers: &Servers,
    prelude_spec: Option<Prelude>,
    steps: Vec<Step>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut generator = Generator::new();
    let old = match prelude_spec {
        Some((rounds, prelude_seed)) => prelude(&mut generator, rounds, prelude_seed),
        None => Vec::new(),
    };
    let messages = history_after(&mut generator, &steps);
    redis_cmd(&servers.region, &["FLUSHALL"]).await;
    redis_cmd(&servers.reference, &["FLUSHALL"]).await;

    // The reference: every message once, in version order, as plain commands.
    let plain = Applier::new(Convergence::None, TOMBSTONE_TTL);
    let mut reference = RegionRedis::new(&servers.reference.url(), Duration::from_secs(5)).unwrap();
    for message in old.iter().chain(&messages) {
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
        old.iter()
            .chain(&messages)
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
    let lww = Applier::new(Convergence::Lww, TOMBSTONE_TTL);
    let mut region = RegionRedis::new(&servers.region.url(), Duration::from_secs(5)).unwrap();
    if !old.is_empty() {
        deliver_in_order(&mut region, &lww, &old, seed)
            .await
            .map_err(|err| TestCaseError::fail(format!("{err}\nhistory:\n  {}", history())))?;
        let rounds = prelude_spec.map_or(0, |(rounds, _)| rounds as usize);
        if rounds >= 4 {
            // By the fourth round's removal, H holds more registers than twice the members
            // plus the slack, and the three earlier rounds' tombstones are older than the
            // newest register: that removal prunes them.
            for key in PRELUDE_KEYS {
                let written = main_members(key).len() + 12 * rounds;
                let registers = hlen(&servers.region, &registers_key(key.as_bytes())).await;
                prop_assert!(
                    registers < written,
                    "{key}: {registers} registers of {written} members: the prelude pruned nothing"
                );
            }
        }
    }
    deliver_scrambled(&mut region, &lww, &messages, &old, seed)
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

/// Delivers `messages` in version order, in batches, redelivering some already applied.
async fn deliver_in_order(
    region: &mut RegionRedis,
    applier: &Applier,
    messages: &[Envelope],
    seed: u64,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut next = 0;
    while next < messages.len() {
        let take = rng.random_range(1..=4).min(messages.len() - next);
        let mut batch: Vec<Envelope> = messages[next..next + take].to_vec();
        next += take;
        if rng.random_bool(0.5) {
            batch.push(messages[rng.random_range(0..next)].clone());
        }
        let outcomes = applier
            .apply(region, &batch)
            .await
            .map_err(|f| format!("batch failed: {f:?}"))?;
        if let Some(failure) = outcomes.into_iter().find_map(Result::err) {
            return Err(format!("a prelude message failed: {failure:?}"));
        }
    }
    Ok(())
}

/// The number of fields of hash `key` (raw bytes) in `redis`.
async fn hlen(redis: &RedisProcess, key: &[u8]) -> usize {
    let key = String::from_utf8(key.to_vec()).expect("the test's keys are text");
    match redis_cmd(redis, &["HLEN", &key]).await {
        redis::Value::Int(n) => n as usize,
        other => panic!("HLEN answered {other:?}"),
    }
}

fn step() -> impl Strategy<Value = Step> {
    proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u16>()), 1..=3)
}

/// Runs `check` on `default_cases` (or `REGIS_CONVERGENCE_CASES`) cases of `strategy`, each
/// turned into check's arguments by `case`, against a region and a reference Redis of its
/// own; shrunk failures are kept in `convergence.regressions`.
fn run_convergence<S: Strategy>(
    default_cases: u32,
    strategy: S,
    case: impl Fn(S::Value) -> (Option<Prelude>, Vec<Step>, u64),
) {
    let config = ProptestConfig {
        // REGIS_CONVERGENCE_CASES=5000 for a longer soak.
        cases: std::env::var("REGIS_CONVERGENCE_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default_cases),
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
    let result = runner.run(&strategy, |value| {
        let (prelude, steps, seed) = case(value);
        runtime.block_on(check(&servers, prelude, steps, seed))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[test]
fn lww_converges_to_the_in_order_state_under_any_delivery() {
    run_convergence(
        300,
        (proptest::collection::vec(step(), 1..40), any::<u64>()),
        |(steps, seed)| (None, steps, seed),
    );
}

#[test]
fn lww_converges_when_removed_members_were_pruned_before_the_horizon() {
    run_convergence(
        150,
        (
            (0u8..=7, any::<u16>()),
            proptest::collection::vec(step(), 1..40),
            any::<u64>(),
        ),
        |(prelude_spec, steps, seed)| (Some(prelude_spec), steps, seed),
    );
}

/// One collection type's commands, for the pruning test.
struct Collection {
    key: &'static str,
    add: &'static str,
    remove: &'static str,
    read: &'static [&'static str],
}

impl Collection {
    fn add(&self, members: &[String]) -> Vec<String> {
        let mut args = vec![s(self.add), s(self.key)];
        for m in members {
            match self.add {
                "HSET" => args.extend([m.clone(), s("v")]),
                "ZADD" => args.extend([s("1"), m.clone()]),
                _ => args.push(m.clone()),
            }
        }
        args
    }

    fn remove(&self, members: &[String]) -> Vec<String> {
        [s(self.remove), s(self.key)]
            .into_iter()
            .chain(members.iter().cloned())
            .collect()
    }

    async fn members(&self, redis: &RedisProcess) -> BTreeSet<String> {
        let mut args = self.read.to_vec();
        args.insert(1, self.key);
        let value = redis_cmd(redis, &args).await;
        redis::from_redis_value::<Vec<String>>(value)
            .expect("the collection's members are text")
            .into_iter()
            .collect()
    }

    async fn registers(&self, redis: &RedisProcess) -> usize {
        hlen(redis, &registers_key(self.key.as_bytes())).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_of_removed_members_are_pruned_past_the_horizon() {
    let redis = RedisProcess::start().expect("the convergence tests need redis-server");
    let lww = Applier::new(Convergence::Lww, TOMBSTONE_TTL);
    let mut region = RegionRedis::new(&redis.url(), Duration::from_secs(5)).unwrap();
    let apply = async |region: &mut RegionRedis, message: &Envelope| {
        let outcomes = lww
            .apply(region, std::slice::from_ref(message))
            .await
            .expect("the region's Redis answers");
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
    };
    // Two hours ago: past the one-hour horizon.
    let past = ms_ago(2 * TOMBSTONE_TTL);
    let names =
        |range: std::ops::Range<usize>| -> Vec<String> { range.map(|i| format!("m{i}")).collect() };
    for collection in [
        Collection {
            key: "h",
            add: "HSET",
            remove: "HDEL",
            read: &["HKEYS"],
        },
        Collection {
            key: "s",
            add: "SADD",
            remove: "SREM",
            read: &["SMEMBERS"],
        },
        Collection {
            key: "z",
            add: "ZADD",
            remove: "ZREM",
            read: &["ZRANGE", "0", "-1"],
        },
    ] {
        let key = collection.key;
        // Past the horizon: 100 members added, 95 removed.
        let added = message_at(version_at(past + 1), &collection.add(&names(0..100)));
        apply(&mut region, &added).await;
        apply(
            &mut region,
            &message_at(version_at(past + 3), &collection.remove(&names(5..100))),
        )
        .await;
        // The newest registers always stay (they are what the state's newest-member version
        // points at), so this removal, though it crossed the threshold, pruned nothing.
        assert_eq!(collection.registers(&redis).await, 100, "{key}");

        // One more removal, now: the 95 old tombstones go; this one is recent and stays.
        apply(
            &mut region,
            &message_at(version_at(now_ms()), &collection.remove(&names(0..1))),
        )
        .await;
        assert_eq!(
            collection.registers(&redis).await,
            5,
            "{key}: 4 members, 1 tombstone"
        );
        let live: BTreeSet<String> = names(1..5).into_iter().collect();
        assert_eq!(collection.members(&redis).await, live, "{key}");

        // Late writes older than the newest pruned register stay refused: a redelivery of
        // the first add, and an add of a pruned member between the add and its removal.
        apply(&mut region, &added).await;
        apply(
            &mut region,
            &message_at(version_at(past + 2), &collection.add(&names(50..51))),
        )
        .await;
        assert_eq!(
            collection.members(&redis).await,
            live,
            "{key}: nothing resurrected"
        );
        assert_eq!(collection.registers(&redis).await, 5, "{key}");

        // Newer writes apply: one just newer than the pruned registers (still past the
        // horizon, but newer than anything the region knows of that member), one recent.
        apply(
            &mut region,
            &message_at(version_at(past + 4), &collection.add(&names(50..51))),
        )
        .await;
        apply(
            &mut region,
            &message_at(version_at(now_ms()), &collection.add(&names(60..61))),
        )
        .await;
        let mut expected = live.clone();
        expected.extend([s("m50"), s("m60")]);
        assert_eq!(collection.members(&redis).await, expected, "{key}");
    }
}

/// A prune that had to keep recent tombstones does not run again until H has grown past
/// twice as many: its O(HLEN) work stays amortised over the removals that grew H.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_that_kept_recent_tombstones_waits_for_the_registers_to_grow() {
    let redis = RedisProcess::start().expect("the convergence tests need redis-server");
    let lww = Applier::new(Convergence::Lww, TOMBSTONE_TTL);
    let mut region = RegionRedis::new(&redis.url(), Duration::from_secs(5)).unwrap();
    let apply = async |region: &mut RegionRedis, version: Version, args: Vec<String>| {
        let message = message_at(version, &args);
        let outcomes = lww
            .apply(region, std::slice::from_ref(&message))
            .await
            .expect("the region's Redis answers");
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
    };
    let hash = Collection {
        key: "h",
        add: "HSET",
        remove: "HDEL",
        read: &["HKEYS"],
    };
    let names = |prefix: &str, range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| format!("{prefix}{i}")).collect()
    };
    let past = ms_ago(2 * TOMBSTONE_TTL);
    let now = now_ms();

    // 40 recent tombstones: past the slack, so the removal prunes, but keeps them all.
    apply(&mut region, version_at(now), hash.add(&names("r", 0..40))).await;
    apply(
        &mut region,
        version_at(now + 1),
        hash.remove(&names("r", 0..40)),
    )
    .await;
    assert_eq!(hash.registers(&redis).await, 40);

    // Old churn below 32 + 2 × 40 registers: not pruned yet.
    apply(&mut region, version_at(past), hash.add(&names("o", 0..10))).await;
    apply(
        &mut region,
        version_at(past + 1),
        hash.remove(&names("o", 0..10)),
    )
    .await;
    assert_eq!(hash.registers(&redis).await, 50, "the next prune waits");

    // Past it: the old tombstones go, the recent ones stay.
    apply(
        &mut region,
        version_at(past + 2),
        hash.add(&names("o", 10..80)),
    )
    .await;
    apply(
        &mut region,
        version_at(past + 3),
        hash.remove(&names("o", 10..80)),
    )
    .await;
    assert_eq!(
        hash.registers(&redis).await,
        40,
        "the old tombstones are pruned"
    );
    assert!(hash.members(&redis).await.is_empty());
}

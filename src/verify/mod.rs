//! `regis verify`: whether every region really holds the same data, and repairing drift.
//!
//! # How it compares, in bounded memory
//!
//! One region is the reference (the first, or `--from`). For every database that holds keys
//! in any region:
//!
//! 1. The reference is `SCAN`ned (never `KEYS`), a chunk of keys at a time. Each chunk is read
//!    in every region with one pipeline of `DUMP` and `PEXPIRETIME` per key
//!    ([`read::dump_many`]). Keys whose payloads differ are compared in a normal form: a set
//!    or hash stored as a hash table (whose payload follows each server's own table order)
//!    is decoded from the payloads already read ([`rdb`]); any other difference is read again
//!    by type ([`read::read_normal`]). Expiries are compared within a tolerance. A key
//!    missing in a region, or expiring within the tolerance in one and gone in the other, is
//!    told apart.
//! 2. Every other region is `SCAN`ned too, for keys the reference lacks. Instead of looking
//!    every one of its keys up in the reference, verify takes a census (`Census`): per
//!    bucket of key names, a keyed hash summed over the keys pass 1 found in that region,
//!    and over the keys its own scan returned. Equal sums mean the region holds nothing the
//!    reference lacks in that bucket.
//! 3. Only the buckets whose sums differ — a key only that region holds, or a key written,
//!    deleted or expired while the passes ran — are scanned again in that region, and their
//!    keys looked up in the reference (multi-key `EXISTS`, then single `EXISTS` where some
//!    are missing). On a quiet system with no drift, pass 3 does not run.
//!
//! Each pass (pass 1 over the reference and pass 2 over every other region run side by side;
//! then pass 3) has a scanner task feeding chunks through a bounded channel to a few
//! comparing tasks, so at most `regions × (PARALLEL * 2 + 1)` chunks are in memory, plus
//! the census's fixed 1 MiB per other region, whatever the size of the regions; memory grows
//! only with the largest single value. Regis's own metadata keys (`__regis:`) are skipped
//! everywhere. Keys written while the scan runs may show as drift: verify a quiet system,
//! or run it twice.
//!
//! Where the CPU goes (BENCHMARKS.md): each Redis spends most of it on the two commands per
//! key and on `SCAN`; the rest is `regis verify` parsing the answers. Doing the reads in a
//! Lua script instead was measured (commit `e63c9f1`): it cut `regis verify`'s CPU by half
//! but raised each Redis's by more, since a `redis.call` costs Redis more than a pipelined
//! command.
//!
//! # Repair
//!
//! With `repair`, every drifted key of every other region becomes a copy of the
//! reference's, metadata included ([`repair`]), and is read back and compared again; the run
//! agrees when every repaired key now matches.

pub mod rdb;
pub mod read;
pub mod repair;

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::apply::lww::META_PREFIX;
use read::{Dumped, ExpiryMode, Normal};

/// Chunks compared at once.
const PARALLEL: usize = 4;

/// A region to compare.
#[derive(Clone, Debug)]
pub struct Region {
    /// Its name.
    pub name: String,
    /// Its Redis URL.
    pub url: String,
}

/// What to compare and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Index of the reference region (the repair source) in the region list.
    pub reference: usize,
    /// Make every other region match the reference.
    pub repair: bool,
    /// Only keys starting with these bytes.
    pub prefix: Option<Vec<u8>>,
    /// Only these databases; `None`: every database holding keys in some region.
    pub dbs: Option<Vec<u32>>,
    /// Largest difference between two regions' expiry deadlines that is not drift.
    pub ttl_tolerance: Duration,
    /// Most drifted keys described in the report.
    pub examples: usize,
    /// `SCAN … COUNT` hint and the number of keys compared per pipeline.
    pub chunk: usize,
    /// Timeout of one Redis round trip.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reference: 0,
            repair: false,
            prefix: None,
            dbs: None,
            ttl_tolerance: Duration::from_secs(1),
            examples: 10,
            chunk: 1000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Where a long run reports its progress (a progress bar on a terminal, or nothing).
pub trait Progress: Send + Sync {
    /// A new phase begins, with about `total` keys to scan.
    fn phase(&self, what: &str, total: u64);
    /// `n` more keys scanned.
    fn advance(&self, n: u64);
    /// The run is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// How a key differs in a region from the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// In the reference, not in this region.
    Missing,
    /// In this region, not in the reference.
    Extra,
    /// Another type.
    Type,
    /// Same type, another value.
    Value,
    /// Same value, another expiry.
    Ttl,
}

/// One drifted key, described.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    /// Database number.
    pub db: u32,
    /// The key (lossy UTF-8).
    pub key: String,
    /// The region that differs from the reference.
    pub region: String,
    /// How.
    pub kind: DriftKind,
    /// What each region holds.
    pub detail: String,
}

/// One region compared with the reference.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegionReport {
    /// Region name.
    pub region: String,
    /// Keys identical to the reference.
    pub identical: u64,
    /// Keys of the reference missing here.
    pub missing: u64,
    /// Keys here the reference lacks.
    pub extra: u64,
    /// Keys of another type.
    pub type_differs: u64,
    /// Keys of another value.
    pub value_differs: u64,
    /// Keys whose expiry differs beyond the tolerance.
    pub ttl_differs: u64,
    /// Drifted keys copied from the reference.
    pub repaired: u64,
    /// Drifted keys that still differ after the repair (or could not be repaired).
    pub still_differ: u64,
}

impl RegionReport {
    /// Keys that differ from the reference.
    pub fn drifted(&self) -> u64 {
        self.missing + self.extra + self.type_differs + self.value_differs + self.ttl_differs
    }

    fn count(&mut self, kind: DriftKind) {
        match kind {
            DriftKind::Missing => self.missing += 1,
            DriftKind::Extra => self.extra += 1,
            DriftKind::Type => self.type_differs += 1,
            DriftKind::Value => self.value_differs += 1,
            DriftKind::Ttl => self.ttl_differs += 1,
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The reference region.
    pub reference: String,
    /// Databases compared.
    pub dbs: Vec<u32>,
    /// Distinct keys compared (the reference's, plus those only other regions hold).
    pub keys_compared: u64,
    /// Per other region.
    pub regions: Vec<RegionReport>,
    /// Up to `examples` drifted keys, described.
    pub examples: Vec<Drift>,
    /// Whether a repair was made.
    pub repaired: bool,
    /// How long it took (`elapsed_seconds` in JSON).
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Report {
    /// Keys that differ, over every region.
    pub fn drifted(&self) -> u64 {
        self.regions.iter().map(RegionReport::drifted).sum()
    }

    /// Whether the regions agree: no drift, or (after a repair) every drifted key now
    /// matches the reference.
    pub fn agree(&self) -> bool {
        if self.repaired {
            self.regions.iter().all(|r| r.still_differ == 0)
        } else {
            self.drifted() == 0
        }
    }

    /// Keys compared per second.
    pub fn keys_per_sec(&self) -> f64 {
        self.keys_compared as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// Why a run could not be completed (as opposed to finding drift).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Nothing to compare.
    #[error(
        "verify needs at least two regions, got {0}; list them in the config's [[regions]] or with --redis NAME=URL"
    )]
    TooFewRegions(usize),
    /// A region's Redis could not be reached.
    #[error(
        "cannot connect to region {region} at {url}: {error}; check that its Redis is up and the URL is right"
    )]
    Connect {
        /// Region name.
        region: String,
        /// Its URL, without credentials.
        url: String,
        /// The error (in the message, not a `source`, so it is not printed twice).
        error: redis::RedisError,
    },
    /// A region's Redis failed a read or a write.
    #[error("region {region}: {error}")]
    Redis {
        /// Region name.
        region: String,
        /// The error.
        error: redis::RedisError,
    },
}

impl VerifyError {
    /// Whether running again later may succeed.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, VerifyError::TooFewRegions(_))
    }
}

/// `redis://user:secret@host` → `redis://***@host`, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A `SCAN … MATCH` pattern matching exactly the keys that start with `prefix`.
pub fn match_pattern(prefix: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in prefix.unwrap_or_default() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

/// One region's connection to one database.
#[derive(Clone)]
struct Conn {
    name: String,
    conn: MultiplexedConnection,
}

impl Conn {
    fn err(&self, source: redis::RedisError) -> VerifyError {
        VerifyError::Redis {
            region: self.name.clone(),
            error: source,
        }
    }
}

async fn connect(region: &Region, db: u32, timeout: Duration) -> Result<Conn, VerifyError> {
    let failed = |error| VerifyError::Connect {
        region: region.name.clone(),
        url: redact(&region.url),
        error,
    };
    let info = region.url.as_str().into_connection_info().map_err(failed)?;
    let settings = info.redis_settings().clone().set_db(i64::from(db));
    let info = info.set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(failed)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(failed)?;
    Ok(Conn {
        name: region.name.clone(),
        conn,
    })
}

async fn info(conn: &mut Conn, section: &str) -> Result<String, VerifyError> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn.conn)
        .await
        .map_err(|e| conn.err(e))
}

/// The databases holding keys, from `INFO keyspace` (`db3:keys=10,expires=0,...`).
fn keyspace_dbs(info: &str) -> Vec<u32> {
    info.lines()
        .filter_map(|line| line.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect()
}

/// Whether `INFO server` names Redis 7 or later (which has `PEXPIRETIME`).
fn has_pexpiretime(info: &str) -> bool {
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
        .is_some_and(|major| major >= 7)
}

/// Counters and examples shared by the comparing tasks.
struct Tally {
    regions: Vec<RegionReport>,
    examples: Vec<Drift>,
    keys: u64,
}

/// What every comparing task needs.
struct Run {
    reference: usize,
    mode: ExpiryMode,
    tolerance_ms: i64,
    repair: bool,
    examples: usize,
    tally: Mutex<Tally>,
    progress: Arc<dyn Progress>,
}

impl Run {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another example is still wanted. It reserves nothing: chunks running side by
    /// side may each describe one and the caller checks again before keeping it.
    fn want_example(&self) -> bool {
        let tally = self.tally();
        tally.examples.len() < self.examples
    }
}

/// Compares `regions` (and repairs them when asked); see the module documentation.
pub async fn verify(
    regions: &[Region],
    options: &Options,
    progress: Arc<dyn Progress>,
) -> Result<Report, VerifyError> {
    if regions.len() < 2 {
        return Err(VerifyError::TooFewRegions(regions.len()));
    }
    let started = Instant::now();
    let reference = options.reference.min(regions.len() - 1);
    let mut probes = Vec::with_capacity(regions.len());
    for region in regions {
        probes.push(connect(region, 0, options.timeout).await?);
    }
    let mut dbs: Vec<u32> = match &options.dbs {
        Some(dbs) => dbs.clone(),
        None => {
            let mut all = Vec::new();
            for probe in &mut probes {
                all.extend(keyspace_dbs(&info(probe, "keyspace").await?));
            }
            all
        }
    };
    dbs.sort_unstable();
    dbs.dedup();
    if dbs.is_empty() {
        dbs.push(0);
    }
    let mut mode = ExpiryMode::Absolute;
    for probe in &mut probes {
        if !has_pexpiretime(&info(probe, "server").await?) {
            mode = ExpiryMode::Relative;
        }
    }
    let run = Arc::new(Run {
        reference,
        mode,
        tolerance_ms: options.ttl_tolerance.as_millis().min(i64::MAX as u128) as i64,
        repair: options.repair,
        examples: options.examples,
        tally: Mutex::new(Tally {
            regions: regions
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != reference)
                .map(|(_, r)| RegionReport {
                    region: r.name.clone(),
                    ..RegionReport::default()
                })
                .collect(),
            examples: Vec::new(),
            keys: 0,
        }),
        progress,
    });
    let pattern = match_pattern(options.prefix.as_deref());
    for &db in &dbs {
        let mut conns = Vec::with_capacity(regions.len());
        // Scanners get their own connections, so a SCAN is not queued behind the reads of
        // the chunks before it.
        let mut scanners = Vec::with_capacity(regions.len());
        for region in regions {
            conns.push(connect(region, db, options.timeout).await?);
            scanners.push(connect(region, db, options.timeout).await?);
        }
        let conns = Arc::new(conns);
        let mut total = 0;
        for conn in conns.iter() {
            total += dbsize(&mut conn.clone()).await?;
        }
        run.progress.phase(&format!("db {db}"), total);
        // Pass 1 (every key of the reference, in every region) and pass 2 (the census of
        // the keys every other region holds) run side by side, so every region's Redis is
        // busy for the whole run.
        let census = Arc::new(Census::new(regions.len() - 1));
        let mut passes: JoinSet<Result<(), VerifyError>> = JoinSet::new();
        let chunks = scan(
            scanners[reference].clone(),
            pattern.clone(),
            options.chunk,
            &run,
            Arc::new(|_: &[u8]| true),
        );
        passes.spawn(drive(chunks, {
            let (run, conns, census) = (run.clone(), conns.clone(), census.clone());
            move |keys| {
                let (run, conns, census) = (run.clone(), conns.clone(), census.clone());
                async move { compare_chunk(&run, &conns, &census, db, keys).await }
            }
        }));
        for other in (0..regions.len()).filter(|&i| i != reference) {
            let chunks = scan(
                scanners[other].clone(),
                pattern.clone(),
                options.chunk,
                &run,
                Arc::new(|_: &[u8]| true),
            );
            let slot = report_slot(&run, other);
            passes.spawn(drive(chunks, {
                let census = census.clone();
                move |keys| {
                    census.add(slot, Side::Held, keys.iter().map(Vec::as_slice));
                    async { Ok(()) }
                }
            }));
        }
        join_passes(passes).await?;
        // Pass 3, only where the census disagrees: the keys of those buckets are looked up
        // in the reference.
        let mut passes: JoinSet<Result<(), VerifyError>> = JoinSet::new();
        for other in (0..regions.len()).filter(|&i| i != reference) {
            let slot = report_slot(&run, other);
            let suspect = Arc::new(census.disagree(slot));
            if !suspect.iter().any(|&b| b) {
                continue;
            }
            run.progress.phase(
                &format!(
                    "db {db}: looking in {} for keys {} lacks",
                    regions[other].name, regions[reference].name
                ),
                dbsize(&mut conns[other].clone()).await?,
            );
            let chunks = scan(
                scanners[other].clone(),
                pattern.clone(),
                options.chunk,
                &run,
                Arc::new({
                    let census = census.clone();
                    move |key: &[u8]| suspect[census.bucket(key)]
                }),
            );
            passes.spawn(drive(chunks, {
                let (run, conns) = (run.clone(), conns.clone());
                move |keys| {
                    let (run, conns) = (run.clone(), conns.clone());
                    async move { extras_chunk(&run, &conns, db, other, keys).await }
                }
            }));
        }
        join_passes(passes).await?;
    }
    run.progress.finish();
    let tally = run.tally();
    Ok(Report {
        reference: regions[reference].name.clone(),
        dbs,
        keys_compared: tally.keys,
        regions: tally.regions.clone(),
        examples: tally.examples.clone(),
        repaired: options.repair,
        elapsed: started.elapsed(),
    })
}

/// Waits for every pass; the first error aborts the others and is returned.
async fn join_passes(mut passes: JoinSet<Result<(), VerifyError>>) -> Result<(), VerifyError> {
    let mut failure = None;
    while let Some(done) = passes.join_next().await {
        if matches!(&done, Err(join) if join.is_cancelled()) {
            continue; // aborted below after another pass failed
        }
        if let Err(err) = joined(done) {
            failure.get_or_insert(err);
            passes.abort_all();
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Buckets of a [`Census`], per region: 1 MiB per other region, whatever its size.
const BUCKETS: usize = 1 << 16;

/// Which of the two tallies of a [`Census`] keys go to.
#[derive(Clone, Copy)]
enum Side {
    /// Keys pass 1 found in the region (the reference's keys it also holds).
    Found,
    /// Keys the region's own `SCAN` returned.
    Held,
}

/// Which keys every other region holds, summed per bucket of key names, twice: over the
/// keys pass 1 found there and over the keys the region's own scan returned. Where a
/// bucket's two sums agree, the region holds no key of that bucket that the reference
/// lacks, and nothing has to be looked up; where they differ (a key only that region holds,
/// a key written or expired during the run, a key `SCAN` returned twice), pass 3 looks up
/// that bucket's keys in the reference. A key is placed and summed by two hashes keyed at
/// random for the run, so an extra key hides only if 64-bit hashes collide.
struct Census {
    bucket: RandomState,
    sum: RandomState,
    /// Per other region (by report slot): per bucket, the sums of the Found and Held keys.
    regions: Vec<Mutex<(Vec<u64>, Vec<u64>)>>,
}

impl Census {
    fn new(others: usize) -> Census {
        Census {
            bucket: RandomState::new(),
            sum: RandomState::new(),
            regions: (0..others)
                .map(|_| Mutex::new((vec![0; BUCKETS], vec![0; BUCKETS])))
                .collect(),
        }
    }

    fn bucket(&self, key: &[u8]) -> usize {
        self.bucket.hash_one(key) as usize % BUCKETS
    }

    /// Counts `keys` on `side` of region `slot`.
    fn add<'k>(&self, slot: usize, side: Side, keys: impl Iterator<Item = &'k [u8]>) {
        // Hash outside the lock: pass 1 and pass 2 add to the same region at once.
        let placed: Vec<(usize, u64)> = keys
            .map(|k| (self.bucket(k), self.sum.hash_one(k)))
            .collect();
        let mut sums = self.regions[slot].lock().unwrap_or_else(|p| p.into_inner());
        let sums = match side {
            Side::Found => &mut sums.0,
            Side::Held => &mut sums.1,
        };
        for (bucket, hash) in placed {
            sums[bucket] = sums[bucket].wrapping_add(hash);
        }
    }

    /// Per bucket, whether the two sums of region `slot` differ.
    fn disagree(&self, slot: usize) -> Vec<bool> {
        let sums = self.regions[slot].lock().unwrap_or_else(|p| p.into_inner());
        sums.0.iter().zip(&sums.1).map(|(a, b)| a != b).collect()
    }
}

async fn dbsize(conn: &mut Conn) -> Result<u64, VerifyError> {
    redis::cmd("DBSIZE")
        .query_async(&mut conn.conn)
        .await
        .map_err(|e| conn.err(e))
}

/// A scanner task: chunks of user keys (sorted, deduplicated) through a bounded channel.
struct Chunks {
    rx: mpsc::Receiver<Vec<Vec<u8>>>,
    scanner: tokio::task::JoinHandle<Result<(), VerifyError>>,
}

/// Keys a scanner passes on (beside skipping Regis's metadata).
type Keep = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

fn scan(mut conn: Conn, pattern: Vec<u8>, chunk: usize, run: &Arc<Run>, keep: Keep) -> Chunks {
    let (tx, rx) = mpsc::channel(PARALLEL);
    let run = run.clone();
    let chunk = chunk.max(1);
    let scanner = tokio::spawn(async move {
        let mut cursor: u64 = 0;
        let mut pending: Vec<Vec<u8>> = Vec::with_capacity(chunk);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern.as_slice())
                .arg("COUNT")
                .arg(chunk)
                .query_async(&mut conn.conn)
                .await
                .map_err(|e| conn.err(e))?;
            run.progress.advance(keys.len() as u64);
            pending.extend(
                keys.into_iter()
                    .filter(|k| !k.starts_with(META_PREFIX) && keep(k)),
            );
            cursor = next;
            if pending.len() >= chunk || (cursor == 0 && !pending.is_empty()) {
                let mut keys = std::mem::replace(&mut pending, Vec::with_capacity(chunk));
                keys.sort_unstable();
                keys.dedup();
                if tx.send(keys).await.is_err() {
                    // The comparing side stopped (it failed): its error is the one to report.
                    return Ok(());
                }
            }
            if cursor == 0 {
                return Ok(());
            }
        }
    });
    Chunks { rx, scanner }
}

/// Runs `work` on every chunk, `PARALLEL` at a time; the first error stops everything.
async fn drive<F, Fut>(chunks: Chunks, work: F) -> Result<(), VerifyError>
where
    F: Fn(Vec<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), VerifyError>> + Send + 'static,
{
    let Chunks { mut rx, scanner } = chunks;
    let mut tasks: JoinSet<Result<(), VerifyError>> = JoinSet::new();
    let mut failure = None;
    'chunks: while let Some(keys) = rx.recv().await {
        while tasks.len() >= PARALLEL {
            if let Some(Err(err)) = tasks.join_next().await.map(joined) {
                failure = Some(err);
                break 'chunks;
            }
        }
        tasks.spawn(work(keys));
    }
    drop(rx);
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = joined(done)
            && failure.is_none()
        {
            failure = Some(err);
        }
    }
    let scanned = joined(scanner.await);
    match failure {
        Some(err) => Err(err),
        None => scanned,
    }
}

/// A task's result; a task that panicked takes the run down with the same panic.
fn joined<T>(done: Result<T, tokio::task::JoinError>) -> T {
    match done {
        Ok(value) => value,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("a verify task was cancelled: {join}"),
    }
}

/// Compares `(reference, other)` dumps of the same keys; `None` where they agree. Keys whose
/// payloads differ (other than a hash-table set or hash listed in another order) are read
/// again by type.
async fn judge(
    run: &Run,
    reference: &mut Conn,
    other: &mut Conn,
    keys: &[&[u8]],
    ours: &[Dumped],
    theirs: &[Dumped],
) -> Result<Vec<Option<DriftKind>>, VerifyError> {
    let tol = run.tolerance_ms;
    let mut verdicts = Vec::with_capacity(keys.len());
    let mut recheck = Vec::new();
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let verdict = match (&a.payload, &b.payload) {
            (None, None) => None,
            (Some(_), None) if a.expiry.imminent(tol) => None,
            (None, Some(_)) if b.expiry.imminent(tol) => None,
            (Some(_), None) => Some(DriftKind::Missing),
            (None, Some(_)) => Some(DriftKind::Extra),
            (Some(x), Some(y)) => {
                if a.kind() != b.kind() {
                    Some(DriftKind::Type)
                } else if x != y && !same_unordered(x, y) {
                    recheck.push(i);
                    None
                } else if !a.expiry.close(b.expiry, tol) {
                    Some(DriftKind::Ttl)
                } else {
                    None
                }
            }
        };
        verdicts.push(verdict);
    }
    if !recheck.is_empty() {
        let asks: Vec<(&[u8], Option<read::Kind>)> =
            recheck.iter().map(|&i| (keys[i], ours[i].kind())).collect();
        let (left, right) = tokio::join!(
            read::read_normal(&mut reference.conn, &asks),
            read::read_normal(&mut other.conn, &asks),
        );
        let left = left.map_err(|e| reference.err(e))?;
        let right = right.map_err(|e| other.err(e))?;
        for ((&i, l), r) in recheck.iter().zip(left).zip(right) {
            verdicts[i] = if l != r {
                Some(DriftKind::Value)
            } else if l == Normal::Missing {
                None
            } else if !ours[i].expiry.close(theirs[i].expiry, tol) {
                Some(DriftKind::Ttl)
            } else {
                None
            };
        }
    }
    Ok(verdicts)
}

/// Whether two unequal `DUMP` payloads hold the same hash-table set or hash, listed in
/// another order ([`rdb`]).
fn same_unordered(x: &[u8], y: &[u8]) -> bool {
    match (rdb::normal_of_dump(x), rdb::normal_of_dump(y)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Pass 1 for one chunk of the reference's keys.
async fn compare_chunk(
    run: &Run,
    conns: &[Conn],
    census: &Census,
    db: u32,
    keys: Vec<Vec<u8>>,
) -> Result<(), VerifyError> {
    // Every region reads the chunk at the same time.
    // One pipeline, sent to every region.
    let pipe = Arc::new(read::dump_pipeline(&keys, run.mode));
    let mut reads = JoinSet::new();
    for (index, conn) in conns.iter().enumerate() {
        let (mut conn, pipe, mode, n) = (conn.clone(), pipe.clone(), run.mode, keys.len());
        reads.spawn(async move {
            let dumped = read::run_dumps(&mut conn.conn, &pipe, n, mode)
                .await
                .map_err(|e| conn.err(e));
            (index, conn, dumped)
        });
    }
    let mut all = Vec::with_capacity(conns.len());
    while let Some(done) = reads.join_next().await {
        let (index, conn, dumped) = joined(done);
        all.push((index, conn, dumped?));
    }
    all.sort_by_key(|(index, _, _)| *index);
    let (mut reference, ours) = {
        let (_, conn, dumped) = all.remove(run.reference);
        (conn, dumped)
    };
    // Keys gone from the reference since the SCAN are not the reference's keys.
    let present = ours.iter().filter(|d| d.payload.is_some()).count() as u64;
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    for (index, mut other, dumped) in all {
        let verdicts = judge(run, &mut reference, &mut other, &refs, &ours, &dumped).await?;
        let identical = verdicts
            .iter()
            .zip(&ours)
            .filter(|(v, d)| v.is_none() && d.payload.is_some())
            .count() as u64;
        let drifted: Vec<(usize, DriftKind)> = verdicts
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|k| (i, k)))
            .collect();
        let slot = report_slot(run, index);
        census.add(
            slot,
            Side::Found,
            refs.iter()
                .zip(&dumped)
                .filter(|(_, d)| d.payload.is_some())
                .map(|(k, _)| *k),
        );
        run.tally().regions[slot].identical += identical;
        settle_drift(run, &mut reference, &mut other, db, slot, &refs, drifted).await?;
    }
    run.tally().keys += present;
    Ok(())
}

/// Pass 3 for one chunk of another region's keys: those the reference lacks.
async fn extras_chunk(
    run: &Run,
    conns: &[Conn],
    db: u32,
    other_index: usize,
    keys: Vec<Vec<u8>>,
) -> Result<(), VerifyError> {
    let mut reference = conns[run.reference].clone();
    let mut other = conns[other_index].clone();
    let mut exists = redis::cmd("EXISTS");
    for key in &keys {
        exists.arg(key);
    }
    let count: usize = exists
        .query_async(&mut reference.conn)
        .await
        .map_err(|e| reference.err(e))?;
    if count >= keys.len() {
        return Ok(());
    }
    let mut each = redis::pipe();
    for key in &keys {
        each.cmd("EXISTS").arg(key);
    }
    let found: Vec<Value> = each
        .query_async(&mut reference.conn)
        .await
        .map_err(|e| reference.err(e))?;
    let absent: Vec<Vec<u8>> = keys
        .into_iter()
        .zip(found)
        .filter(|(_, f)| matches!(f, Value::Int(0)))
        .map(|(k, _)| k)
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    let (ours, theirs) = tokio::join!(
        read::dump_many(&mut reference.conn, &absent, run.mode),
        read::dump_many(&mut other.conn, &absent, run.mode),
    );
    let ours = ours.map_err(|e| reference.err(e))?;
    let theirs = theirs.map_err(|e| other.err(e))?;
    let refs: Vec<&[u8]> = absent.iter().map(Vec::as_slice).collect();
    let verdicts = judge(run, &mut reference, &mut other, &refs, &ours, &theirs).await?;
    let drifted: Vec<(usize, DriftKind)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|k| (i, k)))
        .collect();
    run.tally().keys += drifted.len() as u64;
    let slot = report_slot(run, other_index);
    settle_drift(run, &mut reference, &mut other, db, slot, &refs, drifted).await
}

/// The index in `Tally::regions` of region `index`.
fn report_slot(run: &Run, index: usize) -> usize {
    if index > run.reference {
        index - 1
    } else {
        index
    }
}

/// Counts, describes and (when asked) repairs the drifted keys of one chunk.
async fn settle_drift(
    run: &Run,
    reference: &mut Conn,
    other: &mut Conn,
    db: u32,
    slot: usize,
    keys: &[&[u8]],
    drifted: Vec<(usize, DriftKind)>,
) -> Result<(), VerifyError> {
    if drifted.is_empty() {
        return Ok(());
    }
    for &(i, kind) in &drifted {
        run.tally().regions[slot].count(kind);
        if run.want_example() {
            let detail = describe(reference, other, keys[i], kind).await?;
            let mut tally = run.tally();
            if tally.examples.len() < run.examples {
                tally.examples.push(Drift {
                    db,
                    key: String::from_utf8_lossy(keys[i]).into_owned(),
                    region: other.name.clone(),
                    kind,
                    detail,
                });
            }
        }
    }
    if !run.repair {
        return Ok(());
    }
    let mut repaired: Vec<&[u8]> = Vec::with_capacity(drifted.len());
    let mut failed = 0u64;
    for &(i, _) in &drifted {
        match repair::copy_key(&mut reference.conn, &mut other.conn, keys[i], run.mode).await {
            Ok(()) => repaired.push(keys[i]),
            Err(why) => {
                failed += 1;
                tracing::warn!(region = %other.name, db, key = %String::from_utf8_lossy(keys[i]), error = %why, "cannot repair key");
            }
        }
    }
    // Read the repaired keys back: the run agrees only if they now match.
    let owned: Vec<Vec<u8>> = repaired.iter().map(|k| k.to_vec()).collect();
    let (ours, theirs) = tokio::join!(
        read::dump_many(&mut reference.conn, &owned, run.mode),
        read::dump_many(&mut other.conn, &owned, run.mode),
    );
    let ours = ours.map_err(|e| reference.err(e))?;
    let theirs = theirs.map_err(|e| other.err(e))?;
    let verdicts = judge(run, reference, other, &repaired, &ours, &theirs).await?;
    let still = verdicts.iter().filter(|v| v.is_some()).count() as u64;
    let mut tally = run.tally();
    tally.regions[slot].repaired += repaired.len() as u64 - still;
    tally.regions[slot].still_differ += still + failed;
    Ok(())
}

/// What the two regions hold for `key`, in words.
async fn describe(
    reference: &mut Conn,
    other: &mut Conn,
    key: &[u8],
    kind: DriftKind,
) -> Result<String, VerifyError> {
    let mode = ExpiryMode::Relative;
    let keys = [key.to_vec()];
    let (ours, theirs) = tokio::join!(
        read::dump_many(&mut reference.conn, &keys, mode),
        read::dump_many(&mut other.conn, &keys, mode),
    );
    let ours = ours.map_err(|e| reference.err(e))?.remove(0);
    let theirs = theirs.map_err(|e| other.err(e))?.remove(0);
    let (left_ask, right_ask) = ([(key, ours.kind())], [(key, theirs.kind())]);
    let (l, r) = tokio::join!(
        read::read_normal(&mut reference.conn, &left_ask),
        read::read_normal(&mut other.conn, &right_ask),
    );
    let l = l.map_err(|e| reference.err(e))?.remove(0);
    let r = r.map_err(|e| other.err(e))?.remove(0);
    let (a, b) = (reference.name.as_str(), other.name.as_str());
    let side = |n: &Normal, d: &Dumped| match n {
        Normal::Missing => "missing".to_string(),
        n => format!("{}, {}", n.describe(), d.expiry),
    };
    let mut detail = format!("{a}: {}; {b}: {}", side(&l, &ours), side(&r, &theirs));
    if kind == DriftKind::Value
        && let Some(first) = l.first_difference(&r, a, b)
    {
        detail.push_str(&format!(" ({first})"));
    }
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_matched_literally() {
        assert_eq!(match_pattern(None), b"*");
        assert_eq!(match_pattern(Some(b"hotel:")), b"hotel:*");
        assert_eq!(match_pattern(Some(b"a*b?[c]\\")), b"a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn the_census_points_at_the_buckets_of_extra_and_repeated_keys() {
        let census = Census::new(1);
        let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("k:{i}").into_bytes()).collect();
        census.add(0, Side::Found, keys.iter().map(Vec::as_slice));
        census.add(0, Side::Held, keys.iter().rev().map(Vec::as_slice));
        assert!(!census.disagree(0).contains(&true), "same keys, any order");

        census.add(0, Side::Held, [b"extra".as_slice()].into_iter());
        let suspect = census.disagree(0);
        assert_eq!(suspect.iter().filter(|&&b| b).count(), 1);
        assert!(suspect[census.bucket(b"extra")]);

        // A key SCAN returned twice is a disagreement too, never a hiding place.
        let census = Census::new(1);
        census.add(0, Side::Found, [b"a".as_slice(), b"a"].into_iter());
        census.add(0, Side::Held, [b"a".as_slice(), b"b"].into_iter());
        assert!(census.disagree(0).contains(&true));
    }

    #[test]
    fn credentials_stay_out_of_messages() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn databases_and_versions_from_info() {
        let keyspace =
            "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb12:keys=1,expires=1,avg_ttl=5\r\n";
        assert_eq!(keyspace_dbs(keyspace), vec![0, 12]);
        assert!(has_pexpiretime("# Server\r\nredis_version:7.0.15\r\n"));
        assert!(!has_pexpiretime("# Server\r\nredis_version:6.2.1\r\n"));
    }
}

//! `regis verify`: whether every region really holds the same data, and repairing drift.
//!
//! # How it compares, in bounded memory
//!
//! One region is the reference (the first, or `--from`). For every database that holds keys
//! in any region:
//!
//! 1. The reference is `SCAN`ned (never `KEYS`), a chunk of keys at a time. Each chunk is read
//!    in every region with one pipeline of `DUMP` and `PEXPIRETIME` per key
//!    ([`read::dump_many`]); keys whose payloads differ are read again by type and compared
//!    in a normal form ([`read::read_normal`]), and expiries are compared within a
//!    tolerance. A key missing in a region, or expiring within the tolerance in one and gone
//!    in the other, is told apart.
//! 2. Every other region is `SCAN`ned for keys the reference lacks: one multi-key `EXISTS`
//!    per chunk, and single `EXISTS` only when some are missing.
//!
//! Each pass (pass 1 over the reference, and one pass 2 per other region, all run side by
//! side) has a scanner task feeding chunks through a bounded channel to a few comparing
//! tasks, so at most `regions × (PARALLEL * 2 + 1)` chunks are in memory, whatever the size
//! of the regions; memory grows only with the largest single value. Regis's own metadata
//! keys (`__regis:`) are skipped everywhere. Keys written while the scan runs may show as
//! drift: verify a quiet system, or run it twice.
//!
//! # Repair
//!
//! With `repair`, every drifted key of every other region becomes a copy of the
//! reference's, metadata included ([`repair`]), and is read back and compared again; the run
//! agrees when every repaired key now matches.

pub mod digest;
pub mod read;
pub mod repair;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use digest::{Reading, Seen};
use read::{ExpiryMode, Normal};

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
    /// Longest `DUMP` payload a region sends as is in the first read; longer ones are sent
    /// as their `sha1` ([`digest`]).
    pub hash_above: usize,
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
            hash_above: 256,
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
    reading: Reading,
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
        reading: Reading {
            mode,
            hash_above: options.hash_above,
        },
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
        // Pass 1 (every key of the reference, in every region) and pass 2 (keys another
        // region holds and the reference lacks) run side by side, so every region's Redis
        // is busy for the whole run.
        let mut passes: JoinSet<Result<(), VerifyError>> = JoinSet::new();
        let (chunk, reading) = (options.chunk, run.reading);
        let chunks = scan(scanners[reference].clone(), chunk, &run, {
            let pattern = pattern.clone();
            move |mut conn, cursor| {
                let pattern = pattern.clone();
                async move {
                    let step =
                        digest::scan_digests(&mut conn, cursor, &pattern, chunk, reading).await?;
                    Ok((step.cursor, step.scanned, step.keys))
                }
            }
        });
        passes.spawn(drive(chunks, {
            let (run, conns) = (run.clone(), conns.clone());
            move |chunk| {
                let (run, conns) = (run.clone(), conns.clone());
                async move { compare_chunk(&run, &conns, db, chunk).await }
            }
        }));
        for other in (0..regions.len()).filter(|&i| i != reference) {
            let chunks = scan(scanners[other].clone(), chunk, &run, {
                let pattern = pattern.clone();
                move |mut conn, cursor| {
                    let pattern = pattern.clone();
                    async move { digest::scan_names(&mut conn, cursor, &pattern, chunk).await }
                }
            });
            passes.spawn(drive(chunks, {
                let (run, conns) = (run.clone(), conns.clone());
                move |keys| {
                    let (run, conns) = (run.clone(), conns.clone());
                    async move { extras_chunk(&run, &conns, db, other, keys).await }
                }
            }));
        }
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
        if let Some(err) = failure {
            return Err(err);
        }
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

async fn dbsize(conn: &mut Conn) -> Result<u64, VerifyError> {
    redis::cmd("DBSIZE")
        .query_async(&mut conn.conn)
        .await
        .map_err(|e| conn.err(e))
}

/// Something a scanner yields, sorted and deduplicated by its key name.
trait Named {
    fn name(&self) -> &[u8];
}

impl Named for Vec<u8> {
    fn name(&self) -> &[u8] {
        self
    }
}

impl Named for (Vec<u8>, Seen) {
    fn name(&self) -> &[u8] {
        &self.0
    }
}

/// A scanner task: chunks of keys (sorted, deduplicated) through a bounded channel.
struct Chunks<T> {
    rx: mpsc::Receiver<Vec<T>>,
    scanner: tokio::task::JoinHandle<Result<(), VerifyError>>,
}

/// Runs `step` (one `SCAN` step from a cursor: the next cursor, the keys `SCAN` returned,
/// and the user keys among them) until the scan is over, in chunks of at least `chunk`
/// user keys.
fn scan<T, S, Fut>(conn: Conn, chunk: usize, run: &Arc<Run>, step: S) -> Chunks<T>
where
    T: Named + Send + 'static,
    S: Fn(MultiplexedConnection, u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = redis::RedisResult<(u64, u64, Vec<T>)>> + Send,
{
    let (tx, rx) = mpsc::channel(PARALLEL);
    let run = run.clone();
    let chunk = chunk.max(1);
    let scanner = tokio::spawn(async move {
        let mut cursor: u64 = 0;
        let mut pending: Vec<T> = Vec::with_capacity(chunk);
        loop {
            let (next, scanned, keys) = step(conn.conn.clone(), cursor)
                .await
                .map_err(|e| conn.err(e))?;
            run.progress.advance(scanned);
            pending.extend(keys);
            cursor = next;
            if pending.len() >= chunk || (cursor == 0 && !pending.is_empty()) {
                let mut keys = std::mem::replace(&mut pending, Vec::with_capacity(chunk));
                // SCAN may return a key twice (when the table is resized between steps).
                keys.sort_unstable_by(|a, b| a.name().cmp(b.name()));
                keys.dedup_by(|a, b| a.name() == b.name());
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
async fn drive<T, F, Fut>(chunks: Chunks<T>, work: F) -> Result<(), VerifyError>
where
    F: Fn(Vec<T>) -> Fut,
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

/// Compares what `reference` and `other` hold for the same keys (`ours`, `theirs`); `None`
/// where they agree. Keys whose digests differ are read again by type.
async fn judge(
    run: &Run,
    reference: &mut Conn,
    other: &mut Conn,
    keys: &[&[u8]],
    ours: &[Seen],
    theirs: &[Seen],
) -> Result<Vec<Option<DriftKind>>, VerifyError> {
    let tol = run.tolerance_ms;
    let mut verdicts = Vec::with_capacity(keys.len());
    let mut recheck = Vec::new();
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let verdict = match (a.kind, b.kind) {
            (None, None) => None,
            (Some(_), None) if a.expiry.imminent(tol) => None,
            (None, Some(_)) if b.expiry.imminent(tol) => None,
            (Some(_), None) => Some(DriftKind::Missing),
            (None, Some(_)) => Some(DriftKind::Extra),
            (Some(x), Some(y)) => {
                if x != y {
                    Some(DriftKind::Type)
                } else if a.fingerprint != b.fingerprint {
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
            recheck.iter().map(|&i| (keys[i], ours[i].kind)).collect();
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

/// Both regions' first reads of `keys`, side by side.
async fn digest_both(
    run: &Run,
    reference: &mut Conn,
    other: &mut Conn,
    keys: &[&[u8]],
) -> Result<(Vec<Seen>, Vec<Seen>), VerifyError> {
    let (ours, theirs) = tokio::join!(
        digest::digest_keys(&mut reference.conn, keys, run.reading),
        digest::digest_keys(&mut other.conn, keys, run.reading),
    );
    Ok((
        ours.map_err(|e| reference.err(e))?,
        theirs.map_err(|e| other.err(e))?,
    ))
}

/// Pass 1 for one chunk of the reference's keys, read with the scan.
async fn compare_chunk(
    run: &Run,
    conns: &[Conn],
    db: u32,
    chunk: Vec<(Vec<u8>, Seen)>,
) -> Result<(), VerifyError> {
    let (keys, ours): (Vec<Vec<u8>>, Vec<Seen>) = chunk.into_iter().unzip();
    let keys = Arc::new(keys);
    // Every other region reads the chunk at the same time.
    let mut reads = JoinSet::new();
    for (index, conn) in conns.iter().enumerate() {
        if index == run.reference {
            continue;
        }
        let (mut conn, keys, reading) = (conn.clone(), keys.clone(), run.reading);
        reads.spawn(async move {
            let seen = digest::digest_keys(&mut conn.conn, &keys, reading)
                .await
                .map_err(|e| conn.err(e));
            (index, conn, seen)
        });
    }
    let mut reference = conns[run.reference].clone();
    // Keys that expired under the SCAN are not the reference's keys.
    let present = ours.iter().filter(|s| s.exists()).count() as u64;
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    while let Some(done) = reads.join_next().await {
        let (index, mut other, theirs) = joined(done);
        let theirs = theirs?;
        let verdicts = judge(run, &mut reference, &mut other, &refs, &ours, &theirs).await?;
        let identical = verdicts
            .iter()
            .zip(&ours)
            .filter(|(v, s)| v.is_none() && s.exists())
            .count() as u64;
        let drifted: Vec<(usize, DriftKind)> = verdicts
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|k| (i, k)))
            .collect();
        let slot = report_slot(run, index);
        run.tally().regions[slot].identical += identical;
        settle_drift(run, &mut reference, &mut other, db, slot, &refs, drifted).await?;
    }
    run.tally().keys += present;
    Ok(())
}

/// Pass 2 for one chunk of another region's keys: those the reference lacks.
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
    let absent: Vec<&[u8]> = keys
        .iter()
        .zip(found)
        .filter(|(_, f)| matches!(f, Value::Int(0)))
        .map(|(k, _)| k.as_slice())
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    let (ours, theirs) = digest_both(run, &mut reference, &mut other, &absent).await?;
    let verdicts = judge(run, &mut reference, &mut other, &absent, &ours, &theirs).await?;
    let drifted: Vec<(usize, DriftKind)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|k| (i, k)))
        .collect();
    run.tally().keys += drifted.len() as u64;
    let slot = report_slot(run, other_index);
    settle_drift(run, &mut reference, &mut other, db, slot, &absent, drifted).await
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
            let detail = describe(run, reference, other, keys[i], kind).await?;
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
    let (ours, theirs) = digest_both(run, reference, other, &repaired).await?;
    let verdicts = judge(run, reference, other, &repaired, &ours, &theirs).await?;
    let still = verdicts.iter().filter(|v| v.is_some()).count() as u64;
    let mut tally = run.tally();
    tally.regions[slot].repaired += repaired.len() as u64 - still;
    tally.regions[slot].still_differ += still + failed;
    Ok(())
}

/// What the two regions hold for `key`, in words.
async fn describe(
    run: &Run,
    reference: &mut Conn,
    other: &mut Conn,
    key: &[u8],
    kind: DriftKind,
) -> Result<String, VerifyError> {
    let (ours, theirs) = digest_both(run, reference, other, &[key]).await?;
    let (ours, theirs) = (
        ours.into_iter().next().unwrap_or(Seen::MISSING),
        theirs.into_iter().next().unwrap_or(Seen::MISSING),
    );
    let (left_ask, right_ask) = ([(key, ours.kind)], [(key, theirs.kind)]);
    let (l, r) = tokio::join!(
        read::read_normal(&mut reference.conn, &left_ask),
        read::read_normal(&mut other.conn, &right_ask),
    );
    let l = l
        .map_err(|e| reference.err(e))?
        .pop()
        .unwrap_or(Normal::Missing);
    let r = r
        .map_err(|e| other.err(e))?
        .pop()
        .unwrap_or(Normal::Missing);
    let (a, b) = (reference.name.as_str(), other.name.as_str());
    let side = |n: &Normal, s: &Seen| match n {
        Normal::Missing => "missing".to_string(),
        n => format!("{}, {}", n.describe(), s.expiry),
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

//! The single writer thread that owns the SQLite connection and all queue state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use super::checkpoint::WalRestart;
use crate::bus::{
    BusError, BusErrorKind, DeadLetter, Delivery, LEASE_EXPIRED_ERROR, Outgoing, QueueStats,
    Receipt, Selection, Settle, dead_lettered_event, lease_expired_event, leases_expired_counted,
    message_id_or,
};
use crate::clock::{Version, now_ms};
use crate::envelope::{Envelope, MessageId};

/// Queue semantics the store enforces.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long a lease lasts.
    pub visibility_timeout: Duration,
    /// A message whose lease expired unsettled this many receives is dead-lettered.
    pub max_receives: u32,
    /// How long dead letters are kept.
    pub dead_letter_retention: Duration,
}

type Reply<T> = oneshot::Sender<Result<T, BusError>>;

pub(super) enum Request {
    Publish {
        messages: Vec<Outgoing>,
        reply: Reply<()>,
    },
    HighWater {
        reply: Reply<Option<Version>>,
    },
    Receive {
        region: usize,
        max: usize,
        reply: Reply<Received>,
    },
    Settle {
        region: usize,
        settlements: Vec<(Receipt, Settle)>,
        reply: Reply<()>,
    },
    ListDead {
        region: usize,
        limit: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    GetDead {
        region: usize,
        id: MessageId,
        reply: Reply<Option<DeadLetter>>,
    },
    Redrive {
        region: usize,
        which: Selection,
        reply: Reply<u64>,
    },
    Purge {
        region: usize,
        which: Selection,
        reply: Reply<u64>,
    },
    Stats {
        reply: Reply<Vec<QueueStats>>,
    },
    Footprint {
        reply: Reply<Footprint>,
    },
    /// Caps the database at `max_bytes` (`max_bus_bytes`), or lifts the cap.
    LimitSize {
        max_bytes: Option<u64>,
        reply: Reply<()>,
    },
    /// Persist progress, answer, stop.
    Close {
        reply: oneshot::Sender<()>,
    },
    /// Persist progress and stop (the last handle was dropped).
    Shutdown,
}

/// What the bus holds on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Topic rows not yet collected (messages some region has not settled).
    pub topic_messages: u64,
    /// Size of the database file in use, in bytes (pages × page size, free pages excluded).
    pub bytes_in_use: u64,
    /// Size of the database file, in bytes (free pages included: they are reused first).
    pub file_bytes: u64,
}

pub(super) struct Received {
    pub deliveries: Vec<Delivery>,
    /// When the next retry of this region falls due, if any is waiting.
    pub next_due_ms: Option<u64>,
}

/// A first delivery's lease, held in memory only.
#[derive(Clone, Copy, Debug)]
struct Lease {
    deadline_ms: u64,
}

struct RegionState {
    name: String,
    /// Next seq never delivered to this region.
    next_seq: u64,
    /// The floor as last written to disk.
    persisted_floor: u64,
    /// First deliveries in flight, by seq.
    leases: BTreeMap<u64, Lease>,
}

impl RegionState {
    fn floor(&self) -> u64 {
        self.leases
            .first_key_value()
            .map_or(self.next_seq, |(seq, _)| *seq)
    }
}

/// Which delivery a receipt names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReceiptKind {
    /// `f:<seq>`: the first delivery, leased in memory.
    First,
    /// `r:<seq>:<receive_count>`: a delivery of a `retries` row.
    Retry,
}

fn receipt(kind: ReceiptKind, seq: u64, attempt: u32) -> Receipt {
    match kind {
        ReceiptKind::First => Receipt(format!("f:{seq}:{attempt}")),
        ReceiptKind::Retry => Receipt(format!("r:{seq}:{attempt}")),
    }
}

fn parse_receipt(receipt: &Receipt) -> Result<(ReceiptKind, u64, u32), BusError> {
    let invalid = || {
        BusError::new(
            BusErrorKind::Invalid,
            format!(
                "malformed receipt {:?}: settle only receipts this bus handed out",
                receipt.0
            ),
        )
    };
    let mut parts = receipt.0.splitn(3, ':');
    let kind = match parts.next() {
        Some("f") => ReceiptKind::First,
        Some("r") => ReceiptKind::Retry,
        _ => return Err(invalid()),
    };
    let seq = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    let attempt = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    Ok((kind, seq, attempt))
}

/// What a publish refused for a full disk is told.
const DISK_FULL: &str =
    "the disk holding data_dir is full: nothing was stored; free space and try again";

fn storage(err: &rusqlite::Error) -> BusError {
    if is_full(err) {
        BusError::new(BusErrorKind::Storage, DISK_FULL)
    } else {
        BusError::new(
            BusErrorKind::Storage,
            format!("embedded bus storage error: {err}"),
        )
    }
}

impl Request {
    /// Answers the request with `err` (its transaction failed before it was handled).
    fn fail(self, err: &BusError) {
        let err = err.clone();
        match self {
            Request::Publish { reply, .. } => drop(reply.send(Err(err))),
            Request::HighWater { reply } => drop(reply.send(Err(err))),
            Request::Receive { reply, .. } => drop(reply.send(Err(err))),
            Request::Settle { reply, .. } => drop(reply.send(Err(err))),
            Request::ListDead { reply, .. } => drop(reply.send(Err(err))),
            Request::GetDead { reply, .. } => drop(reply.send(Err(err))),
            Request::Redrive { reply, .. } => drop(reply.send(Err(err))),
            Request::Purge { reply, .. } => drop(reply.send(Err(err))),
            Request::Stats { reply } => drop(reply.send(Err(err))),
            Request::Footprint { reply } => drop(reply.send(Err(err))),
            Request::LimitSize { reply, .. } => drop(reply.send(Err(err))),
            Request::Close { .. } | Request::Shutdown => {}
        }
    }
}

fn is_full(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::DiskFull)
}

/// `max_bus_bytes` as page counts. Publishes may grow the file to `publish_pages`; all
/// other work (settles, retries, dead letters, floors, collection) may use `drain_pages`,
/// a little more, so that a full bus still drains — and draining is what frees pages for
/// publishes again (deleted rows' pages are reused before the file grows).
#[derive(Clone, Copy, Debug)]
struct SizeCap {
    bytes: u64,
    publish_pages: u64,
    drain_pages: u64,
}

/// Work deferred until the transaction commits: answers that must not leave before then.
type Deferred = Box<dyn FnOnce(Option<&BusError>) + Send>;

fn defer<T: Send + 'static>(reply: Reply<T>, result: Result<T, BusError>) -> Deferred {
    Box::new(move |commit_error| {
        let _ = match (commit_error, result) {
            (Some(err), _) => reply.send(Err(err.clone())),
            (None, result) => reply.send(result),
        };
    })
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    published_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS regions (
    name TEXT PRIMARY KEY,
    floor INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retries (
    region TEXT NOT NULL,
    seq INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    body BLOB NOT NULL,
    receive_count INTEGER NOT NULL,
    settled_count INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    first_failure INTEGER,
    last_failure INTEGER,
    last_error TEXT,
    PRIMARY KEY (region, seq)
);
CREATE INDEX IF NOT EXISTS retries_due ON retries (region, visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    region TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    first_failure INTEGER NOT NULL,
    last_failure INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at INTEGER NOT NULL,
    PRIMARY KEY (region, id)
);
CREATE INDEX IF NOT EXISTS dead_letters_age ON dead_letters (region, dead_at);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

const LEASE_CHECK_EVERY: Duration = Duration::from_millis(200);
const GC_EVERY: Duration = Duration::from_secs(1);
const FLOOR_EVERY: Duration = Duration::from_millis(200);
/// How often expired dead letters are removed: every minute, or a tenth of the retention
/// when that is shorter, so a short retention (tests, demos) is honoured closely too.
const DEAD_LETTER_EXPIRY_EVERY: Duration = Duration::from_secs(60);

fn dead_letter_expiry_every(retention: Duration) -> Duration {
    DEAD_LETTER_EXPIRY_EVERY
        .min(retention / 10)
        .max(LEASE_CHECK_EVERY)
}
/// Most requests folded into one transaction.
const MAX_GROUP: usize = 8192;

pub(super) struct Store {
    conn: Connection,
    /// The database's page size, bytes.
    page_size: u64,
    options: StoreOptions,
    regions: Vec<RegionState>,
    last_seq: u64,
    persisted_last_seq: u64,
    high_water: Option<Version>,
    persisted_high_water: Option<Version>,
    sync_full: bool,
    available: watch::Sender<u64>,
    last_lease_check: Instant,
    last_gc: Instant,
    last_floor_write: Instant,
    last_dead_letter_expiry: Instant,
    gc_floor: u64,
    /// `max_bus_bytes`, if set.
    cap: Option<SizeCap>,
    /// Whether `max_page_count` is set for publishes now (`None`: not set yet).
    cap_publishing: Option<bool>,
    /// Whether the last publish was refused for want of room (logged once per episode).
    full: bool,
    /// Bytes the database uses (pages in use), measured at the start of each transaction
    /// when there is a cap, plus what this transaction's publishes added.
    used_bytes: u64,
    /// Set by the checkpoint thread when the WAL should start over (see `checkpoint`).
    wal_restart: WalRestart,
}

impl Store {
    pub(super) fn open(
        path: &Path,
        regions: &[String],
        options: StoreOptions,
        available: watch::Sender<u64>,
        wal_restart: WalRestart,
    ) -> Result<Store, BusError> {
        let conn = Connection::open(path).map_err(|err| {
            BusError::new(
                BusErrorKind::Storage,
                format!("cannot open the embedded bus at {}: {err}", path.display()),
            )
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             PRAGMA cache_size=-65536;
             PRAGMA journal_size_limit=67108864;
             -- Checkpoints run on their own thread (checkpoint.rs), never inside a commit.
             PRAGMA wal_autocheckpoint=0;",
        )
        .map_err(|e| storage(&e))?;
        conn.execute_batch(SCHEMA).map_err(|err| {
            BusError::new(
                BusErrorKind::Storage,
                format!(
                    "{} is not a Regis bus database or is damaged ({err}); move it away or point data_dir elsewhere",
                    path.display()
                ),
            )
        })?;
        // Fixed once the database exists (WAL mode cannot change it).
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| storage(&e))?;
        let mut store = Store {
            conn,
            page_size: page_size.max(512) as u64,
            options,
            regions: regions
                .iter()
                .map(|name| RegionState {
                    name: name.clone(),
                    next_seq: 0,
                    persisted_floor: 0,
                    leases: BTreeMap::new(),
                })
                .collect(),
            last_seq: 0,
            persisted_last_seq: 0,
            high_water: None,
            persisted_high_water: None,
            sync_full: true,
            wal_restart,
            available,
            last_lease_check: Instant::now(),
            last_gc: Instant::now(),
            last_floor_write: Instant::now(),
            // Due at the first transaction. (`checked_sub`: the monotonic clock may be
            // younger than a minute on a freshly booted machine.)
            last_dead_letter_expiry: Instant::now()
                .checked_sub(DEAD_LETTER_EXPIRY_EVERY)
                .unwrap_or_else(Instant::now),
            gc_floor: 0,
            cap: None,
            cap_publishing: None,
            full: false,
            used_bytes: 0,
        };
        store.load().map_err(|e| storage(&e))?;
        Ok(store)
    }

    /// Reads progress from disk; in-memory leases are dropped (their messages will be
    /// delivered again). Registers new regions from "now" and forgets removed ones.
    fn load(&mut self) -> rusqlite::Result<()> {
        let meta = |conn: &Connection, key: &str| -> rusqlite::Result<Option<u64>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.map(|v| v as u64))
        };
        let max_seq: Option<i64> =
            self.conn
                .query_row("SELECT MAX(seq) FROM messages", [], |r| r.get(0))?;
        self.last_seq = meta(&self.conn, "last_seq")?
            .unwrap_or(0)
            .max(max_seq.unwrap_or(0) as u64);
        self.persisted_last_seq = self.last_seq;
        self.high_water = meta(&self.conn, "high_water")?.map(Version::from_packed);
        self.persisted_high_water = self.high_water;

        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let configured: Vec<String> = self.regions.iter().map(|r| r.name.clone()).collect();
            let mut known: Vec<(String, u64)> = Vec::new();
            {
                let mut stmt = self.conn.prepare("SELECT name, floor FROM regions")?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                for row in rows {
                    known.push(row?);
                }
            }
            for (name, _) in known.iter().filter(|(name, _)| !configured.contains(name)) {
                let retries = self
                    .conn
                    .execute("DELETE FROM retries WHERE region = ?1", [name])?;
                let dead = self
                    .conn
                    .execute("DELETE FROM dead_letters WHERE region = ?1", [name])?;
                self.conn
                    .execute("DELETE FROM regions WHERE name = ?1", [name])?;
                tracing::warn!(
                    region = %name,
                    retries,
                    dead_letters = dead,
                    "region removed from the config: its queue, retries and dead letters were dropped"
                );
            }
            for region in &mut self.regions {
                region.leases.clear();
                let floor = match known.iter().find(|(name, _)| *name == region.name) {
                    Some((_, floor)) => *floor,
                    None => {
                        let floor = self.last_seq + 1;
                        self.conn.execute(
                            "INSERT INTO regions (name, floor) VALUES (?1, ?2)",
                            params![region.name, floor as i64],
                        )?;
                        tracing::info!(region = %region.name, "new region: it receives messages published from now on");
                        floor
                    }
                };
                region.next_seq = floor;
                region.persisted_floor = floor;
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.conn.execute_batch("COMMIT"),
            Err(err) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(err)
            }
        }
    }

    /// The writer loop: group-commit whatever is waiting, then look after leases and garbage.
    pub(super) fn run(mut self, requests: Receiver<Request>) {
        loop {
            let first = match requests.recv_timeout(LEASE_CHECK_EVERY) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            while batch.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let mut stop: Option<Option<oneshot::Sender<()>>> = None;
            batch.retain_mut(|request| match request {
                Request::Close { .. } | Request::Shutdown => {
                    if let Request::Close { reply } = std::mem::replace(request, Request::Shutdown)
                    {
                        stop = Some(Some(reply));
                    } else if stop.is_none() {
                        stop = Some(None);
                    }
                    false
                }
                _ => true,
            });
            // Receives read only what is already committed, so they need not wait for the
            // fsync of the publishes that arrived with them: serve them first, in their own
            // transaction (no publish in it, so no fsync). A message is then applied one
            // fsync after it was published, not two.
            if batch.iter().any(|r| matches!(r, Request::Publish { .. })) {
                let (receives, rest): (Vec<Request>, Vec<Request>) = batch
                    .into_iter()
                    .partition(|r| matches!(r, Request::Receive { .. }));
                if !receives.is_empty() {
                    self.transaction(receives, false);
                }
                self.transaction(rest, false);
            } else {
                self.transaction(batch, false);
            }
            if let Err(err) = self.wal_restart.run_if_wanted(&self.conn) {
                tracing::warn!(error = %err, "embedded bus: restarting the WAL failed; the checkpoint thread asks again");
            }
            if let Some(reply) = stop {
                self.finish();
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }

    /// Persists every region's floor before the thread exits.
    fn finish(&mut self) {
        self.transaction(Vec::new(), true);
    }

    fn set_sync(&mut self, full: bool) -> rusqlite::Result<()> {
        if self.sync_full != full {
            self.conn.execute_batch(if full {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            })?;
            self.sync_full = full;
        }
        Ok(())
    }

    /// Sets `max_page_count` for publishing or for draining work, when there is a cap.
    fn cap_for(&mut self, publishing: bool) -> rusqlite::Result<()> {
        let Some(cap) = self.cap else {
            return Ok(());
        };
        if self.cap_publishing != Some(publishing) {
            let pages = if publishing {
                cap.publish_pages
            } else {
                cap.drain_pages
            };
            // SQLite keeps the larger of this and the current size: a file already above
            // the cap is not truncated, it only stops growing.
            self.conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            self.cap_publishing = Some(publishing);
        }
        Ok(())
    }

    fn limit_size(&mut self, max_bytes: Option<u64>) -> rusqlite::Result<()> {
        let page_size = self.page_size;
        self.cap = max_bytes.map(|bytes| {
            let publish_pages = (bytes / page_size).max(1);
            SizeCap {
                bytes,
                publish_pages,
                drain_pages: publish_pages + (publish_pages / 16).max(256),
            }
        });
        self.cap_publishing = None;
        match self.cap {
            Some(cap) => {
                let (pages, _) = self.page_counts()?;
                if pages > cap.publish_pages {
                    tracing::warn!(
                        max_bus_bytes = cap.bytes,
                        file_bytes = pages * page_size,
                        "the bus is already larger than max_bus_bytes: publishes are refused until the regions catch up and free room"
                    );
                }
                self.cap_for(false)
            }
            None => self
                .conn
                .query_row("PRAGMA max_page_count = 4294967294", [], |_| Ok(())),
        }
    }

    /// Answers a publish that found no room (logged once per episode).
    fn refuse_full(&mut self, reply: Reply<()>) {
        let refusal = self.full_error();
        if !self.full {
            self.full = true;
            tracing::error!(error = %refusal, "publish refused: the bus is full");
            crate::metrics::BusFull { full: true }.emit();
        }
        // Nothing of it was written: the answer need not wait for the commit.
        let _ = reply.send(Err(refusal));
    }

    /// The database's pages, and how many of them are free.
    fn page_counts(&self) -> rusqlite::Result<(u64, u64)> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok((pages.max(0) as u64, free.max(0) as u64))
    }

    /// Pages in use (free pages excluded: they are reused first) times the page size.
    fn bytes_in_use(&self) -> rusqlite::Result<u64> {
        let (pages, free) = self.page_counts()?;
        Ok(pages.saturating_sub(free) * self.page_size)
    }

    /// Why a publish found no room.
    fn full_error(&self) -> BusError {
        let message = match self.cap {
            Some(cap) => format!(
                "the bus is full (max_bus_bytes = {} bytes, or the disk holding data_dir is full) with messages the regions have not applied yet; nothing was stored; publishing resumes as they catch up (see `regis status`), or raise max_bus_bytes",
                cap.bytes
            ),
            None => DISK_FULL.to_string(),
        };
        BusError::new(BusErrorKind::Storage, message)
    }

    /// Runs `batch` and housekeeping in one transaction; answers only after it committed.
    /// `durable` forces an fsync even without publishes (used when stopping).
    fn transaction(&mut self, batch: Vec<Request>, durable: bool) {
        let has_publish = durable || batch.iter().any(|r| matches!(r, Request::Publish { .. }));
        let mut deferred: Vec<Deferred> = Vec::with_capacity(batch.len());
        let mut wake = false;
        let outcome = (|| -> rusqlite::Result<()> {
            self.set_sync(has_publish)?;
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            if self.cap.is_some() && has_publish {
                self.used_bytes = self.bytes_in_use()?;
            }
            let mut requests = batch.into_iter();
            while let Some(request) = requests.next() {
                if let Err(err) = self.handle(request, &mut deferred, &mut wake) {
                    // Requests not reached share the transaction's fate: answer them too.
                    let failure = storage(&err);
                    for rest in requests {
                        rest.fail(&failure);
                    }
                    return Err(err);
                }
            }
            self.cap_for(false)?;
            wake |= self.housekeeping()?;
            self.persist_progress(durable)?;
            self.conn.execute_batch("COMMIT")
        })();
        match outcome {
            Ok(()) => {
                for reply in deferred {
                    reply(None);
                }
                if wake {
                    self.available.send_modify(|generation| *generation += 1);
                }
            }
            Err(err) => {
                let err = storage(&err);
                tracing::error!(error = %err, "embedded bus transaction failed; nothing of it was stored");
                let _ = self.conn.execute_batch("ROLLBACK");
                for reply in deferred {
                    reply(Some(&err));
                }
                if let Err(reload) = self.load() {
                    tracing::error!(error = %reload, "cannot reload the embedded bus state");
                }
            }
        }
    }

    fn handle(
        &mut self,
        request: Request,
        deferred: &mut Vec<Deferred>,
        wake: &mut bool,
    ) -> rusqlite::Result<()> {
        self.cap_for(matches!(request, Request::Publish { .. }))?;
        match request {
            Request::Publish { messages, reply } => {
                // A publish that finds no room (max_bus_bytes, or a full disk) is refused on
                // its own: the settles and leases sharing its transaction still commit, so a
                // full bus keeps draining instead of failing every request with it.
                if let Some(cap) = self.cap {
                    // Refused before SQLite is asked: hitting max_page_count may roll back the
                    // whole transaction, not just this publish.
                    let incoming: u64 = messages.iter().map(|m| m.body.len() as u64 + 64).sum();
                    if self.used_bytes + incoming > cap.bytes {
                        self.refuse_full(reply);
                        return Ok(());
                    }
                    self.used_bytes += incoming;
                }
                let (last_seq, high_water) = (self.last_seq, self.high_water);
                self.conn.execute_batch("SAVEPOINT publish")?;
                let inserted = {
                    let mut insert = self.conn.prepare_cached(
                        "INSERT INTO messages (seq, published_at, body) VALUES (?1, ?2, ?3)",
                    )?;
                    let mut result = Ok(());
                    for message in &messages {
                        self.last_seq += 1;
                        if let Err(err) = insert.execute(params![
                            self.last_seq as i64,
                            message.published_at_ms as i64,
                            message.body.as_ref()
                        ]) {
                            result = Err(err);
                            break;
                        }
                        self.high_water = self.high_water.max(Some(message.version));
                    }
                    result
                };
                match inserted {
                    Ok(()) => {
                        self.conn.execute_batch("RELEASE publish")?;
                        if self.full {
                            self.full = false;
                            tracing::info!("the bus has room again: publishes are accepted");
                            crate::metrics::BusFull { full: false }.emit();
                        }
                        *wake = true;
                        deferred.push(defer(reply, Ok(())));
                    }
                    // The disk itself is full, and SQLite undid just this statement.
                    Err(err) if is_full(&err) && !self.conn.is_autocommit() => {
                        self.conn
                            .execute_batch("ROLLBACK TO publish; RELEASE publish")?;
                        self.last_seq = last_seq;
                        self.high_water = high_water;
                        self.refuse_full(reply);
                    }
                    Err(err) => return Err(err),
                }
            }
            Request::LimitSize { max_bytes, reply } => {
                self.limit_size(max_bytes)?;
                deferred.push(defer(reply, Ok(())));
            }
            Request::HighWater { reply } => deferred.push(defer(reply, Ok(self.high_water))),
            Request::Receive { region, max, reply } => {
                let received = self.receive(region, max)?;
                deferred.push(defer(reply, Ok(received)));
            }
            Request::Settle {
                region,
                settlements,
                reply,
            } => {
                let parsed: Result<Vec<_>, BusError> = settlements
                    .into_iter()
                    .map(|(receipt, settle)| parse_receipt(&receipt).map(|p| (p, settle)))
                    .collect();
                match parsed {
                    Err(err) => deferred.push(defer(reply, Err(err))),
                    Ok(parsed) => {
                        for ((kind, seq, attempt), settle) in parsed {
                            self.settle(region, kind, seq, attempt, settle)?;
                        }
                        deferred.push(defer(reply, Ok(())));
                    }
                }
            }
            Request::ListDead {
                region,
                limit,
                reply,
            } => {
                let list = self.dead_letters(region, None, limit)?;
                deferred.push(defer(reply, Ok(list)));
            }
            Request::GetDead { region, id, reply } => {
                let found = self.dead_letters(region, Some(id), 1)?.into_iter().next();
                deferred.push(defer(reply, Ok(found)));
            }
            Request::Redrive {
                region,
                which,
                reply,
            } => {
                let moved = self.redrive(region, &which)?;
                *wake |= moved > 0;
                deferred.push(defer(reply, Ok(moved)));
            }
            Request::Purge {
                region,
                which,
                reply,
            } => {
                let name = self.regions[region].name.clone();
                let purged = match &which {
                    Selection::All => self
                        .conn
                        .execute("DELETE FROM dead_letters WHERE region = ?1", [&name])?,
                    Selection::Ids(ids) => {
                        let mut stmt = self.conn.prepare_cached(
                            "DELETE FROM dead_letters WHERE region = ?1 AND id = ?2",
                        )?;
                        let mut n = 0;
                        for id in ids {
                            n += stmt.execute(params![name, id.to_string()])?;
                        }
                        n
                    }
                };
                deferred.push(defer(reply, Ok(purged as u64)));
            }
            Request::Stats { reply } => {
                let stats = self.stats()?;
                deferred.push(defer(reply, Ok(stats)));
            }
            Request::Footprint { reply } => {
                let topic_messages: i64 =
                    self.conn
                        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
                let (pages, free) = self.page_counts()?;
                deferred.push(defer(
                    reply,
                    Ok(Footprint {
                        topic_messages: topic_messages as u64,
                        bytes_in_use: pages.saturating_sub(free) * self.page_size,
                        file_bytes: pages * self.page_size,
                    }),
                ));
            }
            Request::Close { .. } | Request::Shutdown => {}
        }
        Ok(())
    }

    fn receive(&mut self, region: usize, max: usize) -> rusqlite::Result<Received> {
        let now = now_ms();
        let lease_until = now + self.options.visibility_timeout.as_millis() as u64;
        let name = self.regions[region].name.clone();
        let mut deliveries = Vec::new();

        // Retries that are due come first: they are the oldest work.
        // `swept`: a first delivery the lease sweep moved here and counted already, not
        // handed out since (receive 1, never settled, the sweep's error).
        let due: Vec<(u64, Vec<u8>, u32, u32, bool)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, body, receive_count, settled_count,
                        receive_count = 1 AND settled_count = 0 AND last_error IS ?4
                 FROM retries
                 WHERE region = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![name, now as i64, max as i64, LEASE_EXPIRED_ERROR],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)? as u32,
                        r.get::<_, i64>(3)? as u32,
                        r.get::<_, bool>(4)?,
                    ))
                },
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // Leases found expired, each logged on its own and counted once below.
        let mut expired = 0;
        for (seq, body, receive_count, settled_count, swept) in due {
            let lease_expired = receive_count > settled_count;
            if lease_expired && receive_count >= self.options.max_receives {
                let reason = format!(
                    "not settled within the visibility timeout after {receive_count} receives (a worker may be crashing on it)"
                );
                self.dead_letter_retry_row(&name, seq, receive_count, &reason)?;
                continue;
            }
            if lease_expired && !swept {
                let id = message_id_or(&body, || format!("seq {seq}"));
                lease_expired_event(&name, &id, receive_count);
                expired += 1;
            }
            let count = receive_count + 1;
            self.conn
                .prepare_cached("UPDATE retries SET receive_count = ?1, visible_at = ?2 WHERE region = ?3 AND seq = ?4")?
                .execute(params![count, lease_until as i64, name, seq as i64])?;
            deliveries.push(Delivery {
                receipt: receipt(ReceiptKind::Retry, seq, count),
                body: Bytes::from(body),
                receive_count: count,
            });
        }
        leases_expired_counted(&name, expired);

        let state = &mut self.regions[region];
        let room = max.saturating_sub(deliveries.len());
        if room > 0 && state.next_seq <= self.last_seq {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, body FROM messages WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![state.next_seq as i64, room as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (seq, body) = row?;
                state.leases.insert(
                    seq,
                    Lease {
                        deadline_ms: lease_until,
                    },
                );
                state.next_seq = seq + 1;
                deliveries.push(Delivery {
                    receipt: receipt(ReceiptKind::First, seq, 1),
                    body: Bytes::from(body),
                    receive_count: 1,
                });
            }
        }

        let next_due_ms = if deliveries.is_empty() {
            let retry_due: Option<i64> = self.conn.query_row(
                "SELECT MIN(visible_at) FROM retries WHERE region = ?1",
                [&name],
                |r| r.get(0),
            )?;
            let lease_due = self.regions[region]
                .leases
                .values()
                .map(|l| l.deadline_ms)
                .min();
            [retry_due.map(|d| d as u64), lease_due]
                .into_iter()
                .flatten()
                .min()
        } else {
            None
        };
        Ok(Received {
            deliveries,
            next_due_ms,
        })
    }

    fn settle(
        &mut self,
        region: usize,
        kind: ReceiptKind,
        seq: u64,
        attempt: u32,
        settle: Settle,
    ) -> rusqlite::Result<()> {
        let now = now_ms();
        let name = self.regions[region].name.clone();
        if kind == ReceiptKind::First && self.regions[region].leases.remove(&seq).is_some() {
            match settle {
                Settle::Ack => {}
                Settle::Retry { after, reason, .. } => {
                    self.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO retries
                             (region, seq, published_at, body, receive_count, settled_count, visible_at,
                              first_failure, last_failure, last_error)
                             SELECT ?1, seq, published_at, body, 1, 1, ?2, ?3, ?3, ?4 FROM messages WHERE seq = ?5",
                        )?
                        .execute(params![name, (now + after.as_millis() as u64) as i64, now as i64, reason, seq as i64])?;
                }
                Settle::DeadLetter { reason } => {
                    let row: Option<(i64, Vec<u8>)> = self
                        .conn
                        .query_row(
                            "SELECT published_at, body FROM messages WHERE seq = ?1",
                            [seq as i64],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    if let Some((published_at, body)) = row {
                        self.insert_dead_letter(
                            &name,
                            seq,
                            published_at as u64,
                            &body,
                            attempt,
                            now,
                            now,
                            &reason,
                        )?;
                    }
                }
            }
            return Ok(());
        }
        // The lease is gone: the message was settled already, or its lease expired and it
        // now lives in `retries`.
        let row: Option<(u32, u32)> = self
            .conn
            .prepare_cached(
                "SELECT receive_count, settled_count FROM retries WHERE region = ?1 AND seq = ?2",
            )?
            .query_row(params![name, seq as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)? as u32))
            })
            .optional()?;
        let Some((receive_count, _)) = row else {
            return Ok(());
        };
        // A first delivery whose lease expired is row receive 1.
        let current = attempt == receive_count;
        match settle {
            // Whoever applied it, it is applied.
            Settle::Ack => {
                self.conn
                    .prepare_cached("DELETE FROM retries WHERE region = ?1 AND seq = ?2")?
                    .execute(params![name, seq as i64])?;
            }
            Settle::Retry { after, reason, .. } if current => {
                self.conn
                    .prepare_cached(
                        "UPDATE retries SET settled_count = receive_count, visible_at = ?1,
                         first_failure = COALESCE(first_failure, ?2), last_failure = ?2, last_error = ?3
                         WHERE region = ?4 AND seq = ?5",
                    )?
                    .execute(params![(now + after.as_millis() as u64) as i64, now as i64, reason, name, seq as i64])?;
            }
            Settle::DeadLetter { reason } if current => {
                self.dead_letter_retry_row(&name, seq, receive_count, &reason)?;
            }
            // A late Retry or DeadLetter: another delivery owns the message now.
            Settle::Retry { .. } | Settle::DeadLetter { .. } => {}
        }
        Ok(())
    }

    fn dead_letter_retry_row(
        &mut self,
        region: &str,
        seq: u64,
        attempts: u32,
        reason: &str,
    ) -> rusqlite::Result<()> {
        let now = now_ms();
        let row: Option<(i64, Vec<u8>, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT published_at, body, first_failure FROM retries WHERE region = ?1 AND seq = ?2",
                params![region, seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((published_at, body, first_failure)) = row {
            let first = first_failure.map_or(now, |f| f as u64);
            self.insert_dead_letter(
                region,
                seq,
                published_at as u64,
                &body,
                attempts,
                first,
                now,
                reason,
            )?;
            self.conn.execute(
                "DELETE FROM retries WHERE region = ?1 AND seq = ?2",
                params![region, seq as i64],
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_dead_letter(
        &mut self,
        region: &str,
        seq: u64,
        published_at: u64,
        body: &[u8],
        attempts: u32,
        first_failure: u64,
        last_failure: u64,
        reason: &str,
    ) -> rusqlite::Result<()> {
        // A body that cannot be decoded still gets a stable id, derived from its position.
        let id = Envelope::decode(body)
            .map(|e| e.id)
            .unwrap_or_else(|_| MessageId(uuid::Uuid::from_u64_pair(0, seq)));
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters
                 (region, id, seq, published_at, body, attempts, first_failure, last_failure, last_error, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                region,
                id.to_string(),
                seq as i64,
                published_at as i64,
                body,
                attempts,
                first_failure as i64,
                last_failure as i64,
                reason,
                now_ms() as i64
            ])?;
        dead_lettered_event(region, id, attempts, reason);
        Ok(())
    }

    fn dead_letters(
        &mut self,
        region: usize,
        id: Option<MessageId>,
        limit: usize,
    ) -> rusqlite::Result<Vec<DeadLetter>> {
        let name = self.regions[region].name.clone();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, body, attempts, published_at, first_failure, last_failure, last_error
             FROM dead_letters WHERE region = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY dead_at, id LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![name, id.map(|i| i.to_string()), limit as i64],
            |r| {
                let id: String = r.get(0)?;
                Ok(DeadLetter {
                    id: id.parse().unwrap_or(MessageId(uuid::Uuid::nil())),
                    region: name.clone(),
                    body: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    attempts: r.get::<_, i64>(2)? as u32,
                    published_at_ms: r.get::<_, i64>(3)? as u64,
                    first_failure_ms: r.get::<_, i64>(4)? as u64,
                    last_failure_ms: r.get::<_, i64>(5)? as u64,
                    last_error: r.get(6)?,
                })
            },
        )?;
        rows.collect()
    }

    fn redrive(&mut self, region: usize, which: &Selection) -> rusqlite::Result<u64> {
        let name = self.regions[region].name.clone();
        let ids: Vec<String> = match which {
            Selection::All => {
                let mut stmt = self
                    .conn
                    .prepare_cached("SELECT id FROM dead_letters WHERE region = ?1")?;
                let rows = stmt.query_map([&name], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            }
            Selection::Ids(ids) => ids.iter().map(MessageId::to_string).collect(),
        };
        let now = now_ms() as i64;
        let mut moved = 0;
        for id in ids {
            let n = self
                .conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO retries
                     (region, seq, published_at, body, receive_count, settled_count, visible_at,
                      first_failure, last_failure, last_error)
                     SELECT region, seq, published_at, body, 0, 0, ?3, NULL, NULL, NULL
                     FROM dead_letters WHERE region = ?1 AND id = ?2",
                )?
                .execute(params![name, id, now])?;
            if n > 0 {
                self.conn
                    .prepare_cached("DELETE FROM dead_letters WHERE region = ?1 AND id = ?2")?
                    .execute(params![name, id])?;
                moved += 1;
            }
        }
        Ok(moved)
    }

    fn stats(&mut self) -> rusqlite::Result<Vec<QueueStats>> {
        let now = now_ms();
        let mut out = Vec::with_capacity(self.regions.len());
        for region in &self.regions {
            let (waiting, leased, oldest_retry): (i64, i64, Option<i64>) = self.conn.query_row(
                "SELECT
                    COALESCE(SUM(CASE WHEN receive_count > settled_count AND visible_at > ?2 THEN 0 ELSE 1 END), 0),
                    COALESCE(SUM(CASE WHEN receive_count > settled_count AND visible_at > ?2 THEN 1 ELSE 0 END), 0),
                    MIN(published_at)
                 FROM retries WHERE region = ?1",
                params![region.name, now as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let dead: i64 = self.conn.query_row(
                "SELECT COUNT(*) FROM dead_letters WHERE region = ?1",
                [&region.name],
                |r| r.get(0),
            )?;
            let floor = region.floor();
            let oldest_topic: Option<i64> = if floor <= self.last_seq {
                self.conn
                    .query_row(
                        "SELECT published_at FROM messages WHERE seq = ?1",
                        [floor as i64],
                        |r| r.get(0),
                    )
                    .optional()?
            } else {
                None
            };
            let never_delivered = (self.last_seq + 1).saturating_sub(region.next_seq);
            let oldest = [oldest_retry, oldest_topic].into_iter().flatten().min();
            out.push(QueueStats {
                name: region.name.clone(),
                depth: never_delivered + waiting as u64,
                in_flight: region.leases.len() as u64 + leased as u64,
                dead_letters: dead as u64,
                oldest_age_ms: oldest.map(|p| now.saturating_sub(p as u64)),
                estimated: false,
            });
        }
        Ok(out)
    }

    /// Expired first-delivery leases, garbage collection, dead-letter expiry.
    /// Returns whether messages became available.
    fn housekeeping(&mut self) -> rusqlite::Result<bool> {
        let mut wake = false;
        if self.last_lease_check.elapsed() >= LEASE_CHECK_EVERY {
            self.last_lease_check = Instant::now();
            let now = now_ms();
            for i in 0..self.regions.len() {
                let expired: Vec<u64> = self.regions[i]
                    .leases
                    .iter()
                    .filter(|(_, lease)| lease.deadline_ms <= now)
                    .map(|(seq, _)| *seq)
                    .collect();
                if expired.is_empty() {
                    continue;
                }
                let name = self.regions[i].name.clone();
                for seq in &expired {
                    let body: Option<Vec<u8>> = self
                        .conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO retries
                             (region, seq, published_at, body, receive_count, settled_count, visible_at,
                              first_failure, last_failure, last_error)
                             SELECT ?1, seq, published_at, body, 1, 0, ?2, ?2, ?2, ?4
                             FROM messages WHERE seq = ?3
                             RETURNING body",
                        )?
                        .query_row(
                            params![name, now as i64, *seq as i64, LEASE_EXPIRED_ERROR],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let id =
                        message_id_or(body.as_deref().unwrap_or_default(), || format!("seq {seq}"));
                    lease_expired_event(&name, &id, 1);
                    self.regions[i].leases.remove(seq);
                }
                leases_expired_counted(&name, expired.len() as u64);
                wake = true;
            }
        }
        if self.last_gc.elapsed() >= GC_EVERY {
            self.last_gc = Instant::now();
            let min_floor = self
                .regions
                .iter()
                .map(RegionState::floor)
                .min()
                .unwrap_or(self.last_seq + 1);
            if min_floor > self.gc_floor {
                self.conn
                    .prepare_cached("DELETE FROM messages WHERE seq < ?1")?
                    .execute([min_floor as i64])?;
                self.gc_floor = min_floor;
            }
        }
        if self.last_dead_letter_expiry.elapsed()
            >= dead_letter_expiry_every(self.options.dead_letter_retention)
        {
            self.last_dead_letter_expiry = Instant::now();
            let cutoff =
                now_ms().saturating_sub(self.options.dead_letter_retention.as_millis() as u64);
            for region in &self.regions {
                let removed = self
                    .conn
                    .prepare_cached("DELETE FROM dead_letters WHERE region = ?1 AND dead_at < ?2")?
                    .execute(params![region.name, cutoff as i64])?;
                if removed > 0 {
                    tracing::info!(
                        region = %region.name,
                        removed,
                        "expired dead letters removed (older than dead_letter_retention)"
                    );
                    crate::metrics::DeadLettersExpired {
                        region: &region.name,
                        count: removed as u64,
                    }
                    .emit();
                }
            }
        }
        Ok(wake)
    }

    /// Writes floors, the last seq and the clock's high water when they moved.
    fn persist_progress(&mut self, durable: bool) -> rusqlite::Result<()> {
        // A floor written late only means a few more redeliveries after a crash, so floors are
        // written at most every FLOOR_EVERY (each write costs a WAL page), and when stopping.
        let floors_due = durable || self.last_floor_write.elapsed() >= FLOOR_EVERY;
        if floors_due {
            self.last_floor_write = Instant::now();
        }
        for region in self.regions.iter_mut().filter(|_| floors_due) {
            let floor = region.floor();
            if floor != region.persisted_floor {
                self.conn
                    .prepare_cached("UPDATE regions SET floor = ?1 WHERE name = ?2")?
                    .execute(params![floor as i64, region.name])?;
                region.persisted_floor = floor;
            }
        }
        if self.last_seq != self.persisted_last_seq {
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?1)")?
                .execute([self.last_seq as i64])?;
            self.persisted_last_seq = self.last_seq;
        }
        if self.high_water != self.persisted_high_water
            && let Some(v) = self.high_water
        {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('high_water', ?1)",
                )?
                .execute([v.packed() as i64])?;
            self.persisted_high_water = self.high_water;
        }
        Ok(())
    }
}

//! The embedded bus: the topic and every region's queue in one SQLite database.
//!
//! # Layout
//!
//! ```text
//! messages(seq PK, published_at, body)          the topic, append-only; seq assigned here
//! regions(name PK, floor)                       per region: every seq below floor is settled
//!                                               (acked, or copied into retries/dead_letters)
//! retries(region, seq PK, body, receive_count,  messages that failed or whose lease expired,
//!         settled_count, visible_at, ...)       each with its own due time
//! dead_letters(region, id PK, body, attempts,   poison, kept for dead_letter_retention
//!         first_failure, last_failure, ...)
//! meta(key PK, value)                           last_seq, clock high water
//! ```
//!
//! # Invariants
//!
//! * One thread owns the write connection ([`store`]); every change goes through it and is
//!   group-committed: all requests waiting when a transaction starts share its fsync.
//! * WAL checkpoints run on a thread of their own ([`checkpoint`]), never inside a commit.
//! * A publish is answered only after its transaction committed with `synchronous=FULL`
//!   (WAL mode): acknowledged means on disk. Transactions holding no publish commit with
//!   `synchronous=NORMAL`; the WAL keeps them ordered before the next FULL commit.
//! * A first delivery is leased in memory only. Its region's floor cannot pass an unsettled
//!   lease, so after a crash every message at or above the persisted floor is delivered
//!   again: at-least-once, never lost.
//! * A `Retry`, an expired lease or a redrive copies the message into `retries`, which owns
//!   it from then on; the floor moves past it and the topic row can be collected.
//! * Topic rows below every region's floor are deleted, so the file does not grow without
//!   bound; the backlog of a stopped region stays on disk, not in memory.
//! * With `max_bus_bytes` (SQLite's `max_page_count`), a publish that would grow the file
//!   past the cap fails alone (a savepoint) with a "bus full" error; the rest of its group
//!   commit goes through, and non-publishing work has a little headroom so the bus drains.

mod checkpoint;
mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{
    BusError, BusErrorKind, Consume, DeadLetter, DeadLetters, Delivery, Outgoing, Publish,
    QueueStats, Receipt, Selection, Settle, Stats,
};
use crate::clock::{Version, now_ms};
use crate::envelope::MessageId;

pub use store::{Footprint, StoreOptions};
use store::{Received, Request, Store};

/// Handle to the embedded bus; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    requests: std::sync::mpsc::Sender<Request>,
    /// Bumped after every commit that may have made messages available.
    available: watch::Receiver<u64>,
    regions: Vec<String>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropped after the writer thread has stopped (fields drop after `Drop::drop`).
    _checkpointer: checkpoint::Checkpointer,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Shutdown);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl EmbeddedBus {
    /// Opens (or creates) the bus in `data_dir` for `regions`.
    ///
    /// A region new to the database starts from "now"; a region no longer configured is
    /// removed with its queue (logged).
    pub fn open(
        data_dir: &Path,
        regions: &[String],
        options: StoreOptions,
    ) -> Result<Self, BusError> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            BusError::new(
                BusErrorKind::Storage,
                format!(
                    "cannot create data_dir {}: {err}; check the path and its permissions",
                    data_dir.display()
                ),
            )
        })?;
        let (available_tx, available) = watch::channel(0);
        let path = data_dir.join("bus.sqlite3");
        let restart = checkpoint::WalRestart::default();
        let store = Store::open(&path, regions, options, available_tx, restart.clone())?;
        let checkpointer = checkpoint::Checkpointer::start(&path, restart)?;
        let (requests, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("regis-bus-writer".into())
            .spawn(move || store.run(rx))
            .map_err(|err| {
                BusError::new(
                    BusErrorKind::Storage,
                    format!("cannot start the bus writer thread: {err}"),
                )
            })?;
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                requests,
                available,
                regions: regions.to_vec(),
                thread: std::sync::Mutex::new(Some(thread)),
                _checkpointer: checkpointer,
            }),
        })
    }

    fn region_index(&self, region: &str) -> Result<usize, BusError> {
        self.inner
            .regions
            .iter()
            .position(|r| r == region)
            .ok_or_else(|| BusError::unknown_region(region))
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BusError>>) -> Request,
    ) -> Result<T, BusError> {
        let (tx, rx) = oneshot::channel();
        self.inner.requests.send(make(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Caps the database file at `max_bytes` (`max_bus_bytes`; `None` lifts the cap).
    /// Publishes that would grow it further are refused with a `Storage` error saying the
    /// bus is full — never acknowledged and lost — while settles, retries and collection
    /// keep a little headroom so the regions can drain and free room.
    pub async fn limit_size(&self, max_bytes: Option<u64>) -> Result<(), BusError> {
        self.call(|reply| Request::LimitSize { max_bytes, reply })
            .await
    }

    /// What the bus holds on disk.
    pub async fn footprint(&self) -> Result<Footprint, BusError> {
        self.call(|reply| Request::Footprint { reply }).await
    }

    /// Stops the writer after it has persisted every region's progress.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Request::Close { reply: tx })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

fn closed() -> BusError {
    BusError::new(BusErrorKind::Closed, "the embedded bus is shut down")
}

impl Publish for EmbeddedBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.call(|reply| Request::Publish { messages, reply })
            .await
    }

    async fn high_water(&self) -> Result<Option<Version>, BusError> {
        self.call(|reply| Request::HighWater { reply }).await
    }
}

impl Consume for EmbeddedBus {
    async fn receive(
        &self,
        region: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let region = self.region_index(region)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut available = self.inner.available.clone();
        loop {
            // Mark the current generation seen before asking, so a commit that lands after
            // the store answered still wakes us.
            available.borrow_and_update();
            let Received {
                deliveries,
                next_due_ms,
            } = self
                .call(|reply| Request::Receive {
                    region,
                    max: max.max(1),
                    reply,
                })
                .await?;
            let now = tokio::time::Instant::now();
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            let mut wake = deadline;
            if let Some(due) = next_due_ms {
                let in_ms = due.saturating_sub(now_ms());
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                changed = available.changed() => if changed.is_err() { return Err(closed()) },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn settle(
        &self,
        region: &str,
        settlements: Vec<(Receipt, Settle)>,
    ) -> Result<(), BusError> {
        let region = self.region_index(region)?;
        if settlements.is_empty() {
            return Ok(());
        }
        self.call(|reply| Request::Settle {
            region,
            settlements,
            reply,
        })
        .await
    }
}

impl DeadLetters for EmbeddedBus {
    async fn list(&self, region: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let region = self.region_index(region)?;
        self.call(|reply| Request::ListDead {
            region,
            limit,
            reply,
        })
        .await
    }

    async fn get(&self, region: &str, id: MessageId) -> Result<Option<DeadLetter>, BusError> {
        let region = self.region_index(region)?;
        self.call(|reply| Request::GetDead { region, id, reply })
            .await
    }

    async fn redrive(&self, region: &str, which: Selection) -> Result<u64, BusError> {
        let region = self.region_index(region)?;
        self.call(|reply| Request::Redrive {
            region,
            which,
            reply,
        })
        .await
    }

    async fn purge(&self, region: &str, which: Selection) -> Result<u64, BusError> {
        let region = self.region_index(region)?;
        self.call(|reply| Request::Purge {
            region,
            which,
            reply,
        })
        .await
    }
}

impl Stats for EmbeddedBus {
    async fn stats(&self) -> Result<Vec<QueueStats>, BusError> {
        self.call(|reply| Request::Stats { reply }).await
    }
}

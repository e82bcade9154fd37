//! The durable message bus, behind four narrow traits that every backend implements.
//!
//! * [`Publish`] appends messages to the topic; its future resolves only once they are on
//!   stable storage (contract point 1).
//! * [`Consume`] is one region's queue: standard-queue semantics — [`Consume::receive`]
//!   leases messages for a visibility timeout, [`Consume::settle`] ends each delivery with
//!   one [`Settle`]: `Ack`, `Retry { after }` or `DeadLetter { reason }` (the vocabulary of
//!   NATS's `Ack | Nak(delay) | Term` and of SQS's delete / change-visibility / redrive).
//! * [`DeadLetters`] lists, shows, redrives and purges a region's dead letters.
//! * [`Stats`] reports each region's backlog.
//!
//! Settling is idempotent: a settle repeated, or arriving after its lease expired, does no
//! harm — a late `Ack` still counts (the message was applied), a late `Retry` or
//! `DeadLetter` is ignored because another delivery now owns the message.
//!
//! The backend is chosen once at start-up and used through static dispatch.

pub mod embedded;
pub mod nats;
pub mod remote;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::Version;
use crate::envelope::{Envelope, MessageId, TooLarge};

/// How a delivery ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Applied: remove the message from the region's queue.
    Ack,
    /// Not applied this time: deliver again after `after`. `reason` is kept as the last error.
    Retry {
        /// How long the message stays invisible.
        after: Duration,
        /// The error, kept as the message's last.
        reason: String,
        /// The region's Redis could not take it (an outage, not the message's fault) rather
        /// than the command failing. Buses treat both alike; it tells the hub's
        /// `regis_retries_total{reason}` which one a remote worker's retry was.
        transient: bool,
    },
    /// Poison: move the message to the region's dead letters with `reason`.
    DeadLetter { reason: String },
}

/// Identifies one delivery of one message; opaque outside its backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Receipt(pub String);

/// A leased message.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Settles this delivery.
    pub receipt: Receipt,
    /// The encoded [`Envelope`]; the consumer decodes it (and dead-letters what it cannot).
    pub body: Bytes,
    /// How many times the message has been received, this time included (1 the first time).
    pub receive_count: u32,
}

/// A message ready to append: the envelope and its encoding, checked against the size limit.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The message id.
    pub id: MessageId,
    /// Its version.
    pub version: Version,
    /// When the ingress accepted it.
    pub published_at_ms: u64,
    /// `Envelope::encode` of it.
    pub body: Bytes,
}

impl Outgoing {
    /// Encodes an envelope, refusing it above `limit` bytes.
    pub fn new(envelope: &Envelope, limit: usize) -> Result<Outgoing, TooLarge> {
        Ok(Outgoing {
            id: envelope.id,
            version: envelope.version,
            published_at_ms: envelope.published_at_ms(),
            body: Bytes::from(envelope.encode_within(limit)?),
        })
    }
}

/// A message a region gave up on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message id.
    pub id: MessageId,
    /// The region whose worker gave up.
    pub region: String,
    /// The encoded envelope.
    #[serde(skip)]
    pub body: Bytes,
    /// Receives before it was dead-lettered.
    pub attempts: u32,
    /// When it was published (ms since the epoch).
    pub published_at_ms: u64,
    /// First failure (ms since the epoch).
    pub first_failure_ms: u64,
    /// Last failure (ms since the epoch).
    pub last_failure_ms: u64,
    /// The last error.
    pub last_error: String,
}

/// Which dead letters an admin operation touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter of the region.
    All,
    /// These ids (unknown ids are skipped).
    Ids(Vec<MessageId>),
}

/// One region's queue figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Region name.
    pub name: String,
    /// Messages waiting to be applied (not in flight).
    pub depth: u64,
    /// Messages leased and not yet settled.
    pub in_flight: u64,
    /// Messages in the region's dead letters.
    pub dead_letters: u64,
    /// Age of the oldest message not yet applied, in ms.
    pub oldest_age_ms: Option<u64>,
    /// `depth` and `in_flight` are estimates rather than exact counts: never on the embedded
    /// bus; on NATS when JetStream's counts of batches cannot be turned into exact message
    /// counts (see docs/nats.md, *Queue figures*).
    #[serde(default)]
    pub estimated: bool,
}

/// What kind of bus failure, so callers can `match err.kind()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusErrorKind {
    /// Storage failed (disk full, I/O error); nothing of the operation took effect.
    Storage,
    /// The bus is shutting down or its engine is gone.
    Closed,
    /// No such region in this bus's configuration.
    UnknownRegion,
    /// A malformed receipt or request from outside.
    Invalid,
    /// The remote engine is unreachable or timed out; try again.
    Unavailable,
}

/// A bus failure.
#[derive(Clone, Debug)]
pub struct BusError {
    kind: BusErrorKind,
    message: String,
}

impl BusError {
    /// A new error.
    pub fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        BusError {
            kind,
            message: message.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> BusErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self.kind, BusErrorKind::Storage | BusErrorKind::Unavailable)
    }

    pub(crate) fn unknown_region(region: &str) -> Self {
        BusError::new(
            BusErrorKind::UnknownRegion,
            format!("unknown region {region:?}: it is not in this hub's [[regions]]"),
        )
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BusError {}

/// Appends messages to the topic.
pub trait Publish: Send + Sync + 'static {
    /// Appends `messages` durably, in order; resolves once all are on stable storage.
    fn publish(&self, messages: Vec<Outgoing>)
    -> impl Future<Output = Result<(), BusError>> + Send;

    /// The highest version ever appended, so a restarted hub's clock stays above it.
    fn high_water(&self) -> impl Future<Output = Result<Option<Version>, BusError>> + Send;
}

/// One region's queue.
pub trait Consume: Send + Sync + 'static {
    /// Leases up to `max` messages of `region`, waiting up to `wait` for the first one.
    fn receive(
        &self,
        region: &str,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, BusError>> + Send;

    /// Ends deliveries. Idempotent.
    fn settle(
        &self,
        region: &str,
        settlements: Vec<(Receipt, Settle)>,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// A region's dead letters.
pub trait DeadLetters: Send + Sync + 'static {
    /// Up to `limit` dead letters, oldest first.
    fn list(
        &self,
        region: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, BusError>> + Send;
    /// One dead letter.
    fn get(
        &self,
        region: &str,
        id: MessageId,
    ) -> impl Future<Output = Result<Option<DeadLetter>, BusError>> + Send;
    /// Moves dead letters back into the region's queue with a fresh receive count.
    fn redrive(
        &self,
        region: &str,
        which: Selection,
    ) -> impl Future<Output = Result<u64, BusError>> + Send;
    /// Deletes dead letters.
    fn purge(
        &self,
        region: &str,
        which: Selection,
    ) -> impl Future<Output = Result<u64, BusError>> + Send;
}

/// Queue figures.
pub trait Stats: Send + Sync + 'static {
    /// One entry per region, in configuration order.
    fn stats(&self) -> impl Future<Output = Result<Vec<QueueStats>, BusError>> + Send;
}

/// Everything a hub needs from a backend.
pub trait Bus: Publish + Consume + DeadLetters + Stats + Clone {}

impl<T: Publish + Consume + DeadLetters + Stats + Clone> Bus for T {}

/// The error a delivery whose lease expired unsettled is retried with.
pub(crate) const LEASE_EXPIRED_ERROR: &str =
    "not settled within the visibility timeout (the worker may have stopped)";

/// Logs one delivery whose lease expired unsettled (it is delivered again): operators want
/// to know a worker stopped settling, and which messages it held. One WARN line per message
/// and expiry, with the fields of a retry (id, region, attempt = the receive that expired,
/// error), so one log query follows a message through every retry, expiry and dead letter
/// on either bus. A worker that dies holding thousands of leases logs thousands of lines,
/// once each: that is the record the operator needs to find the messages it held.
pub(crate) fn lease_expired_event(region: &str, message_id: &dyn fmt::Display, attempt: u32) {
    tracing::warn!(
        message_id = %message_id,
        region,
        attempt,
        error = LEASE_EXPIRED_ERROR,
        "lease expired; message will be delivered again"
    );
}

/// Counts `count` expired leases of one region, once per sweep or receive that found them
/// (each is logged on its own by [`lease_expired_event`]).
pub(crate) fn leases_expired_counted(region: &str, count: u64) {
    if count > 0 {
        crate::metrics::LeaseExpired { region, count }.emit();
    }
}

/// Logs and counts a message moved to its region's dead letters. Both buses log the same
/// fields, so one log query finds dead letters whichever bus the hub runs on.
pub(crate) fn dead_lettered_event(region: &str, message_id: MessageId, attempt: u32, reason: &str) {
    tracing::warn!(message_id = %message_id, region, attempt, error = reason, "message dead-lettered");
    crate::metrics::DeadLettered { region }.emit();
}

/// The message id in an envelope's body, or `fallback` when it does not decode.
pub(crate) fn message_id_or(body: &[u8], fallback: impl FnOnce() -> String) -> String {
    Envelope::decode(body)
        .map(|e| e.id.to_string())
        .unwrap_or_else(|_| fallback())
}

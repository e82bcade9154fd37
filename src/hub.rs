//! The hub: validates what producers send, versions it and appends it to the bus.
//!
//! Every ingress (HTTP, RESP, the Rust `Publisher` through RESP) publishes through
//! [`Hub::publish`]: each command is checked and made canonical by
//! [`crate::command::prepare`], the message gets an id and a version from the hub's
//! [`HybridClock`], and the call returns only once the bus has it on stable storage.
//! A request that is refused publishes nothing. The hub is also where a message's database
//! is checked against the configured `databases`, so no ingress can publish a message that
//! no region could apply.

use std::sync::Arc;

use bytes::Bytes;

use crate::bus::{BusError, Outgoing, Publish};
use crate::clock::{HybridClock, Version, now_us};
use crate::command::{Convergence, Refusal, prepare};
use crate::envelope::{Envelope, MessageId, TooLarge};
use crate::metrics::{Published, Refused};

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A command was refused; nothing was published.
    #[error("command {index}: {refusal}")]
    Refused {
        /// Position of the refused command in the message (0-based).
        index: usize,
        /// Why.
        refusal: Refusal,
    },
    /// The message has no commands.
    #[error("a message needs at least one command")]
    Empty,
    /// The message targets a database the hub does not accept.
    #[error(
        "database {db} is out of range: this hub accepts databases 0 to {max} (databases = {databases} in its config); publish to one of those, or raise `databases` in the hub's config if every region's Redis has more",
        max = .databases.saturating_sub(1)
    )]
    DatabaseOutOfRange {
        /// The database the message asked for.
        db: u32,
        /// How many databases the hub accepts (`0..databases`).
        databases: u32,
    },
    /// Above `max_message_bytes`.
    #[error("{0}")]
    TooLarge(#[from] TooLarge),
    /// The bus could not store it; nothing was acknowledged.
    #[error("not published: {0}")]
    Bus(#[from] BusError),
}

impl PublishError {
    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Refused { refusal, .. } => refusal.code(),
            PublishError::Empty => "empty_message",
            PublishError::DatabaseOutOfRange { .. } => "database_out_of_range",
            PublishError::TooLarge(_) => "too_large",
            PublishError::Bus(_) => "unavailable",
        }
    }

    /// Whether the producer's request was at fault (as opposed to the hub).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, PublishError::Bus(_))
    }
}

/// A message as a producer sends it: commands (name first) and the database.
#[derive(Clone, Debug, Default)]
pub struct MessageRequest {
    /// The commands, applied in order and atomically.
    pub commands: Vec<Vec<Bytes>>,
    /// The Redis database they target.
    pub db: u32,
}

/// What a successful publish returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub id: MessageId,
    /// Its version.
    pub version: Version,
}

/// Validates, versions and publishes messages onto a bus.
pub struct Hub<P> {
    bus: P,
    clock: HybridClock,
    mode: Convergence,
    max_message_bytes: usize,
    databases: u32,
}

impl<P: Publish> Hub<P> {
    /// A hub publishing to `bus`; its clock is seeded above everything the bus holds.
    /// Messages may target databases `0..databases`.
    pub async fn new(
        bus: P,
        node_id: u16,
        mode: Convergence,
        max_message_bytes: usize,
        databases: u32,
    ) -> Result<Arc<Self>, BusError> {
        let seed = bus.high_water().await?;
        Ok(Arc::new(Hub {
            bus,
            clock: HybridClock::new(node_id, seed),
            mode,
            max_message_bytes,
            databases,
        }))
    }

    /// How many databases messages may target (`0..databases`).
    pub fn databases(&self) -> u32 {
        self.databases
    }

    /// The convergence mode commands are checked against.
    pub fn mode(&self) -> Convergence {
        self.mode
    }

    /// The largest message accepted, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Checks a message and turns it into what will be appended.
    pub fn prepare(&self, request: &MessageRequest) -> Result<Outgoing, PublishError> {
        if request.commands.is_empty() {
            return Err(PublishError::Empty);
        }
        if request.db >= self.databases {
            return Err(PublishError::DatabaseOutOfRange {
                db: request.db,
                databases: self.databases,
            });
        }
        let now_us = now_us();
        let now = now_us / 1000;
        // Refuse from the payload size first so a huge request costs no parsing.
        let payload: usize = request.commands.iter().flatten().map(Bytes::len).sum();
        if payload > self.max_message_bytes {
            return Err(TooLarge {
                size: payload,
                limit: self.max_message_bytes,
            }
            .into());
        }
        let mut commands = Vec::with_capacity(request.commands.len());
        for (index, args) in request.commands.iter().enumerate() {
            commands.push(
                prepare(args, self.mode, now)
                    .map_err(|refusal| PublishError::Refused { index, refusal })?,
            );
        }
        let envelope = Envelope {
            id: MessageId::new(),
            version: self.clock.issue(commands.len()),
            published_at_us: now_us,
            db: request.db,
            commands,
        };
        Ok(Outgoing::new(&envelope, self.max_message_bytes)?)
    }

    /// Publishes one message; resolves once it is durable.
    pub async fn publish(&self, request: &MessageRequest) -> Result<Receipt, PublishError> {
        self.publish_many(std::slice::from_ref(request))
            .await
            .pop()
            .unwrap_or(Err(PublishError::Empty))
    }

    /// Publishes several independent messages in one append; each has its own outcome.
    /// Refused messages are skipped, the others are stored together.
    pub async fn publish_many(
        &self,
        requests: &[MessageRequest],
    ) -> Vec<Result<Receipt, PublishError>> {
        let mut results: Vec<Result<Receipt, PublishError>> = Vec::with_capacity(requests.len());
        let mut outgoing = Vec::with_capacity(requests.len());
        let mut commands = 0u64;
        for request in requests {
            match self.prepare(request) {
                Ok(message) => {
                    results.push(Ok(Receipt {
                        id: message.id,
                        version: message.version,
                    }));
                    commands += request.commands.len() as u64;
                    outgoing.push(message);
                }
                Err(err) => {
                    Refused { code: err.code() }.emit();
                    results.push(Err(err));
                }
            }
        }
        let stored = outgoing.len() as u64;
        if stored > 0
            && let Err(err) = self.bus.publish(outgoing).await
        {
            for result in results.iter_mut() {
                if result.is_ok() {
                    *result = Err(PublishError::Bus(err.clone()));
                }
            }
            return results;
        }
        Published {
            messages: stored,
            commands,
        }
        .emit();
        results
    }
}

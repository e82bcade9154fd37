//! The lease API's messages, shared by the hub ([`crate::ingress::lease`]) and the remote
//! worker ([`super::RemoteBus`]).
//!
//! Lease and settle bodies are [postcard](https://docs.rs/postcard) — the encoding the
//! envelopes themselves use — so a batch of encoded envelopes travels as raw bytes, not as
//! base64 inside JSON: a lease of 2,000 messages of ~250 bytes is ~0.5 MB on the wire and
//! costs a copy, not an encode per byte. The small, human-facing answers (region settings,
//! errors) are JSON. [`WIRE_VERSION`] changes whenever these types do; a worker refuses a hub
//! that speaks another.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::apply::Applier;
use crate::bus::{Delivery, Receipt, Settle};
use crate::command::Convergence;

/// The version of the lease API's binary messages (2: a retry says whether it is
/// transient).
pub const WIRE_VERSION: u32 = 2;

/// The content type of postcard bodies.
pub const CONTENT_TYPE: &str = "application/x-regis-postcard";

/// The most messages one lease returns (`worker.batch_size`'s upper bound).
pub const MAX_LEASE: u32 = 10_000;
/// The most bytes of message bodies one lease returns, whatever its `max`: the hub holds a
/// lease's messages in memory while it is filled and sent, so this (times the requests in
/// flight) is what a remote region costs the hub's memory, however far behind it is. A
/// lease always gets at least one message, so one message above this (a `max_message_bytes`
/// over 8 MiB) still goes, alone.
pub const MAX_LEASE_BYTES: usize = 8 * 1024 * 1024;
/// The longest a lease request waits for a first message.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The longest a lease lingers to fill its batch once it has a first message.
pub const MAX_LINGER: Duration = Duration::from_secs(1);
/// The most settlements in one request.
pub const MAX_SETTLEMENTS: usize = 20_000;
/// A settlement's reason longer than this is cut (it is only kept as the last error).
pub const MAX_REASON_BYTES: usize = 4096;
/// The most bytes of settlements (by [`Settlement::size_bound`]) a worker puts in one
/// request. `MAX_SETTLEMENTS` settlements with full-length reasons would be ~80 MiB, so a
/// worker with that much to settle splits it across requests.
pub const MAX_SETTLE_BYTES: usize = 8 * 1024 * 1024;
/// The largest lease or settle request body the hub accepts (`413` beyond). A worker's
/// request is at most [`MAX_SETTLE_BYTES`] of settlements plus [`REQUEST_OVERHEAD`], well
/// within it.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// The bytes a lease or settle request takes besides its settlements, at most: its other
/// fields and the settlements' count, each a varint of at most 10 bytes.
pub const REQUEST_OVERHEAD: usize = 64;

/// `POST /v1/worker/regions/{region}/lease`: settle what is done, then lease more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Most messages to lease, 1 to [`MAX_LEASE`].
    pub max: u32,
    /// How long to wait for a first message, ms (at most [`MAX_WAIT`]).
    pub wait_ms: u32,
    /// Once a first message is leased, how long to keep filling the batch, ms (at most
    /// [`MAX_LINGER`]). Spreads a worker's requests in flight over time so that one of them
    /// is always waiting at the hub.
    pub linger_ms: u32,
    /// Deliveries to settle before leasing (a worker's previous batches).
    pub settle: Vec<Settlement>,
    /// The worker process's session (random): `release` ends its waiting leases.
    pub session: u64,
}

/// `POST /v1/worker/regions/{region}/release`: a stopping worker's leases still waiting at
/// the hub end at once, empty, instead of taking messages for a worker that is gone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The session of the stopping worker.
    pub session: u64,
}

/// `POST /v1/worker/regions/{region}/settle`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SettleRequest {
    /// Deliveries to settle.
    pub settle: Vec<Settlement>,
}

/// The answer to a lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// How long these leases last from when the hub handed them out, ms.
    pub visibility_timeout_ms: u64,
    /// The leased messages (none when the wait ran out).
    pub deliveries: Vec<WireDelivery>,
}

/// A leased message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireDelivery {
    /// The bus's receipt.
    pub receipt: String,
    /// Receives so far, this one included.
    pub receive_count: u32,
    /// The encoded envelope.
    pub body: Bytes,
}

/// How one delivery ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    /// The receipt of the delivery.
    pub receipt: String,
    /// Its outcome.
    pub outcome: Outcome,
}

/// [`Settle`] on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Ack,
    /// Deliver again after `after_ms`.
    Retry {
        /// Delay, ms.
        after_ms: u64,
        /// The error.
        reason: String,
        /// The region's Redis was unavailable (not the message's fault).
        transient: bool,
    },
    /// Poison.
    DeadLetter {
        /// The error.
        reason: String,
    },
}

/// The region's settings as the hub has them, so a remote worker applies exactly as a local
/// one would (`GET /v1/worker/regions/{region}`, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSettings {
    /// The region.
    pub region: String,
    /// [`WIRE_VERSION`] of the hub.
    pub wire_version: u32,
    /// How the region applies messages; must be the hub's.
    pub convergence: Convergence,
    /// How long lww metadata is kept, ms.
    pub tombstone_ttl_ms: u64,
    /// Receives before a failing message is dead-lettered.
    pub max_receives: u32,
    /// First retry delay, ms.
    pub retry_backoff_ms: u64,
    /// Longest retry delay, ms.
    pub retry_backoff_max_ms: u64,
    /// How long a lease lasts, ms.
    pub visibility_timeout_ms: u64,
    /// Timeout of one Redis round trip, ms.
    pub redis_timeout_ms: u64,
    /// `"local"` when `regis serve` runs a worker for this region itself.
    pub placement: String,
}

impl RegionSettings {
    /// The applier the hub's settings ask for.
    pub fn applier(&self) -> Applier {
        Applier::new(
            self.convergence,
            Duration::from_millis(self.tombstone_ttl_ms),
        )
    }
}

fn cut(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        reason.truncate(reason.floor_char_boundary(MAX_REASON_BYTES));
        reason.push('…');
    }
    reason
}

impl Settlement {
    /// Bytes this settlement takes in a request, at most: its receipt and reason, their
    /// lengths (varints of at most 10 bytes each), the outcome's tag and delay.
    pub fn size_bound(&self) -> usize {
        let reason = match &self.outcome {
            Outcome::Ack => 0,
            Outcome::Retry { reason, .. } | Outcome::DeadLetter { reason } => reason.len(),
        };
        self.receipt.len() + reason + 40
    }

    /// A bus settlement on the wire.
    pub fn new(receipt: Receipt, settle: Settle) -> Settlement {
        let outcome = match settle {
            Settle::Ack => Outcome::Ack,
            Settle::Retry {
                after,
                reason,
                transient,
            } => Outcome::Retry {
                after_ms: after.as_millis().min(u128::from(u64::MAX)) as u64,
                reason: cut(reason),
                transient,
            },
            Settle::DeadLetter { reason } => Outcome::DeadLetter {
                reason: cut(reason),
            },
        };
        Settlement {
            receipt: receipt.0,
            outcome,
        }
    }

    /// Back to the bus's vocabulary (reasons cut to [`MAX_REASON_BYTES`]).
    pub fn into_bus(self) -> (Receipt, Settle) {
        let settle = match self.outcome {
            Outcome::Ack => Settle::Ack,
            Outcome::Retry {
                after_ms,
                reason,
                transient,
            } => Settle::Retry {
                after: Duration::from_millis(after_ms),
                reason: cut(reason),
                transient,
            },
            Outcome::DeadLetter { reason } => Settle::DeadLetter {
                reason: cut(reason),
            },
        };
        (Receipt(self.receipt), settle)
    }
}

impl From<Delivery> for WireDelivery {
    fn from(d: Delivery) -> Self {
        WireDelivery {
            receipt: d.receipt.0,
            receive_count: d.receive_count,
            body: d.body,
        }
    }
}

impl From<WireDelivery> for Delivery {
    fn from(d: WireDelivery) -> Self {
        Delivery {
            receipt: Receipt(d.receipt),
            body: d.body,
            receive_count: d.receive_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_round_trips_and_bodies_stay_raw() {
        let body = Bytes::from(vec![7u8; 300]);
        let response = LeaseResponse {
            visibility_timeout_ms: 30_000,
            deliveries: vec![WireDelivery {
                receipt: "f:12:1".into(),
                receive_count: 1,
                body: body.clone(),
            }],
        };
        let bytes = postcard::to_stdvec(&response).unwrap();
        // Raw bytes plus a few bytes of framing, no base64 inflation.
        assert!(bytes.len() < 300 + 20, "{} bytes", bytes.len());
        let back: LeaseResponse = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn settlements_map_both_ways_and_long_reasons_are_cut() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let s = Settlement::new(
            Receipt("r:1:2".into()),
            Settle::Retry {
                after: Duration::from_millis(250),
                reason: long,
                transient: true,
            },
        );
        let (receipt, settle) = s.into_bus();
        assert_eq!(receipt.0, "r:1:2");
        match settle {
            Settle::Retry {
                after,
                reason,
                transient,
            } => {
                assert!(transient);
                assert_eq!(after, Duration::from_millis(250));
                assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
                assert!(reason.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
        let ack = Settlement::new(Receipt("f:1:1".into()), Settle::Ack).into_bus();
        assert_eq!(ack.1, Settle::Ack);
    }

    #[test]
    fn a_settlement_never_takes_more_than_its_size_bound() {
        let long = "x".repeat(MAX_REASON_BYTES * 2);
        let receipt =
            || Receipt("1780000000000 $JS.ACK.REGIS.r0.1.5.5.1780000000000000000.0 7 9".into());
        for settle in [
            Settle::Ack,
            Settle::Retry {
                after: Duration::MAX,
                reason: long.clone(),
                transient: true,
            },
            Settle::DeadLetter {
                reason: long.clone(),
            },
        ] {
            let s = Settlement::new(receipt(), settle);
            let encoded = postcard::to_stdvec(&s).unwrap().len();
            assert!(encoded <= s.size_bound(), "{encoded} > {}", s.size_bound());
        }
        let request = LeaseRequest {
            max: u32::MAX,
            wait_ms: u32::MAX,
            linger_ms: u32::MAX,
            settle: vec![],
            session: u64::MAX,
        };
        assert!(postcard::to_stdvec(&request).unwrap().len() + 10 <= REQUEST_OVERHEAD);
        const { assert!(MAX_SETTLE_BYTES + REQUEST_OVERHEAD <= MAX_REQUEST_BYTES) };
    }

    #[test]
    fn garbage_is_an_error_not_a_panic_or_a_huge_allocation() {
        // A length prefix claiming ~4 GB of settlements in a 6-byte body.
        let garbage = [10u8, 10, 0, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<LeaseRequest>(&garbage).is_err());
        assert!(postcard::from_bytes::<SettleRequest>(b"").is_err());
    }
}

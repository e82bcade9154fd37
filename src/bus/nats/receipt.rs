//! Receipts of the NATS bus: a delivery's JetStream ack subject, its lease deadline, and
//! which envelope of the delivered batch it is (`index` of `count`, see `batch`).
//!
//! JetStream names every delivery by the reply subject it was sent with,
//! `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>`
//! (servers with domains may add `<domain>.<account hash>` after `$JS.ACK` and a random
//! token at the end). Acknowledging means publishing to that subject, so a receipt from
//! outside is checked to be an ack subject of this stream and of the region's consumer
//! before anything is published to it.
//!
//! The deadline is when this process considers the lease gone: JetStream's own `ack_wait`
//! runs from the moment the server sent the message, a little before we received it, so the
//! deadline is taken a safety margin earlier. A `Retry` or `DeadLetter` after it is ignored,
//! because the server may already have handed the message to another consumer and would
//! apply a late `Nak`/`Term` to that delivery (nats-server does not check the delivery
//! count of an ack).

use std::time::Duration;

use crate::bus::{BusError, BusErrorKind, Receipt};

/// One delivery, as named by its ack subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AckSubject {
    /// The ack subject itself, published to for Ack/Nak/Term.
    pub subject: String,
    /// Stream name.
    pub stream: String,
    /// Consumer name.
    pub consumer: String,
    /// How many times the message has been delivered to this consumer, this time included.
    pub delivered: u32,
    /// The message's sequence in the stream.
    pub stream_seq: u64,
    /// When the stream stored the message (ns since the epoch).
    pub timestamp_ns: u64,
}

impl AckSubject {
    /// Parses an ack subject; `None` if it is not one.
    pub fn parse(subject: &str) -> Option<AckSubject> {
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.len() < 9 || tokens[0] != "$JS" || tokens[1] != "ACK" {
            return None;
        }
        // v1 has 9 tokens; v2 inserts domain and account hash, and may append a token.
        let rest = match tokens.len() {
            9 => &tokens[2..],
            11 | 12 => &tokens[4..],
            _ => return None,
        };
        let number = |s: &str| s.parse::<u64>().ok();
        Some(AckSubject {
            subject: subject.to_string(),
            stream: rest[0].to_string(),
            consumer: rest[1].to_string(),
            delivered: u32::try_from(number(rest[2])?).ok()?,
            stream_seq: number(rest[3])?,
            timestamp_ns: number(rest[5])?,
        })
    }
}

/// The margin by which this process ends a lease before JetStream does.
pub(super) fn lease_margin(visibility_timeout: Duration) -> Duration {
    (visibility_timeout / 10).min(Duration::from_secs(2))
}

/// A receipt read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Parsed {
    /// When this process considers the lease over (ms since the epoch).
    pub deadline_ms: u64,
    /// The delivery of the NATS message.
    pub ack: AckSubject,
    /// Which envelope of the batch.
    pub index: u32,
    /// How many envelopes the batch holds.
    pub count: u32,
}

/// `"<deadline ms> <ack subject> <index> <count>"`.
pub(super) fn receipt(deadline_ms: u64, ack: &AckSubject, index: u32, count: u32) -> Receipt {
    Receipt(format!("{deadline_ms} {} {index} {count}", ack.subject))
}

/// Reads a receipt back, checking it names a delivery of `stream` to `consumer`.
pub(super) fn parse_receipt(
    receipt: &Receipt,
    stream: &str,
    consumer: &str,
) -> Result<Parsed, BusError> {
    let invalid = || {
        BusError::new(
            BusErrorKind::Invalid,
            format!(
                "malformed receipt {:?}: settle only receipts this bus handed out for region {consumer:?}",
                receipt.0
            ),
        )
    };
    let mut parts = receipt.0.split(' ');
    let mut next = || parts.next().ok_or_else(invalid);
    let deadline_ms: u64 = next()?.parse().map_err(|_| invalid())?;
    let ack = AckSubject::parse(next()?).ok_or_else(invalid)?;
    let index: u32 = next()?.parse().map_err(|_| invalid())?;
    let count: u32 = next()?.parse().map_err(|_| invalid())?;
    if ack.stream != stream || ack.consumer != consumer || index >= count || parts.next().is_some()
    {
        return Err(invalid());
    }
    Ok(Parsed {
        deadline_ms,
        ack,
        index,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ack_subject_formats_parse() {
        let v1 = AckSubject::parse("$JS.ACK.REGIS.r0.3.42.77.1764000000000000000.5").unwrap();
        assert_eq!(
            (
                v1.stream.as_str(),
                v1.consumer.as_str(),
                v1.delivered,
                v1.stream_seq
            ),
            ("REGIS", "r0", 3, 42)
        );
        assert_eq!(v1.timestamp_ns, 1_764_000_000_000_000_000);
        let v2 = AckSubject::parse("$JS.ACK.hub.ACCHASH.REGIS.r-1.1.9.9.1764000000000000000.0.xyz")
            .unwrap();
        assert_eq!(
            (v2.consumer.as_str(), v2.delivered, v2.stream_seq),
            ("r-1", 1, 9)
        );
        for bad in [
            "",
            "$JS.ACK.REGIS.r0",
            "$JS.API.REGIS.r0.3.42.77.1.5",
            "$JS.ACK.REGIS.r0.x.42.77.1.5",
            "foo.bar.REGIS.r0.3.42.77.1.5",
        ] {
            assert_eq!(AckSubject::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn receipts_round_trip_and_foreign_ones_are_refused() {
        let ack = AckSubject::parse("$JS.ACK.REGIS.r0.1.5.5.1764000000000000000.0").unwrap();
        let r = receipt(123, &ack, 2, 5);
        assert_eq!(
            parse_receipt(&r, "REGIS", "r0").unwrap(),
            Parsed {
                deadline_ms: 123,
                ack,
                index: 2,
                count: 5
            }
        );
        for (receipt, stream, consumer) in [
            (r.clone(), "REGIS", "r1"),
            (r.clone(), "OTHER", "r0"),
            (Receipt("f:1:1".into()), "REGIS", "r0"),
            (Receipt("12 _INBOX.x 0 1".into()), "REGIS", "r0"),
            (
                Receipt("x $JS.ACK.REGIS.r0.1.5.5.1.0 0 1".into()),
                "REGIS",
                "r0",
            ),
            (
                Receipt("1 $JS.ACK.REGIS.r0.1.5.5.1.0 1 1".into()),
                "REGIS",
                "r0",
            ),
            (
                Receipt("1 $JS.ACK.REGIS.r0.1.5.5.1.0 0".into()),
                "REGIS",
                "r0",
            ),
            (
                Receipt("1 $JS.ACK.REGIS.r0.1.5.5.1.0 0 1 x".into()),
                "REGIS",
                "r0",
            ),
        ] {
            let err = parse_receipt(&receipt, stream, consumer).unwrap_err();
            assert_eq!(err.kind(), BusErrorKind::Invalid, "{receipt:?}");
        }
    }

    #[test]
    fn the_margin_is_a_tenth_capped_at_two_seconds() {
        assert_eq!(
            lease_margin(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(
            lease_margin(Duration::from_secs(60)),
            Duration::from_secs(2)
        );
    }
}

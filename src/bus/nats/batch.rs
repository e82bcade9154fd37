//! Batches: how the messages of one publish call travel as one NATS message.
//!
//! JetStream's cost is per stored message — a PubAck, a delivery and an ack per region, a
//! deletion — whatever its size, so the messages a hub appends together (one publish call:
//! a producer's batch, or concurrent requests) are stored as one NATS message of up to
//! [`MAX_MESSAGES`] envelopes, the way the embedded bus commits them in one transaction.
//! Each envelope is still received, settled, retried and dead-lettered on its own (see
//! `queue`).
//!
//! Layout: the envelopes one after another, each preceded by its length as a little-endian
//! `u32`. The NATS message carries the header `Regis-Batch: <count>`; a message without it
//! is one bare envelope. A hub's batches also carry `Regis-Totals: <messages> <envelopes>`,
//! its running totals on its subject ([`Totals`]), from which queue figures count envelopes.

use bytes::{BufMut, Bytes, BytesMut};

/// The header marking a batch, with its number of envelopes.
pub(super) const HEADER: &str = "Regis-Batch";
/// The header with the publishing hub's running [`Totals`], this message included.
pub(super) const TOTALS_HEADER: &str = "Regis-Totals";

/// How many NATS messages and envelopes one hub has appended on its subject, counted from
/// the first message of the subject still stored when it started. Only differences matter:
/// the envelopes between two positions of a subject are the difference of their totals
/// (see `counts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Totals {
    /// NATS messages.
    pub messages: u64,
    /// Envelopes (Regis messages) in them.
    pub envelopes: u64,
}

impl Totals {
    /// The totals once a batch of `envelopes` more is appended.
    pub fn after(self, envelopes: usize) -> Totals {
        Totals {
            messages: self.messages + 1,
            envelopes: self.envelopes + envelopes as u64,
        }
    }

    /// The header value: `<messages> <envelopes>`.
    pub fn header_value(self) -> String {
        format!("{} {}", self.messages, self.envelopes)
    }

    /// Reads a header value; `None` unless it is two numbers with at least as many envelopes
    /// as messages.
    pub fn parse(value: &str) -> Option<Totals> {
        let (messages, envelopes) = value.trim().split_once(' ')?;
        let totals = Totals {
            messages: messages.parse().ok()?,
            envelopes: envelopes.parse().ok()?,
        };
        (totals.messages >= 1 && totals.envelopes >= totals.messages).then_some(totals)
    }

    /// The totals a message carries, if any.
    pub fn of(headers: Option<&async_nats::HeaderMap>) -> Option<Totals> {
        Totals::parse(headers?.get(TOTALS_HEADER)?.as_str())
    }
}

/// The envelopes a stored message holds, by its `Regis-Batch` header (one without it).
pub(super) fn envelopes_of(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .filter(|n| (1..=MAX_MESSAGES as u64).contains(n))
        .unwrap_or(1)
}
/// Most envelopes in one NATS message: bounds how far a receive can exceed its `max`.
pub(super) const MAX_MESSAGES: usize = 128;

/// Splits `bodies` into batches of at most [`MAX_MESSAGES`] envelopes and `max_bytes` bytes
/// (a body larger than that alone goes alone).
pub(super) fn pack(bodies: Vec<Bytes>, max_bytes: usize) -> Vec<(usize, Bytes)> {
    let mut batches = Vec::new();
    let mut current = BytesMut::new();
    let mut count = 0;
    for body in bodies {
        let framed = 4 + body.len();
        if count > 0 && (count == MAX_MESSAGES || current.len() + framed > max_bytes) {
            batches.push((count, current.split().freeze()));
            count = 0;
        }
        current.reserve(framed);
        current.put_u32_le(body.len() as u32);
        current.put_slice(&body);
        count += 1;
    }
    if count > 0 {
        batches.push((count, current.freeze()));
    }
    batches
}

/// The envelopes of a batch of `count`; `None` when the payload does not hold exactly that.
pub(super) fn unpack(payload: &Bytes, count: usize) -> Option<Vec<Bytes>> {
    if count == 0 || count > MAX_MESSAGES {
        return None;
    }
    let mut bodies = Vec::with_capacity(count);
    let mut at = 0usize;
    while at < payload.len() {
        let len_bytes: [u8; 4] = payload.get(at..at + 4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > payload.len() {
            return None;
        }
        bodies.push(payload.slice(start..end));
        at = end;
    }
    (bodies.len() == count).then_some(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_split_batches() {
        let bodies: Vec<Bytes> = (0..300).map(|i| Bytes::from(vec![i as u8; 10])).collect();
        let batches = pack(bodies.clone(), 1 << 20);
        assert_eq!(
            batches.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        let by_bytes = pack(bodies[..10].to_vec(), 30);
        assert_eq!(by_bytes.len(), 5, "two 14-byte frames fit in 30 bytes");
        let huge = pack(vec![Bytes::from(vec![0; 100])], 30);
        assert_eq!(
            huge.len(),
            1,
            "a body larger than the limit still goes, alone"
        );
        let unpacked: Vec<Bytes> = batches
            .iter()
            .flat_map(|(n, payload)| unpack(payload, *n).unwrap())
            .collect();
        assert_eq!(unpacked, bodies);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let (n, payload) = pack(vec![Bytes::from_static(b"abc")], 1024).remove(0);
        assert_eq!(n, 1);
        assert!(unpack(&payload, 2).is_none(), "wrong count");
        assert!(unpack(&payload.slice(..5), 1).is_none(), "truncated");
        assert!(unpack(&Bytes::from_static(&[255, 255, 255, 255]), 1).is_none());
        assert!(unpack(&payload, 0).is_none());
    }

    #[test]
    fn totals_round_trip_and_refuse_nonsense() {
        let totals = Totals::default().after(3).after(128);
        assert_eq!(
            totals,
            Totals {
                messages: 2,
                envelopes: 131
            }
        );
        assert_eq!(Totals::parse(&totals.header_value()), Some(totals));
        for bad in ["", "1", "a b", "2 1", "0 0", "1 2 3", "-1 4"] {
            assert_eq!(Totals::parse(bad), None, "{bad:?}");
        }
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(envelopes_of(Some(&headers)), 1, "a bare envelope");
        headers.insert(HEADER, "17");
        assert_eq!(envelopes_of(Some(&headers)), 17);
        assert_eq!(Totals::of(Some(&headers)), None);
        headers.insert(TOTALS_HEADER, "4 40");
        assert_eq!(
            Totals::of(Some(&headers)),
            Some(Totals {
                messages: 4,
                envelopes: 40
            })
        );
    }

    proptest! {
        #[test]
        fn pack_then_unpack_gives_the_bodies_back(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..300),
            max_bytes in 1usize..2000,
        ) {
            let bodies: Vec<Bytes> = bodies.into_iter().map(Bytes::from).collect();
            let batches = pack(bodies.clone(), max_bytes);
            let mut back = Vec::new();
            for (n, payload) in &batches {
                prop_assert!(*n >= 1 && *n <= MAX_MESSAGES);
                prop_assert!(payload.len() <= max_bytes || *n == 1);
                back.extend(unpack(payload, *n).unwrap());
            }
            prop_assert_eq!(back, bodies);
        }
    }
}

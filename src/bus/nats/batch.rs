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
//! is one bare envelope.

use bytes::{BufMut, Bytes, BytesMut};

/// The header marking a batch, with its number of envelopes.
pub(super) const HEADER: &str = "Regis-Batch";
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

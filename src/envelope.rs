//! The message: what a producer published once and every region applies.
//!
//! An [`Envelope`] carries the message id (a UUIDv7, so ids sort by publish time), the
//! version the hub's clock assigned, the publish time, the Redis database it targets and
//! one or more canonical commands, applied in order and atomically in each region.
//!
//! On the bus an envelope is one byte of format version followed by its
//! [postcard](https://docs.rs/postcard) encoding; [`Envelope::decode`] refuses anything
//! else with an error instead of guessing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Version;
use crate::command::Command;

/// The first byte of every encoded envelope.
const FORMAT_V1: u8 = 1;

/// The default largest encoded message, in bytes (256 KiB, the original's payload limit).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// A message id: a UUIDv7, unique and sortable by publish time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new id for a message published now.
    pub fn new() -> Self {
        MessageId(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// One published message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id, assigned at ingress.
    pub id: MessageId,
    /// The version of the first command; command `i` has `version.command(i)`.
    pub version: Version,
    /// Wall-clock µs since the Unix epoch when the ingress accepted it.
    pub published_at_us: u64,
    /// The Redis database (`SELECT n`) the commands target in every region.
    pub db: u32,
    /// Canonical commands, applied in order and atomically.
    pub commands: Vec<Command>,
}

/// Why bytes could not be read back as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Empty input.
    #[error("empty message body")]
    Empty,
    /// Written by a newer Regis.
    #[error("message format {0} is not known to this Regis (it reads format 1); upgrade Regis")]
    UnknownFormat(u8),
    /// Damaged bytes.
    #[error("message body is corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
}

/// A message above the size limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "message is {size} bytes, above the limit of {limit} bytes (max_message_bytes); split it into smaller messages or raise max_message_bytes"
)]
pub struct TooLarge {
    /// The encoded size.
    pub size: usize,
    /// The configured limit.
    pub limit: usize,
}

/// What the hub needs to know of a message it leases to a remote worker, to report it
/// applied when the worker's Ack comes back ([`Envelope::peek`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Wall-clock µs since the Unix epoch when the ingress accepted it.
    pub published_at_us: u64,
    /// Number of commands.
    pub commands: usize,
}

/// The leading fields of an encoded envelope, in [`Envelope`]'s order, and the length of its
/// commands without them.
#[derive(Deserialize)]
struct Prefix {
    _id: MessageId,
    _version: Version,
    published_at_us: u64,
    _db: u32,
    commands: SeqLen,
}

/// A sequence's length, read from its header; its elements are left unread.
struct SeqLen(usize);

impl<'de> Deserialize<'de> for SeqLen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SeqLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<SeqLen, A::Error> {
                // postcard knows the length up front; no hint means it claims more elements
                // than there are bytes left.
                seq.size_hint()
                    .map(SeqLen)
                    .ok_or_else(|| serde::de::Error::custom("more commands than bytes"))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

impl Envelope {
    /// The publish time and command count of an encoded envelope, read without decoding
    /// (or copying) its commands: the hub does this for every message it leases to a remote
    /// worker.
    pub fn peek(bytes: &[u8]) -> Result<Head, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Empty),
            Some((&FORMAT_V1, rest)) => {
                let (prefix, _) = postcard::take_from_bytes::<Prefix>(rest)?;
                Ok(Head {
                    published_at_us: prefix.published_at_us,
                    commands: prefix.commands.0,
                })
            }
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
        }
    }

    /// The encoded form stored on the bus.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self
                .commands
                .iter()
                .map(Command::payload_len)
                .sum::<usize>(),
        );
        out.push(FORMAT_V1);
        // Serializing plain owned data into a Vec cannot fail.
        postcard::to_io(self, &mut out).expect("encoding an envelope into memory");
        out
    }

    /// The encoded form, refused when above `limit` bytes.
    pub fn encode_within(&self, limit: usize) -> Result<Vec<u8>, TooLarge> {
        // Cheap bound first so a huge message is refused before it is copied.
        let payload: usize = self.commands.iter().map(Command::payload_len).sum();
        if payload > limit {
            return Err(TooLarge {
                size: payload,
                limit,
            });
        }
        let bytes = self.encode();
        if bytes.len() > limit {
            return Err(TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Ok(bytes)
    }

    /// Reads an envelope written by [`Envelope::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Empty),
            Some((&FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
        }
    }

    /// Wall-clock ms since the Unix epoch when the ingress accepted it.
    pub fn published_at_ms(&self) -> u64 {
        self.published_at_us / 1000
    }

    /// Number of commands.
    pub fn command_count(&self) -> usize {
        self.commands.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn sample(commands: Vec<Command>) -> Envelope {
        Envelope {
            id: MessageId::new(),
            version: Version::from_packed(1_870_000_000_000_000_000),
            published_at_us: 1_780_000_000_000_000,
            db: 3,
            commands,
        }
    }

    #[test]
    fn round_trips() {
        let env = sample(vec![
            Command::from_strs(&["SET", "k", "v"]),
            Command::from_strs(&["HSET", "h", "f", "v"]),
        ]);
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
    }

    #[test]
    fn peek_reads_the_head_of_what_decode_reads_whole() {
        for commands in [
            vec![Command::from_strs(&["SET", "k", "v"])],
            (0..300)
                .map(|i| Command::from_strs(&["INCRBY", &format!("c{i}"), "1"]))
                .collect(),
        ] {
            let env = sample(commands);
            let head = Envelope::peek(&env.encode()).unwrap();
            assert_eq!(head.published_at_us, env.published_at_us);
            assert_eq!(head.commands, env.commands.len());
        }
        assert!(matches!(Envelope::peek(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            Envelope::peek(&[9, 1]),
            Err(DecodeError::UnknownFormat(9))
        ));
        // Cut short, or claiming more commands than it holds: an error, not a guess.
        let bytes = sample(vec![Command::from_strs(&["SET", "k", "v"])]).encode();
        assert!(Envelope::peek(&bytes[..20]).is_err());
        let head_len = bytes.len()
            - 1
            - postcard::to_stdvec(&vec![Command::from_strs(&["SET", "k", "v"])])
                .unwrap()
                .len();
        let mut lying = bytes[..1 + head_len].to_vec();
        lying.extend([0xff, 0xff, 0x03]);
        assert!(Envelope::peek(&lying).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(Envelope::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            Envelope::decode(&[9, 1, 2]),
            Err(DecodeError::UnknownFormat(9))
        ));
        assert!(matches!(
            Envelope::decode(&[1, 0xff, 0xff]),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn size_limit_names_the_limit() {
        let env = sample(vec![Command(vec![
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"k"),
            Bytes::from(vec![b'x'; 1000]),
        ])]);
        let err = env.encode_within(512).unwrap_err();
        assert_eq!(err.limit, 512);
        assert!(err.to_string().contains("512 bytes"));
        assert!(env.encode_within(2048).is_ok());
    }

    proptest! {
        #[test]
        fn any_binary_commands_round_trip(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            db in 0u32..16,
        ) {
            let mut env = sample(vec![Command(args.into_iter().map(Bytes::from).collect())]);
            env.db = db;
            prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        }

        #[test]
        fn arbitrary_bytes_decode_to_an_error_or_a_faithful_envelope(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            // No panic, and whatever decodes must survive a round trip unchanged.
            if let Ok(env) = Envelope::decode(&bytes) {
                prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
            }
        }
    }
}

//! The first read of every key, done inside Redis: its type, its expiry and a fingerprint of
//! its `DUMP` payload, a whole chunk of keys per script call.
//!
//! Reading a chunk with a pipeline of `DUMP` and `PEXPIRETIME` per key made `regis verify`
//! parse two RESP values per key per region, and the reference answer a separate `SCAN`;
//! that parsing was most of `regis verify`'s own CPU. Three cached scripts (`EVALSHA`;
//! loaded again when a server answers `NOSCRIPT`) do the reads next to the data:
//!
//! - `scan_digests.lua`, on the reference: one `SCAN` step, Regis's metadata keys skipped,
//!   and for each key its name, type, expiry and fingerprint;
//! - `digest_keys.lua`, on every other region: the same for the names of a chunk;
//! - `scan_names.lua`, on every other region: one `SCAN` step without the metadata keys, to
//!   look for keys the reference lacks.
//!
//! Each answers with one string of records (the formats are in the scripts), parsed here
//! without a RESP value per field. A fingerprint is the payload itself up to
//! [`Reading::hash_above`] bytes, else its `sha1` (`redis.sha1hex`): hashing costs Redis
//! more CPU than sending a short payload, while a long one is better hashed than held in
//! memory and sent across regions. Equal fingerprints mean equal `DUMP` payloads, which was
//! the first comparison before as well; keys whose fingerprints differ are read again by
//! type ([`super::read::read_normal`]). Each call does at most one `SCAN` step and one
//! `DUMP` and one expiry read per key it returns, so it holds a server about as long as the
//! pipeline it replaces.

use std::sync::OnceLock;

use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, RedisResult, Script};

use super::read::{Expiry, ExpiryMode, Kind, expiry_command};
use crate::apply::lww::META_PREFIX;
use crate::clock::now_ms;

fn scan_digests_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scan_digests.lua")))
}

fn digest_keys_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("digest_keys.lua")))
}

fn scan_names_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scan_names.lua")))
}

/// One key as its first read saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its type (from the `DUMP` payload's first byte); `None` when the key does not exist.
    pub kind: Option<Kind>,
    /// Its `DUMP` payload when short, else `sha1` of it, tagged so that the two never
    /// compare equal (empty when the key is missing).
    pub fingerprint: Vec<u8>,
    /// Its expiry (meaningless when the key is missing).
    pub expiry: Expiry,
}

impl Seen {
    /// A key that does not exist.
    pub const MISSING: Seen = Seen {
        kind: None,
        fingerprint: Vec::new(),
        expiry: Expiry::Never,
    };

    /// Whether the key exists.
    pub fn exists(&self) -> bool {
        self.kind.is_some()
    }
}

/// One `SCAN` step of the reference, read.
pub struct Scanned {
    /// The cursor to continue with; 0 when the scan is over.
    pub cursor: u64,
    /// Keys `SCAN` returned, the skipped metadata keys included (for the progress bar).
    pub scanned: u64,
    /// The user keys, each with what it holds.
    pub keys: Vec<(Vec<u8>, Seen)>,
}

/// How the first read is made.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// How expiries are read.
    pub mode: ExpiryMode,
    /// Longest `DUMP` payload sent as is; longer ones are sent as their `sha1`.
    pub hash_above: usize,
}

/// One `SCAN` step of `conn` from `cursor`: every key matching `pattern` outside Regis's
/// metadata, with what it holds.
pub async fn scan_digests(
    conn: &mut MultiplexedConnection,
    cursor: u64,
    pattern: &[u8],
    count: usize,
    reading: Reading,
) -> RedisResult<Scanned> {
    let (cursor, scanned, records): (u64, u64, Vec<u8>) = scan_digests_script()
        .prepare_invoke()
        .arg(cursor)
        .arg(pattern)
        .arg(count)
        .arg(expiry_command(reading.mode))
        .arg(META_PREFIX)
        .arg(reading.hash_above)
        .invoke_async(conn)
        .await?;
    let now = now_ms() as i64;
    let mut keys = Vec::new();
    let mut input = Records::new(&records);
    while !input.done() {
        let name_len = input.length()?;
        let seen = input.seen(reading.mode, now, Some(name_len))?;
        keys.push(seen);
    }
    let keys = keys
        .into_iter()
        .map(|(name, seen)| (name.unwrap_or_default(), seen))
        .collect();
    Ok(Scanned {
        cursor,
        scanned,
        keys,
    })
}

/// What each of `keys` holds in `conn`, in order.
pub async fn digest_keys<K: AsRef<[u8]>>(
    conn: &mut MultiplexedConnection,
    keys: &[K],
    reading: Reading,
) -> RedisResult<Vec<Seen>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = digest_keys_script().prepare_invoke();
    for key in keys {
        invocation.key(key.as_ref());
    }
    invocation
        .arg(expiry_command(reading.mode))
        .arg(reading.hash_above);
    let records: Vec<u8> = invocation.invoke_async(conn).await?;
    let now = now_ms() as i64;
    let mut out = Vec::with_capacity(keys.len());
    let mut input = Records::new(&records);
    while !input.done() {
        out.push(input.seen(reading.mode, now, None)?.1);
    }
    if out.len() != keys.len() {
        return Err(malformed(format!(
            "{} records for {} keys",
            out.len(),
            keys.len()
        )));
    }
    Ok(out)
}

/// One `SCAN` step of `conn` from `cursor`: the cursor to continue with, how many keys
/// `SCAN` returned, and those of them matching `pattern` outside Regis's metadata.
pub async fn scan_names(
    conn: &mut MultiplexedConnection,
    cursor: u64,
    pattern: &[u8],
    count: usize,
) -> RedisResult<(u64, u64, Vec<Vec<u8>>)> {
    let (cursor, scanned, names): (u64, u64, Vec<u8>) = scan_names_script()
        .prepare_invoke()
        .arg(cursor)
        .arg(pattern)
        .arg(count)
        .arg(META_PREFIX)
        .invoke_async(conn)
        .await?;
    let mut keys = Vec::new();
    let mut input = Records::new(&names);
    while !input.done() {
        let len = input.length()?;
        keys.push(input.bytes(len)?.to_vec());
    }
    Ok((cursor, scanned, keys))
}

fn malformed(detail: String) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "regis verify's script answered in an unexpected format",
        detail,
    ))
}

/// The type byte of a key that does not exist.
const MISSING_TYPE: u8 = 255;

/// A reader of the scripts' record strings (little-endian binary headers, see the scripts).
struct Records<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Records<'a> {
    fn new(input: &'a [u8]) -> Self {
        Records { input, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.input.len()
    }

    fn fail(&self, what: &str) -> RedisError {
        malformed(format!(
            "{what} at byte {} of {}",
            self.at,
            self.input.len()
        ))
    }

    fn bytes(&mut self, len: usize) -> RedisResult<&'a [u8]> {
        let Some(bytes) = self.input.get(self.at..self.at.saturating_add(len)) else {
            return Err(self.fail("record past the end"));
        };
        self.at += len;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> RedisResult<[u8; N]> {
        let bytes = self.bytes(N)?;
        bytes.try_into().map_err(|_| self.fail("short field"))
    }

    /// A `u32` length.
    fn length(&mut self) -> RedisResult<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    /// One key's record: header (after the name length, read by the caller when the record
    /// has a name), name, fingerprint. `now` turns a remaining TTL (`PTTL`) into a deadline.
    fn seen(
        &mut self,
        mode: ExpiryMode,
        now: i64,
        name_len: Option<usize>,
    ) -> RedisResult<(Option<Vec<u8>>, Seen)> {
        let [kind, hashed] = self.array()?;
        let expiry = i64::from_le_bytes(self.array()?);
        let fingerprint_len = self.length()?;
        let name = match name_len {
            Some(len) => Some(self.bytes(len)?.to_vec()),
            None => None,
        };
        let fingerprint = self.bytes(fingerprint_len)?;
        if kind == MISSING_TYPE {
            return Ok((name, Seen::MISSING));
        }
        if hashed > 1 || fingerprint.is_empty() {
            return Err(self.fail("bad fingerprint"));
        }
        let expiry = match expiry {
            // -2 (no such key) cannot follow a DUMP in the same script; -1 is no TTL.
            n if n < 0 => Expiry::Never,
            n => Expiry::At(match mode {
                ExpiryMode::Absolute => n,
                ExpiryMode::Relative => now.saturating_add(n),
            }),
        };
        // The kind byte goes first, so a payload never equals a digest.
        let mut tagged = Vec::with_capacity(fingerprint.len() + 1);
        tagged.push(hashed);
        tagged.extend_from_slice(fingerprint);
        Ok((
            name,
            Seen {
                kind: Some(Kind::of_dump(&[kind])),
                fingerprint: tagged,
                expiry,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the scripts write it.
    fn record(name: Option<&[u8]>, kind: u8, hashed: u8, expiry: i64, fp: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(name) = name {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(&[kind, hashed]);
        out.extend_from_slice(&expiry.to_le_bytes());
        out.extend_from_slice(&(fp.len() as u32).to_le_bytes());
        out.extend_from_slice(name.unwrap_or_default());
        out.extend_from_slice(fp);
        out
    }

    fn read_all(input: &[u8], named: bool) -> RedisResult<Vec<(Option<Vec<u8>>, Seen)>> {
        let mut r = Records::new(input);
        let mut out = Vec::new();
        while !r.done() {
            let name_len = if named { Some(r.length()?) } else { None };
            out.push(r.seen(ExpiryMode::Absolute, 0, name_len)?);
        }
        Ok(out)
    }

    #[test]
    fn records_with_any_bytes_in_names_and_payloads() {
        let sha = b"0123456789abcdef0123456789abcdef01234567";
        let mut input = record(Some(b"a:\n\0"), 0, 0, -1, b"\0\xff payload");
        input.extend(record(Some(b""), 16, 1, 1_700_000_000_000, sha));
        input.extend(record(Some(b"gone"), MISSING_TYPE, 0, -2, b""));
        let read = read_all(&input, true).unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read[0].0.as_deref(), Some(b"a:\n\0".as_slice()));
        assert_eq!(read[0].1.kind, Some(Kind::String));
        assert_eq!(read[0].1.fingerprint, b"\0\0\xff payload");
        assert_eq!(read[0].1.expiry, Expiry::Never);
        assert_eq!(read[1].0.as_deref(), Some(b"".as_slice()));
        assert_eq!(read[1].1.kind, Some(Kind::Hash));
        assert_eq!(read[1].1.fingerprint[0], 1);
        assert_eq!(read[1].1.expiry, Expiry::At(1_700_000_000_000));
        assert_eq!(read[2], (Some(b"gone".to_vec()), Seen::MISSING));
    }

    #[test]
    fn a_payload_never_equals_a_digest() {
        let raw = read_all(&record(None, 0, 0, -1, b"same bytes"), false).unwrap();
        let hashed = read_all(&record(None, 0, 1, -1, b"same bytes"), false).unwrap();
        assert_ne!(raw[0].1.fingerprint, hashed[0].1.fingerprint);
    }

    #[test]
    fn a_remaining_ttl_becomes_a_deadline() {
        let input = record(None, 2, 0, 1500, b"x");
        let seen = Records::new(&input)
            .seen(ExpiryMode::Relative, 10_000, None)
            .unwrap()
            .1;
        assert_eq!(seen.kind, Some(Kind::Set));
        assert_eq!(seen.expiry, Expiry::At(11_500));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let good = record(None, 0, 0, -1, b"payload");
        for cut in 0..good.len() {
            assert!(
                read_all(&good[..cut], false).is_err() || cut == 0,
                "cut at {cut}"
            );
        }
        assert!(read_all(&record(None, 0, 2, -1, b"x"), false).is_err());
        assert!(read_all(&record(None, 0, 0, -1, b""), false).is_err());
        let mut huge = record(Some(b"k"), 0, 0, -1, b"x");
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_all(&huge, true).is_err());
    }
}

//! Pipelined reads of many keys of one region, and the comparison of two regions' answers.
//!
//! The first read of a key is `DUMP` plus its expiry: one round trip per chunk of keys,
//! whatever their types, and the `DUMP` payload's first byte names the type. Two equal
//! payloads mean equal values. Unequal payloads do not yet mean drift — a set's or a large
//! hash's serialization follows its hash table's order, which differs between servers, and a
//! string may be stored in another encoding — so such keys are compared in a normal form:
//! hash-table sets and hashes decoded from the payloads themselves ([`super::rdb`]), any
//! other key read again by type (`GET`, `HGETALL`, `SMEMBERS`, `ZRANGE … WITHSCORES`,
//! `LRANGE`).

use std::cmp::Ordering;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};

use crate::clock::now_ms;

/// How a key's expiry is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryMode {
    /// `PEXPIRETIME` (Redis 7+): the absolute deadline, exact, comparable across regions
    /// whenever it was read.
    Absolute,
    /// `PTTL` (older Redis): the remaining time, turned into a deadline with this machine's
    /// clock at the moment of the read.
    Relative,
}

/// A key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No TTL.
    Never,
    /// Expires at this many ms since the epoch.
    At(i64),
}

impl Expiry {
    /// Whether the two deadlines are the same within `tolerance_ms`.
    pub fn close(self, other: Expiry, tolerance_ms: i64) -> bool {
        match (self, other) {
            (Expiry::Never, Expiry::Never) => true,
            (Expiry::At(a), Expiry::At(b)) => (a - b).abs() <= tolerance_ms,
            _ => false,
        }
    }

    /// Whether the key expires within `tolerance_ms` from now (then it may be gone in one
    /// region and not yet in another without that being drift).
    pub fn imminent(self, tolerance_ms: i64) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::At(at) => at - now_ms() as i64 <= tolerance_ms,
        }
    }

    /// For `RESTORE`: the TTL argument and whether it is absolute (`ABSTTL`).
    pub fn restore_ttl(self, mode: ExpiryMode) -> (i64, bool) {
        match (self, mode) {
            (Expiry::Never, _) => (0, false),
            (Expiry::At(at), ExpiryMode::Absolute) => (at.max(1), true),
            (Expiry::At(at), ExpiryMode::Relative) => ((at - now_ms() as i64).max(1), false),
        }
    }
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Never => f.write_str("no TTL"),
            Expiry::At(at) => {
                let left = at - now_ms() as i64;
                write!(f, "TTL {:.1}s", left as f64 / 1000.0)
            }
        }
    }
}

/// The command that reads an expiry in `mode`.
pub fn expiry_command(mode: ExpiryMode) -> &'static str {
    match mode {
        ExpiryMode::Absolute => "PEXPIRETIME",
        ExpiryMode::Relative => "PTTL",
    }
}

/// Turns a `PEXPIRETIME`/`PTTL` answer into an [`Expiry`] (`None` when the key is missing).
pub fn expiry_from(value: &Value, mode: ExpiryMode) -> Option<Expiry> {
    match value {
        Value::Int(-2) => None,
        Value::Int(-1) => Some(Expiry::Never),
        Value::Int(n) => Some(Expiry::At(match mode {
            ExpiryMode::Absolute => *n,
            ExpiryMode::Relative => now_ms() as i64 + n,
        })),
        _ => Some(Expiry::Never),
    }
}

/// One key as its first read saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dumped {
    /// The `DUMP` payload; `None` when the key does not exist.
    pub payload: Option<Vec<u8>>,
    /// Its expiry (meaningless when the key is missing).
    pub expiry: Expiry,
}

impl Dumped {
    /// The key's type, when it exists.
    pub fn kind(&self) -> Option<Kind> {
        self.payload.as_deref().map(Kind::of_dump)
    }
}

/// A Redis value type, as `TYPE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `string`
    String,
    /// `list`
    List,
    /// `set`
    Set,
    /// `zset`
    ZSet,
    /// `hash`
    Hash,
    /// `stream`
    Stream,
    /// A module type.
    Module,
    /// An RDB object type this version does not know.
    Unknown(u8),
}

impl Kind {
    /// The type of a `DUMP` payload, from its first byte (the RDB object type).
    pub fn of_dump(payload: &[u8]) -> Kind {
        match payload.first().copied().unwrap_or(255) {
            0 => Kind::String,
            1 | 10 | 14 | 18 => Kind::List,
            2 | 11 | 20 => Kind::Set,
            3 | 5 | 12 | 17 => Kind::ZSet,
            4 | 9 | 13 | 16 | 22..=25 => Kind::Hash,
            15 | 19 | 21 => Kind::Stream,
            6 | 7 => Kind::Module,
            other => Kind::Unknown(other),
        }
    }

    /// Its name, as `TYPE` says it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::Hash => "hash",
            Kind::Stream => "stream",
            Kind::Module => "module value",
            Kind::Unknown(_) => "value of an unknown type",
        }
    }
}

/// `DUMP` and the expiry of every key, in one pipeline.
pub async fn dump_many(
    conn: &mut MultiplexedConnection,
    keys: &[Vec<u8>],
    mode: ExpiryMode,
) -> RedisResult<Vec<Dumped>> {
    run_dumps(conn, &dump_pipeline(keys, mode), keys.len(), mode).await
}

/// The pipeline of [`dump_many`], built once to send to several regions.
pub fn dump_pipeline(keys: &[Vec<u8>], mode: ExpiryMode) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("DUMP").arg(key).cmd(expiry_command(mode)).arg(key);
    }
    pipe
}

/// Sends a [`dump_pipeline`] of `n` keys and reads the answers.
pub async fn run_dumps(
    conn: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
    n: usize,
    mode: ExpiryMode,
) -> RedisResult<Vec<Dumped>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut out = Vec::with_capacity(n);
    let mut replies = replies.into_iter();
    while let (Some(dump), Some(ttl)) = (replies.next(), replies.next()) {
        let payload = match dump {
            Value::BulkString(bytes) => Some(bytes),
            _ => None,
        };
        let expiry = expiry_from(&ttl, mode).unwrap_or(Expiry::Never);
        out.push(Dumped { payload, expiry });
    }
    Ok(out)
}

/// A value in a normal form: collections sorted, so equal contents compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Normal {
    /// The key does not exist (or changed type between reads).
    Missing,
    /// A string.
    String(Vec<u8>),
    /// A list, in order.
    List(Vec<Vec<u8>>),
    /// A set, sorted.
    Set(Vec<Vec<u8>>),
    /// A hash, sorted by field.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// A sorted set, sorted by member; scores as Redis prints them.
    ZSet(Vec<(Vec<u8>, Vec<u8>)>),
    /// A type compared by its `DUMP` payload.
    Raw(Kind, Vec<u8>),
}

/// Reads each key by its type (as its `DUMP` said), in one pipeline, in normal form.
pub async fn read_normal(
    conn: &mut MultiplexedConnection,
    keys: &[(&[u8], Option<Kind>)],
) -> RedisResult<Vec<Normal>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (key, kind) in keys {
        match kind {
            Some(Kind::String) => pipe.cmd("GET").arg(*key),
            Some(Kind::List) => pipe.cmd("LRANGE").arg(*key).arg(0).arg(-1),
            Some(Kind::Set) => pipe.cmd("SMEMBERS").arg(*key),
            Some(Kind::Hash) => pipe.cmd("HGETALL").arg(*key),
            Some(Kind::ZSet) => pipe
                .cmd("ZRANGE")
                .arg(*key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
            Some(_) | None => pipe.cmd("DUMP").arg(*key),
        };
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    Ok(keys
        .iter()
        .zip(replies)
        .map(|((_, kind), reply)| normal(*kind, reply))
        .collect())
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        _ => None,
    }
}

fn items(value: Value) -> Option<Vec<Vec<u8>>> {
    match value {
        Value::Array(items) | Value::Set(items) => items.into_iter().map(bytes).collect(),
        _ => None,
    }
}

fn pairs(value: Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    match value {
        Value::Map(map) => map
            .into_iter()
            .map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
            .collect(),
        other => {
            let flat = items(other)?;
            if flat.len() % 2 != 0 {
                return None;
            }
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(a), Some(b)) = (it.next(), it.next()) {
                out.push((a, b));
            }
            Some(out)
        }
    }
}

fn normal(kind: Option<Kind>, reply: Value) -> Normal {
    // A WRONGTYPE (the key changed type since its DUMP) or a vanished key reads as missing:
    // the comparison then reports drift only if it persists in a fresh read.
    if matches!(reply, Value::ServerError(_) | Value::Nil) {
        return Normal::Missing;
    }
    let read = match kind {
        Some(Kind::String) => bytes(reply).map(Normal::String),
        Some(Kind::List) => items(reply).map(Normal::List),
        Some(Kind::Set) => items(reply).map(|mut m| {
            m.sort();
            Normal::Set(m)
        }),
        Some(Kind::Hash) => pairs(reply).map(|mut p| {
            p.sort();
            Normal::Hash(p)
        }),
        Some(Kind::ZSet) => pairs(reply).map(|mut p| {
            p.sort();
            Normal::ZSet(p)
        }),
        Some(other) => bytes(reply).map(|b| Normal::Raw(other, b)),
        None => None,
    };
    // Empty collections do not exist in Redis: an empty answer means the key is gone.
    match read {
        Some(Normal::List(v)) if v.is_empty() => Normal::Missing,
        Some(Normal::Set(v)) if v.is_empty() => Normal::Missing,
        Some(Normal::Hash(v)) if v.is_empty() => Normal::Missing,
        Some(Normal::ZSet(v)) if v.is_empty() => Normal::Missing,
        Some(n) => n,
        None => Normal::Missing,
    }
}

/// Shortens bytes for a human: quoted, escaped, at most `max` characters.
pub fn show(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    format!("{out:?}")
}

impl Normal {
    /// "hash of 3 fields", "string \"abc\"", …
    pub fn describe(&self) -> String {
        match self {
            Normal::Missing => "missing".into(),
            Normal::String(v) => format!("string {}", show(v, 40)),
            Normal::List(v) => format!("list of {} items", v.len()),
            Normal::Set(v) => format!("set of {} members", v.len()),
            Normal::Hash(v) => format!("hash of {} fields", v.len()),
            Normal::ZSet(v) => format!("zset of {} members", v.len()),
            Normal::Raw(kind, v) => format!("{} ({} bytes serialized)", kind.name(), v.len()),
        }
    }

    /// The first difference between two collections of one type, for a human.
    pub fn first_difference(&self, other: &Normal, left: &str, right: &str) -> Option<String> {
        match (self, other) {
            (Normal::Hash(a), Normal::Hash(b)) => first_pair_difference(a, b, "field", left, right),
            (Normal::ZSet(a), Normal::ZSet(b)) => {
                first_pair_difference(a, b, "member", left, right)
            }
            (Normal::Set(a), Normal::Set(b)) => first_member_difference(a, b, left, right),
            (Normal::List(a), Normal::List(b)) => {
                let i = a.iter().zip(b).position(|(x, y)| x != y)?;
                Some(format!(
                    "item {i}: {} in {left}, {} in {right}",
                    show(&a[i], 40),
                    show(&b[i], 40)
                ))
            }
            _ => None,
        }
    }
}

fn first_pair_difference(
    a: &[(Vec<u8>, Vec<u8>)],
    b: &[(Vec<u8>, Vec<u8>)],
    what: &str,
    left: &str,
    right: &str,
) -> Option<String> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => match x.0.cmp(&y.0) {
                Ordering::Equal if x.1 == y.1 => {
                    i += 1;
                    j += 1;
                }
                Ordering::Equal => {
                    return Some(format!(
                        "{what} {}: {} in {left}, {} in {right}",
                        show(&x.0, 40),
                        show(&x.1, 40),
                        show(&y.1, 40)
                    ));
                }
                Ordering::Less => {
                    return Some(format!("{what} {} only in {left}", show(&x.0, 40)));
                }
                Ordering::Greater => {
                    return Some(format!("{what} {} only in {right}", show(&y.0, 40)));
                }
            },
            (Some(x), None) => return Some(format!("{what} {} only in {left}", show(&x.0, 40))),
            (None, Some(y)) => return Some(format!("{what} {} only in {right}", show(&y.0, 40))),
            (None, None) => break,
        }
    }
    None
}

fn first_member_difference(
    a: &[Vec<u8>],
    b: &[Vec<u8>],
    left: &str,
    right: &str,
) -> Option<String> {
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
                Ordering::Less => return Some(format!("member {} only in {left}", show(x, 40))),
                Ordering::Greater => {
                    return Some(format!("member {} only in {right}", show(y, 40)));
                }
            },
            (Some(x), None) => return Some(format!("member {} only in {left}", show(x, 40))),
            (None, Some(y)) => return Some(format!("member {} only in {right}", show(y, 40))),
            (None, None) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_rdb_type_bytes() {
        assert_eq!(Kind::of_dump(&[0, 1, 2]), Kind::String);
        assert_eq!(Kind::of_dump(&[16]), Kind::Hash);
        assert_eq!(Kind::of_dump(&[11]), Kind::Set);
        assert_eq!(Kind::of_dump(&[17]), Kind::ZSet);
        assert_eq!(Kind::of_dump(&[18]), Kind::List);
        assert_eq!(Kind::of_dump(&[21]), Kind::Stream);
        assert_eq!(Kind::of_dump(&[99]), Kind::Unknown(99));
    }

    #[test]
    fn expiries_compare_within_tolerance() {
        assert!(Expiry::Never.close(Expiry::Never, 0));
        assert!(Expiry::At(1000).close(Expiry::At(1900), 1000));
        assert!(!Expiry::At(1000).close(Expiry::At(2001), 1000));
        assert!(!Expiry::Never.close(Expiry::At(1), 1000));
        assert!(Expiry::At(now_ms() as i64 + 10).imminent(1000));
        assert!(!Expiry::At(now_ms() as i64 + 60_000).imminent(1000));
        assert!(!Expiry::Never.imminent(1000));
    }

    #[test]
    fn normal_forms_ignore_order_and_name_the_first_difference() {
        let a = normal(
            Some(Kind::Hash),
            Value::Array(vec![
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(b"2".to_vec()),
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"1".to_vec()),
            ]),
        );
        let b = normal(
            Some(Kind::Hash),
            Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"1".to_vec()),
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(b"3".to_vec()),
            ]),
        );
        assert_ne!(a, b);
        assert_eq!(
            a.first_difference(&b, "x", "y").unwrap(),
            "field \"b\": \"2\" in x, \"3\" in y"
        );
        let s1 = normal(
            Some(Kind::Set),
            Value::Array(vec![
                Value::BulkString(b"m".to_vec()),
                Value::BulkString(b"n".to_vec()),
            ]),
        );
        let s2 = normal(
            Some(Kind::Set),
            Value::Array(vec![
                Value::BulkString(b"n".to_vec()),
                Value::BulkString(b"m".to_vec()),
            ]),
        );
        assert_eq!(s1, s2);
        assert_eq!(
            normal(Some(Kind::Set), Value::Array(vec![])),
            Normal::Missing
        );
    }
}

//! Parsing write commands into typed operations and rendering them back canonically.

use std::collections::HashSet;

use bytes::Bytes;

use super::{Class, Command, RESERVED_KEY_PREFIX, Refusal, classify, upper_name};

/// What a `SET` does to the key's time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// The key loses any TTL (a plain `SET`).
    Clear,
    /// The key expires at this absolute deadline, in ms since the Unix epoch.
    At(i64),
    /// The key keeps whatever TTL it has (`KEEPTTL`).
    Keep,
}

/// `SET ... NX|XX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCondition {
    /// Only if the key does not exist.
    Nx,
    /// Only if the key exists.
    Xx,
}

/// `EXPIRE ... NX|XX|GT|LT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireCondition {
    /// Only if the key has no TTL.
    Nx,
    /// Only if the key has a TTL.
    Xx,
    /// Only if the new deadline is later.
    Gt,
    /// Only if the new deadline is sooner.
    Lt,
}

/// The flags of a `ZADD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ZAddFlags {
    /// `NX`: only add new members.
    pub nx: bool,
    /// `XX`: only update existing members.
    pub xx: bool,
    /// `GT`: only raise scores.
    pub gt: bool,
    /// `LT`: only lower scores.
    pub lt: bool,
    /// `CH`: changes only the reply.
    pub ch: bool,
    /// `INCR`: behave like `ZINCRBY`.
    pub incr: bool,
}

/// A parsed write command.
///
/// Numbers that Redis parses itself (float increments, scores) are kept as the text the
/// producer sent, already checked, so the applied value is exactly what Redis would compute.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `SET key value`, with its TTL effect and (order-dependent) condition.
    Set {
        key: Bytes,
        value: Bytes,
        ttl: Ttl,
        condition: Option<SetCondition>,
        get: bool,
    },
    /// `MSET key value [key value ...]`; keys are distinct.
    MSet { pairs: Vec<(Bytes, Bytes)> },
    /// `DEL`/`UNLINK key [key ...]`; keys are distinct.
    Del { keys: Vec<Bytes>, unlink: bool },
    /// `INCRBY key delta` (also `INCR`, `DECR`, `DECRBY`).
    IncrBy { key: Bytes, delta: i64 },
    /// `INCRBYFLOAT key delta`.
    IncrByFloat { key: Bytes, delta: Bytes },
    /// `HSET key field value [field value ...]`; fields are distinct.
    HSet {
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `HDEL key field [field ...]`; fields are distinct.
    HDel { key: Bytes, fields: Vec<Bytes> },
    /// `HINCRBY key field delta`.
    HIncrBy {
        key: Bytes,
        field: Bytes,
        delta: i64,
    },
    /// `HINCRBYFLOAT key field delta`.
    HIncrByFloat {
        key: Bytes,
        field: Bytes,
        delta: Bytes,
    },
    /// `SADD key member [member ...]`; members are distinct.
    SAdd { key: Bytes, members: Vec<Bytes> },
    /// `SREM key member [member ...]`; members are distinct.
    SRem { key: Bytes, members: Vec<Bytes> },
    /// `ZADD key [flags] score member [...]`; members are distinct.
    ZAdd {
        key: Bytes,
        flags: ZAddFlags,
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `ZREM key member [member ...]`; members are distinct.
    ZRem { key: Bytes, members: Vec<Bytes> },
    /// `ZINCRBY key delta member`.
    ZIncrBy {
        key: Bytes,
        delta: Bytes,
        member: Bytes,
    },
    /// `PEXPIREAT key deadline_ms` (also `EXPIRE`, `PEXPIRE`, `EXPIREAT`).
    ExpireAt {
        key: Bytes,
        at_ms: i64,
        condition: Option<ExpireCondition>,
    },
    /// `PERSIST key`.
    Persist { key: Bytes },
    /// An order-dependent write passed through as sent (accepted under `none` only).
    Raw { args: Vec<Bytes>, why: &'static str },
}

fn arity(name: &str, ok: bool, expected: &'static str) -> Result<(), Refusal> {
    if ok {
        Ok(())
    } else {
        Err(Refusal::Arity {
            name: name.to_string(),
            expected,
        })
    }
}

fn syntax(name: &str, detail: impl Into<String>) -> Refusal {
    Refusal::Syntax {
        name: name.to_string(),
        detail: detail.into(),
    }
}

/// Parses an integer the way Redis does: optional minus, digits, no leading zeros or '+'.
fn parse_i64(raw: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(raw).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

fn int_arg(name: &str, raw: &[u8]) -> Result<i64, Refusal> {
    parse_i64(raw).ok_or_else(|| syntax(name, "value is not an integer or out of range"))
}

/// Checks a float argument; `allow_infinite` for scores, where Redis accepts `inf`.
fn float_arg(name: &str, raw: &Bytes, allow_infinite: bool) -> Result<Bytes, Refusal> {
    let text = std::str::from_utf8(raw).map_err(|_| syntax(name, "value is not a valid float"))?;
    let lowered = text.to_ascii_lowercase();
    let value: Option<f64> = match lowered.as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ if text.is_empty() || text.trim() != text => None,
        _ => text.parse::<f64>().ok(),
    };
    match value {
        Some(v) if v.is_nan() => Err(syntax(name, "value is not a valid float")),
        Some(v) if v.is_infinite() && !allow_infinite => {
            Err(syntax(name, "increment would produce NaN or Infinity"))
        }
        Some(_) => Ok(raw.clone()),
        None => Err(syntax(name, "value is not a valid float")),
    }
}

/// `now + amount * unit_ms`, refusing overflow the way Redis does.
fn deadline(
    name: &str,
    now_ms: u64,
    amount: i64,
    unit_ms: i64,
    relative: bool,
) -> Result<i64, Refusal> {
    let invalid = || {
        syntax(
            name,
            format!(
                "invalid expire time in '{}' command",
                name.to_ascii_lowercase()
            ),
        )
    };
    let span = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
    if relative {
        i64::try_from(now_ms)
            .ok()
            .and_then(|now| now.checked_add(span))
            .ok_or_else(invalid)
    } else {
        Ok(span)
    }
}

/// Keeps the last occurrence of each pair's first element, in order of those occurrences.
fn last_wins(pairs: Vec<(Bytes, Bytes)>) -> Vec<(Bytes, Bytes)> {
    let mut seen = HashSet::new();
    let mut kept: Vec<(Bytes, Bytes)> = pairs
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    kept.reverse();
    kept
}

fn distinct(items: &[Bytes]) -> Vec<Bytes> {
    let mut seen = HashSet::new();
    items
        .iter()
        .filter(|item| seen.insert((*item).clone()))
        .cloned()
        .collect()
}

fn pairs(items: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    items
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

impl Op {
    /// Parses one command (name first). `now_ms` resolves relative expiries. A command
    /// writing a key in the reserved prefix ([`RESERVED_KEY_PREFIX`]) is refused, whatever
    /// the command and wherever the key.
    pub fn parse(args: &[Bytes], now_ms: u64) -> Result<Op, Refusal> {
        let op = Op::parse_unchecked(args, now_ms)?;
        if let Some(key) = op
            .keys()
            .into_iter()
            .find(|k| k.starts_with(RESERVED_KEY_PREFIX))
        {
            return Err(Refusal::ReservedKey {
                name: upper_name(args),
                key: Command(vec![key.clone()]).preview(60),
            });
        }
        Ok(op)
    }

    fn parse_unchecked(args: &[Bytes], now_ms: u64) -> Result<Op, Refusal> {
        if args.is_empty() {
            return Err(Refusal::Empty);
        }
        let name = upper_name(args);
        let n = args.len();
        match classify(&name) {
            Class::Write => {}
            Class::OrderDependent(why) => {
                check_order_dependent_arity(&name, n)?;
                let mut args = args.to_vec();
                args[0] = Bytes::from(name.into_bytes());
                return Ok(Op::Raw { args, why });
            }
            Class::Read => return Err(Refusal::Read(name)),
            Class::Connection => return Err(Refusal::Connection(name)),
            Class::Forbidden(why) => return Err(Refusal::Forbidden { name, why }),
            Class::Unknown => {
                if name.is_empty() && args[0].is_empty() {
                    return Err(Refusal::Empty);
                }
                return Err(Refusal::Unknown(name));
            }
        }
        let key = || args[1].clone();
        let op = match name.as_str() {
            "SET" => {
                arity(
                    &name,
                    n >= 3,
                    "expected SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT t|KEEPTTL]",
                )?;
                parse_set(&name, args, now_ms)?
            }
            "SETEX" | "PSETEX" => {
                arity(&name, n == 4, "expected key, expiry and value")?;
                let amount = int_arg(&name, &args[2])?;
                if amount <= 0 {
                    return Err(syntax(
                        &name,
                        format!(
                            "invalid expire time in '{}' command",
                            name.to_ascii_lowercase()
                        ),
                    ));
                }
                let unit = if name == "SETEX" { 1000 } else { 1 };
                Op::Set {
                    key: key(),
                    value: args[3].clone(),
                    ttl: Ttl::At(deadline(&name, now_ms, amount, unit, true)?),
                    condition: None,
                    get: false,
                }
            }
            "MSET" => {
                arity(
                    &name,
                    n >= 3 && n % 2 == 1,
                    "expected one or more key value pairs",
                )?;
                Op::MSet {
                    pairs: last_wins(pairs(&args[1..])),
                }
            }
            "DEL" | "UNLINK" => {
                arity(&name, n >= 2, "expected one or more keys")?;
                Op::Del {
                    keys: distinct(&args[1..]),
                    unlink: name == "UNLINK",
                }
            }
            "INCR" | "DECR" => {
                arity(&name, n == 2, "expected a key")?;
                Op::IncrBy {
                    key: key(),
                    delta: if name == "INCR" { 1 } else { -1 },
                }
            }
            "INCRBY" | "DECRBY" => {
                arity(&name, n == 3, "expected a key and an increment")?;
                let amount = int_arg(&name, &args[2])?;
                let delta = if name == "INCRBY" {
                    amount
                } else {
                    amount
                        .checked_neg()
                        .ok_or_else(|| syntax(&name, "decrement would overflow"))?
                };
                Op::IncrBy { key: key(), delta }
            }
            "INCRBYFLOAT" => {
                arity(&name, n == 3, "expected a key and an increment")?;
                Op::IncrByFloat {
                    key: key(),
                    delta: float_arg(&name, &args[2], false)?,
                }
            }
            "HSET" | "HMSET" => {
                arity(
                    &name,
                    n >= 4 && n.is_multiple_of(2),
                    "expected a key and one or more field value pairs",
                )?;
                Op::HSet {
                    key: key(),
                    pairs: last_wins(pairs(&args[2..])),
                }
            }
            "HDEL" => {
                arity(&name, n >= 3, "expected a key and one or more fields")?;
                Op::HDel {
                    key: key(),
                    fields: distinct(&args[2..]),
                }
            }
            "HINCRBY" => {
                arity(&name, n == 4, "expected a key, a field and an increment")?;
                Op::HIncrBy {
                    key: key(),
                    field: args[2].clone(),
                    delta: int_arg(&name, &args[3])?,
                }
            }
            "HINCRBYFLOAT" => {
                arity(&name, n == 4, "expected a key, a field and an increment")?;
                Op::HIncrByFloat {
                    key: key(),
                    field: args[2].clone(),
                    delta: float_arg(&name, &args[3], false)?,
                }
            }
            "SADD" | "SREM" => {
                arity(&name, n >= 3, "expected a key and one or more members")?;
                let members = distinct(&args[2..]);
                if name == "SADD" {
                    Op::SAdd {
                        key: key(),
                        members,
                    }
                } else {
                    Op::SRem {
                        key: key(),
                        members,
                    }
                }
            }
            "ZADD" => {
                arity(
                    &name,
                    n >= 4,
                    "expected a key and one or more score member pairs",
                )?;
                parse_zadd(&name, args)?
            }
            "ZREM" => {
                arity(&name, n >= 3, "expected a key and one or more members")?;
                Op::ZRem {
                    key: key(),
                    members: distinct(&args[2..]),
                }
            }
            "ZINCRBY" => {
                arity(&name, n == 4, "expected a key, an increment and a member")?;
                Op::ZIncrBy {
                    key: key(),
                    delta: float_arg(&name, &args[2], false)?,
                    member: args[3].clone(),
                }
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                arity(
                    &name,
                    n == 3 || n == 4,
                    "expected a key, a time and an optional NX|XX|GT|LT",
                )?;
                let amount = int_arg(&name, &args[2])?;
                let (unit, relative) = match name.as_str() {
                    "EXPIRE" => (1000, true),
                    "PEXPIRE" => (1, true),
                    "EXPIREAT" => (1000, false),
                    _ => (1, false),
                };
                let condition = match args.get(3) {
                    None => None,
                    Some(flag) => Some(match flag.to_ascii_uppercase().as_slice() {
                        b"NX" => ExpireCondition::Nx,
                        b"XX" => ExpireCondition::Xx,
                        b"GT" => ExpireCondition::Gt,
                        b"LT" => ExpireCondition::Lt,
                        other => {
                            return Err(syntax(
                                &name,
                                format!("unsupported option {}", String::from_utf8_lossy(other)),
                            ));
                        }
                    }),
                };
                Op::ExpireAt {
                    key: key(),
                    at_ms: deadline(&name, now_ms, amount, unit, relative)?,
                    condition,
                }
            }
            "PERSIST" => {
                arity(&name, n == 2, "expected a key")?;
                Op::Persist { key: key() }
            }
            _ => return Err(Refusal::Unknown(name)),
        };
        Ok(op)
    }

    /// Why this operation cannot converge under `lww`, if it cannot.
    pub fn order_dependent(&self) -> Option<&'static str> {
        match self {
            Op::Set {
                condition: Some(_), ..
            } => Some(
                "SET with NX or XX writes only depending on whether the key exists at that moment",
            ),
            Op::Set { get: true, .. } => Some("SET with GET returns the value it replaces"),
            Op::ExpireAt {
                condition: Some(_), ..
            } => Some("an expiry with NX, XX, GT or LT depends on the TTL at that moment"),
            Op::ZAdd { flags, .. } if flags.nx || flags.xx || flags.gt || flags.lt => {
                Some("ZADD with NX, XX, GT or LT depends on the scores at that moment")
            }
            Op::ZAdd { flags, .. } if flags.incr => {
                Some("ZADD INCR is an increment; send ZINCRBY, which Regis applies exactly once")
            }
            Op::Raw { why, .. } => Some(why),
            _ => None,
        }
    }

    /// The canonical command for this operation.
    pub fn render(&self) -> Command {
        fn b(s: &'static str) -> Bytes {
            Bytes::from_static(s.as_bytes())
        }
        fn num(v: impl ToString) -> Bytes {
            Bytes::from(v.to_string())
        }
        let args = match self {
            Op::Set {
                key,
                value,
                ttl,
                condition,
                get,
            } => {
                let mut a = vec![b("SET"), key.clone(), value.clone()];
                match condition {
                    Some(SetCondition::Nx) => a.push(b("NX")),
                    Some(SetCondition::Xx) => a.push(b("XX")),
                    None => {}
                }
                if *get {
                    a.push(b("GET"));
                }
                match ttl {
                    Ttl::Clear => {}
                    Ttl::At(ms) => a.extend([b("PXAT"), num(ms)]),
                    Ttl::Keep => a.push(b("KEEPTTL")),
                }
                a
            }
            Op::MSet { pairs } => {
                let mut a = vec![b("MSET")];
                for (k, v) in pairs {
                    a.extend([k.clone(), v.clone()]);
                }
                a
            }
            Op::Del { keys, unlink } => {
                let mut a = vec![if *unlink { b("UNLINK") } else { b("DEL") }];
                a.extend(keys.iter().cloned());
                a
            }
            Op::IncrBy { key, delta } => vec![b("INCRBY"), key.clone(), num(delta)],
            Op::IncrByFloat { key, delta } => vec![b("INCRBYFLOAT"), key.clone(), delta.clone()],
            Op::HSet { key, pairs } => {
                let mut a = vec![b("HSET"), key.clone()];
                for (f, v) in pairs {
                    a.extend([f.clone(), v.clone()]);
                }
                a
            }
            Op::HDel { key, fields } => {
                let mut a = vec![b("HDEL"), key.clone()];
                a.extend(fields.iter().cloned());
                a
            }
            Op::HIncrBy { key, field, delta } => {
                vec![b("HINCRBY"), key.clone(), field.clone(), num(delta)]
            }
            Op::HIncrByFloat { key, field, delta } => {
                vec![b("HINCRBYFLOAT"), key.clone(), field.clone(), delta.clone()]
            }
            Op::SAdd { key, members } => {
                let mut a = vec![b("SADD"), key.clone()];
                a.extend(members.iter().cloned());
                a
            }
            Op::SRem { key, members } => {
                let mut a = vec![b("SREM"), key.clone()];
                a.extend(members.iter().cloned());
                a
            }
            Op::ZAdd { key, flags, pairs } => {
                let mut a = vec![b("ZADD"), key.clone()];
                for (on, flag) in [
                    (flags.nx, "NX"),
                    (flags.xx, "XX"),
                    (flags.gt, "GT"),
                    (flags.lt, "LT"),
                    (flags.ch, "CH"),
                    (flags.incr, "INCR"),
                ] {
                    if on {
                        a.push(b(flag));
                    }
                }
                for (score, member) in pairs {
                    a.extend([score.clone(), member.clone()]);
                }
                a
            }
            Op::ZRem { key, members } => {
                let mut a = vec![b("ZREM"), key.clone()];
                a.extend(members.iter().cloned());
                a
            }
            Op::ZIncrBy { key, delta, member } => {
                vec![b("ZINCRBY"), key.clone(), delta.clone(), member.clone()]
            }
            Op::ExpireAt {
                key,
                at_ms,
                condition,
            } => {
                let mut a = vec![b("PEXPIREAT"), key.clone(), num(at_ms)];
                match condition {
                    Some(ExpireCondition::Nx) => a.push(b("NX")),
                    Some(ExpireCondition::Xx) => a.push(b("XX")),
                    Some(ExpireCondition::Gt) => a.push(b("GT")),
                    Some(ExpireCondition::Lt) => a.push(b("LT")),
                    None => {}
                }
                a
            }
            Op::Persist { key } => vec![b("PERSIST"), key.clone()],
            Op::Raw { args, .. } => args.clone(),
        };
        Command(args)
    }
}

fn parse_set(name: &str, args: &[Bytes], now_ms: u64) -> Result<Op, Refusal> {
    let mut ttl = Ttl::Clear;
    let mut ttl_given = false;
    let mut condition = None;
    let mut get = false;
    let mut i = 3;
    while i < args.len() {
        let flag = args[i].to_ascii_uppercase();
        let expiry_unit = match flag.as_slice() {
            b"EX" => Some((1000, true)),
            b"PX" => Some((1, true)),
            b"EXAT" => Some((1000, false)),
            b"PXAT" => Some((1, false)),
            _ => None,
        };
        if let Some((unit, relative)) = expiry_unit {
            let Some(raw) = args.get(i + 1) else {
                return Err(syntax(name, "syntax error: an expiry option needs a time"));
            };
            if ttl_given {
                return Err(syntax(name, "syntax error: more than one expiry option"));
            }
            let amount = int_arg(name, raw)?;
            if amount <= 0 {
                return Err(syntax(name, "invalid expire time in 'set' command"));
            }
            ttl = Ttl::At(deadline(name, now_ms, amount, unit, relative)?);
            ttl_given = true;
            i += 2;
            continue;
        }
        match flag.as_slice() {
            b"KEEPTTL" => {
                if ttl_given {
                    return Err(syntax(name, "syntax error: more than one expiry option"));
                }
                ttl = Ttl::Keep;
                ttl_given = true;
            }
            b"NX" | b"XX" => {
                if condition.is_some() {
                    return Err(syntax(name, "syntax error: NX and XX are exclusive"));
                }
                condition = Some(if flag.as_slice() == b"NX" {
                    SetCondition::Nx
                } else {
                    SetCondition::Xx
                });
            }
            b"GET" => get = true,
            other => {
                return Err(syntax(
                    name,
                    format!("syntax error near '{}'", String::from_utf8_lossy(other)),
                ));
            }
        }
        i += 1;
    }
    Ok(Op::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        ttl,
        condition,
        get,
    })
}

fn parse_zadd(name: &str, args: &[Bytes]) -> Result<Op, Refusal> {
    let mut flags = ZAddFlags::default();
    let mut i = 2;
    while i < args.len() {
        match args[i].to_ascii_uppercase().as_slice() {
            b"NX" => flags.nx = true,
            b"XX" => flags.xx = true,
            b"GT" => flags.gt = true,
            b"LT" => flags.lt = true,
            b"CH" => flags.ch = true,
            b"INCR" => flags.incr = true,
            _ => break,
        }
        i += 1;
    }
    let rest = &args[i..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(syntax(name, "syntax error: expected score member pairs"));
    }
    if flags.nx && (flags.xx || flags.gt || flags.lt) {
        return Err(syntax(
            name,
            "GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if flags.gt && flags.lt {
        return Err(syntax(
            name,
            "GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if flags.incr && rest.len() != 2 {
        return Err(syntax(
            name,
            "INCR option supports a single increment-element pair",
        ));
    }
    let mut scored = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        let score = float_arg(name, &pair[0], true)
            .map_err(|_| syntax(name, "value is not a valid float"))?;
        scored.push((pair[1].clone(), score));
    }
    let pairs = last_wins(scored)
        .into_iter()
        .map(|(member, score)| (score, member))
        .collect();
    Ok(Op::ZAdd {
        key: args[1].clone(),
        flags,
        pairs,
    })
}

fn check_order_dependent_arity(name: &str, n: usize) -> Result<(), Refusal> {
    let (ok, expected) = match name {
        "APPEND" | "SETNX" | "GETSET" | "RPOPLPUSH" | "RENAME" => (n == 3, "expected 2 arguments"),
        "GETDEL" => (n == 2, "expected a key"),
        "SETRANGE" | "HSETNX" | "LREM" | "LSET" | "LTRIM" | "SMOVE" | "SETBIT" => {
            (n == 4, "expected 3 arguments")
        }
        "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX" => {
            (n == 4, "expected 3 arguments")
        }
        "LINSERT" | "LMOVE" => (n == 5, "expected 4 arguments"),
        "MSETNX" => (n >= 3 && n % 2 == 1, "expected one or more key value pairs"),
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" => {
            (n >= 3, "expected a key and one or more elements")
        }
        "LPOP" | "RPOP" | "SPOP" | "ZPOPMIN" | "ZPOPMAX" => {
            (n == 2 || n == 3, "expected a key and an optional count")
        }
        "COPY" => (n >= 3, "expected a source and a destination"),
        _ => (n >= 2, "expected at least a key"),
    };
    arity(name, ok, expected)
}

/// Where the keys are in an order-dependent command: `(first, step)` — every `step`-th
/// argument from `first` up to `last` (inclusive, `None`: to the end).
fn raw_key_positions(name: &[u8]) -> (usize, usize, Option<usize>) {
    match name {
        b"MSETNX" => (1, 2, None),
        b"RENAME" | b"COPY" | b"RPOPLPUSH" | b"LMOVE" | b"SMOVE" => (1, 1, Some(2)),
        _ => (1, 1, Some(1)),
    }
}

impl Op {
    /// The keys this operation writes (every key position, for order-dependent commands
    /// too).
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            Op::MSet { pairs } => pairs.iter().map(|(k, _)| k).collect(),
            Op::Del { keys, .. } => keys.iter().collect(),
            Op::Set { key, .. }
            | Op::IncrBy { key, .. }
            | Op::IncrByFloat { key, .. }
            | Op::HSet { key, .. }
            | Op::HDel { key, .. }
            | Op::HIncrBy { key, .. }
            | Op::HIncrByFloat { key, .. }
            | Op::SAdd { key, .. }
            | Op::SRem { key, .. }
            | Op::ZAdd { key, .. }
            | Op::ZRem { key, .. }
            | Op::ZIncrBy { key, .. }
            | Op::ExpireAt { key, .. }
            | Op::Persist { key } => vec![key],
            Op::Raw { args, .. } => {
                let (first, step, last) = raw_key_positions(args[0].as_ref());
                let last = last.unwrap_or(args.len().saturating_sub(1));
                args.iter()
                    .enumerate()
                    .skip(first)
                    .step_by(step)
                    .take_while(|(i, _)| *i <= last)
                    .map(|(_, key)| key)
                    .collect()
            }
        }
    }
}

//! What a write answers over RESP once it is durable.
//!
//! Redis computes a write's reply from the data it holds; Regis acknowledges a write once the
//! message is on the hub's disk, long before (and independently of) any region applying it,
//! and never reads a region. So every reply says "published durably" in the type the client
//! library expects for that command, with a value fixed by one rule, documented in
//! `docs/resp.md`:
//!
//! > the reply Redis gives when the command takes its whole effect: every key, field or
//! > member it names is changed, and counters start from zero.
//!
//! So `SET` answers `+OK`, `DEL a b` answers `:2`, `HSET h f v` `:1`, `EXPIRE` `:1`, `INCR`
//! `:1` and `INCRBY k 5` `:5` (the increment, not the new value), `INCRBYFLOAT k 0.5` the bulk
//! string `0.5`. A reply that would carry a value read from the data (`SET ... GET`,
//! `GETSET`, `LPOP`, …, accepted under `convergence = "none"` only) is a null.

use std::collections::HashSet;

use bytes::Bytes;

use super::reply::Reply;

/// The reply for a write named `name` (upper case) with arguments `args` (name first),
/// sent once its message is durable.
pub fn success(name: &str, args: &[Bytes]) -> Reply {
    let n = args.len();
    match name {
        "SET" => {
            let get = args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"GET"));
            if get { Reply::Null } else { OK }
        }
        "SETEX" | "PSETEX" | "MSET" | "HMSET" | "LSET" | "LTRIM" | "RENAME" => OK,
        "DEL" | "UNLINK" => Reply::Integer(distinct(args.iter().skip(1))),
        "INCR" => Reply::Integer(1),
        "DECR" => Reply::Integer(-1),
        "INCRBY" => Reply::Integer(integer(args.get(2))),
        "DECRBY" => Reply::Integer(integer(args.get(2)).checked_neg().unwrap_or(0)),
        "INCRBYFLOAT" => Reply::Bulk(arg(args, 2)),
        "HINCRBY" => Reply::Integer(integer(args.get(3))),
        "HINCRBYFLOAT" => Reply::Bulk(arg(args, 3)),
        "HSET" => Reply::Integer(distinct(args.iter().skip(2).step_by(2))),
        "HDEL" | "SADD" | "SREM" | "ZREM" => Reply::Integer(distinct(args.iter().skip(2))),
        "ZADD" => zadd(args),
        "ZINCRBY" => Reply::Double(arg(args, 2)),
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "PERSIST" => Reply::Integer(1),
        // Order-dependent writes, accepted under convergence = "none".
        "APPEND" => Reply::Integer(arg(args, 2).len() as i64),
        "SETRANGE" => Reply::Integer(
            integer(args.get(2))
                .max(0)
                .saturating_add(arg(args, 3).len() as i64),
        ),
        "SETNX" | "MSETNX" | "HSETNX" | "SMOVE" | "COPY" => Reply::Integer(1),
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" => Reply::Integer(n.saturating_sub(2) as i64),
        "GETSET" | "GETDEL" | "LPOP" | "RPOP" | "LMOVE" | "RPOPLPUSH" | "SPOP" => Reply::Null,
        "ZPOPMIN" | "ZPOPMAX" => Reply::Array(Vec::new()),
        "LREM" | "LINSERT" | "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX"
        | "SETBIT" => Reply::Integer(0),
        // Anything else the hub accepted: the generic acknowledgement.
        _ => OK,
    }
}

const OK: Reply = Reply::Status("OK");

fn arg(args: &[Bytes], i: usize) -> Bytes {
    args.get(i).cloned().unwrap_or_default()
}

fn integer(raw: Option<&Bytes>) -> i64 {
    raw.and_then(|r| std::str::from_utf8(r).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// How many distinct byte strings `items` holds.
fn distinct<'a>(items: impl Iterator<Item = &'a Bytes> + Clone) -> i64 {
    let mut iter = items.clone();
    match (iter.next(), iter.next()) {
        (None, _) => 0,
        (Some(_), None) => 1,
        _ => items.map(|b| b.as_ref()).collect::<HashSet<&[u8]>>().len() as i64,
    }
}

/// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member ...`: the members it names, or with
/// `INCR` the increment.
fn zadd(args: &[Bytes]) -> Reply {
    let mut i = 2;
    let mut incr = false;
    while let Some(flag) = args.get(i) {
        let known = [&b"NX"[..], b"XX", b"GT", b"LT", b"CH", b"INCR"]
            .iter()
            .any(|f| flag.eq_ignore_ascii_case(f));
        if !known {
            break;
        }
        incr |= flag.eq_ignore_ascii_case(b"INCR");
        i += 1;
    }
    if incr {
        return Reply::Double(arg(args, i));
    }
    Reply::Integer(distinct(args.iter().skip(i + 1).step_by(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(command: &str) -> Reply {
        let args: Vec<Bytes> = command
            .split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        success(&command.split(' ').next().unwrap().to_uppercase(), &args)
    }

    #[test]
    fn the_rule_in_examples() {
        assert_eq!(reply("SET k v"), OK);
        assert_eq!(reply("SET k v EX 10"), OK);
        assert_eq!(reply("SET k v get"), Reply::Null);
        assert_eq!(reply("MSET a 1 b 2"), OK);
        assert_eq!(reply("DEL a b a"), Reply::Integer(2));
        assert_eq!(reply("INCR c"), Reply::Integer(1));
        assert_eq!(reply("DECR c"), Reply::Integer(-1));
        assert_eq!(reply("INCRBY c 5"), Reply::Integer(5));
        assert_eq!(reply("DECRBY c 5"), Reply::Integer(-5));
        assert_eq!(reply("INCRBYFLOAT c 0.5"), Reply::text("0.5"));
        assert_eq!(reply("HSET h a 1 b 2 a 3"), Reply::Integer(2));
        assert_eq!(reply("HMSET h a 1"), OK);
        assert_eq!(reply("HDEL h a b"), Reply::Integer(2));
        assert_eq!(reply("HINCRBY h f -3"), Reply::Integer(-3));
        assert_eq!(reply("SADD s a b c"), Reply::Integer(3));
        assert_eq!(reply("ZADD z 1 a 2 b"), Reply::Integer(2));
        assert_eq!(reply("ZADD z CH 1 a 2 a"), Reply::Integer(1));
        assert_eq!(
            reply("ZADD z INCR 2.5 a"),
            Reply::Double(Bytes::from_static(b"2.5"))
        );
        assert_eq!(
            reply("ZINCRBY z 2 a"),
            Reply::Double(Bytes::from_static(b"2"))
        );
        assert_eq!(reply("EXPIRE k 10"), Reply::Integer(1));
        assert_eq!(reply("PERSIST k"), Reply::Integer(1));
        assert_eq!(reply("LPUSH l a b"), Reply::Integer(2));
        assert_eq!(reply("APPEND k abc"), Reply::Integer(3));
        assert_eq!(reply("SETRANGE k 5 abc"), Reply::Integer(8));
        assert_eq!(reply("GETSET k v"), Reply::Null);
        assert_eq!(reply("ZPOPMIN z"), Reply::Array(vec![]));
    }
}

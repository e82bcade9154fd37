//! Which Redis commands Regis replicates, and how each is checked and rewritten at ingress.
//!
//! Every command a producer sends passes through [`prepare`] before anything is published:
//! reads, connection commands, commands that could wreck every region and unknown commands
//! are refused with a [`Refusal`] that names the command and says what to do instead; writes
//! are parsed into an [`Op`], checked for arity and syntax, and rendered back in a canonical
//! form that no longer depends on when it is applied: relative expiries (`EX`, `PX`,
//! `EXPIRE`, `SETEX`, …) become absolute deadlines (`PXAT`, `PEXPIREAT`), `INCR`/`DECR`
//! become `INCRBY`, `HMSET` becomes `HSET`. Under `convergence = "lww"` order-dependent
//! writes (list pushes, `APPEND`, `SET NX`, …) are refused because no version order can make
//! them converge; `convergence = "none"` passes them through.
//!
//! Keys starting with [`RESERVED_KEY_PREFIX`] (`__regis:`) hold Regis's own convergence
//! metadata in every region, so no command may write one, in any mode and at any key
//! position.
//!
//! The table of what is accepted lives in `docs/commands.md`; [`classify`] is its source.

mod op;

pub use op::{ExpireCondition, Op, SetCondition, Ttl, ZAddFlags};

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Prefix of every key Regis keeps for itself in the regions (convergence metadata); no
/// command a producer sends may write such a key.
pub const RESERVED_KEY_PREFIX: &[u8] = b"__regis:";

/// How regions reconcile concurrent updates (the top-level `convergence` config key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Convergence {
    /// Last-writer-wins registers by version: every region converges whatever the delivery
    /// order. Order-dependent commands are refused.
    #[default]
    Lww,
    /// Commands are applied as they arrive, as the original system did. Fastest; updates of
    /// one key delivered out of order can leave an older value in place.
    None,
}

impl fmt::Display for Convergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Convergence::Lww => "lww",
            Convergence::None => "none",
        })
    }
}

/// Why a command was refused at ingress. Nothing of a request holding it is published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The command had no name.
    #[error("empty command: send a Redis write command such as [\"SET\", \"key\", \"value\"]")]
    Empty,
    /// Not a Redis command Regis knows.
    #[error(
        "unknown command '{0}': Regis replicates only the Redis write commands listed in docs/commands.md"
    )]
    Unknown(String),
    /// A read: replication only carries writes.
    #[error("{0} is a read: Regis replicates writes only; read from your regional Redis")]
    Read(String),
    /// A connection or transaction command, meaningful only on a Redis connection.
    #[error("{0} is a connection command, not a write; it is not replicated")]
    Connection(String),
    /// A command that could wreck every region at once.
    #[error("{name} is refused: {why}")]
    Forbidden { name: String, why: &'static str },
    /// Wrong number of arguments.
    #[error("wrong number of arguments for '{name}' command: {expected}")]
    Arity {
        name: String,
        expected: &'static str,
    },
    /// Arguments that Redis itself would reject.
    #[error("{name}: {detail}")]
    Syntax { name: String, detail: String },
    /// An order-dependent write under `convergence = "lww"`.
    #[error(
        "{name} is refused under convergence = \"lww\": {why}, so regions that receive updates in a different order would diverge; convergence = \"none\" accepts it"
    )]
    OrderDependent { name: String, why: &'static str },
    /// A key in the prefix Regis reserves for its own metadata.
    #[error(
        "{name} writes the key {key}, which starts with \"__regis:\": that prefix is reserved for the convergence metadata Regis keeps in every region; use another key name"
    )]
    ReservedKey {
        /// The command.
        name: String,
        /// The key, shortened and quoted for display.
        key: String,
    },
}

impl Refusal {
    /// A short machine-readable code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Empty => "empty_command",
            Refusal::Unknown(_) => "unknown_command",
            Refusal::Read(_) => "read_command",
            Refusal::Connection(_) => "connection_command",
            Refusal::Forbidden { .. } => "forbidden_command",
            Refusal::Arity { .. } => "wrong_arity",
            Refusal::Syntax { .. } => "syntax_error",
            Refusal::OrderDependent { .. } => "order_dependent_command",
            Refusal::ReservedKey { .. } => "reserved_key",
        }
    }
}

/// What kind of command a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A write Regis replicates (under `lww` unless [`Op::order_dependent`] says otherwise).
    Write,
    /// A write whose effect depends on the current value: accepted under `none` only.
    OrderDependent(&'static str),
    /// A read.
    Read,
    /// A connection, transaction or server-introspection command.
    Connection,
    /// Refused in every mode.
    Forbidden(&'static str),
    /// Not a command Regis knows.
    Unknown,
}

/// Classifies an (upper-case) command name.
pub fn classify(upper_name: &str) -> Class {
    const WRITES: &[&str] = &[
        "SET",
        "SETEX",
        "PSETEX",
        "MSET",
        "DEL",
        "UNLINK",
        "INCR",
        "DECR",
        "INCRBY",
        "DECRBY",
        "INCRBYFLOAT",
        "HSET",
        "HMSET",
        "HDEL",
        "HINCRBY",
        "HINCRBYFLOAT",
        "SADD",
        "SREM",
        "ZADD",
        "ZREM",
        "ZINCRBY",
        "EXPIRE",
        "PEXPIRE",
        "EXPIREAT",
        "PEXPIREAT",
        "PERSIST",
    ];
    const ORDER_DEPENDENT: &[(&str, &str)] = &[
        ("APPEND", "its result depends on the current value"),
        ("SETRANGE", "its result depends on the current value"),
        (
            "SETNX",
            "it writes only if the key is missing at that moment",
        ),
        (
            "MSETNX",
            "it writes only if the keys are missing at that moment",
        ),
        ("GETSET", "it returns and replaces the current value"),
        ("GETDEL", "it returns and deletes the current value"),
        (
            "HSETNX",
            "it writes only if the field is missing at that moment",
        ),
        ("LPUSH", "list positions depend on the order of pushes"),
        ("RPUSH", "list positions depend on the order of pushes"),
        ("LPUSHX", "list positions depend on the order of pushes"),
        ("RPUSHX", "list positions depend on the order of pushes"),
        ("LPOP", "it removes whatever is at the head at that moment"),
        ("RPOP", "it removes whatever is at the tail at that moment"),
        ("LREM", "list positions depend on the order of updates"),
        ("LSET", "list positions depend on the order of updates"),
        ("LTRIM", "list positions depend on the order of updates"),
        ("LINSERT", "list positions depend on the order of updates"),
        ("LMOVE", "it moves whatever is at an end at that moment"),
        ("RPOPLPUSH", "it moves whatever is at an end at that moment"),
        ("SPOP", "it removes a random member"),
        ("SMOVE", "it depends on membership at that moment"),
        ("ZPOPMIN", "it removes whatever ranks first at that moment"),
        ("ZPOPMAX", "it removes whatever ranks last at that moment"),
        (
            "ZREMRANGEBYSCORE",
            "it removes whatever is in the range at that moment",
        ),
        (
            "ZREMRANGEBYRANK",
            "it removes whatever is in the range at that moment",
        ),
        (
            "ZREMRANGEBYLEX",
            "it removes whatever is in the range at that moment",
        ),
        ("SETBIT", "it edits the current value in place"),
        ("RENAME", "it moves whatever the key holds at that moment"),
        ("COPY", "it copies whatever the key holds at that moment"),
    ];
    const READS: &[&str] = &[
        "GET",
        "MGET",
        "GETRANGE",
        "SUBSTR",
        "STRLEN",
        "GETEX",
        "GETBIT",
        "BITCOUNT",
        "BITPOS",
        "EXISTS",
        "TYPE",
        "TTL",
        "PTTL",
        "EXPIRETIME",
        "PEXPIRETIME",
        "HGET",
        "HMGET",
        "HGETALL",
        "HKEYS",
        "HVALS",
        "HLEN",
        "HEXISTS",
        "HSTRLEN",
        "HRANDFIELD",
        "HSCAN",
        "SMEMBERS",
        "SISMEMBER",
        "SMISMEMBER",
        "SCARD",
        "SRANDMEMBER",
        "SINTER",
        "SUNION",
        "SDIFF",
        "SINTERCARD",
        "SSCAN",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "ZRANGEBYLEX",
        "ZREVRANGE",
        "ZREVRANGEBYSCORE",
        "ZREVRANGEBYLEX",
        "ZSCORE",
        "ZMSCORE",
        "ZCARD",
        "ZCOUNT",
        "ZLEXCOUNT",
        "ZRANK",
        "ZREVRANK",
        "ZRANDMEMBER",
        "ZSCAN",
        "LRANGE",
        "LLEN",
        "LINDEX",
        "LPOS",
        "SCAN",
        "DBSIZE",
        "RANDOMKEY",
        "OBJECT",
        "DUMP",
        "MEMORY",
        "PFCOUNT",
        "GEODIST",
        "GEOPOS",
        "GEOSEARCH",
        "XRANGE",
        "XREAD",
        "XLEN",
        "LCS",
        "SORT_RO",
        "TOUCH",
    ];
    const CONNECTION: &[&str] = &[
        "PING",
        "ECHO",
        "SELECT",
        "AUTH",
        "HELLO",
        "CLIENT",
        "INFO",
        "COMMAND",
        "QUIT",
        "RESET",
        "MULTI",
        "EXEC",
        "DISCARD",
        "WATCH",
        "UNWATCH",
        "TIME",
        "LASTSAVE",
        "ROLE",
        "LATENCY",
        "SLOWLOG",
        "READONLY",
        "READWRITE",
        "WAIT",
        "WAITAOF",
    ];
    const WRECKS: &str = "it could wreck every region at once; run it against each regional Redis yourself if you really mean it";
    const FORBIDDEN: &[(&str, &str)] = &[
        ("FLUSHALL", WRECKS),
        ("FLUSHDB", WRECKS),
        ("SWAPDB", WRECKS),
        (
            "CONFIG",
            "server configuration is per region, not replicated",
        ),
        (
            "EVAL",
            "scripts cannot be checked for convergence or safety; send the writes they perform instead",
        ),
        (
            "EVALSHA",
            "scripts cannot be checked for convergence or safety; send the writes they perform instead",
        ),
        (
            "EVAL_RO",
            "scripts are not replicated; read from your regional Redis",
        ),
        (
            "EVALSHA_RO",
            "scripts are not replicated; read from your regional Redis",
        ),
        ("SCRIPT", "scripts are not replicated"),
        ("FUNCTION", "functions are not replicated"),
        (
            "FCALL",
            "functions cannot be checked for convergence or safety; send the writes they perform instead",
        ),
        (
            "FCALL_RO",
            "functions are not replicated; read from your regional Redis",
        ),
        ("SHUTDOWN", WRECKS),
        ("DEBUG", WRECKS),
        ("MODULE", WRECKS),
        ("REPLICAOF", WRECKS),
        ("SLAVEOF", WRECKS),
        ("FAILOVER", WRECKS),
        ("CLUSTER", WRECKS),
        ("ACL", "access control is per region, not replicated"),
        (
            "KEYS",
            "KEYS blocks a Redis while it scans every key; use SCAN against your regional Redis",
        ),
        ("SAVE", "persistence is per region"),
        ("BGSAVE", "persistence is per region"),
        ("BGREWRITEAOF", "persistence is per region"),
        ("SYNC", "replication streams are not replicated"),
        ("PSYNC", "replication streams are not replicated"),
        ("MONITOR", "monitoring is per region"),
        ("MIGRATE", "it moves keys between servers"),
        ("MOVE", "it moves keys between databases"),
        ("RESTORE", "raw serialized values cannot be versioned"),
        (
            "SORT",
            "SORT ... STORE writes whatever the sort yields at that moment",
        ),
        (
            "PUBLISH",
            "pub/sub messages are not data; publish to your regional Redis",
        ),
        ("SUBSCRIBE", "pub/sub is per region"),
        ("PSUBSCRIBE", "pub/sub is per region"),
        ("SSUBSCRIBE", "pub/sub is per region"),
    ];
    if WRITES.contains(&upper_name) {
        return Class::Write;
    }
    if let Some((_, why)) = ORDER_DEPENDENT.iter().find(|(name, _)| *name == upper_name) {
        return Class::OrderDependent(why);
    }
    if let Some((_, why)) = FORBIDDEN.iter().find(|(name, _)| *name == upper_name) {
        return Class::Forbidden(why);
    }
    if READS.contains(&upper_name) {
        return Class::Read;
    }
    if CONNECTION.contains(&upper_name) {
        return Class::Connection;
    }
    Class::Unknown
}

/// A command as stored in a message: its name (upper case) followed by its arguments.
///
/// Arguments are binary-safe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Command(pub Vec<Bytes>);

impl Command {
    /// A command from string arguments (tests and examples).
    pub fn from_strs(args: &[&str]) -> Self {
        Command(
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
        )
    }

    /// The command name, as stored (canonical commands are upper case).
    pub fn name(&self) -> &[u8] {
        self.0.first().map_or(&[], |n| n.as_ref())
    }

    /// Bytes the command's arguments occupy.
    pub fn payload_len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// A short human-readable rendering, for dead-letter previews and logs.
    pub fn preview(&self, max_chars: usize) -> String {
        let mut out = String::new();
        for (i, arg) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let text = String::from_utf8_lossy(arg);
            if text.chars().any(|c| c.is_whitespace() || c.is_control()) || text.is_empty() {
                out.push_str(&format!("{text:?}"));
            } else {
                out.push_str(&text);
            }
            if out.chars().count() > max_chars {
                let cut: String = out.chars().take(max_chars).collect();
                return cut + "…";
            }
        }
        out
    }
}

/// Checks one command a producer sent and returns it in canonical form, ready to publish.
///
/// `now_ms` is the ingress wall clock, used to turn relative expiries into deadlines.
pub fn prepare(args: &[Bytes], mode: Convergence, now_ms: u64) -> Result<Command, Refusal> {
    let op = Op::parse(args, now_ms)?;
    if mode == Convergence::Lww
        && let Some(why) = op.order_dependent()
    {
        return Err(Refusal::OrderDependent {
            name: upper_name(args),
            why,
        });
    }
    Ok(op.render())
}

/// The command name of `args` in upper case (lossy for non-UTF-8 names).
pub fn upper_name(args: &[Bytes]) -> String {
    args.first()
        .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    fn prep(s: &str, mode: Convergence) -> Result<String, Refusal> {
        prepare(&args(s), mode, 1_000_000).map(|c| c.preview(1000))
    }

    #[test]
    fn relative_expiries_become_deadlines() {
        let lww = Convergence::Lww;
        assert_eq!(prep("set k v ex 10", lww).unwrap(), "SET k v PXAT 1010000");
        assert_eq!(prep("SET k v PX 5", lww).unwrap(), "SET k v PXAT 1000005");
        assert_eq!(prep("SET k v EXAT 7", lww).unwrap(), "SET k v PXAT 7000");
        assert_eq!(prep("SETEX k 2 v", lww).unwrap(), "SET k v PXAT 1002000");
        assert_eq!(prep("PSETEX k 2 v", lww).unwrap(), "SET k v PXAT 1000002");
        assert_eq!(prep("EXPIRE k 3", lww).unwrap(), "PEXPIREAT k 1003000");
        assert_eq!(prep("PEXPIRE k 3", lww).unwrap(), "PEXPIREAT k 1000003");
        assert_eq!(prep("EXPIREAT k 3", lww).unwrap(), "PEXPIREAT k 3000");
        assert_eq!(prep("SET k v KEEPTTL", lww).unwrap(), "SET k v KEEPTTL");
    }

    #[test]
    fn counters_are_canonical() {
        let lww = Convergence::Lww;
        assert_eq!(prep("incr c", lww).unwrap(), "INCRBY c 1");
        assert_eq!(prep("decr c", lww).unwrap(), "INCRBY c -1");
        assert_eq!(prep("decrby c 4", lww).unwrap(), "INCRBY c -4");
        assert_eq!(prep("hmset h a 1 b 2", lww).unwrap(), "HSET h a 1 b 2");
        assert!(matches!(
            prep("decrby c -9223372036854775808", lww),
            Err(Refusal::Syntax { .. })
        ));
        assert!(matches!(
            prep("incrby c x", lww),
            Err(Refusal::Syntax { .. })
        ));
        assert!(matches!(
            prep("incrbyfloat c nan", lww),
            Err(Refusal::Syntax { .. })
        ));
    }

    #[test]
    fn duplicate_fields_keep_the_last_assignment() {
        let lww = Convergence::Lww;
        assert_eq!(prep("HSET h a 1 a 2", lww).unwrap(), "HSET h a 2");
        assert_eq!(prep("MSET k 1 j 2 k 3", lww).unwrap(), "MSET j 2 k 3");
        assert_eq!(prep("ZADD z 1 m 2 m", lww).unwrap(), "ZADD z 2 m");
    }

    #[test]
    fn refusals_name_the_command_and_reason() {
        let lww = Convergence::Lww;
        let read = prep("GET k", lww).unwrap_err();
        assert_eq!(read, Refusal::Read("GET".into()));
        assert!(read.to_string().contains("read from your regional Redis"));
        let flush = prep("flushall", lww).unwrap_err();
        assert!(
            flush.to_string().starts_with("FLUSHALL is refused"),
            "{flush}"
        );
        assert!(matches!(prep("BOGUS x", lww), Err(Refusal::Unknown(n)) if n == "BOGUS"));
        let arity = prep("SET k", lww).unwrap_err();
        assert!(
            arity
                .to_string()
                .contains("wrong number of arguments for 'SET'")
        );
        assert!(matches!(prep("HSET h f", lww), Err(Refusal::Arity { .. })));
        assert!(matches!(
            prep("SET k v EX 0", lww),
            Err(Refusal::Syntax { .. })
        ));
        assert!(matches!(
            prep("SET k v EX 1 PX 2", lww),
            Err(Refusal::Syntax { .. })
        ));
        assert!(matches!(prep("PING", lww), Err(Refusal::Connection(_))));
        assert!(matches!(prepare(&[], lww, 0), Err(Refusal::Empty)));
    }

    #[test]
    fn order_dependent_writes_depend_on_the_mode() {
        for cmd in [
            "LPUSH l a",
            "APPEND k v",
            "SET k v NX",
            "SET k v GET",
            "HSETNX h f v",
            "EXPIRE k 10 NX",
            "ZADD z GT 1 m",
            "GETSET k v",
        ] {
            let err = prep(cmd, Convergence::Lww).unwrap_err();
            assert!(
                matches!(err, Refusal::OrderDependent { .. }),
                "{cmd}: {err:?}"
            );
            assert!(
                err.to_string()
                    .contains("convergence = \"none\" accepts it")
            );
            assert!(prep(cmd, Convergence::None).is_ok(), "{cmd} under none");
        }
        assert_eq!(
            prep("SET k v NX EX 1", Convergence::None).unwrap(),
            "SET k v NX PXAT 1001000"
        );
    }

    #[test]
    fn keys_in_the_reserved_prefix_are_refused_in_every_mode_at_every_position() {
        for mode in [Convergence::Lww, Convergence::None] {
            for cmd in [
                "SET __regis:m:{k} x",
                "set __regis:m:{k} x ex 10",
                "SETEX __regis:x 10 v",
                "MSET a 1 __regis:h:{a} 2",
                "MSET __regis:c:{a} 1 b 2",
                "DEL a b __regis:m:{a}",
                "UNLINK __regis:m:{a} a",
                "INCR __regis:n",
                "INCRBYFLOAT __regis:n 1.5",
                "HSET __regis:h:{k} f v",
                "HDEL __regis:h:{k} f",
                "HINCRBY __regis:h f 1",
                "SADD __regis:s m",
                "SREM __regis:s m",
                "ZADD __regis:z 1 m",
                "ZREM __regis:z m",
                "ZINCRBY __regis:z 1 m",
                "EXPIRE __regis:m:{k} 10",
                "PEXPIREAT __regis:m:{k} 10",
                "PERSIST __regis:m:{k}",
            ] {
                let err = prep(cmd, mode).unwrap_err();
                assert!(
                    matches!(&err, Refusal::ReservedKey { key, .. } if key.contains("__regis:")),
                    "{cmd} under {mode}: {err:?}"
                );
                assert_eq!(err.code(), "reserved_key");
                assert!(
                    err.to_string().contains("reserved")
                        && err.to_string().contains("use another key name"),
                    "{err}"
                );
            }
        }
        // Order-dependent writes (accepted under `none`) are checked at every key position.
        for cmd in [
            "LPUSH __regis:l x",
            "APPEND __regis:k x",
            "RENAME a __regis:m:{a}",
            "RENAME __regis:m:{a} a",
            "COPY a __regis:m:{a}",
            "RPOPLPUSH a __regis:l",
            "LMOVE a __regis:l LEFT RIGHT",
            "SMOVE a __regis:s m",
            "MSETNX a 1 __regis:m:{a} 2",
        ] {
            let err = prep(cmd, Convergence::None).unwrap_err();
            assert!(matches!(err, Refusal::ReservedKey { .. }), "{cmd}: {err:?}");
            let lww = prep(cmd, Convergence::Lww).unwrap_err();
            assert!(matches!(lww, Refusal::ReservedKey { .. }), "{cmd}: {lww:?}");
        }
        // Only the prefix is reserved: values, fields, members, and keys merely containing it
        // or resembling it are fine.
        for cmd in [
            "SET k __regis:m:{k}",
            "HSET h __regis:f __regis:v",
            "SADD s __regis:m",
            "ZADD z 1 __regis:m",
            "SET x__regis:m v",
            "SET __regis v",
            "SET __REGIS:m v",
            "MSET a __regis: b 1",
        ] {
            assert!(prep(cmd, Convergence::Lww).is_ok(), "{cmd}");
        }
        assert!(prep("LPUSH l __regis:x", Convergence::None).is_ok());
    }

    #[test]
    fn binary_values_survive() {
        let value = Bytes::from_static(&[0, 159, 146, 150, b' ', b'\n']);
        let cmd = prepare(
            &[
                Bytes::from_static(b"SET"),
                Bytes::from_static(b"k"),
                value.clone(),
            ],
            Convergence::Lww,
            0,
        )
        .unwrap();
        assert_eq!(cmd.0[2], value);
    }
}

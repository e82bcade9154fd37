//! A whole region's user data as one comparable value, for the demo and the tests.
//!
//! [`Snapshot::read`] SCANs every key outside Regis's own metadata (`__regis:`), reads its
//! type, value and TTL, and returns them sorted, so two regions compare with `==` and a
//! difference prints readably. It holds everything in memory: meant for small data sets.
//! (`regis verify` compares large regions in bounded memory.)

use std::collections::BTreeMap;
use std::fmt;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::apply::lww::META_PREFIX;

/// One key's type, value and remaining TTL.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A string.
    String(Vec<u8>),
    /// A hash, sorted by field.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// A set, sorted.
    Set(Vec<Vec<u8>>),
    /// A sorted set, by member.
    ZSet(Vec<(Vec<u8>, f64)>),
    /// Another type, described.
    Other(String),
}

/// Key → (entry, TTL in ms if any).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The keys.
    pub keys: BTreeMap<Vec<u8>, (Entry, Option<i64>)>,
}

impl Snapshot {
    /// Reads database `db` of the Redis at `url`.
    pub async fn read(url: &str, db: u32) -> redis::RedisResult<Snapshot> {
        let mut conn = crate::redis_process::connect(url).await?;
        if db != 0 {
            redis::cmd("SELECT")
                .arg(db)
                .query_async::<()>(&mut conn)
                .await?;
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch.into_iter().filter(|k| !k.starts_with(META_PREFIX)));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut snapshot = Snapshot::default();
        for key in keys {
            if let Some(entry) = read_key(&mut conn, &key).await? {
                let pttl: i64 = conn.pttl(&key).await?;
                snapshot
                    .keys
                    .insert(key, (entry, (pttl >= 0).then_some(pttl)));
            }
        }
        Ok(snapshot)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `other` holds the same keys, types and values, with TTLs within `ttl_slack_ms`.
    pub fn matches(&self, other: &Snapshot, ttl_slack_ms: i64) -> bool {
        self.differences(other, ttl_slack_ms, 1).is_empty()
    }

    /// Up to `limit` differences, described.
    pub fn differences(&self, other: &Snapshot, ttl_slack_ms: i64, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        for (key, (entry, ttl)) in &self.keys {
            if out.len() >= limit {
                return out;
            }
            match other.keys.get(key) {
                None => out.push(format!("{}: only on the left ({entry:?})", show(key))),
                Some((other_entry, other_ttl)) => {
                    if entry != other_entry {
                        out.push(format!("{}: {entry:?} != {other_entry:?}", show(key)));
                    } else {
                        let close = match (ttl, other_ttl) {
                            (None, None) => true,
                            (Some(a), Some(b)) => (a - b).abs() <= ttl_slack_ms,
                            _ => false,
                        };
                        if !close {
                            out.push(format!("{}: TTL {ttl:?} != {other_ttl:?}", show(key)));
                        }
                    }
                }
            }
        }
        for (key, (entry, _)) in &other.keys {
            if out.len() >= limit {
                break;
            }
            if !self.keys.contains_key(key) {
                out.push(format!("{}: only on the right ({entry:?})", show(key)));
            }
        }
        out
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, (entry, ttl)) in &self.keys {
            writeln!(
                f,
                "{} = {entry:?} ttl={ttl:?}",
                String::from_utf8_lossy(key)
            )?;
        }
        Ok(())
    }
}

async fn read_key(
    conn: &mut MultiplexedConnection,
    key: &[u8],
) -> redis::RedisResult<Option<Entry>> {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await?;
    Ok(Some(match kind.as_str() {
        "none" => return Ok(None),
        "string" => Entry::String(conn.get(key).await?),
        "hash" => {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = conn.hgetall(key).await?;
            pairs.sort();
            Entry::Hash(pairs)
        }
        "set" => {
            let mut members: Vec<Vec<u8>> = conn.smembers(key).await?;
            members.sort();
            Entry::Set(members)
        }
        "zset" => {
            let mut members: Vec<(Vec<u8>, f64)> = conn.zrange_withscores(key, 0, -1).await?;
            members.sort_by(|a, b| a.0.cmp(&b.0));
            Entry::ZSet(members)
        }
        other => Entry::Other(other.to_string()),
    }))
}

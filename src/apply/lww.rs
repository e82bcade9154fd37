//! `convergence = "lww"`: every write is a versioned register, applied by one Lua script.
//!
//! The script (`lww.lua`, loaded once per Redis and called by SHA) applies a whole batch in
//! one round trip. For every data key it keeps, in the same cluster slot, a small state string
//! — the key's floor version (last whole-key write or delete) and its TTL register — and, for
//! collections, a hash of one version per hash field, set member and sorted-set member, and,
//! for counters, a sorted set of increment records that makes each increment apply once and
//! lets a late `SET` or `DEL` reset a counter correctly. An operation at version V writes only
//! where V is newer than the register it writes and the key's floor, so any delivery order,
//! with any duplicates, ends in the state of applying every message once in version order.
//! The script reads every state of a batch with one `MGET` and writes plain SETs and states
//! back with one `MSET`, because inside Redis each `redis.call` costs more than the write it
//! makes.
//! Metadata older than `tombstone_ttl` (the horizon) is collected as the script goes:
//! counter records, and the registers of members removed from a collection (a prune floor in
//! the key's state then stands for them).
//! `docs/convergence.md` describes the metadata and its cost.
//!
//! Metadata key names: for a data key `K`, `__regis:m:{K}` (state), `__regis:h:{K}` (member
//! registers) and `__regis:c:{K}` (counter records) when `K` contains no `}`;
//! `__regis:m:{tag}K` when `K` has a hashtag `{tag}`; otherwise `__regis:m:{T}K` with a tag
//! `T` chosen to hash to `K`'s slot.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::failure::{Failure, classify};
use crate::clock::{Version, now_ms};
use crate::command::{Op, Ttl};
use crate::envelope::Envelope;

/// Prefix of every key Regis writes for itself; `verify` skips these keys, and the ingress
/// refuses commands that write one ([`crate::command::RESERVED_KEY_PREFIX`]).
pub const META_PREFIX: &[u8] = crate::command::RESERVED_KEY_PREFIX;

/// The batch script, compiled once per process.
fn script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("lww.lua")))
}

/// The fast path for plain SETs (`lww_fast.lua`).
fn fast_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("lww_fast.lua")))
}

/// The key and value of a message that is one plain `SET key value` (no TTL option), the
/// case the fast script handles.
fn plain_set(envelope: &Envelope) -> Option<(Bytes, Bytes)> {
    let [command] = envelope.commands.as_slice() else {
        return None;
    };
    match command.0.as_slice() {
        [name, key, value] if name.as_ref() == b"SET" => Some((key.clone(), value.clone())),
        _ => None,
    }
}

/// The cluster-slot tag `K`'s metadata keys share with it, with braces.
fn slot_suffix(key: &[u8]) -> Vec<u8> {
    // An empty `{}` would not be a hashtag, hence the length check.
    if !key.is_empty() && !key.contains(&b'}') {
        return [b"{".as_slice(), key, b"}"].concat();
    }
    if let Some(tag) = hashtag(key) {
        return [b"{".as_slice(), tag, b"}", key].concat();
    }
    let tag = slot_tag(slot(key));
    // "{T}!" names the empty key: no other key's suffix can end that way without a '}' in it.
    let rest: &[u8] = if key.is_empty() { b"!" } else { key };
    [b"{".as_slice(), tag.as_bytes(), b"}", rest].concat()
}

/// The `{hashtag}` Redis Cluster would hash for `key`, if it has one.
fn hashtag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

fn slot(key: &[u8]) -> u16 {
    let hashed = hashtag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

/// A short tag that hashes to `slot`.
fn slot_tag(wanted: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = 16384;
        let mut n: u64 = 0;
        while missing > 0 {
            let candidate = n.to_string();
            let s = slot(candidate.as_bytes()) as usize;
            if tags[s].is_empty() {
                tags[s] = candidate;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[wanted as usize]
}

/// The metadata hash of `key`.
pub fn meta_key(key: &[u8]) -> Vec<u8> {
    [b"__regis:m:".as_slice(), &slot_suffix(key)].concat()
}

/// The member-registers hash of `key` (the script derives its name from the state key's).
pub fn registers_key(key: &[u8]) -> Vec<u8> {
    [b"__regis:h:".as_slice(), &slot_suffix(key)].concat()
}

/// The counter-records sorted set of `key` (the script derives its name from the state key's).
pub fn counter_key(key: &[u8]) -> Vec<u8> {
    [b"__regis:c:".as_slice(), &slot_suffix(key)].concat()
}

/// Every key that holds `key`'s convergence metadata: state, member registers, counter
/// records. `regis verify --repair` copies them with the data key, so keep this list whole.
pub fn metadata_keys(key: &[u8]) -> [Vec<u8>; 3] {
    [meta_key(key), registers_key(key), counter_key(key)]
}

/// A version as the script compares it: 19 digits, zero-padded.
fn version_arg(v: Version) -> String {
    format!("{:019}", v.packed())
}

/// The smallest version above every version issued within millisecond `deadline_ms`: what
/// an expiry at that deadline supersedes.
fn expiry_version(deadline_ms: i64) -> String {
    let ms = u64::try_from(deadline_ms).unwrap_or(0);
    version_arg(Version::at_ms(ms + 1).prev())
}

/// The `lww` applier.
#[derive(Clone, Debug)]
pub struct LwwScript {
    tombstone_ttl: Duration,
}

/// Builds the KEYS and ARGV of one script call.
struct Call {
    keys: Vec<Bytes>,
    key_index: HashMap<Bytes, usize>,
    args: Vec<Bytes>,
}

impl Call {
    fn key(&mut self, key: &Bytes) -> usize {
        if let Some(&i) = self.key_index.get(key) {
            return i;
        }
        self.keys.push(key.clone());
        self.keys.push(Bytes::from(meta_key(key)));
        let i = self.keys.len() / 2;
        self.key_index.insert(key.clone(), i);
        i
    }

    fn op(&mut self, code: &'static str, key: &Bytes, version: &str, operands: Vec<Bytes>) {
        let i = self.key(key);
        self.args.push(Bytes::from_static(code.as_bytes()));
        self.args.push(Bytes::from(i.to_string()));
        self.args.push(Bytes::from(version.to_string()));
        self.args.push(Bytes::from(operands.len().to_string()));
        self.args.extend(operands);
    }
}

fn counted<'a>(items: impl ExactSizeIterator<Item = &'a Bytes>) -> Vec<Bytes> {
    let mut out = vec![Bytes::from(items.len().to_string())];
    out.extend(items.cloned());
    out
}

fn paired(pairs: &[(Bytes, Bytes)]) -> Vec<Bytes> {
    let mut out = vec![Bytes::from(pairs.len().to_string())];
    for (a, b) in pairs {
        out.push(a.clone());
        out.push(b.clone());
    }
    out
}

/// Appends the script ops of one message; counts them.
fn encode(call: &mut Call, envelope: &Envelope) -> Result<usize, Failure> {
    let mut count = 0;
    for (index, command) in envelope.commands.iter().enumerate() {
        let v = version_arg(envelope.version.command(index));
        let op = Op::parse(&command.0, envelope.published_at_ms()).map_err(|refusal| {
            Failure::Permanent(format!(
                "ERR cannot apply {}: {refusal}",
                command.preview(60)
            ))
        })?;
        if op.order_dependent().is_some() {
            return Err(order_dependent(command.preview(60)));
        }
        let num = |n: i64| Bytes::from(n.to_string());
        match &op {
            Op::Set {
                key, value, ttl, ..
            } => {
                let (mode, d, e) = match ttl {
                    Ttl::Clear => (
                        "C",
                        Bytes::from_static(b"0"),
                        version_arg(Version::default()),
                    ),
                    Ttl::Keep => (
                        "K",
                        Bytes::from_static(b"0"),
                        version_arg(Version::default()),
                    ),
                    Ttl::At(ms) => ("A", num(*ms), expiry_version(*ms)),
                };
                call.op(
                    "S",
                    key,
                    &v,
                    vec![
                        value.clone(),
                        Bytes::from_static(mode.as_bytes()),
                        d,
                        Bytes::from(e),
                    ],
                );
                count += 1;
            }
            Op::MSet { pairs } => {
                for (key, value) in pairs {
                    call.op(
                        "S",
                        key,
                        &v,
                        vec![
                            value.clone(),
                            Bytes::from_static(b"C"),
                            Bytes::from_static(b"0"),
                            Bytes::from(version_arg(Version::default())),
                        ],
                    );
                    count += 1;
                }
            }
            Op::Del { keys, .. } => {
                for key in keys {
                    call.op("D", key, &v, vec![]);
                    count += 1;
                }
            }
            Op::IncrBy { key, delta } => {
                call.op("I", key, &v, vec![num(*delta)]);
                count += 1;
            }
            Op::IncrByFloat { key, delta } => {
                call.op("F", key, &v, vec![delta.clone()]);
                count += 1;
            }
            Op::HSet { key, pairs } => {
                call.op("HS", key, &v, paired(pairs));
                count += 1;
            }
            Op::HDel { key, fields } => {
                call.op("HD", key, &v, counted(fields.iter()));
                count += 1;
            }
            Op::HIncrBy { key, field, delta } => {
                call.op("HI", key, &v, vec![field.clone(), num(*delta)]);
                count += 1;
            }
            Op::HIncrByFloat { key, field, delta } => {
                call.op("HF", key, &v, vec![field.clone(), delta.clone()]);
                count += 1;
            }
            Op::SAdd { key, members } => {
                call.op("SA", key, &v, counted(members.iter()));
                count += 1;
            }
            Op::SRem { key, members } => {
                call.op("SR", key, &v, counted(members.iter()));
                count += 1;
            }
            Op::ZAdd { key, pairs, .. } => {
                call.op("ZA", key, &v, paired(pairs));
                count += 1;
            }
            Op::ZRem { key, members } => {
                call.op("ZR", key, &v, counted(members.iter()));
                count += 1;
            }
            Op::ZIncrBy { key, delta, member } => {
                call.op("ZI", key, &v, vec![member.clone(), delta.clone()]);
                count += 1;
            }
            Op::ExpireAt { key, at_ms, .. } => {
                call.op(
                    "X",
                    key,
                    &v,
                    vec![num(*at_ms), Bytes::from(expiry_version(*at_ms))],
                );
                count += 1;
            }
            Op::Persist { key } => {
                call.op("P", key, &v, vec![]);
                count += 1;
            }
            Op::Raw { .. } => return Err(order_dependent(command.preview(60))),
        }
    }
    Ok(count)
}

fn order_dependent(preview: String) -> Failure {
    Failure::Permanent(format!(
        "ERR {preview} is order-dependent and cannot be applied under convergence = \"lww\" (it was published under \"none\")"
    ))
}

impl LwwScript {
    /// An applier keeping metadata for `tombstone_ttl`.
    pub fn new(tombstone_ttl: Duration) -> LwwScript {
        LwwScript { tombstone_ttl }
    }

    /// Applies `batch`: plain SETs through the fast script, everything else (and plain SETs
    /// on keys with more state than a floor) through the general one. Messages are
    /// independent under `lww`, so splitting a batch changes nothing of the end state.
    pub async fn apply(
        &self,
        conn: &mut ConnectionManager,
        batch: &[&Envelope],
    ) -> Result<Vec<Result<(), Failure>>, Failure> {
        let mut outcomes: Vec<Option<Result<(), Failure>>> = vec![None; batch.len()];
        // The newest plain SET of each key; an older one in the same batch is superseded by it.
        let mut newest: HashMap<Bytes, (usize, Bytes)> = HashMap::new();
        for (i, envelope) in batch.iter().enumerate() {
            if let Some((key, value)) = plain_set(envelope) {
                match newest.get(&key) {
                    Some(&(j, _)) if batch[j].version > envelope.version => {
                        outcomes[i] = Some(Ok(()))
                    }
                    previous => {
                        if let Some(&(j, _)) = previous {
                            outcomes[j] = Some(Ok(()));
                        }
                        newest.insert(key, (i, value));
                    }
                }
            }
        }
        if !newest.is_empty() {
            let mut invocation = fast_script().prepare_invoke();
            let entries: Vec<(Bytes, (usize, Bytes))> = newest.into_iter().collect();
            for (key, (i, value)) in &entries {
                invocation.key(key.as_ref()).key(meta_key(key));
                invocation
                    .arg(version_arg(batch[*i].version))
                    .arg(value.as_ref());
            }
            let replies: Vec<i64> = invocation
                .invoke_async(conn)
                .await
                .map_err(|err| classify(&err))?;
            for ((_, (i, _)), reply) in entries.iter().zip(replies) {
                // 1: the key holds more than a floor; the general script below takes it.
                if reply == 0 {
                    outcomes[*i] = Some(Ok(()));
                }
            }
        }
        let rest: Vec<usize> = (0..batch.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if rest.is_empty() {
            return Ok(outcomes.into_iter().map(|o| o.unwrap_or(Ok(()))).collect());
        }
        let subset: Vec<&Envelope> = rest.iter().map(|&i| batch[i]).collect();
        let general = self.apply_general(conn, &subset).await?;
        for (i, outcome) in rest.into_iter().zip(general) {
            outcomes[i] = Some(outcome);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Failure::Transient("not applied".into()))))
            .collect())
    }

    /// Applies `batch` in one call of the general script.
    async fn apply_general(
        &self,
        conn: &mut ConnectionManager,
        batch: &[&Envelope],
    ) -> Result<Vec<Result<(), Failure>>, Failure> {
        let mut outcomes: Vec<Option<Result<(), Failure>>> = vec![None; batch.len()];
        let mut call = Call {
            keys: Vec::new(),
            key_index: HashMap::new(),
            args: Vec::new(),
        };
        let mut sent = Vec::new();
        for (i, envelope) in batch.iter().enumerate() {
            let mark = call.args.len();
            let header = call.args.len();
            call.args.push(Bytes::new());
            match encode(&mut call, envelope) {
                Ok(count) => {
                    call.args[header] = Bytes::from(count.to_string());
                    sent.push(i);
                }
                Err(failure) => {
                    call.args.truncate(mark);
                    outcomes[i] = Some(Err(failure));
                }
            }
        }
        if !sent.is_empty() {
            let tomb_ms = self.tombstone_ttl.as_millis() as u64;
            // The horizon: counter records and removed members' registers older than this
            // may be collected.
            let cutoff = version_arg(Version::at_ms(now_ms().saturating_sub(tomb_ms)));
            let mut invocation = script().prepare_invoke();
            for key in &call.keys {
                invocation.key(key.as_ref());
            }
            invocation.arg(tomb_ms).arg(cutoff).arg(sent.len());
            for arg in &call.args {
                invocation.arg(arg.as_ref());
            }
            let replies: Vec<Value> = invocation
                .invoke_async(conn)
                .await
                .map_err(|err| classify(&err))?;
            if replies.len() != sent.len() {
                return Err(Failure::Transient(format!(
                    "the lww script answered {} results for {} messages",
                    replies.len(),
                    sent.len()
                )));
            }
            for (i, reply) in sent.into_iter().zip(replies) {
                outcomes[i] = Some(match reply {
                    Value::Int(0) => Ok(()),
                    Value::BulkString(text) => Err(script_failure(&String::from_utf8_lossy(&text))),
                    Value::SimpleString(text) => Err(script_failure(&text)),
                    other => Err(Failure::Permanent(format!(
                        "unexpected script result {other:?}"
                    ))),
                });
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Failure::Transient("not applied".into()))))
            .collect())
    }
}

/// A per-message error text from the script.
fn script_failure(text: &str) -> Failure {
    let code = text.split_whitespace().next().unwrap_or("");
    match code {
        "OOM" | "LOADING" | "BUSY" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" => {
            Failure::Transient(text.to_string())
        }
        _ => Failure::Permanent(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keys_share_the_data_key_slot() {
        for key in [
            b"plain".as_slice(),
            b"user:{42}:profile",
            b"a}b",
            b"{}x}",
            b"{",
            b"weird{key",
            b"",
        ] {
            let meta = meta_key(key);
            assert_eq!(slot(&meta), slot(key), "{}", String::from_utf8_lossy(key));
            assert_eq!(slot(&counter_key(key)), slot(key));
            assert_eq!(slot(&registers_key(key)), slot(key));
            assert!(meta.starts_with(META_PREFIX));
        }
    }

    #[test]
    fn metadata_keys_are_distinct_per_data_key() {
        let empty_tag = slot_tag(0).as_bytes().to_vec();
        let lookalike = [b"{", empty_tag.as_slice(), b"}"].concat();
        let keys: [&[u8]; 9] = [
            b"a", b"{a}", b"{a}a", b"a}", b"{t}x}", b"{t}x}:c", b"", &empty_tag, &lookalike,
        ];
        let metas: std::collections::HashSet<Vec<u8>> = keys.iter().map(|k| meta_key(k)).collect();
        assert_eq!(metas.len(), keys.len());
    }

    #[test]
    fn expiry_version_sits_between_milliseconds() {
        let d = 1_800_000_000_000i64;
        let e = expiry_version(d);
        assert_eq!(e.len(), 19);
        assert!(version_arg(Version::at_ms(d as u64 + 1)) > e);
        assert!(
            version_arg(Version::from_packed(
                Version::at_ms(d as u64).packed() + 1023 * 1024 + 1023
            )) <= e
        );
        assert_eq!(expiry_version(-5).len(), 19);
    }
}

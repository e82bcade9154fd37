//! Repair: one key of a target region becomes an exact copy of the source region's.
//!
//! "The key" is the data key and, under `convergence = "lww"`, every key holding its
//! metadata ([`lww::metadata_keys`]: its state, member registers and counter records). All
//! are read from the source in one `MULTI`/`EXEC` (a consistent snapshot even while the
//! source is applying messages) and written to the target in one `MULTI`/`EXEC` — `RESTORE … REPLACE`
//! with the source's exact deadline (`ABSTTL`) for each that exists, `DEL` for each that
//! does not — so the target's worker never sees the data of one state with the metadata of
//! another. Copying the metadata along is what keeps convergence intact: afterwards the
//! target holds the source's registers and tombstones, so every later or redelivered
//! message is judged the same way in both regions. A key missing in the source is deleted
//! in the target, and its metadata replaced by the source's (which may be a tombstone that
//! keeps a late older write from resurrecting it) or removed.

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::read::{ExpiryMode, dump_pipeline, run_dumps};
use crate::apply::lww;

/// The keys that together are one data key's state: itself and its metadata.
fn family(key: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = vec![key.to_vec()];
    keys.extend(lww::metadata_keys(key));
    keys
}

/// Makes `key` (with its convergence metadata) in `target` a copy of `key` in `source`.
pub async fn copy_key(
    source: &mut MultiplexedConnection,
    target: &mut MultiplexedConnection,
    key: &[u8],
    mode: ExpiryMode,
) -> Result<(), String> {
    let keys = family(key);
    let mut read = dump_pipeline(&keys, mode);
    read.atomic();
    let dumped = run_dumps(source, &read, keys.len(), mode)
        .await
        .map_err(|err| format!("cannot read it from the source region: {err}"))?;
    if dumped.len() != keys.len() {
        return Err(format!(
            "the source region answered {} of {} reads",
            dumped.len(),
            keys.len()
        ));
    }
    let mut write = redis::pipe();
    write.atomic().ignore_errors();
    for (k, key_state) in keys.iter().zip(&dumped) {
        match &key_state.payload {
            Some(payload) => {
                let (ttl, absolute) = key_state.expiry.restore_ttl(mode);
                write
                    .cmd("RESTORE")
                    .arg(k)
                    .arg(ttl)
                    .arg(payload.as_slice())
                    .arg("REPLACE");
                if absolute {
                    write.arg("ABSTTL");
                }
            }
            None => {
                write.cmd("DEL").arg(k);
            }
        }
    }
    let results: Vec<Value> = write
        .query_async(target)
        .await
        .map_err(|err| format!("cannot write it to the target region: {err}"))?;
    for result in results {
        if let Value::ServerError(err) = result {
            return Err(format!(
                "the target region refused the copy ({err}); RESTORE needs both regions on the same Redis major version"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_travels_with_its_metadata() {
        let keys = family(b"hotel:1");
        assert_eq!(keys[0], b"hotel:1");
        assert_eq!(keys.len(), 4);
        for meta in &keys[1..] {
            assert!(meta.starts_with(lww::META_PREFIX));
        }
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), keys.len());
    }
}

//! The topic: one JetStream stream every hub publishes to, and the high-water ceiling that
//! keeps a restarted hub's clock above every version it holds.
//!
//! The stream uses interest retention: a message stays until every region's consumer has
//! acknowledged (or terminated) it, then JetStream deletes it — the backlog of a region
//! that is down stays on the servers' disks, applied messages do not. Because applied
//! messages are gone, the last message cannot tell the highest version ever published;
//! a small key-value entry does: a ceiling, in milliseconds, raised (with compare-and-set,
//! so hubs sharing the stream never lower it) a second ahead whenever a message would reach
//! it. That is one round trip a second at most, awaited before the message is sent.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::future::join_all;

use super::{Names, NatsBus, batch, storage, unavailable};
use crate::bus::{BusError, BusErrorKind, Outgoing};
use crate::clock::{Version, now_ms};

/// The key holding the ceiling (decimal milliseconds since the epoch).
const HIGH_WATER_KEY: &str = "high_water";
/// How far ahead of the newest version the ceiling is raised.
const CEILING_LEAD_MS: u64 = 1_000;
/// Compare-and-set attempts before giving up (each lost race means another hub raised it).
const CAS_ATTEMPTS: usize = 16;

/// This process's view of the ceiling.
#[derive(Debug, Default)]
pub(super) struct Ceiling {
    /// The ceiling known to be stored; versions below it may be published without asking.
    known_ms: AtomicU64,
    /// Serializes raises, so a burst of publishes costs one round trip.
    raise: tokio::sync::Mutex<()>,
}

/// Opens the topic stream, creating it if missing; refuses a stream of that name that is not
/// a Regis topic.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<stream::Stream, BusError> {
    let wanted = stream::Config {
        name: names.stream.clone(),
        description: Some(
            "Regis topic: every published message, kept until every region has applied it".into(),
        ),
        subjects: names.topic_subjects(),
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let stream = match js.get_stream(&names.stream).await {
        Ok(stream) => stream,
        Err(_) => match js.create_stream(wanted.clone()).await {
            Ok(stream) => stream,
            // Another process may have created it meanwhile.
            Err(create) => js.get_stream(&names.stream).await.map_err(|_| {
                unavailable(&format!("cannot create stream {}", names.stream), create)
            })?,
        },
    };
    let config = &stream.cached_info().config;
    let subjects_ok = wanted.subjects.iter().all(|s| config.subjects.contains(s));
    if config.retention != stream::RetentionPolicy::Interest || !subjects_ok {
        return Err(BusError::new(
            BusErrorKind::Invalid,
            format!(
                "NATS stream {:?} exists but is not a Regis topic (retention {:?}, subjects {:?}); set bus.stream to another name",
                names.stream, config.retention, config.subjects
            ),
        ));
    }
    if config.num_replicas != replicas {
        tracing::warn!(
            stream = %names.stream,
            existing = config.num_replicas,
            configured = replicas,
            "the stream exists with another replica count; bus.replicas applies only when it is created (change it with `nats stream edit`)"
        );
    }
    Ok(stream)
}

/// Appends `messages`, as few NATS messages as `batch` allows, and waits for every PubAck.
pub(super) async fn publish(bus: &NatsBus, messages: Vec<Outgoing>) -> Result<(), BusError> {
    let inner = &bus.inner;
    let newest = messages
        .iter()
        .map(|m| m.version.physical_ms())
        .max()
        .unwrap_or(0);
    raise_ceiling(bus, newest).await?;
    let subject = async_nats::Subject::from(inner.names.topic_subject(inner.options.node_id));
    let bodies = messages.into_iter().map(|m| m.body).collect();
    let batches = batch::pack(bodies, inner.batch_bytes);
    let mut acks = Vec::with_capacity(batches.len());
    for (count, payload) in batches {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(batch::HEADER, count.to_string());
        let ack = inner
            .js
            .send_publish(
                subject.clone(),
                PublishMessage::build().payload(payload).headers(headers),
            )
            .await
            .map_err(publish_error)?;
        acks.push(ack.into_future());
    }
    for result in join_all(acks).await {
        result.map_err(publish_error)?;
    }
    Ok(())
}

fn publish_error(err: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind as Kind;
    match err.kind() {
        Kind::TimedOut | Kind::BrokenPipe | Kind::StreamNotFound => {
            unavailable("the topic did not acknowledge a publish", err)
        }
        Kind::MaxPayloadExceeded => BusError::new(
            BusErrorKind::Invalid,
            format!(
                "NATS refused the message as too large ({err}); lower max_message_bytes or raise max_payload in nats-server"
            ),
        ),
        _ => storage("the topic refused a publish", err),
    }
}

/// The ceiling as stored, with its revision for compare-and-set.
async fn stored_ceiling(meta: &kv::Store) -> Result<Option<(u64, u64)>, BusError> {
    let entry = meta
        .entry(HIGH_WATER_KEY)
        .await
        .map_err(|err| unavailable("cannot read the high-water ceiling", err))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let ms = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    BusError::new(
                        BusErrorKind::Storage,
                        format!(
                            "the high-water ceiling in bucket {} is not a number; restore it or remove the bucket",
                            meta.name
                        ),
                    )
                })?;
            Ok(Some((ms, entry.revision)))
        }
        Some(entry) => Ok(Some((0, entry.revision))),
        None => Ok(None),
    }
}

/// Makes sure the stored ceiling is above `newest_ms` before a message of that age is sent.
async fn raise_ceiling(bus: &NatsBus, newest_ms: u64) -> Result<(), BusError> {
    let ceiling = &bus.inner.ceiling;
    if newest_ms < ceiling.known_ms.load(Ordering::Acquire) {
        return Ok(());
    }
    let _raising = ceiling.raise.lock().await;
    if newest_ms < ceiling.known_ms.load(Ordering::Acquire) {
        return Ok(());
    }
    let meta = &bus.inner.meta;
    let target = newest_ms.max(now_ms()) + CEILING_LEAD_MS;
    let value = Bytes::from(target.to_string());
    for _ in 0..CAS_ATTEMPTS {
        let written = match stored_ceiling(meta).await? {
            Some((stored, _)) if stored > newest_ms => {
                ceiling.known_ms.fetch_max(stored, Ordering::AcqRel);
                return Ok(());
            }
            Some((_, revision)) => meta
                .update(HIGH_WATER_KEY, value.clone(), revision)
                .await
                .map_err(|err| err.kind() == kv::UpdateErrorKind::WrongLastRevision),
            None => meta
                .create(HIGH_WATER_KEY, value.clone())
                .await
                .map_err(|err| err.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match written {
            Ok(_) => {
                ceiling.known_ms.fetch_max(target, Ordering::AcqRel);
                return Ok(());
            }
            // Another hub wrote meanwhile: read again.
            Err(true) => continue,
            Err(false) => {
                return Err(unavailable(
                    "cannot store the high-water ceiling",
                    "the key-value write failed",
                ));
            }
        }
    }
    Err(unavailable(
        "cannot store the high-water ceiling",
        "too many concurrent writers",
    ))
}

/// An upper bound of every version ever published to the stream.
pub(super) async fn high_water(bus: &NatsBus) -> Result<Option<Version>, BusError> {
    let stored = stored_ceiling(&bus.inner.meta).await?;
    Ok(stored.map(|(ms, _)| {
        bus.inner.ceiling.known_ms.fetch_max(ms, Ordering::AcqRel);
        Version::at_ms(ms)
    }))
}

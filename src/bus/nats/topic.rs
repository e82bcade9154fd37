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
//!
//! Publishing goes through one task per bus, the [`Appender`]: it takes every publish call
//! waiting when it is free, packs their messages into as few NATS messages as `batch`
//! allows, sends them, and answers each call once all of its group's PubAcks are in. Like
//! the embedded bus's group commit, concurrent single-message publishes (HTTP producers)
//! then share stored messages; a lone publish goes out at once. The task never waits for
//! acknowledgements itself, so groups stay pipelined.
//!
//! Being the only publisher on its hub's subject, the appender also numbers what it sends:
//! each batch carries the hub's running totals of NATS messages and envelopes on that
//! subject (`Regis-Totals`), continued from the subject's last stored message when it
//! starts. Queue figures count envelopes with them (`counts`); nothing else depends on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::future::join_all;

use super::batch::Totals;
use super::{Names, NatsBus, batch, storage, unavailable};
use crate::bus::{BusError, BusErrorKind, Outgoing};
use crate::clock::{Version, now_ms};

/// The key holding the ceiling (decimal milliseconds since the epoch).
const HIGH_WATER_KEY: &str = "high_water";
/// How far ahead of the newest version the ceiling is raised.
const CEILING_LEAD_MS: u64 = 1_000;
/// Compare-and-set attempts before giving up (each lost race means another hub raised it).
const CAS_ATTEMPTS: usize = 16;

/// Most messages one group takes (more wait for the next group).
const MAX_GROUP: usize = 8192;

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

/// A publish call waiting for the appender.
struct Pending {
    messages: Vec<Outgoing>,
    reply: tokio::sync::oneshot::Sender<Result<(), BusError>>,
}

/// Handle to the task that appends every publish of this bus.
pub(super) struct Appender {
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// What the appender task needs; it holds no handle to the bus, so it ends when the last
/// handle is dropped.
struct AppendTask {
    js: jetstream::Context,
    meta: kv::Store,
    ceiling: Arc<Ceiling>,
    subject: async_nats::Subject,
    batch_bytes: usize,
    /// The topic stream, to read where the subject's totals stand.
    topic: stream::Stream,
    /// The running totals of the last batch sent; `None` until read from the subject's last
    /// stored message (batches sent meanwhile carry none).
    totals: Option<Totals>,
}

impl Appender {
    /// Starts the appender task.
    pub(super) fn start(
        js: jetstream::Context,
        meta: kv::Store,
        ceiling: Arc<Ceiling>,
        topic: stream::Stream,
        subject: String,
        batch_bytes: usize,
    ) -> Appender {
        let (queue, waiting) = tokio::sync::mpsc::unbounded_channel();
        let task = AppendTask {
            js,
            meta,
            ceiling,
            subject: async_nats::Subject::from(subject),
            batch_bytes,
            topic,
            totals: None,
        };
        tokio::spawn(task.run(waiting));
        Appender { queue }
    }
}

impl AppendTask {
    async fn run(mut self, mut waiting: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = waiting.recv().await {
            let mut count = first.messages.len();
            let mut group = vec![first];
            while count < MAX_GROUP {
                match waiting.try_recv() {
                    Ok(next) => {
                        count += next.messages.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let mut replies = Vec::with_capacity(group.len());
            let mut bodies = Vec::with_capacity(count);
            let mut newest = 0;
            for pending in group {
                for message in pending.messages {
                    newest = newest.max(message.version.physical_ms());
                    bodies.push(message.body);
                }
                replies.push(pending.reply);
            }
            match self.send(newest, bodies).await {
                Ok(acks) => {
                    // Wait for the acknowledgements elsewhere, so the next group goes out now.
                    tokio::spawn(async move {
                        let mut outcome = Ok(());
                        for result in
                            join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                                .await
                        {
                            if let Err(err) = result {
                                outcome = Err(publish_error(err));
                            }
                        }
                        for reply in replies {
                            let _ = reply.send(outcome.clone());
                        }
                    });
                }
                Err(err) => {
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Raises the ceiling if needed, then sends the group as batches; returns the pending
    /// acknowledgements.
    async fn send(
        &mut self,
        newest_ms: u64,
        bodies: Vec<Bytes>,
    ) -> Result<Vec<jetstream::context::PublishAckFuture>, BusError> {
        raise_ceiling(&self.meta, &self.ceiling, newest_ms).await?;
        if self.totals.is_none() {
            self.totals = self.stored_totals().await;
        }
        let batches = batch::pack(bodies, self.batch_bytes);
        let mut acks = Vec::with_capacity(batches.len());
        for (count, payload) in batches {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(batch::HEADER, count.to_string());
            let totals = self.totals.map(|t| t.after(count));
            if let Some(totals) = totals {
                headers.insert(batch::TOTALS_HEADER, totals.header_value());
            }
            let ack = self
                .js
                .send_publish(
                    self.subject.clone(),
                    PublishMessage::build().payload(payload).headers(headers),
                )
                .await
                .map_err(publish_error)?;
            // Counted once handed to the connection. If the server then loses or refuses it,
            // the totals skip its envelopes: figures spanning the gap count them until the
            // regions' backlog has moved past it (see `counts`).
            self.totals = totals;
            acks.push(ack);
        }
        Ok(acks)
    }

    /// The totals of the subject's last stored message: where this hub's numbering goes on.
    /// Zero when the subject holds nothing (every region has applied all it sent, or it
    /// never sent); zero as well when that message carries none (an older Regis sent it:
    /// figures over such messages are estimates). `None` when NATS does not answer: the
    /// next group asks again.
    async fn stored_totals(&self) -> Option<Totals> {
        use jetstream::stream::RawMessageErrorKind;
        match self
            .topic
            .raw_message_builder()
            .last_by_subject(self.subject.to_string())
            .send()
            .await
        {
            Ok(last) => Some(Totals::of(Some(&last.headers)).unwrap_or_default()),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {
                Some(Totals::default())
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the hub's running totals yet");
                None
            }
        }
    }
}

/// Appends `messages` and waits until JetStream acknowledged every NATS message holding
/// them.
pub(super) async fn publish(bus: &NatsBus, messages: Vec<Outgoing>) -> Result<(), BusError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let closed = || BusError::new(BusErrorKind::Closed, "the NATS bus is closed");
    bus.inner
        .appender
        .queue
        .send(Pending { messages, reply })
        .map_err(|_| closed())?;
    answer.await.unwrap_or_else(|_| Err(closed()))
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
async fn raise_ceiling(
    meta: &kv::Store,
    ceiling: &Ceiling,
    newest_ms: u64,
) -> Result<(), BusError> {
    if newest_ms < ceiling.known_ms.load(Ordering::Acquire) {
        return Ok(());
    }
    let _raising = ceiling.raise.lock().await;
    if newest_ms < ceiling.known_ms.load(Ordering::Acquire) {
        return Ok(());
    }
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

//! A region's queue: a durable pull consumer on the topic, leased by long-polling pull
//! requests and settled with JetStream acks, flushed to the server before `settle` returns.
//!
//! * `receive` sends a pull request `{batch, no_wait, expires}`: the server answers at once
//!   with what is available, or waits up to `expires` for the first message and then
//!   returns what it has. The call runs in its own task, so a receiver that stops waiting
//!   (a worker shutting down) does not strand leased messages: they are released with a
//!   `Retry` at once instead of waiting out their lease.
//! * A NATS message is a batch of envelopes (see `batch`); every envelope is a delivery of
//!   its own, with the batch's receive count. This process keeps each batch delivery's open
//!   envelopes in memory until all are settled, then settles the NATS message once: `+ACK`
//!   when every envelope was applied or dead-lettered, else a retry record (which envelopes
//!   are done, the first failure, the last error) and `-NAK {"delay": the longest asked}`,
//!   so the redelivery hands out only the envelopes still to do.
//! * Each delivery after the first is checked against the region's retry records: if the
//!   previous delivery was not settled with `Retry`, its lease expired, and after
//!   `max_receives` such receives the bus dead-letters the envelopes itself.
//! * `Retry` and `DeadLetter` on a receipt whose lease is over are ignored (another delivery
//!   owns the message); a late `Ack` still counts: it is recorded, and the envelope is not
//!   handed out again.
//! * Besides its open deliveries, this process remembers the batches it settled with
//!   `Retry` until they come back (or a lease later), so the region's in-flight figure
//!   counts their envelopes exactly (see `counts`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::{Message, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{join_all, try_join_all};
use serde::{Deserialize, Serialize};

use super::counts::{self, Held, Inputs};
use super::receipt::{AckSubject, Parsed, lease_margin, parse_receipt, receipt};
use super::{Names, NatsBus, NatsOptions, batch, dead_letters, storage, unavailable};
use crate::bus::{
    BusError, BusErrorKind, Delivery, LEASE_EXPIRED_ERROR, QueueStats, Receipt, Settle,
    lease_expired_event, leases_expired_counted,
};
use crate::clock::now_ms;

/// The description marking a consumer as a Regis region's queue.
const CONSUMER_DESCRIPTION: &str = "Regis queue of region ";

/// One region as this process uses it.
pub(super) struct RegionQueue {
    /// Region name, also the consumer's name.
    pub name: String,
    /// Where pull requests go: `<api prefix>.CONSUMER.MSG.NEXT.<stream>.<region>`.
    next_subject: String,
    /// The region's dead letters.
    pub dlq: jetstream::stream::Stream,
    /// Held shared by every receive in progress (its pull request and, if its receiver
    /// left, the release of what it leased), and exclusively by [`NatsBus::close`], which
    /// so waits for them before closing the connection.
    pub pulls: tokio::sync::RwLock<()>,
    /// Batch deliveries handed out by this process and not yet settled, by ack subject.
    open: std::sync::Mutex<HashMap<String, OpenBatch>>,
    /// Batches this process settled with `Retry`, by stream sequence, until delivered again
    /// (or until they would have been leased again elsewhere): their envelopes are still in
    /// flight.
    retrying: std::sync::Mutex<HashMap<u64, Retrying>>,
    /// Envelopes per NATS message lately (×16), to size pull requests in envelopes. It
    /// starts at the largest batch and follows larger batches at once and smaller ones by
    /// halves, so a receive exceeds its `max` by less than one batch.
    envelopes_per_message: std::sync::atomic::AtomicU32,
}

/// A batch settled with `Retry`, waiting for its redelivery.
struct Retrying {
    /// Envelopes not done for good.
    envelopes: u64,
    /// Past this (ms since the epoch) it is no longer counted as held here.
    until_ms: u64,
}

/// A delivered NATS message whose envelopes are being applied.
struct OpenBatch {
    ack: AckSubject,
    deadline_ms: u64,
    /// Envelopes in the NATS message.
    count: u32,
    /// Envelopes handed out and not yet settled, with their bodies (to dead-letter them).
    open: BTreeMap<u32, Bytes>,
    /// Envelopes done for good: done before this delivery, applied, or dead-lettered.
    done: Vec<u32>,
    /// Envelopes to dead-letter, with the reason.
    dead: Vec<(u32, Bytes, String)>,
    /// The longest retry delay asked, and the last reason.
    retry: Option<(Duration, String)>,
    /// The record this delivery started from.
    record: Option<RetryRecord>,
}

impl RegionQueue {
    /// Creates (or updates) the region's consumer and dead-letter stream.
    pub async fn ensure(
        js: &jetstream::Context,
        names: &Names,
        api_prefix: &str,
        region: &str,
        options: &NatsOptions,
        replicas: usize,
    ) -> Result<RegionQueue, BusError> {
        let topic = js
            .get_stream(&names.stream)
            .await
            .map_err(|err| unavailable(&format!("cannot open stream {}", names.stream), err))?;
        let config = consumer::pull::Config {
            durable_name: Some(region.to_string()),
            description: Some(format!("{CONSUMER_DESCRIPTION}{region}")),
            // A region new to the stream starts from now, as on the embedded bus.
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: options.visibility_timeout,
            // Never give up on a message by delivery count: see the module invariants.
            max_deliver: -1,
            // Messages waiting for a retry delay count as pending; never stall on them.
            max_ack_pending: -1,
            ..Default::default()
        };
        if let Err(create) = topic.create_consumer(config.clone()).await {
            // Servers from 2.10 refuse to "create" a consumer that exists with another
            // config (a changed visibility timeout): ask for an update instead.
            let subject = format!("CONSUMER.CREATE.{}.{region}", names.stream);
            let request = serde_json::json!({
                "stream_name": names.stream,
                "config": config,
                "action": "update",
            });
            let answer: serde_json::Value = js.request(subject, &request).await.map_err(|err| {
                unavailable(
                    &format!("cannot update the consumer of region {region}"),
                    err,
                )
            })?;
            if let Some(error) = answer.get("error") {
                return Err(storage(
                    &format!("cannot create or update the consumer of region {region}"),
                    format!("{create}; {error}"),
                ));
            }
        }
        let dlq = dead_letters::ensure_stream(js, names, region, options, replicas).await?;
        Ok(RegionQueue {
            name: region.to_string(),
            next_subject: format!("{api_prefix}.CONSUMER.MSG.NEXT.{}.{region}", names.stream),
            dlq,
            pulls: tokio::sync::RwLock::new(()),
            open: std::sync::Mutex::new(HashMap::new()),
            retrying: std::sync::Mutex::new(HashMap::new()),
            envelopes_per_message: std::sync::atomic::AtomicU32::new(
                (batch::MAX_MESSAGES * 16) as u32,
            ),
        })
    }
}

/// What the bus remembers of a NATS message settled with `Retry`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct RetryRecord {
    /// The last delivery (receive count) settled with `Retry`.
    pub settled: u32,
    /// Envelopes of the batch done for good (applied or dead-lettered).
    #[serde(default)]
    pub done: Vec<u32>,
    /// First failure (ms since the epoch).
    pub first_failure_ms: u64,
    /// Last failure (ms since the epoch).
    pub last_failure_ms: u64,
    /// The last error.
    pub last_error: String,
}

fn record_key(region: &str, stream_seq: u64) -> String {
    format!("{region}.{stream_seq}")
}

pub(super) async fn read_record(
    bus: &NatsBus,
    region: &str,
    stream_seq: u64,
) -> Result<Option<RetryRecord>, BusError> {
    let value = bus
        .inner
        .retries
        .get(record_key(region, stream_seq))
        .await
        .map_err(|err| unavailable("cannot read a retry record", err))?;
    // An unreadable record is treated as absent: the message then counts as expired once,
    // which at worst dead-letters it a little early instead of never.
    Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
}

async fn write_record(
    bus: &NatsBus,
    region: &str,
    stream_seq: u64,
    record: &RetryRecord,
) -> Result<(), BusError> {
    let value =
        serde_json::to_vec(record).map_err(|err| storage("cannot encode a retry record", err))?;
    bus.inner
        .retries
        .put(record_key(region, stream_seq), Bytes::from(value))
        .await
        .map(|_| ())
        .map_err(|err| unavailable("cannot store a retry record", err))
}

/// Drops a settled message's record; the bucket's max_age collects any that this misses.
async fn forget_record(bus: &NatsBus, region: &str, stream_seq: u64) {
    if let Err(err) = bus
        .inner
        .retries
        .delete(record_key(region, stream_seq))
        .await
    {
        tracing::debug!(region, stream_seq, error = %err, "could not delete a retry record");
    }
}

/// Publishes an ack (`+ACK`, `-NAK ...`, `+TERM`). It is fire-and-forget, as JetStream
/// acks are: a settle's acks are flushed together at its end, and one lost on the way only
/// means the message is delivered again.
async fn acknowledge(bus: &NatsBus, ack: &AckSubject, payload: Bytes) -> Result<(), BusError> {
    bus.inner
        .client
        .publish(ack.subject.clone(), payload)
        .await
        .map_err(|err| unavailable("cannot send a settle", err))
}

/// Puts every ack published so far on the wire.
async fn flush(bus: &NatsBus) -> Result<(), BusError> {
    bus.inner
        .client
        .flush()
        .await
        .map_err(|err| unavailable("cannot flush settles to the server", err))
}

const ACK: &[u8] = b"+ACK";
const TERM: &[u8] = b"+TERM";

fn nak(after: Duration) -> Bytes {
    if after.is_zero() {
        Bytes::from_static(b"-NAK")
    } else {
        Bytes::from(format!("-NAK {{\"delay\": {}}}", after.as_nanos()))
    }
}

/// Leases up to `max` envelopes (a batch is never split, so a little more when the last
/// NATS message pulled holds several), waiting up to `wait` for the first.
pub(super) async fn receive(
    bus: &NatsBus,
    region: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, BusError> {
    let closed = || BusError::new(BusErrorKind::Closed, "the NATS bus is closed");
    if bus.inner.closing.load(std::sync::atomic::Ordering::Acquire) {
        return Err(closed());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_bus = bus.clone();
    let task_region = region.to_string();
    tokio::spawn(async move {
        let Ok(queue) = task_bus.region(&task_region) else {
            return;
        };
        let _pulling = queue.pulls.read().await;
        let result = receive_now(&task_bus, queue, max, wait).await;
        if let Err(Ok(orphans)) = tx.send(result) {
            release(&task_bus, queue, orphans).await;
        }
    });
    rx.await.unwrap_or_else(|_| Err(closed()))
}

/// Gives leased envelopes back at once, as a `Retry` without delay.
async fn release(bus: &NatsBus, queue: &RegionQueue, deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    let settlements = deliveries
        .into_iter()
        .map(|d| {
            (
                d.receipt,
                Settle::Retry {
                    after: Duration::ZERO,
                    reason: "released unprocessed: its receiver stopped waiting".into(),
                    transient: true,
                },
            )
        })
        .collect();
    if let Err(err) = settle(bus, queue, settlements).await {
        tracing::debug!(region = %queue.name, error = %err, "could not release leased messages; they return after the visibility timeout");
    }
}

/// How a pull request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PullEnd {
    /// Served: nothing more will come for it.
    Done,
    /// Turned away because other pull requests already wait for the pending messages.
    Busy,
}

async fn receive_now(
    bus: &NatsBus,
    queue: &RegionQueue,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, BusError> {
    use std::sync::atomic::Ordering;
    let deadline = Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Ask for as many NATS messages as should hold `max` envelopes.
        let per_message = queue.envelopes_per_message.load(Ordering::Relaxed).max(16) as usize;
        let messages_wanted = (max * 16 / per_message).clamp(1, max);
        let (messages, end) = pull(bus, queue, messages_wanted, remaining).await?;
        let pulled = messages.len();
        let (deliveries, envelopes) = admit(bus, queue, messages).await?;
        if let Some(seen) = (envelopes * 16).checked_div(pulled) {
            let seen = seen as u32;
            let before = queue.envelopes_per_message.load(Ordering::Relaxed).max(16);
            queue
                .envelopes_per_message
                .store(seen.max((before + seen) / 2), Ordering::Relaxed);
        }
        if !deliveries.is_empty() || Instant::now() >= deadline {
            return Ok(deliveries);
        }
        if end == PullEnd::Busy {
            // Another process's requests are about to take the pending messages.
            tokio::time::sleep(Duration::from_millis(10).min(remaining)).await;
        }
    }
}

/// One pull request; returns the messages it delivered.
async fn pull(
    bus: &NatsBus,
    queue: &RegionQueue,
    max: usize,
    wait: Duration,
) -> Result<(Vec<Message>, PullEnd), BusError> {
    let client = &bus.inner.client;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| unavailable("cannot subscribe for a pull request", err))?;
    // no_wait with expires: answer at once with what is there, else wait for the first
    // message (nats-server >= 2.9). Always with an expiry: a no-wait request without one
    // that finds messages pending but none it can take would wait on the server forever.
    let expires = wait.max(Duration::from_millis(10));
    let request =
        serde_json::json!({ "batch": max, "no_wait": true, "expires": expires.as_nanos() as u64 });
    client
        .publish_with_reply(
            queue.next_subject.clone(),
            inbox,
            Bytes::from(request.to_string()),
        )
        .await
        .map_err(|err| unavailable("cannot send a pull request", err))?;
    let give_up = tokio::time::Instant::now() + expires + bus.inner.request_timeout;
    let mut messages = Vec::with_capacity(max.min(1024));
    let end = loop {
        let reply = match tokio::time::timeout_at(give_up, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => break PullEnd::Done,
            Err(_) => {
                tracing::warn!(region = %queue.name, "a pull request got no answer; continuing");
                break PullEnd::Done;
            }
        };
        match reply.status {
            None | Some(StatusCode::OK) => {
                messages.push(reply);
                if messages.len() >= max {
                    break PullEnd::Done;
                }
            }
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(StatusCode::TIMEOUT) => {
                let busy = reply
                    .description
                    .as_deref()
                    .is_some_and(|d| d.contains("Pending"));
                break if busy && messages.is_empty() {
                    PullEnd::Busy
                } else {
                    PullEnd::Done
                };
            }
            Some(StatusCode::NOT_FOUND) => break PullEnd::Done,
            Some(status) if messages.is_empty() => {
                let what = reply.description.unwrap_or_default();
                return Err(unavailable(
                    &format!(
                        "the consumer of region {} refused a pull request",
                        queue.name
                    ),
                    format!("{status} {what}"),
                ));
            }
            Some(_) => break PullEnd::Done,
        }
    };
    Ok((messages, end))
}

/// One pulled NATS message, unpacked.
struct Pulled {
    ack: AckSubject,
    bodies: Vec<Bytes>,
}

fn unpack(message: Message) -> Option<Pulled> {
    let ack = message.reply.as_deref().and_then(AckSubject::parse)?;
    let count = message
        .headers
        .as_ref()
        .and_then(|h| h.get(batch::HEADER))
        .and_then(|v| v.as_str().parse::<usize>().ok());
    let bodies = match count {
        // A bare envelope (a redrive), or a batch header we cannot read: one body, which the
        // worker dead-letters if it cannot decode it.
        None => vec![message.payload],
        Some(count) => {
            batch::unpack(&message.payload, count).unwrap_or_else(|| vec![message.payload])
        }
    };
    Some(Pulled { ack, bodies })
}

/// Turns pulled messages into deliveries: skips other regions' redrives and envelopes done
/// in earlier deliveries, notes expired leases and dead-letters what expired `max_receives`
/// times. Also returns how many envelopes the messages held.
async fn admit(
    bus: &NatsBus,
    queue: &RegionQueue,
    messages: Vec<Message>,
) -> Result<(Vec<Delivery>, usize), BusError> {
    if messages.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let options = &bus.inner.options;
    let now = now_ms();
    let lease = options.visibility_timeout - lease_margin(options.visibility_timeout);
    let deadline_ms = now + lease.as_millis() as u64;
    let redrive_prefix = bus.inner.names.redrive_prefix();
    let mut foreign = Vec::new();
    let mut envelopes = 0;
    let mut candidates = Vec::with_capacity(messages.len());
    for message in messages {
        let subject = message.subject.clone();
        let Some(pulled) = unpack(message) else {
            tracing::warn!(region = %queue.name, %subject, "a pulled message has no ack subject; ignored");
            continue;
        };
        if let Some(target) = subject.as_str().strip_prefix(&redrive_prefix)
            && target != queue.name
        {
            foreign.push(pulled.ack);
            continue;
        }
        envelopes += pulled.bodies.len();
        candidates.push(pulled);
    }
    // Another region's redrive is not ours to apply. If the ack is lost it comes back and
    // is skipped again.
    for ack in &foreign {
        acknowledge(bus, ack, Bytes::from_static(ACK)).await?;
    }
    let records = try_join_all(candidates.iter().map(|pulled| async {
        if pulled.ack.delivered > 1 {
            read_record(bus, &queue.name, pulled.ack.stream_seq).await
        } else {
            Ok(None)
        }
    }))
    .await?;

    let mut deliveries = Vec::with_capacity(candidates.len());
    let mut notes = Vec::new();
    // (message id, attempt) of every envelope whose lease expired.
    let mut expired = Vec::new();
    let mut exhausted = Vec::new();
    let mut all_done = Vec::new();
    {
        let mut open = queue.open.lock().unwrap_or_else(|p| p.into_inner());
        // Deliveries this process never settled (a receiver that dropped them) are gone by
        // now: JetStream delivers them again.
        open.retain(|_, batch| batch.deadline_ms >= now);
        // Back from a retry: counted as open (below), or settled for good.
        let mut retrying = queue.retrying.lock().unwrap_or_else(|p| p.into_inner());
        for pulled in &candidates {
            retrying.remove(&pulled.ack.stream_seq);
        }
        drop(retrying);
        for (pulled, record) in candidates.into_iter().zip(records) {
            let ack = pulled.ack;
            let count = pulled.bodies.len() as u32;
            let done: Vec<u32> = record.as_ref().map(|r| r.done.clone()).unwrap_or_default();
            let remaining: BTreeMap<u32, Bytes> = pulled
                .bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| (i as u32, body))
                .filter(|(i, _)| !done.contains(i))
                .collect();
            if remaining.is_empty() {
                // Every envelope was settled for good; only the final ack was lost.
                all_done.push(ack);
                continue;
            }
            let previous = ack.delivered.saturating_sub(1);
            let lease_expired =
                previous > 0 && record.as_ref().is_none_or(|r| r.settled < previous);
            if lease_expired && previous >= options.max_receives {
                exhausted.push((ack, remaining, record));
                continue;
            }
            if lease_expired {
                notes.push((ack.stream_seq, record.clone()));
                for (index, body) in &remaining {
                    let id = dead_letters::identify(body, &ack, *index).0;
                    expired.push((id, previous));
                }
            }
            for (index, body) in &remaining {
                deliveries.push(Delivery {
                    receipt: receipt(deadline_ms, &ack, *index, count),
                    body: body.clone(),
                    receive_count: ack.delivered,
                });
            }
            open.insert(
                ack.subject.clone(),
                OpenBatch {
                    ack,
                    deadline_ms,
                    count,
                    open: remaining,
                    done,
                    dead: Vec::new(),
                    retry: None,
                    record,
                },
            );
        }
    }
    for ack in &all_done {
        acknowledge(bus, ack, Bytes::from_static(ACK)).await?;
    }
    // Logged per envelope, counted once per receive, as on the embedded bus.
    for (id, attempt) in &expired {
        lease_expired_event(&queue.name, id, *attempt);
    }
    leases_expired_counted(&queue.name, expired.len() as u64);
    let notes = notes.into_iter().map(|(seq, record)| {
        let record = RetryRecord {
            settled: record.as_ref().map_or(0, |r| r.settled),
            done: record.as_ref().map(|r| r.done.clone()).unwrap_or_default(),
            first_failure_ms: record.as_ref().map_or(now, |r| r.first_failure_ms),
            last_failure_ms: now,
            last_error: LEASE_EXPIRED_ERROR.into(),
        };
        async move { write_record(bus, &queue.name, seq, &record).await }
    });
    // The note only improves the dead letter's first failure and error; not fatal.
    for result in join_all(notes).await {
        if let Err(err) = result {
            tracing::debug!(error = %err, "could not note an expired lease");
        }
    }
    let deaths = exhausted.into_iter().map(|(ack, remaining, record)| {
        let attempts = ack.delivered - 1;
        let reason = format!(
            "not settled within the visibility timeout after {attempts} receives (a worker may be crashing on it)"
        );
        let first_failure = record.map_or(now, |r| r.first_failure_ms);
        async move {
            for (index, body) in remaining {
                dead_letters::store(
                    bus,
                    queue,
                    &ack,
                    index,
                    body,
                    attempts,
                    first_failure,
                    &reason,
                )
                .await?;
            }
            acknowledge(bus, &ack, Bytes::from_static(TERM)).await?;
            forget_record(bus, &queue.name, ack.stream_seq).await;
            Ok::<(), BusError>(())
        }
    });
    try_join_all(deaths).await?;
    flush(bus).await?;
    Ok((deliveries, envelopes))
}

/// Ends deliveries; see the module documentation.
pub(super) async fn settle(
    bus: &NatsBus,
    queue: &RegionQueue,
    settlements: Vec<(Receipt, Settle)>,
) -> Result<(), BusError> {
    let stream = &bus.inner.names.stream;
    let parsed = settlements
        .into_iter()
        .map(|(r, s)| parse_receipt(&r, stream, &queue.name).map(|p| (p, s)))
        .collect::<Result<Vec<_>, _>>()?;
    let now = now_ms();
    let mut complete = Vec::new();
    // Settles for deliveries this process no longer holds open: settled already, expired,
    // or handed out by another process.
    let mut strays: Vec<(Parsed, Settle)> = Vec::new();
    {
        let mut open = queue.open.lock().unwrap_or_else(|p| p.into_inner());
        for (receipt, settle) in parsed {
            let live = receipt.deadline_ms >= now;
            let Some(batch) = open.get_mut(&receipt.ack.subject).filter(|_| live) else {
                strays.push((receipt, settle));
                continue;
            };
            let Some(body) = batch.open.remove(&receipt.index) else {
                // Settled already in this delivery: a repeat.
                continue;
            };
            match settle {
                Settle::Ack => batch.done.push(receipt.index),
                Settle::DeadLetter { reason } => batch.dead.push((receipt.index, body, reason)),
                Settle::Retry { after, reason, .. } => {
                    let longest = batch.retry.as_ref().map_or(after, |(d, _)| (*d).max(after));
                    batch.retry = Some((longest, reason));
                }
            }
            if batch.open.is_empty()
                && let Some(batch) = open.remove(&receipt.ack.subject)
            {
                complete.push(batch);
            }
        }
        // A delivery whose lease ended is JetStream's to deliver again.
        open.retain(|_, batch| batch.deadline_ms >= now);
    }
    let finished = join_all(complete.into_iter().map(|batch| finish(bus, queue, batch))).await;
    let strays = join_all(strays.into_iter().map(|(r, s)| stray(bus, queue, r, s))).await;
    let outcome = finished
        .into_iter()
        .chain(strays)
        .collect::<Result<(), _>>();
    flush(bus).await?;
    outcome
}

/// Settles a NATS message once every envelope it handed out was settled.
async fn finish(bus: &NatsBus, queue: &RegionQueue, batch: OpenBatch) -> Result<(), BusError> {
    let region = queue.name.as_str();
    let now = now_ms();
    let first_failure = batch.record.as_ref().map_or(now, |r| r.first_failure_ms);
    let mut done = batch.done;
    for (index, body, reason) in batch.dead {
        dead_letters::store(
            bus,
            queue,
            &batch.ack,
            index,
            body,
            batch.ack.delivered,
            first_failure,
            &reason,
        )
        .await?;
        done.push(index);
    }
    match batch.retry {
        Some((after, reason)) => {
            done.sort_unstable();
            let record = RetryRecord {
                settled: batch.ack.delivered,
                done,
                first_failure_ms: first_failure,
                last_failure_ms: now,
                last_error: reason,
            };
            write_record(bus, region, batch.ack.stream_seq, &record).await?;
            let visibility = bus.inner.options.visibility_timeout;
            queue
                .retrying
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    batch.ack.stream_seq,
                    Retrying {
                        envelopes: u64::from(batch.count).saturating_sub(record.done.len() as u64),
                        until_ms: now + (after + visibility).as_millis() as u64,
                    },
                );
            acknowledge(bus, &batch.ack, nak(after)).await
        }
        None => {
            acknowledge(bus, &batch.ack, Bytes::from_static(ACK)).await?;
            if batch.record.is_some() || batch.ack.delivered > 1 {
                forget_record(bus, region, batch.ack.stream_seq).await;
            }
            Ok(())
        }
    }
}

/// A settle for a delivery this process does not hold open. `Retry` and `DeadLetter` are
/// ignored (late or repeated); an `Ack` still counts: a single-envelope message is
/// acknowledged (JetStream acknowledges by stream sequence, whoever holds it now), an
/// envelope of a batch is recorded as done so no later delivery hands it out again.
async fn stray(
    bus: &NatsBus,
    queue: &RegionQueue,
    receipt: Parsed,
    settle: Settle,
) -> Result<(), BusError> {
    if settle != Settle::Ack {
        return Ok(());
    }
    if receipt.count == 1 {
        return acknowledge(bus, &receipt.ack, Bytes::from_static(ACK)).await;
    }
    let seq = receipt.ack.stream_seq;
    let mut record = read_record(bus, &queue.name, seq)
        .await?
        .unwrap_or_default();
    if !record.done.contains(&receipt.index) {
        record.done.push(receipt.index);
        record.done.sort_unstable();
        write_record(bus, &queue.name, seq, &record).await?;
    }
    Ok(())
}

impl RegionQueue {
    /// The region's deliveries this process holds, among those after the ack floor `floor`:
    /// open ones, and those settled with `Retry` that have not come back yet.
    fn held(&self, now: u64, floor: u64) -> Held {
        let mut held = Held::default();
        let mut seqs = std::collections::HashSet::new();
        {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            for batch in open.values() {
                if batch.deadline_ms >= now && batch.ack.stream_seq > floor {
                    seqs.insert(batch.ack.stream_seq);
                    held.messages += 1;
                    let settled = batch.done.len() + batch.dead.len();
                    held.envelopes += u64::from(batch.count).saturating_sub(settled as u64);
                }
            }
        }
        let mut retrying = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        // At or below the ack floor it was acknowledged, by whichever process.
        retrying.retain(|seq, r| r.until_ms >= now && *seq > floor);
        for (seq, r) in retrying.iter() {
            if !seqs.contains(seq) {
                held.messages += 1;
                held.envelopes += r.envelopes;
            }
        }
        held
    }
}

/// One region's JetStream figures, before they are turned into envelopes.
struct Sample {
    info: consumer::Info,
    dead_letters: u64,
    oldest_age_ms: Option<u64>,
    held: Held,
}

async fn sample(bus: &NatsBus, queue: &RegionQueue) -> Result<Sample, BusError> {
    let info = bus
        .inner
        .topic
        .consumer_info(&queue.name)
        .await
        .map_err(|err| {
            unavailable(
                &format!("cannot read the queue of region {}", queue.name),
                err,
            )
        })?;
    let held = queue.held(now_ms(), info.ack_floor.stream_sequence);
    let dlq = queue.dlq.get_info().await.map_err(|err| {
        unavailable(
            &format!("cannot read the dead letters of region {}", queue.name),
            err,
        )
    })?;
    let unsettled = info.num_pending + info.num_ack_pending as u64;
    // The oldest message the region has not acknowledged is at or after its ack floor.
    let oldest_age_ms = if unsettled > 0 {
        match bus
            .inner
            .topic
            .raw_message_builder()
            .sequence(info.ack_floor.stream_sequence + 1)
            .next_by_subject(bus.inner.names.topic_filter())
            .send()
            .await
        {
            Ok(message) => {
                let stored_ms = (message.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
                Some(now_ms().saturating_sub(stored_ms))
            }
            Err(_) => None,
        }
    } else {
        None
    };
    Ok(Sample {
        info,
        dead_letters: dlq.state.messages,
        oldest_age_ms,
        held,
    })
}

/// Every region's figures, in envelopes (Regis messages), not NATS messages: see `counts`.
/// `in_flight` includes messages waiting out a retry delay: JetStream counts both as
/// delivered and not acknowledged.
pub(super) async fn stats(bus: &NatsBus) -> Result<Vec<QueueStats>, BusError> {
    let regions = &bus.inner.regions;
    let samples = try_join_all(regions.iter().map(|queue| sample(bus, queue))).await?;
    let inputs: Vec<Inputs> = samples
        .iter()
        .map(|s| Inputs {
            pending: s.info.num_pending,
            ack_pending: s.info.num_ack_pending as u64,
            held: s.held,
            ..Inputs::default()
        })
        .collect();
    let hubs = if inputs.iter().any(Inputs::needs_hubs) {
        Some(counts::hubs(bus).await?)
    } else {
        None
    };
    let figures = try_join_all(samples.iter().zip(inputs).map(|(s, mut inputs)| {
        let hubs = hubs.as_ref();
        async move {
            let Some(hubs) = hubs.filter(|_| inputs.needs_hubs()) else {
                return Ok::<_, BusError>(inputs.figures());
            };
            let delivered = s.info.delivered.stream_sequence;
            let undelivered = counts::after(bus, hubs, delivered).await?;
            inputs.undelivered = undelivered;
            if inputs.needs_window() {
                let after_floor =
                    counts::after(bus, hubs, s.info.ack_floor.stream_sequence).await?;
                inputs.window = counts::window(after_floor, undelivered);
            }
            Ok(inputs.figures())
        }
    }))
    .await?;
    Ok(regions
        .iter()
        .zip(samples)
        .zip(figures)
        .map(|((queue, s), f)| QueueStats {
            name: queue.name.clone(),
            depth: f.depth,
            in_flight: f.in_flight,
            dead_letters: s.dead_letters,
            oldest_age_ms: s.oldest_age_ms,
            estimated: f.estimated,
        })
        .collect())
}

/// Deletes the queues and dead letters of regions no longer configured.
pub(super) async fn remove_unconfigured(bus: &NatsBus) -> Result<(), BusError> {
    let inner = &bus.inner;
    let mut consumers = inner.topic.consumers();
    let mut stale = Vec::new();
    while let Some(info) = consumers.next().await {
        let info = info.map_err(|err| unavailable("cannot list the consumers", err))?;
        let ours = info
            .config
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with(CONSUMER_DESCRIPTION));
        if ours && !inner.regions.iter().any(|r| r.name == info.name) {
            // In NATS messages (batches): the region is going, its exact count does not matter.
            stale.push((info.name, info.num_pending + info.num_ack_pending as u64));
        }
    }
    for (region, backlog) in stale {
        inner.topic.delete_consumer(&region).await.map_err(|err| {
            unavailable(&format!("cannot delete the queue of region {region}"), err)
        })?;
        let dead = match inner
            .js
            .delete_stream(inner.names.dlq_stream(&region))
            .await
        {
            Ok(_) => "dropped",
            Err(_) => "none found",
        };
        tracing::warn!(
            region = %region,
            nats_messages = backlog,
            dead_letters = dead,
            "region removed from the config: its queue and dead letters were dropped"
        );
    }
    Ok(())
}

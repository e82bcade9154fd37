//! A region's dead letters: the stream `<stream>_DLQ_<region>`, one message per dead
//! message id (subject `<stream>.dlq.<region>.<id>`, at most one message per subject), whose
//! body is the original envelope and whose headers carry the error, attempts and times.
//! JetStream's `max_age` removes them after `delivery.dead_letter_retention`.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::queue::RegionQueue;
use super::receipt::AckSubject;
use super::{Names, NatsBus, NatsOptions, storage, unavailable};
use crate::bus::{BusError, DeadLetter, Selection, dead_lettered_event};
use crate::clock::now_ms;
use crate::envelope::{Envelope, MessageId};

const ATTEMPTS: &str = "Regis-Attempts";
const PUBLISHED_AT: &str = "Regis-Published-At";
const FIRST_FAILURE: &str = "Regis-First-Failure";
const LAST_FAILURE: &str = "Regis-Last-Failure";
const ERROR: &str = "Regis-Error";
const STREAM_SEQ: &str = "Regis-Stream-Seq";
/// Longest error kept, in bytes.
const MAX_ERROR: usize = 4096;

/// Opens the region's dead-letter stream, creating it if missing and keeping its retention
/// in line with the config.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    region: &str,
    options: &NatsOptions,
    replicas: usize,
) -> Result<stream::Stream, BusError> {
    let name = names.dlq_stream(region);
    let retention = options.dead_letter_retention;
    let wanted = stream::Config {
        name: name.clone(),
        description: Some(format!("Regis dead letters of region {region}")),
        subjects: vec![names.dlq_filter(region)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: retention,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::Old,
        // The window deduplicating a repeated dead-lettering cannot exceed max_age.
        duplicate_window: retention.min(Duration::from_secs(120)),
        ..Default::default()
    };
    match js.get_stream(&name).await {
        Ok(existing) => {
            let config = existing.cached_info().config.clone();
            if config.max_age == retention {
                return Ok(existing);
            }
            let updated = stream::Config {
                max_age: retention,
                duplicate_window: config.duplicate_window.min(retention),
                ..config
            };
            js.update_stream(updated).await.map_err(|err| {
                storage(
                    &format!("cannot update the retention of stream {name}"),
                    err,
                )
            })?;
            js.get_stream(&name)
                .await
                .map_err(|err| unavailable(&format!("cannot open stream {name}"), err))
        }
        Err(_) => match js.create_stream(wanted).await {
            Ok(stream) => Ok(stream),
            Err(create) => js
                .get_stream(&name)
                .await
                .map_err(|_| storage(&format!("cannot create stream {name}"), create)),
        },
    }
}

/// The id and publish time of a body; an undecodable one gets an id derived from its place
/// in the stream (sequence, and index in its batch), and the time the stream stored it.
pub(super) fn identify(body: &[u8], ack: &AckSubject, index: u32) -> (MessageId, u64) {
    match Envelope::decode(body) {
        Ok(envelope) => (envelope.id, envelope.published_at_ms()),
        Err(_) => (
            MessageId(uuid::Uuid::from_u64_pair(u64::from(index), ack.stream_seq)),
            ack.timestamp_ns / 1_000_000,
        ),
    }
}

/// Header values are one line.
fn one_line(s: &str) -> String {
    let mut line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.truncate(line.floor_char_boundary(MAX_ERROR));
    line
}

/// Stores a dead letter (envelope `index` of the delivery `ack`) and waits for JetStream's
/// acknowledgement.
#[allow(clippy::too_many_arguments)]
pub(super) async fn store(
    bus: &NatsBus,
    queue: &RegionQueue,
    ack: &AckSubject,
    index: u32,
    body: Bytes,
    attempts: u32,
    first_failure_ms: u64,
    reason: &str,
) -> Result<(), BusError> {
    let region = queue.name.as_str();
    let (id, published_at_ms) = identify(&body, ack, index);
    let mut headers = HeaderMap::new();
    headers.insert(ATTEMPTS, attempts.to_string());
    headers.insert(PUBLISHED_AT, published_at_ms.to_string());
    headers.insert(FIRST_FAILURE, first_failure_ms.to_string());
    headers.insert(LAST_FAILURE, now_ms().to_string());
    headers.insert(ERROR, one_line(reason));
    headers.insert(STREAM_SEQ, ack.stream_seq.to_string());
    let publish = PublishMessage::build()
        .payload(body)
        .headers(headers)
        // The same delivery dead-lettered twice (a repeated settle) is stored once.
        .message_id(format!(
            "{region}.{}.{index}.{}",
            ack.stream_seq, ack.delivered
        ));
    bus.inner
        .js
        .send_publish(bus.inner.names.dlq_subject(region, id), publish)
        .await
        .map_err(|err| unavailable("cannot store a dead letter", err))?
        .await
        .map_err(|err| unavailable("the dead letters did not acknowledge", err))?;
    dead_lettered_event(region, id, attempts, reason);
    Ok(())
}

fn header_u64(message: &StreamMessage, name: &str) -> u64 {
    message
        .headers
        .get(name)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

fn to_dead_letter(region: &str, message: StreamMessage) -> DeadLetter {
    let id = message
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(MessageId(uuid::Uuid::nil()));
    DeadLetter {
        id,
        region: region.to_string(),
        attempts: u32::try_from(header_u64(&message, ATTEMPTS)).unwrap_or(u32::MAX),
        published_at_ms: header_u64(&message, PUBLISHED_AT),
        first_failure_ms: header_u64(&message, FIRST_FAILURE),
        last_failure_ms: header_u64(&message, LAST_FAILURE),
        last_error: message
            .headers
            .get(ERROR)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default(),
        body: message.payload,
    }
}

/// The dead letters at or after stream sequence `from`, at most `limit`, oldest first.
async fn scan(
    bus: &NatsBus,
    queue: &RegionQueue,
    limit: usize,
) -> Result<Vec<StreamMessage>, BusError> {
    let filter = bus.inner.names.dlq_filter(&queue.name);
    let mut next = 1;
    let mut found = Vec::new();
    while found.len() < limit {
        let message = queue
            .dlq
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(filter.clone())
            .send()
            .await;
        match message {
            Ok(message) => {
                next = message.sequence + 1;
                found.push(message);
            }
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
            Err(err) => return Err(unavailable("cannot read the dead letters", err)),
        }
    }
    Ok(found)
}

async fn find(
    bus: &NatsBus,
    queue: &RegionQueue,
    id: MessageId,
) -> Result<Option<StreamMessage>, BusError> {
    let subject = bus.inner.names.dlq_subject(&queue.name, id);
    match queue.dlq.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(unavailable("cannot read a dead letter", err)),
    }
}

async fn select(
    bus: &NatsBus,
    queue: &RegionQueue,
    which: &Selection,
) -> Result<Vec<StreamMessage>, BusError> {
    match which {
        Selection::All => scan(bus, queue, usize::MAX).await,
        Selection::Ids(ids) => {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.extend(find(bus, queue, *id).await?);
            }
            Ok(found)
        }
    }
}

pub(super) async fn list(
    bus: &NatsBus,
    queue: &RegionQueue,
    limit: usize,
) -> Result<Vec<DeadLetter>, BusError> {
    Ok(scan(bus, queue, limit)
        .await?
        .into_iter()
        .map(|m| to_dead_letter(&queue.name, m))
        .collect())
}

pub(super) async fn get(
    bus: &NatsBus,
    queue: &RegionQueue,
    id: MessageId,
) -> Result<Option<DeadLetter>, BusError> {
    Ok(find(bus, queue, id)
        .await?
        .map(|m| to_dead_letter(&queue.name, m)))
}

/// Publishes each selected dead letter back to the region (acknowledged by JetStream)
/// before removing it from the dead letters: a crash in between redrives it twice, which
/// delivery tolerates, instead of losing it.
pub(super) async fn redrive(
    bus: &NatsBus,
    queue: &RegionQueue,
    which: Selection,
) -> Result<u64, BusError> {
    let subject = async_nats::Subject::from(bus.inner.names.redrive_subject(&queue.name));
    let mut moved = 0;
    for message in select(bus, queue, &which).await? {
        bus.inner
            .js
            .publish(subject.clone(), message.payload.clone())
            .await
            .map_err(|err| unavailable("cannot redrive a dead letter", err))?
            .await
            .map_err(|err| unavailable("the topic did not acknowledge a redrive", err))?;
        queue
            .dlq
            .delete_message(message.sequence)
            .await
            .map_err(|err| unavailable("cannot remove a redriven dead letter", err))?;
        moved += 1;
    }
    Ok(moved)
}

pub(super) async fn purge(
    bus: &NatsBus,
    queue: &RegionQueue,
    which: Selection,
) -> Result<u64, BusError> {
    match which {
        Selection::All => queue
            .dlq
            .purge()
            .await
            .map(|r| r.purged)
            .map_err(|err| unavailable("cannot purge the dead letters", err)),
        Selection::Ids(ids) => {
            let mut purged = 0;
            for id in ids {
                purged += queue
                    .dlq
                    .purge()
                    .filter(bus.inner.names.dlq_subject(&queue.name, id))
                    .await
                    .map(|r| r.purged)
                    .map_err(|err| unavailable("cannot purge a dead letter", err))?;
            }
            Ok(purged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_one_bounded_header_line() {
        assert_eq!(one_line("WRONGTYPE\r\nsecond"), "WRONGTYPE  second");
        let long = "é".repeat(MAX_ERROR);
        let line = one_line(&long);
        assert!(line.len() <= MAX_ERROR && line.starts_with('é'));
    }

    #[test]
    fn an_undecodable_body_gets_a_stable_id() {
        let ack = AckSubject::parse("$JS.ACK.REGIS.r0.1.77.5.1764000000123000000.0").unwrap();
        let (id, published) = identify(b"garbage", &ack, 3);
        assert_eq!(id, MessageId(uuid::Uuid::from_u64_pair(3, 77)));
        assert_eq!(published, 1_764_000_000_123);
    }
}

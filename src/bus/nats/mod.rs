//! The NATS JetStream bus: the topic, every region's queue and its dead letters kept by a
//! NATS server or cluster, so hubs and workers can run on many machines.
//!
//! # Layout in NATS (for `bus.stream = "REGIS"`)
//!
//! ```text
//! stream REGIS            subjects REGIS.topic.<node id>     the topic; one NATS message per
//!                                  REGIS.redrive.<region>    publish call (a batch of up to 128
//!                                                            envelopes, header Regis-Batch,
//!                                                            and the hub's running totals,
//!                                                            header Regis-Totals);
//!                                                            interest retention: removed once
//!                                                            every region acknowledged it
//! consumer REGIS/<region> durable pull consumer              one region's queue; ack_wait =
//!                                                            delivery.visibility_timeout
//! stream REGIS_DLQ_<region> subject REGIS.dlq.<region>.<id>  the region's dead letters: the
//!                                                            original body, error, attempts and
//!                                                            timestamps in headers; one per id;
//!                                                            max_age = dead_letter_retention
//! kv REGIS_meta           high_water                         a ceiling over every version ever
//!                                                            published (the hub clock's seed)
//! kv REGIS_retries        <region>.<stream seq>              per NATS message retried: the last
//!                                                            delivery settled with Retry, the
//!                                                            envelopes done, first failure,
//!                                                            last error
//! ```
//!
//! # Invariants
//!
//! * [`Publish::publish`] resolves only after JetStream acknowledged every message (PubAck):
//!   the stream has stored it (with `replicas > 1`, on a quorum). nats-server writes a
//!   message to its file before acknowledging it, so `kill -9` of the server loses nothing
//!   acknowledged; it fsyncs in the background (`sync_interval`, 2 minutes by default), so a
//!   power loss of a single-replica server can. Contract 1 therefore needs `replicas = 3` on
//!   a cluster or nats-server >= 2.10 with `sync_interval: always`; `regis serve` warns at
//!   start when `replicas = 1` (docs/nats.md).
//! * The high-water ceiling in `REGIS_meta` is raised *before* a message whose version is at
//!   or above it is sent, so it is always above every version in the stream.
//! * A region's consumer never stops delivering a message by itself (`max_deliver = -1`):
//!   `Retry` is a `Nak` with the delay, and the worker, not JetStream, decides when a failing
//!   message is poison — a Redis outage can make a message be retried for hours without it
//!   ever being dead-lettered. The bus dead-letters on its own only a message whose lease
//!   expired unsettled (a worker crashing on it) after `max_receives` receives, exactly as
//!   the embedded bus does. JetStream does not say whether the previous delivery ended with
//!   a `Nak` or a lease expiry, so every `Retry` is recorded in `REGIS_retries` first; a
//!   redelivery whose predecessor has no record expired. (JetStream's own `max_deliver` and
//!   its MAX_DELIVERIES advisory count `Nak`s too, which would dead-letter messages during a
//!   Redis outage.)
//! * Every envelope of a batch is its own delivery. A NATS message is acknowledged only once
//!   every envelope in it was applied or dead-lettered; if some asked for `Retry`, the retry
//!   record lists the envelopes done and the redelivery hands out only the others.
//! * A dead letter is stored (PubAck) before the original is settled; a crash between the
//!   two dead-letters it again, under the same id (one message per id is kept).
//! * A redrive publishes the dead letter back onto the topic as `REGIS.redrive.<region>`
//!   (new message, fresh receive count) before removing it from the dead letters. Every
//!   region's consumer sees it; the others acknowledge it unseen.

mod batch;
mod config;
mod counts;
mod dead_letters;
mod queue;
mod receipt;
mod topic;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::{
    BusError, BusErrorKind, Consume, DeadLetter, DeadLetters, Delivery, Outgoing, Publish,
    QueueStats, Receipt, Selection, Settle, Stats,
};
use crate::clock::Version;
use crate::envelope::MessageId;

pub use config::NatsConfig;

/// The queue semantics and regions a [`NatsBus`] serves.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// The regions whose queues this process uses (their consumers are created if missing).
    pub regions: Vec<String>,
    /// This hub's origin id; its messages go to `<stream>.topic.<node_id>`.
    pub node_id: u16,
    /// How long a lease lasts (the consumers' `ack_wait`).
    pub visibility_timeout: Duration,
    /// A message whose lease expired unsettled this many receives is dead-lettered.
    pub max_receives: u32,
    /// How long dead letters (and retry records) are kept.
    pub dead_letter_retention: Duration,
    /// Largest message the hub accepts; checked against the server's `max_payload`.
    pub max_message_bytes: usize,
}

impl NatsOptions {
    /// The options of a config file, for `regions`.
    pub fn from_config(config: &crate::config::Config, regions: Vec<String>) -> NatsOptions {
        NatsOptions {
            regions,
            node_id: config.node_id,
            visibility_timeout: config.delivery.visibility_timeout,
            max_receives: config.delivery.max_receives,
            dead_letter_retention: config.delivery.dead_letter_retention,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

/// Handle to the NATS bus; cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    options: NatsOptions,
    /// Set once [`NatsBus::close`] runs: disconnections are expected from then on.
    closing: Arc<AtomicBool>,
    /// How long a JetStream request may take (`bus.request_timeout`).
    request_timeout: Duration,
    topic: jetstream::stream::Stream,
    meta: kv::Store,
    retries: kv::Store,
    ceiling: Arc<topic::Ceiling>,
    appender: topic::Appender,
    regions: Vec<queue::RegionQueue>,
}

/// Every name Regis uses in NATS, derived from `bus.stream`.
#[derive(Clone, Debug)]
struct Names {
    stream: String,
}

impl Names {
    fn topic_subject(&self, node_id: u16) -> String {
        format!("{}.topic.{node_id}", self.stream)
    }
    /// Matches every hub's subject (not redrives).
    fn hub_subjects(&self) -> String {
        format!("{}.topic.*", self.stream)
    }
    fn topic_subjects(&self) -> Vec<String> {
        vec![
            format!("{}.topic.*", self.stream),
            format!("{}.redrive.*", self.stream),
        ]
    }
    /// Matches every subject of the topic stream.
    fn topic_filter(&self) -> String {
        format!("{}.>", self.stream)
    }
    fn redrive_subject(&self, region: &str) -> String {
        format!("{}.redrive.{region}", self.stream)
    }
    fn redrive_prefix(&self) -> String {
        format!("{}.redrive.", self.stream)
    }
    fn dlq_stream(&self, region: &str) -> String {
        format!("{}_DLQ_{region}", self.stream)
    }
    fn dlq_subject(&self, region: &str, id: MessageId) -> String {
        format!("{}.dlq.{region}.{id}", self.stream)
    }
    fn dlq_filter(&self, region: &str) -> String {
        format!("{}.dlq.{region}.*", self.stream)
    }
    fn meta_bucket(&self) -> String {
        format!("{}_meta", self.stream)
    }
    fn retries_bucket(&self) -> String {
        format!("{}_retries", self.stream)
    }
}

/// NATS did not answer or refused: worth trying again.
fn unavailable(what: &str, err: impl std::fmt::Display) -> BusError {
    BusError::new(
        BusErrorKind::Unavailable,
        format!("NATS: {what}: {err}; is nats-server running with JetStream and reachable?"),
    )
}

/// JetStream answered with an error about stored state.
fn storage(what: &str, err: impl std::fmt::Display) -> BusError {
    BusError::new(
        BusErrorKind::Storage,
        format!("NATS JetStream: {what}: {err}"),
    )
}

impl NatsBus {
    /// Connects to NATS, creating what is missing: the topic stream, the key-value buckets,
    /// and for every region in `options` its consumer and dead-letter stream. A region new
    /// to the stream receives the messages published from now on.
    pub async fn connect(config: &NatsConfig, options: NatsOptions) -> Result<NatsBus, BusError> {
        let closing = Arc::new(AtomicBool::new(false));
        let client = config.connect(closing.clone()).await?;
        let max_payload = client.server_info().max_payload;
        // Headers and subject add a little to every message.
        if max_payload > 0 && options.max_message_bytes + 1024 > max_payload {
            return Err(BusError::new(
                BusErrorKind::Invalid,
                format!(
                    "max_message_bytes ({}) does not fit the NATS server's max_payload ({max_payload} bytes); lower max_message_bytes or raise max_payload in nats-server's config",
                    options.max_message_bytes
                ),
            ));
        }
        let builder = jetstream::context::ContextBuilder::new()
            .timeout(config.request_timeout)
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(true);
        let (js, api_prefix) = match &config.domain {
            Some(domain) => (
                builder.domain(domain.clone()).build(client.clone()),
                format!("$JS.{domain}.API"),
            ),
            None => (builder.build(client.clone()), "$JS.API".to_string()),
        };
        let names = Names {
            stream: config.stream.clone(),
        };
        let topic = topic::ensure_stream(&js, &names, config.replicas).await?;
        let meta = ensure_bucket(
            &js,
            kv::Config {
                bucket: names.meta_bucket(),
                description: "Regis: the ceiling over every published version".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let retries = ensure_bucket(
            &js,
            kv::Config {
                bucket: names.retries_bucket(),
                description: "Regis: messages settled with Retry (last settled delivery, first failure, last error)".into(),
                history: 1,
                max_age: options.dead_letter_retention,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let mut regions = Vec::with_capacity(options.regions.len());
        for region in &options.regions {
            regions.push(
                queue::RegionQueue::ensure(
                    &js,
                    &names,
                    &api_prefix,
                    region,
                    &options,
                    config.replicas,
                )
                .await?,
            );
        }
        let ceiling = Arc::new(topic::Ceiling::default());
        // Batches fill the server's max_payload, less room for headers, at most 1 MiB.
        let batch_bytes = max_payload.saturating_sub(8 * 1024).clamp(1024, 1 << 20);
        let appender = topic::Appender::start(
            js.clone(),
            meta.clone(),
            ceiling.clone(),
            topic.clone(),
            names.topic_subject(options.node_id),
            batch_bytes,
        );
        let bus = NatsBus {
            inner: Arc::new(Inner {
                client,
                js,
                names,
                options,
                closing,
                request_timeout: config.request_timeout,
                topic,
                meta,
                retries,
                ceiling,
                appender,
                regions,
            }),
        };
        tracing::info!(
            stream = %bus.inner.names.stream,
            regions = bus.inner.regions.len(),
            "connected to NATS JetStream"
        );
        Ok(bus)
    }

    /// Deletes the consumer and dead letters of every region of the stream that is not in
    /// this bus's regions, as the embedded bus forgets a region removed from the config.
    /// `regis serve` calls it; a `regis worker`, which knows only its own region, does not.
    pub async fn remove_unconfigured_regions(&self) -> Result<(), BusError> {
        queue::remove_unconfigured(self).await
    }

    /// Sends whatever the client still buffers (acks, publishes) to the server and closes
    /// the connection; every clone of this bus is closed with it.
    pub async fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        // Let receives in progress finish (a worker stopping mid-receive has its leased
        // messages released at once rather than stranded until their lease ends).
        for region in &self.inner.regions {
            let _idle = region.pulls.write().await;
        }
        if let Err(err) = self.inner.client.flush().await {
            tracing::warn!(error = %err, "could not flush the NATS connection while closing");
        }
        if let Err(err) = self.inner.client.drain().await {
            tracing::debug!(error = %err, "could not drain the NATS connection while closing");
        }
    }

    fn region(&self, region: &str) -> Result<&queue::RegionQueue, BusError> {
        self.inner
            .regions
            .iter()
            .find(|r| r.name == region)
            .ok_or_else(|| BusError::unknown_region(region))
    }
}

/// Opens a key-value bucket, creating it if missing (another process may be doing the same).
///
/// The bucket's stream is created directly, as the key-value layer itself would: the
/// client's own bucket creation first asks for account details in a form nats-server 2.9
/// does not answer.
async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, BusError> {
    if let Ok(store) = js.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    let bucket = config.bucket.clone();
    let duplicate_window = if config.max_age.is_zero() {
        Duration::from_secs(120)
    } else {
        config.max_age.min(Duration::from_secs(120))
    };
    let stream = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(config.description),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: config.history.max(1),
        max_age: config.max_age,
        storage: config.storage,
        num_replicas: config.num_replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        duplicate_window,
        ..Default::default()
    };
    let created = js.create_stream(stream).await.err();
    js.get_key_value(bucket.clone())
        .await
        .map_err(|err| match created {
            Some(create) => storage(&format!("cannot create key-value bucket {bucket}"), create),
            None => storage(&format!("cannot open key-value bucket {bucket}"), err),
        })
}

impl Publish for NatsBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        if messages.is_empty() {
            return Ok(());
        }
        topic::publish(self, messages).await
    }

    async fn high_water(&self) -> Result<Option<Version>, BusError> {
        topic::high_water(self).await
    }
}

impl Consume for NatsBus {
    async fn receive(
        &self,
        region: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        self.region(region)?;
        queue::receive(self, region, max.max(1), wait).await
    }

    async fn settle(
        &self,
        region: &str,
        settlements: Vec<(Receipt, Settle)>,
    ) -> Result<(), BusError> {
        let queue = self.region(region)?;
        if settlements.is_empty() {
            return Ok(());
        }
        queue::settle(self, queue, settlements).await
    }
}

impl DeadLetters for NatsBus {
    async fn list(&self, region: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let queue = self.region(region)?;
        dead_letters::list(self, queue, limit).await
    }

    async fn get(&self, region: &str, id: MessageId) -> Result<Option<DeadLetter>, BusError> {
        let queue = self.region(region)?;
        dead_letters::get(self, queue, id).await
    }

    async fn redrive(&self, region: &str, which: Selection) -> Result<u64, BusError> {
        let queue = self.region(region)?;
        dead_letters::redrive(self, queue, which).await
    }

    async fn purge(&self, region: &str, which: Selection) -> Result<u64, BusError> {
        let queue = self.region(region)?;
        dead_letters::purge(self, queue, which).await
    }
}

impl Stats for NatsBus {
    async fn stats(&self) -> Result<Vec<QueueStats>, BusError> {
        queue::stats(self).await
    }
}

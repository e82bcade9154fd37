//! A region's worker: consumers that lease batches, apply them to the region's Redis and
//! settle every message.
//!
//! Each consumer loops: receive up to `batch_size` messages (long-polling, so an idle region
//! costs nothing), decode them, apply the batch in one round trip, settle each message:
//!
//! * applied → `Ack`;
//! * the command failed (`WRONGTYPE`, syntax, a database the region's Redis does not have)
//!   → `Retry` after [`retry_delay`] (exponential in the message's receive count, with
//!   jitter), and `DeadLetter` once it has been received `max_receives` times — the others
//!   in the batch are settled on their own, so one poison message never holds them up;
//! * the message met a transient failure of its own (`OOM`, `BUSY`, … for it or its
//!   database) → `Retry` after [`retry_delay`], never dead-lettered;
//! * the Redis could not be reached at all → every message `Retry` after `retry_backoff`,
//!   then the consumer waits for the Redis to answer `PING` (backing off up to
//!   `retry_backoff_max`, or until the region's health probe sees it answer) before it
//!   leases more. The consumer does the backing off here, not the messages, so the
//!   region's backlog drains as soon as the Redis returns; outages never count towards
//!   dead-lettering.
//!
//! On shutdown a consumer stops leasing, finishes and settles the batch in hand, and exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, Failure, RegionRedis};
use crate::bus::remote::wire::RegionSettings;
use crate::bus::{Consume, Delivery, Receipt, Settle};
use crate::clock::now_us;
use crate::config::{Config, RegionConfig};
use crate::envelope::Envelope;
use crate::health::RedisHealth;
use crate::latency::LatencyWindow;
use crate::metrics::{Applied, RegionMetrics, Retried};

/// How long one receive waits for the first message.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// Everything one region's worker needs to know.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Region name.
    pub region: String,
    /// The region's Redis URL.
    pub redis_url: String,
    /// Consumers.
    pub concurrency: usize,
    /// Most messages per batch.
    pub batch_size: usize,
    /// Timeout of a Redis round trip.
    pub redis_timeout: Duration,
    /// Receives before a failing message is dead-lettered.
    pub max_receives: u32,
    /// First retry delay.
    pub retry_backoff: Duration,
    /// Longest retry delay.
    pub retry_backoff_max: Duration,
}

impl WorkerSettings {
    /// The settings of `region`'s worker from the hub's config (as `regis serve` runs it),
    /// with its Redis at `redis_url`.
    pub fn from_config(
        config: &Config,
        region: &RegionConfig,
        redis_url: String,
    ) -> WorkerSettings {
        WorkerSettings {
            region: region.name.clone(),
            redis_url,
            concurrency: config.concurrency(region),
            batch_size: config.worker.batch_size,
            redis_timeout: config.worker.redis_timeout,
            max_receives: config.delivery.max_receives,
            retry_backoff: config.delivery.retry_backoff,
            retry_backoff_max: config.delivery.retry_backoff_max,
        }
    }

    /// The settings of a remote worker of `region`, from what its hub answered
    /// (`settings`), with its Redis at `redis_url`.
    pub fn from_hub(
        settings: &RegionSettings,
        region: &str,
        redis_url: String,
        concurrency: usize,
        batch_size: usize,
    ) -> WorkerSettings {
        let ms = Duration::from_millis;
        WorkerSettings {
            region: region.to_string(),
            redis_url,
            concurrency,
            batch_size,
            redis_timeout: ms(settings.redis_timeout_ms),
            max_receives: settings.max_receives,
            retry_backoff: ms(settings.retry_backoff_ms),
            retry_backoff_max: ms(settings.retry_backoff_max_ms),
        }
    }
}

/// `base * 2^(attempt-1)`, capped at `max`, with "equal jitter" (uniform in the upper half)
/// so consumers that failed together do not retry together.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    half + Duration::from_nanos(rand::random_range(
        0..=half.as_nanos().min(u64::MAX as u128) as u64,
    ))
}

/// How long a message that was not applied waits before it is delivered again, on its
/// `receive_count`-th receive: `retry_backoff × 2^(receive_count-1)`, capped at
/// `retry_backoff_max`, with jitter ([`backoff`]) — when the failure was the message's own
/// (`outage` false). During an outage of the region's Redis (`outage` true) it is
/// `retry_backoff`: the consumer itself then waits for the Redis to answer, so the backlog
/// is not held back once it does, and receives counted during an outage do not inflate the
/// message's later delays.
pub fn retry_delay(settings: &WorkerSettings, receive_count: u32, outage: bool) -> Duration {
    if outage {
        settings.retry_backoff
    } else {
        backoff(
            settings.retry_backoff,
            settings.retry_backoff_max,
            receive_count,
        )
    }
}

/// Starts `settings.concurrency` consumers for one region, and the probe that keeps
/// `health` current while the region is idle; they run until `shutdown`.
pub fn spawn<C: Consume + Clone>(
    settings: WorkerSettings,
    consume: C,
    applier: Applier,
    latency: Arc<LatencyWindow>,
    health: Arc<RedisHealth>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), crate::apply::BadRedisUrl> {
    let probe = RegionRedis::new(&settings.redis_url, settings.redis_timeout)?;
    tasks.spawn(crate::health::probe(
        health.clone(),
        probe,
        shutdown.clone(),
    ));
    for consumer in 0..settings.concurrency.max(1) {
        let redis = RegionRedis::new(&settings.redis_url, settings.redis_timeout)?;
        let worker = Consumer {
            settings: settings.clone(),
            consume: consume.clone(),
            applier: applier.clone(),
            latency: latency.clone(),
            health: health.clone(),
            metrics: RegionMetrics::new(&settings.region),
            redis,
            consumer,
        };
        tasks.spawn(worker.run(shutdown.clone()));
    }
    Ok(())
}

struct Consumer<C> {
    settings: WorkerSettings,
    consume: C,
    applier: Applier,
    latency: Arc<LatencyWindow>,
    health: Arc<RedisHealth>,
    metrics: RegionMetrics,
    redis: RegionRedis,
    consumer: usize,
}

impl<C: Consume> Consumer<C> {
    async fn run(mut self, shutdown: CancellationToken) {
        let region = self.settings.region.clone();
        tracing::debug!(region, consumer = self.consumer, "consumer started");
        let mut bus_failures = 0;
        while !shutdown.is_cancelled() {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.consume.receive(&region, self.settings.batch_size, RECEIVE_WAIT) => r,
            };
            let deliveries = match received {
                Ok(deliveries) => {
                    bus_failures = 0;
                    deliveries
                }
                Err(err) => {
                    bus_failures += 1;
                    tracing::warn!(region, error = %err, "cannot receive from the bus; trying again");
                    let pause = backoff(
                        self.settings.retry_backoff,
                        self.settings.retry_backoff_max,
                        bus_failures,
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            let outage = self.process(deliveries).await;
            if outage {
                self.wait_for_redis(&shutdown).await;
            }
        }
        tracing::debug!(region, consumer = self.consumer, "consumer stopped");
    }

    /// Applies and settles one batch; returns true when the Redis was unreachable.
    async fn process(&mut self, deliveries: Vec<Delivery>) -> bool {
        let region = self.settings.region.clone();
        let mut settlements: Vec<(Receipt, Settle)> = Vec::with_capacity(deliveries.len());
        let mut leased: Vec<Delivery> = Vec::with_capacity(deliveries.len());
        let mut envelopes: Vec<Envelope> = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match Envelope::decode(&delivery.body) {
                Ok(envelope) => {
                    leased.push(delivery);
                    envelopes.push(envelope);
                }
                Err(err) => settlements.push((
                    delivery.receipt,
                    Settle::DeadLetter {
                        reason: format!("cannot decode the message: {err}"),
                    },
                )),
            }
        }
        let started = Instant::now();
        let result = self.applier.apply(&mut self.redis, &envelopes).await;
        let duration = started.elapsed();
        let mut outage = false;
        match result {
            Ok(outcomes) => {
                self.health.report_up();
                let applied_at = now_us();
                let mut latencies = Vec::with_capacity(outcomes.len());
                let mut commands = 0u64;
                for ((delivery, envelope), outcome) in leased.iter().zip(&envelopes).zip(outcomes) {
                    match outcome {
                        Ok(()) => {
                            latencies.push(Duration::from_micros(
                                applied_at.saturating_sub(envelope.published_at_us),
                            ));
                            commands += envelope.commands.len() as u64;
                            settlements.push((delivery.receipt.clone(), Settle::Ack));
                        }
                        Err(failure) => {
                            settlements.push(self.failed(delivery, envelope, failure, false))
                        }
                    }
                }
                self.latency.record_many(latencies.iter().copied());
                Applied {
                    region: &self.metrics,
                    messages: latencies.len() as u64,
                    commands,
                    duration: Some(duration),
                    latencies: &latencies,
                }
                .emit();
            }
            Err(failure) => {
                self.health.report_down(failure.message());
                tracing::warn!(
                    region,
                    error = failure.message(),
                    messages = leased.len(),
                    "region's Redis unavailable; holding its backlog until it answers"
                );
                outage = true;
                for (delivery, envelope) in leased.iter().zip(&envelopes) {
                    let settle = self.failed(
                        delivery,
                        envelope,
                        Failure::Transient(failure.message().to_string()),
                        true,
                    );
                    settlements.push(settle);
                }
            }
        }
        self.settle(settlements).await;
        outage
    }

    /// The settle for a message that was not applied; `outage` when the region's Redis as a
    /// whole could not be reached.
    fn failed(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        failure: Failure,
        outage: bool,
    ) -> (Receipt, Settle) {
        let region = self.settings.region.as_str();
        let attempt = delivery.receive_count;
        let after = retry_delay(&self.settings, attempt, outage);
        let settle = match &failure {
            Failure::Permanent(reason) if attempt >= self.settings.max_receives => {
                Settle::DeadLetter {
                    reason: reason.clone(),
                }
            }
            Failure::Permanent(reason) => {
                Retried {
                    region: &self.metrics,
                    transient: false,
                }
                .emit();
                tracing::warn!(message_id = %envelope.id, region, attempt, error = %reason, retry_in = ?after, "message failed; will retry");
                Settle::Retry {
                    after,
                    reason: reason.clone(),
                    transient: false,
                }
            }
            Failure::Transient(reason) => {
                Retried {
                    region: &self.metrics,
                    transient: true,
                }
                .emit();
                if outage {
                    tracing::warn!(message_id = %envelope.id, region, attempt, error = %reason, "region unavailable; message will be retried");
                } else {
                    tracing::warn!(message_id = %envelope.id, region, attempt, error = %reason, retry_in = ?after, "message met a transient failure; will retry");
                }
                Settle::Retry {
                    after,
                    reason: reason.clone(),
                    transient: true,
                }
            }
        };
        (delivery.receipt.clone(), settle)
    }

    /// Settles, retrying a few times; if the bus stays unreachable the leases simply expire
    /// and the messages are delivered again.
    async fn settle(&self, settlements: Vec<(Receipt, Settle)>) {
        let region = self.settings.region.as_str();
        for attempt in 1..=5u32 {
            match self.consume.settle(region, settlements.clone()).await {
                Ok(()) => return,
                Err(err) if err.is_retriable() && attempt < 5 => {
                    tokio::time::sleep(backoff(
                        self.settings.retry_backoff,
                        self.settings.retry_backoff_max,
                        attempt,
                    ))
                    .await;
                }
                Err(err) => {
                    tracing::warn!(region, error = %err, "cannot settle; the messages will be delivered again after the visibility timeout");
                    return;
                }
            }
        }
    }

    /// Waits, backing off, until the region's Redis answers PING (or shutdown).
    async fn wait_for_redis(&mut self, shutdown: &CancellationToken) {
        let region = self.settings.region.clone();
        let mut attempt = 1;
        loop {
            let pause = backoff(
                self.settings.retry_backoff,
                self.settings.retry_backoff_max,
                attempt,
            );
            // The region's probe may see the Redis return before this backoff ends.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.health.back_up() => {}
            }
            match self.redis.ping().await {
                Ok(()) => {
                    self.health.report_up();
                    tracing::info!(region, "region's Redis answers again; draining its backlog");
                    return;
                }
                Err(failure) => {
                    self.health.report_down(failure.message());
                    tracing::debug!(
                        region,
                        error = failure.message(),
                        attempt,
                        "region's Redis still unavailable"
                    );
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        for attempt in 1..=40 {
            let full = base.saturating_mul(1u32 << (attempt - 1).min(30)).min(max);
            let d = backoff(base, max, attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(backoff(base, max, 40) >= Duration::from_secs(15));
    }

    fn settings(base_ms: u64, max_ms: u64) -> WorkerSettings {
        WorkerSettings {
            region: "r".into(),
            redis_url: "redis://127.0.0.1:1".into(),
            concurrency: 1,
            batch_size: 1,
            redis_timeout: Duration::from_secs(1),
            max_receives: 5,
            retry_backoff: Duration::from_millis(base_ms),
            retry_backoff_max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn a_messages_own_failures_back_off_with_its_receive_count() {
        let s = settings(100, 30_000);
        let ms = Duration::from_millis;
        // receive 1: [50, 100] ms; 2: [100, 200]; 3: [200, 400]; ... capped at [15, 30] s.
        for (receive, full) in [
            (1, ms(100)),
            (2, ms(200)),
            (3, ms(400)),
            (4, ms(800)),
            (9, ms(25_600)),
            (10, ms(30_000)),
            (50, ms(30_000)),
            (u32::MAX, ms(30_000)),
        ] {
            for _ in 0..50 {
                let d = retry_delay(&s, receive, false);
                assert!(
                    d >= full / 2 && d <= full,
                    "receive {receive}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        // Receive 0 (never delivered, as a redriven count might say) is the first delay.
        assert!(retry_delay(&s, 0, false) <= ms(100));
        // The delays jitter: 50 draws of the third receive are not all the same.
        let draws: std::collections::HashSet<Duration> =
            (0..50).map(|_| retry_delay(&s, 3, false)).collect();
        assert!(draws.len() > 1, "{draws:?}");
        // They grow: the mean of each receive's draws is above the previous one's.
        let mean = |receive| {
            (0..200)
                .map(|_| retry_delay(&s, receive, false))
                .sum::<Duration>()
                / 200
        };
        assert!(mean(2) > mean(1) && mean(3) > mean(2) && mean(6) > mean(5));
    }

    #[test]
    fn an_outage_retries_messages_after_the_base_delay_whatever_their_count() {
        let s = settings(100, 30_000);
        for receive in [1, 2, 10, 1000] {
            assert_eq!(retry_delay(&s, receive, true), Duration::from_millis(100));
        }
    }
}

//! Every metric Regis exports, as typed events.
//!
//! Code that wants to count something emits one of these structs; the metric names, labels
//! and units live here and nowhere else. `GET /metrics` renders them in the Prometheus text
//! format through the recorder installed by [`install_prometheus`].

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            // The recorder keeps every histogram sample until the next render or upkeep: a
            // hub nobody scrapes would grow by every message's latency (hundreds of MiB after
            // ten million messages). Upkeep folds the samples into the buckets every second.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "regis_published_messages_total",
        "Messages acknowledged by the ingress (durable)."
    );
    describe_counter!(
        "regis_published_commands_total",
        "Commands in acknowledged messages."
    );
    describe_counter!(
        "regis_refused_total",
        "Requests refused at ingress, by reason."
    );
    describe_counter!(
        "regis_applied_messages_total",
        "Messages applied to a region's Redis."
    );
    describe_counter!(
        "regis_applied_commands_total",
        "Commands applied to a region's Redis."
    );
    describe_counter!(
        "regis_retries_total",
        "Deliveries to be tried again, by reason: transient (the region's Redis was unavailable), permanent (the command failed; counts towards max_receives), lease_expired (not settled within the visibility timeout)."
    );
    describe_counter!(
        "regis_dead_letters_total",
        "Messages moved to a region's dead letters."
    );
    describe_counter!(
        "regis_dead_letters_redriven_total",
        "Dead letters moved back into their region's queue by an operator."
    );
    describe_counter!(
        "regis_dead_letters_purged_total",
        "Dead letters deleted by an operator."
    );
    describe_counter!(
        "regis_dead_letters_expired_total",
        "Dead letters removed after dead_letter_retention (embedded bus; on NATS, JetStream's max_age removes them unseen)."
    );
    describe_histogram!(
        "regis_publish_to_apply_seconds",
        Unit::Seconds,
        "Time from publish to applied in the region."
    );
    describe_histogram!(
        "regis_apply_duration_seconds",
        Unit::Seconds,
        "Time to apply one batch to a region's Redis."
    );
    describe_gauge!(
        "regis_redis_up",
        "1 when the region's Redis answered the last request, else 0."
    );
    describe_gauge!(
        "regis_queue_depth",
        "Messages waiting for the region (not in flight)."
    );
    describe_gauge!(
        "regis_queue_in_flight",
        "Messages leased and not yet settled."
    );
    describe_gauge!(
        "regis_queue_dead_letters",
        "Messages in the region's dead letters."
    );
    describe_gauge!(
        "regis_queue_oldest_age_seconds",
        "Age of the oldest message not yet applied."
    );
    describe_gauge!(
        "regis_queue_estimated",
        "1 when the region's depth and in-flight figures are estimates (NATS bus only), else 0."
    );
    describe_gauge!("regis_resp_connections", "Open RESP connections.");
    describe_counter!(
        "regis_resp_refused_connections_total",
        "RESP connections refused before being served, by reason."
    );
    describe_counter!(
        "regis_resp_protocol_errors_total",
        "RESP connections closed for a protocol error."
    );
    // Remote workers and authentication (issue 6).
    describe_counter!(
        "regis_remote_leased_messages_total",
        "Messages leased to remote workers over the lease API."
    );
    describe_counter!(
        "regis_remote_settled_messages_total",
        "Deliveries settled by remote workers over the lease API."
    );
    describe_gauge!(
        "regis_bus_full",
        "1 while publishes are refused because the bus reached max_bus_bytes or the disk is full."
    );
    describe_counter!(
        "regis_http_auth_refused_total",
        "HTTP requests refused for want of the right token, by reason: missing, invalid (no role has it), wrong_role."
    );
}

/// Messages accepted at ingress and durable.
pub struct Published {
    /// Messages.
    pub messages: u64,
    /// Commands in them.
    pub commands: u64,
}

impl Published {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_published_messages_total").increment(self.messages);
        counter!("regis_published_commands_total").increment(self.commands);
    }
}

/// A request refused at ingress.
pub struct Refused {
    /// The refusal code (`unknown_command`, `read_command`, `too_large`, …).
    pub code: &'static str,
}

impl Refused {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_refused_total", "reason" => self.code).increment(1);
    }
}

/// The metric handles of one region, resolved once so the apply path allocates nothing.
#[derive(Clone)]
pub struct RegionMetrics {
    applied_messages: metrics::Counter,
    applied_commands: metrics::Counter,
    apply_duration: metrics::Histogram,
    end_to_end: metrics::Histogram,
    retried_transient: metrics::Counter,
    retried_permanent: metrics::Counter,
    redis_up: metrics::Gauge,
}

impl RegionMetrics {
    /// Handles for `region`.
    pub fn new(region: &str) -> RegionMetrics {
        let mut metrics = RegionMetrics::without_redis(region);
        metrics.redis_up = gauge!("regis_redis_up", "region" => region.to_string());
        metrics
    }

    /// Handles for a region whose Redis this process does not see (the hub, for a region
    /// whose worker runs elsewhere): everything but `regis_redis_up`, which a series stuck at
    /// 0 would wrongly report down.
    pub fn without_redis(region: &str) -> RegionMetrics {
        let r = region.to_string();
        // Register the region's rarer series too, so they export 0 from the start rather
        // than appearing with the first dead letter (a missing series defeats `rate()` and
        // alerts written as `increase(...) > 0`).
        for name in [
            "regis_dead_letters_total",
            "regis_dead_letters_redriven_total",
            "regis_dead_letters_purged_total",
            "regis_dead_letters_expired_total",
        ] {
            let _ = counter!(name, "region" => r.clone());
        }
        let _ = counter!("regis_retries_total", "region" => r.clone(), "reason" => "lease_expired");
        RegionMetrics {
            applied_messages: counter!("regis_applied_messages_total", "region" => r.clone()),
            applied_commands: counter!("regis_applied_commands_total", "region" => r.clone()),
            apply_duration: histogram!("regis_apply_duration_seconds", "region" => r.clone()),
            end_to_end: histogram!("regis_publish_to_apply_seconds", "region" => r.clone()),
            retried_transient: counter!("regis_retries_total", "region" => r.clone(), "reason" => "transient"),
            retried_permanent: counter!("regis_retries_total", "region" => r, "reason" => "permanent"),
            redis_up: metrics::Gauge::noop(),
        }
    }
}

/// One batch applied to a region.
pub struct Applied<'a> {
    /// The region's handles.
    pub region: &'a RegionMetrics,
    /// Messages applied.
    pub messages: u64,
    /// Commands applied.
    pub commands: u64,
    /// Time the Redis round trip(s) took; `None` where it was not measured (the hub, for a
    /// remote worker's batch).
    pub duration: Option<Duration>,
    /// Publish→applied latency of each applied message.
    pub latencies: &'a [Duration],
}

impl Applied<'_> {
    /// Records the event.
    pub fn emit(self) {
        self.region.applied_messages.increment(self.messages);
        self.region.applied_commands.increment(self.commands);
        if let Some(duration) = self.duration {
            self.region.apply_duration.record(duration.as_secs_f64());
        }
        for latency in self.latencies {
            self.region.end_to_end.record(latency.as_secs_f64());
        }
    }
}

/// A delivery settled with Retry.
pub struct Retried<'a> {
    /// The region's handles.
    pub region: &'a RegionMetrics,
    /// The Redis was unavailable (true) or the command failed (false).
    pub transient: bool,
}

impl Retried<'_> {
    /// Records the event.
    pub fn emit(self) {
        if self.transient {
            self.region.retried_transient.increment(1);
        } else {
            self.region.retried_permanent.increment(1);
        }
    }
}

/// Whether a region's Redis answered.
pub struct RedisReachable<'a> {
    /// The region's handles.
    pub region: &'a RegionMetrics,
    /// It answered.
    pub up: bool,
}

impl RedisReachable<'_> {
    /// Records the event.
    pub fn emit(self) {
        self.region.redis_up.set(if self.up { 1.0 } else { 0.0 });
    }
}

/// A message moved to a region's dead letters.
pub struct DeadLettered<'a> {
    /// Region name.
    pub region: &'a str,
}

impl DeadLettered<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_dead_letters_total", "region" => self.region.to_string()).increment(1);
    }
}

/// A region's queue figures, sampled.
pub struct QueueSampled<'a> {
    /// The figures.
    pub stats: &'a crate::bus::QueueStats,
}

impl QueueSampled<'_> {
    /// Records the event.
    pub fn emit(self) {
        let region = self.stats.name.clone();
        gauge!("regis_queue_depth", "region" => region.clone()).set(self.stats.depth as f64);
        gauge!("regis_queue_in_flight", "region" => region.clone())
            .set(self.stats.in_flight as f64);
        gauge!("regis_queue_dead_letters", "region" => region.clone())
            .set(self.stats.dead_letters as f64);
        gauge!("regis_queue_oldest_age_seconds", "region" => region.clone())
            .set(self.stats.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        gauge!("regis_queue_estimated", "region" => region).set(if self.stats.estimated {
            1.0
        } else {
            0.0
        });
    }
}

// --- RESP ingress -------------------------------------------------------------------------

/// A RESP connection opened (`open` true) or closed.
pub struct RespConnection {
    /// Opened rather than closed.
    pub open: bool,
}

impl RespConnection {
    /// Records the event.
    pub fn emit(self) {
        let delta = if self.open { 1.0 } else { -1.0 };
        gauge!("regis_resp_connections").increment(delta);
    }
}

/// A RESP connection refused before it was served.
pub struct RespConnectionRefused {
    /// `max_connections` or `tls_handshake`.
    pub reason: &'static str,
}

impl RespConnectionRefused {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_resp_refused_connections_total", "reason" => self.reason).increment(1);
    }
}

/// A RESP connection closed for breaking the protocol.
pub struct RespProtocolError;

impl RespProtocolError {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_resp_protocol_errors_total").increment(1);
    }
}

// --- Operating: retries, dead-letter admin and expiry --------------------------------------

/// Deliveries whose leases expired unsettled; they will be delivered again.
pub struct LeaseExpired<'a> {
    /// Region name.
    pub region: &'a str,
    /// How many.
    pub count: u64,
}

impl LeaseExpired<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_retries_total", "region" => self.region.to_string(), "reason" => "lease_expired")
            .increment(self.count);
    }
}

/// Dead letters an operator moved back into their region's queue.
pub struct DeadLettersRedriven<'a> {
    /// Region name.
    pub region: &'a str,
    /// How many.
    pub count: u64,
}

impl DeadLettersRedriven<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_dead_letters_redriven_total", "region" => self.region.to_string())
            .increment(self.count);
    }
}

/// Dead letters an operator deleted.
pub struct DeadLettersPurged<'a> {
    /// Region name.
    pub region: &'a str,
    /// How many.
    pub count: u64,
}

impl DeadLettersPurged<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_dead_letters_purged_total", "region" => self.region.to_string())
            .increment(self.count);
    }
}

/// Dead letters removed because they outlived `dead_letter_retention`.
pub struct DeadLettersExpired<'a> {
    /// Region name.
    pub region: &'a str,
    /// How many.
    pub count: u64,
}

impl DeadLettersExpired<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_dead_letters_expired_total", "region" => self.region.to_string())
            .increment(self.count);
    }
}

/// Messages handed to a remote worker by one lease.
pub struct RemoteLeased<'a> {
    /// Region name.
    pub region: &'a str,
    /// How many.
    pub count: u64,
}

impl RemoteLeased<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_remote_leased_messages_total", "region" => self.region.to_string())
            .increment(self.count);
    }
}

/// Deliveries a remote worker settled.
pub struct RemoteSettled<'a> {
    /// Region name.
    pub region: &'a str,
    /// How many.
    pub count: u64,
}

impl RemoteSettled<'_> {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_remote_settled_messages_total", "region" => self.region.to_string())
            .increment(self.count);
    }
}

/// An HTTP request refused by authentication.
pub struct AuthRefused {
    /// `missing`, `invalid` or `wrong_role`.
    pub reason: &'static str,
}

impl AuthRefused {
    /// Records the event.
    pub fn emit(self) {
        counter!("regis_http_auth_refused_total", "reason" => self.reason).increment(1);
    }
}

/// The bus ran out of room for publishes, or has room again.
pub struct BusFull {
    /// Whether publishes are refused now.
    pub full: bool,
}

impl BusFull {
    /// Records the event.
    pub fn emit(self) {
        gauge!("regis_bus_full").set(if self.full { 1.0 } else { 0.0 });
    }
}

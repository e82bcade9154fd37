//! The lease API: how a worker running in its own region, far from the hub, consumes that
//! region's queue over HTTP ([`crate::bus::remote::RemoteBus`] is its client).
//!
//! ```text
//! GET  /v1/worker/regions/{region}           the region's settings (JSON): convergence, retries, lease length
//! POST /v1/worker/regions/{region}/lease     settle what is done, then lease up to `max` (postcard both ways)
//! POST /v1/worker/regions/{region}/settle    settle only (postcard in, 204 out)
//! POST /v1/worker/regions/{region}/release   a stopping worker's waiting leases end, empty (204)
//! ```
//!
//! A lease whose worker went away while it waited would still take messages when they
//! arrive (the hub cannot tell a silent peer from a slow one) and hold them for a visibility
//! timeout. A worker that stops cleanly therefore releases its session first; one that dies
//! or loses the link costs that delay once, which is what leases are for.
//!
//! A lease is the bus's own: the messages stay invisible for `delivery.visibility_timeout`
//! and come back if the worker dies or the link drops before it settles. Settling is the
//! bus's idempotent settle, so a settlement resent after a timeout does no harm.
//!
//! Long-polling: a lease waits up to `wait_ms` for a first message, then up to `linger_ms`
//! to fill its batch. A region's lease requests take turns (a fair lock): a worker keeps
//! several requests in flight, and if all of them woke for the same first message they
//! would all return within a millisecond with a message each and leave nobody waiting at
//! the hub for the rest of the round trip. Taking turns, each covers its linger of arrivals
//! and the next is already waiting. Settlements carried by a lease are applied before it
//! takes its turn, so they never wait behind another request's long-poll.
//!
//! The hub reports a remote region as it does a local one: when a worker's settlements
//! arrive, each `Ack` counts as applied (`regis_applied_*`, the status's APPLIED/S) with its
//! latency from publish to the hub receiving the Ack — the worker's apply plus the return
//! trip, an upper bound of publish→applied — and each `Retry` as a retry
//! (`regis_retries_total{reason="transient"|"permanent"}`). For that the hub remembers, per
//! message leased and not yet settled, its publish time and command count ([`Report`]).
//! Only the first settlement of a delivery counts, so a settlement resent after a lost
//! answer is not counted twice; a settlement for a lease the hub no longer remembers (it
//! restarted, or the lease expired long ago) settles the message but is not counted.
//!
//! Bodies are limited to [`wire::MAX_REQUEST_BYTES`]. The memory a lease holds is its own
//! batch, at most `max` messages and [`wire::MAX_LEASE_BYTES`] of bodies (see
//! [`Filling`]), so a region far behind costs the hub disk, not memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes as Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::http::{ApiState, body_refusal, bus_error_response, error_response};
use crate::bus::remote::wire::{
    self, LeaseRequest, LeaseResponse, RegionSettings, ReleaseRequest, SettleRequest, WireDelivery,
};
use crate::bus::{Bus, BusError, Delivery};
use crate::clock::now_us;
use crate::config::{Config, WorkerPlacement};
use crate::envelope::{Envelope, Head};
use crate::latency::LatencyWindow;
use crate::metrics::{Applied, RegionMetrics, Retried};

/// What the lease routes know of every region.
pub struct LeaseState {
    regions: HashMap<String, LeaseRegion>,
    /// Cancelled when the hub stops: waiting leases answer at once (empty) instead of
    /// holding the graceful shutdown for a whole poll.
    stopping: CancellationToken,
    /// Worker sessions with leases waiting: a token that ends them, how many wait, and
    /// the entry's generation (a released session joined again is a new entry).
    sessions: std::sync::Mutex<HashMap<u64, Session>>,
    generations: std::sync::atomic::AtomicU64,
}

struct LeaseRegion {
    settings: RegionSettings,
    /// Lease requests of this region take turns (see the module docs).
    turn: Arc<Mutex<()>>,
    /// What the remote workers' settlements are reported as.
    report: Report,
}

/// Reports a region's remote settlements as the region's workers report what they apply:
/// remembers each message leased until its settlement arrives.
struct Report {
    metrics: RegionMetrics,
    leased: std::sync::Mutex<Leased>,
    /// How long a leased message is remembered: twice the visibility timeout, after which
    /// its lease expired long ago and the message was (or will be) delivered again.
    forget_after: Duration,
}

struct Leased {
    /// By receipt.
    heads: HashMap<String, LeasedHead>,
    /// When entries past `forget_after` were last dropped.
    pruned: Instant,
}

#[derive(Clone, Copy)]
struct LeasedHead {
    head: Head,
    leased_at: Instant,
}

/// The settlements of one request the hub had leased, taken out of [`Report`] until the
/// bus settled them.
struct Settled {
    entries: Vec<(String, LeasedHead, Kind)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Ack,
    Retry { transient: bool },
    DeadLetter,
}

impl Report {
    fn new(region: &str, visibility_timeout: Duration) -> Report {
        Report {
            // The hub does not see a remote region's Redis: no `regis_redis_up`.
            metrics: RegionMetrics::without_redis(region),
            leased: std::sync::Mutex::new(Leased {
                heads: HashMap::new(),
                pruned: Instant::now(),
            }),
            forget_after: visibility_timeout.saturating_mul(2),
        }
    }

    /// Remembers `deliveries`, just leased. A body that does not decode is not remembered
    /// (the worker dead-letters it).
    fn leased(&self, deliveries: &[Delivery]) {
        if deliveries.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(leased.pruned) >= self.forget_after / 2 {
            let forget_after = self.forget_after;
            leased
                .heads
                .retain(|_, h| now.duration_since(h.leased_at) < forget_after);
            leased.pruned = now;
        }
        for delivery in deliveries {
            if let Ok(head) = Envelope::peek(&delivery.body) {
                leased.heads.insert(
                    delivery.receipt.0.clone(),
                    LeasedHead {
                        head,
                        leased_at: now,
                    },
                );
            }
        }
    }

    /// Takes out the leases `settle` ends (those remembered).
    fn take(&self, settle: &[wire::Settlement]) -> Settled {
        let mut leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        let entries = settle
            .iter()
            .filter_map(|s| {
                let (receipt, head) = leased.heads.remove_entry(s.receipt.as_str())?;
                let kind = match s.outcome {
                    wire::Outcome::Ack => Kind::Ack,
                    wire::Outcome::Retry { transient, .. } => Kind::Retry { transient },
                    wire::Outcome::DeadLetter { .. } => Kind::DeadLetter,
                };
                Some((receipt, head, kind))
            })
            .collect();
        Settled { entries }
    }

    /// The bus did not settle them: remember them again for the worker's next attempt.
    fn put_back(&self, settled: Settled) {
        let mut leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        for (receipt, head, _) in settled.entries {
            leased.heads.insert(receipt, head);
        }
    }

    /// Counts them: Acks as applied, `received_us` (when the hub received them) minus
    /// their publish time as their latency, into `latency` too; Retries as retries. Dead
    /// letters are counted by the bus.
    fn record(&self, settled: Settled, received_us: u64, latency: Option<&LatencyWindow>) {
        let mut latencies = Vec::new();
        let mut commands = 0u64;
        for (_, leased, kind) in settled.entries {
            match kind {
                Kind::Ack => {
                    latencies.push(Duration::from_micros(
                        received_us.saturating_sub(leased.head.published_at_us),
                    ));
                    commands += leased.head.commands as u64;
                }
                Kind::Retry { transient } => Retried {
                    region: &self.metrics,
                    transient,
                }
                .emit(),
                Kind::DeadLetter => {}
            }
        }
        if latencies.is_empty() {
            return;
        }
        if let Some(window) = latency {
            window.record_many(latencies.iter().copied());
        }
        Applied {
            region: &self.metrics,
            messages: latencies.len() as u64,
            commands,
            duration: None,
            latencies: &latencies,
        }
        .emit();
    }
}

struct Session {
    released: CancellationToken,
    waiting: usize,
    generation: u64,
}

/// A lease's registration in its session; unregisters when dropped.
struct SessionGuard<'a> {
    state: &'a LeaseState,
    session: u64,
    generation: u64,
    released: CancellationToken,
}

impl LeaseState {
    fn join(&self, session: u64) -> SessionGuard<'_> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.entry(session).or_insert_with(|| Session {
            released: CancellationToken::new(),
            waiting: 0,
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        entry.waiting += 1;
        SessionGuard {
            state: self,
            session,
            generation: entry.generation,
            released: entry.released.clone(),
        }
    }

    fn release(&self, session: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = sessions.remove(&session) {
            entry.released.cancel();
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut sessions = self
            .state
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = sessions.get_mut(&self.session)
            && entry.generation == self.generation
        {
            entry.waiting -= 1;
            if entry.waiting == 0 {
                sessions.remove(&self.session);
            }
        }
    }
}

impl LeaseState {
    /// From the hub's configuration; waiting leases end when `stopping` is cancelled.
    pub fn from_config(config: &Config, stopping: CancellationToken) -> LeaseState {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let regions = config
            .regions
            .iter()
            .map(|region| {
                let settings = RegionSettings {
                    region: region.name.clone(),
                    wire_version: wire::WIRE_VERSION,
                    convergence: config.convergence,
                    tombstone_ttl_ms: ms(config.tombstone_ttl()),
                    max_receives: config.delivery.max_receives,
                    retry_backoff_ms: ms(config.delivery.retry_backoff),
                    retry_backoff_max_ms: ms(config.delivery.retry_backoff_max),
                    visibility_timeout_ms: ms(config.delivery.visibility_timeout),
                    redis_timeout_ms: ms(config.worker.redis_timeout),
                    placement: match region.worker {
                        WorkerPlacement::Local => "local".into(),
                        WorkerPlacement::Remote => "remote".into(),
                    },
                };
                (
                    region.name.clone(),
                    LeaseRegion {
                        settings,
                        turn: Arc::new(Mutex::new(())),
                        report: Report::new(&region.name, config.delivery.visibility_timeout),
                    },
                )
            })
            .collect();
        LeaseState {
            regions,
            stopping,
            sessions: std::sync::Mutex::new(HashMap::new()),
            generations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn region(&self, name: &str) -> Result<&LeaseRegion, Box<Response>> {
        self.regions.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.regions.keys().map(String::as_str).collect();
            known.sort_unstable();
            Box::new(error_response(
                StatusCode::NOT_FOUND,
                "unknown_region",
                format!(
                    "unknown region {name:?}: this hub's regions are {}",
                    known.join(", ")
                ),
            ))
        })
    }
}

/// The lease routes, to merge into the hub's router.
pub fn lease_routes<B: Bus>() -> Router<ApiState<B>> {
    Router::new()
        .route("/v1/worker/regions/{region}", get(settings::<B>))
        .route("/v1/worker/regions/{region}/lease", post(lease::<B>))
        .route("/v1/worker/regions/{region}/settle", post(settle::<B>))
        .route("/v1/worker/regions/{region}/release", post(release::<B>))
        .layer(DefaultBodyLimit::max(wire::MAX_REQUEST_BYTES))
}

async fn settings<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
) -> Response {
    match state.lease.region(&region) {
        Ok(r) => (StatusCode::OK, Json(r.settings.clone())).into_response(),
        Err(response) => *response,
    }
}

fn decode<T: DeserializeOwned>(body: Result<Body, BytesRejection>) -> Result<T, Box<Response>> {
    let body = body.map_err(|rejection| {
        Box::new(body_refusal(rejection, || {
            format!(
                "lease and settle requests may be at most {} bytes; settle fewer deliveries per request",
                wire::MAX_REQUEST_BYTES
            )
        }))
    })?;
    postcard::from_bytes(&body).map_err(|err| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!(
                "the body is not a lease API request ({err}); the worker and the hub must run the same Regis release (lease API version {})",
                wire::WIRE_VERSION
            ),
        ))
    })
}

/// Settles what a remote worker sent, and reports it ([`Report`]).
async fn apply_settlements<B: Bus>(
    state: &ApiState<B>,
    region: &str,
    settle: Vec<wire::Settlement>,
) -> Result<(), Response> {
    let received_us = now_us();
    if settle.len() > wire::MAX_SETTLEMENTS {
        return Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_settlements",
            format!(
                "{} settlements in one request; send at most {}",
                settle.len(),
                wire::MAX_SETTLEMENTS
            ),
        ));
    }
    if settle.is_empty() {
        return Ok(());
    }
    let report = state.lease.region(region).ok().map(|r| &r.report);
    let settled = report.map(|report| report.take(&settle));
    let count = settle.len() as u64;
    let settlements = settle.into_iter().map(wire::Settlement::into_bus).collect();
    if let Err(err) = state.bus.settle(region, settlements).await {
        if let (Some(report), Some(settled)) = (report, settled) {
            report.put_back(settled);
        }
        return Err(bus_error_response(err));
    }
    crate::metrics::RemoteSettled { region, count }.emit();
    if let (Some(report), Some(settled)) = (report, settled) {
        let latency = state
            .regions
            .iter()
            .find(|r| r.name == region)
            .map(|r| r.latency.as_ref());
        report.record(settled, received_us, latency);
    }
    Ok(())
}

async fn lease<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
    body: Result<Body, BytesRejection>,
) -> Response {
    let (turn, visibility_timeout_ms) = match state.lease.region(&region) {
        Ok(r) => (r.turn.clone(), r.settings.visibility_timeout_ms),
        Err(response) => return *response,
    };
    let request: LeaseRequest = match decode(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    if !(1..=wire::MAX_LEASE).contains(&request.max) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_max",
            format!(
                "max {} is out of range: lease 1 to {} messages",
                request.max,
                wire::MAX_LEASE
            ),
        );
    }
    if let Err(response) = apply_settlements(&state, &region, request.settle).await {
        return response;
    }
    let wait = Duration::from_millis(u64::from(request.wait_ms)).min(wire::MAX_WAIT);
    let linger = Duration::from_millis(u64::from(request.linger_ms)).min(wire::MAX_LINGER);
    let max = request.max as usize;
    let deliveries = {
        let stopping = &state.lease.stopping;
        // The wait counts from the request's arrival, the time spent waiting for its turn
        // included: a worker's requests in an idle region all come back within `wait`.
        let deadline = tokio::time::Instant::now() + wait;
        let batch = async {
            let Ok(_turn) = tokio::time::timeout_at(deadline, turn.lock()).await else {
                return Ok(Vec::new());
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let filling = Filling::new(max, state.hub.max_message_bytes());
            receive_batch(&state.bus, &region, filling, left, linger).await
        };
        let session = state.lease.join(request.session);
        let received = tokio::select! {
            received = batch => received,
            _ = stopping.cancelled() => Ok(Vec::new()),
            _ = session.released.cancelled() => Ok(Vec::new()),
        };
        drop(session);
        match received {
            Ok(deliveries) => deliveries,
            Err(err) => return bus_error_response(err),
        }
    };
    crate::metrics::RemoteLeased {
        region: &region,
        count: deliveries.len() as u64,
    }
    .emit();
    if let Ok(r) = state.lease.region(&region) {
        r.report.leased(&deliveries);
    }
    let response = LeaseResponse {
        visibility_timeout_ms,
        deliveries: deliveries.into_iter().map(WireDelivery::from).collect(),
    };
    match postcard::to_stdvec(&response) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, wire::CONTENT_TYPE)],
            bytes,
        )
            .into_response(),
        // Cannot happen for these types; the leases expire and are delivered again.
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encode",
            format!("cannot encode the lease: {err}"),
        ),
    }
}

/// A lease being filled: it stops at `max` messages or at [`wire::MAX_LEASE_BYTES`] of
/// message bodies, whichever comes first.
///
/// The bus cannot be told a byte budget, and what it leased cannot be handed back without
/// counting as a receive, so the budget is kept by asking it for no more messages than fit
/// even if each were as large as a message may be (`largest`: the hub's
/// `max_message_bytes`, or a larger body already seen). Small messages therefore take a few
/// receives of `MAX_LEASE_BYTES / largest` (32 at the default 256 KiB) instead of one.
struct Filling {
    deliveries: Vec<Delivery>,
    bytes: usize,
    max: usize,
    largest: usize,
}

impl Filling {
    fn new(max: usize, largest: usize) -> Filling {
        Filling {
            deliveries: Vec::new(),
            bytes: 0,
            max,
            largest: largest.max(1),
        }
    }

    /// How many messages the next receive may ask for, `None` once the lease is full. The
    /// first receive always may take one, however large.
    fn room(&self) -> Option<usize> {
        let count = self.max.saturating_sub(self.deliveries.len());
        let bytes = wire::MAX_LEASE_BYTES.saturating_sub(self.bytes) / self.largest;
        let bytes = if self.deliveries.is_empty() {
            bytes.max(1)
        } else {
            bytes
        };
        Some(count.min(bytes)).filter(|&n| n > 0)
    }

    fn extend(&mut self, more: Vec<Delivery>) {
        for delivery in &more {
            self.bytes += delivery.body.len();
            self.largest = self.largest.max(delivery.body.len());
        }
        self.deliveries.extend(more);
    }
}

/// Fills `filling`: waits `wait` for a first message, then up to `linger` for more (taking
/// at once what is already there, however many receives the byte budget needs).
async fn receive_batch<B: Bus>(
    bus: &B,
    region: &str,
    mut filling: Filling,
    wait: Duration,
    linger: Duration,
) -> Result<Vec<Delivery>, BusError> {
    let Some(room) = filling.room() else {
        return Ok(Vec::new());
    };
    let first = bus.receive(region, room, wait).await?;
    if first.is_empty() {
        return Ok(first);
    }
    filling.extend(first);
    let deadline = tokio::time::Instant::now() + linger;
    while let Some(room) = filling.room() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let more = bus.receive(region, room, left).await?;
        if more.is_empty() {
            break;
        }
        filling.extend(more);
    }
    Ok(filling.deliveries)
}

async fn settle<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
    body: Result<Body, BytesRejection>,
) -> Response {
    if let Err(response) = state.lease.region(&region) {
        return *response;
    }
    let request: SettleRequest = match decode(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match apply_settlements(&state, &region, request.settle).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

async fn release<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
    body: Result<Body, BytesRejection>,
) -> Response {
    if let Err(response) = state.lease.region(&region) {
        return *response;
    }
    let request: ReleaseRequest = match decode(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    state.lease.release(request.session);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::bus::Receipt;

    fn deliveries(n: usize, size: usize) -> Vec<Delivery> {
        (0..n)
            .map(|i| Delivery {
                receipt: Receipt(format!("f:{i}:1")),
                body: Bytes::from(vec![1u8; size]),
                receive_count: 1,
            })
            .collect()
    }

    fn message(published_at_us: u64, commands: usize) -> Bytes {
        let envelope = Envelope {
            id: crate::envelope::MessageId::new(),
            version: crate::clock::Version::from_packed(1),
            published_at_us,
            db: 0,
            commands: (0..commands)
                .map(|i| crate::command::Command::from_strs(&["SET", &format!("k{i}"), "v"]))
                .collect(),
        };
        Bytes::from(envelope.encode())
    }

    fn ack(receipt: &str) -> wire::Settlement {
        wire::Settlement {
            receipt: receipt.into(),
            outcome: wire::Outcome::Ack,
        }
    }

    #[test]
    fn a_remote_ack_is_reported_once_with_its_latency_to_the_hub() {
        let report = Report::new("r1", Duration::from_secs(30));
        let delivery = |receipt: &str, at: u64, commands: usize| Delivery {
            receipt: Receipt(receipt.into()),
            body: message(at, commands),
            receive_count: 1,
        };
        report.leased(&[
            delivery("f:1:1", 1_000_000, 2),
            delivery("f:2:1", 1_500_000, 1),
            Delivery {
                receipt: Receipt("f:3:1".into()),
                body: Bytes::from_static(b"not an envelope"),
                receive_count: 1,
            },
        ]);
        // The bus failed to settle: the worker sends them again, still counted then.
        let settled = report.take(&[ack("f:1:1"), ack("f:3:1")]);
        assert_eq!(
            settled.entries.len(),
            1,
            "an undecodable body is not remembered"
        );
        report.put_back(settled);
        let window = LatencyWindow::default();
        let settled = report.take(&[
            ack("f:1:1"),
            wire::Settlement {
                receipt: "f:2:1".into(),
                outcome: wire::Outcome::Retry {
                    after_ms: 10,
                    reason: "down".into(),
                    transient: true,
                },
            },
        ]);
        assert_eq!(settled.entries.len(), 2);
        report.record(settled, 1_250_000, Some(&window));
        let summary = window.last_minute();
        assert_eq!(summary.count, 1, "the Ack, not the Retry: {summary:?}");
        assert!((summary.p50_ms - 250.0).abs() < 1.0, "{summary:?}");
        // A settlement resent after the hub took it is not counted again.
        assert!(report.take(&[ack("f:1:1")]).entries.is_empty());
    }

    #[test]
    fn leases_never_settled_are_forgotten() {
        let report = Report::new("r1", Duration::from_millis(10));
        let delivery = |receipt: &str| Delivery {
            receipt: Receipt(receipt.into()),
            body: message(1, 1),
            receive_count: 1,
        };
        report.leased(&[delivery("f:1:1")]);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Once its lease is long expired, the next lease prunes it.
        loop {
            report.leased(&[delivery("f:2:1")]);
            let heads = report.leased.lock().unwrap().heads.len();
            if heads == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{heads} remembered");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(report.take(&[ack("f:1:1")]).entries.is_empty());
    }

    #[test]
    fn a_lease_stops_at_its_byte_budget_whatever_its_max() {
        const KIB: usize = 1024;
        // 256 KiB messages, 10,000 asked for: never more than the budget.
        let mut filling = Filling::new(10_000, 256 * KIB);
        while let Some(room) = filling.room() {
            filling.extend(deliveries(room, 256 * KIB));
        }
        assert_eq!(
            filling.deliveries.len(),
            wire::MAX_LEASE_BYTES / (256 * KIB)
        );
        assert!(filling.bytes <= wire::MAX_LEASE_BYTES);

        // Small messages fill the count, in chunks the budget allows.
        let mut filling = Filling::new(1000, 256 * KIB);
        assert_eq!(filling.room(), Some(32));
        let mut receives = 0;
        while let Some(room) = filling.room() {
            filling.extend(deliveries(room, 250));
            receives += 1;
        }
        assert_eq!(filling.deliveries.len(), 1000);
        assert!(receives <= 34, "{receives} receives of about 32");

        // One message larger than the budget still goes, alone.
        let mut filling = Filling::new(100, 12 * 1024 * KIB);
        assert_eq!(filling.room(), Some(1));
        filling.extend(deliveries(1, 12 * 1024 * KIB));
        assert_eq!(filling.room(), None);

        // A body larger than max_message_bytes (published under an older, larger limit)
        // makes the next asks smaller.
        let mut filling = Filling::new(10_000, 64 * KIB);
        filling.extend(deliveries(1, 4 * 1024 * KIB));
        assert_eq!(filling.room(), Some(1));
    }
}

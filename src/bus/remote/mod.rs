//! A region's queue consumed over the hub's HTTP lease API: what `regis worker --hub URL`
//! runs in a region far from the hub.
//!
//! [`RemoteBus`] implements only [`Consume`] (publishing, dead letters and stats stay on the
//! hub), so a remote worker runs the very same consumers ([`crate::worker::spawn`]) as the
//! workers inside `regis serve`. It lives under `bus/` because that is what it is to the
//! worker: one more backend of the `Consume` capability, the way apalis implements a
//! capability trait only where a backend can honour it.
//!
//! A WAN round trip (140 ms Singapore–Mumbai) must be paid per batch, not per message, and
//! never twice per batch:
//!
//! * a lease asks for up to `batch_size` messages and long-polls: the hub holds it until a
//!   first message arrives (an idle region costs one request per [`RemoteOptions::poll_wait`]
//!   per consumer), then lingers a few milliseconds to fill the batch;
//! * [`Consume::settle`] does not wait for the hub: settlements are queued and ride on the
//!   consumer's next lease request (its body carries them, the hub applies them before it
//!   leases), so one round trip both settles batch N and fetches batch N+1. A background
//!   flusher sends whatever no lease picked up within [`SETTLE_LINGER`] (a consumer waiting
//!   for its Redis to come back), and [`RemoteBus::close`] flushes the rest on shutdown,
//!   after releasing its session so that the lease requests it abandoned take nothing.
//!   Settlements taken into a request go back to the queue unless the hub answered it
//!   ([`Carried`]): a request that failed, or that was cancelled mid-flight (a consumer
//!   stopping while its lease waits at the hub), loses none of them;
//! * a request carries at most [`wire::MAX_SETTLE_BYTES`] of settlements (and at most
//!   [`wire::MAX_SETTLEMENTS`]), the rest wait for the next one, so every request fits the
//!   hub's body limit. Should the hub, or a proxy in front of it, still answer `413 Payload
//!   Too Large`, the worker halves what it puts in a request, and a single settlement
//!   refused on its own is dropped (its message is delivered again after the visibility
//!   timeout), so an oversized request is never resent as it was;
//! * every consumer has its own request in flight (HTTP/1.1 keeps one connection per
//!   request in flight), so `concurrency` requests spread over the round trip keep one
//!   waiting at the hub at all times.
//!
//! Nothing here needs the link to be reliable: a lease whose answer is lost simply expires
//! at the hub after the visibility timeout and its messages are delivered again; settling is
//! idempotent, so settlements whose request failed are queued again and resent.

pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{BusError, BusErrorKind, Consume, Delivery, Receipt, Settle};
use wire::{
    LeaseRequest, LeaseResponse, RegionSettings, ReleaseRequest, SettleRequest, Settlement,
};

/// How long queued settlements wait for a lease request to carry them before they are sent
/// on their own.
pub const SETTLE_LINGER: Duration = Duration::from_millis(5);

/// How a remote worker reaches its hub.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// The hub's base URL, `http://` or `https://`.
    pub hub: String,
    /// The region whose queue is consumed.
    pub region: String,
    /// The worker token (`[auth] worker` of the hub), if the hub asks for one.
    pub token: Option<String>,
    /// A PEM file of CA certificates trusted for an `https://` hub, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// How long the hub holds a lease request while the region has nothing (at most 30 s).
    pub poll_wait: Duration,
    /// Once a lease has a first message, how long the hub keeps filling the batch.
    /// `None`: a share of the measured round trip (see [`auto_linger`]).
    pub linger: Option<Duration>,
    /// How long a request may take beyond `poll_wait` before it is abandoned (and its
    /// leases left to expire) — the time to notice a dead link.
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl RemoteOptions {
    /// Defaults for `hub` and `region`: 20 s long-polls, 10 s of slack, 5 s to connect.
    pub fn new(hub: &str, region: &str) -> RemoteOptions {
        RemoteOptions {
            hub: hub.trim_end_matches('/').to_string(),
            region: region.to_string(),
            token: None,
            ca_file: None,
            poll_wait: Duration::from_secs(20),
            linger: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The linger that keeps a worker's `concurrency` requests spread over one round trip: each
/// request covers `rtt / concurrency` of arrivals, so while the others travel one is always
/// waiting at the hub. Between 1 ms (a LAN) and 100 ms.
pub fn auto_linger(rtt: Duration, concurrency: usize) -> Duration {
    (rtt.mul_f64(1.2) / concurrency.max(1) as u32)
        .clamp(Duration::from_millis(1), Duration::from_millis(100))
}

/// The hub's lease API for one region; cheap to clone.
#[derive(Clone)]
pub struct RemoteBus {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    options: RemoteOptions,
    auth: Option<HeaderValue>,
    linger: Mutex<Duration>,
    /// Settlements waiting for a request to carry them.
    pending: Mutex<Vec<Settlement>>,
    queued: Notify,
    /// The most bytes of settlements one request carries: [`wire::MAX_SETTLE_BYTES`], less
    /// after the hub (or a proxy) refused a request as too large.
    settle_budget: AtomicUsize,
    /// The task sending what no lease carries; `close` stops it first.
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This worker's session at the hub (random), which `close` releases.
    session: u64,
}

impl RemoteBus {
    /// A client for the hub's lease API (nothing is sent yet).
    pub fn new(options: RemoteOptions) -> Result<RemoteBus, BusError> {
        let invalid = |message: String| BusError::new(BusErrorKind::Invalid, message);
        if !(options.hub.starts_with("http://") || options.hub.starts_with("https://")) {
            return Err(invalid(format!(
                "--hub {:?} is not an HTTP URL: use e.g. https://hub.example.com:7700",
                options.hub
            )));
        }
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(15))
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tls_built_in_root_certs(true);
        if let Some(path) = &options.ca_file {
            let certs = crate::tls::ca_certificates(path).map_err(invalid)?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|err| invalid(format!("cannot set up the HTTP client: {err}")))?;
        let auth = match &options.token {
            None => None,
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| invalid("the token holds characters that cannot be sent in an HTTP header; tokens are printable ASCII".into()))?,
            ),
        };
        let linger = options.linger.unwrap_or(Duration::from_millis(10));
        let bus = RemoteBus {
            inner: Arc::new(Inner {
                http,
                options,
                auth,
                linger: Mutex::new(linger),
                pending: Mutex::new(Vec::new()),
                queued: Notify::new(),
                settle_budget: AtomicUsize::new(wire::MAX_SETTLE_BYTES),
                flusher: Mutex::new(None),
                session: rand::random(),
            }),
        };
        let task = tokio::spawn(flusher(Arc::downgrade(&bus.inner)));
        *bus.inner.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(bus)
    }

    /// Asks the hub for the region's settings (convergence, retries, lease length) and
    /// measures the round trip; when no linger was given, derives it for `concurrency`
    /// requests in flight. Fails with what to do when the hub refuses.
    pub async fn handshake(&self, concurrency: usize) -> Result<RegionSettings, BusError> {
        let path = format!("/v1/worker/regions/{}", self.inner.options.region);
        let mut best = Duration::MAX;
        let mut settings = None;
        // The first request pays for the connection (and TLS); the best of three is the RTT.
        for _ in 0..3 {
            let started = Instant::now();
            let answer: RegionSettings = self.get_json(&path).await?;
            best = best.min(started.elapsed());
            settings = Some(answer);
        }
        let settings = settings.ok_or_else(|| unavailable("no answer".into()))?;
        if settings.wire_version != wire::WIRE_VERSION {
            return Err(BusError::new(
                BusErrorKind::Invalid,
                format!(
                    "the hub speaks lease API version {} and this worker {}; run the same Regis release on both",
                    settings.wire_version,
                    wire::WIRE_VERSION
                ),
            ));
        }
        if self.inner.options.linger.is_none() {
            *self.inner.linger.lock().unwrap_or_else(|p| p.into_inner()) =
                auto_linger(best, concurrency);
        }
        tracing::info!(
            region = %settings.region,
            rtt_ms = best.as_secs_f64() * 1000.0,
            linger_ms = self.linger().as_secs_f64() * 1000.0,
            "connected to the hub"
        );
        Ok(settings)
    }

    /// The linger sent with every lease.
    pub fn linger(&self) -> Duration {
        *self.inner.linger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends this worker's leases still waiting at the hub (so they take no message for a
    /// worker that is gone), then sends every queued settlement, trying for up to
    /// `patience`; what cannot be sent is left to expire at the hub (and is delivered
    /// again). Call once the consumers stopped.
    pub async fn close(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        // The flusher may be sending some settlements; stopped, it puts them back (resending
        // is harmless), so that what is sent below is everything.
        let flusher = self
            .inner
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(flusher) = flusher {
            flusher.abort();
            let _ = flusher.await;
        }
        let path = format!("/v1/worker/regions/{}/release", self.inner.options.region);
        let release = ReleaseRequest {
            session: self.inner.session,
        };
        let released = match encode(&release) {
            Ok(body) => self
                .send::<()>(&path, body, self.inner.options.request_timeout)
                .await
                .map_err(RequestError::into_bus),
            Err(err) => Err(err),
        };
        if let Err(err) = released {
            tracing::debug!(error = %err, "cannot release the waiting leases; the hub will hold what they take for a visibility timeout");
        }
        let mut attempt = 0;
        loop {
            let mut carried = self.take_pending();
            if carried.settle.is_empty() {
                return;
            }
            match self.send_settle(&mut carried).await {
                Ok(()) => carried.delivered(),
                Err(err) => {
                    let err = self.failed(carried, err);
                    attempt += 1;
                    if Instant::now() >= deadline {
                        tracing::warn!(error = %err, "cannot settle the last batches with the hub; they will be delivered again after the visibility timeout");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * attempt.min(10))).await;
                }
            }
        }
    }

    /// Takes what the next request carries: as many queued settlements as fit in
    /// `settle_budget` bytes and [`wire::MAX_SETTLEMENTS`] (at least one, if any is queued).
    fn take_pending(&self) -> Carried<'_> {
        let budget = self.inner.settle_budget.load(Ordering::Relaxed);
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = 0;
        let mut n = 0;
        for settlement in pending.iter() {
            let size = settlement.size_bound();
            if n == wire::MAX_SETTLEMENTS || (n > 0 && bytes + size > budget) {
                break;
            }
            bytes += size;
            n += 1;
        }
        Carried {
            bus: self,
            settle: pending.drain(..n).collect(),
            bytes,
        }
    }

    fn requeue(&self, settle: Vec<Settlement>) {
        if settle.is_empty() {
            return;
        }
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(settle);
        self.inner.queued.notify_one();
    }

    /// A request carrying `carried` failed: its settlements go back to the queue (when
    /// `carried` drops), except when the hub refused it as too large — then the next
    /// requests carry half as much, and a settlement refused on its own is dropped, so that
    /// no request is resent that can never pass.
    fn failed(&self, carried: Carried<'_>, err: RequestError) -> BusError {
        let RequestError::TooLarge(err) = err else {
            return err.into_bus();
        };
        match carried.settle.len() {
            0 => {}
            1 => {
                tracing::error!(
                    error = %err,
                    bytes = carried.bytes,
                    "the hub refuses a settlement even on its own: dropped; its message will be delivered again after the visibility timeout"
                );
                carried.delivered();
            }
            _ => {
                let budget = (carried.bytes / 2).max(1);
                let before = self
                    .inner
                    .settle_budget
                    .fetch_min(budget, Ordering::Relaxed);
                tracing::warn!(
                    error = %err,
                    budget_bytes = budget.min(before),
                    "the hub (or a proxy in front of it) refused a request as too large; sending settlements in smaller requests (raise the proxy's body limit to at least {} bytes)",
                    wire::MAX_REQUEST_BYTES
                );
            }
        }
        err
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.options.hub)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, BusError> {
        let mut request = self
            .inner
            .http
            .get(self.url(path))
            .timeout(self.inner.options.request_timeout);
        if let Some(auth) = &self.inner.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(|err| self.link_error(err))?;
        let response = self.check(response).await.map_err(RequestError::into_bus)?;
        response.json().await.map_err(|err| {
            unavailable(format!(
                "the hub's answer was cut off or is not JSON ({err}); is {} a Regis hub?",
                self.inner.options.hub
            ))
        })
    }

    /// POSTs a postcard `body`; a `204` is `None`.
    async fn send<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Option<R>, RequestError> {
        let mut request = self
            .inner
            .http
            .post(self.url(path))
            .timeout(timeout)
            .header(CONTENT_TYPE, wire::CONTENT_TYPE)
            .body(body);
        if let Some(auth) = &self.inner.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|err| RequestError::Other(self.link_error(err)))?;
        let response = self.check(response).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|err| RequestError::Other(self.link_error(err)))?;
        postcard::from_bytes(&bytes).map(Some).map_err(|err| {
            RequestError::Other(unavailable(format!(
                "the hub's answer cannot be decoded ({err}); run the same Regis release on the hub and the worker"
            )))
        })
    }

    /// Turns a non-2xx answer into an error carrying the API's message.
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, RequestError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().chars().take(300).collect());
        let hub = &self.inner.options.hub;
        let kind = match status {
            StatusCode::NOT_FOUND => BusErrorKind::UnknownRegion,
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                BusErrorKind::Unavailable
            }
            _ => BusErrorKind::Invalid,
        };
        let hint = match status {
            StatusCode::UNAUTHORIZED => {
                " (pass the hub's [auth] worker token with --token or REGIS_TOKEN)"
            }
            StatusCode::FORBIDDEN => " (this token is not the hub's worker token)",
            _ => "",
        };
        let err = BusError::new(
            kind,
            format!("the hub at {hub} answered {status}: {message}{hint}"),
        );
        Err(if status == StatusCode::PAYLOAD_TOO_LARGE {
            RequestError::TooLarge(err)
        } else {
            RequestError::Other(err)
        })
    }

    fn link_error(&self, err: reqwest::Error) -> BusError {
        let hub = &self.inner.options.hub;
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "cannot connect"
        } else {
            "link failed"
        };
        // The source chain holds the useful part (refused, reset, certificate unknown).
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        unavailable(format!("hub {hub}: {what} ({detail})"))
    }

    async fn send_settle(&self, carried: &mut Carried<'_>) -> Result<(), RequestError> {
        let path = format!("/v1/worker/regions/{}/settle", self.inner.options.region);
        let request = SettleRequest {
            settle: std::mem::take(&mut carried.settle),
        };
        let body = encode(&request);
        carried.settle = request.settle;
        self.send::<()>(
            &path,
            body.map_err(RequestError::Other)?,
            self.inner.options.request_timeout,
        )
        .await
        .map(|_| ())
    }
}

/// Settlements taken from the queue into one request. Unless the hub is known to have
/// taken them ([`Carried::delivered`]), they go back to the queue when this drops: after
/// a failed request, and after one cancelled mid-flight (its future dropped), whose fate
/// is unknown. Settling twice is harmless; settling never is not.
struct Carried<'a> {
    bus: &'a RemoteBus,
    settle: Vec<Settlement>,
    /// Their [`Settlement::size_bound`]s, summed.
    bytes: usize,
}

impl Carried<'_> {
    /// The hub answered the request: nothing goes back.
    fn delivered(mut self) {
        self.settle.clear();
    }
}

impl Drop for Carried<'_> {
    fn drop(&mut self) {
        self.bus.requeue(std::mem::take(&mut self.settle));
    }
}

/// How a request to the hub failed.
enum RequestError {
    /// `413`: the body was larger than the hub, or a proxy in front of it, accepts.
    TooLarge(BusError),
    /// Anything else.
    Other(BusError),
}

impl RequestError {
    fn into_bus(self) -> BusError {
        match self {
            RequestError::TooLarge(err) | RequestError::Other(err) => err,
        }
    }
}

fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, BusError> {
    postcard::to_stdvec(body).map_err(|err| {
        BusError::new(
            BusErrorKind::Invalid,
            format!("cannot encode the request: {err}"),
        )
    })
}

fn unavailable(message: String) -> BusError {
    BusError::new(BusErrorKind::Unavailable, message)
}

/// Sends settlements that no lease request picked up within [`SETTLE_LINGER`].
async fn flusher(inner: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let bus = RemoteBus { inner: strong };
        // Wake at least every second so a dropped bus ends this task.
        let _ = tokio::time::timeout(Duration::from_secs(1), bus.inner.queued.notified()).await;
        tokio::time::sleep(SETTLE_LINGER).await;
        let mut carried = bus.take_pending();
        if carried.settle.is_empty() {
            continue;
        }
        match bus.send_settle(&mut carried).await {
            Ok(()) => {
                carried.delivered();
                failures = 0;
            }
            Err(err) => {
                failures += 1;
                let err = bus.failed(carried, err);
                tracing::warn!(error = %err, "cannot settle with the hub; trying again");
                let pause = Duration::from_millis(100u64 << failures.min(5));
                drop(bus);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl Consume for RemoteBus {
    async fn receive(
        &self,
        region: &str,
        max: usize,
        _wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        if region != self.inner.options.region {
            return Err(BusError::unknown_region(region));
        }
        let options = &self.inner.options;
        // Dropped before the hub answers (this future cancelled), `carried` puts its
        // settlements back for the next request or `close`.
        let mut carried = self.take_pending();
        let mut request = LeaseRequest {
            max: max.clamp(1, wire::MAX_LEASE as usize) as u32,
            wait_ms: options.poll_wait.min(wire::MAX_WAIT).as_millis() as u32,
            linger_ms: self.linger().min(wire::MAX_LINGER).as_millis() as u32,
            settle: std::mem::take(&mut carried.settle),
            session: self.inner.session,
        };
        let body = encode(&request);
        carried.settle = std::mem::take(&mut request.settle);
        let path = format!("/v1/worker/regions/{}/lease", options.region);
        let timeout = options.poll_wait + self.linger() + options.request_timeout;
        match self.send::<LeaseResponse>(&path, body?, timeout).await {
            Ok(response) => {
                carried.delivered();
                Ok(response
                    .map(|r| r.deliveries.into_iter().map(Delivery::from).collect())
                    .unwrap_or_default())
            }
            // Settling is idempotent: whether or not the hub applied them, they are sent
            // again.
            Err(err) => Err(self.failed(carried, err)),
        }
    }

    async fn settle(
        &self,
        region: &str,
        settlements: Vec<(Receipt, Settle)>,
    ) -> Result<(), BusError> {
        if region != self.inner.options.region {
            return Err(BusError::unknown_region(region));
        }
        if settlements.is_empty() {
            return Ok(());
        }
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(
                settlements
                    .into_iter()
                    .map(|(receipt, settle)| Settlement::new(receipt, settle)),
            );
        self.inner.queued.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_spreads_requests_over_the_round_trip() {
        assert_eq!(
            auto_linger(Duration::from_millis(140), 8),
            Duration::from_millis(21)
        );
        assert_eq!(
            auto_linger(Duration::from_micros(200), 4),
            Duration::from_millis(1)
        );
        assert_eq!(
            auto_linger(Duration::from_secs(2), 1),
            Duration::from_millis(100)
        );
    }

    /// A bus whose flusher does not run, so that what the queue holds is up to the test.
    fn bus_without_flusher() -> RemoteBus {
        let bus = RemoteBus::new(RemoteOptions::new("http://127.0.0.1:1", "r0")).unwrap();
        if let Some(flusher) = bus.inner.flusher.lock().unwrap().take() {
            flusher.abort();
        }
        bus
    }

    fn worst_case_settlements(n: usize) -> Vec<(Receipt, Settle)> {
        (0..n)
            .map(|i| {
                (
                    Receipt(format!("r:{i:05}:3")),
                    Settle::Retry {
                        after: Duration::from_secs(1),
                        reason: "é".repeat(wire::MAX_REASON_BYTES),
                        transient: false,
                    },
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn the_most_settlements_with_the_longest_reasons_split_into_requests_that_fit() {
        let bus = bus_without_flusher();
        let settlements = worst_case_settlements(wire::MAX_SETTLEMENTS);
        bus.settle("r0", settlements).await.unwrap();
        let mut sent = 0;
        let mut requests = 0;
        loop {
            let mut carried = bus.take_pending();
            if carried.settle.is_empty() {
                break;
            }
            let request = LeaseRequest {
                max: wire::MAX_LEASE,
                wait_ms: u32::MAX,
                linger_ms: u32::MAX,
                settle: std::mem::take(&mut carried.settle),
                session: u64::MAX,
            };
            let body = postcard::to_stdvec(&request).unwrap();
            assert!(
                body.len() <= wire::MAX_SETTLE_BYTES + wire::REQUEST_OVERHEAD
                    && body.len() <= wire::MAX_REQUEST_BYTES,
                "a request of {} bytes",
                body.len()
            );
            assert!(request.settle.len() <= wire::MAX_SETTLEMENTS);
            sent += request.settle.len();
            requests += 1;
            carried.delivered();
        }
        assert_eq!(sent, wire::MAX_SETTLEMENTS, "nothing is lost in the split");
        assert!(
            requests >= 10,
            "~80 MiB of settlements take {requests} requests"
        );
    }

    #[tokio::test]
    async fn settlements_go_back_to_the_queue_unless_the_hub_took_them() {
        let bus = bus_without_flusher();
        bus.settle("r0", worst_case_settlements(3)).await.unwrap();
        // A request cancelled mid-flight: its future, and what it carried, dropped.
        let carried = bus.take_pending();
        assert_eq!(carried.settle.len(), 3);
        drop(carried);
        let carried = bus.take_pending();
        assert_eq!(carried.settle.len(), 3, "back in the queue");
        carried.delivered();
        assert!(bus.take_pending().settle.is_empty());
    }

    #[tokio::test]
    async fn a_request_refused_as_too_large_is_never_resent_as_it_was() {
        let bus = bus_without_flusher();
        bus.settle("r0", worst_case_settlements(100)).await.unwrap();
        let too_large = || {
            RequestError::TooLarge(BusError::new(
                BusErrorKind::Invalid,
                "413 Payload Too Large",
            ))
        };
        let carried = bus.take_pending();
        let first = carried.settle.len();
        assert_eq!(first, 100);
        let _ = bus.failed(carried, too_large());
        // Half the size next time, then half again; each time the queue keeps everything.
        let carried = bus.take_pending();
        assert_eq!(carried.settle.len(), 50);
        let _ = bus.failed(carried, too_large());
        let carried = bus.take_pending();
        assert_eq!(carried.settle.len(), 25);
        drop(carried);
        // Refused even alone: dropped rather than resent forever.
        bus.inner.settle_budget.store(1, Ordering::Relaxed);
        let carried = bus.take_pending();
        assert_eq!(carried.settle.len(), 1);
        let _ = bus.failed(carried, too_large());
        let mut left = 0;
        loop {
            let carried = bus.take_pending();
            if carried.settle.is_empty() {
                break;
            }
            left += carried.settle.len();
            carried.delivered();
        }
        assert_eq!(left, 99);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_hub_url_or_a_ca_file() {
        let err = RemoteBus::new(RemoteOptions::new("hub:7700", "r0"))
            .err()
            .expect("not a URL");
        assert!(err.to_string().contains("not an HTTP URL"), "{err}");
        let mut options = RemoteOptions::new("https://127.0.0.1:1", "r0");
        options.ca_file = Some("/nonexistent/ca.pem".into());
        let err = RemoteBus::new(options).err().expect("no CA file");
        assert!(err.to_string().contains("cannot read the CA file"), "{err}");
        let mut options = RemoteOptions::new("http://127.0.0.1:1", "r0");
        options.token = Some("bad\ntoken".into());
        let err = RemoteBus::new(options).err().expect("bad token");
        assert!(err.to_string().contains("printable"), "{err}");
    }
}

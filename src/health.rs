//! Whether each region's Redis answers, for `GET /v1/status` and the `regis_redis_up` gauge.
//!
//! Two sources keep a region's [`RedisHealth`] current: the worker's consumers report the
//! outcome of every batch they apply (so an outage under load shows at once), and a probe
//! PINGs the Redis every [`PROBE_EVERY`] (so an outage or a recovery of an idle region shows
//! too — a status that only learns of an outage when the next write fails would say "up"
//! about a region that has been down for an hour).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::apply::RegionRedis;
use crate::clock::now_ms;
use crate::metrics::{RedisReachable, RegionMetrics};

/// How often the probe PINGs each region's Redis.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What is known of a region's Redis right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reachability {
    /// `true` when it answered last, `false` when it did not, `null` before the first try.
    pub reachable: Option<bool>,
    /// Since when (ms since the epoch) it has been in that state.
    pub since_ms: Option<u64>,
    /// The last error, while it is unreachable.
    pub error: Option<String>,
}

/// One region's Redis reachability, shared by its consumers, its probe and the API.
pub struct RedisHealth {
    state: Mutex<Reachability>,
    /// `None` for a region whose Redis this process does not watch.
    metrics: Option<RegionMetrics>,
    /// Woken when the Redis answers again, so consumers backing off after an outage resume
    /// within a probe interval rather than after their whole backoff.
    back: tokio::sync::Notify,
}

impl RedisHealth {
    /// Unknown until the first report; reports also set `regis_redis_up{region}`.
    pub fn new(region: &str) -> RedisHealth {
        RedisHealth {
            state: Mutex::new(Reachability::default()),
            metrics: Some(RegionMetrics::new(region)),
            back: tokio::sync::Notify::new(),
        }
    }

    /// For a region whose Redis this process cannot see (its worker runs elsewhere):
    /// unknown, and no `regis_redis_up` series claiming it is down.
    pub fn unmonitored() -> RedisHealth {
        RedisHealth {
            state: Mutex::new(Reachability::default()),
            metrics: None,
            back: tokio::sync::Notify::new(),
        }
    }

    /// The Redis answered.
    pub fn report_up(&self) {
        self.set(true, None);
    }

    /// The Redis could not be reached; `error` says how.
    pub fn report_down(&self, error: &str) {
        self.set(false, Some(error.to_string()));
    }

    fn set(&self, up: bool, error: Option<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.reachable != Some(up) {
            state.reachable = Some(up);
            state.since_ms = Some(now_ms());
            if let Some(metrics) = &self.metrics {
                RedisReachable {
                    region: metrics,
                    up,
                }
                .emit();
            }
            if up {
                self.back.notify_waiters();
            }
        }
        state.error = error;
    }

    /// Resolves the next time the Redis is found answering after not answering.
    pub async fn back_up(&self) {
        self.back.notified().await;
    }

    /// The current state.
    pub fn get(&self) -> Reachability {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// PINGs the region's Redis every [`PROBE_EVERY`] until `shutdown`, reporting to `health`.
pub async fn probe(
    health: std::sync::Arc<RedisHealth>,
    mut redis: RegionRedis,
    shutdown: CancellationToken,
) {
    loop {
        match redis.ping().await {
            Ok(()) => health.report_up(),
            Err(failure) => health.report_down(failure.message()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_since_when_and_why() {
        let health = RedisHealth::new("test-region");
        assert_eq!(health.get(), Reachability::default());
        health.report_down("connection refused");
        let down = health.get();
        assert_eq!(down.reachable, Some(false));
        assert_eq!(down.error.as_deref(), Some("connection refused"));
        let since = down.since_ms;
        health.report_down("still refused");
        assert_eq!(health.get().since_ms, since, "same state, same since");
        health.report_up();
        let up = health.get();
        assert_eq!(up.reachable, Some(true));
        assert_eq!(up.error, None);
    }
}

//! Rolling publish→applied latency per region, for `status` and the benchmarks.
//!
//! Prometheus histograms answer "how was it over time"; an operator at a terminal asks "how
//! is it now". [`LatencyWindow`] keeps one HDR histogram per 10-second slice for the last
//! minute, so p50/p99 and the apply rate over the last minute cost a merge of six small
//! histograms.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

const SLICE: Duration = Duration::from_secs(10);
const SLICES: usize = 6;

/// Latency figures over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Messages recorded.
    pub count: u64,
    /// Messages per second over the window.
    pub rate_per_sec: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// Summarizes a histogram of microseconds.
pub fn summarize(histogram: &Histogram<u64>, window: Duration) -> LatencySummary {
    let count = histogram.len();
    if count == 0 {
        return LatencySummary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count,
        rate_per_sec: count as f64 / window.as_secs_f64().max(0.001),
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    }
}

/// A new histogram for latencies in microseconds (1 µs to 1 hour, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // These bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The last minute of latencies of one region.
#[derive(Debug)]
pub struct LatencyWindow {
    slices: Mutex<VecDeque<(Instant, Histogram<u64>)>>,
    started: Instant,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            slices: Mutex::new(VecDeque::with_capacity(SLICES + 1)),
            started: Instant::now(),
        }
    }
}

impl LatencyWindow {
    /// Records one message's publish→applied latency.
    pub fn record(&self, latency: Duration) {
        self.record_many(std::iter::once(latency));
    }

    /// Records several latencies under one lock.
    pub fn record_many(&self, latencies: impl IntoIterator<Item = Duration>) {
        let now = Instant::now();
        let mut slices = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        if slices
            .back()
            .is_none_or(|(start, _)| now.duration_since(*start) >= SLICE)
        {
            slices.push_back((now, new_histogram()));
            while slices.len() > SLICES {
                slices.pop_front();
            }
        }
        if let Some((_, histogram)) = slices.back_mut() {
            for latency in latencies {
                histogram.saturating_record((latency.as_micros() as u64).max(1));
            }
        }
    }

    /// Figures over the last minute (or since start, if younger).
    pub fn last_minute(&self) -> LatencySummary {
        let window = Duration::from_secs(60);
        summarize(
            &self.last_minute_histogram(),
            window
                .min(self.started.elapsed())
                .max(Duration::from_secs(1)),
        )
    }

    /// Every latency of the last minute (or since start, if younger), in microseconds. The
    /// benchmarks subtract one reading from the next to see each second on its own.
    pub fn last_minute_histogram(&self) -> Histogram<u64> {
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let slices = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged = new_histogram();
        for (start, histogram) in slices.iter() {
            if now.duration_since(*start) < window + SLICE {
                let _ = merged.add(histogram);
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_what_it_recorded() {
        let window = LatencyWindow::default();
        window.record_many((1..=100).map(Duration::from_millis));
        let s = window.last_minute();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.2, "{s:?}");
    }

    #[test]
    fn empty_window_is_zero() {
        assert_eq!(
            LatencyWindow::default().last_minute(),
            LatencySummary::default()
        );
    }
}

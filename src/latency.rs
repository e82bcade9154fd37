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
///
/// Slices are aligned on the window's creation (slice `n` holds what was recorded between
/// `started + n × 10 s` and `started + (n + 1) × 10 s`), so the "last minute" is exactly the
/// current slice and the five before it: from the start of the oldest of them to now,
/// 50 to 60 seconds. The rate divides by that very span, so what is counted and what it is
/// divided by always cover the same time.
#[derive(Debug)]
pub struct LatencyWindow {
    /// `(slice number, its latencies)`, oldest first; slices with nothing recorded are absent.
    slices: Mutex<VecDeque<(u64, Histogram<u64>)>>,
    started: Instant,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow::starting_at(Instant::now())
    }
}

impl LatencyWindow {
    fn starting_at(started: Instant) -> LatencyWindow {
        LatencyWindow {
            slices: Mutex::new(VecDeque::with_capacity(SLICES + 1)),
            started,
        }
    }

    /// The number of the slice `now` falls in.
    fn slice_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started);
        (elapsed.as_nanos() / SLICE.as_nanos()) as u64
    }

    /// Records one message's publish→applied latency.
    pub fn record(&self, latency: Duration) {
        self.record_many(std::iter::once(latency));
    }

    /// Records several latencies under one lock.
    pub fn record_many(&self, latencies: impl IntoIterator<Item = Duration>) {
        self.record_at(Instant::now(), latencies);
    }

    fn record_at(&self, now: Instant, latencies: impl IntoIterator<Item = Duration>) {
        let slice = self.slice_at(now);
        let mut slices = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        if slices.back().is_none_or(|(n, _)| *n < slice) {
            slices.push_back((slice, new_histogram()));
            let oldest = slice.saturating_sub(SLICES as u64 - 1);
            while slices.front().is_some_and(|(n, _)| *n < oldest) {
                slices.pop_front();
            }
        }
        if let Some((_, histogram)) = slices.back_mut() {
            for latency in latencies {
                histogram.saturating_record((latency.as_micros() as u64).max(1));
            }
        }
    }

    /// Figures over the last minute (50 to 60 s, see the type's docs; or since start, if
    /// younger).
    pub fn last_minute(&self) -> LatencySummary {
        let (histogram, span) = self.window_at(Instant::now());
        summarize(&histogram, span.max(Duration::from_secs(1)))
    }

    /// Every latency of the last minute (or since start, if younger), in microseconds. The
    /// benchmarks subtract one reading from the next to see each second on its own.
    pub fn last_minute_histogram(&self) -> Histogram<u64> {
        self.window_at(Instant::now()).0
    }

    /// The latencies of the current slice and the five before it, and the time they span:
    /// from the start of the oldest of those slices (or the window's creation) to `now`.
    fn window_at(&self, now: Instant) -> (Histogram<u64>, Duration) {
        let oldest = self.slice_at(now).saturating_sub(SLICES as u64 - 1);
        let slices = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged = new_histogram();
        for (n, histogram) in slices.iter() {
            if *n >= oldest {
                let _ = merged.add(histogram);
            }
        }
        let from = self.started + SLICE * oldest as u32;
        (merged, now.saturating_duration_since(from))
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

    #[test]
    fn the_rate_divides_by_the_time_the_counted_slices_span() {
        let started = Instant::now();
        let at = |secs: f64| started + Duration::from_secs_f64(secs);
        // One message every second, half a second into it, until `now`.
        let steady = |now: f64| {
            let window = LatencyWindow::starting_at(started);
            let mut second = 0.5;
            while second < now {
                window.record_at(at(second), [Duration::from_millis(5)]);
                second += 1.0;
            }
            window
        };
        // Readings at every point of a slice: just after a boundary the window spans 50 s,
        // just before the next one almost 60 s; either way the rate is the true 1/s.
        for now in [110.01, 110.6, 115.0, 119.9, 120.0] {
            let (histogram, span) = steady(now).window_at(at(now));
            let summary = summarize(&histogram, span);
            assert!(
                (50.0..=60.0).contains(&span.as_secs_f64()),
                "at {now}: span {span:?}"
            );
            assert!(
                (summary.rate_per_sec - 1.0).abs() < 0.03,
                "at {now}: {} messages over {span:?} is {} a second",
                summary.count,
                summary.rate_per_sec
            );
        }
        // Nothing older than the oldest counted slice is counted.
        let window = steady(119.9);
        let (histogram, span) = window.window_at(at(119.9));
        assert_eq!(histogram.len(), 60, "slices 6..=11 hold seconds 60..=119");
        assert!((span.as_secs_f64() - 59.9).abs() < 1e-6, "{span:?}");
        // Long idle: the slices age out.
        let (histogram, _) = window.window_at(at(200.0));
        assert_eq!(histogram.len(), 0);
        // Young window: the span is the time since it started.
        let young = LatencyWindow::starting_at(started);
        young.record_at(at(4.0), [Duration::from_millis(1); 8]);
        let (histogram, span) = young.window_at(at(4.0));
        assert_eq!(histogram.len(), 8);
        assert!((span.as_secs_f64() - 4.0).abs() < 1e-6, "{span:?}");
    }
}

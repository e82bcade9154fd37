//! What every configuration is measured with: a fixed-rate driver that records each
//! write's latency and a per-second timeline, and the CPU and memory of the processes
//! taking part, read from `/proc`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::latency::{LatencySummary, new_histogram, summarize};

/// One second of a fixed-rate run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SecondFigures {
    /// Seconds since the run started (the second this covers ends here).
    pub second: u32,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl SecondFigures {
    pub fn of(second: u32, histogram: &Histogram<u64>) -> SecondFigures {
        let summary = summarize(histogram, Duration::from_secs(1));
        SecondFigures {
            second,
            count: summary.count,
            p50_ms: summary.p50_ms,
            p99_ms: summary.p99_ms,
        }
    }
}

/// Latencies of a run: all of them, and one histogram per second of send time.
pub struct Recorder {
    started: Instant,
    all: Histogram<u64>,
    seconds: Vec<Histogram<u64>>,
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder {
            started,
            all: new_histogram(),
            seconds: Vec::new(),
        }
    }

    pub fn record(&mut self, sent: Instant, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        self.all.saturating_record(us);
        let second = sent.saturating_duration_since(self.started).as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(new_histogram());
        }
        self.seconds[second].saturating_record(us);
    }

    pub fn summary(&self, window: Duration) -> LatencySummary {
        summarize(&self.all, window)
    }

    pub fn timeline(&self) -> Vec<SecondFigures> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, h)| SecondFigures::of(i as u32 + 1, h))
            .collect()
    }
}

/// Calls of a fixed-rate run in flight at once, at most. An open loop with no bound opens a
/// connection per waiting HTTP request once the target falls behind, until the process runs
/// out of file descriptors; past this many the run falls behind its schedule instead, and
/// the achieved rate it reports is below the offered one.
const MAX_IN_FLIGHT: usize = 1024;

/// Offers `rate` writes per second for `duration`, each its own call of `send(n)` (as
/// independent clients would send them, at most [`MAX_IN_FLIGHT`] at once), and records the
/// time each call takes.
pub async fn fixed_rate<F, Fut>(
    rate: u64,
    duration: Duration,
    send: F,
) -> anyhow::Result<(usize, Recorder)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let recorder = Arc::new(Mutex::new(Recorder::new(started)));
    let mut sent = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize)
            .min((duration.as_secs_f64() * rate as f64) as usize);
        while sent < due {
            if inflight.len() >= MAX_IN_FLIGHT {
                match inflight.join_next().await {
                    Some(done) => done??,
                    None => break,
                }
                continue;
            }
            let call = send(sent);
            let recorder = recorder.clone();
            inflight.spawn(async move {
                let at = Instant::now();
                call.await?;
                let took = at.elapsed();
                recorder
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(at, took);
                anyhow::Ok(())
            });
            sent += 1;
        }
        while let Some(done) = inflight.try_join_next() {
            done??;
        }
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| anyhow::anyhow!("a send outlived the run"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok((sent, recorder))
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (Linux only)"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("unexpected /proc stat format")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / per_second)
}

/// Resident memory of a process, bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc status")?;
    Ok(kb * 1024)
}

/// The CPU each named process used over one run.
pub struct CpuMeter {
    processes: Vec<(String, u32, f64)>,
    started: Instant,
}

/// CPU use of one run: seconds per process and the wall-clock time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUse {
    pub wall_secs: f64,
    pub processes: Vec<(String, f64)>,
}

impl CpuUse {
    /// `regis 1.9 s, region0 0.8 s, ... of 2 × 2.1 s`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .processes
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.1}"))
            .collect();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let total: f64 = self.processes.iter().map(|(_, s)| s).sum();
        format!(
            "CPU s: {} = {:.1} of {:.1} available ({:.0}%)",
            parts.join(", "),
            total,
            self.wall_secs * cpus as f64,
            100.0 * total / (self.wall_secs * cpus as f64).max(0.001)
        )
    }
}

impl CpuMeter {
    pub fn start(processes: &[(String, u32)]) -> CpuMeter {
        CpuMeter {
            processes: processes
                .iter()
                .map(|(name, pid)| (name.clone(), *pid, cpu_seconds(*pid).unwrap_or(0.0)))
                .collect(),
            started: Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        CpuUse {
            wall_secs: self.started.elapsed().as_secs_f64(),
            processes: self
                .processes
                .iter()
                .map(|(name, pid, before)| {
                    (
                        name.clone(),
                        cpu_seconds(*pid).map_or(0.0, |now| (now - before).max(0.0)),
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("own /proc stat");
        // Spin until the kernel has charged 0.1 CPU-s to this process: however busy the
        // machine, that takes at most a few seconds of wall time if the reading is right.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.1 && Instant::now() < deadline {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = cpu_seconds(pid).expect("own /proc stat");
        }
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(rss_bytes(pid).expect("own VmRSS") > 1024 * 1024);
    }

    #[test]
    fn timeline_buckets_by_send_second() {
        let start = Instant::now();
        let mut recorder = Recorder::new(start);
        recorder.record(start, Duration::from_millis(2));
        recorder.record(
            start + Duration::from_millis(1500),
            Duration::from_millis(8),
        );
        let timeline = recorder.timeline();
        assert_eq!(timeline.len(), 2);
        assert_eq!(timeline[0].count, 1);
        assert!((timeline[1].p99_ms - 8.0).abs() < 0.1, "{timeline:?}");
        assert_eq!(recorder.summary(Duration::from_secs(2)).count, 2);
    }
}

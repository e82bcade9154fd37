//! `regis serve` as a child process of a benchmark, so that what it measures (RSS, the bus
//! file) is the hub's alone: started on free ports with a config the benchmark writes, killed
//! when dropped or when the benchmark dies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::bench_compare::measure::rss_bytes;
use crate::redis_process::{die_with_parent, free_port};

/// A running `regis serve`.
pub struct ChildHub {
    child: Child,
    /// Its HTTP listener.
    pub http: SocketAddr,
    /// Its RESP listener.
    pub resp: SocketAddr,
    data: PathBuf,
    admin_token: Option<String>,
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildHub {
    /// Starts it on a config of `top` (top-level keys such as `convergence`), its own
    /// `data_dir`, `[http]` and `[resp]` listeners, then `tables` (`[auth]`, `[[regions]]`).
    /// `admin_token` is what `/v1/status` asks for, when `tables` sets `[auth]`.
    pub fn start(
        dir: &Path,
        top: &str,
        tables: &str,
        admin_token: Option<&str>,
    ) -> anyhow::Result<ChildHub> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let resp: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let data = dir.join("bus");
        let config = format!(
            "data_dir = {data:?}\n{top}[http]\nlisten = \"{http}\"\n[resp]\nlisten = \"{resp}\"\n{tables}",
            data = data.display().to_string(),
        );
        let path = dir.join("regis.toml");
        std::fs::write(&path, config)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .context("cannot start the hub (regis serve)")?;
        Ok(ChildHub {
            child,
            http,
            resp,
            data,
            admin_token: admin_token.map(str::to_string),
        })
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if reqwest::get(format!("http://{}/healthz", self.http))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the hub did not answer /healthz within 30s")
    }

    /// Its resident memory now, bytes (`VmRSS`).
    pub fn rss(&self) -> anyhow::Result<u64> {
        rss_bytes(self.child.id())
    }

    /// Bytes of its bus on disk (the SQLite file and its WAL).
    pub fn bus_bytes(&self) -> u64 {
        ["bus.sqlite3", "bus.sqlite3-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.data.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Messages of each region waiting or in flight, in config order.
    pub async fn pending(&self, http: &reqwest::Client) -> anyhow::Result<Vec<u64>> {
        let mut request = http.get(format!("http://{}/v1/status", self.http));
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        let status: Value = request.send().await?.json().await?;
        let regions = status["regions"]
            .as_array()
            .context("/v1/status has no regions")?;
        Ok(regions
            .iter()
            .map(|r| r["depth"].as_u64().unwrap_or(0) + r["in_flight"].as_u64().unwrap_or(0))
            .collect())
    }

    /// Waits until region `region` (config order) has nothing pending, recording the hub's
    /// RSS in `peak_rss` as it goes.
    pub async fn wait_pending(
        &self,
        http: &reqwest::Client,
        region: usize,
        peak_rss: &AtomicU64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            peak_rss.fetch_max(self.rss().unwrap_or(0), Ordering::Relaxed);
            if self.pending(http).await?.get(region).copied().unwrap_or(0) == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("region {region} did not drain within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

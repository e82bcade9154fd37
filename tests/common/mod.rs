//! The test harness: real `redis-server`s (one per region), a real hub (in-process or as a
//! `regis serve` child), and helpers to publish, wait for conditions and compare regions.
//!
//! Nothing here mocks Redis or the bus. A test that needs `redis-server` fails with a clear
//! message when it is missing.

#![allow(dead_code)]

pub mod scrambler;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regis::bus::Stats;
use regis::bus::embedded::EmbeddedBus;
use regis::config::Config;
use regis::redis_process::RedisProcess;
use regis::server::Server;
use regis::snapshot::Snapshot;
use serde_json::{Value, json};

/// Starts `n` regions' Redis, or fails the test saying how to install it.
pub fn regions(n: usize) -> Vec<RedisProcess> {
    (0..n)
        .map(|i| {
            RedisProcess::start().unwrap_or_else(|err| {
                panic!("test needs redis-server for region {i}: {err}");
            })
        })
        .collect()
}

/// Region names used by the tests: r0, r1, …
pub fn region_name(i: usize) -> String {
    format!("r{i}")
}

/// A config for these regions with fast retries and short leases.
pub fn config(data_dir: &Path, regions: &[RedisProcess]) -> Config {
    let names: Vec<(String, String)> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (region_name(i), r.url()))
        .collect();
    let named: Vec<(&str, String)> = names.iter().map(|(n, u)| (n.as_str(), u.clone())).collect();
    let mut config = Config::with_regions(data_dir.to_path_buf(), &named);
    config.delivery.visibility_timeout = Duration::from_secs(3);
    config.delivery.retry_backoff = Duration::from_millis(20);
    config.delivery.retry_backoff_max = Duration::from_millis(200);
    config.delivery.max_receives = 3;
    config.worker.redis_timeout = Duration::from_secs(1);
    config
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes one message over HTTP; `Ok(id)` or `Err((status, body))`.
pub async fn publish(addr: SocketAddr, commands: Value) -> Result<String, (u16, Value)> {
    publish_body(
        addr,
        json!({ "commands": commands }).to_string().into_bytes(),
    )
    .await
}

/// POSTs raw bytes to /v1/publish.
pub async fn publish_body(addr: SocketAddr, body: Vec<u8>) -> Result<String, (u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the hub answers HTTP");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 {
        Ok(body["id"]
            .as_str()
            .expect("a publish answer has an id")
            .to_string())
    } else {
        Err((status, body))
    }
}

/// GET a JSON document from the hub.
pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("the hub answers HTTP")
        .json()
        .await
        .expect("a JSON answer")
}

/// Reads a region's data.
pub async fn snapshot(region: &RedisProcess) -> Snapshot {
    Snapshot::read(&region.url(), 0)
        .await
        .expect("the region's Redis answers")
}

/// Waits until every region holds the same data as `expected`; panics with the differences.
pub async fn assert_converges(regions: &[RedisProcess], expected: &Snapshot, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut report = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            let diffs = expected.differences(&snapshot(region).await, 1500, 5);
            if !diffs.is_empty() {
                report.push(format!("region {i} differs from the expected state:"));
                report.extend(diffs);
            }
        }
        if report.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{}", report.join("\n  "));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every queue of the bus is empty (nothing waiting or in flight).
pub async fn drained<S: Stats>(bus: &S, timeout: Duration) -> bool {
    eventually(timeout, || async {
        bus.stats()
            .await
            .map(|stats| stats.iter().all(|s| s.depth == 0 && s.in_flight == 0))
            .unwrap_or(false)
    })
    .await
}

/// A raw command against a region, for setting up or inspecting state directly.
pub async fn redis_cmd(region: &RedisProcess, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(region.url()).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the region's Redis answers");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn)
        .await
        .expect("the command succeeds")
}

/// Starts an in-process hub on the embedded bus.
pub async fn start_hub(config: &Config) -> Server<EmbeddedBus> {
    Server::start(config).await.expect("the hub starts")
}

/// `regis serve` as a child process, for kill -9 and signal tests.
pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
}

/// Writes `config` as TOML (what `regis serve` reads) with a fixed HTTP port.
pub fn write_config(dir: &Path, config: &Config, http_port: u16) -> PathBuf {
    let regions: String = config
        .regions
        .iter()
        .map(|r| {
            format!(
                "[[regions]]\nname = \"{}\"\nredis = \"{}\"\n",
                r.name, r.redis
            )
        })
        .collect();
    let text = format!(
        "data_dir = {data:?}\nconvergence = \"{conv}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [delivery]\nmax_receives = {mr}\nvisibility_timeout = \"{vt}ms\"\nretry_backoff = \"{rb}ms\"\nretry_backoff_max = \"{rbm}ms\"\n\
         [worker]\nredis_timeout = \"{rt}ms\"\n{regions}",
        data = config.data_dir.display().to_string(),
        conv = config.convergence,
        mr = config.delivery.max_receives,
        vt = config.delivery.visibility_timeout.as_millis(),
        rb = config.delivery.retry_backoff.as_millis(),
        rbm = config.delivery.retry_backoff_max.as_millis(),
        rt = config.worker.redis_timeout.as_millis(),
    );
    let path = dir.join("regis.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

impl ServeProcess {
    /// Runs `regis serve --config <path>` and waits until /healthz answers.
    pub async fn start(config_path: &Path, addr: SocketAddr) -> ServeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_regis"))
            .args(["serve", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn regis serve");
        let serve = ServeProcess {
            child,
            addr,
            config_path: config_path.to_path_buf(),
        };
        let up = eventually(Duration::from_secs(20), || async {
            reqwest::get(format!("http://{addr}/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "regis serve did not answer /healthz on {addr}");
        serve
    }

    /// SIGKILL: no chance to flush or settle anything.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for regis serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "regis serve did not exit within 30s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

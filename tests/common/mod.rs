//! The test harness: real `redis-server`s (one per region), a real bus of either backend
//! ([`Backend`]: the embedded one, or a `nats-server` with JetStream started for the test),
//! a real hub (in-process or as a `regis serve` child), and helpers to publish, wait for
//! conditions and compare regions.
//!
//! Nothing here mocks Redis, NATS or the bus. A test that needs `redis-server` or
//! `nats-server` fails with a clear message when it is missing.

#![allow(dead_code)]

pub mod scrambler;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use regis::bus::embedded::{EmbeddedBus, StoreOptions};
use regis::bus::nats::{NatsBus, NatsConfig, NatsOptions};
use regis::bus::{
    BusError, Consume, DeadLetter, DeadLetters, Delivery, Outgoing, Publish, QueueStats, Receipt,
    Selection, Settle, Stats,
};
use regis::clock::Version;
use regis::config::{BusConfig, Config, WorkerPlacement};
use regis::envelope::MessageId;
use regis::nats_process::NatsProcess;
use regis::redis_process::RedisProcess;
use regis::server::{Server, connect_nats, open_embedded};
use regis::snapshot::{Entry, Snapshot};
use serde_json::{Value, json};

/// The value of one Prometheus sample: `name` with exactly these labels (in any order).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let mut found: Vec<(String, String)> = rest
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').to_string()))
            })
            .collect();
        found.sort();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        (found == wanted).then(|| value.parse().ok())?
    })
}

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

/// Publishes one message over HTTP; `Ok(answer)` (`{"id", "version"}`) or `Err((status, body))`.
pub async fn publish_answer(addr: SocketAddr, commands: Value) -> Result<Value, (u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish"))
        .json(&json!({ "commands": commands }))
        .send()
        .await
        .map_err(|err| (0, Value::String(err.to_string())))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 {
        Ok(body)
    } else {
        Err((status, body))
    }
}

/// The version in a publish answer.
pub fn version_of(answer: &Value) -> u64 {
    answer["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a publish answer has a numeric version")
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

/// Which of the acknowledged messages `acked` (message `i` sets `key<i>` to `value<i>`)
/// `snap` lacks.
pub fn missing_acked(snap: &Snapshot, acked: &[usize]) -> Vec<usize> {
    acked
        .iter()
        .copied()
        .filter(|i| {
            snap.keys.get(format!("key{i}").as_bytes()).map(|e| &e.0)
                != Some(&Entry::String(format!("value{i}").into_bytes()))
        })
        .collect()
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

/// Receives and acknowledges `region`'s messages until `n` are settled or `timeout` passes;
/// returns how many were settled.
pub async fn ack_all<C: Consume>(bus: &C, region: &str, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut settled = 0;
    while settled < n && Instant::now() < deadline {
        let got = bus
            .receive(region, 500, Duration::from_secs(1))
            .await
            .expect("the bus delivers");
        settled += got.len();
        bus.settle(
            region,
            got.into_iter().map(|d| (d.receipt, Settle::Ack)).collect(),
        )
        .await
        .expect("the bus settles");
    }
    settled
}

/// A raw command against a region, for setting up or inspecting state directly.
pub async fn redis_cmd(region: &RedisProcess, args: &[&str]) -> redis::Value {
    let mut conn = regis::redis_process::connect(&region.url())
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

/// A remote worker's lease request (postcard): up to `max` messages, waiting up to
/// `wait_ms` for the first, settling nothing.
pub fn lease_body(max: u32, wait_ms: u32, session: u64) -> Vec<u8> {
    postcard::to_stdvec(&regis::bus::remote::wire::LeaseRequest {
        max,
        wait_ms,
        linger_ms: 0,
        settle: vec![],
        session,
    })
    .expect("a lease request encodes")
}

/// Starts an in-process hub on the embedded bus.
pub async fn start_hub(config: &Config) -> Server<EmbeddedBus> {
    Server::start(config).await.expect("the hub starts")
}

/// Which bus a contract test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite bus.
    Embedded,
    /// NATS JetStream, on a `nats-server` started for the test.
    Nats,
}

/// Starts a JetStream `nats-server`, or fails the test saying how to install it.
pub fn nats_server() -> NatsProcess {
    NatsProcess::start().unwrap_or_else(|err| panic!("test needs nats-server: {err}"))
}

/// One test's bus environment: a data directory, and for NATS its own server.
pub struct Env {
    pub data: tempfile::TempDir,
    pub nats: Option<NatsProcess>,
}

impl Env {
    /// A fresh environment (an empty data directory; a fresh `nats-server` for NATS).
    pub fn new(backend: Backend) -> Env {
        Env {
            data: tempfile::tempdir().expect("a temporary directory"),
            nats: match backend {
                Backend::Embedded => None,
                Backend::Nats => Some(nats_server()),
            },
        }
    }

    /// The `[bus]` section of this environment.
    pub fn bus_config(&self) -> BusConfig {
        match &self.nats {
            None => BusConfig::Embedded {},
            Some(nats) => BusConfig::Nats(NatsConfig {
                url: nats.url(),
                ..NatsConfig::default()
            }),
        }
    }

    /// [`config`] for these regions on this environment's bus.
    pub fn config(&self, regions: &[RedisProcess]) -> Config {
        let mut config = config(&self.data.path().join("bus"), regions);
        config.bus = self.bus_config();
        config
    }

    /// A bus with these queue semantics, for tests that drive the bus directly.
    pub async fn bus_with(
        &self,
        regions: &[&str],
        visibility_timeout: Duration,
        max_receives: u32,
    ) -> AnyBus {
        let names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        match &self.nats {
            None => AnyBus::Embedded(
                EmbeddedBus::open(
                    &self.data.path().join("bus"),
                    &names,
                    StoreOptions {
                        visibility_timeout,
                        max_receives,
                        dead_letter_retention: Duration::from_secs(3600),
                    },
                )
                .expect("the embedded bus opens"),
            ),
            Some(nats) => AnyBus::Nats(
                NatsBus::connect(
                    &NatsConfig {
                        url: nats.url(),
                        ..NatsConfig::default()
                    },
                    NatsOptions {
                        regions: names,
                        node_id: 0,
                        visibility_timeout,
                        max_receives,
                        dead_letter_retention: Duration::from_secs(3600),
                        max_message_bytes: 1 << 18,
                    },
                )
                .await
                .expect("the NATS bus connects"),
            ),
        }
    }

    /// An in-process hub on `config`'s bus (this environment's, from [`Env::config`]).
    pub async fn start_hub(&self, config: &Config) -> TestHub {
        start_any_hub(config).await
    }
}

/// The bus `config` describes.
pub async fn open_bus(config: &Config) -> AnyBus {
    match &config.bus {
        BusConfig::Embedded {} => {
            AnyBus::Embedded(open_embedded(config).expect("the embedded bus opens"))
        }
        BusConfig::Nats(nats) => AnyBus::Nats(
            connect_nats(config, nats)
                .await
                .expect("the NATS bus connects"),
        ),
    }
}

/// An in-process hub on the bus `config` describes, started as `regis serve` starts one.
pub async fn start_any_hub(config: &Config) -> TestHub {
    let bus = open_bus(config).await;
    Server::start_with(config, bus)
        .await
        .expect("the hub starts")
}

/// An in-process hub of either backend.
pub type TestHub = Server<AnyBus>;

/// Drains and stops a hub, then closes its bus (what `regis serve` does on SIGTERM).
pub async fn shutdown(hub: TestHub) {
    let bus = hub.bus().clone();
    hub.stop().await;
    bus.close().await;
}

/// Either bus, so one test body runs on both. (The binary picks one statically at start;
/// this enum exists only for tests.)
#[derive(Clone)]
pub enum AnyBus {
    Embedded(EmbeddedBus),
    Nats(NatsBus),
}

macro_rules! each_bus {
    ($self:expr, $bus:ident => $body:expr) => {
        match $self {
            AnyBus::Embedded($bus) => $body,
            AnyBus::Nats($bus) => $body,
        }
    };
}

impl AnyBus {
    /// Persists progress (embedded) or flushes the connection (NATS).
    pub async fn close(&self) {
        each_bus!(self, bus => bus.close().await)
    }
}

impl Publish for AnyBus {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        each_bus!(self, bus => bus.publish(messages).await)
    }
    async fn high_water(&self) -> Result<Option<Version>, BusError> {
        each_bus!(self, bus => bus.high_water().await)
    }
}

impl Consume for AnyBus {
    async fn receive(
        &self,
        region: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        each_bus!(self, bus => bus.receive(region, max, wait).await)
    }
    async fn settle(
        &self,
        region: &str,
        settlements: Vec<(Receipt, Settle)>,
    ) -> Result<(), BusError> {
        each_bus!(self, bus => bus.settle(region, settlements).await)
    }
}

impl DeadLetters for AnyBus {
    async fn list(&self, region: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        each_bus!(self, bus => bus.list(region, limit).await)
    }
    async fn get(&self, region: &str, id: MessageId) -> Result<Option<DeadLetter>, BusError> {
        each_bus!(self, bus => bus.get(region, id).await)
    }
    async fn redrive(&self, region: &str, which: Selection) -> Result<u64, BusError> {
        each_bus!(self, bus => bus.redrive(region, which).await)
    }
    async fn purge(&self, region: &str, which: Selection) -> Result<u64, BusError> {
        each_bus!(self, bus => bus.purge(region, which).await)
    }
}

impl Stats for AnyBus {
    async fn stats(&self) -> Result<Vec<QueueStats>, BusError> {
        each_bus!(self, bus => bus.stats().await)
    }
}

/// The environment variables the `regis` CLI reads as defaults for its flags. Tests clear
/// them, so a developer's own settings never change what a test runs.
pub const REGIS_ENV: &[&str] = &["REGIS_URL", "REGIS_TOKEN", "REGIS_HUB", "REGIS_REDIS"];

/// The `regis` binary with `args`, in a hermetic environment: `RUST_LOG=warn`, none of
/// [`REGIS_ENV`], stdin closed, and killed if the thread that spawns it exits (a test killed
/// by its timeout leaves nothing behind).
pub fn regis_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regis"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for var in REGIS_ENV {
        command.env_remove(var);
    }
    regis::redis_process::die_with_parent(&mut command);
    command
}

/// Runs the `regis` binary to completion ([`regis_command`]).
pub fn regis(args: &[&str]) -> Output {
    regis_env(args, &[])
}

/// Runs the `regis` binary to completion with `env` added to its environment.
pub fn regis_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = regis_command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run the regis binary")
}

/// A finished command's standard output.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A finished command's standard error.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A finished command's exit code and output, for assertion messages.
pub fn explain(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    )
}

/// `regis serve` as a child process, for kill -9 and signal tests.
pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

/// Writes `config` as TOML (what `regis serve` reads) with a fixed HTTP port.
pub fn write_config(dir: &Path, config: &Config, http_port: u16) -> PathBuf {
    let regions: String = config
        .regions
        .iter()
        .map(|r| {
            format!(
                "[[regions]]\nname = \"{}\"\nredis = \"{}\"\nworker = \"{}\"\n",
                r.name,
                r.redis,
                match r.worker {
                    WorkerPlacement::Local => "local",
                    WorkerPlacement::Remote => "remote",
                }
            )
        })
        .collect();
    let bus = match &config.bus {
        BusConfig::Embedded {} => String::new(),
        BusConfig::Nats(nats) => format!(
            "[bus]\nkind = \"nats\"\nurl = \"{}\"\nstream = \"{}\"\n{}",
            nats.url,
            nats.stream,
            nats.domain
                .as_ref()
                .map(|d| format!("domain = \"{d}\"\n"))
                .unwrap_or_default()
        ),
    };
    let extra = auth_table(config);
    let (root, http) = root_and_http_keys(config);
    let text = format!(
        "data_dir = {data:?}\nconvergence = \"{conv}\"\n{root}{bus}[http]\nlisten = \"127.0.0.1:{http_port}\"\n{http}\
         [delivery]\nmax_receives = {mr}\nvisibility_timeout = \"{vt}ms\"\nretry_backoff = \"{rb}ms\"\nretry_backoff_max = \"{rbm}ms\"\n\
         [worker]\nredis_timeout = \"{rt}ms\"\n{extra}{regions}",
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

/// The tables of issue 6 (`[auth]`) in TOML, when set.
fn auth_table(config: &Config) -> String {
    let mut text = String::new();
    if let Some(auth) = &config.auth {
        text.push_str("[auth]\n");
        for (key, value) in [
            ("publish", &auth.publish),
            ("publish_env", &auth.publish_env),
            ("worker", &auth.worker),
            ("worker_env", &auth.worker_env),
            ("admin", &auth.admin),
            ("admin_env", &auth.admin_env),
        ] {
            if let Some(value) = value {
                text.push_str(&format!("{key} = {value:?}\n"));
            }
        }
        text.push_str(&format!(
            "healthz_open = {}\nmetrics_open = {}\n",
            auth.healthz_open, auth.metrics_open
        ));
    }
    text
}

/// Root keys and `[http]` keys of issue 6 (`max_bus_bytes`, HTTPS), when set.
fn root_and_http_keys(config: &Config) -> (String, String) {
    let root = config
        .max_bus_bytes
        .map(|cap| format!("max_bus_bytes = {cap}\n"))
        .unwrap_or_default();
    let mut http = String::new();
    if let (Some(cert), Some(key)) = (&config.http.tls_cert, &config.http.tls_key) {
        http = format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
    }
    (root, http)
}

impl ServeProcess {
    /// Runs `regis serve --config <path>` and waits until /healthz answers.
    pub async fn start(config_path: &Path, addr: SocketAddr) -> ServeProcess {
        let mut command = regis_command(&["serve", "--config"]);
        command
            .arg(config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        ServeProcess::spawn(command, addr).await
    }

    /// Spawns `command` (a `regis ... serve` from [`regis_command`], with whatever else the
    /// test needs: environment, log file) listening on `addr`, and waits until /healthz
    /// answers 2xx.
    pub async fn spawn(mut command: Command, addr: SocketAddr) -> ServeProcess {
        let child = command.spawn().expect("spawn regis serve");
        let serve = ServeProcess { child, addr };
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
        kill_9(&mut self.child);
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child, "regis serve")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        kill_9(&mut self.child);
    }
}

/// SIGKILL and reap.
fn kill_9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM, then waits (up to 30 s) for the exit status of `what`.
fn terminate(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit within 30s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `regis worker --hub ...` as a child process: a remote region's worker.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    /// Runs `regis worker --hub HUB --region REGION --redis REDIS` plus `extra` arguments,
    /// with `env` added to its environment. It retries until the hub answers, so it may be
    /// started before the hub.
    pub fn start(
        hub: &str,
        region: &str,
        redis: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let mut args = vec!["worker", "--hub", hub, "--region", region, "--redis", redis];
        args.extend_from_slice(extra);
        WorkerProcess::run(&args, env)
    }

    /// Runs `regis` with `args` (starting with `worker`) in the background, with `env` added
    /// to its environment ([`regis_command`]).
    pub fn run(args: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::run_with_stderr(args, env, Stdio::inherit())
    }

    /// [`WorkerProcess::run`] with its log (stderr) going to `stderr`.
    pub fn run_with_stderr(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> WorkerProcess {
        let mut command = regis_command(args);
        command.stdout(Stdio::null()).stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        WorkerProcess {
            child: command.spawn().expect("spawn regis worker"),
        }
    }

    /// SIGTERM, without waiting for the exit.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits (up to 30 s) for the exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the worker") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "regis worker did not exit within 30s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill_9(&mut self) {
        kill_9(&mut self.child);
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        kill_9(&mut self.child);
    }
}

/// A throwaway certificate authority and a server certificate it signed for `localhost` and
/// `127.0.0.1`, as PEM files in `dir`.
pub struct TestCa {
    /// The CA certificate (what clients trust).
    pub ca_path: PathBuf,
    /// The server's certificate chain.
    pub cert_path: PathBuf,
    /// The server's private key.
    pub key_path: PathBuf,
}

/// Makes a [`TestCa`] in `dir`.
pub fn test_ca(dir: &Path) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Regis test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("a self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("a server key");
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("a server certificate");
    let ca = TestCa {
        ca_path: dir.join("ca.pem"),
        cert_path: dir.join("cert.pem"),
        key_path: dir.join("key.pem"),
    };
    std::fs::write(&ca.ca_path, ca_cert.pem()).expect("write ca.pem");
    std::fs::write(&ca.cert_path, server_cert.pem()).expect("write cert.pem");
    std::fs::write(&ca.key_path, server_key.serialize_pem()).expect("write key.pem");
    ca
}

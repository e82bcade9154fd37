//! The hub's configuration file (`regis.toml`).
//!
//! Every section is a serde struct that refuses unknown keys, every field has a documented
//! default, and [`Config::load`] checks what serde cannot (unique region names, parseable
//! Redis URLs, `tombstone_ttl >= dead_letter_retention`, …) so a bad file fails at start
//! with the file, the key and what is expected. `regis.example.toml` at the repository root
//! documents every key and is parsed by a test.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::bus::nats::NatsConfig;
use crate::clock::MAX_ORIGIN;
use crate::command::Convergence;
use crate::envelope::DEFAULT_MAX_MESSAGE_BYTES;

/// A configuration problem, with where it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value serde accepted but Regis cannot use.
    #[error("config file {path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// The whole hub configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding the embedded bus (created if missing). Default `"regis-data"`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How regions reconcile concurrent updates: `"lww"` (default) or `"none"`.
    #[serde(default)]
    pub convergence: Convergence,
    /// Largest encoded message accepted, in bytes. Default 262144 (256 KiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// This hub's origin id in versions, 0..=1023; give every hub publishing to one bus its
    /// own. Default 0.
    #[serde(default)]
    pub node_id: u16,
    /// Databases a message may target: `0` to `databases - 1`, on every ingress (HTTP
    /// `"db"`, RESP `SELECT`, the Rust `Publisher`); a message for another database is
    /// refused at publish. Match your regions' Redis `databases` setting. Default 16
    /// (`resp.databases`, its older spelling, is still read when this key is absent).
    #[serde(default)]
    pub databases: Option<u32>,
    /// How long version metadata (tombstones, counter records) is kept in each region after
    /// the write it describes. Must be at least `delivery.dead_letter_retention`, which is
    /// its default.
    #[serde(default, with = "humantime_serde")]
    pub tombstone_ttl: Option<Duration>,
    /// The HTTP listener (publish API, status, dead letters, metrics).
    #[serde(default)]
    pub http: HttpConfig,
    /// Delivery semantics shared by every region's queue.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Defaults for every region's worker.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// The regions; each gets its own queue and worker. At least one.
    #[serde(default)]
    pub regions: Vec<RegionConfig>,
    /// The Redis-protocol listener; off unless the section is present.
    #[serde(default)]
    pub resp: Option<RespConfig>,
    /// Which bus holds the topic and the queues: the embedded one (default) or NATS.
    #[serde(default)]
    pub bus: BusConfig,
    /// Bearer tokens per role; without the section the API is open (as on a loopback-only
    /// hub). See docs/remote.md.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Most bytes the embedded bus may occupy on disk; publishes beyond it are refused
    /// ("bus full") until the regions catch up. Default: no cap (the disk is the limit).
    #[serde(default)]
    pub max_bus_bytes: Option<u64>,
}

/// `[bus]`: `kind = "embedded"` (default: SQLite in `data_dir`, one hub machine) or
/// `kind = "nats"` with the keys of [`NatsConfig`] (a NATS JetStream server or cluster).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BusConfig {
    /// The embedded SQLite bus in `data_dir` (it has no keys of its own).
    Embedded {},
    /// NATS JetStream.
    Nats(NatsConfig),
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig::Embedded {}
    }
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Default `"127.0.0.1:7700"`.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS only. Default: none.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default: none.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// `[auth]`: one bearer token per role. Each role's token is given either in the file
/// (`publish = "..."`) or as the name of an environment variable holding it
/// (`publish_env = "REGIS_PUBLISH_TOKEN"`), never both. `admin` is required; a role without
/// a token of its own can only be used with the admin token, which may do everything.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Token for publishing (`POST /v1/publish`, and `AUTH` on the RESP listener).
    #[serde(default)]
    pub publish: Option<String>,
    /// Environment variable holding the publish token.
    #[serde(default)]
    pub publish_env: Option<String>,
    /// Token for remote workers (the lease API under `/v1/worker/`).
    #[serde(default)]
    pub worker: Option<String>,
    /// Environment variable holding the worker token.
    #[serde(default)]
    pub worker_env: Option<String>,
    /// Token for operators: status, dead letters, metrics (unless open); accepted for every
    /// other role's routes too.
    #[serde(default)]
    pub admin: Option<String>,
    /// Environment variable holding the admin token.
    #[serde(default)]
    pub admin_env: Option<String>,
    /// Whether `GET /healthz` answers without a token (load balancers probe it; it tells
    /// nothing but "up"). Default `true`.
    #[serde(default = "default_true")]
    pub healthz_open: bool,
    /// Whether `GET /metrics` answers without a token. Default `false`: scrape it with the
    /// admin token, or set `true` when only your Prometheus can reach the listener.
    #[serde(default)]
    pub metrics_open: bool,
}

/// The shortest token accepted: 16 characters (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens of `[auth]`, read from the file or the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedTokens {
    /// The publish token.
    pub publish: Option<String>,
    /// The worker token.
    pub worker: Option<String>,
    /// The admin token.
    pub admin: String,
}

impl std::fmt::Debug for ResolvedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResolvedTokens { .. }")
    }
}

impl AuthConfig {
    /// Reads every role's token from the file or its environment variable; the error names
    /// the key and says what to do.
    pub fn resolve(&self) -> Result<ResolvedTokens, (String, String)> {
        let one = |role: &str,
                   value: &Option<String>,
                   env: &Option<String>|
         -> Result<Option<String>, (String, String)> {
            let key = format!("auth.{role}");
            let token = match (value, env) {
                (Some(_), Some(_)) => {
                    return Err((
                        key,
                        format!(
                            "give the {role} token either in the file or through auth.{role}_env, not both"
                        ),
                    ));
                }
                (Some(token), None) => token.clone(),
                (None, Some(var)) => match std::env::var(var) {
                    Ok(token) if !token.is_empty() => token,
                    Ok(_) => {
                        return Err((
                            format!("auth.{role}_env"),
                            format!(
                                "the environment variable {var} is empty; set it to the {role} token"
                            ),
                        ));
                    }
                    Err(std::env::VarError::NotPresent) => {
                        return Err((
                            format!("auth.{role}_env"),
                            format!(
                                "the environment variable {var} is not set; export it with the {role} token, or give the token as auth.{role}"
                            ),
                        ));
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err((
                            format!("auth.{role}_env"),
                            format!(
                                "the environment variable {var} is not valid UTF-8; tokens are printable ASCII"
                            ),
                        ));
                    }
                },
                (None, None) => return Ok(None),
            };
            let key = if env.is_some() {
                format!("auth.{role}_env")
            } else {
                key
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err((
                    key,
                    format!(
                        "the {role} token is {} characters; use at least {MIN_TOKEN_LEN} (e.g. the output of `openssl rand -hex 32`)",
                        token.len()
                    ),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    key,
                    format!(
                        "the {role} token holds spaces or characters outside printable ASCII; it travels in an HTTP header, use e.g. `openssl rand -hex 32`"
                    ),
                ));
            }
            Ok(Some(token))
        };
        let publish = one("publish", &self.publish, &self.publish_env)?;
        let worker = one("worker", &self.worker, &self.worker_env)?;
        let admin = one("admin", &self.admin, &self.admin_env)?.ok_or_else(|| {
            (
                "auth.admin".to_string(),
                "[auth] needs an admin token (auth.admin or auth.admin_env): without it nobody could read status or manage dead letters".to_string(),
            )
        })?;
        Ok(ResolvedTokens {
            publish,
            worker,
            admin,
        })
    }
}

fn default_true() -> bool {
    true
}

/// `[resp]`: any Redis client publishes by sending its ordinary write commands here.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespConfig {
    /// Address to listen on. Default `"127.0.0.1:6380"`.
    #[serde(default = "default_resp_listen")]
    pub listen: SocketAddr,
    /// When set, clients must `AUTH <password>` (or `AUTH default <password>`, or
    /// `HELLO 3 AUTH default <password>`) before publishing. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// Most connections at once; one more is answered
    /// `-ERR max number of clients reached` and closed. Default 10000.
    #[serde(default = "default_resp_max_connections")]
    pub max_connections: usize,
    /// Close a connection that sends nothing for this long; `"0s"` never does (as Redis's
    /// `timeout 0`). Default `"0s"`.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest single argument (bulk string), in bytes. Default: `max_message_bytes`.
    #[serde(default)]
    pub max_bulk_bytes: Option<usize>,
    /// Most arguments in one command. Default 65536.
    #[serde(default = "default_resp_max_array_len")]
    pub max_array_len: usize,
    /// Longest inline command (and `*`/`$` count line), in bytes. Default 65536.
    #[serde(default = "default_resp_max_inline_bytes")]
    pub max_inline_bytes: usize,
    /// Deprecated spelling of the top-level `databases` (which bounds every ingress, not
    /// only `SELECT`); read only when the top-level key is absent. Default: none.
    #[serde(default)]
    pub databases: Option<u32>,
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS only. Default: none.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default: none.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for RespConfig {
    fn default() -> Self {
        RespConfig {
            listen: default_resp_listen(),
            password: None,
            max_connections: default_resp_max_connections(),
            idle_timeout: Duration::ZERO,
            max_bulk_bytes: None,
            max_array_len: default_resp_max_array_len(),
            max_inline_bytes: default_resp_max_inline_bytes(),
            databases: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn default_resp_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6380))
}
fn default_resp_max_connections() -> usize {
    10_000
}
fn default_resp_max_array_len() -> usize {
    65_536
}
fn default_resp_max_inline_bytes() -> usize {
    65_536
}
/// Databases a message may target when the config does not say: Redis's default.
pub const DEFAULT_DATABASES: u32 = 16;

/// `[delivery]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Receives before a failing message moves to the region's dead letters. Default 5.
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// How long a received message stays invisible to other consumers before it is
    /// delivered again if not settled. Default `"30s"`.
    #[serde(default = "default_visibility_timeout", with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// First retry delay; doubles with every receive, with jitter. Default `"100ms"`.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Longest retry delay. Default `"30s"`.
    #[serde(default = "default_retry_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// How long dead letters are kept before they are removed. Default `"4d"`.
    #[serde(default = "default_dead_letter_retention", with = "humantime_serde")]
    pub dead_letter_retention: Duration,
}

/// `[worker]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumers per region, each applying one batch at a time. Default 2.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most messages one consumer leases and applies at once. Default 256.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Timeout of one Redis round trip (and of connecting); must be well below
    /// `delivery.visibility_timeout`. Default `"5s"`.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub redis_timeout: Duration,
}

/// `[[regions]]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name: lower-case letters, digits, `-` and `_`. Appears in URLs and metrics.
    pub name: String,
    /// The region's Redis, e.g. `"redis://127.0.0.1:6379"` (`redis://:password@host:port/`).
    /// Required unless `worker = "remote"`.
    #[serde(default)]
    pub redis: String,
    /// Overrides `worker.concurrency` for this region.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Where this region's worker runs: `"local"` (default: inside `regis serve`) or
    /// `"remote"` (no worker here; another process consumes the region's queue, e.g. a worker
    /// running in the region itself).
    #[serde(default)]
    pub worker: WorkerPlacement,
}

/// Where a region's worker runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerPlacement {
    /// Inside the hub process.
    #[default]
    Local,
    /// Elsewhere: the hub only keeps the region's queue.
    Remote,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("regis-data")
}
fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}
fn default_max_receives() -> u32 {
    5
}
fn default_visibility_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_dead_letter_retention() -> Duration {
    Duration::from_secs(4 * 24 * 3600)
}
fn default_concurrency() -> usize {
    2
}
fn default_batch_size() -> usize {
    256
}
fn default_redis_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_receives: default_max_receives(),
            visibility_timeout: default_visibility_timeout(),
            retry_backoff: default_retry_backoff(),
            retry_backoff_max: default_retry_backoff_max(),
            dead_letter_retention: default_dead_letter_retention(),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: default_concurrency(),
            batch_size: default_batch_size(),
            redis_timeout: default_redis_timeout(),
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and checks config text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string().trim_end().to_string(),
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// A config with the given regions and every default, for tests, the demo and benches.
    pub fn with_regions(data_dir: PathBuf, regions: &[(&str, String)]) -> Config {
        Config {
            data_dir,
            convergence: Convergence::default(),
            max_message_bytes: default_max_message_bytes(),
            node_id: 0,
            databases: None,
            tombstone_ttl: None,
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                tls_cert: None,
                tls_key: None,
            },
            delivery: DeliveryConfig::default(),
            worker: WorkerConfig::default(),
            regions: regions
                .iter()
                .map(|(name, redis)| RegionConfig {
                    name: name.to_string(),
                    redis: redis.clone(),
                    concurrency: None,
                    worker: WorkerPlacement::Local,
                })
                .collect(),
            resp: None,
            bus: BusConfig::default(),
            auth: None,
            max_bus_bytes: None,
        }
    }

    /// How long version metadata is kept (defaults to the dead-letter retention).
    pub fn tombstone_ttl(&self) -> Duration {
        self.tombstone_ttl
            .unwrap_or(self.delivery.dead_letter_retention)
    }

    /// Databases a message may target (`0..databases`): the top-level `databases`, else
    /// `resp.databases`, else [`DEFAULT_DATABASES`].
    pub fn databases(&self) -> u32 {
        self.databases
            .or(self.resp.as_ref().and_then(|resp| resp.databases))
            .unwrap_or(DEFAULT_DATABASES)
    }

    /// Consumers for one region.
    pub fn concurrency(&self, region: &RegionConfig) -> usize {
        region.concurrency.unwrap_or(self.worker.concurrency)
    }

    /// Checks everything serde could not.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        if self.regions.is_empty() {
            return Err(invalid(
                "regions",
                "no regions: add at least one [[regions]] table with a name and a redis URL".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, region) in self.regions.iter().enumerate() {
            let key = |field: &str| format!("regions[{i}].{field}");
            let valid_name = !region.name.is_empty()
                && region.name.len() <= 64
                && region.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid_name {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "{:?} is not a valid region name: use 1 to 64 lower-case letters, digits, '-' or '_'",
                        region.name
                    ),
                ));
            }
            if !names.insert(region.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "region {:?} is listed twice; region names must be unique",
                        region.name
                    ),
                ));
            }
            let remote = region.worker == WorkerPlacement::Remote;
            if region.redis.is_empty() && remote {
                // Its worker gets the Redis URL where it runs (`regis worker --redis`).
            } else if region.redis.is_empty() {
                return Err(invalid(
                    &key("redis"),
                    "missing: regis serve runs this region's worker and needs its Redis URL, e.g. \"redis://127.0.0.1:6379\" (or set worker = \"remote\")".into(),
                ));
            } else if let Err(err) = redis::Client::open(region.redis.as_str()) {
                return Err(invalid(
                    &key("redis"),
                    format!(
                        "{:?} is not a Redis URL ({err}); expected e.g. \"redis://127.0.0.1:6379\"",
                        region.redis
                    ),
                ));
            }
            if region.concurrency == Some(0) {
                return Err(invalid(&key("concurrency"), "must be at least 1".into()));
            }
        }
        if self.node_id > MAX_ORIGIN {
            return Err(invalid(
                "node_id",
                format!(
                    "{} is above the largest origin id {MAX_ORIGIN}",
                    self.node_id
                ),
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid(
                "max_message_bytes",
                format!(
                    "{} is out of range: use 1024 to 67108864 bytes",
                    self.max_message_bytes
                ),
            ));
        }
        let d = &self.delivery;
        if d.max_receives == 0 {
            return Err(invalid(
                "delivery.max_receives",
                "must be at least 1".into(),
            ));
        }
        for (key, value) in [
            ("delivery.visibility_timeout", d.visibility_timeout),
            ("delivery.retry_backoff", d.retry_backoff),
            ("delivery.retry_backoff_max", d.retry_backoff_max),
            ("delivery.dead_letter_retention", d.dead_letter_retention),
            ("worker.redis_timeout", self.worker.redis_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero".into()));
            }
        }
        if d.retry_backoff_max < d.retry_backoff {
            return Err(invalid(
                "delivery.retry_backoff_max",
                "must be at least delivery.retry_backoff".into(),
            ));
        }
        if self.worker.redis_timeout >= d.visibility_timeout {
            return Err(invalid(
                "worker.redis_timeout",
                "must be shorter than delivery.visibility_timeout, or leases expire while a batch is still being applied".into(),
            ));
        }
        if self.tombstone_ttl() < d.dead_letter_retention {
            return Err(invalid(
                "tombstone_ttl",
                "must be at least delivery.dead_letter_retention, or a redriven dead letter could resurrect a deleted key".into(),
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1".into()));
        }
        if !(1..=10_000).contains(&self.worker.batch_size) {
            return Err(invalid("worker.batch_size", "use 1 to 10000".into()));
        }
        if let BusConfig::Nats(nats) = &self.bus {
            nats.check()
                .map_err(|(key, problem)| invalid(&format!("bus.{key}"), problem))?;
        }
        if self.databases == Some(0) {
            return Err(invalid(
                "databases",
                "must be at least 1 (database 0); match your regions' Redis `databases` setting"
                    .into(),
            ));
        }
        if let Some(resp) = &self.resp {
            resp.check(self.max_message_bytes, &invalid)?;
            if let (Some(top), Some(old)) = (self.databases, resp.databases)
                && top != old
            {
                return Err(invalid(
                    "resp.databases",
                    format!(
                        "is {old} but databases is {top}: remove resp.databases, the top-level databases now bounds every ingress"
                    ),
                ));
            }
        }
        // Remote workers, auth, TLS and limits (issue 6).
        if let Some(auth) = &self.auth {
            auth.resolve()
                .map_err(|(key, problem)| invalid(&key, problem))?;
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(invalid(
                if self.http.tls_cert.is_some() {
                    "http.tls_key"
                } else {
                    "http.tls_cert"
                },
                "HTTPS needs both http.tls_cert and http.tls_key (PEM files); set both or neither"
                    .into(),
            ));
        }
        if self.max_bus_bytes.is_some() && matches!(self.bus, BusConfig::Nats(_)) {
            return Err(invalid(
                "max_bus_bytes",
                "caps the embedded bus only; with bus.kind = \"nats\" limit the stream on the NATS server instead (max_bytes, with discard = new)".into(),
            ));
        }
        if let Some(cap) = self.max_bus_bytes
            && cap < MIN_BUS_BYTES
        {
            return Err(invalid(
                "max_bus_bytes",
                format!(
                    "{cap} is too small: use at least {MIN_BUS_BYTES} bytes (16 MiB), or remove the key for no cap"
                ),
            ));
        }
        Ok(())
    }
}

/// The smallest `max_bus_bytes` accepted.
pub const MIN_BUS_BYTES: u64 = 16 * 1024 * 1024;

impl RespConfig {
    /// The largest argument accepted, given the message limit.
    pub fn max_bulk_bytes(&self, max_message_bytes: usize) -> usize {
        self.max_bulk_bytes.unwrap_or(max_message_bytes)
    }

    fn check(
        &self,
        max_message_bytes: usize,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.password.as_deref() == Some("") {
            return Err(invalid(
                "resp.password",
                "is empty: remove the key to accept every client, or set a password".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("resp.max_connections", "must be at least 1".into()));
        }
        let bulk = self.max_bulk_bytes(max_message_bytes);
        if bulk == 0 || bulk > max_message_bytes {
            return Err(invalid(
                "resp.max_bulk_bytes",
                format!(
                    "use 1 to max_message_bytes ({max_message_bytes}): a larger argument could never be published"
                ),
            ));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_array_len) {
            return Err(invalid("resp.max_array_len", "use 1 to 16777216".into()));
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_inline_bytes) {
            return Err(invalid(
                "resp.max_inline_bytes",
                "use 64 to 16777216".into(),
            ));
        }
        if self.databases == Some(0) {
            return Err(invalid("resp.databases", "must be at least 1".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                if self.tls_cert.is_some() {
                    "resp.tls_key"
                } else {
                    "resp.tls_cert"
                },
                "TLS needs both resp.tls_cert and resp.tls_key (PEM files); set both or neither"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("regis.toml"))
    }

    const MINIMAL: &str = r#"
        [[regions]]
        name = "singapore"
        redis = "redis://127.0.0.1:6379"
    "#;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("regis-data"));
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.delivery.max_receives, 5);
        assert_eq!(c.delivery.visibility_timeout, Duration::from_secs(30));
        assert_eq!(
            c.delivery.dead_letter_retention,
            Duration::from_secs(345_600)
        );
        assert_eq!(c.tombstone_ttl(), c.delivery.dead_letter_retention);
        assert_eq!(c.convergence, Convergence::Lww);
        assert_eq!(c.max_message_bytes, 262_144);
    }

    #[test]
    fn the_example_files_nats_keys_are_real_keys() {
        // Switch the example to NATS and uncomment its [bus] keys: they must all parse.
        let text = include_str!("../regis.example.toml");
        let mut in_bus = false;
        let switched: String = text
            .lines()
            .map(|line| {
                if line.starts_with('[') {
                    in_bus = line == "[bus]";
                }
                let uncommented = line.strip_prefix("# ").filter(|rest| {
                    in_bus
                        && rest
                            .split_once(" = ")
                            .is_some_and(|(k, _)| !k.contains(' '))
                });
                match uncommented {
                    Some(rest) => format!("{rest}\n"),
                    None if line == "kind = \"embedded\"" => "kind = \"nats\"\n".to_string(),
                    None => format!("{line}\n"),
                }
            })
            .collect();
        let config: Config = toml::from_str(&switched).unwrap();
        let BusConfig::Nats(nats) = config.bus else {
            panic!("the switched example uses NATS");
        };
        assert_eq!(nats.domain.as_deref(), Some("hub"));
        assert!(nats.credentials.is_some() && nats.tls_key.is_some());
        assert_eq!(nats.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../regis.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.regions.len(), 2);
        assert_eq!(c.regions[1].name, "mumbai");
        let resp = c.resp.expect("the example enables [resp]");
        assert_eq!(resp.listen.to_string(), "127.0.0.1:6380");
    }

    #[test]
    fn resp_section_defaults_and_checks() {
        assert!(parse(MINIMAL).unwrap().resp.is_none(), "off unless present");
        let c = parse(&format!("[resp]\n{MINIMAL}")).unwrap();
        assert_eq!(c.databases(), 16);
        let resp = c.resp.unwrap();
        assert_eq!(resp.listen.to_string(), "127.0.0.1:6380");
        assert_eq!(resp.max_connections, 10_000);
        assert_eq!(resp.idle_timeout, Duration::ZERO);
        assert_eq!(resp.max_bulk_bytes(c.max_message_bytes), 262_144);
        assert_eq!(resp.max_array_len, 65_536);
        assert_eq!(resp.max_inline_bytes, 65_536);
        assert_eq!(resp.databases, None);
        assert!(resp.password.is_none() && resp.tls_cert.is_none());

        for (section, key) in [
            ("password = \"\"", "resp.password"),
            ("max_connections = 0", "resp.max_connections"),
            ("max_bulk_bytes = 300000", "resp.max_bulk_bytes"),
            ("max_array_len = 0", "resp.max_array_len"),
            ("max_inline_bytes = 1", "resp.max_inline_bytes"),
            ("databases = 0", "resp.databases"),
            ("tls_cert = \"c.pem\"", "resp.tls_key"),
        ] {
            let err = parse(&format!("[resp]\n{section}\n{MINIMAL}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{section}: {err}");
        }
        let unknown = parse(&format!("[resp]\nport = 1\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("port"), "{unknown}");
    }

    #[test]
    fn databases_bound_every_ingress_and_read_the_old_key() {
        assert_eq!(parse(MINIMAL).unwrap().databases(), 16);
        let top = parse(&format!("databases = 4\n{MINIMAL}")).unwrap();
        assert_eq!(top.databases(), 4, "without [resp] too");
        let old = parse(&format!("[resp]\ndatabases = 2\n{MINIMAL}")).unwrap();
        assert_eq!(old.databases(), 2, "the older spelling still counts");
        let same = parse(&format!("databases = 2\n[resp]\ndatabases = 2\n{MINIMAL}")).unwrap();
        assert_eq!(same.databases(), 2);
        let zero = parse(&format!("databases = 0\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            zero.contains("`databases`") && zero.contains("at least 1"),
            "{zero}"
        );
        let conflict = parse(&format!("databases = 4\n[resp]\ndatabases = 2\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            conflict.contains("`resp.databases`") && conflict.contains("remove resp.databases"),
            "{conflict}"
        );
    }

    #[test]
    fn the_bus_is_embedded_unless_nats_is_chosen() {
        assert!(matches!(
            parse(MINIMAL).unwrap().bus,
            BusConfig::Embedded {}
        ));
        let embedded = parse(&format!("[bus]\nkind = \"embedded\"\n{MINIMAL}")).unwrap();
        assert!(matches!(embedded.bus, BusConfig::Embedded {}));

        let nats = parse(&format!(
            "[bus]\nkind = \"nats\"\nurl = \"nats://10.0.0.1:4222\"\nstream = \"PROD\"\nreplicas = 3\n\
             domain = \"hub\"\nrequest_timeout = \"2s\"\n{MINIMAL}"
        ))
        .unwrap();
        let BusConfig::Nats(n) = nats.bus else {
            panic!("kind = nats gives a NATS bus");
        };
        assert_eq!(
            (
                n.url.as_str(),
                n.stream.as_str(),
                n.replicas,
                n.domain.as_deref()
            ),
            ("nats://10.0.0.1:4222", "PROD", 3, Some("hub"))
        );
        assert_eq!(n.request_timeout, Duration::from_secs(2));

        let defaults = parse(&format!("[bus]\nkind = \"nats\"\n{MINIMAL}")).unwrap();
        let BusConfig::Nats(d) = defaults.bus else {
            panic!("kind = nats gives a NATS bus");
        };
        assert_eq!(
            (d.url.as_str(), d.stream.as_str(), d.replicas, d.domain),
            ("nats://127.0.0.1:4222", "REGIS", 1, None)
        );
        assert_eq!(d.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_bus_sections_say_where_and_what() {
        let kind = parse(&format!("[bus]\nkind = \"kafka\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(kind.contains("kafka") && kind.contains("nats"), "{kind}");

        let stray = parse(&format!("[bus]\nurl = \"nats://h:4222\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(stray.contains("kind"), "{stray}");

        let embedded_url = parse(&format!(
            "[bus]\nkind = \"embedded\"\nurl = \"nats://h:4222\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(embedded_url.contains("url"), "{embedded_url}");

        let unknown = parse(&format!("[bus]\nkind = \"nats\"\nurls = \"x\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("urls"), "{unknown}");

        let replicas = parse(&format!("[bus]\nkind = \"nats\"\nreplicas = 7\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(replicas.contains("`bus.replicas`"), "{replicas}");

        let stream = parse(&format!(
            "[bus]\nkind = \"nats\"\nstream = \"a.b\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(stream.contains("`bus.stream`"), "{stream}");
    }

    #[test]
    fn remote_regions_need_no_redis_here() {
        let remote = parse("[[regions]]\nname = \"mumbai\"\nworker = \"remote\"\n").unwrap();
        assert_eq!(remote.regions[0].worker, WorkerPlacement::Remote);
        assert!(remote.regions[0].redis.is_empty());

        let no_redis = parse("[[regions]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            no_redis.contains("regions[0].redis") && no_redis.contains("missing"),
            "{no_redis}"
        );
    }

    #[test]
    fn auth_tls_and_bus_cap_are_checked_at_load() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.auth.is_none() && c.http.tls_cert.is_none() && c.max_bus_bytes.is_none());
        let tokens = "publish = \"publish-0123456789ab\"\nadmin = \"admin-0123456789abcd\"\n";
        let c = parse(&format!("[auth]\n{tokens}{MINIMAL}")).unwrap();
        let auth = c.auth.unwrap();
        assert!(
            auth.healthz_open && !auth.metrics_open,
            "the documented defaults"
        );
        let resolved = auth.resolve().unwrap();
        assert_eq!(resolved.worker, None);
        assert_eq!(resolved.admin, "admin-0123456789abcd");

        for (section, key, needle) in [
            (
                "[auth]\npublish = \"publish-0123456789ab\"\n",
                "auth.admin",
                "needs an admin token",
            ),
            ("[auth]\nadmin = \"short\"\n", "auth.admin", "at least 16"),
            (
                "[auth]\nadmin = \"has a space in it 0123\"\n",
                "auth.admin",
                "printable",
            ),
            (
                "[auth]\nadmin = \"admin-0123456789abcd\"\nadmin_env = \"X\"\n",
                "auth.admin",
                "not both",
            ),
            (
                "[auth]\nadmin_env = \"REGIS_TEST_SURELY_UNSET_VARIABLE\"\n",
                "auth.admin_env",
                "REGIS_TEST_SURELY_UNSET_VARIABLE is not set",
            ),
            ("[http]\ntls_cert = \"c.pem\"\n", "http.tls_key", "both"),
        ] {
            let err = parse(&format!("{section}{MINIMAL}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains(needle),
                "{section}: {err}"
            );
        }
        let err = parse(&format!("max_bus_bytes = 1000\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bus_bytes"), "{err}");
        let c = parse(&format!("max_bus_bytes = 1073741824\n{MINIMAL}")).unwrap();
        assert_eq!(c.max_bus_bytes, Some(1 << 30));
        let nats = parse(&format!(
            "max_bus_bytes = 1073741824\n[bus]\nkind = \"nats\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(nats.contains("embedded bus only"), "{nats}");
    }

    #[test]
    fn bad_files_say_where_and_what() {
        let unknown = parse(&format!("colour = 1\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("regis.toml") && unknown.contains("colour"),
            "{unknown}"
        );

        let typed = parse(&format!("[delivery]\nmax_receives = \"five\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(typed.contains("max_receives"), "{typed}");

        let duration = parse(&format!(
            "[delivery]\nvisibility_timeout = \"soon\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(duration.contains("visibility_timeout"), "{duration}");

        let none = parse("").unwrap_err().to_string();
        assert!(
            none.contains("`regions`") && none.contains("[[regions]]"),
            "{none}"
        );

        let twice = parse(&format!("{MINIMAL}{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("regions[1].name") && twice.contains("twice"),
            "{twice}"
        );

        let url = parse("[[regions]]\nname = \"a\"\nredis = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(url.contains("regions[0].redis"), "{url}");

        let horizon = parse(&format!("tombstone_ttl = \"1h\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(horizon.contains("`tombstone_ttl`"), "{horizon}");

        let name = parse("[[regions]]\nname = \"Asia East\"\nredis = \"redis://h\"\n")
            .unwrap_err()
            .to_string();
        assert!(name.contains("not a valid region name"), "{name}");
    }
}

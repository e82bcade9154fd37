//! `[bus] kind = "nats"`: how to reach NATS, how to authenticate, and what Regis names its
//! streams there. [`NatsConfig::check`] refuses what cannot work before anything connects;
//! [`NatsConfig::connect`] turns the section into a connected client.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use serde::Deserialize;

use crate::bus::{BusError, BusErrorKind};

/// `[bus]` with `kind = "nats"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The NATS server, or several separated by commas (the client fails over between
    /// them), e.g. `"nats://10.0.0.1:4222,nats://10.0.0.2:4222"`. A user and password or a
    /// token can be given in the URL (`nats://user:pass@host:4222`); `tls://` requires TLS.
    /// Default `"nats://127.0.0.1:4222"`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Name of the JetStream stream holding the topic. It also names everything else Regis
    /// keeps in NATS (subjects `<stream>.>`, streams `<stream>_DLQ_<region>`, key-value
    /// buckets `<stream>_meta` and `<stream>_retries`), so two Regis deployments can share a
    /// NATS by using different names. Letters, digits, `-` and `_`. Default `"REGIS"`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Replicas of every stream Regis creates: 1 on a single server, 3 (or 5) on a JetStream
    /// cluster so that losing a server loses nothing. Applies when a stream is created; change
    /// an existing stream with `nats stream edit`. Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The JetStream domain holding the stream, when this process reaches it through a leaf
    /// node that runs a JetStream of its own (see docs/nats.md). Default: none (the
    /// JetStream of the server connected to).
    #[serde(default)]
    pub domain: Option<String>,
    /// A NATS credentials file (user JWT and nkey seed, as `nsc` writes them). Default: none.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for TLS instead of the system's.
    /// Setting it requires TLS. Default: none.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `tls_key`. Default: none.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`. Default: none.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server without TLS, whatever the URL's scheme. Default false.
    #[serde(default)]
    pub tls_required: bool,
    /// Timeout of connecting and of every JetStream request, publish acknowledgements
    /// included. Default `"5s"`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_stream() -> String {
    "REGIS".into()
}
fn default_replicas() -> usize {
    1
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_url(),
            stream: default_stream(),
            replicas: default_replicas(),
            domain: None,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            request_timeout: default_request_timeout(),
        }
    }
}

/// A name usable as a NATS subject token and a stream name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl NatsConfig {
    /// The server addresses in `url`.
    pub fn servers(&self) -> Result<Vec<ServerAddr>, String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                ServerAddr::from_str(s).map_err(|err| {
                    format!(
                        "{s:?} is not a NATS server URL ({err}); expected e.g. \"nats://127.0.0.1:4222\""
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|servers| {
                if servers.is_empty() {
                    Err("no server: give at least one URL such as \"nats://127.0.0.1:4222\"".into())
                } else {
                    Ok(servers)
                }
            })
    }

    /// Checks what serde could not; `Err((key, problem))` names the key below `bus.`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        self.servers().map_err(|problem| ("url", problem))?;
        if !is_token(&self.stream) {
            return Err((
                "stream",
                format!(
                    "{:?} is not a usable stream name: use 1 to 32 letters, digits, '-' or '_'",
                    self.stream
                ),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err((
                "replicas",
                format!(
                    "{} is out of range: JetStream keeps 1 to 5 replicas",
                    self.replicas
                ),
            ));
        }
        if let Some(domain) = &self.domain
            && !is_token(domain)
        {
            return Err((
                "domain",
                format!(
                    "{domain:?} is not a JetStream domain name: use letters, digits, '-' or '_'"
                ),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err((
                "tls_cert",
                "tls_cert and tls_key go together: set both for mutual TLS, or neither".into(),
            ));
        }
        for (key, path) in [
            ("credentials", &self.credentials),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err((key, format!("{} is not a readable file", path.display())));
            }
        }
        if self.request_timeout.is_zero() {
            return Err(("request_timeout", "must be longer than zero".into()));
        }
        Ok(())
    }

    /// Connects to NATS as configured. Fails at once (rather than retrying forever) when no
    /// server answers, so a wrong URL is reported at start-up; once connected, the client
    /// reconnects on its own. Once `closing` is set, losing the connection is expected and
    /// no longer logged as a warning.
    pub async fn connect(&self, closing: Arc<AtomicBool>) -> Result<async_nats::Client, BusError> {
        // One crypto provider for rustls: ring. Installing it fails harmlessly when some other
        // part of the process installed one already.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let servers = self.servers().map_err(|problem| {
            BusError::new(BusErrorKind::Invalid, format!("bus.url: {problem}"))
        })?;
        let mut options = ConnectOptions::new()
            .name("regis")
            .connection_timeout(self.request_timeout)
            .request_timeout(Some(self.request_timeout))
            // Pull requests and acks of a busy region are many small messages.
            .client_capacity(16_384)
            .subscription_capacity(65_536)
            .event_callback(move |event| {
                let closing = closing.load(Ordering::Relaxed);
                async move {
                    match event {
                        async_nats::Event::Disconnected if closing => {
                            tracing::debug!("disconnected from NATS")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        async_nats::Event::Draining | async_nats::Event::Closed => {
                            tracing::debug!(event = %event, "NATS connection closing")
                        }
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        // Every failed reconnect attempt reports one; the disconnect said it all.
                        async_nats::Event::ClientError(err) => {
                            tracing::debug!(error = %err, "NATS client error")
                        }
                        other => tracing::warn!(event = %other, "NATS connection event"),
                    }
                }
            });
        if let Some(path) = &self.credentials {
            options = options.credentials_file(path).await.map_err(|err| {
                BusError::new(
                    BusErrorKind::Invalid,
                    format!(
                        "bus.credentials: cannot use {} ({err}); give a credentials file as `nsc` writes it",
                        path.display()
                    ),
                )
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        options.connect(servers).await.map_err(|err| {
            BusError::new(
                BusErrorKind::Unavailable,
                format!(
                    "cannot connect to NATS at {} ({err}); check bus.url, that nats-server runs, and the credentials/TLS settings",
                    self.url
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_check_and_bad_values_name_their_key() {
        assert!(NatsConfig::default().check().is_ok());
        let bad = |edit: fn(&mut NatsConfig)| {
            let mut config = NatsConfig::default();
            edit(&mut config);
            config.check().unwrap_err()
        };
        assert_eq!(bad(|c| c.url = "http://x:1:2:3".into()).0, "url");
        assert_eq!(bad(|c| c.url = " , ".into()).0, "url");
        assert_eq!(bad(|c| c.stream = "a.b".into()).0, "stream");
        assert_eq!(bad(|c| c.replicas = 0).0, "replicas");
        assert_eq!(bad(|c| c.domain = Some("a b".into())).0, "domain");
        assert_eq!(
            bad(|c| c.tls_cert = Some("/nonexistent".into())).0,
            "tls_cert"
        );
        assert_eq!(
            bad(|c| c.credentials = Some("/nonexistent".into())).0,
            "credentials"
        );
        assert_eq!(
            bad(|c| c.request_timeout = Duration::ZERO).0,
            "request_timeout"
        );
    }

    #[test]
    fn several_servers_are_accepted() {
        let config = NatsConfig {
            url: "nats://10.0.0.1:4222, nats://10.0.0.2:4222".into(),
            ..NatsConfig::default()
        };
        assert_eq!(config.servers().unwrap().len(), 2);
    }
}

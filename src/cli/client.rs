//! The one HTTP client every CLI command uses to talk to a hub.
//!
//! It owns the base URL and turns the API's answers into either the JSON body or an error
//! that says what to do: an unreachable hub, an error body's `message`, a body that is not
//! JSON. It sends the token of `--token` / `REGIS_TOKEN` as a bearer token when the hub has
//! `[auth]`, and trusts the CA of `--ca` for an `https://` hub.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use reqwest::Method;
use serde_json::Value;

/// `--url` of the hub (also `REGIS_URL`), and how to authenticate to it.
#[derive(Clone, Debug, clap::Args)]
pub struct HubArgs {
    /// The hub's HTTP address.
    #[arg(long, env = "REGIS_URL", default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// The bearer token the hub's [auth] asks for: the admin token for status and dead
    /// letters, the publish token (or the admin token) for publish.
    #[arg(long, env = "REGIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// hub (besides the system's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// A hub's HTTP API.
pub struct HubClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// An answer that was not 2xx.
#[derive(Debug, thiserror::Error)]
#[error("the hub answered {status}: {message}")]
pub struct Refused {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The API's `error.message`, or the body.
    pub message: String,
}

impl HubClient {
    /// A client for the hub at `args.url`.
    pub fn new(args: &HubArgs) -> anyhow::Result<HubClient> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &args.ca {
            let certs = crate::tls::ca_certificates(path).map_err(|err| anyhow!(err))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(HubClient {
            base: args.url.trim_end_matches('/').to_string(),
            http: builder.build().context("cannot set up the HTTP client")?,
            token: args.token.clone().filter(|t| !t.is_empty()),
        })
    }

    /// `GET path`, the JSON answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the hub at {}; is `regis serve` running there? (set --url or REGIS_URL)",
                self.base
            )
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("the hub at {} stopped answering mid-way", self.base))?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let mut message = json
                .as_ref()
                .and_then(|j| j["error"]["message"].as_str())
                .map(str::to_string);
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                let hint = if self.token.is_none() {
                    "pass the token with --token or REGIS_TOKEN"
                } else {
                    "check the token given with --token or REGIS_TOKEN"
                };
                let said = message.as_deref().unwrap_or("refused");
                message = Some(format!("{said} ({hint})"));
            }
            return Err(anyhow!(Refused {
                status,
                message: message.unwrap_or_else(|| text.trim().to_string()),
            }));
        }
        json.ok_or_else(|| {
            anyhow!(
                "the hub at {} answered {status} with a body that is not JSON; is that URL a Regis hub?",
                self.base
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_with_ca(path: PathBuf) -> String {
        let args = HubArgs {
            url: "https://127.0.0.1:7700".into(),
            token: None,
            ca: Some(path),
        };
        match HubClient::new(&args) {
            Ok(_) => panic!("a bad --ca file was accepted"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_with_ca(empty);
        assert!(err.contains("holds no CERTIFICATE block"), "{err}");
        assert!(err.contains("--ca must name a PEM file"), "{err}");

        let err = client_with_ca(dir.path().join("missing.pem"));
        assert!(err.contains("cannot read the CA file"), "{err}");
    }
}

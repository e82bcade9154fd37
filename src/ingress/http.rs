//! The HTTP API: publishing, health, metrics and status. The dead-letter admin routes live
//! in [`super::admin`].
//!
//! `POST /v1/publish` takes one message as JSON —
//! `{"commands": [["SET","k","v"],["HSET","h","f","v"]], "db": 0}` — where an argument is a
//! string, a number, or `{"base64": "..."}` for binary data. It answers `200` with
//! `{"id": ..., "version": ...}` only once the message is durable, `4xx` with
//! `{"error": {"code": ..., "message": ...}}` for bad input (nothing is published), and
//! `503` when the bus cannot store it. `POST /v1/publish/batch` takes
//! `{"messages": [{"commands": ...}, ...]}`: independent messages stored with one append,
//! answered `{"results": [...]}` with an id or an error for each, in order.

use std::sync::Arc;

use axum::body::Bytes as Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bus::{Bus, BusError, BusErrorKind};
use crate::health::{Reachability, RedisHealth};
use crate::hub::{Hub, MessageRequest, PublishError};
use crate::latency::{LatencySummary, LatencyWindow};

/// A region as the status endpoint reports it.
pub struct RegionRuntime {
    /// Region name.
    pub name: String,
    /// Its publish→applied latencies.
    pub latency: Arc<LatencyWindow>,
    /// Whether its Redis answers.
    pub health: Arc<RedisHealth>,
}

/// What the handlers share.
pub struct ApiState<B> {
    /// Publishing.
    pub hub: Arc<Hub<B>>,
    /// Queue figures and dead letters.
    pub bus: B,
    /// Per-region runtime figures.
    pub regions: Arc<Vec<RegionRuntime>>,
    /// Metrics rendering, when a recorder is installed.
    pub prometheus: Option<PrometheusHandle>,
    /// What remote workers are told about each region (the lease API).
    pub lease: Arc<super::lease::LeaseState>,
    /// Bearer tokens per role; `None` without `[auth]` (nothing is checked).
    pub auth: Option<Arc<super::auth::HttpAuth>>,
}

impl<B: Clone> Clone for ApiState<B> {
    fn clone(&self) -> Self {
        ApiState {
            hub: self.hub.clone(),
            bus: self.bus.clone(),
            regions: self.regions.clone(),
            prometheus: self.prometheus.clone(),
            lease: self.lease.clone(),
            auth: self.auth.clone(),
        }
    }
}

/// The router for a hub.
pub fn router<B: Bus>(state: ApiState<B>) -> Router {
    let body_limit = body_limit(state.hub.max_message_bytes());
    let batch_limit = batch_limit(state.hub.max_message_bytes());
    Router::new()
        .route("/v1/publish", post(publish::<B>))
        .route(
            "/v1/publish/batch",
            post(publish_batch::<B>).layer(DefaultBodyLimit::max(batch_limit)),
        )
        .route("/v1/status", get(status::<B>))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::<B>))
        .merge(super::admin::dead_letter_routes::<B>())
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(super::lease::lease_routes::<B>())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require::<B>,
        ))
        .with_state(state)
}

/// The largest body of `POST /v1/publish` and the admin routes. JSON escapes and base64 make
/// a body larger than the message it carries; the message itself is checked against
/// `max_message_bytes` after parsing.
fn body_limit(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_mul(6)
        .saturating_add(64 * 1024)
}

/// The largest body of `POST /v1/publish/batch`: many messages, each still limited to
/// `max_message_bytes`.
fn batch_limit(max_message_bytes: usize) -> usize {
    body_limit(max_message_bytes)
        .saturating_mul(8)
        .max(16 * 1024 * 1024)
}

/// The answer to a body that could not be read: above the route's limit, "request body too
/// large: " and `limit`, which says what the limit is and what to do.
pub fn body_refusal(rejection: BytesRejection, limit: impl FnOnce() -> String) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body too large: {}", limit())
    } else {
        rejection.body_text()
    };
    error_response(status, "bad_body", message)
}

/// The answer to a bus failure: its kind decides the status and the code.
pub fn bus_error_response(err: BusError) -> Response {
    let (status, code) = match err.kind() {
        BusErrorKind::UnknownRegion => (StatusCode::NOT_FOUND, "unknown_region"),
        BusErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
        BusErrorKind::Storage | BusErrorKind::Closed | BusErrorKind::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    error_response(status, code, err.to_string())
}

/// An API error body.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

/// Most messages in one `POST /v1/publish/batch`.
pub const MAX_BATCH_MESSAGES: usize = 10_000;

/// Turns `{"commands": [...], "db": n}` into a message request, saying exactly what is wrong.
pub fn parse_publish(body: &[u8]) -> Result<MessageRequest, String> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        format!(
            "body is not valid JSON ({err}); send {{\"commands\": [[\"SET\", \"key\", \"value\"]]}}"
        )
    })?;
    parse_message(value)
}

/// Turns `{"messages": [{"commands": [...], "db": n}, ...]}` into message requests.
pub fn parse_batch(body: &[u8]) -> Result<Vec<MessageRequest>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        format!(
            "body is not valid JSON ({err}); send {{\"messages\": [{{\"commands\": [[\"SET\", \"key\", \"value\"]]}}]}}"
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err("body must be a JSON object such as {\"messages\": [{\"commands\": [[\"SET\", \"key\", \"value\"]]}]}".into());
    };
    if let Some(key) = object.keys().find(|k| *k != "messages") {
        return Err(format!(
            "unknown field {key:?}: a batch has only \"messages\""
        ));
    }
    let Some(Value::Array(messages)) = object.remove("messages") else {
        return Err("missing \"messages\": a list of messages, each {\"commands\": [...]}".into());
    };
    if messages.len() > MAX_BATCH_MESSAGES {
        return Err(format!(
            "{} messages in one batch; send at most {MAX_BATCH_MESSAGES} per request",
            messages.len()
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| parse_message(m).map_err(|why| format!("messages[{i}]: {why}")))
        .collect()
}

fn parse_message(value: Value) -> Result<MessageRequest, String> {
    let Value::Object(object) = value else {
        return Err(
            "body must be a JSON object such as {\"commands\": [[\"SET\", \"key\", \"value\"]]}"
                .into(),
        );
    };
    for key in object.keys() {
        if key != "commands" && key != "db" {
            return Err(format!(
                "unknown field {key:?}: a message has \"commands\" and an optional \"db\""
            ));
        }
    }
    let db = match object.get("db") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("\"db\" must be a database number such as 0, not {n}"))?,
        Some(other) => {
            return Err(format!(
                "\"db\" must be a database number such as 0, not {other}"
            ));
        }
    };
    let Some(Value::Array(commands)) = object.get("commands") else {
        return Err("missing \"commands\": a list of commands, each a list such as [\"SET\", \"key\", \"value\"]".into());
    };
    let mut parsed = Vec::with_capacity(commands.len());
    for (i, command) in commands.iter().enumerate() {
        let Value::Array(args) = command else {
            return Err(format!(
                "commands[{i}] must be a list such as [\"SET\", \"key\", \"value\"]"
            ));
        };
        let mut out = Vec::with_capacity(args.len());
        for (j, arg) in args.iter().enumerate() {
            out.push(parse_arg(arg).map_err(|why| format!("commands[{i}][{j}]: {why}"))?);
        }
        parsed.push(out);
    }
    Ok(MessageRequest {
        commands: parsed,
        db,
    })
}

fn parse_arg(arg: &Value) -> Result<Bytes, String> {
    match arg {
        Value::String(s) => Ok(Bytes::copy_from_slice(s.as_bytes())),
        Value::Number(n) => Ok(Bytes::from(n.to_string())),
        Value::Object(o) => match (o.get("base64"), o.len()) {
            (Some(Value::String(b64)), 1) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|err| format!("invalid base64 ({err})")),
            _ => Err("an object argument must be {\"base64\": \"...\"}".into()),
        },
        other => Err(format!(
            "expected a string, a number or {{\"base64\": \"...\"}}, got {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "a list",
                _ => "something else",
            }
        )),
    }
}

/// The HTTP status for a publish failure.
pub fn publish_status(err: &PublishError) -> StatusCode {
    match err {
        PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
        PublishError::Refused { .. }
        | PublishError::Empty
        | PublishError::DatabaseOutOfRange { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

async fn publish<B: Bus>(
    State(state): State<ApiState<B>>,
    body: Result<Body, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            crate::metrics::Refused { code: "too_large" }.emit();
            return body_refusal(rejection, || {
                format!(
                    "a message may be at most {} bytes (max_message_bytes)",
                    state.hub.max_message_bytes()
                )
            });
        }
    };
    let request = match parse_publish(&body) {
        Ok(request) => request,
        Err(message) => {
            crate::metrics::Refused { code: "bad_json" }.emit();
            return error_response(StatusCode::BAD_REQUEST, "bad_json", message);
        }
    };
    match state.hub.publish(&request).await {
        Ok(receipt) => (
            StatusCode::OK,
            Json(json!({ "id": receipt.id.to_string(), "version": receipt.version.to_string() })),
        )
            .into_response(),
        Err(err) => error_response(publish_status(&err), err.code(), err.to_string()),
    }
}

/// `POST /v1/publish/batch`: independent messages stored with one append; each has its own
/// outcome, in order. Answers once every accepted message is durable.
async fn publish_batch<B: Bus>(
    State(state): State<ApiState<B>>,
    body: Result<Body, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            crate::metrics::Refused { code: "too_large" }.emit();
            return body_refusal(rejection, || {
                format!(
                    "a batch may be at most {} bytes, each message at most {} (max_message_bytes); send fewer messages per request",
                    batch_limit(state.hub.max_message_bytes()),
                    state.hub.max_message_bytes()
                )
            });
        }
    };
    let requests = match parse_batch(&body) {
        Ok(requests) => requests,
        Err(message) => {
            crate::metrics::Refused { code: "bad_json" }.emit();
            return error_response(StatusCode::BAD_REQUEST, "bad_json", message);
        }
    };
    let results = state.hub.publish_many(&requests).await;
    if let Some(err) = bus_failure(&results) {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string());
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|result| match result {
            Ok(receipt) => {
                json!({ "id": receipt.id.to_string(), "version": receipt.version.to_string() })
            }
            Err(err) => json!({ "error": { "code": err.code(), "message": err.to_string() } }),
        })
        .collect();
    (StatusCode::OK, Json(json!({ "results": results }))).into_response()
}

/// The bus failure among a batch's outcomes, if any: the batch is then answered 503, whatever
/// other messages were refused before the append.
fn bus_failure<T>(results: &[Result<T, PublishError>]) -> Option<&PublishError> {
    results.iter().find_map(|result| match result {
        Err(err @ PublishError::Bus(_)) => Some(err),
        _ => None,
    })
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

async fn metrics<B: Bus>(State(state): State<ApiState<B>>) -> Response {
    if let Ok(stats) = state.bus.stats().await {
        for s in &stats {
            crate::metrics::QueueSampled { stats: s }.emit();
        }
    }
    match &state.prometheus {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "no metrics recorder is installed in this process",
        ),
    }
}

/// One region in `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct RegionStatus {
    /// Region name.
    pub name: String,
    /// Messages waiting.
    pub depth: u64,
    /// Messages leased, not settled.
    pub in_flight: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Age of the oldest message not yet applied, ms.
    pub oldest_age_ms: Option<u64>,
    /// `depth` and `in_flight` are estimates (NATS only, see docs/nats.md).
    pub estimated: bool,
    /// Publish→applied over the last minute.
    pub latency: LatencySummary,
    /// Whether the region's Redis answers.
    pub redis: Reachability,
}

async fn status<B: Bus>(State(state): State<ApiState<B>>) -> Response {
    match state.bus.stats().await {
        Ok(stats) => {
            let regions: Vec<RegionStatus> = stats
                .into_iter()
                .map(|s| {
                    let runtime = state.regions.iter().find(|r| r.name == s.name);
                    let latency = runtime.map(|r| r.latency.last_minute()).unwrap_or_default();
                    let redis = runtime.map(|r| r.health.get()).unwrap_or_default();
                    RegionStatus {
                        name: s.name,
                        depth: s.depth,
                        in_flight: s.in_flight,
                        dead_letters: s.dead_letters,
                        oldest_age_ms: s.oldest_age_ms,
                        estimated: s.estimated,
                        latency,
                        redis,
                    }
                })
                .collect();
            (StatusCode::OK, Json(json!({ "regions": regions }))).into_response()
        }
        Err(err) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            err.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strings_numbers_and_base64() {
        let r = parse_publish(
            br#"{"commands": [["SET", "k", {"base64": "AAEC"}], ["INCRBY", "c", 5]], "db": 2}"#,
        )
        .unwrap();
        assert_eq!(r.db, 2);
        assert_eq!(r.commands[0][2].as_ref(), &[0, 1, 2]);
        assert_eq!(r.commands[1][2].as_ref(), b"5");
    }

    #[test]
    fn a_batch_is_unavailable_when_any_message_met_a_bus_failure() {
        use crate::bus::{BusError, BusErrorKind};
        let bus = || PublishError::Bus(BusError::new(BusErrorKind::Storage, "disk full"));
        // The bus failure is found wherever it is, after a refusal too.
        let results: Vec<Result<(), PublishError>> = vec![Err(PublishError::Empty), Err(bus())];
        assert!(matches!(bus_failure(&results), Some(PublishError::Bus(_))));
        let results: Vec<Result<(), PublishError>> = vec![Ok(()), Err(bus()), Err(bus())];
        assert!(matches!(bus_failure(&results), Some(PublishError::Bus(_))));
        // Refusals alone are per-message outcomes of a 200.
        let results: Vec<Result<(), PublishError>> = vec![Ok(()), Err(PublishError::Empty)];
        assert!(bus_failure(&results).is_none());
    }

    #[test]
    fn bad_json_says_where() {
        for (body, needle) in [
            (&b"nope"[..], "not valid JSON"),
            (b"[]", "JSON object"),
            (b"{}", "missing \"commands\""),
            (br#"{"commands": [["SET", "k", null]]}"#, "commands[0][2]"),
            (
                br#"{"commands": [["SET", "k", {"base64": "!!"}]]}"#,
                "invalid base64",
            ),
            (br#"{"commands": ["SET"]}"#, "commands[0] must be a list"),
            (br#"{"commands": [], "db": -1}"#, "\"db\""),
            (br#"{"commands": [], "colour": 1}"#, "unknown field"),
        ] {
            let err = parse_publish(body).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}

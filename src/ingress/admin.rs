//! Dead-letter admin over HTTP, one region at a time.
//!
//! ```text
//! GET  /v1/regions/{region}/dead-letters?limit=N     oldest first, with a preview of each
//! GET  /v1/regions/{region}/dead-letters/{id}        one, with its commands in full
//! POST /v1/regions/{region}/dead-letters/redrive     {"all": true} or {"ids": [...]}
//! POST /v1/regions/{region}/dead-letters/purge       {"all": true} or {"ids": [...]}
//! ```
//!
//! Redrive moves messages back into *that region's* queue only, with a fresh receive count;
//! the other regions, which applied them, are not touched. Errors are the API's usual
//! `{"error": {"code", "message"}}`: an unknown region is a 404, a malformed id or body a
//! 400, a bus that cannot answer a 503. Ids that name no dead letter are reported back in
//! `not_found` rather than failing the whole request, so `--all`-then-retry scripts are safe.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{ApiState, bus_error_response, error_response};
use crate::bus::{Bus, BusError, DeadLetter, Selection};
use crate::envelope::{Envelope, MessageId};

/// Dead letters listed when the request names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The most dead letters one list request returns.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// The dead-letter routes, to merge into the hub's router.
pub fn dead_letter_routes<B: Bus>() -> Router<ApiState<B>> {
    Router::new()
        .route("/v1/regions/{region}/dead-letters", get(list::<B>))
        .route(
            "/v1/regions/{region}/dead-letters/redrive",
            post(redrive::<B>),
        )
        .route("/v1/regions/{region}/dead-letters/purge", post(purge::<B>))
        .route("/v1/regions/{region}/dead-letters/{id}", get(show::<B>))
}

/// One dead letter in a list: everything but the full commands.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// The message id.
    pub id: String,
    /// The region that gave up on it.
    pub region: String,
    /// Receives before it was dead-lettered.
    pub attempts: u32,
    /// When it was published, ms since the epoch.
    pub published_at_ms: u64,
    /// First failure, ms since the epoch.
    pub first_failure_ms: u64,
    /// Last failure, ms since the epoch.
    pub last_failure_ms: u64,
    /// The last error.
    pub last_error: String,
    /// Commands in the message.
    pub command_count: usize,
    /// The commands, shortened, `; `-separated.
    pub preview: String,
}

fn summary(letter: &DeadLetter, envelope: &Result<Envelope, String>) -> DeadLetterSummary {
    let (command_count, preview) = match envelope {
        Ok(envelope) => (envelope.commands.len(), preview(envelope)),
        Err(why) => (0, format!("(cannot decode the message: {why})")),
    };
    DeadLetterSummary {
        id: letter.id.to_string(),
        region: letter.region.clone(),
        attempts: letter.attempts,
        published_at_ms: letter.published_at_ms,
        first_failure_ms: letter.first_failure_ms,
        last_failure_ms: letter.last_failure_ms,
        last_error: letter.last_error.clone(),
        command_count,
        preview,
    }
}

/// The commands of a message, each cut to a readable length, the whole bounded too.
pub fn preview(envelope: &Envelope) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = envelope
        .commands
        .iter()
        .take(SHOWN)
        .map(|c| c.preview(60))
        .collect();
    if envelope.commands.len() > SHOWN {
        parts.push(format!("… {} more", envelope.commands.len() - SHOWN));
    }
    parts.join("; ")
}

/// An argument as `POST /v1/publish` takes it: a string when it is UTF-8, else base64.
fn argument(arg: &[u8]) -> Value {
    match std::str::from_utf8(arg) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(arg) }),
    }
}

fn decode(letter: &DeadLetter) -> Result<Envelope, String> {
    Envelope::decode(&letter.body).map_err(|err| err.to_string())
}

/// A refused admin request: status, code and what to do.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    fn bad(code: &'static str, message: String) -> AdminError {
        AdminError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message)
    }
}

fn parse_id(id: &str) -> Result<MessageId, AdminError> {
    id.parse().map_err(|_| {
        AdminError::bad(
            "bad_id",
            format!(
                "{id:?} is not a message id: ids are UUIDs such as 0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b (see `regis dlq list`)"
            ),
        )
    })
}

/// `?limit=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most dead letters to return (1 to 10000). Default 100.
    pub limit: Option<usize>,
}

async fn list<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(Query(ListQuery { limit: None })) => DEFAULT_LIST_LIMIT,
        Ok(Query(ListQuery { limit: Some(n) })) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
        Ok(Query(ListQuery { limit: Some(n) })) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_limit",
                format!("limit {n} is out of range: use 1 to {MAX_LIST_LIMIT}"),
            );
        }
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!(
                    "{}; the only parameter is limit, e.g. ?limit=100",
                    rejection.body_text()
                ),
            );
        }
    };
    // One more than asked says whether there are more.
    let mut letters = match state.bus.list(&region, limit + 1).await {
        Ok(letters) => letters,
        Err(err) => return bus_error_response(err),
    };
    let truncated = letters.len() > limit;
    letters.truncate(limit);
    let total = match state.bus.stats().await {
        Ok(stats) => stats
            .iter()
            .find(|s| s.name == region)
            .map(|s| s.dead_letters),
        Err(_) => None,
    };
    let items: Vec<DeadLetterSummary> = letters
        .iter()
        .map(|letter| summary(letter, &decode(letter)))
        .collect();
    (
        StatusCode::OK,
        Json(json!({
            "region": region,
            "total": total,
            "truncated": truncated,
            "dead_letters": items,
        })),
    )
        .into_response()
}

async fn show<B: Bus>(
    State(state): State<ApiState<B>>,
    Path((region, id)): Path<(String, String)>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let letter = match state.bus.get(&region, id).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no dead letter {id} in region {region:?}: it may have been redriven, purged or expired (see `regis dlq list`)"
                ),
            );
        }
        Err(err) => return bus_error_response(err),
    };
    let envelope = decode(&letter);
    let mut body = serde_json::to_value(summary(&letter, &envelope)).unwrap_or(Value::Null);
    if let (Value::Object(fields), Ok(envelope)) = (&mut body, &envelope) {
        fields.insert("version".into(), json!(envelope.version.to_string()));
        fields.insert("db".into(), json!(envelope.db));
        let commands: Vec<Vec<Value>> = envelope
            .commands
            .iter()
            .map(|c| c.0.iter().map(|a| argument(a)).collect())
            .collect();
        fields.insert("commands".into(), json!(commands));
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// The body of redrive and purge: `{"all": true}` or `{"ids": ["...", ...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionBody {
    /// Every dead letter of the region.
    #[serde(default)]
    pub all: bool,
    /// These message ids.
    pub ids: Option<Vec<String>>,
}

/// What a redrive or purge request selects: the bus's selection and the ids to check.
fn selection(body: Result<Json<SelectionBody>, JsonRejection>) -> Result<Selection, AdminError> {
    let bad = |message: String| AdminError::bad("bad_selection", message);
    let usage = "send {\"all\": true} or {\"ids\": [\"<message id>\", ...]}";
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return Err(bad(format!("{}; {usage}", rejection.body_text()))),
    };
    match (body.all, body.ids) {
        (true, None) => Ok(Selection::All),
        (false, Some(ids)) if !ids.is_empty() => {
            let mut parsed = Vec::with_capacity(ids.len());
            for id in &ids {
                parsed.push(parse_id(id)?);
            }
            Ok(Selection::Ids(parsed))
        }
        (true, Some(_)) => Err(bad(format!(
            "give either \"all\" or \"ids\", not both; {usage}"
        ))),
        _ => Err(bad(format!("nothing selected; {usage}"))),
    }
}

/// Splits `ids` into those that name a dead letter of `region` and those that do not.
async fn existing<B: Bus>(
    bus: &B,
    region: &str,
    ids: Vec<MessageId>,
) -> Result<(Vec<MessageId>, Vec<String>), BusError> {
    let mut found = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        if bus.get(region, id).await?.is_some() {
            found.push(id);
        } else {
            missing.push(id.to_string());
        }
    }
    Ok((found, missing))
}

/// Redrive or purge.
#[derive(Clone, Copy)]
enum Action {
    Redrive,
    Purge,
}

async fn act<B: Bus>(
    state: ApiState<B>,
    region: String,
    body: Result<Json<SelectionBody>, JsonRejection>,
    action: Action,
) -> Response {
    let which = match selection(body) {
        Ok(which) => which,
        Err(err) => return err.into_response(),
    };
    let (which, not_found) = match which {
        Selection::All => (Selection::All, Vec::new()),
        Selection::Ids(ids) => match existing(&state.bus, &region, ids).await {
            Ok((found, missing)) => (Selection::Ids(found), missing),
            Err(err) => return bus_error_response(err),
        },
    };
    let result = match action {
        Action::Redrive => state.bus.redrive(&region, which).await,
        Action::Purge => state.bus.purge(&region, which).await,
    };
    let count = match result {
        Ok(count) => count,
        Err(err) => return bus_error_response(err),
    };
    let verb = match action {
        Action::Redrive => {
            crate::metrics::DeadLettersRedriven {
                region: &region,
                count,
            }
            .emit();
            "redriven"
        }
        Action::Purge => {
            crate::metrics::DeadLettersPurged {
                region: &region,
                count,
            }
            .emit();
            "purged"
        }
    };
    tracing::info!(
        region,
        count,
        not_found = not_found.len(),
        "dead letters {verb} by an operator"
    );
    (
        StatusCode::OK,
        Json(json!({ "region": region, verb: count, "not_found": not_found })),
    )
        .into_response()
}

async fn redrive<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
    body: Result<Json<SelectionBody>, JsonRejection>,
) -> Response {
    act(state, region, body, Action::Redrive).await
}

async fn purge<B: Bus>(
    State(state): State<ApiState<B>>,
    Path(region): Path<String>,
    body: Result<Json<SelectionBody>, JsonRejection>,
) -> Response {
    act(state, region, body, Action::Purge).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_say_what_is_wrong() {
        let parse = |text: &str| {
            let value: SelectionBody = serde_json::from_str(text).unwrap();
            selection(Ok(Json(value)))
        };
        assert_eq!(parse(r#"{"all": true}"#).unwrap(), Selection::All);
        let id = MessageId::new();
        assert_eq!(
            parse(&format!(r#"{{"ids": ["{id}"]}}"#)).unwrap(),
            Selection::Ids(vec![id])
        );
        for bad in [
            r#"{}"#,
            r#"{"all": false}"#,
            r#"{"ids": []}"#,
            r#"{"all": true, "ids": ["x"]}"#,
            r#"{"ids": ["not-a-uuid"]}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                err.message.contains("\"all\"") || err.code == "bad_id",
                "{err:?}"
            );
        }
    }

    #[test]
    fn binary_arguments_round_trip_as_base64() {
        assert_eq!(argument(b"hello"), json!("hello"));
        assert_eq!(argument(&[0xff, 0x00]), json!({ "base64": "/wA=" }));
    }
}

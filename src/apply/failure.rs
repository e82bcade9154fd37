//! Sorting Redis failures into "try again later" and "this message is poison".
//!
//! A transient failure says nothing about the message: the region's Redis is down, loading,
//! busy, out of memory, read-only during a failover. The worker holds the region's backlog
//! until Redis answers again, and such failures never count towards dead-lettering. A
//! permanent failure is the command's own fault (`WRONGTYPE`, a syntax error): the message is
//! retried with backoff and, after `max_receives`, dead-lettered.

use redis::{RedisError, ServerError};

/// Why a message (or a whole batch) was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The region's Redis could not take it right now.
    Transient(String),
    /// The command itself failed.
    Permanent(String),
}

impl Failure {
    /// The error text.
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Permanent(m) => m,
        }
    }
}

/// Error codes that mean "not now" rather than "never".
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "OOM",
    "NOSCRIPT",
    "MOVED",
    "ASK",
    "NOREPLICAS",
    "BUSYKEY",
];

/// Classifies an error the server returned for one command.
pub fn classify_server(error: &ServerError) -> Failure {
    let text = match error.details() {
        Some(details) => format!("{} {}", error.code(), details),
        None => error.code().to_string(),
    };
    if TRANSIENT_CODES.contains(&error.code()) {
        Failure::Transient(text)
    } else {
        Failure::Permanent(text)
    }
}

/// Classifies a failed request: connection problems, timeouts and server errors returned for
/// the request as a whole.
pub fn classify(error: &RedisError) -> Failure {
    if let Some(errors) = error.clone().into_server_errors()
        && let Some((_, first)) = errors.first()
    {
        return classify_server(first);
    }
    match error.code() {
        // The whole request was refused by the server: classify by its code.
        Some(code)
            if !TRANSIENT_CODES.contains(&code)
                && error.kind() != redis::ErrorKind::AuthenticationFailed =>
        {
            if code == "NOAUTH" || code == "WRONGPASS" || code == "NOPERM" {
                Failure::Transient(format!(
                    "the region's Redis refused our credentials: {error}; fix the redis URL in the config"
                ))
            } else {
                Failure::Permanent(error.to_string())
            }
        }
        // I/O, timeouts, refused connections, authentication, protocol surprises: the region
        // is unreachable as far as this batch is concerned.
        _ => Failure::Transient(error.to_string()),
    }
}

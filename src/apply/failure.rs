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

/// `-ERR max number of clients reached`: the region's Redis is full for now, whatever the
/// message; an `ERR` that must not count towards dead-lettering.
fn too_many_clients(text: &str) -> bool {
    text.contains("max number of clients reached")
}

/// Classifies an error the server returned for one command.
pub fn classify_server(error: &ServerError) -> Failure {
    let text = match error.details() {
        Some(details) => format!("{} {}", error.code(), details),
        None => error.code().to_string(),
    };
    if TRANSIENT_CODES.contains(&error.code()) || too_many_clients(&text) {
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
                && error.kind() != redis::ErrorKind::AuthenticationFailed
                && !too_many_clients(&error.to_string()) =>
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

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    fn refused(description: &'static str, detail: &str) -> RedisError {
        RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            description,
            detail.to_string(),
        ))
    }

    #[test]
    fn a_refused_select_is_the_messages_fault_and_a_full_server_is_not() {
        // What redis-rs reports when a connection's SELECT is refused: the database does not
        // exist there, and retrying changes nothing.
        let select = classify(&refused(
            "Redis server refused to switch database",
            "DB index is out of range",
        ));
        assert!(matches!(select, Failure::Permanent(_)), "{select:?}");
        assert!(select.message().contains("DB index is out of range"));
        // A Redis at its client limit will take the message later.
        let full = classify(&refused("", "max number of clients reached"));
        assert!(matches!(full, Failure::Transient(_)), "{full:?}");
        let io = classify(&RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(io, Failure::Transient(_)), "{io:?}");
    }
}

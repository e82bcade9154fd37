//! `convergence = "none"`: commands applied as they arrive, as the original system did.
//!
//! A batch is one pipeline. A single-command message is sent as is; a message of several
//! commands is wrapped in `MULTI`/`EXEC` so no other client sees it half applied. Redis does
//! not roll a transaction back when one of its commands fails at run time; a message that
//! fails is retried whole, so its other commands may be applied more than once — the
//! at-least-once semantics of this mode.

use redis::Value;
use redis::aio::ConnectionManager;

use super::failure::{Failure, classify, classify_server};
use crate::envelope::Envelope;

/// Applies `batch` in one pipeline; per-message outcomes, or a failure of the whole batch.
pub async fn apply(
    conn: &mut ConnectionManager,
    batch: &[&Envelope],
) -> Result<Vec<Result<(), Failure>>, Failure> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for envelope in batch {
        let wrap = envelope.commands.len() > 1;
        if wrap {
            pipe.cmd("MULTI");
        }
        for command in &envelope.commands {
            let mut cmd = redis::Cmd::new();
            cmd.arg(command.name());
            for arg in &command.0[1..] {
                cmd.arg(arg.as_ref());
            }
            pipe.add_command(cmd);
        }
        if wrap {
            pipe.cmd("EXEC");
        }
    }
    let replies: Vec<Value> = pipe.query_async(conn).await.map_err(|err| classify(&err))?;
    let mut replies = replies.into_iter();
    let mut outcomes = Vec::with_capacity(batch.len());
    for envelope in batch {
        let wrap = envelope.commands.len() > 1;
        let taken: Vec<Value> = replies
            .by_ref()
            .take(envelope.commands.len() + if wrap { 2 } else { 0 })
            .collect();
        outcomes.push(outcome(taken));
    }
    Ok(outcomes)
}

/// The first failure among a message's replies (including those inside `EXEC`'s array).
fn outcome(replies: Vec<Value>) -> Result<(), Failure> {
    let mut first: Option<Failure> = None;
    let mut note = |failure: Failure| {
        // A transient failure anywhere wins: the message should simply be tried again.
        match (&first, &failure) {
            (None, _) | (Some(Failure::Permanent(_)), Failure::Transient(_)) => {
                first = Some(failure)
            }
            _ => {}
        }
    };
    for reply in replies {
        match reply {
            Value::ServerError(err) => note(classify_server(&err)),
            Value::Array(items) => {
                for item in items {
                    if let Value::ServerError(err) = item {
                        note(classify_server(&err));
                    }
                }
            }
            _ => {}
        }
    }
    match first {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

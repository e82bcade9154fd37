//! `Publisher`: the Rust library for publishing to a hub, over its RESP ingress.
//!
//! ```no_run
//! # async fn example() -> Result<(), regis::publisher::Error> {
//! use regis::publisher::Publisher;
//!
//! let publisher = Publisher::connect("redis://127.0.0.1:6380").await?;
//! publisher.publish(["SET", "greeting", "hello"]).await?; // durable when this returns
//! # Ok(()) }
//! ```
//!
//! A `Publisher` is a cheap handle (`Clone + Send + Sync`) to one background task that owns
//! one connection to the hub. Every publish call queues its message(s) and waits; the task
//! takes everything queued — waiting up to [`PublisherOptions::linger`] for more when the
//! queue is short — and sends it as one pipeline, so many tasks publishing small messages
//! share one round trip and one group commit on the hub. While a pipeline is in flight the
//! next one gathers, so the batch size follows the load. Pipelines go one at a time and
//! messages keep the order in which they were queued; messages published concurrently from
//! different tasks have no order between them (as with any concurrent writers).
//!
//! A message of several commands is sent as `MULTI ... EXEC`: one message, applied
//! atomically in every region. A message for database `n` is preceded by `SELECT n` when the
//! connection is elsewhere: what is queued for the previous database is sent first, then
//! `SELECT n` alone, awaited, so a refused `SELECT` (a database the hub does not have) fails
//! only the messages for `n`. While the database stays the same there is no extra round trip.
//!
//! When the call returns `Ok`, the hub has the message on stable storage (the contract's
//! "acknowledged"). An [`Error`] says whether the message was refused (fix it), not stored
//! (retry), or whether the outcome is unknown because the connection failed mid-flight:
//! retrying then may publish twice, which replication tolerates except for counters
//! (`INCRBY` twice adds twice).

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, Pipeline, Value};
use tokio::sync::{mpsc, oneshot};

use crate::hub::MessageRequest;

/// How a [`Publisher`] batches and waits.
#[derive(Clone, Debug)]
pub struct PublisherOptions {
    /// How long to wait for more messages once one is queued and fewer than `max_batch` are.
    /// Zero sends at once. Default 1 ms (tokio's timer resolution).
    pub linger: Duration,
    /// Most messages in one pipeline. Default 1024.
    pub max_batch: usize,
    /// Messages that may wait for the background task before `publish` itself waits.
    /// Default 65536.
    pub queue: usize,
    /// How long to wait for the hub to acknowledge one pipeline; past it the outcome is
    /// unknown. Default 30 s.
    pub response_timeout: Duration,
    /// How long to wait for a connection. Default 5 s.
    pub connection_timeout: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            linger: Duration::from_millis(1),
            max_batch: 1024,
            queue: 65_536,
            response_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// What kind of failure a publish met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The hub refused the message (a read, a wrong arity, too large, not authenticated,
    /// …): nothing was published; retrying the same message fails the same way.
    Refused,
    /// The hub could not store it (`TRYAGAIN`): nothing was published; retry.
    Unavailable,
    /// The connection failed or timed out while the message was in flight: it may or may not
    /// have been published.
    Connection,
    /// The publisher's background task is gone (the runtime is shutting down).
    Closed,
}

/// A failed publish.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The kind, for `match`.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again can succeed. For [`ErrorKind::Connection`] the message may
    /// already be published, so a retry may apply it twice.
    pub fn is_retriable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Connection)
    }

    fn from_redis(err: &redis::RedisError) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!("connection to the hub failed; the outcome is unknown: {err}"),
        )
    }

    fn from_reply(err: &redis::ServerError) -> Error {
        let code = err.code();
        let text = match err.details() {
            Some(details) => format!("{code} {details}"),
            None => code.to_string(),
        };
        let kind = if code == "TRYAGAIN" {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Refused
        };
        Error::new(kind, text)
    }
}

struct Job {
    messages: Vec<MessageRequest>,
    reply: oneshot::Sender<Vec<Result<(), Error>>>,
}

/// Publishes to a hub; clone it freely, every clone shares one connection and one batch.
#[derive(Clone)]
pub struct Publisher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects to the hub's RESP ingress at `url`: `redis://host:port`,
    /// `redis://:password@host:port`, or `rediss://...` for TLS with the system's roots.
    pub async fn connect(url: &str) -> Result<Publisher, Error> {
        let client = Client::open(url).map_err(|err| {
            Error::new(
                ErrorKind::Refused,
                format!(
                    "{url:?} is not a hub address ({err}); expected e.g. redis://127.0.0.1:6380"
                ),
            )
        })?;
        Publisher::with_client(client, PublisherOptions::default()).await
    }

    /// Connects with a prepared client (for example built with
    /// `Client::build_with_tls` for a private CA) and options.
    pub async fn with_client(
        client: Client,
        options: PublisherOptions,
    ) -> Result<Publisher, Error> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connection_timeout));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|err| {
                Error::new(
                    ErrorKind::Connection,
                    format!("cannot connect to the hub: {err}"),
                )
            })?;
        let (jobs, queue) = mpsc::channel(options.queue.max(1));
        tokio::spawn(run(queue, connection, options));
        Ok(Publisher { jobs })
    }

    /// Publishes one command, e.g. `["SET", "k", "v"]`; resolves once it is durable.
    pub async fn publish<I, A>(&self, command: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        self.publish_message(MessageRequest {
            commands: vec![to_args(command)],
            db: 0,
        })
        .await
    }

    /// Publishes one message (its commands applied atomically, in database `message.db`).
    pub async fn publish_message(&self, message: MessageRequest) -> Result<(), Error> {
        self.publish_batch(vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(closed()))
    }

    /// Publishes independent messages in one round trip; one outcome per message, in order.
    pub async fn publish_batch(&self, messages: Vec<MessageRequest>) -> Vec<Result<(), Error>> {
        let count = messages.len();
        if count == 0 {
            return Vec::new();
        }
        let (reply, outcome) = oneshot::channel();
        if self.jobs.send(Job { messages, reply }).await.is_err() {
            return vec![Err(closed()); count];
        }
        outcome.await.unwrap_or_else(|_| vec![Err(closed()); count])
    }
}

/// The arguments of a command.
pub fn to_args<I, A>(command: I) -> Vec<Bytes>
where
    I: IntoIterator<Item = A>,
    A: AsRef<[u8]>,
{
    command
        .into_iter()
        .map(|a| Bytes::copy_from_slice(a.as_ref()))
        .collect()
}

fn closed() -> Error {
    Error::new(
        ErrorKind::Closed,
        "the publisher's background task has stopped",
    )
}

async fn run(
    mut queue: mpsc::Receiver<Job>,
    mut connection: ConnectionManager,
    options: PublisherOptions,
) {
    // The connection's database, when known: a reconnect returns it to the URL's.
    let mut db: Option<u32> = None;
    while let Some(first) = queue.recv().await {
        let mut count = first.messages.len();
        let mut jobs = vec![first];
        while count < options.max_batch {
            match queue.try_recv() {
                Ok(job) => {
                    count += job.messages.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if count < options.max_batch && !options.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + options.linger;
            while count < options.max_batch {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => {
                        count += job.messages.len();
                        jobs.push(job);
                    }
                    _ => break,
                }
            }
        }
        send(&mut connection, &mut db, jobs).await;
    }
}

/// Where a message's outcome is in the pipeline's replies.
enum Slot {
    /// A single command: its reply.
    Single(usize),
    /// `MULTI`, the commands, `EXEC`: every reply from `first` to `exec`.
    Multi { first: usize, exec: usize },
}

/// Commands pipelined for one database, not sent yet, and whose outcomes they decide.
#[derive(Default)]
struct Round {
    pipe: Pipeline,
    replies: usize,
    /// Index of the message in the batch, and where its outcome is.
    slots: Vec<(usize, Slot)>,
}

impl Round {
    fn push(&mut self, cmd: Cmd) -> usize {
        self.pipe.add_command(cmd);
        self.replies += 1;
        self.replies - 1
    }

    /// Sends what is queued and records each message's outcome; a connection failure is
    /// returned as well, since the connection's database is then unknown.
    async fn flush(
        &mut self,
        connection: &mut ConnectionManager,
        outcomes: &mut [Option<Result<(), Error>>],
    ) -> Result<(), Error> {
        let round = std::mem::take(self);
        if round.replies == 0 {
            return Ok(());
        }
        let values = match connection
            .req_packed_commands(&round.pipe, 0, round.replies)
            .await
        {
            Ok(values) => values,
            Err(err) => {
                let err = Error::from_redis(&err);
                for (i, _) in round.slots {
                    outcomes[i] = Some(Err(err.clone()));
                }
                return Err(err);
            }
        };
        for (i, slot) in round.slots {
            outcomes[i] = Some(match slot {
                Slot::Single(reply) => outcome(values.get(reply)),
                Slot::Multi { first, exec } => {
                    // A command refused while queued explains an EXECABORT best.
                    let queued_error =
                        values
                            .get(first..exec)
                            .into_iter()
                            .flatten()
                            .find_map(|v| match v {
                                Value::ServerError(err) => Some(Error::from_reply(err)),
                                _ => None,
                            });
                    match (outcome(values.get(exec)), queued_error) {
                        (Ok(()), _) => Ok(()),
                        (Err(_), Some(queued)) => Err(queued),
                        (Err(err), None) => Err(err),
                    }
                }
            });
        }
        Ok(())
    }
}

/// Sends `SELECT db` alone and awaits its answer. `Err(Ok(refusal))`: the hub refused it
/// and the connection stays in its database; `Err(Err(failure))`: the connection failed.
async fn select(connection: &mut ConnectionManager, db: u32) -> Result<(), Result<Error, Error>> {
    let mut pipe = Pipeline::new();
    pipe.cmd("SELECT").arg(db);
    match connection.req_packed_commands(&pipe, 0, 1).await {
        Err(err) => Err(Err(Error::from_redis(&err))),
        Ok(values) => match outcome(values.first()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind == ErrorKind::Connection => Err(Err(err)),
            Err(refusal) => Err(Ok(refusal)),
        },
    }
}

/// Publishes a batch in as few round trips as possible: the messages of one database go in
/// one pipeline. At a change of database, what is queued is sent first, then `SELECT` alone;
/// a refused `SELECT` fails only the messages for that database, since none of them is sent.
async fn send(connection: &mut ConnectionManager, db: &mut Option<u32>, jobs: Vec<Job>) {
    let total = jobs.iter().map(|job| job.messages.len()).sum();
    let mut outcomes: Vec<Option<Result<(), Error>>> = vec![None; total];
    let mut round = Round::default();
    // The connection failed: the messages after it are not sent.
    let mut failed: Option<Error> = None;
    // The database whose `SELECT` the hub refused in this batch, and why.
    let mut refused: Option<(u32, Error)> = None;
    let messages = jobs.iter().flat_map(|job| &job.messages);
    for (i, message) in messages.enumerate() {
        if let Some(err) = &failed {
            outcomes[i] = Some(Err(err.clone()));
            continue;
        }
        if message.commands.is_empty() || message.commands.iter().any(Vec::is_empty) {
            outcomes[i] = Some(Err(Error::new(
                ErrorKind::Refused,
                "a message needs at least one command, and a command a name",
            )));
            continue;
        }
        if *db != Some(message.db) {
            if let Some((refused_db, err)) = &refused
                && *refused_db == message.db
            {
                outcomes[i] = Some(Err(err.clone()));
                continue;
            }
            let selected = match round.flush(connection, &mut outcomes).await {
                Ok(()) => select(connection, message.db).await,
                Err(err) => Err(Err(err)),
            };
            match selected {
                Ok(()) => *db = Some(message.db),
                Err(Ok(refusal)) => {
                    outcomes[i] = Some(Err(refusal.clone()));
                    refused = Some((message.db, refusal));
                    continue;
                }
                Err(Err(err)) => {
                    // A reconnect returns the connection to the URL's database.
                    *db = None;
                    outcomes[i] = Some(Err(err.clone()));
                    failed = Some(err);
                    continue;
                }
            }
        }
        let slot = if let [command] = message.commands.as_slice() {
            Slot::Single(round.push(to_cmd(command)))
        } else {
            let first = round.push(redis::cmd("MULTI"));
            for command in &message.commands {
                round.push(to_cmd(command));
            }
            Slot::Multi {
                first,
                exec: round.push(redis::cmd("EXEC")),
            }
        };
        round.slots.push((i, slot));
    }
    if round.flush(connection, &mut outcomes).await.is_err() {
        *db = None;
    }
    let mut outcomes = outcomes.into_iter();
    for job in jobs {
        let job_outcomes = outcomes
            .by_ref()
            .take(job.messages.len())
            .map(|outcome| outcome.unwrap_or_else(|| Err(closed())))
            .collect();
        let _ = job.reply.send(job_outcomes);
    }
}

fn outcome(value: Option<&Value>) -> Result<(), Error> {
    match value {
        Some(Value::ServerError(err)) => Err(Error::from_reply(err)),
        Some(_) => Ok(()),
        None => Err(Error::new(
            ErrorKind::Connection,
            "the hub answered fewer replies than commands sent; the outcome is unknown",
        )),
    }
}

fn to_cmd(command: &[Bytes]) -> Cmd {
    let mut cmd = Cmd::new();
    for arg in command {
        cmd.arg(arg.as_ref());
    }
    cmd
}

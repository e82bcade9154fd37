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
//! connection is elsewhere.
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
    /// Refused before sending.
    Refused(Error),
    /// A single command: its reply.
    Single(usize),
    /// `MULTI`, the commands, `EXEC`: every reply from `first` to `exec`.
    Multi { first: usize, exec: usize },
}

async fn send(connection: &mut ConnectionManager, db: &mut Option<u32>, jobs: Vec<Job>) {
    let mut pipe = Pipeline::new();
    let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(jobs.len());
    let mut selects = Vec::new();
    let mut replies = 0usize;
    let mut push = |pipe: &mut Pipeline, cmd: Cmd| {
        pipe.add_command(cmd);
        replies += 1;
        replies - 1
    };
    for job in &jobs {
        let mut job_slots = Vec::with_capacity(job.messages.len());
        for message in &job.messages {
            if message.commands.is_empty() || message.commands.iter().any(Vec::is_empty) {
                job_slots.push(Slot::Refused(Error::new(
                    ErrorKind::Refused,
                    "a message needs at least one command, and a command a name",
                )));
                continue;
            }
            if *db != Some(message.db) {
                let mut select = redis::cmd("SELECT");
                select.arg(message.db);
                selects.push(push(&mut pipe, select));
                *db = Some(message.db);
            }
            if let [command] = message.commands.as_slice() {
                job_slots.push(Slot::Single(push(&mut pipe, to_cmd(command))));
            } else {
                let first = push(&mut pipe, redis::cmd("MULTI"));
                for command in &message.commands {
                    push(&mut pipe, to_cmd(command));
                }
                let exec = push(&mut pipe, redis::cmd("EXEC"));
                job_slots.push(Slot::Multi { first, exec });
            }
        }
        slots.push(job_slots);
    }
    let values: Result<Vec<Value>, Error> = if replies == 0 {
        Ok(Vec::new())
    } else {
        connection
            .req_packed_commands(&pipe, 0, replies)
            .await
            .map_err(|err| Error::from_redis(&err))
    };
    if values.is_err() {
        *db = None;
    }
    // A failed SELECT would send the following writes to the wrong database: fail them.
    let select_failed = values.as_ref().ok().and_then(|values| {
        selects.iter().find_map(|&i| match values.get(i) {
            Some(Value::ServerError(err)) => Some(Error::from_reply(err)),
            _ => None,
        })
    });
    if select_failed.is_some() {
        *db = None;
    }
    for (job, job_slots) in jobs.into_iter().zip(slots) {
        let outcomes = job_slots
            .into_iter()
            .map(|slot| match (&values, slot) {
                (_, Slot::Refused(err)) => Err(err),
                (Err(err), _) => Err(err.clone()),
                (Ok(_), _) if select_failed.is_some() => {
                    Err(select_failed.clone().unwrap_or_else(closed))
                }
                (Ok(values), Slot::Single(i)) => outcome(values.get(i)),
                (Ok(values), Slot::Multi { first, exec }) => {
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
            })
            .collect();
        let _ = job.reply.send(outcomes);
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

//! One RESP client connection: read every whole command that has arrived, answer connection
//! commands itself, publish the writes as one batch, write every reply in order.
//!
//! A connection runs in rounds. Each round parses all complete commands in the read buffer;
//! connection commands (`PING`, `SELECT`, `AUTH`, `HELLO`, `MULTI`, …) are answered on the
//! spot, every write becomes a message (a `MULTI`/`EXEC` block becomes one message), and all
//! the messages of the round go to [`Hub::publish_many`] together — one append, which the bus
//! group-commits with whatever other connections are appending. The round's replies are
//! written once that append is durable, in the order the commands came. While a round waits
//! for the disk the client keeps sending, so the next round is larger: a pipeline of 1,000
//! `SET`s costs a handful of fsyncs. Versions are issued in command order within a round and
//! rounds of one connection never overlap, so a connection's writes keep their order.
//!
//! A protocol error is answered (`-ERR Protocol error: ...`) after the replies before it,
//! and then the connection is closed, as Redis does. On shutdown a connection finishes the
//! round in hand, writes its replies and closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::acks;
use super::auth::{AuthError, Authenticator};
use super::frame::{self, Limits};
use super::reply::{Protocol, Reply};
use crate::bus::Publish;
use crate::clock::now_ms;
use crate::command::{Class, Refusal, classify, prepare};
use crate::hub::{Hub, MessageRequest, PublishError};

/// The Redis version whose protocol the ingress speaks, reported by `HELLO` and `INFO` so
/// client libraries enable the features they expect.
pub const COMPATIBLE_REDIS_VERSION: &str = "7.2.0";

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// How long a stopping listener waits for a client to take its last replies.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Settings every connection of a listener shares.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Limits on one command.
    pub limits: Limits,
    /// Close a connection that sent nothing for this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Connections at once.
    pub max_connections: usize,
    /// The listener's port, for `INFO`.
    pub port: u16,
}

/// What the connections of one listener share.
pub struct Shared<P> {
    /// Where writes are published.
    pub hub: Arc<Hub<P>>,
    /// Limits and options.
    pub settings: Settings,
    /// Who may publish.
    pub auth: Arc<dyn Authenticator>,
    /// Connections open now.
    pub open: AtomicUsize,
    next_id: AtomicU64,
    started: Instant,
}

impl<P> Shared<P> {
    /// State for a new listener.
    pub fn new(hub: Arc<Hub<P>>, settings: Settings, auth: Arc<dyn Authenticator>) -> Self {
        Shared {
            hub,
            settings,
            auth,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
        }
    }
}

/// Serves one client until it quits, breaks the protocol, idles out, or the listener stops.
pub async fn serve<S, P>(
    mut stream: S,
    peer: String,
    shared: Arc<Shared<P>>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Publish,
{
    let mut session = Session::new(&shared, peer);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut parser = frame::Parser::default();
    let mut out = BytesMut::with_capacity(4096);
    loop {
        let mut round = Round::default();
        let mut protocol_error = None;
        while !session.closing {
            let limits = session.limits(&shared);
            match parser.parse(&mut buf, &limits) {
                Ok(Some(args)) => session.handle(args, &mut round, &shared),
                Ok(None) => break,
                Err(err) => {
                    crate::metrics::RespProtocolError.emit();
                    tracing::debug!(peer = %session.peer, error = %err, "RESP protocol error; closing the connection");
                    round.ready(Reply::err(&err), session.protocol);
                    protocol_error = Some(err);
                    break;
                }
            }
        }
        if !round.pending.is_empty() {
            out.clear();
            round.finish(&shared.hub, &mut out).await;
            // A client that stops reading its replies must not hold up a shutdown forever.
            let grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(DRAIN_GRACE).await;
            };
            tokio::select! {
                written = stream.write_all(&out) => if written.is_err() { return },
                _ = grace => {
                    tracing::warn!(peer = %session.peer, "RESP client did not read its replies during shutdown; closing");
                    return;
                }
            }
            if out.capacity() > 1024 * 1024 {
                out = BytesMut::with_capacity(4096);
            }
        }
        if protocol_error.is_some() {
            let _ = stream.shutdown().await;
            discard_briefly(&mut stream).await;
            return;
        }
        if session.closing || shutdown.is_cancelled() {
            let _ = stream.shutdown().await;
            return;
        }
        buf.reserve(READ_CHUNK);
        let read = async {
            match shared.settings.idle_timeout {
                Some(idle) => tokio::time::timeout(idle, stream.read_buf(&mut buf))
                    .await
                    .unwrap_or(Ok(0)),
                None => stream.read_buf(&mut buf).await,
            }
        };
        tokio::select! {
            read = read => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = shutdown.cancelled() => {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// After a protocol error: reads and drops what the client is still sending, for a moment,
/// so that closing with unread bytes does not make the kernel answer with a reset that
/// destroys the error reply before the client reads it.
async fn discard_briefly<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 8192];
    let mut left: usize = 4 * 1024 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The replies of one round, in order, and the messages they wait for.
#[derive(Default)]
struct Round {
    pending: Vec<Pending>,
    messages: Vec<MessageRequest>,
}

enum Pending {
    /// Answered without publishing.
    Ready(Reply, Protocol),
    /// A write: `ok` once message `message` is durable, else the error.
    Write {
        message: usize,
        ok: Reply,
        protocol: Protocol,
    },
    /// `EXEC`: the queued replies as an array once message `message` is durable.
    Exec {
        message: usize,
        replies: Vec<Reply>,
        protocol: Protocol,
    },
}

impl Round {
    fn ready(&mut self, reply: Reply, protocol: Protocol) {
        self.pending.push(Pending::Ready(reply, protocol));
    }

    fn publish(&mut self, message: MessageRequest) -> usize {
        self.messages.push(message);
        self.messages.len() - 1
    }

    /// Publishes the round's messages and encodes every reply into `out`.
    async fn finish<P: Publish>(self, hub: &Hub<P>, out: &mut BytesMut) {
        let results = if self.messages.is_empty() {
            Vec::new()
        } else {
            hub.publish_many(&self.messages).await
        };
        for pending in self.pending {
            match pending {
                Pending::Ready(reply, protocol) => reply.encode(protocol, out),
                Pending::Write {
                    message,
                    ok,
                    protocol,
                } => match results.get(message) {
                    Some(Ok(_)) => ok.encode(protocol, out),
                    Some(Err(err)) => publish_error(err, false).encode(protocol, out),
                    None => Reply::err("internal error: no outcome for this write")
                        .encode(protocol, out),
                },
                Pending::Exec {
                    message,
                    replies,
                    protocol,
                } => match results.get(message) {
                    Some(Ok(_)) => Reply::Array(replies).encode(protocol, out),
                    Some(Err(err)) => publish_error(err, true).encode(protocol, out),
                    None => Reply::err("internal error: no outcome for this transaction")
                        .encode(protocol, out),
                },
            }
        }
    }
}

/// The error reply for a message that was not published.
fn publish_error(err: &PublishError, transaction: bool) -> Reply {
    match err {
        PublishError::Refused { refusal, .. } if !transaction => Reply::err(refusal),
        PublishError::Bus(bus) => Reply::error_code(
            "TRYAGAIN",
            format!("not published: {bus}; nothing was acknowledged, retry"),
        ),
        PublishError::TooLarge(_) if transaction => {
            Reply::error_code("EXECABORT", format!("Transaction discarded: {err}"))
        }
        other => Reply::err(other),
    }
}

/// Most entries — queued writes and queued `PING`/`ECHO` replies — one transaction holds;
/// with `max_message_bytes` it bounds a connection's memory while it is inside `MULTI`.
pub const MAX_QUEUED: usize = 65_536;

/// Bytes a queued argument or reply is counted for beyond its payload.
const QUEUED_OVERHEAD: usize = 16;

/// A queued transaction: what `EXEC` publishes and answers. It holds at most [`MAX_QUEUED`]
/// entries and `max_message_bytes` of commands and replies; past either the transaction is
/// failed and stops storing anything, so an endless `MULTI` costs no memory.
#[derive(Default)]
struct Transaction {
    commands: Vec<Vec<Bytes>>,
    replies: Vec<Reply>,
    bytes: usize,
    failed: bool,
    /// Why the transaction outgrew its bound, repeated in `EXEC`'s answer.
    overflow: Option<String>,
}

/// Bytes a queued reply is counted for.
fn queued_reply_bytes(reply: &Reply) -> usize {
    QUEUED_OVERHEAD
        + match reply {
            Reply::Bulk(b) | Reply::Double(b) => b.len(),
            Reply::Error(text) => text.len(),
            _ => 0,
        }
}

impl Transaction {
    /// Queues `reply` (and `command`, for a write) if the transaction stays within its
    /// bounds; otherwise fails it and says why.
    fn admit(
        &mut self,
        command: Option<Vec<Bytes>>,
        reply: Reply,
        max_bytes: usize,
    ) -> Result<(), String> {
        if self.failed {
            // EXEC will abort: keep nothing more.
            return Ok(());
        }
        let command_bytes = command.as_ref().map_or(0, |args| {
            args.iter().map(Bytes::len).sum::<usize>() + QUEUED_OVERHEAD * args.len()
        });
        let bytes = command_bytes + queued_reply_bytes(&reply);
        let why = if self.replies.len() >= MAX_QUEUED {
            Some(format!(
                "this transaction already holds {MAX_QUEUED} commands and replies, the most one MULTI may queue; EXEC or DISCARD it and send the rest in another transaction"
            ))
        } else if self.bytes + bytes > max_bytes {
            Some(format!(
                "this transaction would exceed {max_bytes} bytes with its queued commands and replies, the largest message accepted (max_message_bytes); EXEC or DISCARD it and split it into smaller transactions"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            self.failed = true;
            self.overflow = Some(why.clone());
            // What was queued can never be published: free it now.
            self.commands = Vec::new();
            self.replies = Vec::new();
            return Err(why);
        }
        self.bytes += bytes;
        self.replies.push(reply);
        if let Some(args) = command {
            self.commands.push(args);
        }
        Ok(())
    }
}

/// A connection's state.
struct Session {
    id: u64,
    peer: String,
    protocol: Protocol,
    db: u32,
    authenticated: bool,
    user: Option<String>,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    multi: Option<Transaction>,
    closing: bool,
}

/// A command name in upper case, if short enough to be one Regis knows.
struct Name {
    buf: [u8; 24],
    len: usize,
}

impl Name {
    fn of(raw: &[u8]) -> Name {
        let mut name = Name {
            buf: [0; 24],
            len: 0,
        };
        if raw.len() <= name.buf.len() {
            for (slot, b) in name.buf.iter_mut().zip(raw) {
                *slot = b.to_ascii_uppercase();
            }
            name.len = raw.len();
        }
        name
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn parse_int(raw: &[u8]) -> Option<i64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

const OK: Reply = Reply::Status("OK");
const QUEUED: Reply = Reply::Status("QUEUED");

impl Session {
    fn new<P>(shared: &Shared<P>, peer: String) -> Session {
        Session {
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            protocol: Protocol::Resp2,
            db: 0,
            authenticated: !shared.auth.required(),
            user: None,
            name: None,
            lib_name: None,
            lib_ver: None,
            multi: None,
            closing: false,
        }
    }

    fn limits<P>(&self, shared: &Shared<P>) -> Limits {
        if self.authenticated {
            shared.settings.limits
        } else {
            shared.settings.limits.unauthenticated()
        }
    }

    fn handle<P: Publish>(&mut self, args: Vec<Bytes>, round: &mut Round, shared: &Shared<P>) {
        let name = Name::of(&args[0]);
        let name = name.as_str();
        if !self.authenticated && !matches!(name, "AUTH" | "HELLO" | "QUIT" | "RESET") {
            self.answer(
                round,
                Reply::error_code("NOAUTH", "Authentication required."),
            );
            return;
        }
        if self.multi.is_some() && !matches!(name, "EXEC" | "DISCARD" | "MULTI" | "QUIT" | "RESET")
        {
            self.queue(name, args, round, shared);
            return;
        }
        let reply = match name {
            "PING" => ping(&args),
            "ECHO" => echo(&args),
            "SELECT" => self.select(&args, shared),
            "AUTH" => self.auth(&args, shared),
            "HELLO" => self.hello(&args, shared),
            "CLIENT" => self.client(&args),
            "INFO" => info(&args, shared),
            "COMMAND" => command(&args),
            "QUIT" => {
                self.closing = true;
                OK
            }
            "RESET" => {
                *self = Session {
                    id: self.id,
                    peer: std::mem::take(&mut self.peer),
                    ..Session::new(shared, String::new())
                };
                Reply::Status("RESET")
            }
            "MULTI" => {
                if self.multi.is_some() {
                    Reply::err("MULTI calls can not be nested")
                } else {
                    self.multi = Some(Transaction::default());
                    OK
                }
            }
            "EXEC" => match self.multi.take() {
                None => Reply::err("EXEC without MULTI"),
                Some(tx) => {
                    self.exec(tx, round);
                    return;
                }
            },
            "DISCARD" => match self.multi.take() {
                None => Reply::err("DISCARD without MULTI"),
                Some(_) => OK,
            },
            "WATCH" => Reply::err(
                "WATCH is not supported: Regis never reads the regional data, so it cannot tell whether a key changed; send MULTI ... EXEC without WATCH",
            ),
            "UNWATCH" => OK,
            _ => {
                if name.is_empty() || classify(name) != Class::Connection {
                    let ok = acks::success(name, &args);
                    let message = round.publish(MessageRequest {
                        commands: vec![args],
                        db: self.db,
                    });
                    round.pending.push(Pending::Write {
                        message,
                        ok,
                        protocol: self.protocol,
                    });
                    return;
                }
                Reply::err(Refusal::Connection(name.to_string()))
            }
        };
        self.answer(round, reply);
    }

    fn answer(&mut self, round: &mut Round, reply: Reply) {
        round.ready(reply, self.protocol);
    }

    /// A command between `MULTI` and `EXEC`: checked now, published with the others at `EXEC`.
    fn queue<P: Publish>(
        &mut self,
        name: &str,
        args: Vec<Bytes>,
        round: &mut Round,
        shared: &Shared<P>,
    ) {
        let protocol = self.protocol;
        let Some(tx) = self.multi.as_mut() else {
            return;
        };
        let local = match name {
            "PING" => Some(ping(&args)),
            "ECHO" => Some(echo(&args)),
            _ => None,
        };
        let max_bytes = shared.hub.max_message_bytes();
        let reply = if let Some(local) = local {
            if local.is_error() {
                tx.failed = true;
                local
            } else {
                match tx.admit(None, local, max_bytes) {
                    Ok(()) => QUEUED,
                    Err(why) => Reply::err(why),
                }
            }
        } else if name == "WATCH" {
            Reply::err("WATCH inside MULTI is not allowed")
        } else if !name.is_empty() && classify(name) == Class::Connection {
            tx.failed = true;
            Reply::err(format!(
                "{name} inside MULTI is not supported by Regis: a transaction is one message of writes to one database"
            ))
        } else {
            match prepare(&args, shared.hub.mode(), now_ms()) {
                Err(refusal) => {
                    tx.failed = true;
                    Reply::err(refusal)
                }
                Ok(_) => {
                    let ack = acks::success(name, &args);
                    match tx.admit(Some(args), ack, max_bytes) {
                        Ok(()) => QUEUED,
                        Err(why) => Reply::err(why),
                    }
                }
            }
        };
        round.ready(reply, protocol);
    }

    fn exec(&mut self, tx: Transaction, round: &mut Round) {
        if tx.failed {
            let reply = match &tx.overflow {
                Some(why) => Reply::error_code(
                    "EXECABORT",
                    format!("Transaction discarded because of previous errors: {why}"),
                ),
                None => Reply::error_code(
                    "EXECABORT",
                    "Transaction discarded because of previous errors.",
                ),
            };
            self.answer(round, reply);
            return;
        }
        if tx.commands.is_empty() {
            self.answer(round, Reply::Array(tx.replies));
            return;
        }
        let message = round.publish(MessageRequest {
            commands: tx.commands,
            db: self.db,
        });
        round.pending.push(Pending::Exec {
            message,
            replies: tx.replies,
            protocol: self.protocol,
        });
    }

    fn select<P: Publish>(&mut self, args: &[Bytes], shared: &Shared<P>) -> Reply {
        if args.len() != 2 {
            return wrong_arity("SELECT");
        }
        match parse_int(&args[1]) {
            None => not_integer(),
            // The hub's range, so a connection can never hold a database it would refuse.
            Some(db) if db < 0 || db >= i64::from(shared.hub.databases()) => {
                Reply::err("DB index is out of range")
            }
            Some(db) => {
                self.db = db as u32;
                OK
            }
        }
    }

    fn auth<P>(&mut self, args: &[Bytes], shared: &Shared<P>) -> Reply {
        let (user, password) = match args {
            [_, password] => (None, password),
            [_, user, password] => (Some(user.as_ref()), password),
            _ if args.len() > 3 => return Reply::err("syntax error"),
            _ => return wrong_arity("AUTH"),
        };
        match self.login(&shared.auth, user, password) {
            Ok(()) => OK,
            Err(err) => Reply::Error(err.to_string()),
        }
    }

    fn login(
        &mut self,
        auth: &Arc<dyn Authenticator>,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> Result<(), AuthError> {
        let principal = auth.authenticate(user, password)?;
        self.authenticated = true;
        self.user = Some(principal.user);
        Ok(())
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`
    fn hello<P>(&mut self, args: &[Bytes], shared: &Shared<P>) -> Reply {
        let mut protocol = self.protocol;
        if let Some(version) = args.get(1) {
            protocol = match parse_int(version) {
                None => return Reply::err("Protocol version is not an integer or out of range"),
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => {
                    return Reply::error_code("NOPROTO", "unsupported protocol version");
                }
            };
        }
        let mut i = 2;
        let mut credentials = None;
        let mut setname = None;
        while i < args.len() {
            let option = Name::of(&args[i]);
            match (option.as_str(), args.len() - i - 1) {
                ("AUTH", more) if more >= 2 => {
                    credentials = Some((args[i + 1].clone(), args[i + 2].clone()));
                    i += 3;
                }
                ("SETNAME", more) if more >= 1 => {
                    setname = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => {
                    return Reply::err(format!(
                        "Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    ));
                }
            }
        }
        if let Some((user, password)) = credentials {
            if let Err(err) = self.login(&shared.auth, Some(&user), &password) {
                return Reply::Error(err.to_string());
            }
        } else if !self.authenticated {
            return Reply::error_code(
                "NOAUTH",
                "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = setname {
            if let Err(reply) = valid_client_name(&name) {
                return reply;
            }
            self.name = (!name.is_empty()).then_some(name);
        }
        self.protocol = protocol;
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (
                Reply::text("version"),
                Reply::text(COMPATIBLE_REDIS_VERSION),
            ),
            (Reply::text("proto"), Reply::Integer(protocol.version())),
            (Reply::text("id"), Reply::Integer(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let Some(sub) = args.get(1) else {
            return wrong_arity("CLIENT");
        };
        let sub = Name::of(sub);
        match (sub.as_str(), args.len()) {
            ("SETNAME", 3) => match valid_client_name(&args[2]) {
                Ok(()) => {
                    self.name = (!args[2].is_empty()).then(|| args[2].clone());
                    OK
                }
                Err(reply) => reply,
            },
            ("GETNAME", 2) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            ("ID", 2) => Reply::Integer(self.id as i64),
            ("SETINFO", 4) => {
                let attr = Name::of(&args[2]);
                let value = &args[3];
                if value
                    .iter()
                    .any(|b| *b == b' ' || *b == b'\n' || *b == b'\r')
                {
                    return Reply::err(format!(
                        "{} cannot contain spaces, newlines or special characters.",
                        attr.as_str()
                    ));
                }
                match attr.as_str() {
                    "LIB-NAME" => self.lib_name = Some(value.clone()),
                    "LIB-VER" => self.lib_ver = Some(value.clone()),
                    _ => {
                        return Reply::err(format!(
                            "Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        ));
                    }
                }
                OK
            }
            ("INFO", 2) | ("LIST", _) => Reply::text(self.client_line()),
            ("NO-EVICT", 3) | ("NO-TOUCH", 3) => OK,
            ("HELP", 2) => Reply::Array(
                [
                    "CLIENT <subcommand> [<arg> ...]. Subcommands Regis supports:",
                    "SETNAME <name>, GETNAME, ID, SETINFO LIB-NAME|LIB-VER <value>, INFO, LIST",
                ]
                .into_iter()
                .map(Reply::text)
                .collect(),
            ),
            (
                "SETNAME" | "GETNAME" | "ID" | "SETINFO" | "INFO" | "NO-EVICT" | "NO-TOUCH"
                | "HELP",
                _,
            ) => wrong_arity(&format!("CLIENT|{}", sub.as_str())),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }

    fn client_line(&self) -> String {
        let show = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} addr={} name={} db={} multi={} user={} resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.peer,
            show(&self.name),
            self.db,
            self.multi
                .as_ref()
                .map_or(-1, |tx| tx.commands.len() as i64),
            self.user.as_deref().unwrap_or("default"),
            self.protocol.version(),
            show(&self.lib_name),
            show(&self.lib_ver),
        )
    }
}

fn valid_client_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(())
    } else {
        Err(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

fn ping(args: &[Bytes]) -> Reply {
    match args.len() {
        1 => Reply::Status("PONG"),
        2 => Reply::Bulk(args[1].clone()),
        _ => wrong_arity("PING"),
    }
}

fn echo(args: &[Bytes]) -> Reply {
    match args {
        [_, message] => Reply::Bulk(message.clone()),
        _ => wrong_arity("ECHO"),
    }
}

/// `COMMAND`: Regis describes no commands; `docs/commands.md` lists what it accepts.
fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(Vec::new());
    };
    match Name::of(sub).as_str() {
        "DOCS" => Reply::Map(Vec::new()),
        "COUNT" => Reply::Integer(0),
        "LIST" => Reply::Array(Vec::new()),
        "INFO" => Reply::Array(args[2..].iter().map(|_| Reply::Null).collect()),
        _ => Reply::err(format!(
            "unknown subcommand '{}': the Regis ingress answers COMMAND, COMMAND DOCS, COMMAND COUNT, COMMAND LIST and COMMAND INFO",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// `INFO [section ...]`: what client ready-checks read (`loading:0`, `role:master`,
/// `redis_version`), and the ingress's own figures.
fn info<P>(args: &[Bytes], shared: &Shared<P>) -> Reply {
    let wanted: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "default" || w == "everything");
    let include = |section: &str| all || wanted.iter().any(|w| w == section);
    let mut text = String::new();
    let mut section = |title: &str, lines: Vec<String>| {
        if include(&title.to_ascii_lowercase()) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            text.push_str(&format!("# {title}\r\n"));
            for line in lines {
                text.push_str(&line);
                text.push_str("\r\n");
            }
        }
    };
    section(
        "Server",
        vec![
            format!("redis_version:{COMPATIBLE_REDIS_VERSION}"),
            format!("regis_version:{}", env!("CARGO_PKG_VERSION")),
            "redis_mode:standalone".into(),
            format!("os:{} {}", std::env::consts::OS, std::env::consts::ARCH),
            "arch_bits:64".into(),
            format!("process_id:{}", std::process::id()),
            format!("tcp_port:{}", shared.settings.port),
            format!("uptime_in_seconds:{}", shared.started.elapsed().as_secs()),
        ],
    );
    section(
        "Clients",
        vec![
            format!("connected_clients:{}", shared.open.load(Ordering::Relaxed)),
            format!("maxclients:{}", shared.settings.max_connections),
        ],
    );
    section(
        "Persistence",
        vec!["loading:0".into(), "async_loading:0".into()],
    );
    section(
        "Replication",
        vec!["role:master".into(), "connected_slaves:0".into()],
    );
    section("Keyspace", Vec::new());
    Reply::text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_upper_cased_without_allocating() {
        assert_eq!(Name::of(b"sEt").as_str(), "SET");
        assert_eq!(Name::of(&[b'x'; 40]).as_str(), "");
        assert_eq!(Name::of(b"\xff").as_str(), "");
    }

    #[test]
    fn bus_failures_say_retry() {
        let err = PublishError::Bus(crate::bus::BusError::new(
            crate::bus::BusErrorKind::Closed,
            "the embedded bus is shut down",
        ));
        let Reply::Error(text) = publish_error(&err, false) else {
            panic!("an error reply");
        };
        assert!(text.starts_with("TRYAGAIN "), "{text}");
        assert!(text.contains("retry"), "{text}");
    }
}

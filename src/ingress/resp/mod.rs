//! The Redis-protocol (RESP2/RESP3) ingress: any Redis client publishes by sending its
//! ordinary write commands.
//!
//! [`RespServer::start`] binds the `[resp]` listener and serves each connection in its own
//! task ([`connection`]); [`RespServer::stop`] stops accepting, lets every connection finish
//! the round of commands in hand and write its replies, and waits for them. A write is
//! answered only once its message is durable; [`acks`] fixes what each reply means, since
//! no region has applied anything yet (`docs/resp.md` has the table).
//!
//! * [`frame`]: reading commands, with every limit checked before allocation.
//! * [`reply`]: replies in RESP2 and RESP3.
//! * [`connection`]: one client: connection commands, transactions, batching.
//! * [`acks`]: the reply of each write once durable.
//! * [`auth`]: who may publish.
//!
//! The parser is written here rather than taken from a RESP crate: a server needs only
//! multibulk and inline commands, but needs them with Redis's error texts and with limits
//! enforced on a length prefix before its bytes are awaited, which the general-purpose
//! decoders (e.g. `redis-protocol`, no inline commands) do not offer.

pub mod acks;
pub mod auth;
pub mod connection;
pub mod frame;
pub mod reply;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Publish;
use crate::config::RespConfig;
use crate::hub::Hub;
use auth::{Authenticator, PasswordAuth};
use connection::{Settings, Shared};
use frame::Limits;

/// Why the RESP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum RespStartError {
    /// The address is taken or not ours.
    #[error(
        "cannot listen on {addr} for RESP: {source}; is another process (a Redis?) using it? change resp.listen"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS files are unusable.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A running RESP listener.
pub struct RespServer {
    addr: SocketAddr,
    tls: bool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RespServer {
    /// Binds `config.listen` and serves clients publishing through `hub`, with the shared
    /// password of `config` (if any).
    pub async fn start<P: Publish>(
        config: &RespConfig,
        hub: Arc<Hub<P>>,
    ) -> Result<RespServer, RespStartError> {
        let auth = Arc::new(PasswordAuth::new(config.password.as_deref()));
        RespServer::start_with_auth(config, hub, auth).await
    }

    /// As [`RespServer::start`], deciding who may publish with `auth`.
    pub async fn start_with_auth<P: Publish>(
        config: &RespConfig,
        hub: Arc<Hub<P>>,
        auth: Arc<dyn Authenticator>,
    ) -> Result<RespServer, RespStartError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key, "resp")?),
            _ => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RespStartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RespStartError::Listen {
                addr: config.listen,
                source,
            })?;
        let max_message_bytes = hub.max_message_bytes();
        let settings = Settings {
            limits: Limits {
                max_bulk_bytes: config.max_bulk_bytes(max_message_bytes),
                max_array_len: config.max_array_len,
                max_inline_bytes: config.max_inline_bytes,
                max_payload_bytes: max_message_bytes,
            },
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            max_connections: config.max_connections,
            port: addr.port(),
        };
        let shared = Arc::new(Shared::new(hub, settings, auth));
        let stop = CancellationToken::new();
        let has_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, shared, tls, stop.clone()));
        tracing::info!(%addr, tls = has_tls, "RESP ingress listening");
        Ok(RespServer {
            addr,
            tls: has_tls,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Stops accepting, lets every connection finish the commands in hand and write their
    /// replies, then returns.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop<P: Publish>(
    listener: TcpListener,
    shared: Arc<Shared<P>>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.settings.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %err, "RESP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::metrics::RespConnectionRefused {
                reason: "max_connections",
            }
            .emit();
            refuse(socket, tls.is_some());
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            shared
                .open
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::RespConnection { open: true }.emit();
            let peer = peer.to_string();
            match tls {
                None => connection::serve(socket, peer, shared.clone(), stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(
                        crate::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(socket),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => {
                            connection::serve(stream, peer, shared.clone(), stop).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            crate::metrics::RespConnectionRefused {
                                reason: "tls_handshake",
                            }
                            .emit();
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            crate::metrics::RespConnectionRefused {
                                reason: "tls_handshake",
                            }
                            .emit();
                        }
                    }
                }
            }
            shared
                .open
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::RespConnection { open: false }.emit();
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Tells a client over the limit why, as Redis does, without waiting on it.
fn refuse(socket: TcpStream, tls: bool) {
    if !tls {
        let _ = socket.try_write(b"-ERR max number of clients reached\r\n");
    }
    drop(socket);
}

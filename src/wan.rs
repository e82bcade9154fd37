//! A TCP proxy that imitates a WAN link between a remote worker and its hub: one-way
//! latency, partitions and connection resets. For the remote-worker benchmark
//! (`regis bench-remote`) and the tests; never used by a running hub or worker.
//!
//! * **Latency** is a delay line, not a throttle: every chunk read is forwarded `delay` after
//!   it arrived, so a link with 70 ms each way still carries as many bytes per second as the
//!   loopback under it (a throttle that slept per chunk would cap throughput instead).
//! * **Partition**: nothing crosses until [`WanProxy::heal`] — bytes in flight wait, new
//!   connections are accepted but not connected upstream — which is what TCP makes of a
//!   dropped link (retransmissions deliver late, or the peer gives up on a timeout).
//!   Discarding bytes instead would corrupt the streams, which no real network does.
//! * **Reset**: [`WanProxy::reset_all`] closes every connection with an RST on both sides,
//!   as a NAT or a load balancer dropping its state does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running proxy on 127.0.0.1.
pub struct WanProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    upstream: SocketAddr,
    /// One-way delay, µs.
    delay_us: AtomicU64,
    /// `true` while partitioned.
    partitioned: watch::Sender<bool>,
    /// Cancelled to reset every connection open now; replaced afterwards.
    resets: std::sync::Mutex<CancellationToken>,
    open: AtomicUsize,
    accepted: AtomicUsize,
}

impl WanProxy {
    /// Listens on a free loopback port and forwards to `upstream` with `delay` each way.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> std::io::Result<WanProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            delay_us: AtomicU64::new(delay.as_micros() as u64),
            partitioned: watch::channel(false).0,
            resets: std::sync::Mutex::new(CancellationToken::new()),
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(WanProxy { addr, shared, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the one-way delay (for chunks read from now on).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cuts the link: nothing crosses until [`WanProxy::heal`].
    pub fn partition(&self) {
        self.shared.partitioned.send_replace(true);
    }

    /// Restores the link; what waited is delivered.
    pub fn heal(&self) {
        self.shared.partitioned.send_replace(false);
    }

    /// Resets every open connection (RST both ways); later connections are unaffected.
    pub fn reset_all(&self) {
        let mut resets = self.shared.resets.lock().unwrap_or_else(|p| p.into_inner());
        resets.cancel();
        *resets = CancellationToken::new();
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reset_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let reset = shared
            .resets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open.fetch_add(1, Ordering::Relaxed);
            connection(client, &shared, reset).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn wait_healed(partitioned: &mut watch::Receiver<bool>) {
    let _ = partitioned.wait_for(|p| !*p).await;
}

async fn connection(client: TcpStream, shared: &Arc<Shared>, reset: CancellationToken) {
    let _ = client.set_nodelay(true);
    let mut partitioned = shared.partitioned.subscribe();
    // A SYN sent into a partition is not answered until it heals.
    tokio::select! {
        _ = reset.cancelled() => { let _ = client.set_zero_linger(); return; }
        _ = wait_healed(&mut partitioned) => {}
    }
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, shared.clone());
    let down = pump(server_read, client_write, shared.clone());
    tokio::select! {
        _ = reset.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    // Dropping the halves with SO_LINGER 0 sends RST when reset, FIN otherwise (both
    // directions already shut down cleanly).
}

/// One direction: a reader stamps each chunk with its due time, a writer delivers it then.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Bytes>)>();
    let delay_of = |shared: &Shared| Duration::from_micros(shared.delay_us.load(Ordering::Relaxed));
    let reader_shared = shared.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + delay_of(&reader_shared), None));
                    return;
                }
                Ok(n) => {
                    let due = Instant::now() + delay_of(&reader_shared);
                    if tx
                        .send((due, Some(Bytes::copy_from_slice(&buf[..n]))))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut partitioned = shared.partitioned.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            wait_healed(&mut partitioned).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<Duration> {
        let started = std::time::Instant::now();
        stream.write_all(payload).await?;
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back).await?;
        assert_eq!(back, payload);
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn delays_both_ways_partitions_and_resets() {
        let proxy = WanProxy::start(echo_server().await, Duration::from_millis(30))
            .await
            .unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let rtt = round_trip(&mut stream, b"hello").await.unwrap();
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");

        // A partition holds bytes until it heals.
        proxy.partition();
        let healer = {
            let shared = proxy.shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                shared.partitioned.send_replace(false);
            })
        };
        let held = round_trip(&mut stream, b"across a partition")
            .await
            .unwrap();
        assert!(held >= Duration::from_millis(300), "{held:?}");
        healer.await.unwrap();

        // A reset kills open connections, not later ones.
        proxy.reset_all();
        let mut buf = [0u8; 1];
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(b"x").await;
            stream.read(&mut buf).await
        })
        .await
        .expect("a reset connection answers at once");
        assert!(matches!(outcome, Ok(0) | Err(_)), "{outcome:?}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut fresh, b"again").await.unwrap();
    }
}

//! TLS for the hub's listeners (HTTP and RESP): a certificate chain and a private key in PEM
//! files, served with rustls on the `ring` provider (no C toolchain beyond a C compiler
//! needed), and [`TlsListener`], the HTTPS listener `axum::serve` runs on.
//!
//! Handshakes run in their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`], so a client
//! that connects and says nothing (or a port scanner) never holds up the others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS configuration is unusable; each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error(
        "cannot read a PEM certificate chain from {path} ({reason}); {section}.tls_cert must name a PEM file with the server certificate first, then its intermediates"
    )]
    Certificate {
        /// The config section (`http`, `resp`).
        section: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error(
        "cannot read a PEM private key from {path} ({reason}); {section}.tls_key must name a PEM file with a PKCS#8, PKCS#1 or SEC1 key"
    )]
    Key {
        /// The config section (`http`, `resp`).
        section: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (for example a key that does not match the certificate).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// The rustls server configuration from PEM files; `section` names the config section in
/// errors.
fn server_config(cert: &Path, key: &Path, section: &'static str) -> Result<ServerConfig, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        section,
        path: cert.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| cert_error(err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| cert_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsError::Key {
        section,
        path: key.display().to_string(),
        reason: err.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// An acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path, section: &'static str) -> Result<TlsAcceptor, TlsError> {
    Ok(TlsAcceptor::from(Arc::new(server_config(
        cert, key, section,
    )?)))
}

/// A TCP listener that hands `axum::serve` only connections whose TLS handshake completed.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `acceptor`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(256);
        let accept_task = tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %err, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "HTTPS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (it only does when aborted): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The CA certificates of the PEM file `path` (`--ca`), for an HTTPS client to trust besides
/// the system's. A file that cannot be read, does not parse, or holds no CERTIFICATE block
/// is an error that names the file and says what `--ca` wants.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    const WANT: &str = "--ca must name a PEM file of CA certificates";
    let pem = std::fs::read(path)
        .map_err(|err| format!("cannot read the CA file {}: {err}; {WANT}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
        format!(
            "{} holds no usable PEM certificate ({err}); {WANT}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no CERTIFICATE block; {WANT}",
            path.display()
        ));
    }
    Ok(certs)
}

//! TLS for the RESP listener: the shared loading code of [`crate::tls`], with errors that
//! name the `[resp]` keys.

use std::path::Path;

use tokio_rustls::TlsAcceptor;

pub use crate::tls::TlsError;

/// Builds the acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    crate::tls::acceptor(cert, key, "resp")
}

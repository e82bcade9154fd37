//! TLS for the RESP listener: a certificate chain and a private key in PEM files, served
//! with rustls on the `ring` provider (no C toolchain beyond a C compiler needed).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Why the TLS configuration is unusable; each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error(
        "cannot read a PEM certificate chain from {path} ({reason}); resp.tls_cert must name a PEM file with the server certificate first, then its intermediates"
    )]
    Certificate {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error(
        "cannot read a PEM private key from {path} ({reason}); resp.tls_key must name a PEM file with a PKCS#8, PKCS#1 or SEC1 key"
    )]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (for example a key that does not match the certificate).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
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
        path: key.display().to_string(),
        reason: err.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

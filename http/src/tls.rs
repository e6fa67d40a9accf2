//! TLS from PEM files, reloaded when they change: a certificate renewed on
//! disk (cert-manager, certbot) is served to new connections within
//! seconds, without a restart; a renewal that cannot be read is logged and
//! the previous certificate kept.

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// How often the files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {source}")]
    Certificate {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot read the private key {path}: {source}")]
    Key {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor for a certificate chain and its private key (PKCS#8,
/// PKCS#1 or SEC1), offering `alpn`; see [`Tls::reload_on_change`].
#[derive(Clone)]
pub struct Tls {
    current: Arc<RwLock<TlsAcceptor>>,
    cert: PathBuf,
    key: PathBuf,
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn load(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = acceptor(cert, key, &alpn)?;
        Ok(Self {
            current: Arc::new(RwLock::new(acceptor)),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            alpn,
        })
    }

    /// The acceptor for a new connection: the newest certificate loaded.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Looks at both files every [`RELOAD_EVERY`] and loads them again
    /// when either changed; runs until the runtime stops.
    pub fn reload_on_change(&self) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut seen = tls.modified();
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let now = tls.modified();
                if now == seen {
                    continue;
                }
                match acceptor(&tls.cert, &tls.key, &tls.alpn) {
                    Ok(acceptor) => {
                        *tls.current.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
                        seen = now;
                        tracing::info!(cert = %tls.cert.display(), "Loaded the renewed TLS certificate.");
                    }
                    // A half-written renewal: try again next time.
                    Err(error) => tracing::warn!(
                        %error,
                        cert = %tls.cert.display(),
                        "The TLS certificate changed but cannot be used; serving the previous one."
                    ),
                }
            }
        });
    }

    fn modified(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (at(&self.cert), at(&self.key))
    }
}

fn acceptor(cert: &Path, key: &Path, alpn: &[Vec<u8>]) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert.display().to_string(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.display().to_string(),
        source,
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.to_vec();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

//! TLS for clients: `wss://` and `https://` on the listen port, with a certificate that is
//! reloaded while the gateway runs.
//!
//! This module owns the certificate (PEM files → a rustls [`CertifiedKey`]), the rustls server
//! configuration (TLS 1.2 and 1.3, ALPN `http/1.1`, the ring provider: no OpenSSL), and its
//! reload. [`TlsTerminator::acceptor`] is what the connection tasks use; the handshake runs in
//! each connection's own task under the handshake timeout, never in the accept loop.
//!
//! # Reload
//! Operators rotate certificates (Let's Encrypt every 60–90 days) by replacing the two files.
//! [`TlsTerminator::watch`] checks both files' modification time and size every
//! `--tls-reload-interval` and reloads on SIGHUP too. A new certificate serves every handshake
//! after the swap; connections already open keep the session they negotiated. A file that does
//! not load (half-written, wrong key, not PEM) is logged with its cause and the old certificate
//! stays in service; the next change of either file is tried again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The one application protocol served: WebSocket upgrades need HTTP/1.1.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no valid PEM of the expected kind.
    #[error("cannot read the TLS {what} from {}", path.display())]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    /// rustls refused the pair (unsupported key type, key not matching the certificate).
    #[error("the TLS key {} does not fit the certificate {}", key.display(), cert.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's complaint.
        #[source]
        source: rustls::Error,
    },
    /// The rustls configuration could not be built.
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The two PEM files of the served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files: the chain is not empty and the key matches its leaf.
    pub fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let pem_error = |what, path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Pem { what, path, source }
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(pem_error("certificate", &self.cert))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(pem_error("private key", &self.key))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Rejected {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }

    /// Modification time and length of both files: what changes when either is replaced.
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        [&self.cert, &self.key].map(|path| {
            std::fs::metadata(path)
                .and_then(|meta| Ok((meta.modified()?, meta.len())))
                .ok()
        })
    }
}

/// Hands rustls the current certificate; [`TlsTerminator`] swaps it on reload without a lock
/// on the handshake path.
struct ReloadableCert(ArcSwap<CertifiedKey>);

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ReloadableCert")
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The TLS side of the listen port: the acceptor and the certificate it serves.
#[derive(Clone)]
pub struct TlsTerminator {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    cert: Arc<ReloadableCert>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for TlsTerminator {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsTerminator")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Loads the certificate and builds the server configuration: rustls's safe defaults
    /// (TLS 1.2 and 1.3), ALPN `http/1.1`, no client certificates.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = Arc::new(ReloadableCert(ArcSwap::from_pointee(
            files.load(&provider)?,
        )));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Ok(TlsTerminator {
            files,
            provider,
            cert,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor for one connection's handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Loads the files again; on success new handshakes get the new certificate, on failure
    /// the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let cert = self.files.load(&self.provider)?;
        self.cert.0.store(Arc::new(cert));
        Ok(())
    }

    /// Reloads when either file changes (checked every `interval`) or on SIGHUP, until
    /// `stop` is cancelled.
    /// SIGHUP is subscribed to before this returns, so a signal sent once the gateway
    /// listens is never missed (nor fatal).
    pub fn watch(
        self,
        interval: Duration,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> {
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; TLS reload by file change only");
                None
            }
        };
        self.watch_loop(hangup, interval, stop)
    }

    async fn watch_loop(
        self,
        mut hangup: Option<tokio::signal::unix::Signal>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut seen = self.files.stamp();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup_received = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                () = stop.cancelled() => return,
                _ = hangup_received => "SIGHUP",
                _ = ticks.tick() => {
                    let now = self.files.stamp();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "file change"
                }
            };
            match self.reload() {
                Ok(()) => {
                    metrics::counter!("notify_tls_reloads_total", "result" => "ok").increment(1);
                    tracing::info!(trigger, cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    metrics::counter!("notify_tls_reloads_total", "result" => "error").increment(1);
                    tracing::error!(
                        trigger,
                        error = %format!("{:#}", anyhow::Error::new(error)),
                        "TLS certificate not reloaded; the previous one stays in service"
                    );
                }
            }
        }
    }
}

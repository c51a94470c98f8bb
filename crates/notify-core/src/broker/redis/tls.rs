//! The Redis client for a URL: plain `redis://`, or `rediss://` (TLS through rustls) with an
//! optional private CA and a client certificate for servers that ask for one.
//!
//! This module owns turning the URL and the TLS files into a [`redis::Client`]; connecting,
//! subscribing and publishing are the broker's. Without a CA file a `rediss://` server is
//! verified against the system's roots. Certificates are read once, when the client is built.

use std::path::{Path, PathBuf};

use super::{redact_url, BrokerError};

/// A client certificate and its key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate (`--redis-client-cert`).
    pub cert: PathBuf,
    /// Its private key (`--redis-client-key`).
    pub key: PathBuf,
}

/// TLS settings for a `rediss://` URL. The default (nothing set) is the system's roots and no
/// client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM file of the CA that signed the server's certificate, instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Presented when the server asks for a client certificate.
    pub client: Option<ClientIdentity>,
}

impl RedisTls {
    /// Builds the settings from the three optional files of the command line. A certificate
    /// without its key (or a key without its certificate) is refused: the binaries require
    /// both flags together.
    pub fn from_files(
        ca_cert: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
    ) -> Self {
        let client = match (client_cert, client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            _ => None,
        };
        RedisTls { ca_cert, client }
    }

    /// Whether anything is set.
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.client.is_none()
    }
}

/// The client for `url`. TLS files are read here; they require a `rediss://` URL.
pub fn redis_client(url: &str, tls: &RedisTls) -> Result<redis::Client, BrokerError> {
    let invalid_url = |source| BrokerError::InvalidUrl {
        url: redact_url(url),
        source,
    };
    // rustls needs a process-wide crypto provider; ring is the one this workspace builds.
    // An error only means a provider is already installed, which serves as well.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let Some(certificates) = tls_certificates(tls)? else {
        return redis::Client::open(url).map_err(invalid_url);
    };
    redis::Client::build_with_tls(url, certificates).map_err(|source| BrokerError::TlsSetup {
        url: redact_url(url),
        source,
    })
}

/// The CA and client certificate read from their files; `None` when none is set.
pub(super) fn tls_certificates(
    tls: &RedisTls,
) -> Result<Option<redis::TlsCertificates>, BrokerError> {
    if tls.is_empty() {
        return Ok(None);
    }
    let root_cert = tls.ca_cert.as_deref().map(read).transpose()?;
    let client_tls = match &tls.client {
        Some(identity) => Some(redis::ClientTlsConfig {
            client_cert: read(&identity.cert)?,
            client_key: read(&identity.key)?,
        }),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read(path: &Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|source| BrokerError::TlsFile {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_needs_no_tls() {
        assert!(redis_client("redis://127.0.0.1:6379", &RedisTls::default()).is_ok());
        assert!(redis_client("rediss://127.0.0.1:6379", &RedisTls::default()).is_ok());
    }

    #[test]
    fn tls_files_need_rediss_and_must_exist() {
        let missing = RedisTls::from_files(Some("/nonexistent/ca.pem".into()), None, None);
        let error = redis_client("rediss://h:1", &missing).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");

        let ca = std::env::temp_dir().join(format!("notify-redis-tls-{}.pem", std::process::id()));
        std::fs::write(&ca, b"not a certificate").unwrap();
        let tls = RedisTls::from_files(Some(ca.clone()), None, None);
        let plain = redis_client("redis://:secret@h:1", &tls).unwrap_err();
        std::fs::remove_file(&ca).unwrap();
        let text = plain.to_string();
        assert!(text.contains("rediss://"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        assert!(RedisTls::from_files(None, Some("c".into()), None)
            .client
            .is_none());
        assert!(
            RedisTls::from_files(None, Some("c".into()), Some("k".into()))
                .client
                .is_some()
        );
    }
}

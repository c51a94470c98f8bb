//! Redis Cluster: the seed nodes a cluster is given by, the cluster clients made from them,
//! and the sharded subscription ([`subscriber`]).
//!
//! # How a cluster is used
//! - Names are hash-tagged ([`notify_proto::KeyLayout::Cluster`]): a region's stream
//!   `tvs:{AE}:stream` and shard channel `tvs:{AE}` sit in one slot, so the publish script
//!   (`XADD`, then `SPUBLISH`) runs atomically on the shard that owns the region, and its
//!   message is sent by that shard only, not broadcast to every node.
//! - Commands go through the driver's cluster connection, which sends each to the primary
//!   owning its key's slot, follows `MOVED`/`ASK` and refreshes the slot map when a node
//!   fails; a connection that keeps failing is dropped and made again from the seeds.
//! - Multi-key reads are split into one read per region (one slot each). The stream follower
//!   does not block in `XREAD` — a multi-key `XREAD` is refused with `CROSSSLOT`, and a
//!   blocking read would hold a node's shared connection — it is woken by the shard messages
//!   the subscription receives ([`super::wakeups`]) and still reads every region at least once
//!   per block period, so catch-up and resync work exactly as with one Redis.

pub(super) mod subscriber;

pub use subscriber::PUSH_QUEUE;

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;

use super::tls::{certificates, install_crypto_provider};
use super::url::{redact_url, split_seeds};
use super::{BrokerError, RedisTls};

/// The seed nodes of a cluster (any reachable one tells the slot map) and the TLS
/// certificates its nodes are verified with.
#[derive(Debug, Clone)]
pub struct ClusterSeeds {
    urls: Vec<String>,
    certificates: Option<redis::TlsCertificates>,
    /// The list as given, passwords masked, for errors and logs.
    shown: String,
}

impl ClusterSeeds {
    /// The seeds of `urls` (comma-separated, see [`split_seeds`]). Every seed must carry the
    /// same credentials and scheme; TLS files need `rediss://` seeds.
    pub fn parse(urls: &str, tls: &RedisTls) -> Result<Self, BrokerError> {
        install_crypto_provider();
        let shown = redact_url(urls);
        let seeds: Vec<String> = split_seeds(urls).into_iter().map(str::to_owned).collect();
        let certificates = certificates(tls)?;
        if certificates.is_some() && !seeds.iter().all(|seed| seed.starts_with("rediss://")) {
            return Err(BrokerError::TlsSetup {
                url: shown,
                source: redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "TLS files need rediss:// seed URLs",
                )),
            });
        }
        let parsed = ClusterSeeds {
            urls: seeds,
            certificates,
            shown,
        };
        parsed
            .builder(Duration::from_secs(1))
            .build()
            .map_err(|source| BrokerError::InvalidUrl {
                url: parsed.shown.clone(),
                source,
            })?;
        Ok(parsed)
    }

    /// A client builder whose connects and replies (retries included) each get `timeout`.
    pub(super) fn builder(&self, timeout: Duration) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.urls.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(certificates) = &self.certificates {
            builder = builder.certs(certificates.clone());
        }
        builder
    }

    /// A cluster connection made from `client` within `timeout`.
    pub(super) async fn connect_client(
        &self,
        client: &ClusterClient,
        timeout: Duration,
    ) -> Result<ClusterConnection, BrokerError> {
        const OPERATION: &str = "connect to the cluster";
        match tokio::time::timeout(timeout, client.get_async_connection()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(source)) => Err(BrokerError::from_redis(OPERATION, source)),
            Err(_) => Err(BrokerError::Timeout {
                operation: OPERATION,
                after: timeout,
            }),
        }
    }

    /// A cluster connection (commands only) within `timeout`.
    pub(super) async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<ClusterConnection, BrokerError> {
        let client = self
            .builder(timeout)
            .build()
            .map_err(|source| BrokerError::InvalidUrl {
                url: self.shown.clone(),
                source,
            })?;
        self.connect_client(&client, timeout).await
    }

    /// The seeds, passwords masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_must_agree_and_tls_needs_rediss() {
        assert!(
            ClusterSeeds::parse("redis://h1:7000,redis://h2:7001", &RedisTls::default()).is_ok()
        );
        let error = ClusterSeeds::parse("", &RedisTls::default()).unwrap_err();
        assert!(matches!(error, BrokerError::InvalidUrl { .. }), "{error}");
        let error = ClusterSeeds::parse(
            "redis://:s3cret@h1:7000,redis://:other@h2:7001",
            &RedisTls::default(),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("other"),
            "{text}"
        );
        let ca = std::env::temp_dir().join(format!("notify-cluster-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, b"not a certificate").unwrap();
        let tls = RedisTls::from_files(Some(ca.clone()), None, None);
        let error = ClusterSeeds::parse("redis://h1:7000", &tls).unwrap_err();
        std::fs::remove_file(&ca).unwrap();
        assert!(matches!(error, BrokerError::TlsSetup { .. }), "{error}");
    }
}

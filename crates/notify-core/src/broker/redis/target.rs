//! [`RedisTarget`]: the deployment the broker talks to — the one server a
//! `redis://`/`rediss://` URL names, the primary Redis Sentinel names for a
//! `redis+sentinel://` URL (see [`sentinel_url`](super::sentinel_url)), or a Redis Cluster
//! given by seed nodes — its key layout, and how each of its command connections
//! ([`RedisConnection`]) is made and named.
//!
//! # Following a failover
//! A sentinel target is asked again at **every** connect: [`RedisTarget::client`] runs
//! redis-rs's `SentinelClient::async_get_client`, which asks the sentinels in order for the
//! primary (`SENTINEL MASTERS`, skipping one flagged down) and checks that node's `ROLE`. So
//! a link that drops reconnects to whatever the sentinels name then, with no state kept here.
//!
//! # Never a demoted primary
//! The sentinels' answer can be stale for a moment around a failover, and the node can be
//! demoted between that check and our connection. So each command connection runs `ROLE`
//! itself right after connecting ([`RedisTarget::connect`]) and is refused
//! ([`BrokerError::NotPrimary`]) unless it is the primary. Later, a node demoted under an open
//! connection is left by three roads: Sentinel's reconfiguration kills every normal and
//! pub/sub client of the old primary (`CLIENT KILL TYPE normal|pubsub`); a blocked `XREAD`
//! is ended with `UNBLOCKED`; a write answers `READONLY`, which drops the command connection
//! ([`BrokerError::breaks_connection`]), so the next command asks the sentinels again.
//! The pub/sub connection cannot run `ROLE` (a subscribed RESP2 connection accepts only
//! (un)subscribe and `PING`); it relies on the sentinels' own check and on that kill.

use std::sync::Arc;
use std::time::Duration;

use notify_proto::KeyLayout;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

use super::cluster::ClusterSeeds;
use super::connection::RedisConnection;
use super::connection_names;
use super::sentinel_url::SentinelUrl;
use super::tls::{certificates, install_crypto_provider, redis_client};
use super::{redact_url, BrokerError, RedisTls};

/// How soon the sentinels are asked again when they named no usable primary.
pub const ASK_AGAIN: Duration = Duration::from_millis(100);

/// Where the broker connects.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server, from a `redis://` or `rediss://` URL (boxed: the target is cloned into
    /// every link, and a client is ten times the sentinel variant's size).
    Single(Box<redis::Client>),
    /// The primary the sentinels name, asked again at every connect.
    Sentinel(Arc<SentinelTarget>),
    /// A cluster, reached through its seeds.
    Cluster(ClusterSeeds),
}

/// The sentinels of one primary.
pub struct SentinelTarget {
    /// redis-rs's client; its methods take `&mut self` (they cache connections to sentinels).
    client: tokio::sync::Mutex<SentinelClient>,
    /// The URL, password masked, for errors and logs.
    shown: String,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl RedisTarget {
    /// The target `url` names: one URL (a server, or sentinels), or with `layout`
    /// [`KeyLayout::Cluster`] the comma-separated seed URLs of a cluster. TLS files are read
    /// here.
    pub fn new(url: &str, tls: &RedisTls, layout: KeyLayout) -> Result<Self, BrokerError> {
        match layout {
            KeyLayout::Single => Self::from_url(url, tls),
            KeyLayout::Cluster => ClusterSeeds::parse(url, tls).map(RedisTarget::Cluster),
        }
    }

    /// The names this target's keys follow.
    pub fn layout(&self) -> KeyLayout {
        match self {
            RedisTarget::Single(_) | RedisTarget::Sentinel(_) => KeyLayout::Single,
            RedisTarget::Cluster(_) => KeyLayout::Cluster,
        }
    }

    /// The target one (non-cluster) `url` names; TLS files (read here) apply to `rediss://` and
    /// `redis+sentinels://`, to the sentinels and the data nodes alike.
    pub fn from_url(url: &str, tls: &RedisTls) -> Result<Self, BrokerError> {
        let Some(parsed) = SentinelUrl::parse(url) else {
            return redis_client(url, tls).map(|client| RedisTarget::Single(Box::new(client)));
        };
        let shown = redact_url(url);
        let parsed = parsed.map_err(|source| BrokerError::SentinelUrl {
            url: shown.clone(),
            source,
        })?;
        let setup = |source| BrokerError::TlsSetup {
            url: shown.clone(),
            source,
        };
        if !parsed.tls && !tls.is_empty() {
            return Err(setup(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS files need a redis+sentinels:// URL",
            ))));
        }
        // rustls needs a process-wide crypto provider (see `redis_client`).
        install_crypto_provider();
        let sentinels = parsed.sentinels.iter().map(|(host, port)| {
            if parsed.tls {
                redis::ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                redis::ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(sentinels, &parsed.master_name, SentinelServerType::Master)
                .map_err(|source| BrokerError::InvalidUrl {
                    url: shown.clone(),
                    source,
                })?
                .set_client_to_redis_db(parsed.db);
        if let Some(username) = &parsed.data.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &parsed.data.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(username) = &parsed.sentinel.username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = &parsed.sentinel.password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if parsed.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certificates) = certificates(tls)? {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        let client = builder.build().map_err(setup)?;
        Ok(RedisTarget::Sentinel(Arc::new(SentinelTarget {
            client: tokio::sync::Mutex::new(client),
            shown,
        })))
    }

    /// A client for the server to connect to now: the single server, or the primary the
    /// sentinels name at this moment. A sentinel target asks again every [`ASK_AGAIN`] while
    /// the answer is an error — during a failover the sentinels name no primary (or still the
    /// dead one) for a few seconds — and returns the last error, with its cause, once
    /// `timeout` has passed.
    pub async fn client(&self, timeout: Duration) -> Result<redis::Client, BrokerError> {
        const OPERATION: &str = "ask the sentinels for the primary";
        let sentinel = match self {
            RedisTarget::Single(client) => return Ok(client.as_ref().clone()),
            RedisTarget::Sentinel(sentinel) => sentinel,
            RedisTarget::Cluster(_) => {
                return Err(BrokerError::Unavailable {
                    operation: OPERATION,
                    source: redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "a cluster has no single server to connect to",
                    )),
                })
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ask = async { sentinel.client.lock().await.async_get_client().await };
            let error = match tokio::time::timeout_at(deadline, ask).await {
                Ok(Ok(client)) => {
                    tracing::debug!(sentinels = %sentinel.shown, primary = %client.get_connection_info().addr(), "the sentinels named the primary");
                    return Ok(client);
                }
                Ok(Err(source)) => BrokerError::Unavailable {
                    operation: OPERATION,
                    source,
                },
                Err(_) => {
                    return Err(BrokerError::Timeout {
                        operation: OPERATION,
                        after: timeout,
                    })
                }
            };
            if tokio::time::Instant::now() + ASK_AGAIN >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, "no primary from the sentinels yet; asking again");
            tokio::time::sleep(ASK_AGAIN).await;
        }
    }

    /// Opens a command connection within `timeout` (for a sentinel target: asking the
    /// sentinels, connecting and checking `ROLE`, each step within `timeout`) and names it
    /// `name`, if given (see [`connection_names`]; cluster connections are not named: a name
    /// would reach one node only). `response_timeout` bounds each reply (`None` for a
    /// connection that runs blocking commands under its own timer; a cluster connection never
    /// does and always has one).
    pub async fn connect(
        &self,
        timeout: Duration,
        response_timeout: Option<Duration>,
        name: Option<&'static str>,
    ) -> Result<RedisConnection, BrokerError> {
        const OPERATION: &str = "connect";
        if let RedisTarget::Cluster(seeds) = self {
            return seeds.connect(timeout).await.map(RedisConnection::Cluster);
        }
        let client = self.client(timeout).await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(response_timeout);
        let mut connection = match tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(source)) => return Err(BrokerError::from_redis(OPERATION, source)),
            Err(_) => {
                return Err(BrokerError::Timeout {
                    operation: OPERATION,
                    after: timeout,
                })
            }
        };
        if matches!(self, RedisTarget::Sentinel(_)) {
            check_primary(&mut connection, timeout).await?;
        }
        if let Some(name) = name {
            connection_names::set_name(&mut connection, name, timeout).await?;
        }
        Ok(RedisConnection::Single(connection))
    }
}

/// `ROLE` on `connection`: an error unless the node is a primary.
async fn check_primary(
    connection: &mut MultiplexedConnection,
    timeout: Duration,
) -> Result<(), BrokerError> {
    const OPERATION: &str = "ROLE";
    let command = redis::cmd("ROLE");
    let role = command.query_async::<redis::Role>(connection);
    match tokio::time::timeout(timeout, role).await {
        Ok(Ok(redis::Role::Primary { .. })) => Ok(()),
        Ok(Ok(redis::Role::Replica { .. })) => Err(BrokerError::NotPrimary { role: "replica" }),
        Ok(Ok(redis::Role::Sentinel { .. })) => Err(BrokerError::NotPrimary { role: "sentinel" }),
        Ok(Ok(_)) => Err(BrokerError::NotPrimary {
            role: "node of an unknown role",
        }),
        Ok(Err(source)) => Err(BrokerError::from_redis(OPERATION, source)),
        Err(_) => Err(BrokerError::Timeout {
            operation: OPERATION,
            after: timeout,
        }),
    }
}

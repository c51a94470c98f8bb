//! [`RedisTarget`]: the deployment the broker talks to — one Redis (`redis://`, `rediss://`)
//! or a Redis Cluster given by seed nodes — its key layout, and how each of its command
//! connections ([`RedisConnection`]) is made and named.

use std::time::Duration;

use notify_proto::KeyLayout;

use super::cluster::ClusterSeeds;
use super::connection::RedisConnection;
use super::connection_names;
use super::{redis_client, BrokerError, RedisTls};

/// One Redis, or a cluster.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server.
    Single(redis::Client),
    /// A cluster, reached through its seeds.
    Cluster(ClusterSeeds),
}

impl RedisTarget {
    /// The target `url` names: one URL, or with `layout` [`KeyLayout::Cluster`] the
    /// comma-separated seed URLs of a cluster. TLS files are read here.
    pub fn new(url: &str, tls: &RedisTls, layout: KeyLayout) -> Result<Self, BrokerError> {
        match layout {
            KeyLayout::Single => redis_client(url, tls).map(RedisTarget::Single),
            KeyLayout::Cluster => ClusterSeeds::parse(url, tls).map(RedisTarget::Cluster),
        }
    }

    /// The names this target's keys follow.
    pub fn layout(&self) -> KeyLayout {
        match self {
            RedisTarget::Single(_) => KeyLayout::Single,
            RedisTarget::Cluster(_) => KeyLayout::Cluster,
        }
    }

    /// Opens a command connection within `timeout` and names it `name`, if given (see
    /// [`connection_names`]; cluster connections are not named: a name would reach one node
    /// only). `response_timeout` bounds each reply (`None` for a connection that runs blocking
    /// commands under its own timer; a cluster connection never does and always has one).
    pub async fn connect(
        &self,
        timeout: Duration,
        response_timeout: Option<Duration>,
        name: Option<&'static str>,
    ) -> Result<RedisConnection, BrokerError> {
        const OPERATION: &str = "connect";
        let client = match self {
            RedisTarget::Single(client) => client,
            RedisTarget::Cluster(seeds) => {
                return seeds.connect(timeout).await.map(RedisConnection::Cluster);
            }
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(response_timeout);
        match tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(mut connection)) => {
                if let Some(name) = name {
                    connection_names::set_name(&mut connection, name, timeout).await?;
                }
                Ok(RedisConnection::Single(connection))
            }
            Ok(Err(source)) => Err(BrokerError::from_redis(OPERATION, source)),
            Err(_) => Err(BrokerError::Timeout {
                operation: OPERATION,
                after: timeout,
            }),
        }
    }
}

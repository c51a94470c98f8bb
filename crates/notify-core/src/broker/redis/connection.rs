//! [`RedisConnection`]: how the broker talks to Redis, whatever the deployment — one
//! multiplexed connection to a single server, or a cluster connection that sends each command
//! to the shard owning its key and follows the slot map (`MOVED`, a failed-over primary).
//! Publishes, history reads and the stream follower take one, so their logic is written once
//! for both deployments; [`RedisTarget`](super::target::RedisTarget) makes them.

use std::fmt;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to one Redis or to a Redis Cluster. Cloning shares the connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server.
    Single(MultiplexedConnection),
    /// A cluster: commands are routed by their keys' slot.
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Whether multi-key commands must keep to one slot (a cluster refuses others with
    /// `CROSSSLOT`).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}

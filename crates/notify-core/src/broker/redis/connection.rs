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

    /// How to split a batch into pipelines this connection can send: the indexes of `keys`
    /// grouped by key in first-seen order on a cluster (a pipeline must stay on one shard,
    /// and each key here is a region whose channel and stream share a slot), or one group of
    /// every index on a single Redis. Order within each group is the batch's order.
    pub fn pipeline_groups<K: PartialEq>(&self, keys: &[K]) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return vec![(0..keys.len()).collect()];
        }
        group_by_key(keys)
    }
}

/// The indexes of `keys` grouped by equal key, groups in first-seen order.
fn group_by_key<K: PartialEq>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        match groups.iter_mut().find(|group| keys[group[0]] == *key) {
            Some(group) => group.push(index),
            None => groups.push(vec![index]),
        }
    }
    groups
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

#[cfg(test)]
mod tests {
    use super::group_by_key;

    #[test]
    fn groups_keep_first_seen_order_and_batch_order_within() {
        let keys = ["AE", "FI", "AE", "US", "FI", "AE"];
        assert_eq!(
            group_by_key(&keys),
            vec![vec![0, 2, 5], vec![1, 4], vec![3]]
        );
        assert!(group_by_key::<&str>(&[]).is_empty());
    }
}

//! [`RedisCluster`]: a real Redis Cluster for the cluster tests — three primaries with one
//! replica each, `redis-server --cluster-enabled yes` on free loopback ports below 55,536 (the
//! cluster bus listens on port + 10,000), joined with `redis-cli --cluster create`, torn down
//! on drop. Shards keep serving while another fails over (`cluster-require-full-coverage no`).
//! Nodes can be killed (`SIGKILL`) to force a failover, and a slot moved to another primary. Nodes can be killed (`SIGKILL`) to force a failover.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kill_child;

/// Primaries in the cluster.
pub const PRIMARIES: usize = 3;

/// How long a node may be silent before the others fail it over: short, so a test sees a
/// failover in about two seconds.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

/// A running 3-primary, 3-replica Redis Cluster on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (`--cluster-replicas 1`) and waits until every
    /// node reports `cluster_state:ok` and knows all six, and every replica has synced with
    /// its primary (only then may it replace it).
    pub async fn start() -> Result<Self> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let serial = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("notify-cluster-{}-{serial}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the cluster's directory")?;
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for port in cluster_ports(2 * PRIMARIES)? {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // The other shards keep serving while one fails over, so a test sees messages
                // published during the failover (the gateway must catch them up).
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (the README's test command installs it)")?;
            cluster.nodes.push(ClusterNode {
                port,
                child: Some(child),
            });
        }
        for node in &cluster.nodes {
            let client = node_client(node.port);
            let answered =
                crate::wait_until(Duration::from_secs(10), || async { ping(&client).await }).await;
            if !answered {
                bail!("cluster node on port {} did not answer PING", node.port);
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create (package redis-tools)")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        let ports: Vec<u16> = cluster.nodes.iter().map(|node| node.port).collect();
        let formed = crate::wait_until(Duration::from_secs(20), || async {
            for port in &ports {
                match cluster_info(*port).await {
                    Some(info)
                        if info.contains("cluster_state:ok")
                            && info.contains(&format!("cluster_known_nodes:{}", ports.len())) => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
        if !formed {
            bail!("the cluster did not reach cluster_state:ok within 20 s");
        }
        // A replica that has not synced with its primary yet is not allowed to replace it.
        let synced = crate::wait_until(Duration::from_secs(20), || async {
            let mut replicas = 0;
            for port in &ports {
                let Some(info) = node_info(*port, "replication").await else {
                    return false;
                };
                if info.contains("role:slave") {
                    if !info.contains("master_link_status:up") {
                        return false;
                    }
                    replicas += 1;
                }
            }
            replicas == PRIMARIES
        })
        .await;
        if !synced {
            bail!("the cluster's replicas did not sync with their primaries within 20 s");
        }
        Ok(cluster)
    }

    /// The seed URLs of the three primaries as started, comma-separated, for `--redis-url`.
    pub fn seeds_url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    /// The port of the primary that owns `key`'s slot now, as a live node sees the slot map.
    pub async fn primary_for(&self, key: &str) -> Result<u16> {
        for port in self.live_ports() {
            let Ok(mut connection) = node_client(port).get_multiplexed_async_connection().await
            else {
                continue;
            };
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut connection)
                .await?;
            let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut connection)
                .await?;
            for range in ranges {
                let redis::Value::Array(fields) = range else {
                    continue;
                };
                let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
                    (fields.first(), fields.get(1))
                else {
                    continue;
                };
                if (*start..=*end).contains(&i64::from(slot)) {
                    if let Some(redis::Value::Array(primary)) = fields.get(2) {
                        if let Some(redis::Value::Int(port)) = primary.get(1) {
                            return Ok(u16::try_from(*port)?);
                        }
                    }
                }
            }
        }
        bail!("no live node knows the primary of {key:?}")
    }

    /// The ports of the nodes that are primaries now.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut primaries = Vec::new();
        for port in self.live_ports() {
            if let Some(info) = node_info(port, "replication").await {
                if info.contains("role:master") {
                    primaries.push(port);
                }
            }
        }
        primaries
    }

    /// Moves the slot of `key`, with its keys, from the primary that owns it to the primary
    /// on `to` (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT … NODE` on
    /// every primary), as a resharding does.
    pub async fn move_slot(&self, key: &str, to: u16) -> Result<()> {
        let from = self.primary_for(key).await?;
        let mut source = node_client(from).get_multiplexed_async_connection().await?;
        let mut target = node_client(to).get_multiplexed_async_connection().await?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut source)
            .await?;
        let source_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut source)
            .await?;
        let target_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut target)
            .await?;
        let set_slot = |state: &str, node: &str| {
            let mut command = redis::cmd("CLUSTER");
            command.arg("SETSLOT").arg(slot).arg(state).arg(node);
            command
        };
        set_slot("IMPORTING", &source_id)
            .query_async::<()>(&mut target)
            .await?;
        set_slot("MIGRATING", &target_id)
            .query_async::<()>(&mut source)
            .await?;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await?;
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async::<()>(&mut source)
                .await?;
        }
        for port in [to, from] {
            let mut connection = node_client(port).get_multiplexed_async_connection().await?;
            set_slot("NODE", &target_id)
                .query_async::<()>(&mut connection)
                .await?;
        }
        for port in self.primaries().await {
            if port != to && port != from {
                let mut connection = node_client(port).get_multiplexed_async_connection().await?;
                set_slot("NODE", &target_id)
                    .query_async::<()>(&mut connection)
                    .await?;
            }
        }
        Ok(())
    }

    /// Kills the node on `port` (`SIGKILL`): its replica is promoted after
    /// [`NODE_TIMEOUT_MS`] or so.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) {
            kill_child(&mut node.child);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill_child(&mut node.child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client for one node, for commands addressed to it (not routed by slot).
pub fn node_client(port: u16) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("valid redis url")
}

/// `CLUSTER INFO` of the node on `port`, if it answers.
pub async fn cluster_info(port: u16) -> Option<String> {
    let mut connection = node_client(port)
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut connection)
        .await
        .ok()
}

/// `INFO section` of the node on `port`, if it answers.
pub async fn node_info(port: u16, section: &str) -> Option<String> {
    let mut connection = node_client(port)
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut connection)
        .await
        .ok()
}

/// A numeric field (`name:value`) of an `INFO` or `CLUSTER INFO` text; 0 when absent.
pub fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

async fn ping(client: &redis::Client) -> bool {
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .is_ok()
}

/// `count` free loopback ports below 55,536 whose bus ports (port + 10,000) are free too.
fn cluster_ports(count: usize) -> Result<Vec<u16>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ports = Vec::new();
    while ports.len() < count {
        if Instant::now() > deadline {
            bail!("no {count} free port pairs (port, port + 10000) below 55536");
        }
        let port = crate::free_port();
        if !(1024..55_536).contains(&port) || ports.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

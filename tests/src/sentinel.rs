//! A Sentinel-managed Redis for the failover tests: one primary, one replica and three
//! `redis-sentinel`s on free loopback ports, each sentinel with its own config file in a
//! temporary directory (Sentinel rewrites it). Small timers (`down-after-milliseconds`
//! [`DOWN_AFTER`], `failover-timeout` [`FAILOVER_TIMEOUT`]) keep a failover within seconds.
//! Everything is killed, and the directory removed, on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, kill_child, wait_until, RedisServer};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "notify";

/// Sentinel's `down-after-milliseconds`: how long the primary may not answer before a
/// sentinel holds it down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// Sentinel's `failover-timeout`.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(4000);

/// Sentinels started: a quorum of two can agree while one is away.
const SENTINELS: usize = 3;

/// A primary, its replica and the sentinels watching them.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The primary at start.
    pub primary: RedisServer,
    /// Its replica at start (the one a failover promotes).
    pub replica: RedisServer,
    sentinels: Vec<Option<Child>>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl SentinelGroup {
    /// Starts the primary, the replica (in sync before this returns) and three sentinels,
    /// and waits until every sentinel knows the replica and the two other sentinels — until
    /// then a failover could not be agreed on.
    pub async fn start() -> Result<Self> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "notify-sentinel-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).context("creating the group's directory")?;
        // Replication writes the RDB it receives to the server's directory even without
        // `save`: each node gets its own directory, or the next redis-server started in the
        // shared temporary directory would load this group's data.
        let own_dir = |name: &str| -> Result<String> {
            let path = dir.join(name);
            std::fs::create_dir_all(&path).context("creating a node's directory")?;
            Ok(path.to_string_lossy().into_owned())
        };
        let primary_dir = own_dir("primary")?;
        let replica_dir = own_dir("replica")?;
        // No 5 s wait for more replicas before a full sync (Redis 7's default), here or on
        // the replica once it is promoted and the old primary comes back as its replica.
        let no_sync_delay = ["--repl-diskless-sync-delay", "0"];
        let primary =
            RedisServer::start_with_args(&[&no_sync_delay[..], &["--dir", &primary_dir]].concat())
                .await?;
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start_with_args(
            &[
                &no_sync_delay[..],
                &[
                    "--dir",
                    &replica_dir,
                    "--replicaof",
                    "127.0.0.1",
                    &primary_port,
                ],
            ]
            .concat(),
        )
        .await?;
        let mut group = SentinelGroup {
            primary,
            replica,
            sentinels: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        group.wait_for_replication().await?;
        for _ in 0..SENTINELS {
            group.start_sentinel().await?;
        }
        let watching = wait_until(Duration::from_secs(30), || group.all_watching()).await;
        if !watching {
            bail!(
                "the sentinels did not find the replica and each other within 30 s:\n{}",
                group.log_tail(10)
            );
        }
        Ok(group)
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/notify`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The primary's port as the first sentinel that answers names it.
    pub async fn primary_port(&self) -> Option<u16> {
        for port in &self.ports {
            let reply: Option<(String, u16)> = self
                .sentinel_query(*port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                .await
                .ok()
                .flatten();
            if let Some((_, port)) = reply {
                return Some(port);
            }
        }
        None
    }

    /// `SENTINEL FAILOVER`: a graceful failover, the primary demoted to a replica of the
    /// promoted one, both running.
    pub async fn failover(&self) -> Result<()> {
        let port = *self.ports.first().context("no sentinel")?;
        let _: String = self
            .sentinel_query(port, &["SENTINEL", "FAILOVER", MASTER_NAME])
            .await
            .context("SENTINEL FAILOVER")?;
        Ok(())
    }

    /// The last `lines` lines of every sentinel's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.ports
            .iter()
            .map(|port| {
                let log = std::fs::read_to_string(self.dir.join(format!("sentinel-{port}.log")))
                    .unwrap_or_default();
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("sentinel {port}:\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_for_replication(&self) -> Result<()> {
        let client = self.replica.client();
        let synced = wait_until(Duration::from_secs(20), || async {
            let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        })
        .await;
        if !synced {
            bail!("the replica did not sync with the primary within 20 s");
        }
        Ok(())
    }

    async fn start_sentinel(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let config = self.dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nprotected-mode no\n\
                     dir {dir}\nlogfile {dir}/sentinel-{port}.log\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                     sentinel failover-timeout {MASTER_NAME} {failover}\n",
                    dir = self.dir.display(),
                    primary = self.primary.port(),
                    down = DOWN_AFTER.as_millis(),
                    failover = FAILOVER_TIMEOUT.as_millis(),
                ),
            )
            .context("writing a sentinel's config file")?;
            let mut child = Some(
                Command::new("redis-sentinel")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting redis-sentinel (scripts/test.sh installs it)")?,
            );
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    failures.push(format!("port {port}: exited at start ({status})"));
                    child = None;
                    break;
                }
                let role: Result<Vec<redis::Value>> = self.sentinel_query(port, &["ROLE"]).await;
                if role.is_ok() {
                    self.sentinels.push(child);
                    self.ports.push(port);
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            kill_child(&mut child);
        }
        bail!("redis-sentinel did not start: {}", failures.join("; "))
    }

    /// Whether every sentinel sees the primary up, its replica and the other sentinels.
    async fn all_watching(&self) -> bool {
        for port in &self.ports {
            let master: HashMap<String, String> = match self
                .sentinel_query(*port, &["SENTINEL", "MASTER", MASTER_NAME])
                .await
            {
                Ok(master) => master,
                Err(_) => return false,
            };
            let count = |key: &str| master.get(key).and_then(|n| n.parse::<usize>().ok());
            let ready = master.get("flags").map(String::as_str) == Some("master")
                && count("num-slaves") == Some(1)
                && count("num-other-sentinels") == Some(SENTINELS - 1);
            if !ready {
                return false;
            }
        }
        true
    }

    async fn sentinel_query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        words: &[&str],
    ) -> Result<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut command = redis::cmd(words[0]);
        for word in &words[1..] {
            command.arg(*word);
        }
        Ok(command.query_async(&mut connection).await?)
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            kill_child(sentinel);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

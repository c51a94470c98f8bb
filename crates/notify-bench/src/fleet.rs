//! The gateways a scenario runs itself: `--gateways` copies of `--gateway-bin`, each on a
//! fixed free loopback port with `--redis-url`, started, waited for (`/readyz`), stopped with
//! SIGTERM and started again on the same port; their CPU time across restarts.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::future::join_all;
use notify_proto::Region;
use rand::Rng;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::cli::Args;
use crate::procstat;

/// Time a (re)started gateway has to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a gateway has to exit after SIGTERM before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// One gateway: a fixed loopback port and the process currently serving it.
#[derive(Debug)]
pub struct Node {
    /// Position in the fleet (and in log file names).
    pub index: usize,
    /// The loopback address it listens on, the same across restarts.
    pub addr: SocketAddr,
    /// Whether clients may connect to it (false from just before SIGTERM until ready again).
    pub up: AtomicBool,
    child: Mutex<Option<Child>>,
    /// Process id of the current process (0 before the first start).
    pub pid: AtomicU32,
    /// Processes started on it so far.
    pub starts: AtomicU64,
    /// CPU seconds of the processes that already exited.
    cpu_secs_exited: Mutex<f64>,
}

/// The gateways this run started. Every child is killed when its handle drops.
#[derive(Debug)]
pub struct Fleet {
    /// The gateways, in start order.
    pub nodes: Vec<Node>,
    bin: PathBuf,
    redis_url: String,
    extra: Vec<String>,
    log_dir: Option<PathBuf>,
    http: reqwest::Client,
}

impl Fleet {
    /// Picks a free loopback port per gateway (all bound at once, so they differ).
    pub fn new(args: &Args) -> Result<Self> {
        let bin = args
            .gateway_bin
            .clone()
            .context("chaos needs --gateway-bin")?;
        let listeners: Vec<TcpListener> = (0..args.gateways)
            .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free loopback port"))
            .collect::<Result<_>>()?;
        let nodes = listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                Ok(Node {
                    index,
                    addr: listener.local_addr()?,
                    up: AtomicBool::new(false),
                    child: Mutex::new(None),
                    pid: AtomicU32::new(0),
                    starts: AtomicU64::new(0),
                    cpu_secs_exited: Mutex::new(0.0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(listeners);
        if let Some(dir) = &args.gateway_log_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--gateway-log-dir {}", dir.display()))?;
        }
        Ok(Fleet {
            nodes,
            bin,
            redis_url: args.redis_url.clone(),
            extra: args.gateway_arg.clone(),
            log_dir: args.gateway_log_dir.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// Starts `node`'s process (its environment's `NOTIFY_*` variables removed, so only the
    /// flags given here apply).
    pub fn spawn(&self, node: &Node) -> Result<()> {
        let mut command = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NOTIFY_") {
                command.env_remove(key);
            }
        }
        let (stdout, stderr) = match &self.log_dir {
            Some(dir) => {
                let path = dir.join(format!("gateway-{}.log", node.index));
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command
            .arg("--listen")
            .arg(node.addr.to_string())
            .arg("--redis-url")
            .arg(&self.redis_url)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        node.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        node.starts.fetch_add(1, Ordering::Relaxed);
        *lock(&node.child) = Some(child);
        Ok(())
    }

    /// Waits until `node` answers `/readyz` with 200 (subscribed to Redis).
    pub async fn wait_ready(&self, node: &Node) -> Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        let url = format!("http://{}/readyz", node.addr);
        loop {
            let exited = lock(&node.child)
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "gateway {} ({}) exited while starting: {status}",
                    node.index,
                    node.addr
                );
            }
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                bail!(
                    "gateway {} ({}) was not ready within {READY_TIMEOUT:?}",
                    node.index,
                    node.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Refuses regions the gateways do not serve (they would reject every client).
    pub async fn check_regions(&self, regions: &[Region]) -> Result<()> {
        let url = format!("http://{}/api/info", self.nodes[0].addr);
        let Ok(response) = self.http.get(&url).send().await else {
            return Ok(());
        };
        let Ok(info) = response.json::<Value>().await else {
            return Ok(());
        };
        if let Some(served) = info["regions"].as_array() {
            let served: Vec<&str> = served.iter().filter_map(Value::as_str).collect();
            if let Some(missing) = regions
                .iter()
                .find(|region| !served.contains(&region.as_str()))
            {
                bail!("the gateways do not serve region {missing} (they serve {served:?}); adjust --regions or --gateway-arg=--regions=...");
            }
        }
        Ok(())
    }

    /// SIGTERM, then up to [`EXIT_TIMEOUT`] for the exit (killed after that). Returns how the
    /// process ended.
    pub async fn stop(&self, node: &Node) -> String {
        node.up.store(false, Ordering::Release);
        let child = lock(&node.child).take();
        let Some(mut child) = child else {
            return "not running".into();
        };
        let cpu = child
            .id()
            .and_then(|pid| procstat::sample(&pid.to_string()).ok());
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let ending = match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(error)) => format!("wait failed: {error}"),
            Err(_) => {
                let _ = child.kill().await;
                format!("killed: still running {EXIT_TIMEOUT:?} after SIGTERM")
            }
        };
        if let Some(sample) = cpu {
            *lock(&node.cpu_secs_exited) += sample.cpu_secs;
        }
        ending
    }

    /// Address of a random gateway that is up.
    pub fn pick_live(&self) -> Option<SocketAddr> {
        let live: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|node| node.up.load(Ordering::Acquire))
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[rand::rng().random_range(0..live.len())].addr)
    }

    /// CPU seconds used by every gateway process so far (exited ones as last sampled).
    pub fn cpu_secs(&self) -> Option<f64> {
        let mut total = 0.0;
        for node in &self.nodes {
            total += *lock(&node.cpu_secs_exited);
            let pid = node.pid.load(Ordering::Relaxed);
            if lock(&node.child).is_some() && pid != 0 {
                total += procstat::sample(&pid.to_string()).ok()?.cpu_secs;
            }
        }
        Some(total)
    }

    /// Stops every gateway.
    pub async fn shutdown(&self) {
        join_all(self.nodes.iter().map(|node| self.stop(node))).await;
    }
}

/// Locks `mutex`, also when a panicking holder poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

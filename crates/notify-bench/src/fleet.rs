//! The gateways a scenario runs itself: `--gateways` copies of `--gateway-bin`, each on a
//! fixed free loopback port with `--redis-url`, started, waited for (`/readyz`), stopped with
//! SIGTERM and started again on the same port; their CPU time across restarts; and their own
//! count of lost Redis subscriptions (`notify_broker_reconnects_total`, which restarts at 0
//! with every process) against the link cuts the run made. Optionally each gateway gets an
//! admin port of its own (`--admin-listen`), where its `/metrics`, `/readyz` and `/api/info`
//! are read: a gateway at its connection cap refuses new sockets on its public port.

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
use serde::Serialize;
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
    /// Its admin address (`--admin-listen`), when the fleet gives each gateway one.
    pub admin: Option<SocketAddr>,
    /// Whether clients may connect to it (false from just before SIGTERM until ready again).
    pub up: AtomicBool,
    child: Mutex<Option<Child>>,
    /// Process id of the current process (0 before the first start).
    pub pid: AtomicU32,
    /// Processes started on it so far.
    pub starts: AtomicU64,
    /// CPU seconds of the processes that already exited.
    cpu_secs_exited: Mutex<f64>,
    /// `notify_broker_reconnects_total` of the processes that already exited, as last read
    /// just before their SIGTERM.
    reconnects_exited: AtomicU64,
    /// Link cuts made while this gateway was up and subscribed: each must show as one
    /// reconnect in its counter.
    pub cuts: AtomicU64,
}

/// One gateway's reconnect counter against the cuts made.
#[derive(Debug, Clone, Serialize)]
pub struct ReconnectCount {
    /// The gateway's index.
    pub gateway: usize,
    /// Sum of `notify_broker_reconnects_total` over its processes; `None` when unreadable.
    pub reconnects: Option<u64>,
    /// Link cuts made while it was subscribed.
    pub cuts: u64,
}

/// The gateways this run started. Every child is killed when its handle drops.
#[derive(Debug)]
pub struct Fleet {
    /// The gateways, in start order.
    pub nodes: Vec<Node>,
    /// Held by every fault for its whole course (a link cut until every gateway is ready
    /// again, a restart from SIGTERM until ready): faults never overlap, so each cut lands on
    /// gateways that are all subscribed and the cuts each one must count are known exactly.
    pub fault_lock: tokio::sync::Mutex<()>,
    bin: PathBuf,
    redis_url: String,
    /// `--redis-cluster`: `redis_url` holds a cluster's seeds, passed on to every gateway.
    redis_cluster: bool,
    extra: Vec<String>,
    log_dir: Option<PathBuf>,
    http: reqwest::Client,
}

impl Node {
    /// Where its `/metrics`, `/readyz` and `/api/*` are served: the admin address if it has
    /// one, else the public one.
    pub fn ops_addr(&self) -> SocketAddr {
        self.admin.unwrap_or(self.addr)
    }
}

impl Fleet {
    /// Picks a free loopback port per gateway (all bound at once, so they differ).
    pub fn new(args: &Args) -> Result<Self> {
        Self::build(args, false)
    }

    /// As [`Fleet::new`], and a second free port per gateway for its `--admin-listen`.
    pub fn with_admin_listeners(args: &Args) -> Result<Self> {
        Self::build(args, true)
    }

    fn build(args: &Args, admin_listeners: bool) -> Result<Self> {
        let bin = args
            .gateway_bin
            .clone()
            .context("chaos needs --gateway-bin")?;
        let ports_per_gateway = if admin_listeners { 2 } else { 1 };
        let listeners: Vec<TcpListener> = (0..args.gateways * ports_per_gateway)
            .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free loopback port"))
            .collect::<Result<_>>()?;
        let nodes = listeners
            .chunks(ports_per_gateway)
            .enumerate()
            .map(|(index, listeners)| {
                Ok(Node {
                    index,
                    addr: listeners[0].local_addr()?,
                    admin: listeners.get(1).map(TcpListener::local_addr).transpose()?,
                    up: AtomicBool::new(false),
                    child: Mutex::new(None),
                    pid: AtomicU32::new(0),
                    starts: AtomicU64::new(0),
                    cpu_secs_exited: Mutex::new(0.0),
                    reconnects_exited: AtomicU64::new(0),
                    cuts: AtomicU64::new(0),
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
            fault_lock: tokio::sync::Mutex::new(()),
            bin,
            redis_url: args.redis_url.clone(),
            redis_cluster: args.redis_cluster,
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
            .args(self.redis_cluster.then_some("--redis-cluster"))
            .args(node.admin.map(|admin| format!("--admin-listen={admin}")))
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

    /// Starts every gateway, waits until all are ready, and refuses regions they do not
    /// serve.
    pub async fn start_all(&self, regions: &[Region]) -> Result<()> {
        for node in &self.nodes {
            self.spawn(node)?;
        }
        for result in join_all(self.nodes.iter().map(|node| self.wait_ready(node))).await {
            result?;
        }
        for node in &self.nodes {
            node.up.store(true, Ordering::Release);
        }
        self.check_regions(regions).await
    }

    /// Whether `node` answers `/readyz` with 200 now.
    pub async fn is_ready(&self, node: &Node) -> bool {
        let url = format!("http://{}/readyz", node.ops_addr());
        matches!(self.http.get(&url).send().await, Ok(response) if response.status().is_success())
    }

    /// Waits until `node` answers `/readyz` with 200 (subscribed to Redis).
    pub async fn wait_ready(&self, node: &Node) -> Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        let url = format!("http://{}/readyz", node.ops_addr());
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
        let url = format!("http://{}/api/info", self.nodes[0].ops_addr());
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
        match self.metric(node, "notify_broker_reconnects_total").await {
            Ok(count) => {
                node.reconnects_exited
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(error) => {
                eprintln!(
                    "notify-bench: warning: gateway {} reconnect counter unreadable before SIGTERM: {error:#}",
                    node.index
                );
                node.reconnects_exited
                    .store(u64::MAX / 2, Ordering::Relaxed);
            }
        }
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

    /// SIGKILL, as a crash or an out-of-memory kill would end it: no drain, no close frames.
    pub async fn kill(&self, node: &Node) -> String {
        node.up.store(false, Ordering::Release);
        let child = lock(&node.child).take();
        let Some(mut child) = child else {
            return "not running".into();
        };
        if let Some(sample) = child
            .id()
            .and_then(|pid| procstat::sample(&pid.to_string()).ok())
        {
            *lock(&node.cpu_secs_exited) += sample.cpu_secs;
        }
        if let Err(error) = child.start_kill() {
            return format!("SIGKILL failed: {error}");
        }
        match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(error)) => format!("wait failed: {error}"),
            Err(_) => format!("still running {EXIT_TIMEOUT:?} after SIGKILL"),
        }
    }

    /// The value of metric `name` (the sum of its series) on `node`'s `/metrics`; 0 when
    /// the gateway exports no series of it yet.
    pub async fn metric(&self, node: &Node, name: &str) -> Result<f64> {
        let url = format!("http://{}/metrics", node.ops_addr());
        let body = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?
            .text()
            .await
            .with_context(|| format!("reading {url}"))?;
        Ok(metric_sum(&body, name))
    }

    /// Waits until every gateway that is up answers `/readyz` with 200 (bounded by
    /// the ready timeout per gateway).
    pub async fn wait_all_ready(&self) -> Result<()> {
        for result in join_all(
            self.nodes
                .iter()
                .filter(|node| node.up.load(Ordering::Acquire))
                .map(|node| self.wait_ready(node)),
        )
        .await
        {
            result?;
        }
        Ok(())
    }

    /// How many gateways are up.
    pub fn up_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|node| node.up.load(Ordering::Acquire))
            .count()
    }

    /// Notes one link cut for every gateway that is up (and so subscribed: callers cut only
    /// when every gateway is ready).
    pub fn record_cut(&self) {
        for node in &self.nodes {
            if node.up.load(Ordering::Acquire) {
                node.cuts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every gateway that is up counts more reconnects than in `before` (it noticed
    /// the cut just made), for at most `limit`; then until every one is ready again. Without
    /// the first wait a gateway that has not noticed yet would look ready.
    pub async fn wait_cut_noticed(&self, before: &[ReconnectCount], limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        loop {
            let now = self.reconnect_counts().await;
            let noticed = now.iter().zip(before).all(|(now, before)| {
                !self.nodes[now.gateway].up.load(Ordering::Acquire)
                    || now.reconnects > before.reconnects
            });
            if noticed || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_all_ready().await
    }

    /// Every gateway's reconnect counter (over all its processes) next to the cuts made.
    pub async fn reconnect_counts(&self) -> Vec<ReconnectCount> {
        let mut counts = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let current = if lock(&node.child).is_some() {
                self.metric(node, "notify_broker_reconnects_total")
                    .await
                    .ok()
                    .map(|value| value as u64)
            } else {
                Some(0)
            };
            let exited = node.reconnects_exited.load(Ordering::Relaxed);
            counts.push(ReconnectCount {
                gateway: node.index,
                reconnects: current
                    .filter(|_| exited < u64::MAX / 2)
                    .map(|current| current + exited),
                cuts: node.cuts.load(Ordering::Relaxed),
            });
        }
        counts
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

/// The checks that failed among `counts`: a gateway whose counter is not exactly the cuts
/// made (more: it dropped its subscription on its own; fewer: a cut went unnoticed).
pub fn reconnect_failures(counts: &[ReconnectCount]) -> Vec<String> {
    counts
        .iter()
        .filter(|count| count.reconnects != Some(count.cuts))
        .map(|count| {
            format!(
                "gateway {} reconnects: {} for {} link cuts",
                count.gateway,
                crate::report::show(count.reconnects),
                count.cuts
            )
        })
        .collect()
}

/// Sum of the samples of metric `name` in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Locks `mutex`, also when a panicking holder poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_every_series_of_one_name_only() {
        let body = "# TYPE notify_broker_reconnects_total counter\n\
                    notify_broker_reconnects_total 3\n\
                    notify_broker_reconnects_total_extra 9\n\
                    notify_connections{region=\"AE\"} 2\n\
                    notify_connections{region=\"FI\"} 5\n";
        assert_eq!(metric_sum(body, "notify_broker_reconnects_total"), 3.0);
        assert_eq!(metric_sum(body, "notify_connections"), 7.0);
        assert_eq!(metric_sum(body, "notify_missing"), 0.0);
        let counts = [
            ReconnectCount {
                gateway: 0,
                reconnects: Some(2),
                cuts: 2,
            },
            ReconnectCount {
                gateway: 1,
                reconnects: Some(5),
                cuts: 2,
            },
            ReconnectCount {
                gateway: 2,
                reconnects: None,
                cuts: 0,
            },
        ];
        let failures = reconnect_failures(&counts);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].contains("gateway 1 reconnects: 5 for 2"),
            "{failures:?}"
        );
    }
}

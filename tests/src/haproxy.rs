//! A real HAProxy in front of gateways, started from the shipped `deploy/haproxy/haproxy.cfg`.
//!
//! The configuration reads its addresses from the environment (`NOTIFY_LB_LISTEN`,
//! `NOTIFY_LB_STATS`, `NOTIFY_GATEWAY_1..3`), so the test runs the operator's file unchanged
//! with free loopback ports. What HAProxy thinks of each gateway (UP, DOWN, sessions routed to
//! it) is read from its stats page as CSV.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, http_client, kill_child, wait_until};

/// Attempts at starting HAProxy when a chosen port was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// The shipped example configuration.
pub fn config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg")
}

/// `haproxy` on the `PATH`, else where Debian installs it (`/usr/sbin` is not on every `PATH`).
fn haproxy_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.exists());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

/// One `server` line's state as HAProxy's stats report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// `gateway1`, `gateway2`, `gateway3`: the config's server names.
    pub name: String,
    /// `UP`, `DOWN`, or a transition such as `UP 1/2`.
    pub status: String,
    /// Sessions HAProxy routed to this server so far (health checks are not sessions).
    pub total_sessions: u64,
    /// Sessions open now.
    pub current_sessions: u64,
    /// The last health check's result, e.g. `L7OK`, `L7STS` (wrong status), `L4CON` (refused).
    pub check_status: String,
}

/// A running `haproxy` process; killed on drop.
#[derive(Debug)]
pub struct HaProxy {
    child: Option<Child>,
    listen: SocketAddr,
    stats: SocketAddr,
}

impl HaProxy {
    /// Starts HAProxy with the shipped configuration in front of `gateways` (gateway1..3) and
    /// waits until its stats page answers.
    pub async fn start(gateways: [SocketAddr; 3]) -> Result<Self> {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_on(free_port(), free_port(), gateways).await {
                Ok(proxy) => return Ok(proxy),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        bail!(
            "haproxy did not start in {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        )
    }

    async fn start_on(
        listen_port: u16,
        stats_port: u16,
        gateways: [SocketAddr; 3],
    ) -> Result<Self> {
        let listen: SocketAddr = ([127, 0, 0, 1], listen_port).into();
        let stats: SocketAddr = ([127, 0, 0, 1], stats_port).into();
        let mut command = Command::new(haproxy_binary());
        command
            .arg("-db")
            .arg("-f")
            .arg(config_path())
            .env("NOTIFY_LB_LISTEN", listen.to_string())
            .env("NOTIFY_LB_STATS", stats.to_string());
        for (index, gateway) in gateways.iter().enumerate() {
            command.env(format!("NOTIFY_GATEWAY_{}", index + 1), gateway.to_string());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting haproxy (scripts/test.sh installs it: apt-get install haproxy)")?;
        let mut proxy = HaProxy {
            child: Some(child),
            listen,
            stats,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = proxy
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                let mut output = String::new();
                if let Some(mut stderr) = proxy.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut output);
                }
                bail!("haproxy exited at start ({status}): {}", output.trim());
            }
            if proxy.servers().await.is_ok() {
                // Its warnings are not needed; keep the pipe drained so it never blocks.
                if let Some(stderr) = proxy.child.as_mut().and_then(|c| c.stderr.take()) {
                    std::thread::spawn(move || {
                        std::io::copy(&mut std::io::BufReader::new(stderr), &mut std::io::sink())
                    });
                }
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("haproxy's stats page on {stats} did not answer within 10 s")
    }

    /// Where clients connect.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// `ws://127.0.0.1:PORT{path_and_query}` through the balancer.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.listen, path_and_query)
    }

    /// The stats page (`http://127.0.0.1:PORT/`).
    pub fn stats_url(&self) -> String {
        format!("http://{}/", self.stats)
    }

    /// Every server of the `gateways` backend, from the stats CSV.
    pub async fn servers(&self) -> Result<Vec<ServerStats>> {
        let csv = http_client()
            .get(format!("{};csv", self.stats_url()))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        parse_stats(&csv)
    }

    /// One server's stats.
    pub async fn server(&self, name: &str) -> Result<ServerStats> {
        self.servers()
            .await?
            .into_iter()
            .find(|server| server.name == name)
            .with_context(|| format!("no server {name} in haproxy's stats"))
    }

    /// Waits until `name`'s status is exactly `status` (`UP` or `DOWN`).
    pub async fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            matches!(self.server(name).await, Ok(server) if server.status == status)
        })
        .await
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// The `gateways` backend's server rows of HAProxy's stats CSV (header `# pxname,svname,…`).
fn parse_stats(csv: &str) -> Result<Vec<ServerStats>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|line| line.strip_prefix("# "))
        .context("stats CSV without its header")?
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|field| *field == name)
            .with_context(|| format!("stats CSV without column {name}"))
    };
    let (proxy, server, status, total, current, check) = (
        column("pxname")?,
        column("svname")?,
        column("status")?,
        column("stot")?,
        column("scur")?,
        column("check_status")?,
    );
    let mut servers = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |index: usize| fields.get(index).copied().unwrap_or("");
        if field(proxy) != "gateways" || matches!(field(server), "FRONTEND" | "BACKEND") {
            continue;
        }
        servers.push(ServerStats {
            name: field(server).to_owned(),
            status: field(status).to_owned(),
            total_sessions: field(total).parse().unwrap_or(0),
            current_sessions: field(current).parse().unwrap_or(0),
            check_status: field(check).to_owned(),
        });
    }
    Ok(servers)
}

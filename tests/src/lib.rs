//! Test harness for the end-to-end suites: real `redis-server`, real binaries, real sockets.
//!
//! Everything here starts a real process or opens a real socket; nothing is mocked.
//!
//! # Finding the binaries
//! `CARGO_BIN_EXE_<name>` is only set for tests inside the binary's own package, and these
//! tests use two binaries from two packages. So the harness looks next to the test executable:
//! a test runs from `target/<profile>/deps/`, and the binaries it needs live in
//! `target/<profile>/`. The README's test command builds them first (`cargo build --bins`);
//! when one is missing the harness says which command to run.
//!
//! # Layout
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port (retried on another
//!   port if the chosen one is taken), restartable on the same port, killed on drop.
//! - [`Gateway`]: a `notify-gateway` child process on a port the kernel picks (read back from
//!   its log), with helpers for HTTP and WebSocket clients; a gateway that dies at start is
//!   reported with its log.
//! - [`run_publish`]: runs `notify-publish` to completion with optional stdin.
//! - [`cluster::RedisCluster`]: a real 3-primary Redis Cluster with a replica each, for the
//!   cluster tests.
//! - [`sentinel`]: a primary, a replica and three `redis-sentinel`s watching them.
//! - [`sse`]: a Server-Sent Events client that parses the stream as a browser does.
//! - [`certs`]: a private CA and the certificates it signs, for the TLS tests; a gateway
//!   serving TLS is [`Gateway::start_tls`], a Redis speaking only TLS is
//!   [`RedisServer::start_tls`].
//! - [`haproxy`]: HAProxy with the shipped `deploy/haproxy/haproxy.cfg` in front of gateways,
//!   and what its stats page says of each.

pub mod certs;
pub mod cluster;
pub mod haproxy;
pub mod sentinel;
pub mod sse;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket client connected to a gateway.
pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Path of a workspace binary, next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (the README's test command does this)",
        path.display()
    );
    path
}

/// SIGKILLs a child process, if any, and reaps it.
pub(crate) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Attempts at starting `redis-server` on a fresh port when the chosen one was taken meanwhile.
const REDIS_START_ATTEMPTS: usize = 5;

/// A real `redis-server` on a free loopback port, with persistence off. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls: Option<RedisServerTls>,
    /// Further `redis-server` arguments (e.g. `--replicaof`), kept for a restart.
    extra_args: Vec<String>,
}

/// The PEM files of a Redis that speaks only TLS ([`RedisServer::start_tls`]).
#[derive(Debug, Clone)]
pub struct RedisServerTls {
    /// The server's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA that signed it, and that client certificates must be signed by.
    pub ca: PathBuf,
    /// When set, the server requires a client certificate (`--tls-auth-clients yes`) and the
    /// harness's own client presents this one (certificate, key).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers PING. A port taken between choosing it
    /// and binding it (another test, another process) is retried on a new port.
    pub async fn start() -> Result<Self> {
        Self::start_on_a_free_port(None, &[]).await
    }

    /// Starts `redis-server` with further arguments (`["--replicaof", "127.0.0.1", "6379"]`),
    /// like [`start`](Self::start).
    pub async fn start_with_args(args: &[&str]) -> Result<Self> {
        Self::start_on_a_free_port(None, args).await
    }

    /// Starts `redis-server` listening only with TLS (`--port 0 --tls-port P`), with the
    /// certificates in `tls`, and waits until it answers over TLS; retried like
    /// [`start`](Self::start).
    pub async fn start_tls(tls: RedisServerTls) -> Result<Self> {
        Self::start_on_a_free_port(Some(tls), &[]).await
    }

    async fn start_on_a_free_port(tls: Option<RedisServerTls>, args: &[&str]) -> Result<Self> {
        let mut failures = Vec::new();
        let extra_args = owned(args);
        for _ in 0..REDIS_START_ATTEMPTS {
            match Self::start_with(free_port(), tls.clone(), extra_args.clone()).await {
                Ok(server) => return Ok(server),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        bail!(
            "redis-server did not start in {REDIS_START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        )
    }

    /// Starts `redis-server` on `port` and waits until *this* child answers (its `INFO`
    /// `process_id` is the child's pid: a different server already on the port does not count).
    /// With `tls`, it listens only with TLS and the check goes over TLS.
    async fn start_with(
        port: u16,
        tls: Option<RedisServerTls>,
        extra_args: Vec<String>,
    ) -> Result<Self> {
        let mut command = Command::new("redis-server");
        match &tls {
            None => command.args(["--port", &port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args([
                    "--tls-auth-clients",
                    if tls.client.is_some() { "yes" } else { "no" },
                ]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(&extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (the README's test command installs it)")?;
        let pid = child.id();
        let mut server = RedisServer {
            child: Some(child),
            port,
            tls,
            extra_args,
        };
        let client = server.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut output = String::new();
                if let Some(mut stdout) = server.child.take().and_then(|mut c| c.stdout.take()) {
                    let _ = std::io::Read::read_to_string(&mut stdout, &mut output);
                }
                let last = output.lines().last().unwrap_or("").to_owned();
                bail!("redis-server on port {port} exited at start ({status}): {last}");
            }
            if Self::answering_pid(&client).await == Some(pid) {
                // Its log is not needed; keep the pipe drained so it never blocks on it.
                if let Some(stdout) = server.child.as_mut().and_then(|c| c.stdout.take()) {
                    std::thread::spawn(move || {
                        std::io::copy(&mut std::io::BufReader::new(stdout), &mut std::io::sink())
                    });
                }
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("redis-server on port {port} did not answer within 10 s")
    }

    /// The `process_id` of the server answering at `client`'s address, if one answers.
    async fn answering_pid(client: &redis::Client) -> Option<u32> {
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await
            .ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://…` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for direct commands (raw `PUBLISH`, `CLIENT KILL`).
    pub fn client(&self) -> redis::Client {
        install_crypto_provider();
        let Some(tls) = &self.tls else {
            return redis::Client::open(self.url()).expect("valid redis url");
        };
        let read = |path: &Path| std::fs::read(path).expect("the test's own PEM file");
        let certificates = redis::TlsCertificates {
            client_tls: tls
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: read(cert),
                    client_key: read(key),
                }),
            root_cert: Some(read(&tls.ca)),
        };
        redis::Client::build_with_tls(self.url(), certificates).expect("valid TLS settings")
    }

    /// A multiplexed connection.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(self.client().get_multiplexed_async_connection().await?)
    }

    /// `PUBLISH channel payload`, returning the number of subscribers that got it.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> Result<i64> {
        let mut connection = self.connection().await?;
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async(&mut connection)
            .await?)
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a
    /// partition that sends no FIN.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let restarted =
            Self::start_with(self.port, self.tls.clone(), self.extra_args.clone()).await?;
        *self = restarted;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// How a gateway process is launched, apart from its flags.
#[derive(Debug, Clone, Copy, Default)]
struct Launch {
    /// Listen on `0.0.0.0` (a non-loopback address) instead of `127.0.0.1`.
    all_interfaces: bool,
    /// Hard open-files limit set through the shell's `ulimit` before exec.
    open_files_limit: Option<u32>,
}

/// Lines of the gateway's log kept for failure messages and [`Gateway::log_lines`].
const KEPT_LOG_LINES: usize = 2000;

/// The gateway's stderr, collected by a reader thread.
type LogLines = Arc<Mutex<VecDeque<String>>>;

/// A fresh `redis-server` and a gateway on it (with `extra` flags), ready (`/readyz` 200).
pub async fn redis_and_gateway(extra: &[&str]) -> (RedisServer, Gateway) {
    let redis = RedisServer::start().await.expect("redis-server");
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    let gateway = Gateway::start(&args).await.expect("gateway");
    assert!(
        gateway.wait_ready_status(200, Duration::from_secs(5)).await,
        "gateway never ready"
    );
    (redis, gateway)
}

/// A `notify-gateway` child process. Killed on drop.
///
/// It is started with `--listen 127.0.0.1:0` and JSON logs; the harness reads the bound
/// address from its `listening` line, so no port is chosen ahead and raced for. A gateway
/// that exits during start is reported with its exit status and log.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    addr: SocketAddr,
    args: Vec<String>,
    /// Set for a gateway serving TLS: the CA its certificate is checked against.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// How it was launched, so a restart launches it the same way.
    launch: Launch,
    log: LogLines,
}

impl Gateway {
    /// Starts a gateway on a free port with `args` (e.g. `["--redis-url", url]`) and waits until
    /// `/healthz` answers. The environment's `NOTIFY_*` variables are cleared so the test
    /// controls every setting.
    pub async fn start(args: &[&str]) -> Result<Self> {
        Self::launch(Launch::default(), None, owned(args), None).await
    }

    /// Starts a gateway serving TLS (`args` carry `--tls-cert`/`--tls-key`) and waits until
    /// `https://…/healthz` answers; its helpers then speak `https://` and `wss://`, trusting
    /// only `tls` (e.g. [`certs::TestCa::client_config`]).
    pub async fn start_tls(args: &[&str], tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        Self::launch(Launch::default(), None, owned(args), Some(tls)).await
    }

    /// Starts a gateway listening on all IPv4 interfaces (`0.0.0.0`, a non-loopback listen
    /// address) on a free port; tests still talk to it over 127.0.0.1.
    pub async fn start_on_all_interfaces(args: &[&str]) -> Result<Self> {
        let launch = Launch {
            all_interfaces: true,
            ..Launch::default()
        };
        Self::launch(launch, None, owned(args), None).await
    }

    /// Starts a gateway whose hard open-files limit is `limit` (through the shell's `ulimit`),
    /// to exercise descriptor exhaustion.
    pub async fn start_with_open_files_limit(limit: u32, args: &[&str]) -> Result<Self> {
        let launch = Launch {
            open_files_limit: Some(limit),
            ..Launch::default()
        };
        Self::launch(launch, None, owned(args), None).await
    }

    async fn launch(
        launch: Launch,
        port: Option<u16>,
        args: Vec<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self> {
        let mut command = match launch.open_files_limit {
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary("notify-gateway"));
                shell
            }
            None => Command::new(binary("notify-gateway")),
        };
        for (key, _) in std::env::vars() {
            if key.starts_with("NOTIFY_") {
                command.env_remove(&key);
            }
        }
        let host = if launch.all_interfaces {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut child = command
            .arg("--listen")
            .arg(format!("{host}:{}", port.unwrap_or(0)))
            .args(&args)
            .env("NOTIFY_LOG_FORMAT", "json")
            .env("RUST_LOG", "notify=debug,info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting notify-gateway")?;
        let stderr = child.stderr.take().context("gateway stderr")?;
        let (log, listening) = collect_log(stderr);
        let mut gateway = Gateway {
            child: Some(child),
            addr: ([127, 0, 0, 1], 0).into(),
            args,
            tls,
            launch,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let bound = loop {
            if let Ok(bound) = listening.try_recv() {
                break bound;
            }
            let exited = gateway
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                gateway.child = None;
                // Let the reader thread take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "notify-gateway exited at start ({status}); its log:\n{}",
                    gateway.log_lines().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "notify-gateway did not log its listen address within 10 s; its log:\n{}",
                    gateway.log_lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        gateway.addr = ([127, 0, 0, 1], bound.port()).into();
        let healthy = wait_until(Duration::from_secs(10), || async {
            matches!(gateway.get("/healthz").await, Ok((200, _)))
        })
        .await;
        if !healthy {
            bail!(
                "notify-gateway on {} did not answer /healthz within 10 s; its log:\n{}",
                gateway.addr,
                gateway.log_lines().join("\n")
            );
        }
        Ok(gateway)
    }

    /// The gateway's log lines so far (JSON, one object per line; the most recent
    /// [`KEPT_LOG_LINES`]).
    pub fn log_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }
    /// Its listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT{path_and_query}` (`wss://` when it serves TLS).
    pub fn ws_url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.addr, path_and_query)
    }

    /// An HTTP client for this gateway: trusts its test CA when it serves TLS.
    pub fn http(&self) -> reqwest::Client {
        match &self.tls {
            None => http_client(),
            Some(tls) => {
                install_crypto_provider();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
                    .build()
                    .expect("https client")
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `GET path`, returning status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let response = self
            .http()
            .get(format!("{}{}", self.http_url(), path))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Waits until `/readyz` answers `status` (200 or 503).
    pub async fn wait_ready_status(&self, status: u16, timeout: Duration) -> bool {
        wait_until(timeout, || async {
            matches!(self.get("/readyz").await, Ok((code, _)) if code == status)
        })
        .await
    }

    /// The value of one Prometheus sample line, e.g. `notify_bad_payloads_total{reason="not_json"}`,
    /// summed over every line whose name and labels start with `prefix`.
    pub async fn metric(&self, prefix: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics").await?;
        Ok(body
            .lines()
            .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Opens a WebSocket to `path_and_query` (e.g. `/?region=AE`).
    pub async fn connect(&self, path_and_query: &str) -> Result<WsClient> {
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            self.ws_url(path_and_query),
            None,
            false,
            connector,
        )
        .await
        .with_context(|| format!("connecting to {path_and_query}"))?;
        Ok(socket)
    }

    /// Opens a WebSocket and waits until the gateway counts it, so a message published next
    /// is guaranteed to reach it.
    pub async fn connect_counted(&self, path_and_query: &str, region: &str) -> Result<WsClient> {
        let before = self.connections(region).await?;
        let socket = self.connect(path_and_query).await?;
        let counted = wait_until(Duration::from_secs(5), || async {
            self.connections(region).await.unwrap_or(0.0) > before
        })
        .await;
        if !counted {
            bail!("gateway did not count the connection to {region}");
        }
        Ok(socket)
    }

    /// Connections the gateway reports for `region`.
    pub async fn connections(&self, region: &str) -> Result<f64> {
        self.metric(&format!("notify_connections{{region=\"{region}\"}}"))
            .await
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Freezes the gateway (SIGSTOP): its sockets stay open, nothing is read or handled.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen gateway (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to exit, up to `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kills and starts it again on the same port with the same arguments.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let port = self.addr.port();
        let args = std::mem::take(&mut self.args);
        let tls = self.tls.take();
        *self = Self::launch(self.launch, Some(port), args, tls).await?;
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// Reads the gateway's stderr on a thread until it closes: keeps the last lines, echoes them
/// when `NOTIFY_TEST_LOGS` is set, and sends the address from the `listening` line.
fn collect_log(stderr: ChildStderr) -> (LogLines, mpsc::Receiver<SocketAddr>) {
    let log: LogLines = Arc::default();
    let (listening, bound) = mpsc::channel();
    let echo = std::env::var_os("NOTIFY_TEST_LOGS").is_some();
    let kept = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::io::Result::ok)
        {
            if echo {
                eprintln!("{line}");
            }
            if let Some(addr) = listen_address(&line) {
                let _ = listening.send(addr);
            }
            if let Ok(mut lines) = kept.lock() {
                if lines.len() == KEPT_LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        }
    });
    (log, bound)
}

/// The `listen` field of the gateway's JSON `listening` log line.
fn listen_address(line: &str) -> Option<SocketAddr> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    entry["fields"]["listen"].as_str()?.parse().ok()
}

/// An HTTP client for plain `http://` test requests (it trusts no certificate: a gateway
/// serving TLS is reached through [`Gateway::http`]). Cheap to build: its TLS settings are
/// made once, where a default client would load the system's roots every time (tens of
/// milliseconds, enough to slow a test that publishes a thousand messages tenfold).
pub fn http_client() -> reqwest::Client {
    static NO_ROOTS: OnceLock<rustls::ClientConfig> = OnceLock::new();
    install_crypto_provider();
    let tls = NO_ROOTS.get_or_init(|| {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(tls.clone())
        .build()
        .expect("http client")
}

/// reqwest and redis use rustls without choosing a crypto provider; ring is the one this
/// workspace builds. An error only means one is installed already.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the next text frame within `timeout`, skipping pings/pongs. `None` on timeout.
pub async fn next_text(socket: &mut WsClient, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??;
        match frame.ok()? {
            Message::Text(text) => return Some(text.to_string()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Reads the next text frame as JSON within `timeout`.
pub async fn next_json(socket: &mut WsClient, timeout: Duration) -> Option<serde_json::Value> {
    let text = next_text(socket, timeout).await?;
    serde_json::from_str(&text).ok()
}

/// Asserts the socket stays open and quiet for `quiet`: pings and pongs may arrive; a text or
/// binary message, a close frame, an error or the end of the stream fails the check (a dead
/// socket is not silence).
pub async fn expect_silence(socket: &mut WsClient, quiet: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, socket.next()).await else {
            return Ok(());
        };
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(close))) => {
                bail!("expected silence, but the socket was closed: {close:?}")
            }
            Some(Ok(other)) => bail!("expected no message, got {other:?}"),
            Some(Err(error)) => bail!("expected silence, but the socket failed: {error}"),
            None => bail!("expected silence, but the socket ended"),
        }
    }
}

/// The `notify-publish` binary, with no `NOTIFY_*` variable of the test's environment.
pub fn publish_command() -> Command {
    let mut command = Command::new(binary("notify-publish"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") {
            command.env_remove(&key);
        }
    }
    command
}

/// Runs `notify-publish` with `args` and optional stdin; returns its output.
pub fn run_publish(args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = publish_command()
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting notify-publish")?;
    // Written from its own thread while the output is read: a large input whose replies
    // fill the stdout pipe would otherwise block both processes.
    let writer = match stdin {
        Some(input) => {
            let mut pipe = child.stdin.take().context("stdin pipe")?;
            let input = input.to_owned();
            Some(std::thread::spawn(move || pipe.write_all(input.as_bytes())))
        }
        None => None,
    };
    let output = child.wait_with_output()?;
    if let Some(writer) = writer {
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the stdin writer panicked"))??;
    }
    Ok(output)
}

/// Resident memory of a process, from `/proc/PID/status`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A WebSocket upgrade request for region AE, written by hand for clients that misbehave at
/// the byte level (over plain TCP or inside TLS).
pub const RAW_UPGRADE: &[u8] = b"GET /?region=AE HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// 512 masked client pings (mask key 0) with the largest control payload, 125 bytes: one
/// write of a client that floods pings.
pub fn ping_flood_chunk() -> Vec<u8> {
    let mut pings = Vec::new();
    for _ in 0..512 {
        pings.extend_from_slice(&[0x89, 0x80 | 125, 0, 0, 0, 0]);
        pings.extend_from_slice(&[b'p'; 125]);
    }
    pings
}

/// Reads an HTTP response head (through the blank line) from `stream`.
pub async fn read_response_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("response head"));
    }
    head
}

/// A seed-shaped `new_trending` payload, as the PHP publisher would produce it.
pub fn seed_payload(region: &str, video_id: &str, title: &str) -> String {
    let rtl = matches!(region, "AE" | "IL");
    serde_json::json!({
        "event": "new_trending",
        "region": region,
        "video_id": video_id,
        "title": title,
        "thumbnail": format!("https://i.ytimg.com/vi/{video_id}/hqdefault.jpg"),
        "channel": "Channel",
        "rtl": rtl,
        "ts": 1_764_290_000,
    })
    .to_string()
}

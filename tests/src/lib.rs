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
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port, restartable on the
//!   same port, killed on drop.
//! - [`Gateway`]: a `notify-gateway` child process with helpers for HTTP and WebSocket clients.
//! - [`run_publish`]: runs `notify-publish` to completion with optional stdin.
//! - [`certs`]: a private CA and the certificates it signs, for the TLS tests; a gateway
//!   serving TLS is [`Gateway::start_tls`], a Redis speaking only TLS is
//!   [`RedisServer::start_tls`].

pub mod certs;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
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
fn kill_child(child: &mut Option<Child>) {
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

/// A real `redis-server` on a free loopback port, with persistence off. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls: Option<RedisServerTls>,
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
    /// Starts `redis-server` and waits until it answers PING.
    pub async fn start() -> Result<Self> {
        Self::start_on(free_port()).await
    }

    /// Starts `redis-server` listening only with TLS (`--port 0 --tls-port P`), with the
    /// certificates in `tls`, and waits until it answers PING over TLS.
    pub async fn start_tls(tls: RedisServerTls) -> Result<Self> {
        Self::start_with(free_port(), Some(tls)).await
    }

    async fn start_on(port: u16) -> Result<Self> {
        Self::start_with(port, None).await
    }

    async fn start_with(port: u16, tls: Option<RedisServerTls>) -> Result<Self> {
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (the README's test command installs it)")?;
        let server = RedisServer {
            child: Some(child),
            port,
            tls,
        };
        let client = server.client();
        let up = wait_until(Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        if !up {
            bail!("redis-server on port {port} did not answer PING within 10 s");
        }
        Ok(server)
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
        let restarted = Self::start_with(self.port, self.tls.clone()).await?;
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

/// A `notify-gateway` child process. Killed on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    addr: SocketAddr,
    args: Vec<String>,
    /// Set for a gateway serving TLS: the CA its certificate is checked against.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Gateway {
    /// Starts a gateway on a free port with `args` (e.g. `["--redis-url", url]`) and waits until
    /// `/healthz` answers. The environment's `NOTIFY_*` variables are cleared so the test
    /// controls every setting.
    pub async fn start(args: &[&str]) -> Result<Self> {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        Self::start_on(free_port(), args).await
    }

    /// Starts a gateway serving TLS (`args` carry `--tls-cert`/`--tls-key`) and waits until
    /// `https://…/healthz` answers; its helpers then speak `https://` and `wss://`, trusting
    /// only `tls` (e.g. [`certs::TestCa::client_config`]).
    pub async fn start_tls(args: &[&str], tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        Self::start_with(free_port(), args, Some(tls)).await
    }

    /// Starts a gateway listening on all IPv4 interfaces (`0.0.0.0`, a non-loopback listen
    /// address) on a free port; tests still talk to it over 127.0.0.1.
    pub async fn start_on_all_interfaces(args: &[&str]) -> Result<Self> {
        let mut args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        args.insert(0, "all-interfaces".into());
        Self::start_on(free_port(), args).await
    }

    /// Starts a gateway whose hard open-files limit is `limit` (through the shell's `ulimit`),
    /// to exercise descriptor exhaustion.
    pub async fn start_with_open_files_limit(limit: u32, args: &[&str]) -> Result<Self> {
        let mut args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        args.insert(0, format!("ulimit:{limit}"));
        Self::start_on(free_port(), args).await
    }

    async fn start_on(port: u16, args: Vec<String>) -> Result<Self> {
        Self::start_with(port, args, None).await
    }

    async fn start_with(
        port: u16,
        args: Vec<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let all_interfaces = args.first().is_some_and(|first| first == "all-interfaces");
        let args = if all_interfaces {
            args[1..].to_vec()
        } else {
            args
        };
        let (limit, args): (Option<String>, Vec<String>) = match args.first() {
            Some(first) if first.starts_with("ulimit:") => (
                Some(first.trim_start_matches("ulimit:").to_owned()),
                args[1..].to_vec(),
            ),
            _ => (None, args),
        };
        let mut command = match &limit {
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
        let listen = if all_interfaces {
            format!("0.0.0.0:{port}")
        } else {
            addr.to_string()
        };
        let child = command
            .arg("--listen")
            .arg(listen)
            .args(&args)
            .env("RUST_LOG", "notify=debug,info")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("NOTIFY_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .context("starting notify-gateway")?;
        let mut args = args;
        if let Some(limit) = limit {
            args.insert(0, format!("ulimit:{limit}"));
        }
        if all_interfaces {
            args.insert(0, "all-interfaces".into());
        }
        let gateway = Gateway {
            child: Some(child),
            addr,
            args,
            tls,
        };
        let healthy = wait_until(Duration::from_secs(10), || async {
            matches!(gateway.get("/healthz").await, Ok((200, _)))
        })
        .await;
        if !healthy {
            bail!("notify-gateway on {addr} did not answer /healthz within 10 s");
        }
        Ok(gateway)
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
        install_crypto_provider();
        match &self.tls {
            None => http_client(),
            Some(tls) => reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
                .build()
                .expect("https client"),
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
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
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
        *self = Self::start_with(port, args, tls).await?;
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A shared HTTP client for test requests.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
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

/// Asserts nothing but control frames arrive within `quiet`.
pub async fn expect_silence(socket: &mut WsClient, quiet: Duration) -> Result<()> {
    if let Some(text) = next_text(socket, quiet).await {
        bail!("expected no message, got {text}");
    }
    Ok(())
}

/// Runs `notify-publish` with `args` and optional stdin; returns its output.
pub fn run_publish(args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut command = Command::new(binary("notify-publish"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") {
            command.env_remove(&key);
        }
    }
    let mut child = command
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
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
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

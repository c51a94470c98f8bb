//! TLS end to end: the gateway serving `https://` and `wss://` with a certificate made by the
//! test and reloaded while it runs, a `redis-server` that speaks only TLS, and
//! `notify-publish` over both.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use notify_tests::certs::{CertDir, Issued, TestCa, Usage};
use notify_tests::{
    binary, next_json, run_publish, seed_payload, wait_until, Gateway, RedisServer, RedisServerTls,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

/// A CA, the gateway's first certificate (serial 1) written to `dir`, and the paths.
struct GatewayCerts {
    ca: TestCa,
    dir: CertDir,
    first: Issued,
    cert: String,
    key: String,
}

fn gateway_certs() -> GatewayCerts {
    let ca = TestCa::new("notify test CA").unwrap();
    let dir = CertDir::new().unwrap();
    let first = ca.issue("gateway-1", 1, Usage::Server).unwrap();
    let (cert, key) = dir.write_pair("gateway", &first).unwrap();
    GatewayCerts {
        ca,
        dir,
        first,
        cert: cert.to_string_lossy().into_owned(),
        key: key.to_string_lossy().into_owned(),
    }
}

async fn tls_gateway(certs: &GatewayCerts, extra: &[&str]) -> Gateway {
    let mut args = vec!["--tls-cert", &certs.cert, "--tls-key", &certs.key];
    args.extend_from_slice(extra);
    Gateway::start_tls(&args, certs.ca.client_config())
        .await
        .expect("TLS gateway")
}

/// The leaf certificate a new TLS connection to `gateway` is shown.
async fn presented_cert(
    gateway: &Gateway,
    tls: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(gateway.addr()).await.unwrap();
    let server_name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = stream.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    session.peer_certificates().expect("a certificate")[0].clone()
}

async fn publish_over_https(gateway: &Gateway, region: &str, video_id: &str) -> u16 {
    gateway
        .http()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .body(seed_payload(region, video_id, "TLS title"))
        .send()
        .await
        .expect("POST over https")
        .status()
        .as_u16()
}

#[tokio::test]
async fn wss_client_receives_a_notification_published_over_https() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &[]).await;
    assert_eq!(gateway.get("/healthz").await.unwrap(), (200, "ok\n".into()));
    assert!(gateway.http_url().starts_with("https://"));

    let mut client = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    assert_eq!(publish_over_https(&gateway, "FI", "tls1").await, 200);
    let message = next_json(&mut client, WAIT)
        .await
        .expect("delivered over wss");
    assert_eq!(message["video_id"], "tls1");

    // A client that does not trust the test CA is refused.
    let strangers = TestCa::new("another CA").unwrap().client_config();
    let tcp = TcpStream::connect(gateway.addr()).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(strangers)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "an unknown CA must not verify");
}

#[tokio::test]
async fn replaced_certificate_serves_new_connections_while_open_ones_stay() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &["--tls-reload-interval", "200ms"]).await;
    let tls = certs.ca.client_config();
    assert_eq!(
        presented_cert(&gateway, tls.clone()).await,
        certs.first.cert_der()
    );
    let mut open = gateway.connect_counted("/?region=AE", "AE").await.unwrap();

    let second = certs.ca.issue("gateway-2", 2, Usage::Server).unwrap();
    certs.dir.write_pair("gateway", &second).unwrap();
    let reloaded = wait_until(WAIT, || async {
        presented_cert(&gateway, tls.clone()).await == second.cert_der()
    })
    .await;
    assert!(reloaded, "the new certificate was never served");

    // The connection opened under the first certificate is still served.
    assert_eq!(
        publish_over_https(&gateway, "AE", "after-reload").await,
        200
    );
    let message = next_json(&mut open, WAIT)
        .await
        .expect("old connection still receives");
    assert_eq!(message["video_id"], "after-reload");
    assert_eq!(
        gateway
            .metric("notify_tls_reloads_total{result=\"ok\"}")
            .await
            .unwrap(),
        1.0
    );
    // And new wss connections work under the new one.
    let mut fresh = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    assert_eq!(publish_over_https(&gateway, "AE", "fresh").await, 200);
    assert_eq!(
        next_json(&mut fresh, WAIT).await.unwrap()["video_id"],
        "fresh"
    );
    assert_eq!(
        next_json(&mut open, WAIT).await.unwrap()["video_id"],
        "fresh"
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let certs = gateway_certs();
    // File polling so slow it cannot be what reloads here.
    let gateway = tls_gateway(&certs, &["--tls-reload-interval", "1h"]).await;
    let tls = certs.ca.client_config();
    let second = certs.ca.issue("gateway-2", 2, Usage::Server).unwrap();
    certs.dir.write_pair("gateway", &second).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        presented_cert(&gateway, tls.clone()).await,
        certs.first.cert_der(),
        "reloaded without SIGHUP"
    );

    let pid = gateway.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let reloaded = wait_until(WAIT, || async {
        presented_cert(&gateway, tls.clone()).await == second.cert_der()
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload the certificate");
    assert_eq!(
        gateway.get("/healthz").await.unwrap().0,
        200,
        "SIGHUP is not fatal"
    );
}

#[tokio::test]
async fn a_bad_new_certificate_keeps_the_old_one() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &["--tls-reload-interval", "100ms"]).await;
    let tls = certs.ca.client_config();
    let errors = "notify_tls_reloads_total{result=\"error\"}";

    // Not PEM at all.
    certs
        .dir
        .write("gateway.crt", "not a certificate\n")
        .unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.metric(errors).await.unwrap_or(0.0) >= 1.0
        })
        .await,
        "the bad file was never tried"
    );
    // Several polling periods later the first certificate is still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        presented_cert(&gateway, tls.clone()).await,
        certs.first.cert_der()
    );

    // A valid certificate whose key is another one's.
    let second = certs.ca.issue("gateway-2", 2, Usage::Server).unwrap();
    certs.dir.write("gateway.crt", &second.cert_pem).unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.metric(errors).await.unwrap_or(0.0) >= 2.0
        })
        .await,
        "the mismatched pair was never tried"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        presented_cert(&gateway, tls.clone()).await,
        certs.first.cert_der()
    );
    assert_eq!(
        gateway
            .metric("notify_tls_reloads_total{result=\"ok\"}")
            .await
            .unwrap(),
        0.0
    );

    // Then its key arrives: the pair loads.
    certs.dir.write("gateway.key", &second.key_pem).unwrap();
    let reloaded = wait_until(WAIT, || async {
        presented_cert(&gateway, tls.clone()).await == second.cert_der()
    })
    .await;
    assert!(reloaded, "the good pair was never loaded");
}

#[tokio::test]
async fn plain_http_and_silent_sockets_on_the_tls_port_fail_cleanly() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &["--handshake-timeout", "1s"]).await;

    // Plain HTTP: the connection is closed without an HTTP answer.
    let mut plain = TcpStream::connect(gateway.addr()).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "plain HTTP connection left open");
    assert!(!answer.starts_with(b"HTTP/"), "answered in plain text");

    // A socket that never starts its handshake is closed after --handshake-timeout.
    let mut silent = TcpStream::connect(gateway.addr()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, silent.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "silent socket not closed: {closed:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );

    assert_eq!(
        gateway
            .metric("notify_tls_handshake_failures_total{reason=\"timeout\"}")
            .await
            .unwrap(),
        1.0
    );
    assert!(
        gateway
            .metric("notify_tls_handshake_failures_total{reason=\"error\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // The gateway keeps serving TLS clients.
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    assert_eq!(publish_over_https(&gateway, "DK", "still-up").await, 200);
    assert_eq!(
        next_json(&mut client, WAIT).await.unwrap()["video_id"],
        "still-up"
    );
}

#[test]
fn tls_flags_must_come_together_and_load() {
    let certs = gateway_certs();
    let run = |args: &[&str]| {
        Command::new(binary("notify-gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("NOTIFY_TLS_CERT")
            .env_remove("NOTIFY_TLS_KEY")
            .stdout(Stdio::null())
            .output()
            .unwrap()
    };
    for args in [["--tls-cert", &certs.cert], ["--tls-key", &certs.key]] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--tls-"), "{stderr}");
    }
    // Both given, but the certificate file is not one: a configuration error, found before
    // the start, in one line.
    let bad = certs.dir.write("bad.crt", "garbage").unwrap();
    let bad = bad.to_string_lossy();
    let output = run(&["--tls-cert", &bad, "--tls-key", &certs.key]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: --tls-cert/--tls-key: ") && stderr.contains("bad.crt"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// The flags of one valid notification for `region`.
fn notification_flags(region: &str, video_id: &str) -> Vec<String> {
    [
        "--region",
        region,
        "--video-id",
        video_id,
        "--title",
        "over TLS",
        "--thumbnail",
        "https://i.ytimg.com/vi/x/hqdefault.jpg",
        "--channel",
        "c",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs `notify-publish` off the async runtime with `args` then the flags of one message.
async fn publish_one(args: Vec<String>, region: &str, video_id: &str) -> std::process::Output {
    let mut args = args;
    args.extend(notification_flags(region, video_id));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_publish(&args, None).unwrap()
    })
    .await
    .unwrap()
}

/// A Redis that speaks only TLS with a certificate from `ca`; with `client` it also requires
/// a client certificate, and this one is written for the clients.
struct TlsRedis {
    server: RedisServer,
    ca_file: String,
    /// (certificate, key) files of a client certificate signed by the same CA.
    client: (String, String),
    _dir: CertDir,
}

async fn tls_redis(require_client_cert: bool) -> TlsRedis {
    let ca = TestCa::new("redis test CA").unwrap();
    let dir = CertDir::new().unwrap();
    let ca_file = dir.write("ca.crt", &ca.cert_pem).unwrap();
    let (cert, key) = dir
        .write_pair("redis", &ca.issue("redis", 10, Usage::Server).unwrap())
        .unwrap();
    let (client_cert, client_key) = dir
        .write_pair("client", &ca.issue("publisher", 11, Usage::Client).unwrap())
        .unwrap();
    let server = RedisServer::start_tls(RedisServerTls {
        cert,
        key,
        ca: ca_file.clone(),
        client: require_client_cert.then(|| (client_cert.clone(), client_key.clone())),
    })
    .await
    .expect("redis-server with TLS");
    TlsRedis {
        server,
        ca_file: arg(&ca_file),
        client: (arg(&client_cert), arg(&client_key)),
        _dir: dir,
    }
}

fn arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn rediss_from_the_cli_through_the_gateway_to_a_websocket() {
    let redis = tls_redis(false).await;
    let url = redis.server.url();
    assert!(url.starts_with("rediss://"));
    let gateway = Gateway::start(&["--redis-url", &url, "--redis-ca-cert", &redis.ca_file])
        .await
        .unwrap();
    assert!(
        gateway.wait_ready_status(200, WAIT).await,
        "gateway never subscribed over TLS"
    );
    let mut client = gateway.connect_counted("/?region=CZ", "CZ").await.unwrap();

    let args = vec![
        "--redis-url".into(),
        url.clone(),
        "--redis-ca-cert".into(),
        redis.ca_file.clone(),
    ];
    let output = publish_one(args, "CZ", "rediss1").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("reached 1 gateway node"), "{stdout}");
    assert_eq!(
        next_json(&mut client, WAIT).await.expect("delivered")["video_id"],
        "rediss1"
    );
}

#[tokio::test]
async fn redis_that_requires_client_certificates() {
    let redis = tls_redis(true).await;
    let url = redis.server.url();
    let (cert, key) = &redis.client;
    let with_cert = [
        "--redis-url",
        &url,
        "--redis-ca-cert",
        &redis.ca_file,
        "--redis-client-cert",
        cert,
        "--redis-client-key",
        key,
    ];
    let gateway = Gateway::start(&with_cert).await.unwrap();
    assert!(
        gateway.wait_ready_status(200, WAIT).await,
        "client certificate not accepted"
    );
    let mut client = gateway.connect_counted("/?region=BE", "BE").await.unwrap();
    let output = publish_one(with_cert.map(str::to_owned).to_vec(), "BE", "mtls1").await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        next_json(&mut client, WAIT).await.expect("delivered")["video_id"],
        "mtls1"
    );

    // Without a client certificate: the CLI is refused (69) and a gateway never gets ready.
    let without = vec![
        "--redis-url".into(),
        url.clone(),
        "--redis-ca-cert".into(),
        redis.ca_file.clone(),
    ];
    let output = publish_one(without, "BE", "nocert").await;
    assert_eq!(
        output.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let refused = Gateway::start(&["--redis-url", &url, "--redis-ca-cert", &redis.ca_file])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused.get("/readyz").await.unwrap().0, 503);
    // The first gateway is still subscribed.
    assert_eq!(gateway.get("/readyz").await.unwrap().0, 200);
}

/// A gateway child whose log goes to a file, killed on drop.
struct LoggedGateway {
    child: std::process::Child,
    log: std::path::PathBuf,
    http: String,
}

impl Drop for LoggedGateway {
    fn drop(&mut self) {
        if let Err(error) = self.child.kill() {
            eprintln!("killing the gateway: {error}");
        }
        let _reaped = self.child.wait();
    }
}

#[tokio::test]
async fn a_wrong_redis_ca_fails_clearly() {
    let redis = tls_redis(false).await;
    let url = redis.server.url();
    let dir = CertDir::new().unwrap();
    let stranger = dir
        .write("other-ca.crt", &TestCa::new("other CA").unwrap().cert_pem)
        .unwrap();
    let stranger = arg(&stranger);

    let args = vec![
        "--redis-url".into(),
        url.clone(),
        "--redis-ca-cert".into(),
        stranger.clone(),
    ];
    let output = publish_one(args, "GB", "wrong-ca").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("certificate"),
        "names the TLS failure: {stderr}"
    );

    let port = notify_tests::free_port();
    let log = dir.path().join("gateway.log");
    let child = Command::new(binary("notify-gateway"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &url, "--redis-ca-cert", &stranger])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let gateway = LoggedGateway {
        child,
        log,
        http: format!("http://127.0.0.1:{port}"),
    };
    let http = notify_tests::http_client();
    let logged = wait_until(WAIT, || async {
        std::fs::read_to_string(&gateway.log).is_ok_and(|text| text.contains("UnknownIssuer"))
    })
    .await;
    let text = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(logged, "the log does not name the TLS failure:\n{text}");
    assert!(text.contains("Redis subscription lost"), "{text}");
    let ready = http
        .get(format!("{}/readyz", gateway.http))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
}

#[tokio::test]
async fn cli_publishes_to_an_https_gateway_with_a_private_ca() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &[]).await;
    let mut client = gateway.connect_counted("/?region=CH", "CH").await.unwrap();
    let ca_file = arg(&certs.dir.write("ca.crt", &certs.ca.cert_pem).unwrap());
    let url = gateway.http_url();

    let trusted = vec![
        "--gateway-url".into(),
        url.clone(),
        "--ca-cert".into(),
        ca_file,
    ];
    let output = publish_one(trusted, "CH", "https1").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("via {url}")), "{stdout}");
    assert_eq!(
        next_json(&mut client, WAIT).await.expect("delivered")["video_id"],
        "https1"
    );

    // Without the CA the gateway's certificate is not trusted: unavailable, and says why.
    let output = publish_one(vec!["--gateway-url".into(), url], "CH", "untrusted").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test]
async fn bench_connects_over_wss_with_its_ca() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &[]).await;
    let ca_file = arg(&certs.dir.write("ca.crt", &certs.ca.cert_pem).unwrap());
    let pid = gateway.pid().unwrap().to_string();
    let gateway_url = format!("https://{}", gateway.addr());
    let output = tokio::process::Command::new(binary("notify-bench"))
        .args(["idle", "--clients", "20", "--timeout", "30s"])
        .args([
            "--gateway",
            &gateway_url,
            "--tls-ca",
            &ca_file,
            "--gateway-pid",
            &pid,
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(report["connected"], 20, "{report}");
    assert_eq!(report["handshake_failures"], 0, "{report}");
}

/// Opens `wss://…/?region=FI` from `127.0.0.9` (the trusted proxy), sending `prefix` in the
/// clear before the TLS handshake, as a load balancer does. `Err` holds the HTTP status of a
/// refusal, or 0 when the connection failed before any HTTP answer.
async fn wss_through_proxy(
    gateway: &Gateway,
    tls: Arc<rustls::ClientConfig>,
    prefix: &[u8],
) -> Result<WebSocketStream<TlsStream<TcpStream>>, (u16, String)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 9], 0)))
        .expect("binding 127.0.0.9");
    let mut tcp = socket.connect(gateway.addr()).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|error| (0, error.to_string()))?;
    match tokio_tungstenite::client_async(gateway.ws_url("/?region=FI"), stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(error) => Err((0, error.to_string())),
    }
}

#[tokio::test]
async fn a_proxy_header_comes_before_the_tls_handshake() {
    let certs = gateway_certs();
    let gateway = tls_gateway(
        &certs,
        &[
            "--trusted-proxies",
            "127.0.0.9",
            "--proxy-protocol",
            "--max-connections-per-ip",
            "1",
        ],
    )
    .await;
    let tls = certs.ca.client_config();
    let proxy_v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 4711 443\r\n");

    // Held open: each counts against its address's cap.
    let mut held = Vec::new();
    held.push(
        wss_through_proxy(&gateway, tls.clone(), proxy_v1("198.51.100.1").as_bytes())
            .await
            .expect("a client named by the PROXY header, over TLS"),
    );
    // The header's address is the one the per-address cap counts, not the proxy's.
    let (status, body) =
        wss_through_proxy(&gateway, tls.clone(), proxy_v1("198.51.100.1").as_bytes())
            .await
            .expect_err("the same client again");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("198.51.100.1"), "{body}");
    held.push(
        wss_through_proxy(&gateway, tls.clone(), proxy_v1("198.51.100.2").as_bytes())
            .await
            .expect("another client behind the same proxy"),
    );

    // From the proxy, TLS without a header first is refused before any HTTP.
    let (status, _) = wss_through_proxy(&gateway, tls, b"")
        .await
        .expect_err("no PROXY header");
    assert_eq!(status, 0);
    assert_eq!(
        gateway
            .metric("notify_proxy_header_errors_total")
            .await
            .unwrap(),
        1.0
    );
}

/// A TLS client that sends pings as fast as it can and never reads the pongs is cut within the
/// write timeout, as on plain TCP: the pongs back up, the flush stays pending, and reads that
/// are always ready must not keep the write deadline from firing.
#[tokio::test]
async fn a_tls_ping_flood_that_never_reads_is_cut() {
    let certs = gateway_certs();
    let gateway = tls_gateway(&certs, &["--write-timeout", "1s"]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gateway.addr()).await.unwrap();
    let server_name = ServerName::try_from("127.0.0.1").unwrap();
    let mut flooder = tokio_rustls::TlsConnector::from(certs.ca.client_config())
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    flooder.write_all(notify_tests::RAW_UPGRADE).await.unwrap();
    let head = notify_tests::read_response_head(&mut flooder).await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let pings = notify_tests::ping_flood_chunk();
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0usize;
    let cut = loop {
        match tokio::time::timeout_at(deadline, flooder.write_all(&pings)).await {
            Ok(Ok(())) => sent += pings.len(),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    assert!(
        cut,
        "the flooding TLS client was not cut within 10 s ({} MB of pings sent)",
        sent / 1_000_000
    );
    assert!(
        gateway
            .metric("notify_slow_client_disconnects_total")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "cut after {:?}, not counted as a slow consumer",
        started.elapsed()
    );
}

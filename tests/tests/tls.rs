//! TLS end to end: the gateway serving `https://` and `wss://` with a certificate made by the
//! test and reloaded while it runs, a `redis-server` that speaks only TLS, and
//! `notify-publish` over both.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use notify_tests::certs::{CertDir, Issued, TestCa, Usage};
use notify_tests::{binary, next_json, seed_payload, wait_until, Gateway};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    // Both given, but the certificate file is not one: a clear startup error.
    let bad = certs.dir.write("bad.crt", "garbage").unwrap();
    let bad = bad.to_string_lossy();
    let output = run(&["--tls-cert", &bad, "--tls-key", &certs.key]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loading the TLS certificate") && stderr.contains("bad.crt"),
        "{stderr}"
    );
}

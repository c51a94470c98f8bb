//! Browser-facing limits against the real gateway binary: allowed origins, connections and
//! handshake rate per client address, trusted proxies, security headers and the admin port.
//!
//! Clients bind their sockets to different loopback source addresses (127.0.0.2, …) before
//! connecting, so one gateway sees several client addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use notify_tests::{free_port, http_client, next_json, seed_payload, wait_until, Gateway};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TcpStream>;

/// An HTTP answer that was not `101 Switching Protocols` (status 0: no HTTP answer at all).
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// Opens a WebSocket to `/?region=FI` from source address `127.0.0.{source}` with extra
/// request `headers`.
async fn handshake(
    gateway: &Gateway,
    source: u8,
    headers: &[(&'static str, &str)],
) -> Result<Socket, Refused> {
    handshake_after(gateway, source, b"", headers).await
}

/// A TCP connection to `gateway` from `127.0.0.{source}`.
async fn connect_from(gateway: &Gateway, source: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, source), 0)))
        .expect("binding a loopback source address");
    socket.connect(gateway.addr()).await.expect("TCP connect")
}

/// Like [`handshake`], sending `prefix` (a PROXY header) before the request.
async fn handshake_after(
    gateway: &Gateway,
    source: u8,
    prefix: &[u8],
    headers: &[(&'static str, &str)],
) -> Result<Socket, Refused> {
    let mut stream = connect_from(gateway, source).await;
    stream.write_all(prefix).await.expect("sending the prefix");
    let mut request = gateway
        .ws_url("/?region=FI")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_owned()),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(error) => Err(Refused {
            status: 0,
            retry_after: None,
            body: error.to_string(),
        }),
    }
}

async fn rejected(gateway: &Gateway, reason: &str) -> f64 {
    gateway
        .metric(&format!(
            "notify_handshakes_rejected_total{{reason=\"{reason}\"}}"
        ))
        .await
        .unwrap()
}

async fn info_limits(gateway: &Gateway) -> Value {
    let (_, body) = gateway.get("/api/info").await.unwrap();
    let info: Value = serde_json::from_str(&body).unwrap();
    info["limits"].clone()
}

/// Publishes one FI notification over the open loopback API.
async fn publish(base_url: &str, video_id: &str) {
    let response = http_client()
        .post(format!("{base_url}/api/publish"))
        .header("content-type", "application/json")
        .body(seed_payload("FI", video_id, "Limits"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{video_id}");
}

#[tokio::test]
async fn foreign_origins_get_403_and_allowed_ones_connect() {
    let gateway = Gateway::start(&[
        "--allowed-origins",
        "https://www.example.com,https://*.example.com",
    ])
    .await
    .unwrap();
    let mut admitted = Vec::new();
    for origin in [
        None,
        Some("https://www.example.com"),
        Some("https://a.b.example.com"),
    ] {
        let headers: Vec<_> = origin
            .map(|origin| ("origin", origin))
            .into_iter()
            .collect();
        let socket = handshake(&gateway, 1, &headers)
            .await
            .unwrap_or_else(|refused| panic!("{origin:?}: {refused:?}"));
        admitted.push(socket);
    }
    for origin in [
        "https://evil.example",
        "https://example.com",
        "http://www.example.com",
        "https://www.example.com.evil.example",
        "null",
    ] {
        let refused = handshake(&gateway, 1, &[("origin", origin)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{origin} was let in"));
        assert_eq!(refused.status, 403, "{origin}");
        assert!(
            refused.body.contains("not allowed") && refused.body.trim_end().lines().count() == 1,
            "{origin}: {refused:?}"
        );
    }
    assert_eq!(rejected(&gateway, "origin").await, 5.0);
    let limits = info_limits(&gateway).await;
    assert_eq!(
        limits["allowed_origins"],
        serde_json::json!(["https://www.example.com", "https://*.example.com"])
    );
    // The admitted connections are whole: each receives the next notification.
    wait_until(WAIT, || async {
        gateway.connections("FI").await.unwrap_or(0.0) == 3.0
    })
    .await;
    publish(&gateway.http_url(), "after-refusals").await;
    for socket in &mut admitted {
        let socket: &mut Socket = socket;
        let message = next_json_plain(socket).await.expect("delivered");
        assert_eq!(message["video_id"], "after-refusals");
    }

    // The default is deliberate: every origin may connect.
    let open = Gateway::start(&[]).await.unwrap();
    handshake(&open, 1, &[("origin", "https://evil.example")])
        .await
        .expect("the default allows every origin");
    assert_eq!(info_limits(&open).await["allowed_origins"], Value::Null);
}

/// Reads the next text frame of a plain-TCP WebSocket as JSON.
async fn next_json_plain(socket: &mut Socket) -> Option<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
            .ok()?;
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn connections_per_address_are_capped_and_freed_when_they_end() {
    let gateway = Gateway::start(&["--max-connections-per-ip", "3"])
        .await
        .unwrap();
    assert_eq!(
        info_limits(&gateway).await["max_connections_per_ip"],
        3,
        "/api/info shows the cap"
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(handshake(&gateway, 2, &[]).await.expect("under the cap"));
    }
    let refused = handshake(&gateway, 2, &[]).await.expect_err("past the cap");
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("127.0.0.2"), "{refused:?}");
    assert_eq!(rejected(&gateway, "per_ip").await, 1.0);
    // Another address is not affected.
    let mut other = handshake(&gateway, 3, &[]).await.expect("another address");

    // A connection closed with a close frame frees its count…
    let mut first = held.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("FI").await.unwrap_or(0.0) == 3.0
        })
        .await
    );
    held.push(handshake(&gateway, 2, &[]).await.expect("a freed count"));
    assert!(handshake(&gateway, 2, &[]).await.is_err(), "full again");
    // …and so does one whose TCP connection just vanished.
    drop(held.remove(0));
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("FI").await.unwrap_or(0.0) == 3.0
        })
        .await
    );
    held.push(handshake(&gateway, 2, &[]).await.expect("a freed count"));
    assert_eq!(rejected(&gateway, "per_ip").await, 2.0);

    // Every admitted connection still works.
    publish(&gateway.http_url(), "capped").await;
    for socket in held.iter_mut().chain([&mut other]) {
        assert_eq!(
            next_json_plain(socket).await.expect("delivered")["video_id"],
            "capped"
        );
    }
    // The map holds one entry per address with connections, and none once they are gone.
    let tracked = "notify_limit_tracked_addresses{limit=\"per_ip\"}";
    assert_eq!(gateway.metric(tracked).await.unwrap(), 2.0);
    drop((held, other));
    assert!(
        wait_until(WAIT, || async {
            gateway.metric(tracked).await.unwrap_or(-1.0) == 0.0
        })
        .await,
        "per-address entries outlive their connections"
    );
}

#[tokio::test]
async fn a_handshake_storm_from_one_address_gets_429_while_others_connect() {
    // 4 handshakes at once per address, then 4 per second.
    let gateway = Gateway::start(&[
        "--handshake-rate-per-ip",
        "4",
        "--handshake-burst-per-ip",
        "4",
    ])
    .await
    .unwrap();
    assert_eq!(
        info_limits(&gateway).await["handshake_rate_per_ip"],
        serde_json::json!({"per_second": 4, "burst": 4})
    );
    // One address hammers for 2 s (a handshake every 5 ms)…
    let storm = async {
        let started = Instant::now();
        let (mut admitted, mut refused) = (0, Vec::new());
        while started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match handshake(&gateway, 4, &[]).await {
                Ok(socket) => {
                    admitted += 1;
                    drop(socket);
                }
                Err(refusal) => refused.push(refusal),
            }
        }
        (admitted, refused, started.elapsed())
    };
    // …while a well-behaved address connects 3 times a second, across seven refill periods.
    let paced = async {
        let started = Instant::now();
        let mut outcomes = Vec::new();
        for n in 0..6u32 {
            tokio::time::sleep_until((started + Duration::from_millis(333) * n).into()).await;
            outcomes.push(
                handshake(&gateway, 5, &[])
                    .await
                    .map(drop)
                    .map_err(|r| r.status),
            );
        }
        (outcomes, started.elapsed())
    };
    let ((admitted, refused, stormed_for), (paced, paced_for)) = tokio::join!(storm, paced);
    eprintln!(
        "storm: {admitted} admitted, {} refused in {stormed_for:?}; paced: {paced:?}",
        refused.len()
    );
    assert!(paced.iter().all(Result::is_ok), "{paced:?}");
    assert!(paced_for >= Duration::from_millis(1600), "{paced_for:?}");
    // The burst, then the refill over the storm's length (4 + 4/s), not more.
    let most = 4 + (4.0 * stormed_for.as_secs_f64()).ceil() as usize;
    assert!(
        (4..=most).contains(&admitted),
        "admitted {admitted} of at most {most} in {stormed_for:?}"
    );
    assert!(
        refused.len() >= 20,
        "admitted {admitted}, refused {}",
        refused.len()
    );
    for refusal in &refused {
        assert_eq!(refusal.status, 429);
        let retry_after: u64 = refusal
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry_after), "{refusal:?}");
    }
    assert_eq!(rejected(&gateway, "rate").await, refused.len() as f64);
    // After waiting as told, the storming address gets in again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    handshake(&gateway, 4, &[])
        .await
        .expect("after Retry-After");
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let gateway = Gateway::start(&[
        "--trusted-proxies",
        "127.0.0.7/32",
        "--max-connections-per-ip",
        "1",
    ])
    .await
    .unwrap();
    assert_eq!(info_limits(&gateway).await["trusted_proxies"], 1);
    let xff = "x-forwarded-for";
    let mut held = Vec::new();
    // From the trusted proxy, two forwarded clients are two addresses.
    held.push(
        handshake(&gateway, 7, &[(xff, "198.51.100.1")])
            .await
            .expect("first client"),
    );
    held.push(
        handshake(&gateway, 7, &[(xff, "198.51.100.2")])
            .await
            .expect("second client"),
    );
    held.push(
        handshake(&gateway, 7, &[("forwarded", "for=\"[2001:db8::1]:4711\"")])
            .await
            .expect("an IPv6 client"),
    );
    let same = handshake(&gateway, 7, &[(xff, "198.51.100.1")])
        .await
        .expect_err("same client");
    assert_eq!(same.status, 429);
    assert!(same.body.contains("198.51.100.1"), "{same:?}");
    // Same /64: the same client.
    let same_prefix = handshake(&gateway, 7, &[("forwarded", "for=\"[2001:db8::2]\"")])
        .await
        .expect_err("same /64");
    assert!(
        same_prefix.body.contains("2001:db8::/64"),
        "{same_prefix:?}"
    );
    // A client prepending a lie is still itself: the rightmost untrusted hop counts.
    let lie = handshake(&gateway, 7, &[(xff, "203.0.113.50, 198.51.100.2")])
        .await
        .expect_err("lie");
    assert!(lie.body.contains("198.51.100.2"), "{lie:?}");
    held.push(
        handshake(&gateway, 7, &[(xff, "198.51.100.2, 198.51.100.3")])
            .await
            .expect("a new rightmost client"),
    );

    // From an untrusted peer, forwarding headers are ignored: the peer is the client.
    held.push(
        handshake(&gateway, 8, &[(xff, "198.51.100.20")])
            .await
            .expect("untrusted peer"),
    );
    let ignored = handshake(&gateway, 8, &[(xff, "198.51.100.21")])
        .await
        .expect_err("same peer");
    assert_eq!(ignored.status, 429);
    assert!(ignored.body.contains("127.0.0.8"), "{ignored:?}");
    assert_eq!(rejected(&gateway, "per_ip").await, 4.0);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let gateway = Gateway::start(&["--allowed-origins", "https://a.example"])
        .await
        .unwrap();
    let http = http_client();
    for path in [
        "/",
        "/demo.js",
        "/client.js",
        "/healthz",
        "/api/info",
        "/metrics",
        "/nope",
    ] {
        let response = http
            .get(format!("{}{path}", gateway.http_url()))
            .send()
            .await
            .unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self';"), "{path}: {policy}");
        assert!(
            policy.ends_with("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
    }
    // The page has no inline script for the policy to block.
    let (_, page) = gateway.get("/").await.unwrap();
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(page.contains(r#"<script type="module" src="/demo.js"></script>"#));
    // A refused handshake is a response too.
    let socket = TcpStream::connect(gateway.addr()).await.unwrap();
    let request = tokio_tungstenite::tungstenite::handshake::client::Request::builder()
        .uri(gateway.ws_url("/?region=FI"))
        .header("host", gateway.addr().to_string())
        .header("origin", "https://evil.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    match tokio_tungstenite::client_async(request, socket).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 403);
            assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }

    let framed = Gateway::start(&["--frame-ancestors", "'self' https://portal.example"])
        .await
        .unwrap();
    let response = http.get(framed.http_url()).send().await.unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        policy.ends_with("frame-ancestors 'self' https://portal.example"),
        "{policy}"
    );
}

#[tokio::test]
async fn the_admin_port_takes_metrics_and_the_api_off_the_public_port() {
    let admin_port = free_port();
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let gateway = Gateway::start(&["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .await
        .unwrap();
    let http = http_client();
    let status = |base: String, path: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for path in ["/metrics", "/api/info"] {
        assert_eq!(status(gateway.http_url(), path).await, 404, "public {path}");
        assert_eq!(status(admin_url.clone(), path).await, 200, "admin {path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(gateway.http_url(), path).await, 200, "public {path}");
        assert_eq!(status(admin_url.clone(), path).await, 200, "admin {path}");
    }
    let public_publish = http
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .body(seed_payload("FI", "public", "Limits"))
        .send()
        .await
        .unwrap();
    assert_eq!(public_publish.status(), 404);
    // The WebSocket stays public; publishing works on the admin port.
    let mut client = gateway.connect("/?region=FI").await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            let body = http
                .get(format!("{admin_url}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            body.contains("notify_connections{region=\"FI\"} 1")
        })
        .await
    );
    publish(&admin_url, "via-admin").await;
    assert_eq!(
        next_json(&mut client, WAIT).await.expect("delivered")["video_id"],
        "via-admin"
    );
    // Admin responses carry the security headers too.
    let response = http
        .get(format!("{admin_url}/api/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
}

/// A PROXY v1 line for a TCP4 client `source`.
fn proxy_v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 4711 8765\r\n").into_bytes()
}

/// A PROXY v2 header for a TCP4 client `source`.
fn proxy_v2(source: Ipv4Addr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&source.octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&[0x12, 0x67, 0x22, 0x3d]);
    header
}

#[tokio::test]
async fn proxy_protocol_headers_name_clients_only_from_trusted_proxies() {
    let gateway = Gateway::start(&[
        "--trusted-proxies",
        "127.0.0.9",
        "--proxy-protocol",
        "--max-connections-per-ip",
        "1",
    ])
    .await
    .unwrap();
    let mut held = Vec::new();
    held.push(
        handshake_after(&gateway, 9, &proxy_v1("198.51.100.1"), &[])
            .await
            .expect("a v1 client"),
    );
    let same = handshake_after(&gateway, 9, &proxy_v1("198.51.100.1"), &[])
        .await
        .expect_err("the same client");
    assert_eq!(same.status, 429);
    assert!(same.body.contains("198.51.100.1"), "{same:?}");
    held.push(
        handshake_after(&gateway, 9, &proxy_v2(Ipv4Addr::new(198, 51, 100, 2)), &[])
            .await
            .expect("a v2 client"),
    );

    // From the trusted proxy, a connection without a header is closed unanswered.
    let mut bare = connect_from(&gateway, 9).await;
    bare.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, bare.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .ok();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        gateway
            .metric("notify_proxy_header_errors_total")
            .await
            .unwrap(),
        1.0
    );

    // Any other peer cannot claim an address with a header: it is not read, so the request
    // is malformed, and the peer's own address is what counts.
    let claimed = handshake_after(&gateway, 10, &proxy_v1("198.51.100.3"), &[])
        .await
        .expect_err("a header from an untrusted peer");
    assert_ne!(claimed.status, 101, "{claimed:?}");
    held.push(handshake(&gateway, 10, &[]).await.expect("a plain client"));
    let again = handshake(&gateway, 10, &[]).await.expect_err("same peer");
    assert!(again.body.contains("127.0.0.10"), "{again:?}");
    assert_eq!(rejected(&gateway, "per_ip").await, 2.0);
}

/// Idle sockets count toward the per-address cap too: one address opening TCP connections
/// that never send a byte cannot hold every socket slot. The cap is
/// `--max-connections-per-ip` + 16 sockets per address.
#[tokio::test]
async fn idle_sockets_from_one_address_are_capped_before_they_send_anything() {
    let gateway = Gateway::start(&["--max-connections-per-ip", "1"])
        .await
        .unwrap();
    let cap = 1 + 16;
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(connect_from(&gateway, 5).await);
    }
    // Give the gateway time to accept them all, then one more from the same address is
    // answered 429 at once, before it sends anything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect_from(&gateway, 5).await;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, over.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(rejected(&gateway, "sockets_per_ip").await, 1.0);
    // Another address still connects and receives.
    let mut other = handshake(&gateway, 6, &[]).await.expect("another address");
    publish(&gateway.http_url(), "still-served").await;
    assert_eq!(
        next_json_plain(&mut other).await.expect("delivered")["video_id"],
        "still-served"
    );
    // Closing the idle sockets frees the address.
    drop(idle);
    let freed = wait_until(WAIT, || async { handshake(&gateway, 5, &[]).await.is_ok() }).await;
    assert!(freed, "closed sockets give their count back");
}

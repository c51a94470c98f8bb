//! The bad-input matrix of docs/SECURITY.md, one test per row: hostile bytes sent to the real
//! gateway binary (raw TCP where the input is malformed HTTP or WebSocket framing that a
//! client library refuses to produce). Each row asserts the clear answer AND that the gateway
//! is healthy afterwards: a WebSocket client connected before the attack still receives,
//! `/healthz` answers 200, and the gateway's RSS and open descriptors (from `/proc/<pid>`)
//! come back near their baseline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use notify_tests::{http_client, seed_payload, wait_until, Gateway, RedisServer, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);
/// RSS a row may leave behind once its connections are gone.
const RSS_SLACK_KB: u64 = 16 * 1024;
/// Descriptors a row may leave behind (none expected; one for a socket still being reaped).
const FD_SLACK: usize = 1;

/// Flags every row runs with: short timers so timed rows finish in seconds.
const FLAGS: &[&str] = &[
    "--handshake-timeout",
    "1s",
    "--ping-interval",
    "300ms",
    "--idle-timeout",
    "1s",
];

#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kb: u64,
    fds: usize,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count();
    Usage { rss_kb, fds }
}

/// A WebSocket client connected before the attack. A task keeps reading it (so it answers
/// pings, as a browser does) and hands on its text frames; the channel closes when the socket
/// does.
fn spawn_reader(mut socket: WsClient) -> mpsc::UnboundedReceiver<String> {
    let (frames, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                if frames.send(text.to_string()).is_err() {
                    return;
                }
            }
        }
    });
    received
}

/// The next text frame of a spawned reader as JSON; `None` on timeout or a closed socket.
async fn next_frame(frames: &mut mpsc::UnboundedReceiver<String>) -> Option<serde_json::Value> {
    let text = tokio::time::timeout(WAIT, frames.recv()).await.ok()??;
    serde_json::from_str(&text).ok()
}

/// A gateway with a witness client connected before the attack, and its resource baseline.
struct Target {
    gateway: Gateway,
    witness: mpsc::UnboundedReceiver<String>,
    baseline: Usage,
    published: u32,
    _redis: Option<RedisServer>,
}

impl Target {
    async fn embedded() -> Self {
        let gateway = Gateway::start(FLAGS).await.expect("gateway");
        Self::around(gateway, None).await
    }

    async fn with_redis() -> Self {
        let redis = RedisServer::start().await.expect("redis-server");
        let url = redis.url();
        let mut args = vec!["--redis-url", url.as_str()];
        args.extend_from_slice(FLAGS);
        let gateway = Gateway::start(&args).await.expect("gateway");
        assert!(gateway.wait_ready_status(200, WAIT).await, "never ready");
        Self::around(gateway, Some(redis)).await
    }

    async fn around(gateway: Gateway, redis: Option<RedisServer>) -> Self {
        let witness = spawn_reader(
            gateway
                .connect_counted("/?region=AE", "AE")
                .await
                .expect("witness"),
        );
        let mut target = Target {
            baseline: usage(gateway.pid().expect("pid")),
            gateway,
            witness,
            published: 0,
            _redis: redis,
        };
        // Warm up the publish and delivery paths before measuring the baseline.
        target.witness_receives().await;
        target.baseline = usage(target.gateway.pid().expect("pid"));
        target
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.gateway.addr()
    }

    async fn publish(&self, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let response = http_client()
            .post(format!("{}/api/publish", self.gateway.http_url()))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /api/publish");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Publishes one notification and asserts the witness gets it (fails if its socket died).
    async fn witness_receives(&mut self) {
        self.published += 1;
        let video_id = format!("witness{}", self.published);
        let (status, body) = self
            .publish("application/json", seed_payload("AE", &video_id, "شاهد"))
            .await;
        assert_eq!(status, 200, "{body}");
        let got = next_frame(&mut self.witness)
            .await
            .expect("the witness client stopped receiving");
        assert_eq!(got["video_id"], video_id.as_str());
    }

    /// The gateway is healthy after a row: witness receives, /healthz 200, and RSS and
    /// descriptors are back near the baseline.
    async fn assert_healthy(&mut self, row: &str) {
        self.witness_receives().await;
        let (status, _) = self.gateway.get("/healthz").await.expect("/healthz");
        assert_eq!(status, 200, "{row}: /healthz");
        let pid = self.gateway.pid().expect("pid");
        let baseline = self.baseline;
        let settled = wait_until(WAIT, || async move {
            let now = usage(pid);
            now.fds <= baseline.fds + FD_SLACK && now.rss_kb <= baseline.rss_kb + RSS_SLACK_KB
        })
        .await;
        assert!(
            settled,
            "{row}: gateway did not return to baseline: now {:?}, baseline {baseline:?}",
            usage(pid)
        );
    }
}

/// Writes `request` on a new connection and returns everything the gateway answers until it
/// closes the connection or `WAIT` passes.
async fn exchange(target: &Target, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(target.addr()).await.expect("connect");
    // The gateway may answer (431, 400) and close before it has read everything we send.
    let _ = stream.write_all(request).await;
    read_until_closed(&mut stream, WAIT).await
}

async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
}

// ---------------------------------------------------------------- handshake

#[tokio::test]
async fn handshake_without_a_key_is_400() {
    let mut target = Target::embedded().await;
    let request =
        "GET /?region=AE HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    let answer = exchange(&target, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    target.assert_healthy("missing Sec-WebSocket-Key").await;
}

#[tokio::test]
async fn handshake_with_a_wrong_version_is_400() {
    let mut target = Target::embedded().await;
    let request = upgrade_request("/?region=AE", "").replace("Version: 13", "Version: 8");
    let answer = exchange(&target, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    target.assert_healthy("wrong Sec-WebSocket-Version").await;
}

/// A request head of `size` bytes in one header: refused with 431, never a page or a socket.
async fn oversized_header(size: usize) {
    let mut target = Target::embedded().await;
    let header = format!("X-Filler: {}\r\n", "a".repeat(size));
    let answer = exchange(&target, upgrade_request("/?region=AE", &header).as_bytes()).await;
    assert_eq!(
        status_of(&answer),
        431,
        "{size}-byte header: {:.200}",
        answer
    );
    target.assert_healthy("oversized header").await;
}

#[tokio::test]
async fn a_100_kb_header_is_431() {
    oversized_header(100 * 1024).await;
}

#[tokio::test]
async fn a_1_mb_header_is_431() {
    oversized_header(1024 * 1024).await;
}

#[tokio::test]
async fn thousands_of_headers_are_431() {
    let mut target = Target::embedded().await;
    let headers: String = (0..5000).map(|n| format!("X-H{n}: v\r\n")).collect();
    let answer = exchange(&target, upgrade_request("/?region=AE", &headers).as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{:.200}", answer);
    target.assert_healthy("thousands of headers").await;
}

#[tokio::test]
async fn slowloris_heads_are_cut_at_the_handshake_timeout() {
    let mut target = Target::embedded().await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(target.addr()).await.expect("connect");
        stream
            .write_all(b"GET /?region=AE HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(stream);
    }
    // Keep trickling one byte at a time, well inside any per-read timeout, across two periods
    // of --handshake-timeout (1 s): the head timer must still cut them.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for stream in &mut slow {
            let _ = stream.write_all(b"a").await;
        }
    }
    for stream in &mut slow {
        let answer = read_until_closed(stream, Duration::from_secs(3)).await;
        // Closed (EOF) within the timeout, with a 408 or nothing at all: never left open.
        assert!(
            answer.is_empty() || status_of(&answer) == 408,
            "slow head got {answer:.200}"
        );
    }
    drop(slow);
    target.assert_healthy("slowloris heads").await;
}

#[tokio::test]
async fn http_1_0_is_answered_and_closed() {
    let mut target = Target::embedded().await;
    let answer = exchange(&target, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // An upgrade over HTTP/1.0 is not a WebSocket.
    let upgrade = upgrade_request("/?region=AE", "").replace("HTTP/1.1", "HTTP/1.0");
    let answer = exchange(&target, upgrade.as_bytes()).await;
    assert_ne!(status_of(&answer), 101, "{answer:.200}");
    target.assert_healthy("HTTP/1.0").await;
}

#[tokio::test]
async fn pipelined_requests_get_answers_in_order() {
    let mut target = Target::embedded().await;
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
                   GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(&target, request.as_bytes()).await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{answer}");
    target.assert_healthy("pipelined requests").await;
}

#[tokio::test]
async fn a_64_kb_query_is_refused() {
    let mut target = Target::embedded().await;
    let path = format!("/?region=AE&since={}", "9".repeat(64 * 1024));
    let answer = exchange(&target, upgrade_request(&path, "").as_bytes()).await;
    let status = status_of(&answer);
    assert!(
        matches!(status, 400 | 414 | 431),
        "64 KB query got {status}: {answer:.200}"
    );
    target.assert_healthy("64 KB query").await;
}

#[tokio::test]
async fn nul_bytes_and_percent_tricks_in_region_and_since_are_400() {
    let mut target = Target::embedded().await;
    for (query, reason) in [
        ("region=A%00", "region"),
        ("region=AE%00", "region"),
        ("region=%2E%2E%2F", "region"),
        ("region=%C0%AE%C0%AE", "region"),
        ("region=A%", "region"),
        ("region=AE&region=FI", "more than once"),
        ("since=1-0%00", "since"),
        ("since=%31-%30-0", "since"),
        ("since=99999999999999999999-0", "since"),
    ] {
        let answer = exchange(
            &target,
            upgrade_request(&format!("/?{query}"), "").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 400, "{query}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(body.contains(reason), "{query}: reason {body:?}");
    }
    // A raw NUL in the request line is not HTTP at all.
    let answer = exchange(&target, &upgrade_request("/?region=A\0E", "").into_bytes()).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    target.assert_healthy("NUL and percent tricks").await;
}

// ---------------------------------------------------------------- after the upgrade

/// A raw WebSocket connection to region AE, past the 101.
async fn raw_socket(target: &Target) -> TcpStream {
    let mut stream = TcpStream::connect(target.addr()).await.expect("connect");
    stream
        .write_all(upgrade_request("/?region=AE", "").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.expect("101 head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// One client frame, written by hand: `first` is FIN, RSV1-3 and the opcode.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const FIN: u8 = 0x80;

/// Reads server frames until the connection ends; returns the close code the server sent, if
/// any. Panics if the connection is still open after `timeout`.
async fn ending(stream: &mut TcpStream, timeout: Duration) -> Option<u16> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(timeout, stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "connection still open after {timeout:?}");
    // Walk the (unmasked) server frames for a close frame.
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => return None,
            len => (len as usize, 2),
        };
        let body = bytes.get(at + header..at + header + len)?;
        if opcode == CLOSE && body.len() >= 2 {
            return Some(u16::from_be_bytes([body[0], body[1]]));
        }
        at += header + len;
    }
    None
}

/// Sends `frames` on a fresh raw socket and asserts the gateway ends the connection (with
/// `expected_close` when given), then that it is healthy.
async fn ends_connection(row: &str, frames: &[Vec<u8>], expected_close: Option<u16>) {
    let mut target = Target::embedded().await;
    let mut socket = raw_socket(&target).await;
    for bytes in frames {
        let _ = socket.write_all(bytes).await;
    }
    let code = ending(&mut socket, WAIT).await;
    if let Some(expected) = expected_close {
        assert_eq!(code, Some(expected), "{row}: close code");
    }
    drop(socket);
    target.assert_healthy(row).await;
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_1009() {
    let payload = vec![b'a'; 64 * 1024];
    ends_connection(
        "oversized frame",
        &[frame(FIN | TEXT, &payload, true)],
        Some(1009),
    )
    .await;
}

#[tokio::test]
async fn fragments_past_the_frame_limit_are_closed_with_1009() {
    let fragments: Vec<Vec<u8>> = (0..40)
        .map(|n| frame(if n == 0 { TEXT } else { 0 }, &[b'a'; 1000], true))
        .collect();
    ends_connection("fragments past the limit", &fragments, Some(1009)).await;
}

#[tokio::test]
async fn a_never_finished_fragmented_message_is_dropped_at_the_idle_timeout() {
    // One fragment, then silence (no pongs either): gone after --idle-timeout (1 s).
    ends_connection(
        "never-finished fragments",
        &[frame(TEXT, b"half", true)],
        None,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_text_ends_the_connection() {
    ends_connection(
        "invalid UTF-8",
        &[frame(FIN | TEXT, b"\xc0\xaf\xff", true)],
        None,
    )
    .await;
}

#[tokio::test]
async fn a_control_frame_over_125_bytes_ends_the_connection() {
    ends_connection(
        "ping over 125 bytes",
        &[frame(FIN | PING, &[0; 126], true)],
        None,
    )
    .await;
}

#[tokio::test]
async fn an_unmasked_frame_ends_the_connection() {
    ends_connection("unmasked frame", &[frame(FIN | TEXT, b"hi", false)], None).await;
}

#[tokio::test]
async fn reserved_bits_end_the_connection() {
    ends_connection(
        "RSV1 without an extension",
        &[frame(FIN | 0x40 | TEXT, b"hi", true)],
        None,
    )
    .await;
}

#[tokio::test]
async fn a_bad_close_code_ends_the_connection() {
    ends_connection(
        "close code 999",
        &[frame(FIN | CLOSE, &999u16.to_be_bytes(), true)],
        None,
    )
    .await;
}

#[tokio::test]
async fn binary_frames_are_ignored_and_the_client_keeps_receiving() {
    let mut target = Target::embedded().await;
    let mut client = target
        .gateway
        .connect_counted("/?region=AE", "AE")
        .await
        .expect("client");
    client
        .send(Message::Binary(vec![0, 1, 2].into()))
        .await
        .expect("send binary");
    let mut client = spawn_reader(client);
    target.assert_healthy("binary frame").await;
    let got = next_frame(&mut client)
        .await
        .expect("client still receives");
    assert_eq!(got["video_id"], format!("witness{}", target.published));
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    let mut target = Target::embedded().await;
    let mut socket = raw_socket(&target).await;
    let ping = frame(FIN | PING, &[7; 125], true);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    // Up to 5 s or 200 MB of pings, never reading a pong: the gateway must cut us (or stop
    // reading) long before its memory grows by more than a few MB.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut sent = 0usize;
    while tokio::time::Instant::now() < deadline && sent < 200 << 20 {
        match tokio::time::timeout(Duration::from_millis(500), socket.write_all(&burst)).await {
            Ok(Ok(())) => sent += burst.len(),
            Ok(Err(_)) => break, // cut: the bound held
            Err(_) => break,     // the gateway stopped reading: back-pressure, also a bound
        }
    }
    let grown = usage(target.gateway.pid().expect("pid"))
        .rss_kb
        .saturating_sub(target.baseline.rss_kb);
    assert!(
        grown < 32 * 1024,
        "ping flood: gateway RSS grew by {grown} KB after {sent} bytes of pings"
    );
    drop(socket);
    target.assert_healthy("ping flood").await;
}

// ---------------------------------------------------------------- HTTP API

#[tokio::test]
async fn api_huge_body_is_413() {
    let mut target = Target::embedded().await;
    // Raw, so the answer is read even though the gateway stops reading the 10 MB early (a
    // client library would report the broken pipe instead of the 413).
    let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 10485760\r\n\r\n";
    let mut request = head.as_bytes().to_vec();
    request.extend(std::iter::repeat_n(b' ', 256 * 1024));
    let answer = exchange(&target, &request).await;
    assert_eq!(status_of(&answer), 413, "{answer:.300}");
    target.assert_healthy("10 MB body").await;
}

#[tokio::test]
async fn api_wrong_content_type_is_415() {
    let mut target = Target::embedded().await;
    let (status, body) = target
        .publish("text/plain", seed_payload("AE", "ct", "t"))
        .await;
    assert_eq!(status, 415, "text/plain publish answered {status}: {body}");
    target.assert_healthy("wrong content type").await;
}

#[tokio::test]
async fn api_bad_payloads_are_400_with_their_reason() {
    let mut target = Target::embedded().await;
    let good = seed_payload("AE", "bad", "t");
    let deep = good.replace(
        "\"ts\"",
        &format!("\"x\":{}1{},\"ts\"", "[".repeat(5000), "]".repeat(5000)),
    );
    let duplicate = good.replace("\"ts\"", "\"region\":\"FI\",\"ts\"");
    let huge = good.replace("1764290000", "1e400");
    let too_big_ts = good.replace("1764290000", "99999999999999999999");
    let javascript = good.replace(
        "https://i.ytimg.com/vi/bad/hqdefault.jpg",
        "javascript:alert(1)",
    );
    let mut not_utf8 = good.clone().into_bytes();
    let at = good.find("\"t\"").expect("title") + 1;
    not_utf8[at] = 0xff;
    for (row, body, reason) in [
        ("deep nesting", deep.into_bytes(), "recursion limit"),
        (
            "duplicate keys",
            duplicate.into_bytes(),
            "repeats the key \\\"region\\\"",
        ),
        ("huge number", huge.into_bytes(), "not JSON"),
        ("ts beyond i64", too_big_ts.into_bytes(), "`ts`"),
        (
            "javascript: thumbnail",
            javascript.into_bytes(),
            "thumbnail",
        ),
        ("invalid UTF-8", not_utf8, "UTF-8"),
    ] {
        let (status, answer) = target.publish("application/json", body).await;
        assert_eq!(status, 400, "{row}: {answer}");
        assert!(answer.contains(reason), "{row}: {answer}");
    }
    target.assert_healthy("bad API payloads").await;
}

// ---------------------------------------------------------------- Redis writers

#[tokio::test]
async fn redis_10_mb_and_deeply_nested_payloads_are_counted_and_skipped() {
    let mut target = Target::with_redis().await;
    let redis = target._redis.as_ref().expect("redis");
    let good = seed_payload("AE", "r", "t");
    let huge = good.replace(
        "\"ts\"",
        &format!("\"pad\":\"{}\",\"ts\"", "a".repeat(10 << 20)),
    );
    let deep = good.replace(
        "\"ts\"",
        &format!("\"x\":{}1{},\"ts\"", "[".repeat(20_000), "]".repeat(20_000)),
    );
    let duplicate = good.replace("\"ts\"", "\"region\":\"FI\",\"ts\"");
    for payload in [&huge, &deep, &duplicate] {
        assert_eq!(redis.publish("tvs:AE", payload).await.unwrap(), 1);
    }
    let gateway = &target.gateway;
    let counted = wait_until(WAIT, || async {
        let metric = |reason: &'static str| async move {
            gateway
                .metric(&format!("notify_bad_payloads_total{{reason=\"{reason}\""))
                .await
                .unwrap_or(0.0)
        };
        metric("too_large").await >= 1.0
            && metric("not_json").await >= 1.0
            && metric("duplicate_key").await >= 1.0
    })
    .await;
    let metrics = target.gateway.get("/metrics").await.expect("/metrics").1;
    let bad: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("notify_bad_payloads_total"))
        .collect();
    assert!(counted, "bad Redis payloads were not counted: {bad:?}");
    // None reached the witness: the next thing it gets is the next good message.
    target
        .assert_healthy("10 MB and deeply nested Redis payloads")
        .await;
}

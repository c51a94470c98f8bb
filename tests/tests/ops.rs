//! The live ops page (`/ops`, `/ops/stream`) against the real gateway binary: the stream's
//! snapshots follow real connections, publishes, bad payloads, resumes and a Redis outage; who
//! may see it (loopback, or the API key through a trusted proxy); the viewer cap; and that an
//! open stream never holds up shutdown.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use notify_tests::{install_crypto_provider, next_json, seed_payload, Gateway, RedisServer};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

/// The gateway's cap on open ops streams (`ops::feed::MAX_VIEWERS`).
const MAX_VIEWERS: usize = 16;

const WAIT: Duration = Duration::from_secs(10);

/// A client for long-lived streams: no overall timeout, no redirects followed.
fn stream_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("stream client")
}

/// One open `/ops/stream`, read frame by frame.
struct OpsStream {
    response: reqwest::Response,
    buffer: String,
}

impl OpsStream {
    /// Opens the stream with `headers`; fails unless the gateway answers 200 with SSE.
    async fn open(gateway: &Gateway, headers: HeaderMap) -> Result<Self> {
        let response = stream_client()
            .get(format!("{}/ops/stream", gateway.http_url()))
            .headers(headers)
            .send()
            .await?;
        if response.status() != 200 {
            bail!("ops stream answered {}", response.status());
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type != "text/event-stream" {
            bail!("ops stream content type {content_type:?}");
        }
        Ok(OpsStream {
            response,
            buffer: String::new(),
        })
    }

    /// The next snapshot within `timeout`. An error if the stream ended (the socket died) or
    /// nothing came in time, so a "no snapshot" can never pass for a quiet one.
    async fn next(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let data = frame
                    .lines()
                    .find_map(|line| line.strip_prefix("data: "))
                    .with_context(|| format!("an SSE frame without data: {frame:?}"))?;
                return serde_json::from_str(data).context("a snapshot that is not JSON");
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .context("no snapshot in time")??
                .context("the ops stream ended")?;
            self.buffer.push_str(std::str::from_utf8(&chunk)?);
        }
    }

    /// Reads snapshots until one satisfies `done`, within `timeout`; returns it.
    async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.next(Duration::from_secs(3)).await?;
            if done(&last) {
                return Ok(last);
            }
        }
        bail!("no snapshot showed {what} within {timeout:?}; last: {last}")
    }
}

fn header(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).expect("header value"));
    }
    map
}

fn count(snapshot: &Value, pointer: &str) -> u64 {
    snapshot
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

async fn publish(gateway: &Gateway, region: &str, video: &str) -> Result<()> {
    let response = gateway
        .http()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .body(seed_payload(region, video, "Ops"))
        .send()
        .await?;
    if response.status() != 200 {
        bail!("publish answered {}", response.status());
    }
    Ok(())
}

#[tokio::test]
async fn the_stream_follows_connections_publishes_and_the_broker() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let url = redis.url();
    let gateway = Gateway::start(&[
        "--redis-url",
        &url,
        "--regions",
        "AE,FI",
        "--redis-ping-interval",
        "200ms",
    ])
    .await?;
    let mut stream = OpsStream::open(&gateway, HeaderMap::new()).await?;
    let first = stream
        .until(WAIT, "a linked broker", |s| s["broker"]["linked"] == true)
        .await?;
    assert_eq!(first["broker"]["kind"], "redis");
    assert_eq!(first["ready"], true);
    assert_eq!(count(&first, "/connections/total"), 0);
    assert!(count(&first, "/connections/capacity") > 0, "{first}");

    // One snapshot a second, across several ticks.
    let mut arrivals = Vec::new();
    for _ in 0..4 {
        stream.next(Duration::from_secs(3)).await?;
        arrivals.push(Instant::now());
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(1800),
            "snapshots {gap:?} apart"
        );
    }

    // Real connections, publishes, a bad payload and a resume.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(gateway.connect_counted("/?region=AE", "AE").await?);
    }
    for video in ["ops0000001a", "ops0000002b", "ops0000003c", "ops0000004d"] {
        publish(&gateway, "AE", video).await?;
    }
    for client in &mut clients {
        for _ in 0..4 {
            next_json(client, WAIT)
                .await
                .context("a client missed a message")?;
        }
    }
    redis.publish("tvs:AE", "not json at all").await?;
    let _resumed = gateway.connect("/?region=FI&since=0-0").await?;
    let busy = stream
        .until(WAIT, "the traffic", |s| {
            count(s, "/connections/by_region/AE") == 3
                && count(s, "/connections/by_region/FI") == 1
                && count(s, "/totals/publishes") >= 4
                && count(s, "/totals/deliveries") >= 12
                && s["bad_payloads"]
                    .as_object()
                    .is_some_and(|reasons| reasons.values().any(|n| n.as_u64() > Some(0)))
                && s["resumes"].as_object().is_some_and(|sources| {
                    sources.values().filter_map(Value::as_u64).sum::<u64>() >= 1
                })
        })
        .await?;
    assert_eq!(count(&busy, "/connections/total"), 4, "{busy}");
    // The page and /metrics read the same registry.
    let delivered = gateway.metric("notify_messages_delivered_total").await?;
    assert!(count(&busy, "/totals/deliveries") as f64 <= delivered);

    // A rate shows while publishes flow, and goes back to 0 when they stop.
    let publisher = async {
        for n in 0..15 {
            publish(&gateway, "FI", &format!("opsrate{n:04}")).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    };
    let (published, flowing) = tokio::join!(
        publisher,
        stream.until(WAIT, "a publish rate", |s| {
            s["rates"]["publishes_per_second"].as_f64() > Some(1.0)
                && s["rates"]["deliveries_per_second"].as_f64() > Some(1.0)
        })
    );
    published?;
    flowing?;
    stream
        .until(WAIT, "the rate back at 0", |s| {
            s["rates"]["publishes_per_second"].as_f64() == Some(0.0)
        })
        .await?;

    // Redis goes away: the page says so; it comes back: linked again, one more reconnect.
    redis.kill();
    let down = stream
        .until(WAIT, "the broker down", |s| {
            s["broker"]["linked"] == false && s["ready"] == false
        })
        .await?;
    assert_ne!(down["readiness"], "ready");
    redis.restart().await?;
    stream
        .until(WAIT, "the broker back", |s| {
            s["broker"]["linked"] == true
                && s["ready"] == true
                && count(s, "/broker/reconnects") >= 1
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn off_loopback_the_ops_page_needs_the_api_key() -> Result<()> {
    const KEY: &str = "ops-key-0f3e9a7c";
    // 127.0.0.1 is a trusted proxy: X-Forwarded-For names a remote client, as a reverse proxy
    // in front of the gateway would.
    let gateway = Gateway::start(&["--api-key", KEY, "--trusted-proxies", "127.0.0.1"]).await?;
    let client = stream_client();
    let get = |path: &str, headers: HeaderMap| {
        let request = client
            .get(format!("{}{path}", gateway.http_url()))
            .headers(headers);
        async move {
            let response = request.send().await?;
            anyhow::Ok((response.status().as_u16(), response.headers().clone()))
        }
    };
    let remote = ("x-forwarded-for", "203.0.113.9");

    // Local: open.
    assert_eq!(get("/ops", HeaderMap::new()).await?.0, 200);
    OpsStream::open(&gateway, HeaderMap::new())
        .await?
        .next(WAIT)
        .await?;
    // Remote without a key, with a wrong one: 401.
    assert_eq!(get("/ops", header(&[remote])).await?.0, 401);
    assert_eq!(get("/ops/stream", header(&[remote])).await?.0, 401);
    let wrong = ("authorization", "Bearer not-the-key");
    assert_eq!(get("/ops/stream", header(&[remote, wrong])).await?.0, 401);
    assert_eq!(get("/ops?key=not-the-key", header(&[remote])).await?.0, 401);
    // A local relay that is not trusted does not make a remote client local.
    let untrusted = Gateway::start(&["--api-key", KEY]).await?;
    let response = client
        .get(format!("{}/ops", untrusted.http_url()))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await?;
    assert_eq!(response.status(), 401);

    // Remote with the key as a bearer header: the stream flows.
    let bearer = format!("Bearer {KEY}");
    OpsStream::open(&gateway, header(&[remote, ("authorization", &bearer)]))
        .await?
        .next(WAIT)
        .await?;
    // A browser: /ops?key= once → a redirect that keeps the key in a cookie and drops it from
    // the address; the cookie then opens the page and the stream.
    let (status, headers) = get(&format!("/ops?key={KEY}"), header(&[remote])).await?;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/ops");
    let cookie = headers["set-cookie"].to_str()?;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ops"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let cookie = cookie.split(';').next().context("cookie pair")?.to_owned();
    assert_eq!(
        get("/ops", header(&[remote, ("cookie", &cookie)])).await?.0,
        200
    );
    OpsStream::open(&gateway, header(&[remote, ("cookie", &cookie)]))
        .await?
        .next(WAIT)
        .await?;

    // Without any key configured, remote clients are refused outright (403).
    let keyless = Gateway::start(&["--trusted-proxies", "127.0.0.1"]).await?;
    let response = client
        .get(format!("{}/ops/stream", keyless.http_url()))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await?;
    assert_eq!(response.status(), 403);

    // The key never reaches the log, at debug level, refusals included.
    let log = gateway.log_lines().join("\n");
    assert!(log.contains("refused the ops page"), "refusals are logged");
    assert!(!log.contains(KEY), "the key is in the log");
    Ok(())
}

#[tokio::test]
async fn the_viewer_cap_holds_and_frees_with_closed_streams() -> Result<()> {
    let gateway = Gateway::start(&[]).await?;
    let mut streams = Vec::new();
    for _ in 0..MAX_VIEWERS {
        let mut stream = OpsStream::open(&gateway, HeaderMap::new()).await?;
        stream.next(WAIT).await?;
        streams.push(stream);
    }
    let refused = stream_client()
        .get(format!("{}/ops/stream", gateway.http_url()))
        .send()
        .await?;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    // The viewers within the cap keep receiving.
    for stream in &mut streams {
        stream.next(Duration::from_secs(3)).await?;
    }
    // One closes: its place frees once the gateway notices (its next write fails).
    drop(streams.pop());
    let deadline = Instant::now() + WAIT;
    let mut reopened = loop {
        match OpsStream::open(&gateway, HeaderMap::new()).await {
            Ok(stream) => break stream,
            Err(error) if Instant::now() > deadline => {
                return Err(error.context("the closed stream's place never freed"));
            }
            Err(_still_full) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    reopened.next(WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn an_open_ops_stream_does_not_hold_up_shutdown() -> Result<()> {
    let mut gateway = Gateway::start(&["--drain-timeout", "20s"]).await?;
    let mut stream = OpsStream::open(&gateway, HeaderMap::new()).await?;
    stream.next(WAIT).await?;
    let stopping = Instant::now();
    gateway.sigterm();
    let code = gateway.wait_exit(Duration::from_secs(15));
    let took = stopping.elapsed();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let end = stream.next(Duration::from_secs(3)).await;
    assert!(end.is_err(), "the stream went on after shutdown: {end:?}");
    Ok(())
}

#[tokio::test]
async fn over_tls_the_key_cookie_is_marked_secure() -> Result<()> {
    use notify_tests::certs::{CertDir, TestCa, Usage};
    const KEY: &str = "ops-tls-key-7b2e";
    let ca = TestCa::new("notify ops test CA")?;
    let dir = CertDir::new()?;
    let issued = ca.issue("gateway", 1, Usage::Server)?;
    let (cert, key) = dir.write_pair("gateway", &issued)?;
    let tls = ca.client_config();
    let gateway = Gateway::start_tls(
        &[
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
            "--api-key",
            KEY,
            "--trusted-proxies",
            "127.0.0.1",
        ],
        tls.clone(),
    )
    .await?;
    install_crypto_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
        .build()?;
    let response = client
        .get(format!("{}/ops?key={KEY}", gateway.http_url()))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await?;
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str()?;
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    Ok(())
}

#[tokio::test]
async fn with_an_admin_address_the_ops_page_moves_there() -> Result<()> {
    let admin = format!("127.0.0.1:{}", notify_tests::free_port());
    let gateway = Gateway::start(&["--admin-listen", &admin]).await?;
    assert_eq!(gateway.get("/ops").await?.0, 404);
    assert_eq!(gateway.get("/ops/stream").await?.0, 404);
    let client = stream_client();
    let page = client.get(format!("http://{admin}/ops")).send().await?;
    assert_eq!(page.status(), 200);
    let mut response = client
        .get(format!("http://{admin}/ops/stream"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let chunk = tokio::time::timeout(WAIT, response.chunk())
        .await??
        .context("the admin stream ended")?;
    assert!(chunk.starts_with(b"data: {"), "{chunk:?}");
    Ok(())
}

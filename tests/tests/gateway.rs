//! The gateway end to end: real `redis-server`, the real `notify-gateway` binary, real
//! WebSocket clients over loopback.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use notify_tests::{
    expect_silence, http_client, next_json, next_text, redis_and_gateway, rss_kib, seed_payload,
    wait_until, Gateway, RedisServer,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn seed_php_payload_reaches_only_its_region() {
    let (redis, gateway) = redis_and_gateway(&[]).await;
    let mut ae = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let mut fi = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    let mut us = gateway.connect_counted("/?region=US", "US").await.unwrap();

    // Byte for byte what the seed's PHP publisher sends (json_encode, JSON_UNESCAPED_UNICODE).
    let php = r#"{"event":"new_trending","region":"AE","video_id":"a1b2c3","title":"فيديو رائج في دبي","thumbnail":"https://i.ytimg.com/vi/a1b2c3/hqdefault.jpg","channel":"قناة","rtl":true,"ts":1764290000}"#;
    assert_eq!(redis.publish("tvs:AE", php).await.unwrap(), 1);

    let received = next_text(&mut ae, WAIT).await.expect("AE client gets it");
    assert_eq!(received, php, "delivered unchanged");
    expect_silence(&mut fi, QUIET).await.unwrap();
    expect_silence(&mut us, QUIET).await.unwrap();
}

#[tokio::test]
async fn unicode_arrives_equal_in_every_script() {
    let (redis, gateway) = redis_and_gateway(&[]).await;
    let cases = [
        ("AE", "عاجل: إطلاق فيديو جديد"),
        ("CZ", "Příliš žluťoučký kůň: č ž š"),
        ("FI", "Hyvää päivää: ä ö"),
        ("DK", "Rødgrød med fløde: ø å"),
    ];
    for (region, title) in cases {
        let mut client = gateway
            .connect_counted(&format!("/?region={region}"), region)
            .await
            .unwrap();
        redis
            .publish(&format!("tvs:{region}"), seed_payload(region, "v1", title))
            .await
            .unwrap();
        let text = next_text(&mut client, WAIT).await.expect("delivered");
        assert!(!text.contains("\\u"), "unicode escaped: {text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["title"], title);
        assert_eq!(value["region"], region);
    }
}

#[tokio::test]
async fn default_region_is_us_and_region_is_case_insensitive() {
    let (redis, gateway) = redis_and_gateway(&[]).await;
    let mut default = gateway.connect_counted("/", "US").await.unwrap();
    let mut lower = gateway.connect_counted("/?region=ae", "AE").await.unwrap();
    redis
        .publish("tvs:US", seed_payload("US", "us1", "US title"))
        .await
        .unwrap();
    redis
        .publish("tvs:AE", seed_payload("AE", "ae1", "AE title"))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut default, WAIT).await.unwrap()["video_id"],
        "us1"
    );
    assert_eq!(
        next_json(&mut lower, WAIT).await.unwrap()["video_id"],
        "ae1"
    );
    expect_silence(&mut default, QUIET).await.unwrap();
}

#[tokio::test]
async fn bad_and_unserved_regions_get_400_with_a_reason() {
    let gateway = Gateway::start(&["--regions", "AE,FI"]).await.unwrap();
    for (query, expected) in [
        (
            "/?region=../x",
            "\"../x\" is not an ISO 3166-1 alpha-2 code",
        ),
        (
            "/?region=ZZ",
            "\"ZZ\" is not an assigned ISO 3166-1 alpha-2 code",
        ),
        (
            "/?region=JP",
            "region JP is not served by this gateway (served: AE,FI)",
        ),
        ("/", "region US is not served"),
    ] {
        let error = gateway.connect(query).await.unwrap_err();
        let response = match error.root_cause().downcast_ref() {
            Some(tokio_tungstenite::tungstenite::Error::Http(response)) => response,
            other => panic!("{query}: expected an HTTP error, got {other:?}"),
        };
        assert_eq!(response.status(), 400, "{query}");
        let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
        assert!(body.contains(expected), "{query}: {body}");
        assert_eq!(body.trim().lines().count(), 1, "one-line reason: {body}");
    }
    assert!(gateway.connect("/?region=fi").await.is_ok());
}

#[tokio::test]
async fn bad_payloads_are_counted_and_skipped_while_good_ones_flow() {
    let (redis, gateway) = redis_and_gateway(&["--max-payload-bytes", "2048"]).await;
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", b"{not json".to_vec()),
        ("not_object", b"[1,2,3]".to_vec()),
        ("not_utf8", b"{\"title\":\"\xff\xfe\"}".to_vec()),
        ("too_large", vec![b' '; 4096]),
        (
            "missing_field",
            br#"{"event":"new_trending","region":"AE"}"#.to_vec(),
        ),
        (
            "region_mismatch",
            seed_payload("FI", "x", "wrong channel").into_bytes(),
        ),
        (
            "bad_thumbnail",
            seed_payload("AE", "x", "t")
                .replace("https://i.ytimg.com", "javascript:alert(1)//")
                .into_bytes(),
        ),
    ];
    for (index, (_, payload)) in bad.iter().enumerate() {
        redis.publish("tvs:AE", payload).await.unwrap();
        redis
            .publish("tvs:AE", seed_payload("AE", &format!("good{index}"), "ok"))
            .await
            .unwrap();
    }
    for index in 0..bad.len() {
        let value = next_json(&mut client, WAIT).await.expect("good message");
        assert_eq!(value["video_id"], format!("good{index}"));
    }
    expect_silence(&mut client, QUIET).await.unwrap();
    for (reason, _) in &bad {
        let count = gateway
            .metric(&format!("notify_bad_payloads_total{{reason=\"{reason}\"}}"))
            .await
            .unwrap();
        assert_eq!(count, 1.0, "{reason}");
    }
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn redis_outage_flips_readiness_and_delivery_resumes() {
    let (mut redis, gateway) = redis_and_gateway(&[]).await;
    let mut client = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    redis.kill();
    assert!(
        gateway.wait_ready_status(503, WAIT).await,
        "/readyz must say 503 while Redis is down"
    );
    let (_, body) = gateway.get("/readyz").await.unwrap();
    assert!(body.contains("redis broker is"), "{body}");
    redis.restart().await.unwrap();
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(15))
            .await,
        "/readyz must recover"
    );
    redis
        .publish("tvs:FI", seed_payload("FI", "after", "Takaisin ä ö"))
        .await
        .unwrap();
    let value = next_json(&mut client, WAIT)
        .await
        .expect("delivery resumes");
    assert_eq!(value["video_id"], "after");
    assert!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap()
            >= 1.0
    );
}

/// Positive control of the Redis health check: a healthy Redis over many ping intervals, with
/// seed-style plain `PUBLISH` (no id, so no catch-up could hide a loss) at 20 msg/s. Every
/// message arrives, `/readyz` is 200 at every poll, and the link is never rebuilt.
#[tokio::test]
async fn a_healthy_redis_stays_ready_across_many_ping_intervals() {
    const MESSAGES: usize = 70;
    let (redis, gateway) = redis_and_gateway(&["--redis-ping-interval", "200ms"]).await;
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    let publisher = {
        let client = redis.client();
        tokio::spawn(async move {
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for seq in 0..MESSAGES {
                tick.tick().await;
                let _: i64 = redis::cmd("PUBLISH")
                    .arg("tvs:DK")
                    .arg(seed_payload("DK", &format!("p{seq}"), "Rødgrød"))
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
        })
    };
    let probe = async {
        let mut statuses = Vec::new();
        let started = Instant::now();
        // ≥ 3.5 s: more than 15 ping intervals.
        while started.elapsed() < Duration::from_millis(3500) {
            let status = gateway.get("/readyz").await.map(|(status, _)| status).ok();
            statuses.push(status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        statuses
    };
    let receive = async {
        let mut received = Vec::new();
        while received.len() < MESSAGES {
            match next_json(&mut client, Duration::from_secs(2)).await {
                Some(value) => received.push(value["video_id"].as_str().unwrap().to_owned()),
                None => break,
            }
        }
        received
    };
    let (statuses, received) = tokio::join!(probe, receive);
    publisher.await.unwrap();
    let expected: Vec<String> = (0..MESSAGES).map(|seq| format!("p{seq}")).collect();
    assert_eq!(
        received, expected,
        "every plain PUBLISH delivered, in order"
    );
    assert!(statuses.len() >= 50, "{} polls", statuses.len());
    let not_ready = statuses.iter().filter(|s| **s != Some(200)).count();
    assert_eq!(
        not_ready, 0,
        "/readyz was not 200 at {not_ready} polls: {statuses:?}"
    );
    assert_eq!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap(),
        0.0,
        "a healthy link is never rebuilt"
    );
}

/// A client that stops reading must not hold anyone back: the live client's latency stays far
/// below the write timeout while the stalled one is cut off as a slow consumer.
#[tokio::test]
async fn a_stalled_client_does_not_delay_the_others() {
    let (redis, gateway) =
        redis_and_gateway(&["--queue-limit", "128", "--write-timeout", "2s"]).await;
    // The stalled client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr()).await.unwrap();
    let (_stalled, _) = tokio_tungstenite::client_async(gateway.ws_url("/?region=AE"), stream)
        .await
        .unwrap();
    let mut live = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("AE").await.unwrap_or(0.0) >= 2.0
        })
        .await
    );

    const MESSAGES: usize = 600;
    let filler = "x".repeat(48 * 1024);
    let epoch = Instant::now();
    let publisher = {
        let client = redis.client();
        let filler = filler.clone();
        tokio::spawn(async move {
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            for seq in 0..MESSAGES {
                let mut payload: Value =
                    serde_json::from_str(&seed_payload("AE", &format!("v{seq}"), "big")).unwrap();
                payload["sent_us"] = json!(epoch.elapsed().as_micros() as u64);
                payload["filler"] = json!(filler);
                let _: i64 = redis::cmd("PUBLISH")
                    .arg("tvs:AE")
                    .arg(payload.to_string())
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                // Paced so the live client (a debug build parsing 48 KB of JSON) keeps up.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut latencies_ms = Vec::with_capacity(MESSAGES);
    for seq in 0..MESSAGES {
        let value = next_json(&mut live, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("live client missed message {seq}"));
        assert_eq!(value["video_id"], format!("v{seq}"), "in order, none lost");
        let sent = Duration::from_micros(value["sent_us"].as_u64().unwrap());
        latencies_ms.push((epoch.elapsed() - sent).as_secs_f64() * 1e3);
    }
    publisher.await.unwrap();
    latencies_ms.sort_by(f64::total_cmp);
    let median = latencies_ms[MESSAGES / 2];
    let max = latencies_ms[MESSAGES - 1];
    eprintln!("live client latency with a stalled peer: median {median:.2} ms, max {max:.2} ms");
    // The seed's gather() would hold the live client until the stalled write times out (2 s).
    assert!(median < 20.0, "median {median} ms");
    assert!(max < 500.0, "max {max} ms");
    assert!(
        wait_until(WAIT, || async {
            gateway
                .metric("notify_slow_client_disconnects_total")
                .await
                .unwrap_or(0.0)
                >= 1.0
        })
        .await,
        "the stalled client is disconnected as a slow consumer"
    );
}

#[tokio::test]
async fn slow_consumer_gets_a_policy_close_frame() {
    // Embedded broker; the client falls behind while it is not polled, then reads.
    let gateway = Gateway::start(&["--queue-limit", "4"]).await.unwrap();
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let http = http_client();
    let body = seed_payload("AE", "v", "t");
    // Publish more than the queue holds faster than the write loop can drain; with a batch
    // limit the socket keeps up, so make the client stop reading by not polling it while
    // 5 MB of messages queue in its TCP buffers.
    let big: Value = {
        let mut value: Value = serde_json::from_str(&body).unwrap();
        value["filler"] = json!("y".repeat(60 * 1024));
        value
    };
    for _ in 0..200 {
        let response = http
            .post(format!("{}/api/publish", gateway.http_url()))
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = frame;
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("slow consumer"), "{}", close.reason);
}

#[tokio::test]
async fn sigterm_sends_going_away_to_every_client_and_exits_zero() {
    let mut gateway = Gateway::start(&["--drain-timeout", "10s"]).await.unwrap();
    let mut clients = Vec::new();
    for region in ["AE", "FI", "US"] {
        clients.push(
            gateway
                .connect_counted(&format!("/?region={region}"), region)
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    gateway.sigterm();
    for client in &mut clients {
        let frame = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("close within the drain time");
        match frame {
            Some(Ok(Message::Close(Some(close)))) => {
                assert_eq!(close.code, CloseCode::Away);
                assert!(close.reason.contains("shutting down"));
            }
            other => panic!("expected a 1001 close frame, got {other:?}"),
        }
    }
    assert_eq!(gateway.wait_exit(Duration::from_secs(12)), Some(0));
    // Every client took its close frame, so the drain ends at once, not at its timeout.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "exit took {elapsed:?} with a 10 s drain timeout"
    );
}

/// A replay to a client that does not read blocks in a flush for up to `--write-timeout`;
/// shutdown must interrupt it rather than wait for the drain timeout.
#[tokio::test]
async fn sigterm_during_a_replay_to_a_client_that_never_reads_ends_promptly() {
    let mut gateway = Gateway::start(&[
        "--history-retention",
        "400",
        "--write-timeout",
        "30s",
        "--drain-timeout",
        "10s",
    ])
    .await
    .unwrap();
    let http = http_client();
    let mut big: Value = serde_json::from_str(&seed_payload("AE", "v", "t")).unwrap();
    big["filler"] = json!("r".repeat(60 * 1024));
    let mut first_id = None;
    // 200 × 60 KB: far more than the loopback socket buffers take.
    for _ in 0..200 {
        let response = http
            .post(format!("{}/api/publish", gateway.http_url()))
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let receipt: Value = response.json().await.unwrap();
        first_id.get_or_insert(receipt["id"].as_str().unwrap().to_owned());
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr()).await.unwrap();
    let url = gateway.ws_url(&format!("/?region=AE&since={}", first_id.unwrap()));
    let (_never_reads, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("AE").await.unwrap_or(0.0) >= 1.0
        })
        .await
    );
    // Let the replay fill the socket and block in its flush.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    gateway.sigterm();
    assert_eq!(gateway.wait_exit(Duration::from_secs(15)), Some(0));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "exit took {elapsed:?}: the replay held the drain"
    );
}

/// RFC 6455 §5.5.1: a close frame is answered with a close frame, echoing the code; the
/// client sees a clean close, not 1006.
#[tokio::test]
async fn a_client_close_frame_is_answered_with_its_code() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let gateway = Gateway::start(&[]).await.unwrap();
    for code in [CloseCode::Normal, CloseCode::Library(4000)] {
        let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
        client
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        let answer = tokio::time::timeout(WAIT, async {
            loop {
                match client.next().await {
                    Some(Ok(Message::Close(frame))) => return Ok(frame),
                    Some(Ok(_)) => continue,
                    other => return Err(format!("{other:?}")),
                }
            }
        })
        .await
        .expect("an answer within 5 s");
        match answer {
            Ok(Some(frame)) => assert_eq!(frame.code, code),
            other => panic!("expected the close code {code} echoed, got {other:?}"),
        }
    }
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("AE").await.unwrap_or(1.0) == 0.0
        })
        .await
    );
}

/// The harness's "nothing arrived" check must not mistake a dead socket for silence.
#[tokio::test]
async fn expect_silence_fails_when_the_socket_is_closed_or_dies() {
    let gateway = Gateway::start(&[]).await.unwrap();
    let mut open = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    expect_silence(&mut open, QUIET)
        .await
        .expect("an open, quiet socket is silence");
    gateway.sigterm();
    let error = expect_silence(&mut open, WAIT).await.unwrap_err();
    assert!(error.to_string().contains("closed"), "{error}");

    let mut gateway = Gateway::start(&[]).await.unwrap();
    let mut killed = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    gateway.kill();
    expect_silence(&mut killed, WAIT)
        .await
        .expect_err("a socket whose server died is not silent");
}

/// Every duration and size is checked at start: a bad value exits 2 with one message naming
/// the flag, before any log line (a zero period used to start, then panic on first use).
#[tokio::test]
async fn bad_flag_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--ping-interval", "0s"], "--ping-interval"),
        (&["--redis-ping-interval", "0s"], "--redis-ping-interval"),
        (&["--queue-limit", "0"], "--queue-limit"),
        (&["--queue-limit", "99999999999"], "--queue-limit"),
        (
            &["--idle-timeout", "1s", "--ping-interval", "2s"],
            "--idle-timeout",
        ),
        (&["--ws-write-buffer-bytes", "0"], "--ws-write-buffer-bytes"),
        (
            &["--max-client-frame-bytes", "0"],
            "--max-client-frame-bytes",
        ),
        (&["--drain-timeout", "0s"], "--drain-timeout"),
        (&["--handshake-timeout", "100years"], "--handshake-timeout"),
    ];
    for (args, flag) in cases {
        let mut child = std::process::Command::new(notify_tests::binary("notify-gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .args(*args)
            .env_remove("NOTIFY_REDIS_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} was accepted: the gateway started");
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("INFO"),
            "logged before validating: {stderr}"
        );
    }
}

#[tokio::test]
async fn api_publish_needs_the_key_and_reaches_clients() {
    let (_redis, gateway) = redis_and_gateway(&["--api-key", "s3cret"]).await;
    let mut client = gateway.connect_counted("/?region=CZ", "CZ").await.unwrap();
    let http = http_client();
    let url = format!("{}/api/publish", gateway.http_url());
    let body: Value = serde_json::from_str(&seed_payload("CZ", "cz1", "Čeština: č ž š")).unwrap();

    let response = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("Bearer"));
    let response = http
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    expect_silence(&mut client, QUIET).await.unwrap();

    let response = http
        .post(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(receipt["region"], "CZ");
    assert_eq!(
        receipt["gateway_nodes_reached"], 1,
        "one gateway subscribed on Redis"
    );
    assert_eq!(receipt["subscribers"], 1, "kept, deprecated");
    let value = next_json(&mut client, WAIT).await.unwrap();
    assert_eq!(value["title"], "Čeština: č ž š");

    let response = http
        .post(&url)
        .bearer_auth("s3cret")
        .body(r#"{"event":"new_trending","region":"CZ"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("video_id"),
        "{error}"
    );
}

#[tokio::test]
async fn capacity_limit_answers_503() {
    let gateway = Gateway::start(&["--max-connections", "2"]).await.unwrap();
    let _first = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let _second = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let error = gateway.connect("/?region=AE").await.unwrap_err();
    match error.root_cause().downcast_ref() {
        Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn oversized_client_frame_closes_that_connection_only() {
    let gateway = Gateway::start(&["--max-client-frame-bytes", "1024"])
        .await
        .unwrap();
    let mut chatty = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let mut quiet = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    chatty
        .send(Message::text("z".repeat(10_000)))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, chatty.next()).await.unwrap();
    match frame {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::Size),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .body(seed_payload("AE", "still", "here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        next_json(&mut quiet, WAIT).await.unwrap()["video_id"],
        "still"
    );
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_idle_timeout() {
    let gateway = Gateway::start(&["--ping-interval", "100ms", "--idle-timeout", "400ms"])
        .await
        .unwrap();
    let _silent = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    // Not polled: it never answers pings.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            gateway.connections("AE").await.unwrap_or(1.0) == 0.0
        })
        .await,
        "the silent client is dropped"
    );
    // A client that is polled answers pings and stays.
    let mut polite = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let stays = tokio::time::timeout(Duration::from_millis(1200), async {
        while let Some(Ok(_)) = polite.next().await {}
    })
    .await;
    assert!(stays.is_err(), "a responsive client is kept");
    assert_eq!(gateway.connections("AE").await.unwrap(), 1.0);
}

/// Pings come from one clock shared by every connection: each connection still gets one every
/// `--ping-interval`, the first about an interval after it connected, across many intervals
/// (positive control), while a client that never answers is dropped no sooner than
/// `--idle-timeout` and no later than two intervals after it (negative control).
#[tokio::test]
async fn each_connection_is_pinged_once_an_interval_across_many_intervals() {
    let gateway = Gateway::start(&["--ping-interval", "100ms", "--idle-timeout", "450ms"])
        .await
        .unwrap();
    let mut listeners = Vec::new();
    for stagger in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(33 * stagger)).await;
        // Before the handshake: the gateway's timer starts after it, so no ping can come
        // sooner than an interval (less one of the clock's 16 steps) after this.
        let connecting = Instant::now();
        let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
        listeners.push(tokio::spawn(async move {
            let connected = connecting;
            let mut pings = Vec::new();
            let read = tokio::time::timeout(Duration::from_millis(1_550), async {
                while let Some(message) = client.next().await {
                    match message {
                        Ok(Message::Ping(_)) => pings.push(connected.elapsed()),
                        Ok(_) => {}
                        Err(error) => return Err(error.to_string()),
                    }
                }
                Err::<(), String>("the gateway closed the connection".to_string())
            })
            .await;
            (read, pings)
        }));
    }
    let silent_since = Instant::now();
    let _silent = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    let silent_dropped = wait_until(Duration::from_secs(5), || async {
        gateway.connections("FI").await.unwrap_or(1.0) == 0.0
    })
    .await;
    let dropped_after = silent_since.elapsed();
    assert!(silent_dropped, "the silent client is dropped");
    for listener in listeners {
        let (read, pings) = listener.await.unwrap();
        assert!(read.is_err(), "the socket ended early: {read:?}");
        // One a period; the bounds leave room for a loaded machine's scheduling, not for a
        // second ping per period (red with the clock ticking twice a period: 30 pings).
        assert!(
            (12..=17).contains(&pings.len()),
            "{} pings in ~1.6 s at a 100 ms interval: {pings:?}",
            pings.len()
        );
        let first = pings[0];
        assert!(
            first >= Duration::from_millis(85) && first <= Duration::from_millis(250),
            "first ping {first:?} after connecting"
        );
        for pair in pings.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(50) && gap <= Duration::from_millis(250),
                "pings {gap:?} apart: {pings:?}"
            );
        }
        let span = pings[pings.len() - 1] - first;
        let mean_gap = span / (pings.len() as u32 - 1);
        assert!(
            mean_gap >= Duration::from_millis(90) && mean_gap <= Duration::from_millis(115),
            "pings {mean_gap:?} apart on average: {pings:?}"
        );
    }
    assert!(
        dropped_after >= Duration::from_millis(450),
        "dropped after {dropped_after:?}, before the idle timeout"
    );
    assert!(
        dropped_after <= Duration::from_millis(450 + 200 + 300),
        "dropped after {dropped_after:?}, long past the idle timeout"
    );
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let gateway = Gateway::start(&[]).await.unwrap();
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);
    assert_eq!(gateway.get("/readyz").await.unwrap().0, 200);
    let (status, body) = gateway.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("notify_connections{region=\"AE\"} 0"),
        "{body}"
    );
    let (status, body) = gateway.get("/api/info").await.unwrap();
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["broker"], "embedded");
    assert_eq!(info["publish"], "open");
    assert_eq!(info["regions"].as_array().unwrap().len(), 8);
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Idle TCP connections that never send a byte hold socket slots, not the descriptors the
/// gateway keeps for itself: while they fill every slot, fresh connections get a quick 503,
/// the Redis link still reconnects after being cut, and existing clients keep receiving.
#[tokio::test]
async fn idle_sockets_cannot_eat_the_descriptor_reserve_redis_needs() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start_with_open_files_limit(
        64,
        &["--redis-url", &url, "--handshake-timeout", "60s"],
    )
    .await
    .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let pid = gateway.pid().unwrap();
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    // Far more idle connections than the 64 descriptors.
    let mut idle = Vec::new();
    for _ in 0..120 {
        if let Ok(stream) = tokio::net::TcpStream::connect(gateway.addr()).await {
            idle.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A fresh connection is answered at once (503), not left hanging.
    let asked = Instant::now();
    let fresh = gateway.get("/healthz").await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a refused connection waited {:?}",
        asked.elapsed()
    );
    // A bare 503, or a reset when the request arrived after the gateway read what was there
    // and closed: either way refused at once, never served.
    assert!(
        matches!(fresh, Ok((503, _)) | Err(_)),
        "every socket slot is taken, yet a new connection got {fresh:?}"
    );

    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(pid) - before;
    assert!(used < 0.3, "accept loop spins: {used} CPU seconds in 1 s");

    // Cut the gateway's subscription: it must reconnect from its reserve.
    let mut connection = redis.connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(killed >= 1, "the gateway's subscription was cut");
    let delivered = tokio::time::timeout(Duration::from_secs(15), async {
        for attempt in 0.. {
            let payload = seed_payload("AE", &format!("after-cut-{attempt}"), "t");
            redis.publish("tvs:AE", payload).await.unwrap();
            if let Some(value) = next_json(&mut client, Duration::from_millis(250)).await {
                return value;
            }
        }
        unreachable!()
    })
    .await
    .expect("a message reaches the existing client after the Redis link was cut");
    assert!(
        delivered["video_id"]
            .as_str()
            .unwrap()
            .starts_with("after-cut-"),
        "{delivered}"
    );

    drop(idle);
    assert!(
        wait_until(WAIT, || async {
            matches!(gateway.get("/healthz").await, Ok((200, _)))
        })
        .await,
        "the gateway serves again once the idle sockets are gone"
    );
    assert!(
        gateway
            .metric("notify_sockets_refused_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        gateway.metric("notify_accept_errors_total").await.unwrap(),
        0.0,
        "the process never ran out of descriptors"
    );
}

/// Samples a process's RSS every 20 ms until `done`; returns the peak in KiB.
async fn peak_rss_kib_until(pid: u32, done: impl std::future::Future<Output = ()>) -> u64 {
    tokio::pin!(done);
    let mut peak = rss_kib(pid);
    loop {
        tokio::select! {
            () = &mut done => return peak.max(rss_kib(pid)),
            () = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(rss_kib(pid)),
        }
    }
}

/// Bound on the gateway's RSS growth while one client floods pings (stated in the README).
const PING_FLOOD_RSS_BOUND_KIB: u64 = 32 * 1024;

/// A client that sends pings as fast as it can and never reads the pongs: the pongs back up
/// to `--ws-max-write-buffer-bytes` at most, the client is cut as a slow consumer within the
/// write timeout, and the others keep receiving.
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_cut_with_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    let gateway = Gateway::start(&["--write-timeout", "1s"]).await.unwrap();
    let pid = gateway.pid().unwrap();
    let mut live = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut flooder = socket.connect(gateway.addr()).await.unwrap();
    flooder.write_all(notify_tests::RAW_UPGRADE).await.unwrap();
    let head = notify_tests::read_response_head(&mut flooder).await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("AE").await.unwrap_or(0.0) >= 2.0
        })
        .await
    );
    let baseline = rss_kib(pid);
    let pings = notify_tests::ping_flood_chunk();
    let flood = async {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut sent = 0usize;
        loop {
            match tokio::time::timeout_at(deadline, flooder.write_all(&pings)).await {
                Ok(Ok(())) => sent += pings.len(),
                Ok(Err(_)) => return (true, started.elapsed(), sent),
                Err(_) => return (false, started.elapsed(), sent),
            }
        }
    };
    let outcome = std::sync::Mutex::new(None);
    let peak = peak_rss_kib_until(pid, async {
        *outcome.lock().unwrap() = Some(flood.await);
    })
    .await;
    let (cut, after, sent) = outcome.into_inner().unwrap().unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "ping flood: {} MB of pings, cut={cut} after {after:?}, RSS {baseline} KiB → peak {peak} KiB",
        sent / 1_000_000
    );
    assert!(cut, "the flooding client was not cut within 10 s");
    assert!(
        growth < PING_FLOOD_RSS_BOUND_KIB,
        "RSS grew {growth} KiB (bound {PING_FLOOD_RSS_BOUND_KIB} KiB)"
    );
    assert!(
        gateway
            .metric("notify_slow_client_disconnects_total")
            .await
            .unwrap()
            >= 1.0
    );
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .body(seed_payload("AE", "after-flood", "t"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        next_json(&mut live, WAIT).await.unwrap()["video_id"],
        "after-flood"
    );
}

/// Bound on the gateway's RSS growth while 1,000 connections send endless request heads.
const ENDLESS_HEADS_RSS_BOUND_KIB: u64 = 48 * 1024;

/// Request heads are capped at a few KiB: a 100 KB header is refused with 431 (or a close),
/// and 1,000 connections each sending 96 KB of a header that never ends cost a bounded
/// amount of memory that is given back.
#[tokio::test]
async fn request_heads_are_capped_and_endless_ones_cost_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = Gateway::start(&[]).await.unwrap();
    let pid = gateway.pid().unwrap();
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();

    let mut big = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100_000));
    request.extend_from_slice(b"\r\n\r\n");
    // The gateway may close before taking it all: a failed write is part of the answer.
    let _ = big.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a 100 KB header got: {answer}"
    );

    let baseline = rss_kib(pid);
    let endless = async {
        let mut sockets = Vec::new();
        let chunk = vec![b'a'; 96 * 1024];
        for _ in 0..1000 {
            let mut socket = tokio::net::TcpStream::connect(gateway.addr())
                .await
                .unwrap();
            let _ = socket.write_all(b"GET / HTTP/1.1\r\nX-Endless: ").await;
            let _ =
                tokio::time::timeout(Duration::from_millis(200), socket.write_all(&chunk)).await;
            sockets.push(socket);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sockets
    };
    let sockets = std::sync::Mutex::new(Vec::new());
    let peak = peak_rss_kib_until(pid, async {
        *sockets.lock().unwrap() = endless.await;
    })
    .await;
    drop(sockets);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let growth = peak.saturating_sub(baseline);
    eprintln!("1,000 endless heads: RSS {baseline} KiB → peak {peak} KiB → after {after} KiB");
    assert!(
        growth < ENDLESS_HEADS_RSS_BOUND_KIB,
        "RSS grew {growth} KiB (bound {ENDLESS_HEADS_RSS_BOUND_KIB} KiB)"
    );
    assert!(
        after < baseline + ENDLESS_HEADS_RSS_BOUND_KIB / 2,
        "RSS stayed at {after} KiB after the connections ended (baseline {baseline} KiB)"
    );
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .body(seed_payload("AE", "after-heads", "t"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        next_json(&mut client, WAIT).await.unwrap()["video_id"],
        "after-heads"
    );
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_closed() {
    use tokio::io::AsyncReadExt;
    let gateway = Gateway::start(&["--handshake-timeout", "300ms"])
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut received))
        .await
        .is_ok();
    assert!(closed, "closed by the handshake timeout, not left open");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}, before the timeout"
    );
    assert!(gateway.get("/healthz").await.is_ok());
}

#[tokio::test]
async fn publishing_over_http_needs_a_key_on_a_non_loopback_address() {
    let open = Gateway::start_on_all_interfaces(&[]).await.unwrap();
    let (_, info) = open.get("/api/info").await.unwrap();
    assert!(info.contains("\"publish\":\"disabled\""), "{info}");
    let response = http_client()
        .post(format!("{}/api/publish", open.http_url()))
        .body(seed_payload("AE", "v", "t"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("--api-key"),
        "{error}"
    );

    let keyed = Gateway::start_on_all_interfaces(&["--api-key", "k"])
        .await
        .unwrap();
    let response = http_client()
        .post(format!("{}/api/publish", keyed.http_url()))
        .bearer_auth("k")
        .body(seed_payload("AE", "v", "t"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn json_logs_for_production() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(notify_tests::binary("notify-gateway"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let listening = line.contains("listening on");
            lines.push(line);
            if listening {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(WAIT, lines)
        .await
        .expect("the gateway logs its listen address")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let logged: Vec<Value> = lines
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(logged.len() >= 2, "{lines:?}");
    assert!(logged
        .iter()
        .all(|entry| entry["level"].is_string() && entry["timestamp"].is_string()));
    assert!(
        logged.iter().any(|entry| entry["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("embedded")),
        "the startup log says which broker runs: {lines:?}"
    );
    let listening = logged.last().unwrap();
    let bound: std::net::SocketAddr = listening["fields"]["listen"]
        .as_str()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("the listening line names the bound address: {listening}"));
    assert_ne!(bound.port(), 0, "the port the kernel chose, not 0");
}

//! Server-Sent Events (`GET /events`): ids, `Last-Event-ID` resume, `resync`, heartbeats, the
//! slow-consumer cut with bounded memory, drain on SIGTERM and refusals. Real redis-server,
//! real gateway, real sockets; the client parses the stream as a browser's `EventSource` does.

use std::time::{Duration, Instant};

use notify_tests::sse::{self, Next, SseClient, SseEvent};
use notify_tests::{http_client, rss_kib, seed_payload, wait_until, Gateway, RedisServer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Publishes through the gateway's HTTP API (the recorded, id-carrying path); returns the id.
async fn publish_api(gateway: &Gateway, region: &str, video_id: &str, title: &str) -> String {
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .body(seed_payload(region, video_id, title))
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status(), 200, "publish {video_id}");
    let receipt: Value = response.json().await.unwrap();
    receipt["id"].as_str().expect("an id").to_owned()
}

/// Opens an SSE stream and waits until the gateway counts it, so a message published next is
/// guaranteed to reach it.
async fn open_counted(gateway: &Gateway, query: &str, last_event_id: Option<&str>) -> SseClient {
    let region = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("region="))
        .unwrap_or("US")
        .to_owned();
    let before = gateway.connections(&region).await.unwrap();
    let url = format!("{}/events?{query}", gateway.http_url());
    let client = SseClient::open(&url, last_event_id).await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.connections(&region).await.unwrap_or(0.0) > before
        })
        .await,
        "the gateway did not count the stream"
    );
    client
}

/// Reads `count` events; each must be a notification (default event type).
async fn notifications(client: &mut SseClient, count: usize) -> Vec<SseEvent> {
    let mut events = Vec::with_capacity(count);
    for n in 0..count {
        let event = client
            .event(WAIT)
            .await
            .unwrap_or_else(|error| panic!("event {n} of {count}: {error:#}"));
        assert_eq!(event.event, None, "a notification, not {event:?}");
        events.push(event);
    }
    events
}

/// Each event's `id:` equals the notification's own `id` field, and names the video in order.
fn assert_ids_and_order(events: &[SseEvent], ids: &[String], videos: &[String]) {
    let got_ids: Vec<&str> = events.iter().map(|e| e.id.as_deref().unwrap()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for (event, video) in events.iter().zip(videos) {
        let json = event.json();
        assert_eq!(json["video_id"], video.as_str());
        assert_eq!(
            json["id"].as_str(),
            event.id.as_deref(),
            "id: line = id field"
        );
    }
}

#[tokio::test]
async fn events_carry_ids_and_last_event_id_resumes_with_nothing_lost_or_twice() {
    let redis = RedisServer::start().await.unwrap();
    let gateway = Gateway::start(&["--redis-url", &redis.url()])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = open_counted(&gateway, "region=AE", None).await;
    assert_eq!(
        gateway
            .metric("notify_connections_by_transport{transport=\"sse\"}")
            .await
            .unwrap(),
        1.0
    );
    let videos: Vec<String> = (0..15).map(|n| format!("v{n}")).collect();
    let mut ids = Vec::new();
    for video in &videos[..5] {
        ids.push(publish_api(&gateway, "AE", video, "أخبار\nعاجلة").await);
    }
    let first = notifications(&mut client, 5).await;
    assert_ids_and_order(&first, &ids, &videos[..5]);
    assert_eq!(
        first[0].json()["title"],
        "أخبار\nعاجلة",
        "UTF-8 and newlines survive"
    );
    let retry = client.retry_ms.expect("retry: before the first event");
    assert!(
        (250..=500).contains(&retry),
        "retry {retry} ms: the client's first backoff step"
    );

    // A plain PUBLISH (the seed's PHP path) has no id: no `id:` line.
    redis
        .publish("tvs:AE", seed_payload("AE", "plain", "t"))
        .await
        .unwrap();
    let plain = client.event(WAIT).await.unwrap();
    assert_eq!((plain.id.as_deref(), plain.event.as_deref()), (None, None));
    assert_eq!(plain.json()["video_id"], "plain");

    // Away: five more are published. The reconnect names an older `since` in its URL (where
    // the first connection started) and the browser's Last-Event-ID: the header wins.
    drop(client);
    for video in &videos[5..10] {
        ids.push(publish_api(&gateway, "AE", video, "t").await);
    }
    let query = format!("region=AE&since={}", ids[0]);
    let mut client = open_counted(&gateway, &query, Some(&ids[4])).await;
    let replayed = notifications(&mut client, 5).await;
    assert_ids_and_order(&replayed, &ids[5..10], &videos[5..10]);
    client
        .expect_silence(Duration::from_millis(500))
        .await
        .expect("nothing sent twice after the replay");
    for video in &videos[10..15] {
        ids.push(publish_api(&gateway, "AE", video, "t").await);
    }
    let live = notifications(&mut client, 5).await;
    assert_ids_and_order(&live, &ids[10..15], &videos[10..15]);
    client
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("nothing twice");
    assert_eq!(
        gateway
            .metric("notify_resumes_total{source=\"memory\"}")
            .await
            .unwrap(),
        1.0,
        "the SSE resume ran the WebSocket's replay"
    );
    assert_eq!(
        gateway
            .metric("notify_messages_delivered_total{transport=\"sse\"}")
            .await
            .unwrap(),
        16.0,
        "5 live, 1 plain, 5 replayed, 5 live"
    );
}

#[tokio::test]
async fn a_last_event_id_beyond_the_retention_gets_a_resync_event() {
    let redis = RedisServer::start().await.unwrap();
    let gateway = Gateway::start(&[
        "--redis-url",
        &redis.url(),
        "--history-retention",
        "10",
        "--history-cache",
        "4",
    ])
    .await
    .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let oldest = publish_api(&gateway, "GB", "v0", "t").await;
    let mut latest = oldest.clone();
    for n in 1..400 {
        latest = publish_api(&gateway, "GB", &format!("v{n}"), "t").await;
    }
    let mut client = open_counted(&gateway, "region=GB", Some(&oldest)).await;
    let resync = client.event(WAIT).await.unwrap();
    assert_eq!(resync.event.as_deref(), Some("resync"), "{resync:?}");
    assert_eq!(
        resync.id, None,
        "a control event leaves the browser's last id alone"
    );
    let json = resync.json();
    assert_eq!(json["since"], oldest.as_str());
    assert_eq!(json["latest"], latest.as_str());
    client
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("nothing after latest is replayed");
    let next = publish_api(&gateway, "GB", "after", "t").await;
    let live = notifications(&mut client, 1).await;
    assert_eq!(live[0].id.as_deref(), Some(next.as_str()));
}

/// Heartbeats arrive every `--ping-interval` on an idle stream, which stays open and quiet
/// for several periods, then still delivers.
#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_across_several_periods() {
    let gateway = Gateway::start(&["--ping-interval", "200ms", "--idle-timeout", "1s"])
        .await
        .unwrap();
    let mut client = open_counted(&gateway, "region=AE", None).await;
    // Five periods past the idle timeout: an SSE client sends nothing and is not idle-cut.
    client
        .expect_silence(Duration::from_millis(1_500))
        .await
        .unwrap();
    assert!(
        client.heartbeats >= 5,
        "{} heartbeats in 1.5 s at 200 ms",
        client.heartbeats
    );
    publish_api(&gateway, "AE", "after-quiet", "t").await;
    assert_eq!(
        notifications(&mut client, 1).await[0].json()["video_id"],
        "after-quiet"
    );
}

/// Bound on the gateway's RSS growth while one SSE client stops reading under a flood of
/// large messages (as for a WebSocket that stops reading).
const STALLED_READER_RSS_BOUND_KIB: u64 = 32 * 1024;

/// One SSE client stops reading (its socket's receive buffer is small and never drained)
/// while 250 messages of 30 KB are published: it is cut as a slow consumer within the write
/// timeout, the gateway's memory stays bounded, and a reading client beside it gets every
/// message in order and is not cut.
#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_cut_with_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = Gateway::start(&["--write-timeout", "1s", "--queue-limit", "1024"])
        .await
        .unwrap();
    let pid = gateway.pid().unwrap();
    let mut reader = open_counted(&gateway, "region=AE", None).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gateway.addr()).await.unwrap();
    stalled
        .write_all(
            b"GET /events?region=AE HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stalled.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
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
    const MESSAGES: usize = 250;
    let title = "x".repeat(30_000);
    let publishing = async {
        let http = http_client();
        for n in 0..MESSAGES {
            let response = http
                .post(format!("{}/api/publish", gateway.http_url()))
                .body(seed_payload("AE", &format!("v{n}"), &title))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    let reading = async {
        let mut peak = 0;
        for n in 0..MESSAGES {
            let event = reader.event(WAIT).await.unwrap();
            assert_eq!(
                event.json()["video_id"],
                format!("v{n}"),
                "in order, none lost"
            );
            if n % 20 == 0 {
                peak = peak.max(rss_kib(pid));
            }
        }
        peak
    };
    let started = Instant::now();
    let ((), peak) = tokio::join!(publishing, reading);
    let cut = wait_until(WAIT, || async {
        gateway
            .metric("notify_slow_client_disconnects_total{transport=\"sse\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let peak = peak.max(rss_kib(pid));
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "stalled SSE reader: {MESSAGES} × 30 KB in {:?}, cut={cut}, RSS {baseline} KiB → peak {peak} KiB",
        started.elapsed()
    );
    assert!(cut, "the stalled reader was not cut as a slow consumer");
    assert!(
        growth < STALLED_READER_RSS_BOUND_KIB,
        "RSS grew {growth} KiB (bound {STALLED_READER_RSS_BOUND_KIB} KiB)"
    );
    // Its socket was closed by the gateway: reading what the kernel still holds ends.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(_)) | Ok(Err(_))),
        "the stalled reader's socket stayed open"
    );
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("AE").await.unwrap_or(0.0) == 1.0
        })
        .await,
        "its slot was freed"
    );
    // The reading client was not cut and still receives.
    assert_eq!(
        gateway
            .metric("notify_slow_client_disconnects_total{transport=\"sse\"}")
            .await
            .unwrap(),
        1.0
    );
    publish_api(&gateway, "AE", "after", "t").await;
    assert_eq!(
        notifications(&mut reader, 1).await[0].json()["video_id"],
        "after"
    );
}

#[tokio::test]
async fn sigterm_ends_the_stream_with_a_close_event() {
    let mut gateway = Gateway::start(&[]).await.unwrap();
    let mut client = open_counted(&gateway, "region=AE", None).await;
    publish_api(&gateway, "AE", "before", "t").await;
    notifications(&mut client, 1).await;
    let started = Instant::now();
    gateway.sigterm();
    let events = client.until_end(WAIT).await.unwrap();
    let ended_after = started.elapsed();
    let [close] = events.as_slice() else {
        panic!("expected one close event, got {events:?}");
    };
    assert_eq!(close.event.as_deref(), Some("close"));
    let json = close.json();
    assert_eq!(json["code"], 1001, "{json}");
    assert_eq!(json["reason"], "server shutting down");
    let retry = client.retry_ms.unwrap();
    assert!(
        (250..=500).contains(&retry),
        "reconnect soon: retry {retry} ms"
    );
    assert_eq!(gateway.wait_exit(WAIT), Some(0));
    eprintln!("SIGTERM → stream ended in {ended_after:?}");
    assert!(ended_after < Duration::from_secs(2), "{ended_after:?}");
}

/// SSE passes the WebSocket's admission: the same statuses and reasons, and one pool of
/// connection slots for both transports.
#[tokio::test]
async fn refusals_have_the_websocket_statuses_and_share_the_slots() {
    let gateway = Gateway::start(&["--max-connections", "1", "--regions", "AE,FI"])
        .await
        .unwrap();
    let url = |query: &str| format!("{}/events?{query}", gateway.http_url());
    let status_and_text = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };

    let (status, text) =
        status_and_text(sse::request(&url("region=US"), None).await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(text.contains("not served"), "{text}");
    let (status, text) = status_and_text(
        sse::request(&url("region=AE"), Some("yesterday"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.starts_with("Last-Event-ID"), "{text}");

    let mut socket = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let (status, text) =
        status_and_text(sse::request(&url("region=FI"), None).await.unwrap()).await;
    assert_eq!(status, 503, "the WebSocket holds the only slot");
    assert!(text.contains("capacity"), "{text}");
    socket.close(None).await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("AE").await.unwrap_or(1.0) == 0.0
        })
        .await
    );
    let mut stream = open_counted(&gateway, "region=FI", None).await;
    let refused = gateway.connect("/?region=AE").await;
    assert!(
        refused.is_err_and(|error| format!("{error:#}").contains("503")),
        "the stream holds the only slot"
    );
    assert!(matches!(
        stream.next(Duration::from_millis(200)).await.unwrap(),
        Next::TimedOut
    ));
    assert_eq!(
        gateway
            .metric("notify_handshakes_rejected_total{reason=\"capacity\"}")
            .await
            .unwrap(),
        2.0
    );
}

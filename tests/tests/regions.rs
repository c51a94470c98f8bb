//! Several regions on one connection (`?region=AE,FI`), on WebSocket and SSE: each event from
//! its own region and none from others, a resume with one id per region (`since=AE:<id>,FI:<id>`,
//! a multi-region SSE stream's `Last-Event-ID`) with nothing lost or twice, a region beyond its
//! retention getting its own `resync` only, and the refusals: too many regions for
//! `--max-regions-per-connection`, a region twice, a region not served, a bare `since` for
//! several. Real redis-server, real gateway, real sockets.

use std::time::Duration;

use notify_tests::sse::{self, SseClient, SseEvent};
use notify_tests::{
    expect_silence, http_client, next_json, seed_payload, wait_until, Gateway, RedisServer,
    WsClient,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Publishes through the gateway's HTTP API (the recorded, id-carrying path); returns the id.
async fn publish_api(gateway: &Gateway, region: &str, video_id: &str) -> String {
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .body(seed_payload(region, video_id, "t"))
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status(), 200, "publish {region} {video_id}");
    let receipt: Value = response.json().await.unwrap();
    receipt["id"].as_str().expect("an id").to_owned()
}

/// Publishes `count` notifications to each of `regions`, interleaved; returns per region its
/// `(video, id)` in order.
async fn publish_interleaved(
    gateway: &Gateway,
    regions: &[&str],
    count: usize,
    tag: &str,
) -> Vec<Vec<(String, String)>> {
    let mut published = vec![Vec::new(); regions.len()];
    for n in 0..count {
        for (index, region) in regions.iter().enumerate() {
            let video = format!("{tag}-{region}-{n}");
            let id = publish_api(gateway, region, &video).await;
            published[index].push((video, id));
        }
    }
    published
}

/// Reads `count` notifications from a WebSocket.
async fn ws_notifications(socket: &mut WsClient, count: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(count);
    for n in 0..count {
        let json = next_json(socket, WAIT)
            .await
            .unwrap_or_else(|| panic!("notification {n} of {count} did not arrive"));
        assert_eq!(json["event"], "new_trending", "{json}");
        got.push(json);
    }
    got
}

/// Reads `count` notification events from an SSE stream.
async fn sse_notifications(client: &mut SseClient, count: usize) -> Vec<SseEvent> {
    let mut got = Vec::with_capacity(count);
    for n in 0..count {
        let event = client
            .event(WAIT)
            .await
            .unwrap_or_else(|error| panic!("event {n} of {count}: {error:#}"));
        assert_eq!(event.event, None, "a notification, not {event:?}");
        got.push(event);
    }
    got
}

/// Splits what arrived by region and checks it is exactly `expected` (per region, in order,
/// by video and id), and nothing of any other region.
fn assert_per_region(got: &[Value], regions: &[&str], expected: &[Vec<(String, String)>]) {
    for (region, expected) in regions.iter().zip(expected) {
        let of_region: Vec<(String, String)> = got
            .iter()
            .filter(|json| json["region"] == *region)
            .map(|json| {
                (
                    json["video_id"].as_str().unwrap().to_owned(),
                    json["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(&of_region, expected, "{region}: each once, in order");
    }
    for json in got {
        assert!(
            regions.contains(&json["region"].as_str().unwrap()),
            "a notification of a region not asked for: {json}"
        );
    }
}

/// The last id of `region` in an SSE event's composite `id:` line (`AE:<id>,FI:<id>`).
fn position_of<'a>(composite: &'a str, region: &str) -> Option<&'a str> {
    composite.split(',').find_map(|entry| {
        let (name, id) = entry.split_once(':')?;
        (name == region).then_some(id)
    })
}

async fn redis_gateway(extra: &[&str]) -> (RedisServer, Gateway) {
    let redis = RedisServer::start().await.unwrap();
    let mut args = vec!["--redis-url".to_owned(), redis.url()];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway = Gateway::start(&args).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    (redis, gateway)
}

#[tokio::test]
async fn a_websocket_to_two_regions_gets_both_and_resumes_each_after_its_own_id() {
    let (redis, gateway) = redis_gateway(&[]).await;
    let mut both = gateway
        .connect_counted("/?region=AE,fi", "FI")
        .await
        .unwrap();
    assert_eq!(gateway.connections("AE").await.unwrap(), 1.0);
    assert_eq!(
        gateway
            .metric("notify_connections_by_transport{transport=\"websocket\"}")
            .await
            .unwrap(),
        1.0,
        "one connection, counted in each of its regions"
    );
    assert_eq!(
        gateway
            .metric("notify_multi_region_connections_total")
            .await
            .unwrap(),
        1.0
    );
    let mut single = gateway.connect_counted("/?region=CZ", "CZ").await.unwrap();

    let live = publish_interleaved(&gateway, &["AE", "FI", "CZ"], 3, "live").await;
    let got = ws_notifications(&mut both, 6).await;
    assert_per_region(&got, &["AE", "FI"], &live[..2]);
    expect_silence(&mut both, Duration::from_millis(300))
        .await
        .expect("nothing of CZ");
    // A plain PUBLISH (the seed's path) of a region asked reaches it too, without an id.
    redis
        .publish("tvs:FI", seed_payload("FI", "plain", "t"))
        .await
        .unwrap();
    let plain = next_json(&mut both, WAIT).await.expect("the plain publish");
    assert_eq!(
        (plain["region"].as_str(), plain.get("id")),
        (Some("FI"), None)
    );
    // The single-region client next to it is unchanged.
    let cz = ws_notifications(&mut single, 3).await;
    assert_per_region(&cz, &["CZ"], &live[2..]);

    // Away: both regions (and another) go on publishing.
    both.close(None).await.unwrap();
    drop(both);
    let away = publish_interleaved(&gateway, &["AE", "FI", "CZ"], 4, "away").await;
    let since = format!("AE:{},FI:{}", live[0][2].1, live[1][2].1);
    let mut back = gateway
        .connect_counted(&format!("/?region=AE,FI&since={since}"), "AE")
        .await
        .unwrap();
    let replayed = ws_notifications(&mut back, 8).await;
    assert_per_region(&replayed, &["AE", "FI"], &away[..2]);
    expect_silence(&mut back, Duration::from_millis(500))
        .await
        .expect("nothing twice after the replays");
    let after = publish_interleaved(&gateway, &["FI", "AE"], 2, "after").await;
    let got = ws_notifications(&mut back, 4).await;
    assert_per_region(&got, &["FI", "AE"], &after);
    expect_silence(&mut back, Duration::from_millis(300))
        .await
        .expect("nothing twice live");
    assert_eq!(
        gateway
            .metric("notify_resumes_total{source=\"memory\"}")
            .await
            .unwrap(),
        2.0,
        "one replay per region"
    );

    // A region without an entry starts live: only FI is replayed.
    let since = format!("FI:{}", away[1][1].1);
    let mut partial = gateway
        .connect_counted(&format!("/?region=AE,FI&since={since}"), "AE")
        .await
        .unwrap();
    let replayed = ws_notifications(&mut partial, 4).await;
    let mut expected_fi = away[1][2..].to_vec();
    expected_fi.extend(after[0].iter().cloned());
    assert_per_region(&replayed, &["AE", "FI"], &[Vec::new(), expected_fi]);
    expect_silence(&mut partial, Duration::from_millis(300))
        .await
        .expect("AE starts live: nothing of its history");
}

#[tokio::test]
async fn an_sse_stream_to_two_regions_carries_every_regions_position_in_its_ids() {
    let (_redis, gateway) = redis_gateway(&[]).await;
    let url = |query: &str| format!("{}/events?{query}", gateway.http_url());
    let mut client = SseClient::open(&url("region=AE,FI"), None).await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.connections("FI").await.unwrap_or(0.0) == 1.0
                && gateway.connections("AE").await.unwrap_or(0.0) == 1.0
        })
        .await,
        "the stream counts in both regions"
    );
    let live = publish_interleaved(&gateway, &["AE", "CZ", "FI"], 3, "live").await;
    let events = sse_notifications(&mut client, 6).await;
    let jsons: Vec<Value> = events.iter().map(SseEvent::json).collect();
    assert_per_region(&jsons, &["AE", "FI"], &[live[0].clone(), live[2].clone()]);
    // Each `id:` is the last id per region so far; the first names AE alone.
    assert_eq!(
        events[0].id.as_deref(),
        Some(format!("AE:{}", live[0][0].1).as_str())
    );
    for event in &events {
        let json = event.json();
        let region = json["region"].as_str().unwrap();
        let composite = event.id.as_deref().expect("an id: line");
        assert_eq!(position_of(composite, region), json["id"].as_str());
    }
    let last = events.last().unwrap().id.clone().unwrap();
    assert_eq!(
        last,
        format!("AE:{},FI:{}", live[0][2].1, live[2][2].1),
        "the last event's id is every region's position"
    );
    client
        .expect_silence(Duration::from_millis(300))
        .await
        .expect("nothing of CZ");

    // Away; the browser reconnects with its Last-Event-ID, and its URL still names where the
    // first connection started (nothing): the header resumes both regions.
    drop(client);
    let away = publish_interleaved(&gateway, &["FI", "AE", "CZ"], 3, "away").await;
    let mut back = SseClient::open(&url("region=AE,FI"), Some(&last))
        .await
        .unwrap();
    let events = sse_notifications(&mut back, 6).await;
    let jsons: Vec<Value> = events.iter().map(SseEvent::json).collect();
    assert_per_region(&jsons, &["FI", "AE"], &away[..2]);
    assert_eq!(
        events.last().unwrap().id.as_deref(),
        Some(format!("AE:{},FI:{}", away[1][2].1, away[0][2].1).as_str()),
        "replayed events carry the composite too"
    );
    back.expect_silence(Duration::from_millis(500))
        .await
        .expect("nothing twice after the replays");
    let after = publish_interleaved(&gateway, &["AE", "FI"], 2, "after").await;
    let events = sse_notifications(&mut back, 4).await;
    let jsons: Vec<Value> = events.iter().map(SseEvent::json).collect();
    assert_per_region(&jsons, &["AE", "FI"], &after);
    back.expect_silence(Duration::from_millis(300))
        .await
        .expect("nothing twice live");

    // A bare Last-Event-ID cannot say which region it is: 400, nothing served.
    let refused = sse::request(&url("region=AE,FI"), Some(&away[0][0].1))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let text = refused.text().await.unwrap();
    assert!(
        text.starts_with("Last-Event-ID: a bare id is for one region"),
        "{text}"
    );
}

#[tokio::test]
async fn a_region_beyond_its_retention_gets_its_own_resync_and_the_other_replays() {
    let (_redis, gateway) =
        redis_gateway(&["--history-retention", "10", "--history-cache", "4"]).await;
    let gb_oldest = publish_api(&gateway, "GB", "gb-0").await;
    let ae_seen = publish_api(&gateway, "AE", "ae-0").await;
    let mut gb_latest = gb_oldest.clone();
    for n in 1..400 {
        gb_latest = publish_api(&gateway, "GB", &format!("gb-{n}")).await;
    }
    let ae_missed: Vec<(String, String)> = {
        let mut missed = Vec::new();
        for n in 1..4 {
            let video = format!("ae-{n}");
            let id = publish_api(&gateway, "AE", &video).await;
            missed.push((video, id));
        }
        missed
    };

    for transport in ["websocket", "sse"] {
        let since = format!("GB:{gb_oldest},AE:{ae_seen}");
        let mut frames: Vec<Value> = Vec::new();
        let mut sse_client = None;
        let mut socket = None;
        if transport == "websocket" {
            let mut ws = gateway
                .connect_counted(&format!("/?region=AE,GB&since={since}"), "GB")
                .await
                .unwrap();
            for _ in 0..4 {
                frames.push(next_json(&mut ws, WAIT).await.expect("a message"));
            }
            expect_silence(&mut ws, Duration::from_millis(300))
                .await
                .expect("nothing more");
            socket = Some(ws);
        } else {
            let url = format!("{}/events?region=AE,GB&since={since}", gateway.http_url());
            let mut client = SseClient::open(&url, None).await.unwrap();
            for _ in 0..4 {
                let event = client.event(WAIT).await.unwrap();
                if event.event.as_deref() == Some("resync") {
                    assert_eq!(event.id, None, "a control event carries no id");
                }
                frames.push(event.json());
            }
            client
                .expect_silence(Duration::from_millis(300))
                .await
                .expect("nothing more");
            sse_client = Some(client);
        }
        let resyncs: Vec<&Value> = frames.iter().filter(|f| f["event"] == "resync").collect();
        assert_eq!(
            resyncs.len(),
            1,
            "{transport}: one resync, GB's: {frames:?}"
        );
        assert_eq!(resyncs[0]["region"], "GB", "{transport}");
        assert_eq!(resyncs[0]["since"], gb_oldest.as_str());
        assert_eq!(resyncs[0]["latest"], gb_latest.as_str());
        let notifications: Vec<Value> = frames
            .into_iter()
            .filter(|f| f["event"] == "new_trending")
            .collect();
        assert_per_region(&notifications, &["AE"], std::slice::from_ref(&ae_missed));
        drop((socket, sse_client));
    }
}

#[tokio::test]
async fn too_many_twice_unserved_or_a_bare_since_are_refused_with_their_reason() {
    let gateway = Gateway::start(&[
        "--regions",
        "AE,FI,CZ,DK",
        "--max-regions-per-connection",
        "3",
    ])
    .await
    .unwrap();
    let sse_refusal = |query: &'static str| {
        let url = format!("{}/events?{query}", gateway.http_url());
        async move {
            let response = sse::request(&url, None).await.unwrap();
            let status = response.status().as_u16();
            // An accepted stream never ends: fail at once rather than read it.
            assert_ne!(status, 200, "{query} was served");
            (status, response.text().await.unwrap())
        }
    };
    let ws_refusal = |query: &'static str| {
        let gateway = &gateway;
        async move {
            let error = gateway
                .connect(&format!("/?{query}"))
                .await
                .expect_err("refused");
            format!("{error:#}")
        }
    };
    let cases: [(&str, &str, &str); 5] = [
        (
            "region=AE,FI,CZ,DK",
            "4 regions asked, at most 3 per connection",
            "too_many_regions",
        ),
        (
            "region=AE,FI,ae",
            "region AE asked more than once",
            "duplicate_region",
        ),
        (
            "region=AE,US",
            "region US is not served by this gateway",
            "region_not_served",
        ),
        ("region=AE,XX", "region \"XX\"", "bad_region"),
        (
            "region=AE,FI&since=1764290000123-0",
            "since: a bare id is for one region",
            "bad_since",
        ),
    ];
    for (query, text, reason) in cases {
        let (status, body) = sse_refusal(query).await;
        assert_eq!(status, 400, "{query}");
        assert!(body.contains(text), "{query}: {body}");
        let error = ws_refusal(query).await;
        assert!(error.contains("400"), "{query}: {error}");
        let counted = gateway
            .metric(&format!(
                "notify_handshakes_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await
            .unwrap();
        assert_eq!(counted, 2.0, "{query}: one per transport as {reason}");
    }
    // Positive control: at the cap, served.
    let mut three = gateway
        .connect_counted("/?region=AE,FI,CZ", "CZ")
        .await
        .unwrap();
    expect_silence(&mut three, Duration::from_millis(200))
        .await
        .expect("open");
    assert_eq!(gateway.connections("AE").await.unwrap(), 1.0);
    assert_eq!(gateway.connections("DK").await.unwrap(), 0.0);
}

/// Falling behind on any one region cuts a multi-region connection as a slow consumer (1008),
/// as it does a one-region connection; a client of the same regions that reads keeps
/// receiving every message.
#[tokio::test]
async fn falling_behind_on_one_of_several_regions_is_a_slow_consumer() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    const MESSAGES: usize = 200;
    let gateway = Gateway::start(&["--queue-limit", "4"]).await.unwrap();
    let mut stalled = gateway.connect("/?region=AE,FI").await.unwrap();
    let mut reader = gateway.connect("/?region=FI,AE").await.unwrap();
    let reading = tokio::spawn(async move {
        let mut received = 0;
        while received < MESSAGES {
            match tokio::time::timeout(WAIT, reader.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => received += 1,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("the reading client after {received}: {other:?}"),
            }
        }
        reader
    });
    // Large messages to FI only, while the stalled client is not polled: its TCP buffers
    // fill and it falls more than 4 messages behind on FI; AE stays quiet.
    let mut big: Value = serde_json::from_str(&seed_payload("FI", "v", "t")).unwrap();
    big["filler"] = Value::from("y".repeat(60 * 1024));
    for _ in 0..MESSAGES {
        let response = http_client()
            .post(format!("{}/api/publish", gateway.http_url()))
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut reader = reading.await.expect("the reading client got every message");
    let mut close = None;
    loop {
        match tokio::time::timeout(WAIT, stalled.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = frame;
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    let close = close.expect("the stalled client gets a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("slow consumer"), "{}", close.reason);
    expect_silence(&mut reader, Duration::from_millis(300))
        .await
        .expect("the reading client is still connected");
}

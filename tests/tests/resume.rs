//! Lose nothing: message ids, `?since=` resume, catch-up after Redis outages, resync when the
//! history does not reach back. Real redis-server, real gateways, real sockets.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use notify_tests::{
    http_client, next_json, seed_payload, wait_until, Gateway, RedisServer, WsClient,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Publishes through the gateway's HTTP API (the recorded, id-carrying path); returns the id.
async fn publish_api(gateway: &Gateway, region: &str, video_id: &str) -> String {
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .body(seed_payload(region, video_id, "Resume ä ö č"))
        .send()
        .await
        .expect("publish request");
    assert_eq!(response.status(), 200, "publish {video_id}");
    let receipt: Value = response.json().await.unwrap();
    receipt["id"].as_str().expect("an id").to_owned()
}

/// Reads notifications until `count` arrived; control messages are returned too.
async fn collect(socket: &mut WsClient, count: usize) -> Vec<Value> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        match next_json(socket, WAIT).await {
            Some(value) => received.push(value),
            None => break,
        }
    }
    received
}

/// Parses `ms-seq` for ordering checks.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("ms-seq");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Counts (duplicates, out of order) by video id sequence `v{n}`.
fn check_exactly_once(received: &[Value], expected: usize, who: &str) {
    let sequence: Vec<usize> = received
        .iter()
        .map(|value| {
            value["video_id"].as_str().unwrap()[1..]
                .parse::<usize>()
                .unwrap()
        })
        .collect();
    let unique: HashSet<usize> = sequence.iter().copied().collect();
    let duplicates = sequence.len() - unique.len();
    let out_of_order = sequence
        .windows(2)
        .filter(|pair| pair[1] <= pair[0])
        .count();
    eprintln!(
        "{who}: published {expected}, delivered {}, duplicates {duplicates}, out of order {out_of_order}",
        sequence.len()
    );
    assert_eq!(duplicates, 0, "{who}: duplicates");
    assert_eq!(out_of_order, 0, "{who}: out of order");
    assert_eq!(
        sequence,
        (0..expected).collect::<Vec<_>>(),
        "{who}: every message"
    );
}

/// `notify_resumes_total{source="…"}` of `gateway`.
async fn resumes(gateway: &Gateway, source: &str) -> f64 {
    gateway
        .metric(&format!("notify_resumes_total{{source=\"{source}\"}}"))
        .await
        .unwrap()
}

/// Resumes 1000 missed messages; `served_by` is the path that must serve it.
async fn resume_after_1000(history_cache: &str, served_by: &str) {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url, "--history-cache", history_cache])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let first_id = publish_api(&gateway, "AE", "first").await;
    let first = next_json(&mut client, WAIT).await.unwrap();
    assert_eq!(
        first["id"],
        first_id.as_str(),
        "live messages carry their id"
    );
    drop(client);

    // 1000 published while the client is away, 16 requests in flight.
    let mut ids = Vec::new();
    for chunk in (0..1000).collect::<Vec<_>>().chunks(16) {
        let batch = chunk
            .iter()
            .map(|n| publish_api(&gateway, "AE", Box::leak(format!("v{n}").into_boxed_str())));
        ids.extend(join_all(batch).await);
    }
    ids.sort_by_key(|id| id_key(id));

    let mut resumed = gateway
        .connect(&format!("/?region=AE&since={first_id}"))
        .await
        .unwrap();
    let received = collect(&mut resumed, 1000).await;
    let received_ids: Vec<&str> = received.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(received.len(), 1000, "exactly the 1000 missed");
    assert_eq!(received_ids, ids, "in id order, none twice");
    assert!(received.iter().all(|v| v["event"] == "new_trending"));
    let live_id = publish_api(&gateway, "AE", "live").await;
    let live = next_json(&mut resumed, WAIT).await.unwrap();
    assert_eq!(
        live["id"],
        live_id.as_str(),
        "then live, no duplicate at the seam"
    );
    assert_eq!(
        resumes(&gateway, served_by).await,
        1.0,
        "served from {served_by}"
    );
    for other in ["memory", "stream", "resync"] {
        if other != served_by {
            assert_eq!(
                resumes(&gateway, other).await,
                0.0,
                "not served from {other}"
            );
        }
    }
    eprintln!("resume (history cache {history_cache}): published 1000, delivered 1000, duplicates 0, out of order 0");
}

#[tokio::test]
async fn resume_delivers_the_missed_1000_from_memory() {
    resume_after_1000("2048", "memory").await;
}

#[tokio::test]
async fn resume_delivers_the_missed_1000_from_the_redis_stream() {
    resume_after_1000("16", "stream").await;
}

#[tokio::test]
async fn killing_the_gateways_redis_links_loses_nothing() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(gateway.connect_counted("/?region=DK", "DK").await.unwrap());
    }
    const MESSAGES: usize = 400;
    // The publisher: our recorded path, through the gateway's API, at a steady pace.
    let publisher = {
        let url = gateway.http_url();
        tokio::spawn(async move {
            let http = http_client();
            for n in 0..MESSAGES {
                let response = http
                    .post(format!("{url}/api/publish"))
                    .body(seed_payload("DK", &format!("v{n}"), "Rødgrød ø å"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // The chaos: cut the gateway's subscription repeatedly while messages flow.
    let killer = {
        let client = redis.client();
        tokio::spawn(async move {
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let mut kills = 0;
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                kills += killed;
            }
            kills
        })
    };
    let mut results = Vec::new();
    for client in &mut clients {
        results.push(collect(client, MESSAGES).await);
    }
    publisher.await.unwrap();
    let kills = killer.await.unwrap();
    assert!(kills >= 4, "the subscription was cut repeatedly ({kills})");
    for (index, received) in results.iter().enumerate() {
        check_exactly_once(
            received,
            MESSAGES,
            &format!("client {index} ({kills} link cuts)"),
        );
    }
    assert!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap()
            >= 4.0
    );
}

#[tokio::test]
async fn clients_of_a_stopped_gateway_resume_on_another() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let mut first = Gateway::start(&["--redis-url", &url]).await.unwrap();
    let second = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(first.wait_ready_status(200, WAIT).await);
    assert!(second.wait_ready_status(200, WAIT).await);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(first.connect_counted("/?region=FI", "FI").await.unwrap());
    }
    const MESSAGES: usize = 300;
    let publisher = {
        let url = second.http_url();
        tokio::spawn(async move {
            let http = http_client();
            for n in 0..MESSAGES {
                let response = http
                    .post(format!("{url}/api/publish"))
                    .body(seed_payload("FI", &format!("v{n}"), "Hyvää ä ö"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Each client reads until the first gateway goes away, then resumes on the second.
    let mut received: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.sigterm();
    for (index, client) in clients.iter_mut().enumerate() {
        while let Some(value) = next_json(client, WAIT).await {
            received[index].push(value);
        }
    }
    assert_eq!(first.wait_exit(WAIT), Some(0));
    for (index, messages) in received.iter_mut().enumerate() {
        let since = messages
            .last()
            .map(|v| v["id"].as_str().unwrap().to_owned());
        assert!(
            since.is_some(),
            "client {index} got messages before the stop"
        );
        let mut resumed = second
            .connect(&format!("/?region=FI&since={}", since.unwrap()))
            .await
            .unwrap();
        let rest = MESSAGES - messages.len();
        messages.extend(collect(&mut resumed, rest).await);
    }
    publisher.await.unwrap();
    for (index, messages) in received.iter().enumerate() {
        check_exactly_once(messages, MESSAGES, &format!("client {index} moved nodes"));
    }
    // The second node followed the stream from before the first message: memory serves all.
    assert_eq!(resumes(&second, "memory").await, 3.0);
}

#[tokio::test]
async fn since_older_than_retention_gets_an_explicit_resync() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&[
        "--redis-url",
        &url,
        "--history-retention",
        "10",
        "--history-cache",
        "4",
    ])
    .await
    .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let oldest = publish_api(&gateway, "GB", "v0").await;
    for n in 1..400 {
        publish_api(&gateway, "GB", &format!("v{n}")).await;
    }
    let mut client = gateway
        .connect(&format!("/?region=GB&since={oldest}"))
        .await
        .unwrap();
    let control = next_json(&mut client, WAIT)
        .await
        .expect("a control message");
    assert_eq!(control["event"], "resync", "{control}");
    assert_eq!(control["region"], "GB");
    assert_eq!(control["since"], oldest.as_str());
    assert!(control["latest"].is_string());
    assert!(control["reason"].as_str().unwrap().contains("older"));
    let live_id = publish_api(&gateway, "GB", "live").await;
    // The gateway's stream follower may still be delivering the tail of the backlog when the
    // client subscribes: those arrive live too, in id order, then the new message.
    let mut previous: Option<String> = None;
    loop {
        let live = next_json(&mut client, WAIT)
            .await
            .expect("live delivery follows the resync");
        let id = live["id"].as_str().expect("an id").to_owned();
        if let Some(previous) = &previous {
            let parse = |id: &str| notify_proto::StreamId::parse(id).expect("a stream id");
            assert!(parse(&id) > parse(previous), "{id} after {previous}");
        }
        if id == live_id {
            break;
        }
        assert_ne!(live["video_id"], "live");
        previous = Some(id);
    }
    assert!(gateway.metric("notify_resyncs_total").await.unwrap() >= 1.0);
    assert_eq!(resumes(&gateway, "resync").await, 1.0);
    assert_eq!(resumes(&gateway, "memory").await, 0.0);
    assert_eq!(resumes(&gateway, "stream").await, 0.0);
}

#[tokio::test]
async fn embedded_broker_resumes_and_resyncs_across_restarts() {
    let mut gateway = Gateway::start(&[]).await.unwrap();
    let first = publish_api(&gateway, "CH", "v0").await;
    for n in 1..=5 {
        publish_api(&gateway, "CH", &format!("v{n}")).await;
    }
    let mut client = gateway
        .connect(&format!("/?region=CH&since={first}"))
        .await
        .unwrap();
    let replayed = collect(&mut client, 5).await;
    let videos: Vec<&str> = replayed
        .iter()
        .map(|v| v["video_id"].as_str().unwrap())
        .collect();
    assert_eq!(videos, ["v1", "v2", "v3", "v4", "v5"]);
    assert_eq!(resumes(&gateway, "memory").await, 1.0);
    drop(client);

    // A restart begins a new history: the old id must not be silently accepted.
    gateway.restart().await.unwrap();
    publish_api(&gateway, "CH", "after-restart").await;
    let mut client = gateway
        .connect(&format!("/?region=CH&since={first}"))
        .await
        .unwrap();
    let control = next_json(&mut client, WAIT).await.unwrap();
    assert_eq!(control["event"], "resync", "{control}");
    assert_eq!(resumes(&gateway, "resync").await, 1.0);
}

#[tokio::test]
async fn malformed_since_is_a_400() {
    let gateway = Gateway::start(&[]).await.unwrap();
    let error = gateway
        .connect("/?region=AE&since=yesterday")
        .await
        .unwrap_err();
    match error.root_cause().downcast_ref() {
        Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("since"), "{body}");
        }
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    assert!(wait_until(WAIT, || async { gateway.get("/healthz").await.is_ok() }).await);
}

/// A Redis that stops answering without closing its connections (SIGSTOP: like a partition)
/// must not leave the gateway "ready" and silently delivering nothing.
#[tokio::test]
async fn a_frozen_redis_is_noticed_and_nothing_published_after_it_is_lost() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url, "--redis-ping-interval", "300ms"])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=BE", "BE").await.unwrap();
    let first = publish_api(&gateway, "BE", "v0").await;
    assert_eq!(
        next_json(&mut client, WAIT).await.unwrap()["id"],
        first.as_str()
    );

    redis.freeze();
    assert!(
        gateway.wait_ready_status(503, WAIT).await,
        "a frozen Redis must turn /readyz to 503"
    );
    redis.thaw();
    // Published the moment Redis is back, possibly before the gateway has resubscribed:
    // delivered live or caught up from the stream, exactly once.
    let output = tokio::task::spawn_blocking(move || {
        notify_tests::run_publish(
            &[
                "--redis-url",
                &url,
                "--region",
                "BE",
                "--video-id",
                "v1",
                "--title",
                "Terug",
                "--thumbnail",
                "https://example.com/v1.jpg",
                "--channel",
                "Kanaal",
            ],
            None,
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(20))
            .await
    );
    let value = next_json(&mut client, Duration::from_secs(20))
        .await
        .expect("the message published after the freeze arrives");
    assert_eq!(value["video_id"], "v1");
    let second = publish_api(&gateway, "BE", "v2").await;
    assert_eq!(
        next_json(&mut client, WAIT).await.unwrap()["id"],
        second.as_str()
    );
    let reconnects = gateway
        .metric("notify_broker_reconnects_total")
        .await
        .unwrap();
    assert!(reconnects >= 1.0);
    // Recovered for good: ready at every poll across several ping intervals (2 s ≈ 6), and
    // the thawed link is never rebuilt again. A health check that fails on healthy replies
    // would pass the part above and fail here.
    let started = std::time::Instant::now();
    let mut polls = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let (status, body) = gateway.get("/readyz").await.unwrap();
        assert_eq!(status, 200, "readiness flapped after recovery: {body}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polls >= 20, "{polls} polls");
    assert_eq!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap(),
        reconnects,
        "no reconnect after the link recovered"
    );
}

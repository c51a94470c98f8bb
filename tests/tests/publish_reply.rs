//! What a publish answers, and what it fills in: `POST /api/publish` and `notify-publish`
//! name how far a notification reached for what was counted (gateway nodes with Redis,
//! browsers with the embedded broker), and a `POST /api/publish` body without `ts` is
//! published with the current time, while a plain Redis `PUBLISH` still needs its `ts`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify_tests::{
    expect_silence, http_client, next_json, run_publish, seed_payload, Gateway, RedisServer,
    WsClient,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

/// Three browsers watching AE.
async fn three_browsers(gateway: &Gateway) -> Vec<WsClient> {
    let mut browsers = Vec::new();
    for _ in 0..3 {
        browsers.push(gateway.connect_counted("/?region=AE", "AE").await.unwrap());
    }
    browsers
}

async fn post(gateway: &Gateway, body: &str) -> (u16, Value) {
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Every browser gets the notification `video_id`, and is still open.
async fn each_receives(browsers: &mut [WsClient], video_id: &str) -> Vec<Value> {
    let mut received = Vec::new();
    for browser in browsers.iter_mut() {
        let notification = next_json(browser, WAIT).await.expect("delivered");
        assert_eq!(notification["video_id"], video_id);
        received.push(notification);
    }
    received
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn the_embedded_broker_counts_browsers_reached() {
    let gateway = Gateway::start(&[]).await.unwrap();
    let mut browsers = three_browsers(&gateway).await;

    let (status, reply) = post(&gateway, &seed_payload("AE", "ae1", "عنوان")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["clients_reached"], 3, "{reply}");
    assert_eq!(reply["subscribers"], 3, "kept, deprecated: {reply}");
    assert!(reply.get("gateway_nodes_reached").is_none(), "{reply}");
    each_receives(&mut browsers, "ae1").await;

    // The CLI through this gateway says the same, in both formats.
    let gateway_url = gateway.http_url();
    let flags = |video_id: &'static str| {
        vec![
            "--gateway-url",
            gateway_url.as_str(),
            "--region",
            "AE",
            "--video-id",
            video_id,
            "--title",
            "t",
            "--thumbnail",
            "https://x/a.jpg",
            "--channel",
            "c",
        ]
    };
    let output = run_publish(&flags("ae2"), None).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "published AE ae2 via {gateway_url}: reached 3 clients (id "
        )),
        "{stdout}"
    );
    each_receives(&mut browsers, "ae2").await;
    let mut json_flags = flags("ae3");
    json_flags.extend(["--output", "json"]);
    let output = run_publish(&json_flags, None).unwrap();
    assert_eq!(output.status.code(), Some(0));
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["clients_reached"], 3, "{line}");
    assert_eq!(line["gateway"], gateway_url.as_str(), "{line}");
    assert!(line.get("gateway_nodes_reached").is_none(), "{line}");
    assert!(line.get("redis_channel").is_none(), "{line}");
    each_receives(&mut browsers, "ae3").await;
}

#[tokio::test]
async fn redis_counts_gateway_nodes_reached_not_browsers() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await, "never ready");
    let mut browsers = three_browsers(&gateway).await;

    let (status, reply) = post(&gateway, &seed_payload("AE", "ae1", "عنوان")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["gateway_nodes_reached"], 1,
        "three browsers on one node: {reply}"
    );
    assert_eq!(reply["subscribers"], 1, "kept, deprecated: {reply}");
    assert!(reply.get("clients_reached").is_none(), "{reply}");
    each_receives(&mut browsers, "ae1").await;

    // The CLI straight to Redis: the channel is `redis_channel`, never the notification's
    // own `channel` field, and the count is gateway nodes.
    let output = run_publish(
        &[
            "--redis-url",
            &url,
            "--region",
            "AE",
            "--video-id",
            "ae2",
            "--title",
            "t",
            "--thumbnail",
            "https://x/a.jpg",
            "--channel",
            "The video's channel",
            "--output",
            "json",
        ],
        None,
    )
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["redis_channel"], "tvs:AE", "{line}");
    assert!(line.get("channel").is_none(), "{line}");
    assert_eq!(line["gateway_nodes_reached"], 1, "{line}");
    let received = each_receives(&mut browsers, "ae2").await;
    assert_eq!(received[0]["channel"], "The video's channel");
}

#[tokio::test]
async fn api_publish_fills_in_a_missing_ts_with_now() {
    let gateway = Gateway::start(&[]).await.unwrap();
    let mut browser = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    let without_ts = |video_id: &str| {
        let mut body: Value = serde_json::from_str(&seed_payload("FI", video_id, "t")).unwrap();
        body.as_object_mut().unwrap().remove("ts");
        body
    };

    for body in [without_ts("missing"), {
        let mut body = without_ts("null");
        body["ts"] = Value::Null;
        body
    }] {
        let before = now();
        let (status, reply) = post(&gateway, &body.to_string()).await;
        let after = now();
        assert_eq!(status, 200, "{body}: {reply}");
        let notification = next_json(&mut browser, WAIT).await.expect("delivered");
        assert_eq!(notification["video_id"], body["video_id"]);
        let ts = notification["ts"].as_i64().expect("a ts was filled in");
        assert!((before..=after).contains(&ts), "{before} ≤ {ts} ≤ {after}");
    }

    // A ts that is given is kept; one of the wrong type is still a clear 400, and nothing is
    // delivered.
    let (status, _) = post(&gateway, &seed_payload("FI", "given", "t")).await;
    assert_eq!(status, 200);
    let notification = next_json(&mut browser, WAIT).await.expect("delivered");
    assert_eq!(notification["ts"], 1_764_290_000);
    let mut wrong = without_ts("wrong");
    wrong["ts"] = json!("now");
    let (status, reply) = post(&gateway, &wrong.to_string()).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("`ts`"),
        "the error names the field: {reply}"
    );
    expect_silence(&mut browser, QUIET).await.unwrap();
}

#[tokio::test]
async fn a_plain_redis_publish_still_needs_its_ts() {
    let redis = RedisServer::start().await.unwrap();
    let gateway = Gateway::start(&["--redis-url", &redis.url()])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await, "never ready");
    let mut browser = gateway.connect_counted("/?region=FI", "FI").await.unwrap();
    let mut body: Value = serde_json::from_str(&seed_payload("FI", "no-ts", "t")).unwrap();
    body.as_object_mut().unwrap().remove("ts");
    redis.publish("tvs:FI", body.to_string()).await.unwrap();
    expect_silence(&mut browser, QUIET).await.unwrap();
    assert!(
        notify_tests::wait_until(WAIT, || async {
            gateway
                .metric("notify_bad_payloads_total{reason=\"missing_field\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        })
        .await,
        "counted as a bad payload"
    );
    // The same payload with its ts is delivered: the link was healthy all along.
    redis
        .publish("tvs:FI", seed_payload("FI", "with-ts", "t"))
        .await
        .unwrap();
    let notification = next_json(&mut browser, WAIT).await.expect("delivered");
    assert_eq!(notification["video_id"], "with-ts");
}

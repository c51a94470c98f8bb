//! The delivery promise under hostile conditions: a foreign `id` on a live channel, a broker
//! outage longer than the stream's retention, Redis restarted without its data, a stream
//! trimmed with `MAXLEN ~`, and a healthy Redis across many health-check periods. Real
//! redis-server, real gateway and publisher binaries, real sockets.

use std::time::{Duration, Instant};

use notify_proto::StreamId;
use notify_tests::{
    expect_silence, http_client, next_json, run_publish, seed_payload, Gateway, RedisServer,
    WsClient,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Publishes through the gateway's HTTP API (the recorded, id-carrying path), retrying while
/// the gateway answers 503 (its Redis link is coming back); returns the id.
async fn publish_api(gateway: &Gateway, region: &str, video_id: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = http_client()
            .post(format!("{}/api/publish", gateway.http_url()))
            .body(seed_payload(region, video_id, "Guarantee"))
            .send()
            .await
            .expect("publish request");
        if response.status() == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(response.status(), 200, "publish {video_id}");
        let receipt: Value = response.json().await.unwrap();
        return receipt["id"].as_str().expect("an id").to_owned();
    }
}

/// Publishes `payloads` (NDJSON lines) with the `notify-publish` binary to Redis at `url`,
/// trimming the streams to `retention`.
async fn publish_cli(url: &str, retention: usize, payloads: Vec<String>) {
    let url = url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let input = payloads.join("\n") + "\n";
        let retention = retention.to_string();
        run_publish(
            &[
                "--redis-url",
                &url,
                "--retention",
                &retention,
                "--input",
                "-",
            ],
            Some(&input),
        )
    })
    .await
    .unwrap()
    .expect("notify-publish runs");
    assert!(
        output.status.success(),
        "notify-publish: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The next message, failing the test when the socket closes or nothing arrives in time.
async fn next_message(socket: &mut WsClient, what: &str) -> Value {
    next_json(socket, WAIT)
        .await
        .unwrap_or_else(|| panic!("{what}: no message (socket closed or silent)"))
}

/// Reads until a notification for `video_id` arrives, for at most [`WAIT`] and 1,000 messages;
/// returns everything read before it.
async fn read_until_video(socket: &mut WsClient, video_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline && before.len() < 1000,
            "{video_id} did not arrive; got {} others: {:?}",
            before.len(),
            before.iter().rev().take(3).collect::<Vec<_>>()
        );
        let message = next_message(socket, &format!("waiting for {video_id}")).await;
        if message["video_id"] == video_id {
            return before;
        }
        before.push(message);
    }
}

/// Opens `?region=..&since=..` and returns the first message, which must be a `resync`.
async fn expect_resync_on_resume(gateway: &Gateway, region: &str, since: &str) -> Value {
    let mut client = gateway
        .connect(&format!("/?region={region}&since={since}"))
        .await
        .unwrap();
    let first = next_message(&mut client, "resume").await;
    assert_eq!(first["event"], "resync", "since={since}: {first}");
    first
}

/// `ACL SETUSER ...` / `CLIENT KILL USER ...` as the default user.
async fn redis_command(redis: &RedisServer, args: &[&str]) -> redis::Value {
    let mut connection = redis.connection().await.unwrap();
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query_async(&mut connection).await.unwrap()
}

fn without_id(value: &Value) -> bool {
    value.get("id").is_none()
}

#[tokio::test]
async fn a_foreign_id_neither_silences_the_region_nor_is_lost() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();

    let mut foreign: Value = serde_json::from_str(&seed_payload("DK", "foreign", "x")).unwrap();
    foreign["id"] = "99999999999999-0".into();
    redis.publish("tvs:DK", foreign.to_string()).await.unwrap();
    let api_id = publish_api(&gateway, "DK", "after-api").await;
    redis
        .publish("tvs:DK", seed_payload("DK", "after-plain", "x"))
        .await
        .unwrap();
    publish_cli(&url, 100, vec![seed_payload("DK", "after-cli", "x")]).await;
    // A producer whose own payloads carry a small id of its own.
    let mut numbered: Value = serde_json::from_str(&seed_payload("DK", "small-id", "x")).unwrap();
    numbered["id"] = "12345".into();
    redis.publish("tvs:DK", numbered.to_string()).await.unwrap();

    let mut received = Vec::new();
    for _ in 0..5 {
        received.push(next_message(&mut client, "after a foreign id").await);
    }
    let by_video = |video: &str| {
        received
            .iter()
            .find(|message| message["video_id"] == video)
            .unwrap_or_else(|| panic!("{video} was not delivered: {received:?}"))
    };
    assert_eq!(by_video("after-api")["id"], api_id.as_str());
    assert!(by_video("after-cli")["id"].is_string());
    assert!(without_id(by_video("after-plain")));
    assert!(
        without_id(by_video("foreign")),
        "a foreign id is removed, the message kept"
    );
    assert!(without_id(by_video("small-id")));
    assert_eq!(
        gateway
            .metric("notify_bad_payloads_total{reason=\"foreign_id\"}")
            .await
            .unwrap(),
        2.0
    );
    // The region keeps flowing with ids after it.
    let later = publish_api(&gateway, "DK", "later").await;
    assert_eq!(
        next_message(&mut client, "later").await["id"],
        later.as_str()
    );
}

/// A region kept busy with id-carrying messages must not starve another region's stream reads:
/// a foreign id there is still settled within about a second.
#[tokio::test]
async fn a_busy_region_does_not_hold_back_another_regions_foreign_ids() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut quiet = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    let busy = {
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(4) {
                let payloads = (0..5)
                    .map(|k| seed_payload("AE", &format!("b{n}-{k}"), "x"))
                    .collect();
                publish_cli(&url, 1000, payloads).await;
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut foreign: Value = serde_json::from_str(&seed_payload("DK", "foreign", "x")).unwrap();
    foreign["id"] = "99999999999999-0".into();
    let sent = Instant::now();
    redis.publish("tvs:DK", foreign.to_string()).await.unwrap();
    let message = next_json(&mut quiet, Duration::from_millis(2500))
        .await
        .expect("the foreign message is delivered while another region is busy");
    assert_eq!(message["video_id"], "foreign");
    assert!(without_id(&message));
    eprintln!(
        "foreign id settled after {:?} while AE was busy",
        sent.elapsed()
    );
    assert!(busy.await.unwrap() > 3, "AE was kept busy");
}

/// A stream entry that breaks the contract is counted once and skipped: the follower moves
/// past it instead of reading it again on every wake, and what follows is delivered.
#[tokio::test]
async fn a_bad_stream_entry_is_counted_once_and_skipped() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    redis_command(
        &redis,
        &["XADD", "tvs:DK:stream", "*", "payload", "{not json"],
    )
    .await;
    let after = publish_api(&gateway, "DK", "after-bad").await;
    let message = next_message(&mut client, "after a bad entry").await;
    assert_eq!(message["id"], after.as_str());
    // Several block periods of housekeeping reads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        gateway.metric("notify_bad_payloads_total{").await.unwrap(),
        1.0
    );
    assert_eq!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test]
async fn an_outage_longer_than_the_retention_is_never_hidden_by_the_memory_cache() {
    let redis = RedisServer::start().await.unwrap();
    redis_command(
        &redis,
        &["ACL", "SETUSER", "gw", "on", ">pw", "~*", "&*", "+@all"],
    )
    .await;
    let gateway_url = format!("redis://gw:pw@127.0.0.1:{}", redis.port());
    let args = [
        "--redis-url",
        &gateway_url,
        "--history-retention",
        "10",
        "--history-cache",
        "5000",
    ];
    let gateway = Gateway::start(&args).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut connected = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    let mut before_outage = String::new();
    for n in 0..3 {
        before_outage = publish_api(&gateway, "DK", &format!("before-{n}")).await;
        next_message(&mut connected, "before the outage").await;
    }

    // The gateway's user is locked out; publishers (the default user) carry on.
    redis_command(&redis, &["ACL", "SETUSER", "gw", "off"]).await;
    redis_command(&redis, &["CLIENT", "KILL", "USER", "gw"]).await;
    assert!(gateway.wait_ready_status(503, WAIT).await);
    let missed: Vec<String> = (0..300)
        .map(|n| seed_payload("DK", &format!("missed-{n}"), "x"))
        .collect();
    publish_cli(&redis.url(), 10, missed).await;
    redis_command(&redis, &["ACL", "SETUSER", "gw", "on"]).await;
    assert!(gateway.wait_ready_status(200, WAIT).await);
    publish_api(&gateway, "DK", "after-outage").await;

    // Connected throughout: a resync, or every message; never a silent jump.
    let seen = read_until_video(&mut connected, "after-outage").await;
    let resynced = seen.iter().any(|message| message["event"] == "resync");
    let notifications = seen
        .iter()
        .filter(|message| message["event"] == "new_trending")
        .count();
    assert!(
        resynced || notifications == 300,
        "connected client: {notifications} of 300 without a resync"
    );

    // A resume from before the outage is not answered from memory.
    expect_resync_on_resume(&gateway, "DK", &before_outage).await;
    assert_eq!(
        gateway
            .metric("notify_resumes_total{source=\"resync\"}")
            .await
            .unwrap(),
        1.0
    );
    // A gateway started afterwards answers the same.
    let second = Gateway::start(&args).await.unwrap();
    assert!(second.wait_ready_status(200, WAIT).await);
    expect_resync_on_resume(&second, "DK", &before_outage).await;
}

#[tokio::test]
async fn redis_restarted_empty_resyncs_clients_and_delivers_the_new_ids() {
    let mut redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    // The old epoch's ids run ahead of the clock the new one will use.
    publish_api(&gateway, "DK", "old-0").await;
    next_message(&mut client, "old-0").await;
    redis_command(&redis, &["XSETID", "tvs:DK:stream", "99999999999999-0"]).await;
    let old_mark = publish_api(&gateway, "DK", "old-1").await;
    assert!(old_mark.starts_with("99999999999999-"), "{old_mark}");
    assert_eq!(
        next_message(&mut client, "old-1").await["id"],
        old_mark.as_str()
    );

    redis.restart().await.unwrap();
    let first_new = publish_api(&gateway, "DK", "new-0").await;
    let second_new = publish_api(&gateway, "DK", "new-1").await;
    let seen = read_until_video(&mut client, "new-0").await;
    assert!(
        seen.iter().any(|message| message["event"] == "resync"),
        "the clients are told their view is incomplete: {seen:?}"
    );
    let next = next_message(&mut client, "new-1").await;
    assert_eq!(next["video_id"], "new-1");
    assert_eq!(next["id"], second_new.as_str());
    assert!(first_new < old_mark);

    expect_resync_on_resume(&gateway, "DK", &old_mark).await;
    // A resume within the new epoch is served.
    let mut resumed = gateway
        .connect(&format!("/?region=DK&since={first_new}"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut resumed, "resume").await["id"],
        second_new.as_str()
    );
}

/// A client resumed with `since` skips live ids at or below what its replay sent (the seam),
/// until Redis restarts empty: the `resync` that starts the new epoch ends that comparison, so
/// the new epoch's ids, smaller than the old ones, all arrive. Both resume paths: from memory
/// and from the stream.
#[tokio::test]
async fn clients_resumed_before_redis_restarted_empty_get_every_new_id() {
    let mut redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    // No memory cache: a resume from before the newest id is read from the stream.
    let gateway = Gateway::start(&["--redis-url", &url, "--history-cache", "0"])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut watcher = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    let old_first = publish_api(&gateway, "DK", "old-0").await;
    next_message(&mut watcher, "old-0").await;
    // The old epoch's ids run ahead of the clock the new one will use.
    redis_command(&redis, &["XSETID", "tvs:DK:stream", "99999999999999-0"]).await;
    let old_mark = publish_api(&gateway, "DK", "old-1").await;
    assert_eq!(
        next_message(&mut watcher, "old-1").await["id"],
        old_mark.as_str()
    );

    let mut from_memory = gateway
        .connect(&format!("/?region=DK&since={old_mark}"))
        .await
        .unwrap();
    let mut from_stream = gateway
        .connect(&format!("/?region=DK&since={old_first}"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut from_stream, "resume from the stream").await["id"],
        old_mark.as_str()
    );
    let served = notify_tests::wait_until(WAIT, || async {
        gateway
            .metric("notify_resumes_total{source=\"memory\"}")
            .await
            .unwrap_or(0.0)
            == 1.0
            && gateway
                .metric("notify_resumes_total{source=\"stream\"}")
                .await
                .unwrap_or(0.0)
                == 1.0
    })
    .await;
    assert!(served, "one resume from memory, one from the stream");

    redis.restart().await.unwrap();
    let first_new = publish_api(&gateway, "DK", "new-0").await;
    let second_new = publish_api(&gateway, "DK", "new-1").await;
    assert!(first_new < old_mark);
    for (client, path) in [(&mut from_memory, "memory"), (&mut from_stream, "stream")] {
        let seen = read_until_video(client, "new-0").await;
        assert!(
            seen.iter().any(|message| message["event"] == "resync"),
            "resumed from {path}: told of the reset first: {seen:?}"
        );
        let next = next_message(client, "new-1").await;
        assert_eq!(next["id"], second_new.as_str(), "resumed from {path}");
    }
}

#[tokio::test]
async fn a_stream_trimmed_with_approximate_maxlen_does_not_cover_since_zero() {
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
    let payloads: Vec<String> = (0..1500)
        .map(|n| seed_payload("FI", &format!("v{n}"), "x"))
        .collect();
    publish_cli(&url, 10, payloads).await;
    let info = redis_command(&redis, &["XINFO", "STREAM", "tvs:FI:stream"]).await;
    eprintln!("after MAXLEN ~ 10 trimming: {info:?}");
    let resync = expect_resync_on_resume(&gateway, "FI", "0-0").await;
    assert!(resync["latest"].is_string());
}

/// `CLIENT LIST` as one map of fields per connection.
async fn client_list(redis: &RedisServer) -> Vec<std::collections::HashMap<String, String>> {
    let mut connection = redis.connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    list.lines()
        .map(|line| {
            line.split(' ')
                .filter_map(|field| field.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect()
        })
        .collect()
}

/// The ids of the connections named `name`.
async fn ids_named(redis: &RedisServer, name: &str) -> Vec<String> {
    client_list(redis)
        .await
        .into_iter()
        .filter(|fields| fields.get("name").map(String::as_str) == Some(name))
        .filter_map(|fields| fields.get("id").cloned())
        .collect()
}

/// Polls `/readyz` every 50 ms for `period`; the statuses that were not 200.
async fn readiness_failures(gateway: &Gateway, period: Duration) -> Vec<String> {
    let until = Instant::now() + period;
    let mut failures = Vec::new();
    while Instant::now() < until {
        match gateway.get("/readyz").await {
            Ok((200, _)) => {}
            other => failures.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    failures
}

/// Each Redis connection shows what it is in `CLIENT LIST`, and only the two links count as
/// reconnects: cutting the command connection (publishes, resume reads) leaves the gateway
/// ready at every poll with no reconnect counted (the positive control), cutting the stream
/// link counts exactly one; delivery goes on after both.
#[tokio::test]
async fn each_redis_connection_is_named_and_only_a_link_cut_is_a_reconnect() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url, "--redis-ping-interval", "200ms"])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    publish_api(&gateway, "DK", "first").await;
    assert_eq!(
        next_message(&mut client, "first").await["video_id"],
        "first"
    );

    let list = client_list(&redis).await;
    let named = |name: &str| {
        list.iter()
            .filter(|fields| fields.get("name").map(String::as_str) == Some(name))
            .count()
    };
    assert_eq!(named("notify-gateway:streams"), 1, "{list:?}");
    assert_eq!(named("notify-gateway:commands"), 1, "{list:?}");
    let subscriptions: Vec<_> = list
        .iter()
        .filter(|fields| fields.get("flags").is_some_and(|flags| flags.contains('P')))
        .collect();
    assert_eq!(subscriptions.len(), 1, "{list:?}");
    assert_eq!(subscriptions[0]["sub"], "8", "{list:?}");

    // The command connection is not a link.
    let commands = ids_named(&redis, "notify-gateway:commands").await;
    redis_command(&redis, &["CLIENT", "KILL", "ID", &commands[0]]).await;
    let unready = readiness_failures(&gateway, Duration::from_millis(1500)).await;
    assert!(
        unready.is_empty(),
        "not ready after a command cut: {unready:?}"
    );
    publish_api(&gateway, "DK", "after-command-cut").await;
    assert_eq!(
        next_message(&mut client, "after the command cut").await["video_id"],
        "after-command-cut"
    );
    assert_eq!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap(),
        0.0
    );
    assert_eq!(ids_named(&redis, "notify-gateway:commands").await.len(), 1);

    // The stream link is: one reconnect, then ready and delivering again.
    let streams = ids_named(&redis, "notify-gateway:streams").await;
    redis_command(&redis, &["CLIENT", "KILL", "ID", &streams[0]]).await;
    assert!(
        notify_tests::wait_until(WAIT, || async {
            gateway
                .metric("notify_broker_reconnects_total")
                .await
                .unwrap()
                >= 1.0
        })
        .await,
        "the stream link cut was not noticed"
    );
    assert!(gateway.wait_ready_status(200, WAIT).await);
    publish_api(&gateway, "DK", "after-stream-cut").await;
    assert_eq!(
        next_message(&mut client, "after the stream cut").await["video_id"],
        "after-stream-cut"
    );
    let unready = readiness_failures(&gateway, Duration::from_millis(1000)).await;
    assert!(
        unready.is_empty(),
        "not ready after recovering: {unready:?}"
    );
    assert_eq!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(ids_named(&redis, "notify-gateway:streams").await.len(), 1);
}

/// A Redis user that may not run `CLIENT SETNAME` still gets a working gateway: its
/// connections stay unnamed, the refusal is logged with its cause.
#[tokio::test]
async fn a_user_without_the_client_command_gets_a_working_unnamed_gateway() {
    let redis = RedisServer::start().await.unwrap();
    redis_command(
        &redis,
        &[
            "ACL", "SETUSER", "gw", "on", ">pw", "~*", "&*", "+@all", "-client",
        ],
    )
    .await;
    let url = format!("redis://gw:pw@127.0.0.1:{}", redis.port());
    let gateway = Gateway::start(&["--redis-url", &url]).await.unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    publish_api(&gateway, "DK", "unnamed").await;
    assert_eq!(
        next_message(&mut client, "unnamed").await["video_id"],
        "unnamed"
    );
    assert!(ids_named(&redis, "notify-gateway:streams").await.is_empty());
    let refusals = gateway
        .log_lines()
        .into_iter()
        .filter(|line| {
            line.contains("could not name a Redis connection") && line.contains("no permissions")
        })
        .count();
    assert_eq!(refusals, 2, "{:?}", gateway.log_lines());
}

/// One Redis, the same burst as the cluster test: a gateway frozen while 3,000 id-carrying
/// messages are published finds them all at once on its subscription, more than the 256 live
/// copies a region may hold for the stream; each is still delivered once, in order, with its
/// id.
#[tokio::test]
async fn a_burst_bigger_than_the_pending_set_is_delivered_exactly_once_on_one_redis() {
    const BURST: usize = 3000;
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url, "--queue-limit", "10000"])
        .await
        .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    let mut client = gateway.connect_counted("/?region=DK", "DK").await.unwrap();
    gateway.freeze();
    let payloads = (0..BURST)
        .map(|n| seed_payload("DK", &format!("burst{n}"), "t"))
        .collect();
    publish_cli(&url, 10_000, payloads).await;
    gateway.thaw();
    let mut last_id: Option<StreamId> = None;
    for n in 0..BURST {
        let message = next_message(&mut client, &format!("burst{n}")).await;
        assert_eq!(message["video_id"], format!("burst{n}"), "{message}");
        let id: StreamId = message["id"]
            .as_str()
            .unwrap_or_else(|| panic!("burst{n} came without its id"))
            .parse()
            .unwrap();
        assert!(last_id < Some(id), "{last_id:?} then {id}");
        last_id = Some(id);
    }
    expect_silence(&mut client, Duration::from_millis(500))
        .await
        .unwrap();
}

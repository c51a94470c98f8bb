//! Redis Cluster: a real 3-primary cluster with a replica each (`notify_tests::cluster`), a
//! gateway started with `--redis-cluster` and the seed nodes, and `notify-publish
//! --redis-cluster`.
//!
//! - The served regions spread over several shards; each region's stream and shard channel
//!   share a slot, and the gateway's sharded subscription sits on the shard that owns it.
//! - Our publishes go out with `SPUBLISH`: the cluster bus carries them to the owner's replica
//!   only, never to the other shards (`cluster_stats_messages_publish*` of `CLUSTER INFO`),
//!   while the seed's plain `PUBLISH tvs:AE` is broadcast and still reaches clients.
//! - A primary killed while publishing: its replica is promoted, the gateway follows without a
//!   restart, and every acknowledged id-carrying message reaches each client exactly once, in
//!   order — or the client gets `resync` — never a silent gap.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use notify_tests::cluster::{cluster_info, info_field, node_client, RedisCluster};
use notify_tests::{http_client, next_json, run_publish, seed_payload, Gateway, WsClient};
use serde_json::Value;

const REGIONS: [&str; 8] = ["AE", "FI", "CZ", "DK", "BE", "GB", "CH", "US"];

async fn start() -> (RedisCluster, Gateway) {
    let cluster = RedisCluster::start().await.unwrap();
    let seeds = cluster.seeds_url();
    let gateway = Gateway::start(&[
        "--redis-url",
        &seeds,
        "--redis-cluster",
        "--redis-ping-interval",
        "500ms",
    ])
    .await
    .unwrap();
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(10))
            .await,
        "the gateway never became ready on the cluster; its log:\n{}",
        gateway.log_lines().join("\n")
    );
    (cluster, gateway)
}

/// POSTs `payload` to the gateway's API; the id Redis gave it, or why not.
async fn publish_api(gateway: &Gateway, payload: &str) -> Result<String, String> {
    let response = http_client()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .body(payload.to_owned())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|error| error.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no id in {body}"))
}

/// `CLUSTER INFO` publish counters of the node on `port`: (broadcast publishes received,
/// shard publishes received, broadcast publishes sent, shard publishes sent).
async fn bus_publishes(port: u16) -> [u64; 4] {
    let info = cluster_info(port).await.expect("CLUSTER INFO");
    [
        info_field(&info, "cluster_stats_messages_publish_received"),
        info_field(&info, "cluster_stats_messages_publishshard_received"),
        info_field(&info, "cluster_stats_messages_publish_sent"),
        info_field(&info, "cluster_stats_messages_publishshard_sent"),
    ]
}

async fn shard_subscribers(port: u16, channel: &str) -> i64 {
    let mut connection = node_client(port)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let reply: Vec<Value> = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query_async::<Vec<redis::Value>>(&mut connection)
        .await
        .unwrap()
        .into_iter()
        .map(|value| match value {
            redis::Value::Int(count) => Value::from(count),
            other => Value::String(format!("{other:?}")),
        })
        .collect();
    reply[1].as_i64().unwrap()
}

#[tokio::test]
async fn regions_spread_over_shards_and_publishes_stay_on_their_shard() {
    let (cluster, gateway) = start().await;
    let mut owners = HashMap::new();
    for region in REGIONS {
        let stream = cluster
            .primary_for(&format!("tvs:{{{region}}}:stream"))
            .await
            .unwrap();
        let channel = cluster
            .primary_for(&format!("tvs:{{{region}}}"))
            .await
            .unwrap();
        assert_eq!(
            stream, channel,
            "{region}: stream and shard channel in one slot"
        );
        owners.insert(region, stream);
    }
    let shards: BTreeSet<u16> = owners.values().copied().collect();
    assert!(shards.len() >= 2, "regions on one shard only: {owners:?}");

    let owner = owners["AE"];
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let others: Vec<u16> = primaries
        .iter()
        .copied()
        .filter(|port| *port != owner)
        .collect();
    // The gateway's sharded subscription is on the owning shard, and only there.
    let subscribed = notify_tests::wait_until(Duration::from_secs(5), || async {
        shard_subscribers(owner, "tvs:{AE}").await == 1
    })
    .await;
    assert!(
        subscribed,
        "no shard subscriber for tvs:{{AE}} on its owner"
    );
    for port in &others {
        assert_eq!(shard_subscribers(*port, "tvs:{AE}").await, 0);
    }

    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let before: HashMap<u16, [u64; 4]> = {
        let mut counters = HashMap::new();
        for port in &primaries {
            counters.insert(*port, bus_publishes(*port).await);
        }
        counters
    };
    let mut ids = Vec::new();
    for n in 0..5 {
        let payload = seed_payload("AE", &format!("sharded{n}"), "t");
        ids.push(publish_api(&gateway, &payload).await.unwrap());
    }
    for (n, id) in ids.iter().enumerate() {
        let message = next_json(&mut client, Duration::from_secs(5))
            .await
            .expect("the published message");
        assert_eq!(message["video_id"], format!("sharded{n}"));
        assert_eq!(message["id"].as_str(), Some(id.as_str()));
    }
    for port in &primaries {
        let [broadcast_in, shard_in, broadcast_out, shard_out] = bus_publishes(*port).await;
        let [b_in, s_in, b_out, s_out] = before[port];
        assert_eq!(broadcast_out, b_out, "node {port} broadcast a publish");
        assert_eq!(
            broadcast_in, b_in,
            "node {port} received a broadcast publish"
        );
        if *port == owner {
            // Sent to its own replica, one bus message per publish.
            assert!(
                shard_out >= s_out + 5,
                "owner {port}: {s_out} → {shard_out}"
            );
        } else {
            assert_eq!(
                shard_in, s_in,
                "shard {port} received another shard's message"
            );
            assert_eq!(shard_out, s_out, "shard {port} sent a shard message");
        }
    }

    // The seed's plain PUBLISH on a node that does not own AE is broadcast, and delivered.
    let mut connection = node_client(others[0])
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("tvs:AE")
        .arg(seed_payload("AE", "plain", "t"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let message = next_json(&mut client, Duration::from_secs(5))
        .await
        .expect("the seed's plain PUBLISH");
    assert_eq!(message["video_id"], "plain");
    assert!(message.get("id").is_none(), "{message}");
    // The counters see a broadcast: they would have seen one above too.
    let [broadcast_in, ..] = bus_publishes(owner).await;
    assert!(
        broadcast_in > before[&owner][0],
        "the plain PUBLISH was not broadcast"
    );
}

#[tokio::test]
async fn notify_publish_publishes_to_the_cluster_in_order() {
    let (cluster, gateway) = start().await;
    let mut clients: Vec<(&str, WsClient)> = Vec::new();
    for region in ["AE", "FI", "CH"] {
        let query = format!("/?region={region}");
        clients.push((
            region,
            gateway.connect_counted(&query, region).await.unwrap(),
        ));
    }
    let mut input = String::new();
    for n in 0..30 {
        let region = ["AE", "FI", "CH"][n % 3];
        input.push_str(&seed_payload(region, &format!("cli{n}"), "t"));
        input.push('\n');
    }
    let seeds = cluster.seeds_url();
    let output = tokio::task::spawn_blocking(move || {
        run_publish(
            &["--redis-url", &seeds, "--redis-cluster", "--input", "-"],
            Some(&input),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "notify-publish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (index, (region, client)) in clients.iter_mut().enumerate() {
        let mut last_id = String::new();
        for n in (index..30).step_by(3) {
            let message = next_json(client, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{region}: message cli{n}"));
            assert_eq!(message["video_id"], format!("cli{n}"), "{region}");
            let id = message["id"].as_str().expect("an id").to_owned();
            assert!(
                id_key(&id) > id_key(&last_id),
                "{region}: {last_id} then {id}"
            );
            last_id = id;
        }
    }
}

#[tokio::test]
async fn notify_bench_fans_out_over_the_shard_channels() {
    let (cluster, gateway) = start().await;
    let mut command = tokio::process::Command::new(notify_tests::binary("notify-bench"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") {
            command.env_remove(&key);
        }
    }
    let gateway_url = gateway.http_url();
    let seeds = cluster.seeds_url();
    command
        .args(["fanout", "--gateway", &gateway_url, "--redis-url", &seeds])
        .args(["--redis-cluster", "--clients", "16", "--messages", "80"])
        .args(["--settle", "200ms", "--timeout", "30s"])
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("notify-bench finished")
        .expect("notify-bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| {
            panic!(
                "no JSON report ({error}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["publish"]["published"], 80, "{report}");
    // Each SPUBLISH reached the gateway's subscription on the region's shard.
    assert_eq!(report["publish"]["unheard"], 0, "{report}");
    // 16 clients over the 8 regions, 10 messages each region: 2 × 10 × 8.
    assert_eq!(report["totals"]["delivered"], 160, "{report}");
}

/// `notify-bench scale` against the cluster: its own gateways started with `--redis-cluster`,
/// id-carrying publishes through the cluster script (one pipeline per region), Redis CPU summed
/// over every seed, and a reconnect storm: every message once, in order.
#[tokio::test]
async fn notify_bench_scale_runs_its_fleet_on_the_cluster() {
    let cluster = RedisCluster::start().await.expect("a cluster");
    let mut command = tokio::process::Command::new(notify_tests::binary("notify-bench"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") {
            command.env_remove(&key);
        }
    }
    let gateway_bin = notify_tests::binary("notify-gateway");
    let seeds = cluster.seeds_url();
    command
        .args(["scale", "--redis-cluster", "--redis-url", &seeds])
        .arg("--gateway-bin")
        .arg(&gateway_bin)
        .args([
            "--clients",
            "120",
            "--gateways",
            "2",
            "--client-processes",
            "2",
        ])
        .args([
            "--scale-rates",
            "2",
            "--duration",
            "1s",
            "--settle",
            "500ms",
        ])
        .args(["--timeout", "60s"])
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("notify-bench finished")
        .expect("notify-bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("no JSON report ({error}): {stdout}\n{stderr}"));
    assert_eq!(report["ok"], true, "{report}\n{stderr}");
    assert!(stderr.contains("120 clients"), "{stderr}");
    assert!(stderr.contains("lost 0, duplicates 0"), "{stderr}");
}

/// A stream id as a sortable pair; `(0, 0)` for none.
fn id_key(id: &str) -> (u64, u64) {
    let Some((ms, seq)) = id.split_once('-') else {
        return (0, 0);
    };
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test]
async fn a_slot_moved_to_another_shard_is_followed() {
    let (cluster, gateway) = start().await;
    let mut client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            publish_api(&gateway, &seed_payload("AE", &format!("m{n}"), "t"))
                .await
                .unwrap(),
        );
    }
    let from = cluster.primary_for("tvs:{AE}").await.unwrap();
    let to = cluster
        .primaries()
        .await
        .into_iter()
        .find(|port| *port != from)
        .unwrap();
    cluster.move_slot("tvs:{AE}", to).await.unwrap();
    assert_eq!(cluster.primary_for("tvs:{AE}:stream").await.unwrap(), to);
    for n in 3..6 {
        ids.push(
            publish_api(&gateway, &seed_payload("AE", &format!("m{n}"), "t"))
                .await
                .unwrap(),
        );
    }
    for (n, id) in ids.iter().enumerate() {
        let message = next_json(&mut client, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("message m{n}"));
        assert_eq!(message["event"], "new_trending", "{message}");
        assert_eq!(message["video_id"], format!("m{n}"));
        assert_eq!(message["id"].as_str(), Some(id.as_str()));
    }
    // The stream moved with its history: the ids went on, nothing was resynced.
    assert!(
        ids.windows(2)
            .all(|pair| id_key(&pair[0]) < id_key(&pair[1])),
        "{ids:?}"
    );
    // The sharded subscription followed the slot to its new shard.
    let moved = notify_tests::wait_until(Duration::from_secs(10), || async {
        shard_subscribers(to, "tvs:{AE}").await == 1
    })
    .await;
    assert!(moved, "no shard subscriber for tvs:{{AE}} on its new owner");
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(10))
            .await
    );
}

/// What one region's client received: messages with their ids, and resyncs.
#[derive(Debug, Default)]
struct Received {
    /// `(id, video_id)` of each notification with an id, in arrival order; a resync is
    /// recorded as `("resync", latest)`.
    events: Vec<(String, String)>,
    /// When the first message published after the kill arrived.
    first_after_kill: Option<Instant>,
    /// Whether the final marker arrived (the socket stayed up to the end).
    finished: bool,
}

/// Reads `client` until the `end` marker (or a dead socket / 20 s of silence).
async fn read_region(mut client: WsClient, killed: tokio::sync::watch::Receiver<bool>) -> Received {
    let mut received = Received::default();
    while let Some(message) = next_json(&mut client, Duration::from_secs(20)).await {
        match message["event"].as_str() {
            Some("resync") => received.events.push((
                "resync".to_owned(),
                message["latest"].as_str().unwrap_or("").to_owned(),
            )),
            Some("new_trending") => {
                let video = message["video_id"].as_str().unwrap_or("").to_owned();
                if video == "end" {
                    received.finished = true;
                    break;
                }
                if video.starts_with("after")
                    && received.first_after_kill.is_none()
                    && *killed.borrow()
                {
                    received.first_after_kill = Some(Instant::now());
                }
                let id = message["id"].as_str().unwrap_or("").to_owned();
                received.events.push((id, video));
            }
            _ => {}
        }
    }
    received
}

#[tokio::test]
async fn a_killed_primary_loses_no_message_silently() {
    let (mut cluster, gateway) = start().await;
    let victim = cluster.primary_for("tvs:{AE}:stream").await.unwrap();
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let mut readers = HashMap::new();
    for region in REGIONS {
        let client = gateway
            .connect_counted(&format!("/?region={region}"), region)
            .await
            .unwrap();
        readers.insert(region, tokio::spawn(read_region(client, killed_rx.clone())));
    }
    // Acknowledged publishes: region → (id, video_id), in publish order.
    let mut acked: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    let mut failed = 0;
    let publish_round = |phase: &'static str, n: usize| {
        let gateway = &gateway;
        async move {
            let mut results = Vec::new();
            for region in REGIONS {
                let video = format!("{phase}{n}");
                let result = publish_api(gateway, &seed_payload(region, &video, "t")).await;
                results.push((region, video, result));
            }
            results
        }
    };
    let mut record = |results: Vec<(&'static str, String, Result<String, String>)>| {
        for (region, video, result) in results {
            match result {
                Ok(id) => acked.entry(region).or_default().push((id, video)),
                Err(error) => {
                    if failed % 20 == 0 {
                        eprintln!("{region}: publish refused: {error}");
                    }
                    failed += 1;
                }
            }
        }
    };
    for n in 0..20 {
        record(publish_round("before", n).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(victim);
    let killed_at = Instant::now();
    killed_tx.send_replace(true);
    // Publish on through the failover until AE takes publishes again, then a while more.
    let mut recovered_at = None;
    let mut n = 0;
    while killed_at.elapsed() < Duration::from_secs(20) {
        let results = publish_round("after", n).await;
        let ae_ok = results
            .iter()
            .any(|(region, _, result)| *region == "AE" && result.is_ok());
        record(results);
        n += 1;
        match recovered_at {
            None if ae_ok => recovered_at = Some(Instant::now()),
            Some(at) if at.elapsed() > Duration::from_secs(1) => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(recovered_at) = recovered_at else {
        let log = gateway.log_lines();
        panic!(
            "AE never took a publish again after the failover; the gateway's log:\n{}",
            log[log.len().saturating_sub(40)..].join("\n")
        );
    };
    for region in REGIONS {
        publish_api(&gateway, &seed_payload(region, "end", "t"))
            .await
            .unwrap();
    }
    let mut total = 0;
    let mut resyncs = 0;
    let mut lost_by_replication = 0;
    for region in REGIONS {
        let received = readers.remove(region).unwrap().await.unwrap();
        // Replication is asynchronous: a write acknowledged by the killed primary that its
        // replica never got is in no stream after the failover, and no gateway can know it
        // existed unless it had read it (docs/PROTOCOL.md, "Failover"). Only what the cluster
        // still holds, or what was delivered, is owed.
        let held = stream_ids(&cluster, region).await;
        let mut acked = acked.remove(region).unwrap_or_default();
        let before = acked.len();
        acked.retain(|(id, _)| {
            held.contains(id) || received.events.iter().any(|(delivered, _)| delivered == id)
        });
        lost_by_replication += before - acked.len();
        assert!(
            received.finished,
            "{region}: the client did not get to the end: {received:?}"
        );
        total += check_exactly_once_or_resync(region, &acked, &received.events);
        resyncs += received
            .events
            .iter()
            .filter(|(id, _)| id == "resync")
            .count();
        if region == "AE" {
            let first = received
                .first_after_kill
                .expect("AE got nothing after the kill");
            eprintln!(
                "failover: AE publishes accepted again {:?} after the kill; first message delivered {:?} after the kill",
                recovered_at - killed_at,
                first - killed_at
            );
        }
    }
    eprintln!("failover: {total} acknowledged messages checked, {lost_by_replication} lost by asynchronous replication (in no stream, never delivered), {failed} publishes refused during the failover, {resyncs} resyncs");
    assert!(
        lost_by_replication <= 20,
        "{lost_by_replication} acknowledged writes lost: more than the writes of the moments before the kill"
    );
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(10))
            .await
    );
    assert!(
        gateway
            .metric("notify_broker_reconnects_total")
            .await
            .unwrap()
            >= 1.0,
        "the gateway did not notice the lost primary"
    );
}

/// The ids `region`'s stream holds now, read from the shard that owns it.
async fn stream_ids(cluster: &RedisCluster, region: &str) -> HashSet<String> {
    let key = format!("tvs:{{{region}}}:stream");
    let port = cluster
        .primary_for(&key)
        .await
        .expect("an owner for the stream");
    let mut connection = node_client(port)
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the stream's owner");
    let entries: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(id, _)| id).collect()
}

/// Checks one region's deliveries against its acknowledged publishes: ids strictly increase
/// between resyncs (none twice), every delivered id carries the video it was acknowledged
/// with, and every acknowledged id is delivered — unless a resync covers it (the id is not
/// after the last resync's `latest`). Returns how many acknowledged messages it checked.
fn check_exactly_once_or_resync(
    region: &str,
    acked: &[(String, String)],
    events: &[(String, String)],
) -> usize {
    let video_of: HashMap<&str, &str> = acked
        .iter()
        .map(|(id, video)| (id.as_str(), video.as_str()))
        .collect();
    let mut last = (0, 0);
    let mut delivered = BTreeSet::new();
    let mut covered_up_to = None;
    for (id, video) in events {
        if id == "resync" {
            // Ids may start over after it; what was delivered before it stays delivered.
            last = (0, 0);
            covered_up_to = Some(id_key(video));
            continue;
        }
        assert!(!id.is_empty(), "{region}: {video} arrived without an id");
        assert!(
            id_key(id) > last,
            "{region}: {id} after {last:?} (duplicate or out of order)"
        );
        last = id_key(id);
        if let Some(expected) = video_of.get(id.as_str()) {
            assert_eq!(expected, video, "{region}: id {id} carries another message");
        }
        delivered.insert(id.clone());
    }
    for (id, video) in acked {
        let covered_by_resync = covered_up_to.is_some_and(|latest| id_key(id) <= latest);
        assert!(
            covered_by_resync || delivered.contains(id),
            "{region}: acknowledged {video} ({id}) never delivered and no resync covers it"
        );
    }
    acked.len()
}

/// A burst bigger than the set of live copies waiting for the stream (256 per region) is
/// delivered exactly once, in order, with its ids: the copies pushed out of the full set are
/// left to the stream, not also delivered without their ids (they were, and each of them came
/// twice). The gateways are frozen while the burst is published, so it all waits for them at
/// once; one runs with the smallest `--redis-push-queue`, whose overflow makes the
/// subscription again and must lose nothing either.
#[tokio::test]
async fn a_burst_bigger_than_the_pending_set_is_delivered_exactly_once() {
    const BURST: usize = 3000;
    let cluster = RedisCluster::start().await.unwrap();
    let seeds = cluster.seeds_url();
    let mut gateways = Vec::new();
    for queue in ["1", "4096"] {
        let gateway = Gateway::start(&[
            "--redis-url",
            &seeds,
            "--redis-cluster",
            "--redis-push-queue",
            queue,
            "--queue-limit",
            "10000",
        ])
        .await
        .unwrap();
        assert!(
            gateway
                .wait_ready_status(200, Duration::from_secs(10))
                .await,
            "gateway never ready:\n{}",
            gateway.log_lines().join("\n")
        );
        let client = gateway.connect_counted("/?region=AE", "AE").await.unwrap();
        gateways.push((queue, gateway, client));
    }
    let input: String = (0..BURST)
        .map(|n| seed_payload("AE", &format!("burst{n}"), "t") + "\n")
        .collect();
    for (_, gateway, _) in &gateways {
        gateway.freeze();
    }
    let output = tokio::task::spawn_blocking(move || {
        run_publish(
            &["--redis-url", &seeds, "--redis-cluster", "--input", "-"],
            Some(&input),
        )
    })
    .await
    .unwrap()
    .unwrap();
    for (_, gateway, _) in &gateways {
        gateway.thaw();
    }
    assert!(
        output.status.success(),
        "notify-publish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut evicted = 0.0;
    for (queue, gateway, client) in &mut gateways {
        let mut last_id = String::new();
        for n in 0..BURST {
            let message = next_json(client, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("queue {queue}: burst{n} never arrived"));
            assert_eq!(
                message["video_id"],
                format!("burst{n}"),
                "queue {queue}: {message}"
            );
            let id = message["id"]
                .as_str()
                .unwrap_or_else(|| panic!("queue {queue}: burst{n} came without its id"))
                .to_owned();
            assert!(
                id_key(&id) > id_key(&last_id),
                "queue {queue}: {last_id} then {id}"
            );
            last_id = id;
        }
        notify_tests::expect_silence(client, Duration::from_millis(500))
            .await
            .unwrap_or_else(|error| panic!("queue {queue}: after the burst: {error}"));
        evicted += gateway
            .metric("notify_live_copies_dropped_total")
            .await
            .unwrap();
    }
    assert!(
        evicted > 0.0,
        "no live copy was pushed out of a full pending set: the burst did not test it"
    );
}

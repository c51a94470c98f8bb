//! A fleet behind a real load balancer: HAProxy, started from the shipped
//! `deploy/haproxy/haproxy.cfg`, in front of three gateways sharing one real Redis; clients
//! connect through HAProxy and resume with `since` when a gateway closes them. A rolling
//! restart of every gateway while id-carrying messages are published loses nothing and
//! duplicates nothing, and HAProxy stops routing to each gateway while it drains.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use notify_tests::haproxy::HaProxy;
use notify_tests::{binary, seed_payload, wait_until, Gateway, RedisServer, WsClient};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
const REGIONS: [&str; 3] = ["AE", "US", "FI"];
const CLIENTS_PER_REGION: usize = 6;
/// Time between two rounds of publishing (one message to each region per round). Longer
/// than `notify-publish`'s input pause (50 ms), so each round goes out as it is written.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(80);
/// How long each gateway fails /readyz before closing its clients: above HAProxy's time to
/// mark a node down (inter 1 s + (fall 2 - 1) × fastinter 250 ms, plus a check's duration,
/// with room for a loaded machine).
const DRAIN_DELAY: &str = "3s";
/// Most reconnects one client may make in the whole test (it should need about three).
const MAX_CONNECTS: usize = 50;

/// The reconnect delay of client `index`: 250–500 ms, spread like the browser client's first
/// jittered backoff (`client.js`), so messages are published while clients are away.
fn reconnect_delay(index: usize) -> Duration {
    Duration::from_millis(250 + (index as u64 * 37) % 250)
}

/// What one client saw, from its first connection to the end.
#[derive(Debug, Default)]
struct ClientLog {
    /// Notifications in arrival order.
    received: Vec<Value>,
    /// Close codes the gateways sent it.
    closes: Vec<Option<CloseCode>>,
    /// Failures other than a close frame (refused connection, reset socket).
    failures: Vec<String>,
    /// `resync` control messages (there must be none: every resume is covered).
    resyncs: usize,
    /// Connections it opened.
    connects: usize,
}

/// A client of `region` through HAProxy: connects, reads, and on a close reconnects with
/// `since` set to the last id it got. Returns once it has `expected` notifications (known when
/// the publisher stops) with its socket still open, or at `deadline`.
async fn run_client(
    url: String,
    region: &'static str,
    reconnect_delay: Duration,
    mut expected: watch::Receiver<Option<usize>>,
    got_first: Arc<AtomicUsize>,
    deadline: tokio::time::Instant,
) -> (ClientLog, Option<WsClient>) {
    let mut log = ClientLog::default();
    while log.connects < MAX_CONNECTS && tokio::time::Instant::now() < deadline {
        if log.connects > 0 {
            tokio::time::sleep(reconnect_delay).await;
        }
        let since = log
            .received
            .last()
            .and_then(|value| value["id"].as_str())
            .map(|id| format!("&since={id}"))
            .unwrap_or_default();
        log.connects += 1;
        let mut socket = match tokio_tungstenite::connect_async(format!(
            "{url}/?region={region}{since}"
        ))
        .await
        {
            Ok((socket, _)) => socket,
            Err(error) => {
                log.failures.push(format!("connect: {error}"));
                continue;
            }
        };
        loop {
            let done = (*expected.borrow()).is_some_and(|count| log.received.len() >= count);
            if done {
                return (log, Some(socket));
            }
            let frame = tokio::select! {
                frame = socket.next() => frame,
                _ = expected.changed() => continue,
                () = tokio::time::sleep_until(deadline) => return (log, Some(socket)),
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON notification");
                    if value["event"] == "resync" {
                        log.resyncs += 1;
                        continue;
                    }
                    if log.received.is_empty() {
                        got_first.fetch_add(1, Ordering::SeqCst);
                    }
                    log.received.push(value);
                }
                Some(Ok(Message::Close(close))) => {
                    log.closes.push(close.map(|frame| frame.code));
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    log.failures.push(format!("read: {error}"));
                    break;
                }
                None => {
                    log.failures
                        .push("socket ended without a close frame".into());
                    break;
                }
            }
        }
    }
    (log, None)
}

/// Publishes id-carrying messages with the real `notify-publish` (NDJSON on its stdin, the
/// way a cron job streams them) until `stop`; returns how many went to each region.
fn publish_until(redis_url: String, stop: Arc<AtomicBool>) -> HashMap<&'static str, usize> {
    let mut child = Command::new(binary("notify-publish"))
        .args(["--redis-url", &redis_url, "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("notify-publish starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut published: HashMap<&'static str, usize> = HashMap::new();
    // Bounded however long the test runs: 60 s of messages at most.
    let limit = (60_000 / PUBLISH_INTERVAL.as_millis()) as usize;
    for _ in 0..limit {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        for region in REGIONS {
            let sequence = published.entry(region).or_default();
            let line = seed_payload(region, &format!("v{sequence}"), "Rolling");
            writeln!(stdin, "{line}").expect("notify-publish reads its input");
            *sequence += 1;
        }
        stdin.flush().expect("flush");
        std::thread::sleep(PUBLISH_INTERVAL);
    }
    drop(stdin);
    let output = child.wait_with_output().expect("notify-publish ends");
    assert!(
        output.status.success(),
        "notify-publish: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    published
}

/// Open WebSockets across the fleet (the gateways' `notify_connections` gauges).
async fn fleet_connections(gateways: &[Gateway]) -> f64 {
    let mut total = 0.0;
    for gateway in gateways {
        total += gateway_connections(gateway).await;
    }
    total
}

/// Open WebSockets on one gateway, every test region.
async fn gateway_connections(gateway: &Gateway) -> f64 {
    let mut total = 0.0;
    for region in REGIONS {
        total += gateway.connections(region).await.unwrap_or(0.0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_behind_haproxy_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--trusted-proxies",
        "127.0.0.1/32",
        "--drain-delay",
        DRAIN_DELAY,
        "--drain-timeout",
        "5s",
    ];
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let gateway = Gateway::start(&args).await.unwrap();
        assert!(gateway.wait_ready_status(200, WAIT).await);
        gateways.push(gateway);
    }
    let proxy = HaProxy::start([gateways[0].addr(), gateways[1].addr(), gateways[2].addr()])
        .await
        .unwrap();
    let names = ["gateway1", "gateway2", "gateway3"];
    for name in names {
        assert!(
            proxy.wait_status(name, "UP", WAIT).await,
            "haproxy sees {name} up: {:?}",
            proxy.servers().await
        );
    }

    // Clients through the balancer; leastconn spreads them over the three gateways.
    let got_first = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut region_senders = HashMap::new();
    let mut clients = Vec::new();
    for region in REGIONS {
        let (sender, receiver) = watch::channel(None::<usize>);
        region_senders.insert(region, sender);
        for _ in 0..CLIENTS_PER_REGION {
            clients.push((
                region,
                tokio::spawn(run_client(
                    format!("ws://{}", proxy.listen()),
                    region,
                    reconnect_delay(clients.len()),
                    receiver.clone(),
                    Arc::clone(&got_first),
                    deadline,
                )),
            ));
        }
    }
    let total_clients = clients.len();
    assert!(
        wait_until(WAIT, || async {
            fleet_connections(&gateways).await == total_clients as f64
        })
        .await,
        "every client connected through haproxy"
    );
    for gateway in &gateways {
        assert!(
            gateway_connections(gateway).await > 0.0,
            "leastconn gave every gateway clients"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = Arc::clone(&stop);
        let url = url.clone();
        std::thread::spawn(move || publish_until(url, stop))
    };
    assert!(
        wait_until(WAIT, || async {
            got_first.load(Ordering::SeqCst) == total_clients
        })
        .await,
        "every client got a message before the restarts"
    );

    // The rolling restart, one gateway at a time.
    for (index, name) in names.iter().enumerate() {
        let held = gateway_connections(&gateways[index]).await;
        assert!(held > 0.0, "{name} holds clients when it is stopped");
        gateways[index].sigterm();
        let draining_since = Instant::now();
        assert!(
            gateways[index].wait_ready_status(503, WAIT).await,
            "{name} fails /readyz while draining"
        );
        assert!(
            proxy.wait_status(name, "DOWN", WAIT).await,
            "haproxy takes draining {name} out of rotation"
        );
        let marked_down_after = draining_since.elapsed();
        let routed_when_down = proxy.server(name).await.unwrap().total_sessions;
        // HAProxy took it out before it closed anyone: the clients are still on it.
        assert_eq!(
            gateway_connections(&gateways[index]).await,
            held,
            "{name} still served its clients when haproxy marked it down \
             ({marked_down_after:?} after SIGTERM)"
        );
        assert_eq!(gateways[index].wait_exit(WAIT), Some(0), "{name} exits 0");
        let stats = proxy.server(name).await.unwrap();
        assert_eq!(
            stats.total_sessions, routed_when_down,
            "haproxy routed nothing to {name} after marking it down (its clients reconnected \
             elsewhere): {stats:?}"
        );
        eprintln!(
            "{name}: held {held} clients, marked down {marked_down_after:?} after SIGTERM, \
             last check {}",
            stats.check_status
        );
        gateways[index].restart().await.unwrap();
        assert!(
            proxy.wait_status(name, "UP", WAIT).await,
            "haproxy puts restarted {name} back: {:?}",
            proxy.server(name).await
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let published = tokio::task::spawn_blocking(move || publisher.join().expect("publisher"))
        .await
        .unwrap();
    for (region, sender) in &region_senders {
        sender.send_replace(Some(published[region]));
    }

    let mut sockets = Vec::new();
    for (index, (region, client)) in clients.into_iter().enumerate() {
        let (log, socket) = client.await.unwrap();
        let who = format!("client {index} ({region})");
        let sequence: Vec<usize> = log
            .received
            .iter()
            .map(|value| {
                assert!(value["id"].is_string(), "{who}: an id on {value}");
                value["video_id"].as_str().unwrap()[1..].parse().unwrap()
            })
            .collect();
        assert_eq!(
            sequence,
            (0..published[region]).collect::<Vec<_>>(),
            "{who}: every message once, in order (log: {:?} closes, {:?})",
            log.closes,
            log.failures
        );
        assert_eq!(log.resyncs, 0, "{who}: no resync");
        assert!(
            !log.closes.is_empty() && log.closes.iter().all(|code| *code == Some(CloseCode::Away)),
            "{who}: closed only with 1001 by draining gateways: {:?}",
            log.closes
        );
        assert!(
            log.failures.is_empty(),
            "{who}: never refused or reset: {:?}",
            log.failures
        );
        sockets.push(socket.unwrap_or_else(|| panic!("{who}: ends connected")));
    }
    assert_eq!(
        fleet_connections(&gateways).await,
        total_clients as f64,
        "every client ends connected to the fleet"
    );
    let total: usize = published.values().sum();
    eprintln!(
        "rolling restart: {total} messages to {total_clients} clients, all delivered once; \
         took {:?}",
        started.elapsed()
    );
    drop(sockets);
}

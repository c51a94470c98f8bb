//! Resume storms: many clients resuming from the start of a full history (`?since=0-0` on a
//! Redis stream, the oldest id held by the embedded broker) and never reading cost Redis and
//! the gateway a bounded amount, publishing carries on, and every such client is cut. Also the
//! replay budget's wait, with its positive and negative controls. Real redis-server, real
//! gateway binaries, raw TCP clients with a tiny receive buffer.
//!
//! The bounds are the ones the README states; each test prints what it measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use notify_proto::StreamId;
use notify_tests::{
    expect_silence, http_client, next_text, rss_kib, seed_payload, wait_until, Gateway, RedisServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// Messages in the history every storm replays.
const HISTORY: usize = 10_000;
/// Title length that makes each message about 2 KB.
const TITLE_BYTES: usize = 1_900;
/// Receive buffer of a client that never reads (the kernel doubles it).
const TINY_RECEIVE_BUFFER: u32 = 4096;

/// Bound on Redis's memory growth (`used_memory_rss`) during the Redis storm.
const REDIS_GROWTH_BOUND_MIB: u64 = 64;
/// Bound on the gateway's RSS growth during the Redis storm.
const GATEWAY_GROWTH_BOUND_REDIS_MIB: u64 = 64;
/// Bound on the gateway's RSS growth during the embedded storm.
const GATEWAY_GROWTH_BOUND_EMBEDDED_MIB: u64 = 100;
/// Longest a storm may take to end (every resume served or refused, every client cut).
const STORM_LIMIT: Duration = Duration::from_secs(60);
/// How far above its pre-storm RSS the gateway may stay once the storm is over.
const SETTLED_BOUND_MIB: u64 = 48;

fn mib(kib: u64) -> u64 {
    kib / 1024
}

/// A notification of about 2 KB for `region`.
fn large_payload(region: &str, n: usize) -> String {
    seed_payload(region, &format!("v{n}"), &"x".repeat(TITLE_BYTES))
}

/// Fills `region`'s stream with `count` large entries in pipelines of 1,000 `XADD`s.
async fn fill_stream(redis: &RedisServer, region: &str, count: usize) {
    let mut connection = redis.connection().await.unwrap();
    let key = format!("tvs:{region}:stream");
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(HISTORY)
                .arg("*")
                .arg("payload")
                .arg(large_payload(region, *n))
                .ignore();
        }
        let () = pipe.query_async(&mut connection).await.unwrap();
    }
}

/// Publishes `count` large messages through the gateway's API, 16 at a time; returns the
/// oldest id.
async fn fill_through_api(gateway: &Gateway, region: &str, count: usize) -> StreamId {
    let url = format!("{}/api/publish", gateway.http_url());
    let workers: Vec<JoinHandle<Option<StreamId>>> = (0..16)
        .map(|worker| {
            let url = url.clone();
            let region = region.to_owned();
            tokio::spawn(async move {
                let client = http_client();
                let mut oldest: Option<StreamId> = None;
                for n in (worker..count).step_by(16) {
                    let response = client
                        .post(&url)
                        .body(large_payload(&region, n))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200, "filling message {n}");
                    let receipt: serde_json::Value = response.json().await.unwrap();
                    let id = StreamId::parse(receipt["id"].as_str().unwrap()).unwrap();
                    oldest = Some(oldest.map_or(id, |oldest| oldest.min(id)));
                }
                oldest
            })
        })
        .collect();
    let mut oldest = None;
    for worker in workers {
        if let Some(id) = worker.await.unwrap() {
            oldest = Some(oldest.map_or(id, |oldest: StreamId| oldest.min(id)));
        }
    }
    oldest.expect("at least one message")
}

/// Opens a TCP connection with a tiny receive buffer and sends a WebSocket handshake for
/// `path_and_query`; never reads.
async fn never_reading_resume(addr: SocketAddr, path_and_query: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(TINY_RECEIVE_BUFFER).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads each socket to its end (what is left in its small buffer is discarded); returns how
/// many the server had closed within `timeout`.
async fn closed_by_server(sockets: Vec<TcpStream>, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut closed = 0;
    for mut socket in sockets {
        let mut buffer = vec![0u8; 64 * 1024];
        let ended = loop {
            match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        closed += usize::from(ended);
    }
    closed
}

/// Redis's `used_memory_rss`, in KiB; `None` (and why, printed) when Redis does not answer.
async fn redis_rss_kib(connection: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    let info: String = match redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await
    {
        Ok(info) => info,
        Err(error) => {
            eprintln!("INFO memory got no answer: {error}");
            return None;
        }
    };
    let rss = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory_rss:"))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .expect("used_memory_rss in INFO memory");
    Some(rss / 1024)
}

/// What the publishing side saw: every publish's status (0: no answer in time) and the slowest.
#[derive(Debug, Default)]
struct Publishes {
    statuses: Vec<u16>,
    slowest: Duration,
}

/// Publishes a small message through `gateway_url` every 50 ms, each within 2 s, until `stop`.
fn publish_every_50ms(gateway_url: String, stop: Arc<AtomicBool>) -> JoinHandle<Publishes> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let mut seen = Publishes::default();
        let mut n = 0;
        while !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let status = match client
                .post(format!("{gateway_url}/api/publish"))
                .body(seed_payload("AE", &format!("live-{n}"), "live"))
                .send()
                .await
            {
                Ok(response) => response.status().as_u16(),
                Err(error) => {
                    eprintln!("publish {n} got no answer: {error}");
                    0
                }
            };
            seen.slowest = seen.slowest.max(started.elapsed());
            seen.statuses.push(status);
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

/// Resumes the gateway has answered: served (counted at their first page, any source) or
/// refused for want of a turn.
async fn resumes_answered(gateway: &Gateway) -> f64 {
    gateway.metric("notify_resumes_total").await.unwrap_or(0.0)
        + gateway
            .metric("notify_replays_refused_total")
            .await
            .unwrap_or(0.0)
}

/// Peaks seen while a storm ran.
#[derive(Debug, Default)]
struct Peaks {
    gateway_kib: u64,
    redis_kib: u64,
}

/// Samples the gateway's RSS (and Redis's, when given) every 50 ms until `clients` resumes
/// were answered and the region has no connection left, failing as soon as a bound is passed; returns
/// the peaks and how long it took.
async fn sample_storm(
    gateway: &Gateway,
    clients: usize,
    gateway_bound_kib: u64,
    mut redis: Option<(&mut redis::aio::MultiplexedConnection, u64)>,
) -> (Peaks, Duration) {
    let pid = gateway.pid().unwrap();
    let started = Instant::now();
    let mut peaks = Peaks::default();
    loop {
        peaks.gateway_kib = peaks.gateway_kib.max(rss_kib(pid));
        assert!(
            peaks.gateway_kib <= gateway_bound_kib,
            "gateway RSS {} MiB passed its bound {} MiB after {:?}",
            mib(peaks.gateway_kib),
            mib(gateway_bound_kib),
            started.elapsed()
        );
        if let Some((connection, bound_kib)) = redis.as_mut() {
            if let Some(rss) = redis_rss_kib(connection).await {
                peaks.redis_kib = peaks.redis_kib.max(rss);
            }
            assert!(
                peaks.redis_kib <= *bound_kib,
                "Redis RSS {} MiB passed its bound {} MiB after {:?}",
                mib(peaks.redis_kib),
                mib(*bound_kib),
                started.elapsed()
            );
        }
        if resumes_answered(gateway).await >= clients as f64
            && gateway.connections("AE").await.ok() == Some(0.0)
        {
            return (peaks, started.elapsed());
        }
        assert!(
            started.elapsed() < STORM_LIMIT,
            "the storm did not end within {STORM_LIMIT:?}: {} resumes answered, connections: {:?}; \
             peaks so far: gateway {} MiB, Redis {} MiB",
            resumes_answered(gateway).await,
            gateway.connections("AE").await,
            mib(peaks.gateway_kib),
            mib(peaks.redis_kib),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 10 s for the gateway's RSS to come back within [`SETTLED_BOUND_MIB`] of
/// `before`; returns the last reading.
async fn settled_rss_kib(gateway: &Gateway, before: u64) -> u64 {
    let pid = gateway.pid().unwrap();
    let bound = before + SETTLED_BOUND_MIB * 1024;
    wait_until(Duration::from_secs(10), || async { rss_kib(pid) <= bound }).await;
    rss_kib(pid)
}

/// 200 clients resume from `0-0` against a 10,000-entry stream of 2 KB entries and never
/// read, while a second gateway publishes every 50 ms: Redis and the gateway stay within
/// their bounds, every publish answers 200 in time, every storm client is cut, and the
/// gateway's memory comes back.
#[tokio::test]
async fn a_resume_storm_costs_redis_and_the_gateway_a_bounded_amount() {
    const CLIENTS: usize = 200;
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    fill_stream(&redis, "AE", HISTORY).await;
    let args = [
        "--redis-url",
        &url,
        "--regions",
        "AE",
        "--write-timeout",
        "2s",
    ];
    let gateway = Gateway::start(&args).await.unwrap();
    // The publisher trims nothing during the test, so `0-0` stays covered: every resume is a
    // full replay of the stream.
    let publisher = Gateway::start(&[
        "--redis-url",
        &url,
        "--regions",
        "AE",
        "--history-retention",
        "20000",
    ])
    .await
    .unwrap();
    assert!(gateway.wait_ready_status(200, WAIT).await);
    assert!(publisher.wait_ready_status(200, WAIT).await);
    let mut info = redis.connection().await.unwrap();
    let redis_before = redis_rss_kib(&mut info).await.expect("Redis answers");
    let gateway_before = rss_kib(gateway.pid().unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publish_every_50ms(publisher.http_url(), Arc::clone(&stop));
    let mut sockets = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        sockets.push(never_reading_resume(gateway.addr(), "/?region=AE&since=0-0").await);
    }
    let redis_bound = redis_before + REDIS_GROWTH_BOUND_MIB * 1024;
    let gateway_bound = gateway_before + GATEWAY_GROWTH_BOUND_REDIS_MIB * 1024;
    let (peaks, took) = sample_storm(
        &gateway,
        CLIENTS,
        gateway_bound,
        Some((&mut info, redis_bound)),
    )
    .await;
    // Publishing goes on a little past the storm, then stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let publishes = publishing.await.unwrap();
    let closed = closed_by_server(sockets, Duration::from_secs(10)).await;
    let settled = settled_rss_kib(&gateway, gateway_before).await;
    eprintln!(
        "Redis storm, {CLIENTS} clients: ended in {took:?}; Redis RSS {} -> peak {} MiB;          gateway RSS {} -> peak {} -> {} MiB after; {} publishes, slowest {:?};          replay waits {}, refused {}",
        mib(redis_before),
        mib(peaks.redis_kib),
        mib(gateway_before),
        mib(peaks.gateway_kib),
        mib(settled),
        publishes.statuses.len(),
        publishes.slowest,
        gateway.metric("notify_replay_waits_total").await.unwrap(),
        gateway.metric("notify_replays_refused_total").await.unwrap(),
    );
    assert!(publishes.statuses.len() >= 10, "{publishes:?}");
    assert!(
        publishes.statuses.iter().all(|status| *status == 200),
        "every publish of the second gateway answers 200 within 2 s: {:?}",
        publishes.statuses
    );
    assert_eq!(closed, CLIENTS, "every storm client is cut");
    assert!(
        settled <= gateway_before + SETTLED_BOUND_MIB * 1024,
        "gateway RSS back near its baseline"
    );
    assert_eq!(gateway.metric("notify_replays_active").await.unwrap(), 0.0);
}

/// 2,000 clients resume from the oldest id of the embedded broker's full 10,000-message history
/// of 2 KB messages and never read: the gateway stays within its bound, cuts them all, and its
/// memory comes back.
#[tokio::test]
async fn an_embedded_resume_storm_costs_the_gateway_a_bounded_amount() {
    const CLIENTS: usize = 2_000;
    let retention = HISTORY.to_string();
    let args = [
        "--regions",
        "AE",
        "--history-retention",
        &retention,
        "--write-timeout",
        "2s",
    ];
    let gateway = Gateway::start(&args).await.unwrap();
    // `0-0` is before this history began (a resync); the oldest id held replays all the rest.
    let oldest = fill_through_api(&gateway, "AE", HISTORY).await;
    let gateway_before = rss_kib(gateway.pid().unwrap());

    let resume = format!("/?region=AE&since={oldest}");
    let mut sockets = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        sockets.push(never_reading_resume(gateway.addr(), &resume).await);
    }
    let gateway_bound = gateway_before + GATEWAY_GROWTH_BOUND_EMBEDDED_MIB * 1024;
    let (peaks, took) = sample_storm(&gateway, CLIENTS, gateway_bound, None).await;
    let closed = closed_by_server(sockets, Duration::from_secs(10)).await;
    let settled = settled_rss_kib(&gateway, gateway_before).await;
    eprintln!(
        "embedded storm, {CLIENTS} clients: ended in {took:?}; gateway RSS {} -> peak {} -> {} MiB after;          replay waits {}, refused {}",
        mib(gateway_before),
        mib(peaks.gateway_kib),
        mib(settled),
        gateway.metric("notify_replay_waits_total").await.unwrap(),
        gateway.metric("notify_replays_refused_total").await.unwrap(),
    );
    assert_eq!(closed, CLIENTS, "every storm client is cut");
    assert!(
        settled <= gateway_before + SETTLED_BOUND_MIB * 1024,
        "gateway RSS back near its baseline"
    );
}

/// Resumes with `?since=after` and reads the `count - 1` messages after it, in order, then
/// checks the socket stays open and quiet; returns how long the replay took.
async fn resume_and_read_all(url: String, after: StreamId, count: usize) -> Duration {
    let started = Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut last = after;
    for n in 1..count {
        let text = next_text(&mut socket, WAIT)
            .await
            .unwrap_or_else(|| panic!("message {n} of the replay did not arrive"));
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        let id = StreamId::parse(message["id"].as_str().unwrap()).unwrap();
        assert!(id > last, "in order: {id} after {last}");
        last = id;
    }
    let took = started.elapsed();
    expect_silence(&mut socket, Duration::from_millis(300))
        .await
        .unwrap();
    took
}

/// The replay budget's wait, a timed mechanism, with one turn: a resume that finds the turn
/// taken by a client that does not read waits `--replay-wait` and is closed with 1013
/// (negative control); once that client is cut, resumes arriving in pairs for several
/// `--replay-wait` periods take the turn one after another, and each gets the whole history in
/// order with its socket still open afterwards, none refused (positive control).
#[tokio::test]
async fn a_resume_waits_for_a_turn_and_gets_1013_past_the_replay_wait() {
    const MESSAGES: usize = 2_000;
    const PAIRS: u32 = 6;
    let gateway = Gateway::start(&[
        "--regions",
        "AE",
        "--history-retention",
        "2000",
        "--max-concurrent-replays",
        "1",
        "--replay-wait",
        "1s",
        "--write-timeout",
        "3s",
    ])
    .await
    .unwrap();
    let oldest = fill_through_api(&gateway, "AE", MESSAGES).await;
    let resume = format!("/?region=AE&since={oldest}");

    let blocker = never_reading_resume(gateway.addr(), &resume).await;
    assert!(
        wait_until(WAIT, || async {
            gateway.metric("notify_replays_active").await.unwrap_or(0.0) == 1.0
        })
        .await
    );
    let asked = Instant::now();
    let mut refused = gateway.connect(&resume).await.unwrap();
    let close = match tokio::time::timeout(WAIT, refused.next()).await {
        Ok(Some(Ok(Message::Close(frame)))) => frame.expect("a close frame with a code"),
        Ok(Some(Ok(other))) => {
            let shown: String = format!("{other:?}").chars().take(120).collect();
            panic!("a resume without a turn got {shown}…")
        }
        Ok(Some(Err(error))) => panic!("no close frame: {error}"),
        Ok(None) => panic!("closed without a close frame"),
        Err(_) => panic!("no close within {WAIT:?}"),
    };
    let waited = asked.elapsed();
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "refused after {waited:?}, --replay-wait is 1s"
    );
    assert_eq!(
        gateway
            .metric("notify_replays_refused_total")
            .await
            .unwrap(),
        1.0
    );

    // The client that does not read is cut by the write timeout, which ends its turn.
    assert!(
        wait_until(WAIT, || async {
            gateway.metric("notify_replays_active").await.unwrap_or(1.0) == 0.0
        })
        .await
    );
    assert_eq!(closed_by_server(vec![blocker], WAIT).await, 1);
    let waits_before = gateway.metric("notify_replay_waits_total").await.unwrap();

    // One resume alone gives the replay's length here; then pairs arrive every three lengths,
    // so the second of each pair waits about one replay, for several `--replay-wait` periods.
    let replay = resume_and_read_all(gateway.ws_url(&resume), oldest, MESSAGES)
        .await
        .max(Duration::from_millis(50));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..PAIRS {
        for _ in 0..2 {
            let url = gateway.ws_url(&resume);
            clients.push(tokio::spawn(resume_and_read_all(url, oldest, MESSAGES)));
        }
        tokio::time::sleep((replay * 3).max(Duration::from_millis(400))).await;
    }
    for client in clients {
        client.await.unwrap();
    }
    let took = started.elapsed();
    let waits = gateway.metric("notify_replay_waits_total").await.unwrap() - waits_before;
    eprintln!(
        "one replay of {MESSAGES} messages took {replay:?}; {PAIRS} pairs through one turn took {took:?}; {waits} waited"
    );
    assert!(
        took >= Duration::from_secs(2),
        "several --replay-wait periods"
    );
    assert!(
        waits >= 1.0,
        "resumes arriving together waited for the turn"
    );
    assert_eq!(
        gateway
            .metric("notify_replays_refused_total")
            .await
            .unwrap(),
        1.0,
        "none of them was refused"
    );
}

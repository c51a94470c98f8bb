//! Direct writes end to end: the region fan-out writes into caught-up plain-TCP WebSockets and
//! hands over to the connection's task when a socket does not take a frame at once. Real
//! `redis-server`, the real gateway binary, real WebSocket clients (which reject any broken
//! frame) over loopback.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use notify_tests::{
    next_text, redis_and_gateway, seed_payload, wait_until, Gateway, RedisServer, WsClient,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

/// The tests here push megabytes through loopback sockets that a client does not read, and one
/// of them times its readers: run one at a time, so another's traffic (CPU, and the kernel's
/// TCP memory for unread data) does not stall the one being timed.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client whose socket holds little (4 KiB receive buffer), so a client that pauses fills
/// it quickly and the gateway's writes stop being taken at once.
async fn small_buffer_client(gateway: &Gateway, region: &str) -> WsClient {
    let before = gateway.connections(region).await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream =
        tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(gateway.addr()).await.unwrap());
    let (client, _) =
        tokio_tungstenite::client_async(gateway.ws_url(&format!("/?region={region}")), stream)
            .await
            .unwrap();
    assert!(
        wait_until(WAIT, || async {
            gateway.connections(region).await.unwrap_or(0.0) > before
        })
        .await,
        "gateway did not count the connection"
    );
    client
}

/// Publishes `count` messages to `region` on Redis, each with its sequence number, the
/// microseconds since `epoch` when it was sent, and `filler_bytes` of padding; `pause`
/// between messages.
fn publish_paced(
    redis: &RedisServer,
    region: &'static str,
    count: usize,
    filler_bytes: usize,
    pause: Duration,
    epoch: Instant,
) -> tokio::task::JoinHandle<()> {
    let client = redis.client();
    tokio::spawn(async move {
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let filler = "x".repeat(filler_bytes);
        for seq in 0..count {
            let mut payload: Value =
                serde_json::from_str(&seed_payload(region, &format!("v{seq}"), "t")).unwrap();
            payload["sent_us"] = json!(epoch.elapsed().as_micros() as u64);
            payload["filler"] = json!(filler);
            let _: i64 = redis::cmd("PUBLISH")
                .arg(format!("tvs:{region}"))
                .arg(payload.to_string())
                .query_async(&mut connection)
                .await
                .unwrap();
            tokio::time::sleep(pause).await;
        }
    })
}

/// The sequence number and send time (µs since the epoch) of a message `publish_paced` sent,
/// found without parsing the padding (these clients read megabytes in a debug build).
fn sequence_and_sent(text: &str) -> (usize, u64) {
    let field = |name: &str, end: char| {
        let start = text
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in the message"))
            + name.len();
        let length = text[start..].find(end).expect("a whole field");
        text[start..start + length].to_owned()
    };
    let seq = field("\"video_id\":\"v", '"')
        .parse()
        .expect("a sequence number");
    let sent = field("\"sent_us\":", ',').parse().expect("a send time");
    (seq, sent)
}

async fn direct_writes(gateway: &Gateway) -> f64 {
    gateway
        .metric("notify_websocket_direct_writes_total")
        .await
        .unwrap()
}

async fn delivered(gateway: &Gateway) -> f64 {
    gateway
        .metric("notify_messages_delivered_total{transport=\"websocket\"}")
        .await
        .unwrap()
}

/// A client that reads in bursts and pauses in between: while it pauses its socket fills and
/// the task writes its queue; when it has read everything the fan-out writes again. Every
/// message arrives once, in order, across both.
#[tokio::test]
async fn order_is_kept_while_a_client_alternates_between_direct_writes_and_its_queue() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (redis, gateway) =
        redis_and_gateway(&["--queue-limit", "4096", "--write-timeout", "10s"]).await;
    let mut client = small_buffer_client(&gateway, "AE").await;
    const MESSAGES: usize = 400;
    let epoch = Instant::now();
    let publisher = publish_paced(
        &redis,
        "AE",
        MESSAGES,
        32 * 1024,
        Duration::from_millis(1),
        epoch,
    );
    for seq in 0..MESSAGES {
        let text = next_text(&mut client, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("message {seq} never arrived (or the socket failed)"));
        assert_eq!(sequence_and_sent(&text).0, seq, "in order, none lost");
        if seq % 100 == 50 {
            // Stop reading for a while: the gateway's writes back up into the queue.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    publisher.await.unwrap();
    let direct = direct_writes(&gateway).await;
    let total = delivered(&gateway).await;
    eprintln!("{total} delivered, {direct} of them written directly by the fan-out");
    assert_eq!(total, MESSAGES as f64);
    assert!(direct > 0.0, "the fan-out wrote some frames itself");
    assert!(
        direct < total,
        "the pauses made the connection's task write some"
    );
}

/// One client stops reading while two others read: the fan-out keeps writing the readers
/// directly and on time, the stalled one falls back to its task, whose write does not finish
/// within the write timeout — it is dropped and counted — and the publisher never waits for
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_while_the_readers_stay_direct_and_on_time() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (redis, gateway) =
        redis_and_gateway(&["--queue-limit", "128", "--write-timeout", "2s"]).await;
    let mut stalled = small_buffer_client(&gateway, "AE").await;
    const READERS: usize = 2;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(gateway.connect_counted("/?region=AE", "AE").await.unwrap());
    }
    // 5.6 MB in all: more than the stalled client's socket buffers hold.
    const MESSAGES: usize = 350;
    let epoch = Instant::now();
    // Paced wider than a burst, so caught-up readers are written directly.
    let publisher = publish_paced(
        &redis,
        "AE",
        MESSAGES,
        16 * 1024,
        Duration::from_millis(6),
        epoch,
    );
    let reading = readers.into_iter().map(|mut reader| {
        tokio::spawn(async move {
            let mut latencies_ms = Vec::with_capacity(MESSAGES);
            for seq in 0..MESSAGES {
                let text = loop {
                    match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => break text,
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                        other => panic!(
                            "a reader missed message {seq}: {other:?}; latencies so far (ms): {:?}",
                            &latencies_ms[latencies_ms.len().saturating_sub(40)..]
                        ),
                    }
                };
                let (got, sent_us) = sequence_and_sent(&text);
                assert_eq!(got, seq, "in order, none lost");
                let sent = Duration::from_micros(sent_us);
                latencies_ms.push((epoch.elapsed() - sent).as_secs_f64() * 1e3);
            }
            latencies_ms
        })
    });
    let mut latencies_ms: Vec<f64> = Vec::new();
    for reader in reading {
        latencies_ms.extend(reader.await.unwrap());
    }
    publisher.await.unwrap();
    latencies_ms.sort_by(f64::total_cmp);
    let median = latencies_ms[latencies_ms.len() / 2];
    let p90 = latencies_ms[latencies_ms.len() * 9 / 10];
    let max = latencies_ms[latencies_ms.len() - 1];
    eprintln!(
        "readers' latency beside a stalled client: median {median:.2} ms, p90 {p90:.2} ms, max {max:.2} ms"
    );
    // The median only: in this run the readers also see one stall of up to ~3 s around the
    // stalled client's write timeout, with the ring-only gateway as well (measured: max
    // 3.0–3.2 s before direct writes, 2.9–3.0 s after).
    assert!(median < 20.0, "median {median} ms");
    // The stalled client: its write timed out; it is dropped without a close frame.
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
    loop {
        match tokio::time::timeout(WAIT, stalled.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                panic!("a client whose socket does not drain gets no close frame: {frame:?}")
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => panic!("the stalled client's connection was not ended"),
        }
    }
    let direct = direct_writes(&gateway).await;
    let readers_got = (READERS * MESSAGES) as f64;
    eprintln!("{direct} direct writes in all, for the readers' {readers_got} deliveries");
    assert!(
        direct >= readers_got * 0.5,
        "caught-up readers are written by the fan-out itself: {direct} of {readers_got}"
    );
}

/// The client pings constantly and the gateway pings every 50 ms while large frames are
/// written, some directly and some by the task after a partial write: the client (which
/// rejects any malformed frame) reads every message whole and in order, gets pongs and
/// answers pings across many ping periods.
#[tokio::test]
async fn pings_and_pongs_between_direct_writes_never_break_a_frame() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (redis, gateway) = redis_and_gateway(&[
        "--queue-limit",
        "4096",
        "--ping-interval",
        "50ms",
        "--idle-timeout",
        "5s",
        "--write-timeout",
        "10s",
    ])
    .await;
    let client = small_buffer_client(&gateway, "AE").await;
    let (mut sink, mut stream) = client.split();
    const MESSAGES: usize = 800;
    let epoch = Instant::now();
    let publisher = publish_paced(
        &redis,
        "AE",
        MESSAGES,
        16 * 1024,
        Duration::from_millis(1),
        epoch,
    );
    let pinger = tokio::spawn(async move {
        let mut sent = 0u32;
        let payload = vec![b'p'; 125];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if sink
                .send(Message::Ping(payload.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        (sink, sent)
    });
    let mut pongs = 0u32;
    let mut pings = 0u32;
    let mut seq = 0usize;
    let started = Instant::now();
    while seq < MESSAGES {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("message {seq} never arrived"))
            .expect("the stream ended");
        match frame.unwrap_or_else(|error| panic!("a broken frame before message {seq}: {error}")) {
            Message::Text(text) => {
                assert_eq!(sequence_and_sent(&text).0, seq, "in order, none lost");
                seq += 1;
                if seq % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Message::Pong(payload) => {
                assert_eq!(&payload[..], &[b'p'; 125][..], "a whole pong");
                pongs += 1;
            }
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    publisher.await.unwrap();
    pinger.abort();
    eprintln!("{MESSAGES} messages, {pongs} pongs, {pings} pings in {elapsed:?}");
    assert!(pongs >= 10, "the client's pings were answered: {pongs}");
    let periods = (elapsed.as_millis() / 50) as u32;
    assert!(
        periods >= 4 && pings >= periods / 2,
        "the gateway pinged across {periods} periods: {pings}"
    );
    let direct = direct_writes(&gateway).await;
    assert!(direct > 0.0, "some frames were written directly");
    assert!(
        direct < MESSAGES as f64,
        "some frames were written by the task"
    );
}

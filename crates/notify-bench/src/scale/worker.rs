//! One client process of a `scale` run (`notify-bench scale-worker`, started by the run
//! itself): its share of the clients, spread over `--targets`, each resuming with `since` on
//! the next target whenever its connection ends; it answers the run's [`Command`]s.
//!
//! A client checks what it receives by the `seq` and `sent_ns` fields the run stamps on each
//! message (the byte-for-byte check of `chaos` needs the publisher's log, which lives in
//! another process here): each `seq` must be the next of its region, each `id` must rise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use notify_proto::StreamId;
use std::io::BufRead;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::client::Connector;
use crate::latency;
use crate::report::Outcome;
use crate::resuming::jitter;
use crate::scale::wire::{wall_ns, Command, Deliveries, Event};

/// After this long without progress while clients are behind, an `expect` is answered with
/// what arrived.
const STALL: Duration = Duration::from_secs(10);

/// One client, as the process's command loop sees it (written only by its own task).
#[derive(Debug)]
struct Client {
    region: usize,
    /// The next `seq` it expects: it received `0..next_seq` exactly once, in order.
    next_seq: AtomicU64,
    connected: AtomicBool,
    connections: AtomicU64,
    /// Whether its first handshake was answered (either way).
    first_attempt_done: AtomicBool,
    first_attempt_failed: AtomicBool,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    resyncs: AtomicU64,
}

impl Client {
    /// A client of region index `region` that has not connected yet.
    fn new(region: usize) -> Self {
        Client {
            region,
            next_seq: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            first_attempt_done: AtomicBool::new(false),
            first_attempt_failed: AtomicBool::new(false),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        }
    }
}

/// What every client task shares.
struct Shared {
    targets: Vec<SocketAddr>,
    regions: Vec<String>,
    epochs: Vec<StreamId>,
    connector: Connector,
    reconnect_delay: Duration,
    max_attempts: u32,
    stop: Notify,
    stopping: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
}

/// Runs the worker: connects, then answers commands from stdin until `stop` or its end.
pub async fn run(args: Args) -> Result<Outcome> {
    let targets = parse_targets(&args.targets)?;
    if args.epochs.len() != args.regions.len() {
        bail!("--epochs needs one id per region");
    }
    let epochs = args
        .epochs
        .iter()
        .map(|id| StreamId::parse(id).with_context(|| format!("--epochs: {id:?}")))
        .collect::<Result<Vec<_>>>()?;
    let sources = crate::cli::source_ips(
        targets[0],
        args.source_ips,
        crate::cli::source_block(args.fixed_sources),
    );
    let shared = Arc::new(Shared {
        connector: Connector::new(targets[0], sources, args.connect_concurrency),
        targets,
        regions: args.regions.iter().map(|r| r.as_str().to_owned()).collect(),
        epochs,
        reconnect_delay: args.reconnect_delay,
        max_attempts: args.reconnect_attempts,
        stop: Notify::new(),
        stopping: AtomicBool::new(false),
        errors: std::sync::Mutex::new(Vec::new()),
    });
    let first = args.worker_first_client;
    let clients: Vec<Arc<Client>> = (first..first + args.clients)
        .map(|global| Arc::new(Client::new(global % shared.regions.len())))
        .collect();
    let mut tasks = Vec::with_capacity(clients.len());
    for (offset, client) in clients.iter().enumerate() {
        let target = (first + offset) % shared.targets.len();
        tasks.push(tokio::spawn(client_task(
            Arc::clone(&shared),
            Arc::clone(client),
            target,
        )));
    }
    let deadline = Instant::now() + args.timeout;
    while Instant::now() < deadline
        && !clients
            .iter()
            .all(|client| client.first_attempt_done.load(Ordering::Acquire))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed = clients
        .iter()
        .filter(|client| client.first_attempt_failed.load(Ordering::Relaxed))
        .count() as u64;
    let errors = crate::fleet::lock(&shared.errors).clone();
    answer(&Event::Connected {
        ok: clients.len() as u64 - failed,
        failed,
        errors,
    });

    let mut commands = read_commands();
    loop {
        let line = tokio::time::timeout_at(deadline, commands.recv())
            .await
            .context("no command from the run before --timeout")?;
        let Some(line) = line else { break };
        let line = line.context("reading a command")?;
        match serde_json::from_str::<Command>(&line).with_context(|| format!("command {line:?}"))? {
            Command::Status => answer(&Event::Status {
                connected: clients
                    .iter()
                    .filter(|client| client.connected.load(Ordering::Relaxed))
                    .count() as u64,
                reconnects: clients
                    .iter()
                    .map(|client| client.connections.load(Ordering::Relaxed).saturating_sub(1))
                    .sum(),
            }),
            Command::Expect { counts } => {
                let deliveries = await_deliveries(&clients, &counts, deadline).await;
                answer(&Event::Delivered(deliveries));
            }
            Command::Stop => break,
        }
    }
    shared.stopping.store(true, Ordering::Release);
    shared.stop.notify_waiters();
    crate::scenario::join_bounded(tasks, Duration::from_secs(5)).await;
    answer(&Event::Stopped);
    Ok(Outcome::new(serde_json::Map::new(), Vec::new()))
}

/// The lines of stdin, read on a thread of their own (a blocking read; the channel holds at
/// most a few: the run sends one command and waits for its answer). Ends with stdin.
fn read_commands() -> mpsc::Receiver<std::io::Result<String>> {
    let (sender, receiver) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if sender.blocking_send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// `--targets host:port,...`, loopback only.
pub fn parse_targets(targets: &[String]) -> Result<Vec<SocketAddr>> {
    if targets.is_empty() {
        bail!("--targets: at least one gateway address is needed");
    }
    targets
        .iter()
        .map(|target| crate::cli::gateway_addr(&format!("http://{target}")))
        .collect()
}

/// Writes one event line on stdout.
fn answer(event: &Event) {
    // An event is a plain struct of numbers and strings: serializing it cannot fail.
    let line = serde_json::to_string(event).unwrap_or_default();
    println!("{line}");
}

/// Waits until every client has `counts[region]` messages, nothing moved for [`STALL`], or
/// the deadline; then sums what they got and takes the latencies recorded since last time.
async fn await_deliveries(
    clients: &[Arc<Client>],
    counts: &[u64],
    deadline: Instant,
) -> Deliveries {
    let behind = |client: &Client| {
        counts
            .get(client.region)
            .copied()
            .unwrap_or(0)
            .saturating_sub(client.next_seq.load(Ordering::Relaxed))
    };
    let mut last_missing = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let missing: u64 = clients.iter().map(|client| behind(client)).sum();
        let now = Instant::now();
        if missing != last_missing {
            last_missing = missing;
            last_progress = now;
        }
        if missing == 0 || now >= deadline || now - last_progress > STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut deliveries = Deliveries::default();
    for client in clients {
        let expected = counts.get(client.region).copied().unwrap_or(0);
        deliveries.clients += 1;
        deliveries.expected += expected;
        deliveries.received += client.next_seq.load(Ordering::Relaxed).min(expected);
        deliveries.missing += behind(client);
        deliveries.duplicates += client.duplicates.load(Ordering::Relaxed);
        deliveries.gaps += client.gaps.load(Ordering::Relaxed);
        deliveries.resyncs += client.resyncs.load(Ordering::Relaxed);
    }
    deliveries.latency_us = latency::buckets(&latency::take());
    deliveries
}

/// One client: connect to `target` with `since`, read, and on any end resume on the next
/// target after a jittered pause; gives up after `--reconnect-attempts` failures in a row.
async fn client_task(shared: Arc<Shared>, client: Arc<Client>, mut target: usize) {
    let region = &shared.regions[client.region];
    let mut since = shared.epochs[client.region];
    let mut failures_in_a_row = 0u32;
    while !shared.stopping.load(Ordering::Acquire) {
        let path = format!("/?region={region}&since={since}");
        let connected = tokio::select! {
            connected = shared.connector.connect_to(shared.targets[target], &path) => connected,
            () = shared.stop.notified() => break,
        };
        let first = !client.first_attempt_done.load(Ordering::Relaxed);
        let mut socket = match connected {
            Ok(socket) => socket,
            Err(error) => {
                if first {
                    client.first_attempt_failed.store(true, Ordering::Relaxed);
                    client.first_attempt_done.store(true, Ordering::Release);
                }
                {
                    let mut errors = crate::fleet::lock(&shared.errors);
                    if errors.len() < 3 {
                        errors.push(format!("{error:#}"));
                    }
                }
                failures_in_a_row += 1;
                if failures_in_a_row >= shared.max_attempts {
                    break;
                }
                target = (target + 1) % shared.targets.len();
                tokio::time::sleep(jitter(shared.reconnect_delay)).await;
                continue;
            }
        };
        failures_in_a_row = 0;
        client.connections.fetch_add(1, Ordering::Relaxed);
        client.connected.store(true, Ordering::Release);
        client.first_attempt_done.store(true, Ordering::Release);
        loop {
            let frame = tokio::select! {
                frame = socket.next() => frame,
                () = shared.stop.notified() => None,
            };
            match frame {
                Some(Ok(Message::Text(text))) => on_frame(&client, text.as_bytes(), &mut since),
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
        client.connected.store(false, Ordering::Release);
        if shared.stopping.load(Ordering::Acquire) {
            let _ = socket.close(None).await;
            break;
        }
        target = (target + 1) % shared.targets.len();
        tokio::time::sleep(jitter(shared.reconnect_delay)).await;
    }
}

/// Checks one frame: the next `seq` of the region with a rising id is delivered; an earlier
/// one is a duplicate, a later one a gap; `resync` is counted.
fn on_frame(client: &Client, frame: &[u8], since: &mut StreamId) {
    if find(frame, b"\"event\":\"resync\"").is_some() {
        client.resyncs.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (Some(seq), Some(sent_ns)) = (
        number_after(frame, b",\"seq\":"),
        number_after(frame, b",\"sent_ns\":"),
    ) else {
        return;
    };
    let id = string_after(frame, b"\"id\":\"").and_then(|id| StreamId::parse(id).ok());
    let next = client.next_seq.load(Ordering::Relaxed);
    if seq < next || id.is_some_and(|id| id <= *since) {
        client.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if seq > next {
        client.gaps.fetch_add(seq - next, Ordering::Relaxed);
    }
    client.next_seq.store(seq + 1, Ordering::Relaxed);
    if let Some(id) = id {
        *since = id;
    }
    latency::record_ns(wall_ns().saturating_sub(sent_ns));
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The unsigned integer right after `key`.
fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(frame, key)? + key.len();
    let digits = frame[start..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// The string value right after `key` (which ends with its opening quote).
fn string_after<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let start = find(frame, key)? + key.len();
    let end = frame[start..].iter().position(|byte| *byte == b'"')?;
    std::str::from_utf8(&frame[start..start + end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(0)
    }

    fn frame(seq: u64, id: &str) -> String {
        let region = notify_proto::Region::parse("FI").unwrap();
        let mut message = crate::messages::notification(region, seq, wall_ns(), 1_764_290_000);
        message.id = Some(id.parse().unwrap());
        message.to_json()
    }

    #[test]
    fn frames_are_judged_by_seq_and_id() {
        let client = client();
        let mut since = StreamId::parse("1-0").unwrap();
        on_frame(&client, frame(0, "5-0").as_bytes(), &mut since);
        on_frame(&client, frame(1, "6-0").as_bytes(), &mut since);
        assert_eq!(client.next_seq.load(Ordering::Relaxed), 2);
        assert_eq!(since, StreamId::parse("6-0").unwrap());
        on_frame(&client, frame(1, "6-0").as_bytes(), &mut since);
        assert_eq!(client.duplicates.load(Ordering::Relaxed), 1);
        on_frame(&client, frame(4, "9-0").as_bytes(), &mut since);
        assert_eq!(client.gaps.load(Ordering::Relaxed), 2);
        assert_eq!(client.next_seq.load(Ordering::Relaxed), 5);
        on_frame(&client, br#"{"event":"resync","region":"FI"}"#, &mut since);
        assert_eq!(client.resyncs.load(Ordering::Relaxed), 1);
    }
}

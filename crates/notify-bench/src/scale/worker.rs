//! One client process of a `scale` run (`notify-bench scale-worker`, started by the run
//! itself): its share of the clients, spread over `--targets`, each resuming with `since` on
//! the next target whenever its connection ends; it answers the run's [`Command`]s.
//!
//! A client checks what it receives by the `seq` and `sent_ns` fields the run stamps on each
//! message (the byte-for-byte check of `chaos` needs the publisher's log, which lives in
//! another process here): each `seq` must be the next of its region, each `id` must rise.
//!
//! It does not decide when a phase is over: the run polls [`Command::Progress`] until every
//! message arrived or nothing moved for `--drain-grace`, then asks [`Command::Expect`] for the
//! deliveries and for what is missing, as lost, by gateway and region.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use crate::scale::wire::{wall_ns, Command, Deliveries, Event, LostGroup};

/// One client, as the process's command loop sees it (written only by its own task).
#[derive(Debug)]
struct Client {
    region: usize,
    /// The next `seq` it expects: it received `0..next_seq` exactly once, in order.
    next_seq: AtomicU64,
    /// Wall-clock time of its latest delivery, 0 before the first.
    last_delivery_ns: AtomicU64,
    /// The target it is connected to, or was last (or first tries).
    gateway: AtomicUsize,
    /// The `seq` range `lost_from..lost_to` the last `expect` reported lost (empty if none);
    /// written by the command loop only.
    lost_from: AtomicU64,
    lost_to: AtomicU64,
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
    /// A client of region index `region` that has not connected yet and will first try
    /// target `gateway`.
    fn new(region: usize, gateway: usize) -> Self {
        Client {
            region,
            next_seq: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            gateway: AtomicUsize::new(gateway),
            lost_from: AtomicU64::new(0),
            lost_to: AtomicU64::new(0),
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
        .map(|global| {
            let (region, gateway) = placement(global, shared.regions.len(), shared.targets.len());
            Arc::new(Client::new(region, gateway))
        })
        .collect();
    let mut tasks = Vec::with_capacity(clients.len());
    for client in &clients {
        tasks.push(tokio::spawn(client_task(
            Arc::clone(&shared),
            Arc::clone(client),
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
            Command::Progress { counts } => answer(&Event::Progress {
                missing: clients.iter().map(|client| behind(client, &counts)).sum(),
                last_delivery_ns: last_delivery_ns(&clients),
            }),
            Command::Expect { counts } => answer(&Event::Delivered(deliveries(
                &clients,
                &counts,
                &shared.regions,
            ))),
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

/// Client number `global`'s region index and first target: regions round-robin, and each
/// run of one client per region on the next target, so every gateway serves every region
/// (client `n` on target `n mod targets` would give each of 4 gateways only 2 of 8 regions).
fn placement(global: usize, regions: usize, targets: usize) -> (usize, usize) {
    (global % regions, (global / regions) % targets)
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

/// Messages of its region that `client` does not have yet, of `counts[region]` published.
fn behind(client: &Client, counts: &[u64]) -> u64 {
    counts
        .get(client.region)
        .copied()
        .unwrap_or(0)
        .saturating_sub(client.next_seq.load(Ordering::Relaxed))
}

/// The latest delivery to any client, wall clock.
fn last_delivery_ns(clients: &[Arc<Client>]) -> u64 {
    clients
        .iter()
        .map(|client| client.last_delivery_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}

/// Sums the clients' deliveries against `counts`: what is missing now is lost, grouped by
/// gateway and region; messages an earlier call reported lost that arrived since are counted
/// apart. Takes the latencies recorded since the last call.
fn deliveries(clients: &[Arc<Client>], counts: &[u64], regions: &[String]) -> Deliveries {
    let mut deliveries = Deliveries::default();
    for client in clients {
        let expected = counts.get(client.region).copied().unwrap_or(0);
        let next_seq = client.next_seq.load(Ordering::Relaxed);
        let (lost_from, lost_to) = (
            client.lost_from.load(Ordering::Relaxed),
            client.lost_to.load(Ordering::Relaxed),
        );
        deliveries.arrived_after_reported_lost += next_seq.min(lost_to).saturating_sub(lost_from);
        deliveries.clients += 1;
        deliveries.expected += expected;
        deliveries.received += next_seq.min(expected);
        deliveries.duplicates += client.duplicates.load(Ordering::Relaxed);
        deliveries.gaps += client.gaps.load(Ordering::Relaxed);
        deliveries.resyncs += client.resyncs.load(Ordering::Relaxed);
        let lost = expected.saturating_sub(next_seq);
        client.lost_from.store(next_seq, Ordering::Relaxed);
        client.lost_to.store(next_seq + lost, Ordering::Relaxed);
        if lost > 0 {
            deliveries.lost += lost;
            deliveries.add_lost(&LostGroup {
                gateway: client.gateway.load(Ordering::Relaxed),
                region: regions[client.region].clone(),
                clients: 1,
                connected: u64::from(client.connected.load(Ordering::Relaxed)),
                messages: lost,
                from_seq: next_seq,
                from_seq_highest: next_seq,
                to_seq: expected - 1,
            });
        }
    }
    deliveries.last_delivery_ns = last_delivery_ns(clients);
    deliveries.latency_us = latency::buckets(&latency::take());
    deliveries
}

/// One client: connect to its first target with `since`, read, and on any end resume on the
/// next target after a jittered pause; gives up after `--reconnect-attempts` failures in a
/// row.
async fn client_task(shared: Arc<Shared>, client: Arc<Client>) {
    let mut target = client.gateway.load(Ordering::Relaxed);
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
        client.gateway.store(target, Ordering::Relaxed);
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
    let now = wall_ns();
    client.last_delivery_ns.store(now, Ordering::Relaxed);
    latency::record_ns(now.saturating_sub(sent_ns));
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
        Client::new(0, 0)
    }

    fn frame(seq: u64, id: &str) -> String {
        let region = notify_proto::Region::parse("FI").unwrap();
        let mut message = crate::messages::notification(region, seq, wall_ns(), 1_764_290_000);
        message.id = Some(id.parse().unwrap());
        message.to_json()
    }

    #[test]
    fn every_gateway_gets_every_region() {
        let mut seen = std::collections::HashSet::new();
        for global in 0..8 * 4 {
            seen.insert(placement(global, 8, 4));
        }
        assert_eq!(seen.len(), 32);
        assert_eq!(placement(9, 8, 4), (1, 1));
        assert_eq!(placement(9, 8, 1), (1, 0));
    }

    #[test]
    fn what_is_missing_is_lost_by_gateway_and_region_until_it_arrives() {
        let regions = vec!["FI".to_owned(), "AE".to_owned()];
        let clients: Vec<Arc<Client>> = [(0, 1), (0, 1), (1, 0)]
            .into_iter()
            .map(|(region, gateway)| Arc::new(Client::new(region, gateway)))
            .collect();
        clients[0].next_seq.store(10, Ordering::Relaxed);
        clients[1].next_seq.store(7, Ordering::Relaxed);
        clients[1].connected.store(true, Ordering::Relaxed);
        clients[2].next_seq.store(5, Ordering::Relaxed);
        let counts = [10, 5];
        let first = deliveries(&clients, &counts, &regions);
        assert_eq!((first.expected, first.received, first.lost), (25, 22, 3));
        assert_eq!(
            first.lost_detail,
            [LostGroup {
                gateway: 1,
                region: "FI".into(),
                clients: 1,
                connected: 1,
                messages: 3,
                from_seq: 7,
                from_seq_highest: 7,
                to_seq: 9,
            }]
        );
        assert_eq!(first.arrived_after_reported_lost, 0);
        // Two of the three arrive late; the next report counts them apart.
        clients[1].next_seq.store(9, Ordering::Relaxed);
        let second = deliveries(&clients, &counts, &regions);
        assert_eq!((second.lost, second.arrived_after_reported_lost), (1, 2));
        clients[1].next_seq.store(10, Ordering::Relaxed);
        let third = deliveries(&clients, &counts, &regions);
        assert_eq!((third.lost, third.arrived_after_reported_lost), (0, 1));
        assert!(third.lost_detail.is_empty());
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

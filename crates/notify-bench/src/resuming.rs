//! Clients that resume: each one connects to a gateway of the fleet with
//! `/?region=XX&since=<last id>`, feeds every frame to its [`Tracker`], and whenever its
//! connection ends (close frame, error, EOF, or its own drop) waits a short jittered pause and
//! reconnects to a random live gateway, giving up after `--reconnect-attempts` failures in a
//! row. [`Population`] sums what happened to them as connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;
use notify_proto::StreamId;
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::client::{Connector, Socket};
use crate::fleet::{lock, Fleet};
use crate::messages::{now_ns, MessageLog};
use crate::plain::{self, PlainSeen};
use crate::publish::per_region;
use crate::tracker::Tracker;
use tokio::task::JoinHandle;

/// During catch-up: when every client that is behind is connected and none has received
/// anything for this long, the rest is lost and waiting longer is pointless.
const CATCH_UP_STALL: Duration = Duration::from_secs(10);

/// Longest pause between two connection attempts of one client.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// A uniformly random duration in `0..=max`.
pub fn jitter(max: Duration) -> Duration {
    let max_us = max.as_micros().min(u128::from(u64::MAX)) as u64;
    Duration::from_micros(rand::rng().random_range(0..=max_us))
}

/// What every client task shares.
#[derive(Debug)]
pub struct ClientContext {
    /// The messages clients compare frames against.
    pub log: Arc<MessageLog>,
    /// The gateways to connect to.
    pub fleet: Arc<Fleet>,
    /// Opens the sockets (source addresses, handshakes in flight).
    pub connector: Connector,
    /// Per region, the id every client starts from.
    pub epochs: Vec<StreamId>,
    /// Longest jittered pause before a reconnect.
    pub reconnect_delay: Duration,
    /// Failed attempts in a row after which a client gives up.
    pub max_attempts: u32,
}

impl ClientContext {
    /// The context of a run's clients: an id-carrying log sized for `--rate` × `--duration`,
    /// the epochs every client starts from, and a connector from the run's source addresses.
    /// Returns it with the source addresses (for the report).
    pub fn for_run(
        args: &Args,
        fleet: &Arc<Fleet>,
        epochs: Vec<StreamId>,
    ) -> (Arc<Self>, Vec<std::net::IpAddr>) {
        let log = Arc::new(MessageLog::new(
            &args.regions,
            per_region(args.steady_messages(), args.regions.len(), 0),
        ));
        let sources = crate::cli::source_ips(
            fleet.nodes[0].addr,
            args.source_ips,
            crate::cli::source_block(args.fixed_sources),
        );
        let ctx = ClientContext {
            log,
            fleet: Arc::clone(fleet),
            connector: Connector::new(
                fleet.nodes[0].addr,
                sources.clone(),
                args.connect_concurrency,
            ),
            epochs,
            reconnect_delay: args.reconnect_delay,
            max_attempts: args.reconnect_attempts,
        };
        (Arc::new(ctx), sources)
    }
}

/// A client's state as the rest of the run sees it.
#[derive(Debug)]
pub struct ClientShared {
    /// Index of its region in the message log.
    pub region: usize,
    /// The next `seq` the client expects (all before it were received or counted lost).
    pub next_seq: AtomicU64,
    /// Whether a connection is open now.
    pub connected: AtomicBool,
    /// Whether a connection was ever open.
    pub ever_connected: AtomicBool,
    /// The task has ended (stopped or gave up).
    pub finished: AtomicBool,
    /// Makes the client close its socket and resume.
    pub drop_now: Notify,
    /// Id-carrying messages received (distinct), for progress lines.
    pub delivered: AtomicU64,
    /// Frames of an id-carrying message already received.
    pub duplicates: AtomicU64,
    /// `resync` control messages received.
    pub resyncs: AtomicU64,
    /// Foreign-id messages (see [`plain::is_foreign`]) received.
    pub foreign: AtomicU64,
    /// Connections and plain messages received.
    pub plain: Mutex<PlainSeen>,
}

impl ClientShared {
    /// A client of region index `region`, not yet connected.
    pub fn new(region: usize) -> Self {
        ClientShared {
            region,
            next_seq: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            drop_now: Notify::new(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            plain: Mutex::new(PlainSeen::default()),
        }
    }
}

/// Everything one client task saw, returned when it ends.
#[derive(Debug, Default)]
pub struct ClientReport {
    /// Index of its region in the message log.
    pub region: usize,
    /// What it received, judged.
    pub tracker: Tracker,
    /// Connections opened.
    pub connections: u64,
    /// Connections opened after one had ended.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub failed_attempts: u64,
    /// Whether it stopped trying.
    pub gave_up: bool,
    /// From a connection's end to the next successful handshake.
    pub resume_ms: Vec<u32>,
    /// How its connections ended, by label.
    pub endings: BTreeMap<String, u64>,
    /// The first few connection errors.
    pub errors: Vec<String>,
}

/// How a connection ended.
#[derive(Debug)]
enum Ending {
    Closed(Option<u16>),
    Error,
    Eof,
    Dropped,
    Stop,
}

impl Ending {
    fn label(&self) -> String {
        match self {
            Ending::Closed(Some(code)) => format!("close_{code}"),
            Ending::Closed(None) => "close".into(),
            Ending::Error => "error".into(),
            Ending::Eof => "eof".into(),
            Ending::Dropped => "dropped_by_client".into(),
            Ending::Stop => "stop".into(),
        }
    }
}

/// Sleeps `pause` unless told to stop first; true when told to stop.
async fn pause_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(pause) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// One client for the whole run: connect, read, resume, until `stop` or it gives up.
pub async fn client_task(
    ctx: Arc<ClientContext>,
    shared: Arc<ClientShared>,
    first_gateway: usize,
    mut stop: watch::Receiver<bool>,
) -> ClientReport {
    let region = shared.region;
    let region_name = ctx.log.regions[region].region.as_str().to_owned();
    let mut report = ClientReport {
        region,
        tracker: Tracker::new(ctx.epochs[region]),
        ..ClientReport::default()
    };
    let mut target = Some(ctx.fleet.nodes[first_gateway].addr);
    let mut ended_at: Option<Instant> = None;
    'life: loop {
        let mut failures = 0u32;
        let mut socket = loop {
            if *stop.borrow() {
                break 'life;
            }
            let path = format!(
                "/?region={region_name}&since={}",
                report.tracker.resume_since()
            );
            let attempt = match target.take().or_else(|| ctx.fleet.pick_live()) {
                Some(addr) => ctx.connector.connect_to(addr, &path).await,
                None => Err(anyhow!("no gateway is up")),
            };
            match attempt {
                Ok(socket) => break socket,
                Err(error) => {
                    failures += 1;
                    report.failed_attempts += 1;
                    if report.errors.len() < 3 {
                        report.errors.push(format!("{error:#}"));
                    }
                    if failures >= ctx.max_attempts {
                        report.gave_up = true;
                        break 'life;
                    }
                    let cap = ctx
                        .reconnect_delay
                        .max(Duration::from_millis(50))
                        .saturating_mul(1 << failures.min(10))
                        .min(MAX_RECONNECT_PAUSE);
                    if pause_or_stop(jitter(cap), &mut stop).await {
                        break 'life;
                    }
                }
            }
        };
        if let Some(ended) = ended_at.take() {
            report.reconnects += 1;
            report
                .resume_ms
                .push(ended.elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
        }
        report.connections += 1;
        lock(&shared.plain).opened(now_ns());
        shared.connected.store(true, Ordering::Release);
        shared.ever_connected.store(true, Ordering::Release);
        let ending = read_session(
            &mut socket,
            &ctx.log,
            &shared,
            &mut report.tracker,
            &mut stop,
        )
        .await;
        shared.connected.store(false, Ordering::Release);
        lock(&shared.plain).closed(now_ns());
        if matches!(ending, Ending::Stop) {
            break;
        }
        *report.endings.entry(ending.label()).or_default() += 1;
        ended_at = Some(Instant::now());
        if pause_or_stop(jitter(ctx.reconnect_delay), &mut stop).await {
            break;
        }
    }
    shared.connected.store(false, Ordering::Release);
    shared.finished.store(true, Ordering::Release);
    report
}

/// Reads one connection until it ends, the client is dropped, or the run stops.
async fn read_session(
    socket: &mut Socket,
    log: &MessageLog,
    shared: &ClientShared,
    tracker: &mut Tracker,
    stop: &mut watch::Receiver<bool>,
) -> Ending {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                lock(&shared.plain).closed(now_ns());
                close(socket).await;
                return Ending::Stop;
            }
            () = shared.drop_now.notified() => {
                // The connection stops listening now: frames the close handshake reads past
                // are not looked at, so nothing published from here on is owed to it.
                lock(&shared.plain).closed(now_ns());
                close(socket).await;
                return Ending::Dropped;
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let bytes = text.as_bytes();
                    if let Some(pseq) = plain::seq_in(bytes) {
                        lock(&shared.plain).received(pseq);
                    } else if plain::is_foreign(bytes) {
                        shared.foreign.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tracker.on_frame(log, shared.region, bytes);
                        shared.next_seq.store(tracker.next_seq, Ordering::Release);
                        let (delivered, duplicates, resyncs) = tracker.progress();
                        shared.delivered.store(delivered, Ordering::Relaxed);
                        shared.duplicates.store(duplicates, Ordering::Relaxed);
                        shared.resyncs.store(resyncs, Ordering::Relaxed);
                    }
                }
                // The contract is text frames only.
                Some(Ok(Message::Binary(_))) => tracker.corrupt += 1,
                Some(Ok(Message::Close(frame))) => {
                    // Let the close reply go out and the gateway close the TCP connection.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = socket.next().await {}
                    })
                    .await;
                    return Ending::Closed(frame.map(|frame| u16::from(frame.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => return Ending::Error,
                None => return Ending::Eof,
            },
        }
    }
}

/// Close handshake, then wait (bounded) for the gateway to close the TCP connection first.
async fn close(socket: &mut Socket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = socket.close(None).await;
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// What happened to the clients as connections.
#[derive(Debug, Default)]
pub struct Population {
    /// Clients that never connected.
    pub never_connected: u64,
    /// Clients that gave up.
    pub gave_up: u64,
    /// Client tasks that did not end when told to.
    pub unjoined: u64,
    /// Connections opened.
    pub connections: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Failed connection attempts.
    pub failed_attempts: u64,
    /// How connections ended, by label.
    pub endings: BTreeMap<String, u64>,
    /// A few distinct connection errors.
    pub errors: Vec<String>,
}

impl Population {
    /// Adds one client.
    pub fn add(&mut self, report: &ClientReport) {
        self.never_connected += u64::from(report.connections == 0);
        self.gave_up += u64::from(report.gave_up);
        self.connections += report.connections;
        self.reconnects += report.reconnects;
        self.failed_attempts += report.failed_attempts;
        for (label, count) in &report.endings {
            *self.endings.entry(label.clone()).or_default() += count;
        }
        for error in &report.errors {
            if self.errors.len() < 5 && !self.errors.contains(error) {
                self.errors.push(error.clone());
            }
        }
    }

    /// The checks on the clients' connections that failed: clients that never connected,
    /// gave up, or could not be stopped.
    pub fn failures(&self) -> Vec<String> {
        [
            ("clients never connected", self.never_connected),
            ("clients gave up", self.gave_up),
            ("client tasks not stopped", self.unjoined),
        ]
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{name}: {count}"))
        .collect()
    }
}

/// Every resuming client of a run: their shared state and their tasks.
#[derive(Debug)]
pub struct Crowd {
    /// Each client's shared state, by index.
    pub clients: Vec<Arc<ClientShared>>,
    tasks: Vec<JoinHandle<ClientReport>>,
    stop: watch::Sender<bool>,
}

impl Crowd {
    /// Starts `count` clients, round-robin over the log's regions and the fleet's gateways.
    pub fn spawn(ctx: &Arc<ClientContext>, count: usize) -> Self {
        let (stop, stop_seen) = watch::channel(false);
        let regions = ctx.log.regions.len();
        let gateways = ctx.fleet.nodes.len();
        let mut clients = Vec::with_capacity(count);
        let mut tasks = Vec::with_capacity(count);
        for index in 0..count {
            let shared = Arc::new(ClientShared::new(index % regions));
            clients.push(Arc::clone(&shared));
            tasks.push(tokio::spawn(client_task(
                Arc::clone(ctx),
                shared,
                index % gateways,
                stop_seen.clone(),
            )));
        }
        Crowd {
            clients,
            tasks,
            stop,
        }
    }

    /// Waits (until `until`) for every client to connect once or give up; returns how many
    /// connected.
    pub async fn await_connected(&self, until: Instant) -> usize {
        while Instant::now() < until
            && !self.clients.iter().all(|client| {
                client.ever_connected.load(Ordering::Acquire)
                    || client.finished.load(Ordering::Acquire)
            })
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.clients
            .iter()
            .filter(|client| client.ever_connected.load(Ordering::Acquire))
            .count()
    }

    /// Waits until every client has its region's last message (`targets[region]` messages),
    /// `until` passes, or nothing has moved for [`CATCH_UP_STALL`] while every client that is
    /// behind is connected. Returns how many clients are still behind.
    pub async fn await_catch_up(&self, targets: &[u64], until: Instant) -> usize {
        let caught_up = |client: &ClientShared| {
            client.finished.load(Ordering::Acquire)
                || client.next_seq.load(Ordering::Acquire) >= targets[client.region]
        };
        let progress = || -> u64 {
            self.clients
                .iter()
                .map(|client| client.next_seq.load(Ordering::Acquire))
                .sum()
        };
        let (mut last_progress, mut last_total) = (Instant::now(), progress());
        while Instant::now() < until && !self.clients.iter().all(|client| caught_up(client)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let total = progress();
            if total != last_total {
                (last_progress, last_total) = (Instant::now(), total);
            } else if last_progress.elapsed() >= CATCH_UP_STALL
                && self
                    .clients
                    .iter()
                    .all(|client| caught_up(client) || client.connected.load(Ordering::Acquire))
            {
                // Everyone behind is connected and nothing has moved: what is missing is lost.
                break;
            }
        }
        self.clients
            .iter()
            .filter(|client| !caught_up(client))
            .count()
    }

    /// Stops every client (no more reconnects) and collects their reports within 10 s;
    /// returns them with the number of tasks that had to be aborted.
    pub async fn stop(self) -> (Vec<ClientReport>, u64) {
        let _ = self.stop.send(true);
        let join_until = Instant::now() + Duration::from_secs(10);
        let mut reports = Vec::with_capacity(self.tasks.len());
        let mut unjoined = 0u64;
        for task in self.tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(join_until, task).await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(error)) => {
                    eprintln!("notify-bench: a client task failed: {error}");
                    unjoined += 1;
                }
                Err(_) => {
                    abort.abort();
                    unjoined += 1;
                }
            }
        }
        (reports, unjoined)
    }
}

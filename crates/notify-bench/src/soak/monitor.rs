//! What the soak watches while it runs: every gateway's `/readyz` (polled every
//! [`READY_POLL`]; a turn from 200 to anything else is a flap, *unexplained* when no fault was
//! in progress), its RSS, open descriptors and connections (every second, from /proc and
//! `/metrics`), and a progress line every `--report-interval`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chaos::chaos_log;
use crate::fleet::{lock, Fleet};
use crate::messages::{now_ns, MessageLog};
use crate::plain::{FaultWindows, PlainLog, PlainTotals};
use crate::procstat;
use crate::resuming::ClientShared;

/// How often each gateway's `/readyz` is polled.
pub const READY_POLL: Duration = Duration::from_millis(75);
/// Unexplained readiness flaps logged one by one (the rest are counted).
const LOGGED_FLAPS: u64 = 10;
/// Plain deliveries lost that are logged one by one (the rest are counted).
const LOGGED_LOSSES: u64 = 10;
/// How often RSS and descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A plain message is judged once it is this old (it has had time to arrive).
pub const PLAIN_SETTLE: Duration = Duration::from_secs(2);
/// A plain message is owed to a client connected from this long before it until this long
/// after, and only when no fault was within this long of it.
pub const PLAIN_GRACE: Duration = Duration::from_millis(300);

/// One gateway process's memory and descriptors after warm-up.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessWatch {
    /// The gateway's index.
    pub gateway: usize,
    /// Process id.
    pub pid: u32,
    /// RSS at the first sample after warm-up, KiB.
    pub rss_kib_baseline: u64,
    /// Latest RSS, KiB.
    pub rss_kib_last: u64,
    /// Largest RSS after warm-up, KiB.
    pub rss_kib_max: u64,
    /// Largest count of open descriptors after warm-up.
    pub fds_max: u64,
    /// Largest excess of open descriptors over connected clients after warm-up.
    pub fds_over_connections_max: i64,
    /// Latest open descriptors.
    pub fds_last: u64,
    /// Latest open sockets of the gateway (`notify_sockets_open`: WebSockets, handshakes in
    /// progress and plain HTTP, the monitor's own scrape included), what the descriptor bound
    /// is measured against.
    pub connections_last: u64,
}

/// What the monitor saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Observed {
    /// Turns from ready to not ready.
    pub readiness_flaps: u64,
    /// Of those, turns while no fault was in progress.
    pub readiness_flaps_unexplained: u64,
    /// Readiness polls made.
    pub readiness_polls: u64,
    /// Per gateway process (a restarted gateway is a new entry), after warm-up.
    pub processes: Vec<ProcessWatch>,
    /// Plain messages judged so far.
    pub plain: PlainTotals,
    /// Plain messages judged so far (index into the plain log).
    #[serde(skip)]
    pub plain_judged: usize,
    /// Lost plain deliveries logged so far.
    #[serde(skip)]
    pub plain_lost_logged: u64,
}

/// Everything the monitor reads.
#[derive(Debug)]
pub struct Monitor {
    /// The gateways.
    pub fleet: Arc<Fleet>,
    /// The clients.
    pub clients: Vec<Arc<ClientShared>>,
    /// Id-carrying messages.
    pub log: Arc<MessageLog>,
    /// Plain messages.
    pub plain: Arc<PlainLog>,
    /// Faults in progress or past.
    pub windows: Arc<FaultWindows>,
    /// When memory and descriptors start to count.
    pub warm_up_end: Instant,
    /// Interval between progress lines.
    pub report_interval: Duration,
    /// When the run started.
    pub started: Instant,
}

impl Monitor {
    /// Watches until told to stop; returns itself (to judge the last plain messages) and what
    /// it saw.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> (Self, Observed) {
        let mut observed = Observed::default();
        let mut ready: Vec<bool> = vec![true; self.fleet.nodes.len()];
        let mut processes: HashMap<u32, ProcessWatch> = HashMap::new();
        let mut next_sample = Instant::now();
        let mut next_line = Instant::now() + self.report_interval;
        let mut line = 0u64;
        let mut poll = tokio::time::interval(READY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = poll.tick() => {}
                _ = stop.changed() => break,
            }
            self.poll_readiness(&mut ready, &mut observed).await;
            let now = Instant::now();
            if now >= next_sample {
                next_sample = now + SAMPLE_EVERY;
                if now >= self.warm_up_end {
                    self.sample(&mut processes).await;
                }
            }
            if now >= next_line {
                next_line += self.report_interval;
                line += 1;
                observed.processes = sorted(&processes);
                self.judge_plain(
                    &mut observed,
                    now_ns().saturating_sub(PLAIN_SETTLE.as_nanos() as u64),
                );
                self.progress_line(line, &observed).await;
            }
        }
        observed.processes = sorted(&processes);
        (self, observed)
    }

    async fn poll_readiness(&self, ready: &mut [bool], observed: &mut Observed) {
        for (node, was_ready) in self.fleet.nodes.iter().zip(ready.iter_mut()) {
            if !node.up.load(Ordering::Acquire) {
                // Stopped on purpose; it is waited for until ready before it is up again.
                *was_ready = true;
                continue;
            }
            let is_ready = self.fleet.is_ready(node).await;
            observed.readiness_polls += 1;
            if *was_ready && !is_ready {
                observed.readiness_flaps += 1;
                if !self.windows.covers(now_ns(), 0) {
                    observed.readiness_flaps_unexplained += 1;
                    // The first few are logged; the rest are counted.
                    if observed.readiness_flaps_unexplained <= LOGGED_FLAPS {
                        chaos_log(
                            self.started,
                            format_args!(
                                "soak: gateway {} not ready with no fault in progress",
                                node.index
                            ),
                        );
                    }
                }
            }
            *was_ready = is_ready;
        }
    }

    async fn sample(&self, processes: &mut HashMap<u32, ProcessWatch>) {
        for node in &self.fleet.nodes {
            let pid = node.pid.load(Ordering::Relaxed);
            if pid == 0 || !node.up.load(Ordering::Acquire) {
                continue;
            }
            let (Ok(stat), Ok(fds), Ok(connections)) = (
                procstat::sample(&pid.to_string()),
                procstat::open_fds(&pid.to_string()),
                self.fleet.metric(node, "notify_sockets_open").await,
            ) else {
                continue;
            };
            let connections = connections as u64;
            let watch = processes.entry(pid).or_insert(ProcessWatch {
                gateway: node.index,
                pid,
                rss_kib_baseline: stat.rss_kib,
                fds_over_connections_max: i64::MIN,
                ..ProcessWatch::default()
            });
            watch.rss_kib_last = stat.rss_kib;
            watch.rss_kib_max = watch.rss_kib_max.max(stat.rss_kib);
            watch.fds_last = fds;
            watch.fds_max = watch.fds_max.max(fds);
            watch.connections_last = connections;
            watch.fds_over_connections_max = watch
                .fds_over_connections_max
                .max(fds as i64 - connections as i64);
        }
    }

    /// Judges the plain messages published before `until_ns` not judged yet.
    pub fn judge_plain(&self, observed: &mut Observed, until_ns: u64) {
        let messages = self.plain.published_before(observed.plain_judged, until_ns);
        observed.plain_judged += messages.len();
        let lost = observed.plain.judge(
            &messages,
            self.clients
                .iter()
                .map(|client| (client.region, &client.plain)),
            &self.windows,
            PLAIN_GRACE.as_nanos() as u64,
        );
        for lost in lost {
            if observed.plain_lost_logged < LOGGED_LOSSES {
                observed.plain_lost_logged += 1;
                chaos_log(self.started, format_args!("soak: {lost}"));
            }
        }
        observed.plain.duplicates = self
            .clients
            .iter()
            .map(|client| lock(&client.plain).duplicates)
            .sum();
    }

    async fn progress_line(&self, line: u64, observed: &Observed) {
        let sum = |field: fn(&ClientShared) -> u64| -> u64 {
            self.clients.iter().map(|client| field(client)).sum()
        };
        let delivered = sum(|client| client.delivered.load(Ordering::Relaxed));
        let duplicates = sum(|client| client.duplicates.load(Ordering::Relaxed));
        let resyncs = sum(|client| client.resyncs.load(Ordering::Relaxed));
        let foreign = sum(|client| client.foreign.load(Ordering::Relaxed));
        let behind: u64 = self
            .clients
            .iter()
            .map(|client| {
                self.log.regions[client.region]
                    .published()
                    .saturating_sub(client.next_seq.load(Ordering::Acquire))
            })
            .sum();
        let mut gateways = Vec::new();
        for count in self.fleet.reconnect_counts().await {
            let node = &self.fleet.nodes[count.gateway];
            let pid = node.pid.load(Ordering::Relaxed);
            let process = observed.processes.iter().find(|process| process.pid == pid);
            gateways.push(format!(
                "gw{} rss {} KiB fds {} conns {} reconnects {}/{} cuts",
                count.gateway,
                crate::report::show(process.map(|process| process.rss_kib_last)),
                crate::report::show(process.map(|process| process.fds_last)),
                crate::report::show(process.map(|process| process.connections_last)),
                crate::report::show(count.reconnects),
                count.cuts
            ));
        }
        let plain = &observed.plain;
        chaos_log(
            self.started,
            format_args!(
                "soak {} {line}: id-carrying delivered {delivered} behind {behind} duplicates {duplicates} resyncs {resyncs} | plain owed {} delivered {} lost {} | {} | readiness flaps {} ({} with no fault) | foreign frames {foreign}",
                if self.report_interval == Duration::from_secs(60) { "minute" } else { "interval" },
                plain.owed,
                plain.delivered,
                plain.lost,
                gateways.join(" | "),
                observed.readiness_flaps,
                observed.readiness_flaps_unexplained,
            ),
        );
    }
}

fn sorted(processes: &HashMap<u32, ProcessWatch>) -> Vec<ProcessWatch> {
    let mut list: Vec<ProcessWatch> = processes.values().copied().collect();
    list.sort_by_key(|process| (process.gateway, process.pid));
    list
}

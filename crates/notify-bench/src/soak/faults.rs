//! The soak's fault schedule: every `--fault-interval` the next fault in turn, one at a time
//! (each holds the fleet's fault lock until every gateway is ready again), each logged and
//! counted, each that breaks a link recorded as a [`FaultWindows`] entry and as one cut for
//! every gateway that was up.
//!
//! A gateway has two links to Redis — its subscription and its stream follower — and one
//! connection that is not a link, for publishes and resume reads. The cuts target each by how
//! it shows in `CLIENT LIST` ([`notify_core::broker::redis::connection_names`]): a link cut
//! must cost each gateway exactly one reconnect; a cut of the command connection none, and no
//! readiness flap (it runs outside any fault window, so a flap would be unexplained).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use notify_core::broker::redis::connection_names;
use notify_proto::{ChannelNames, Notification, Region};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::redis_server::RedisServer;
use crate::chaos::chaos_log;
use crate::chaos::faults::redis_kill_pubsub;
use crate::fleet::Fleet;
use crate::history_publisher::{redis_connection, REDIS_TIMEOUT};
use crate::messages::now_ns;
use crate::plain::{FaultWindows, FOREIGN_MARK};
use crate::report::show;

/// The faults, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// `CLIENT KILL TYPE pubsub`: every gateway loses its subscription (a link).
    SubscriptionCut,
    /// `CLIENT KILL ID …` of every connection named `notify-gateway:streams`: every gateway
    /// loses its stream follower (a link).
    StreamCut,
    /// `CLIENT KILL ID …` of every connection named `notify-gateway:replays` (the connection
    /// resumes read the streams on): not a link, so no gateway may count a reconnect or turn
    /// unready.
    CommandCut,
    /// A raw `PUBLISH` of a notification carrying an id no stream issued.
    ForeignId,
    /// redis-server stopped and started again with its append-only file.
    RedisRestartWithData,
    /// One gateway SIGTERMed and started again on the same port.
    GatewayRestart,
    /// redis-server stopped, its files deleted, started again empty.
    RedisRestartEmpty,
}

/// Every fault, in the order they take turns.
pub const SCHEDULE: [Fault; 7] = [
    Fault::SubscriptionCut,
    Fault::StreamCut,
    Fault::CommandCut,
    Fault::ForeignId,
    Fault::RedisRestartWithData,
    Fault::GatewayRestart,
    Fault::RedisRestartEmpty,
];

/// Longest wait for every gateway to notice a cut (its reconnect counter rises); one that
/// does not is caught by the reconnect check at the end.
const NOTICE_LIMIT: Duration = Duration::from_secs(10);

/// How long a command-connection cut is watched for a reconnect it must not cause: longer
/// than the stream follower's read period, so a follower that shared the connection would
/// have noticed.
const COMMAND_CUT_WATCH: Duration = Duration::from_millis(1500);

/// Probes of one gateway before a command cut (see `use_command_connections`).
const PROBE_ATTEMPTS: u32 = 3;

/// An id far ahead of any stream's: no stream issued it.
pub const FOREIGN_ID: &str = "99999999999999-0";

/// How many of each fault happened.
#[derive(Debug, Default)]
pub struct FaultCounts {
    subscription_cuts: AtomicU64,
    subscriptions_killed: AtomicU64,
    stream_cuts: AtomicU64,
    stream_links_killed: AtomicU64,
    command_cuts: AtomicU64,
    command_connections_killed: AtomicU64,
    foreign_ids: AtomicU64,
    redis_restarts_with_data: AtomicU64,
    redis_restarts_empty: AtomicU64,
    gateway_restarts: AtomicU64,
    errors: AtomicU64,
}

/// [`FaultCounts`] as numbers.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FaultSnapshot {
    /// `CLIENT KILL TYPE pubsub` done.
    pub subscription_cuts: u64,
    /// Subscriptions those closed.
    pub subscriptions_killed: u64,
    /// Cuts of the gateways' stream links done.
    pub stream_cuts: u64,
    /// Stream links those closed.
    pub stream_links_killed: u64,
    /// Cuts of the gateways' command connections done.
    pub command_cuts: u64,
    /// Command connections those closed (a gateway makes its own on first use).
    pub command_connections_killed: u64,
    /// Foreign-id messages published.
    pub foreign_ids: u64,
    /// redis-server restarts with data.
    pub redis_restarts_with_data: u64,
    /// redis-server restarts without data.
    pub redis_restarts_empty: u64,
    /// Gateway restarts that came back ready.
    pub gateway_restarts: u64,
    /// Faults that could not be carried out, or after which a gateway did not come back.
    pub errors: u64,
}

impl FaultCounts {
    /// The counts so far.
    pub fn snapshot(&self) -> FaultSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FaultSnapshot {
            subscription_cuts: load(&self.subscription_cuts),
            subscriptions_killed: load(&self.subscriptions_killed),
            stream_cuts: load(&self.stream_cuts),
            stream_links_killed: load(&self.stream_links_killed),
            command_cuts: load(&self.command_cuts),
            command_connections_killed: load(&self.command_connections_killed),
            foreign_ids: load(&self.foreign_ids),
            redis_restarts_with_data: load(&self.redis_restarts_with_data),
            redis_restarts_empty: load(&self.redis_restarts_empty),
            gateway_restarts: load(&self.gateway_restarts),
            errors: load(&self.errors),
        }
    }
}

/// What the fault schedule works on.
#[derive(Debug)]
pub struct FaultPlan {
    /// The gateways.
    pub fleet: Arc<Fleet>,
    /// The soak's redis-server.
    pub redis: Arc<Mutex<RedisServer>>,
    /// Publishers hold it for reading per batch; a Redis restart holds it for writing, so
    /// nothing is published while Redis is down.
    pub publish_gate: Arc<RwLock<()>>,
    /// Where faults that break a link are recorded.
    pub windows: Arc<FaultWindows>,
    /// The counts.
    pub counts: Arc<FaultCounts>,
    /// Regions, for the foreign ids (they take turns).
    pub regions: Vec<Region>,
    /// Channel names.
    pub channels: ChannelNames,
    /// Pause between a gateway's exit and its restart.
    pub restart_delay: Duration,
    /// When the run started (log stamps).
    pub started: Instant,
    /// The faults that take turns (`--faults`).
    pub schedule: Vec<Fault>,
}

impl FaultPlan {
    /// `interval` after the previous fault ended, until `until`, the next fault in turn.
    pub async fn run(self, interval: Duration, until: Instant) {
        let mut turn = 0usize;
        loop {
            let at = Instant::now() + interval;
            if at >= until {
                return;
            }
            tokio::time::sleep_until(at).await;
            let Some(&fault) = self.schedule.get(turn % self.schedule.len().max(1)) else {
                return;
            };
            if let Err(error) = self.inflict(fault, turn).await {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                chaos_log(
                    self.started,
                    format_args!("soak: {fault:?} failed: {error:#}"),
                );
            }
            turn += 1;
        }
    }

    async fn inflict(&self, fault: Fault, turn: usize) -> Result<()> {
        let _fault = self.fleet.fault_lock.lock().await;
        self.fleet
            .wait_all_ready()
            .await
            .context("a gateway was not ready before the fault")?;
        let counts = &self.counts;
        match fault {
            Fault::SubscriptionCut => {
                let mut control = redis_connection(&self.redis.lock().await.url()).await?;
                let before = self.fleet.reconnect_counts().await;
                self.windows.begin(now_ns());
                self.fleet.record_cut();
                let killed = redis_kill_pubsub(&mut control).await;
                let ready = self.fleet.wait_cut_noticed(&before, NOTICE_LIMIT).await;
                self.windows.end(now_ns());
                let killed = killed?;
                ready?;
                counts.subscription_cuts.fetch_add(1, Ordering::Relaxed);
                counts
                    .subscriptions_killed
                    .fetch_add(killed.max(0) as u64, Ordering::Relaxed);
                self.log(format_args!(
                    "link cut: CLIENT KILL TYPE pubsub closed {killed} subscriptions"
                ));
            }
            Fault::StreamCut => {
                let up = self.fleet.up_count() as u64;
                let before = self.fleet.reconnect_counts().await;
                self.windows.begin(now_ns());
                self.fleet.record_cut();
                let killed = self.kill_named(connection_names::STREAMS).await;
                let ready = self.fleet.wait_cut_noticed(&before, NOTICE_LIMIT).await;
                self.windows.end(now_ns());
                let killed = killed?;
                ready?;
                counts.stream_cuts.fetch_add(1, Ordering::Relaxed);
                counts
                    .stream_links_killed
                    .fetch_add(killed, Ordering::Relaxed);
                if killed != up {
                    bail!("CLIENT KILL closed {killed} stream links for {up} gateways up");
                }
                self.log(format_args!(
                    "link cut: CLIENT KILL closed {killed} stream links ({})",
                    connection_names::STREAMS
                ));
            }
            Fault::CommandCut => {
                // Every gateway makes its replay connection on first use (and again after
                // Redis restarts): a resume its memory cannot answer makes sure there is one.
                self.use_command_connections(self.regions[turn % self.regions.len()])
                    .await?;
                let up = self.fleet.up_count() as u64;
                let before = self.fleet.reconnect_counts().await;
                let killed = self.kill_named(connection_names::REPLAYS).await?;
                tokio::time::sleep(COMMAND_CUT_WATCH).await;
                let after = self.fleet.reconnect_counts().await;
                counts.command_cuts.fetch_add(1, Ordering::Relaxed);
                counts
                    .command_connections_killed
                    .fetch_add(killed, Ordering::Relaxed);
                let counted: Vec<String> = after
                    .iter()
                    .zip(&before)
                    .filter(|(after, before)| after.reconnects != before.reconnects)
                    .map(|(after, before)| {
                        format!(
                            "gateway {}: {} -> {}",
                            after.gateway,
                            show(before.reconnects),
                            show(after.reconnects)
                        )
                    })
                    .collect();
                if !counted.is_empty() {
                    bail!(
                        "a command-connection cut counted as a reconnect: {}",
                        counted.join(", ")
                    );
                }
                if killed != up {
                    bail!("CLIENT KILL closed {killed} command connections for {up} gateways up");
                }
                self.fleet
                    .wait_all_ready()
                    .await
                    .context("a gateway was not ready after a command-connection cut")?;
                self.log(format_args!(
                    "command cut: CLIENT KILL closed {killed} replay connections ({}); no reconnect counted",
                    connection_names::REPLAYS
                ));
            }
            Fault::ForeignId => {
                let region = self.regions[turn % self.regions.len()];
                let subscribers = self.publish_foreign(region).await?;
                counts.foreign_ids.fetch_add(1, Ordering::Relaxed);
                self.log(format_args!(
                    "foreign id: PUBLISH {} with id {FOREIGN_ID} ({subscribers} subscribers)",
                    self.channels.channel(region)
                ));
            }
            Fault::RedisRestartWithData | Fault::RedisRestartEmpty => {
                let keep_data = fault == Fault::RedisRestartWithData;
                let began = Instant::now();
                let before = self.fleet.reconnect_counts().await;
                let restarted = {
                    let _paused = self.publish_gate.write().await;
                    self.windows.begin(now_ns());
                    self.fleet.record_cut();
                    self.redis.lock().await.restart(keep_data).await
                };
                let ready = self.fleet.wait_cut_noticed(&before, NOTICE_LIMIT).await;
                self.windows.end(now_ns());
                restarted?;
                ready?;
                let counter = if keep_data {
                    &counts.redis_restarts_with_data
                } else {
                    &counts.redis_restarts_empty
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.log(format_args!(
                    "redis-server restarted {}; every gateway ready again after {} ms",
                    if keep_data { "with its data" } else { "empty" },
                    began.elapsed().as_millis()
                ));
            }
            Fault::GatewayRestart => {
                let node = &self.fleet.nodes[turn % self.fleet.nodes.len()];
                let began = Instant::now();
                self.windows.begin(now_ns());
                let ending = self.fleet.stop(node).await;
                tokio::time::sleep(self.restart_delay).await;
                let restarted = match self.fleet.spawn(node) {
                    Ok(()) => self.fleet.wait_ready(node).await,
                    Err(error) => Err(error),
                };
                if restarted.is_ok() {
                    node.up.store(true, Ordering::Release);
                }
                self.windows.end(now_ns());
                restarted.with_context(|| format!("gateway {} did not come back", node.index))?;
                counts.gateway_restarts.fetch_add(1, Ordering::Relaxed);
                self.log(format_args!(
                    "gateway {} restarted ({ending}), ready {} ms after SIGTERM",
                    node.index,
                    began.elapsed().as_millis()
                ));
            }
        }
        Ok(())
    }

    /// Resumes one probe client per gateway that is up from [`FOREIGN_ID`] in `region` until
    /// it is answered with a text frame (at most [`PROBE_ATTEMPTS`] times). An id after every
    /// id a stream issued is never answered from memory (not even from a history reset to
    /// cover everything since `0-0`), so the gateway reads the stream on its replay
    /// connection, then answers `resync`. A replay connection left over from before a Redis
    /// restart fails its first command and is made again on the next: the probe is closed
    /// (1011) and tried again.
    async fn use_command_connections(&self, region: Region) -> Result<()> {
        for node in &self.fleet.nodes {
            if !node.up.load(Ordering::Acquire) {
                continue;
            }
            let url = format!(
                "ws://{}/?region={}&since={FOREIGN_ID}",
                node.addr,
                region.as_str()
            );
            let mut attempt = 1;
            loop {
                match probe(&url).await {
                    Ok(()) => break,
                    Err(error) if attempt < PROBE_ATTEMPTS => {
                        self.log(format_args!(
                            "command cut: probe {attempt} of gateway {} not answered: {error:#}; again",
                            node.index
                        ));
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// Kills every connection on Redis named `name`; returns how many.
    async fn kill_named(&self, name: &str) -> Result<u64> {
        let mut control = redis_connection(&self.redis.lock().await.url()).await?;
        let list: String = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("normal")
                .query_async(&mut control),
        )
        .await
        .context("CLIENT LIST timed out")?
        .context("CLIENT LIST")?;
        // One `CLIENT KILL ID` per connection, at once: several `ID` filters in one command
        // are ANDed (Redis 7.0 keeps only the last).
        let ids = ids_named(&list, name);
        if ids.is_empty() {
            return Ok(0);
        }
        let mut kills = redis::pipe();
        for id in ids {
            kills.cmd("CLIENT").arg("KILL").arg("ID").arg(id);
        }
        let killed: Vec<i64> = tokio::time::timeout(REDIS_TIMEOUT, kills.query_async(&mut control))
            .await
            .context("CLIENT KILL ID timed out")?
            .context("CLIENT KILL ID")?;
        Ok(killed.iter().map(|killed| (*killed).max(0) as u64).sum())
    }

    async fn publish_foreign(&self, region: Region) -> Result<i64> {
        let mut control = redis_connection(&self.redis.lock().await.url()).await?;
        let mut message = Notification::new(
            region,
            "benchforeign",
            "notify-bench soak: an id no stream issued",
            "https://i.ytimg.com/vi/benchforeign/hqdefault.jpg",
            "notify-bench ✓",
            0,
        );
        message.extra.insert("soak".into(), json!(FOREIGN_MARK));
        let mut payload = serde_json::to_value(&message).context("encoding")?;
        payload["id"] = json!(FOREIGN_ID);
        let _open = self.publish_gate.read().await;
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(self.channels.channel(region))
                .arg(payload.to_string())
                .query_async(&mut control),
        )
        .await
        .context("PUBLISH timed out")?
        .context("PUBLISH of a foreign id")
    }

    fn log(&self, line: std::fmt::Arguments<'_>) {
        chaos_log(self.started, format_args!("soak: {line}"));
    }
}

/// Opens `url` and waits for its first frame, which must be text.
async fn probe(url: &str) -> Result<()> {
    let first = tokio::time::timeout(REDIS_TIMEOUT, async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        // The probe is done after its first frame: dropping the socket closes it.
        Ok::<_, tokio_tungstenite::tungstenite::Error>(socket.next().await)
    })
    .await
    .with_context(|| format!("no first frame from {url} in time"))?
    .with_context(|| format!("connecting to {url}"))?;
    match first {
        Some(Ok(Message::Text(_))) => Ok(()),
        Some(Ok(other)) => bail!("{url} answered {other:?}"),
        Some(Err(error)) => Err(error).with_context(|| format!("reading from {url}")),
        None => bail!("{url} closed before its first frame"),
    }
}

/// Ids of the connections in a `CLIENT LIST` reply named `name`.
fn ids_named(list: &str, name: &str) -> Vec<u64> {
    list.lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field.strip_prefix("name=") == Some(name))
        })
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .and_then(|id| id.parse().ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_of_the_name_are_cut() {
        let list = "id=3 addr=127.0.0.1:5 name=notify-bench cmd=client\n\
                    id=7 addr=127.0.0.1:6 name= cmd=evalsha\n\
                    id=9 addr=127.0.0.1:7 name=notify-gateway:streams cmd=xread\n\
                    id=11 addr=127.0.0.1:8 name=notify-gateway:commands cmd=evalsha\n\
                    id=12 addr=127.0.0.1:9 name=notify-gateway:streams cmd=evalsha\n";
        assert_eq!(ids_named(list, connection_names::STREAMS), [9, 12]);
        assert_eq!(ids_named(list, connection_names::COMMANDS), [11]);
        assert!(ids_named(list, "notify-gateway").is_empty());
    }
}

//! The chaos actions of a run: dropping random clients, cutting the gateways' Redis
//! subscriptions (`CLIENT KILL TYPE pubsub`), restarting random gateways, and how many of each
//! happened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use super::chaos_log;
use crate::fleet::{Fleet, Node};
use crate::history_publisher::REDIS_TIMEOUT;
use crate::resuming::ClientShared;

/// Sleeps `mean` scaled by a random factor in `low..high`; false (without sleeping) when that
/// would reach `until`.
pub async fn sleep_spread(mean: Duration, low: f64, high: f64, until: Instant) -> bool {
    let at = Instant::now() + mean.mul_f64(rand::rng().random_range(low..high));
    if at >= until {
        return false;
    }
    tokio::time::sleep_until(at).await;
    true
}

/// `CLIENT KILL TYPE pubsub`: every gateway loses its subscription. Returns how many
/// connections Redis closed.
pub async fn redis_kill_pubsub(connection: &mut redis::aio::MultiplexedConnection) -> Result<i64> {
    tokio::time::timeout(
        REDIS_TIMEOUT,
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async::<i64>(connection),
    )
    .await
    .context("CLIENT KILL timed out")?
    .context("CLIENT KILL TYPE pubsub")
}

/// How many of each action happened.
#[derive(Debug, Default)]
pub struct ChaosCounts {
    client_drops: AtomicU64,
    link_cuts: AtomicU64,
    pubsub_connections_killed: AtomicU64,
    gateway_restarts: AtomicU64,
    restart_failures: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct ChaosSnapshot {
    /// Clients told to close their socket.
    pub client_drops: u64,
    /// `CLIENT KILL TYPE pubsub` commands that succeeded.
    pub link_cuts: u64,
    /// Subscriptions those commands closed.
    pub pubsub_connections_killed: u64,
    /// Gateways stopped and ready again.
    pub gateway_restarts: u64,
    /// Gateways that did not come back.
    pub restart_failures: u64,
}

impl ChaosCounts {
    /// The counts so far.
    pub fn snapshot(&self) -> ChaosSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ChaosSnapshot {
            client_drops: load(&self.client_drops),
            link_cuts: load(&self.link_cuts),
            pubsub_connections_killed: load(&self.pubsub_connections_killed),
            gateway_restarts: load(&self.gateway_restarts),
            restart_failures: load(&self.restart_failures),
        }
    }
}

/// Every `1 / rate` seconds until `until`, a random connected client closes its socket (and
/// resumes).
pub async fn drop_clients(
    clients: Vec<Arc<ClientShared>>,
    rate: f64,
    until: Instant,
    started: Instant,
    counts: Arc<ChaosCounts>,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if ticks.tick().await >= until {
            return;
        }
        let victim = (0..20).find_map(|_| {
            let index = rand::rng().random_range(0..clients.len());
            clients[index]
                .connected
                .load(Ordering::Acquire)
                .then_some(index)
        });
        if let Some(index) = victim {
            clients[index].drop_now.notify_one();
            counts.client_drops.fetch_add(1, Ordering::Relaxed);
            chaos_log(
                started,
                format_args!(
                    "chaos: drop client {index} (region {})",
                    clients[index].region
                ),
            );
        }
    }
}

/// At random intervals (0.5x..1.5x `mean`) until `until`, kills every pub/sub connection on
/// Redis, then waits until every gateway is subscribed again.
pub async fn cut_links(
    fleet: Arc<Fleet>,
    mut connection: redis::aio::MultiplexedConnection,
    mean: Duration,
    until: Instant,
    started: Instant,
    counts: Arc<ChaosCounts>,
) {
    while sleep_spread(mean, 0.5, 1.5, until).await {
        let _fault = fleet.fault_lock.lock().await;
        let before = fleet.reconnect_counts().await;
        fleet.record_cut();
        let cut = redis_kill_pubsub(&mut connection).await;
        if let Err(error) = fleet
            .wait_cut_noticed(&before, Duration::from_secs(10))
            .await
        {
            chaos_log(
                started,
                format_args!("chaos: a gateway did not subscribe again: {error:#}"),
            );
        }
        match cut {
            Ok(killed) => {
                counts.link_cuts.fetch_add(1, Ordering::Relaxed);
                counts
                    .pubsub_connections_killed
                    .fetch_add(killed.max(0) as u64, Ordering::Relaxed);
                chaos_log(
                    started,
                    format_args!(
                        "chaos: link cut: CLIENT KILL TYPE pubsub closed {killed} subscriptions"
                    ),
                );
            }
            Err(error) => chaos_log(started, format_args!("chaos: link cut failed: {error:#}")),
        }
    }
}

/// At random intervals (0.75x..1.25x `mean`) until `until`, SIGTERMs a random live gateway,
/// waits for its exit, pauses `delay`, and starts it again on the same port.
pub async fn restart_gateways(
    fleet: Arc<Fleet>,
    mean: Duration,
    delay: Duration,
    until: Instant,
    started: Instant,
    counts: Arc<ChaosCounts>,
) {
    while sleep_spread(mean, 0.75, 1.25, until).await {
        let _fault = fleet.fault_lock.lock().await;
        let live: Vec<&Node> = fleet
            .nodes
            .iter()
            .filter(|node| node.up.load(Ordering::Acquire))
            .collect();
        if live.is_empty() {
            continue;
        }
        let node = live[rand::rng().random_range(0..live.len())];
        let pid = node.pid.load(Ordering::Relaxed);
        chaos_log(
            started,
            format_args!(
                "chaos: restart gateway {} ({}): SIGTERM pid {pid}",
                node.index, node.addr
            ),
        );
        let term = Instant::now();
        let ending = fleet.stop(node).await;
        chaos_log(
            started,
            format_args!(
                "chaos: gateway {} exited after {} ms ({ending})",
                node.index,
                term.elapsed().as_millis()
            ),
        );
        tokio::time::sleep(delay).await;
        let restarted = match fleet.spawn(node) {
            Ok(()) => fleet.wait_ready(node).await,
            Err(error) => Err(error),
        };
        match restarted {
            Ok(()) => {
                node.up.store(true, Ordering::Release);
                counts.gateway_restarts.fetch_add(1, Ordering::Relaxed);
                chaos_log(
                    started,
                    format_args!(
                        "chaos: gateway {} ready again (pid {}), {} ms after SIGTERM",
                        node.index,
                        node.pid.load(Ordering::Relaxed),
                        term.elapsed().as_millis()
                    ),
                );
            }
            Err(error) => {
                counts.restart_failures.fetch_add(1, Ordering::Relaxed);
                chaos_log(
                    started,
                    format_args!("chaos: gateway {} failed to restart: {error:#}", node.index),
                );
            }
        }
    }
}

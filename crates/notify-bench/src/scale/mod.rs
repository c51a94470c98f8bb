//! `scale`: more clients than one process can hold. The run starts `--gateways` gateways on
//! one Redis and `--client-processes` copies of itself (`scale-worker`, see [`worker`]), each
//! holding its share of `--clients` spread over every gateway (each process, this one and
//! every gateway are capped at 20,000 descriptors on the box it was made for). It measures,
//! in order:
//!
//! 1. **idle**: the fleet's RSS per connection (every gateway process, before and after);
//! 2. **fan-out** at each of `--scale-rates` messages per second per region, for
//!    `--duration` each: publish-to-client p50/p99 over every client and Redis CPU per
//!    published message (`INFO cpu` before and after, less what Redis spent per second while
//!    nothing was published, measured over `--settle`);
//! 3. **reconnect storm**: SIGKILL of the first gateway while messages keep flowing at the
//!    first rate; its clients resume with `since` on the others. Time until every client is
//!    connected again, messages lost (must be 0), and how the survivors served the resumes
//!    (`notify_resumes_total{source}`: memory or the Redis stream; `notify_replay_waits_total`
//!    and `notify_replays_refused_total`: the replay budget at work).
//!
//! Every message is id-carrying (the history script), so every client must get every message
//! of its region exactly once, in order, across the storm. After each phase's last publish
//! the run waits for the deliveries as long as they progress ([`drain`]): what is still
//! missing after `--drain-grace` without progress is lost, by gateway and region.
//!
//! Every gateway gets its own `--admin-listen` port, where `/metrics` is scraped: a gateway at
//! its connection cap refuses new sockets on its public port, the scrape's included.
//!
//! # Layout
//! - [`wire`]: the JSON lines between the run and its client processes.
//! - [`worker`]: a client process.
//! - [`workers`]: starting the client processes and talking to them.
//! - [`drain`]: when a phase is over; lost against late.

mod drain;
pub mod wire;
pub mod worker;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use notify_proto::Notification;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cli::Args;
use crate::fleet::Fleet;
use crate::history_publisher::{redis_connection, HistoryPublisher};
use crate::latency::{self, Percentiles};
use crate::messages::notification;
use crate::procstat;
use crate::report::{round1, round3, show, Outcome};
use crate::scale::drain::drain;
use crate::scale::wire::wall_ns;
use crate::scale::workers::Workers;

/// Longest wait for the storm's clients to be connected again.
const STORM_LIMIT: Duration = Duration::from_secs(120);
/// Messages keep flowing this long after every client is back, before deliveries are judged.
const AFTER_STORM: Duration = Duration::from_secs(2);

/// Runs the scenario.
pub async fn run(args: Args) -> Result<Outcome> {
    let deadline = Instant::now() + args.timeout;
    let fleet = Arc::new(Fleet::with_admin_listeners(&args)?);
    fleet.start_all(&args.regions).await?;
    for node in &fleet.nodes {
        eprintln!(
            "scale: gateway {} pid {} on {}, admin {}",
            node.index,
            node.pid.load(std::sync::atomic::Ordering::Relaxed),
            node.addr,
            node.ops_addr(),
        );
    }
    let mut publisher = HistoryPublisher::connect(&args).await?;
    let epochs = publisher.epoch(&args.regions).await?;
    let mut redis = RedisNodes::connect(&args).await?;
    let mut run = Run {
        args: &args,
        fleet: &fleet,
        publisher,
        published: vec![0; args.regions.len()],
        last_publish_ns: 0,
        unix_ts: (wall_ns() / 1_000_000_000) as i64,
    };
    let mut failures = Vec::new();

    // 1. Idle.
    let rss_before = fleet_rss_kib(&fleet);
    let started = Instant::now();
    let mut workers = Workers::spawn(&args, &fleet, &epochs)?;
    let connected = workers.connected(deadline).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    if connected.failed > 0 {
        failures.push(format!(
            "first handshakes failed: {} ({:?})",
            connected.failed, connected.errors
        ));
    }
    let counted = wait_counted(&fleet, connected.ok, deadline).await;
    // Redis spends CPU when nothing is published too (its timers, the gateways' blocked
    // XREADs and pings): measured over the settle pause and subtracted from each phase.
    let idle_cpu_before = redis.cpu_secs().await?;
    let settle_started = Instant::now();
    tokio::time::sleep(args.settle).await;
    let redis_idle_cpu_per_sec = (redis.cpu_secs().await? - idle_cpu_before)
        / settle_started.elapsed().as_secs_f64().max(1e-9);
    let rss_after = fleet_rss_kib(&fleet);
    let per_connection =
        (rss_after.saturating_sub(rss_before) as f64 * 1024.0 / connected.ok.max(1) as f64).round();
    eprintln!(
        "scale: {} clients in {} processes on {} gateways in {connect_secs:.1}s ({} failed); \
         gateways counted {counted}; fleet RSS {rss_before} -> {rss_after} KiB \
         ({per_connection} bytes/connection)",
        connected.ok, args.client_processes, args.gateways, connected.failed
    );

    // 2. Fan-out at each rate.
    let mut phases = Vec::new();
    for &rate in &args.scale_rates {
        let cpu_before = redis.cpu_secs().await?;
        let churn_before = Churn::now(&fleet, &mut workers, deadline).await?;
        let messages_before: u64 = run.published.iter().sum();
        let phase_started = Instant::now();
        run.publish_for(rate, args.duration, deadline).await?;
        let cpu_after = redis.cpu_secs().await?;
        let idle_share = redis_idle_cpu_per_sec * phase_started.elapsed().as_secs_f64();
        let messages = run.published.iter().sum::<u64>() - messages_before;
        let drained = drain(
            &mut workers,
            &run.published,
            run.last_publish_ns,
            args.drain_grace,
            deadline,
        )
        .await?;
        let churn = Churn::now(&fleet, &mut workers, deadline)
            .await?
            .since(&churn_before);
        let phase = format!("fan-out at {rate}/s");
        let percentiles = Percentiles::of(&latency::from_buckets(&drained.deliveries.latency_us));
        let cpu_us_per_message =
            round3(((cpu_after - cpu_before) - idle_share).max(0.0) * 1e6 / messages.max(1) as f64);
        failures.extend(drained.failures(&phase));
        eprintln!(
            "scale: fan-out {rate} msg/s per region: {messages} messages, {} deliveries; \
             p50 {} ms, p99 {} ms; Redis {cpu_us_per_message} us CPU per message",
            drained.deliveries.received,
            show(percentiles.as_ref().map(|p| p.p50)),
            show(percentiles.as_ref().map(|p| p.p99)),
        );
        drained.print(&phase);
        churn.print(&phase);
        phases.push(json!({
            "rate_per_region": rate,
            "messages": messages,
            "deliveries": drained.to_json(),
            "reconnects": churn.reconnects,
            "slow_consumer_disconnects": churn.slow_disconnects,
            "latency_ms": percentiles,
            "redis_cpu_us_per_message": cpu_us_per_message,
        }));
    }

    // 3. Reconnect storm.
    let storm = if args.gateways > 1 {
        let storm = run.storm(&mut workers, deadline).await?;
        failures.extend(storm.failures.iter().cloned());
        Some(storm.report)
    } else {
        None
    };

    workers.stop(deadline).await;
    fleet.shutdown().await;

    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), json!("scale"));
    report.insert(
        "params".into(),
        json!({
            "clients": args.clients,
            "client_processes": args.client_processes,
            "gateways": args.gateways,
            "regions": args.regions.iter().map(|region| region.as_str()).collect::<Vec<_>>(),
            "rates_per_region": args.scale_rates,
            "duration_secs": args.duration.as_secs_f64(),
            "drain_grace_secs": args.drain_grace.as_secs_f64(),
            "gateway_args": args.gateway_arg,
        }),
    );
    report.insert(
        "idle".into(),
        json!({
            "connected": connected.ok,
            "handshake_failures": connected.failed,
            "connect_secs": round3(connect_secs),
            "handshakes_per_sec": round1(connected.ok as f64 / connect_secs.max(1e-9)),
            "gateways_counted": counted,
            "fleet_rss_kib_before": rss_before,
            "fleet_rss_kib_after": rss_after,
            "rss_bytes_per_connection": per_connection,
            "redis_idle_cpu_ms_per_sec": round3(redis_idle_cpu_per_sec * 1e3),
        }),
    );
    report.insert("fanout".into(), Value::Array(phases));
    report.insert("storm".into(), json!(storm));
    Ok(Outcome::new(report, failures))
}

/// What a run publishes and to whom.
struct Run<'a> {
    args: &'a Args,
    fleet: &'a Arc<Fleet>,
    publisher: HistoryPublisher,
    /// Per region index, messages published so far (`seq` `0..n`).
    published: Vec<u64>,
    /// Wall clock of the latest publish ([`wall_ns`]).
    last_publish_ns: u64,
    unix_ts: i64,
}

/// The storm's figures and the checks that failed.
struct Storm {
    report: Value,
    failures: Vec<String>,
}

impl Run<'_> {
    /// Publishes one message per region every `1/rate` s for `duration`.
    async fn publish_for(
        &mut self,
        rate: f64,
        duration: Duration,
        deadline: Instant,
    ) -> Result<()> {
        let period = Duration::from_secs_f64(1.0 / rate);
        let end = (Instant::now() + duration).min(deadline);
        let mut due = Instant::now();
        while due < end {
            tokio::time::sleep_until(due).await;
            self.publish_round().await?;
            due += period;
        }
        Ok(())
    }

    /// One message to every region, stamped with the wall clock.
    async fn publish_round(&mut self) -> Result<()> {
        let sent_ns = wall_ns();
        let batch: Vec<(usize, Notification)> = self
            .args
            .regions
            .iter()
            .enumerate()
            .map(|(index, region)| {
                (
                    index,
                    notification(*region, self.published[index], sent_ns, self.unix_ts),
                )
            })
            .collect();
        self.publisher.send(&batch).await?;
        self.last_publish_ns = wall_ns();
        for count in &mut self.published {
            *count += 1;
        }
        Ok(())
    }

    /// SIGKILLs the first gateway while publishing at the first rate; waits until every
    /// client is connected again, then checks every message arrived once.
    async fn storm(&mut self, workers: &mut Workers, deadline: Instant) -> Result<Storm> {
        let fleet = Arc::clone(self.fleet);
        let victim = &fleet.nodes[0];
        let survivors: Vec<_> = fleet.nodes[1..].iter().collect();
        let held = fleet
            .metric(victim, "notify_connections")
            .await
            .context("the victim's connections")? as u64;
        let resumes_before = resume_sources(&fleet, &survivors).await;
        let status_before = workers.status(deadline).await?;
        let rate = self.args.scale_rates.first().copied().unwrap_or(1.0);
        let period = Duration::from_secs_f64(1.0 / rate);
        let killed_at = Instant::now();
        let ending = fleet.kill(victim).await;
        eprintln!("scale: storm: killed gateway 0 holding {held} clients ({ending})");
        let limit = (killed_at + STORM_LIMIT).min(deadline);
        let mut next_publish = Instant::now();
        let resumed_after = loop {
            if Instant::now() >= next_publish {
                self.publish_round().await?;
                next_publish += period;
            }
            let status = workers.status(deadline).await?;
            if status.connected == self.args.clients as u64
                && status.reconnects >= status_before.reconnects + held
            {
                break Some(killed_at.elapsed());
            }
            if Instant::now() >= limit {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.publish_for(rate, AFTER_STORM, deadline).await?;
        let drained = drain(
            workers,
            &self.published,
            self.last_publish_ns,
            self.args.drain_grace,
            deadline,
        )
        .await?;
        let resumes_after = resume_sources(&fleet, &survivors).await;
        // Unknown (null) when a survivor's counter could not be read before or after.
        let delta = |name: &str| -> Option<f64> {
            Some(resumes_after.get(name).copied()?? - resumes_before.get(name).copied()??)
        };
        let percentiles = Percentiles::of(&latency::from_buckets(&drained.deliveries.latency_us));
        let mut failures = drained.failures("storm");
        if resumed_after.is_none() {
            failures.push(format!(
                "storm: not every client was connected again within {STORM_LIMIT:?}"
            ));
        }
        let replays = json!({
            "memory": delta("memory"),
            "stream": delta("stream"),
            "resync": delta("resync"),
            "waited_for_a_turn": delta("waits"),
            "refused_1013": delta("refused"),
        });
        eprintln!(
            "scale: storm: {held} clients resumed in {} s; replays from memory {}, from the \
             stream (XRANGE) {}, resync {}; waited for a replay turn {}, refused {}; \
             lost {}, duplicates {}",
            show(resumed_after.map(|after| round3(after.as_secs_f64()))),
            show(delta("memory")),
            show(delta("stream")),
            show(delta("resync")),
            show(delta("waits")),
            show(delta("refused")),
            drained.deliveries.lost,
            drained.deliveries.duplicates,
        );
        drained.print("storm");
        Ok(Storm {
            report: json!({
                "killed_gateway_clients": held,
                "resumed_secs": resumed_after.map(|after| round3(after.as_secs_f64())),
                "replays": replays,
                "deliveries": drained.to_json(),
                "latency_ms": percentiles,
            }),
            failures,
        })
    }
}

/// Scrapes of one gateway's /metrics (on its admin port) tried before its counter is reported
/// unknown; a gateway at the height of a storm may answer late.
const SCRAPE_ATTEMPTS: u32 = 5;

/// The sum over `nodes` of each resume counter: `memory`, `stream`, `resync` (by source),
/// `waits` and `refused` (the replay budget); `None` for a counter some node's /metrics did
/// not give after [`SCRAPE_ATTEMPTS`] tries.
async fn resume_sources(
    fleet: &Fleet,
    nodes: &[&crate::fleet::Node],
) -> std::collections::HashMap<&'static str, Option<f64>> {
    let mut sums = std::collections::HashMap::new();
    for (name, metric) in [
        ("memory", "notify_resumes_total{source=\"memory\"}"),
        ("stream", "notify_resumes_total{source=\"stream\"}"),
        ("resync", "notify_resumes_total{source=\"resync\"}"),
        ("waits", "notify_replay_waits_total"),
        ("refused", "notify_replays_refused_total"),
    ] {
        let mut total = Some(0.0);
        for node in nodes {
            let mut value = None;
            for attempt in 1..=SCRAPE_ATTEMPTS {
                match fleet.metric(node, metric).await {
                    Ok(read) => {
                        value = Some(read);
                        break;
                    }
                    Err(error) => {
                        eprintln!(
                            "notify-bench: warning: gateway {} {metric} (try {attempt} of {SCRAPE_ATTEMPTS}): {error:#}",
                            node.index
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            total = total.zip(value).map(|(total, value)| total + value);
        }
        sums.insert(name, total);
    }
    sums
}

/// Connections that ended under a phase's load: the clients' reconnects and the gateways'
/// slow-consumer disconnects (`notify_slow_client_disconnects_total`, 1008: a client that
/// fell `--queue-limit` messages behind). A disconnected client resumes with `since`, so its
/// messages come late (after a reconnect and a replay), not never.
struct Churn {
    reconnects: u64,
    /// Summed over the gateways that are up; `None` when one could not be read.
    slow_disconnects: Option<f64>,
}

impl Churn {
    async fn now(fleet: &Fleet, workers: &mut Workers, deadline: Instant) -> Result<Self> {
        let reconnects = workers.status(deadline).await?.reconnects;
        let mut slow_disconnects = Some(0.0);
        for node in fleet
            .nodes
            .iter()
            .filter(|node| node.up.load(std::sync::atomic::Ordering::Acquire))
        {
            let read = fleet
                .metric(node, "notify_slow_client_disconnects_total")
                .await;
            if let Err(error) = &read {
                eprintln!(
                    "notify-bench: warning: gateway {} slow-consumer disconnects: {error:#}",
                    node.index
                );
            }
            slow_disconnects = slow_disconnects
                .zip(read.ok())
                .map(|(sum, value)| sum + value);
        }
        Ok(Churn {
            reconnects,
            slow_disconnects,
        })
    }

    /// What changed since `before`.
    fn since(&self, before: &Churn) -> Churn {
        Churn {
            reconnects: self.reconnects.saturating_sub(before.reconnects),
            slow_disconnects: self
                .slow_disconnects
                .zip(before.slow_disconnects)
                .map(|(now, before)| now - before),
        }
    }

    fn print(&self, phase: &str) {
        eprintln!(
            "scale: {phase}: {} client reconnects, {} slow-consumer disconnects",
            self.reconnects,
            show(self.slow_disconnects),
        );
    }
}

/// Sum of every running gateway's VmRSS, KiB.
fn fleet_rss_kib(fleet: &Fleet) -> u64 {
    fleet
        .nodes
        .iter()
        .filter_map(|node| {
            let pid = node.pid.load(std::sync::atomic::Ordering::Relaxed);
            procstat::sample(&pid.to_string()).ok()
        })
        .map(|sample| sample.rss_kib)
        .sum()
}

/// Waits (up to 30 s) until the gateways count `count` connections; returns their count.
async fn wait_counted(fleet: &Fleet, count: u64, deadline: Instant) -> f64 {
    let until = (Instant::now() + Duration::from_secs(30)).min(deadline);
    loop {
        let mut total = 0.0;
        for node in &fleet.nodes {
            total += fleet
                .metric(node, "notify_connections")
                .await
                .unwrap_or(0.0);
        }
        if total >= count as f64 || Instant::now() >= until {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Redis servers whose CPU a run measures: the one Redis, or every node given as a
/// cluster's seeds (give all of them for the whole cluster's cost).
struct RedisNodes(Vec<redis::aio::MultiplexedConnection>);

impl RedisNodes {
    async fn connect(args: &Args) -> Result<Self> {
        let urls = if args.redis_cluster {
            notify_core::broker::redis::split_seeds(&args.redis_url)
        } else {
            vec![args.redis_url.as_str()]
        };
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            nodes.push(redis_connection(url).await?);
        }
        Ok(RedisNodes(nodes))
    }

    /// CPU seconds so far, summed over the nodes.
    async fn cpu_secs(&mut self) -> Result<f64> {
        let mut total = 0.0;
        for node in &mut self.0 {
            total += redis_cpu_secs(node).await?;
        }
        Ok(total)
    }
}

/// Redis's own CPU seconds so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`).
async fn redis_cpu_secs(redis: &mut redis::aio::MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(redis)
        .await
        .context("INFO cpu")?;
    parse_cpu_secs(&info)
}

fn parse_cpu_secs(info: &str) -> Result<f64> {
    let field = |name: &str| -> Result<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("INFO cpu without {name}"))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("INFO cpu {name}"))
    };
    let total = field("used_cpu_sys")? + field("used_cpu_user")?;
    if !total.is_finite() {
        bail!("INFO cpu: not a number");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_cpu_is_sys_plus_user() {
        let info =
            "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(parse_cpu_secs(info).unwrap(), 3.75);
        assert!(parse_cpu_secs("# CPU\r\n").is_err());
    }
}

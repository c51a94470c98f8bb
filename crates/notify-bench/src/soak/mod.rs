//! The `soak` scenario: the promises of the README held for as long as it runs.
//!
//! It starts its own redis-server (append-only persistence, so it can be restarted with its
//! data) and `--gateways` gateways (with `--redis-ping-interval`, small by default so the
//! subscription's health check runs many times), publishes an epoch per region, connects
//! `--clients` resuming clients (as `chaos` does), and then for `--duration`:
//!
//! - publishes id-carrying messages at `--rate` with the project's history script, and plain
//!   (seed-style, id-less) `PUBLISH`es at `--plain-rate`;
//! - drops random clients at `--drop-rate` (churn: they reconnect with `?since=` their last id);
//! - every `--fault-interval`, the next fault in turn ([`faults`]): a subscription cut, a
//!   stream-link cut, a command-connection cut (not a link: the positive control), a foreign
//!   id, a Redis restart with data, a gateway restart, a Redis restart without data;
//! - watches readiness, RSS, descriptors and reconnect counters ([`monitor`]) and prints a
//!   progress line every `--report-interval`.
//!
//! Then every client catches up, and the verdict: id-carrying messages exactly once or
//! announced by a `resync` (counted), 100.000 %; every plain message owed while the link was
//! healthy delivered; every gateway process's RSS at most `--rss-growth-mib` above its first
//! sample after `--warm-up`, and its open descriptors at most its connected clients plus
//! `--fd-slack`; each gateway's `notify_broker_reconnects_total` (summed over its processes)
//! equal to the link cuts made while it was up (a Redis restart cuts every gateway once; a
//! command-connection cut none);
//! no readiness flap with no fault in progress. Exit 0 only when all of it holds.
//!
//! # Layout
//! - this module: the run, from starting processes to the verdict.
//! - [`faults`]: the fault schedule.
//! - [`monitor`]: readiness, memory, descriptors, progress lines.
//! - [`redis_server`]: the soak's own redis-server.

pub mod faults;
mod monitor;
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use notify_proto::ChannelNames;
use serde_json::json;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::chaos::chaos_log;
use crate::chaos::faults::{drop_clients, ChaosCounts};
use crate::cli::Args;
use crate::fleet::{reconnect_failures, Fleet};
use crate::history_publisher::{redis_connection, HistoryPublisher};
use crate::messages::{now_ns, MessageLog};
use crate::plain::{FaultWindows, PlainLog, PlainMessage};
use crate::publish::{self, SendLogged};
use crate::report::{round3, Outcome, Totals};
use crate::resuming::{ClientContext, Crowd, Population};
use faults::{FaultCounts, FaultPlan};
use monitor::{Monitor, Observed};
use redis_server::RedisServer;

/// Time for late frames (duplicates) once every client has caught up.
const QUIET_AFTER_CATCH_UP: Duration = Duration::from_secs(1);

/// Runs the soak; returns its report.
pub async fn run(mut args: Args) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let redis = RedisServer::start(&args.redis_server_bin).await?;
    args.redis_url = redis.url();
    args.gateway_arg.push(format!(
        "--redis-ping-interval={}ms",
        args.redis_ping_interval.as_millis()
    ));
    let redis = Arc::new(Mutex::new(redis));
    let fleet = Arc::new(Fleet::new(&args)?);
    let outcome = run_with(&args, &fleet, &redis, started, deadline).await;
    fleet.shutdown().await;
    drop(redis);
    outcome
}

/// The history publisher, paused while Redis restarts.
struct GatedHistory {
    publisher: HistoryPublisher,
    gate: Arc<RwLock<()>>,
}

impl SendLogged for GatedHistory {
    async fn send_logged(&mut self, log: &MessageLog, ids: &[(usize, u64)]) -> Result<Vec<i64>> {
        let _open = self.gate.read().await;
        self.publisher.send_logged(log, ids).await
    }
}

async fn run_with(
    args: &Args,
    fleet: &Arc<Fleet>,
    redis: &Arc<Mutex<RedisServer>>,
    started: Instant,
    deadline: Instant,
) -> Result<Outcome> {
    let mut publisher = HistoryPublisher::connect(args).await?;
    fleet.start_all(&args.regions).await?;
    chaos_log(
        started,
        format!(
            "soak: redis-server at {}, {} gateways ready (--redis-ping-interval {:?})",
            args.redis_url,
            fleet.nodes.len(),
            args.redis_ping_interval
        ),
    );
    let planned = args.steady_messages();
    let epochs = publisher.epoch(&args.regions).await?;
    let (ctx, _) = ClientContext::for_run(args, fleet, epochs);
    let log = Arc::clone(&ctx.log);
    let crowd = Crowd::spawn(&ctx, args.clients);
    let clients = crowd.clients.clone();
    let connected = crowd
        .await_connected((Instant::now() + Duration::from_secs(60)).min(deadline))
        .await;
    chaos_log(
        started,
        format!(
            "soak: {connected} of {} clients connected; for {:.0}s: {} id-carrying and {} plain messages/s, {} client drops/s, a fault every {:.0}s",
            args.clients,
            args.duration.as_secs_f64(),
            args.rate,
            args.plain_rate,
            args.drop_rate,
            args.fault_interval.as_secs_f64()
        ),
    );

    let phase_started = Instant::now();
    let phase_end = phase_started + args.duration;
    let gate = Arc::new(RwLock::new(()));
    let windows = Arc::new(FaultWindows::default());
    let plain = Arc::new(PlainLog::default());
    let fault_counts = Arc::new(FaultCounts::default());
    let drops = Arc::new(ChaosCounts::default());

    let publishing = {
        let log = Arc::clone(&log);
        let mut gated = GatedHistory {
            publisher,
            gate: Arc::clone(&gate),
        };
        let (rate, pipeline) = (args.rate, args.pipeline);
        let publish_deadline = deadline.min(phase_end + Duration::from_secs(30));
        tokio::spawn(async move {
            publish::steady(&mut gated, &log, rate, planned, pipeline, publish_deadline).await
        })
    };
    let plain_publishing = tokio::spawn(publish_plain(
        args.redis_url.clone(),
        ChannelNames::new(args.channel_prefix.as_str()),
        args.regions.clone(),
        args.plain_rate,
        phase_end,
        Arc::clone(&plain),
        Arc::clone(&gate),
    ));
    let mut background = tokio::task::JoinSet::new();
    if args.drop_rate > 0.0 {
        background.spawn(drop_clients(
            clients.clone(),
            args.drop_rate,
            phase_end,
            started,
            Arc::clone(&drops),
        ));
    }
    background.spawn(
        FaultPlan {
            fleet: Arc::clone(fleet),
            redis: Arc::clone(redis),
            publish_gate: Arc::clone(&gate),
            windows: Arc::clone(&windows),
            counts: Arc::clone(&fault_counts),
            regions: args.regions.clone(),
            channels: ChannelNames::new(args.channel_prefix.as_str()),
            restart_delay: args.restart_delay,
            started,
            schedule: args.faults.clone(),
        }
        .run(args.fault_interval, phase_end),
    );
    let monitor = Monitor {
        fleet: Arc::clone(fleet),
        clients: clients.clone(),
        log: Arc::clone(&log),
        plain: Arc::clone(&plain),
        windows: Arc::clone(&windows),
        warm_up_end: phase_started + args.warm_up,
        report_interval: args.report_interval,
        started,
    };
    let (stop_monitor, monitor_stop) = tokio::sync::watch::channel(false);
    let watching = tokio::spawn(monitor.run(monitor_stop));

    let publish = tokio::time::timeout_at(deadline, publishing)
        .await
        .context("publishing did not finish by the deadline")?
        .context("the publisher task failed")??;
    let plain_published = plain_publishing
        .await
        .context("the plain publisher task failed")?;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, background.join_next()).await {
        joined.context("a fault task failed")?;
    }
    background.abort_all();
    chaos_log(
        started,
        format!(
            "soak: published {} id-carrying messages and {plain_published} plain ones",
            publish.published
        ),
    );
    // The monitor goes on through catch-up: the gateways are still watched.
    let targets: Vec<u64> = log
        .regions
        .iter()
        .map(|region| region.published())
        .collect();
    let catch_up_until = (Instant::now() + args.catch_up_timeout).min(deadline);
    let behind = crowd.await_catch_up(&targets, catch_up_until).await;
    tokio::time::sleep_until((Instant::now() + QUIET_AFTER_CATCH_UP).min(deadline)).await;
    let _ = stop_monitor.send(true);
    let (monitor, mut observed) = watching.await.context("the monitor task failed")?;
    let reconnects = fleet.reconnect_counts().await;
    let (reports, unjoined) = crowd.stop().await;
    monitor.judge_plain(&mut observed, u64::MAX);

    // The verdict.
    let mut totals = Totals {
        published: Some(publish.published),
        ..Totals::default()
    };
    let mut population = Population {
        unjoined,
        ..Population::default()
    };
    for report in &reports {
        population.add(report);
        if report.connections > 0 {
            totals.add(&report.tracker.verdict(targets[report.region]));
        }
    }
    let foreign_frames: u64 = clients
        .iter()
        .map(|client| client.foreign.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let faults = fault_counts.snapshot();
    let bounds = Bounds {
        rss_growth_kib: args.rss_growth_mib * 1024,
        fd_slack: args.fd_slack as i64,
    };
    let mut failures = totals.failures(true);
    if totals.expected_deliveries == 0 {
        failures.push("no delivery was expected: nothing was checked".into());
    }
    failures.extend(observed_failures(&observed, &bounds));
    failures.extend(reconnect_failures(&reconnects));
    failures.extend(population.failures());
    if publish.cut_short || publish.published < planned {
        failures.push(format!(
            "publishing cut short: {} of {planned}",
            publish.published
        ));
    }
    if faults.errors > 0 {
        failures.push(format!("faults that failed: {}", faults.errors));
    }
    if behind > 0 {
        chaos_log(
            started,
            format!("soak: {behind} clients still behind at the end"),
        );
    }
    let exactly_once_or_resynced = totals.exactly_once.map(|exactly_once| {
        crate::report::percentage(exactly_once + totals.resynced, totals.expected_deliveries)
    });

    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), json!("soak"));
    report.insert(
        "params".into(),
        json!({
            "gateways": args.gateways,
            "clients": args.clients,
            "regions": args.regions.iter().map(|region| region.as_str()).collect::<Vec<_>>(),
            "duration_secs": args.duration.as_secs_f64(),
            "rate": args.rate,
            "plain_rate": args.plain_rate,
            "drop_rate": args.drop_rate,
            "fault_interval_secs": args.fault_interval.as_secs_f64(),
            "faults": args.faults.iter().map(|fault| format!("{fault:?}")).collect::<Vec<_>>(),
            "redis_ping_interval_ms": args.redis_ping_interval.as_millis() as u64,
            "warm_up_secs": args.warm_up.as_secs_f64(),
            "gateway_args": args.gateway_arg,
        }),
    );
    report.insert(
        "bounds".into(),
        json!({
            "rss_growth_mib": args.rss_growth_mib,
            "fd_slack": args.fd_slack,
        }),
    );
    report.insert("faults".into(), json!(faults));
    report.insert("client_drops".into(), json!(drops.snapshot().client_drops));
    report.insert("totals".into(), json!(totals));
    report.insert("exactly_once_pct".into(), json!(totals.exactly_once_pct()));
    report.insert(
        "exactly_once_or_resynced_pct".into(),
        json!(exactly_once_or_resynced.flatten()),
    );
    report.insert("plain".into(), json!(observed.plain));
    report.insert("foreign_frames_received".into(), json!(foreign_frames));
    report.insert("reconnects".into(), json!(reconnects));
    report.insert(
        "readiness".into(),
        json!({
            "polls": observed.readiness_polls,
            "flaps": observed.readiness_flaps,
            "flaps_with_no_fault": observed.readiness_flaps_unexplained,
        }),
    );
    report.insert("processes".into(), json!(observed.processes));
    report.insert(
        "clients".into(),
        json!({
            "connected_initially": connected,
            "never_connected": population.never_connected,
            "gave_up": population.gave_up,
            "connections": population.connections,
            "reconnects": population.reconnects,
            "endings": population.endings,
            "errors": population.errors,
        }),
    );
    report.insert(
        "secs".into(),
        json!(round3(started.elapsed().as_secs_f64())),
    );
    eprintln!(
        "soak: {} gateways, {} clients, {:.0}s; faults: {} subscription cuts, {} stream-link cuts, {} command-connection cuts, {} foreign ids, {} Redis restarts with data, {} without, {} gateway restarts, {} failed",
        fleet.nodes.len(),
        args.clients,
        args.duration.as_secs_f64(),
        faults.subscription_cuts,
        faults.stream_cuts,
        faults.command_cuts,
        faults.foreign_ids,
        faults.redis_restarts_with_data,
        faults.redis_restarts_empty,
        faults.gateway_restarts,
        faults.errors,
    );
    eprintln!("  id-carrying: {}", totals.summary_line());
    eprintln!(
        "  plain: {} published ({} while healthy), owed {}, delivered {}, lost {}, duplicates {}",
        observed.plain.published,
        observed.plain.published_healthy,
        observed.plain.owed,
        observed.plain.delivered,
        observed.plain.lost,
        observed.plain.duplicates
    );
    for count in &reconnects {
        eprintln!(
            "  gateway {}: reconnects {} for {} cuts",
            count.gateway,
            crate::report::show(count.reconnects),
            count.cuts
        );
    }
    for process in &observed.processes {
        eprintln!(
            "  gateway {} pid {}: RSS {} -> {} KiB (max {}), fds max {} (max {} over open sockets)",
            process.gateway,
            process.pid,
            process.rss_kib_baseline,
            process.rss_kib_last,
            process.rss_kib_max,
            process.fds_max,
            process.fds_over_connections_max
        );
    }
    eprintln!(
        "  readiness: {} flaps, {} with no fault in progress ({} polls)",
        observed.readiness_flaps, observed.readiness_flaps_unexplained, observed.readiness_polls
    );
    Ok(Outcome::new(report, failures))
}

/// The memory and descriptor bounds.
struct Bounds {
    rss_growth_kib: u64,
    fd_slack: i64,
}

/// The checks on what the monitor saw that failed.
fn observed_failures(observed: &Observed, bounds: &Bounds) -> Vec<String> {
    let mut failures = Vec::new();
    if observed.plain.lost > 0 {
        failures.push(format!(
            "plain messages lost while the link was healthy: {} of {}",
            observed.plain.lost, observed.plain.owed
        ));
    }
    if observed.plain.owed == 0 {
        failures.push("no plain message was owed: nothing was checked".into());
    }
    if observed.readiness_flaps_unexplained > 0 {
        failures.push(format!(
            "readiness flaps with no fault in progress: {}",
            observed.readiness_flaps_unexplained
        ));
    }
    for process in &observed.processes {
        let growth = process.rss_kib_max.saturating_sub(process.rss_kib_baseline);
        if growth > bounds.rss_growth_kib {
            failures.push(format!(
                "gateway {} pid {} RSS grew {growth} KiB after warm-up (bound {} KiB)",
                process.gateway, process.pid, bounds.rss_growth_kib
            ));
        }
        if process.fds_over_connections_max > bounds.fd_slack {
            failures.push(format!(
                "gateway {} pid {} held {} descriptors more than its open sockets (bound {})",
                process.gateway, process.pid, process.fds_over_connections_max, bounds.fd_slack
            ));
        }
    }
    failures
}

/// Publishes plain (id-less) messages at `rate` until `until`, round-robin over `regions`;
/// returns how many. A message Redis did not take is not logged (and so never owed).
async fn publish_plain(
    url: String,
    channels: ChannelNames,
    regions: Vec<notify_proto::Region>,
    rate: f64,
    until: Instant,
    log: Arc<PlainLog>,
    gate: Arc<RwLock<()>>,
) -> u64 {
    let unix_ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connection = None;
    let mut turn = 0usize;
    while ticks.tick().await < until {
        let _open = gate.read().await;
        if connection.is_none() {
            match redis_connection(&url).await {
                Ok(fresh) => connection = Some(fresh),
                Err(error) => {
                    eprintln!("notify-bench: plain publisher: {error:#}");
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else {
            continue;
        };
        let index = turn % regions.len();
        turn += 1;
        let pseq = log.len() as u64;
        let payload = PlainLog::payload(regions[index], pseq, unix_ts);
        let sent_ns = now_ns();
        let sent = redis::cmd("PUBLISH")
            .arg(channels.channel(regions[index]))
            .arg(payload)
            .query_async::<i64>(open)
            .await;
        match sent {
            Ok(_) => {
                log.push(PlainMessage {
                    region: index,
                    sent_ns,
                });
            }
            Err(error) => {
                eprintln!("notify-bench: plain publisher: {error}; connecting again");
                connection = None;
            }
        }
    }
    log.len() as u64
}

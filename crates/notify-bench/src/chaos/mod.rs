//! The `chaos` scenario: resumable delivery while things break.
//!
//! The generator starts its own gateways (`--gateways` copies of `--gateway-bin`, each on a
//! free loopback port with `--redis-url`), then:
//!
//! 1. publishes one *epoch* notification per region with the project's history script and
//!    notes its id: every client starts with `since=<epoch>` as its last id, so "every message
//!    after the client's first connection" is exactly "every message this run publishes",
//!    whichever gateway the client reaches first and whenever;
//! 2. connects the clients (regions and gateways round-robin), each with
//!    `/?region=XX&since=<epoch>`, and waits (bounded) until they are all connected;
//! 3. publishes at `--rate` for `--duration` through Redis with
//!    [`notify_core::broker::redis::publish_command`] (`EVALSHA` of the script that `XADD`s and
//!    `PUBLISH`es atomically), each message carrying its region's sequence number `seq`;
//! 4. meanwhile breaks things: random clients close their socket (`--drop-rate`), every
//!    gateway loses its Redis subscription (`CLIENT KILL TYPE pubsub`, `--link-cut-interval`),
//!    a random gateway gets SIGTERM and is started again on the same port
//!    (`--restart-interval`, `--restart-delay`). Link cuts and restarts never overlap (each
//!    holds the fleet's fault lock until every gateway is ready again), so every cut reaches
//!    every gateway while it is subscribed. Each action is logged to stderr with the time
//!    since the start of the run, and counted;
//! 5. whenever a client's connection ends (close frame, error, EOF, or its own drop), the
//!    client waits a short jittered pause and reconnects to a random live gateway with
//!    `since=<last id received>`, giving up after `--reconnect-attempts` failures in a row;
//! 6. after publishing stops, waits until every client has its region's last message (at most
//!    `--catch-up-timeout`, or until nothing has moved for 10 s while every client that is
//!    behind is connected), lets stragglers (duplicates) arrive for a second, stops the
//!    clients, then the gateways, and judges.
//!
//! # Verdict
//! Per client ([`Tracker`]): each frame is compared byte for byte with the logged message it
//! should be (the next `seq`), and its `id` must be greater than the last one. Anything else
//! is classified: a later `seq` is a gap (the skipped messages are lost unless they arrive
//! later, out of order), an earlier one already received is a duplicate, a `resync` control
//! message is counted (it means history did not reach back: a failure here). A message is
//! delivered *exactly once* when it arrived once, in order, with a rising id. The run passes
//! only when every expected delivery was exactly once (100.000 %), no client gave up or never
//! connected, no gateway failed to restart, publishing was not cut short, and each gateway's
//! own `notify_broker_reconnects_total` (summed over its processes) equals the link cuts made
//! while it was subscribed: a gateway that drops its subscription on its own fails the run.

//!
//! # Layout
//! - this module: the run itself, from starting the gateways to the report.
//! - [`faults`]: the chaos actions and their counts.
//!
//! The gateways ([`crate::fleet`]), the resuming clients ([`crate::resuming`]), their
//! verification ([`crate::tracker`]) and the report ([`crate::report`]) are shared with `soak`.

pub(crate) mod faults;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cli::Args;
use crate::fleet::{reconnect_failures, Fleet};
use crate::history_publisher::{redis_connection, HistoryPublisher};
use crate::procstat;
use crate::publish;
use crate::report::{quantile, round3, show, Outcome, Totals};
use crate::resuming::{ClientContext, Crowd, Population};
use faults::{cut_links, drop_clients, restart_gateways, ChaosCounts};

/// Time to wait for late frames (duplicates) once every client has caught up.
const QUIET_AFTER_CATCH_UP: Duration = Duration::from_secs(1);

/// Runs the scenario; returns its report.
pub async fn run(args: Args) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let fleet = Arc::new(Fleet::new(&args)?);
    let outcome = run_with(&args, &fleet, started, deadline).await;
    fleet.shutdown().await;
    outcome
}

async fn run_with(
    args: &Args,
    fleet: &Arc<Fleet>,
    started: Instant,
    deadline: Instant,
) -> Result<Outcome> {
    let mut publisher = HistoryPublisher::connect(args).await?;
    let control = redis_connection(&args.redis_url).await?;
    fleet.start_all(&args.regions).await?;
    chaos_log(
        started,
        format!(
            "{} gateways ready: {}",
            fleet.nodes.len(),
            fleet
                .nodes
                .iter()
                .map(|node| node.addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    let planned = args.steady_messages();
    let epochs = publisher.epoch(&args.regions).await?;
    let (ctx, sources) = ClientContext::for_run(args, fleet, epochs);
    let log = Arc::clone(&ctx.log);

    // Clients, round-robin over regions and gateways.
    let crowd = Crowd::spawn(&ctx, args.clients);
    let clients = crowd.clients.clone();
    let connect_started = Instant::now();
    let connected = crowd
        .await_connected((connect_started + Duration::from_secs(60)).min(deadline))
        .await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    chaos_log(
        started,
        format!(
            "{connected} of {} clients connected in {connect_secs:.2}s; publishing {planned} messages at {}/s for {:.1}s",
            args.clients,
            args.rate,
            args.duration.as_secs_f64()
        ),
    );

    // The steady phase: publishing and chaos side by side, both ending after --duration.
    let gateway_before = fleet.cpu_secs();
    let me_before = procstat::sample("self").ok();
    let phase_end = Instant::now() + args.duration;
    let counts = Arc::new(ChaosCounts::default());
    let publishing = {
        let log = Arc::clone(&log);
        let rate = args.rate;
        let pipeline = args.pipeline;
        let publish_deadline = deadline.min(phase_end + Duration::from_secs(10));
        tokio::spawn(async move {
            let outcome = publish::steady(
                &mut publisher,
                &log,
                rate,
                planned,
                pipeline,
                publish_deadline,
            )
            .await;
            (publisher, outcome)
        })
    };
    let mut chaos = tokio::task::JoinSet::new();
    if args.drop_rate > 0.0 {
        chaos.spawn(drop_clients(
            clients.clone(),
            args.drop_rate,
            phase_end,
            started,
            Arc::clone(&counts),
        ));
    }
    if !args.link_cut_interval.is_zero() {
        chaos.spawn(cut_links(
            Arc::clone(fleet),
            control.clone(),
            args.link_cut_interval,
            phase_end,
            started,
            Arc::clone(&counts),
        ));
    }
    if !args.restart_interval.is_zero() {
        chaos.spawn(restart_gateways(
            Arc::clone(fleet),
            args.restart_interval,
            args.restart_delay,
            phase_end,
            started,
            Arc::clone(&counts),
        ));
    }
    let (_publisher, published) = tokio::time::timeout_at(deadline, publishing)
        .await
        .context("publishing did not finish by the deadline")?
        .context("the publisher task failed")?;
    let publish = published?;
    chaos_log(
        started,
        format!(
            "published {} messages in {:.2}s ({} heard by no gateway)",
            publish.published, publish.secs, publish.unheard
        ),
    );
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, chaos.join_next()).await {
        joined.context("a chaos task failed")?;
    }
    chaos.abort_all();

    // Catch-up: every client has its region's last message.
    let catch_up_started = Instant::now();
    let catch_up_until = (catch_up_started + args.catch_up_timeout).min(deadline);
    let targets: Vec<u64> = log
        .regions
        .iter()
        .map(|region| region.published())
        .collect();
    let behind = crowd.await_catch_up(&targets, catch_up_until).await;
    let catch_up_secs = catch_up_started.elapsed().as_secs_f64();
    chaos_log(
        started,
        if behind == 0 {
            format!("every client caught up {catch_up_secs:.2}s after publishing ended")
        } else {
            format!("{behind} clients still behind after {catch_up_secs:.2}s")
        },
    );
    tokio::time::sleep_until((Instant::now() + QUIET_AFTER_CATCH_UP).min(deadline)).await;
    let gateway_after = fleet.cpu_secs();
    let me_after = procstat::sample("self").ok();

    // Stop the clients (no more reconnects), then judge.
    let (reports, unjoined) = crowd.stop().await;

    let mut totals = Totals {
        published: Some(publish.published),
        ..Totals::default()
    };
    let mut population = Population {
        unjoined,
        ..Population::default()
    };
    let mut resume_ms = Vec::new();
    for report in &reports {
        population.add(report);
        resume_ms.extend_from_slice(&report.resume_ms);
        if report.connections > 0 {
            totals.add(&report.tracker.verdict(targets[report.region]));
        }
    }
    resume_ms.sort_unstable();
    let exactly_once_pct = totals.exactly_once_pct();
    let counts = counts.snapshot();
    let reconnects = fleet.reconnect_counts().await;
    let mut failures = totals.failures(false);
    failures.extend(reconnect_failures(&reconnects));
    if totals.expected_deliveries == 0 {
        failures.push("no delivery was expected: nothing was checked".into());
    }
    failures.extend(population.failures());
    if publish.cut_short || publish.published < planned {
        failures.push(format!(
            "publishing cut short: {} of {planned}",
            publish.published
        ));
    }
    if counts.restart_failures > 0 {
        failures.push(format!(
            "gateway restarts failed: {}",
            counts.restart_failures
        ));
    }

    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), json!("chaos"));
    report.insert("params".into(), params(args, &sources));
    report.insert(
        "gateways".into(),
        json!(fleet
            .nodes
            .iter()
            .map(|node| json!({
                "addr": node.addr.to_string(),
                "starts": node.starts.load(Ordering::Relaxed),
            }))
            .collect::<Vec<_>>()),
    );
    report.insert("chaos".into(), json!(counts));
    report.insert("reconnects".into(), json!(reconnects));
    report.insert(
        "publish".into(),
        json!({
            "planned": planned,
            "published": publish.published,
            "unheard": publish.unheard,
            "secs": publish.secs,
            "cut_short": publish.cut_short,
        }),
    );
    report.insert(
        "clients".into(),
        json!({
            "connected_initially": connected,
            "connect_secs": round3(connect_secs),
            "never_connected": population.never_connected,
            "gave_up": population.gave_up,
            "unjoined": population.unjoined,
            "connections": population.connections,
            "reconnects": population.reconnects,
            "failed_attempts": population.failed_attempts,
            "endings": population.endings,
            "errors": population.errors,
            "resume_ms": {
                "p50": quantile(&resume_ms, 0.5),
                "p99": quantile(&resume_ms, 0.99),
                "max": resume_ms.last(),
            },
        }),
    );
    report.insert("catch_up_secs".into(), json!(round3(catch_up_secs)));
    report.insert("totals".into(), json!(totals));
    report.insert("exactly_once_pct".into(), json!(exactly_once_pct));
    report.insert(
        "cpu_secs".into(),
        json!({
            "gateways": gateway_before.zip(gateway_after).map(|(b, a)| round3((a - b).max(0.0))),
            "generator": me_before.zip(me_after).map(|(b, a)| round3(a.cpu_secs - b.cpu_secs)),
        }),
    );

    eprintln!(
        "chaos: {} gateways, {} clients over {} regions, {} messages at {}/s for {:.1}s",
        fleet.nodes.len(),
        args.clients,
        args.regions.len(),
        publish.published,
        args.rate,
        args.duration.as_secs_f64()
    );
    eprintln!(
        "  chaos actions: {} client drops, {} link cuts ({} subscriptions killed), {} gateway restarts ({} failed)",
        counts.client_drops,
        counts.link_cuts,
        counts.pubsub_connections_killed,
        counts.gateway_restarts,
        counts.restart_failures
    );
    eprintln!(
        "  resumes: {} reconnects (p50 {} ms, p99 {} ms, max {} ms), {} failed attempts, {} gave up, {} never connected; caught up in {catch_up_secs:.2}s",
        population.reconnects,
        show(quantile(&resume_ms, 0.5)),
        show(quantile(&resume_ms, 0.99)),
        show(resume_ms.last()),
        population.failed_attempts,
        population.gave_up,
        population.never_connected,
    );
    eprintln!(
        "  published {}; {}",
        publish.published,
        totals.summary_line()
    );
    Ok(Outcome::new(report, failures))
}

fn params(args: &Args, sources: &[std::net::IpAddr]) -> Value {
    json!({
        "gateway_bin": args.gateway_bin.as_ref().map(|bin| bin.display().to_string()),
        "gateways": args.gateways,
        "gateway_args": args.gateway_arg,
        "redis_url": args.redis_url,
        "regions": args.regions.iter().map(|region| region.as_str()).collect::<Vec<_>>(),
        "clients": args.clients,
        "rate": args.rate,
        "duration_secs": args.duration.as_secs_f64(),
        "drop_rate": args.drop_rate,
        "link_cut_interval_secs": args.link_cut_interval.as_secs_f64(),
        "restart_interval_secs": args.restart_interval.as_secs_f64(),
        "restart_delay_ms": args.restart_delay.as_millis() as u64,
        "reconnect_delay_ms": args.reconnect_delay.as_millis() as u64,
        "reconnect_attempts": args.reconnect_attempts,
        "catch_up_timeout_secs": args.catch_up_timeout.as_secs_f64(),
        "retention": args.retention,
        "connect_concurrency": args.connect_concurrency,
        "source_ips": sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "pipeline": args.pipeline,
        "threads": args.threads,
        "timeout_secs": args.timeout.as_secs_f64(),
    })
}

/// One line on stderr, stamped with the time since the start of the run.
pub(crate) fn chaos_log(started: Instant, line: impl std::fmt::Display) {
    eprintln!("[{:>8.3}s] {line}", started.elapsed().as_secs_f64());
}

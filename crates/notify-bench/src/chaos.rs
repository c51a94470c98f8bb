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
//!    (`--restart-interval`, `--restart-delay`). Each action is logged to stderr with the time
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
//! connected, no gateway failed to restart and publishing was not cut short.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::future::join_all;
use futures_util::StreamExt;
use notify_core::broker::redis::{publish_command, publish_script};
use notify_proto::{ChannelNames, ControlMessage, Notification, Region, StreamId};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::client::{Connector, Socket};
use crate::messages::MessageLog;
use crate::procstat;
use crate::publish::{self, per_region, SendLogged};

/// Time a (re)started gateway has to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a gateway has to exit after SIGTERM before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest pause between two connection attempts of one client.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);
/// Time to wait for late frames (duplicates) once every client has caught up.
const QUIET_AFTER_CATCH_UP: Duration = Duration::from_secs(1);
/// During catch-up: when every client that is behind is connected and none has received
/// anything for this long, the rest is lost and waiting longer is pointless.
const CATCH_UP_STALL: Duration = Duration::from_secs(10);
/// Bound for a Redis command of the generator itself.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the scenario; returns the JSON report and whether the run failed.
pub async fn run(args: Args) -> Result<(Value, bool)> {
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
) -> Result<(Value, bool)> {
    let mut publisher = HistoryPublisher::connect(args).await?;
    let control = redis_connection(&args.redis_url).await?;
    for node in &fleet.nodes {
        fleet.spawn(node)?;
    }
    let ready = join_all(fleet.nodes.iter().map(|node| fleet.wait_ready(node))).await;
    for result in ready {
        result?;
    }
    for node in &fleet.nodes {
        node.up.store(true, Ordering::Release);
    }
    fleet.check_regions(&args.regions).await?;
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
    let log = Arc::new(MessageLog::new(
        &args.regions,
        per_region(planned, args.regions.len(), 0),
    ));
    let epochs = publisher.epoch(&args.regions).await?;
    let sources = crate::cli::source_ips(
        fleet.nodes[0].addr,
        args.source_ips,
        crate::cli::source_block(args.fixed_sources),
    );
    let ctx = Arc::new(ClientContext {
        log: Arc::clone(&log),
        fleet: Arc::clone(fleet),
        connector: Connector::new(
            fleet.nodes[0].addr,
            sources.clone(),
            args.connect_concurrency,
        ),
        epochs,
        reconnect_delay: args.reconnect_delay,
        max_attempts: args.reconnect_attempts,
    });

    // Clients, round-robin over regions and gateways.
    let (stop, stop_seen) = watch::channel(false);
    let mut clients = Vec::with_capacity(args.clients);
    let mut tasks = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        let shared = Arc::new(ClientShared::new(index % args.regions.len()));
        clients.push(Arc::clone(&shared));
        tasks.push(tokio::spawn(client_task(
            Arc::clone(&ctx),
            shared,
            index % fleet.nodes.len(),
            stop_seen.clone(),
        )));
    }
    drop(stop_seen);
    let connect_started = Instant::now();
    let connect_until = (connect_started + Duration::from_secs(60)).min(deadline);
    while Instant::now() < connect_until
        && !clients.iter().all(|client| {
            client.ever_connected.load(Ordering::Acquire) || client.finished.load(Ordering::Acquire)
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = clients
        .iter()
        .filter(|client| client.ever_connected.load(Ordering::Acquire))
        .count();
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
    let caught_up = |client: &ClientShared| {
        client.finished.load(Ordering::Acquire)
            || client.next_seq.load(Ordering::Acquire) >= targets[client.region]
    };
    let progress = || -> u64 {
        clients
            .iter()
            .map(|client| client.next_seq.load(Ordering::Acquire))
            .sum()
    };
    let (mut last_progress, mut last_total) = (Instant::now(), progress());
    while Instant::now() < catch_up_until && !clients.iter().all(|client| caught_up(client)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let total = progress();
        if total != last_total {
            (last_progress, last_total) = (Instant::now(), total);
        } else if last_progress.elapsed() >= CATCH_UP_STALL
            && clients
                .iter()
                .all(|client| caught_up(client) || client.connected.load(Ordering::Acquire))
        {
            // Everyone behind is connected and nothing has moved: what is missing is lost.
            break;
        }
    }
    let behind = clients.iter().filter(|client| !caught_up(client)).count();
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
    let _ = stop.send(true);
    let join_until = Instant::now() + Duration::from_secs(10);
    let mut reports = Vec::with_capacity(tasks.len());
    let mut unjoined = 0u64;
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(join_until, task).await {
            Ok(Ok(report)) => reports.push(report),
            _ => {
                abort.abort();
                unjoined += 1;
            }
        }
    }

    let mut totals = Totals {
        published: publish.published,
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
    let exactly_once_pct = percentage(totals.exactly_once, totals.expected_deliveries);
    let counts = counts.snapshot();
    let failed = totals.failed()
        || totals.expected_deliveries == 0
        || population.failed()
        || publish.cut_short
        || publish.published < planned
        || counts.restart_failures > 0;

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
    report.insert("ok".into(), json!(!failed));

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
        "  published {}, expected deliveries {}, delivered {}, exactly once {} ({}), duplicates {}, gaps {} (lost {}), out of order {}, resyncs {}, corrupt {}, wrong region {}, unexpected {}, without id {}",
        totals.published,
        totals.expected_deliveries,
        totals.delivered,
        totals.exactly_once,
        exactly_once_pct.map_or_else(|| "n/a".to_owned(), |pct| format!("{pct:.3}%")),
        totals.duplicates,
        totals.gaps,
        totals.lost,
        totals.out_of_order,
        totals.resyncs,
        totals.corrupt,
        totals.wrong_region,
        totals.unexpected,
        totals.missing_id,
    );
    Ok((Value::Object(report), failed))
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
fn chaos_log(started: Instant, line: impl std::fmt::Display) {
    eprintln!("[{:>8.3}s] {line}", started.elapsed().as_secs_f64());
}

/// A uniformly random duration in `0..=max`.
fn jitter(max: Duration) -> Duration {
    let max_us = max.as_micros().min(u128::from(u64::MAX)) as u64;
    Duration::from_micros(rand::rng().random_range(0..=max_us))
}

/// Sleeps `mean` scaled by a random factor in `low..high`; false (without sleeping) when that
/// would reach `until`.
async fn sleep_spread(mean: Duration, low: f64, high: f64, until: Instant) -> bool {
    let at = Instant::now() + mean.mul_f64(rand::rng().random_range(low..high));
    if at >= until {
        return false;
    }
    tokio::time::sleep_until(at).await;
    true
}

// ---------------------------------------------------------------------------------------------
// Gateways

/// One gateway: a fixed loopback port and the process currently serving it.
#[derive(Debug)]
struct Node {
    index: usize,
    addr: SocketAddr,
    /// Whether clients may connect to it (false from just before SIGTERM until ready again).
    up: AtomicBool,
    child: Mutex<Option<Child>>,
    pid: AtomicU32,
    starts: AtomicU64,
    /// CPU seconds of the processes that already exited.
    cpu_secs_exited: Mutex<f64>,
}

/// The gateways this run started. Every child is killed when its handle drops.
#[derive(Debug)]
struct Fleet {
    nodes: Vec<Node>,
    bin: PathBuf,
    redis_url: String,
    extra: Vec<String>,
    log_dir: Option<PathBuf>,
    http: reqwest::Client,
}

impl Fleet {
    /// Picks a free loopback port per gateway (all bound at once, so they differ).
    fn new(args: &Args) -> Result<Self> {
        let bin = args
            .gateway_bin
            .clone()
            .context("chaos needs --gateway-bin")?;
        let listeners: Vec<TcpListener> = (0..args.gateways)
            .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free loopback port"))
            .collect::<Result<_>>()?;
        let nodes = listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                Ok(Node {
                    index,
                    addr: listener.local_addr()?,
                    up: AtomicBool::new(false),
                    child: Mutex::new(None),
                    pid: AtomicU32::new(0),
                    starts: AtomicU64::new(0),
                    cpu_secs_exited: Mutex::new(0.0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(listeners);
        if let Some(dir) = &args.gateway_log_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--gateway-log-dir {}", dir.display()))?;
        }
        Ok(Fleet {
            nodes,
            bin,
            redis_url: args.redis_url.clone(),
            extra: args.gateway_arg.clone(),
            log_dir: args.gateway_log_dir.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// Starts `node`'s process (its environment's `NOTIFY_*` variables removed, so only the
    /// flags given here apply).
    fn spawn(&self, node: &Node) -> Result<()> {
        let mut command = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NOTIFY_") {
                command.env_remove(key);
            }
        }
        let (stdout, stderr) = match &self.log_dir {
            Some(dir) => {
                let path = dir.join(format!("gateway-{}.log", node.index));
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command
            .arg("--listen")
            .arg(node.addr.to_string())
            .arg("--redis-url")
            .arg(&self.redis_url)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        node.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        node.starts.fetch_add(1, Ordering::Relaxed);
        *lock(&node.child) = Some(child);
        Ok(())
    }

    /// Waits until `node` answers `/readyz` with 200 (subscribed to Redis).
    async fn wait_ready(&self, node: &Node) -> Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        let url = format!("http://{}/readyz", node.addr);
        loop {
            let exited = lock(&node.child)
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "gateway {} ({}) exited while starting: {status}",
                    node.index,
                    node.addr
                );
            }
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                bail!(
                    "gateway {} ({}) was not ready within {READY_TIMEOUT:?}",
                    node.index,
                    node.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Refuses regions the gateways do not serve (they would reject every client).
    async fn check_regions(&self, regions: &[Region]) -> Result<()> {
        let url = format!("http://{}/api/info", self.nodes[0].addr);
        let Ok(response) = self.http.get(&url).send().await else {
            return Ok(());
        };
        let Ok(info) = response.json::<Value>().await else {
            return Ok(());
        };
        if let Some(served) = info["regions"].as_array() {
            let served: Vec<&str> = served.iter().filter_map(Value::as_str).collect();
            if let Some(missing) = regions
                .iter()
                .find(|region| !served.contains(&region.as_str()))
            {
                bail!("the gateways do not serve region {missing} (they serve {served:?}); adjust --regions or --gateway-arg=--regions=...");
            }
        }
        Ok(())
    }

    /// SIGTERM, then up to [`EXIT_TIMEOUT`] for the exit (killed after that). Returns how the
    /// process ended.
    async fn stop(&self, node: &Node) -> String {
        node.up.store(false, Ordering::Release);
        let child = lock(&node.child).take();
        let Some(mut child) = child else {
            return "not running".into();
        };
        let cpu = child
            .id()
            .and_then(|pid| procstat::sample(&pid.to_string()).ok());
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let ending = match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(error)) => format!("wait failed: {error}"),
            Err(_) => {
                let _ = child.kill().await;
                format!("killed: still running {EXIT_TIMEOUT:?} after SIGTERM")
            }
        };
        if let Some(sample) = cpu {
            *lock(&node.cpu_secs_exited) += sample.cpu_secs;
        }
        ending
    }

    /// Address of a random gateway that is up.
    fn pick_live(&self) -> Option<SocketAddr> {
        let live: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|node| node.up.load(Ordering::Acquire))
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[rand::rng().random_range(0..live.len())].addr)
    }

    /// CPU seconds used by every gateway process so far (exited ones as last sampled).
    fn cpu_secs(&self) -> Option<f64> {
        let mut total = 0.0;
        for node in &self.nodes {
            total += *lock(&node.cpu_secs_exited);
            let pid = node.pid.load(Ordering::Relaxed);
            if lock(&node.child).is_some() && pid != 0 {
                total += procstat::sample(&pid.to_string()).ok()?.cpu_secs;
            }
        }
        Some(total)
    }

    /// Stops every gateway.
    async fn shutdown(&self) {
        join_all(self.nodes.iter().map(|node| self.stop(node))).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Redis

async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("--redis-url {url}"))?;
    tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .context("connecting to Redis timed out")?
        .with_context(|| format!("connecting to Redis at {url}"))
}

/// `CLIENT KILL TYPE pubsub`: every gateway loses its subscription. Returns how many
/// connections Redis closed.
async fn redis_kill_pubsub(connection: &mut redis::aio::MultiplexedConnection) -> Result<i64> {
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

/// Publishes with the project's history script, pipelined on one connection (so each
/// region's order is kept).
struct HistoryPublisher {
    connection: redis::aio::MultiplexedConnection,
    script: redis::Script,
    streams: Vec<String>,
    channels: Vec<String>,
    retention: usize,
}

impl HistoryPublisher {
    async fn connect(args: &Args) -> Result<Self> {
        let mut connection = redis_connection(&args.redis_url).await?;
        let script = publish_script();
        load_script(&script, &mut connection).await?;
        let names = ChannelNames::new(args.channel_prefix.as_str());
        Ok(HistoryPublisher {
            connection,
            script,
            streams: args
                .regions
                .iter()
                .map(|region| names.stream_key(*region))
                .collect(),
            channels: args
                .regions
                .iter()
                .map(|region| names.channel(*region))
                .collect(),
            retention: args.retention,
        })
    }

    /// `EVALSHA` for each `(region index, notification)`, in order; returns each message's
    /// id and Redis's subscriber count. Reloads the script once if Redis lost it.
    async fn send(&mut self, batch: &[(usize, Notification)]) -> Result<Vec<(String, i64)>> {
        let mut reloaded = false;
        loop {
            let mut pipe = redis::pipe();
            for (region, notification) in batch {
                pipe.add_command(publish_command(
                    &self.script,
                    &self.streams[*region],
                    &self.channels[*region],
                    notification,
                    self.retention,
                ));
            }
            let reply = tokio::time::timeout(
                REDIS_TIMEOUT,
                pipe.query_async::<Vec<(String, i64)>>(&mut self.connection),
            )
            .await
            .context("publishing timed out")?;
            match reply {
                Ok(replies) => return Ok(replies),
                Err(error) if !reloaded && error.to_string().contains("NOSCRIPT") => {
                    load_script(&self.script, &mut self.connection).await?;
                    reloaded = true;
                }
                Err(error) => return Err(anyhow!(error).context("EVALSHA pipeline")),
            }
        }
    }

    /// Publishes one epoch notification per region (no `seq`: a bench client never expects
    /// it) and returns their ids: where every client's history starts.
    async fn epoch(&mut self, regions: &[Region]) -> Result<Vec<StreamId>> {
        let unix_ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        let batch: Vec<(usize, Notification)> = regions
            .iter()
            .enumerate()
            .map(|(index, region)| {
                let mut message = Notification::new(
                    *region,
                    "benchepoch",
                    "notify-bench chaos: start of run",
                    "https://i.ytimg.com/vi/benchepoch/hqdefault.jpg",
                    "notify-bench ✓",
                    unix_ts,
                );
                message.extra.insert("bench".into(), json!("epoch"));
                (index, message)
            })
            .collect();
        self.send(&batch)
            .await?
            .into_iter()
            .map(|(id, _)| {
                StreamId::parse(&id).with_context(|| format!("script returned id {id:?}"))
            })
            .collect()
    }
}

impl SendLogged for HistoryPublisher {
    async fn send_logged(&mut self, log: &MessageLog, ids: &[(usize, u64)]) -> Result<Vec<i64>> {
        let batch: Vec<(usize, Notification)> = ids
            .iter()
            .map(|&(region, seq)| {
                log.prepare_message(region, seq)
                    .map(|(message, _)| (region, message))
                    .context("message log full")
            })
            .collect::<Result<_>>()?;
        let replies = self.send(&batch).await?;
        Ok(replies
            .into_iter()
            .map(|(_, subscribers)| subscribers)
            .collect())
    }
}

async fn load_script(
    script: &redis::Script,
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<()> {
    tokio::time::timeout(REDIS_TIMEOUT, script.load_async(connection))
        .await
        .context("SCRIPT LOAD timed out")?
        .context("SCRIPT LOAD of the history publish script")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Chaos

/// How many of each action happened.
#[derive(Debug, Default)]
struct ChaosCounts {
    client_drops: AtomicU64,
    link_cuts: AtomicU64,
    pubsub_connections_killed: AtomicU64,
    gateway_restarts: AtomicU64,
    restart_failures: AtomicU64,
}

#[derive(Debug, Serialize)]
struct ChaosSnapshot {
    client_drops: u64,
    link_cuts: u64,
    pubsub_connections_killed: u64,
    gateway_restarts: u64,
    restart_failures: u64,
}

impl ChaosCounts {
    fn snapshot(&self) -> ChaosSnapshot {
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
async fn drop_clients(
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
/// Redis.
async fn cut_links(
    mut connection: redis::aio::MultiplexedConnection,
    mean: Duration,
    until: Instant,
    started: Instant,
    counts: Arc<ChaosCounts>,
) {
    while sleep_spread(mean, 0.5, 1.5, until).await {
        match redis_kill_pubsub(&mut connection).await {
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
async fn restart_gateways(
    fleet: Arc<Fleet>,
    mean: Duration,
    delay: Duration,
    until: Instant,
    started: Instant,
    counts: Arc<ChaosCounts>,
) {
    while sleep_spread(mean, 0.75, 1.25, until).await {
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

// ---------------------------------------------------------------------------------------------
// Clients

/// What every client task shares.
#[derive(Debug)]
struct ClientContext {
    log: Arc<MessageLog>,
    fleet: Arc<Fleet>,
    connector: Connector,
    /// Per region, the id every client starts from.
    epochs: Vec<StreamId>,
    reconnect_delay: Duration,
    max_attempts: u32,
}

/// A client's state as the rest of the run sees it.
#[derive(Debug)]
struct ClientShared {
    region: usize,
    /// The next `seq` the client expects (all before it were received or counted lost).
    next_seq: AtomicU64,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    /// The task has ended (stopped or gave up).
    finished: AtomicBool,
    /// Makes the client close its socket and resume.
    drop_now: Notify,
}

impl ClientShared {
    fn new(region: usize) -> Self {
        ClientShared {
            region,
            next_seq: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            drop_now: Notify::new(),
        }
    }
}

/// Everything one client task saw, returned when it ends.
#[derive(Debug, Default)]
struct ClientReport {
    region: usize,
    tracker: Tracker,
    connections: u64,
    reconnects: u64,
    failed_attempts: u64,
    gave_up: bool,
    /// From a connection's end to the next successful handshake.
    resume_ms: Vec<u32>,
    endings: BTreeMap<String, u64>,
    errors: Vec<String>,
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

async fn client_task(
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
            let path = format!("/?region={region_name}&since={}", report.tracker.last_id);
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
                close(socket).await;
                return Ending::Stop;
            }
            () = shared.drop_now.notified() => {
                close(socket).await;
                return Ending::Dropped;
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    tracker.on_frame(log, shared.region, text.as_bytes());
                    shared.next_seq.store(tracker.next_seq, Ordering::Release);
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

// ---------------------------------------------------------------------------------------------
// Verification

/// One client's view of its region's sequence, across all its connections.
#[derive(Debug, Default)]
struct Tracker {
    /// The next `seq` expected.
    next_seq: u64,
    /// The id of the last message accepted (the `since` of the next resume).
    last_id: StreamId,
    /// Messages received the first time in order, with a rising id.
    clean: u64,
    /// Distinct messages received.
    delivered: u64,
    /// Frames of a message already received.
    duplicates: u64,
    /// Messages that came more than once.
    duplicated: HashSet<u64>,
    /// Times the sequence jumped ahead.
    gaps: u64,
    /// Skipped sequence numbers not received since.
    missing: Vec<Range<u64>>,
    /// Messages that came after a later one, or without a rising id.
    out_of_order: u64,
    /// Messages whose first receipt was not clean.
    unclean: HashSet<u64>,
    /// `resync` control messages.
    resyncs: u64,
    /// Frames that were not exactly a published message.
    corrupt: u64,
    /// Messages of another region.
    wrong_region: u64,
    /// Valid notifications this run did not publish.
    unexpected: u64,
    /// Messages that came without an `id`.
    missing_id: u64,
}

/// One client's verdict.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    expected: u64,
    delivered: u64,
    exactly_once: u64,
    duplicates: u64,
    gaps: u64,
    lost: u64,
    out_of_order: u64,
    resyncs: u64,
    corrupt: u64,
    wrong_region: u64,
    unexpected: u64,
    missing_id: u64,
}

impl Tracker {
    fn new(since: StreamId) -> Self {
        Tracker {
            last_id: since,
            ..Tracker::default()
        }
    }

    /// Takes one text frame of region `region`.
    #[inline]
    fn on_frame(&mut self, log: &MessageLog, region: usize, bytes: &[u8]) {
        if let Some(slot) = log.regions[region].slot(self.next_seq) {
            if let Some(Some(text)) = slot.id_in(bytes) {
                if let Ok(id) = StreamId::parse(text) {
                    if id > self.last_id {
                        self.accept(self.next_seq, id);
                        return;
                    }
                }
            }
        }
        self.classify(log, region, bytes);
    }

    fn accept(&mut self, seq: u64, id: StreamId) {
        self.next_seq = seq + 1;
        self.last_id = id;
        self.clean += 1;
        self.delivered += 1;
    }

    /// The slow path: everything that is not the next message with a rising id.
    #[cold]
    fn classify(&mut self, log: &MessageLog, region: usize, bytes: &[u8]) {
        if bytes.starts_with(br#"{"event":"resync""#) {
            self.resyncs += 1;
            // As a browser would: continue from the newest id the gateway knows.
            if let Ok(ControlMessage::Resync {
                latest: Some(latest),
                ..
            }) = serde_json::from_slice::<ControlMessage>(bytes)
            {
                self.last_id = self.last_id.max(latest);
            }
            return;
        }
        let Ok(message) = Notification::from_slice(bytes, usize::MAX) else {
            self.corrupt += 1;
            return;
        };
        let own = &log.regions[region];
        if message.region != own.region {
            if log.index_of(message.region).is_some() {
                self.wrong_region += 1;
            } else {
                self.unexpected += 1;
            }
            return;
        }
        let Some(seq) = message.extra.get("seq").and_then(Value::as_u64) else {
            self.unexpected += 1;
            return;
        };
        let Some(slot) = own.slot(seq) else {
            self.unexpected += 1;
            return;
        };
        let Some(id_text) = slot.id_in(bytes) else {
            self.corrupt += 1;
            return;
        };
        let id = id_text.and_then(|text| StreamId::parse(text).ok());
        if id.is_none() {
            self.missing_id += 1;
        }
        let expected = self.next_seq;
        if seq >= expected {
            if seq > expected {
                self.gaps += 1;
                self.missing.push(expected..seq);
            }
            match id {
                Some(id) if id > self.last_id => self.accept(seq, id),
                _ => {
                    if id.is_some() {
                        self.out_of_order += 1;
                    }
                    self.unclean.insert(seq);
                    self.delivered += 1;
                    self.next_seq = seq + 1;
                    if let Some(id) = id {
                        self.last_id = self.last_id.max(id);
                    }
                }
            }
            return;
        }
        match self.missing.iter().position(|range| range.contains(&seq)) {
            Some(position) => {
                // A skipped message arriving late.
                let range = self.missing.swap_remove(position);
                if range.start < seq {
                    self.missing.push(range.start..seq);
                }
                if seq + 1 < range.end {
                    self.missing.push(seq + 1..range.end);
                }
                self.out_of_order += 1;
                self.unclean.insert(seq);
                self.delivered += 1;
            }
            None => {
                self.duplicates += 1;
                self.duplicated.insert(seq);
            }
        }
    }

    /// Judges against the region's `published` messages (sequence numbers `0..published`).
    fn verdict(&self, published: u64) -> Verdict {
        let skipped: u64 = self
            .missing
            .iter()
            .map(|range| range.end.min(published).saturating_sub(range.start))
            .sum();
        let tail = published.saturating_sub(self.next_seq);
        let duplicated_clean = self
            .duplicated
            .iter()
            .filter(|seq| !self.unclean.contains(seq))
            .count() as u64;
        Verdict {
            expected: published,
            delivered: self.delivered,
            exactly_once: self.clean.saturating_sub(duplicated_clean),
            duplicates: self.duplicates,
            gaps: self.gaps,
            lost: skipped + tail,
            out_of_order: self.out_of_order,
            resyncs: self.resyncs,
            corrupt: self.corrupt,
            wrong_region: self.wrong_region,
            unexpected: self.unexpected,
            missing_id: self.missing_id,
        }
    }
}

/// Sums of every client's verdict.
#[derive(Debug, Default, Clone, Serialize)]
struct Totals {
    /// Clients judged (connected at least once).
    clients: u64,
    /// Messages published.
    published: u64,
    /// Sum over clients of their region's messages.
    expected_deliveries: u64,
    /// Distinct messages received.
    delivered: u64,
    /// Messages received exactly once, in order, with a rising id.
    exactly_once: u64,
    /// Frames of a message already received.
    duplicates: u64,
    /// Jumps ahead in a client's sequence.
    gaps: u64,
    /// Expected messages never received.
    lost: u64,
    /// Messages received after a later one, or without a rising id.
    out_of_order: u64,
    /// `resync` control messages received.
    resyncs: u64,
    /// Frames that were not exactly a published message.
    corrupt: u64,
    /// Messages of another region.
    wrong_region: u64,
    /// Valid notifications this run did not publish (another publisher).
    unexpected: u64,
    /// Messages without an `id`.
    missing_id: u64,
}

impl Totals {
    fn add(&mut self, verdict: &Verdict) {
        self.clients += 1;
        self.expected_deliveries += verdict.expected;
        self.delivered += verdict.delivered;
        self.exactly_once += verdict.exactly_once;
        self.duplicates += verdict.duplicates;
        self.gaps += verdict.gaps;
        self.lost += verdict.lost;
        self.out_of_order += verdict.out_of_order;
        self.resyncs += verdict.resyncs;
        self.corrupt += verdict.corrupt;
        self.wrong_region += verdict.wrong_region;
        self.unexpected += verdict.unexpected;
        self.missing_id += verdict.missing_id;
    }

    fn failed(&self) -> bool {
        self.exactly_once != self.expected_deliveries
            || self.delivered != self.expected_deliveries
            || self.duplicates
                + self.gaps
                + self.lost
                + self.out_of_order
                + self.resyncs
                + self.corrupt
                + self.wrong_region
                + self.missing_id
                > 0
    }
}

/// What happened to the clients as connections.
#[derive(Debug, Default)]
struct Population {
    never_connected: u64,
    gave_up: u64,
    unjoined: u64,
    connections: u64,
    reconnects: u64,
    failed_attempts: u64,
    endings: BTreeMap<String, u64>,
    errors: Vec<String>,
}

impl Population {
    fn add(&mut self, report: &ClientReport) {
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

    fn failed(&self) -> bool {
        self.never_connected + self.gave_up + self.unjoined > 0
    }
}

/// `part / whole` in percent, rounded *down* to three decimals (so anything short of every
/// delivery never shows as 100.000).
fn percentage(part: u64, whole: u64) -> Option<f64> {
    if whole == 0 {
        return None;
    }
    let thousandths = (u128::from(part) * 100_000) / u128::from(whole);
    Some(thousandths as f64 / 1000.0)
}

fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn show<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |value| value.to_string())
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const AE: usize = 0;

    /// A log of 6 AE messages; frame `seq` carries id `100+seq`.
    fn log() -> MessageLog {
        let regions = [Region::parse("AE").unwrap(), Region::parse("FI").unwrap()];
        let log = MessageLog::new(&regions, 10);
        for seq in 0..6 {
            log.prepare(0, seq).unwrap();
            log.prepare(1, seq).unwrap();
        }
        log.regions[0].set_published(6);
        log.regions[1].set_published(6);
        log
    }

    fn frame_with_id(log: &MessageLog, region: usize, seq: u64, id: u64) -> Vec<u8> {
        let frame = &log.regions[region].slot(seq).unwrap().frame;
        let mut message = Notification::from_slice(frame.as_bytes(), usize::MAX).unwrap();
        message.id = Some(StreamId::new(id, 0));
        message.to_json().into_bytes()
    }

    fn frame(log: &MessageLog, seq: u64) -> Vec<u8> {
        frame_with_id(log, AE, seq, 100 + seq)
    }

    #[test]
    fn clean_resumed_delivery_is_exactly_once() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        for seq in 0..6 {
            tracker.on_frame(&log, AE, &frame(&log, seq));
        }
        assert_eq!(tracker.last_id, StreamId::new(105, 0));
        let verdict = tracker.verdict(6);
        assert_eq!(
            verdict,
            Verdict {
                expected: 6,
                delivered: 6,
                exactly_once: 6,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn duplicates_gaps_late_arrivals_and_resyncs_are_counted() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        tracker.on_frame(&log, AE, &frame(&log, 0));
        tracker.on_frame(&log, AE, &frame(&log, 0)); // duplicate
        tracker.on_frame(&log, AE, &frame(&log, 3)); // gap: 1 and 2 skipped
        tracker.on_frame(&log, AE, &frame(&log, 1)); // late
        tracker.on_frame(&log, AE, &frame_with_id(&log, 1, 4, 104)); // wrong region
        tracker.on_frame(&log, AE, b"{nope"); // corrupt
        let resync = ControlMessage::Resync {
            region: Region::parse("AE").unwrap(),
            since: StreamId::new(103, 0),
            latest: Some(StreamId::new(200, 0)),
            reason: "test".into(),
        };
        tracker.on_frame(&log, AE, resync.to_json().as_bytes());
        assert_eq!(tracker.last_id, StreamId::new(200, 0));
        // After the resync, id 104 is not above the last id: out of order.
        tracker.on_frame(&log, AE, &frame(&log, 4));
        let verdict = tracker.verdict(6);
        assert_eq!(verdict.expected, 6);
        // 0, 3, 1, 4 received; 2 and 5 lost.
        assert_eq!(verdict.delivered, 4);
        assert_eq!(verdict.lost, 2);
        assert_eq!(verdict.gaps, 1);
        assert_eq!(verdict.duplicates, 1);
        assert_eq!(verdict.out_of_order, 2);
        assert_eq!(verdict.resyncs, 1);
        assert_eq!(verdict.wrong_region, 1);
        assert_eq!(verdict.corrupt, 1);
        // 0 came twice, 1 late, 4 with a stale id: only 3 was exactly once.
        assert_eq!(verdict.exactly_once, 1);
    }

    #[test]
    fn ids_must_rise_and_be_present() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        tracker.on_frame(&log, AE, &frame_with_id(&log, AE, 0, 50));
        let bare = log.regions[AE].slot(1).unwrap().frame.as_bytes().to_vec();
        tracker.on_frame(&log, AE, &bare);
        tracker.on_frame(&log, AE, &frame(&log, 2));
        let verdict = tracker.verdict(3);
        assert_eq!(verdict.delivered, 3);
        assert_eq!(verdict.out_of_order, 1);
        assert_eq!(verdict.missing_id, 1);
        assert_eq!(verdict.exactly_once, 1);
    }

    #[test]
    fn percentages_never_round_up_to_complete() {
        assert_eq!(percentage(10, 10), Some(100.0));
        assert_eq!(percentage(999_999, 1_000_000), Some(99.999));
        assert_eq!(percentage(9_999_999, 10_000_000), Some(99.999));
        assert_eq!(percentage(0, 0), None);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.99), Some(4));
    }
}

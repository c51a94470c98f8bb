//! The four scenarios (idle, fanout, latency, churn) and the report each one produces; their
//! clients speak `--transport` ([`crate::transport`]).
//!
//! Every scenario is bounded by the run's deadline (`--timeout`): connecting, publishing and
//! waiting for deliveries all stop when it passes, and whatever was measured is reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cli::{Args, Scenario, Via};
use crate::client::{ClientStats, Connector, Running};
use crate::latency::{self, Percentiles};
use crate::messages::{now_ns, MessageLog};
use crate::procstat::{self, ProcSample};
use crate::publish::{self, per_region, PublishOutcome, Publisher};
use crate::report::{round1, round3, show, Outcome, Totals};
use crate::transport::open_client;

/// Everything a scenario needs.
#[derive(Debug)]
pub struct Bench {
    /// The flags.
    pub args: Args,
    /// `http://addr`.
    pub gateway_url: String,
    http: reqwest::Client,
    connector: Arc<Connector>,
    log: Arc<MessageLog>,
    pid: Option<u32>,
    deadline: Instant,
    sources: Vec<std::net::IpAddr>,
}

/// Result of connecting a batch of clients.
#[derive(Debug, Default)]
struct Connected {
    clients: Vec<Running>,
    failures: u64,
    errors: Vec<String>,
    secs: f64,
}

impl Bench {
    /// Checks the gateway is up, serves the regions, and sets up the connector and log.
    pub async fn new(args: Args, gateway: SocketAddr) -> Result<Self> {
        let deadline = Instant::now() + args.timeout;
        let tls = args
            .tls_ca
            .as_deref()
            .map(crate::client::tls_config)
            .transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let gateway_url = format!("{scheme}://{gateway}");
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(tls) = &tls {
            http = http.tls_backend_preconfigured(rustls::ClientConfig::clone(tls));
        }
        let http = http.build().context("building the HTTP client")?;
        let ready_by = (Instant::now() + Duration::from_secs(10)).min(deadline);
        loop {
            match http.get(format!("{gateway_url}/readyz")).send().await {
                Ok(response) if response.status().is_success() => break,
                outcome if Instant::now() >= ready_by => {
                    let why = match outcome {
                        Ok(response) => format!("HTTP {}", response.status()),
                        Err(error) => error.to_string(),
                    };
                    bail!("gateway at {gateway_url} is not ready (/readyz: {why})");
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        if let Ok(response) = http.get(format!("{gateway_url}/api/info")).send().await {
            if let Ok(info) = response.json::<Value>().await {
                if let Some(served) = info["regions"].as_array() {
                    let served: Vec<&str> = served.iter().filter_map(Value::as_str).collect();
                    if let Some(missing) = args
                        .regions
                        .iter()
                        .find(|region| !served.contains(&region.as_str()))
                    {
                        bail!("the gateway does not serve region {missing} (it serves {served:?}); adjust --regions");
                    }
                }
            }
        }
        let pid = match args.gateway_pid {
            Some(pid) => Some(pid),
            None => match procstat::find_gateway_pid(gateway.port()) {
                Ok(pid) => Some(pid),
                Err(error) => {
                    eprintln!("notify-bench: warning: {error:#}; gateway RSS/CPU not reported");
                    None
                }
            },
        };
        let capacity = match args.scenario {
            Scenario::Idle => 0,
            Scenario::Fanout => per_region(args.messages, args.regions.len(), 0),
            Scenario::Latency | Scenario::Churn => {
                per_region(args.steady_messages(), args.regions.len(), 0)
            }
            Scenario::Chaos
            | Scenario::Soak
            | Scenario::SendFloor
            | Scenario::Scale
            | Scenario::ScaleWorker => {
                bail!("chaos, soak, scale and send-floor do not measure a running gateway")
            }
        };
        let log = Arc::new(MessageLog::new(&args.regions, capacity));
        let sources = crate::cli::source_ips(
            gateway,
            args.source_ips,
            crate::cli::source_block(args.fixed_sources),
        );
        let mut connector = Connector::new(gateway, sources.clone(), args.connect_concurrency);
        if let Some(tls) = tls {
            connector = connector.with_tls(tls);
        }
        let connector = Arc::new(connector);
        Ok(Bench {
            args,
            gateway_url,
            http,
            connector,
            log,
            pid,
            deadline,
            sources,
        })
    }

    /// Runs the chosen scenario and returns its JSON report and whether it failed.
    pub async fn run(&self) -> Result<Outcome> {
        match self.args.scenario {
            Scenario::Idle => self.idle().await,
            Scenario::Fanout => self.fanout().await,
            Scenario::Latency => self.latency().await,
            Scenario::Churn => self.churn().await,
            Scenario::Chaos
            | Scenario::Soak
            | Scenario::SendFloor
            | Scenario::Scale
            | Scenario::ScaleWorker => {
                bail!("chaos, soak, scale and send-floor do not measure a running gateway")
            }
        }
    }

    fn gateway_sample(&self) -> Option<ProcSample> {
        let pid = self.pid?;
        procstat::sample(&pid.to_string()).ok()
    }

    async fn publisher(&self) -> Result<Publisher> {
        match self.args.via {
            Via::Redis => {
                Publisher::redis(
                    &self.args.redis_url,
                    self.args.redis_cluster,
                    &self.args.channel_prefix,
                    &self.log,
                )
                .await
            }
            Via::Http => Publisher::http(
                &self.gateway_url,
                self.args.api_key.clone(),
                self.args.pipeline,
            ),
        }
    }

    /// Opens `count` clients (client `first + i` gets region `(first + i) % regions`, and with
    /// `--regions-per-client` the regions after it too, on the same connection).
    async fn connect(&self, first: usize, count: usize) -> Connected {
        let started = Instant::now();
        let mut set = JoinSet::new();
        let regions = &self.args.regions;
        for index in first..first + count {
            let region = index % regions.len();
            let name = (0..self.args.regions_per_client)
                .map(|next| regions[(region + next) % regions.len()].as_str())
                .collect::<Vec<_>>()
                .join(",");
            let connector = self.connector.clone();
            let log = self.log.clone();
            let transport = self.args.transport;
            set.spawn(async move { open_client(&connector, transport, &name, region, log).await });
        }
        let mut connected = Connected::default();
        loop {
            match tokio::time::timeout_at(self.deadline, set.join_next()).await {
                Ok(Some(Ok(Ok(running)))) => connected.clients.push(running),
                Ok(Some(Ok(Err(error)))) => {
                    connected.failures += 1;
                    if connected.errors.len() < 3 {
                        connected.errors.push(format!("{error:#}"));
                    }
                }
                Ok(Some(Err(join))) => {
                    connected.failures += 1;
                    connected.errors.push(join.to_string());
                }
                Ok(None) => break,
                Err(_) => {
                    connected.failures += set.len() as u64;
                    connected
                        .errors
                        .push("overall --timeout reached while connecting".into());
                    set.abort_all();
                    break;
                }
            }
        }
        connected.secs = started.elapsed().as_secs_f64();
        connected
    }

    /// Connections the gateway counts, when it exports them: the sum of
    /// `notify_connections_by_transport` (each connection once), or of the per-region
    /// `notify_connections` from a gateway without it (a connection to several regions is in
    /// each of their gauges).
    async fn gateway_connections(&self) -> Option<f64> {
        let body = self
            .http
            .get(format!("{}/metrics", self.gateway_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        gauge_sum(&body, "notify_connections_by_transport")
            .or_else(|| gauge_sum(&body, "notify_connections"))
    }

    /// Waits (up to 10 s) until the gateway counts at least `count` connections, then settles.
    async fn settle(&self, count: usize) -> Option<f64> {
        let until = (Instant::now() + Duration::from_secs(10)).min(self.deadline);
        let mut seen = None;
        while Instant::now() < until {
            seen = self.gateway_connections().await;
            match seen {
                Some(total) if total >= count as f64 => break,
                None => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let settle_until = (Instant::now() + self.args.settle).min(self.deadline);
        tokio::time::sleep_until(settle_until).await;
        seen
    }

    /// Makes every client leave and waits (bounded) for their readers to finish.
    async fn stop(&self, clients: Vec<Running>) -> Vec<Arc<ClientStats>> {
        let mut stats = Vec::with_capacity(clients.len());
        let mut tasks = Vec::with_capacity(clients.len());
        for client in clients {
            let _ = client.leave.send(());
            stats.push(client.stats);
            tasks.push(client.task);
        }
        join_bounded(tasks, Duration::from_secs(5)).await;
        stats
    }

    fn judge(&self, stats: &[Arc<ClientStats>], strict: bool, end_ns: u64) -> Totals {
        let grace = self.args.grace.as_nanos() as u64;
        let mut totals = Totals::default();
        for client in stats {
            totals.add(&client.verdict(client.required(&self.log, strict, grace, end_ns)));
        }
        totals
    }

    /// Waits until every client has all its region's published messages, the deadline passes,
    /// or nothing arrives for 5 s. Returns the deliveries and when the last one was seen.
    async fn await_deliveries(&self, clients: &[Running]) -> (u64, Instant) {
        let expected: u64 = clients
            .iter()
            .map(|client| self.log.regions[client.stats.region].published())
            .sum();
        let mut last_total = 0;
        let mut last_progress = Instant::now();
        loop {
            let total: u64 = clients.iter().map(|client| client.stats.accepted()).sum();
            let now = Instant::now();
            if total != last_total {
                last_total = total;
                last_progress = now;
            }
            if total >= expected
                || now >= self.deadline
                || now - last_progress > Duration::from_secs(5)
                || clients.iter().all(|client| client.stats.is_closed())
            {
                return (total, last_progress);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn common(&self) -> serde_json::Map<String, Value> {
        let args = &self.args;
        let mut report = serde_json::Map::new();
        report.insert("scenario".into(), json!(args.scenario));
        report.insert(
            "params".into(),
            json!({
                "gateway": self.gateway_url,
                "transport": args.transport,
                "via": args.via,
                "redis_url": (args.via == Via::Redis).then_some(&args.redis_url),
                "regions": args.regions.iter().map(|region| region.as_str()).collect::<Vec<_>>(),
                "clients": args.clients,
                "messages": (args.scenario == Scenario::Fanout).then_some(args.messages),
                "rate": matches!(args.scenario, Scenario::Latency | Scenario::Churn).then_some(args.rate),
                "duration_secs": matches!(args.scenario, Scenario::Latency | Scenario::Churn)
                    .then_some(args.duration.as_secs_f64()),
                "churn_rate": (args.scenario == Scenario::Churn).then_some(args.churn_rate),
                "grace_ms": (args.scenario == Scenario::Churn).then_some(args.grace.as_millis() as u64),
                "connect_concurrency": args.connect_concurrency,
                "source_ips": self.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "pipeline": args.pipeline,
                "threads": args.threads,
                "timeout_secs": args.timeout.as_secs_f64(),
            }),
        );
        report
    }

    fn gateway_report(
        &self,
        before: Option<ProcSample>,
        after: Option<ProcSample>,
        extra: Value,
    ) -> Value {
        let mut gateway = json!({
            "pid": self.pid,
            "rss_kib_before": before.map(|sample| sample.rss_kib),
            "rss_kib_after": after.map(|sample| sample.rss_kib),
            "cpu_secs": before.zip(after).map(|(b, a)| round3(a.cpu_secs - b.cpu_secs)),
        });
        if let (Value::Object(gateway), Value::Object(extra)) = (&mut gateway, extra) {
            gateway.extend(extra);
        }
        gateway
    }

    async fn idle(&self) -> Result<Outcome> {
        let count = self.args.clients;
        let before = self.gateway_sample();
        let me_before = procstat::sample("self").ok();
        let connected = self.connect(0, count).await;
        let during = self.gateway_sample();
        let counted = self.settle(connected.clients.len()).await;
        let after = self.gateway_sample();
        let me_after = procstat::sample("self").ok();
        let stats = self.stop(connected.clients).await;
        let totals = self.judge(&stats, true, now_ns());
        let n = stats.len() as f64;
        let per_connection = before
            .zip(after)
            .filter(|_| n > 0.0)
            .map(|(b, a)| ((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / n).round());
        let mut report = self.common();
        report.insert("connected".into(), json!(stats.len()));
        report.insert("handshake_failures".into(), json!(connected.failures));
        report.insert("handshake_errors".into(), json!(connected.errors));
        report.insert("connect_secs".into(), json!(round3(connected.secs)));
        report.insert(
            "handshakes_per_sec".into(),
            json!(round1(n / connected.secs.max(1e-9))),
        );
        report.insert("gateway_counted".into(), json!(counted));
        report.insert(
            "gateway".into(),
            self.gateway_report(
                before,
                after,
                json!({
                    "rss_bytes_per_connection": per_connection,
                    "cpu_secs_connecting": before.zip(during).map(|(b, d)| round3(d.cpu_secs - b.cpu_secs)),
                }),
            ),
        );
        report.insert("generator".into(), generator_report(me_before, me_after));
        let mut failures = totals.failures(false);
        if connected.failures > 0 {
            failures.push(format!("handshakes failed: {}", connected.failures));
        }
        if totals.unexpected > 0 {
            failures.push(format!("unexpected: {}", totals.unexpected));
        }
        report.insert("totals".into(), json!(totals));
        eprintln!(
            "idle: {} clients in {:.2}s ({:.0} handshakes/s, {} failed); gateway RSS {} -> {} KiB ({} bytes/connection)",
            stats.len(),
            connected.secs,
            n / connected.secs.max(1e-9),
            connected.failures,
            show(before.map(|s| s.rss_kib)),
            show(after.map(|s| s.rss_kib)),
            show(per_connection),
        );
        Ok(Outcome::new(report, failures))
    }

    async fn fanout(&self) -> Result<Outcome> {
        let mut publisher = self.publisher().await?;
        let connected = self.connect(0, self.args.clients).await;
        self.settle(connected.clients.len()).await;
        let regions = self.args.regions.len();
        let before = self.gateway_sample();
        let me_before = procstat::sample("self").ok();
        let started = Instant::now();
        let outcome = publish::burst(
            &mut publisher,
            &self.log,
            self.args.messages,
            self.args.pipeline,
            self.deadline,
        )
        .await?;
        let (delivered, last_delivery) = self.await_deliveries(&connected.clients).await;
        let after = self.gateway_sample();
        let me_after = procstat::sample("self").ok();
        let window = (last_delivery.max(started) - started)
            .as_secs_f64()
            .max(1e-9);
        let clients = connected.clients.len();
        let stats = self.stop(connected.clients).await;
        let totals = self.judge(&stats, true, now_ns());
        let cpu = before.zip(after).map(|(b, a)| a.cpu_secs - b.cpu_secs);
        let mut report = self.common();
        report.insert("connected".into(), json!(clients));
        report.insert("handshake_failures".into(), json!(connected.failures));
        report.insert("handshake_errors".into(), json!(connected.errors));
        report.insert(
            "handshakes_per_sec".into(),
            json!(round1(clients as f64 / connected.secs.max(1e-9))),
        );
        report.insert("publish".into(), json!(outcome));
        report.insert("delivery_secs".into(), json!(round3(window)));
        report.insert(
            "deliveries_per_sec".into(),
            json!(round1(delivered as f64 / window)),
        );
        report.insert(
            "messages_per_sec".into(),
            json!(round1(outcome.published as f64 / window)),
        );
        report.insert(
            "latency_ms".into(),
            json!(Percentiles::of(&latency::merged())),
        );
        report.insert(
            "gateway".into(),
            self.gateway_report(
                before,
                after,
                json!({
                    "cpu_us_per_delivery": cpu.filter(|_| delivered > 0)
                        .map(|cpu| round3(cpu * 1e6 / delivered as f64)),
                }),
            ),
        );
        report.insert("generator".into(), generator_report(me_before, me_after));
        let failures = failures_of(&totals, &outcome, 0);
        report.insert("totals".into(), json!(totals));
        eprintln!(
            "fanout: {clients} clients x {} messages over {regions} regions: {delivered}/{} deliveries in {:.3}s ({:.0}/s); gateway CPU {} s ({} us/delivery)",
            outcome.published,
            totals.expected_deliveries,
            window,
            delivered as f64 / window,
            show(cpu.map(round3)),
            show(cpu.filter(|_| delivered > 0).map(|cpu| round3(cpu * 1e6 / delivered as f64))),
        );
        eprintln!("  {}", totals.summary_line());
        Ok(Outcome::new(report, failures))
    }

    async fn latency(&self) -> Result<Outcome> {
        let mut publisher = self.publisher().await?;
        let connected = self.connect(0, self.args.clients).await;
        self.settle(connected.clients.len()).await;
        let before = self.gateway_sample();
        let me_before = procstat::sample("self").ok();
        let outcome = publish::steady(
            &mut publisher,
            &self.log,
            self.args.rate,
            self.args.steady_messages(),
            self.args.pipeline,
            self.deadline,
        )
        .await?;
        let (delivered, _) = self.await_deliveries(&connected.clients).await;
        let after = self.gateway_sample();
        let me_after = procstat::sample("self").ok();
        let clients = connected.clients.len();
        let stats = self.stop(connected.clients).await;
        let totals = self.judge(&stats, true, now_ns());
        let percentiles = Percentiles::of(&latency::merged());
        let mut report = self.common();
        report.insert("connected".into(), json!(clients));
        report.insert("handshake_failures".into(), json!(connected.failures));
        report.insert("handshake_errors".into(), json!(connected.errors));
        report.insert("publish".into(), json!(outcome));
        report.insert("delivered".into(), json!(delivered));
        report.insert("latency_ms".into(), json!(percentiles));
        report.insert(
            "gateway".into(),
            self.gateway_report(before, after, json!({})),
        );
        report.insert("generator".into(), generator_report(me_before, me_after));
        let failures = failures_of(&totals, &outcome, 0);
        report.insert("totals".into(), json!(totals));
        match &percentiles {
            Some(p) => eprintln!(
                "latency: {clients} clients, {} msg at {}/s: p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ({} samples)",
                outcome.published, self.args.rate, p.p50, p.p90, p.p99, p.p999, p.max, p.count
            ),
            None => eprintln!("latency: no deliveries recorded"),
        }
        eprintln!("  {}", totals.summary_line());
        Ok(Outcome::new(report, failures))
    }

    async fn churn(&self) -> Result<Outcome> {
        let publisher = self.publisher().await?;
        let population = self.args.clients;
        let initial = self.connect(0, population).await;
        self.settle(initial.clients.len()).await;
        let mut churn = ChurnState {
            handshakes: initial.clients.len() as u64,
            failures: initial.failures,
            errors: initial.errors,
            slots: initial.clients.into_iter().map(Some).collect(),
            finished_stats: Vec::new(),
            finished_tasks: Vec::new(),
        };
        churn.slots.resize_with(population, || None);

        let before = self.gateway_sample();
        let me_before = procstat::sample("self").ok();
        let log = self.log.clone();
        let (rate, total, pipeline, deadline) = (
            self.args.rate,
            self.args.steady_messages(),
            self.args.pipeline,
            self.deadline,
        );
        let publishing = tokio::spawn(async move {
            let mut publisher = publisher;
            publish::steady(&mut publisher, &log, rate, total, pipeline, deadline).await
        });

        let started = Instant::now();
        let churn_end = (started + self.args.duration).min(self.deadline);
        let period = Duration::from_secs_f64(1.0 / self.args.churn_rate);
        let mut reconnects: JoinSet<(usize, Result<Running>)> = JoinSet::new();
        let mut tick = 0u64;
        let mut leaves = 0u64;
        let mut next_index = population;
        loop {
            let due = started + period.mul_f64(tick as f64);
            if due >= churn_end {
                break;
            }
            tokio::time::sleep_until(due).await;
            tick += 1;
            let slot = (tick as usize - 1) % population;
            if let Some(running) = churn.slots[slot].take() {
                leaves += 1;
                churn.retire(running);
            }
            let index = next_index;
            next_index += 1;
            let region = index % self.args.regions.len();
            let name = self.args.regions[region].as_str().to_owned();
            let connector = self.connector.clone();
            let log = self.log.clone();
            let transport = self.args.transport;
            reconnects.spawn(async move {
                let outcome = open_client(&connector, transport, &name, region, log).await;
                (slot, outcome)
            });
            while let Some(joined) = reconnects.try_join_next() {
                if let Ok(outcome) = joined {
                    churn.place(outcome);
                }
            }
        }
        let churn_secs = started.elapsed().as_secs_f64();
        let outcome: PublishOutcome =
            match tokio::time::timeout_at(self.deadline + Duration::from_secs(1), publishing).await
            {
                Ok(Ok(result)) => result?,
                Ok(Err(join)) => bail!("publisher task failed: {join}"),
                Err(_) => bail!("publisher did not finish by the deadline"),
            };
        while let Ok(Some(joined)) =
            tokio::time::timeout_at(self.deadline, reconnects.join_next()).await
        {
            if let Ok(outcome) = joined {
                churn.place(outcome);
            }
        }
        reconnects.abort_all();
        // Let the last messages arrive before everyone leaves.
        let drain_until =
            (Instant::now() + self.args.grace + Duration::from_secs(1)).min(self.deadline);
        tokio::time::sleep_until(drain_until).await;
        let after = self.gateway_sample();
        let me_after = procstat::sample("self").ok();
        let ChurnState {
            slots,
            handshakes,
            failures,
            errors,
            finished_stats,
            finished_tasks,
        } = churn;
        let remaining: Vec<Running> = slots.into_iter().flatten().collect();
        let end_ns = now_ns();
        let mut stats = self.stop(remaining).await;
        join_bounded(finished_tasks, Duration::from_secs(5)).await;
        stats.extend(finished_stats);
        let totals = self.judge(&stats, false, end_ns);
        let mut report = self.common();
        report.insert("handshakes".into(), json!(handshakes));
        report.insert("handshake_failures".into(), json!(failures));
        report.insert("handshake_errors".into(), json!(errors));
        report.insert("leaves".into(), json!(leaves));
        report.insert(
            "churn_handshakes_per_sec".into(),
            json!(round1(tick as f64 / churn_secs.max(1e-9))),
        );
        report.insert("publish".into(), json!(outcome));
        report.insert(
            "latency_ms".into(),
            json!(Percentiles::of(&latency::merged())),
        );
        report.insert(
            "gateway".into(),
            self.gateway_report(before, after, json!({})),
        );
        report.insert("generator".into(), generator_report(me_before, me_after));
        let failed = failures_of(&totals, &outcome, failures);
        report.insert("totals".into(), json!(totals));
        eprintln!(
            "churn: population {population}, {leaves} left and {} replacements attempted ({handshakes} handshakes ok, {failures} failed) while {} messages flowed at {}/s",
            tick, outcome.published, self.args.rate
        );
        eprintln!("  {}", totals.summary_line());
        Ok(Outcome::new(report, failed))
    }
}

/// Clients of the churn scenario: a fixed number of slots, each holding the client currently
/// occupying it, plus everything that has left.
#[derive(Debug)]
struct ChurnState {
    slots: Vec<Option<Running>>,
    handshakes: u64,
    failures: u64,
    errors: Vec<String>,
    finished_stats: Vec<Arc<ClientStats>>,
    finished_tasks: Vec<JoinHandle<()>>,
}

impl ChurnState {
    /// Makes a client leave and keeps its stats for judging.
    fn retire(&mut self, running: Running) {
        let _ = running.leave.send(());
        self.finished_stats.push(running.stats);
        self.finished_tasks.push(running.task);
    }

    /// Puts a finished reconnect into its slot (or retires it at once when the slot was
    /// refilled meanwhile).
    fn place(&mut self, (slot, outcome): (usize, Result<Running>)) {
        match outcome {
            Ok(running) => {
                self.handshakes += 1;
                if self.slots[slot].is_none() {
                    self.slots[slot] = Some(running);
                } else {
                    self.retire(running);
                }
            }
            Err(error) => {
                self.failures += 1;
                if self.errors.len() < 3 {
                    self.errors.push(format!("{error:#}"));
                }
            }
        }
    }
}

/// Awaits tasks for at most `limit` in total, aborting the stragglers.
pub(crate) async fn join_bounded(tasks: Vec<JoinHandle<()>>, limit: Duration) {
    let until = Instant::now() + limit;
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(until, task).await.is_err() {
            abort.abort();
        }
    }
}

fn generator_report(before: Option<ProcSample>, after: Option<ProcSample>) -> Value {
    json!({
        "rss_kib": after.map(|sample| sample.rss_kib),
        "cpu_secs": before.zip(after).map(|(b, a)| round3(a.cpu_secs - b.cpu_secs)),
    })
}

/// The delivery checks that failed, plus publishing cut short and failed handshakes.
fn failures_of(totals: &Totals, outcome: &PublishOutcome, handshake_failures: u64) -> Vec<String> {
    let mut failures = totals.failures(false);
    if outcome.cut_short {
        failures.push(format!(
            "publishing cut short by --timeout after {}",
            outcome.published
        ));
    }
    if handshake_failures > 0 {
        failures.push(format!("handshakes failed: {handshake_failures}"));
    }
    failures
}

/// The sum of every sample of the gauge `name` in a Prometheus text `body` (with or without
/// labels), or `None` when it has none.
fn gauge_sum(body: &str, name: &str) -> Option<f64> {
    let mut seen = false;
    let total = body
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .inspect(|_| seen = true)
        .sum();
    seen.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::gauge_sum;

    #[test]
    fn connections_are_counted_once_when_the_gateway_says_by_transport() {
        let body = "# TYPE notify_connections gauge\n\
                    notify_connections{region=\"AE\"} 3\n\
                    notify_connections{region=\"FI\"} 3\n\
                    notify_connections_by_transport{transport=\"websocket\"} 2\n\
                    notify_connections_by_transport{transport=\"sse\"} 1\n\
                    notify_connections_max 100\n";
        assert_eq!(
            gauge_sum(body, "notify_connections_by_transport"),
            Some(3.0)
        );
        assert_eq!(gauge_sum(body, "notify_connections"), Some(6.0));
        assert_eq!(gauge_sum(body, "notify_sockets_open"), None);
    }
}

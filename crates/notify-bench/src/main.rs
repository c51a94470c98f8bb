//! `notify-bench`: a load generator that measures a running notify gateway from outside.
//!
//! It opens WebSocket or Server-Sent Events clients over loopback, publishes numbered
//! notifications through Redis or the gateway's HTTP API, verifies every delivery byte for byte, and reports one JSON line on
//! stdout (plus a short summary on stderr). Exit status: 0 when every required message arrived
//! exactly once and in order, 1 when anything was lost, duplicated, reordered, misrouted or
//! corrupted (unless `--allow-loss`), 2 when the run could not be carried out.
//!
//! # Layout
//! - [`cli`]: flags, limits, the loopback-only rule.
//! - [`client`]: WebSocket clients: connecting, the per-client reader and its verification.
//! - [`sse_client`]: Server-Sent Events clients, verified the same way.
//! - [`event_stream`]: parsing a `text/event-stream`.
//! - [`transport`]: `--transport websocket|sse`, opening a client of either.
//! - [`messages`]: the log of published frames the readers compare against.
//! - [`publish`]: Redis and HTTP publishing, burst and steady.
//! - [`latency`]: HDR histograms of publish-to-client latency.
//! - [`procstat`]: RSS and CPU of the gateway and of this process from /proc.
//! - [`scenario`]: idle, fanout, latency and churn, against a running gateway.
//! - [`chaos`]: starts its own gateways and breaks things while verifying resumes.
//! - [`soak`]: runs for hours: churn, plain and id-carrying messages, every kind of fault on
//!   a schedule, progress lines, and a verdict on delivery, memory, descriptors, reconnects
//!   and readiness.
//! - [`scale`]: more clients than one process holds: its own gateways and client
//!   processes (re-executions of this binary), idle memory, fan-out, Redis CPU, and a
//!   reconnect storm.
//! - [`fleet`]: the gateway processes `chaos`, `soak` and `scale` start, stop and restart.
//! - [`history_publisher`]: publishing id-carrying messages with the project's script.
//! - [`resuming`]: clients that reconnect with `?since=` whenever their connection ends.
//! - [`plain`]: id-less live messages and which of them each client was owed.
//! - [`tracker`]: exactly-once verification of a resuming client.
//! - [`floor`]: `send-floor`, the bare cost of the kernel's sends a fan-out is made of.
//! - [`report`]: verdicts, totals, the JSON line and the exit status, for every scenario.

mod chaos;
mod cli;
mod client;
mod event_stream;
mod fleet;
mod floor;
mod history_publisher;
mod latency;
mod messages;
mod plain;
mod procstat;
mod publish;
mod report;
mod resuming;
mod scale;
mod scenario;
mod soak;
mod sse_client;
mod tracker;
mod transport;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Args, Scenario};

fn main() -> ExitCode {
    // reqwest and tokio-tungstenite use rustls without choosing a crypto provider; ring is the
    // one this workspace builds. An error only means one is installed already.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // `chaos` runs a steady phase and then a catch-up phase, `scale` a phase per rate and a
    // storm: without an explicit --timeout their bound follows from their phases.
    if matches!(args.scenario, Scenario::Chaos | Scenario::Scale)
        && matches.value_source("timeout") == Some(ValueSource::DefaultValue)
    {
        args.timeout = args.own_fleet_default_timeout();
    }
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("notify-bench: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    messages::now_ns();
    args.validate()?;
    if args.scenario == Scenario::Chaos {
        cli::check_redis_url(&args.redis_url)?;
        return run_own_processes(args, chaos::run);
    }
    if args.scenario == Scenario::Soak {
        return run_own_processes(args, soak::run);
    }
    if args.scenario == Scenario::SendFloor {
        return if args.floor_sink {
            floor::run_sink(args.clients)
        } else {
            floor::run(&args)
        };
    }
    if args.scenario == Scenario::Scale {
        cli::check_redis_urls(&args.redis_url, args.redis_cluster)?;
        return run_own_processes(args, scale::run);
    }
    if args.scenario == Scenario::ScaleWorker {
        return run_own_processes(args, scale::worker::run);
    }
    let gateway = cli::gateway_addr(&args.gateway)?;
    if args.via == cli::Via::Redis {
        cli::check_redis_urls(&args.redis_url, args.redis_cluster)?;
    }
    let (runtime, hard_limit) = runtime_for(&args)?;
    let allow_loss = args.allow_loss;
    let outcome = runtime.block_on(async move {
        let bench = scenario::Bench::new(args, gateway).await?;
        tokio::time::timeout(hard_limit, bench.run())
            .await
            .context("the run overran its --timeout")?
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(outcome.finish(allow_loss))
}

/// `chaos` and `soak`: scenarios that start their own processes (killed when their handles
/// drop, also on errors, hence the shutdown grace).
fn run_own_processes<F>(args: Args, scenario: fn(Args) -> F) -> Result<ExitCode>
where
    F: std::future::Future<Output = Result<report::Outcome>>,
{
    let (runtime, hard_limit) = runtime_for(&args)?;
    let allow_loss = args.allow_loss;
    let outcome = runtime.block_on(async move {
        tokio::time::timeout(hard_limit, scenario(args))
            .await
            .context("the run overran its --timeout")?
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(outcome?.finish(allow_loss))
}

/// Raises the open-files limit for `--clients`, builds the runtime, and returns it with the
/// backstop for the whole run (everything inside is bounded by --timeout).
fn runtime_for(args: &Args) -> Result<(tokio::runtime::Runtime, Duration)> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    // A `scale` run's clients are in its client processes, each of which checks its share.
    let needed = match args.scenario {
        Scenario::Scale => 64,
        _ => args.clients as u64 + 64,
    };
    if limit < needed {
        anyhow::bail!(
            "--clients {} needs about {needed} open files, but the limit is {limit}",
            args.clients
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Ok((runtime, args.timeout + Duration::from_secs(30)))
}

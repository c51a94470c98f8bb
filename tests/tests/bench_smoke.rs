//! The load generator against a real gateway and a real redis-server, at toy scale: it must
//! run to completion and find every message delivered exactly once, in order. Correctness
//! only; nothing here measures or asserts speed.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use notify_tests::{binary, wait_until, Gateway, RedisServer};
use serde_json::Value;

/// Runs `notify-bench` with `args` (the environment's `NOTIFY_*` variables cleared), at most
/// 60 s.
async fn run_bench(args: &[String]) -> Result<Output> {
    run_bench_within(args, Duration::from_secs(60)).await
}

/// Runs `notify-bench` with `args` (the environment's `NOTIFY_*` variables cleared), at most
/// `limit`.
async fn run_bench_within(args: &[String], limit: Duration) -> Result<Output> {
    let mut command = tokio::process::Command::new(binary("notify-bench"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOTIFY_") {
            command.env_remove(&key);
        }
    }
    command.args(args).kill_on_drop(true);
    tokio::time::timeout(limit, command.output())
        .await
        .with_context(|| format!("notify-bench did not finish within {limit:?}"))?
        .context("running notify-bench")
}

/// The JSON report: the last line on stdout.
fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|error| {
        panic!(
            "no JSON report ({error}); stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn assert_clean(output: &Output, expected_deliveries: u64) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    let report = report(output);
    let totals = &report["totals"];
    for counter in [
        "lost",
        "duplicates",
        "gaps",
        "wrong_region",
        "corrupt",
        "unexpected",
        "dropped_by_server",
    ] {
        assert_eq!(totals[counter], 0, "{counter} in {report}");
    }
    assert_eq!(
        totals["expected_deliveries"], expected_deliveries,
        "{report}"
    );
    assert_eq!(totals["delivered"], expected_deliveries, "{report}");
    assert_eq!(report["ok"], true, "{report}");
}

/// A redis-server and a gateway subscribed through it, ready.
async fn redis_and_ready_gateway() -> Result<(RedisServer, Gateway)> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start(&["--redis-url", &redis.url()]).await?;
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(10))
            .await
    );
    Ok((redis, gateway))
}

fn base_args(scenario: &str, gateway: &Gateway, redis: &RedisServer) -> Vec<String> {
    let mut args: Vec<String> = [scenario, "--gateway", &gateway.http_url(), "--redis-url"]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    args.push(redis.url());
    if let Some(pid) = gateway.pid() {
        args.extend(["--gateway-pid".into(), pid.to_string()]);
    }
    args.extend([
        "--settle".into(),
        "200ms".into(),
        "--timeout".into(),
        "30s".into(),
    ]);
    args
}

#[tokio::test]
async fn fanout_through_redis_delivers_everything_once_in_order() -> Result<()> {
    let (redis, gateway) = redis_and_ready_gateway().await?;
    let mut args = base_args("fanout", &gateway, &redis);
    args.extend(["--clients", "40", "--messages", "200"].map(String::from));
    let output = run_bench(&args).await?;
    // 40 clients over the 8 seed regions: 5 per region; 200 messages: 25 per region.
    assert_clean(&output, 40 * 25);
    let report = report(&output);
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(report["publish"]["published"], 200);
    assert_eq!(
        report["publish"]["unheard"], 0,
        "gateway subscribed to every region"
    );
    assert_eq!(report["handshake_failures"], 0);
    assert!(
        report["latency_ms"]["count"].as_u64() == Some(1000),
        "{report}"
    );
    Ok(())
}

#[tokio::test]
async fn fanout_through_the_http_api_delivers_everything_once_in_order() -> Result<()> {
    let (redis, gateway) = redis_and_ready_gateway().await?;
    let mut args = base_args("fanout", &gateway, &redis);
    args.extend(
        [
            "--via",
            "http",
            "--regions",
            "AE,CZ,US",
            "--clients",
            "12",
            "--messages",
            "30",
        ]
        .map(String::from),
    );
    let output = run_bench(&args).await?;
    assert_clean(&output, 12 * 10);
    Ok(())
}

#[tokio::test]
async fn idle_reports_memory_and_refuses_non_loopback_targets() -> Result<()> {
    let (redis, gateway) = redis_and_ready_gateway().await?;
    let mut args = base_args("idle", &gateway, &redis);
    args.extend(["--clients", "20"].map(String::from));
    let output = run_bench(&args).await?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report(&output);
    assert_eq!(report["connected"], 20, "{report}");
    assert!(
        report["gateway"]["rss_kib_after"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );

    let refused =
        run_bench(&["idle", "--gateway", "http://192.0.2.1:8765"].map(String::from)).await?;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    Ok(())
}

/// A client of three regions is one connection to the gateway, and counted once.
#[tokio::test]
async fn idle_clients_of_several_regions_are_counted_once() -> Result<()> {
    let (redis, gateway) = redis_and_ready_gateway().await?;
    let mut args = base_args("idle", &gateway, &redis);
    args.extend(["--clients", "10", "--regions-per-client", "3"].map(String::from));
    let output = run_bench(&args).await?;
    assert_clean(&output, 0);
    let idle = report(&output);
    assert_eq!(idle["connected"], 10, "{idle}");
    assert_eq!(idle["gateway_counted"], 10.0, "{idle}");
    Ok(())
}

/// SSE clients (`--transport sse`) are held and counted as WebSockets are, and get every
/// message of their region once, in order: published through the gateway's API, so each event
/// carries an `id:` line the client checks against its data.
#[tokio::test]
async fn sse_idle_and_latency_deliver_everything_once_in_order() -> Result<()> {
    let (redis, gateway) = redis_and_ready_gateway().await?;
    let mut args = base_args("idle", &gateway, &redis);
    args.extend(["--transport", "sse", "--clients", "20"].map(String::from));
    let output = run_bench(&args).await?;
    assert_clean(&output, 0);
    let idle = report(&output);
    assert_eq!(idle["params"]["transport"], "sse", "{idle}");
    assert_eq!(idle["connected"], 20, "{idle}");
    assert_eq!(idle["gateway_counted"], 20.0, "{idle}");
    assert!(
        idle["gateway"]["rss_bytes_per_connection"].is_number(),
        "{idle}"
    );

    // 24 clients over 3 regions (8 each), 20 msg/s for 2 s: 40 messages, 13 or 14 per region.
    let mut args = base_args("latency", &gateway, &redis);
    args.extend(
        [
            "--transport",
            "sse",
            "--via",
            "http",
            "--regions",
            "AE,CZ,US",
            "--clients",
            "24",
            "--rate",
            "20",
            "--duration",
            "2s",
        ]
        .map(String::from),
    );
    let output = run_bench(&args).await?;
    assert_clean(&output, 8 * 40);
    let latency = report(&output);
    assert_eq!(latency["latency_ms"]["count"], 8 * 40, "{latency}");
    assert_eq!(
        gateway
            .metric("notify_messages_delivered_total{transport=\"sse\"}")
            .await?,
        8.0 * 40.0
    );
    Ok(())
}

/// The negative control of the SSE clients' verdict: a gateway shut down in the middle of a
/// run ends every stream (`close` event, 1001) while messages still flow, and the run must
/// fail, counting every client as dropped and what it missed as lost.
#[tokio::test]
async fn sse_streams_ended_mid_run_are_counted_dropped_and_lossy() -> Result<()> {
    let (redis, gateway) = redis_and_ready_gateway().await?;
    let mut args = base_args("latency", &gateway, &redis);
    args.extend(
        [
            "--transport",
            "sse",
            "--regions",
            "AE,FI",
            "--clients",
            "10",
            "--rate",
            "20",
            "--duration",
            "4s",
        ]
        .map(String::from),
    );
    let bench = tokio::spawn(async move { run_bench(&args).await });
    // Every client has had a few messages (20/s over 2 regions: 10/s each) ...
    let delivering = wait_until(Duration::from_secs(20), || async {
        gateway
            .metric("notify_messages_delivered_total{transport=\"sse\"}")
            .await
            .is_ok_and(|delivered| delivered >= 30.0)
    })
    .await;
    assert!(delivering, "no SSE deliveries within 20 s");
    // ... and then the gateway goes away with about 3 s of messages still to come.
    gateway.sigterm();
    let output = bench.await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let report = report(&output);
    let totals = &report["totals"];
    assert_eq!(totals["dropped_by_server"], 10, "{report}");
    assert!(totals["delivered"].as_u64() > Some(0), "{report}");
    assert!(totals["lost"].as_u64() > Some(0), "{report}");
    assert_eq!(
        totals["delivered"].as_u64().unwrap() + totals["lost"].as_u64().unwrap(),
        totals["expected_deliveries"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(totals["duplicates"], 0, "{report}");
    assert_eq!(totals["corrupt"], 0, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    Ok(())
}

/// An SSE stream the gateway refuses (at `--max-connections`) is a failed handshake whose
/// error quotes the status and the gateway's reason; the streams it took are unharmed.
#[tokio::test]
async fn sse_refusals_are_reported_with_the_gateways_reason() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start(&["--redis-url", &redis.url(), "--max-connections", "4"]).await?;
    assert!(
        gateway
            .wait_ready_status(200, Duration::from_secs(10))
            .await
    );
    let mut args = base_args("idle", &gateway, &redis);
    args.extend(["--transport", "sse", "--clients", "6"].map(String::from));
    let output = run_bench(&args).await?;
    assert_eq!(output.status.code(), Some(1));
    let report = report(&output);
    assert_eq!(report["connected"], 4, "{report}");
    assert_eq!(report["handshake_failures"], 2, "{report}");
    let errors = report["handshake_errors"].to_string();
    assert!(errors.contains("GET /events refused: HTTP 503"), "{errors}");
    assert_eq!(report["totals"]["dropped_by_server"], 0, "{report}");
    Ok(())
}

/// Runs `notify-bench send-floor` with `args`, expects success, and returns its JSON report.
async fn send_floor_report(args: &[&str]) -> Result<Value> {
    let args: Vec<String> = std::iter::once("send-floor")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let output = run_bench(&args).await?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(report(&output))
}

/// `send-floor` needs no gateway: it writes frames to sockets of its own sink process, from
/// one thread and from two, and fails unless the sink received every byte.
#[tokio::test]
async fn send_floor_measures_both_thread_counts_and_every_byte_arrives() -> Result<()> {
    // 12,800 sends per thread count: tens of milliseconds of CPU, well above the 10 ms tick
    // the CPU time is read in (1,280 sends could read as 0).
    let report = send_floor_report(&[
        "--clients",
        "256",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--frame-bytes",
        "300",
    ])
    .await?;
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(
        runs.iter()
            .map(|run| run["threads"].as_u64())
            .collect::<Vec<_>>(),
        [Some(1), Some(2)],
        "{report}"
    );
    for run in runs {
        assert!(
            run["cpu_per_send_us"].as_f64().unwrap_or(0.0) > 0.0,
            "{report}"
        );
        assert!(
            run["round_p99_ms"].as_f64().unwrap_or(0.0) > 0.0,
            "{report}"
        );
    }
    // 256 sockets x 50 rounds x 300 bytes, once per thread count.
    assert_eq!(report["sent_bytes"], 256 * 50 * 300 * 2, "{report}");
    assert_eq!(report["received_bytes"], report["sent_bytes"], "{report}");
    Ok(())
}

/// `--floor-groups 8` is a gateway's pattern over 8 regions: each round writes to one group
/// of the sockets in turn (an eighth of them), and every byte still arrives.
#[tokio::test]
async fn send_floor_in_groups_writes_one_group_per_round() -> Result<()> {
    let report = send_floor_report(&[
        "--clients",
        "64",
        "--floor-groups",
        "8",
        "--rate",
        "20",
        "--duration",
        "1s",
    ])
    .await?;
    assert_eq!(report["groups"], 8, "{report}");
    for run in report["runs"].as_array().expect("runs") {
        // 20 rounds of 8 sockets each (64 / 8), from either thread count.
        assert_eq!(run["sends"], 20 * 8, "{report}");
    }
    assert_eq!(report["sent_bytes"], 20 * 8 * 300 * 2, "{report}");
    assert_eq!(report["received_bytes"], report["sent_bytes"], "{report}");
    // The groups take turns: every socket got its frames.
    assert_eq!(report["silent_sockets"], 0, "{report}");
    Ok(())
}

/// `chaos` starts two gateways of its own and, while messages flow, drops clients, cuts the
/// gateways' Redis subscriptions and restarts gateways; every client resumes with `?since=`
/// and must still get every message of its region exactly once, in order.
#[tokio::test]
async fn chaos_resumes_deliver_everything_exactly_once() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gateway_bin = binary("notify-gateway");
    let args: Vec<String> = [
        "chaos",
        "--gateway-bin",
        &gateway_bin.display().to_string(),
        "--redis-url",
        &redis.url(),
        "--gateways",
        "2",
        "--clients",
        "50",
        "--rate",
        "40",
        "--duration",
        "6s",
        "--restart-interval",
        "2s",
        "--restart-delay",
        "300ms",
        "--link-cut-interval",
        "1s",
        "--drop-rate",
        "5",
        "--catch-up-timeout",
        "15s",
        "--timeout",
        "50s",
    ]
    .map(String::from)
    .to_vec();
    let output = run_bench(&args).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    let report = report(&output);
    assert_eq!(report["scenario"], "chaos");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["exactly_once_pct"], 100.0, "{report}");
    let totals = &report["totals"];
    // 240 messages over the 8 seed regions: 30 per region; 50 clients.
    assert_eq!(totals["published"], 240, "{report}");
    assert_eq!(totals["clients"], 50, "{report}");
    assert_eq!(totals["expected_deliveries"], 50 * 30, "{report}");
    assert_eq!(totals["delivered"], 50 * 30, "{report}");
    assert_eq!(totals["exactly_once"], 50 * 30, "{report}");
    for counter in [
        "duplicates",
        "gaps",
        "lost",
        "out_of_order",
        "resyncs",
        "corrupt",
        "wrong_region",
        "missing_id",
    ] {
        assert_eq!(totals[counter], 0, "{counter} in {report}");
    }
    let chaos = &report["chaos"];
    assert!(chaos["gateway_restarts"].as_u64() >= Some(1), "{report}");
    assert_eq!(chaos["restart_failures"], 0, "{report}");
    assert!(chaos["link_cuts"].as_u64() >= Some(2), "{report}");
    assert!(chaos["client_drops"].as_u64() >= Some(5), "{report}");
    assert!(
        report["clients"]["reconnects"].as_u64() >= Some(5),
        "{report}"
    );
    assert_eq!(report["clients"]["gave_up"], 0, "{report}");
    // Each gateway's own reconnect counter (summed over its processes) equals the link cuts
    // made while it was subscribed: no reconnect without a cut, no cut unnoticed.
    let reconnects = report["reconnects"]
        .as_array()
        .expect("reconnects per gateway");
    assert_eq!(reconnects.len(), 2, "{report}");
    for gateway in reconnects {
        assert!(gateway["cuts"].as_u64() >= Some(1), "{report}");
        assert_eq!(gateway["reconnects"], gateway["cuts"], "{report}");
    }
    // Every chaos action is logged with a timestamp.
    assert!(stderr.contains("s] chaos: restart gateway"), "{stderr}");
    assert!(stderr.contains("s] chaos: link cut"), "{stderr}");
    assert!(stderr.contains("s] chaos: drop client"), "{stderr}");
    assert!(stderr.contains("(100.000%)"), "{stderr}");
    Ok(())
}

/// The soak's arguments for a ~30 s run: 200 clients on 2 gateways, a fault 2.5 s after the
/// previous one ended (each of the 7 kinds at least once, with ~5 s to spare on a loaded
/// machine), a progress line every 10 s, memory and descriptors judged after 10 s.
fn soak_args(extra: &[&str]) -> Vec<String> {
    let gateway_bin = binary("notify-gateway");
    let mut args: Vec<String> = [
        "soak",
        "--gateway-bin",
        &gateway_bin.display().to_string(),
        "--gateways",
        "2",
        "--clients",
        "200",
        "--rate",
        "20",
        "--plain-rate",
        "20",
        "--drop-rate",
        "2",
        "--duration",
        "30s",
        "--fault-interval",
        "2500ms",
        "--report-interval",
        "10s",
        "--warm-up",
        "10s",
        "--catch-up-timeout",
        "15s",
        "--timeout",
        "75s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// The soak for 30 s with every fault and the health check every second: every part of the
/// verdict must hold (exit 0): id-carrying messages exactly once or resynced, plain messages
/// delivered while the link was healthy, memory and descriptors within bounds, each gateway's
/// reconnect counter equal to the cuts made, no readiness flap without a fault.
#[tokio::test]
async fn soak_holds_every_promise_through_every_fault() -> Result<()> {
    let output = run_bench_within(&soak_args(&[]), Duration::from_secs(100)).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = report(&output);
    assert_eq!(report["scenario"], "soak");
    // Every kind of fault was made.
    let faults = &report["faults"];
    for kind in [
        "subscription_cuts",
        "stream_cuts",
        "command_cuts",
        "foreign_ids",
        "redis_restarts_with_data",
        "gateway_restarts",
        "redis_restarts_empty",
    ] {
        assert!(faults[kind].as_u64() >= Some(1), "{kind} in {report}");
    }
    assert_eq!(faults["errors"], 0, "{report}");
    // Each link cut and command cut reached every gateway.
    assert!(
        faults["stream_links_killed"].as_u64() >= Some(2),
        "{report}"
    );
    assert!(
        faults["command_connections_killed"].as_u64() >= Some(2),
        "{report}"
    );
    // A progress line per interval.
    assert!(stderr.contains("s] soak interval 2:"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["exactly_once_or_resynced_pct"], 100.0, "{report}");
    let totals = &report["totals"];
    for counter in [
        "lost",
        "duplicates",
        "gaps",
        "out_of_order",
        "corrupt",
        "wrong_region",
    ] {
        assert_eq!(totals[counter], 0, "{counter} in {report}");
    }
    let plain = &report["plain"];
    assert!(plain["owed"].as_u64() > Some(1000), "{report}");
    assert_eq!(plain["lost"], 0, "{report}");
    assert_eq!(report["readiness"]["flaps_with_no_fault"], 0, "{report}");
    for gateway in report["reconnects"].as_array().expect("reconnects") {
        assert!(gateway["cuts"].as_u64() >= Some(3), "{report}");
        assert_eq!(gateway["reconnects"], gateway["cuts"], "{report}");
    }
    assert!(
        !report["processes"]
            .as_array()
            .expect("processes")
            .is_empty(),
        "{report}"
    );
    Ok(())
}

/// `scale` at toy size: 3 gateways of its own and 2 client processes of 300 clients each,
/// spread over all three; fan-out at two rates, then a reconnect storm (one gateway
/// SIGKILLed). `extra` goes to every gateway.
async fn run_scale(redis: &RedisServer, gateway_args: &[&str]) -> Result<(Output, Value)> {
    let gateway_bin = binary("notify-gateway");
    let mut args: Vec<String> = [
        "scale",
        "--gateway-bin",
        &gateway_bin.display().to_string(),
        "--redis-url",
        &redis.url(),
        "--gateways",
        "3",
        "--client-processes",
        "2",
        "--clients",
        "600",
        "--scale-rates",
        "2,10",
        "--duration",
        "2s",
        "--settle",
        "1s",
        "--timeout",
        "50s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(
        gateway_args
            .iter()
            .map(|arg| format!("--gateway-arg={arg}")),
    );
    let output = run_bench(&args).await?;
    let report = report(&output);
    Ok((output, report))
}

/// Checks a `scale` report: every client connected, every message delivered once in each
/// phase, the storm's clients all back with nothing lost; returns the storm's replay counts.
fn assert_scale_clean(output: &Output, report: &Value) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(report["scenario"], "scale");
    assert_eq!(report["ok"], true, "{report}");
    let idle = &report["idle"];
    assert_eq!(idle["connected"], 600, "{report}");
    assert_eq!(idle["gateways_counted"], 600.0, "{report}");
    assert!(
        idle["rss_bytes_per_connection"].as_f64() > Some(0.0),
        "{report}"
    );
    let phases = report["fanout"].as_array().expect("fan-out phases");
    assert_eq!(phases.len(), 2, "{report}");
    for (phase, rate) in phases.iter().zip([2.0, 10.0]) {
        assert_eq!(phase["rate_per_region"], rate, "{report}");
        // One message per region per round: 8 regions, `rate` rounds a second for 2 s.
        let messages = phase["messages"].as_u64().unwrap();
        assert!(messages >= 8 * rate as u64, "{report}");
        let deliveries = &phase["deliveries"];
        assert_eq!(deliveries["lost"], 0, "{report}");
        assert_eq!(deliveries["duplicates"], 0, "{report}");
        assert_eq!(deliveries["received"], deliveries["expected"], "{report}");
        assert_eq!(deliveries["wait_ended"], "all_delivered", "{report}");
        assert_eq!(deliveries["arrived_after_reported_lost"], 0, "{report}");
        assert_eq!(phase["reconnects"], 0, "{report}");
        assert_eq!(phase["slow_consumer_disconnects"], 0.0, "{report}");
        // The last message of the phase arrived within the wait: 0 when it reached every
        // client before the publisher had Redis's reply (the gateway writes caught-up sockets
        // from the fan-out itself).
        assert!(deliveries["drain_secs"].as_f64() >= Some(0.0), "{report}");
        assert!(deliveries["drain_secs"].as_f64() < Some(10.0), "{report}");
        // Each client gets its region's messages: an eighth of them.
        assert_eq!(
            phase["latency_ms"]["count"].as_u64(),
            Some(messages / 8 * 600),
            "{report}"
        );
        assert!(phase["latency_ms"]["p99"].as_f64() > Some(0.0), "{report}");
        assert!(
            phase["redis_cpu_us_per_message"].as_f64() >= Some(0.0),
            "{report}"
        );
    }
    let storm = &report["storm"];
    assert_eq!(storm["killed_gateway_clients"], 200, "{report}");
    assert!(storm["resumed_secs"].as_f64() > Some(0.0), "{report}");
    let deliveries = &storm["deliveries"];
    for counter in ["lost", "duplicates", "gaps", "resyncs"] {
        assert_eq!(deliveries[counter], 0, "{counter} in {report}");
    }
    assert_eq!(deliveries["received"], deliveries["expected"], "{report}");
    storm["replays"].clone()
}

/// The killed gateway's clients resume on the others from their memory history.
#[tokio::test]
async fn scale_spreads_clients_over_processes_and_survives_a_storm_from_memory() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (output, report) = run_scale(&redis, &[]).await?;
    let replays = assert_scale_clean(&output, &report);
    assert_eq!(replays["memory"], 200.0, "{report}");
    assert_eq!(replays["stream"], 0.0, "{report}");
    Ok(())
}

/// Without a memory history every resume of the storm reads the Redis stream, two at a time
/// (`--max-concurrent-replays 2`): the rest wait for a turn, and still nothing is lost.
#[tokio::test]
async fn scale_storm_replays_from_the_stream_under_the_replay_budget() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (output, report) =
        run_scale(&redis, &["--history-cache=0", "--max-concurrent-replays=2"]).await?;
    let replays = assert_scale_clean(&output, &report);
    // A client already holding the survivor's latest id needs no replay at all, which counts
    // as served from memory even without a memory history; every other one reads the stream.
    let (memory, stream) = (
        replays["memory"].as_f64().unwrap(),
        replays["stream"].as_f64().unwrap(),
    );
    assert_eq!(memory + stream, 200.0, "{report}");
    assert!(stream >= 100.0, "{report}");
    assert!(
        replays["waited_for_a_turn"].as_f64() > Some(0.0),
        "{report}"
    );
    assert_eq!(replays["refused_1013"], 0.0, "{report}");
    Ok(())
}

/// `notify-bench scale` started with `args`, its stderr read line by line as it runs.
struct LiveBench {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    /// Every stderr line read so far.
    seen: Vec<String>,
}

impl LiveBench {
    fn start(args: &[String]) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(binary("notify-bench"));
        for (key, _) in std::env::vars() {
            if key.starts_with("NOTIFY_") {
                command.env_remove(&key);
            }
        }
        command
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting notify-bench")?;
        let stderr = child.stderr.take().context("notify-bench stderr")?;
        Ok(LiveBench {
            child,
            stderr: tokio::io::BufReader::new(stderr).lines(),
            seen: Vec::new(),
        })
    }

    /// Reads stderr until a line containing `needle` (within `limit`); returns it.
    async fn line_with(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(until, self.stderr.next_line())
                .await
                .with_context(|| format!("no {needle:?} within {limit:?}: {:#?}", self.seen))?
                .context("reading notify-bench stderr")?
                .with_context(|| format!("stderr ended before {needle:?}: {:#?}", self.seen))?;
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Waits (within `limit`) for the exit; returns the exit code, the JSON report and all of
    /// stderr.
    async fn finish(mut self, limit: Duration) -> Result<(Option<i32>, Value, String)> {
        use tokio::io::AsyncReadExt;
        let mut stdout = self.child.stdout.take().context("notify-bench stdout")?;
        let read_all = async {
            let mut text = String::new();
            stdout.read_to_string(&mut text).await?;
            while let Some(line) = self.stderr.next_line().await? {
                self.seen.push(line);
            }
            let status = self.child.wait().await?;
            anyhow::Ok((status, text))
        };
        let (status, stdout) = tokio::time::timeout(limit, read_all)
            .await
            .with_context(|| format!("notify-bench did not finish within {limit:?}"))??;
        let stderr = self.seen.join("\n");
        let report = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("no JSON report; stdout: {stdout}\nstderr: {stderr}"))?;
        Ok((status.code(), report, stderr))
    }
}

/// The process id of gateway `index` from `scale`'s start-up line
/// (`scale: gateway 1 pid 1234 on ...`).
fn gateway_pid(line: &str) -> Result<String> {
    let pid = line
        .split_once(" pid ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| format!("no pid in {line:?}"))?;
    Ok(pid.to_owned())
}

fn signal(pid: &str, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
    Ok(())
}

/// `scale` args for a small run on `redis`: `gateways` gateways of `gateway_bin`, 2 client
/// processes, `clients` clients, fan-out at 5 msg/s per region for 2 s, a 2 s drain grace.
fn small_scale_args(
    redis: &RedisServer,
    gateway_bin: &std::path::Path,
    gateways: usize,
    clients: usize,
) -> Vec<String> {
    [
        "scale",
        "--gateway-bin",
        &gateway_bin.display().to_string(),
        "--redis-url",
        &redis.url(),
        "--gateways",
        &gateways.to_string(),
        "--client-processes",
        "2",
        "--clients",
        &clients.to_string(),
        "--scale-rates",
        "5",
        "--duration",
        "2s",
        "--settle",
        "500ms",
        "--drain-grace",
        "2s",
        "--timeout",
        "50s",
    ]
    .map(String::from)
    .to_vec()
}

/// A gateway frozen (SIGSTOP) for a fan-out phase delivers nothing to its clients: when
/// nothing has arrived for the drain grace the run reports those deliveries as lost, naming
/// the gateway, each region, its clients and the `seq` range, and fails. Thawed, the gateway
/// delivers them late, and the next phase counts them as arrived after being reported lost.
#[tokio::test]
async fn scale_reports_what_a_frozen_gateway_never_delivered_as_lost() -> Result<()> {
    let redis = RedisServer::start().await?;
    let args = small_scale_args(&redis, &binary("notify-gateway"), 2, 160);
    let mut bench = LiveBench::start(&args)?;
    let frozen = gateway_pid(
        &bench
            .line_with("scale: gateway 1 pid", Duration::from_secs(20))
            .await?,
    )?;
    bench
        .line_with("gateways counted", Duration::from_secs(20))
        .await?;
    signal(&frozen, "-STOP")?;
    let lost_line = bench.line_with("lost:", Duration::from_secs(20)).await;
    signal(&frozen, "-CONT")?;
    lost_line?;
    let (code, report, stderr) = bench.finish(Duration::from_secs(40)).await?;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(report["ok"], false, "{report}");
    let phase = &report["fanout"][0]["deliveries"];
    assert_eq!(phase["wait_ended"], "no_progress", "{report}");
    // Gateway 1 holds half the clients, 80: ten of each of the 8 regions (clients 8..16 are
    // its first ten), each missing the whole phase (10 messages).
    assert_eq!(phase["lost"], 800, "{report}");
    assert_eq!(phase["received"], 800, "{report}");
    let groups = phase["lost_detail"].as_array().expect("lost_detail");
    assert_eq!(groups.len(), 8, "{report}");
    for group in groups {
        assert_eq!(group["gateway"], 1, "{report}");
        assert_eq!(group["clients"], 10, "{report}");
        assert_eq!(group["connected"], 10, "{report}");
        assert_eq!(group["messages"], 100, "{report}");
        assert_eq!(group["from_seq"], 0, "{report}");
        assert_eq!(group["from_seq_highest"], 0, "{report}");
        assert_eq!(group["to_seq"], 9, "{report}");
    }
    assert!(
        report["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .any(|failure| failure.as_str().is_some_and(
                |text| text.starts_with("fan-out at 5/s: lost: 800 deliveries to 80 clients")
            )),
        "{report}"
    );
    assert!(stderr.contains("lost: gateway 1, region "), "{stderr}");
    // Thawed, gateway 1 delivers what it held (and the storm's survivor, it replays the
    // rest): late, not lost.
    let storm = &report["storm"]["deliveries"];
    assert_eq!(storm["lost"], 0, "{report}");
    assert_eq!(storm["gaps"], 0, "{report}");
    assert_eq!(storm["duplicates"], 0, "{report}");
    assert_eq!(storm["arrived_after_reported_lost"], 800, "{report}");
    Ok(())
}

/// Survivors of the storm at their socket cap (an open-files limit of 400: 300 sockets each,
/// and the 600 clients fill both) refuse new sockets on their public port; the replay sources
/// are still read, on each gateway's admin port.
#[tokio::test]
async fn scale_reads_replay_sources_of_gateways_at_their_cap() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let redis = RedisServer::start().await?;
    let dir = std::env::temp_dir().join(format!(
        "notify-scale-cap-{}-{}",
        std::process::id(),
        redis.port()
    ));
    std::fs::create_dir_all(&dir)?;
    let wrapper = dir.join("notify-gateway-400-files");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 400 && exec '{}' \"$@\"\n",
            binary("notify-gateway").display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let args = small_scale_args(&redis, &wrapper, 3, 600);
    let bench = LiveBench::start(&args)?;
    let finished = bench.finish(Duration::from_secs(55)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (code, report, stderr) = finished?;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    let storm = &report["storm"];
    assert_eq!(storm["killed_gateway_clients"], 200, "{report}");
    assert_eq!(storm["deliveries"]["lost"], 0, "{report}");
    let replays = &storm["replays"];
    for source in [
        "memory",
        "stream",
        "resync",
        "waited_for_a_turn",
        "refused_1013",
    ] {
        assert!(
            replays[source].is_number(),
            "{source} unknown: {report}\n{stderr}"
        );
    }
    assert_eq!(
        replays["memory"].as_f64().unwrap() + replays["stream"].as_f64().unwrap(),
        200.0,
        "{report}"
    );
    assert!(!stderr.contains("/metrics (try"), "{stderr}");
    Ok(())
}

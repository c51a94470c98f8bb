//! The monitoring files in `deploy/`: the Prometheus alerting rules pass `promtool check
//! rules` and their unit tests, the Grafana dashboard has the shape Grafana needs, and every
//! metric either names is one a live gateway really exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use notify_tests::{next_json, seed_payload, Gateway, RedisServer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str]) -> Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .context("running promtool (Debian package `prometheus`; scripts/test.sh installs it)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool {args:?} failed:\n{text}");
    }
    Ok(text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let checked = promtool(&["check", "rules", "notify-alerts.yml"])?;
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    promtool(&["test", "rules", "notify-alerts.test.yml"])?;
    let rules = std::fs::read_to_string(deploy("prometheus/notify-alerts.yml"))?;
    for alert in [
        "NotifyBrokerDown",
        "NotifyReadinessFlapping",
        "NotifySlowClientDisconnects",
        "NotifyBadPayloads",
        "NotifyNearCapacity",
        "NotifySocketsNearCapacity",
        "NotifyFanoutLatencyHigh",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_has_the_shape_grafana_needs() -> Result<()> {
    let text = std::fs::read_to_string(deploy("grafana/notify-dashboard.json"))?;
    let dashboard: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(36),
        "schemaVersion"
    );
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| u.len() <= 40));
    let panels = dashboard["panels"].as_array().context("panels")?;
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().context("a panel without a title")?;
        let id = panel["id"]
            .as_u64()
            .with_context(|| format!("{title}: id"))?;
        assert!(ids.insert(id), "{title}: duplicate id {id}");
        assert!(panel["type"].is_string(), "{title}: type");
        let grid = &panel["gridPos"];
        for field in ["h", "w", "x", "y"] {
            assert!(grid[field].is_u64(), "{title}: gridPos.{field}");
        }
        let right = grid["x"].as_u64().unwrap_or(0) + grid["w"].as_u64().unwrap_or(0);
        assert!(right <= 24, "{title}: wider than the 24-column grid");
        let targets = panel["targets"].as_array().context("targets")?;
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: expr"
            );
            let ref_id = target["refId"].as_str().context("refId")?;
            assert!(ref_ids.insert(ref_id), "{title}: duplicate refId {ref_id}");
        }
    }
    Ok(())
}

/// Every `notify_…` metric name in `text` (an identifier starting there).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let identifier = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("notify_") {
        if text[..start].chars().next_back().is_some_and(identifier) {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|&c| identifier(c))
            .collect();
        names.insert(name);
    }
    names
}

/// The metric names of a Prometheus text exposition.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_alerts_use_only_metrics_a_live_gateway_exports() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let url = redis.url();
    let gateway = Gateway::start(&["--redis-url", &url, "--redis-ping-interval", "200ms"]).await?;
    assert!(gateway.wait_ready_status(200, WAIT).await, "not ready");
    // Make the metrics that appear with their first event: a delivery, a bad payload, a
    // resume, a reconnect.
    let mut client = gateway.connect_counted("/?region=AE", "AE").await?;
    let response = gateway
        .http()
        .post(format!("{}/api/publish", gateway.http_url()))
        .header("content-type", "application/json")
        .body(seed_payload("AE", "monitor0001", "Monitoring"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    next_json(&mut client, WAIT).await.context("no delivery")?;
    redis.publish("tvs:AE", "{not json").await?;
    let _resumed = gateway.connect("/?region=FI&since=0-0").await?;
    let resumed = notify_tests::wait_until(WAIT, || async {
        gateway.metric("notify_resumes_total").await.unwrap_or(0.0) > 0.0
    })
    .await;
    assert!(resumed, "the resume was not counted");
    redis.kill();
    assert!(gateway.wait_ready_status(503, WAIT).await, "no outage seen");
    redis.restart().await?;
    assert!(gateway.wait_ready_status(200, WAIT).await, "no recovery");
    let ready = notify_tests::wait_until(WAIT, || async {
        gateway
            .metric("notify_bad_payloads_total")
            .await
            .unwrap_or(0.0)
            > 0.0
            && gateway.metric("notify_resumes_total").await.unwrap_or(0.0) > 0.0
            && gateway
                .metric("notify_broker_reconnects_total")
                .await
                .unwrap_or(0.0)
                > 0.0
    })
    .await;
    if !ready {
        let (_, exposition) = gateway.get("/metrics").await?;
        bail!("the event-driven metrics did not appear:\n{exposition}");
    }
    let (_, exposition) = gateway.get("/metrics").await?;
    let exported = exported_names(&exposition);
    // The capacity the alerts divide by is the one the gateway enforces.
    let (_, info) = gateway.get("/api/info").await?;
    let info: Value = serde_json::from_str(&info)?;
    let enforced = info["limits"]["max_connections"]
        .as_f64()
        .context("max_connections")?;
    assert_eq!(gateway.metric("notify_connections_max").await?, enforced);
    assert!(gateway.metric("notify_sockets_max").await? >= enforced.min(1.0));

    for file in [
        "grafana/notify-dashboard.json",
        "prometheus/notify-alerts.yml",
    ] {
        let text = std::fs::read_to_string(deploy(file))?;
        let used = metric_names_in(&text);
        assert!(used.len() >= 8, "{file}: only {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the gateway does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
    Ok(())
}

#[test]
fn metric_names_are_found_as_whole_identifiers() {
    let names = metric_names_in(
        "sum(rate(notify_x_total{a=\"b\"}[5m])) / my_notify_y + notify_z_bucket notify-gateway",
    );
    assert_eq!(
        names,
        BTreeSet::from(["notify_x_total".to_owned(), "notify_z_bucket".to_owned()])
    );
}

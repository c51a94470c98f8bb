//! One ops snapshot: what the page shows, computed from one rendering of the metrics registry
//! (the numbers `/metrics` shows) and the gateway's live state (readiness, broker, capacity),
//! plus rates over the time since the previous snapshot.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::exposition::Samples;

/// Resume sources, always listed (at 0 before the first resume).
const RESUME_SOURCES: [&str; 3] = ["memory", "stream", "resync"];

/// What the page shows at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The gateway's version.
    pub version: &'static str,
    /// Seconds since the gateway started serving.
    pub uptime_seconds: u64,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    /// `ready`, `connecting`, `down` or `draining`: what `/readyz` says.
    pub readiness: &'static str,
    /// The broker and its links.
    pub broker: BrokerView,
    /// WebSocket connections.
    pub connections: ConnectionsView,
    /// Open client sockets of every kind (handshaking, plain HTTP, WebSocket).
    pub sockets_open: usize,
    /// Per-second rates over the last interval; `null` in the first snapshot.
    pub rates: Rates,
    /// Counters since start.
    pub totals: Totals,
    /// `notify_bad_payloads_total` by reason.
    pub bad_payloads: BTreeMap<String, u64>,
    /// `notify_resumes_total` by source (`memory`, `stream`, `resync`).
    pub resumes: BTreeMap<String, u64>,
}

/// The broker part of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerView {
    /// `embedded` or `redis`.
    pub kind: &'static str,
    /// `connecting`, `ready` or `down`.
    pub state: &'static str,
    /// Whether its links are up (always, for the embedded broker).
    pub linked: bool,
    /// `notify_broker_reconnects_total`: falls from ready.
    pub reconnects: u64,
}

/// Connections in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsView {
    /// Every region's `notify_connections`, summed.
    pub total: u64,
    /// The most WebSockets this gateway takes (`notify_connections_max`).
    pub capacity: usize,
    /// `notify_connections` by region.
    pub by_region: BTreeMap<String, u64>,
}

/// Rates between two snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    /// Valid notifications received from the broker per second.
    pub publishes_per_second: Option<f64>,
    /// Notification frames written to clients per second.
    pub deliveries_per_second: Option<f64>,
    /// Upper bound of the bucket holding the 99th percentile fan-out latency over the
    /// interval; `null` when nothing was written.
    pub fanout_p99_seconds: Option<f64>,
}

/// Counters since start.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// `notify_messages_received_total`.
    pub publishes: u64,
    /// `notify_messages_delivered_total`.
    pub deliveries: u64,
    /// `notify_messages_dropped_total`.
    pub dropped: u64,
    /// `notify_slow_client_disconnects_total`.
    pub slow_client_disconnects: u64,
}

/// The gateway's live state, read when the snapshot is taken.
#[derive(Debug, Clone)]
pub struct LiveState {
    /// What `/readyz` says.
    pub readiness: &'static str,
    /// `embedded` or `redis`.
    pub broker_kind: &'static str,
    /// The broker's state.
    pub broker_state: &'static str,
    /// The WebSocket cap.
    pub capacity: usize,
    /// Open sockets.
    pub sockets_open: usize,
    /// Time since start.
    pub uptime: Duration,
}

/// Counters kept from the previous snapshot to compute rates.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    publishes: f64,
    deliveries: f64,
    /// Fan-out latency buckets: (upper bound, cumulative count), in order.
    latency_buckets: Vec<(f64, f64)>,
}

/// Builds snapshots one after another, keeping what rates need.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    previous: Option<Reading>,
}

impl SnapshotBuilder {
    /// The snapshot at `now` from one rendering of the registry and the live state.
    pub fn build(&mut self, samples: &Samples, live: &LiveState, now: Instant) -> Snapshot {
        let reading = Reading {
            at: now,
            publishes: samples.sum("notify_messages_received_total"),
            deliveries: samples.sum("notify_messages_delivered_total"),
            latency_buckets: latency_buckets(samples),
        };
        let rates = match &self.previous {
            Some(previous) if now > previous.at => {
                let seconds = now.duration_since(previous.at).as_secs_f64();
                Rates {
                    publishes_per_second: Some(
                        (reading.publishes - previous.publishes).max(0.0) / seconds,
                    ),
                    deliveries_per_second: Some(
                        (reading.deliveries - previous.deliveries).max(0.0) / seconds,
                    ),
                    fanout_p99_seconds: p99_between(
                        &previous.latency_buckets,
                        &reading.latency_buckets,
                    ),
                }
            }
            _ => Rates::default(),
        };
        let by_region: BTreeMap<String, u64> = samples
            .by_label("notify_connections", "region")
            .into_iter()
            .map(|(region, count)| (region, count_of(count)))
            .collect();
        let mut resumes: BTreeMap<String, u64> = RESUME_SOURCES
            .iter()
            .map(|source| ((*source).to_owned(), 0))
            .collect();
        for (source, count) in samples.by_label("notify_resumes_total", "source") {
            resumes.insert(source, count_of(count));
        }
        let snapshot = Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: live.uptime.as_secs(),
            ready: live.readiness == "ready",
            readiness: live.readiness,
            broker: BrokerView {
                kind: live.broker_kind,
                state: live.broker_state,
                linked: live.broker_state == "ready",
                reconnects: count_of(samples.sum("notify_broker_reconnects_total")),
            },
            connections: ConnectionsView {
                total: by_region.values().sum(),
                capacity: live.capacity,
                by_region,
            },
            sockets_open: live.sockets_open,
            rates,
            totals: Totals {
                publishes: count_of(reading.publishes),
                deliveries: count_of(reading.deliveries),
                dropped: count_of(samples.sum("notify_messages_dropped_total")),
                slow_client_disconnects: count_of(
                    samples.sum("notify_slow_client_disconnects_total"),
                ),
            },
            bad_payloads: samples
                .by_label("notify_bad_payloads_total", "reason")
                .into_iter()
                .map(|(reason, count)| (reason, count_of(count)))
                .collect(),
            resumes,
        };
        self.previous = Some(reading);
        snapshot
    }
}

/// A counter or gauge value as a whole count (they are whole; negative or NaN reads as 0).
fn count_of(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

/// `notify_fanout_latency_seconds_bucket` as (upper bound, cumulative count), by bound.
fn latency_buckets(samples: &Samples) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = samples
        .named("notify_fanout_latency_seconds_bucket")
        .filter_map(|sample| {
            let bound = match sample.label("le")? {
                "+Inf" => f64::INFINITY,
                other => other.parse().ok()?,
            };
            Some((bound, sample.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The upper bound of the bucket holding the 99th percentile of the observations made
/// between two readings of the same cumulative buckets; `None` without observations (or when
/// the buckets changed shape).
fn p99_between(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    if before.len() != after.len() {
        return None;
    }
    let deltas: Vec<(f64, f64)> = before
        .iter()
        .zip(after)
        .map(|(old, new)| (new.0, (new.1 - old.1).max(0.0)))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, count)| *count >= total * 0.99)
        .map(|(bound, _)| *bound)
        .filter(|bound| bound.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> LiveState {
        LiveState {
            readiness: "ready",
            broker_kind: "redis",
            broker_state: "ready",
            capacity: 100,
            sockets_open: 4,
            uptime: Duration::from_secs(61),
        }
    }

    fn metrics(received: u64, delivered: u64, fast: u64, slow: u64) -> Samples {
        Samples::parse(&format!(
            "notify_connections{{region=\"AE\"}} 2\nnotify_connections{{region=\"FI\"}} 1\n\
             notify_messages_received_total{{region=\"AE\"}} {received}\n\
             notify_messages_delivered_total {delivered}\n\
             notify_resumes_total{{source=\"stream\"}} 5\n\
             notify_bad_payloads_total{{reason=\"not_json\"}} 3\n\
             notify_fanout_latency_seconds_bucket{{le=\"0.001\"}} {fast}\n\
             notify_fanout_latency_seconds_bucket{{le=\"0.1\"}} {slow}\n\
             notify_fanout_latency_seconds_bucket{{le=\"+Inf\"}} {slow}\n"
        ))
    }

    #[test]
    fn rates_come_from_the_difference_between_snapshots() {
        let mut builder = SnapshotBuilder::default();
        let start = Instant::now();
        let first = builder.build(&metrics(10, 100, 0, 0), &live(), start);
        assert_eq!(first.rates.publishes_per_second, None);
        assert_eq!(first.connections.total, 3);
        assert_eq!(first.connections.by_region["AE"], 2);
        assert_eq!(first.resumes["memory"], 0);
        assert_eq!(first.resumes["stream"], 5);
        assert_eq!(first.bad_payloads["not_json"], 3);
        assert!(first.broker.linked);

        let second = builder.build(
            &metrics(14, 140, 50, 100),
            &live(),
            start + Duration::from_secs(2),
        );
        assert_eq!(second.rates.publishes_per_second, Some(2.0));
        assert_eq!(second.rates.deliveries_per_second, Some(20.0));
        // Half the writes took up to 0.1 s: the 99th percentile is in that bucket.
        assert_eq!(second.rates.fanout_p99_seconds, Some(0.1));

        let idle = builder.build(
            &metrics(14, 140, 50, 100),
            &live(),
            start + Duration::from_secs(3),
        );
        assert_eq!(idle.rates.publishes_per_second, Some(0.0));
        assert_eq!(idle.rates.fanout_p99_seconds, None);
    }
}

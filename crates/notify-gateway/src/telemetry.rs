//! Logs and metrics setup: tracing with `RUST_LOG` and text or JSON output (ANSI colour only
//! on a terminal, never with `NO_COLOR`); the Prometheus recorder that every `metrics::` macro
//! in the workspace reports to, the process metrics, the build info, every event counter
//! registered at 0, and the handles the hot path uses so it never looks a metric up by name.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use notify_proto::Region;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Level from `RUST_LOG`, default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second install (tests calling run twice) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour only for a person at a terminal: not in a file, a pipe or journald, and never when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Upper bounds of the fan-out latency histogram, in seconds (100 µs … 5 s).
const FANOUT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Installs the Prometheus recorder and keeps its histograms drained.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("notify_fanout_latency_seconds".into()),
            &FANOUT_BUCKETS,
        )
        .context("configuring histogram buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    describe();
    register_at_zero();
    metrics::gauge!(
        "notify_build_info",
        "version" => crate::build_info::PACKAGE_VERSION,
        "commit" => crate::build_info::COMMIT
    )
    .set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The process metrics (`process_resident_memory_bytes`, `process_open_fds`, …), read from
/// the OS at each scrape.
static PROCESS_METRICS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    });

/// Renders `/metrics`: the process metrics are read now, then everything is rendered.
pub fn render_metrics(handle: &PrometheusHandle) -> String {
    PROCESS_METRICS.collect();
    handle.render()
}

/// Counters that otherwise appear only with their first event, so dashboards and alerts
/// (`rate(...)`, `absent(...)`) see them from the first scrape.
fn register_at_zero() {
    use notify_core::broker::ResumeSource;
    use notify_proto::PayloadError;
    let bad_payload_reasons = PayloadError::KINDS
        .into_iter()
        .chain(["unknown_channel", "foreign_id"]);
    for reason in bad_payload_reasons {
        metrics::counter!("notify_bad_payloads_total", "reason" => reason).absolute(0);
    }
    for source in [
        ResumeSource::Memory,
        ResumeSource::Stream,
        ResumeSource::Resync,
    ] {
        metrics::counter!("notify_resumes_total", "source" => source.as_str()).absolute(0);
    }
    for reason in ["error", "timeout"] {
        metrics::counter!("notify_tls_handshake_failures_total", "reason" => reason).absolute(0);
    }
    // `notify_messages_delivered_total` and `notify_slow_client_disconnects_total` carry a
    // `transport` label and are registered per transport ([`TransportMetrics`]).
    for name in [
        "notify_messages_dropped_total",
        "notify_broker_reconnects_total",
        "notify_broker_resyncs_total",
        "notify_resyncs_total",
        "notify_duplicates_dropped_total",
        "notify_live_copies_dropped_total",
        "notify_sockets_refused_total",
        "notify_accept_errors_total",
        "notify_proxy_header_errors_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "notify_build_info",
        "Always 1; the version and git commit of the running gateway as labels."
    );
    describe_gauge!(
        "notify_connections",
        "Open client connections (WebSocket and SSE), by region; a connection to several regions counts in each of its regions."
    );
    describe_counter!(
        "notify_multi_region_connections_total",
        "Client connections opened to more than one region at once (?region=AE,FI)."
    );
    describe_gauge!(
        "notify_connections_by_transport",
        "Open client connections, by transport (websocket, sse)."
    );
    describe_counter!(
        "notify_messages_received_total",
        "Valid notifications received from the broker, by region."
    );
    describe_counter!(
        "notify_messages_delivered_total",
        "Notification frames written to clients, by transport."
    );
    describe_counter!(
        "notify_messages_dropped_total",
        "Notifications slow clients missed before being disconnected."
    );
    describe_counter!(
        "notify_bad_payloads_total",
        "Payloads skipped because they broke the wire contract, by reason."
    );
    describe_counter!(
        "notify_slow_client_disconnects_total",
        "Clients disconnected for falling behind the queue limit or timing out a write, by transport."
    );
    describe_counter!(
        "notify_broker_reconnects_total",
        "Times the Redis subscription was lost and re-established."
    );
    describe_gauge!(
        "notify_broker_ready",
        "1 while the broker is subscribed, else 0."
    );
    describe_counter!(
        "notify_handshakes_rejected_total",
        "WebSocket handshakes refused, by reason."
    );
    describe_gauge!(
        "notify_limit_tracked_addresses",
        "Client addresses held by a per-address limit's map (per_ip: with open connections; rate: with a bucket not yet full)."
    );
    describe_counter!(
        "notify_proxy_header_errors_total",
        "Connections from trusted proxies closed for a missing, malformed or late PROXY header."
    );
    describe_gauge!(
        "notify_sockets_open",
        "Open client sockets of every kind (handshaking, plain HTTP, WebSocket), read at scrape time."
    );
    describe_counter!(
        "notify_sockets_refused_total",
        "TCP connections refused (503, closed at once) because the socket cap was reached."
    );
    describe_counter!(
        "notify_accept_errors_total",
        "Errors accepting TCP connections (e.g. out of file descriptors)."
    );
    describe_gauge!(
        "notify_connections_max",
        "WebSocket connections this gateway accepts at most (--max-connections, capped by the open-files limit)."
    );
    describe_gauge!(
        "notify_sockets_max",
        "Client sockets of every kind this gateway holds at most (the open-files limit less a reserve)."
    );
    describe_histogram!("notify_fanout_latency_seconds", Unit::Seconds, "Time from receipt by the gateway to the write to a client, per write batch (its oldest message).");
}

/// Publishes the caps that `notify_connections` and `notify_sockets_open` are measured
/// against, so alerts can say "80 % full" without knowing the host's limits.
pub fn record_capacity(connections: usize, sockets: usize) {
    metrics::gauge!("notify_connections_max").set(connections as f64);
    metrics::gauge!("notify_sockets_max").set(sockets as f64);
}

/// How a client receives: the label `transport` on per-connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /` upgraded to a WebSocket.
    WebSocket,
    /// `GET /events`, Server-Sent Events.
    Sse,
}

impl Transport {
    /// Both transports.
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

    /// The label value: `websocket` or `sse`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// One transport's hot-path handles.
#[derive(Debug, Clone)]
pub struct TransportMetrics {
    /// `notify_messages_delivered_total{transport}`.
    pub delivered: Counter,
    /// `notify_slow_client_disconnects_total{transport}`.
    pub slow_disconnects: Counter,
    /// `notify_connections_by_transport{transport}`.
    open: Gauge,
}

impl TransportMetrics {
    fn new(transport: Transport) -> Self {
        let label = transport.as_str();
        let open = metrics::gauge!("notify_connections_by_transport", "transport" => label);
        open.set(0.0);
        let delivered = metrics::counter!("notify_messages_delivered_total", "transport" => label);
        delivered.absolute(0);
        let slow_disconnects =
            metrics::counter!("notify_slow_client_disconnects_total", "transport" => label);
        slow_disconnects.absolute(0);
        TransportMetrics {
            delivered,
            slow_disconnects,
            open,
        }
    }
}

/// Pre-resolved metric handles for the per-connection hot path.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// `notify_messages_dropped_total`.
    pub dropped: Counter,
    /// `notify_fanout_latency_seconds`.
    pub fanout_latency: Histogram,
    /// WebSocket connections' counters.
    pub websocket: TransportMetrics,
    /// SSE streams' counters.
    pub sse: TransportMetrics,
    connections: HashMap<Region, Gauge>,
    /// `notify_multi_region_connections_total`.
    multi_region: Counter,
}

/// One open connection, counted in `notify_connections{region}` (each of its regions) and
/// `notify_connections_by_transport{transport}` until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    regions: CountedRegions,
    transport: Gauge,
}

/// The region gauges an open connection counts in: one inline (nearly every connection), or
/// several.
#[derive(Debug)]
enum CountedRegions {
    One(Gauge),
    Many(Box<[Gauge]>),
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        match &self.regions {
            CountedRegions::One(gauge) => gauge.decrement(1.0),
            CountedRegions::Many(gauges) => gauges.iter().for_each(|g| g.decrement(1.0)),
        }
        self.transport.decrement(1.0);
    }
}

impl ConnectionMetrics {
    /// Handles for `regions`, with each region's and transport's connection gauge set to 0 so
    /// it is visible before the first client.
    pub fn new(regions: &[Region]) -> Self {
        let connections = regions
            .iter()
            .map(|region| {
                let gauge =
                    metrics::gauge!("notify_connections", "region" => region.as_str().to_owned());
                gauge.set(0.0);
                (*region, gauge)
            })
            .collect();
        let multi_region = metrics::counter!("notify_multi_region_connections_total");
        multi_region.absolute(0);
        ConnectionMetrics {
            dropped: metrics::counter!("notify_messages_dropped_total"),
            fanout_latency: metrics::histogram!("notify_fanout_latency_seconds"),
            websocket: TransportMetrics::new(Transport::WebSocket),
            sse: TransportMetrics::new(Transport::Sse),
            connections,
            multi_region,
        }
    }

    /// The handles of `transport`.
    pub fn transport(&self, transport: Transport) -> &TransportMetrics {
        match transport {
            Transport::WebSocket => &self.websocket,
            Transport::Sse => &self.sse,
        }
    }

    /// Counts a connection of `transport` to `regions` as open (in each region's gauge) until
    /// the result is dropped.
    pub fn open(
        &self,
        regions: impl ExactSizeIterator<Item = Region>,
        transport: Transport,
    ) -> OpenConnection {
        let several = regions.len() > 1;
        // A region without a gauge is not served, so no connection gets here with it.
        let mut gauges = regions.map(|region| {
            self.connections
                .get(&region)
                .cloned()
                .unwrap_or_else(Gauge::noop)
        });
        let regions = match gauges.next() {
            Some(gauge) if !several => CountedRegions::One(gauge),
            first => {
                self.multi_region.increment(1);
                CountedRegions::Many(first.into_iter().chain(gauges).collect())
            }
        };
        match &regions {
            CountedRegions::One(gauge) => gauge.increment(1.0),
            CountedRegions::Many(gauges) => gauges.iter().for_each(|g| g.increment(1.0)),
        }
        let transport = self.transport(transport).open.clone();
        transport.increment(1.0);
        OpenConnection { regions, transport }
    }
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }
}

//! Whether a WebSocket handshake is let in, before it takes a connection slot: the page's
//! origin, the client address's handshake rate, and its open connections.
//!
//! Checks run in that order, each answered with a one-line reason and counted in
//! `notify_handshakes_rejected_total{reason}`: a foreign `Origin` → 403 (`origin`), too many
//! handshakes per second → 429 with `Retry-After` (`rate`), too many open connections → 429
//! (`per_ip`). The client address is the one [`crate::client_addr`] resolved.
//!
//! # Layout
//! - [`origins`]: `--allowed-origins` parsing and matching.
//! - [`rate`]: the per-address token bucket.
//! - [`per_ip`]: open connections per address, and [`per_ip::ClientKey`] (IPv4 address or
//!   IPv6 /64).
//! - [`sockets`]: open sockets per peer address, checked at accept, before any byte is read.

pub mod origins;
pub mod per_ip;
pub mod rate;
pub mod sockets;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use origins::AllowedOrigins;
use per_ip::{ClientKey, PerIpConnections, PerIpSlot};
use rate::HandshakeRate;

/// The admission policy, built once from the configuration.
#[derive(Debug)]
pub struct Admission {
    origins: AllowedOrigins,
    rate: Option<HandshakeRate>,
    per_ip: Option<Arc<PerIpConnections>>,
}

/// A handshake let in. Holds the address's connection count (when that is limited) for the
/// connection's life: one pointer in the connection's task, plus a 32-byte allocation only
/// when `--max-connections-per-ip` is set.
#[derive(Debug)]
#[must_use = "dropping it gives the per-address count back"]
pub struct Admitted {
    _per_ip: Option<Box<PerIpSlot>>,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The page's origin is not in `--allowed-origins`.
    #[error("origin {0} is not allowed to connect (see --allowed-origins)")]
    Origin(String),
    /// The address made more handshakes than its rate allows.
    #[error("too many connection attempts from {client}; retry in {}s", retry_after_secs(*.retry_after))]
    Rate {
        /// The client, as counted.
        client: String,
        /// When its next token is due.
        retry_after: Duration,
    },
    /// The address already has `--max-connections-per-ip` open connections.
    #[error("too many connections from {client} (at most {limit} per address)")]
    PerIp {
        /// The client, as counted.
        client: String,
        /// The cap.
        limit: usize,
    },
}

impl Refusal {
    /// Every reason label, so the counters can be registered at 0 at start.
    pub const REASONS: [&'static str; 3] = ["origin", "rate", "per_ip"];

    /// Label for `notify_handshakes_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Origin(_) => "origin",
            Refusal::Rate { .. } => "rate",
            Refusal::PerIp { .. } => "per_ip",
        }
    }
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Refusal::Origin(_) => StatusCode::FORBIDDEN,
            Refusal::Rate { .. } | Refusal::PerIp { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response();
        if let Refusal::Rate { retry_after, .. } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after).max(1)),
            );
        }
        response
    }
}

impl Admission {
    /// The policy: `origins` (empty: any), `rate` as (per second, burst) per address, and at
    /// most `max_per_ip` open connections per address (0: no per-address cap).
    pub fn new(
        origins: AllowedOrigins,
        rate: Option<(NonZeroU32, NonZeroU32)>,
        max_per_ip: usize,
    ) -> Self {
        Admission {
            origins,
            rate: rate.map(|(per_second, burst)| HandshakeRate::new(per_second, burst)),
            per_ip: (max_per_ip > 0).then(|| PerIpConnections::new(max_per_ip)),
        }
    }

    /// The policy `--allowed-origins`, `--handshake-rate-per-ip`, `--handshake-burst-per-ip`
    /// and `--max-connections-per-ip` ask for.
    pub fn from_config(config: &GatewayConfig) -> Self {
        let rate = NonZeroU32::new(config.handshake_rate_per_ip).map(|per_second| {
            let burst = NonZeroU32::new(config.handshake_burst_per_ip).unwrap_or(NonZeroU32::MIN);
            (per_second, burst)
        });
        Admission::new(
            AllowedOrigins::new(config.allowed_origins.clone()),
            rate,
            config.max_connections_per_ip,
        )
    }

    /// Decides on a handshake from `client` whose `Origin` header is `origin`.
    pub fn admit(&self, origin: Option<&HeaderValue>, client: IpAddr) -> Result<Admitted, Refusal> {
        if let Some(origin) = origin {
            if !self.origins.allows(origin.as_bytes()) {
                return Err(Refusal::Origin(
                    String::from_utf8_lossy(origin.as_bytes()).into_owned(),
                ));
            }
        }
        let key = ClientKey::of(client);
        if let Some(rate) = &self.rate {
            rate.check(key).map_err(|retry_after| Refusal::Rate {
                client: key.to_string(),
                retry_after,
            })?;
        }
        match &self.per_ip {
            None => Ok(Admitted { _per_ip: None }),
            Some(per_ip) => per_ip
                .try_take(key)
                .map(|slot| Admitted {
                    _per_ip: Some(Box::new(slot)),
                })
                .ok_or_else(|| Refusal::PerIp {
                    client: key.to_string(),
                    limit: per_ip.limit(),
                }),
        }
    }

    /// Drops idle rate-limit buckets every [`rate::PRUNE_INTERVAL`] until `stop`.
    pub async fn prune_until(&self, stop: CancellationToken) {
        let Some(rate) = &self.rate else { return };
        let mut tick = tokio::time::interval(rate::PRUNE_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => rate.forget_idle(),
            }
        }
    }

    /// Sets `notify_limit_tracked_addresses{limit}` to the number of addresses each
    /// per-address map holds now (called when metrics are scraped).
    pub fn record_tracked_addresses(&self) {
        if let Some(per_ip) = &self.per_ip {
            metrics::gauge!("notify_limit_tracked_addresses", "limit" => "per_ip")
                .set(per_ip.keys() as f64);
        }
        if let Some(rate) = &self.rate {
            metrics::gauge!("notify_limit_tracked_addresses", "limit" => "rate")
                .set(rate.keys() as f64);
        }
    }

    /// The limits as `/api/info` shows them (`null`: unlimited).
    pub fn info(&self) -> serde_json::Value {
        let origins: Option<Vec<String>> = (!self.origins.allows_all()).then(|| {
            self.origins
                .patterns()
                .iter()
                .map(ToString::to_string)
                .collect()
        });
        json!({
            "allowed_origins": origins,
            "max_connections_per_ip": self.per_ip.as_ref().map(|per_ip| per_ip.limit()),
            "handshake_rate_per_ip": self.rate.as_ref().map(|rate| json!({
                "per_second": rate.per_second(),
                "burst": rate.burst(),
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use origins::OriginPattern;

    #[test]
    fn an_admitted_connection_holds_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Admitted>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn origin_then_rate_then_count() {
        let admission = Admission::new(
            AllowedOrigins::new(vec![OriginPattern::parse("https://a.example").unwrap()]),
            Some((NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap())),
            2,
        );
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let evil = HeaderValue::from_static("https://evil.example");
        let good = HeaderValue::from_static("https://a.example");
        assert_eq!(
            admission.admit(Some(&evil), client).unwrap_err().reason(),
            "origin"
        );
        let first = admission.admit(Some(&good), client).unwrap();
        let _second = admission.admit(None, client).unwrap();
        assert_eq!(
            admission.admit(None, client).unwrap_err().reason(),
            "per_ip"
        );
        drop(first);
        let refusal = admission.admit(None, client).unwrap_err();
        assert_eq!(refusal.reason(), "rate");
        let response = refusal.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}

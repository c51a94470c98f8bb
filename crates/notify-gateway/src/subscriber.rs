//! What a client passes before it is served, whatever its transport (WebSocket or SSE): the
//! admission checks (origin, per-address rate and connections), its `region`/`since`, the
//! subscription of each region it asks for, the gateway not draining, and a connection slot
//! (one, however many regions).
//!
//! Both transports call [`admit_subscriber`], so a refusal has the same status, one-line
//! reason and `notify_handshakes_rejected_total{reason}` count on either: 403 origin, 429 rate
//! or per address, 400 bad query, region not served, a region asked twice or too many regions,
//! 503 draining or at capacity.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use notify_proto::Region;

use crate::admission::{Admitted, Refusal};
use crate::capacity::ConnectionSlot;
use crate::feed::{Feed, RegionFeed};
use crate::handshake::{QueryError, ResumeQuery};
use crate::server::{plain, App};
use crate::telemetry::Transport;

/// A client let in: what it receives and what it holds while connected.
#[derive(Debug)]
pub struct Subscriber {
    /// Its regions: their subscriptions, taken before any replay so nothing is missed, and
    /// where each resumes.
    pub feed: Feed,
    /// Held for the connection's life; frees a capacity slot on drop.
    pub slot: ConnectionSlot,
    /// Held for the connection's life; gives its address's connection count back on drop.
    pub admitted: Admitted,
}

/// Why a client was not let in; its response is the status and one-line reason it is told.
/// Already counted in `notify_handshakes_rejected_total{reason}`.
#[derive(Debug)]
pub enum NotAdmitted {
    /// Origin, rate or per-address limit ([`crate::admission`]).
    Admission(Refusal),
    /// The request itself, or the gateway's state, refused it.
    Request {
        /// The HTTP status.
        status: StatusCode,
        /// The one-line reason.
        text: String,
    },
}

impl IntoResponse for NotAdmitted {
    fn into_response(self) -> Response {
        match self {
            NotAdmitted::Admission(refusal) => refusal.into_response(),
            NotAdmitted::Request { status, text } => plain(status, text),
        }
    }
}

/// Lets a client in or says why not. `query` is the request's parsed `region`/`since`; it
/// is reported only after the admission checks, so a foreign origin is told 403 whatever it
/// asked for.
pub fn admit_subscriber(
    app: &Arc<App>,
    transport: Transport,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Result<ResumeQuery, QueryError>,
) -> Result<Subscriber, NotAdmitted> {
    let client = app.trusted_proxies.client(peer, headers);
    let admitted = match app.admission.admit(headers.get(header::ORIGIN), client) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            metrics::counter!("notify_handshakes_rejected_total", "reason" => refusal.reason())
                .increment(1);
            if let Some(suppressed) = app.admission_log.allow() {
                tracing::info!(%client, %peer, transport = transport.as_str(), reason = refusal.reason(), suppressed, "refused a connection: {refusal}");
            }
            return Err(NotAdmitted::Admission(refusal));
        }
    };
    let reject = |reason: &'static str, status: StatusCode, text: String| {
        metrics::counter!("notify_handshakes_rejected_total", "reason" => reason).increment(1);
        NotAdmitted::Request { status, text }
    };
    let ResumeQuery { regions } = match query {
        Ok(query) => query,
        Err(error) => {
            return Err(reject(
                error.reason(),
                StatusCode::BAD_REQUEST,
                error.to_string(),
            ))
        }
    };
    let mut feeds = Vec::with_capacity(regions.len());
    for (region, since) in regions {
        match app.hub.subscribe(region) {
            Ok(subscription) => feeds.push(RegionFeed::new(region, since, subscription)),
            Err(error) => {
                let served: Vec<String> = app.hub.regions().iter().map(Region::to_string).collect();
                let text = format!("{error} (served: {})", served.join(","));
                return Err(reject("region_not_served", StatusCode::BAD_REQUEST, text));
            }
        }
    }
    let feed = Feed::new(feeds);
    if app.draining.load(Ordering::Acquire) {
        return Err(reject(
            "draining",
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down".into(),
        ));
    }
    let Some(slot) = app.slots.try_take() else {
        let text = format!(
            "gateway at capacity ({} connections); try another node",
            app.slots.capacity()
        );
        return Err(reject("capacity", StatusCode::SERVICE_UNAVAILABLE, text));
    };
    tracing::debug!(region = %feed, %client, %peer, since = %feed.positions(), transport = transport.as_str(), "connection opened");
    Ok(Subscriber {
        feed,
        slot,
        admitted,
    })
}

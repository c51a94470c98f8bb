//! The live ops page: `/ops` shows, at a glance, what one gateway is doing — connections per
//! region against capacity, publishes and deliveries per second, slow-client disconnects, bad
//! payloads by reason, the broker's state and reconnects, readiness, resumes by source, uptime
//! and version — updated every second over Server-Sent Events from `/ops/stream`.
//!
//! # Layout
//! - [`access`]: who may see it (local requests; elsewhere the API key, by header or cookie).
//! - [`feed`]: the once-a-second snapshot shared by every viewer, and the viewer cap.
//! - [`snapshot`]: what a snapshot holds and how rates are computed.
//! - [`exposition`]: reading the numbers back from the metrics registry's text rendering,
//!   so the page and `/metrics` never disagree.
//!
//! The page itself is `assets/ops.html` with `ops.js` and `ops.css` (no inline script or
//! style, so the gateway's Content-Security-Policy holds). The routes live wherever `/metrics`
//! does: the admin port when `--admin-listen` is set, else the public port.

pub mod access;
pub mod exposition;
pub mod feed;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::assets::{self, Asset};
use crate::server::App;
use access::{Denial, OpsAccess};
use feed::Feed;

/// Everything the ops routes share.
#[derive(Debug, Clone)]
pub struct OpsPage {
    access: Arc<OpsAccess>,
    feed: Feed,
    /// Whether the key cookie is marked `Secure` (the page is served over TLS).
    secure_cookie: bool,
}

impl OpsPage {
    /// Starts the feed for `app`. `over_tls`: the routes are served over TLS, so the key
    /// cookie is marked `Secure`.
    pub fn start(app: &Arc<App>, over_tls: bool) -> Self {
        OpsPage {
            access: Arc::new(OpsAccess::new(
                &app.publish_access,
                app.trusted_proxies.clone(),
                Arc::clone(&app.wrong_keys),
            )),
            feed: Feed::start(Arc::clone(app)),
            secure_cookie: over_tls,
        }
    }
}

/// `/ops`, `/ops/stream` and the page's script and stylesheet.
pub fn routes<S>(page: OpsPage) -> Router<S> {
    let mut router = Router::new()
        .route("/ops", get(page_html))
        .route("/ops/stream", get(stream));
    for asset in assets::OPS_FILES {
        router = router.route(asset.path, get(move || async move { static_asset(asset) }));
    }
    router.with_state(page)
}

async fn page_html(
    State(page): State<OpsPage>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let offered_key = query.as_deref().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "key")
            .map(|(_, key)| key.into_owned())
    });
    if let Some(key) = offered_key {
        if let Err(denial) = page.access.check_offered(peer, &headers, key.trim()) {
            return refuse(peer, denial);
        }
        // Keep the key in a cookie and take it out of the address bar (and history).
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/ops".to_owned()),
                (
                    header::SET_COOKIE,
                    access::key_cookie(key.trim(), page.secure_cookie),
                ),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response();
    }
    match page.access.check(peer, &headers) {
        Ok(_) => static_asset(&assets::OPS_PAGE),
        Err(denial) => refuse(peer, denial),
    }
}

async fn stream(
    State(page): State<OpsPage>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(denial) = page.access.check(peer, &headers) {
        return refuse(peer, denial);
    }
    match page.feed.subscribe() {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(full) => {
            tracing::debug!(%peer, "refused an ops stream: {full}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                format!("{full}\n"),
            )
                .into_response()
        }
    }
}

/// The refusal, as text; logged with the peer and reason, never the key.
fn refuse(peer: SocketAddr, denial: Denial) -> Response {
    tracing::debug!(%peer, reason = denial.reason(), "refused the ops page");
    let mut response = (
        denial.status(),
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("{denial}\n"),
    )
        .into_response();
    if let Denial::TooManyWrongKeys(wait) = denial {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, crate::wrong_keys::retry_after(wait));
    }
    response
}

fn static_asset(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

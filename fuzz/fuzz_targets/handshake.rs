//! The request as hyper hands it to the gateway's `GET /` handler: method, URI and headers
//! built from arbitrary bytes (whatever the `http` crate accepts), then what the handler runs
//! on it: axum's WebSocket upgrade checks, the `Upgrade` header test that picks the demo page,
//! and our query parsing of the URI. Never panics; accepted queries round-trip.
#![no_main]

use arbitrary::Arbitrary;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::FromRequestParts;
use axum::http::{header, Request};
use libfuzzer_sys::fuzz_target;
use notify_gateway::handshake::ResumeQuery;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

#[derive(Debug, Arbitrary)]
struct RawRequest<'a> {
    method: &'a [u8],
    uri: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    websocket_headers: bool,
}

fuzz_target!(|raw: RawRequest<'_>| {
    let mut builder = Request::builder().method(raw.method).uri(raw.uri);
    if raw.websocket_headers {
        builder = builder
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
    }
    for (name, value) in raw.headers.iter().take(64) {
        builder = builder.header(*name, *value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let upgrade = runtime().block_on(WebSocketUpgrade::from_request_parts(&mut parts, &()));
    let _serves_page = upgrade.is_err() && !parts.headers.contains_key(header::UPGRADE);
    if let Ok(query) = ResumeQuery::parse(parts.uri.query(), 8) {
        assert_eq!(ResumeQuery::parse(Some(&query.to_query()), 8), Ok(query));
    }
});

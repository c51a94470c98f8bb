//! Server-Sent Events: `GET /events?region=AE[,FI…][&since=ID]` on the WebSocket's port, for
//! browsers whose network blocks or breaks WebSocket upgrades.
//!
//! A stream passes the same admission as a WebSocket ([`crate::subscriber`]: origin,
//! per-address rate and connections, capacity slot, draining), resumes through the same code
//! ([`crate::resume`]) from `since` or from the `Last-Event-ID` header a reconnecting
//! `EventSource` sends, and follows the same slow-consumer policy ([`stream`]). The response is
//! `200 text/event-stream`, uncached, with `X-Accel-Buffering: no` so nginx passes events on at
//! once; HTTP/1.1 chunked encoding carries it through HAProxy as it is.
//!
//! # Layout
//! - [`event`]: the `text/event-stream` encoding.
//! - [`stream`]: one stream's task: replay, live events, heartbeats, endings.

pub mod event;
pub mod stream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::handshake::ResumeQuery;
use crate::hangup::Hangup;
use crate::server::App;
use crate::subscriber::admit_subscriber;
use crate::telemetry::Transport;
use stream::SseStream;

/// The header that turns nginx's response buffering off for one response.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Chunks the queue between a stream's task and its response body holds: one, so a client
/// that stops reading stops its task at once.
const QUEUE_CHUNKS: usize = 1;

/// Answers `GET /events`: a refusal (the same statuses as a WebSocket handshake), or the
/// stream, whose task is tracked for shutdown.
pub fn open(
    app: &Arc<App>,
    tracker: &TaskTracker,
    hangup: Hangup,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response {
    let query =
        ResumeQuery::parse(query, app.settings.max_regions_per_connection).and_then(|query| {
            query.resume_after_last_event_id(
                headers
                    .get(header::HeaderName::from_static("last-event-id"))
                    .map(HeaderValue::as_bytes),
            )
        });
    let subscriber = match admit_subscriber(app, Transport::Sse, peer, headers, query) {
        Ok(subscriber) => subscriber,
        Err(refusal) => return refusal.into_response(),
    };
    let (queue, mut chunks) = mpsc::channel(QUEUE_CHUNKS);
    tracker.spawn(stream::serve(SseStream {
        subscriber,
        app: Arc::clone(app),
        queue,
        hangup,
    }));
    let body = futures_util::stream::poll_fn(move |cx| {
        // `Some(None)` is the stream's end, as is a dropped queue.
        chunks
            .poll_recv(cx)
            .map(|chunk| chunk.flatten().map(Ok::<_, Infallible>))
    });
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (X_ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

//! The server: shared state, the HTTP routes, the accept loop and shutdown.
//!
//! One port serves everything. `GET /?region=XX` with an `Upgrade: websocket` header becomes a
//! WebSocket ([`crate::socket`]); the same path without it is the demo page. The accept loop is
//! our own (hyper's HTTP/1 connection builder) so that we control what ops need and
//! `axum::serve` does not expose: the handshake (request head) timeout, `TCP_NODELAY`, and
//! accept errors such as EMFILE, which pause the loop briefly instead of killing or spinning it.
//! With `--tls-cert`/`--tls-key` each connection first completes its TLS handshake
//! ([`crate::tls`]), in its own task and under the handshake timeout, then speaks HTTP/1.1.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use notify_core::broker::redis::redact_url;
use notify_core::broker::{EmbeddedBroker, RedisBroker, RedisBrokerConfig};
use notify_core::{Broker, BrokerState, Hub, Ingest};
use notify_proto::{ChannelNames, Notification, Region, StreamId};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::assets;
use crate::capacity::{self, ConnectionSlots};
use crate::config::GatewayConfig;
use crate::socket::{self, Connection};
use crate::telemetry::{self, ConnectionMetrics};
use crate::tls::TlsTerminator;

/// The region a WebSocket gets when the URL names none (the seed's default).
const DEFAULT_REGION: Region = notify_proto::SEED_REGIONS[7];

/// Settings the per-connection tasks read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server ping interval.
    pub ping_interval: Duration,
    /// Silence after which a client is dropped.
    pub idle_timeout: Duration,
    /// Time a write may take before the client is dropped.
    pub write_timeout: Duration,
    /// Largest client frame.
    pub max_client_frame_bytes: usize,
    /// Largest payload on `/api/publish`.
    pub max_payload_bytes: usize,
    /// WebSocket read buffer (tungstenite's default is 128 KiB, about 94 KB per idle
    /// connection in published measurements; ours defaults to 128 B).
    pub ws_read_buffer_bytes: usize,
    /// WebSocket write buffer: the batch size in bytes before a write, and what a busy
    /// connection keeps after a burst (measured trade-off in docs/BENCHMARKS.md).
    pub ws_write_buffer_bytes: usize,
}

/// Who may use `POST /api/publish`.
#[derive(Debug, Clone)]
pub enum PublishAccess {
    /// Anyone (loopback listen address, no key configured).
    Open,
    /// Requests with `Authorization: Bearer <key>`.
    Key(String),
    /// Nobody: non-loopback listen address and no key.
    Disabled,
}

impl PublishAccess {
    fn name(&self) -> &'static str {
        match self {
            PublishAccess::Open => "open",
            PublishAccess::Key(_) => "key",
            PublishAccess::Disabled => "disabled",
        }
    }
}

/// State shared by every route and connection.
#[derive(Debug)]
pub struct App {
    /// Region → clients.
    pub hub: Arc<Hub<Utf8Bytes>>,
    /// Redis or embedded.
    pub broker: Broker<Utf8Bytes>,
    /// Connection cap.
    pub slots: Arc<ConnectionSlots>,
    /// Hot-path metric handles.
    pub metrics: ConnectionMetrics,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Per-connection settings.
    pub settings: Settings,
    /// Who may publish over HTTP.
    pub publish_access: PublishAccess,
    /// Cancelled at shutdown: every WebSocket sends 1001 and ends.
    pub closing: CancellationToken,
    /// True once shutdown began; `/readyz` answers 503.
    pub draining: AtomicBool,
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains: stops accepting,
/// closes every WebSocket with 1001, and returns once all connections ended or
/// `--drain-timeout` passed.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local_addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let prometheus = telemetry::install_metrics()?;
    let open_files = capacity::raise_open_files_limit();
    let capacity = capacity::connection_capacity(config.max_connections, open_files);
    tracing::info!(
        capacity,
        open_files_limit = open_files,
        max_connections = config.max_connections,
        "connection capacity"
    );

    let tls = match config.tls_files() {
        Some(files) => Some(TlsTerminator::new(files).context("loading the TLS certificate")?),
        None => None,
    };
    let hub = Arc::new(Hub::new(config.regions.iter().copied(), config.queue_limit));
    let history_capacity = match config.redis_url {
        Some(_) => config.history_cache,
        None => config.history_retention,
    };
    let ingest = Arc::new(Ingest::new(
        Arc::clone(&hub),
        ChannelNames::new(config.channel_prefix.clone()),
        config.max_payload_bytes,
        history_capacity,
    ));
    let broker_shutdown = CancellationToken::new();
    let broker = match &config.redis_url {
        Some(url) => {
            let mut redis_config = RedisBrokerConfig::new(url.clone());
            redis_config.tls = config.redis_tls();
            redis_config.retention = config.history_retention;
            redis_config.ping_interval = config.redis_ping_interval;
            let (broker, _task) =
                RedisBroker::start(redis_config, Arc::clone(&ingest), broker_shutdown.clone())
                    .context("starting the Redis broker")?;
            tracing::info!(redis = %redact_url(url), "broker: Redis");
            Broker::Redis(Box::new(broker))
        }
        None => {
            tracing::info!("broker: embedded (single node; set --redis-url for several nodes)");
            Broker::Embedded(EmbeddedBroker::new(Arc::clone(&ingest)))
        }
    };
    let publish_access = match (&config.api_key, local_addr.ip().is_loopback()) {
        (Some(key), _) => PublishAccess::Key(key.clone()),
        (None, true) => PublishAccess::Open,
        (None, false) => {
            tracing::warn!("POST /api/publish is disabled: set --api-key to publish over HTTP on a non-loopback address");
            PublishAccess::Disabled
        }
    };
    let regions = hub.regions();
    let app = Arc::new(App {
        metrics: ConnectionMetrics::new(&regions),
        hub,
        broker,
        slots: ConnectionSlots::new(capacity),
        prometheus,
        settings: Settings {
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            max_client_frame_bytes: config.max_client_frame_bytes,
            max_payload_bytes: config.max_payload_bytes,
            ws_read_buffer_bytes: config.ws_read_buffer_bytes,
            ws_write_buffer_bytes: config.ws_write_buffer_bytes,
        },
        publish_access,
        closing: CancellationToken::new(),
        draining: AtomicBool::new(false),
    });
    let region_list: Vec<&str> = regions.iter().map(Region::as_str).collect();
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    tracing::info!(
        "listening on {http}://{local_addr}/ (WebSocket: {ws}://{local_addr}/?region=XX; regions {})",
        region_list.join(",")
    );
    let tls_watch_stop = CancellationToken::new();
    if let Some(tls) = &tls {
        tokio::spawn(
            tls.clone()
                .watch(config.tls_reload_interval, tls_watch_stop.clone()),
        );
    }

    let tracker = TaskTracker::new();
    let router = router(Arc::clone(&app), tracker.clone());
    let accept_stop = CancellationToken::new();
    let accept = accept_loop(
        listener,
        router,
        config.handshake_timeout,
        tls.as_ref().map(TlsTerminator::acceptor),
        tracker.clone(),
        accept_stop.clone(),
        app.closing.clone(),
    );
    tokio::pin!(accept);
    tokio::select! {
        () = &mut accept => {}
        () = shutdown => {}
    }

    let open = app.slots.open();
    tracing::info!(
        connections = open,
        "shutting down: closing every connection (1001)"
    );
    app.draining.store(true, Ordering::Release);
    accept_stop.cancel();
    accept.await;
    app.closing.cancel();
    tracker.close();
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.slots.open(),
            drain_timeout = ?config.drain_timeout,
            "drain timed out; exiting with connections still open"
        );
    }
    broker_shutdown.cancel();
    tls_watch_stop.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections until `stop`, serving each with hyper's HTTP/1 and upgrades.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
    tracker: TaskTracker,
    stop: CancellationToken,
    closing: CancellationToken,
) {
    let mut pause = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = Duration::from_millis(10);
                let service = router.clone();
                let closing = closing.clone();
                tracker.spawn(serve_connection(
                    stream,
                    peer,
                    service,
                    handshake_timeout,
                    tls.clone(),
                    closing,
                ));
            }
            Err(error) if is_per_connection_error(&error) => {}
            Err(error) => {
                // EMFILE/ENFILE/ENOBUFS: pause so the loop neither dies nor spins; doubling
                // up to one second while the condition lasts.
                metrics::counter!("notify_accept_errors_total").increment(1);
                tracing::warn!(%error, pause = ?pause, "accept failed; pausing");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Errors that concern one connection only; the loop just accepts the next.
fn is_per_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// Serves one accepted connection: the TLS handshake first when TLS is on (bounded by
/// `handshake_timeout` and by shutdown), then HTTP/1.1.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
    closing: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(stream, peer, router, handshake_timeout, closing).await;
    };
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => handshake,
        () = closing.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_http(stream, peer, router, handshake_timeout, closing).await,
        Ok(Err(error)) => {
            metrics::counter!("notify_tls_handshake_failures_total", "reason" => "error")
                .increment(1);
            tracing::debug!(%peer, %error, "TLS handshake failed");
        }
        Err(_elapsed) => {
            metrics::counter!("notify_tls_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            tracing::debug!(%peer, timeout = ?handshake_timeout, "TLS handshake timed out");
        }
    }
}

/// HTTP/1.1 with upgrades on a plain or TLS stream, until it ends or shutdown asks it to.
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    handshake_timeout: Duration,
    closing: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| router.clone().call(request));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::trace!(%peer, %error, "HTTP connection ended with an error");
    }
}

fn router(app: Arc<App>, tracker: TaskTracker) -> Router {
    let body_limit = app.settings.max_payload_bytes.saturating_mul(2).max(4096);
    let mut router = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/info", get(info))
        .route(
            "/api/publish",
            post(publish).layer(DefaultBodyLimit::max(body_limit)),
        );
    for asset in assets::FILES {
        router = router.route(asset.path, get(move || async move { serve_asset(asset) }));
    }
    router.with_state(AppState { app, tracker })
}

#[derive(Clone)]
struct AppState {
    app: Arc<App>,
    tracker: TaskTracker,
}

fn serve_asset(asset: &'static assets::Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text + "\n",
    )
        .into_response()
}

fn json_error(status: StatusCode, error: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

/// Query of the WebSocket URL.
#[derive(Debug, Deserialize)]
struct RootQuery {
    /// Region to receive; default US.
    region: Option<String>,
    /// Last message id the client saw; resume after it.
    since: Option<String>,
}

async fn root(
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    headers: HeaderMap,
    query: Result<Query<RootQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            if headers.contains_key(header::UPGRADE) {
                return rejection.into_response();
            }
            return serve_asset(&assets::INDEX);
        }
    };
    let app = &state.app;
    let reject = |reason: &'static str, status: StatusCode, text: String| {
        metrics::counter!("notify_handshakes_rejected_total", "reason" => reason).increment(1);
        plain(status, text)
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return reject("bad_query", StatusCode::BAD_REQUEST, rejection.body_text());
        }
    };
    let region = match query.region.as_deref() {
        None => DEFAULT_REGION,
        Some(text) => match Region::parse(text) {
            Ok(region) => region,
            Err(error) => return reject("bad_region", StatusCode::BAD_REQUEST, error.to_string()),
        },
    };
    let since = match query.since.as_deref().filter(|since| !since.is_empty()) {
        None => None,
        Some(text) => match StreamId::parse(text) {
            Ok(since) => Some(since),
            Err(error) => {
                return reject(
                    "bad_since",
                    StatusCode::BAD_REQUEST,
                    format!("since: {error}"),
                )
            }
        },
    };
    let subscription = match app.hub.subscribe(region) {
        Ok(subscription) => subscription,
        Err(error) => {
            let served: Vec<String> = app.hub.regions().iter().map(Region::to_string).collect();
            let text = format!("{error} (served: {})", served.join(","));
            return reject("region_not_served", StatusCode::BAD_REQUEST, text);
        }
    };
    if app.draining.load(Ordering::Acquire) {
        return reject(
            "draining",
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down".into(),
        );
    }
    let Some(slot) = app.slots.try_take() else {
        let text = format!(
            "gateway at capacity ({} connections); try another node",
            app.slots.capacity()
        );
        return reject("capacity", StatusCode::SERVICE_UNAVAILABLE, text);
    };
    let connection = Connection {
        region,
        since,
        subscription,
        slot,
        app: Arc::clone(app),
    };
    let frame_limit = app.settings.max_client_frame_bytes;
    let tracker = state.tracker.clone();
    upgrade
        .read_buffer_size(app.settings.ws_read_buffer_bytes)
        .write_buffer_size(app.settings.ws_write_buffer_bytes)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| tracker.track_future(socket::serve(socket, connection)))
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok".into())
}

async fn readyz(State(state): State<AppState>) -> Response {
    let app = &state.app;
    if app.draining.load(Ordering::Acquire) {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down".into(),
        );
    }
    match app.broker.state() {
        BrokerState::Ready => plain(StatusCode::OK, "ready".into()),
        state => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} broker is {}",
                app.broker.kind(),
                state.as_str()
            ),
        ),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.app.prometheus.render(),
    )
        .into_response()
}

async fn info(State(state): State<AppState>) -> Response {
    let app = &state.app;
    Json(json!({
        "regions": app.hub.regions(),
        "broker": app.broker.kind(),
        "publish": app.publish_access.name(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn publish(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let app = &state.app;
    match &app.publish_access {
        PublishAccess::Open => {}
        PublishAccess::Disabled => {
            return json_error(
                StatusCode::FORBIDDEN,
                "publishing over HTTP is disabled on a non-loopback address without --api-key",
            );
        }
        PublishAccess::Key(key) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
                return json_error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API key: send Authorization: Bearer <key>",
                );
            }
        }
    }
    let notification = match Notification::from_slice(&body, app.settings.max_payload_bytes) {
        Ok(notification) => notification,
        Err(error @ notify_proto::PayloadError::TooLarge { .. }) => {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, error);
        }
        Err(error) => return json_error(StatusCode::BAD_REQUEST, error),
    };
    if matches!(app.broker, Broker::Embedded(_)) && !app.hub.serves(notification.region) {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "region {} is not served by this gateway",
                notification.region
            ),
        );
    }
    match app.broker.publish(&notification).await {
        Ok(receipt) => Json(json!({
            "region": notification.region,
            "subscribers": receipt.subscribers,
            "id": receipt.id,
        }))
        .into_response(),
        Err(error) => json_error(StatusCode::SERVICE_UNAVAILABLE, error),
    }
}

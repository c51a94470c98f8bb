//! The server: shared state, the HTTP routes, the accept loop and shutdown.
//!
//! One port serves everything. `GET /?region=XX` with an `Upgrade: websocket` header becomes a
//! WebSocket ([`crate::socket`]); the same path without it is the demo page. The accept loop is
//! our own (hyper's HTTP/1 connection builder) so that we control what ops need and
//! `axum::serve` does not expose: the handshake (request head) timeout, `TCP_NODELAY`, a socket
//! slot for every accepted connection ([`crate::capacity`]; past the cap a minimal 503 and an
//! immediate close), and accept errors such as EMFILE, which pause the loop briefly instead of
//! killing or spinning it. With `--tls-cert`/`--tls-key` each connection completes its TLS
//! handshake ([`crate::tls`]) in its own task and under the handshake timeout, after the PROXY
//! protocol header (which a load balancer sends in the clear) and before HTTP/1.1.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::ws::{Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use notify_core::broker::redis::redact_url;
use notify_core::broker::{EmbeddedBroker, RedisBroker, RedisBrokerConfig};
use notify_core::log_limit::RateLimitedLog;
use notify_core::{Broker, BrokerState, Hub, Ingest};
use notify_proto::{ChannelNames, KeyLayout, Notification, Region};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::admin;
use crate::admission::per_ip::ClientKey;
use crate::admission::per_ip::PerIpSlot;
use crate::admission::sockets::SocketsPerAddress;
use crate::admission::{Admission, Refusal};
use crate::assets;
use crate::capacity::{self, ConnectionSlot, ConnectionSlots, CountedStream};
use crate::client_addr::TrustedProxies;
use crate::config::GatewayConfig;
use crate::direct::{self, SharedStream, SocketOutlet};
use crate::handshake::ResumeQuery;
use crate::hangup::Hangup;
use crate::headers;
use crate::ops::{self, OpsPage};
use crate::ping_clock::PingClock;
use crate::proxy_protocol::ProxyProtocol;
use crate::publish_access::{ApiKeys, PublishAccess, Rejection};
use crate::replay_budget::ReplayBudget;
use crate::socket::{self, Connection};
use crate::sse;
use crate::subscriber::admit_subscriber;
use crate::telemetry::{self, ConnectionMetrics, Transport};
use crate::tls::TlsTerminator;
use crate::wrong_keys::{retry_after, WrongKeys};

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
    /// Cap on a WebSocket's unsent bytes; past it the client is a slow consumer.
    pub ws_max_write_buffer_bytes: usize,
    /// Longest wait of a resume for a replay turn before 1013.
    pub replay_wait: Duration,
    /// Most regions one connection may ask for (`--max-regions-per-connection`).
    pub max_regions_per_connection: usize,
}

impl Settings {
    /// Ping ticks a connection may stay silent: a client not heard from for more ticks than
    /// this has been silent longer than `idle_timeout` (the ticks are `ping_interval` apart,
    /// and the first silent tick can come right after it was last heard).
    pub fn idle_ticks(&self) -> u16 {
        let period = self.ping_interval.as_secs_f64().max(1e-3);
        let ticks = (self.idle_timeout.as_secs_f64() / period).ceil();
        // Saturating float-to-int cast: any timeout this long is "never".
        ticks as u16
    }
}

/// State shared by every route and connection.
#[derive(Debug)]
pub struct App {
    /// Region → clients.
    pub hub: Arc<Hub<Utf8Bytes>>,
    /// Redis or embedded.
    pub broker: Broker<Utf8Bytes>,
    /// WebSocket cap.
    pub slots: Arc<ConnectionSlots>,
    /// Socket cap: every accepted TCP connection, upgraded or not.
    pub sockets: Arc<ConnectionSlots>,
    /// Hot-path metric handles.
    pub metrics: ConnectionMetrics,
    /// The global budget of concurrent replays (`--max-concurrent-replays`).
    pub replays: ReplayBudget,
    /// Resumes refused for want of a replay turn are logged at most once a second.
    pub replay_refusal_log: RateLimitedLog,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Per-connection settings.
    pub settings: Settings,
    /// Who may publish over HTTP.
    pub publish_access: PublishAccess,
    /// Refused publishes are logged at most once a second.
    pub rejection_log: RateLimitedLog,
    /// Wrong API keys per address, shared by `/api/publish` and `/ops`.
    pub wrong_keys: Arc<WrongKeys>,
    /// Origin, per-address rate and connection limits on WebSocket handshakes.
    pub admission: Admission,
    /// Handshakes refused by [`App::admission`] are logged at most once a second.
    pub admission_log: RateLimitedLog,
    /// Whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Cancelled at shutdown: every WebSocket sends 1001 and ends.
    pub closing: CancellationToken,
    /// True once shutdown began; `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Every connection's pings and idle checks (`--ping-interval`).
    pub ping_clock: Arc<PingClock>,
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains: fails /readyz
/// for `--drain-delay` while still serving, stops accepting, closes every WebSocket with 1001, and returns once all connections ended or
/// `--drain-timeout` passed.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let admin_listener = match config.admin_listen {
        Some(address) => Some(admin::bind(address).await?),
        None => None,
    };
    run_on(listener, admin_listener, config, shutdown).await
}

/// [`run`] with the admin listener (`--admin-listen`) already bound, so the binary can
/// refuse a taken address before it starts logging.
pub async fn run_on(
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local_addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let prometheus = telemetry::install_metrics()?;
    let open_files = capacity::raise_open_files_limit();
    let capacity = capacity::connection_capacity(config.max_connections, open_files);
    let socket_capacity = capacity::socket_capacity(open_files);
    telemetry::record_capacity(capacity, socket_capacity);
    tracing::info!(
        capacity,
        socket_capacity,
        open_files_limit = open_files,
        max_connections = config.max_connections,
        "connection capacity"
    );

    let tls = match config.tls_files() {
        Some(files) => Some(TlsTerminator::new(files).context("loading the TLS certificate")?),
        None => None,
    };
    let hub = Arc::new(Hub::new(config.regions.iter().copied(), config.queue_limit));
    let history_capacity = match config.redis_url() {
        Some(_) => config.history_cache,
        None => config.history_retention,
    };
    let ingest = Arc::new(Ingest::new(
        Arc::clone(&hub),
        ChannelNames::new(config.channel_prefix.clone())
            .with_layout(KeyLayout::for_cluster(config.redis_cluster)),
        config.max_payload_bytes,
        history_capacity,
    ));
    let broker_shutdown = CancellationToken::new();
    let broker = match config.redis_url() {
        Some(url) => {
            let mut redis_config = RedisBrokerConfig::new(url);
            redis_config.tls = config.redis_tls();
            redis_config.cluster = config.redis_cluster;
            redis_config.retention = config.history_retention;
            redis_config.ping_interval = config.redis_ping_interval;
            redis_config.push_queue = config.redis_push_queue;
            let (broker, _task) =
                RedisBroker::start(redis_config, Arc::clone(&ingest), broker_shutdown.clone())
                    .context("starting the Redis broker")?;
            tracing::info!(redis = %redact_url(url), cluster = config.redis_cluster, "broker: Redis");
            Broker::Redis(Box::new(broker))
        }
        None => {
            tracing::info!("broker: embedded (single node; set --redis-url for several nodes)");
            Broker::Embedded(EmbeddedBroker::new(Arc::clone(&ingest)))
        }
    };
    // The publish API is served where /api/* is: the admin address when there is one.
    let publish_listen = match &admin_listener {
        Some(listener) => listener.local_addr().context("reading the admin address")?,
        None => local_addr,
    };
    let publish_access =
        PublishAccess::from_keys(ApiKeys::new(config.api_keys()), publish_listen.ip());
    match &publish_access {
        PublishAccess::Disabled => tracing::warn!(
            "POST /api/publish is disabled: set --api-key or --api-key-file to publish over HTTP on a non-loopback address"
        ),
        PublishAccess::Keys(keys) => tracing::info!(keys = keys.len(), "POST /api/publish needs a bearer key"),
        PublishAccess::Open => tracing::info!("POST /api/publish is open to local requests (loopback listen address, no key)"),
    }
    for rejection in Rejection::ALL {
        metrics::counter!("notify_api_rejections_total", "reason" => rejection.reason())
            .absolute(0);
    }
    for reason in Refusal::REASONS {
        metrics::counter!("notify_handshakes_rejected_total", "reason" => reason).absolute(0);
    }
    let admission = Admission::from_config(&config);
    let trusted_proxies = TrustedProxies::new(config.trusted_proxies.clone());
    tracing::info!(limits = %admission.info(), trusted_proxies = ?trusted_proxies.networks(), "handshake limits");
    let regions = hub.regions();
    let app = Arc::new(App {
        metrics: ConnectionMetrics::new(&regions),
        hub,
        broker,
        slots: ConnectionSlots::new(capacity),
        sockets: ConnectionSlots::new(socket_capacity),
        prometheus,
        settings: Settings {
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            max_client_frame_bytes: config.max_client_frame_bytes,
            max_payload_bytes: config.max_payload_bytes,
            ws_read_buffer_bytes: config.ws_read_buffer_bytes,
            ws_write_buffer_bytes: config.ws_write_buffer_bytes,
            ws_max_write_buffer_bytes: config.ws_max_write_buffer_bytes(),
            replay_wait: config.replay_wait,
            max_regions_per_connection: config.max_regions_per_connection,
        },
        replays: ReplayBudget::new(config.max_concurrent_replays),
        replay_refusal_log: RateLimitedLog::default(),
        publish_access,
        rejection_log: RateLimitedLog::default(),
        wrong_keys: Arc::new(WrongKeys::default()),
        admission,
        admission_log: RateLimitedLog::default(),
        trusted_proxies,
        closing: CancellationToken::new(),
        draining: AtomicBool::new(false),
        ping_clock: PingClock::new(config.ping_interval),
    });
    tokio::spawn(PingClock::run(Arc::downgrade(&app.ping_clock)));
    direct::register_metrics();
    let region_list: Vec<&str> = regions.iter().map(Region::as_str).collect();
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    tracing::info!(
        listen = %local_addr,
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
    let pruning = Arc::clone(&app);
    tokio::spawn(async move { pruning.admission.prune_until(pruning.closing.clone()).await });
    let state = AppState {
        app: Arc::clone(&app),
        tracker: tracker.clone(),
        ops: OpsPage::start(&app, tls.is_some() && config.admin_listen.is_none()),
    };
    let router = match admin_listener {
        Some(listener) => {
            let admin_router =
                headers::secure(admin_router(state.clone()), &config.frame_ancestors)
                    .context("building the security headers")?;
            tracing::info!(
                "admin: /metrics, /ops, /api/*, /healthz, /readyz on http://{}/",
                listener.local_addr().context("reading the admin address")?
            );
            tracker.spawn(admin::serve(listener, admin_router, app.closing.clone()));
            public_router(state, false)
        }
        None => public_router(state, true),
    };
    let router = headers::secure(router, &config.frame_ancestors)
        .context("building the security headers")?;
    let accept_stop = CancellationToken::new();
    let connections = ConnectionServing {
        router,
        proxy_protocol: ProxyProtocol::from_config(&config),
        handshake_timeout: config.handshake_timeout,
        tls: tls.as_ref().map(TlsTerminator::acceptor),
        tracker: tracker.clone(),
        closing: app.closing.clone(),
        sockets: Arc::clone(&app.sockets),
        sockets_per_address: SocketsPerAddress::new(
            config.max_connections_per_ip,
            app.trusted_proxies.clone(),
        ),
    };
    let accept = accept_loop(listener, connections, accept_stop.clone());
    tokio::pin!(accept);
    tokio::select! {
        () = &mut accept => {}
        () = shutdown => {}
    }

    app.draining.store(true, Ordering::Release);
    if !config.drain_delay.is_zero() {
        tracing::info!(
            connections = app.slots.open(),
            drain_delay = ?config.drain_delay,
            "shutting down: failing /readyz before closing connections"
        );
        // Keep accepting, so health checks read the 503 and new WebSockets are refused with
        // one instead of timing out, while open connections are served as before.
        tokio::select! {
            () = &mut accept => {}
            () = tokio::time::sleep(config.drain_delay) => {}
        }
    }
    tracing::info!(
        connections = app.slots.open(),
        sockets = app.sockets.open(),
        "shutting down: closing every connection (1001)"
    );
    accept_stop.cancel();
    accept.await;
    app.closing.cancel();
    // Wakes every connection's task, which then finds `closing` cancelled.
    app.ping_clock.close();
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

/// Most bytes of a request head buffered per connection (hyper's minimum). This protocol's
/// requests are a few hundred bytes; a longer head is answered 431 and the connection closed,
/// so slow or endless heads cost a bounded amount per socket, and sockets are capped.
const MAX_REQUEST_HEAD_BYTES: usize = 8192;

/// Shortest time between two warnings about refused sockets.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What a socket past its address's socket cap is told before it is closed.
const TOO_MANY_SOCKETS_RESPONSE: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\ntoo many open sockets from this address\n";

/// What a socket past the socket cap is told before it is closed.
const REFUSED_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What the accept loop needs to serve each accepted connection; each connection's task
/// shares it (behind an `Arc`) for its router, PROXY setting, timeout, TLS and shutdown token.
struct ConnectionServing {
    /// The public routes.
    router: Router,
    /// Whether (and from whom) a PROXY protocol header precedes the request.
    proxy_protocol: ProxyProtocol,
    /// Time for each step before a request: the PROXY header, the TLS handshake, the head.
    handshake_timeout: Duration,
    /// The TLS handshake each connection completes first, when TLS is on.
    tls: Option<TlsAcceptor>,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Cancelled at shutdown: connections finish gracefully.
    closing: CancellationToken,
    /// One slot per open socket, whatever its state.
    sockets: Arc<ConnectionSlots>,
    /// Open sockets per peer address, when `--max-connections-per-ip` caps addresses.
    sockets_per_address: SocketsPerAddress,
}

/// Accepts connections until `stop`, serving each with hyper's HTTP/1 and upgrades. Each
/// connection holds a slot of `sockets` for its life; past the cap it is refused at once.
async fn accept_loop(listener: TcpListener, serving: ConnectionServing, stop: CancellationToken) {
    let serving = Arc::new(serving);
    let mut pause = Duration::from_millis(10);
    let refused = metrics::counter!("notify_sockets_refused_total");
    let mut refused_since_warning = 0u64;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = Duration::from_millis(10);
                let Some(slot) = serving.sockets.try_take() else {
                    refuse(stream, peer, REFUSED_RESPONSE);
                    refused.increment(1);
                    refused_since_warning += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL) {
                        tracing::warn!(
                            refused = refused_since_warning,
                            capacity = serving.sockets.capacity(),
                            "socket capacity reached: refusing new connections (503)"
                        );
                        refused_since_warning = 0;
                        last_warning = Some(Instant::now());
                    }
                    continue;
                };
                let address_slot = match serving.sockets_per_address.try_take(peer.ip()) {
                    Ok(address_slot) => address_slot,
                    Err(refusal) => {
                        refuse(stream, peer, TOO_MANY_SOCKETS_RESPONSE);
                        metrics::counter!("notify_handshakes_rejected_total", "reason" => "sockets_per_ip")
                            .increment(1);
                        tracing::debug!(%peer, %refusal, "refused a socket");
                        continue;
                    }
                };
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                }
                serving.tracker.spawn(serve_connection(
                    stream,
                    slot,
                    address_slot,
                    peer,
                    Arc::clone(&serving),
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

/// Answers a refused socket (past the socket cap: 503; past its address's socket cap: 429)
/// with a minimal response and closes it at once. Bytes the
/// client already sent are read first (without waiting) so the close is a FIN the client can
/// read the answer before, not a reset.
fn refuse(stream: TcpStream, peer: SocketAddr, response: &[u8]) {
    let mut stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%peer, %error, "refused socket closed without an answer");
            return;
        }
    };
    let mut discard = [0u8; 1024];
    for _ in 0..8 {
        match stream.read(&mut discard) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if let Err(error) = stream.write_all(response) {
        tracing::debug!(%peer, %error, "refused socket closed without an answer");
    }
}

/// Serves one accepted connection: the PROXY protocol header when it is on (read from the
/// raw socket, before anything else), then the TLS handshake when TLS is on (bounded by
/// `handshake_timeout` and by shutdown), then HTTP/1.1. The socket holds `slot` throughout.
async fn serve_connection(
    mut stream: TcpStream,
    slot: ConnectionSlot,
    address_slot: Option<Box<PerIpSlot>>,
    peer: SocketAddr,
    serving: Arc<ConnectionServing>,
) {
    let handshake_timeout = serving.handshake_timeout;
    let router = serving.router.clone();
    let closing = serving.closing.clone();
    let peer = if serving.proxy_protocol.is_on() {
        let header = serving.proxy_protocol.client_of(&mut stream, peer);
        match tokio::time::timeout(handshake_timeout, header).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                metrics::counter!("notify_proxy_header_errors_total").increment(1);
                tracing::debug!(%peer, %error, "closing a connection: bad PROXY header");
                return;
            }
            Err(elapsed) => {
                metrics::counter!("notify_proxy_header_errors_total").increment(1);
                tracing::debug!(%peer, %elapsed, "closing a connection: no PROXY header in time");
                return;
            }
        }
    } else {
        peer
    };
    let Some(acceptor) = &serving.tls else {
        // Plain TCP: a WebSocket on it may be written by its region's fan-out directly.
        let (stream, outlet) = SharedStream::new(stream);
        let stream = CountedStream::new(stream, slot, address_slot);
        let outlet = Some(outlet);
        return serve_http(stream, peer, router, handshake_timeout, closing, outlet).await;
    };
    let stream = CountedStream::new(stream, slot, address_slot);
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => handshake,
        () = closing.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            serve_http(stream, peer, router, handshake_timeout, closing, None).await;
        }
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
/// A plain stream's `outlet` goes with each request, for a WebSocket to be written directly.
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    handshake_timeout: Duration,
    closing: CancellationToken,
    outlet: Option<Arc<SocketOutlet>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hangup = Hangup::new();
    let requested_hangup = hangup.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(hangup.clone());
        if let Some(outlet) = &outlet {
            request.extensions_mut().insert(Arc::clone(outlet));
        }
        router.clone().call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = requested_hangup.requested() => return hung_up(peer),
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = requested_hangup.requested() => return hung_up(peer),
            }
        }
    };
    if let Err(error) = result {
        tracing::trace!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// A response stream asked to drop its connection ([`Hangup`]); dropping it closes the socket.
fn hung_up(peer: SocketAddr) {
    tracing::debug!(%peer, "connection cut by its response stream");
}

/// The public port: WebSocket, demo page and assets, health checks, and — unless an admin
/// address takes them — `/metrics` and `/api/*`.
fn public_router(state: AppState, with_operator_routes: bool) -> Router {
    let mut router = Router::new()
        .route("/", get(root))
        .route("/events", get(events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_operator_routes {
        router = router.merge(operator_routes(&state));
    }
    for asset in assets::FILES {
        router = router.route(asset.path, get(move || async move { serve_asset(asset) }));
    }
    router.with_state(state)
}

/// The admin port (`--admin-listen`): health checks, `/metrics`, `/ops` and `/api/*`.
fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(operator_routes(&state))
        .with_state(state)
}

/// `/metrics`, `/api/*` and `/ops`.
fn operator_routes(state: &AppState) -> Router<AppState> {
    let body_limit = state
        .app
        .settings
        .max_payload_bytes
        .saturating_mul(2)
        .max(4096);
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/info", get(info))
        .merge(ops::routes(state.ops.clone()))
        .route(
            "/api/publish",
            post(publish).layer(DefaultBodyLimit::max(body_limit)),
        )
}

#[derive(Clone)]
struct AppState {
    app: Arc<App>,
    tracker: TaskTracker,
    /// The live ops page, served with `/metrics`.
    ops: OpsPage,
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

/// A plain-text answer of one line.
pub(crate) fn plain(status: StatusCode, text: String) -> Response {
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

async fn root(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    outlet: Option<Extension<Arc<SocketOutlet>>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
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
    let query = ResumeQuery::parse(query.as_deref(), app.settings.max_regions_per_connection);
    let mut subscriber = match admit_subscriber(app, Transport::WebSocket, peer, &headers, query) {
        Ok(subscriber) => subscriber,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(Extension(outlet)) = outlet {
        subscriber.feed = subscriber.feed.direct(&app.hub, outlet);
    }
    // Boxed until the task starts: the upgrade's task keeps what its callback captured for its
    // whole life, so a connection captured inline would be held twice by every idle task.
    let connection = Box::new(Connection {
        subscriber,
        app: Arc::clone(app),
    });
    let frame_limit = app.settings.max_client_frame_bytes;
    let tracker = state.tracker.clone();
    upgrade
        .read_buffer_size(app.settings.ws_read_buffer_bytes)
        .write_buffer_size(app.settings.ws_write_buffer_bytes)
        .max_write_buffer_size(app.settings.ws_max_write_buffer_bytes)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| connection_task(&tracker, socket, connection))
}

/// `GET /events`: a Server-Sent Events stream ([`sse`]).
async fn events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(hangup): Extension<Hangup>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    sse::open(
        &state.app,
        &state.tracker,
        hangup,
        peer,
        &headers,
        query.as_deref(),
    )
}

/// The task of one upgraded connection: [`socket::serve`] itself, tracked for shutdown.
///
/// The serve future is handed over as it is, not awaited inside a wrapping `async` block: a
/// block that captures a future and awaits it keeps two places for it in its state (the
/// capture and the awaited value), which doubled every idle connection's task.
fn connection_task(
    tracker: &TaskTracker,
    socket: WebSocket,
    connection: Box<Connection>,
) -> impl Future<Output = ()> + Send + 'static {
    tracker.track_future(socket::serve(socket, connection))
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
    state.app.admission.record_tracked_addresses();
    // Every open socket (handshaking, plain HTTP, WebSocket), read at scrape time: with the
    // process's open descriptors it shows what else holds descriptors.
    metrics::gauge!("notify_sockets_open").set(state.app.sockets.open() as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render_metrics(&state.app.prometheus),
    )
        .into_response()
}

async fn info(State(state): State<AppState>) -> Response {
    let app = &state.app;
    let mut limits = app.admission.info();
    limits["max_connections"] = json!(app.slots.capacity());
    limits["trusted_proxies"] = json!(app.trusted_proxies.networks().len());
    Json(json!({
        "regions": app.hub.regions(),
        "broker": app.broker.kind(),
        "publish": app.publish_access.name(),
        "limits": limits,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = &state.app;
    let client = app.trusted_proxies.client(peer, &headers);
    let guesser = ClientKey::of(client);
    let checked = match app.wrong_keys.refused(guesser) {
        Some(wait) => Err((Rejection::TooManyWrongKeys, Some(wait))),
        None => app.publish_access.check(&headers).map_err(|rejection| {
            if rejection == Rejection::WrongKey {
                app.wrong_keys.record(guesser);
            }
            (rejection, None)
        }),
    };
    if let Err((rejection, wait)) = checked {
        metrics::counter!("notify_api_rejections_total", "reason" => rejection.reason())
            .increment(1);
        if let Some(suppressed) = app.rejection_log.allow() {
            tracing::warn!(%client, %peer, reason = rejection.reason(), suppressed, "refused a publish request");
        }
        let mut response = json_error(rejection.status(), rejection);
        if let Some(wait) = wait {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after(wait));
        }
        return response;
    }
    // A missing `ts` is now, as the CLI does (docs/PROTOCOL.md).
    let now = Notification::ts_now();
    let notification =
        match Notification::from_publish_request(&body, now, app.settings.max_payload_bytes) {
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
        Ok(receipt) => {
            // `gateway_nodes_reached` (Redis) or `clients_reached` (embedded), and the
            // deprecated `subscribers` (notify_proto::publish_reply).
            let mut reply = serde_json::Map::new();
            reply.insert("region".into(), json!(notification.region));
            receipt.reach.write_into(&mut reply);
            reply.insert("id".into(), json!(receipt.id));
            Json(reply).into_response()
        }
        Err(error) => json_error(StatusCode::SERVICE_UNAVAILABLE, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_size<A, B, C, F: Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The connection task is the serve future plus the tracker's handle, nothing more: an
    /// extra copy of the serve future (a wrapping block that captures and awaits it) was
    /// ~1.4 KB more per idle connection.
    #[test]
    fn the_connection_task_is_the_serve_future_plus_a_pointer() {
        let serve = socket::tests::future_size(socket::serve);
        let task = task_size(|tracker: &TaskTracker, socket, connection| {
            connection_task(tracker, socket, connection)
        });
        assert!(
            task <= serve + std::mem::size_of::<usize>(),
            "connection task {task} B vs serve future {serve} B"
        );
    }
}

//! The optional admin listener (`--admin-listen`): `/metrics`, `/ops`, `/api/*`, `/healthz`
//! and `/readyz` on an address of their own, so the public port serves only browsers and load
//! balancers. Operators bind it to a private interface; then scrapers and publishers need no
//! route through the public edge, and the public port answers 404 for `/metrics` and `/api/*`.
//! (linkerd2-proxy's admin port is the model.)

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds the admin address. Done before anything is served, so a taken port stops the start.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the admin address {address}"))
}

/// Serves `router` on `listener` until `stop`; requests see the TCP peer as
/// `ConnectInfo<SocketAddr>`, like on the public port.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, service)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the admin listener stopped");
    }
}

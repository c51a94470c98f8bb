//! The `notify-gateway` binary: configuration, logging, bind, signals. See the library for
//! everything else.

use std::process::ExitCode;

use anyhow::Context;
use notify_gateway::{config::GatewayConfig, telemetry};

fn main() -> ExitCode {
    let config = GatewayConfig::parse_and_validate();
    telemetry::init_logging(config.log_format);
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("notify-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: GatewayConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
        notify_gateway::run(listener, config, shutdown_signal()).await
    })
}

/// Accept-queue length. The kernel caps it at `net.core.somaxconn`; the default of `bind`
/// (128) overflows under reconnect storms and makes clients wait for a SYN retransmit (1 s).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds with `SO_REUSEADDR` (fast restarts) and a deep accept queue.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Completes on SIGTERM (how orchestrators ask for a graceful stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

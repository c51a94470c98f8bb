//! The `notify-gateway` binary: configuration, logging, bind, signals. See the library for
//! everything else.
//!
//! Everything that can be checked is checked before the first log line: the configuration
//! (exit 2), then both listen addresses are bound (exit 69 if one cannot be). Each error is
//! printed once: on stderr before logging starts, as a log line after.

use std::net::SocketAddr;
use std::process::ExitCode;

use notify_gateway::{config::GatewayConfig, exit, telemetry};

fn main() -> ExitCode {
    let loaded =
        match GatewayConfig::load(std::env::args_os().collect(), |name| std::env::var_os(name)) {
            Ok(loaded) => loaded,
            Err(error) => return ExitCode::from(error.report()),
        };
    if loaded.config.check_config {
        print!("{}", loaded.effective);
        return ExitCode::from(exit::SUCCESS);
    }
    let config = loaded.config;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(start(config)))
}

/// Binds, starts logging, and serves until SIGTERM/SIGINT; returns the exit code.
async fn start(config: GatewayConfig) -> u8 {
    let listener = match bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => return bind_failed("--listen", config.listen, &error),
    };
    let admin_listener = match config.admin_listen {
        Some(address) => match bind(address) {
            Ok(listener) => Some(listener),
            Err(error) => return bind_failed("--admin-listen", address, &error),
        },
        None => None,
    };
    telemetry::init_logging(config.log_format);
    match notify_gateway::server::run_on(listener, admin_listener, config, shutdown_signal()).await
    {
        Ok(()) => exit::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            exit::FAILURE
        }
    }
}

/// Prints why `address` cannot be bound, with a hint for the usual causes; EX_UNAVAILABLE.
fn bind_failed(flag: &str, address: SocketAddr, error: &std::io::Error) -> u8 {
    let hint = match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            ": another process (another notify-gateway?) is listening there; stop it or choose another {flag}"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!(": no interface of this host has that address; check {flag}")
        }
        std::io::ErrorKind::PermissionDenied => {
            ": ports below 1024 need CAP_NET_BIND_SERVICE".to_owned()
        }
        _ => String::new(),
    };
    eprintln!("error: cannot listen on {address} ({flag}): {error}{hint}");
    exit::UNAVAILABLE
}

/// Accept-queue length. The kernel caps it at `net.core.somaxconn`; the default of `bind`
/// (128) overflows under reconnect storms and makes clients wait for a SYN retransmit (1 s).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds with `SO_REUSEADDR` (fast restarts) and a deep accept queue.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
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

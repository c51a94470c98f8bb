//! One WebSocket connection: moves frames from the client's [`Subscription`] to its socket,
//! pings it, and ends it with a close frame that says why.
//!
//! The task owns the socket alone (no split, no second task, no per-client channel): it waits
//! for whichever comes first — a queued message, a client frame, the ping tick, or shutdown.
//! Queued messages are written in batches: everything already queued (up to
//! [`MAX_BATCH`]) is encoded into the socket's write buffer and flushed with one write.
//!
//! Endings and their close codes:
//! - fell behind the queue limit → 1008 (policy violation), `slow consumer: …`, counted;
//! - a write that does not finish within `--write-timeout` → dropped without a close frame
//!   (the socket is not draining), counted as a slow consumer;
//! - nothing heard for `--idle-timeout` → dropped;
//! - a client frame over `--max-client-frame-bytes` → 1009 (message too big);
//! - gateway shutdown → 1001 (going away).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use notify_core::{Envelope, Subscription, SubscriptionError};
use notify_proto::Region;
use tokio_tungstenite::tungstenite;

use crate::capacity::ConnectionSlot;
use crate::server::App;

/// Most queued messages written in one flush.
pub const MAX_BATCH: usize = 64;

/// Time allowed to send a close frame before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Close code for a slow consumer (RFC 6455 §7.4.1: policy violation).
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
/// Close code for shutdown (going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for an oversized client frame.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Everything one connection needs, moved into its task.
#[derive(Debug)]
pub struct Connection {
    /// The region it receives.
    pub region: Region,
    /// Its window into the region's ring.
    pub subscription: Subscription<Utf8Bytes>,
    /// Held for the connection's life; frees a capacity slot on drop.
    pub slot: ConnectionSlot,
    /// Shared gateway state.
    pub app: Arc<App>,
}

/// How a connection ended.
enum Ending {
    /// The client closed or vanished; nothing more to send.
    ClientGone,
    /// Send this close frame, then drop.
    Close(u16, String),
    /// Drop without a close frame.
    Drop(&'static str),
}

/// Serves one upgraded connection until it ends.
pub async fn serve(mut socket: WebSocket, connection: Connection) {
    let Connection {
        region,
        mut subscription,
        slot,
        app,
    } = connection;
    let gauge = app.metrics.connections(region).cloned();
    if let Some(gauge) = &gauge {
        gauge.increment(1.0);
    }
    let ending = pump(&mut socket, &mut subscription, &app).await;
    if let Some(gauge) = &gauge {
        gauge.decrement(1.0);
    }
    match ending {
        Ending::ClientGone => {}
        Ending::Close(code, reason) => {
            tracing::debug!(%region, code, %reason, "closing connection");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
        }
        Ending::Drop(reason) => tracing::debug!(%region, reason, "dropping connection"),
    }
    drop(slot);
}

async fn pump(
    socket: &mut WebSocket,
    subscription: &mut Subscription<Utf8Bytes>,
    app: &App,
) -> Ending {
    let settings = &app.settings;
    let start = tokio::time::Instant::now() + settings.ping_interval;
    let mut ping = tokio::time::interval_at(start, settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = app.closing.cancelled() => {
                return Ending::Close(CLOSE_GOING_AWAY, "server shutting down".into());
            }
            inbound = socket.next() => match inbound {
                None | Some(Ok(Message::Close(_))) => return Ending::ClientGone,
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(error)) => return read_error_ending(error),
            },
            delivery = subscription.recv() => match delivery {
                Ok(first) => {
                    if let Err(ending) = write_batch(socket, subscription, first, app).await {
                        return ending;
                    }
                }
                Err(error) => return subscription_ending(error, app),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > settings.idle_timeout {
                    return Ending::Drop("idle timeout");
                }
                let sent = tokio::time::timeout(
                    settings.write_timeout,
                    socket.send(Message::Ping(Default::default())),
                ).await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ending::ClientGone,
                    Err(_) => {
                        app.metrics.slow_disconnects.increment(1);
                        return Ending::Drop("ping write timed out");
                    }
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    subscription: &mut Subscription<Utf8Bytes>,
    first: Envelope<Utf8Bytes>,
    app: &App,
) -> Result<(), Ending> {
    let oldest = first.received_at;
    let mut lagged = None;
    let write = async {
        socket.feed(Message::Text(first.frame)).await?;
        let mut written = 1u64;
        while written < MAX_BATCH as u64 {
            match subscription.try_recv() {
                Ok(Some(next)) => {
                    socket.feed(Message::Text(next.frame)).await?;
                    written += 1;
                }
                Ok(None) => break,
                Err(error) => {
                    lagged = Some(error);
                    break;
                }
            }
        }
        socket.flush().await?;
        Ok::<u64, axum::Error>(written)
    };
    match tokio::time::timeout(app.settings.write_timeout, write).await {
        Ok(Ok(written)) => {
            app.metrics.delivered.increment(written);
            app.metrics
                .fanout_latency
                .record(oldest.elapsed().as_secs_f64());
        }
        Ok(Err(_)) => return Err(Ending::ClientGone),
        Err(_) => {
            app.metrics.slow_disconnects.increment(1);
            return Err(Ending::Drop("write timed out"));
        }
    }
    match lagged {
        Some(error) => Err(subscription_ending(error, app)),
        None => Ok(()),
    }
}

fn subscription_ending(error: SubscriptionError, app: &App) -> Ending {
    match error {
        SubscriptionError::Lagged { skipped } => {
            app.metrics.slow_disconnects.increment(1);
            app.metrics.dropped.increment(skipped);
            Ending::Close(CLOSE_SLOW_CONSUMER, error.to_string())
        }
        SubscriptionError::Closed => Ending::Close(CLOSE_GOING_AWAY, "server shutting down".into()),
    }
}

fn read_error_ending(error: axum::Error) -> Ending {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(capacity)) => {
            Ending::Close(CLOSE_TOO_BIG, format!("client frame too big: {capacity}"))
        }
        _ => Ending::ClientGone,
    }
}

//! One WebSocket connection: moves frames from the client's [`Feed`] (one region's
//! subscription, or several regions') to its socket, pings it, and ends it with a close frame
//! that says why.
//!
//! The task owns the socket's reading, pings and endings (no second task, no per-client
//! channel): it waits for whichever comes first — a queued message, a client frame, the end of
//! a slow flush, the ping tick ([`crate::ping_clock`]), or shutdown. On a plain-TCP connection
//! to one region the region's fan-out writes messages itself while the client is caught up
//! ([`crate::direct`]); the task then writes only what the socket did not take at once, a
//! burst, or what a resume replays. Queued messages are written in batches: everything already queued
//! (up to [`MAX_BATCH`]) is encoded into the socket's write buffer and flushed with one write.
//! The loop never awaits a write, so the task's future stays small (about 1 KiB; it is most of
//! an idle connection's memory) and the common path sets no timer.
//!
//! # Resume
//! A client that connects with `?since=<id>` first gets every retained message after that id,
//! in order, then live ones, or a `resync` ([`crate::resume`], shared with SSE). A resume
//! refused for want of a replay turn, or while the history cannot be read, is closed with
//! 1013; shutdown interrupts a replay with 1001. A connection to several regions resumes each
//! after its own id (`since=AE:<id>,FI:<id>`), one region after the other.
//!
//! Endings and their close codes:
//! - fell behind the queue limit → 1008 (policy violation), `slow consumer: …`, counted;
//! - a write that does not finish within `--write-timeout`, or unsent frames past
//!   `--ws-max-write-buffer-bytes` → dropped without a close frame (the socket is not
//!   draining), counted as a slow consumer. Pongs count too: a client that floods pings and
//!   does not read its pongs is cut the same way, and at most one pong waits beyond the cap;
//! - nothing heard for `--idle-timeout` → dropped;
//! - a client frame over `--max-client-frame-bytes` → 1009 (message too big);
//! - gateway shutdown → 1001 (going away), also in the middle of a resume's replay;
//! - the client's close frame → the same code echoed back (RFC 6455 §5.5.1);
//! - resume asked while the history cannot be read (Redis down), or while every replay turn
//!   stays taken for `--replay-wait` → 1013 (try again later).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, SinkExt, Stream};
use notify_core::SubscriptionError;
use notify_proto::{Region, StreamId};
use tokio_tungstenite::tungstenite;

use crate::feed::{Delivery, Feed};
#[cfg(doc)]
use crate::ping_clock::PingClock;
use crate::resume::{ReplayFailure, ReplaySink};
use crate::server::App;
use crate::subscriber::Subscriber;
use crate::telemetry::Transport;

/// Most queued messages written in one flush.
pub const MAX_BATCH: usize = 64;

/// Time allowed to send a close frame before the socket is dropped anyway.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Close code for a slow consumer (RFC 6455 §7.4.1: policy violation).
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
/// Close code for shutdown (going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for an oversized client frame.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when history cannot be read right now.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Everything one connection needs, moved into its task.
#[derive(Debug)]
pub struct Connection {
    /// What it receives and holds ([`crate::subscriber`]).
    pub subscriber: Subscriber,
    /// Shared gateway state.
    pub app: Arc<App>,
}

/// How a connection ended.
enum Ending {
    /// The client's TCP stream ended; nothing more to send.
    ClientGone,
    /// The client sent a close frame: flush the echo tungstenite queued, then drop.
    ClientClosed,
    /// Reading or writing failed; nothing more can be sent.
    Failed(axum::Error),
    /// Send this close frame, then drop.
    Close(u16, String),
    /// Drop without a close frame.
    Drop(&'static str),
}

/// Serves one upgraded connection until it ends.
///
/// `connection` comes boxed: the upgrade's task holds its callback's captures for its whole
/// life, and a box there is 8 bytes instead of the connection (the box is freed as soon as
/// the task starts).
pub async fn serve(mut socket: WebSocket, connection: Box<Connection>) {
    let Connection {
        subscriber:
            Subscriber {
                mut feed,
                slot,
                admitted,
            },
        app,
    } = *connection;
    let open = app.metrics.open(feed.regions(), Transport::WebSocket);
    // One `pump` call site: the task's future holds one pump state, not one per branch.
    let ending = 'connection: {
        if feed.resumes() {
            // Boxed: reading history (possibly from Redis) takes a large future, and inline
            // it would make every connection's task that large for its whole life. Shutdown
            // interrupts it: a long replay to a client that does not read must not hold the
            // drain.
            let replayed = tokio::select! {
                biased;
                () = app.closing.cancelled() => Err(going_away()),
                replayed = Box::pin(replay(&mut socket, &mut feed, &app)) => replayed,
            };
            if let Err(ending) = replayed {
                break 'connection ending;
            }
        }
        pump(&mut socket, &mut feed, &app).await
    };
    // From here only the task writes: the close frame must not meet a fan-out write.
    feed.stop_direct_writes();
    drop(open);
    match ending {
        Ending::ClientGone => tracing::debug!(region = %feed, "connection ended by the client"),
        Ending::ClientClosed => {
            tracing::debug!(region = %feed, "client sent a close frame");
            // tungstenite queued the echo of the client's close frame; send it.
            let sent = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
            log_close(&feed, sent);
        }
        Ending::Failed(error) => tracing::debug!(region = %feed, %error, "connection failed"),
        Ending::Close(code, reason) => {
            tracing::debug!(region = %feed, code, %reason, "closing connection");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let close = socket.send(Message::Close(Some(frame)));
            let sent = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
            log_close(&feed, sent);
        }
        Ending::Drop(reason) => tracing::debug!(region = %feed, reason, "dropping connection"),
    }
    drop(slot);
    drop(admitted);
}

/// Logs how sending the last frame of a connection within [`CLOSE_TIMEOUT`] went; a client
/// that did not take it in time, or whose socket failed, is dropped anyway. (The send is
/// awaited by the caller: a future holding the feed as well would make every connection's
/// task larger.)
fn log_close(feed: &Feed, sent: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>) {
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(region = %feed, %error, "close frame not sent"),
        Err(_) => {
            tracing::debug!(region = %feed, timeout = ?CLOSE_TIMEOUT, "close frame not taken in time")
        }
    }
}

fn going_away() -> Ending {
    Ending::Close(CLOSE_GOING_AWAY, "server shutting down".into())
}

/// The WebSocket side of a resume: pages go out as text frames, in batches.
struct WebSocketReplay<'a> {
    socket: &'a mut WebSocket,
    app: &'a App,
}

impl ReplaySink for WebSocketReplay<'_> {
    type Error = Ending;

    async fn send_page(
        &mut self,
        _region: Region,
        entries: Vec<(StreamId, Utf8Bytes)>,
    ) -> Result<(), Ending> {
        send_frames(
            self.socket,
            entries.into_iter().map(|(_, frame)| frame),
            self.app,
        )
        .await
    }

    async fn send_control(&mut self, frame: Utf8Bytes) -> Result<(), Ending> {
        send_frames(self.socket, [frame], self.app).await
    }
}

/// Replays what the client missed after each region's `since` ([`Feed::replay`]); a refused
/// or failed replay ends the connection with 1013, which asks the client to retry with backoff.
async fn replay(socket: &mut WebSocket, feed: &mut Feed, app: &App) -> Result<(), Ending> {
    let mut sink = WebSocketReplay { socket, app };
    feed.replay(&mut sink, app)
        .await
        .map_err(|failure| match failure {
            ReplayFailure::Refused(refusal) => {
                Ending::Close(CLOSE_TRY_AGAIN_LATER, refusal.to_string())
            }
            ReplayFailure::Sink(ending) => ending,
        })
}

/// Writes `frames` in batches of [`MAX_BATCH`], each flushed within the write timeout.
async fn send_frames(
    socket: &mut WebSocket,
    frames: impl IntoIterator<Item = Utf8Bytes>,
    app: &App,
) -> Result<(), Ending> {
    let mut frames = frames.into_iter().peekable();
    while frames.peek().is_some() {
        let batch = async {
            let mut written = 0u64;
            for frame in frames.by_ref().take(MAX_BATCH) {
                socket.feed(Message::Text(frame)).await?;
                written += 1;
            }
            socket.flush().await?;
            Ok::<u64, axum::Error>(written)
        };
        match tokio::time::timeout(app.settings.write_timeout, batch).await {
            Ok(Ok(written)) => app.metrics.websocket.delivered.increment(written),
            Ok(Err(error)) => return Err(write_error_ending(error, app)),
            Err(_) => {
                app.metrics.websocket.slow_disconnects.increment(1);
                return Err(Ending::Drop("write timed out"));
            }
        }
    }
    Ok(())
}

/// What the socket has to say when polled: a flush finished, or a client frame arrived.
enum SocketEvent {
    Flushed(Result<(), axum::Error>),
    Inbound(Option<Result<Message, axum::Error>>),
}

/// Polls the socket for both directions at once (one mutable borrow): the pending flush first,
/// when there is one, then client frames.
fn poll_socket(socket: &mut WebSocket, flushing: bool, cx: &mut Context<'_>) -> Poll<SocketEvent> {
    if flushing {
        if let Poll::Ready(result) = Pin::new(&mut *socket).poll_flush(cx) {
            return Poll::Ready(SocketEvent::Flushed(result));
        }
    }
    Pin::new(&mut *socket)
        .poll_next(cx)
        .map(SocketEvent::Inbound)
}

/// Frames queued in the socket's write buffer and not yet flushed, and the timer that bounds
/// how long a flush may take. The timer is only allocated for a client whose socket once could
/// not take a batch at once.
#[derive(Default)]
struct Outbox {
    /// Frames queued since the last flush (at most a batch and a few control frames; 32 bits
    /// keep every idle connection's task smaller).
    frames: u32,
    oldest: Option<Instant>,
    flushing: bool,
    write_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Outbox {
    fn queued(&mut self, received_at: Instant) {
        self.frames += 1;
        self.oldest.get_or_insert(received_at);
    }

    /// Flushes now if the socket takes it all; otherwise starts the write timer and leaves
    /// the flush to the event loop.
    fn flush_now(&mut self, socket: &mut WebSocket, app: &App) -> Result<(), Ending> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(&mut *socket).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => {
                self.flushed(app);
                Ok(())
            }
            Poll::Ready(Err(error)) => Err(Ending::Failed(error)),
            Poll::Pending => {
                self.flushing = true;
                let deadline = tokio::time::Instant::now() + app.settings.write_timeout;
                match &mut self.write_timer {
                    Some(timer) => timer.as_mut().reset(deadline),
                    None => self.write_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                Ok(())
            }
        }
    }

    fn flushed(&mut self, app: &App) {
        self.flushing = false;
        if self.frames > 0 {
            app.metrics
                .websocket
                .delivered
                .increment(u64::from(self.frames));
            self.frames = 0;
        }
        if let Some(oldest) = self.oldest.take() {
            app.metrics
                .fanout_latency
                .record(oldest.elapsed().as_secs_f64());
        }
    }

    /// Completes when the pending flush has taken longer than the write timeout.
    async fn write_deadline(&mut self) {
        match &mut self.write_timer {
            Some(timer) => timer.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// Whether the socket can take another frame into its buffer right now.
fn ready_to_queue(socket: &mut WebSocket) -> Result<bool, Ending> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match Pin::new(&mut *socket).poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(error)) => Err(Ending::Failed(error)),
        Poll::Pending => Ok(false),
    }
}

fn queue(socket: &mut WebSocket, message: Message, app: &App) -> Result<(), Ending> {
    Pin::new(&mut *socket)
        .start_send(message)
        .map_err(|error| write_error_ending(error, app))
}

/// A write that failed because the socket's unsent bytes reached `--ws-max-write-buffer-bytes`
/// is a slow consumer; any other write error ends the connection as failed.
fn write_error_ending(error: axum::Error, app: &App) -> Ending {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::WriteBufferFull(_)) => {
            app.metrics.websocket.slow_disconnects.increment(1);
            Ending::Drop("write buffer full")
        }
        _ => Ending::Failed(axum::Error::new(inner)),
    }
}

/// Moves frames from the subscription to the socket until the connection ends.
///
/// The loop never awaits a write: frames are put into the socket's buffer and flushed in
/// place when the socket takes them at once (the common case: no timer, no allocation). A
/// flush that cannot finish is driven by the loop itself, so client frames and shutdown are
/// still handled meanwhile, and no new messages are taken until it finishes: a client that
/// stays behind lags out of the ring (1008), and one whose flush outlasts the write timeout is
/// dropped.
async fn pump(socket: &mut WebSocket, feed: &mut Feed, app: &App) -> Ending {
    let settings = &app.settings;
    let mut ping = app.ping_clock.timer();
    // Ping ticks since the client was last heard from; past `idle_ticks` it has been silent
    // longer than the idle timeout (a count, not an `Instant`: every idle task holds it).
    let mut silent_ticks: u16 = 0;
    let mut outbox = Outbox::default();
    feed.caught_up();
    loop {
        // Shutdown wakes every connection through the ping clock ([`PingClock::close`]): no
        // shutdown future per connection.
        if app.closing.is_cancelled() {
            return going_away();
        }
        let flushing = outbox.flushing;
        tokio::select! {
            biased;
            event = std::future::poll_fn(|cx| poll_socket(socket, flushing, cx)) => match event {
                SocketEvent::Flushed(Ok(())) => {
                    outbox.flushed(app);
                    feed.caught_up();
                }
                SocketEvent::Flushed(Err(error)) => return Ending::Failed(error),
                SocketEvent::Inbound(None) => return Ending::ClientGone,
                SocketEvent::Inbound(Some(Ok(Message::Close(_)))) => return Ending::ClientClosed,
                SocketEvent::Inbound(Some(Ok(Message::Ping(_)))) => {
                    silent_ticks = 0;
                    // tungstenite queued a pong; if the socket does not take it, the write
                    // timer runs, so a client that pings without reading is cut.
                    if !flushing {
                        if let Err(ending) = outbox.flush_now(socket, app) {
                            return ending;
                        }
                    }
                }
                SocketEvent::Inbound(Some(Ok(_))) => silent_ticks = 0,
                SocketEvent::Inbound(Some(Err(error))) => return read_error_ending(error),
            },
            () = outbox.write_deadline(), if flushing => {
                app.metrics.websocket.slow_disconnects.increment(1);
                return Ending::Drop("write timed out");
            }
            delivery = feed.recv(), if !flushing => match delivery {
                Ok(received) => {
                    // `None`: the fan-out handed writing back; the tail of its last write,
                    // if any, goes out with this flush.
                    let queued = match received {
                        Some(received) => {
                            let first = feed.accept(received);
                            queue_batch(socket, feed, first, &mut outbox, app)
                        }
                        None => Ok(None),
                    }
                    .and_then(|lagged| {
                        outbox.flush_now(socket, app)?;
                        lagged.map_or(Ok(()), |error| Err(subscription_ending(error, app)))
                    });
                    if let Err(ending) = queued {
                        return ending;
                    }
                    if !outbox.flushing {
                        feed.caught_up();
                    }
                }
                Err(error) => return subscription_ending(error, app),
            },
            () = ping.tick() => {
                if app.closing.is_cancelled() {
                    return going_away();
                }
                silent_ticks = silent_ticks.saturating_add(1);
                if silent_ticks > settings.idle_ticks() {
                    return Ending::Drop("idle timeout");
                }
                if !flushing {
                    let pinged = queue(socket, Message::Ping(Default::default()), app)
                        .and_then(|()| outbox.flush_now(socket, app));
                    if let Err(ending) = pinged {
                        return ending;
                    }
                }
            }
        }
    }
}

/// Queues `first` and whatever else is already waiting (up to [`MAX_BATCH`] frames, and only
/// while the socket's buffer takes them). Returns a lag found while draining, to act on after
/// the queued frames are flushed.
fn queue_batch(
    socket: &mut WebSocket,
    feed: &mut Feed,
    first: Delivery,
    outbox: &mut Outbox,
    app: &App,
) -> Result<Option<SubscriptionError>, Ending> {
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(Delivery {
        envelope,
        already_sent,
        ..
    }) = next.take()
    {
        taken += 1;
        if !already_sent {
            queue(socket, Message::Text(envelope.frame), app)?;
            outbox.queued(envelope.received_at);
        }
        if taken == MAX_BATCH || !ready_to_queue(socket)? {
            break;
        }
        match feed.try_recv() {
            Ok(delivery) => next = delivery,
            Err(error) => return Ok(Some(error)),
        }
    }
    Ok(None)
}

fn subscription_ending(error: SubscriptionError, app: &App) -> Ending {
    match error {
        SubscriptionError::Lagged { skipped } => {
            app.metrics.websocket.slow_disconnects.increment(1);
            app.metrics.dropped.increment(skipped);
            Ending::Close(CLOSE_SLOW_CONSUMER, error.to_string())
        }
        SubscriptionError::Closed => going_away(),
    }
}

fn read_error_ending(error: axum::Error) -> Ending {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(capacity)) => {
            Ending::Close(CLOSE_TOO_BIG, format!("client frame too big: {capacity}"))
        }
        _ => Ending::Failed(axum::Error::new(inner)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The size of the future an `async fn` of two arguments returns, without calling it.
    pub(crate) fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's memory is mostly its task, and the task is mostly this future: it
    /// holds the live loop, not the rarely used replay (boxed), and no shutdown future (the
    /// ping clock wakes it): 1,240 B in a test build and in a release build (1,392 before the
    /// ping clock and direct writes).
    #[test]
    fn the_connection_future_stays_small() {
        let size = future_size(serve);
        assert!(
            size <= 1_256,
            "socket::serve's future is {size} B: something large is held across an await"
        );
    }
}

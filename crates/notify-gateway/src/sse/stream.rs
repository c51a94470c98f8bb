//! One SSE stream: a task that moves messages from the client's [`Feed`] (one region's
//! subscription, or several regions') into the response body, with heartbeats, a resume, and
//! an ending that says why.
//!
//! On a stream of several regions each event's `id:` is the last id sent per region so far
//! (`AE:<id>,FI:<id>`, [`crate::positions`]), so the browser's automatic reconnect sends every
//! region's position back as `Last-Event-ID`.
//!
//! The task writes chunks (a batch of events each, up to [`MAX_BATCH`] messages and about
//! `--ws-write-buffer-bytes`) into a one-chunk queue that the response body reads and hyper
//! writes. A client that stops reading stalls hyper, the body is no longer read, the queue
//! stays full: after `--write-timeout` the task counts a slow consumer and cuts the connection
//! ([`Hangup`]). So what one client can make the gateway hold is bounded: the chunk in the
//! queue, the chunk waiting for it, and hyper's write buffer (8 KiB, [`crate::server`]). A
//! client that falls more than `--queue-limit` messages behind is ended with a `close` event
//! (1008); its browser reconnects with `Last-Event-ID` and resumes.
//!
//! Endings (each but a gone client and a cut ends with a `close` event and a `retry:`):
//! - gateway shutdown → 1001, also in the middle of a replay; the stream ends cleanly and the
//!   browser reconnects, to any node, after a short jittered delay;
//! - fell behind the queue limit → 1008, counted as a slow consumer;
//! - resume refused (no replay turn, history unreadable) → 1013, reconnect after a backoff;
//! - the queue not drained within `--write-timeout` → cut, counted as a slow consumer;
//! - the body dropped (the client went away; found at the latest by the next heartbeat's
//!   write) → nothing to send.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::{Bytes, BytesMut};
use notify_core::backoff::Backoff;
use notify_core::SubscriptionError;
use notify_proto::{Region, StreamId};
use tokio::sync::mpsc;

use super::event;
use crate::feed::{Delivery, Feed};
use crate::hangup::Hangup;
use crate::positions::Positions;
use crate::resume::{ReplayFailure, ReplaySink};
use crate::server::App;
use crate::socket::{
    CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER, CLOSE_TIMEOUT, CLOSE_TRY_AGAIN_LATER, MAX_BATCH,
};
use crate::subscriber::Subscriber;
use crate::telemetry::Transport;

/// First reconnect delay of the browser client's backoff (`client.js`: `backoffMs`).
const CLIENT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Cap of the browser client's backoff (`client.js`: `maxBackoffMs`).
const CLIENT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Backoff steps skipped before a refused resume is retried (2–4 s with the client's base):
/// a resume storm is not met with a reconnect storm.
const REFUSED_RESUME_STEPS: u32 = 3;

/// A queue item: a chunk of the stream, or its end.
pub type Chunk = Option<Bytes>;

/// Everything one stream needs, moved into its task.
#[derive(Debug)]
pub struct SseStream {
    /// What it receives and holds.
    pub subscriber: Subscriber,
    /// Shared gateway state.
    pub app: Arc<App>,
    /// The queue the response body reads.
    pub queue: mpsc::Sender<Chunk>,
    /// Cuts the connection when the client stops reading.
    pub hangup: Hangup,
}

/// How a stream ended.
#[derive(Debug)]
enum Ending {
    /// The body was dropped: the client went away.
    ClientGone,
    /// End the stream with a `close` event, telling the browser when to come back.
    Close {
        code: u16,
        reason: String,
        retry: Duration,
    },
    /// Cut the connection without another byte.
    Cut(&'static str),
}

fn going_away() -> Ending {
    Ending::Close {
        code: CLOSE_GOING_AWAY,
        reason: "server shutting down".into(),
        retry: reconnect_delay(0),
    }
}

/// A jittered delay of the browser client's backoff, `steps` doublings in.
fn reconnect_delay(steps: u32) -> Duration {
    let mut backoff = Backoff::new(CLIENT_BACKOFF_BASE, CLIENT_BACKOFF_CAP);
    for _ in 0..steps {
        backoff.next_delay();
    }
    backoff.next_delay()
}

/// Serves one stream until it ends.
pub async fn serve(stream: SseStream) {
    let SseStream {
        subscriber:
            Subscriber {
                mut feed,
                slot,
                admitted,
            },
        app,
        queue,
        hangup,
    } = stream;
    let open = app.metrics.open(feed.regions(), Transport::Sse);
    let mut writer = ChunkWriter {
        queue,
        app: &app,
        frames: 0,
        positions: (feed.len() > 1).then(|| feed.positions()),
    };
    let ending = 'stream: {
        let mut first = BytesMut::new();
        event::push_retry(&mut first, reconnect_delay(0));
        if let Err(ending) = writer.send(first).await {
            break 'stream ending;
        }
        if feed.resumes() {
            if let Err(ending) = Box::pin(replay(&mut writer, &mut feed, &app)).await {
                break 'stream ending;
            }
        }
        pump(&mut writer, &mut feed, &app).await
    };
    drop(open);
    match ending {
        Ending::ClientGone => tracing::debug!(region = %feed, "SSE client gone"),
        Ending::Cut(reason) => {
            tracing::debug!(region = %feed, reason, "cutting SSE connection");
            hangup.now();
        }
        Ending::Close {
            code,
            reason,
            retry,
        } => {
            tracing::debug!(region = %feed, code, %reason, "ending SSE stream");
            let mut last = BytesMut::new();
            event::push_end(&mut last, code, &reason, retry);
            if !writer.finish(last.freeze()).await {
                tracing::debug!(region = %feed, timeout = ?CLOSE_TIMEOUT, "SSE stream end not taken in time; cutting");
                hangup.now();
            }
        }
    }
    drop(slot);
    drop(admitted);
}

/// Writes chunks into the body's queue, each within the write timeout.
struct ChunkWriter<'a> {
    queue: mpsc::Sender<Chunk>,
    app: &'a App,
    /// Messages in the chunk being built, counted as delivered once it is queued.
    frames: u64,
    /// On a stream of several regions, the last id sent per region: each event's `id:`.
    positions: Option<Positions>,
}

impl ChunkWriter<'_> {
    /// Queues `chunk` for the body. Waits at most the write timeout for room (a client that
    /// does not read is cut), and not past shutdown.
    async fn send(&mut self, chunk: BytesMut) -> Result<(), Ending> {
        let app = self.app;
        let frames = std::mem::take(&mut self.frames);
        let queued = tokio::select! {
            biased;
            () = app.closing.cancelled() => return Err(going_away()),
            queued = tokio::time::timeout(app.settings.write_timeout, self.queue.send(Some(chunk.freeze()))) => queued,
        };
        match queued {
            Ok(Ok(())) => {
                app.metrics.sse.delivered.increment(frames);
                Ok(())
            }
            Ok(Err(_body_dropped)) => Err(Ending::ClientGone),
            Err(_elapsed) => {
                app.metrics.sse.slow_disconnects.increment(1);
                Err(Ending::Cut("write timed out"))
            }
        }
    }

    /// Queues the last chunk and the end of the stream, then waits for the body to be done
    /// with them; false when that took longer than [`CLOSE_TIMEOUT`].
    async fn finish(&mut self, last: Bytes) -> bool {
        let queue = &self.queue;
        let finished = async {
            queue.send(Some(last)).await.ok()?;
            queue.send(None).await.ok()?;
            queue.closed().await;
            Some(())
        };
        // A body dropped early (the client went away) is finished too.
        tokio::time::timeout(CLOSE_TIMEOUT, finished).await.is_ok()
    }

    /// Appends one message of `region` to `chunk`, its `id:` the message's own id on a stream
    /// of one region, the position of every region on a stream of several.
    fn push(&mut self, chunk: &mut BytesMut, region: Region, id: Option<StreamId>, frame: &str) {
        match (&mut self.positions, id) {
            (Some(positions), Some(id)) => {
                positions.record(region, id);
                event::push_message_at(chunk, Some(&*positions), frame);
            }
            _ => event::push_message(chunk, id, frame),
        }
        self.frames += 1;
    }

    /// Completes when the body was dropped (the connection ended).
    async fn body_dropped(&self) {
        self.queue.closed().await;
    }
}

impl ReplaySink for ChunkWriter<'_> {
    type Error = Ending;

    async fn send_page(
        &mut self,
        region: Region,
        entries: Vec<(StreamId, Utf8Bytes)>,
    ) -> Result<(), Ending> {
        let batch_bytes = self.app.settings.ws_write_buffer_bytes;
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let mut chunk = BytesMut::new();
            for (id, frame) in entries.by_ref() {
                self.push(&mut chunk, region, Some(id), frame.as_str());
                if self.frames as usize >= MAX_BATCH || chunk.len() >= batch_bytes {
                    break;
                }
            }
            self.send(chunk).await?;
        }
        Ok(())
    }

    async fn send_control(&mut self, frame: Utf8Bytes) -> Result<(), Ending> {
        let mut chunk = BytesMut::new();
        event::push_message(&mut chunk, None, frame.as_str());
        self.send(chunk).await
    }
}

/// Replays what the client missed after each region's `since` ([`Feed::replay`]); shutdown
/// interrupts it.
async fn replay(writer: &mut ChunkWriter<'_>, feed: &mut Feed, app: &App) -> Result<(), Ending> {
    let replayed = tokio::select! {
        biased;
        () = app.closing.cancelled() => return Err(going_away()),
        replayed = feed.replay(writer, app) => replayed,
    };
    replayed.map_err(|failure| match failure {
        ReplayFailure::Refused(refusal) => Ending::Close {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: refusal.to_string(),
            retry: reconnect_delay(REFUSED_RESUME_STEPS),
        },
        ReplayFailure::Sink(ending) => ending,
    })
}

/// Moves messages from the subscription into the body until the stream ends, with a
/// heartbeat every `--ping-interval`.
async fn pump(writer: &mut ChunkWriter<'_>, feed: &mut Feed, app: &App) -> Ending {
    let mut heartbeat = app.ping_clock.timer();
    loop {
        let chunk = tokio::select! {
            biased;
            () = app.closing.cancelled() => return going_away(),
            () = writer.body_dropped() => return Ending::ClientGone,
            delivery = feed.recv() => match delivery {
                // Only a directly written WebSocket's feed hands over without a message.
                Ok(None) => continue,
                Ok(Some(received)) => {
                    let first = feed.accept(received);
                    let (chunk, lagged) = batch(writer, feed, first, app);
                    if let Some(error) = lagged {
                        if !chunk.is_empty() {
                            if let Err(ending) = writer.send(chunk).await {
                                return ending;
                            }
                        }
                        return subscription_ending(error, app);
                    }
                    chunk
                }
                Err(error) => return subscription_ending(error, app),
            },
            () = heartbeat.tick() => BytesMut::from(event::HEARTBEAT),
        };
        if chunk.is_empty() {
            continue;
        }
        if let Err(ending) = writer.send(chunk).await {
            return ending;
        }
    }
}

/// Encodes `first` and whatever else is already queued (up to [`MAX_BATCH`] messages or about
/// `--ws-write-buffer-bytes`) into one chunk, skipping what the replay already sent. Returns a
/// lag found while draining, to act on after the chunk is written.
fn batch(
    writer: &mut ChunkWriter<'_>,
    feed: &mut Feed,
    first: Delivery,
    app: &App,
) -> (BytesMut, Option<SubscriptionError>) {
    let mut chunk = BytesMut::new();
    let mut next = Some(first);
    let mut taken = 0;
    let mut oldest = None;
    while let Some(Delivery {
        region,
        envelope,
        already_sent,
    }) = next.take()
    {
        taken += 1;
        if !already_sent {
            writer.push(&mut chunk, region, envelope.id, envelope.frame.as_str());
            oldest.get_or_insert(envelope.received_at);
        }
        if taken == MAX_BATCH || chunk.len() >= app.settings.ws_write_buffer_bytes {
            break;
        }
        match feed.try_recv() {
            Ok(delivery) => next = delivery,
            Err(error) => return (chunk, Some(error)),
        }
    }
    if let Some(oldest) = oldest {
        app.metrics
            .fanout_latency
            .record(oldest.elapsed().as_secs_f64());
    }
    (chunk, None)
}

fn subscription_ending(error: SubscriptionError, app: &App) -> Ending {
    match error {
        SubscriptionError::Lagged { skipped } => {
            app.metrics.sse.slow_disconnects.increment(1);
            app.metrics.dropped.increment(skipped);
            Ending::Close {
                code: CLOSE_SLOW_CONSUMER,
                reason: error.to_string(),
                retry: reconnect_delay(0),
            }
        }
        SubscriptionError::Closed => going_away(),
    }
}

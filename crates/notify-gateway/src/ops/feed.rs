//! The live feed behind `/ops/stream`: one snapshot a second, computed once and shared by
//! every viewer, and the cap on how many viewers there are.
//!
//! A single task renders the metrics registry once per [`TICK`], builds the snapshot, encodes
//! it once as a complete Server-Sent Events frame and publishes it on a `watch` channel. Each
//! viewer's response body waits on that channel and writes the shared frame (a reference-count
//! increment, never a copy or a per-viewer computation); a viewer that reads slowly skips to
//! the newest frame, so it holds at most one frame however far behind it is. At most
//! [`MAX_VIEWERS`] streams are open at once (a permit held by each body); past it a viewer gets
//! 503. The task ends at shutdown, which ends every stream, so open ops pages never hold up
//! the drain.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use futures_util::stream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::exposition::Samples;
use super::snapshot::{LiveState, SnapshotBuilder};
use crate::server::App;

/// Time between two snapshots.
pub const TICK: Duration = Duration::from_secs(1);

/// Most ops streams open at once. Each costs a socket, a task's worth of memory and one write
/// of about 1 KB a second; the page is for a few operators, not an audience.
pub const MAX_VIEWERS: usize = 16;

/// The shared feed: the newest frame and the viewer permits.
#[derive(Debug, Clone)]
pub struct Feed {
    latest: watch::Receiver<Bytes>,
    viewers: Arc<Semaphore>,
}

/// A viewer refused because [`MAX_VIEWERS`] streams are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_VIEWERS} ops streams are already open; close one or try again later")]
pub struct TooManyViewers;

impl Feed {
    /// Starts the snapshot task for `app`; it ends when `app.closing` is cancelled.
    pub fn start(app: Arc<App>) -> Self {
        let started = Instant::now();
        let mut builder = SnapshotBuilder::default();
        let first = frame(&app, &mut builder, started);
        let (sender, latest) = watch::channel(first);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = app.closing.cancelled() => break,
                    _ = tick.tick() => {}
                }
                sender.send_replace(frame(&app, &mut builder, started));
            }
        });
        Feed {
            latest,
            viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
        }
    }

    /// A response body streaming frames to one viewer: the newest at once, then each new one,
    /// until shutdown or until the viewer goes away.
    pub fn subscribe(&self) -> Result<Body, TooManyViewers> {
        let permit = Arc::clone(&self.viewers)
            .try_acquire_owned()
            .map_err(|_| TooManyViewers)?;
        let mut latest = self.latest.clone();
        latest.mark_changed();
        let viewer = Viewer {
            latest,
            _permit: permit,
        };
        let frames = stream::unfold(viewer, |mut viewer| async move {
            viewer.latest.changed().await.ok()?;
            let frame = viewer.latest.borrow_and_update().clone();
            Some((Ok::<Bytes, Infallible>(frame), viewer))
        });
        Ok(Body::from_stream(frames))
    }
}

/// One open stream: where it reads frames, and the permit it holds while open.
struct Viewer {
    latest: watch::Receiver<Bytes>,
    _permit: OwnedSemaphorePermit,
}

/// The snapshot of this instant as one SSE frame (`data: {json}\n\n`).
fn frame(app: &App, builder: &mut SnapshotBuilder, started: Instant) -> Bytes {
    let samples = Samples::parse(&app.prometheus.render());
    if samples.unreadable > 0 {
        tracing::warn!(
            lines = samples.unreadable,
            "ops snapshot: metrics lines not understood"
        );
    }
    let now = Instant::now();
    let live = LiveState {
        readiness: if app.draining.load(Ordering::Acquire) {
            "draining"
        } else {
            app.broker.state().as_str()
        },
        broker_kind: app.broker.kind(),
        broker_state: app.broker.state().as_str(),
        capacity: app.slots.capacity(),
        sockets_open: app.sockets.open(),
        uptime: now.duration_since(started),
    };
    let snapshot = builder.build(&samples, &live, now);
    match serde_json::to_string(&snapshot) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(error) => {
            // Plain numbers and strings always encode; say so loudly if that ever changes.
            tracing::error!(%error, "ops snapshot did not encode");
            Bytes::from_static(b": snapshot unavailable\n\n")
        }
    }
}

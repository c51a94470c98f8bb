//! A resume, whatever the transport: the replay of what a client missed after its last id, and
//! the seam where live delivery takes over.
//!
//! A WebSocket's `?since=` and an SSE stream's `Last-Event-ID` (or its `?since=`) run exactly
//! this code; the transports differ only in how a page of frames is written
//! ([`ReplaySink`]) and how an ending is told to the client (a close code, or a last event).
//!
//! A connection to several regions runs one replay per region, one after the other
//! ([`crate::feed::Feed::replay`]), each with its own seam and its own `resync`.
//!
//! The subscription is taken before the replay starts, so nothing published meanwhile is
//! missed; live messages at or below the last id the replay sent are skipped
//! ([`already_sent`]), so nothing is sent twice — until a `resync` that starts a new history
//! epoch (Redis lost its data, ids start over) ends that comparison. When the history does not
//! reach back to `since`, the client gets a `resync` control message instead, then live
//! messages.
//!
//! The replay runs under a turn of the gateway's [`ReplayBudget`](crate::replay_budget)
//! (`--max-concurrent-replays`; a resume that waits longer than `--replay-wait` for one is
//! refused) and reads and sends one page
//! ([`REPLAY_PAGE`](notify_core::broker::REPLAY_PAGE) messages) at a time, each under the
//! write timeout: a replay holds one page, and a client that does not read is cut, ending its
//! turn.

use axum::extract::ws::Utf8Bytes;
use notify_core::broker::ReplayStep;
use notify_core::Envelope;
use notify_proto::{ControlMessage, Region, StreamId};

use crate::server::App;

/// Where a replay handed over to live delivery: live messages with ids at or below `through`
/// were sent by the replay — while the region's history epoch is still `epoch`. A `resync`
/// that starts a later epoch (Redis lost its data; ids start over, possibly below `through`)
/// ends the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seam {
    through: StreamId,
    epoch: u64,
}

/// How a transport writes what a replay reads.
pub trait ReplaySink {
    /// Why a write failed (the transport's own ending: a timeout, a full buffer, a gone
    /// client).
    type Error;

    /// Writes one page of `region`'s history, oldest first, each message with its id; the
    /// whole page is written within the write timeout or the client is cut.
    fn send_page(
        &mut self,
        region: Region,
        entries: Vec<(StreamId, Utf8Bytes)>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;

    /// Writes one control message (a `resync`), within the write timeout.
    fn send_control(
        &mut self,
        frame: Utf8Bytes,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a resume was refused before or while reading history; the client retries with
/// backoff, with the same id. The message is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRefusal {
    /// Every replay turn stayed taken for `--replay-wait` (a resume storm).
    #[error("too many resumes at once; retry with backoff")]
    NoTurn,
    /// The history could not be read (Redis down).
    #[error("history temporarily unavailable; retry shortly")]
    HistoryUnavailable,
}

/// Why a replay ended without handing over to live delivery.
#[derive(Debug)]
pub enum ReplayFailure<E> {
    /// The gateway could not replay now.
    Refused(ReplayRefusal),
    /// The transport failed to write (its own ending).
    Sink(E),
}

/// Sends what the client missed after `since`, one page at a time under a replay turn;
/// returns where live delivery takes over (`None`: compare nothing).
pub async fn replay<S: ReplaySink + Send>(
    sink: &mut S,
    region: Region,
    since: StreamId,
    app: &App,
) -> Result<Option<Seam>, ReplayFailure<S::Error>> {
    let _turn = match app.replays.take_turn(app.settings.replay_wait).await {
        Ok(turn) => turn,
        Err(no_turn) => {
            if let Some(suppressed) = app.replay_refusal_log.allow() {
                tracing::warn!(%region, %since, error = %no_turn, suppressed, "resume refused: no replay turn");
            }
            return Err(ReplayFailure::Refused(ReplayRefusal::NoTurn));
        }
    };
    let mut cursor = app.broker.start_replay(region, since);
    loop {
        let step = match app.broker.replay_step(&mut cursor).await {
            Ok(step) => step,
            Err(error) => {
                tracing::warn!(%region, %since, position = %cursor.position(), %error, "cannot read history for a resume");
                return Err(ReplayFailure::Refused(ReplayRefusal::HistoryUnavailable));
            }
        };
        match step {
            ReplayStep::Page(entries) => {
                sink.send_page(region, entries)
                    .await
                    .map_err(ReplayFailure::Sink)?;
            }
            ReplayStep::Done => {
                return Ok(Some(Seam {
                    through: cursor.position(),
                    epoch: cursor.epoch(),
                }));
            }
            ReplayStep::Resync { latest, reason } => {
                metrics::counter!("notify_resyncs_total").increment(1);
                let message = ControlMessage::Resync {
                    region,
                    since,
                    latest,
                    reason: reason.into(),
                };
                sink.send_control(Utf8Bytes::from(message.to_json()))
                    .await
                    .map_err(ReplayFailure::Sink)?;
                // The client refreshes its view up to `latest` and continues from there, so
                // live messages at or below it (the stream follower may still be delivering
                // them) are not sent again. Without a `latest`, pages already sent are of this
                // history and their ids still hold; with nothing sent, `since` may come from
                // a history that no longer exists: compare nothing.
                let sent_any = cursor.position() != since;
                let through = latest.or(sent_any.then(|| cursor.position()));
                return Ok(through.map(|through| Seam {
                    through,
                    epoch: cursor.epoch(),
                }));
            }
        }
    }
}

/// Whether a live envelope was already sent during the replay. Clears the seam once live
/// delivery has passed it, or when a `resync` starts a later history epoch, so the common case
/// costs one `None` check.
pub fn already_sent<T>(envelope: &Envelope<T>, seam: &mut Option<Seam>) -> bool {
    let Some(current) = *seam else {
        return false;
    };
    if envelope
        .starts_epoch
        .is_some_and(|epoch| epoch > current.epoch)
    {
        *seam = None;
        return false;
    }
    match envelope.id {
        Some(id) if id <= current.through => true,
        Some(_) => {
            *seam = None;
            false
        }
        None => false,
    }
}

//! Paged replays: what a client resuming with `?since=` is sent before live messages, read one
//! bounded page at a time.
//!
//! A [`ReplayCursor`] remembers how far one client's replay got; each
//! [`Broker::replay_step`](super::Broker::replay_step) reads the next page after it — at most
//! [`REPLAY_PAGE`] messages from the in-memory history when memory covers the cursor (shared
//! frames, no copy), else (Redis) at most
//! [`STREAM_PAGE`](super::redis::STREAM_PAGE) entries from the region's stream — and the
//! caller sends that page before asking for the next. So a replay holds one page at a time, however long the history, and a client
//! that does not read stops its own replay (its write times out) instead of piling frames up.
//!
//! # Where a replay stops, and the seam with live delivery
//! The client subscribed to its region before the cursor was made, so every message the hub
//! publishes after that is in its ring. The cursor records the newest id delivered at its start
//! ([`ReplayOrigin`]); once a page reaches it (or a page comes back short: the history's end),
//! the replay is done and live delivery goes on from the ring, skipping ids at or below the
//! last one the replay sent. A replay therefore ends even while publishing continues.
//!
//! # When it cannot finish
//! Every page is judged on its own start: a history trimmed past the cursor while paging
//! (memory evicted it and the stream no longer holds it, or the embedded history moved on)
//! ends the replay in a `resync`, never a silent gap. So does a stream whose ids went back
//! below the newest id at the start (Redis lost its data and the follower has not said so yet):
//! what it holds belongs to an epoch the live ids may not match.

use notify_proto::{Region, StreamId};

use super::{count_resume, ResumeSource};
use crate::history::Lookup;
use crate::ingest::{Ingest, ReplayOrigin};

/// Most messages one replay takes from the in-memory history at once.
pub const REPLAY_PAGE: usize = 256;

/// Why a replay that had started could not finish.
pub(super) const TRIMMED_WHILE_REPLAYING: &str =
    "the history was trimmed while it was being replayed";

/// One step of a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStep<T> {
    /// The next messages after the cursor, oldest first, already encoded (possibly none, when
    /// a stream page held only entries that break the contract). Send them, then ask again.
    Page(Vec<(StreamId, T)>),
    /// The messages after the cursor are not all available (older than the retention, the
    /// history was reset, or trimmed while paging): the client must be told; the replay is
    /// over.
    Resync {
        /// Newest id of the region, when there is one.
        latest: Option<StreamId>,
        /// Why, for the client and the logs.
        reason: &'static str,
    },
    /// Everything up to the cursor's position was sent; live delivery takes over.
    Done,
}

/// How far one client's replay got.
#[derive(Debug, Clone)]
pub struct ReplayCursor {
    region: Region,
    /// The id the client asked to resume after.
    since: StreamId,
    /// The last id read (and handed out in a page): the next page starts after it.
    position: StreamId,
    /// The region's newest id and epoch when the replay began.
    origin: ReplayOrigin,
    /// Which path served the first page, once known (each resume is counted once).
    source: Option<ResumeSource>,
    /// Set once a page reached the origin's newest id or the history's end.
    finished: bool,
}

impl ReplayCursor {
    /// A replay of `region` after `since`, beginning now. The client must already be
    /// subscribed to the region.
    pub fn new<T>(ingest: &Ingest<T>, region: Region, since: StreamId) -> Self
    where
        T: From<String> + Clone + Send + Sync + 'static,
    {
        ReplayCursor {
            region,
            since,
            position: since,
            origin: ingest.replay_origin(region),
            source: None,
            finished: false,
        }
    }

    /// The region replayed.
    pub fn region(&self) -> Region {
        self.region
    }

    /// The id the client asked to resume after.
    pub fn since(&self) -> StreamId {
        self.since
    }

    /// The last id handed out: live messages at or below it were sent by the replay.
    pub fn position(&self) -> StreamId {
        self.position
    }

    /// The region's history epoch when the replay began: [`position`](Self::position) is
    /// comparable with live ids until a message starting a later epoch arrives.
    pub fn epoch(&self) -> u64 {
        self.origin.epoch
    }

    /// Whether the replay has sent everything it will.
    pub(super) fn finished(&self) -> bool {
        self.finished
    }

    /// The newest id delivered when the replay began.
    pub(super) fn origin_newest(&self) -> Option<StreamId> {
        self.origin.newest
    }

    /// Counts the resume under `source`, the first time only.
    pub(super) fn count(&mut self, source: ResumeSource) {
        if self.source.is_none() {
            self.source = Some(source);
            count_resume(source);
            tracing::debug!(region = %self.region, since = %self.since, source = source.as_str(), "resume served");
        }
    }

    /// Hands out a page read after the cursor: `entries` (decoded), `last_read` the last id
    /// read (bad entries included), `full` when the read hit its limit (more may follow).
    /// Entries past the newest id at the start are left to live delivery.
    pub(super) fn take_page<T>(
        &mut self,
        mut entries: Vec<(StreamId, T)>,
        last_read: Option<StreamId>,
        full: bool,
    ) -> ReplayStep<T> {
        match (self.origin.newest, last_read) {
            (Some(newest), Some(last)) if last >= newest => {
                let keep = entries.partition_point(|(id, _)| *id <= newest);
                entries.truncate(keep);
                // A client may resume from past the newest id delivered (this gateway's
                // follower lags the stream): it already has everything up to its `since`.
                self.position = self.position.max(newest);
                self.finished = true;
            }
            _ => {
                if let Some(last) = last_read {
                    self.position = last;
                }
                self.finished = !full;
            }
        }
        if entries.is_empty() && self.finished {
            ReplayStep::Done
        } else {
            ReplayStep::Page(entries)
        }
    }

    /// Ends the replay in a resync: counted as one when nothing was served yet. The reason
    /// is `first` for a resume whose `since` is not covered, or says the history was trimmed
    /// while paging.
    pub(super) fn resync<T>(
        &mut self,
        latest: Option<StreamId>,
        first: &'static str,
    ) -> ReplayStep<T> {
        self.finished = true;
        let reason = if self.source.is_none() {
            first
        } else {
            TRIMMED_WHILE_REPLAYING
        };
        self.count(ResumeSource::Resync);
        ReplayStep::Resync { latest, reason }
    }

    /// The next page from the in-memory history, or `None` when memory does not cover the
    /// cursor.
    pub(super) fn memory_page<T>(&mut self, ingest: &Ingest<T>) -> Option<ReplayStep<T>>
    where
        T: From<String> + Clone + Send + Sync + 'static,
    {
        match ingest.replay_from_memory(self.region, self.position, REPLAY_PAGE, self.origin.epoch)
        {
            Lookup::Entries(entries) => {
                self.count(ResumeSource::Memory);
                let last = entries.last().map(|(id, _)| *id);
                let full = entries.len() == REPLAY_PAGE;
                Some(self.take_page(entries, last, full))
            }
            Lookup::NotCovered => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use notify_proto::{ChannelNames, Notification};

    use super::*;
    use crate::broker::EmbeddedBroker;
    use crate::hub::Hub;

    fn broker(retention: usize) -> (EmbeddedBroker<String>, Arc<Ingest<String>>, Region) {
        let ae = Region::parse("AE").unwrap();
        let hub = Arc::new(Hub::new([ae], 16));
        let ingest = Arc::new(Ingest::new(hub, ChannelNames::default(), 4096, retention));
        (EmbeddedBroker::new(Arc::clone(&ingest)), ingest, ae)
    }

    fn publish(broker: &EmbeddedBroker<String>, region: Region, n: usize) -> Vec<StreamId> {
        (0..n)
            .map(|k| {
                let notification =
                    Notification::new(region, format!("v{k}"), "t", "https://x/y", "c", 1);
                broker.publish(&notification).id.unwrap()
            })
            .collect()
    }

    #[test]
    fn a_long_history_is_replayed_in_pages_up_to_the_newest_id_at_the_start() {
        let (broker, ingest, ae) = broker(10_000);
        let ids = publish(&broker, ae, 2 * REPLAY_PAGE + 10);
        let mut cursor = ReplayCursor::new(&ingest, ae, ids[0]);
        let mut sent = Vec::new();
        let mut pages = 0;
        loop {
            match broker.replay_step(&mut cursor) {
                ReplayStep::Page(page) => {
                    assert!(page.len() <= REPLAY_PAGE);
                    pages += 1;
                    sent.extend(page.into_iter().map(|(id, _)| id));
                    // Publishing goes on while the replay pages; the replay still ends.
                    publish(&broker, ae, 5);
                }
                ReplayStep::Done => break,
                ReplayStep::Resync { reason, .. } => panic!("resync: {reason}"),
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(sent, ids[1..]);
        assert_eq!(cursor.position(), *ids.last().unwrap());
    }

    #[test]
    fn a_history_trimmed_while_paging_ends_in_a_resync() {
        let (broker, ingest, ae) = broker(REPLAY_PAGE + 10);
        let ids = publish(&broker, ae, REPLAY_PAGE + 10);
        let mut cursor = ReplayCursor::new(&ingest, ae, ids[0]);
        assert!(
            matches!(broker.replay_step(&mut cursor), ReplayStep::Page(page) if page.len() == REPLAY_PAGE)
        );
        // The next page's start is evicted before it is read.
        publish(&broker, ae, REPLAY_PAGE + 10);
        match broker.replay_step(&mut cursor) {
            ReplayStep::Resync { reason, latest } => {
                assert_eq!(reason, TRIMMED_WHILE_REPLAYING);
                assert!(latest.is_some());
            }
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_eq!(broker.replay_step(&mut cursor), ReplayStep::Done);
    }
}

//! Which live ids to trust: the pub/sub side's view of message ids, per region.
//!
//! Only ids issued by the region's Redis stream are trusted; they reach the gateway through the
//! stream itself. A pub/sub message that carries an `id` is either our publish script's (the
//! stream delivers the same id, usually a moment later) or foreign (any other writer, or a
//! producer whose payloads happen to have an `id` field). [`PendingIds`] holds such messages
//! until the stream settles which:
//! - the stream delivered the id before the copy arrived → ours, dropped on arrival. Stream
//!   ids are remembered for this: the newest [`RECENT_STREAM_IDS`], and older ones for
//!   [`RECENT_STREAM_ID_AGE`] (at most [`MAX_RECENT_STREAM_IDS`]), because after a stall the
//!   stream follower reads a burst far faster than the pub/sub side drains its copies;
//! - the stream delivers the id → it was ours, the held copy is dropped;
//! - the stream delivers a later id without it → foreign;
//! - a complete stream read that started after it arrived did not deliver it → foreign (our
//!   script's `XADD` runs before its `PUBLISH`, so such a read would have seen it); the stream
//!   follower reads at least once per `XREAD BLOCK` timeout (1 s), so this is the deadline;
//! - the set is full → its oldest message is evicted to make room. It is not judged: in a
//!   burst larger than the set it is almost always ours and the stream delivers it with its
//!   id, so the caller drops the copy (delivering it too would send it twice) and counts it
//!   in `notify_live_copies_dropped_total`; a foreign one evicted this way is lost.
//!
//! An id at or below the stream's position is held like any other, not judged on arrival:
//! after Redis restarts without its data the new stream's ids are smaller than the old
//! position, and only the stream can tell ours from foreign.
//!
//! A foreign message settled by the stream is not lost: the caller delivers it as a plain live message with its `id`
//! removed, and counts it. It never moves the high-water mark, never enters the history and
//! never suppresses a later message.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use notify_proto::StreamId;

/// Most messages held per region before the oldest is evicted.
pub const MAX_PENDING: usize = 256;

/// Stream ids always remembered per region, however old, to recognise a pub/sub copy that
/// arrives after its stream entry was delivered.
pub const RECENT_STREAM_IDS: usize = 1024;

/// How long an id past the newest [`RECENT_STREAM_IDS`] is remembered. After a stall (a
/// gateway starved of CPU, a slow subscription) the stream follower reads a burst far faster
/// than the pub/sub side drains its copies; those copies may trail their stream entries by
/// thousands of messages and must still be recognised.
pub const RECENT_STREAM_ID_AGE: Duration = Duration::from_secs(60);

/// The most stream ids remembered per region, whatever their age: 32 bytes each, so at most
/// 2 MiB per region, held only while a burst is younger than [`RECENT_STREAM_ID_AGE`].
pub const MAX_RECENT_STREAM_IDS: usize = 65_536;

/// What became of a message offered by the pub/sub side.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered<M> {
    /// The stream already delivered this id: drop the copy.
    Duplicate,
    /// Held until the stream settles it; `evicted` is the oldest held message, pushed out
    /// unsettled to make room.
    Held {
        /// The message pushed out of a full set.
        evicted: Option<M>,
    },
}

/// One region's held id-carrying live messages and recently delivered stream ids.
#[derive(Debug)]
pub struct PendingIds<M> {
    held: BTreeMap<StreamId, (Instant, M)>,
    /// Ids the stream delivered and when, oldest first (increasing): the newest
    /// [`RECENT_STREAM_IDS`], and older ones younger than [`RECENT_STREAM_ID_AGE`], at most
    /// [`MAX_RECENT_STREAM_IDS`].
    recent: VecDeque<(StreamId, Instant)>,
}

impl<M> Default for PendingIds<M> {
    fn default() -> Self {
        PendingIds {
            held: BTreeMap::new(),
            recent: VecDeque::new(),
        }
    }
}

impl<M> PendingIds<M> {
    /// A pub/sub message with `id` arrived at `now`.
    pub fn offer(&mut self, id: StreamId, message: M, now: Instant) -> Offered<M> {
        if self
            .recent
            .binary_search_by_key(&id, |(delivered, _)| *delivered)
            .is_ok()
        {
            return Offered::Duplicate;
        }
        let evicted = if self.held.len() >= MAX_PENDING && !self.held.contains_key(&id) {
            self.held.pop_first().map(|(_, (_, oldest))| oldest)
        } else {
            None
        };
        // The same id twice on the live channel: the stream settles the id once, so the
        // second copy replaces the first.
        self.held.insert(id, (now, message));
        Offered::Held { evicted }
    }

    /// The stream delivered `id` at `now`. Returns the held messages it proved foreign (every
    /// held id below `id`), oldest first; a held copy of `id` itself is dropped.
    pub fn stream_delivered(&mut self, id: StreamId, now: Instant) -> Vec<M> {
        self.remember(id, now);
        if self.held.is_empty() {
            return Vec::new();
        }
        let later = self.held.split_off(&id);
        let foreign = std::mem::replace(&mut self.held, later);
        self.held.remove(&id);
        foreign.into_values().map(|(_, message)| message).collect()
    }

    /// Adds `id` to the recent stream ids (a repeat at or below the newest is already
    /// known) and forgets what is past both the count and the age.
    fn remember(&mut self, id: StreamId, now: Instant) {
        if self.recent.back().is_some_and(|(newest, _)| id <= *newest) {
            return;
        }
        self.recent.push_back((id, now));
        while self.recent.len() > MAX_RECENT_STREAM_IDS
            || (self.recent.len() > RECENT_STREAM_IDS
                && self.recent.front().is_some_and(|(_, delivered)| {
                    now.saturating_duration_since(*delivered) > RECENT_STREAM_ID_AGE
                }))
        {
            self.recent.pop_front();
        }
    }

    /// Held messages that arrived before `read_started`, the start of a complete read of the
    /// region's stream that did not deliver them: foreign.
    pub fn expire(&mut self, read_started: Instant) -> Vec<M> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let expired: Vec<StreamId> = self
            .held
            .iter()
            .filter(|(_, (arrived, _))| *arrived < read_started)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.held.remove(&id).map(|(_, message)| message))
            .collect()
    }

    /// The stream's ids started over (Redis lost its data): forget the old positions.
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Messages held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    #[test]
    fn the_stream_confirms_ours_and_exposes_foreign_ones() {
        let now = Instant::now();
        let mut pending = PendingIds::default();
        assert_eq!(
            pending.offer(id(5), "ours", now),
            Offered::Held { evicted: None }
        );
        assert_eq!(
            pending.offer(id(3), "foreign", now),
            Offered::Held { evicted: None }
        );
        assert_eq!(
            pending.offer(id(99), "future", now),
            Offered::Held { evicted: None }
        );
        // The stream moves to 5: 3 was never issued, 5 was ours.
        assert_eq!(pending.stream_delivered(id(5), now), vec!["foreign"]);
        assert_eq!(pending.held(), 1);
        // A copy arriving after its stream entry is a duplicate; an unknown id below the
        // stream's position waits for the stream like any other.
        assert_eq!(pending.offer(id(5), "late copy", now), Offered::Duplicate);
        assert_eq!(
            pending.offer(id(4), "small", now),
            Offered::Held { evicted: None }
        );
        // Ids the stream never issues: the first stream read started after they arrived
        // settles them, not one that started before.
        assert!(pending.expire(now).is_empty());
        assert_eq!(
            pending.expire(now + Duration::from_millis(1)),
            vec!["small", "future"]
        );
        assert_eq!(pending.held(), 0);
    }

    #[test]
    fn a_full_set_resolves_its_oldest_as_foreign() {
        let now = Instant::now();
        let mut pending = PendingIds::default();
        for n in 0..MAX_PENDING as u64 {
            assert_eq!(
                pending.offer(id(100 + n), n, now),
                Offered::Held { evicted: None }
            );
        }
        assert_eq!(
            pending.offer(id(10_000), 9999, now),
            Offered::Held { evicted: Some(0) }
        );
        assert_eq!(pending.held(), MAX_PENDING);
    }

    #[test]
    fn a_copy_trailing_a_burst_of_its_stream_is_still_recognised() {
        let now = Instant::now();
        let mut pending: PendingIds<u8> = PendingIds::default();
        // The stream follower read 3,000 entries before the pub/sub side caught up.
        for n in 1..=3000 {
            pending.stream_delivered(id(n), now);
        }
        assert_eq!(pending.offer(id(1), 1, now), Offered::Duplicate);
        assert_eq!(pending.offer(id(1845), 1, now), Offered::Duplicate);
        // A repeat of an old id does not break the order the lookup relies on.
        pending.stream_delivered(id(7), now);
        assert_eq!(pending.offer(id(2999), 1, now), Offered::Duplicate);
    }

    #[test]
    fn recent_ids_are_bounded_by_age_and_count_and_reset_with_the_epoch() {
        let start = Instant::now();
        let mut pending: PendingIds<u8> = PendingIds::default();
        for n in 0..(RECENT_STREAM_IDS as u64 + 10) {
            pending.stream_delivered(id(n + 1), start);
        }
        // Young: all remembered.
        assert_eq!(pending.recent.len(), RECENT_STREAM_IDS + 10);
        // Past the age, only the newest RECENT_STREAM_IDS stay.
        let later = start + RECENT_STREAM_ID_AGE + Duration::from_secs(1);
        pending.stream_delivered(id(RECENT_STREAM_IDS as u64 + 11), later);
        assert_eq!(pending.recent.len(), RECENT_STREAM_IDS);
        // Forgotten as delivered: held for the stream to settle, not a silent drop.
        assert_eq!(
            pending.offer(id(1), 1, later),
            Offered::Held { evicted: None }
        );
        assert_eq!(pending.offer(id(20), 2, later), Offered::Duplicate);
        // However young, never more than the hard cap.
        for n in 0..(MAX_RECENT_STREAM_IDS as u64 + 5) {
            pending.stream_delivered(id(10_000 + n), later);
        }
        assert_eq!(pending.recent.len(), MAX_RECENT_STREAM_IDS);
        pending.reset();
        // A new epoch: the old ids are no longer known as delivered.
        assert_eq!(
            pending.offer(id(20_000), 3, later),
            Offered::Held { evicted: None }
        );
    }
}

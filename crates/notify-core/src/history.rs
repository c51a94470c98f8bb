//! Recent history per region: the last N messages that carried an id, in id order, so a
//! client can resume with `?since=<id>`.
//!
//! With the embedded broker this is the whole history (nothing is persisted; a restart begins
//! a new one). With Redis it is a cache in front of the region's stream: a resume it covers
//! costs no Redis round trip, and one it does not cover is answered from the stream.
//!
//! # Coverage
//! A lookup for `since` is answered from memory only when memory provably holds every message
//! after `since`:
//! - `since` is at or after the newest message evicted (nothing after `since` was dropped), or,
//!   when nothing was evicted yet, at or after the oldest message held (ids before it belong to
//!   a time this history did not see: an earlier process, or before the gateway started);
//! - and `since` is not newer than the newest message held (an id from the future means another
//!   history — Redis lost its data, or an id from another deployment).
//!
//! A gap the gateway finds in its own feed (a broker outage longer than the stream's
//! retention) [`cut`](RegionHistory::cut)s the history: nothing before the gap is answered
//! from memory again, whatever the capacity. Ids going backwards (the stream started over)
//! [`reset`](RegionHistory::reset) it.

use std::collections::VecDeque;

use notify_proto::StreamId;

/// Answer to [`RegionHistory::after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Every message after `since`, oldest first (possibly none).
    Entries(Vec<(StreamId, T)>),
    /// This history cannot tell what came after `since`.
    NotCovered,
}

/// The last `capacity` messages of one region, with the bookkeeping for coverage.
#[derive(Debug)]
pub struct RegionHistory<T> {
    entries: VecDeque<(StreamId, T)>,
    capacity: usize,
    newest_evicted: Option<StreamId>,
    newest: Option<StreamId>,
}

impl<T: Clone> RegionHistory<T> {
    /// An empty history keeping at most `capacity` messages (0 keeps none but still tracks the
    /// newest id, for deduplication).
    pub fn new(capacity: usize) -> Self {
        RegionHistory {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            newest_evicted: None,
            newest: None,
        }
    }

    /// The newest id seen.
    pub fn newest(&self) -> Option<StreamId> {
        self.newest
    }

    /// Records a message. Ids must increase; a caller checks with [`newest`](Self::newest).
    pub fn record(&mut self, id: StreamId, frame: T) {
        self.newest = Some(id);
        if self.capacity == 0 {
            self.newest_evicted = Some(id);
            return;
        }
        if self.entries.len() == self.capacity {
            if let Some((evicted, _)) = self.entries.pop_front() {
                self.newest_evicted = Some(evicted);
            }
        }
        self.entries.push_back((id, frame));
    }

    /// Forgets every held message, keeping the newest id: the messages after it are missing
    /// from this history (a gap), so a lookup from before the next recorded message is not
    /// covered.
    pub fn cut(&mut self) {
        self.entries.clear();
        self.newest_evicted = None;
    }

    /// Forgets everything, the newest id included: the ids started over.
    pub fn reset(&mut self) {
        self.cut();
        self.newest = None;
    }

    /// The id the next locally generated message gets: the current millisecond, or one
    /// sequence past the newest id when the clock has not moved past it.
    pub fn next_id(&self, now_ms: u64) -> StreamId {
        match self.newest {
            Some(newest) if newest.ms >= now_ms => StreamId::new(newest.ms, newest.seq + 1),
            _ => StreamId::new(now_ms, 0),
        }
    }

    /// The first `limit` held messages after `since`, if memory covers `since` (see the
    /// module docs). A resume pages through the history with this, so it never holds more
    /// than one page.
    pub fn after(&self, since: StreamId, limit: usize) -> Lookup<T> {
        let Some(newest) = self.newest else {
            return Lookup::NotCovered;
        };
        if since > newest {
            return Lookup::NotCovered;
        }
        let lower_bound = match (self.newest_evicted, self.entries.front()) {
            (Some(evicted), _) => evicted,
            (None, Some((oldest, _))) => *oldest,
            (None, None) => return Lookup::NotCovered,
        };
        if since < lower_bound {
            return Lookup::NotCovered;
        }
        let start = self.entries.partition_point(|(id, _)| *id <= since);
        let end = start.saturating_add(limit).min(self.entries.len());
        Lookup::Entries(self.entries.range(start..end).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    #[test]
    fn answers_only_what_it_covers() {
        let mut history = RegionHistory::new(3);
        assert_eq!(history.after(id(1), usize::MAX), Lookup::NotCovered);
        for ms in [10, 20, 30] {
            history.record(id(ms), ms);
        }
        assert_eq!(
            history.after(id(10), usize::MAX),
            Lookup::Entries(vec![(id(20), 20), (id(30), 30)])
        );
        assert_eq!(history.after(id(30), usize::MAX), Lookup::Entries(vec![]));
        // Before the oldest held and nothing evicted: another epoch.
        assert_eq!(history.after(id(5), usize::MAX), Lookup::NotCovered);
        // From the future: another history.
        assert_eq!(history.after(id(31), usize::MAX), Lookup::NotCovered);
        history.record(id(40), 40);
        // 10 was evicted: since=10 still covered (nothing after it lost), since=9 is not.
        assert_eq!(
            history.after(id(10), usize::MAX).clone(),
            Lookup::Entries(vec![(id(20), 20), (id(30), 30), (id(40), 40)])
        );
        assert_eq!(history.after(id(9), usize::MAX), Lookup::NotCovered);
        assert_eq!(
            history.after(id(25), usize::MAX),
            Lookup::Entries(vec![(id(30), 30), (id(40), 40)])
        );
    }

    #[test]
    fn pages_hold_at_most_the_limit_and_follow_on() {
        let mut history = RegionHistory::new(10);
        for ms in 1..=7 {
            history.record(id(ms), ms);
        }
        assert_eq!(
            history.after(id(1), 3),
            Lookup::Entries(vec![(id(2), 2), (id(3), 3), (id(4), 4)])
        );
        assert_eq!(
            history.after(id(4), 3),
            Lookup::Entries(vec![(id(5), 5), (id(6), 6), (id(7), 7)])
        );
        assert_eq!(history.after(id(7), 3), Lookup::Entries(vec![]));
        // Evicted past the cursor while paging: not covered any more.
        for ms in 8..=20 {
            history.record(id(ms), ms);
        }
        assert_eq!(history.after(id(4), 3), Lookup::NotCovered);
    }

    #[test]
    fn a_cut_history_answers_nothing_from_before_the_gap() {
        let mut history = RegionHistory::new(5000);
        for ms in [10, 20, 30] {
            history.record(id(ms), ms);
        }
        history.cut();
        assert_eq!(history.newest(), Some(id(30)));
        assert_eq!(history.after(id(30), usize::MAX), Lookup::NotCovered);
        assert_eq!(history.after(id(10), usize::MAX), Lookup::NotCovered);
        // The first message after the gap: only resumes from it on are covered.
        history.record(id(500), 500);
        history.record(id(600), 600);
        assert_eq!(history.after(id(30), usize::MAX), Lookup::NotCovered);
        assert_eq!(history.after(id(499), usize::MAX), Lookup::NotCovered);
        assert_eq!(
            history.after(id(500), usize::MAX),
            Lookup::Entries(vec![(id(600), 600)])
        );
    }

    #[test]
    fn a_reset_history_starts_over() {
        let mut history = RegionHistory::new(8);
        history.record(id(100), 100);
        history.reset();
        assert_eq!(history.newest(), None);
        assert_eq!(history.after(id(100), usize::MAX), Lookup::NotCovered);
        history.record(id(5), 5);
        history.record(id(6), 6);
        assert_eq!(
            history.after(id(5), usize::MAX),
            Lookup::Entries(vec![(id(6), 6)])
        );
        assert_eq!(history.after(id(100), usize::MAX), Lookup::NotCovered);
    }

    #[test]
    fn next_id_is_monotonic() {
        let mut history: RegionHistory<()> = RegionHistory::new(2);
        assert_eq!(history.next_id(100), id(100));
        history.record(id(100), ());
        assert_eq!(history.next_id(100), StreamId::new(100, 1));
        assert_eq!(history.next_id(99), StreamId::new(100, 1));
        assert_eq!(history.next_id(101), id(101));
    }
}

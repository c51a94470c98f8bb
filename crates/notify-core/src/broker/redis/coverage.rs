//! Coverage: whether a region's stream still holds every entry after a given id. One rule,
//! used both when a client resumes with `?since=` and when the gateway catches up after a
//! broker outage.
//!
//! `since` is covered iff
//! - `since` is the stream's last generated id (nothing came after it), or
//! - the entry `since` itself is still in the stream (trimming removes the oldest entries
//!   first, so everything after a present entry is present), or
//! - `since` is `0-0` and nothing was ever removed (`entries-added == length`, Redis ≥ 7).
//!
//! Anything else is a gap: `since` was trimmed, never issued by this stream, or belongs to an
//! earlier epoch (Redis restarted without its data, a lagging replica was promoted). It does
//! not rest on `max-deleted-entry-id`, which `MAXLEN ~` trimming leaves at `0-0` on Redis 7.0.

use notify_proto::StreamId;

/// What one atomic read found out about a region's stream, for [`StreamFacts::gap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFacts {
    /// The stream's last generated id; `None` when the stream does not exist.
    pub last_generated: Option<StreamId>,
    /// Entries ever added (`entries-added`); `None` before Redis 7.
    pub entries_added: Option<u64>,
    /// Entries held now.
    pub length: u64,
    /// Whether the entry `since` itself is in the stream.
    pub since_present: bool,
}

/// Why the stream does not hold everything after `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The region has no stream (never published to, or Redis lost its data).
    NoHistory,
    /// `since` is newer than anything the stream issued: its ids went backwards.
    Reset,
    /// Entries after `since` were trimmed, or `since` is not an id this stream issued.
    Trimmed,
}

impl Gap {
    /// The reason, in words, for a `resync` and the logs.
    pub fn reason(self) -> &'static str {
        match self {
            Gap::NoHistory => "there is no history for this region",
            Gap::Reset => "since is newer than the region's history (it was reset)",
            Gap::Trimmed => "since is older than the retained history",
        }
    }
}

impl StreamFacts {
    /// `None` when the stream holds every entry after `since`; otherwise why not.
    pub fn gap(&self, since: StreamId) -> Option<Gap> {
        let nothing_removed = self.entries_added == Some(self.length);
        let Some(last) = self.last_generated else {
            return (since != StreamId::ZERO).then_some(Gap::NoHistory);
        };
        if since == last || self.since_present {
            return None;
        }
        if since > last {
            return Some(Gap::Reset);
        }
        if since == StreamId::ZERO && nothing_removed {
            return None;
        }
        Some(Gap::Trimmed)
    }

    /// Whether the stream's ids went backwards relative to `mark`, the newest id this gateway
    /// delivered: the stream is gone, or its last generated id is below `mark`.
    pub fn went_back_from(&self, mark: StreamId) -> bool {
        match self.last_generated {
            None => mark != StreamId::ZERO,
            Some(last) => last < mark,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    fn facts(last: u64, added: Option<u64>, length: u64, present: bool) -> StreamFacts {
        StreamFacts {
            last_generated: Some(id(last)),
            entries_added: added,
            length,
            since_present: present,
        }
    }

    #[test]
    fn a_present_entry_or_the_last_id_is_covered() {
        assert_eq!(facts(10, Some(10), 10, true).gap(id(5)), None);
        assert_eq!(facts(10, Some(300), 10, true).gap(id(5)), None);
        assert_eq!(facts(10, Some(300), 10, false).gap(id(10)), None);
    }

    #[test]
    fn a_trimmed_or_unknown_since_is_a_gap() {
        assert_eq!(
            facts(10, Some(300), 10, false).gap(id(5)),
            Some(Gap::Trimmed)
        );
        // An id the stream never issued, between two of its entries.
        assert_eq!(
            facts(10, Some(10), 10, false).gap(id(5)),
            Some(Gap::Trimmed)
        );
    }

    #[test]
    fn zero_is_covered_only_when_nothing_was_ever_removed() {
        assert_eq!(facts(10, Some(10), 10, false).gap(StreamId::ZERO), None);
        // MAXLEN ~ trimming: whatever max-deleted-entry-id says, entries are gone.
        assert_eq!(
            facts(10, Some(1500), 100, false).gap(StreamId::ZERO),
            Some(Gap::Trimmed)
        );
        // Before Redis 7 nothing proves it.
        assert_eq!(
            facts(10, None, 10, false).gap(StreamId::ZERO),
            Some(Gap::Trimmed)
        );
    }

    #[test]
    fn ids_from_the_future_or_a_missing_stream_are_gaps() {
        assert_eq!(facts(10, Some(10), 10, false).gap(id(11)), Some(Gap::Reset));
        let missing = StreamFacts {
            last_generated: None,
            entries_added: Some(0),
            length: 0,
            since_present: false,
        };
        assert_eq!(missing.gap(id(1)), Some(Gap::NoHistory));
        assert_eq!(missing.gap(StreamId::ZERO), None);
        assert!(missing.went_back_from(id(1)));
        assert!(!missing.went_back_from(StreamId::ZERO));
        assert!(facts(10, Some(10), 10, true).went_back_from(id(11)));
        assert!(!facts(10, Some(10), 10, true).went_back_from(id(10)));
    }
}

//! Message ids: the Redis stream entry id (`<milliseconds>-<sequence>`) a notification got
//! when it was recorded in its region's history.
//!
//! Ids are totally ordered within a region, and every gateway node sees the same id for the
//! same message, so a client can resume on any node with `?since=<id>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A stream entry id: `1700000000000-0`. Ordered by time, then sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamId {
    /// Milliseconds since the Unix epoch when the entry was added.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

/// Why a string is not a [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a message id (expected <milliseconds>-<sequence>, e.g. 1700000000000-0)")]
pub struct StreamIdError(String);

impl StreamId {
    /// The smallest id; "from the beginning".
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// An id from its parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// Parses `ms-seq` (or a bare `ms`, meaning sequence 0).
    pub fn parse(input: &str) -> Result<Self, StreamIdError> {
        let error = || StreamIdError(input.chars().take(48).collect());
        let digits = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                part.parse::<u64>().ok()
            }
        };
        let (ms, seq) = match input.split_once('-') {
            Some((ms, seq)) => (
                digits(ms).ok_or_else(error)?,
                digits(seq).ok_or_else(error)?,
            ),
            None => (digits(input).ok_or_else(error)?, 0),
        };
        Ok(StreamId { ms, seq })
    }
}

impl FromStr for StreamId {
    type Err = StreamIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        StreamId::parse(input)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        StreamId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_order() {
        let id = StreamId::parse("1700000000000-5").unwrap();
        assert_eq!(id, StreamId::new(1_700_000_000_000, 5));
        assert_eq!(id.to_string(), "1700000000000-5");
        assert_eq!(StreamId::parse("17").unwrap(), StreamId::new(17, 0));
        assert!(StreamId::new(1, 9) < StreamId::new(2, 0));
        assert!(StreamId::new(2, 1) > StreamId::new(2, 0));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1.5",
            " 1-1",
            "99999999999999999999999-0",
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad}");
        }
    }
}

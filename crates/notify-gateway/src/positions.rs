//! Where a connection to several regions stands in each: the per-region form of a resume
//! position, `AE:1764290000123-0,FI:1764290000119-3`.
//!
//! A connection to one region resumes after one id (`since=<id>`, an SSE `Last-Event-ID` of
//! `<id>`). A connection to several has one history per region, so its position names a last
//! id per region: `REGION:ID` entries, comma-separated, in any order, each region at most once.
//! A region without an entry starts live. The same text is the `since` of a multi-region
//! WebSocket or SSE request, the `id:` line of each event on a multi-region SSE stream (so the
//! browser's `Last-Event-ID` carries every region's position back), and what `/client.js`
//! sends. Pure: parsing and printing only.

use std::fmt;

use notify_proto::{Region, RegionError, StreamId, StreamIdError};

/// The separator between a region and its id in one entry.
const REGION_SEPARATOR: char = ':';
/// The separator between entries.
const ENTRY_SEPARATOR: char = ',';

/// Why a position is refused. Each message names what was wrong in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// An id (bare, or an entry's) is not a message id.
    #[error("{0}")]
    Id(#[from] StreamIdError),
    /// An entry's region is not a region code.
    #[error("{0}")]
    Region(#[from] RegionError),
    /// An entry names a region the connection did not ask for.
    #[error("names region {0}, which the connection did not ask for")]
    NotAsked(Region),
    /// An entry names a region twice.
    #[error("names region {0} more than once")]
    Repeated(Region),
    /// An entry of a per-region position without its `REGION:`.
    #[error("entry {0:?} names no region (expected REGION:ID, e.g. AE:1764290000123-0)")]
    NoRegion(String),
    /// A bare id where several regions each need their own.
    #[error(
        "a bare id is for one region; with {0} regions give one id per region, \
         e.g. AE:1764290000123-0,FI:1764290000119-3"
    )]
    BareForSeveral(usize),
}

/// Applies the position `text` to `starts`, the regions a connection asked for and where each
/// resumes: a bare id (one region only) sets that region's, each `REGION:ID` entry its region's;
/// regions without an entry keep theirs. Empty text changes nothing.
pub fn apply(text: &str, starts: &mut [(Region, Option<StreamId>)]) -> Result<(), PositionError> {
    if text.is_empty() {
        return Ok(());
    }
    if !text.contains(REGION_SEPARATOR) {
        let id = StreamId::parse(text)?;
        return match starts {
            [(_, since)] => {
                *since = Some(id);
                Ok(())
            }
            _ => Err(PositionError::BareForSeveral(starts.len())),
        };
    }
    let mut named: Vec<Region> = Vec::with_capacity(starts.len());
    for entry in text.split(ENTRY_SEPARATOR) {
        let (region, id) = entry
            .split_once(REGION_SEPARATOR)
            .ok_or_else(|| PositionError::NoRegion(truncated(entry)))?;
        let region = Region::parse(region)?;
        let id = StreamId::parse(id)?;
        if named.contains(&region) {
            return Err(PositionError::Repeated(region));
        }
        named.push(region);
        let (_, since) = starts
            .iter_mut()
            .find(|(asked, _)| *asked == region)
            .ok_or(PositionError::NotAsked(region))?;
        *since = Some(id);
    }
    Ok(())
}

/// Keeps an error message one short line whatever the input.
fn truncated(entry: &str) -> String {
    const LIMIT: usize = 48;
    match entry.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &entry[..cut]),
        None => entry.to_owned(),
    }
}

/// The last id sent per region on a multi-region connection, printed in the composite form
/// (regions without an id yet are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    entries: Vec<(Region, Option<StreamId>)>,
}

impl Positions {
    /// Positions starting where each region resumes.
    pub fn new(starts: impl IntoIterator<Item = (Region, Option<StreamId>)>) -> Self {
        Positions {
            entries: starts.into_iter().collect(),
        }
    }

    /// Records `id` as the last one sent of `region` (a region not tracked is ignored).
    pub fn record(&mut self, region: Region, id: StreamId) {
        if let Some((_, last)) = self.entries.iter_mut().find(|(r, _)| *r == region) {
            *last = Some(id);
        }
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (region, id) in &self.entries {
            let Some(id) = id else { continue };
            if !first {
                write!(f, "{ENTRY_SEPARATOR}")?;
            }
            first = false;
            write!(f, "{region}{REGION_SEPARATOR}{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(code: &str) -> Region {
        Region::parse(code).unwrap()
    }

    fn starts(codes: &[&str]) -> Vec<(Region, Option<StreamId>)> {
        codes.iter().map(|code| (region(code), None)).collect()
    }

    #[test]
    fn composite_positions_set_their_regions_only() {
        let mut asked = starts(&["AE", "FI", "CZ"]);
        apply("fi:5-1,AE:7-0", &mut asked).unwrap();
        assert_eq!(
            asked,
            vec![
                (region("AE"), Some(StreamId::new(7, 0))),
                (region("FI"), Some(StreamId::new(5, 1))),
                (region("CZ"), None),
            ]
        );
        // A later position (Last-Event-ID) overrides per region, keeps the rest.
        apply("FI:6-0", &mut asked).unwrap();
        assert_eq!(asked[1].1, Some(StreamId::new(6, 0)));
        assert_eq!(asked[0].1, Some(StreamId::new(7, 0)));
        let printed = Positions::new(asked.clone()).to_string();
        assert_eq!(printed, "AE:7-0,FI:6-0");
        let mut again = starts(&["AE", "FI", "CZ"]);
        apply(&printed, &mut again).unwrap();
        assert_eq!(again, asked);
    }

    #[test]
    fn a_bare_id_is_for_one_region() {
        let mut one = starts(&["AE"]);
        apply("3-0", &mut one).unwrap();
        assert_eq!(one[0].1, Some(StreamId::new(3, 0)));
        apply("AE:4-0", &mut one).unwrap();
        assert_eq!(one[0].1, Some(StreamId::new(4, 0)));
        assert_eq!(
            apply("3-0", &mut starts(&["AE", "FI"])),
            Err(PositionError::BareForSeveral(2))
        );
    }

    #[test]
    fn bad_positions_say_what_is_wrong() {
        let bad = |text: &str| apply(text, &mut starts(&["AE", "FI"])).unwrap_err();
        assert_eq!(bad("AE:1-0,AE:2-0"), PositionError::Repeated(region("AE")));
        assert_eq!(bad("AE:1-0,CZ:2-0"), PositionError::NotAsked(region("CZ")));
        assert!(matches!(bad("AE:1-0,2-0"), PositionError::NoRegion(_)));
        assert!(matches!(bad("AE:x"), PositionError::Id(_)));
        assert!(matches!(bad("A:1-0"), PositionError::Region(_)));
        assert!(matches!(bad("AE:1-0,"), PositionError::NoRegion(_)));
        assert!(matches!(bad(":1-0"), PositionError::Region(_)));
    }

    #[test]
    fn positions_print_what_was_sent() {
        let mut positions = Positions::new([(region("AE"), None), (region("FI"), None)]);
        assert_eq!(positions.to_string(), "");
        positions.record(region("FI"), StreamId::new(2, 0));
        assert_eq!(positions.to_string(), "FI:2-0");
        positions.record(region("AE"), StreamId::new(3, 1));
        positions.record(region("CZ"), StreamId::new(9, 9));
        assert_eq!(positions.to_string(), "AE:3-1,FI:2-0");
    }
}

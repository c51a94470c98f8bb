//! What the gateway reads from a client's request before serving it: the query's `region`
//! and `since`, and for an SSE stream the `Last-Event-ID` header a reconnecting `EventSource`
//! sends.
//!
//! `region` names one region or several, comma-separated (`region=AE,FI`), each at most once
//! and at most `--max-regions-per-connection` of them. `since` is one id for a single region, or
//! one id per region (`since=AE:<id>,FI:<id>`, [`crate::positions`]); a region without an entry
//! starts live.
//!
//! Pure functions of the request's text, so the fuzz targets in `fuzz/` and unit tests drive
//! exactly what the `GET /` handler runs. A query names each parameter at most once
//! (`?region=AE&region=FI` is refused, like duplicate JSON keys); unknown parameters are
//! ignored, so cache-busters and tracking tags do not break a connection.

use notify_proto::{Region, RegionError, StreamId};

use crate::positions::{self, PositionError, Positions};

/// The region a WebSocket gets when the URL names none (the seed's default).
pub const DEFAULT_REGION: Region = notify_proto::SEED_REGIONS[7];

/// The parameters of `?region=XX[,YY…]&since=ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeQuery {
    /// The regions to receive, in the order asked, distinct, at least one
    /// ([`DEFAULT_REGION`] when the query names none); each with the last message id the
    /// client saw of it, to resume after (`None`: live only).
    pub regions: Vec<(Region, Option<StreamId>)>,
}

/// Why a WebSocket query is refused (HTTP 400, the message as its one-line body).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// A parameter appears twice.
    #[error("query names `{0}` more than once")]
    Repeated(&'static str),
    /// `region` is not a region code.
    #[error("{0}")]
    Region(#[from] RegionError),
    /// `region` names a region twice.
    #[error("region {0} asked more than once")]
    DuplicateRegion(Region),
    /// `region` names more regions than one connection may receive.
    #[error("{asked} regions asked, at most {max} per connection")]
    TooManyRegions {
        /// Regions named.
        asked: usize,
        /// `--max-regions-per-connection`.
        max: usize,
    },
    /// `since` is not a position.
    #[error("since: {0}")]
    Since(#[from] PositionError),
    /// The `Last-Event-ID` header is not a position.
    #[error("Last-Event-ID: {0}")]
    LastEventId(PositionError),
    /// The `Last-Event-ID` header is not text.
    #[error("Last-Event-ID is not UTF-8")]
    LastEventIdNotText,
}

impl QueryError {
    /// A short, stable label for `notify_handshakes_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            QueryError::Repeated(_) => "bad_query",
            QueryError::Region(_) => "bad_region",
            QueryError::DuplicateRegion(_) => "duplicate_region",
            QueryError::TooManyRegions { .. } => "too_many_regions",
            QueryError::Since(_) => "bad_since",
            QueryError::LastEventId(_) | QueryError::LastEventIdNotText => "bad_last_event_id",
        }
    }
}

impl ResumeQuery {
    /// Parses the raw (still percent-encoded) query string of the request URI, if any,
    /// allowing at most `max_regions` regions.
    pub fn parse(query: Option<&str>, max_regions: usize) -> Result<Self, QueryError> {
        let mut region = None;
        let mut since = None;
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (slot, name) = match name.as_ref() {
                "region" => (&mut region, "region"),
                "since" => (&mut since, "since"),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(QueryError::Repeated(name));
            }
        }
        let mut regions = match region {
            None => vec![(DEFAULT_REGION, None)],
            Some(text) => parse_regions(&text, max_regions)?,
        };
        if let Some(text) = since {
            positions::apply(&text, &mut regions)?;
        }
        Ok(ResumeQuery { regions })
    }

    /// Applies an SSE request's `Last-Event-ID` header: a browser's `EventSource` sends it when
    /// it reconnects, with the id of the last event it received (on a multi-region stream, the
    /// last id per region), and it replaces the URL's `since` for each region it names (the URL
    /// still names where the first connection started). Absent or empty: the query's `since`
    /// stands.
    pub fn resume_after_last_event_id(mut self, header: Option<&[u8]>) -> Result<Self, QueryError> {
        let Some(header) = header.filter(|value| !value.is_empty()) else {
            return Ok(self);
        };
        let text = std::str::from_utf8(header).map_err(|_| QueryError::LastEventIdNotText)?;
        positions::apply(text.trim(), &mut self.regions).map_err(QueryError::LastEventId)?;
        Ok(self)
    }

    /// The query string that [`ResumeQuery::parse`] reads back as `self`.
    pub fn to_query(&self) -> String {
        let names: Vec<&str> = self
            .regions
            .iter()
            .map(|(region, _)| region.as_str())
            .collect();
        let mut query = format!("region={}", names.join(","));
        match self.regions.as_slice() {
            [(_, None)] => {}
            [(_, Some(since))] => query.push_str(&format!("&since={since}")),
            several => {
                let position = Positions::new(several.iter().copied()).to_string();
                if !position.is_empty() {
                    query.push_str(&format!("&since={position}"));
                }
            }
        }
        query
    }
}

/// Parses `AE` or `AE,FI,…`: each a region, none twice, at most `max` (counted before any is
/// parsed, so a long list costs nothing).
fn parse_regions(text: &str, max: usize) -> Result<Vec<(Region, Option<StreamId>)>, QueryError> {
    let asked = text.split(',').count();
    if asked > max {
        return Err(QueryError::TooManyRegions { asked, max });
    }
    let mut regions: Vec<(Region, Option<StreamId>)> = Vec::with_capacity(asked);
    for code in text.split(',') {
        let region = Region::parse(code)?;
        if regions.iter().any(|(asked, _)| *asked == region) {
            return Err(QueryError::DuplicateRegion(region));
        }
        regions.push((region, None));
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8;

    fn parse(query: &str) -> Result<ResumeQuery, QueryError> {
        ResumeQuery::parse(Some(query), MAX)
    }

    fn region(code: &str) -> Region {
        Region::parse(code).unwrap()
    }

    #[test]
    fn defaults_and_round_trip() {
        let default = ResumeQuery::parse(None, MAX).unwrap();
        assert_eq!(default.regions, vec![(DEFAULT_REGION, None)]);
        assert_eq!(parse("since=").unwrap(), default);
        let resume = parse("region=ae&since=1764290000123-4&v=2").unwrap();
        assert_eq!(
            resume.regions,
            vec![(region("AE"), Some(StreamId::new(1_764_290_000_123, 4)))]
        );
        assert_eq!(resume.to_query(), "region=AE&since=1764290000123-4");
        assert_eq!(parse(&resume.to_query()).unwrap(), resume);
        // Percent-encoding is decoded before validation.
        assert_eq!(parse("region=%41%45").unwrap().regions[0].0, region("AE"));
    }

    #[test]
    fn several_regions_each_with_its_own_since() {
        let query = parse("region=AE,fi,CZ&since=FI:5-0,AE:3-1").unwrap();
        assert_eq!(
            query.regions,
            vec![
                (region("AE"), Some(StreamId::new(3, 1))),
                (region("FI"), Some(StreamId::new(5, 0))),
                (region("CZ"), None),
            ]
        );
        assert_eq!(query.to_query(), "region=AE,FI,CZ&since=AE:3-1,FI:5-0");
        assert_eq!(parse(&query.to_query()).unwrap(), query);
        assert_eq!(
            parse("region=AE%2CFI").unwrap().regions.len(),
            2,
            "an encoded comma separates too"
        );
    }

    #[test]
    fn region_lists_are_bounded_and_distinct() {
        assert_eq!(
            parse("region=AE,FI,AE").unwrap_err(),
            QueryError::DuplicateRegion(region("AE"))
        );
        assert_eq!(
            parse("region=AE,ae").unwrap_err().to_string(),
            "region AE asked more than once"
        );
        let nine = "AE,FI,CZ,DK,BE,GB,CH,US,SE";
        let error = parse(&format!("region={nine}")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "9 regions asked, at most 8 per connection"
        );
        assert_eq!(error.reason(), "too_many_regions");
        assert_eq!(
            ResumeQuery::parse(Some("region=AE,FI"), 1)
                .unwrap_err()
                .reason(),
            "too_many_regions"
        );
        // Counted before parsing: a huge list is refused for its length, not parsed.
        let huge = format!("region={}", vec!["??"; 4000].join(","));
        assert_eq!(parse(&huge).unwrap_err().reason(), "too_many_regions");
        assert_eq!(parse("region=AE,,FI").unwrap_err().reason(), "bad_region");
        assert_eq!(parse("region=AE,").unwrap_err().reason(), "bad_region");
    }

    #[test]
    fn hostile_values_get_their_reason() {
        let reason = |query: &str| parse(query).unwrap_err().reason();
        assert_eq!(reason("region=AE&region=FI"), "bad_query");
        assert_eq!(reason("since=1-0&since=2-0"), "bad_query");
        for bad in [
            "region=A%00",
            "region=AE%00",
            "region=%00%00",
            "region=%FF%FE",
            "region=..%2F..",
            "region=A%2",
            "region=XX",
            "region=AE,XX",
        ] {
            assert_eq!(reason(bad), "bad_region", "{bad}");
        }
        for bad in [
            "since=abc",
            "since=1-0%00",
            "since=-1-0",
            "since=1-0-0",
            "region=AE,FI&since=1-0",
            "region=AE,FI&since=AE:1-0,AE:2-0",
            "region=AE,FI&since=CZ:1-0",
            "region=AE&since=FI:1-0",
        ] {
            assert_eq!(reason(bad), "bad_since", "{bad}");
        }
        let long = format!("region=AE&since={}", "9".repeat(64 * 1024));
        assert_eq!(reason(&long), "bad_since");
        assert_eq!(
            parse("region=AE,FI&since=1-0").unwrap_err().to_string(),
            "since: a bare id is for one region; with 2 regions give one id per region, \
             e.g. AE:1764290000123-0,FI:1764290000119-3"
        );
    }

    #[test]
    fn last_event_id_replaces_since() {
        let query = parse("region=AE&since=1-0").unwrap();
        let resumed = |header: &[u8]| query.clone().resume_after_last_event_id(Some(header));
        assert_eq!(
            resumed(b"5-2").unwrap().regions[0].1,
            Some(StreamId::new(5, 2)),
            "the browser's last id wins over the URL's"
        );
        assert_eq!(resumed(b"").unwrap(), query);
        assert_eq!(
            query.clone().resume_after_last_event_id(None).unwrap(),
            query
        );
        for bad in [&b"abc"[..], b"1-0-0", b"\xff\xfe", b"5-2\0", b"FI:1-0"] {
            assert_eq!(
                resumed(bad).unwrap_err().reason(),
                "bad_last_event_id",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_composite_last_event_id_replaces_each_region_it_names() {
        let query = parse("region=AE,FI,CZ&since=AE:1-0,FI:1-0").unwrap();
        let resumed = query
            .clone()
            .resume_after_last_event_id(Some(b"FI:7-0,CZ:2-0"))
            .unwrap();
        assert_eq!(
            resumed.regions,
            vec![
                (region("AE"), Some(StreamId::new(1, 0))),
                (region("FI"), Some(StreamId::new(7, 0))),
                (region("CZ"), Some(StreamId::new(2, 0))),
            ]
        );
        assert_eq!(
            query
                .resume_after_last_event_id(Some(b"7-0"))
                .unwrap_err()
                .reason(),
            "bad_last_event_id",
            "a bare id cannot say which of several regions it is"
        );
    }
}

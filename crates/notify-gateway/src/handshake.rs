//! What the gateway reads from a client's request before serving it: the query's `region`
//! and `since`, and for an SSE stream the `Last-Event-ID` header a reconnecting `EventSource`
//! sends.
//!
//! Pure functions of the request's text, so the fuzz targets in `fuzz/` and unit tests drive
//! exactly what the `GET /` handler runs. A query names each parameter at most once
//! (`?region=AE&region=FI` is refused, like duplicate JSON keys); unknown parameters are
//! ignored, so cache-busters and tracking tags do not break a connection.

use notify_proto::{Region, RegionError, StreamId, StreamIdError};

/// The region a WebSocket gets when the URL names none (the seed's default).
pub const DEFAULT_REGION: Region = notify_proto::SEED_REGIONS[7];

/// The parameters of `?region=XX&since=ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeQuery {
    /// Region to receive; [`DEFAULT_REGION`] when absent.
    pub region: Region,
    /// Last message id the client saw; resume after it. Absent or empty: live only.
    pub since: Option<StreamId>,
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
    /// `since` is not a message id.
    #[error("since: {0}")]
    Since(#[from] StreamIdError),
    /// The `Last-Event-ID` header is not a message id.
    #[error("Last-Event-ID: {0}")]
    LastEventId(StreamIdError),
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
            QueryError::Since(_) => "bad_since",
            QueryError::LastEventId(_) | QueryError::LastEventIdNotText => "bad_last_event_id",
        }
    }
}

impl ResumeQuery {
    /// Parses the raw (still percent-encoded) query string of the request URI, if any.
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
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
        let region = match region {
            None => DEFAULT_REGION,
            Some(text) => Region::parse(&text)?,
        };
        let since = match since.filter(|text| !text.is_empty()) {
            None => None,
            Some(text) => Some(StreamId::parse(&text)?),
        };
        Ok(ResumeQuery { region, since })
    }

    /// Applies an SSE request's `Last-Event-ID` header: a browser's `EventSource` sends it when
    /// it reconnects, with the id of the last event it received, and it replaces the URL's
    /// `since` (which still names where the first connection started). Absent or empty: the
    /// query's `since` stands.
    pub fn resume_after_last_event_id(self, header: Option<&[u8]>) -> Result<Self, QueryError> {
        let Some(header) = header.filter(|value| !value.is_empty()) else {
            return Ok(self);
        };
        let text = std::str::from_utf8(header).map_err(|_| QueryError::LastEventIdNotText)?;
        let since = StreamId::parse(text.trim()).map_err(QueryError::LastEventId)?;
        Ok(ResumeQuery {
            since: Some(since),
            ..self
        })
    }

    /// The query string that [`ResumeQuery::parse`] reads back as `self`.
    pub fn to_query(&self) -> String {
        match self.since {
            None => format!("region={}", self.region),
            Some(since) => format!("region={}&since={since}", self.region),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<ResumeQuery, QueryError> {
        ResumeQuery::parse(Some(query))
    }

    #[test]
    fn defaults_and_round_trip() {
        let default = ResumeQuery::parse(None).unwrap();
        assert_eq!(default.region, DEFAULT_REGION);
        assert_eq!(default.since, None);
        assert_eq!(parse("since=").unwrap(), default);
        let resume = parse("region=ae&since=1764290000123-4&v=2").unwrap();
        assert_eq!(resume.region.as_str(), "AE");
        assert_eq!(resume.since, Some(StreamId::new(1_764_290_000_123, 4)));
        assert_eq!(parse(&resume.to_query()).unwrap(), resume);
        // Percent-encoding is decoded before validation.
        assert_eq!(parse("region=%41%45").unwrap().region.as_str(), "AE");
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
        ] {
            assert_eq!(reason(bad), "bad_region", "{bad}");
        }
        for bad in ["since=abc", "since=1-0%00", "since=-1-0", "since=1-0-0"] {
            assert_eq!(reason(bad), "bad_since", "{bad}");
        }
        let long = format!("region=AE&since={}", "9".repeat(64 * 1024));
        assert_eq!(reason(&long), "bad_since");
    }

    #[test]
    fn last_event_id_replaces_since() {
        let query = parse("region=AE&since=1-0").unwrap();
        let resumed = |header: &[u8]| query.resume_after_last_event_id(Some(header));
        assert_eq!(
            resumed(b"5-2").unwrap().since,
            Some(StreamId::new(5, 2)),
            "the browser's last id wins over the URL's"
        );
        assert_eq!(resumed(b"").unwrap(), query);
        assert_eq!(query.resume_after_last_event_id(None).unwrap(), query);
        for bad in [&b"abc"[..], b"1-0-0", b"\xff\xfe", b"5-2\0"] {
            assert_eq!(
                resumed(bad).unwrap_err().reason(),
                "bad_last_event_id",
                "{bad:?}"
            );
        }
    }
}

//! The `new_trending` notification: the payload publishers put on `tvs:{REGION}` and browsers
//! receive unchanged.
//!
//! Parsing ([`Notification::from_slice`]) checks, in order: size, UTF-8, JSON (with no object
//! repeating a key, see [`crate::strict_json`]), object, then each field; the first problem
//! found is returned as a [`PayloadError`]. Fields this crate does not
//! know are kept in [`Notification::extra`] in their original order and written back unchanged,
//! so a publisher can add fields without the gateway dropping them.
//!
//! Encoding ([`Notification::to_json`]) writes UTF-8 as UTF-8 — never `\uXXXX` — like the
//! seed's `JSON_UNESCAPED_UNICODE` and `ensure_ascii=False`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::region::{Region, RegionError};
use crate::stream_id::StreamId;
use crate::strict_json::{self, StrictJsonError};

/// The only event publishers send.
pub const EVENT_NEW_TRENDING: &str = "new_trending";

/// Default largest payload accepted from Redis or the HTTP API: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// A `new_trending` notification, field for field the seed's PHP payload, plus an optional
/// stream `id` added by publishers that record history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// Always [`EVENT_NEW_TRENDING`].
    pub event: String,
    /// The region the video trends in; must match the channel it was published on.
    pub region: Region,
    /// The platform's video id.
    pub video_id: String,
    /// Video title, any script.
    pub title: String,
    /// Thumbnail URL; http or https only.
    pub thumbnail: String,
    /// Channel (uploader) title.
    pub channel: String,
    /// Whether the title should be shown right to left. Defaults to [`Region::is_rtl`].
    pub rtl: bool,
    /// Publish time, Unix seconds.
    pub ts: i64,
    /// History id of this message in its region's stream (`1700000000000-0`), when the
    /// publisher recorded it. Absent for plain `PUBLISH` (the seed's PHP publisher).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<StreamId>,
    /// Fields this contract does not define, kept in order and passed through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why a payload is not a valid notification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// Larger than the configured limit; checked before anything is parsed.
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the rejected payload in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not valid UTF-8.
    #[error("payload is not valid UTF-8 (bad byte at offset {0})")]
    NotUtf8(usize),
    /// Not JSON at all.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// An object in the payload names the same key twice (`{"region":"AE","region":"FI"}`):
    /// readers disagree on which one counts, so none does.
    #[error("payload repeats the key {0:?} in one object")]
    DuplicateKey(String),
    /// JSON, but an array, string, number, boolean or null.
    #[error("payload is JSON but not an object")]
    NotObject,
    /// A required field is absent (or `null`).
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    /// A required string field is empty or only whitespace.
    #[error("field `{0}` is empty")]
    EmptyField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// `event` is something other than `new_trending`.
    #[error("event {0:?} is not supported (expected \"new_trending\")")]
    UnsupportedEvent(String),
    /// `region` is not a region. The message includes the region error's, so it is not
    /// also a `source` (a printed chain would say it twice).
    #[error("field `region`: {0}")]
    Region(RegionError),
    /// The payload's region differs from the region of the channel it came on.
    #[error("payload region {payload} does not match channel region {channel}")]
    RegionMismatch {
        /// Region named in the payload.
        payload: Region,
        /// Region of the channel.
        channel: Region,
    },
    /// `thumbnail` is not an absolute http(s) URL.
    #[error("thumbnail {0:?} is not an http(s) URL")]
    BadThumbnail(String),
}

impl From<RegionError> for PayloadError {
    fn from(error: RegionError) -> Self {
        PayloadError::Region(error)
    }
}

impl PayloadError {
    /// Every [`PayloadError::kind`], so a counter can show each reason at 0 before the first.
    pub const KINDS: [&'static str; 12] = [
        "too_large",
        "not_utf8",
        "not_json",
        "duplicate_key",
        "not_object",
        "missing_field",
        "empty_field",
        "wrong_type",
        "unsupported_event",
        "bad_region",
        "region_mismatch",
        "bad_thumbnail",
    ];

    /// A short, stable, label-safe name for metrics (`bad_payloads_total{reason="not_json"}`).
    pub fn kind(&self) -> &'static str {
        match self {
            PayloadError::TooLarge { .. } => "too_large",
            PayloadError::NotUtf8(_) => "not_utf8",
            PayloadError::NotJson(_) => "not_json",
            PayloadError::DuplicateKey(_) => "duplicate_key",
            PayloadError::NotObject => "not_object",
            PayloadError::MissingField(_) => "missing_field",
            PayloadError::EmptyField(_) => "empty_field",
            PayloadError::WrongType { .. } => "wrong_type",
            PayloadError::UnsupportedEvent(_) => "unsupported_event",
            PayloadError::Region(_) => "bad_region",
            PayloadError::RegionMismatch { .. } => "region_mismatch",
            PayloadError::BadThumbnail(_) => "bad_thumbnail",
        }
    }
}

impl Notification {
    /// A `new_trending` notification with `rtl` from the region and no extra fields.
    pub fn new(
        region: Region,
        video_id: impl Into<String>,
        title: impl Into<String>,
        thumbnail: impl Into<String>,
        channel: impl Into<String>,
        ts: i64,
    ) -> Self {
        Notification {
            event: EVENT_NEW_TRENDING.to_owned(),
            region,
            video_id: video_id.into(),
            title: title.into(),
            thumbnail: thumbnail.into(),
            channel: channel.into(),
            rtl: region.is_rtl(),
            ts,
            id: None,
            extra: Map::new(),
        }
    }

    /// Parses and validates raw payload bytes, as they arrive from Redis or an HTTP body.
    pub fn from_slice(payload: &[u8], max_bytes: usize) -> Result<Self, PayloadError> {
        Self::from_value(parse_json(payload, max_bytes)?)
    }

    /// The current time as a `ts` value (Unix seconds): what a publisher puts in a
    /// notification that names none. 0 if the clock is before 1970.
    pub fn ts_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            })
    }

    /// Parses a notification handed to a publisher (an NDJSON line of the CLI, a
    /// `POST /api/publish` body): as [`Notification::from_slice`], except that a missing or
    /// `null` `ts` becomes `now` (Unix seconds). The payload, and the canonical JSON it
    /// becomes, must fit in `max_bytes`, so every gateway accepts what was published.
    ///
    /// Payloads read from a Redis channel keep the strict rule: `ts` is required there.
    pub fn from_publish_request(
        payload: &[u8],
        now: i64,
        max_bytes: usize,
    ) -> Result<Self, PayloadError> {
        let mut value = parse_json(payload, max_bytes)?;
        if let Value::Object(fields) = &mut value {
            if matches!(fields.get("ts"), None | Some(Value::Null)) {
                fields.insert("ts".into(), now.into());
            }
        }
        let notification = Self::from_value(value)?;
        let size = notification.to_json().len();
        if size > max_bytes {
            return Err(PayloadError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        Ok(notification)
    }

    /// Validates an already parsed JSON value (one NDJSON line, one HTTP body).
    pub fn from_value(value: Value) -> Result<Self, PayloadError> {
        let Value::Object(mut fields) = value else {
            return Err(PayloadError::NotObject);
        };
        let event = take_string(&mut fields, "event")?;
        if event != EVENT_NEW_TRENDING {
            return Err(PayloadError::UnsupportedEvent(event));
        }
        let region = Region::parse(&take_string(&mut fields, "region")?)?;
        let video_id = take_string(&mut fields, "video_id")?;
        let title = take_string(&mut fields, "title")?;
        let thumbnail = take_string(&mut fields, "thumbnail")?;
        check_thumbnail(&thumbnail)?;
        let channel = take_string(&mut fields, "channel")?;
        let rtl = match fields.shift_remove("rtl") {
            None | Some(Value::Null) => region.is_rtl(),
            Some(Value::Bool(rtl)) => rtl,
            Some(_) => {
                return Err(PayloadError::WrongType {
                    field: "rtl",
                    expected: "a boolean",
                })
            }
        };
        let ts = match fields.shift_remove("ts") {
            None | Some(Value::Null) => return Err(PayloadError::MissingField("ts")),
            Some(Value::Number(number)) => {
                number
                    .as_i64()
                    .filter(|ts| *ts >= 0)
                    .ok_or(PayloadError::WrongType {
                        field: "ts",
                        expected: "a non-negative integer (Unix seconds)",
                    })?
            }
            Some(_) => {
                return Err(PayloadError::WrongType {
                    field: "ts",
                    expected: "a non-negative integer (Unix seconds)",
                })
            }
        };
        let id = match fields.shift_remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => {
                Some(StreamId::parse(&id).map_err(|_| PayloadError::WrongType {
                    field: "id",
                    expected: "a message id string like \"1700000000000-0\"",
                })?)
            }
            Some(_) => {
                return Err(PayloadError::WrongType {
                    field: "id",
                    expected: "a message id string like \"1700000000000-0\"",
                })
            }
        };
        Ok(Notification {
            event,
            region,
            video_id,
            title,
            thumbnail,
            channel,
            rtl,
            ts,
            id,
            extra: fields,
        })
    }

    /// Parses a payload that arrived on `channel_region`'s channel and checks that the payload
    /// names the same region.
    pub fn from_channel_payload(
        payload: &[u8],
        channel_region: Region,
        max_bytes: usize,
    ) -> Result<Self, PayloadError> {
        let notification = Self::from_slice(payload, max_bytes)?;
        if notification.region != channel_region {
            return Err(PayloadError::RegionMismatch {
                payload: notification.region,
                channel: channel_region,
            });
        }
        Ok(notification)
    }

    /// The canonical JSON encoding: seed field order, then `id`, then extra fields in their
    /// original order; UTF-8 unescaped.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, numbers and a JSON map cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The first steps of parsing a payload, for callers that adjust the JSON before
/// [`Notification::from_value`] (the CLI fills in `ts`): size, UTF-8, then JSON in which no
/// object repeats a key.
pub fn parse_json(payload: &[u8], max_bytes: usize) -> Result<Value, PayloadError> {
    if payload.len() > max_bytes {
        return Err(PayloadError::TooLarge {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let text =
        std::str::from_utf8(payload).map_err(|error| PayloadError::NotUtf8(error.valid_up_to()))?;
    strict_json::parse_value(text).map_err(|error| match error {
        StrictJsonError::Syntax(message) => PayloadError::NotJson(message),
        StrictJsonError::DuplicateKey(key) => PayloadError::DuplicateKey(key),
    })
}

fn take_string(
    fields: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, PayloadError> {
    match fields.shift_remove(field) {
        None | Some(Value::Null) => Err(PayloadError::MissingField(field)),
        Some(Value::String(text)) if text.trim().is_empty() => Err(PayloadError::EmptyField(field)),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(PayloadError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// An absolute http(s) URL with a host and no whitespace or control characters. Anything else
/// (`javascript:`, `data:`, relative paths) could not be shown safely as an image.
fn check_thumbnail(thumbnail: &str) -> Result<(), PayloadError> {
    let lower = thumbnail.get(..8).unwrap_or(thumbnail).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &thumbnail[8..]
    } else if lower.starts_with("http://") {
        &thumbnail[7..]
    } else {
        return Err(PayloadError::BadThumbnail(thumbnail.to_owned()));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let clean = !thumbnail
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<' || c == '>');
    if host.is_empty() || !clean {
        return Err(PayloadError::BadThumbnail(thumbnail.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly what the seed's PHP `NotificationPublisher::publish` produces for AE.
    const SEED_PHP_AE: &str = r#"{"event":"new_trending","region":"AE","video_id":"dQw4w9WgXcQ","title":"أخبار عاجلة من دبي","thumbnail":"https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg","channel":"قناة الأخبار","rtl":true,"ts":1764290000}"#;

    fn ae() -> Region {
        Region::parse("AE").unwrap()
    }

    /// One of each error, matched without a wildcard: a new variant does not compile until it
    /// is added here, and then the test fails until `KINDS` lists its kind.
    fn one_of_each_payload_error() -> Vec<PayloadError> {
        let all = vec![
            PayloadError::TooLarge { size: 2, limit: 1 },
            PayloadError::NotUtf8(0),
            PayloadError::NotJson(String::new()),
            PayloadError::DuplicateKey(String::new()),
            PayloadError::NotObject,
            PayloadError::MissingField("region"),
            PayloadError::EmptyField("title"),
            PayloadError::WrongType {
                field: "rtl",
                expected: "a boolean",
            },
            PayloadError::UnsupportedEvent(String::new()),
            PayloadError::Region(RegionError::Malformed(String::new())),
            PayloadError::RegionMismatch {
                payload: ae(),
                channel: ae(),
            },
            PayloadError::BadThumbnail(String::new()),
        ];
        for error in &all {
            match error {
                PayloadError::TooLarge { .. }
                | PayloadError::NotUtf8(_)
                | PayloadError::NotJson(_)
                | PayloadError::DuplicateKey(_)
                | PayloadError::NotObject
                | PayloadError::MissingField(_)
                | PayloadError::EmptyField(_)
                | PayloadError::WrongType { .. }
                | PayloadError::UnsupportedEvent(_)
                | PayloadError::Region(_)
                | PayloadError::RegionMismatch { .. }
                | PayloadError::BadThumbnail(_) => {}
            }
        }
        all
    }

    #[test]
    fn kinds_lists_every_kind_once() {
        let kinds: Vec<&str> = one_of_each_payload_error()
            .iter()
            .map(PayloadError::kind)
            .collect();
        assert_eq!(kinds, PayloadError::KINDS.to_vec());
    }

    #[test]
    fn seed_payload_round_trips_byte_for_byte() {
        let parsed =
            Notification::from_slice(SEED_PHP_AE.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(parsed.region, ae());
        assert!(parsed.rtl);
        assert_eq!(parsed.title, "أخبار عاجلة من دبي");
        assert_eq!(parsed.to_json(), SEED_PHP_AE);
    }

    #[test]
    fn unicode_is_written_unescaped() {
        let n = Notification::new(
            Region::parse("CZ").unwrap(),
            "v1",
            "Příliš žluťoučký kůň — č ž š, ä ö, ø å",
            "https://example.com/t.jpg",
            "Kanál",
            1,
        );
        let json = n.to_json();
        assert!(json.contains("Příliš žluťoučký kůň — č ž š, ä ö, ø å"));
        assert!(!json.contains("\\u"));
    }

    #[test]
    fn unknown_fields_survive_in_order() {
        let input = r#"{"event":"new_trending","region":"FI","video_id":"v","title":"t","thumbnail":"http://x.fi/a.jpg","channel":"c","rtl":false,"ts":5,"zeta":1,"alpha":{"nested":[1,"ä"]}}"#;
        let parsed = Notification::from_slice(input.as_bytes(), 1 << 16).unwrap();
        assert_eq!(parsed.to_json(), input);
    }

    #[test]
    fn rtl_defaults_from_region_and_can_be_overridden() {
        let without = r#"{"event":"new_trending","region":"sa","video_id":"v","title":"t","thumbnail":"https://x/a","channel":"c","ts":5}"#;
        let parsed = Notification::from_slice(without.as_bytes(), 1 << 16).unwrap();
        assert!(parsed.rtl);
        assert_eq!(parsed.region.as_str(), "SA");
        let overridden = without.replace("\"ts\"", "\"rtl\":false,\"ts\"");
        assert!(
            !Notification::from_slice(overridden.as_bytes(), 1 << 16)
                .unwrap()
                .rtl
        );
    }

    #[test]
    fn typed_errors() {
        let max = DEFAULT_MAX_PAYLOAD_BYTES;
        let parse = |text: &str| Notification::from_slice(text.as_bytes(), max).unwrap_err();
        assert_eq!(parse("not json").kind(), "not_json");
        assert_eq!(parse("[1,2]"), PayloadError::NotObject);
        assert_eq!(
            Notification::from_slice(b"{\"a\":\"\xff\"}", max).unwrap_err(),
            PayloadError::NotUtf8(6)
        );
        let good: Value = serde_json::from_str(SEED_PHP_AE).unwrap();
        let with = |field: &str, value: Value| {
            let mut object = good.clone();
            object[field] = value;
            Notification::from_value(object).unwrap_err()
        };
        assert_eq!(
            with("title", Value::Null),
            PayloadError::MissingField("title")
        );
        assert_eq!(
            with("title", "  ".into()),
            PayloadError::EmptyField("title")
        );
        assert_eq!(with("video_id", 7.into()).kind(), "wrong_type");
        assert_eq!(with("event", "other".into()).kind(), "unsupported_event");
        assert_eq!(with("region", "../x".into()).kind(), "bad_region");
        assert_eq!(
            with("thumbnail", "javascript:alert(1)".into()).kind(),
            "bad_thumbnail"
        );
        assert_eq!(with("thumbnail", "https://".into()).kind(), "bad_thumbnail");
        assert_eq!(
            with("thumbnail", "https://a b/".into()).kind(),
            "bad_thumbnail"
        );
        assert_eq!(with("ts", (-1).into()).kind(), "wrong_type");
        assert_eq!(with("ts", "now".into()).kind(), "wrong_type");
        assert_eq!(with("rtl", "yes".into()).kind(), "wrong_type");
        let big = vec![b' '; max + 1];
        assert_eq!(
            Notification::from_slice(&big, max).unwrap_err(),
            PayloadError::TooLarge {
                size: max + 1,
                limit: max
            }
        );
    }

    #[test]
    fn channel_region_must_match() {
        let fi = Region::parse("FI").unwrap();
        let err =
            Notification::from_channel_payload(SEED_PHP_AE.as_bytes(), fi, 1 << 16).unwrap_err();
        assert_eq!(
            err,
            PayloadError::RegionMismatch {
                payload: ae(),
                channel: fi
            }
        );
        assert!(Notification::from_channel_payload(SEED_PHP_AE.as_bytes(), ae(), 1 << 16).is_ok());
    }

    #[test]
    fn id_is_optional_and_kept() {
        let with_id = SEED_PHP_AE.replace("\"ts\":1764290000", "\"ts\":1764290000,\"id\":\"17-0\"");
        let parsed = Notification::from_slice(with_id.as_bytes(), 1 << 16).unwrap();
        assert_eq!(parsed.id, Some(StreamId::new(17, 0)));
        assert_eq!(parsed.to_json(), with_id);
    }

    #[test]
    fn duplicate_keys_are_a_bad_payload_on_both_paths() {
        let twice = SEED_PHP_AE.replace("\"ts\"", "\"region\":\"FI\",\"ts\"");
        let expected = PayloadError::DuplicateKey("region".into());
        assert_eq!(
            Notification::from_slice(twice.as_bytes(), 1 << 16).unwrap_err(),
            expected
        );
        let fi = Region::parse("FI").unwrap();
        for channel in [ae(), fi] {
            let error =
                Notification::from_channel_payload(twice.as_bytes(), channel, 1 << 16).unwrap_err();
            assert_eq!(error, expected);
            assert_eq!(error.kind(), "duplicate_key");
        }
        // Inside an extra field too: the gateway would otherwise rewrite its meaning.
        let nested = SEED_PHP_AE.replace("\"ts\"", "\"meta\":{\"a\":1,\"a\":2},\"ts\"");
        assert_eq!(
            Notification::from_slice(nested.as_bytes(), 1 << 16).unwrap_err(),
            PayloadError::DuplicateKey("a".into())
        );
    }

    #[test]
    fn deep_nesting_is_not_json_and_does_not_overflow_the_stack() {
        let deep = |levels: usize| {
            SEED_PHP_AE.replace(
                "\"ts\"",
                &format!("\"x\":{}1{},\"ts\"", "[".repeat(levels), "]".repeat(levels)),
            )
        };
        assert!(Notification::from_slice(deep(100).as_bytes(), 1 << 20).is_ok());
        let error = Notification::from_slice(deep(60_000).as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(error.kind(), "not_json");
        assert!(error.to_string().contains("recursion limit"), "{error}");
    }

    #[test]
    fn huge_numbers() {
        let with_ts = |ts: &str| SEED_PHP_AE.replace("1764290000", ts);
        let parse = |text: String| Notification::from_slice(text.as_bytes(), 1 << 16);
        // ts must fit an i64 and be an integer.
        assert_eq!(parse(with_ts("9223372036854775807")).unwrap().ts, i64::MAX);
        for ts in [
            "9223372036854775808",
            "1e3",
            "1.5",
            "99999999999999999999999",
        ] {
            assert_eq!(parse(with_ts(ts)).unwrap_err().kind(), "wrong_type", "{ts}");
        }
        // Beyond f64: not JSON this parser can represent.
        assert_eq!(parse(with_ts("1e400")).unwrap_err().kind(), "not_json");
        // Big numbers in extra fields are kept and round-trip.
        let extra = SEED_PHP_AE.replace("\"ts\"", "\"n\":1e300,\"m\":-18446744073709551615,\"ts\"");
        let parsed = parse(extra).unwrap();
        let again = Notification::from_slice(parsed.to_json().as_bytes(), 1 << 16).unwrap();
        assert_eq!(parsed, again);
    }

    #[test]
    fn invalid_utf8_anywhere_is_not_utf8() {
        let mut bytes = SEED_PHP_AE.as_bytes().to_vec();
        let at = SEED_PHP_AE.find("title").unwrap() + 8; // first byte of the Arabic title
        bytes[at] = 0xC0; // overlong lead byte, never valid
        assert_eq!(
            Notification::from_slice(&bytes, 1 << 16).unwrap_err(),
            PayloadError::NotUtf8(at)
        );
        // An escaped lone surrogate is not a string either.
        let lone = SEED_PHP_AE.replace("أخبار", "\\ud800");
        assert_eq!(
            Notification::from_slice(lone.as_bytes(), 1 << 16)
                .unwrap_err()
                .kind(),
            "not_json"
        );
    }

    #[test]
    fn only_http_thumbnails_are_accepted() {
        let with = |thumbnail: &str| {
            let text = SEED_PHP_AE.replace(
                "https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg",
                thumbnail,
            );
            Notification::from_slice(text.as_bytes(), 1 << 16)
        };
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            " javascript:alert(1)",
            "\\u0000javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "//evil.example/a.jpg",
            "https:alert(1)",
            "http://\\\"onerror=alert(1)",
            "https://a.example/\\u0000.jpg",
            "https://a.example/<svg>",
        ] {
            assert_eq!(with(bad).unwrap_err().kind(), "bad_thumbnail", "{bad}");
        }
        assert!(with("HTTPS://I.YTIMG.COM/vi/x.jpg").is_ok());
    }

    /// Found by the `payload` fuzz target: serde_json's fast float parser read `0.3e050` as
    /// 2.999999999999999e49, which re-serialised and re-parsed to a different number, so an
    /// extra field reached browsers changed. Floats are now parsed correctly rounded.
    #[test]
    fn floats_in_extra_fields_round_trip_exactly() {
        let text = SEED_PHP_AE.replace("\"ts\"", "\"x\":[0.3e050,2.2250738585072011e-308],\"ts\"");
        let parsed = Notification::from_slice(text.as_bytes(), 1 << 16).unwrap();
        assert_eq!(parsed.extra["x"][0].as_f64(), Some(3e49));
        let again = Notification::from_slice(parsed.to_json().as_bytes(), 1 << 16).unwrap();
        assert_eq!(again, parsed);
    }
}

//! Turning input into validated [`Notification`]s: one from command-line flags, or many from
//! NDJSON (one JSON object per line).
//!
//! Validation is notify-proto's ([`Notification::from_value`]); this module only fills in what a
//! cron job's input may leave out: `ts` (now) and `rtl` (from the region, done by notify-proto).
//! Every error names the field; reading the lines of NDJSON input is [`crate::lines`].

use notify_proto::{Notification, PayloadError, EVENT_NEW_TRENDING};
use serde_json::{Map, Value};

/// The flags that describe one notification on the command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagFields {
    /// `--region`.
    pub region: String,
    /// `--video-id`.
    pub video_id: String,
    /// `--title`.
    pub title: String,
    /// `--thumbnail`.
    pub thumbnail: String,
    /// `--channel`.
    pub channel: String,
    /// `--rtl` / `--no-rtl`; `None` = from the region.
    pub rtl: Option<bool>,
    /// `--ts`; `None` = now.
    pub ts: Option<i64>,
}

/// A flag value that does not make a valid notification.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {flag}")]
pub struct FlagError {
    /// The flag at fault (`--title`), or `flags` when no single flag is.
    pub flag: &'static str,
    /// What is wrong with it.
    #[source]
    pub source: PayloadError,
}

/// Builds and validates one notification from flags; `now` is used when `--ts` is absent.
pub fn from_flags(fields: &FlagFields, now: i64) -> Result<Notification, FlagError> {
    let mut object = Map::new();
    object.insert("event".into(), EVENT_NEW_TRENDING.into());
    object.insert("region".into(), fields.region.clone().into());
    object.insert("video_id".into(), fields.video_id.clone().into());
    object.insert("title".into(), fields.title.clone().into());
    object.insert("thumbnail".into(), fields.thumbnail.clone().into());
    object.insert("channel".into(), fields.channel.clone().into());
    if let Some(rtl) = fields.rtl {
        object.insert("rtl".into(), rtl.into());
    }
    object.insert("ts".into(), fields.ts.unwrap_or(now).into());
    Notification::from_value(Value::Object(object)).map_err(|source| FlagError {
        flag: flag_of(&source),
        source,
    })
}

/// The command-line flag that carries the field a [`PayloadError`] is about.
fn flag_of(error: &PayloadError) -> &'static str {
    let field = match error {
        PayloadError::MissingField(field) | PayloadError::EmptyField(field) => *field,
        PayloadError::WrongType { field, .. } => *field,
        PayloadError::Region(_) | PayloadError::RegionMismatch { .. } => "region",
        PayloadError::BadThumbnail(_) => "thumbnail",
        _ => "",
    };
    match field {
        "region" => "--region",
        "video_id" => "--video-id",
        "title" => "--title",
        "thumbnail" => "--thumbnail",
        "channel" => "--channel",
        "rtl" => "--rtl",
        "ts" => "--ts",
        _ => "flags",
    }
}

/// Parses one NDJSON line (without its newline). A missing or `null` `ts` becomes `now`;
/// a missing `rtl` comes from the region. The line, and the canonical JSON it becomes, must
/// fit in `max_bytes` (the gateway drops larger payloads).
pub fn parse_line(line: &[u8], now: i64, max_bytes: usize) -> Result<Notification, PayloadError> {
    Notification::from_publish_request(line, now, max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_proto::DEFAULT_MAX_PAYLOAD_BYTES as MAX;

    const NOW: i64 = 1_764_290_000;

    fn fields() -> FlagFields {
        FlagFields {
            region: "ae".into(),
            video_id: "dQw4w9WgXcQ".into(),
            title: "أخبار عاجلة من دبي".into(),
            thumbnail: "https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg".into(),
            channel: "قناة الأخبار".into(),
            rtl: None,
            ts: None,
        }
    }

    #[test]
    fn seed_line_round_trips() {
        let seed = r#"{"event":"new_trending","region":"AE","video_id":"dQw4w9WgXcQ","title":"أخبار عاجلة من دبي","thumbnail":"https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg","channel":"قناة الأخبار","rtl":true,"ts":1764290000}"#;
        let parsed = parse_line(seed.as_bytes(), 5, MAX).unwrap();
        assert_eq!(parsed.to_json(), seed);
    }

    #[test]
    fn ts_and_rtl_default() {
        let line = r#"{"event":"new_trending","region":"cz","video_id":"v1","title":"Příliš žluťoučký kůň — č ž š","thumbnail":"https://x.cz/a.jpg","channel":"Kanál"}"#;
        let parsed = parse_line(line.as_bytes(), NOW, MAX).unwrap();
        assert_eq!(parsed.ts, NOW);
        assert!(!parsed.rtl);
        assert_eq!(parsed.region.as_str(), "CZ");
        let json = parsed.to_json();
        assert!(json.contains("Příliš žluťoučký kůň — č ž š"), "{json}");
        assert!(json.ends_with(r#""rtl":false,"ts":1764290000}"#), "{json}");

        let null_ts = line.replace("\"channel\"", "\"ts\":null,\"channel\"");
        assert_eq!(parse_line(null_ts.as_bytes(), NOW, MAX).unwrap().ts, NOW);
        let own_ts = line.replace("\"channel\"", "\"ts\":7,\"channel\"");
        assert_eq!(parse_line(own_ts.as_bytes(), NOW, MAX).unwrap().ts, 7);
        let ae = line.replace("\"cz\"", "\"AE\"");
        assert!(parse_line(ae.as_bytes(), NOW, MAX).unwrap().rtl);
        let ae_ltr = ae.replace("\"channel\"", "\"rtl\":false,\"channel\"");
        assert!(!parse_line(ae_ltr.as_bytes(), NOW, MAX).unwrap().rtl);
    }

    #[test]
    fn errors_name_the_field() {
        let line = r#"{"event":"new_trending","region":"FI","video_id":"v","thumbnail":"https://x.fi/a.jpg","channel":"c"}"#;
        let error = parse_line(line.as_bytes(), NOW, MAX).unwrap_err();
        assert_eq!(error.to_string(), "field `title` is missing");
        assert!(parse_line(b"{nope", NOW, MAX)
            .unwrap_err()
            .to_string()
            .starts_with("payload is not JSON"));
        assert_eq!(
            parse_line(b"[1]", NOW, MAX).unwrap_err(),
            PayloadError::NotObject
        );
        assert_eq!(
            parse_line(b"{\"x\":\"\xff\"}", NOW, MAX).unwrap_err(),
            PayloadError::NotUtf8(6)
        );
        let bad_ts = line.replace("\"channel\"", "\"title\":\"t\",\"ts\":\"now\",\"channel\"");
        assert_eq!(
            parse_line(bad_ts.as_bytes(), NOW, MAX).unwrap_err().kind(),
            "wrong_type"
        );
    }

    #[test]
    fn size_limit_applies_to_line_and_canonical_json() {
        let line = r#"{"event":"new_trending","region":"FI","video_id":"v","title":"t","thumbnail":"https://x.fi/a.jpg","channel":"c"}"#;
        let exact = line.len();
        assert_eq!(
            parse_line(line.as_bytes(), NOW, exact - 1)
                .unwrap_err()
                .kind(),
            "too_large"
        );
        // The line fits, but adding rtl and ts makes the canonical JSON too large.
        assert_eq!(
            parse_line(line.as_bytes(), NOW, exact).unwrap_err().kind(),
            "too_large"
        );
    }

    #[test]
    fn flags_build_a_notification() {
        let notification = from_flags(&fields(), NOW).unwrap();
        assert_eq!(notification.region.as_str(), "AE");
        assert!(notification.rtl);
        assert_eq!(notification.ts, NOW);
        let overridden = from_flags(
            &FlagFields {
                rtl: Some(false),
                ts: Some(12),
                ..fields()
            },
            NOW,
        )
        .unwrap();
        assert!(!overridden.rtl);
        assert_eq!(overridden.ts, 12);
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let error = from_flags(
            &FlagFields {
                title: " ".into(),
                ..fields()
            },
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            format!("{:#}", anyhow::Error::from(error)),
            "invalid --title: field `title` is empty"
        );
        let error = from_flags(
            &FlagFields {
                region: "XX".into(),
                ..fields()
            },
            NOW,
        )
        .unwrap_err();
        assert_eq!(error.flag, "--region");
        let error = from_flags(
            &FlagFields {
                thumbnail: "javascript:alert(1)".into(),
                ..fields()
            },
            NOW,
        )
        .unwrap_err();
        assert_eq!(error.flag, "--thumbnail");
        let error = from_flags(
            &FlagFields {
                ts: Some(-1),
                ..fields()
            },
            NOW,
        )
        .unwrap_err();
        assert_eq!(error.flag, "--ts");
    }
}

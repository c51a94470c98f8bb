//! Property tests of the wire contract: whatever bytes arrive, parsing never panics and never
//! accepts something it cannot write back; whatever a valid notification holds, it survives an
//! encode → parse round trip unchanged, with UTF-8 written as UTF-8.

use notify_proto::{ChannelNames, Notification, Region, StreamId};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any assigned region.
fn region() -> impl Strategy<Value = Region> {
    let all: Vec<Region> = Region::all().collect();
    proptest::sample::select(all)
}

/// Text in any script, never blank (the contract rejects blank required fields).
fn text() -> impl Strategy<Value = String> {
    "[\\PC]{0,40}".prop_map(|body| format!("x{body}"))
}

fn notification() -> impl Strategy<Value = Notification> {
    (
        region(),
        text(),
        text(),
        "[a-z0-9./_-]{1,30}",
        text(),
        any::<bool>(),
        0i64..=i64::MAX,
        proptest::option::of((any::<u64>(), any::<u64>())),
        proptest::collection::vec(("[a-z]{1,8}", text()), 0..4),
    )
        .prop_map(
            |(region, video_id, title, path, channel, rtl, ts, id, extra)| {
                let mut notification = Notification::new(
                    region,
                    video_id,
                    title,
                    format!("https://img.example/{path}"),
                    channel,
                    ts,
                );
                notification.rtl = rtl;
                notification.id = id.map(|(ms, seq)| StreamId::new(ms, seq));
                let known = [
                    "event",
                    "region",
                    "video_id",
                    "title",
                    "thumbnail",
                    "channel",
                    "rtl",
                    "ts",
                    "id",
                ];
                let mut fields = Map::new();
                for (key, value) in extra {
                    if !known.contains(&key.as_str()) {
                        fields.insert(key, Value::String(value));
                    }
                }
                notification.extra = fields;
                notification
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(notification) = Notification::from_slice(&bytes, 1024) {
            // Anything accepted can be written back and parsed again to the same value.
            let again = Notification::from_slice(notification.to_json().as_bytes(), 1 << 20);
            prop_assert_eq!(again, Ok(notification));
        }
    }

    #[test]
    fn valid_notifications_round_trip(notification in notification()) {
        let json = notification.to_json();
        // No `\uXXXX` escape (an escaped backslash followed by `u` is fine).
        prop_assert!(!json.replace("\\\\", "").contains("\\u"), "escaped unicode in {}", json);
        let parsed = Notification::from_slice(json.as_bytes(), 1 << 20);
        prop_assert_eq!(parsed, Ok(notification.clone()));
        let channel = ChannelNames::default().channel(notification.region);
        prop_assert_eq!(ChannelNames::default().region_of(&channel), Some(notification.region));
    }

    #[test]
    fn regions_parse_case_insensitively_or_name_the_input(input in "\\PC{0,6}") {
        match Region::parse(&input) {
            Ok(region) => prop_assert_eq!(region.as_str(), input.to_ascii_uppercase()),
            Err(error) => {
                let quoted = format!("{:?}", input.chars().take(32).collect::<String>());
                let message = error.to_string();
                prop_assert!(message.contains(quoted.trim_end_matches('"')), "{}", message);
            }
        }
    }

    #[test]
    fn stream_ids_round_trip(ms in any::<u64>(), seq in any::<u64>()) {
        let id = StreamId::new(ms, seq);
        prop_assert_eq!(StreamId::parse(&id.to_string()), Ok(id));
    }
}

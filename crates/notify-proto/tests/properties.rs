//! Property tests of the wire contract: whatever bytes arrive, parsing never panics and never
//! accepts something it cannot write back; whatever a valid notification holds, it survives an
//! encode → parse round trip unchanged, with UTF-8 written as UTF-8.
//!
//! Random bytes are almost never a notification, so "accepted ⇒ round-trips" is also checked
//! on *mutated valid payloads* (bytes and fields changed, added, removed), and that test
//! asserts both branches ran a meaningful share of its cases.

use std::cell::Cell;

use notify_proto::{ChannelNames, Notification, Region, StreamId};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

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

/// The fields of the contract, as mutation targets.
const KNOWN_FIELDS: [&str; 9] = [
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

/// One change to an encoded valid notification.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite the byte at `at` (modulo the length).
    SetByte { at: usize, byte: u8 },
    /// Remove up to `len` bytes from `at`.
    Delete { at: usize, len: usize },
    /// Insert `bytes` at `at`.
    Insert { at: usize, bytes: Vec<u8> },
    /// Set a field (known or not) to any JSON value.
    SetField { field: String, value: Value },
    /// Remove a field.
    RemoveField { field: String },
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(KNOWN_FIELDS.to_vec()).prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        "[ \t]{0,3}".prop_map(Value::String),
        region().prop_map(|region| Value::String(region.as_str().to_owned())),
        "[0-9]{1,14}-[0-9]{1,3}".prop_map(Value::String),
        "https://[a-z]{1,8}\\.example/[a-z]{0,8}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..3).prop_map(|bytes| json!(bytes)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (field_name(), json_value()).prop_map(|(field, value)| Mutation::SetField { field, value }),
        (field_name(), json_value()).prop_map(|(field, value)| Mutation::SetField { field, value }),
        field_name().prop_map(|field| Mutation::RemoveField { field }),
    ]
}

/// `notification` encoded, then changed by `mutation`.
fn mutated(notification: &Notification, mutation: &Mutation) -> Vec<u8> {
    let json = notification.to_json();
    let mut bytes = json.clone().into_bytes();
    match mutation {
        Mutation::SetByte { at, byte } => {
            let at = at % bytes.len();
            bytes[at] = *byte;
        }
        Mutation::Delete { at, len } => {
            let at = at % bytes.len();
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Insert {
            at,
            bytes: inserted,
        } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::SetField { field, value } => {
            let mut object: Map<String, Value> = serde_json::from_str(&json).unwrap();
            object.insert(field.clone(), value.clone());
            bytes = Value::Object(object).to_string().into_bytes();
        }
        Mutation::RemoveField { field } => {
            let mut object: Map<String, Value> = serde_json::from_str(&json).unwrap();
            object.remove(field);
            bytes = Value::Object(object).to_string().into_bytes();
        }
    }
    bytes
}

/// Least share of mutated payloads that must be accepted, and rejected, for the test to have
/// exercised both branches.
const MIN_SHARE: f64 = 0.15;

#[test]
fn mutated_valid_payloads_are_rejected_or_round_trip() {
    let accepted = Cell::new(0u32);
    let rejected = Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    });
    runner
        .run(&(notification(), mutation()), |(notification, mutation)| {
            let payload = mutated(&notification, &mutation);
            match Notification::from_slice(&payload, 1 << 20) {
                Ok(parsed) => {
                    accepted.set(accepted.get() + 1);
                    let again = Notification::from_slice(parsed.to_json().as_bytes(), 1 << 20);
                    prop_assert_eq!(again, Ok(parsed));
                }
                Err(_) => rejected.set(rejected.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    let total = f64::from(accepted.get() + rejected.get());
    let accepted_share = f64::from(accepted.get()) / total;
    let rejected_share = f64::from(rejected.get()) / total;
    eprintln!(
        "mutated payloads: {} accepted, {} rejected",
        accepted.get(),
        rejected.get()
    );
    assert!(
        accepted_share >= MIN_SHARE,
        "only {accepted_share:.3} of mutated payloads were accepted: the round-trip branch barely ran"
    );
    assert!(
        rejected_share >= MIN_SHARE,
        "only {rejected_share:.3} of mutated payloads were rejected: the mutations are too gentle"
    );
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

//! The payload parser, on both paths a payload takes: a Redis channel message
//! (`Notification::from_channel_payload`) and an HTTP API body (`Notification::from_slice`).
//! Never panics; whatever is accepted re-serialises to canonical JSON that parses back to the
//! same value, on the channel of its own region.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notify_proto::{Notification, PayloadError, Region, DEFAULT_MAX_PAYLOAD_BYTES};

fuzz_target!(|data: &[u8]| {
    let limit = DEFAULT_MAX_PAYLOAD_BYTES;
    let parsed = Notification::from_slice(data, limit);
    for channel in ["AE", "FI"] {
        let channel = Region::parse(channel).unwrap();
        let on_channel = Notification::from_channel_payload(data, channel, limit);
        match (&parsed, &on_channel) {
            (Ok(notification), Ok(same)) => assert_eq!(notification, same),
            (Ok(notification), Err(PayloadError::RegionMismatch { payload, .. })) => {
                assert_eq!(*payload, notification.region)
            }
            (Err(error), Err(same)) => assert_eq!(error, same),
            (parsed, on_channel) => panic!("paths disagree: {parsed:?} vs {on_channel:?}"),
        }
    }
    let Ok(notification) = parsed else { return };
    let json = notification.to_json();
    let again =
        Notification::from_channel_payload(json.as_bytes(), notification.region, usize::MAX)
            .unwrap_or_else(|error| panic!("canonical JSON refused ({error}): {json}"));
    assert_eq!(again, notification, "{json}");
    assert_eq!(again.to_json(), json);
});

//! Control messages: what the gateway sends on its own behalf, distinguished from
//! notifications by their `event` field. Clients that only handle `new_trending` (the seed's
//! client) ignore them.

use serde::{Deserialize, Serialize};

use crate::region::Region;
use crate::stream_id::StreamId;

/// A message the gateway itself sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The client asked to resume from `since`, but the messages after it are no longer
    /// retained (too old, or history was lost). Live delivery follows; the client should treat
    /// its view as incomplete (e.g. refetch the trending list) and continue from `latest`.
    Resync {
        /// The region the client is connected to.
        region: Region,
        /// The id the client asked to resume from.
        since: StreamId,
        /// The newest id the gateway knows for the region, when it knows one.
        #[serde(skip_serializing_if = "Option::is_none")]
        latest: Option<StreamId>,
        /// Why, in words (`since is older than the retained history`).
        reason: String,
    },
}

impl ControlMessage {
    /// JSON encoding, UTF-8 unescaped.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_encoding() {
        let message = ControlMessage::Resync {
            region: Region::parse("AE").unwrap(),
            since: StreamId::new(1, 0),
            latest: Some(StreamId::new(9, 0)),
            reason: "since is older than the retained history".into(),
        };
        let json = message.to_json();
        assert!(
            json.starts_with(r#"{"event":"resync","region":"AE","since":"1-0""#),
            "{json}"
        );
        let back: ControlMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, message);
    }
}

//! The answer to a publish (`POST /api/publish`, and what `notify-publish` prints): the
//! notification's history id and how far it reached.
//!
//! "How far" depends on the broker, so it is named for what it counts:
//! - with Redis, `PUBLISH` answers with the number of subscribed *gateway nodes*
//!   (`gateway_nodes_reached`); three browsers on one node are one;
//! - with the embedded broker, the gateway counts the *browsers* (WebSocket clients) the
//!   message was queued for (`clients_reached`).
//!
//! The reply also keeps the older `subscribers` field (the same number, whatever it counts)
//! for clients written before the split; it is deprecated.

use serde_json::{json, Value};

/// How far a published notification reached, named for what was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Gateway nodes subscribed to the region's Redis channel (Redis's `PUBLISH` reply).
    GatewayNodes(u64),
    /// Browsers (WebSocket clients) of this gateway the message was queued for (embedded broker).
    Clients(u64),
    /// A count from a gateway that predates the split (`subscribers` only): its meaning is
    /// not known.
    Unnamed(u64),
}

impl Reach {
    /// The number, whatever it counts.
    pub fn count(self) -> u64 {
        match self {
            Reach::GatewayNodes(count) | Reach::Clients(count) | Reach::Unnamed(count) => count,
        }
    }

    /// The JSON field that carries it: `gateway_nodes_reached`, `clients_reached`, or
    /// `subscribers` for an unnamed count.
    pub fn field(self) -> &'static str {
        match self {
            Reach::GatewayNodes(_) => "gateway_nodes_reached",
            Reach::Clients(_) => "clients_reached",
            Reach::Unnamed(_) => "subscribers",
        }
    }

    /// For people: `1 gateway node`, `3 clients`, `0 subscribers`.
    pub fn describe(self) -> String {
        let count = self.count();
        let noun = match self {
            Reach::GatewayNodes(_) => "gateway node",
            Reach::Clients(_) => "client",
            Reach::Unnamed(_) => "subscriber",
        };
        format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
    }

    /// Reads the count from a publish reply object: the named field when there is one, else
    /// the deprecated `subscribers`. `None` when there is no non-negative integer count.
    pub fn from_reply(reply: &Value) -> Option<Reach> {
        let count = |field: &str| reply.get(field).and_then(Value::as_u64);
        count("gateway_nodes_reached")
            .map(Reach::GatewayNodes)
            .or_else(|| count("clients_reached").map(Reach::Clients))
            .or_else(|| count("subscribers").map(Reach::Unnamed))
    }

    /// Adds the count to a reply object: its named field, and the deprecated `subscribers`.
    pub fn write_into(self, reply: &mut serde_json::Map<String, Value>) {
        reply.insert(self.field().to_owned(), json!(self.count()));
        reply.insert("subscribers".to_owned(), json!(self.count()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_count_has_its_own_name() {
        assert_eq!(Reach::GatewayNodes(1).describe(), "1 gateway node");
        assert_eq!(Reach::GatewayNodes(2).describe(), "2 gateway nodes");
        assert_eq!(Reach::Clients(1).describe(), "1 client");
        assert_eq!(Reach::Clients(0).describe(), "0 clients");
        assert_eq!(Reach::Unnamed(3).describe(), "3 subscribers");
    }

    #[test]
    fn a_reply_round_trips_and_old_replies_still_read() {
        for reach in [Reach::GatewayNodes(2), Reach::Clients(5)] {
            let mut reply = serde_json::Map::new();
            reach.write_into(&mut reply);
            assert_eq!(reply["subscribers"], json!(reach.count()));
            assert_eq!(Reach::from_reply(&Value::Object(reply)), Some(reach));
        }
        assert_eq!(
            Reach::from_reply(&json!({"subscribers": 4})),
            Some(Reach::Unnamed(4))
        );
        assert_eq!(Reach::from_reply(&json!({"subscribers": -1})), None);
        assert_eq!(Reach::from_reply(&json!({"id": "1-0"})), None);
    }
}

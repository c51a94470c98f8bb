//! Plain messages: the seed's id-less `PUBLISH tvs:{REGION} {json}`, delivered live only.
//!
//! Each one carries `"pseq": n` (its index in the run's [`PlainLog`]) so a client can say which
//! it got without a byte-exact log. A client keeps its connection intervals and the `pseq`s it
//! received ([`PlainSeen`]); a plain message is *owed* to a client when it was published while
//! the client had been connected for a grace period and stayed connected for as long again,
//! and while no fault was in progress ([`FaultWindows`]): live-only messages are only
//! promised while the link is healthy.

use std::collections::HashSet;
use std::sync::Mutex;

use notify_proto::{Notification, Region};
use serde::Serialize;
use serde_json::json;

use crate::fleet::lock;

/// One plain message: its region (index in `--regions`) and when it was published.
#[derive(Debug, Clone, Copy)]
pub struct PlainMessage {
    /// Index of its region.
    pub region: usize,
    /// Publish time, [`crate::messages::now_ns`] clock (after Redis confirmed it).
    pub sent_ns: u64,
}

/// Every plain message of the run, in `pseq` order.
#[derive(Debug, Default)]
pub struct PlainLog {
    messages: Mutex<Vec<PlainMessage>>,
}

impl PlainLog {
    /// The payload of plain message `pseq` for `region`: a valid notification without `id`.
    pub fn payload(region: Region, pseq: u64, unix_ts: i64) -> String {
        let mut message = Notification::new(
            region,
            "benchplain",
            "notify-bench soak: plain PUBLISH",
            "https://i.ytimg.com/vi/benchplain/hqdefault.jpg",
            "notify-bench ✓",
            unix_ts,
        );
        message.extra.insert("pseq".into(), json!(pseq));
        message.to_json()
    }

    /// Records a published message; returns its `pseq`.
    pub fn push(&self, message: PlainMessage) -> u64 {
        let mut messages = lock(&self.messages);
        messages.push(message);
        messages.len() as u64 - 1
    }

    /// How many were published.
    pub fn len(&self) -> usize {
        lock(&self.messages).len()
    }

    /// Messages `from..` published before `until_ns`, with their `pseq`.
    pub fn published_before(&self, from: usize, until_ns: u64) -> Vec<(u64, PlainMessage)> {
        lock(&self.messages)
            .iter()
            .enumerate()
            .skip(from)
            .take_while(|(_, message)| message.sent_ns < until_ns)
            .map(|(pseq, message)| (pseq as u64, *message))
            .collect()
    }
}

/// What one client got of the plain messages, and when it was connected.
#[derive(Debug, Default)]
pub struct PlainSeen {
    /// Connection intervals, [`crate::messages::now_ns`] clock; `u64::MAX` while open.
    sessions: Vec<(u64, u64)>,
    /// `pseq`s received.
    received: HashSet<u64>,
    /// Frames of a `pseq` already received.
    pub duplicates: u64,
}

impl PlainSeen {
    /// A connection opened at `at_ns`.
    pub fn opened(&mut self, at_ns: u64) {
        self.sessions.push((at_ns, u64::MAX));
    }

    /// The open connection closed at `at_ns`.
    pub fn closed(&mut self, at_ns: u64) {
        if let Some(session) = self.sessions.last_mut() {
            session.1 = session.1.min(at_ns);
        }
    }

    /// A frame with `pseq` arrived.
    pub fn received(&mut self, pseq: u64) {
        if !self.received.insert(pseq) {
            self.duplicates += 1;
        }
    }

    /// The connection that owed a message sent at `sent_ns`: one open from `grace_ns` before
    /// it until `grace_ns` after.
    fn owed(&self, sent_ns: u64, grace_ns: u64) -> Option<(u64, u64)> {
        self.sessions.iter().copied().find(|&(opened, closed)| {
            opened.saturating_add(grace_ns) <= sent_ns && sent_ns.saturating_add(grace_ns) <= closed
        })
    }
}

/// Periods in which a fault was in progress, [`crate::messages::now_ns`] clock.
#[derive(Debug, Default)]
pub struct FaultWindows {
    windows: Mutex<Vec<(u64, u64)>>,
}

impl FaultWindows {
    /// A fault began at `at_ns`; open until [`end`](Self::end).
    pub fn begin(&self, at_ns: u64) {
        lock(&self.windows).push((at_ns, u64::MAX));
    }

    /// The open fault ended at `at_ns`.
    pub fn end(&self, at_ns: u64) {
        if let Some(window) = lock(&self.windows).last_mut() {
            window.1 = window.1.min(at_ns);
        }
    }

    /// Whether `at_ns` lies within `margin_ns` of a fault.
    pub fn covers(&self, at_ns: u64, margin_ns: u64) -> bool {
        lock(&self.windows).iter().any(|&(begun, ended)| {
            begun.saturating_sub(margin_ns) <= at_ns && at_ns <= ended.saturating_add(margin_ns)
        })
    }
}

/// One owed plain delivery that did not arrive.
#[derive(Debug, Clone, Copy)]
pub struct LostPlain {
    /// The message.
    pub pseq: u64,
    /// The client (index in the crowd).
    pub client: usize,
    /// When it was published, [`crate::messages::now_ns`] clock.
    pub sent_ns: u64,
    /// The client's connection that owed it (opened, closed; `u64::MAX` while open).
    pub session: (u64, u64),
}

impl std::fmt::Display for LostPlain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |at: u64| (at as i128 - self.sent_ns as i128) / 1_000_000;
        write!(
            f,
            "plain {} not received by client {}, whose connection was open from {} ms before it was published ",
            self.pseq,
            self.client,
            -ms(self.session.0)
        )?;
        if self.session.1 == u64::MAX {
            write!(f, "to the end")
        } else {
            write!(f, "to {} ms after", ms(self.session.1))
        }
    }
}

/// Plain messages owed and received, summed over clients.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PlainTotals {
    /// Plain messages published.
    pub published: u64,
    /// Of those, published while the link was healthy (no fault in progress).
    pub published_healthy: u64,
    /// Deliveries owed: healthy messages × clients of their region connected around them.
    pub owed: u64,
    /// Owed deliveries that arrived.
    pub delivered: u64,
    /// Owed deliveries that never arrived.
    pub lost: u64,
    /// Frames of a plain message a client already had.
    pub duplicates: u64,
}

impl PlainTotals {
    /// Judges `messages` against every client (`region`, what it saw); returns each owed
    /// delivery that did not arrive, for the log.
    pub fn judge<'a>(
        &mut self,
        messages: &[(u64, PlainMessage)],
        clients: impl Iterator<Item = (usize, &'a Mutex<PlainSeen>)> + Clone,
        windows: &FaultWindows,
        grace_ns: u64,
    ) -> Vec<LostPlain> {
        let mut lost = Vec::new();
        for &(pseq, message) in messages {
            self.published += 1;
            if windows.covers(message.sent_ns, grace_ns) {
                continue;
            }
            self.published_healthy += 1;
            for (client, (region, seen)) in clients.clone().enumerate() {
                if region != message.region {
                    continue;
                }
                let seen = lock(seen);
                if let Some(session) = seen.owed(message.sent_ns, grace_ns) {
                    self.owed += 1;
                    if seen.received.contains(&pseq) {
                        self.delivered += 1;
                    } else {
                        self.lost += 1;
                        lost.push(LostPlain {
                            pseq,
                            client,
                            sent_ns: message.sent_ns,
                            session,
                        });
                    }
                }
            }
        }
        lost
    }
}

/// The `pseq` of a plain message frame, without parsing the JSON.
pub fn seq_in(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"pseq\":";
    let at = frame.windows(KEY.len()).position(|window| window == KEY)?;
    let digits = &frame[at + KEY.len()..];
    let end = digits.iter().position(|byte| !byte.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Marker of the foreign-id messages a soak publishes (`"soak":"foreign"`).
pub const FOREIGN_MARK: &str = "foreign";

/// Whether `frame` is one of the soak's foreign-id messages.
pub fn is_foreign(frame: &[u8]) -> bool {
    const KEY: &[u8] = b"\"soak\":\"foreign\"";
    frame.windows(KEY.len()).any(|window| window == KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_frames_name_their_pseq() {
        let region = Region::parse("AE").unwrap();
        let payload = PlainLog::payload(region, 42, 1);
        let delivered = Notification::from_slice(payload.as_bytes(), usize::MAX)
            .unwrap()
            .to_json();
        assert_eq!(seq_in(delivered.as_bytes()), Some(42));
        assert_eq!(seq_in(br#"{"seq":3}"#), None);
        assert!(!is_foreign(delivered.as_bytes()));
        assert!(is_foreign(br#"{"x":1,"soak":"foreign"}"#));
    }

    #[test]
    fn owed_only_inside_a_connection_and_outside_faults() {
        let log = PlainLog::default();
        for sent_ns in [100, 1_000, 2_000, 5_000] {
            log.push(PlainMessage { region: 0, sent_ns });
        }
        let seen = Mutex::new(PlainSeen::default());
        {
            let mut seen = lock(&seen);
            seen.opened(500);
            seen.received(1);
            seen.received(1);
            seen.closed(4_000);
        }
        let windows = FaultWindows::default();
        windows.begin(1_900);
        windows.end(2_100);
        let mut totals = PlainTotals::default();
        let clients = [(0usize, &seen)];
        totals.judge(
            &log.published_before(0, u64::MAX),
            clients.iter().copied(),
            &windows,
            200,
        );
        // 100: before the connection; 1,000: owed and got; 2,000: in a fault; 5,000: after.
        assert_eq!((totals.published, totals.published_healthy), (4, 3));
        assert_eq!((totals.owed, totals.delivered, totals.lost), (1, 1, 0));
        assert_eq!(lock(&seen).duplicates, 1);
        // Not received: lost.
        let unseen = Mutex::new(PlainSeen::default());
        lock(&unseen).opened(0);
        let mut totals = PlainTotals::default();
        let lost = totals.judge(
            &log.published_before(0, 3_000),
            [(0usize, &unseen)].into_iter(),
            &windows,
            200,
        );
        // 100: within the grace after connecting; 1,000: owed, lost; 2,000: in a fault.
        assert_eq!((totals.owed, totals.lost), (1, 1));
        assert_eq!(
            lost.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["plain 1 not received by client 0, whose connection was open from 0 ms before it was published to the end"]
        );
        // A connection closed when its client stopped listening owes nothing after.
        let dropped = Mutex::new(PlainSeen::default());
        lock(&dropped).opened(0);
        lock(&dropped).closed(1_100);
        lock(&dropped).closed(3_000);
        let mut totals = PlainTotals::default();
        totals.judge(
            &log.published_before(0, 3_000),
            [(0usize, &dropped)].into_iter(),
            &windows,
            200,
        );
        assert_eq!((totals.owed, totals.lost), (0, 0));
    }
}

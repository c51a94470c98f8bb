//! The run's message log: for each region and sequence number, the exact frame the gateway must
//! deliver and when it was published.
//!
//! The publisher fills a slot *before* it sends the message, so a reader that gets a frame can
//! compare it byte for byte with the slot for the sequence number it expects next, and take the
//! publish time from the slot, without parsing JSON. The gateway sends the canonical
//! [`Notification::to_json`] encoding and this log stores the same encoding of the same
//! notification, so a correct delivery is an exact byte match.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use notify_proto::{Notification, Region};
use serde_json::Value;

/// Nanoseconds since the process-local epoch (set on first use; call once at start).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One published message.
#[derive(Debug)]
pub struct Slot {
    /// The canonical JSON text, exactly what a client must receive (give or take an `id`).
    pub frame: Box<str>,
    /// Publish time, [`now_ns`] clock.
    pub sent_ns: u64,
    /// Byte offset in `frame` where a history `id` would be inserted: right after `ts`, before
    /// the extra fields.
    id_at: usize,
}

impl Slot {
    /// Whether `received` is this message: the same bytes, or the same bytes with an
    /// `"id":"..."` member inserted after `ts` (a gateway that records history, e.g. for
    /// `POST /api/publish`, stamps each message with its stream id). No JSON parsing.
    #[inline]
    pub fn matches(&self, received: &[u8]) -> bool {
        self.id_in(received).is_some()
    }

    /// Like [`matches`](Self::matches), and says which `id` the frame carried: `None` when it
    /// is not this message, `Some(None)` for the bare frame, `Some(Some(id))` for the frame
    /// with `"id":"<id>"` inserted after `ts`.
    #[inline]
    pub fn id_in<'a>(&self, received: &'a [u8]) -> Option<Option<&'a str>> {
        let frame = self.frame.as_bytes();
        if received == frame {
            return Some(None);
        }
        const ID: &[u8] = b",\"id\":\"";
        let (head, tail) = frame.split_at(self.id_at);
        let rest = received.strip_prefix(head)?.strip_prefix(ID)?;
        let end = rest.iter().position(|byte| *byte == b'"')?;
        let id = &rest[..end];
        if end == 0 || &rest[end + 1..] != tail || id.contains(&b'\\') {
            return None;
        }
        std::str::from_utf8(id).ok().map(Some)
    }
}

/// The messages of one region, indexed by sequence number.
#[derive(Debug)]
pub struct RegionLog {
    /// The region.
    pub region: Region,
    slots: Box<[OnceLock<Slot>]>,
    published: AtomicU64,
}

impl RegionLog {
    /// The slot for `seq`, when that message has been prepared.
    #[inline]
    pub fn slot(&self, seq: u64) -> Option<&Slot> {
        self.slots.get(usize::try_from(seq).ok()?)?.get()
    }

    /// How many messages (sequence numbers `0..n`) the publisher has confirmed sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Records that `0..count` have been sent.
    pub fn set_published(&self, count: u64) {
        self.published.fetch_max(count, Ordering::AcqRel);
    }

    /// The first sequence number published at or after `time_ns` among `0..published`
    /// (publish times rise with the sequence number).
    pub fn first_sent_at_or_after(&self, time_ns: u64) -> u64 {
        let published = self.published();
        let (mut low, mut high) = (0u64, published);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.slot(middle) {
                Some(slot) if slot.sent_ns < time_ns => low = middle + 1,
                _ => high = middle,
            }
        }
        low
    }
}

/// Every region's messages for one run.
#[derive(Debug)]
pub struct MessageLog {
    /// Per region, in `--regions` order.
    pub regions: Vec<RegionLog>,
    unix_ts: i64,
}

impl MessageLog {
    /// Room for `per_region` messages in each region.
    pub fn new(regions: &[Region], per_region: u64) -> Self {
        let unix_ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs() as i64)
            .unwrap_or(0);
        MessageLog {
            regions: regions
                .iter()
                .map(|region| RegionLog {
                    region: *region,
                    slots: (0..per_region).map(|_| OnceLock::new()).collect(),
                    published: AtomicU64::new(0),
                })
                .collect(),
            unix_ts,
        }
    }

    /// Index of `region` in this log.
    pub fn index_of(&self, region: Region) -> Option<usize> {
        self.regions.iter().position(|log| log.region == region)
    }

    /// Builds message `seq` of region `index`, stamps it with the current time, stores it and
    /// returns the payload to publish. `None` when the log is full or the slot already used.
    pub fn prepare(&self, index: usize, seq: u64) -> Option<String> {
        self.prepare_message(index, seq).map(|(_, frame)| frame)
    }

    /// Like [`prepare`](Self::prepare), also returning the notification itself (for
    /// publishers that encode it themselves, such as the history script's command).
    pub fn prepare_message(&self, index: usize, seq: u64) -> Option<(Notification, String)> {
        let log = self.regions.get(index)?;
        let cell = log.slots.get(usize::try_from(seq).ok()?)?;
        let sent_ns = now_ns();
        let message = notification(log.region, seq, sent_ns, self.unix_ts);
        let frame = message.to_json();
        let id_at = frame.find(",\"seq\":")?;
        cell.set(Slot {
            frame: frame.clone().into_boxed_str(),
            sent_ns,
            id_at,
        })
        .ok()?;
        Some((message, frame))
    }
}

/// The notification for `seq`: a seed-shaped `new_trending` with a title in the region's own
/// script (so UTF-8 handling is exercised) and `seq`/`sent_ns` as extra fields.
pub fn notification(region: Region, seq: u64, sent_ns: u64, unix_ts: i64) -> Notification {
    let title = match region.as_str() {
        "AE" => format!("فيديو رائج رقم {seq} من دبي"),
        "CZ" => format!("Příliš žluťoučký kůň č. {seq}"),
        "DK" => format!("Rødgrød med fløde nr. {seq}"),
        "FI" => format!("Hyvää huomenta, video {seq}"),
        "CH" => format!("Grüezi mitenand – Video {seq}"),
        "BE" => format!("Vidéo tendance n° {seq}"),
        other => format!("Trending video #{seq} — {other}"),
    };
    let video_id = format!("bench{seq:06}");
    let mut message = Notification::new(
        region,
        video_id.clone(),
        title,
        format!("https://i.ytimg.com/vi/{video_id}/hqdefault.jpg"),
        "notify-bench ✓",
        unix_ts,
    );
    message.extra.insert("seq".into(), Value::from(seq));
    message.extra.insert("sent_ns".into(), Value::from(sent_ns));
    message
}

#[cfg(test)]
impl MessageLog {
    /// Regions AE and FI, 6 messages each, all published: the fixture of the verification
    /// tests.
    pub fn published_for_tests() -> Self {
        let regions = [Region::parse("AE").unwrap(), Region::parse("FI").unwrap()];
        let log = MessageLog::new(&regions, 10);
        for seq in 0..6 {
            log.prepare(0, seq).unwrap();
            log.prepare(1, seq).unwrap();
        }
        log.regions[0].set_published(6);
        log.regions[1].set_published(6);
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_proto::DEFAULT_MAX_PAYLOAD_BYTES;

    #[test]
    fn frames_are_canonical_and_round_trip() {
        for region in notify_proto::SEED_REGIONS {
            let text = notification(region, 7, 123_456, 1_764_290_000).to_json();
            let parsed =
                Notification::from_slice(text.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
            assert_eq!(parsed.to_json(), text, "{region}");
            assert_eq!(parsed.extra["seq"], 7);
            assert_eq!(parsed.rtl, region.is_rtl());
        }
    }

    #[test]
    fn a_history_id_is_tolerated_and_nothing_else() {
        let ae = Region::parse("AE").unwrap();
        let log = MessageLog::new(&[ae], 1);
        let frame = log.prepare(0, 0).unwrap();
        let slot = log.regions[0].slot(0).unwrap();
        assert!(slot.matches(frame.as_bytes()));
        let mut with_id = Notification::from_slice(frame.as_bytes(), 1 << 16).unwrap();
        with_id.id = Some("1795833245949-0".parse().unwrap());
        assert!(slot.matches(with_id.to_json().as_bytes()));
        let with_id_text = with_id.to_json();
        assert_eq!(
            slot.id_in(with_id_text.as_bytes()),
            Some(Some("1795833245949-0"))
        );
        assert_eq!(slot.id_in(frame.as_bytes()), Some(None));
        with_id.video_id.push('x');
        assert!(!slot.matches(with_id.to_json().as_bytes()));
        assert!(!slot.matches(frame.replace(",\"seq\"", ",\"id\":\"\",\"seq\"").as_bytes()));
        assert!(!slot.matches(&frame.as_bytes()[1..]));
    }

    #[test]
    fn slots_and_publish_times() {
        let ae = Region::parse("AE").unwrap();
        let log = MessageLog::new(&[ae], 4);
        for seq in 0..3 {
            assert!(log.prepare(0, seq).is_some());
        }
        assert!(log.prepare(0, 1).is_none(), "a slot is written once");
        assert!(log.prepare(0, 4).is_none(), "past capacity");
        log.regions[0].set_published(3);
        let times: Vec<u64> = (0..3)
            .map(|seq| log.regions[0].slot(seq).unwrap().sent_ns)
            .collect();
        assert_eq!(log.regions[0].first_sent_at_or_after(0), 0);
        assert_eq!(log.regions[0].first_sent_at_or_after(times[1]), 1);
        assert_eq!(log.regions[0].first_sent_at_or_after(times[2] + 1), 3);
    }
}

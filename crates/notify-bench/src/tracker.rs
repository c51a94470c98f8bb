//! Exactly-once verification for clients that resume: one [`Tracker`] per client follows its
//! region's sequence across all its connections and says, at the end, which messages arrived
//! exactly once, in order, with a rising id, and what went wrong with the others.
//!
//! Each frame is compared byte for byte with the logged message it should be (the next
//! `seq`), and its `id` must be greater than the last one. Anything else is classified: a later
//! `seq` is a gap (the skipped messages are lost unless they arrive later, out of order), an
//! earlier one already received is a duplicate, a `resync` control message is counted.

use std::collections::HashSet;
use std::ops::Range;

use notify_proto::{ControlMessage, Notification, StreamId};
use serde_json::Value;

use crate::messages::MessageLog;
use crate::report::Verdict;
/// One client's view of its region's sequence, across all its connections.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The next `seq` expected.
    pub next_seq: u64,
    /// The id of the last message accepted (the `since` of the next resume).
    pub last_id: StreamId,
    /// Messages received the first time in order, with a rising id.
    clean: u64,
    /// Distinct messages received.
    delivered: u64,
    /// Frames of a message already received.
    duplicates: u64,
    /// Messages that came more than once.
    duplicated: HashSet<u64>,
    /// Times the sequence jumped ahead.
    gaps: u64,
    /// Skipped sequence numbers not received since.
    missing: Vec<Range<u64>>,
    /// Messages that came after a later one, or without a rising id.
    out_of_order: u64,
    /// Messages whose first receipt was not clean.
    unclean: HashSet<u64>,
    /// `resync` control messages.
    resyncs: u64,
    /// Messages skipped right after a `resync`: the gateway said they were gone.
    resynced: u64,
    /// A `resync` came and no message since: the next jump ahead is what it announced.
    resync_pending: bool,
    /// The newest `latest` of a `resync`: a browser resumes from it (see
    /// [`resume_since`](Self::resume_since)); the order of ids is still checked against the
    /// messages actually received.
    resync_latest: StreamId,
    /// Frames that were not exactly a published message.
    pub corrupt: u64,
    /// Messages of another region.
    wrong_region: u64,
    /// Valid notifications this run did not publish.
    unexpected: u64,
    /// Messages that came without an `id`.
    missing_id: u64,
}

impl Tracker {
    /// A client whose history starts after `since`.
    pub fn new(since: StreamId) -> Self {
        Tracker {
            last_id: since,
            ..Tracker::default()
        }
    }

    /// The `since` of the next connection: the last id received, or a `resync`'s newer
    /// `latest` (as the browser client does).
    pub fn resume_since(&self) -> StreamId {
        self.last_id.max(self.resync_latest)
    }

    /// Distinct messages, repeated frames and `resync`s so far.
    pub fn progress(&self) -> (u64, u64, u64) {
        (self.delivered, self.duplicates, self.resyncs)
    }

    /// Takes one text frame of region `region`.
    #[inline]
    pub fn on_frame(&mut self, log: &MessageLog, region: usize, bytes: &[u8]) {
        if let Some(slot) = log.regions[region].slot(self.next_seq) {
            if let Some(Some(text)) = slot.id_in(bytes) {
                if let Ok(id) = StreamId::parse(text) {
                    if id > self.last_id {
                        self.accept(self.next_seq, id);
                        return;
                    }
                }
            }
        }
        self.classify(log, region, bytes);
    }

    fn accept(&mut self, seq: u64, id: StreamId) {
        self.next_seq = seq + 1;
        self.last_id = id;
        self.clean += 1;
        self.delivered += 1;
        self.resync_pending = false;
    }

    /// The slow path: everything that is not the next message with a rising id.
    #[cold]
    fn classify(&mut self, log: &MessageLog, region: usize, bytes: &[u8]) {
        if bytes.starts_with(br#"{"event":"resync""#) {
            self.resyncs += 1;
            self.resync_pending = true;
            // As a browser would: resume from the newest id the gateway knows.
            if let Ok(ControlMessage::Resync {
                latest: Some(latest),
                ..
            }) = serde_json::from_slice::<ControlMessage>(bytes)
            {
                self.resync_latest = self.resync_latest.max(latest);
            }
            return;
        }
        let Ok(message) = Notification::from_slice(bytes, usize::MAX) else {
            self.corrupt += 1;
            return;
        };
        let own = &log.regions[region];
        if message.region != own.region {
            if log.index_of(message.region).is_some() {
                self.wrong_region += 1;
            } else {
                self.unexpected += 1;
            }
            return;
        }
        let Some(seq) = message.extra.get("seq").and_then(Value::as_u64) else {
            self.unexpected += 1;
            return;
        };
        let Some(slot) = own.slot(seq) else {
            self.unexpected += 1;
            return;
        };
        let Some(id_text) = slot.id_in(bytes) else {
            self.corrupt += 1;
            return;
        };
        let id = id_text.and_then(|text| StreamId::parse(text).ok());
        if id.is_none() {
            self.missing_id += 1;
        }
        let expected = self.next_seq;
        if seq >= expected {
            if seq > expected {
                if std::mem::take(&mut self.resync_pending) {
                    self.resynced += seq - expected;
                } else {
                    self.gaps += 1;
                    self.missing.push(expected..seq);
                }
            }
            match id {
                Some(id) if id > self.last_id => self.accept(seq, id),
                _ => {
                    if id.is_some() {
                        self.out_of_order += 1;
                    }
                    self.unclean.insert(seq);
                    self.delivered += 1;
                    self.next_seq = seq + 1;
                    if let Some(id) = id {
                        self.last_id = self.last_id.max(id);
                    }
                }
            }
            return;
        }
        match self.missing.iter().position(|range| range.contains(&seq)) {
            Some(position) => {
                // A skipped message arriving late.
                let range = self.missing.swap_remove(position);
                if range.start < seq {
                    self.missing.push(range.start..seq);
                }
                if seq + 1 < range.end {
                    self.missing.push(seq + 1..range.end);
                }
                self.out_of_order += 1;
                self.unclean.insert(seq);
                self.delivered += 1;
            }
            None => {
                self.duplicates += 1;
                self.duplicated.insert(seq);
            }
        }
    }

    /// Judges against the region's `published` messages (sequence numbers `0..published`).
    pub fn verdict(&self, published: u64) -> Verdict {
        let skipped: u64 = self
            .missing
            .iter()
            .map(|range| range.end.min(published).saturating_sub(range.start))
            .sum();
        let tail = published.saturating_sub(self.next_seq);
        let duplicated_clean = self
            .duplicated
            .iter()
            .filter(|seq| !self.unclean.contains(seq))
            .count() as u64;
        Verdict {
            expected: published,
            delivered: self.delivered,
            exactly_once: Some(self.clean.saturating_sub(duplicated_clean)),
            duplicates: self.duplicates,
            gaps: self.gaps,
            lost: skipped + tail,
            out_of_order: self.out_of_order,
            resyncs: self.resyncs,
            resynced: self.resynced,
            corrupt: self.corrupt,
            wrong_region: self.wrong_region,
            unexpected: self.unexpected,
            missing_id: self.missing_id,
            ..Verdict::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_proto::Region;

    const AE: usize = 0;

    /// A log of 6 AE messages; frame `seq` carries id `100+seq`.
    fn log() -> MessageLog {
        MessageLog::published_for_tests()
    }

    fn frame_with_id(log: &MessageLog, region: usize, seq: u64, id: u64) -> Vec<u8> {
        let frame = &log.regions[region].slot(seq).unwrap().frame;
        let mut message = Notification::from_slice(frame.as_bytes(), usize::MAX).unwrap();
        message.id = Some(StreamId::new(id, 0));
        message.to_json().into_bytes()
    }

    fn frame(log: &MessageLog, seq: u64) -> Vec<u8> {
        frame_with_id(log, AE, seq, 100 + seq)
    }

    #[test]
    fn clean_resumed_delivery_is_exactly_once() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        for seq in 0..6 {
            tracker.on_frame(&log, AE, &frame(&log, seq));
        }
        assert_eq!(tracker.last_id, StreamId::new(105, 0));
        let verdict = tracker.verdict(6);
        assert_eq!(
            verdict,
            Verdict {
                expected: 6,
                delivered: 6,
                exactly_once: Some(6),
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn duplicates_gaps_late_arrivals_and_resyncs_are_counted() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        tracker.on_frame(&log, AE, &frame(&log, 0));
        tracker.on_frame(&log, AE, &frame(&log, 0)); // duplicate
        tracker.on_frame(&log, AE, &frame(&log, 3)); // gap: 1 and 2 skipped
        tracker.on_frame(&log, AE, &frame(&log, 1)); // late
        tracker.on_frame(&log, AE, &frame_with_id(&log, 1, 4, 104)); // wrong region
        tracker.on_frame(&log, AE, b"{nope"); // corrupt
        let resync = ControlMessage::Resync {
            region: Region::parse("AE").unwrap(),
            since: StreamId::new(103, 0),
            latest: Some(StreamId::new(200, 0)),
            reason: "test".into(),
        };
        tracker.on_frame(&log, AE, resync.to_json().as_bytes());
        // The next connection resumes from the resync's latest, as a browser would.
        assert_eq!(tracker.resume_since(), StreamId::new(200, 0));
        // Ids are still ordered against what was received: 104 follows 103.
        tracker.on_frame(&log, AE, &frame(&log, 4));
        // 50 is not above 104: out of order.
        tracker.on_frame(&log, AE, &frame_with_id(&log, AE, 5, 50));
        let verdict = tracker.verdict(6);
        assert_eq!(verdict.expected, 6);
        // 0, 3, 1, 4, 5 received; 2 lost.
        assert_eq!(verdict.delivered, 5);
        assert_eq!(verdict.lost, 1);
        assert_eq!(verdict.gaps, 1);
        assert_eq!(verdict.duplicates, 1);
        assert_eq!(verdict.out_of_order, 2);
        assert_eq!(verdict.resyncs, 1);
        assert_eq!(verdict.wrong_region, 1);
        assert_eq!(verdict.corrupt, 1);
        // 0 came twice, 1 late, 5 with a stale id: 3 and 4 were exactly once.
        assert_eq!(verdict.exactly_once, Some(2));
    }

    #[test]
    fn messages_skipped_after_a_resync_are_resynced_not_lost() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        tracker.on_frame(&log, AE, &frame(&log, 0));
        let resync = ControlMessage::Resync {
            region: Region::parse("AE").unwrap(),
            since: StreamId::new(100, 0),
            latest: Some(StreamId::new(102, 0)),
            reason: "test".into(),
        };
        tracker.on_frame(&log, AE, resync.to_json().as_bytes());
        tracker.on_frame(&log, AE, &frame(&log, 3)); // 1 and 2 announced as gone
        tracker.on_frame(&log, AE, &frame(&log, 5)); // 4 skipped without a resync: lost
        let verdict = tracker.verdict(6);
        assert_eq!((verdict.resyncs, verdict.resynced), (1, 2));
        assert_eq!((verdict.gaps, verdict.lost), (1, 1));
        assert_eq!(verdict.exactly_once, Some(3));
    }

    #[test]
    fn ids_must_rise_and_be_present() {
        let log = log();
        let mut tracker = Tracker::new(StreamId::new(99, 0));
        tracker.on_frame(&log, AE, &frame_with_id(&log, AE, 0, 50));
        let bare = log.regions[AE].slot(1).unwrap().frame.as_bytes().to_vec();
        tracker.on_frame(&log, AE, &bare);
        tracker.on_frame(&log, AE, &frame(&log, 2));
        let verdict = tracker.verdict(3);
        assert_eq!(verdict.delivered, 3);
        assert_eq!(verdict.out_of_order, 1);
        assert_eq!(verdict.missing_id, 1);
        assert_eq!(verdict.exactly_once, Some(1));
    }
}

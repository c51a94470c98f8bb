//! The one inbound path: raw channel payload or stream entry → validated notification → one
//! encoded frame → the region's history and the hub.
//!
//! # Which ids are trusted
//! Only ids issued by the region's Redis stream move the high-water mark and enter the history
//! ([`deliver_stream_entry`](Ingest::deliver_stream_entry)). A live (pub/sub) message without
//! an id is delivered at once; one with an id waits in the region's [`PendingIds`] until the
//! stream settles it: our own publish (the stream delivers it, the live copy is dropped) or
//! foreign (delivered without its id, counted in `notify_bad_payloads_total{reason="foreign_id"}`).
//! When more wait than the set holds, the oldest copy is dropped unjudged and counted in
//! `notify_live_copies_dropped_total`: the stream still delivers it if it was ours.
//!
//! Stream entries are delivered at most once and in id order per region: an id at or below the
//! newest one already delivered is dropped and counted in `notify_duplicates_dropped_total`.
//! Recording in history and publishing to the hub happen under the region's lock, so history
//! order and delivery order are the same order.
//!
//! Every broker feeds payloads through [`Ingest`], so validation, counting and logging of bad
//! input happen in exactly one place. A bad payload is counted in
//! `notify_bad_payloads_total{reason}`, logged at most once per second (with how many were
//! suppressed), and skipped; it never reaches a client and never stops the flow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use notify_proto::{ChannelNames, ControlMessage, Notification, PayloadError, Region, StreamId};

use crate::history::{Lookup, RegionHistory};
use crate::hub::Hub;
use crate::log_limit::RateLimitedLog;
use crate::pending::{Offered, PendingIds};

/// Why an inbound payload was skipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// The channel is not `{prefix}{REGION}` for a served region.
    #[error("message on channel {0:?}, which is not a served region's channel")]
    UnknownChannel(String),
    /// The payload broke the wire contract.
    #[error("bad payload on {channel}: {source}")]
    BadPayload {
        /// Channel it arrived on.
        channel: String,
        /// What was wrong.
        source: PayloadError,
    },
}

/// One region's inbound state, under one lock.
#[derive(Debug)]
struct RegionState<T> {
    /// Recent stream-issued messages and the high-water mark.
    history: RegionHistory<T>,
    /// Id-carrying live messages waiting for the stream to settle them.
    pending: PendingIds<Notification>,
    /// How many times the region's ids started over: a replay's ids are comparable with
    /// live ids of the same epoch only.
    epoch: u64,
}

/// Where a replay starts from, read in one critical section with the region's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOrigin {
    /// The newest id delivered to the hub when the replay began: every later message is in
    /// the ring of a client subscribed before, so a replay need not read past it.
    pub newest: Option<StreamId>,
    /// The region's history epoch (see [`Envelope::starts_epoch`](crate::hub::Envelope)).
    pub epoch: u64,
}

/// Validates payloads, encodes them once and publishes them to the hub.
#[derive(Debug)]
pub struct Ingest<T> {
    hub: Arc<Hub<T>>,
    channels: ChannelNames,
    max_payload_bytes: usize,
    bad_payload_log: RateLimitedLog,
    foreign_id_log: RateLimitedLog,
    /// Live copies dropped from a full pending set are logged at most once a second.
    pending_overflow_log: RateLimitedLog,
    regions: HashMap<Region, Mutex<RegionState<T>>>,
    /// `notify_messages_received_total{region}`, resolved once instead of per message.
    received: HashMap<Region, metrics::Counter>,
}

impl<T> Ingest<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// An ingest path into `hub` for payloads on `channels`, refusing payloads over
    /// `max_payload_bytes` and keeping the last `history_capacity` messages of each region.
    pub fn new(
        hub: Arc<Hub<T>>,
        channels: ChannelNames,
        max_payload_bytes: usize,
        history_capacity: usize,
    ) -> Self {
        let regions = hub
            .regions()
            .into_iter()
            .map(|region| {
                let state = RegionState {
                    history: RegionHistory::new(history_capacity),
                    pending: PendingIds::default(),
                    epoch: 0,
                };
                (region, Mutex::new(state))
            })
            .collect();
        let received = hub
            .regions()
            .into_iter()
            .map(|region| {
                let counter = metrics::counter!(
                    "notify_messages_received_total",
                    "region" => region.as_str().to_owned()
                );
                (region, counter)
            })
            .collect();
        Ingest {
            hub,
            channels,
            max_payload_bytes,
            bad_payload_log: RateLimitedLog::default(),
            foreign_id_log: RateLimitedLog::default(),
            pending_overflow_log: RateLimitedLog::default(),
            regions,
            received,
        }
    }

    /// The hub it feeds.
    pub fn hub(&self) -> &Arc<Hub<T>> {
        &self.hub
    }

    /// The channel names it accepts.
    pub fn channels(&self) -> &ChannelNames {
        &self.channels
    }

    /// The payload size limit.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Handles one pub/sub message. Returns how many clients it was queued for; a bad payload
    /// is counted, logged (rate-limited) and returned as an error, and nothing is delivered.
    pub fn channel_message(&self, channel: &str, payload: &[u8]) -> Result<usize, IngestError> {
        let result =
            self.channels
                .region_of(channel)
                .filter(|region| self.hub.serves(*region))
                .ok_or_else(|| IngestError::UnknownChannel(channel.to_owned()))
                .and_then(|region| {
                    Notification::from_channel_payload(payload, region, self.max_payload_bytes)
                        .map_err(|source| IngestError::BadPayload {
                            channel: channel.to_owned(),
                            source,
                        })
                });
        match result {
            Ok(notification) => Ok(self.live_message(notification)),
            Err(error) => {
                let reason = match &error {
                    IngestError::UnknownChannel(_) => "unknown_channel",
                    IngestError::BadPayload { source, .. } => source.kind(),
                };
                metrics::counter!("notify_bad_payloads_total", "reason" => reason).increment(1);
                if let Some(suppressed) = self.bad_payload_log.allow() {
                    tracing::warn!(%error, suppressed, "skipped bad payload");
                }
                Err(error)
            }
        }
    }

    /// A valid live message: delivered at once without an id; held for the stream to settle
    /// with one. Returns how many clients it was queued for now.
    fn live_message(&self, notification: Notification) -> usize {
        let region = notification.region;
        let Some(mut state) = self.region(region) else {
            return 0;
        };
        let Some(id) = notification.id else {
            return self.publish_live(&notification);
        };
        match state.pending.offer(id, notification, Instant::now()) {
            Offered::Duplicate | Offered::Held { evicted: None } => 0,
            Offered::Held {
                evicted: Some(unsettled),
            } => {
                // Not judged foreign: the stream has not been read past it yet, and in a burst
                // larger than the set it is almost always ours, which the stream delivers with
                // its id. Delivering this copy as well would send it twice.
                metrics::counter!("notify_live_copies_dropped_total").increment(1);
                if let Some(suppressed) = self.pending_overflow_log.allow() {
                    tracing::warn!(
                        %region,
                        id = ?unsettled.id,
                        held = crate::pending::MAX_PENDING,
                        suppressed,
                        "more id-carrying live messages than the pending set holds: the oldest is left to the stream"
                    );
                }
                0
            }
        }
    }

    /// Queues a message without an id for the region's clients: no history, no mark.
    fn publish_live(&self, notification: &Notification) -> usize {
        self.count_received(notification.region, None);
        self.hub
            .publish(notification.region, None, T::from(notification.to_json()))
    }

    /// Delivers a live message whose id no stream issued, without that id; counts it.
    fn deliver_foreign(&self, mut notification: Notification) -> usize {
        let foreign_id = notification.id.take();
        metrics::counter!("notify_bad_payloads_total", "reason" => "foreign_id").increment(1);
        if let Some(suppressed) = self.foreign_id_log.allow() {
            tracing::warn!(
                region = %notification.region,
                id = ?foreign_id,
                suppressed,
                "a live message carried an id its region's stream never issued; delivered without it"
            );
        }
        self.publish_live(&notification)
    }

    /// Gives a notification the region's next id (embedded broker), then delivers it. Returns
    /// the id and how many clients it was queued for.
    pub fn deliver_new(&self, notification: &mut Notification) -> (Option<StreamId>, usize) {
        let Some(mut state) = self.region(notification.region) else {
            return (None, 0);
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let id = state.history.next_id(now_ms);
        notification.id = Some(id);
        let frame = T::from(notification.to_json());
        self.count_received(notification.region, Some(id));
        state.history.record(id, frame.clone());
        let queued = self.hub.publish(notification.region, Some(id), frame);
        (Some(id), queued)
    }

    /// Delivers an encoded stream entry with the id its stream issued, unless that id was
    /// delivered already; settles the held live messages it proves ours or foreign. Returns
    /// whether it was delivered.
    pub fn deliver_stream_entry(&self, region: Region, id: StreamId, frame: T) -> bool {
        let Some(mut state) = self.region(region) else {
            return false;
        };
        for foreign in state.pending.stream_delivered(id, Instant::now()) {
            self.deliver_foreign(foreign);
        }
        if state.history.newest().is_some_and(|newest| id <= newest) {
            metrics::counter!("notify_duplicates_dropped_total").increment(1);
            return false;
        }
        self.count_received(region, Some(id));
        state.history.record(id, frame.clone());
        self.hub.publish(region, Some(id), frame);
        true
    }

    /// Resolves `region`'s held live messages that arrived before `read_started` as foreign:
    /// a complete read of its stream, started after they arrived, did not deliver them.
    pub fn expire_pending(&self, region: Region, read_started: Instant) -> usize {
        let mut expired = 0;
        if let Some(mut state) = self.region(region) {
            for foreign in state.pending.expire(read_started) {
                self.deliver_foreign(foreign);
                expired += 1;
            }
        }
        expired
    }

    /// The stream skipped entries after the newest id delivered (a broker outage longer than
    /// the retention): memory must not answer resumes from before the gap.
    pub fn cut_history(&self, region: Region) {
        if let Some(mut state) = self.region(region) {
            state.history.cut();
        }
    }

    /// The region's stream started over with smaller ids (Redis lost its data): forget the
    /// mark and the history, begin a new epoch and tell the region's clients with
    /// `announcement` (a `resync`), all at once, so a resume is either wholly before the new
    /// epoch (and its client gets the announcement) or wholly in it.
    pub fn reset_region(&self, region: Region, announcement: &ControlMessage) -> usize {
        let Some(mut state) = self.region(region) else {
            return 0;
        };
        state.history.reset();
        state.pending.reset();
        state.epoch += 1;
        self.hub
            .publish_epoch_start(region, state.epoch, T::from(announcement.to_json()))
    }

    /// Counts a notification received for `region` (and logs it at debug level).
    fn count_received(&self, region: Region, id: Option<StreamId>) {
        tracing::debug!(%region, id = ?id, "notification received");
        if let Some(counter) = self.received.get(&region) {
            counter.increment(1);
        }
    }

    /// Sends a control message to every client of `region` (e.g. a resync after an outage
    /// longer than the retained history).
    pub fn broadcast_control(&self, region: Region, message: &ControlMessage) -> usize {
        let _state = self.region(region);
        self.hub.publish(region, None, T::from(message.to_json()))
    }

    /// Newest id delivered for `region`.
    pub fn last_id(&self, region: Region) -> Option<StreamId> {
        self.region(region)?.history.newest()
    }

    /// The first `limit` messages after `since` from memory, when memory covers `since` and
    /// the region is still in history epoch `epoch` (a replay begun before a reset must not
    /// mix the two epochs' ids).
    pub fn replay_from_memory(
        &self,
        region: Region,
        since: StreamId,
        limit: usize,
        epoch: u64,
    ) -> Lookup<T> {
        match self.region(region) {
            Some(state) if state.epoch == epoch => state.history.after(since, limit),
            _ => Lookup::NotCovered,
        }
    }

    /// The newest id and the epoch of `region`, for a replay beginning now.
    pub fn replay_origin(&self, region: Region) -> ReplayOrigin {
        match self.region(region) {
            Some(state) => ReplayOrigin {
                newest: state.history.newest(),
                epoch: state.epoch,
            },
            None => ReplayOrigin {
                newest: None,
                epoch: 0,
            },
        }
    }

    fn region(&self, region: Region) -> Option<MutexGuard<'_, RegionState<T>>> {
        let state = self.regions.get(&region)?;
        Some(
            state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Ingest<String>, crate::hub::Subscription<String>) {
        let ae = Region::parse("AE").unwrap();
        let hub = Arc::new(Hub::new([ae], 16));
        let subscription = hub.subscribe(ae).unwrap();
        (
            Ingest::new(hub, ChannelNames::default(), 1024, 8),
            subscription,
        )
    }

    #[test]
    fn good_payloads_flow_and_bad_ones_are_skipped() {
        let (ingest, mut subscription) = setup();
        let good = r#"{"event":"new_trending","region":"AE","video_id":"v","title":"مرحبا","thumbnail":"https://x/y.jpg","channel":"c","rtl":true,"ts":1}"#;
        assert!(matches!(
            ingest.channel_message("tvs:AE", b"{not json"),
            Err(IngestError::BadPayload { .. })
        ));
        assert!(matches!(
            ingest.channel_message("tvs:US", good.as_bytes()),
            Err(IngestError::UnknownChannel(_))
        ));
        let mismatched = good.replace("\"AE\"", "\"FI\"");
        assert!(ingest
            .channel_message("tvs:AE", mismatched.as_bytes())
            .is_err());
        assert!(ingest.channel_message("tvs:AE", &vec![b'x'; 2048]).is_err());
        assert_eq!(ingest.channel_message("tvs:AE", good.as_bytes()), Ok(1));
        assert_eq!(subscription.try_recv().unwrap().unwrap().frame, good);
        assert!(subscription.try_recv().unwrap().is_none());
    }

    #[test]
    fn only_stream_ids_move_the_mark_and_feed_history() {
        let (ingest, mut subscription) = setup();
        let ae = Region::parse("AE").unwrap();
        let with_id = |id: &str| {
            format!(
                r#"{{"id":"{id}","event":"new_trending","region":"AE","video_id":"v{id}","title":"t","thumbnail":"https://x/y.jpg","channel":"c","ts":1}}"#
            )
        };
        // Live copies with ids wait for the stream.
        assert_eq!(
            ingest.channel_message("tvs:AE", with_id("5-0").as_bytes()),
            Ok(0)
        );
        assert_eq!(
            ingest.channel_message("tvs:AE", with_id("99-0").as_bytes()),
            Ok(0)
        );
        assert_eq!(ingest.last_id(ae), None);
        assert!(subscription.try_recv().unwrap().is_none());
        // The stream issues 5-0 and 6-0; 5-0 is delivered once, from the stream.
        assert!(ingest.deliver_stream_entry(ae, StreamId::new(5, 0), "five".to_owned()));
        assert!(!ingest.deliver_stream_entry(ae, StreamId::new(5, 0), "again".to_owned()));
        assert!(ingest.deliver_stream_entry(ae, StreamId::new(6, 0), "six".to_owned()));
        assert_eq!(ingest.last_id(ae), Some(StreamId::new(6, 0)));
        let first = subscription.try_recv().unwrap().unwrap();
        assert_eq!(
            (first.id, first.frame.as_str()),
            (Some(StreamId::new(5, 0)), "five")
        );
        assert_eq!(subscription.try_recv().unwrap().unwrap().frame, "six");
        // A small id below the mark waits too; a stream read started after it (and after
        // 99-0) settles both as foreign: delivered without their ids.
        assert_eq!(
            ingest.channel_message("tvs:AE", with_id("4-0").as_bytes()),
            Ok(0)
        );
        assert!(subscription.try_recv().unwrap().is_none());
        assert_eq!(ingest.expire_pending(ae, Instant::now()), 2);
        for video in ["v4-0", "v99-0"] {
            let foreign = subscription.try_recv().unwrap().unwrap();
            assert_eq!(foreign.id, None);
            assert!(!foreign.frame.contains("\"id\""), "{}", foreign.frame);
            assert!(foreign.frame.contains(video), "{}", foreign.frame);
        }
        assert!(subscription.try_recv().unwrap().is_none());
        match ingest.replay_from_memory(ae, StreamId::new(5, 0), 16, 0) {
            Lookup::Entries(entries) => {
                assert_eq!(entries, vec![(StreamId::new(6, 0), "six".to_owned())])
            }
            Lookup::NotCovered => panic!("memory covers 5-0"),
        }
        // A cut: memory no longer answers from before it.
        ingest.cut_history(ae);
        assert_eq!(
            ingest.replay_from_memory(ae, StreamId::new(5, 0), 16, 0),
            Lookup::NotCovered
        );
        // A reset: a new epoch, announced to the clients; smaller ids are delivered again.
        assert_eq!(ingest.replay_origin(ae).epoch, 0);
        let announcement = ControlMessage::Resync {
            region: ae,
            since: StreamId::new(6, 0),
            latest: None,
            reason: "reset".into(),
        };
        assert_eq!(ingest.reset_region(ae, &announcement), 1);
        let announced = subscription.try_recv().unwrap().unwrap();
        assert_eq!(announced.starts_epoch, Some(1));
        assert_eq!(ingest.replay_origin(ae).epoch, 1);
        ingest.deliver_stream_entry(ae, StreamId::new(1, 0), "one".to_owned());
        subscription.try_recv().unwrap();
        assert_eq!(
            ingest.replay_from_memory(ae, StreamId::new(1, 0), 16, 0),
            Lookup::NotCovered,
            "a replay of the old epoch is not answered from the new one"
        );
        assert!(ingest.deliver_stream_entry(ae, StreamId::new(2, 0), "two".to_owned()));
        assert_eq!(ingest.last_id(ae), Some(StreamId::new(2, 0)));
        assert_eq!(subscription.try_recv().unwrap().unwrap().starts_epoch, None);
    }

    #[test]
    fn deliver_new_assigns_increasing_ids() {
        let (ingest, _subscription) = setup();
        let ae = Region::parse("AE").unwrap();
        let mut first = Notification::new(ae, "v", "t", "https://x/y", "c", 1);
        let mut second = first.clone();
        let (a, _) = ingest.deliver_new(&mut first);
        let (b, _) = ingest.deliver_new(&mut second);
        assert!(a.unwrap() < b.unwrap());
        assert_eq!(second.id, b);
    }
}

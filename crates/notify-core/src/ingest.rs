//! The one inbound path: raw channel payload → validated notification → one encoded frame →
//! the hub.
//!
//! Every broker feeds payloads through [`Ingest`], so validation, counting and logging of bad
//! input happen in exactly one place. A bad payload is counted in
//! `notify_bad_payloads_total{reason}`, logged at most once per second (with how many were
//! suppressed), and skipped; it never reaches a client and never stops the flow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use notify_proto::{ChannelNames, Notification, PayloadError, Region};

use crate::hub::Hub;

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

/// Validates payloads, encodes them once and publishes them to the hub.
#[derive(Debug)]
pub struct Ingest<T> {
    hub: Arc<Hub<T>>,
    channels: ChannelNames,
    max_payload_bytes: usize,
    bad_payload_log: RateLimitedLog,
}

impl<T> Ingest<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// An ingest path into `hub` for payloads on `channels`, refusing payloads over
    /// `max_payload_bytes`.
    pub fn new(hub: Arc<Hub<T>>, channels: ChannelNames, max_payload_bytes: usize) -> Self {
        Ingest {
            hub,
            channels,
            max_payload_bytes,
            bad_payload_log: RateLimitedLog::default(),
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
            Ok(notification) => Ok(self.deliver(&notification)),
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

    /// Encodes a valid notification once and queues it for its region's clients. Returns how
    /// many clients that is.
    pub fn deliver(&self, notification: &Notification) -> usize {
        let region: Region = notification.region;
        metrics::counter!("notify_messages_received_total", "region" => region.as_str().to_owned())
            .increment(1);
        self.hub.publish(region, T::from(notification.to_json()))
    }
}

/// Lets one log line through per second and counts the ones it held back.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    /// `Some(suppressed since the last allowed line)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if now != last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
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
            Ingest::new(hub, ChannelNames::default(), 1024),
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
    fn log_limiter_lets_one_line_a_second() {
        let log = RateLimitedLog::default();
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
    }
}

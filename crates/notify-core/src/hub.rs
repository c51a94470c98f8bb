//! The fan-out hub: region → connected clients.
//!
//! Each served region has one bounded ring ([`tokio::sync::broadcast`]) of [`Envelope`]s. A
//! publish stores the envelope once and wakes that region's subscribers; each subscriber clones
//! the envelope out of the ring — a reference-count increment, since the frame type is a shared
//! byte buffer. Nothing is encoded or copied per client.
//!
//! # Slow-consumer policy
//! The ring's length is the per-client queue limit. A subscriber that falls further behind
//! than that gets [`SubscriptionError::Lagged`] on its next receive and is expected to be
//! disconnected; the publisher never waits for anyone, so one stalled socket cannot delay
//! delivery to any other client, in its region or elsewhere. Regions have separate rings and
//! separate locks: no contention across regions.

use std::collections::HashMap;
use std::time::Instant;

use notify_proto::{Region, StreamId};
use tokio::sync::broadcast;

/// One message as queued for clients: the encoded frame plus when the gateway received it
/// (for the fan-out latency histogram).
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// The message's history id; `None` for messages published without one (plain `PUBLISH`)
    /// and for control messages.
    pub id: Option<StreamId>,
    /// The encoded frame, shared by every client of the region.
    pub frame: T,
    /// When ingest handed it to the hub.
    pub received_at: Instant,
}

/// The hub was asked about a region it does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The region is valid but this gateway is not configured to serve it.
    #[error("region {0} is not served by this gateway")]
    NotServed(Region),
}

/// Why a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The client fell more than the queue limit behind; `skipped` messages are gone for it.
    #[error("slow consumer: fell {skipped} messages behind the queue limit")]
    Lagged {
        /// Messages the client missed.
        skipped: u64,
    },
    /// The hub was dropped (shutdown).
    #[error("hub closed")]
    Closed,
}

/// Region → subscribers, for a fixed set of served regions.
#[derive(Debug)]
pub struct Hub<T> {
    regions: HashMap<Region, broadcast::Sender<Envelope<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Hub<T> {
    /// A hub serving `regions`, letting each client fall at most `queue_limit` messages behind
    /// (rounded up to a power of two by the ring).
    pub fn new(regions: impl IntoIterator<Item = Region>, queue_limit: usize) -> Self {
        let queue_limit = queue_limit.max(1);
        let regions = regions
            .into_iter()
            .map(|region| (region, broadcast::channel(queue_limit).0))
            .collect();
        Hub { regions }
    }

    /// Whether this hub serves `region`.
    pub fn serves(&self, region: Region) -> bool {
        self.regions.contains_key(&region)
    }

    /// The served regions, sorted.
    pub fn regions(&self) -> Vec<Region> {
        let mut regions: Vec<Region> = self.regions.keys().copied().collect();
        regions.sort();
        regions
    }

    /// Subscribes a new client to `region`; it receives messages published from now on.
    pub fn subscribe(&self, region: Region) -> Result<Subscription<T>, HubError> {
        let sender = self
            .regions
            .get(&region)
            .ok_or(HubError::NotServed(region))?;
        Ok(Subscription {
            receiver: sender.subscribe(),
        })
    }

    /// Queues `frame` for every current subscriber of `region`; returns how many that is.
    /// Never waits. A region not served is a no-op returning 0.
    pub fn publish(&self, region: Region, id: Option<StreamId>, frame: T) -> usize {
        let Some(sender) = self.regions.get(&region) else {
            return 0;
        };
        let envelope = Envelope {
            id,
            frame,
            received_at: Instant::now(),
        };
        sender.send(envelope).unwrap_or(0)
    }

    /// Current subscribers of `region`.
    pub fn subscribers(&self, region: Region) -> usize {
        self.regions
            .get(&region)
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

/// One client's view of its region's ring.
#[derive(Debug)]
pub struct Subscription<T> {
    receiver: broadcast::Receiver<Envelope<T>>,
}

impl<T: Clone> Subscription<T> {
    /// The next message, waiting for one.
    pub async fn recv(&mut self) -> Result<Envelope<T>, SubscriptionError> {
        self.receiver.recv().await.map_err(|error| match error {
            broadcast::error::RecvError::Lagged(skipped) => SubscriptionError::Lagged { skipped },
            broadcast::error::RecvError::Closed => SubscriptionError::Closed,
        })
    }

    /// The next message if one is already queued, for batching several into one write.
    pub fn try_recv(&mut self) -> Result<Option<Envelope<T>>, SubscriptionError> {
        match self.receiver.try_recv() {
            Ok(envelope) => Ok(Some(envelope)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(skipped)) => {
                Err(SubscriptionError::Lagged { skipped })
            }
            Err(broadcast::error::TryRecvError::Closed) => Err(SubscriptionError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(code: &str) -> Region {
        Region::parse(code).unwrap()
    }

    #[tokio::test]
    async fn delivers_only_to_the_region() {
        let hub: Hub<String> = Hub::new([region("AE"), region("FI")], 8);
        let mut ae = hub.subscribe(region("AE")).unwrap();
        let mut fi = hub.subscribe(region("FI")).unwrap();
        assert_eq!(hub.publish(region("AE"), None, "hello".into()), 1);
        assert_eq!(ae.recv().await.unwrap().frame, "hello");
        assert_eq!(fi.try_recv().unwrap().map(|e| e.frame), None);
        assert_eq!(hub.subscribers(region("FI")), 1);
        assert_eq!(
            hub.subscribe(region("US")).unwrap_err(),
            HubError::NotServed(region("US"))
        );
        assert_eq!(hub.publish(region("US"), None, "x".into()), 0);
    }

    #[tokio::test]
    async fn a_stalled_subscriber_lags_out_without_blocking_others() {
        let hub: Hub<bytes::Bytes> = Hub::new([region("AE")], 4);
        let mut stalled = hub.subscribe(region("AE")).unwrap();
        let mut live = hub.subscribe(region("AE")).unwrap();
        for n in 0..10u8 {
            assert_eq!(
                hub.publish(region("AE"), None, bytes::Bytes::from(vec![n])),
                2
            );
            assert_eq!(live.recv().await.unwrap().frame[0], n);
        }
        assert_eq!(
            stalled.recv().await.unwrap_err(),
            SubscriptionError::Lagged { skipped: 6 }
        );
    }

    #[tokio::test]
    async fn frames_are_shared_not_copied() {
        let hub: Hub<bytes::Bytes> = Hub::new([region("AE")], 4);
        let mut a = hub.subscribe(region("AE")).unwrap();
        let mut b = hub.subscribe(region("AE")).unwrap();
        hub.publish(region("AE"), None, bytes::Bytes::from(vec![7u8; 1024]));
        let first = a.recv().await.unwrap().frame;
        let second = b.recv().await.unwrap().frame;
        assert_eq!(first.as_ptr(), second.as_ptr());
    }
}

//! The fan-out hub: region → connected clients.
//!
//! Each served region has one bounded ring ([`tokio::sync::broadcast`]) of [`Envelope`]s. A
//! publish stores the envelope once and wakes that region's subscribers; each subscriber clones
//! the envelope out of the ring — a reference-count increment, since the frame type is a shared
//! byte buffer. Nothing is encoded or copied per client.
//!
//! # Slow-consumer policy
//! A subscriber that falls more than the queue limit behind gets [`SubscriptionError::Lagged`]
//! on its next receive and is expected to be disconnected. The limit is exact: the ring rounds
//! its length up to a power of two, so each envelope carries its region's sequence number and
//! the subscriber compares it with the region's count of published messages itself; the publisher never waits for anyone, so one stalled socket cannot delay
//! delivery to any other client, in its region or elsewhere. Regions have separate rings and
//! separate locks: no contention across regions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Set only on the `resync` that says the region's ids started over (Redis lost its
    /// data): the number of the history epoch that begins with it. A client resumed in an
    /// earlier epoch must stop comparing ids with what its replay sent, since the new epoch's
    /// ids may be smaller. `None` for every other message.
    pub starts_epoch: Option<u64>,
    /// Its position in the region's sequence of published messages (1, 2, …).
    sequence: u64,
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
    regions: HashMap<Region, RegionRing<T>>,
}

/// One region's ring and the count that makes the queue limit exact.
#[derive(Debug)]
struct RegionRing<T> {
    /// Taken around each send, so sequence numbers follow the ring's order.
    sender: Mutex<broadcast::Sender<Envelope<T>>>,
    /// Shared with every subscription of the region.
    progress: Arc<Progress>,
}

/// How far a region's publishing has gone, for subscribers to measure their lag against.
#[derive(Debug)]
struct Progress {
    /// Messages published so far (the last envelope's sequence number).
    published: AtomicU64,
    /// Most messages a subscriber may have outstanding.
    queue_limit: u64,
}

impl<T: Clone + Send + Sync + 'static> Hub<T> {
    /// A hub serving `regions`, letting each client fall at most `queue_limit` messages behind
    /// (exactly; at least 1).
    pub fn new(regions: impl IntoIterator<Item = Region>, queue_limit: usize) -> Self {
        let queue_limit = queue_limit.max(1);
        let regions = regions
            .into_iter()
            .map(|region| {
                let ring = RegionRing {
                    sender: Mutex::new(broadcast::channel(queue_limit).0),
                    progress: Arc::new(Progress {
                        published: AtomicU64::new(0),
                        queue_limit: u64::try_from(queue_limit).unwrap_or(u64::MAX),
                    }),
                };
                (region, ring)
            })
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
        let ring = self
            .regions
            .get(&region)
            .ok_or(HubError::NotServed(region))?;
        let sender = ring.sender.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Subscription {
            receiver: sender.subscribe(),
            progress: Arc::clone(&ring.progress),
        })
    }

    /// Queues `frame` for every current subscriber of `region`; returns how many that is.
    /// Never waits. A region not served is a no-op returning 0.
    pub fn publish(&self, region: Region, id: Option<StreamId>, frame: T) -> usize {
        self.send(region, id, frame, None)
    }

    /// Queues the control message announcing that `region`'s history epoch `epoch` begins
    /// (see [`Envelope::starts_epoch`]); returns how many subscribers it was queued for.
    pub fn publish_epoch_start(&self, region: Region, epoch: u64, frame: T) -> usize {
        self.send(region, None, frame, Some(epoch))
    }

    fn send(
        &self,
        region: Region,
        id: Option<StreamId>,
        frame: T,
        starts_epoch: Option<u64>,
    ) -> usize {
        let Some(ring) = self.regions.get(&region) else {
            return 0;
        };
        let sender = ring.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let sequence = ring.progress.published.load(Ordering::Relaxed) + 1;
        let envelope = Envelope {
            id,
            frame,
            received_at: Instant::now(),
            starts_epoch,
            sequence,
        };
        let receivers = sender.send(envelope).unwrap_or(0);
        ring.progress.published.store(sequence, Ordering::Release);
        receivers
    }

    /// Current subscribers of `region`.
    pub fn subscribers(&self, region: Region) -> usize {
        self.regions.get(&region).map_or(0, |ring| {
            ring.sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .receiver_count()
        })
    }
}

/// One client's view of its region's ring.
#[derive(Debug)]
pub struct Subscription<T> {
    receiver: broadcast::Receiver<Envelope<T>>,
    progress: Arc<Progress>,
}

impl<T: Clone> Subscription<T> {
    /// The next message, waiting for one.
    pub async fn recv(&mut self) -> Result<Envelope<T>, SubscriptionError> {
        match self.receiver.recv().await {
            Ok(envelope) => self.within_limit(envelope),
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                Err(SubscriptionError::Lagged { skipped })
            }
            Err(broadcast::error::RecvError::Closed) => Err(SubscriptionError::Closed),
        }
    }

    /// `envelope`, unless the subscriber has more than the queue limit outstanding counting
    /// it (then the messages past the limit are what it lost).
    fn within_limit(&self, envelope: Envelope<T>) -> Result<Envelope<T>, SubscriptionError> {
        let published = self.progress.published.load(Ordering::Acquire);
        let outstanding = published.saturating_sub(envelope.sequence) + 1;
        if outstanding > self.progress.queue_limit {
            return Err(SubscriptionError::Lagged {
                skipped: outstanding - self.progress.queue_limit,
            });
        }
        Ok(envelope)
    }

    /// The next message if one is already queued, for batching several into one write.
    pub fn try_recv(&mut self) -> Result<Option<Envelope<T>>, SubscriptionError> {
        match self.receiver.try_recv() {
            Ok(envelope) => self.within_limit(envelope).map(Some),
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
    async fn the_queue_limit_is_exact_not_rounded_to_the_ring() {
        // The ring behind a limit of 5 holds 8.
        let hub: Hub<u8> = Hub::new([region("AE")], 5);
        let mut within = hub.subscribe(region("AE")).unwrap();
        for n in 0..5 {
            hub.publish(region("AE"), None, n);
        }
        for n in 0..5 {
            assert_eq!(within.try_recv().unwrap().map(|e| e.frame), Some(n));
        }
        let mut past = hub.subscribe(region("AE")).unwrap();
        for n in 0..6 {
            hub.publish(region("AE"), None, n);
        }
        assert_eq!(
            past.recv().await.unwrap_err(),
            SubscriptionError::Lagged { skipped: 1 }
        );
        let mut batching = hub.subscribe(region("AE")).unwrap();
        for n in 0..7 {
            hub.publish(region("AE"), None, n);
        }
        assert_eq!(
            batching.try_recv().unwrap_err(),
            SubscriptionError::Lagged { skipped: 2 }
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

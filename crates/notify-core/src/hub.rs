//! The fan-out hub: region → connected clients.
//!
//! Each served region has one bounded ring ([`tokio::sync::broadcast`]) of [`Envelope`]s. A
//! publish stores the envelope once and wakes that region's subscribers; each subscriber clones
//! the envelope out of the ring — a reference-count increment, since the frame type is a shared
//! byte buffer. Nothing is encoded or copied per client.
//!
//! # Outlets: delivery on the publisher's thread
//! A client can also be an [`Outlet`] of a region ([`Hub::attach`]): each message of the
//! region is handed to it as it is published, under the region's lock, so in the region's
//! order, before the message enters the ring. An outlet must not wait — a WebSocket writes
//! the frame into its socket when the socket's buffer takes it at once, which saves a task
//! wake-up per delivery at steady rates. The frame's wire form is built once per message for
//! all of the region's outlets ([`Published::wire`]). An outlet that cannot take a message
//! itself (its socket is full, its client is behind, a burst is better batched) takes a ring
//! subscription that starts with that very message ([`Published::subscribe`]) and catches up
//! from the ring like any subscriber, under the same exact limit; once it has drained the
//! ring it gives the subscription back ([`Attachment::release`], under the region's lock, so no
//! message falls between the two). The same outlet may be attached to several regions; each
//! region hands it its messages in that region's order.
//!
//! A publish to many active outlets (at least [`MIN_OUTLETS_PER_THREAD`] per thread) splits
//! them between the publishing thread and scoped helper threads, one per core by default
//! ([`Hub::with_fanout_threads`]), and waits for all of them under the region's lock: the
//! writes to one region's sockets use every core, and each outlet still sees the region's
//! messages in order, each before it enters the ring.
//!
//! # Slow-consumer policy
//! A subscriber that falls more than the queue limit behind gets [`SubscriptionError::Lagged`]
//! on its next receive and is expected to be disconnected. The limit is exact: the ring rounds
//! its length up to a power of two, so each envelope carries its region's sequence number and
//! the subscriber compares it with the region's count of published messages itself; the publisher never waits for anyone, so one stalled socket cannot delay
//! delivery to any other client, in its region or elsewhere. Regions have separate rings and
//! separate locks: no contention across regions. An outlet that falls behind does so in the
//! ring, under the same limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use notify_proto::{Region, StreamId};
use slab::Slab;
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

impl<T> Envelope<T> {
    /// Its position in the region's sequence of published messages (1, 2, …).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

/// A client served on the publisher's thread (see the module docs).
pub trait Outlet<T>: Send + Sync {
    /// Takes one message of a region it is attached to, in that region's order, or leaves it
    /// to a ring subscription ([`Published::subscribe`], or one it already holds). Called
    /// under the region's lock: must not wait.
    fn deliver(&self, published: &Published<'_, T>) -> Handled;
}

/// What an [`Outlet`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// It took the message itself and takes the next one too.
    Took,
    /// It took the message (or began it), and leaves the next ones to its ring subscription
    /// until it is released ([`Attachment::release`]).
    TookThenRing,
    /// It left this message and the next ones to its ring subscription until it is released.
    Ring,
}

impl Handled {
    fn took(self) -> bool {
        matches!(self, Handled::Took | Handled::TookThenRing)
    }
}

/// One published message as an [`Outlet`] receives it.
#[derive(Debug)]
pub struct Published<'a, T> {
    envelope: &'a Envelope<T>,
    wire: &'a OnceLock<Bytes>,
    ring: &'a broadcast::Sender<Envelope<T>>,
    progress: &'a Arc<Progress>,
    since_previous: Option<std::time::Duration>,
}

impl<'a, T> Published<'a, T> {
    /// The message.
    pub fn envelope(&self) -> &'a Envelope<T> {
        self.envelope
    }

    /// The message's wire form: `encode` runs for the first outlet that asks, every other
    /// outlet of this publish shares the result.
    pub fn wire(&self, encode: impl FnOnce(&T) -> Bytes) -> &'a Bytes {
        self.wire.get_or_init(|| encode(&self.envelope.frame))
    }

    /// A ring subscription whose first message is this one, for an outlet that stops taking
    /// messages itself.
    pub fn subscribe(&self) -> Subscription<T> {
        Subscription {
            receiver: self.ring.subscribe(),
            progress: Arc::clone(self.progress),
        }
    }

    /// How long the hub had been idle when this message came: since its previous publish, in
    /// any region, finished (`None` for the first). A short gap means messages are waiting —
    /// a burst, or a publisher kept busy by its own fan-out — which connections' tasks batch
    /// better than one write per message.
    pub fn since_previous(&self) -> Option<std::time::Duration> {
        self.since_previous
    }
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
    /// When the hub was made: the origin of `idle_since`.
    epoch: Instant,
    /// When the last publish (any region's) finished, in nanoseconds after `epoch`; 0 before
    /// the first.
    idle_since: AtomicU64,
    /// Most threads one publish writes its outlets from ([`Hub::with_fanout_threads`]).
    fanout_threads: usize,
}

/// One region's ring and outlets, and the count that makes the queue limit exact.
#[derive(Debug)]
struct RegionRing<T> {
    /// Taken around each send, so sequence numbers follow the ring's order and every outlet
    /// sees the region's messages in that order.
    sender: Mutex<RegionSender<T>>,
    /// Shared with every subscription of the region.
    progress: Arc<Progress>,
}

/// What a publish reaches: the ring's receivers and the attached outlets.
struct RegionSender<T> {
    ring: broadcast::Sender<Envelope<T>>,
    /// Attached outlets by key (a slot is a pointer pair: 16 bytes per connection).
    outlets: Slab<Arc<dyn Outlet<T>>>,
    /// Which outlets are parked: reading their ring subscription, so a publish skips them
    /// without touching them, until they are released.
    parked: KeySet,
    /// Outlets taking messages themselves (not parked): when none, a publish does not visit
    /// the outlets at all — in a burst every outlet reads the ring, and a message costs the
    /// ring's send alone, as without outlets.
    active: usize,
}

/// A set of outlet keys: one bit each.
#[derive(Debug, Default)]
struct KeySet {
    words: Vec<u64>,
}

impl KeySet {
    fn contains(&self, key: usize) -> bool {
        self.words
            .get(key / 64)
            .is_some_and(|word| word & (1 << (key % 64)) != 0)
    }

    /// Adds `key`; false if it was there.
    fn insert(&mut self, key: usize) -> bool {
        if self.words.len() <= key / 64 {
            self.words.resize(key / 64 + 1, 0);
        }
        let word = &mut self.words[key / 64];
        let bit = 1 << (key % 64);
        let added = *word & bit == 0;
        *word |= bit;
        added
    }

    /// Removes `key`; false if it was not there.
    fn remove(&mut self, key: usize) -> bool {
        match self.words.get_mut(key / 64) {
            Some(word) => {
                let bit = 1 << (key % 64);
                let removed = *word & bit != 0;
                *word &= !bit;
                removed
            }
            None => false,
        }
    }
}

impl<T> std::fmt::Debug for RegionSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionSender")
            .field("receivers", &self.ring.receiver_count())
            .field("outlets", &self.outlets.len())
            .finish()
    }
}

impl<T> RegionSender<T> {
    fn subscribers(&self) -> usize {
        self.ring.receiver_count() + self.outlets.len()
    }
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
                    sender: Mutex::new(RegionSender {
                        ring: broadcast::channel(queue_limit).0,
                        outlets: Slab::new(),
                        parked: KeySet::default(),
                        active: 0,
                    }),
                    progress: Arc::new(Progress {
                        published: AtomicU64::new(0),
                        queue_limit: u64::try_from(queue_limit).unwrap_or(u64::MAX),
                    }),
                };
                (region, ring)
            })
            .collect();
        Hub {
            regions,
            epoch: Instant::now(),
            idle_since: AtomicU64::new(0),
            fanout_threads: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_FANOUT_THREADS),
        }
    }

    /// Writes a publish's outlets from at most `threads` threads (at least 1): one per core
    /// by default (at most [`MAX_FANOUT_THREADS`]), each given at least
    /// [`MIN_OUTLETS_PER_THREAD`] outlets.
    pub fn with_fanout_threads(mut self, threads: usize) -> Self {
        self.fanout_threads = threads.max(1);
        self
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
            receiver: sender.ring.subscribe(),
            progress: Arc::clone(&ring.progress),
        })
    }

    /// Attaches `outlet` to `region`: every message published there from now on is handed to
    /// it ([`Outlet::deliver`]) until the returned [`Attachment`] is dropped. One outlet may be
    /// attached to several regions.
    pub fn attach(
        self: &Arc<Self>,
        region: Region,
        outlet: Arc<dyn Outlet<T>>,
    ) -> Result<Attachment<T>, HubError> {
        let ring = self
            .regions
            .get(&region)
            .ok_or(HubError::NotServed(region))?;
        let mut sender = ring.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = sender.outlets.vacant_entry();
        let key = u32::try_from(entry.key()).expect("fewer than 2^32 outlets in one region");
        entry.insert(outlet);
        sender.active += 1;
        Ok(Attachment {
            hub: Arc::clone(self),
            region,
            key,
        })
    }

    /// Gives `subscription` (to `region`) back if it has nothing left to receive, the region
    /// has published nothing for `quiet` (a burst is better read from the ring, in batches),
    /// and `released`, run under the region's lock, agrees — an outlet that caught up through
    /// the ring takes messages itself again from the next publish on, with none falling in
    /// between. Never waits: while a publish holds the region's lock the subscription is kept.
    /// Returns the subscription when it is kept.
    fn release(
        &self,
        region: Region,
        key: u32,
        subscription: Subscription<T>,
        quiet: std::time::Duration,
        released: impl FnOnce() -> bool,
    ) -> Result<(), Subscription<T>> {
        let Some(ring) = self.regions.get(&region) else {
            return Err(subscription);
        };
        let Ok(mut sender) = ring.sender.try_lock() else {
            return Err(subscription);
        };
        let in_burst = self.idle_for().is_some_and(|idle| idle < quiet);
        if in_burst || !subscription.receiver.is_empty() || !released() {
            return Err(subscription);
        }
        let sender = &mut *sender;
        if sender.outlets.contains(key as usize) && sender.parked.remove(key as usize) {
            sender.active += 1;
        }
        drop(subscription);
        Ok(())
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
        let now = Instant::now();
        let since_previous = self.idle_for();
        let envelope = Envelope {
            id,
            frame,
            received_at: now,
            starts_epoch,
            sequence,
        };
        // Outlets first: one that stops taking messages itself subscribes to the ring before
        // this message enters it.
        let mut taken = 0;
        let mut sender = sender;
        if sender.active > 0 {
            let wire = OnceLock::new();
            let RegionSender {
                ring: ring_sender,
                outlets,
                parked,
                active,
            } = &mut *sender;
            let published = Published {
                envelope: &envelope,
                wire: &wire,
                ring: ring_sender,
                progress: &ring.progress,
                since_previous,
            };
            let threads = self
                .fanout_threads
                .min(*active / MIN_OUTLETS_PER_THREAD)
                .max(1);
            let (took, to_park) = if threads > 1 {
                deliver_in_parallel(outlets, parked, &published, threads)
            } else {
                deliver_to(
                    outlets.iter().filter(|(key, _)| !parked.contains(*key)),
                    &published,
                )
            };
            taken = took;
            for key in to_park {
                parked.insert(key);
                *active -= 1;
            }
        }
        let receivers = if sender.ring.receiver_count() > 0 {
            sender.ring.send(envelope).unwrap_or(0)
        } else {
            0
        };
        ring.progress.published.store(sequence, Ordering::Release);
        let finished = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_since.store(finished.max(1), Ordering::Relaxed);
        receivers + taken
    }

    /// How long since the last publish finished (`None` before the first).
    fn idle_for(&self) -> Option<std::time::Duration> {
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        (idle_since > 0).then(|| {
            let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            std::time::Duration::from_nanos(now.saturating_sub(idle_since))
        })
    }

    /// Current subscribers of `region` (an outlet catching up through the ring counts twice).
    pub fn subscribers(&self, region: Region) -> usize {
        self.regions.get(&region).map_or(0, |ring| {
            ring.sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .subscribers()
        })
    }
}

/// Most threads one publish's outlets are written from by default.
pub const MAX_FANOUT_THREADS: usize = 8;

/// Fewest active outlets a fan-out thread is given: below this a second thread costs more
/// (its start, a few tens of microseconds) than its share of the writes saves.
pub const MIN_OUTLETS_PER_THREAD: usize = 256;

/// Hands `published` to each of `outlets`; returns how many took it and the keys of those that
/// left it to the ring (to be parked).
fn deliver_to<'o, T: 'o>(
    outlets: impl Iterator<Item = (usize, &'o Arc<dyn Outlet<T>>)>,
    published: &Published<'_, T>,
) -> (usize, Vec<usize>) {
    let mut taken = 0;
    let mut to_park = Vec::new();
    for (key, outlet) in outlets {
        let handled = outlet.deliver(published);
        taken += usize::from(handled.took());
        if handled != Handled::Took {
            to_park.push(key);
        }
    }
    (taken, to_park)
}

/// [`deliver_to`] for the active outlets split into `threads` parts, each written by its own
/// thread (this one and `threads - 1` scoped ones) and all finished before it returns — still
/// under the region's lock, so each outlet gets the region's messages in order and before they
/// enter the ring. The writes to one region's sockets go on as many cores as there are parts
/// (a loopback or NIC `send` costs microseconds each: a message to thousands of sockets takes
/// milliseconds from one thread). A part whose thread cannot be started is written here.
fn deliver_in_parallel<T: Send + Sync>(
    outlets: &Slab<Arc<dyn Outlet<T>>>,
    parked: &KeySet,
    published: &Published<'_, T>,
    threads: usize,
) -> (usize, Vec<usize>) {
    let active: Vec<(usize, &Arc<dyn Outlet<T>>)> = outlets
        .iter()
        .filter(|(key, _)| !parked.contains(*key))
        .collect();
    let part = active.len().div_ceil(threads.max(1)).max(1);
    let mut parts = active.chunks(part);
    let Some(first) = parts.next() else {
        return (0, Vec::new());
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = parts
            .map(|part| {
                let started = std::thread::Builder::new()
                    .name("notify-fanout".into())
                    .spawn_scoped(scope, move || {
                        deliver_to(part.iter().map(|(key, outlet)| (*key, *outlet)), published)
                    });
                (part, started)
            })
            .collect();
        let (mut taken, mut to_park) =
            deliver_to(first.iter().map(|(key, outlet)| (*key, *outlet)), published);
        for (part, started) in helpers {
            let (took, park) = match started {
                Ok(helper) => helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => deliver_to(part.iter().map(|(key, outlet)| (*key, *outlet)), published),
            };
            taken += took;
            to_park.extend(park);
        }
        (taken, to_park)
    })
}

/// An outlet's place in one region ([`Hub::attach`]); dropping it detaches the outlet.
pub struct Attachment<T> {
    hub: Arc<Hub<T>>,
    region: Region,
    /// Its slot among the region's outlets (32 bits: it is held by every connection).
    key: u32,
}

impl<T> std::fmt::Debug for Attachment<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("region", &self.region)
            .field("key", &self.key)
            .finish()
    }
}

impl<T: Clone + Send + Sync + 'static> Attachment<T> {
    /// [`Hub::release`] for the region it is attached to.
    pub fn release(
        &self,
        subscription: Subscription<T>,
        quiet: std::time::Duration,
        released: impl FnOnce() -> bool,
    ) -> Result<(), Subscription<T>> {
        self.hub
            .release(self.region, self.key, subscription, quiet, released)
    }
}

impl<T> Drop for Attachment<T> {
    fn drop(&mut self) {
        if let Some(ring) = self.hub.regions.get(&self.region) {
            let mut sender = ring.sender.lock().unwrap_or_else(PoisonError::into_inner);
            let key = self.key as usize;
            if sender.outlets.try_remove(key).is_some() && !sender.parked.remove(key) {
                sender.active -= 1;
            }
        }
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
    use std::time::Duration;

    fn region(code: &str) -> Region {
        Region::parse(code).unwrap()
    }

    #[test]
    fn a_key_set_holds_keys_past_one_word() {
        let mut set = KeySet::default();
        for key in [0, 63, 64, 200] {
            assert!(!set.contains(key));
            assert!(set.insert(key));
            assert!(!set.insert(key), "already there");
            assert!(set.contains(key));
        }
        assert!(!set.contains(1) && !set.contains(65) && !set.contains(10_000));
        assert!(set.remove(64));
        assert!(!set.remove(64), "already gone");
        assert!(!set.remove(10_000), "never there");
        assert!(set.contains(63) && set.contains(200) && !set.contains(64));
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

    /// Records what it takes itself and how often the wire form was built; while `behind` it
    /// leaves messages to a ring subscription it takes at the first one.
    #[derive(Default)]
    struct Recorder {
        taken: Mutex<Vec<(u64, u8)>>,
        behind: std::sync::atomic::AtomicBool,
        ring: Mutex<Option<Subscription<bytes::Bytes>>>,
        encodings: AtomicU64,
        calls: AtomicU64,
    }

    impl Recorder {
        /// The ring subscription it opened when it fell behind.
        fn take_ring(&self) -> Subscription<bytes::Bytes> {
            self.ring.lock().unwrap().take().expect("a subscription")
        }
    }

    impl Outlet<bytes::Bytes> for Recorder {
        fn deliver(&self, published: &Published<'_, bytes::Bytes>) -> Handled {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.behind.load(Ordering::Relaxed) {
                let mut ring = self.ring.lock().unwrap();
                if ring.is_none() {
                    *ring = Some(published.subscribe());
                }
                return Handled::Ring;
            }
            let wire = published.wire(|frame| {
                self.encodings.fetch_add(1, Ordering::Relaxed);
                frame.clone()
            });
            let envelope = published.envelope();
            self.taken
                .lock()
                .unwrap()
                .push((envelope.sequence(), wire[0]));
            Handled::Took
        }
    }

    fn bytes(n: u8) -> bytes::Bytes {
        bytes::Bytes::from(vec![n])
    }

    /// Records what it takes and on which thread; `behind` ones leave everything to a ring
    /// subscription opened at the first message.
    #[derive(Default)]
    struct ThreadRecorder {
        behind: bool,
        taken: Mutex<Vec<u8>>,
        threads: Mutex<Vec<std::thread::ThreadId>>,
        ring: Mutex<Option<Subscription<bytes::Bytes>>>,
        calls: AtomicU64,
    }

    impl Outlet<bytes::Bytes> for ThreadRecorder {
        fn deliver(&self, published: &Published<'_, bytes::Bytes>) -> Handled {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            if self.behind {
                self.ring
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| published.subscribe());
                return Handled::Ring;
            }
            let wire = published.wire(Clone::clone);
            self.taken.lock().unwrap().push(wire[0]);
            Handled::Took
        }
    }

    /// Publishes five messages to `outlets` outlets (every tenth behind) of a hub writing from
    /// at most `threads` threads; checks every outlet got every message in order, exactly
    /// once, and returns how many threads wrote.
    fn fan_out_to_many(outlets: usize, threads: usize) -> usize {
        let hub =
            Arc::new(Hub::<bytes::Bytes>::new([region("AE")], 64).with_fanout_threads(threads));
        let recorders: Vec<Arc<ThreadRecorder>> = (0..outlets)
            .map(|n| {
                Arc::new(ThreadRecorder {
                    behind: n % 10 == 0,
                    ..ThreadRecorder::default()
                })
            })
            .collect();
        let _attachments: Vec<_> = recorders
            .iter()
            .map(|recorder| hub.attach(region("AE"), recorder.clone()).unwrap())
            .collect();
        let behind = recorders.iter().filter(|recorder| recorder.behind).count();
        for n in 0..5u8 {
            // Took it, or (behind) got it from the ring subscription opened at the first.
            assert_eq!(hub.publish(region("AE"), None, bytes(n)), outlets);
        }
        let mut threads_seen = std::collections::HashSet::new();
        for recorder in &recorders {
            threads_seen.extend(recorder.threads.lock().unwrap().iter().copied());
            if recorder.behind {
                assert_eq!(
                    recorder.calls.load(Ordering::Relaxed),
                    1,
                    "parked after the first"
                );
                let mut ring = recorder.ring.lock().unwrap().take().unwrap();
                let got: Vec<u8> = std::iter::from_fn(|| ring.try_recv().unwrap())
                    .map(|envelope| envelope.frame[0])
                    .collect();
                assert_eq!(
                    got,
                    [0, 1, 2, 3, 4],
                    "the ring has every message from the first"
                );
            } else {
                assert_eq!(*recorder.taken.lock().unwrap(), [0, 1, 2, 3, 4]);
            }
        }
        assert!(behind > 0);
        threads_seen.len()
    }

    #[test]
    fn a_publish_to_many_outlets_is_written_from_several_threads_in_order() {
        let outlets = 4 * MIN_OUTLETS_PER_THREAD + 10;
        let threads = fan_out_to_many(outlets, 4);
        assert!(threads >= 2, "written from {threads} thread(s)");
        // Controls: one thread when told so, and when there are too few outlets to share.
        assert_eq!(fan_out_to_many(outlets, 1), 1);
        assert_eq!(fan_out_to_many(MIN_OUTLETS_PER_THREAD + 10, 4), 1);
    }

    #[tokio::test]
    async fn an_outlet_takes_every_publish_of_its_regions_in_order_until_detached() {
        let hub = Arc::new(Hub::<bytes::Bytes>::new([region("AE"), region("FI")], 8));
        let mut ring_reader = hub.subscribe(region("AE")).unwrap();
        let recorder = Arc::new(Recorder::default());
        let ae = hub.attach(region("AE"), recorder.clone()).unwrap();
        let fi = hub.attach(region("FI"), recorder.clone()).unwrap();
        assert_eq!(
            hub.attach(region("US"), recorder.clone()).unwrap_err(),
            HubError::NotServed(region("US"))
        );
        for n in 0..3u8 {
            assert_eq!(hub.publish(region("AE"), None, bytes(n)), 2);
        }
        assert_eq!(hub.publish(region("FI"), None, bytes(9)), 1);
        assert_eq!(
            *recorder.taken.lock().unwrap(),
            vec![(1, 0), (2, 1), (3, 2), (1, 9)]
        );
        // Ring subscribers still get everything.
        assert_eq!(ring_reader.recv().await.unwrap().frame[0], 0);
        drop(ae);
        drop(fi);
        assert_eq!(hub.publish(region("AE"), None, bytes(7)), 1);
        assert_eq!(hub.publish(region("FI"), None, bytes(7)), 0);
        assert_eq!(recorder.taken.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn the_wire_form_is_built_once_per_publish_for_all_outlets() {
        let hub = Arc::new(Hub::<bytes::Bytes>::new([region("AE")], 4));
        let recorders: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::default()).collect();
        let _attachments: Vec<_> = recorders
            .iter()
            .map(|recorder| hub.attach(region("AE"), recorder.clone()).unwrap())
            .collect();
        hub.publish(region("AE"), None, bytes(1));
        let encodings: u64 = recorders
            .iter()
            .map(|recorder| recorder.encodings.load(Ordering::Relaxed))
            .sum();
        assert_eq!(encodings, 1);
    }

    #[tokio::test]
    async fn an_outlet_behind_catches_up_from_the_ring_then_takes_messages_again() {
        let hub = Arc::new(Hub::<bytes::Bytes>::new([region("AE")], 8));
        let recorder = Arc::new(Recorder::default());
        let attachment = hub.attach(region("AE"), recorder.clone()).unwrap();
        hub.publish(region("AE"), None, bytes(1));
        recorder.behind.store(true, Ordering::Relaxed);
        for n in 2..5u8 {
            // Left to the ring: the ring's new receiver counts it once.
            assert_eq!(hub.publish(region("AE"), None, bytes(n)), 1);
        }
        let mut ring = recorder.take_ring();
        // The subscription starts with the first message the outlet did not take.
        assert_eq!(ring.recv().await.unwrap().frame[0], 2);
        // Parked on the ring: the publishes after the first it left did not visit it.
        assert_eq!(recorder.calls.load(Ordering::Relaxed), 2);
        // Not drained yet: it is handed back.
        let released = std::sync::atomic::AtomicBool::new(false);
        let mut ring = attachment
            .release(ring, Duration::ZERO, || {
                released.store(true, Ordering::Relaxed);
                true
            })
            .unwrap_err();
        assert!(!released.load(Ordering::Relaxed));
        assert_eq!(ring.recv().await.unwrap().frame[0], 3);
        assert_eq!(ring.recv().await.unwrap().frame[0], 4);
        let ring = attachment
            .release(ring, Duration::ZERO, || false)
            .unwrap_err();
        // In a burst (published within `quiet`) it keeps reading the ring.
        let ring = attachment
            .release(ring, Duration::from_secs(60), || true)
            .unwrap_err();
        hub.publish(region("AE"), None, bytes(6));
        assert_eq!(recorder.calls.load(Ordering::Relaxed), 2, "still parked");
        let mut ring = ring;
        assert_eq!(ring.recv().await.unwrap().frame[0], 6);
        attachment
            .release(ring, Duration::ZERO, || {
                recorder.behind.store(false, Ordering::Relaxed);
                true
            })
            .unwrap();
        hub.publish(region("AE"), None, bytes(5));
        assert_eq!(recorder.calls.load(Ordering::Relaxed), 3, "visited again");
        assert_eq!(*recorder.taken.lock().unwrap(), vec![(1, 1), (6, 5)]);
        assert_eq!(hub.subscribers(region("AE")), 1);
    }

    #[tokio::test]
    async fn an_outlet_behind_is_held_to_the_exact_queue_limit() {
        // The ring behind a limit of 5 holds 8.
        let hub = Arc::new(Hub::<bytes::Bytes>::new([region("AE")], 5));
        let recorder = Arc::new(Recorder::default());
        recorder.behind.store(true, Ordering::Relaxed);
        let _attachment = hub.attach(region("AE"), recorder.clone()).unwrap();
        for n in 0..7u8 {
            hub.publish(region("AE"), None, bytes(n));
        }
        let mut ring = recorder.take_ring();
        assert_eq!(
            ring.recv().await.unwrap_err(),
            SubscriptionError::Lagged { skipped: 2 }
        );
    }
}

//! What one connection receives: its regions' subscriptions, polled together, each with its own
//! resume (the replay and its seam).
//!
//! A connection to one region (nearly all) holds its subscription inline, exactly as before
//! several regions per connection existed: no allocation, no extra polling, the same size. A
//! connection to several (`?region=AE,FI`) holds one subscription per region behind one box and
//! waits on all of them at once; messages already queued are taken round-robin from the
//! regions, so a busy region cannot starve a quiet one. Each region keeps its own order, its
//! own replay seam (nothing twice, nothing skipped, or that region's `resync`) and the hub's
//! slow-consumer policy: falling more than `--queue-limit` behind on any region ends the
//! connection, as on one.
//!
//! A plain-TCP WebSocket to one region is a [`Feed::Direct`]: its socket's outlet is attached
//! to the region's fan-out, which writes messages into the socket itself while the client is
//! caught up ([`crate::direct`]). Its task reads the ring only while it writes (at the start,
//! through a resume's seam, and whenever the fan-out hands back), and skips what the fan-out
//! already wrote.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{ready, Poll};

use axum::extract::ws::Utf8Bytes;
use futures_util::future::{select_all, Either, FutureExt};
use notify_core::{Attachment, Envelope, Hub, Subscription, SubscriptionError};
use notify_proto::{Region, StreamId};

use crate::direct::SocketOutlet;
use crate::positions::Positions;
use crate::resume::{self, already_sent, ReplayFailure, ReplaySink, Seam};
use crate::server::App;

/// One region of a connection: its subscription and its resume.
#[derive(Debug)]
pub struct RegionFeed {
    /// The region.
    region: Region,
    /// Its window into the region's ring, taken before any replay so nothing is missed.
    /// Always there, except on a [`Feed::Direct`] while the fan-out writes for it.
    subscription: Option<Subscription<Utf8Bytes>>,
    /// Where the region is in its resume.
    resume: Resume,
}

/// Where a region is in its resume. One field for the id to resume after and the seam the
/// replay leaves, which are never needed at once: an idle connection is that much smaller.
#[derive(Debug, Clone, Copy)]
enum Resume {
    /// Live only: no resume asked, or a replay that left nothing to compare.
    Live,
    /// Resume after this id; the replay has not run yet.
    After(StreamId),
    /// The replay ran: live messages at or below the seam were sent by it.
    Handover(Seam),
}

impl RegionFeed {
    /// `region`'s subscription, resuming after `since` when given.
    pub fn new(
        region: Region,
        since: Option<StreamId>,
        subscription: Subscription<Utf8Bytes>,
    ) -> Self {
        RegionFeed {
            region,
            subscription: Some(subscription),
            resume: since.map_or(Resume::Live, Resume::After),
        }
    }

    /// Its next message, waiting for one (never, without a subscription).
    async fn recv(&mut self) -> Result<Envelope<Utf8Bytes>, SubscriptionError> {
        match &mut self.subscription {
            Some(subscription) => subscription.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Its next message if one is already queued.
    fn try_recv(&mut self) -> Result<Option<Envelope<Utf8Bytes>>, SubscriptionError> {
        match &mut self.subscription {
            Some(subscription) => subscription.try_recv(),
            None => Ok(None),
        }
    }

    /// The id this region resumes after, until its replay has run.
    fn since(&self) -> Option<StreamId> {
        match self.resume {
            Resume::After(since) => Some(since),
            Resume::Live | Resume::Handover(_) => None,
        }
    }

    /// A message received from this region, marked when its replay already sent it.
    fn delivery(&mut self, envelope: Envelope<Utf8Bytes>) -> Delivery {
        let replayed = match self.resume {
            Resume::Handover(seam) => {
                let mut current = Some(seam);
                let replayed = already_sent(&envelope, &mut current);
                self.resume = current.map_or(Resume::Live, Resume::Handover);
                replayed
            }
            Resume::Live | Resume::After(_) => false,
        };
        Delivery {
            region: self.region,
            envelope,
            already_sent: replayed,
        }
    }
}

/// A connection's regions.
#[derive(Debug)]
pub enum Feed {
    /// One region, inline.
    One(RegionFeed),
    /// Several regions.
    Many(Box<ManyRegions>),
    /// One region of a plain-TCP WebSocket, written by the region's fan-out while caught up.
    Direct(DirectRegion),
}

/// A [`Feed::Direct`]: the region's feed, whose subscription the task holds only while it
/// writes, and the socket's place in the region's fan-out.
#[derive(Debug)]
pub struct DirectRegion {
    feed: RegionFeed,
    outlet: Arc<SocketOutlet>,
    /// Detaches the outlet from the region when dropped.
    attachment: Attachment<Utf8Bytes>,
}

/// Several regions and where the next round-robin take starts.
#[derive(Debug)]
pub struct ManyRegions {
    regions: Vec<RegionFeed>,
    next: usize,
}

/// A message taken from one of the feed's regions, before the feed has checked it against
/// that region's seam ([`Feed::accept`]).
#[derive(Debug)]
pub struct Received {
    /// Which of the feed's regions it came from.
    index: usize,
    envelope: Envelope<Utf8Bytes>,
}

/// A message for the connection.
#[derive(Debug)]
pub struct Delivery {
    /// The region it came from.
    pub region: Region,
    /// The message.
    pub envelope: Envelope<Utf8Bytes>,
    /// The replay, or the fan-out ([`Feed::Direct`]), already sent it: skip it.
    pub already_sent: bool,
}

impl Feed {
    /// A feed of `regions` (at least one; several are polled together).
    pub fn new(mut regions: Vec<RegionFeed>) -> Self {
        if regions.len() == 1 {
            if let Some(one) = regions.pop() {
                return Feed::One(one);
            }
        }
        Feed::Many(Box::new(ManyRegions { regions, next: 0 }))
    }

    /// This feed written directly through `outlet` (a plain-TCP WebSocket's) when it is of one
    /// region: the outlet is attached to the region's fan-out now, and the task writes what
    /// the ring holds until [`Feed::caught_up`] hands over. Several regions, or a region the
    /// hub cannot attach to, stay as they are.
    pub fn direct(self, hub: &Arc<Hub<Utf8Bytes>>, outlet: Arc<SocketOutlet>) -> Self {
        let Feed::One(feed) = self else {
            return self;
        };
        match hub.attach(feed.region, Arc::clone(&outlet) as _) {
            Ok(attachment) => Feed::Direct(DirectRegion {
                feed,
                outlet,
                attachment,
            }),
            Err(error) => {
                tracing::warn!(region = %feed.region, %error, "no direct writes for this connection");
                Feed::One(feed)
            }
        }
    }

    /// Hands writing to the fan-out when nothing waits: called by the task once its own write
    /// buffer is flushed. A [`Feed::Direct`] with its ring drained, and past its resume's
    /// seam (live messages are compared with it one by one), gives its subscription back and
    /// the fan-out writes from the next message on; otherwise it keeps reading the ring.
    pub fn caught_up(&mut self) {
        let Feed::Direct(direct) = self else {
            return;
        };
        let feed = &mut direct.feed;
        if !matches!(feed.resume, Resume::Live) {
            return;
        }
        let ring = feed
            .subscription
            .take()
            .or_else(|| direct.outlet.take_handover());
        feed.subscription = direct.outlet.release(ring, &direct.attachment);
    }

    /// Stops the fan-out's writes for good: after this only the task writes (its close
    /// frame), and the outlet is detached from its region.
    pub fn stop_direct_writes(&mut self) {
        if let Feed::Direct(direct) = self {
            direct.outlet.close();
            let region = direct.feed.region;
            let feed = std::mem::replace(
                &mut direct.feed,
                RegionFeed {
                    region,
                    subscription: None,
                    resume: Resume::Live,
                },
            );
            *self = Feed::One(feed);
        }
    }

    /// The regions, in the order asked.
    pub fn regions(&self) -> impl ExactSizeIterator<Item = Region> + '_ {
        self.slice().iter().map(|feed| feed.region)
    }

    /// How many regions.
    pub fn len(&self) -> usize {
        self.slice().len()
    }

    /// Always false: a feed has at least one region.
    pub fn is_empty(&self) -> bool {
        self.slice().is_empty()
    }

    /// Whether any region resumes (has a replay to run).
    pub fn resumes(&self) -> bool {
        self.slice().iter().any(|feed| feed.since().is_some())
    }

    /// Where each region starts: its `since`, until its replay has run.
    pub fn positions(&self) -> Positions {
        Positions::new(self.slice().iter().map(|feed| (feed.region, feed.since())))
    }

    fn slice(&self) -> &[RegionFeed] {
        match self {
            Feed::One(one) => std::slice::from_ref(one),
            Feed::Many(many) => &many.regions,
            Feed::Direct(direct) => std::slice::from_ref(&direct.feed),
        }
    }

    fn slice_mut(&mut self) -> &mut [RegionFeed] {
        match self {
            Feed::One(one) => std::slice::from_mut(one),
            Feed::Many(many) => &mut many.regions,
            Feed::Direct(direct) => std::slice::from_mut(&mut direct.feed),
        }
    }

    /// Replays, region after region, what the client missed after each region's `since`
    /// ([`resume::replay`], a replay turn each), and keeps each region's seam. A region without
    /// a `since` starts live.
    pub async fn replay<S: ReplaySink + Send>(
        &mut self,
        sink: &mut S,
        app: &App,
    ) -> Result<(), ReplayFailure<S::Error>> {
        for feed in self.slice_mut() {
            if let Resume::After(since) = feed.resume {
                feed.resume = match resume::replay(sink, feed.region, since, app).await? {
                    Some(seam) => Resume::Handover(seam),
                    None => Resume::Live,
                };
            }
        }
        Ok(())
    }

    /// The next message, waiting for one; hand it to [`Feed::accept`]. `None` from a
    /// [`Feed::Direct`] whose fan-out handed writing back: nothing new to write yet, but the
    /// tail of a direct write may be left to flush, and the ring to read from now on.
    ///
    /// Not an `async fn`: for one region this is the subscription's own wait, so an idle
    /// connection's future is no larger than before several regions existed; the wait on
    /// several is boxed.
    pub fn recv(
        &mut self,
    ) -> impl Future<Output = Result<Option<Received>, SubscriptionError>> + Send + '_ {
        let received = |received: Result<Envelope<Utf8Bytes>, SubscriptionError>| {
            received.map(|envelope| Some(Received { index: 0, envelope }))
        };
        // One region reading its ring, directly written or not, is one variant: the same
        // future as the subscription's own receive.
        let (subscription, outlet) = match self {
            Feed::Many(many) => {
                let many = many.recv().map(|received| received.map(Some));
                return Either::Right(Either::Left(Box::pin(many)));
            }
            Feed::One(one) => (&mut one.subscription, None),
            Feed::Direct(DirectRegion { feed, outlet, .. }) => {
                (&mut feed.subscription, Some(&**outlet))
            }
        };
        match subscription {
            Some(ring) => Either::Left(ring.recv().map(received)),
            // The fan-out writes; wait for it to hand back.
            None => Either::Right(Either::Right(std::future::poll_fn(move |cx| {
                let Some(outlet) = outlet else {
                    return Poll::Pending;
                };
                *subscription = ready!(outlet.poll_handover(cx));
                Poll::Ready(Ok(None))
            }))),
        }
    }

    /// What [`Feed::recv`] received, checked against its region's seam, and on a
    /// [`Feed::Direct`] against what the fan-out wrote.
    pub fn accept(&mut self, received: Received) -> Delivery {
        let Received { index, envelope } = received;
        match self {
            Feed::One(one) => one.delivery(envelope),
            Feed::Many(many) => many.regions[index].delivery(envelope),
            Feed::Direct(direct) => direct.delivery(envelope),
        }
    }

    /// The next message if one is already queued, for batching several into one write.
    pub fn try_recv(&mut self) -> Result<Option<Delivery>, SubscriptionError> {
        match self {
            Feed::One(one) => Ok(one.try_recv()?.map(|envelope| one.delivery(envelope))),
            Feed::Many(many) => many.try_recv(),
            Feed::Direct(direct) => Ok(direct
                .feed
                .try_recv()?
                .map(|envelope| direct.delivery(envelope))),
        }
    }
}

impl DirectRegion {
    /// A message from the ring, marked as sent when the fan-out already wrote it (in part:
    /// the rest is the socket's unsent tail, written before anything else).
    fn delivery(&mut self, envelope: Envelope<Utf8Bytes>) -> Delivery {
        let written = self.outlet.wrote(envelope.sequence());
        let mut delivery = self.feed.delivery(envelope);
        delivery.already_sent |= written;
        delivery
    }
}

impl ManyRegions {
    /// A message already queued in any region, taking the regions in turn.
    fn try_recv(&mut self) -> Result<Option<Delivery>, SubscriptionError> {
        Ok(self
            .take_queued()?
            .map(|Received { index, envelope }| self.regions[index].delivery(envelope)))
    }

    /// A message already queued in any region, the regions taken in turn from the one after
    /// the last taken.
    fn take_queued(&mut self) -> Result<Option<Received>, SubscriptionError> {
        let count = self.regions.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            if let Some(envelope) = self.regions[index].try_recv()? {
                self.next = (index + 1) % count;
                return Ok(Some(Received { index, envelope }));
            }
        }
        Ok(None)
    }

    /// Waits for a message of any region.
    async fn recv(&mut self) -> Result<Received, SubscriptionError> {
        if let Some(received) = self.take_queued()? {
            return Ok(received);
        }
        let count = self.regions.len();
        let waits = self
            .regions
            .iter_mut()
            .enumerate()
            .map(|(index, feed)| async move { (index, feed.recv().await) }.boxed());
        let ((index, received), _, _) = select_all(waits).await;
        let envelope = received?;
        self.next = (index + 1) % count;
        Ok(Received { index, envelope })
    }
}

/// The regions, comma-separated, for logs.
impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, region) in self.regions().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{region}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_core::Hub;

    fn region(code: &str) -> Region {
        Region::parse(code).unwrap()
    }

    fn feed(hub: &Hub<Utf8Bytes>, codes: &[&str]) -> Feed {
        Feed::new(
            codes
                .iter()
                .map(|code| {
                    RegionFeed::new(region(code), None, hub.subscribe(region(code)).unwrap())
                })
                .collect(),
        )
    }

    #[tokio::test]
    async fn each_message_comes_from_its_region_in_order() {
        let hub = Hub::new([region("AE"), region("FI"), region("CZ")], 16);
        let mut both = feed(&hub, &["AE", "FI"]);
        assert_eq!(both.to_string(), "AE,FI");
        for n in 0..3 {
            hub.publish(region("AE"), None, Utf8Bytes::from(format!("AE{n}")));
            hub.publish(region("FI"), None, Utf8Bytes::from(format!("FI{n}")));
            hub.publish(region("CZ"), None, Utf8Bytes::from(format!("CZ{n}")));
        }
        let mut got = Vec::new();
        while let Some(delivery) = both.try_recv().unwrap() {
            assert!(delivery
                .envelope
                .frame
                .as_str()
                .starts_with(delivery.region.as_str()));
            got.push(delivery.envelope.frame.to_string());
        }
        // Round-robin between the regions, each in its own order, nothing of CZ.
        assert_eq!(got, ["AE0", "FI0", "AE1", "FI1", "AE2", "FI2"]);
        let waiting = tokio::spawn(async move {
            let received = both
                .recv()
                .await?
                .expect("a ring feed always receives a message");
            Ok::<_, SubscriptionError>(both.accept(received).region)
        });
        tokio::task::yield_now().await;
        hub.publish(region("CZ"), None, Utf8Bytes::from("CZ"));
        hub.publish(region("FI"), None, Utf8Bytes::from("FI"));
        assert_eq!(waiting.await.unwrap().unwrap(), region("FI"));
    }

    #[tokio::test]
    async fn lagging_on_any_region_ends_the_feed() {
        let hub = Hub::new([region("AE"), region("FI")], 2);
        let mut both = feed(&hub, &["AE", "FI"]);
        hub.publish(region("AE"), None, Utf8Bytes::from("a"));
        for _ in 0..3 {
            hub.publish(region("FI"), None, Utf8Bytes::from("f"));
        }
        let mut ended = None;
        for _ in 0..4 {
            match both.recv().await {
                Ok(received) => drop(both.accept(received.expect("a message"))),
                Err(error) => {
                    ended = Some(error);
                    break;
                }
            }
        }
        assert_eq!(ended, Some(SubscriptionError::Lagged { skipped: 1 }));
    }

    #[test]
    fn one_region_stays_inline() {
        let hub = Hub::new([region("AE")], 4);
        assert!(matches!(feed(&hub, &["AE"]), Feed::One(_)));
        assert!(
            std::mem::size_of::<Feed>() <= std::mem::size_of::<DirectRegion>(),
            "a feed of one region is its region's feed, and its outlet when written directly"
        );
        assert!(std::mem::size_of::<DirectRegion>() <= std::mem::size_of::<RegionFeed>() + 24);
    }
}

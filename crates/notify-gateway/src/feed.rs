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

use std::fmt;

use axum::extract::ws::Utf8Bytes;
use std::future::Future;

use futures_util::future::{select_all, Either, FutureExt};
use notify_core::{Envelope, Subscription, SubscriptionError};
use notify_proto::{Region, StreamId};

use crate::positions::Positions;
use crate::resume::{self, already_sent, ReplayFailure, ReplaySink, Seam};
use crate::server::App;

/// One region of a connection: its subscription and its resume.
#[derive(Debug)]
pub struct RegionFeed {
    /// The region.
    region: Region,
    /// Its window into the region's ring, taken before any replay so nothing is missed.
    subscription: Subscription<Utf8Bytes>,
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
            subscription,
            resume: since.map_or(Resume::Live, Resume::After),
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
            replayed,
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
    /// The replay already sent it: skip it.
    pub replayed: bool,
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
        }
    }

    fn slice_mut(&mut self) -> &mut [RegionFeed] {
        match self {
            Feed::One(one) => std::slice::from_mut(one),
            Feed::Many(many) => &mut many.regions,
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

    /// The next message, waiting for one; hand it to [`Feed::accept`].
    ///
    /// Not an `async fn`: for one region this is the subscription's own wait, so an idle
    /// connection's future is no larger than before several regions existed; the wait on
    /// several is boxed.
    pub fn recv(
        &mut self,
    ) -> impl Future<Output = Result<Received, SubscriptionError>> + Send + '_ {
        match self {
            Feed::One(one) => Either::Left(
                one.subscription
                    .recv()
                    .map(|received| received.map(|envelope| Received { index: 0, envelope })),
            ),
            Feed::Many(many) => Either::Right(Box::pin(many.recv())),
        }
    }

    /// What [`Feed::recv`] received, checked against its region's seam.
    pub fn accept(&mut self, received: Received) -> Delivery {
        let Received { index, envelope } = received;
        match self {
            Feed::One(one) => one.delivery(envelope),
            Feed::Many(many) => many.regions[index].delivery(envelope),
        }
    }

    /// The next message if one is already queued, for batching several into one write.
    pub fn try_recv(&mut self) -> Result<Option<Delivery>, SubscriptionError> {
        match self {
            Feed::One(one) => Ok(one
                .subscription
                .try_recv()?
                .map(|envelope| one.delivery(envelope))),
            Feed::Many(many) => many.try_recv(),
        }
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
            if let Some(envelope) = self.regions[index].subscription.try_recv()? {
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
        let waits =
            self.regions.iter_mut().enumerate().map(|(index, feed)| {
                async move { (index, feed.subscription.recv().await) }.boxed()
            });
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
            let received = both.recv().await?;
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
                Ok(received) => drop(both.accept(received)),
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
            std::mem::size_of::<Feed>() <= std::mem::size_of::<RegionFeed>() + 8,
            "a feed of one region is its region's feed"
        );
    }
}

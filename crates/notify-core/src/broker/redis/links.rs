//! [`Links`]: the broker's readiness, made of its two Redis links — the pub/sub subscription
//! (live messages) and the stream follower (id-carrying messages, catch-up) — as `/readyz`
//! and `notify_broker_ready` report it. Ready only while both are up; every fall from ready
//! counts once in `notify_broker_reconnects_total`, however many links it took down.
//! [`keep_up`] is the reconnect loop the subscriptions share.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::BrokerError;
use crate::backoff::Backoff;
use crate::broker::BrokerState;

/// One of the broker's Redis links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// The pub/sub connection subscribed to every served region's channel.
    Subscription,
    /// The connection following every served region's stream.
    Streams,
}

impl Link {
    fn index(self) -> usize {
        match self {
            Link::Subscription => 0,
            Link::Streams => 1,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Link::Subscription => "subscription",
            Link::Streams => "streams",
        }
    }
}

/// Runs one life of `link` after another until `shutdown`: `life` makes the link, uses it,
/// and returns why it ended and whether it had come up. After each loss the link is marked
/// down, the cause is logged, and the next life starts after `backoff`'s delay (reset when the
/// link had come up).
pub(super) async fn keep_up<F, Fut>(
    links: &Links,
    link: Link,
    mut backoff: Backoff,
    shutdown: CancellationToken,
    mut life: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = (BrokerError, bool)>,
{
    loop {
        let (lost, came_up) = tokio::select! {
            () = shutdown.cancelled() => return,
            ended = life() => ended,
        };
        if came_up {
            backoff.reset();
        }
        links.down(link);
        tracing::warn!(error = %lost, attempt = backoff.attempts() + 1, link = link.as_str(), "Redis subscription lost; subscribing again");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Which links are up, and the broker state they add up to.
#[derive(Debug)]
pub(super) struct Links {
    up: Mutex<[bool; 2]>,
    state: watch::Sender<BrokerState>,
}

impl Links {
    /// Both links down, state [`BrokerState::Connecting`]; the receiver follows the state.
    pub(super) fn new() -> (Self, watch::Receiver<BrokerState>) {
        let (state, receiver) = watch::channel(BrokerState::Connecting);
        let links = Links {
            up: Mutex::new([false; 2]),
            state,
        };
        (links, receiver)
    }

    /// `link` is established (subscribed, or caught up).
    pub(super) fn up(&self, link: Link) {
        self.set(link, true);
    }

    /// `link` was lost.
    pub(super) fn down(&self, link: Link) {
        self.set(link, false);
    }

    fn set(&self, link: Link, up: bool) {
        let mut links = self
            .up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        links[link.index()] = up;
        let next = if links.iter().all(|up| *up) {
            BrokerState::Ready
        } else if *self.state.borrow() == BrokerState::Connecting {
            BrokerState::Connecting
        } else {
            BrokerState::Down
        };
        let previous = self.state.send_replace(next);
        if previous == next {
            return;
        }
        tracing::info!(
            from = previous.as_str(),
            to = next.as_str(),
            link = link.as_str(),
            "Redis broker state changed"
        );
        if previous == BrokerState::Ready {
            metrics::counter!("notify_broker_reconnects_total").increment(1);
        }
        metrics::gauge!("notify_broker_ready").set(if next == BrokerState::Ready {
            1.0
        } else {
            0.0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_links_and_a_fall_is_down() {
        let (links, state) = Links::new();
        links.up(Link::Subscription);
        assert_eq!(*state.borrow(), BrokerState::Connecting);
        links.up(Link::Streams);
        assert_eq!(*state.borrow(), BrokerState::Ready);
        links.down(Link::Streams);
        links.down(Link::Subscription);
        assert_eq!(*state.borrow(), BrokerState::Down);
        links.up(Link::Subscription);
        assert_eq!(*state.borrow(), BrokerState::Down);
        links.up(Link::Streams);
        assert_eq!(*state.borrow(), BrokerState::Ready);
    }
}

//! The cluster's subscription: one cluster connection (RESP3, pushes delivered to a bounded
//! queue) holding `SSUBSCRIBE tvs:{R}` for every served region — on the shard that owns the
//! region — and a plain `SUBSCRIBE tvs:R` for the seed's plain `PUBLISH` (broadcast to every
//! node, so one node's subscription hears it).
//!
//! Shard messages carry our publish script's ids: they are held by [`Ingest`] until the stream
//! settles them (see [`crate::pending`]) and wake the stream follower for their region; plain
//! messages without an id are delivered at once.
//!
//! The subscription is made again from the seeds (fresh slot map, every channel subscribed
//! again, with capped, jittered backoff) when
//! - a node connection closes (a primary killed, a partition: the driver pushes a
//!   disconnection),
//! - the server drops a subscription on its own (a slot migrated away, or a primary demoted
//!   in a failover, unsubscribes its shard channels),
//! - a `PING` routed to a region's primary fails or is late (every `ping_interval`),
//! - live messages arrive faster than they are handled and [`PUSH_QUEUE`] fills.
//!
//! While it is down `/readyz` is 503. Plain messages published meanwhile are lost (they are
//! in no stream); id-carrying ones reach clients through the stream follower regardless.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::join_all;
use notify_proto::Region;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ClusterSeeds;
use crate::backoff::Backoff;
use crate::broker::redis::error::BrokerError;
use crate::broker::redis::links::{keep_up, Link, Links};
use crate::broker::redis::wakeups::Wakeups;
use crate::broker::redis::RedisBrokerConfig;
use crate::ingest::Ingest;

/// Default of [`RedisBrokerConfig::push_queue`]: most live messages waiting to be handled
/// (the subscribe confirmations have room of their own). A burst past it ends the subscription (and is logged with the count)
/// rather than grow memory without bound.
pub const PUSH_QUEUE: usize = 4096;

/// The cluster subscriber task's state.
pub(in crate::broker::redis) struct ShardedSubscriber<T> {
    pub(in crate::broker::redis) seeds: ClusterSeeds,
    pub(in crate::broker::redis) config: RedisBrokerConfig,
    pub(in crate::broker::redis) ingest: Arc<Ingest<T>>,
    pub(in crate::broker::redis) links: Arc<Links>,
    pub(in crate::broker::redis) wakeups: Arc<Wakeups>,
}

impl<T> ShardedSubscriber<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Subscribes, delivers, subscribes again after losses, until `shutdown`.
    pub(in crate::broker::redis) async fn run(self, shutdown: CancellationToken) {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
        keep_up(&self.links, Link::Subscription, backoff, shutdown, || {
            self.subscribed()
        })
        .await;
    }

    /// One subscription's life: returns why it ended, and whether it had subscribed.
    async fn subscribed(&self) -> (BrokerError, bool) {
        let regions = self.ingest.hub().regions();
        // The subscribe confirmations (one per shard and one per plain channel) arrive
        // before the loop below reads any: room for them comes on top of the bound.
        let queue_limit = self.config.push_queue.max(1);
        let (sender, mut pushes) = mpsc::channel::<PushInfo>(queue_limit + 2 * regions.len());
        let overflowed = Arc::new(AtomicU64::new(0));
        let dropped = Arc::clone(&overflowed);
        let queue = move |push: PushInfo| {
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(push) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), std::convert::Infallible>(())
        };
        let mut connection = match self.subscribe(queue, &regions).await {
            Ok(connection) => connection,
            Err(error) => return (error, false),
        };
        self.links.up(Link::Subscription);
        tracing::info!(
            regions = regions.len(),
            "subscribed to the Redis Cluster (shard channels and plain channels)"
        );
        let mut health = tokio::time::interval(self.config.ping_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.reset();
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        return (lost("receive live messages", "the push queue closed"), true);
                    };
                    if let Some(error) = self.handle(push) {
                        return (error, true);
                    }
                }
                _ = health.tick() => {
                    if let Err(error) = self.ping_owners(&mut connection, &regions).await {
                        return (error, true);
                    }
                }
            }
            let dropped = overflowed.load(Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    queue = queue_limit,
                    "live messages arrived faster than they were handled"
                );
                return (
                    lost("receive live messages", "the push queue was full"),
                    true,
                );
            }
        }
    }

    /// Connects with pushes sent to `queue` and subscribes every region's channels.
    async fn subscribe(
        &self,
        queue: impl redis::aio::AsyncPushSender,
        regions: &[Region],
    ) -> Result<ClusterConnection, BrokerError> {
        const OPERATION: &str = "subscribe";
        let timeout = self.config.command_timeout;
        let client = self
            .seeds
            .builder(timeout)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(queue)
            .build()
            .map_err(|source| BrokerError::InvalidUrl {
                url: self.seeds.shown().to_owned(),
                source,
            })?;
        let mut connection = self.seeds.connect_client(&client, timeout).await?;
        let channels = self.ingest.channels();
        let attempt = async {
            // One command per shard channel: each goes to the primary owning its slot.
            for region in regions {
                connection.ssubscribe(channels.channel(*region)).await?;
            }
            let plain: Vec<String> = regions
                .iter()
                .map(|region| channels.plain_channel(*region))
                .collect();
            connection.subscribe(plain).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => Ok(connection),
            Ok(Err(source)) => Err(BrokerError::from_redis(OPERATION, source)),
            Err(_) => Err(BrokerError::Timeout {
                operation: OPERATION,
                after: timeout,
            }),
        }
    }

    /// Handles one push; returns why the subscription must be made again, if it must.
    fn handle(&self, push: PushInfo) -> Option<BrokerError> {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let sharded = push.kind == PushKind::SMessage;
                let Some(message) = redis::Msg::from_push_info(push) else {
                    tracing::warn!("skipped a message push without a channel and a payload");
                    return None;
                };
                let channel = message.get_channel_name();
                if sharded {
                    if let Some(region) = self.ingest.channels().region_of(channel) {
                        self.wakeups.wake(region);
                    }
                }
                // Bad payloads are counted and logged (rate-limited) inside ingest.
                if let Err(error) = self
                    .ingest
                    .channel_message(channel, message.get_payload_bytes())
                {
                    tracing::trace!(%error, "skipped a live message");
                }
                None
            }
            PushKind::Disconnection => Some(lost(
                "receive live messages",
                "a cluster node's connection closed",
            )),
            PushKind::SUnsubscribe | PushKind::Unsubscribe => Some(lost(
                "receive live messages",
                "the server dropped a subscription (a slot moved or a primary was demoted)",
            )),
            _ => None,
        }
    }

    /// `PING`s, at once, the primary owning each region's slot: a node that stopped answering
    /// (frozen, partitioned) ends the subscription.
    async fn ping_owners(
        &self,
        connection: &mut ClusterConnection,
        regions: &[Region],
    ) -> Result<(), BrokerError> {
        const OPERATION: &str = "PING the subscribed primaries";
        let timeout = self.config.command_timeout;
        let pings = regions.iter().map(|region| {
            let mut connection = connection.clone();
            let route = Route::with_key(self.ingest.channels().channel(*region), SlotAddr::Master);
            async move {
                connection
                    .route_command(
                        redis::cmd("PING"),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await
            }
        });
        match tokio::time::timeout(timeout, join_all(pings)).await {
            Ok(replies) => match replies.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some(source) => Err(BrokerError::Unavailable {
                    operation: OPERATION,
                    source,
                }),
            },
            Err(_) => Err(BrokerError::Timeout {
                operation: OPERATION,
                after: timeout,
            }),
        }
    }
}

/// The subscription was lost for `reason`.
fn lost(operation: &'static str, reason: &'static str) -> BrokerError {
    BrokerError::Unavailable {
        operation,
        source: redis::RedisError::from((redis::ErrorKind::Io, reason)),
    }
}

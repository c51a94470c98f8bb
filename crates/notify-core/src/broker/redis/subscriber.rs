//! The pub/sub subscriber: one connection subscribed to every served region's channel, for
//! live messages. Messages without an id (the seed's plain `PUBLISH`) are delivered at once;
//! messages with one are handed to [`Ingest`], which holds them until the stream settles
//! whether the id is ours (see [`crate::pending`]).
//!
//! The connection is checked with `PING` every `ping_interval`: a link that died without
//! closing (a partition, a frozen server) is noticed within `ping_interval + command_timeout`.
//! Any reply is a sign of life — subscribed RESP2 connections answer `["pong", ""]`, not
//! `PONG`. A failed or late `PING` is logged with its cause; then the subscription is made
//! again with capped, jittered backoff. Messages published while it is down are lost for
//! plain `PUBLISH` (they are in no stream) and caught up by the stream follower otherwise.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::error::BrokerError;
use super::links::{keep_up, Link, Links};
use super::target::RedisTarget;
use super::RedisBrokerConfig;
use crate::backoff::Backoff;
use crate::ingest::Ingest;

/// The subscriber task's state.
pub(super) struct Subscriber<T> {
    pub(super) target: RedisTarget,
    pub(super) config: RedisBrokerConfig,
    pub(super) ingest: Arc<Ingest<T>>,
    pub(super) links: Arc<Links>,
}

impl<T> Subscriber<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Subscribes, delivers, resubscribes after losses, until `shutdown`.
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let channels: Vec<String> = self
            .ingest
            .hub()
            .regions()
            .iter()
            .map(|region| self.ingest.channels().channel(*region))
            .collect();
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
        keep_up(&self.links, Link::Subscription, backoff, shutdown, || {
            self.subscribed(&channels)
        })
        .await;
    }

    /// One subscription's life: returns why it ended, and whether it had subscribed.
    async fn subscribed(&self, channels: &[String]) -> (BrokerError, bool) {
        let pubsub = match self.subscribe(channels).await {
            Ok(pubsub) => pubsub,
            Err(error) => return (error, false),
        };
        self.links.up(Link::Subscription);
        tracing::info!(channels = channels.len(), "subscribed to Redis");
        (self.receive(pubsub).await, true)
    }

    /// Delivers live messages and checks the link until it fails; returns why.
    async fn receive(&self, pubsub: redis::aio::PubSub) -> BrokerError {
        let (mut sink, mut messages) = pubsub.split();
        let mut health = tokio::time::interval(self.config.ping_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.reset();
        let timeout = self.config.command_timeout;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        // Bad payloads are counted and logged (rate-limited) inside ingest.
                        if let Err(error) = self.ingest.channel_message(
                            message.get_channel_name(),
                            message.get_payload_bytes(),
                        ) {
                            tracing::trace!(%error, "skipped a live message");
                        }
                    }
                    None => {
                        return BrokerError::Unavailable {
                            operation: "receive live messages",
                            source: redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "the subscription connection closed",
                            )),
                        };
                    }
                },
                _ = health.tick() => {
                    // Any reply means the link is alive: subscribed RESP2 connections answer
                    // `["pong", ""]`, RESP3 ones `PONG`.
                    match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(source)) => {
                            return BrokerError::Unavailable { operation: "PING the subscription", source };
                        }
                        Err(_) => {
                            return BrokerError::Timeout { operation: "PING the subscription", after: timeout };
                        }
                    }
                }
            }
        }
    }

    async fn subscribe(&self, channels: &[String]) -> Result<redis::aio::PubSub, BrokerError> {
        const OPERATION: &str = "subscribe";
        // For a sentinel target: the primary named now (its own errors carry their cause).
        let client = self.target.client(self.config.command_timeout).await?;
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channels).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.config.command_timeout, attempt).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(source)) => Err(BrokerError::from_redis(OPERATION, source)),
            Err(_) => Err(BrokerError::Timeout {
                operation: OPERATION,
                after: self.config.command_timeout,
            }),
        }
    }
}

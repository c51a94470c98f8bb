//! The Redis broker: one pub/sub connection subscribed to every served region's channel, and
//! one multiplexed connection for API publishes.
//!
//! The subscriber loop owns the link's life cycle: connect → `SUBSCRIBE` all channels →
//! [`BrokerState::Ready`] → feed every message to [`Ingest`] → on loss, [`BrokerState::Down`],
//! wait a capped, jittered backoff, and start over. Each transition is logged once and counted
//! in `notify_broker_reconnects_total`; the state is published on a watch channel that
//! `/readyz` reads, so a gateway that lost Redis stops reporting ready instead of silently
//! delivering nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use notify_proto::Notification;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BrokerError, BrokerState, PublishReceipt};
use crate::backoff::Backoff;
use crate::ingest::Ingest;

/// Settings for [`RedisBroker::start`].
#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Limit for connecting and for each command.
    pub command_timeout: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
}

impl RedisBrokerConfig {
    /// Defaults: 2 s command timeout, backoff from 100 ms to 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        RedisBrokerConfig {
            url: url.into(),
            command_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
        }
    }
}

/// Redis pub/sub broker. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RedisBroker {
    client: redis::Client,
    config: RedisBrokerConfig,
    channel_prefix: String,
    /// Cached publish connection; cleared on error so the next publish reconnects.
    publisher: Mutex<Option<MultiplexedConnection>>,
    state: watch::Receiver<BrokerState>,
}

impl RedisBroker {
    /// Validates the URL and spawns the subscriber loop feeding `ingest`. Returns at once; the
    /// state is [`BrokerState::Connecting`] until the first subscription succeeds. The loop ends
    /// when `shutdown` is cancelled.
    pub fn start<T>(
        config: RedisBrokerConfig,
        ingest: Arc<Ingest<T>>,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), BrokerError>
    where
        T: From<String> + Clone + Send + Sync + 'static,
    {
        let client =
            redis::Client::open(config.url.as_str()).map_err(|source| BrokerError::InvalidUrl {
                url: config.url.clone(),
                source,
            })?;
        let (state_sender, state) = watch::channel(BrokerState::Connecting);
        let channel_prefix = ingest.channels().prefix().to_owned();
        let subscriber = Subscriber {
            client: client.clone(),
            config: config.clone(),
            ingest,
            state: state_sender,
        };
        let task = tokio::spawn(subscriber.run(shutdown));
        let broker = RedisBroker {
            client,
            config,
            channel_prefix,
            publisher: Mutex::new(None),
            state,
        };
        Ok((broker, task))
    }

    /// Current state of the subscription.
    pub fn state(&self) -> BrokerState {
        *self.state.borrow()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    /// `PUBLISH {prefix}{REGION} <canonical json>`; the receipt carries Redis's subscriber
    /// count.
    pub async fn publish(
        &self,
        notification: &Notification,
    ) -> Result<PublishReceipt, BrokerError> {
        let channel = format!("{}{}", self.channel_prefix, notification.region);
        let payload = notification.to_json();
        let mut connection = self.publish_connection().await?;
        let reply = tokio::time::timeout(
            self.config.command_timeout,
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async::<u64>(&mut connection),
        )
        .await;
        match reply {
            Ok(Ok(subscribers)) => Ok(PublishReceipt {
                subscribers,
                id: notification.id.clone(),
            }),
            Ok(Err(error)) => {
                self.forget_publish_connection();
                Err(BrokerError::Unavailable(error.to_string()))
            }
            Err(_) => {
                self.forget_publish_connection();
                Err(BrokerError::Unavailable(format!(
                    "PUBLISH timed out after {:?}",
                    self.config.command_timeout
                )))
            }
        }
    }

    async fn publish_connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        if let Some(connection) = self.cached_publish_connection() {
            return Ok(connection);
        }
        let connection = tokio::time::timeout(
            self.config.command_timeout,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| BrokerError::Unavailable("connect timed out".into()))?
        .map_err(|error| BrokerError::Unavailable(error.to_string()))?;
        if let Ok(mut cached) = self.publisher.lock() {
            *cached = Some(connection.clone());
        }
        Ok(connection)
    }

    fn cached_publish_connection(&self) -> Option<MultiplexedConnection> {
        self.publisher.lock().ok()?.clone()
    }

    fn forget_publish_connection(&self) {
        if let Ok(mut cached) = self.publisher.lock() {
            *cached = None;
        }
    }
}

/// The subscriber loop's state.
struct Subscriber<T> {
    client: redis::Client,
    config: RedisBrokerConfig,
    ingest: Arc<Ingest<T>>,
    state: watch::Sender<BrokerState>,
}

impl<T> Subscriber<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    async fn run(self, shutdown: CancellationToken) {
        let channels: Vec<String> = self
            .ingest
            .hub()
            .regions()
            .into_iter()
            .map(|region| self.ingest.channels().channel(region))
            .collect();
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
        loop {
            match self.subscribe(&channels).await {
                Ok(pubsub) => {
                    backoff.reset();
                    self.set_state(BrokerState::Ready);
                    tracing::info!(channels = channels.len(), "subscribed to Redis");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(message) => {
                                    // Bad payloads are counted and logged inside ingest.
                                    let _ = self.ingest.channel_message(
                                        message.get_channel_name(),
                                        message.get_payload_bytes(),
                                    );
                                }
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("Redis subscription lost; reconnecting");
                }
                Err(error) => {
                    tracing::warn!(%error, attempt = backoff.attempts() + 1, "cannot subscribe to Redis");
                }
            }
            if *self.state.borrow() == BrokerState::Ready {
                metrics::counter!("notify_broker_reconnects_total").increment(1);
            }
            self.set_state(BrokerState::Down);
            let delay = backoff.next_delay();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn subscribe(&self, channels: &[String]) -> Result<redis::aio::PubSub, String> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channels).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.config.command_timeout, attempt).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("timed out after {:?}", self.config.command_timeout)),
        }
    }

    fn set_state(&self, state: BrokerState) {
        let previous = self.state.send_replace(state);
        if previous != state {
            tracing::info!(
                from = previous.as_str(),
                to = state.as_str(),
                "Redis broker state changed"
            );
            metrics::gauge!("notify_broker_ready").set(if state == BrokerState::Ready {
                1.0
            } else {
                0.0
            });
        }
    }
}

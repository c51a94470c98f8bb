//! Brokers: where notifications come from, and where API publishes go.
//!
//! - [`redis::RedisBroker`]: Redis pub/sub, for several gateway nodes behind a load balancer.
//!   Subscribes the served regions' channels, reconnects with capped exponential backoff and
//!   jitter, resubscribes, logs every state change and exposes its [`BrokerState`].
//! - [`embedded::EmbeddedBroker`]: in-process, for a single node with no Redis at all.
//!
//! Both feed the same [`Ingest`](crate::ingest::Ingest) path, so a message is validated,
//! counted and fanned out identically whichever broker carried it. Both count every resume they
//! serve in `notify_resumes_total{source="memory|stream|resync"}`, and both replay in bounded
//! pages ([`replay`]).

pub mod embedded;
pub mod redis;
pub mod replay;

use notify_proto::{Notification, Reach, StreamId};

pub use self::embedded::EmbeddedBroker;
pub use self::redis::{BrokerError, RedisBroker, RedisBrokerConfig};
pub use self::replay::{ReplayCursor, ReplayStep, REPLAY_PAGE};

/// Connection state of a broker, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Starting: not yet subscribed.
    Connecting,
    /// Subscribed to every served region; messages flow.
    Ready,
    /// The link was lost; reconnecting with backoff.
    Down,
}

impl BrokerState {
    /// Lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Connecting => "connecting",
            BrokerState::Ready => "ready",
            BrokerState::Down => "down",
        }
    }
}

/// What a publish achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    /// Redis: the `PUBLISH` reply, [`Reach::GatewayNodes`] (subscribed gateway connections).
    /// Embedded: [`Reach::Clients`], the local clients the message was queued for.
    pub reach: Reach,
    /// The message's history id, when the broker recorded one.
    pub id: Option<StreamId>,
}

/// Which path served a resume, for `notify_resumes_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeSource {
    /// The in-memory history covered it.
    Memory,
    /// The region's Redis stream covered it.
    Stream,
    /// Nothing covered it: the client gets a `resync`.
    Resync,
}

impl ResumeSource {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeSource::Memory => "memory",
            ResumeSource::Stream => "stream",
            ResumeSource::Resync => "resync",
        }
    }
}

/// Counts one resume served by `source` in `notify_resumes_total{source}`.
pub(crate) fn count_resume(source: ResumeSource) {
    metrics::counter!("notify_resumes_total", "source" => source.as_str()).increment(1);
}

/// A configured broker.
#[derive(Debug)]
pub enum Broker<T> {
    /// In-process, single node.
    Embedded(EmbeddedBroker<T>),
    /// Redis pub/sub.
    Redis(Box<RedisBroker<T>>),
}

impl<T> Broker<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Publishes a valid notification so that every gateway node delivers it.
    pub async fn publish(
        &self,
        notification: &Notification,
    ) -> Result<PublishReceipt, BrokerError> {
        match self {
            Broker::Embedded(broker) => Ok(broker.publish(notification)),
            Broker::Redis(broker) => broker.publish(notification).await,
        }
    }

    /// Begins the replay of `region` after `since` for a client already subscribed to it.
    pub fn start_replay(&self, region: notify_proto::Region, since: StreamId) -> ReplayCursor {
        let ingest = match self {
            Broker::Embedded(broker) => broker.ingest(),
            Broker::Redis(broker) => broker.ingest(),
        };
        ReplayCursor::new(ingest, region, since)
    }

    /// The next page of `cursor`'s replay (see [`replay`]).
    pub async fn replay_step(
        &self,
        cursor: &mut ReplayCursor,
    ) -> Result<ReplayStep<T>, BrokerError> {
        match self {
            Broker::Embedded(broker) => Ok(broker.replay_step(cursor)),
            Broker::Redis(broker) => broker.replay_step(cursor).await,
        }
    }

    /// Current state.
    pub fn state(&self) -> BrokerState {
        match self {
            Broker::Embedded(_) => BrokerState::Ready,
            Broker::Redis(broker) => broker.state(),
        }
    }

    /// `"embedded"` or `"redis"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Embedded(_) => "embedded",
            Broker::Redis(_) => "redis",
        }
    }
}

//! The Redis broker: a capped stream per region (`{prefix}{REGION}:stream`) that issues every
//! message id, a pub/sub channel per region for live messages, and the gateway's two links to
//! them.
//!
//! # Which ids the gateway trusts
//! Only ids issued by the region's stream. [`PUBLISH_SCRIPT`] `XADD`s each message and then
//! `PUBLISH`es it with the new id spliced in; the gateway delivers id-carrying messages from
//! the stream itself ([`stream_follower`]) and keeps pub/sub for id-less live messages (the
//! seed's plain `PUBLISH`). A live message that carries an id is held until the stream settles
//! it: ours (dropped, the stream delivered it) or foreign (delivered without its id, counted).
//! The high-water mark and the history only ever move on stream-issued ids.
//!
//! # Layout
//! - [`scripts`]: the Lua scripts (publish; read streams with coverage facts).
//! - [`publisher`]: publish commands for one notification.
//! - [`commands`]: the shared, self-healing connection for publishes and history reads.
//! - [`stream_reader`]: reading streams after ids, decoding entries into frames.
//! - [`coverage`]: whether a stream still holds everything after an id.
//! - [`stream_follower`]: the `XREAD BLOCK` loop delivering stream entries; catch-up, gaps,
//!   ids going backwards.
//! - [`subscriber`]: the pub/sub loop for live messages, with its `PING` health check.
//! - [`links`]: readiness from both links.
//! - [`connection_names`]: how each connection shows in `CLIENT LIST`.
//! - [`error`]: the typed [`BrokerError`].
//! - [`url`]: [`redact_url`], for logs.

mod commands;
pub mod connection_names;
pub mod coverage;
pub mod error;
mod links;
pub mod publisher;
pub mod scripts;
mod stream_follower;
mod stream_reader;
mod subscriber;
pub mod url;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use notify_proto::{Notification, Region, StreamId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::error::BrokerError;
pub use self::publisher::publish_command;
pub use self::scripts::{publish_script, PUBLISH_SCRIPT, READ_SCRIPT};
pub use self::url::redact_url;

use self::commands::CommandConnection;
use self::links::Links;
use self::stream_follower::StreamFollower;
use self::stream_reader::StreamReader;
use self::subscriber::Subscriber;
use super::{count_resume, BrokerState, PublishReceipt, Replay, ResumeSource};
use crate::history::Lookup;
use crate::ingest::Ingest;

/// Default retention of each region's stream, in messages.
pub const DEFAULT_RETENTION: usize = 10_000;

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
    /// Approximate length each region's stream is trimmed to on publish.
    pub retention: usize,
    /// How often the subscription connection is checked with `PING`.
    pub ping_interval: Duration,
}

impl RedisBrokerConfig {
    /// Defaults: 2 s command timeout, backoff from 100 ms to 5 s, [`DEFAULT_RETENTION`], a
    /// `PING` on the subscription every 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        RedisBrokerConfig {
            url: url.into(),
            command_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            retention: DEFAULT_RETENTION,
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Redis pub/sub broker with stream-backed history.
#[derive(Debug)]
pub struct RedisBroker<T> {
    ingest: Arc<Ingest<T>>,
    retention: usize,
    commands: CommandConnection,
    reader: StreamReader<T>,
    state: watch::Receiver<BrokerState>,
    publish_script: redis::Script,
}

impl<T> RedisBroker<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Validates the URL and spawns the subscriber and the stream follower feeding `ingest`.
    /// Returns at once; the state is [`BrokerState::Connecting`] until both links are up. The
    /// task ends when `shutdown` is cancelled.
    pub fn start(
        config: RedisBrokerConfig,
        ingest: Arc<Ingest<T>>,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), BrokerError> {
        let client =
            redis::Client::open(config.url.as_str()).map_err(|source| BrokerError::InvalidUrl {
                url: redact_url(&config.url),
                source,
            })?;
        let (links, state) = Links::new();
        let links = Arc::new(links);
        let reader = StreamReader::new(Arc::clone(&ingest));
        let subscriber = Subscriber {
            client: client.clone(),
            config: config.clone(),
            ingest: Arc::clone(&ingest),
            links: Arc::clone(&links),
        };
        let follower = StreamFollower {
            client: client.clone(),
            config: config.clone(),
            ingest: Arc::clone(&ingest),
            reader: reader.clone(),
            links,
            positions: HashMap::new(),
        };
        let task = tokio::spawn(async move {
            tokio::join!(subscriber.run(shutdown.clone()), follower.run(shutdown));
        });
        let broker = RedisBroker {
            ingest,
            retention: config.retention,
            commands: CommandConnection::new(client, config.command_timeout),
            reader,
            state,
            publish_script: publish_script(),
        };
        Ok((broker, task))
    }

    /// Current state of the links.
    pub fn state(&self) -> BrokerState {
        *self.state.borrow()
    }

    /// Records and publishes with [`PUBLISH_SCRIPT`]; the receipt carries the new id and
    /// Redis's subscriber count (gateway nodes).
    pub async fn publish(
        &self,
        notification: &Notification,
    ) -> Result<PublishReceipt, BrokerError> {
        publisher::publish(
            &self.commands,
            &self.publish_script,
            self.ingest.channels(),
            notification,
            self.retention,
        )
        .await
    }

    /// Messages of `region` after `since`: from memory when it covers them, else from the
    /// region's stream when the stream covers them (see [`coverage`]), else a resync.
    pub async fn replay(&self, region: Region, since: StreamId) -> Result<Replay<T>, BrokerError> {
        if let Lookup::Entries(entries) = self.ingest.replay_from_memory(region, since) {
            count_resume(ResumeSource::Memory);
            return Ok(Replay::Entries(entries));
        }
        // Pages of at most this many entries; a replay holds at most the stream's length.
        let page = self.retention.clamp(100, 1000);
        let mut entries = Vec::new();
        let mut cursor = since;
        loop {
            let read = self.read_region(region, cursor, page).await?;
            // Every page is judged on its own start: a stream trimmed past the cursor between
            // two pages is a gap too.
            if let Some(gap) = read.facts.gap(cursor) {
                count_resume(ResumeSource::Resync);
                return Ok(Replay::Resync {
                    latest: read.facts.last_generated,
                    reason: gap.reason(),
                });
            }
            entries.extend(read.entries);
            match read.last_read {
                Some(last) if read.full => cursor = last,
                _ => break,
            }
        }
        count_resume(ResumeSource::Stream);
        Ok(Replay::Entries(entries))
    }

    /// One read of `region`'s stream after `since`, on the command connection.
    async fn read_region(
        &self,
        region: Region,
        since: StreamId,
        limit: usize,
    ) -> Result<stream_reader::RegionRead<T>, BrokerError> {
        const OPERATION: &str = "read history";
        let reader = self.reader.clone();
        let reads = self
            .commands
            .run(OPERATION, |mut connection| async move {
                reader
                    .read(&mut connection, &[(region, since)], limit)
                    .await
            })
            .await?;
        reads
            .into_iter()
            .next()
            .ok_or_else(|| BrokerError::BadReply {
                operation: OPERATION,
                source: redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "no result for the region",
                )),
            })
    }
}

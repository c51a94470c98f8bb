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
//! - [`target`]: one Redis or a cluster ([`cluster`]: seeds, the sharded subscription), and
//!   how connections to it are made; [`connection`]: a connection to either.
//! - [`scripts`]: the Lua scripts (publish; read streams with coverage facts).
//! - [`publisher`]: publish commands for one notification.
//! - [`commands`]: the self-healing command connections: one for publishes, one for replays'
//!   history reads.
//! - [`stream_reader`]: reading streams after ids, decoding entries into frames.
//! - [`coverage`]: whether a stream still holds everything after an id.
//! - [`stream_follower`]: the `XREAD BLOCK` loop delivering stream entries; catch-up, gaps,
//!   ids going backwards.
//! - [`subscriber`]: the pub/sub loop for live messages, with its `PING` health check (one
//!   Redis; a cluster's is [`cluster::subscriber`]).
//! - [`wakeups`]: in a cluster, which regions' shards published (wakes the follower).
//! - [`links`]: readiness from both links.
//! - [`connection_names`]: how each connection shows in `CLIENT LIST`.
//! - [`error`]: the typed [`BrokerError`].
//! - [`target`]: where connections go — one server, or the primary the sentinels name
//!   (`redis+sentinel://`), asked again at every connect and checked with `ROLE`.
//! - [`sentinel_url`]: the `redis+sentinel://` URL's spelling.
//! - [`tls`]: the client for a URL, `rediss://` with a private CA and a client certificate.
//! - [`url`]: [`redact_url`], for logs.

pub mod cluster;
mod commands;
pub mod connection;
pub mod connection_names;
pub mod coverage;
pub mod error;
mod links;
pub mod publisher;
pub mod scripts;
pub mod sentinel_url;
mod stream_follower;
mod stream_reader;
mod subscriber;
pub mod target;
pub mod tls;
pub mod url;
mod wakeups;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use notify_proto::{KeyLayout, Notification, Region, StreamId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::cluster::ClusterSeeds;
pub use self::connection::RedisConnection;
pub use self::error::BrokerError;
pub use self::publisher::publish_command;
pub use self::scripts::{publish_script, PUBLISH_SCRIPT, READ_SCRIPT, SHARDED_PUBLISH_SCRIPT};
pub use self::target::RedisTarget;
pub use self::tls::{redis_client, ClientIdentity, RedisTls};
pub use self::url::{read_url_file, redact_url, split_seeds, suggest_redis_url, UrlFileError};

use self::cluster::subscriber::ShardedSubscriber;
use self::commands::CommandConnection;
use self::coverage::Gap;
use self::links::Links;
use self::stream_follower::StreamFollower;
use self::stream_reader::StreamReader;
use self::subscriber::Subscriber;
use self::wakeups::Wakeups;
use super::replay::{ReplayCursor, ReplayStep};
use super::{BrokerState, PublishReceipt, ResumeSource};
use crate::ingest::Ingest;

/// Most entries one replay reads from a stream at once. Smaller than a memory page: each
/// read's reply waits in Redis's output buffer (and its Lua heap) until the gateway takes it,
/// so the replay budget times this (at 2 KB entries: 64 × 128 KiB = 8 MiB by default) bounds
/// what a resume storm costs Redis.
pub const STREAM_PAGE: usize = 64;

/// Default retention of each region's stream, in messages.
pub const DEFAULT_RETENTION: usize = 10_000;

/// Settings for [`RedisBroker::start`].
#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (see [`tls`](Self::tls)),
    /// or `redis+sentinel[s]://…/MASTER_NAME` (see [`sentinel_url`]); for a cluster, the seed
    /// nodes' URLs, comma-separated.
    pub url: String,
    /// Whether `url` names a Redis Cluster (hash-tagged names, sharded pub/sub).
    pub cluster: bool,
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
    /// CA and client certificate for a `rediss://` URL.
    pub tls: RedisTls,
    /// Cluster only: most live messages received and not yet handled; a burst past it makes
    /// the subscription again (id-carrying messages still arrive through the streams)
    /// instead of growing memory. Default [`cluster::PUSH_QUEUE`].
    pub push_queue: usize,
}

impl RedisBrokerConfig {
    /// Defaults: 2 s command timeout, backoff from 100 ms to 5 s, [`DEFAULT_RETENTION`], a
    /// `PING` on the subscription every 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        RedisBrokerConfig {
            url: url.into(),
            cluster: false,
            command_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            retention: DEFAULT_RETENTION,
            ping_interval: Duration::from_secs(5),
            tls: RedisTls::default(),
            push_queue: cluster::PUSH_QUEUE,
        }
    }
}

/// Redis pub/sub broker with stream-backed history.
#[derive(Debug)]
pub struct RedisBroker<T> {
    ingest: Arc<Ingest<T>>,
    retention: usize,
    /// Publishes.
    commands: CommandConnection,
    /// Replays' history reads, apart from publishes: a resume storm queues behind its own
    /// replies, never in front of a publish.
    replays: CommandConnection,
    reader: StreamReader<T>,
    state: watch::Receiver<BrokerState>,
    publish_script: redis::Script,
}

impl<T> RedisBroker<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Validates the URL and spawns the subscriber and the stream follower feeding `ingest`
    /// (whose [`ChannelNames`](notify_proto::ChannelNames) must follow the same layout:
    /// hash-tagged with `config.cluster`).
    /// Returns at once; the state is [`BrokerState::Connecting`] until both links are up. The
    /// task ends when `shutdown` is cancelled.
    pub fn start(
        config: RedisBrokerConfig,
        ingest: Arc<Ingest<T>>,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), BrokerError> {
        let layout = KeyLayout::for_cluster(config.cluster);
        debug_assert_eq!(
            ingest.channels().layout(),
            layout,
            "names and target disagree"
        );
        let target = RedisTarget::new(&config.url, &config.tls, layout)?;
        let (links, state) = Links::new();
        let links = Arc::new(links);
        let reader = StreamReader::new(Arc::clone(&ingest));
        let wakeups = Arc::new(Wakeups::default());
        let follower = StreamFollower {
            target: target.clone(),
            config: config.clone(),
            wakeups: Arc::clone(&wakeups),
            ingest: Arc::clone(&ingest),
            reader: reader.clone(),
            links: Arc::clone(&links),
            positions: HashMap::new(),
        };
        let task = match &target {
            RedisTarget::Single(_) | RedisTarget::Sentinel(_) => {
                let subscriber = Subscriber {
                    target: target.clone(),
                    config: config.clone(),
                    ingest: Arc::clone(&ingest),
                    links,
                };
                tokio::spawn(async move {
                    tokio::join!(subscriber.run(shutdown.clone()), follower.run(shutdown));
                })
            }
            RedisTarget::Cluster(seeds) => {
                let subscriber = ShardedSubscriber {
                    seeds: seeds.clone(),
                    config: config.clone(),
                    ingest: Arc::clone(&ingest),
                    links,
                    wakeups,
                };
                tokio::spawn(async move {
                    tokio::join!(subscriber.run(shutdown.clone()), follower.run(shutdown));
                })
            }
        };
        let broker = RedisBroker {
            ingest,
            retention: config.retention,
            commands: CommandConnection::new(
                target.clone(),
                config.command_timeout,
                connection_names::COMMANDS,
            ),
            replays: CommandConnection::new(
                target,
                config.command_timeout,
                connection_names::REPLAYS,
            ),
            reader,
            state,
            publish_script: publish_script(layout),
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

    /// The ingest path it feeds.
    pub fn ingest(&self) -> &Ingest<T> {
        &self.ingest
    }

    /// The next page of `cursor`'s replay: from memory when it covers the cursor, else from
    /// the region's stream when the stream covers it (see [`coverage`]), else a resync. One
    /// page is one bounded read (`XRANGE … COUNT` [`REPLAY_PAGE`](super::REPLAY_PAGE)), so a
    /// replay costs Redis one page's reply at a time.
    pub async fn replay_step(
        &self,
        cursor: &mut ReplayCursor,
    ) -> Result<ReplayStep<T>, BrokerError> {
        if cursor.finished() {
            return Ok(ReplayStep::Done);
        }
        if let Some(step) = cursor.memory_page(&self.ingest) {
            return Ok(step);
        }
        let position = cursor.position();
        let read = self
            .read_region(cursor.region(), position, STREAM_PAGE)
            .await?;
        // Every page is judged on its own start: a stream trimmed past the cursor between two
        // pages is a gap too.
        if let Some(gap) = read.facts.gap(position) {
            return Ok(cursor.resync(read.facts.last_generated, gap.reason()));
        }
        // Ids below the newest one delivered when the replay began: Redis lost its data and
        // the follower has not announced the new epoch yet. These ids may repeat old ones.
        if cursor
            .origin_newest()
            .is_some_and(|newest| read.facts.went_back_from(newest))
        {
            return Ok(cursor.resync(read.facts.last_generated, Gap::Reset.reason()));
        }
        cursor.count(ResumeSource::Stream);
        Ok(cursor.take_page(read.entries, read.last_read, read.full))
    }

    /// One read of `region`'s stream after `since`, on the replay connection. The timeout
    /// bounds the Redis round trip; the entries are decoded after it.
    async fn read_region(
        &self,
        region: Region,
        since: StreamId,
        limit: usize,
    ) -> Result<stream_reader::RegionRead<T>, BrokerError> {
        const OPERATION: &str = "read history";
        let reader = self.reader.clone();
        let positions = [(region, since)];
        let replies = self
            .replays
            .run(OPERATION, |mut connection| async move {
                reader.fetch(&mut connection, &positions, limit).await
            })
            .await?;
        self.reader
            .decode(&positions, limit, replies)
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

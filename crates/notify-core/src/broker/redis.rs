//! The Redis broker: one pub/sub connection subscribed to every served region's channel, one
//! multiplexed connection for publishes and history reads, and a capped stream per region
//! (`{prefix}{REGION}:stream`) that makes delivery recoverable.
//!
//! # Publishing
//! [`PUBLISH_SCRIPT`] runs atomically in Redis: `XADD` the payload to the region's stream
//! (`MAXLEN ~ retention`), then `PUBLISH` it with the new entry id spliced in as the first
//! field, `{"id":"1700000000000-0",...}`. Every node sees the same id for the same message.
//! A plain `PUBLISH` without an id (the seed's PHP publisher) is still delivered live, but it
//! is not in any stream and cannot be recovered.
//!
//! # The subscriber loop
//! connect → `SUBSCRIBE` every channel → catch up: for each region read the stream after the
//! last id delivered (or after the stream's end as of the first subscription) and deliver what
//! was missed → [`BrokerState::Ready`] → deliver live messages. Live messages that arrive during
//! the catch-up wait in the connection's buffer and are deduplicated by id in
//! [`Ingest`]. On loss: [`BrokerState::Down`], a capped, jittered backoff, and over again. Each
//! transition is logged once and counted in `notify_broker_reconnects_total`; `/readyz` reads
//! the state, so a gateway that lost Redis stops reporting ready instead of silently
//! delivering nothing. The subscription connection is also checked with `PING` every
//! `ping_interval`: a link that died without closing (a partition, a frozen server) is noticed
//! within `ping_interval + command_timeout` instead of never.
//!
//! When the outage outlasted the retained history, the region's clients get an explicit
//! `resync` control message: never a silent gap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use notify_proto::{ControlMessage, Notification, Region, StreamId};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::redis_tls::{redis_client, RedisTls};
use super::{BrokerError, BrokerState, PublishReceipt, Replay};
use crate::backoff::Backoff;
use crate::history::Lookup;
use crate::ingest::Ingest;

/// Atomically records a notification in its region's stream and publishes it with its id.
///
/// `KEYS[1]` stream key; `ARGV[1]` channel; `ARGV[2]` the notification as a JSON object
/// without `id`; `ARGV[3]` retention (approximate `MAXLEN`). Returns `{id, subscribers}`.
pub const PUBLISH_SCRIPT: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'payload', ARGV[2])
local message = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
return {id, redis.call('PUBLISH', ARGV[1], message)}
"#;

/// Reads a region's stream after an id, with what is needed to tell whether anything after it
/// was trimmed or lost.
///
/// `KEYS[1]` stream key; `ARGV[1]` exclusive start id; `ARGV[2]` most entries (0: none).
/// Returns `{last_generated_id, max_deleted_entry_id, first_entry_id, entries}`; the ids are
/// empty strings when the stream does not exist.
pub const REPLAY_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', '', '', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted, first = '', '', ''
for i = 1, #info, 2 do
  local key = info[i]
  if key == 'last-generated-id' then last = info[i + 1]
  elseif key == 'max-deleted-entry-id' then deleted = info[i + 1]
  elseif key == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {last, deleted, first, entries}
"#;

/// `redis://user:secret@host` → `redis://user:***@host`: a URL fit for logs and error
/// messages. The user information ends at the last `@` before any `?` or `#`, since a password
/// may hold `/` or `@` (a host holds neither); over-masking a path with an `@` is the safe side.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let searched_end = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..searched_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Default retention of each region's stream, in messages.
pub const DEFAULT_RETENTION: usize = 10_000;

/// The `EVALSHA` of [`PUBLISH_SCRIPT`] for one notification, for callers that pipeline many
/// (load the script first with [`publish_script`]`().load_async`).
pub fn publish_command(
    script: &redis::Script,
    stream_key: &str,
    channel: &str,
    notification: &Notification,
    retention: usize,
) -> redis::Cmd {
    let (payload, retention) = publish_arguments(notification, retention);
    let mut command = redis::cmd("EVALSHA");
    command
        .arg(script.get_hash())
        .arg(1)
        .arg(stream_key)
        .arg(channel)
        .arg(payload)
        .arg(retention);
    command
}

/// The script's payload (the notification without `id`: the script adds the new one) and its
/// retention argument (at least 1).
fn publish_arguments(notification: &Notification, retention: usize) -> (String, usize) {
    let mut without_id = notification.clone();
    without_id.id = None;
    (without_id.to_json(), retention.max(1))
}

/// [`PUBLISH_SCRIPT`] as a [`redis::Script`].
pub fn publish_script() -> redis::Script {
    redis::Script::new(PUBLISH_SCRIPT)
}

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
    /// CA and client certificate for a `rediss://` URL.
    pub tls: RedisTls,
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
            tls: RedisTls::default(),
        }
    }
}

/// Redis pub/sub broker with stream-backed history.
#[derive(Debug)]
pub struct RedisBroker<T> {
    streams: StreamReader<T>,
    state: watch::Receiver<BrokerState>,
    publish_script: redis::Script,
}

impl<T> RedisBroker<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Validates the URL and spawns the subscriber loop feeding `ingest`. Returns at once; the
    /// state is [`BrokerState::Connecting`] until the first subscription and catch-up succeed.
    /// The loop ends when `shutdown` is cancelled.
    pub fn start(
        config: RedisBrokerConfig,
        ingest: Arc<Ingest<T>>,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), BrokerError> {
        let client = redis_client(&config.url, &config.tls)?;
        let (state_sender, state) = watch::channel(BrokerState::Connecting);
        let streams = StreamReader {
            client: client.clone(),
            config: config.clone(),
            ingest: Arc::clone(&ingest),
            connection: Arc::new(Mutex::new(None)),
            replay_script: redis::Script::new(REPLAY_SCRIPT),
        };
        let subscriber = Subscriber {
            client,
            config: config.clone(),
            ingest,
            streams: streams.clone(),
            state: state_sender,
            positions: HashMap::new(),
        };
        let task = tokio::spawn(subscriber.run(shutdown));
        let broker = RedisBroker {
            streams,
            state,
            publish_script: publish_script(),
        };
        Ok((broker, task))
    }

    /// Current state of the subscription.
    pub fn state(&self) -> BrokerState {
        *self.state.borrow()
    }

    /// Records and publishes with [`PUBLISH_SCRIPT`]; the receipt carries the new id and
    /// Redis's subscriber count (gateway nodes).
    pub async fn publish(
        &self,
        notification: &Notification,
    ) -> Result<PublishReceipt, BrokerError> {
        let channels = self.streams.ingest.channels();
        let region = notification.region;
        let (payload, retention) = publish_arguments(notification, self.streams.config.retention);
        let mut invocation = self.publish_script.key(channels.stream_key(region));
        invocation
            .arg(channels.channel(region))
            .arg(payload)
            .arg(retention);
        let (id, subscribers): (String, u64) = self
            .streams
            .command(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let id =
            StreamId::parse(&id).map_err(|error| BrokerError::Unavailable(error.to_string()))?;
        Ok(PublishReceipt {
            subscribers,
            id: Some(id),
        })
    }

    /// Messages of `region` after `since`: from memory when it covers them, else from the
    /// region's stream.
    pub async fn replay(&self, region: Region, since: StreamId) -> Result<Replay<T>, BrokerError> {
        if let Lookup::Entries(entries) = self.streams.ingest.replay_from_memory(region, since) {
            return Ok(Replay::Entries(entries));
        }
        let read = self.streams.read_after(region, since, usize::MAX).await?;
        Ok(read.into_replay(since))
    }
}

/// What [`REPLAY_SCRIPT`] found.
#[derive(Debug)]
struct StreamRead<T> {
    last_generated: Option<StreamId>,
    max_deleted: Option<StreamId>,
    first_entry: Option<StreamId>,
    entries: Vec<(StreamId, T)>,
}

impl<T> StreamRead<T> {
    /// Whether every message after `since` is still in the stream.
    fn gap_reason(&self, since: StreamId) -> Option<&'static str> {
        let Some(last) = self.last_generated else {
            return Some("there is no history for this region");
        };
        if since > last {
            return Some("since is newer than the region's history (it was reset)");
        }
        let max_deleted = self.max_deleted.filter(|id| *id != StreamId::ZERO);
        if since == StreamId::ZERO && max_deleted.is_none() {
            // From the very beginning, and nothing was ever trimmed: all of it is there.
            return None;
        }
        let lower_bound = match (max_deleted, self.first_entry) {
            (Some(deleted), _) => deleted,
            (None, Some(first)) => first,
            // Nothing deleted and nothing held: everything up to `last` is still "after since"
            // only if since is `last` itself.
            (None, None) => last,
        };
        (since < lower_bound).then_some("since is older than the retained history")
    }

    fn into_replay(self, since: StreamId) -> Replay<T> {
        match self.gap_reason(since) {
            Some(reason) => Replay::Resync {
                latest: self.last_generated,
                reason,
            },
            None => Replay::Entries(self.entries),
        }
    }
}

/// Reads region streams on a shared multiplexed connection.
#[derive(Debug)]
struct StreamReader<T> {
    client: redis::Client,
    config: RedisBrokerConfig,
    ingest: Arc<Ingest<T>>,
    /// Cached command connection; cleared on error so the next command reconnects.
    connection: Arc<Mutex<Option<MultiplexedConnection>>>,
    replay_script: redis::Script,
}

impl<T> Clone for StreamReader<T> {
    fn clone(&self) -> Self {
        StreamReader {
            client: self.client.clone(),
            config: self.config.clone(),
            ingest: Arc::clone(&self.ingest),
            connection: Arc::clone(&self.connection),
            replay_script: self.replay_script.clone(),
        }
    }
}

impl<T> StreamReader<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Runs one command on the cached connection with the command timeout.
    async fn command<R, F, Fut>(&self, run: F) -> Result<R, BrokerError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<R>>,
    {
        let timeout = self.config.command_timeout;
        let connection = self.connection().await?;
        match tokio::time::timeout(timeout, run(connection)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => {
                if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
                    self.forget_connection();
                }
                Err(BrokerError::Unavailable(error.to_string()))
            }
            Err(_) => {
                self.forget_connection();
                Err(BrokerError::Unavailable(format!(
                    "command timed out after {timeout:?}"
                )))
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        if let Some(connection) = self
            .connection
            .lock()
            .ok()
            .and_then(|cached| cached.clone())
        {
            return Ok(connection);
        }
        let connection = tokio::time::timeout(
            self.config.command_timeout,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| BrokerError::Unavailable("connect timed out".into()))?
        .map_err(|error| BrokerError::Unavailable(error.to_string()))?;
        if let Ok(mut cached) = self.connection.lock() {
            *cached = Some(connection.clone());
        }
        Ok(connection)
    }

    fn forget_connection(&self) {
        if let Ok(mut cached) = self.connection.lock() {
            *cached = None;
        }
    }

    /// Runs [`REPLAY_SCRIPT`] for `region` after `since`, decoding at most `limit` entries
    /// into frames (entries that break the contract are counted and skipped).
    async fn read_after(
        &self,
        region: Region,
        since: StreamId,
        limit: usize,
    ) -> Result<StreamRead<T>, BrokerError> {
        let stream_key = self.ingest.channels().stream_key(region);
        let count = limit.min(self.config.retention.saturating_mul(2).max(1000));
        let mut invocation = self.replay_script.key(stream_key);
        invocation.arg(since.to_string()).arg(count);
        type Reply = (
            String,
            String,
            String,
            Vec<(String, HashMap<String, Vec<u8>>)>,
        );
        let (last, deleted, first, raw_entries): Reply = self
            .command(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let parse = |text: &str| StreamId::parse(text).ok();
        let max_payload = self.ingest.max_payload_bytes();
        let mut entries = Vec::with_capacity(raw_entries.len());
        for (id, fields) in raw_entries {
            let Some(id) = parse(&id) else { continue };
            let payload = fields.get("payload").map(Vec::as_slice).unwrap_or_default();
            match Notification::from_channel_payload(payload, region, max_payload) {
                Ok(mut notification) => {
                    notification.id = Some(id);
                    entries.push((id, T::from(notification.to_json())));
                }
                Err(error) => {
                    metrics::counter!("notify_bad_payloads_total", "reason" => error.kind())
                        .increment(1);
                    tracing::warn!(%region, %id, %error, "skipped bad history entry");
                }
            }
        }
        Ok(StreamRead {
            last_generated: parse(&last),
            max_deleted: parse(&deleted),
            first_entry: parse(&first),
            entries,
        })
    }
}

/// The subscriber loop's state.
struct Subscriber<T> {
    client: redis::Client,
    config: RedisBrokerConfig,
    ingest: Arc<Ingest<T>>,
    streams: StreamReader<T>,
    state: watch::Sender<BrokerState>,
    /// Per region, the stream position as of the first subscription, used to catch up when no
    /// message was delivered since.
    positions: HashMap<Region, StreamId>,
}

impl<T> Subscriber<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    async fn run(mut self, shutdown: CancellationToken) {
        let regions = self.ingest.hub().regions();
        let channels: Vec<String> = regions
            .iter()
            .map(|region| self.ingest.channels().channel(*region))
            .collect();
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
        loop {
            let subscribed = match self.subscribe(&channels).await {
                Ok(pubsub) => match self.catch_up(&regions).await {
                    Ok(()) => Ok(pubsub),
                    Err(error) => Err(format!("catching up from the streams: {error}")),
                },
                Err(error) => Err(error),
            };
            match subscribed {
                Ok(pubsub) => {
                    backoff.reset();
                    self.set_state(BrokerState::Ready);
                    tracing::info!(channels = channels.len(), "subscribed to Redis");
                    let (mut sink, mut messages) = pubsub.split();
                    let mut health = tokio::time::interval(self.config.ping_interval);
                    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    health.reset();
                    let lost = loop {
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
                                None => break "connection closed",
                            },
                            _ = health.tick() => {
                                // A link that died without a FIN (a partition, a frozen
                                // server) would otherwise look subscribed forever.
                                let ping = sink.ping::<String>();
                                match tokio::time::timeout(self.config.command_timeout, ping).await {
                                    Ok(Ok(_)) => {}
                                    Ok(Err(_)) | Err(_) => break "no answer to PING",
                                }
                            }
                        }
                    };
                    tracing::warn!(reason = lost, "Redis subscription lost; reconnecting");
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

    /// Delivers, per region, what the streams hold after the last id delivered. On the first
    /// subscription it only notes where each stream ends.
    async fn catch_up(&mut self, regions: &[Region]) -> Result<(), BrokerError> {
        for region in regions {
            let since = match (self.ingest.last_id(*region), self.positions.get(region)) {
                (Some(delivered), Some(position)) => Some(delivered.max(*position)),
                (Some(delivered), None) => Some(delivered),
                (None, Some(position)) => Some(*position),
                (None, None) => None,
            };
            let Some(since) = since else {
                let read = self.streams.read_after(*region, StreamId::ZERO, 0).await?;
                self.positions
                    .insert(*region, read.last_generated.unwrap_or(StreamId::ZERO));
                continue;
            };
            let read = self.streams.read_after(*region, since, usize::MAX).await?;
            if let Some(reason) = read
                .gap_reason(since)
                .filter(|_| read.last_generated.is_some())
            {
                tracing::warn!(%region, %since, reason, "messages were lost during the Redis outage; telling clients to resync");
                let message = ControlMessage::Resync {
                    region: *region,
                    since,
                    latest: read.last_generated,
                    reason: "messages were missed during a broker outage longer than the retained history".into(),
                };
                self.ingest.broadcast_control(*region, &message);
            }
            let missed = read.entries.len();
            let mut delivered = 0usize;
            for (id, frame) in read.entries {
                delivered += usize::from(self.ingest.deliver_frame(*region, id, frame));
            }
            if missed > 0 {
                tracing::info!(%region, %since, missed, delivered, "caught up from the stream");
            }
            if let Some(last) = read.last_generated {
                self.positions.insert(*region, last);
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(last: u64, deleted: u64, first: Option<u64>) -> StreamRead<()> {
        StreamRead {
            last_generated: Some(StreamId::new(last, 0)),
            max_deleted: Some(StreamId::new(deleted, 0)),
            first_entry: first.map(|ms| StreamId::new(ms, 0)),
            entries: Vec::new(),
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://default:s3cret@10.0.0.1:6379/0"),
            "redis://default:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(
            redact_url("redis://:pa/ss@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(redact_url("rediss://u:a@b/c@h/0"), "rediss://u:***@h/0");
        assert_eq!(
            redact_url("https://gw:8443/api?x=@"),
            "https://gw:8443/api?x=@"
        );
        assert_eq!(redact_url("unix:/tmp/redis.sock"), "unix:/tmp/redis.sock");
    }

    #[test]
    fn gap_rules() {
        let id = |ms| StreamId::new(ms, 0);
        // Never trimmed, since inside: fine.
        assert_eq!(read(10, 0, Some(1)).gap_reason(id(5)), None);
        assert_eq!(read(10, 0, Some(1)).gap_reason(id(1)), None);
        // Never trimmed, since before the first entry: another epoch.
        assert!(read(10, 0, Some(3)).gap_reason(id(2)).is_some());
        // Trimmed through 4: since=4 is fine (nothing after it lost), since=3 is not.
        assert_eq!(read(10, 4, Some(5)).gap_reason(id(4)), None);
        assert!(read(10, 4, Some(5)).gap_reason(id(3)).is_some());
        // From the future.
        assert!(read(10, 0, Some(1)).gap_reason(id(11)).is_some());
        // From the beginning of a stream never trimmed.
        assert_eq!(read(10, 0, Some(3)).gap_reason(StreamId::ZERO), None);
        assert!(read(10, 2, Some(3)).gap_reason(StreamId::ZERO).is_some());
        // No stream.
        let missing: StreamRead<()> = StreamRead {
            last_generated: None,
            max_deleted: None,
            first_entry: None,
            entries: Vec::new(),
        };
        assert!(missing.gap_reason(id(1)).is_some());
    }
}

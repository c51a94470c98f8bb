//! The stream follower: the one path by which id-carrying messages reach clients, and so also
//! the catch-up after any outage — there is no second code path to get wrong.
//!
//! One connection of its own (named [`connection_names::STREAMS`] in `CLIENT LIST`) waits
//! with `XREAD BLOCK` on every served region's stream after the last id it delivered, and
//! reads what arrived with
//! [`READ_SCRIPT`](super::scripts::READ_SCRIPT): entries (at most [`BATCH`] per region per
//! read) together with the facts that tell whether the stream still holds everything after
//! that id. Each read ends one of three ways for a region:
//! - covered: the entries are delivered with their stream ids;
//! - a gap (the gateway was away longer than the retention): the region's clients get a
//!   `resync`, the in-memory history is cut at the gap, the retained entries are delivered;
//! - ids went backwards (Redis restarted without its data, a lagging replica promoted): the
//!   clients get a `resync`, the mark and the history are reset, and the new stream is
//!   delivered from its start.
//!
//! The block timeout ([`BLOCK`]) bounds how long the loop sleeps: at least once per block
//! period it reads every region (which notices a stream that started over even when nothing
//! new arrives, and however busy another region keeps the loop) and
//! settles the live messages held for it (see [`crate::pending`]). On the first connection
//! the follower starts at each stream's end; after a loss it reconnects with backoff and
//! resumes where it stopped. It is ready (for `/readyz`) once caught up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify_proto::{ControlMessage, Region, StreamId};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use super::commands::connect;
use super::connection_names;
use super::coverage::Gap;
use super::error::BrokerError;
use super::links::{Link, Links};
use super::stream_reader::{RegionRead, StreamReader};
use super::target::RedisTarget;
use super::RedisBrokerConfig;
use crate::backoff::Backoff;
use crate::ingest::Ingest;

/// Most entries read per region in one read.
pub const BATCH: usize = 512;

/// Longest `XREAD BLOCK`: the loop's housekeeping period.
pub const BLOCK: Duration = Duration::from_millis(1000);

/// The follower task's state.
pub(super) struct StreamFollower<T> {
    pub(super) target: RedisTarget,
    pub(super) config: RedisBrokerConfig,
    pub(super) ingest: Arc<Ingest<T>>,
    pub(super) reader: StreamReader<T>,
    pub(super) links: Arc<Links>,
    /// Per region, the last stream id delivered (or the stream's end when the follower first
    /// connected). Empty until then.
    pub(super) positions: HashMap<Region, StreamId>,
}

impl<T> StreamFollower<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// Follows the streams, reconnecting after losses, until `shutdown`.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
        loop {
            let lost = tokio::select! {
                () = shutdown.cancelled() => return,
                lost = self.follow(&mut backoff) => lost,
            };
            self.links.down(Link::Streams);
            tracing::warn!(error = %lost, attempt = backoff.attempts() + 1, "lost the Redis stream link; reconnecting");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connection's life: returns why it ended.
    async fn follow(&mut self, backoff: &mut Backoff) -> BrokerError {
        match self.follow_connected(backoff).await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn follow_connected(
        &mut self,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible, BrokerError> {
        let timeout = self.config.command_timeout;
        // No response timeout on the driver: XREAD BLOCK runs under our own, longer timer.
        let mut connection =
            connect(&self.target, timeout, None, connection_names::STREAMS).await?;
        let regions = self.ingest.hub().regions();
        if self.positions.is_empty() {
            let start: Vec<(Region, StreamId)> = regions
                .iter()
                .map(|region| (*region, StreamId::ZERO))
                .collect();
            for read in self.read(&mut connection, &start, 0).await? {
                let end = read.facts.last_generated.unwrap_or(StreamId::ZERO);
                self.positions.insert(read.region, end);
            }
        }
        self.catch_up(&mut connection, &regions).await?;
        backoff.reset();
        self.links.up(Link::Streams);
        let keys: HashMap<String, Region> = regions
            .iter()
            .map(|region| (self.ingest.channels().stream_key(*region), *region))
            .collect();
        let mut swept = Instant::now();
        loop {
            let woken = self.wait(&mut connection, &regions, &keys).await?;
            // Every region is read at least once per block period, however busy one of them
            // keeps the wait: that read settles held live messages and notices a stream that
            // started over.
            let due = if woken.is_empty() || swept.elapsed() >= BLOCK {
                swept = Instant::now();
                &regions
            } else {
                &woken
            };
            self.catch_up(&mut connection, due).await?;
        }
    }

    /// Waits up to [`BLOCK`] for a new entry in any region's stream; returns the regions that
    /// have one (none on timeout).
    async fn wait(
        &self,
        connection: &mut MultiplexedConnection,
        regions: &[Region],
        keys: &HashMap<String, Region>,
    ) -> Result<Vec<Region>, BrokerError> {
        const OPERATION: &str = "XREAD BLOCK the streams";
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for region in regions {
            command.arg(self.ingest.channels().stream_key(*region));
        }
        for region in regions {
            let position = self.positions.get(region).copied().unwrap_or_default();
            command.arg(position.to_string());
        }
        let limit = BLOCK + self.config.command_timeout;
        let reply: Option<Vec<(String, redis::Value)>> =
            match tokio::time::timeout(limit, command.query_async(connection)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(source)) => return Err(BrokerError::from_redis(OPERATION, source)),
                Err(_) => {
                    return Err(BrokerError::Timeout {
                        operation: OPERATION,
                        after: limit,
                    })
                }
            };
        Ok(reply
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, _)| keys.get(&key).copied())
            .collect())
    }

    /// Reads `regions` until each is caught up, delivering, cutting or resetting as the read
    /// says; then settles the live messages held for them.
    async fn catch_up(
        &mut self,
        connection: &mut MultiplexedConnection,
        regions: &[Region],
    ) -> Result<(), BrokerError> {
        let started = Instant::now();
        let mut due: Vec<Region> = regions.to_vec();
        let mut resynced = HashSet::new();
        while !due.is_empty() {
            let positions: Vec<(Region, StreamId)> = due
                .iter()
                .map(|region| {
                    (
                        *region,
                        self.positions.get(region).copied().unwrap_or_default(),
                    )
                })
                .collect();
            let reads = self.read(connection, &positions, BATCH).await?;
            due.clear();
            for read in reads {
                let region = read.region;
                if self.settle(read, &mut resynced) {
                    due.push(region);
                }
            }
        }
        for region in regions {
            self.ingest.expire_pending(*region, started);
        }
        Ok(())
    }

    /// Acts on one region's read; returns whether the region must be read again at once.
    fn settle(&mut self, read: RegionRead<T>, resynced: &mut HashSet<Region>) -> bool {
        let region = read.region;
        let since = read.since;
        if read.facts.went_back_from(since) {
            let gap = if read.facts.last_generated.is_some() {
                Gap::Reset
            } else {
                Gap::NoHistory
            };
            tracing::warn!(%region, %since, latest = ?read.facts.last_generated, "the region's stream started over; resetting its history");
            // Always announced, even after another resync in this catch-up: the announcement
            // begins the new epoch for clients that resumed before it.
            resynced.insert(region);
            metrics::counter!("notify_broker_resyncs_total").increment(1);
            let announcement = resync_message(region, since, read.facts.last_generated, gap);
            self.ingest.reset_region(region, &announcement);
            self.positions.insert(region, StreamId::ZERO);
            return read.facts.last_generated.is_some();
        }
        if let Some(gap) = read.facts.gap(since) {
            tracing::warn!(%region, %since, reason = gap.reason(), "messages were missed while away longer than the retained history; cutting the memory history");
            if resynced.insert(region) {
                self.resync(region, since, read.facts.last_generated, gap);
            }
            self.ingest.cut_history(region);
        }
        let missed = read.entries.len();
        for (id, frame) in read.entries {
            self.ingest.deliver_stream_entry(region, id, frame);
        }
        // Past bad entries too (counted and skipped when read), or they would be read again.
        if let Some(last) = read.last_read {
            self.positions.insert(region, last);
        }
        if missed > 0 {
            tracing::trace!(%region, %since, missed, "read from the stream");
        }
        read.full
    }

    fn resync(&self, region: Region, since: StreamId, latest: Option<StreamId>, gap: Gap) {
        metrics::counter!("notify_broker_resyncs_total").increment(1);
        let message = resync_message(region, since, latest, gap);
        self.ingest.broadcast_control(region, &message);
    }

    async fn read(
        &self,
        connection: &mut MultiplexedConnection,
        positions: &[(Region, StreamId)],
        limit: usize,
    ) -> Result<Vec<RegionRead<T>>, BrokerError> {
        const OPERATION: &str = "read the streams";
        let timeout = self.config.command_timeout;
        match tokio::time::timeout(timeout, self.reader.read(connection, positions, limit)).await {
            Ok(Ok(reads)) => Ok(reads),
            Ok(Err(source)) => Err(BrokerError::from_redis(OPERATION, source)),
            Err(_) => Err(BrokerError::Timeout {
                operation: OPERATION,
                after: timeout,
            }),
        }
    }
}

/// The `resync` the region's clients get when the follower finds a gap or a reset.
fn resync_message(
    region: Region,
    since: StreamId,
    latest: Option<StreamId>,
    gap: Gap,
) -> ControlMessage {
    ControlMessage::Resync {
        region,
        since,
        latest,
        reason: format!("the gateway missed messages: {}", gap.reason()),
    }
}

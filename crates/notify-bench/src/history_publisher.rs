//! Publishing id-carrying messages the way the project's publisher does: `EVALSHA` of the
//! history script (`XADD` to the region's stream, then `PUBLISH` with the entry's id), pipelined
//! on one Redis connection so each region's order is kept. With `--redis-cluster` the
//! hash-tagged names and the `SPUBLISH` script are used, one pipeline per region (a pipeline
//! keeps to one slot), all sent at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use futures_util::future::join_all;
use notify_core::broker::redis::{
    publish_command, publish_script, RedisConnection, RedisTarget, RedisTls,
};
use notify_proto::{ChannelNames, KeyLayout, Notification, Region, StreamId};
use serde_json::json;

use crate::cli::Args;
use crate::messages::MessageLog;
use crate::publish::SendLogged;

/// Bound for a Redis command of the generator itself.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// A multiplexed connection to `url`, within [`REDIS_TIMEOUT`].
pub async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("--redis-url {url}"))?;
    // Replies may take longer than the client's default 500 ms on a loaded machine with
    // `appendfsync always`; a timed-out command may still have run, so it is never retried.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(REDIS_TIMEOUT));
    let mut connection = tokio::time::timeout(
        REDIS_TIMEOUT,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .context("connecting to Redis timed out")?
    .with_context(|| format!("connecting to Redis at {url}"))?;
    // Named, so that a fault that cuts "the gateways' connections" can tell ours apart.
    tokio::time::timeout(
        REDIS_TIMEOUT,
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CONNECTION_NAME)
            .query_async::<()>(&mut connection),
    )
    .await
    .context("CLIENT SETNAME timed out")?
    .context("CLIENT SETNAME")?;
    Ok(connection)
}

/// The name of every Redis connection of the generator (`CLIENT SETNAME`).
pub const CONNECTION_NAME: &str = "notify-bench";

/// Publishes with the project's history script, pipelined on one connection (so each
/// region's order is kept).
pub struct HistoryPublisher {
    url: String,
    layout: KeyLayout,
    connection: RedisConnection,
    script: redis::Script,
    streams: Vec<String>,
    channels: Vec<String>,
    retention: usize,
}

impl HistoryPublisher {
    /// Connects and loads the script.
    pub async fn connect(args: &Args) -> Result<Self> {
        let layout = KeyLayout::for_cluster(args.redis_cluster);
        let mut connection = publishing_connection(&args.redis_url, layout).await?;
        let script = publish_script(layout);
        load_script(&script, &mut connection).await?;
        let names = ChannelNames::new(args.channel_prefix.as_str()).with_layout(layout);
        Ok(HistoryPublisher {
            url: args.redis_url.clone(),
            layout,
            connection,
            script,
            streams: args
                .regions
                .iter()
                .map(|region| names.stream_key(*region))
                .collect(),
            channels: args
                .regions
                .iter()
                .map(|region| names.channel(*region))
                .collect(),
            retention: args.retention,
        })
    }

    /// `EVALSHA` for each `(region index, notification)`, in order; returns each message's
    /// id and Redis's subscriber count. Reloads the script once if Redis lost it, and
    /// connects again once if the connection dropped (a restarted redis-server).
    pub async fn send(&mut self, batch: &[(usize, Notification)]) -> Result<Vec<(String, i64)>> {
        let (mut reloaded, mut reconnected) = (false, false);
        loop {
            let reply = tokio::time::timeout(REDIS_TIMEOUT, self.pipelines(batch))
                .await
                .context("publishing timed out")?;
            match reply {
                Ok(replies) => return Ok(replies),
                Err(error) if !reloaded && error.to_string().contains("NOSCRIPT") => {
                    load_script(&self.script, &mut self.connection).await?;
                    reloaded = true;
                }
                // Only a connection that was already gone: the pipeline never reached Redis.
                // A timeout is not retried (the messages may have been published).
                Err(error)
                    if !reconnected
                        && !error.is_timeout()
                        && (error.is_connection_dropped() || error.is_connection_refusal()) =>
                {
                    eprintln!("notify-bench: publishing: {error}; connecting again");
                    self.connection = publishing_connection(&self.url, self.layout).await?;
                    load_script(&self.script, &mut self.connection).await?;
                    reconnected = true;
                }
                Err(error) => return Err(anyhow!(error).context("EVALSHA pipeline")),
            }
        }
    }

    /// One pipeline of `batch` on one Redis; in a cluster one per region, all at once; the
    /// replies in `batch`'s order.
    async fn pipelines(
        &self,
        batch: &[(usize, Notification)],
    ) -> redis::RedisResult<Vec<(String, i64)>> {
        let regions: Vec<usize> = batch.iter().map(|(region, _)| *region).collect();
        let groups = self.connection.pipeline_groups(&regions);
        let sent = groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            for &index in group {
                let (region, notification) = &batch[index];
                pipe.add_command(publish_command(
                    &self.script,
                    &self.streams[*region],
                    &self.channels[*region],
                    notification,
                    self.retention,
                ));
            }
            let mut connection = self.connection.clone();
            async move {
                pipe.query_async::<Vec<(String, i64)>>(&mut connection)
                    .await
            }
        });
        let mut replies: Vec<Option<(String, i64)>> = vec![None; batch.len()];
        for (group, result) in groups.iter().zip(join_all(sent).await) {
            for (&index, reply) in group.iter().zip(result?) {
                replies[index] = Some(reply);
            }
        }
        Ok(replies.into_iter().flatten().collect())
    }

    /// Publishes one epoch notification per region (no `seq`: a bench client never expects
    /// it) and returns their ids: where every client's history starts.
    pub async fn epoch(&mut self, regions: &[Region]) -> Result<Vec<StreamId>> {
        let unix_ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        let batch: Vec<(usize, Notification)> = regions
            .iter()
            .enumerate()
            .map(|(index, region)| {
                let mut message = Notification::new(
                    *region,
                    "benchepoch",
                    "notify-bench chaos: start of run",
                    "https://i.ytimg.com/vi/benchepoch/hqdefault.jpg",
                    "notify-bench ✓",
                    unix_ts,
                );
                message.extra.insert("bench".into(), json!("epoch"));
                (index, message)
            })
            .collect();
        self.send(&batch)
            .await?
            .into_iter()
            .map(|(id, _)| {
                StreamId::parse(&id).with_context(|| format!("script returned id {id:?}"))
            })
            .collect()
    }
}

impl SendLogged for HistoryPublisher {
    async fn send_logged(&mut self, log: &MessageLog, ids: &[(usize, u64)]) -> Result<Vec<i64>> {
        let batch: Vec<(usize, Notification)> = ids
            .iter()
            .map(|&(region, seq)| {
                log.prepare_message(region, seq)
                    .map(|(message, _)| (region, message))
                    .context("message log full")
            })
            .collect::<Result<_>>()?;
        let replies = self.send(&batch).await?;
        Ok(replies
            .into_iter()
            .map(|(_, subscribers)| subscribers)
            .collect())
    }
}

/// The publishing connection: [`redis_connection`] to one Redis, or a cluster connection
/// (which routes each command to its slot's primary and follows failovers) to the
/// comma-separated seeds in `url`.
async fn publishing_connection(url: &str, layout: KeyLayout) -> Result<RedisConnection> {
    match layout {
        KeyLayout::Single => Ok(RedisConnection::Single(redis_connection(url).await?)),
        KeyLayout::Cluster => RedisTarget::new(url, &RedisTls::default(), layout)
            .with_context(|| format!("--redis-url {url}"))?
            .connect(REDIS_TIMEOUT, Some(REDIS_TIMEOUT), None)
            .await
            .with_context(|| format!("connecting to the cluster at {url}")),
    }
}

async fn load_script(script: &redis::Script, connection: &mut RedisConnection) -> Result<()> {
    tokio::time::timeout(REDIS_TIMEOUT, script.load_async(connection))
        .await
        .context("SCRIPT LOAD timed out")?
        .context("SCRIPT LOAD of the history publish script")?;
    Ok(())
}

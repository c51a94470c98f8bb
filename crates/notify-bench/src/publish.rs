//! Publishing the run's messages: pipelined `PUBLISH` on Redis (`SPUBLISH` on each region's
//! shard channel, one pipeline per region, on a Redis Cluster), or `POST /api/publish` on the
//! gateway, either as fast as possible (a burst) or at a steady rate.
//!
//! Messages go round-robin over the regions; each region has its own sequence `0, 1, 2, ...`.
//! A message's slot in the [`MessageLog`] is filled before it is sent, and the region's
//! published count is advanced once the send is confirmed. Per-region order is preserved:
//! Redis pipelines run on one connection, and over HTTP each region has at most one request in
//! flight.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::future::join_all;
use notify_core::broker::redis::{RedisConnection, RedisTarget, RedisTls};
use notify_proto::{ChannelNames, KeyLayout};
use serde::Serialize;
use tokio::time::Instant;

use crate::messages::MessageLog;

/// Where messages go.
#[derive(Debug)]
pub enum Publisher {
    /// `PUBLISH {prefix}{REGION} payload` on one multiplexed connection, or `SPUBLISH
    /// {prefix}{{REGION}} payload` on a cluster connection.
    Redis {
        /// The connection.
        connection: RedisConnection,
        /// Channel per region, in log order.
        channels: Vec<String>,
    },
    /// `POST {gateway}/api/publish`.
    Http {
        /// Shared keep-alive client.
        client: reqwest::Client,
        /// Full endpoint URL.
        url: String,
        /// Bearer key, when the gateway needs one.
        key: Option<String>,
    },
}

/// How publishing went.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PublishOutcome {
    /// Messages confirmed sent.
    pub published: u64,
    /// Publishes that reached no subscriber (Redis replied 0: no gateway listening).
    pub unheard: u64,
    /// Seconds from the first publish to the last confirmation.
    pub secs: f64,
    /// Whether the overall deadline cut publishing short.
    pub cut_short: bool,
}

impl Publisher {
    /// A Redis publisher on `url` (a cluster's seed URLs with `cluster`) with channels for
    /// `log`'s regions.
    pub async fn redis(url: &str, cluster: bool, prefix: &str, log: &MessageLog) -> Result<Self> {
        let layout = KeyLayout::for_cluster(cluster);
        let target = RedisTarget::new(url, &RedisTls::default(), layout)
            .with_context(|| format!("--redis-url {url}"))?;
        let timeout = Duration::from_secs(10);
        let connection = target
            .connect(timeout, None, None)
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?;
        let names = ChannelNames::new(prefix).with_layout(layout);
        Ok(Publisher::Redis {
            connection,
            channels: log
                .regions
                .iter()
                .map(|region| names.channel(region.region))
                .collect(),
        })
    }

    /// An HTTP publisher posting to `{gateway}/api/publish`.
    pub fn http(gateway: &str, key: Option<String>, concurrency: usize) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(concurrency)
            .build()
            .context("building the HTTP client")?;
        Ok(Publisher::Http {
            client,
            url: format!("{}/api/publish", gateway.trim_end_matches('/')),
            key,
        })
    }

    /// Sends `batch` (region index, payload), in order per region; returns each message's
    /// subscriber count.
    async fn send(&mut self, batch: &[(usize, String)]) -> Result<Vec<i64>> {
        match self {
            Publisher::Redis {
                connection,
                channels,
            } if !connection.is_cluster() => {
                let mut pipe = redis::pipe();
                for (region, payload) in batch {
                    pipe.cmd("PUBLISH").arg(&channels[*region]).arg(payload);
                }
                pipe.query_async::<Vec<i64>>(connection)
                    .await
                    .context("PUBLISH pipeline")
            }
            Publisher::Redis {
                connection,
                channels,
            } => {
                // A pipeline keeps to one slot: one per region, all at once.
                let channels = &*channels;
                let results = join_all(lanes(batch).into_iter().map(|lane| {
                    let mut connection = connection.clone();
                    async move {
                        let mut pipe = redis::pipe();
                        for (_, payload) in &lane {
                            let region = batch[lane[0].0].0;
                            pipe.cmd("SPUBLISH").arg(&channels[region]).arg(*payload);
                        }
                        let counts = pipe
                            .query_async::<Vec<i64>>(&mut connection)
                            .await
                            .context("SPUBLISH pipeline")?;
                        let positions = lane.iter().map(|(position, _)| *position);
                        Ok::<_, anyhow::Error>(positions.zip(counts).collect::<Vec<_>>())
                    }
                }))
                .await;
                gather(batch.len(), results)
            }
            Publisher::Http { client, url, key } => {
                let lanes = lanes(batch);
                let client = &*client;
                let url = url.as_str();
                let key = key.as_deref();
                let results = join_all(lanes.into_iter().map(|lane| async move {
                    let mut counts = Vec::with_capacity(lane.len());
                    for (position, payload) in lane {
                        counts.push((position, post(client, url, key, payload).await?));
                    }
                    Ok::<_, anyhow::Error>(counts)
                }))
                .await;
                gather(batch.len(), results)
            }
        }
    }
}

/// `batch`'s messages grouped by region, each `(position in batch, payload)`, in order.
fn lanes(batch: &[(usize, String)]) -> Vec<Vec<(usize, &str)>> {
    let mut lanes: Vec<Vec<(usize, &str)>> = Vec::new();
    for (position, (region, payload)) in batch.iter().enumerate() {
        match lanes.iter_mut().find(|lane| batch[lane[0].0].0 == *region) {
            Some(lane) => lane.push((position, payload)),
            None => lanes.push(vec![(position, payload)]),
        }
    }
    lanes
}

/// The subscriber counts of `len` messages, from each lane's `(position, count)`s.
fn gather(len: usize, results: Vec<Result<Vec<(usize, i64)>>>) -> Result<Vec<i64>> {
    let mut counts = vec![0; len];
    for lane in results {
        for (position, count) in lane? {
            counts[position] = count;
        }
    }
    Ok(counts)
}

async fn post(client: &reqwest::Client, url: &str, key: Option<&str>, body: &str) -> Result<i64> {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST {url}: HTTP {status}: {}", text.trim());
    }
    let reply: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("POST {url}: reply {text:?}"))?;
    Ok(reply["subscribers"].as_i64().unwrap_or(0))
}

/// Round-robin over regions with a sequence number per region.
#[derive(Debug)]
pub(crate) struct Sequencer {
    next: Vec<u64>,
    turn: usize,
}

impl Sequencer {
    pub(crate) fn new(regions: usize) -> Self {
        Sequencer {
            next: vec![0; regions],
            turn: 0,
        }
    }

    pub(crate) fn next(&mut self) -> (usize, u64) {
        let region = self.turn % self.next.len();
        self.turn += 1;
        let seq = self.next[region];
        self.next[region] += 1;
        (region, seq)
    }
}

/// A publisher of logged messages: the pacing in [`burst`] and [`steady`] drives any of them.
pub(crate) trait SendLogged {
    /// Fills the log's slots for `ids` (region index, seq) and sends those messages, in order
    /// per region; returns each message's subscriber count.
    async fn send_logged(&mut self, log: &MessageLog, ids: &[(usize, u64)]) -> Result<Vec<i64>>;
}

impl SendLogged for Publisher {
    async fn send_logged(&mut self, log: &MessageLog, ids: &[(usize, u64)]) -> Result<Vec<i64>> {
        let batch: Vec<(usize, String)> = ids
            .iter()
            .map(|&(region, seq)| {
                log.prepare(region, seq)
                    .map(|payload| (region, payload))
                    .context("message log full")
            })
            .collect::<Result<_>>()?;
        self.send(&batch).await
    }
}

/// Sends a batch; advances the published counts.
async fn send_batch(
    publisher: &mut impl SendLogged,
    log: &MessageLog,
    ids: &[(usize, u64)],
    outcome: &mut PublishOutcome,
) -> Result<()> {
    let counts = publisher.send_logged(log, ids).await?;
    for (&(region, seq), count) in ids.iter().zip(counts) {
        log.regions[region].set_published(seq + 1);
        if count <= 0 {
            outcome.unheard += 1;
        }
    }
    outcome.published += ids.len() as u64;
    Ok(())
}

/// Publishes `total` messages as fast as the pipeline allows, until `deadline`.
pub async fn burst(
    publisher: &mut impl SendLogged,
    log: &MessageLog,
    total: u64,
    pipeline: usize,
    deadline: Instant,
) -> Result<PublishOutcome> {
    let started = Instant::now();
    let mut outcome = PublishOutcome::default();
    let mut sequencer = Sequencer::new(log.regions.len());
    let mut sent = 0;
    while sent < total {
        if Instant::now() >= deadline {
            outcome.cut_short = true;
            break;
        }
        let size = (total - sent).min(pipeline as u64);
        let ids: Vec<(usize, u64)> = (0..size).map(|_| sequencer.next()).collect();
        send_batch(publisher, log, &ids, &mut outcome).await?;
        sent += size;
    }
    outcome.secs = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(outcome)
}

/// Publishes `total` messages at `rate` per second (message `i` is due at `i / rate`), sending
/// whatever is due together, until `deadline`.
pub async fn steady(
    publisher: &mut impl SendLogged,
    log: &MessageLog,
    rate: f64,
    total: u64,
    pipeline: usize,
    deadline: Instant,
) -> Result<PublishOutcome> {
    let started = Instant::now();
    let mut outcome = PublishOutcome::default();
    let mut sequencer = Sequencer::new(log.regions.len());
    let due = |index: u64| started + Duration::from_secs_f64(index as f64 / rate);
    let mut sent = 0;
    while sent < total {
        let next = due(sent);
        if next >= deadline {
            outcome.cut_short = true;
            break;
        }
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        let mut ids = Vec::new();
        while sent < total && ids.len() < pipeline && due(sent) <= now {
            ids.push(sequencer.next());
            sent += 1;
        }
        send_batch(publisher, log, &ids, &mut outcome).await?;
    }
    outcome.secs = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(outcome)
}

/// Messages region `index` gets when `total` go round-robin over `regions`.
pub fn per_region(total: u64, regions: usize, index: usize) -> u64 {
    let regions = regions as u64;
    let index = index as u64;
    total / regions + u64::from(index < total % regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_sequences() {
        let mut sequencer = Sequencer::new(3);
        let ids: Vec<_> = (0..7).map(|_| sequencer.next()).collect();
        assert_eq!(
            ids,
            [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
        );
        assert_eq!(
            (0..3)
                .map(|index| per_region(7, 3, index))
                .collect::<Vec<_>>(),
            [3, 2, 2]
        );
    }
}

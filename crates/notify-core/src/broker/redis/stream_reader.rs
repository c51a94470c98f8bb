//! [`StreamReader`]: reads regions' streams after given ids with
//! [`READ_SCRIPT`](super::scripts::READ_SCRIPT), decoding each entry into an encoded frame
//! that carries its stream id, together with the [`StreamFacts`] coverage is judged by. Used by
//! resumes (one region) and by the stream follower (every served region).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::try_join_all;
use notify_proto::{Notification, Region, StreamId};

use super::connection::RedisConnection;
use super::coverage::StreamFacts;
use super::scripts::read_script;
use crate::ingest::Ingest;

/// What the read found for one region.
#[derive(Debug)]
pub(super) struct RegionRead<T> {
    /// The region.
    pub(super) region: Region,
    /// The id read after.
    pub(super) since: StreamId,
    /// The stream's state as of the read.
    pub(super) facts: StreamFacts,
    /// Entries after `since`, oldest first, encoded; entries that break the contract are
    /// counted and left out.
    pub(super) entries: Vec<(StreamId, T)>,
    /// The id of the last entry read, bad ones included: where the next read starts.
    pub(super) last_read: Option<StreamId>,
    /// Whether the read hit its entry limit (more may follow).
    pub(super) full: bool,
}

/// One region's raw reply: `{last_generated_id, entries_added, length, start_present, entries}`.
pub(super) type RawRegionReply = (
    String,
    i64,
    u64,
    i64,
    Vec<(String, HashMap<String, Vec<u8>>)>,
);

/// Reads streams and decodes their entries for one [`Ingest`]'s regions.
#[derive(Debug)]
pub(super) struct StreamReader<T> {
    ingest: Arc<Ingest<T>>,
    script: redis::Script,
}

impl<T> Clone for StreamReader<T> {
    fn clone(&self) -> Self {
        StreamReader {
            ingest: Arc::clone(&self.ingest),
            script: self.script.clone(),
        }
    }
}

impl<T> StreamReader<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    pub(super) fn new(ingest: Arc<Ingest<T>>) -> Self {
        StreamReader {
            ingest,
            script: read_script(),
        }
    }

    /// The invocation reading `positions` (region, exclusive start id), at most `limit`
    /// entries each; run it with [`decode`](Self::decode) on its reply.
    pub(super) fn invocation(
        &self,
        positions: &[(Region, StreamId)],
        limit: usize,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(limit);
        for (region, since) in positions {
            invocation
                .key(self.ingest.channels().stream_key(*region))
                .arg(since.to_string());
        }
        invocation
    }

    /// Runs the read on `connection`.
    pub(super) async fn read(
        &self,
        connection: &mut RedisConnection,
        positions: &[(Region, StreamId)],
        limit: usize,
    ) -> Result<Vec<RegionRead<T>>, redis::RedisError> {
        let replies = self.fetch(connection, positions, limit).await?;
        Ok(self.decode(positions, limit, replies))
    }

    /// Runs the read on `connection` and returns the reply undecoded, so a caller can time
    /// the Redis round trip apart from the decoding. On one Redis it is one script call; in a
    /// cluster, one call per region (each region's stream is in its own slot), all at once.
    pub(super) async fn fetch(
        &self,
        connection: &mut RedisConnection,
        positions: &[(Region, StreamId)],
        limit: usize,
    ) -> Result<Vec<RawRegionReply>, redis::RedisError> {
        if !connection.is_cluster() || positions.len() <= 1 {
            return self
                .invocation(positions, limit)
                .invoke_async(connection)
                .await;
        }
        let reads = positions.iter().map(|position| {
            let mut connection = connection.clone();
            async move {
                let mut reply: Vec<RawRegionReply> = self
                    .invocation(std::slice::from_ref(position), limit)
                    .invoke_async(&mut connection)
                    .await?;
                reply.pop().ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "no result for the region",
                    ))
                })
            }
        });
        try_join_all(reads).await
    }

    /// Decodes [`fetch`](Self::fetch)'s reply for the same `positions` and `limit`.
    pub(super) fn decode(
        &self,
        positions: &[(Region, StreamId)],
        limit: usize,
        replies: Vec<RawRegionReply>,
    ) -> Vec<RegionRead<T>> {
        positions
            .iter()
            .zip(replies)
            .map(|(&(region, since), (last, added, length, present, raw))| {
                let full = limit > 0 && raw.len() >= limit;
                let last_read = raw.last().and_then(|(id, _)| StreamId::parse(id).ok());
                RegionRead {
                    region,
                    since,
                    facts: StreamFacts {
                        last_generated: StreamId::parse(&last).ok(),
                        entries_added: u64::try_from(added).ok(),
                        length,
                        since_present: present == 1,
                    },
                    entries: self.decode_entries(region, raw),
                    last_read,
                    full,
                }
            })
            .collect()
    }

    fn decode_entries(
        &self,
        region: Region,
        raw: Vec<(String, HashMap<String, Vec<u8>>)>,
    ) -> Vec<(StreamId, T)> {
        let max_payload = self.ingest.max_payload_bytes();
        let mut entries = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            let id = match StreamId::parse(&id) {
                Ok(id) => id,
                Err(error) => {
                    tracing::warn!(%region, %error, "skipped a stream entry with an unreadable id");
                    continue;
                }
            };
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
        entries
    }
}

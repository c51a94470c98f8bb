//! Where notifications go: Redis or a notify gateway (`POST /api/publish`), and how their
//! answers and failures are classified.
//!
//! To Redis, each message runs notify-core's publish script: `XADD` to the region's capped
//! history stream, then `PUBLISH {prefix}{REGION}` with the stream id as the message's `id`,
//! atomically — the same path the gateway's API uses, so every message can be resumed.
//!
//! Batches are never one round trip per message: Redis gets pipelines of
//! [`REDIS_PIPELINE_CHUNK`] commands over one multiplexed connection, the gateway gets one
//! request in flight per region, up to `concurrency` regions at once (so each region's
//! messages are published, and get their ids, in input order). Results are reported in input
//! order.
//!
//! The Redis command for one message is built by [`add_redis_publish`] and its reply read by
//! [`read_redis_reply`].

use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use notify_core::broker::redis::redact_url;
use notify_core::broker::redis::{publish_command, publish_script};
use notify_core::broker::redis::{BrokerError, RedisConnection, RedisTarget, RedisTls};
use notify_proto::{ChannelNames, KeyLayout, Notification, Reach};
use serde::Deserialize;

use crate::exit;

/// PUBLISH commands sent per pipeline round trip.
pub const REDIS_PIPELINE_CHUNK: usize = 1000;

/// What the destination said about one delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// How far it reached: gateway nodes (Redis's `PUBLISH` reply, also what a Redis-backed
    /// gateway reports) or clients (a gateway with the embedded broker).
    pub reach: Reach,
    /// History id, when the destination recorded one.
    pub id: Option<String>,
}

/// Why a message was not published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The destination cannot be reached (refused, timed out, dropped, broker down). Fatal
    /// for the run: nothing after it is attempted.
    #[error("{target} is unavailable: {reason}")]
    Unavailable {
        /// `Redis at redis://…` or `gateway at http://…`.
        target: String,
        /// What happened.
        reason: String,
    },
    /// The destination refused our credentials (gateway 401/403, Redis NOPERM/NOAUTH).
    /// Fatal for the run.
    #[error("{target} refused the request: {reason}")]
    Denied {
        /// `Redis at redis://…` or `gateway at http://…`.
        target: String,
        /// The destination's own message.
        reason: String,
    },
    /// The destination rejected this one message as invalid (gateway 400/413). Counted as bad
    /// input, like a line that fails local validation.
    #[error("rejected by the gateway: {0}")]
    Rejected(String),
    /// Published with this id, but fewer replicas than `--wait-replicas` acknowledged it in
    /// time: a failover now would lose it (the gateways would announce `resync`).
    #[error("{target}: published as {id} but acknowledged by {acknowledged} of {wanted} replicas; a failover may lose it")]
    NotReplicated {
        /// `Redis at redis://…`.
        target: String,
        /// The message's stream id.
        id: String,
        /// Replicas that acknowledged (Redis's `WAIT` reply).
        acknowledged: u32,
        /// `--wait-replicas`.
        wanted: u32,
    },
    /// Anything else about this one message (an unexpected reply or status).
    #[error("{0}")]
    Failed(String),
}

impl PublishError {
    /// Whether the run must stop: later messages would fail the same way.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PublishError::Unavailable { .. } | PublishError::Denied { .. }
        )
    }

    /// The process exit code this error calls for.
    pub fn exit_code(&self) -> u8 {
        match self {
            PublishError::Unavailable { .. } => exit::UNAVAILABLE,
            PublishError::Denied { .. } => exit::NOPERM,
            PublishError::Rejected(_) => exit::DATAERR,
            PublishError::NotReplicated { .. } => exit::TEMPFAIL,
            PublishError::Failed(_) => exit::FAILURE,
        }
    }
}

/// A connected destination.
#[derive(Debug)]
pub enum Sink {
    /// Redis pub/sub.
    Redis(RedisSink),
    /// A notify gateway's HTTP API.
    Gateway(GatewaySink),
}

impl Sink {
    /// Where a message went, for output: the Redis channel or the gateway URL.
    pub fn destination(&self, notification: &Notification) -> Destination {
        match self {
            Sink::Redis(redis) => Destination::Channel(redis.names.channel(notification.region)),
            Sink::Gateway(gateway) => Destination::Gateway(gateway.base.clone()),
        }
    }

    /// Publishes `batch` in order, calling `report(index, result)` once per message as results
    /// arrive. Returns the fatal error that stopped the run, if any; messages without a report
    /// were not published (or not confirmed).
    pub async fn publish_all(
        &mut self,
        batch: &[&Notification],
        report: impl FnMut(usize, Result<Delivery, PublishError>),
    ) -> Result<(), PublishError> {
        match self {
            Sink::Redis(redis) => redis.publish_all(batch, report).await,
            Sink::Gateway(gateway) => gateway.publish_all(batch, report).await,
        }
    }
}

/// Reports one message's result; a fatal error is returned too, to stop the run.
fn report_result(
    report: &mut impl FnMut(usize, Result<Delivery, PublishError>),
    index: usize,
    result: Result<Delivery, PublishError>,
) -> Result<(), PublishError> {
    let fatal = match &result {
        Err(error) if error.is_fatal() => Some(error.clone()),
        _ => None,
    };
    report(index, result);
    fatal.map_or(Ok(()), Err)
}

/// Where one message was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Redis channel (`tvs:AE`).
    Channel(String),
    /// A gateway base URL.
    Gateway(String),
}

/// Redis pub/sub over one multiplexed connection, or over one cluster connection (one
/// pipeline per region, each sent to the shard that owns the region).
#[derive(Debug)]
pub struct RedisSink {
    connection: RedisConnection,
    names: ChannelNames,
    script: redis::Script,
    retention: usize,
    target: String,
    timeout: Duration,
    /// `--wait-replicas`: 0 for none.
    wait_replicas: u32,
}

impl RedisSink {
    /// Connects to `url` (a cluster's comma-separated seed URLs with `layout`
    /// [`KeyLayout::Cluster`]), with `tls` for `rediss://` (connect and reply timeouts =
    /// `timeout`). The publish script is loaded once here (on every primary of a cluster), so
    /// pipelines can use `EVALSHA`.
    pub async fn connect(
        url: &str,
        tls: &RedisTls,
        layout: KeyLayout,
        channel_prefix: &str,
        retention: usize,
        timeout: Duration,
        wait_replicas: u32,
    ) -> Result<Self, PublishError> {
        let target = format!("Redis at {}", redact_url(url));
        // Its errors mask the URL's password already.
        let redis = RedisTarget::new(url, tls, layout)
            .map_err(|error| PublishError::Failed(error.to_string()))?;
        // The target's own timeout covers connect, AUTH and HELLO on a server that accepts
        // TCP but never answers.
        let mut connection = redis
            .connect(timeout, Some(timeout), None)
            .await
            .map_err(|error| classify_broker(&target, timeout, &error))?;
        let script = publish_script(layout);
        script
            .prepare_invoke()
            .load_async(&mut connection)
            .await
            .map_err(|error| classify_redis(&target, timeout, &error))?;
        Ok(RedisSink {
            connection,
            names: ChannelNames::new(channel_prefix).with_layout(layout),
            script,
            retention,
            target,
            timeout,
            wait_replicas,
        })
    }

    async fn publish_all(
        &mut self,
        batch: &[&Notification],
        mut report: impl FnMut(usize, Result<Delivery, PublishError>),
    ) -> Result<(), PublishError> {
        for (chunk_index, chunk) in batch.chunks(REDIS_PIPELINE_CHUNK).enumerate() {
            let mut results = Vec::with_capacity(chunk.len());
            let replies = self.send_chunk(chunk).await;
            let replies = self.again_without_script(chunk, replies).await?;
            for reply in replies {
                results.push(match reply {
                    Ok(Ok(value)) => read_redis_reply(value).map_err(PublishError::Failed),
                    Ok(Err(error)) => Err(classify_redis(&self.target, self.timeout, &error)),
                    // The whole pipeline failed: nothing from here on is confirmed.
                    Err(error) => return Err(error),
                });
            }
            if self.wait_replicas > 0 {
                self.wait_for_replicas(&mut results).await?;
            }
            for (offset, result) in results.into_iter().enumerate() {
                report_result(
                    &mut report,
                    chunk_index * REDIS_PIPELINE_CHUNK + offset,
                    result,
                )?;
            }
        }
        Ok(())
    }

    /// Sends again, once, the messages whose `EVALSHA` found no script (`NOSCRIPT`: the
    /// server lost its script cache — restarted, `SCRIPT FLUSH`, or a replica promoted in a
    /// failover, which Redis does not copy scripts to), after loading the script again. Such
    /// a message was not published, so sending it again cannot publish it twice; they are
    /// sent in their order, after the ones that went out, so each region keeps its order.
    async fn again_without_script(
        &mut self,
        chunk: &[&Notification],
        mut replies: Vec<Result<redis::RedisResult<redis::Value>, PublishError>>,
    ) -> Result<Vec<Result<redis::RedisResult<redis::Value>, PublishError>>, PublishError> {
        let lost_script: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, reply)| {
                matches!(reply, Ok(Err(error)) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
            })
            .map(|(index, _)| index)
            .collect();
        if lost_script.is_empty() {
            return Ok(replies);
        }
        self.script
            .prepare_invoke()
            .load_async(&mut self.connection)
            .await
            .map_err(|error| classify_redis(&self.target, self.timeout, &error))?;
        let again: Vec<&Notification> = lost_script.iter().map(|&index| chunk[index]).collect();
        for (index, reply) in lost_script.into_iter().zip(self.send_chunk(&again).await) {
            replies[index] = reply;
        }
        Ok(replies)
    }

    /// Sends one chunk and returns each message's reply, in input order: the outer error is
    /// its pipeline's failure. One pipeline on one Redis; in a cluster one per region (a
    /// pipeline keeps to one slot), all at once, so each region's messages keep their order.
    async fn send_chunk(
        &self,
        chunk: &[&Notification],
    ) -> Vec<Result<redis::RedisResult<redis::Value>, PublishError>> {
        let regions: Vec<_> = chunk
            .iter()
            .map(|notification| notification.region)
            .collect();
        let groups = self.connection.pipeline_groups(&regions);
        let pipelines = groups.iter().map(|indexes| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &index in indexes {
                add_redis_publish(
                    &mut pipe,
                    &self.script,
                    &self.names,
                    self.retention,
                    chunk[index],
                );
            }
            let mut connection = self.connection.clone();
            async move {
                let replies: Vec<redis::RedisResult<redis::Value>> = pipe
                    .query_async(&mut connection)
                    .await
                    .map_err(|error| classify_redis(&self.target, self.timeout, &error))?;
                if replies.len() != indexes.len() {
                    return Err(PublishError::Unavailable {
                        target: self.target.clone(),
                        reason: format!(
                            "{} replies to a pipeline of {} commands",
                            replies.len(),
                            indexes.len()
                        ),
                    });
                }
                Ok(replies)
            }
        });
        let mut replies: Vec<Option<Result<redis::RedisResult<redis::Value>, PublishError>>> =
            (0..chunk.len()).map(|_| None).collect();
        for (indexes, result) in groups.iter().zip(join_all(pipelines).await) {
            match result {
                Ok(group) => {
                    for (&index, reply) in indexes.iter().zip(group) {
                        replies[index] = Some(Ok(reply));
                    }
                }
                Err(error) => {
                    for &index in indexes {
                        replies[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        replies.into_iter().flatten().collect()
    }

    /// Redis `WAIT`: blocks until `--wait-replicas` replicas hold everything written on this
    /// connection, or 3/4 of the timeout (so the reply comes before the connection's own
    /// timeout). Short of that, every published message of the pipeline becomes
    /// [`PublishError::NotReplicated`] — it is in the primary's stream, but not safe from a
    /// failover.
    async fn wait_for_replicas(
        &mut self,
        results: &mut [Result<Delivery, PublishError>],
    ) -> Result<(), PublishError> {
        let wait = self.timeout * 3 / 4;
        let acknowledged: u32 = redis::cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(wait.as_millis().max(1) as u64)
            .query_async(&mut self.connection)
            .await
            .map_err(|error| classify_redis(&self.target, self.timeout, &error))?;
        if acknowledged >= self.wait_replicas {
            return Ok(());
        }
        for result in results.iter_mut() {
            if let Ok(delivery) = result {
                *result = Err(PublishError::NotReplicated {
                    target: self.target.clone(),
                    id: delivery.id.clone().unwrap_or_default(),
                    acknowledged,
                    wanted: self.wait_replicas,
                });
            }
        }
        Ok(())
    }
}

/// Adds the command that publishes one notification: `EVALSHA` of the publish script (record in
/// `{prefix}{REGION}:stream`, then `PUBLISH {prefix}{REGION}` with the id).
pub fn add_redis_publish(
    pipe: &mut redis::Pipeline,
    script: &redis::Script,
    names: &ChannelNames,
    retention: usize,
    notification: &Notification,
) {
    pipe.add_command(publish_command(
        script,
        &names.stream_key(notification.region),
        &names.channel(notification.region),
        notification,
        retention,
    ));
}

/// Reads the reply to [`add_redis_publish`]'s command: `[id, nodes]`, where nodes is the
/// `PUBLISH` reply (subscribed gateway connections that received the message).
pub fn read_redis_reply(reply: redis::Value) -> Result<Delivery, String> {
    let unexpected =
        |other: &redis::Value| format!("unexpected reply to the publish script: {other:?}");
    let redis::Value::Array(items) = &reply else {
        return Err(unexpected(&reply));
    };
    match items.as_slice() {
        [redis::Value::BulkString(id), redis::Value::Int(nodes)] if *nodes >= 0 => Ok(Delivery {
            reach: Reach::GatewayNodes(*nodes as u64),
            id: Some(String::from_utf8_lossy(id).into_owned()),
        }),
        _ => Err(unexpected(&reply)),
    }
}

/// `no answer within 5s (--timeout)`.
fn no_answer(timeout: Duration) -> String {
    format!(
        "no answer within {} (--timeout)",
        humantime::format_duration(timeout)
    )
}

fn classify_redis(target: &str, timeout: Duration, error: &redis::RedisError) -> PublishError {
    let code = error.code().unwrap_or_default();
    let denied = error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "NOPERM" | "NOAUTH" | "WRONGPASS");
    if denied {
        return PublishError::Denied {
            target: target.to_owned(),
            reason: error.to_string(),
        };
    }
    let unavailable = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || matches!(code, "LOADING" | "MASTERDOWN" | "READONLY");
    if unavailable {
        PublishError::Unavailable {
            target: target.to_owned(),
            reason: if error.is_timeout() {
                no_answer(timeout)
            } else {
                error.to_string()
            },
        }
    } else {
        PublishError::Failed(format!("{target}: {error}"))
    }
}

/// Classifies a failure to reach the primary: the driver's own errors as [`classify_redis`]
/// does, no answer or a node that is not (yet) the primary as unavailable, a bad URL or TLS
/// file as a failure.
fn classify_broker(target: &str, timeout: Duration, error: &BrokerError) -> PublishError {
    match error {
        // No primary named yet (a failover under way) is as unavailable as a refused connect.
        BrokerError::Unavailable { source, .. }
            if source.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel =>
        {
            PublishError::Unavailable {
                target: target.to_owned(),
                reason: source.to_string(),
            }
        }
        BrokerError::Unavailable { source, .. } | BrokerError::BadReply { source, .. } => {
            classify_redis(target, timeout, source)
        }
        BrokerError::Timeout { .. } | BrokerError::NotPrimary { .. } => PublishError::Unavailable {
            target: target.to_owned(),
            reason: error.to_string(),
        },
        other => PublishError::Failed(other.to_string()),
    }
}

/// A notify gateway's `POST /api/publish`.
#[derive(Debug)]
pub struct GatewaySink {
    client: reqwest::Client,
    base: String,
    endpoint: String,
    api_key: Option<String>,
    concurrency: usize,
    target: String,
    timeout: Duration,
}

#[derive(Debug, Deserialize)]
struct GatewayErrorBody {
    error: String,
}

impl GatewaySink {
    /// A client for the gateway at `base` (`http://host:port` or `https://host:port`);
    /// `ca_cert` is a PEM file of the only CAs trusted for `https://` (default: the system's
    /// roots); `timeout` bounds connecting and each request.
    pub fn new(
        base: &str,
        api_key: Option<String>,
        ca_cert: Option<&Path>,
        timeout: Duration,
        concurrency: usize,
    ) -> Result<Self, PublishError> {
        let endpoint = format!("{}/api/publish", base.trim_end_matches('/'));
        let base = redact_url(base.trim_end_matches('/'));
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("notify-publish/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            builder = builder.tls_certs_only(read_ca_certs(path)?);
        }
        let client = builder
            .build()
            .map_err(|error| PublishError::Failed(format!("HTTP client: {error}")))?;
        Ok(GatewaySink {
            client,
            endpoint,
            target: format!("gateway at {base}"),
            base,
            api_key,
            concurrency: concurrency.max(1),
            timeout,
        })
    }

    /// Messages of one region go one after another, so the gateway assigns their ids in input
    /// order; up to `concurrency` regions are in flight at once. Results are reported in input
    /// order once every lane has finished; the first fatal error stops every lane.
    async fn publish_all(
        &mut self,
        batch: &[&Notification],
        mut report: impl FnMut(usize, Result<Delivery, PublishError>),
    ) -> Result<(), PublishError> {
        let this = &*self;
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of_region = std::collections::HashMap::new();
        for (index, notification) in batch.iter().enumerate() {
            let lane = *lane_of_region
                .entry(notification.region)
                .or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
            lanes[lane].push(index);
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let stop = &stop;
        let mut results: Vec<Option<Result<Delivery, PublishError>>> =
            (0..batch.len()).map(|_| None).collect();
        let mut lane_results = stream::iter(lanes)
            .map(|lane| async move {
                let mut done = Vec::with_capacity(lane.len());
                for index in lane {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let result = this.post(batch[index]).await;
                    if matches!(&result, Err(error) if error.is_fatal()) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    done.push((index, result));
                }
                done
            })
            .buffer_unordered(this.concurrency);
        while let Some(done) = lane_results.next().await {
            for (index, result) in done {
                results[index] = Some(result);
            }
        }
        for (index, result) in results.into_iter().enumerate() {
            let Some(result) = result else { continue };
            report_result(&mut report, index, result)?;
        }
        Ok(())
    }

    async fn post(&self, notification: &Notification) -> Result<Delivery, PublishError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(notification.to_json());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(error))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.transport(error))?;
        if status.is_success() {
            let unexpected = |why: String| {
                PublishError::Failed(format!(
                    "{}: unexpected answer to POST /api/publish ({status}): {why}",
                    self.target
                ))
            };
            let reply: serde_json::Value =
                serde_json::from_slice(&body).map_err(|error| unexpected(error.to_string()))?;
            let reach = Reach::from_reply(&reply).ok_or_else(|| {
                unexpected("no gateway_nodes_reached, clients_reached or subscribers count".into())
            })?;
            let id = match reply.get("id") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(id)) => Some(id.clone()),
                Some(other) => return Err(unexpected(format!("id is not a string: {other}"))),
            };
            return Ok(Delivery { reach, id });
        }
        let message = serde_json::from_slice::<GatewayErrorBody>(&body)
            .map(|body| body.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        let reason = if message.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {message}")
        };
        Err(match status.as_u16() {
            401 | 403 => PublishError::Denied {
                target: self.target.clone(),
                reason,
            },
            400 | 413 | 422 => PublishError::Rejected(message),
            502..=504 => PublishError::Unavailable {
                target: self.target.clone(),
                reason,
            },
            _ => PublishError::Failed(format!(
                "{}: POST /api/publish answered {reason}",
                self.target
            )),
        })
    }

    fn transport(&self, error: reqwest::Error) -> PublishError {
        let reason = if error.is_timeout() {
            no_answer(self.timeout)
        } else {
            // reqwest's own message repeats the URL; the innermost cause says what happened
            // ("tcp connect error: Connection refused (os error 111)").
            let mut innermost: &dyn std::error::Error = &error;
            while let Some(cause) = innermost.source() {
                innermost = cause;
            }
            innermost.to_string()
        };
        PublishError::Unavailable {
            target: self.target.clone(),
            reason,
        }
    }
}

/// The certificates of a `--ca-cert` PEM file.
fn read_ca_certs(path: &Path) -> Result<Vec<reqwest::Certificate>, PublishError> {
    let failed = |why: String| PublishError::Failed(format!("--ca-cert {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|error| failed(format!("cannot read it: {error}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|error| failed(format!("not PEM certificates: {error}")))?;
    if certs.is_empty() {
        return Err(failed("holds no certificate".to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_reply_is_the_stream_id_and_subscriber_count() {
        use redis::Value::{Array, BulkString, Int, Nil};

        assert_eq!(
            read_redis_reply(Array(vec![BulkString(b"17-0".to_vec()), Int(3)])).unwrap(),
            Delivery {
                reach: Reach::GatewayNodes(3),
                id: Some("17-0".to_owned())
            }
        );
        assert_eq!(
            read_redis_reply(Array(vec![
                BulkString(b"1795833028395-12".to_vec()),
                Int(0)
            ]))
            .unwrap(),
            Delivery {
                reach: Reach::GatewayNodes(0),
                id: Some("1795833028395-12".to_owned())
            }
        );
        // Anything else is an error, never a guessed delivery: a bare PUBLISH reply, nil,
        // the fields swapped, missing or extra, or an id of the wrong type.
        for unexpected in [
            Int(3),
            Nil,
            Array(vec![]),
            Array(vec![BulkString(b"17-0".to_vec())]),
            Array(vec![Int(3), BulkString(b"17-0".to_vec())]),
            Array(vec![BulkString(b"17-0".to_vec()), Int(-1)]),
            Array(vec![BulkString(b"17-0".to_vec()), Int(3), Int(1)]),
            Array(vec![
                BulkString(b"17-0".to_vec()),
                BulkString(b"3".to_vec()),
            ]),
        ] {
            let error = read_redis_reply(unexpected.clone()).unwrap_err();
            assert!(
                error.starts_with("unexpected reply to the publish script: "),
                "{unexpected:?}: {error}"
            );
        }
    }

    #[test]
    fn exit_codes() {
        let unavailable = PublishError::Unavailable {
            target: "t".into(),
            reason: "r".into(),
        };
        assert!(unavailable.is_fatal());
        assert_eq!(unavailable.exit_code(), exit::UNAVAILABLE);
        assert_eq!(
            PublishError::Denied {
                target: "t".into(),
                reason: "r".into()
            }
            .exit_code(),
            exit::NOPERM
        );
        assert!(!PublishError::Rejected("x".into()).is_fatal());
        assert_eq!(
            PublishError::Rejected("x".into()).exit_code(),
            exit::DATAERR
        );
    }
}

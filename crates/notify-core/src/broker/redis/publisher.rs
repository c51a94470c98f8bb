//! Publishing: the arguments of [`PUBLISH_SCRIPT`](super::scripts::PUBLISH_SCRIPT) for one
//! notification, as one command for callers that pipeline many (the CLI, the load generator)
//! and as one call on the broker's command connection (the gateway's `POST /api/publish`).

use notify_proto::{ChannelNames, Notification, Reach, StreamId};

use super::commands::CommandConnection;
use super::error::BrokerError;
use crate::broker::PublishReceipt;

/// The `EVALSHA` of the publish script for one notification, for callers that pipeline many
/// (load the script first with [`publish_script`](super::publish_script)`().load_async`).
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

/// Records and publishes one notification; the receipt carries the new id and Redis's
/// subscriber count (gateway nodes).
pub(super) async fn publish(
    connection: &CommandConnection,
    script: &redis::Script,
    channels: &ChannelNames,
    notification: &Notification,
    retention: usize,
) -> Result<PublishReceipt, BrokerError> {
    const OPERATION: &str = "publish";
    let region = notification.region;
    let (payload, retention) = publish_arguments(notification, retention);
    let mut invocation = script.key(channels.stream_key(region));
    invocation
        .arg(channels.channel(region))
        .arg(payload)
        .arg(retention);
    let (id, subscribers): (String, u64) = connection
        .run(OPERATION, |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await?;
    let id = StreamId::parse(&id).map_err(|source| BrokerError::BadId {
        operation: OPERATION,
        source,
    })?;
    Ok(PublishReceipt {
        reach: Reach::GatewayNodes(subscribers),
        id: Some(id),
    })
}

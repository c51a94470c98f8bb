//! The names the gateway gives its Redis connections (`CLIENT SETNAME`), so that an operator
//! reading `CLIENT LIST` — or a test cutting one link — can tell them apart:
//!
//! | connection | how it shows in `CLIENT LIST` |
//! |---|---|
//! | the stream follower (`XREAD BLOCK`, catch-up) | `name=notify-gateway:streams` |
//! | the command connection (publishes) | `name=notify-gateway:commands` |
//! | the replay connection (resume reads from the streams) | `name=notify-gateway:replays` |
//! | the pub/sub subscription (live messages) | `flags=P`, `sub=<regions>` (`CLIENT KILL TYPE pubsub`) |
//!
//! The subscription cannot be named: a RESP2 pub/sub connection of the driver accepts no
//! command but (un)subscribe and `PING`, so it is known by its pub/sub type instead.
//! A server that refuses `CLIENT SETNAME` (an ACL without `client`) leaves the connection
//! unnamed and working: the refusal is logged with its cause, the connection is kept.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::error::BrokerError;

/// `CLIENT SETNAME` of the stream follower's connection.
pub const STREAMS: &str = "notify-gateway:streams";

/// `CLIENT SETNAME` of the command connection (publishes).
pub const COMMANDS: &str = "notify-gateway:commands";

/// `CLIENT SETNAME` of the replay connection (resumes read from the streams on their own
/// connection, so a resume storm never queues in front of publishes).
pub const REPLAYS: &str = "notify-gateway:replays";

/// Names `connection` `name` within `timeout`. A refusal by the server is logged with its
/// cause and the connection kept; an error that shows the connection broken (or no answer in
/// time) is returned, as any first command's would be.
pub(super) async fn set_name(
    connection: &mut MultiplexedConnection,
    name: &'static str,
    timeout: Duration,
) -> Result<(), BrokerError> {
    const OPERATION: &str = "CLIENT SETNAME";
    let mut command = redis::cmd("CLIENT");
    command.arg("SETNAME").arg(name);
    let named = command.query_async::<()>(connection);
    let error = match tokio::time::timeout(timeout, named).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(source)) => BrokerError::from_redis(OPERATION, source),
        Err(_) => BrokerError::Timeout {
            operation: OPERATION,
            after: timeout,
        },
    };
    if error.breaks_connection() {
        return Err(error);
    }
    tracing::warn!(%error, name, "could not name a Redis connection; it works unnamed");
    Ok(())
}

//! [`CommandConnection`]: the broker's self-healing multiplexed connections for publishes and
//! for history reads (named [`connection_names::COMMANDS`] in `CLIENT LIST`). Made on first
//! use, every command bounded by the command timeout, and dropped (so the next command
//! reconnects) when an error shows the link is broken. They are not among the broker's links:
//! losing one fails the commands in flight, never readiness.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::connection_names;
use super::error::BrokerError;
use super::target::RedisTarget;

/// A lazily made, shared, self-healing command connection.
#[derive(Debug, Clone)]
pub(super) struct CommandConnection {
    target: RedisTarget,
    timeout: Duration,
    /// The cached connection; `None` until first use and after an error that broke it.
    cached: Arc<Mutex<Option<MultiplexedConnection>>>,
    /// How it shows in `CLIENT LIST`.
    name: &'static str,
}

impl CommandConnection {
    /// A connection to `target`'s server whose connects and commands each get `timeout`,
    /// named `name` in `CLIENT LIST`.
    pub(super) fn new(target: RedisTarget, timeout: Duration, name: &'static str) -> Self {
        CommandConnection {
            target,
            timeout,
            cached: Arc::new(Mutex::new(None)),
            name,
        }
    }

    /// Runs one command (`run` gets a handle to the connection) within the timeout.
    pub(super) async fn run<R, F, Fut>(
        &self,
        operation: &'static str,
        run: F,
    ) -> Result<R, BrokerError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<R>>,
    {
        let connection = self.connection().await?;
        let result = match tokio::time::timeout(self.timeout, run(connection)).await {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(source)) => BrokerError::from_redis(operation, source),
            Err(_) => BrokerError::Timeout {
                operation,
                after: self.timeout,
            },
        };
        if result.breaks_connection() {
            self.forget();
        }
        Err(result)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        if let Some(connection) = self.lock().clone() {
            return Ok(connection);
        }
        let connection = connect(&self.target, self.timeout, Some(self.timeout), self.name).await?;
        *self.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Opens a multiplexed connection to `target`'s server now (for a sentinel target, the
/// primary the sentinels name, checked with `ROLE`), each step within `timeout`, and names it
/// `name` (see [`connection_names`]). `response_timeout` bounds each reply (`None` for a
/// connection that runs blocking commands under its own timer).
pub(super) async fn connect(
    target: &RedisTarget,
    timeout: Duration,
    response_timeout: Option<Duration>,
    name: &'static str,
) -> Result<MultiplexedConnection, BrokerError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(response_timeout);
    let mut connection = target.connect(&config, timeout).await?;
    connection_names::set_name(&mut connection, name, timeout).await?;
    Ok(connection)
}

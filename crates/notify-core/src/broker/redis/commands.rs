//! [`CommandConnection`]: the broker's self-healing connections for publishes and for history
//! reads (named [`super::connection_names::COMMANDS`] and `REPLAYS` in `CLIENT LIST`; in a
//! cluster, one cluster connection each, routed by slot). Made on first
//! use, every command bounded by the command timeout, and dropped (so the next command
//! reconnects) when an error shows the link is broken. They are not among the broker's links:
//! losing one fails the commands in flight, never readiness.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connection::RedisConnection;
use super::error::BrokerError;
use super::target::RedisTarget;

/// A lazily made, shared, self-healing command connection.
#[derive(Debug, Clone)]
pub(super) struct CommandConnection {
    target: RedisTarget,
    timeout: Duration,
    /// The cached connection; `None` until first use and after an error that broke it.
    cached: Arc<Mutex<Option<RedisConnection>>>,
    /// How it shows in `CLIENT LIST`.
    name: &'static str,
}

impl CommandConnection {
    /// A connection to `target` whose connects and commands each get `timeout`, named `name`
    /// in `CLIENT LIST`.
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
        F: FnOnce(RedisConnection) -> Fut,
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

    async fn connection(&self) -> Result<RedisConnection, BrokerError> {
        if let Some(connection) = self.lock().clone() {
            return Ok(connection);
        }
        let connection = self
            .target
            .connect(self.timeout, Some(self.timeout), Some(self.name))
            .await?;
        *self.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<RedisConnection>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

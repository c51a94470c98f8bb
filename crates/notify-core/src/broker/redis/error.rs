//! [`BrokerError`]: why the Redis broker could not start, publish or read history. Every
//! variant keeps its cause (the driver's error, the timeout, the reply it could not read), so a
//! caller that logs it logs the real reason.

use std::time::Duration;

use notify_proto::StreamIdError;

/// Why a broker could not start, publish or read history.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The Redis URL does not parse.
    #[error("invalid Redis URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given, password masked.
        url: String,
        /// The parser's complaint.
        source: redis::RedisError,
    },
    /// A `redis+sentinel://` URL that does not parse.
    #[error("invalid Redis Sentinel URL {url:?}: {source}")]
    SentinelUrl {
        /// The URL as given, passwords masked.
        url: String,
        /// What is wrong with it.
        source: super::sentinel_url::SentinelUrlError,
    },
    /// The node the sentinels named is not (or no longer) the primary: a failover is under way.
    #[error("the node the sentinels named answers ROLE as a {role}, not the primary")]
    NotPrimary {
        /// What the node said it is.
        role: &'static str,
    },
    /// A file named for Redis TLS (`--redis-ca-cert`, a client certificate or key) could
    /// not be read.
    #[error("cannot read {}", path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS settings do not fit the URL (not `rediss://`) or hold no usable PEM.
    #[error("cannot set up TLS to Redis at {url}: {source}")]
    TlsSetup {
        /// The URL, password masked.
        url: String,
        /// The Redis client's complaint.
        source: redis::RedisError,
    },
    /// Redis could not be reached, dropped the connection or refused the command.
    #[error("Redis is unavailable ({operation}): {source}")]
    Unavailable {
        /// What was being done (`connect`, `publish`, `read history`, …).
        operation: &'static str,
        /// The driver's error.
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("Redis did not answer {operation} within {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The limit that ran out.
        after: Duration,
    },
    /// Redis answered with something the broker cannot read.
    #[error("unexpected reply from Redis to {operation}: {source}")]
    BadReply {
        /// What was being done.
        operation: &'static str,
        /// The conversion error, naming the reply.
        source: redis::RedisError,
    },
    /// Redis answered with a stream id that does not parse.
    #[error("unexpected stream id from Redis in {operation}: {source}")]
    BadId {
        /// What was being done.
        operation: &'static str,
        /// The id parser's complaint.
        source: StreamIdError,
    },
}

impl BrokerError {
    /// Classifies a driver error from `operation`: a reply that does not convert is
    /// [`BadReply`](Self::BadReply), anything else [`Unavailable`](Self::Unavailable).
    pub(crate) fn from_redis(operation: &'static str, source: redis::RedisError) -> Self {
        match source.kind() {
            redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => {
                BrokerError::BadReply { operation, source }
            }
            _ => BrokerError::Unavailable { operation, source },
        }
    }

    /// Whether the connection the error came from should be dropped and made again.
    pub(crate) fn breaks_connection(&self) -> bool {
        match self {
            BrokerError::Unavailable { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_timeout()
                    || demoted(source)
            }
            BrokerError::Timeout { .. } | BrokerError::NotPrimary { .. } => true,
            BrokerError::InvalidUrl { .. }
            | BrokerError::SentinelUrl { .. }
            | BrokerError::TlsFile { .. }
            | BrokerError::TlsSetup { .. }
            | BrokerError::BadReply { .. }
            | BrokerError::BadId { .. } => false,
        }
    }
}

/// Whether `error` says the server stopped being the primary under the connection: a write
/// refused with `READONLY`, or a blocked command ended with `UNBLOCKED` when the role changed.
fn demoted(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || error.code() == Some("UNBLOCKED")
}

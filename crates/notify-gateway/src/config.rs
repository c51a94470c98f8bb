//! Command-line and environment configuration. Every flag has an `NOTIFY_*` variable, so the
//! same binary runs from a shell, a systemd unit or a container spec.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use notify_proto::{Region, DEFAULT_CHANNEL_PREFIX, DEFAULT_MAX_PAYLOAD_BYTES};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// notify-gateway: pushes new-trending notifications to browsers over WebSocket, per region.
#[derive(Debug, Clone, Parser)]
#[command(name = "notify-gateway", version, about, long_about = None)]
pub struct GatewayConfig {
    /// Address to listen on for WebSocket and HTTP.
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,

    /// Redis URL (redis://[:password@]host:port[/db], or rediss:// for TLS). Without it the
    /// embedded single-node broker is used.
    #[arg(long, env = "NOTIFY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file of the CA that signed the Redis server's certificate (rediss://), instead of
    /// the system's roots.
    #[arg(long, env = "NOTIFY_REDIS_CA_CERT", value_name = "FILE")]
    pub redis_ca_cert: Option<PathBuf>,

    /// PEM certificate presented to Redis when it asks for one (rediss://; with
    /// --redis-client-key).
    #[arg(
        long,
        env = "NOTIFY_REDIS_CLIENT_CERT",
        value_name = "FILE",
        requires = "redis_client_key"
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(
        long,
        env = "NOTIFY_REDIS_CLIENT_KEY",
        value_name = "FILE",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,

    /// How often the Redis subscription is checked with PING; a link that stops answering is
    /// dropped and re-established (and /readyz says 503 meanwhile).
    #[arg(long, env = "NOTIFY_REDIS_PING_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_ping_interval: Duration,

    /// Regions served, comma-separated ISO 3166-1 alpha-2 codes.
    #[arg(
        long,
        env = "NOTIFY_REGIONS",
        value_delimiter = ',',
        default_value = "AE,FI,CZ,DK,BE,GB,CH,US",
        value_parser = parse_region
    )]
    pub regions: Vec<Region>,

    /// Prefix of the Redis channels: channel = prefix + region.
    #[arg(long, env = "NOTIFY_CHANNEL_PREFIX", default_value = DEFAULT_CHANNEL_PREFIX)]
    pub channel_prefix: String,

    /// Messages a client may fall behind before it is disconnected as a slow consumer
    /// (rounded up to a power of two).
    #[arg(long, env = "NOTIFY_QUEUE_LIMIT", default_value_t = 256)]
    pub queue_limit: usize,

    /// Most WebSocket connections held at once; further handshakes get HTTP 503. Also capped by
    /// the open-files limit.
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS", default_value_t = 1_000_000)]
    pub max_connections: usize,

    /// Messages kept per region for `?since=` resume: the length each Redis stream is trimmed
    /// to (approximately) on API publishes, and the size of the embedded broker's history.
    #[arg(long, env = "NOTIFY_HISTORY_RETENTION", default_value_t = 10_000)]
    pub history_retention: usize,

    /// With Redis: recent messages per region kept in memory, so most resumes need no Redis
    /// round trip.
    #[arg(long, env = "NOTIFY_HISTORY_CACHE", default_value_t = 1024)]
    pub history_cache: usize,

    /// Largest notification accepted from Redis or the HTTP API, in bytes.
    #[arg(long, env = "NOTIFY_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// Largest frame a client may send, in bytes; a larger one closes that connection.
    #[arg(long, env = "NOTIFY_MAX_CLIENT_FRAME_BYTES", default_value_t = 4096)]
    pub max_client_frame_bytes: usize,

    /// Per-connection WebSocket read buffer, in bytes. Clients only send pongs and close
    /// frames; a small buffer keeps idle connections cheap.
    #[arg(long, env = "NOTIFY_WS_READ_BUFFER_BYTES", default_value_t = 128)]
    pub ws_read_buffer_bytes: usize,

    /// Per-connection WebSocket write buffer, in bytes: queued frames are written once a batch
    /// is complete or this much is buffered. Larger means fewer syscalls per delivery under
    /// bursts, and more memory kept by busy connections (up to about twice this).
    #[arg(long, env = "NOTIFY_WS_WRITE_BUFFER_BYTES", default_value_t = 4096)]
    pub ws_write_buffer_bytes: usize,

    /// PEM certificate chain (leaf first): serve https:// and wss:// on --listen. Reloaded
    /// when the file changes or on SIGHUP. Needs --tls-key.
    #[arg(
        long,
        env = "NOTIFY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "NOTIFY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// How often --tls-cert and --tls-key are checked for a new certificate.
    #[arg(long, env = "NOTIFY_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Time a new connection has to finish its TLS handshake, and then to send its complete
    /// HTTP request head.
    #[arg(long, env = "NOTIFY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Interval of server pings to each client.
    #[arg(long, env = "NOTIFY_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A client that sends nothing (not even a pong) for this long is dropped.
    #[arg(long, env = "NOTIFY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A write to a client that does not complete in this time drops the client.
    #[arg(long, env = "NOTIFY_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT, time allowed for closing every connection before exiting.
    #[arg(long, env = "NOTIFY_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Bearer key required by POST /api/publish. Without it the API is open on a loopback
    /// listen address and disabled on any other.
    #[arg(long, env = "NOTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "NOTIFY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl GatewayConfig {
    /// The certificate files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The Redis TLS files (CA, client certificate and key), for rediss:// URLs.
    pub fn redis_tls(&self) -> notify_core::broker::redis_tls::RedisTls {
        notify_core::broker::redis_tls::RedisTls::from_files(
            self.redis_ca_cert.clone(),
            self.redis_client_cert.clone(),
            self.redis_client_key.clone(),
        )
    }
}

fn parse_region(input: &str) -> Result<Region, String> {
    Region::parse(input.trim()).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_deployment() {
        let config = GatewayConfig::try_parse_from(["notify-gateway"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8765");
        let regions: Vec<&str> = config.regions.iter().map(Region::as_str).collect();
        assert_eq!(regions, ["AE", "FI", "CZ", "DK", "BE", "GB", "CH", "US"]);
        assert!(config.redis_url.is_none());
    }

    #[test]
    fn tls_needs_both_files() {
        for flag in ["--tls-cert", "--tls-key"] {
            let error =
                GatewayConfig::try_parse_from(["notify-gateway", flag, "x.pem"]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument
            );
            assert_eq!(error.exit_code(), 2);
        }
        let both = GatewayConfig::try_parse_from([
            "notify-gateway",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(both.tls_files().unwrap().key, PathBuf::from("k.pem"));
        assert!(
            GatewayConfig::try_parse_from(["notify-gateway", "--redis-client-cert", "c"]).is_err()
        );
    }

    #[test]
    fn bad_region_is_a_usage_error() {
        let error = GatewayConfig::try_parse_from(["notify-gateway", "--regions", "AE,XX"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"XX\""), "{error}");
    }
}

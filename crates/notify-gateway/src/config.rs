//! The gateway's configuration: flags, their `NOTIFY_*` variables, and the `--config` TOML
//! file ([`crate::config_file`]), with the precedence flag > environment > file > built-in
//! default. The same binary runs from a shell, a systemd unit or a container spec.
//!
//! Every value is checked before anything starts ([`GatewayConfig::load`]): each flag's own
//! range in its value parser, the rules between flags in [`GatewayConfig::validate`], and the
//! Redis URL and TLS files in [`GatewayConfig::check_resources`]. A bad value is a usage error
//! (exit code 2, one line naming the flag, with a hint where there is one), never a panic or a
//! failure after the start was logged.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::admission::origins::OriginPattern;
use crate::client_addr::parse_proxy_network;
use crate::config_file::{config_path, ConfigFileError, FileValues};
use crate::effective_config::EffectiveConfig;
use crate::headers::parse_frame_ancestors;
use crate::publish_access::{parse_api_key, read_key_file};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use ipnet::IpNet;
use notify_core::broker::redis::suggest_redis_url;
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
#[command(
    name = "notify-gateway",
    version = crate::build_info::VERSION,
    about,
    long_about = None,
    after_help = AFTER_HELP
)]
pub struct GatewayConfig {
    /// TOML file of settings: keys are the long flag names (`queue-limit = 512`,
    /// `regions = ["AE", "FI"]`). Flags and NOTIFY_* variables override it.
    #[arg(long, env = "NOTIFY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration (flags, environment, --config file, the Redis URL and TLS
    /// files), print the effective settings with secrets masked, and exit: 0 if valid, 2 if
    /// not. Nothing is bound or connected.
    #[arg(long)]
    pub check_config: bool,

    /// Address to listen on for WebSocket and HTTP: IP:PORT, HOST:PORT (resolved at start) or
    /// :PORT (every IPv4 interface, 0.0.0.0).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:8765", value_parser = parse_listen_flag)]
    pub listen: SocketAddr,

    /// Redis URL (redis://[:password@]host:port[/db], or rediss:// for TLS). Without it the
    /// embedded single-node broker is used.
    #[arg(long, env = "NOTIFY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// File holding the Redis URL (first non-comment line), so its password is neither on the
    /// command line nor in the environment of every child. Instead of --redis-url.
    #[arg(long, env = "NOTIFY_REDIS_URL_FILE", value_name = "FILE", conflicts_with = "redis_url", value_parser = parse_redis_url_file)]
    pub redis_url_file: Option<String>,

    /// The Redis URL names a Redis Cluster: seed nodes, comma-separated
    /// (redis://h1:7000,redis://h2:7001). Keys are hash-tagged per region (tvs:{AE}:stream) and
    /// live messages use sharded pub/sub.
    #[arg(long, env = "NOTIFY_REDIS_CLUSTER")]
    pub redis_cluster: bool,

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
    #[arg(long, env = "NOTIFY_REDIS_PING_INTERVAL", default_value = "5s", value_parser = parse_period)]
    pub redis_ping_interval: Duration,

    /// With --redis-cluster: most live messages received from the cluster and not yet handled.
    /// A burst past it makes the subscription again (id-carrying messages still arrive through
    /// the streams; plain PUBLISHes of that moment are lost) instead of growing memory.
    #[arg(long, env = "NOTIFY_REDIS_PUSH_QUEUE", default_value_t = notify_core::broker::redis::cluster::PUSH_QUEUE, value_parser = count_within::<1, 1_000_000>)]
    pub redis_push_queue: usize,

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

    /// Messages a client may fall behind before it is disconnected as a slow consumer.
    #[arg(long, env = "NOTIFY_QUEUE_LIMIT", default_value_t = 256, value_parser = count_within::<1, MAX_QUEUE_LIMIT>)]
    pub queue_limit: usize,

    /// Most WebSocket connections held at once; further handshakes get HTTP 503. Also capped by
    /// the open-files limit.
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS", default_value_t = 1_000_000, value_parser = count_within::<1, 10_000_000>)]
    pub max_connections: usize,

    /// Most regions one connection may ask for (`?region=AE,FI`); a connection to several
    /// regions still takes one connection slot.
    #[arg(long, env = "NOTIFY_MAX_REGIONS_PER_CONNECTION", default_value_t = 8, value_parser = count_within::<1, 1024>)]
    pub max_regions_per_connection: usize,

    /// Messages kept per region for `?since=` resume: the length each Redis stream is trimmed
    /// to (approximately) on API publishes, and the size of the embedded broker's history.
    #[arg(long, env = "NOTIFY_HISTORY_RETENTION", default_value_t = 10_000, value_parser = count_within::<1, 10_000_000>)]
    pub history_retention: usize,

    /// With Redis: recent messages per region kept in memory, so most resumes need no Redis
    /// round trip.
    #[arg(long, env = "NOTIFY_HISTORY_CACHE", default_value_t = 1024, value_parser = count_within::<0, 1_000_000>)]
    pub history_cache: usize,

    /// Most resumes (`?since=`) replaying history at once, across all clients; each replay
    /// reads and sends one page at a time. A resume beyond it waits for a turn.
    #[arg(long, env = "NOTIFY_MAX_CONCURRENT_REPLAYS", default_value_t = 64, value_parser = count_within::<1, 100_000>)]
    pub max_concurrent_replays: usize,

    /// How long a resume waits for a turn to replay; past it the connection is closed with
    /// 1013 (try again later) so the client backs off and retries.
    #[arg(long, env = "NOTIFY_REPLAY_WAIT", default_value = "5s", value_parser = parse_period)]
    pub replay_wait: Duration,

    /// Largest notification accepted from Redis or the HTTP API, in bytes.
    #[arg(long, env = "NOTIFY_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES, value_parser = count_within::<256, { 16 << 20 }>)]
    pub max_payload_bytes: usize,

    /// Largest frame a client may send, in bytes; a larger one closes that connection.
    #[arg(long, env = "NOTIFY_MAX_CLIENT_FRAME_BYTES", default_value_t = 4096, value_parser = count_within::<125, { 1 << 20 }>)]
    pub max_client_frame_bytes: usize,

    /// Per-connection WebSocket read buffer, in bytes. Clients only send pongs and close
    /// frames; a small buffer keeps idle connections cheap.
    #[arg(long, env = "NOTIFY_WS_READ_BUFFER_BYTES", default_value_t = 128, value_parser = count_within::<16, { 1 << 20 }>)]
    pub ws_read_buffer_bytes: usize,

    /// Per-connection WebSocket write buffer, in bytes: queued frames are written once a batch
    /// is complete or this much is buffered. Larger means fewer syscalls per delivery under
    /// bursts, and more memory kept by busy connections (up to about twice this).
    #[arg(long, env = "NOTIFY_WS_WRITE_BUFFER_BYTES", default_value_t = 4096, value_parser = count_within::<1, { 16 << 20 }>)]
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
    #[arg(long, env = "NOTIFY_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_period)]
    pub tls_reload_interval: Duration,

    /// Most bytes a WebSocket's unsent frames (messages, pongs, close) may take. A client
    /// whose socket backs up past it is cut as a slow consumer; pongs to a ping flood stop
    /// being queued. Must hold the largest notification on top of the write batch; default
    /// twice (write buffer + max payload), 136 KiB with the other defaults.
    #[arg(long, env = "NOTIFY_WS_MAX_WRITE_BUFFER_BYTES", value_parser = count_within::<1, { 64 << 20 }>)]
    pub ws_max_write_buffer_bytes: Option<usize>,

    /// Time a new connection has for each step before its request: the PROXY header (with
    /// --proxy-protocol), the TLS handshake (with --tls-cert), then the complete HTTP request
    /// head.
    #[arg(long, env = "NOTIFY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_period)]
    pub handshake_timeout: Duration,

    /// Interval of server pings to each client.
    #[arg(long, env = "NOTIFY_PING_INTERVAL", default_value = "20s", value_parser = parse_period)]
    pub ping_interval: Duration,

    /// A client that sends nothing (not even a pong) for this long is dropped (checked at each
    /// ping tick: within two ping intervals after).
    #[arg(long, env = "NOTIFY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_period)]
    pub idle_timeout: Duration,

    /// A write to a client that does not complete in this time drops the client.
    #[arg(long, env = "NOTIFY_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_period)]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT, time allowed for closing every connection before exiting.
    #[arg(long, env = "NOTIFY_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_period)]
    pub drain_timeout: Duration,

    /// On SIGTERM/SIGINT, time spent failing /readyz (and refusing new WebSockets with 503)
    /// while still serving every open connection, before closing them with 1001: a load
    /// balancer health-checking /readyz takes the node out of rotation first, so the clients it
    /// closes reconnect to other nodes. Set it above the balancer's time to mark a node down
    /// (HAProxy: `inter` + (`fall` - 1) × `fastinter`). 0 closes at once.
    #[arg(long, env = "NOTIFY_DRAIN_DELAY", default_value = "0s", value_parser = parse_delay)]
    pub drain_delay: Duration,

    /// Bearer key required by POST /api/publish; repeat the flag (or separate with commas) to
    /// accept several during a rotation. Without any key the API is open on a loopback listen
    /// address and disabled on any other. An empty key is refused.
    #[arg(long, env = "NOTIFY_API_KEY", hide_env_values = true, value_delimiter = ',', value_parser = parse_api_key)]
    pub api_key: Vec<String>,

    /// File holding the API keys, one per line (blank lines and # comments ignored), so the
    /// key is neither on the command line nor in the environment. Adds to --api-key.
    #[arg(long, env = "NOTIFY_API_KEY_FILE", value_parser = parse_key_file)]
    pub api_key_file: Option<KeyFile>,

    /// Web pages allowed to open WebSockets, comma-separated: exact origins
    /// (https://www.example.com) and subdomain patterns (https://*.example.com, which does not
    /// match the apex). A handshake with another Origin gets 403; one without Origin (not a
    /// browser) is allowed. Default: every origin.
    #[arg(long, env = "NOTIFY_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin_pattern)]
    pub allowed_origins: Vec<OriginPattern>,

    /// Open WebSockets allowed per client address (IPv6: per /64); further handshakes get 429.
    /// 0: no per-address cap (the default; --max-connections still applies).
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// WebSocket handshakes per second allowed per client address (IPv6: per /64), after a
    /// burst of --handshake-burst-per-ip; further ones get 429 with Retry-After. 0: no limit
    /// (the default).
    #[arg(long, env = "NOTIFY_HANDSHAKE_RATE_PER_IP", default_value_t = 0)]
    pub handshake_rate_per_ip: u32,

    /// Handshakes a client address may make at once before --handshake-rate-per-ip applies.
    #[arg(long, env = "NOTIFY_HANDSHAKE_BURST_PER_IP", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub handshake_burst_per_ip: u32,

    /// Proxies whose X-Forwarded-For / Forwarded headers name the client, comma-separated
    /// CIDR blocks or addresses. Without it those headers are ignored and the TCP peer is the
    /// client.
    #[arg(long, env = "NOTIFY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<IpNet>,

    /// Connections from --trusted-proxies start with a PROXY protocol header (HAProxy v1 or
    /// v2) naming the client; connections from other peers are plain HTTP.
    #[arg(long, env = "NOTIFY_PROXY_PROTOCOL", requires = "trusted_proxies")]
    pub proxy_protocol: bool,

    /// Who may frame the pages: the Content-Security-Policy frame-ancestors source list.
    #[arg(long, env = "NOTIFY_FRAME_ANCESTORS", default_value = "'none'", value_parser = parse_frame_ancestors_flag)]
    pub frame_ancestors: String,

    /// Separate address for /metrics, /api/*, /healthz and /readyz; when set, the public
    /// address no longer serves /metrics and /api/*. Same forms as --listen.
    #[arg(long, env = "NOTIFY_ADMIN_LISTEN", value_parser = parse_listen_flag)]
    pub admin_listen: Option<SocketAddr>,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "NOTIFY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_redis_url_file(path: &str) -> Result<String, String> {
    notify_core::broker::redis::read_url_file(std::path::Path::new(path))
        .map_err(|error| error.to_string())
}

/// The keys read from `--api-key-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile(pub Vec<String>);

fn parse_key_file(path: &str) -> Result<KeyFile, String> {
    read_key_file(path)
        .map(KeyFile)
        .map_err(|error| error.to_string())
}

impl GatewayConfig {
    /// The Redis URL, from `--redis-url` or `--redis-url-file`; `None`: the embedded broker.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref().or(self.redis_url_file.as_deref())
    }

    /// Every configured API key: `--api-key` values, then the key file's.
    pub fn api_keys(&self) -> Vec<&str> {
        let from_file = self.api_key_file.iter().flat_map(|file| &file.0);
        self.api_key
            .iter()
            .chain(from_file)
            .map(String::as_str)
            .collect()
    }

    /// The certificate files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The Redis TLS files (CA, client certificate and key), for rediss:// URLs.
    pub fn redis_tls(&self) -> notify_core::broker::redis::RedisTls {
        notify_core::broker::redis::RedisTls::from_files(
            self.redis_ca_cert.clone(),
            self.redis_client_cert.clone(),
            self.redis_client_key.clone(),
        )
    }
}

/// Largest `--queue-limit`: each region keeps a ring of this many shared frames.
pub const MAX_QUEUE_LIMIT: usize = 65_536;

/// Longest accepted duration for any period or timeout flag.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// `--help` text after the flags: where settings come from, and the exit status.
pub const AFTER_HELP: &str = "\
Configuration: every flag can also be set by its NOTIFY_* variable (shown with each flag) and
by a key of the --config TOML file with the flag's long name (queue-limit = 512,
regions = [\"AE\", \"FI\"], proxy-protocol = true). A flag wins over its variable, the
variable over the file, the file over the built-in default. Unknown keys are errors.
--check-config prints the effective settings, secrets masked, and where each came from.

Exit status:
  0   stopped on SIGTERM/SIGINT after draining; --check-config: the configuration is valid
  1   any other failure after the start
  2   configuration error: a bad flag, variable or --config file value, an unreadable file
  69  an address (--listen, --admin-listen) cannot be bound, e.g. already in use";

/// A rule between flags that their own ranges cannot express, or a setting that names a
/// resource that cannot be used (a Redis URL that does not parse, unreadable TLS files).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A cluster is reached through its seed nodes' URLs.
    #[error("--redis-cluster needs the seed nodes in --redis-url or --redis-url-file")]
    ClusterWithoutRedisUrl,
    /// Silence is measured between pings, so a timeout that is not longer than the ping
    /// interval would drop clients that answer every ping.
    #[error(
        "--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?}): \
         clients answer pings, so a shorter timeout drops healthy clients"
    )]
    IdleTimeoutNotAbovePing {
        /// `--idle-timeout`.
        idle: Duration,
        /// `--ping-interval`.
        ping: Duration,
    },
    /// The write-buffer cap must leave room for one full write batch plus the largest
    /// notification, or every large message would cut its clients.
    #[error(
        "--ws-max-write-buffer-bytes ({cap}) must be more than --ws-write-buffer-bytes + \
         --max-payload-bytes + {WRITE_BUFFER_HEADROOM} ({needed})"
    )]
    WriteBufferCapTooSmall {
        /// `--ws-max-write-buffer-bytes`.
        cap: usize,
        /// The least value that works with the other two flags.
        needed: usize,
    },
    /// One of two settings that only work together (a certificate and its key).
    #[error("{given} is set but {missing} is not: give both or neither")]
    HalfPair {
        /// The flag that is set.
        given: &'static str,
        /// Its partner.
        missing: &'static str,
    },
    /// Both sources of the Redis URL in the configuration file.
    #[error("{file}: `redis-url` and `redis-url-file` are both set: keep one")]
    TwoRedisUrls {
        /// The configuration file.
        file: String,
    },
    /// A Redis URL without a scheme, the commonest slip (`127.0.0.1:6379`).
    #[error("{flag} {shown:?} is not a Redis URL: did you mean {suggestion}?")]
    RedisUrlWithoutScheme {
        /// Where the URL came from (`--redis-url` or `--redis-url-file`).
        flag: &'static str,
        /// The URL as given, secrets masked.
        shown: String,
        /// The URL with `redis://` in front, secrets masked.
        suggestion: String,
    },
    /// A Redis URL (or its TLS files) the Redis client refuses.
    #[error(
        "{flag}: {source} (expected redis://[:password@]host:port[/db] or rediss://… for TLS)"
    )]
    RedisUrl {
        /// Where the URL came from.
        flag: &'static str,
        /// The client's complaint (URL masked).
        source: notify_core::broker::redis::BrokerError,
    },
    /// `--tls-cert` / `--tls-key` that do not load.
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Why the configuration cannot be loaded; each prints as one message.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or variable clap refused (or `--help`/`--version`, which are not errors).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The `--config` file.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A rule between settings, or a resource a setting names.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl LoadError {
    /// Prints the error once on stderr (clap's own format for clap's errors, else one
    /// `error:` line) and returns the exit code: 0 for `--help`/`--version`, else 2.
    pub fn report(&self) -> u8 {
        match self {
            LoadError::Usage(error) => {
                let _ = error.print();
                u8::try_from(error.exit_code()).unwrap_or(crate::exit::USAGE)
            }
            other => {
                eprintln!("error: {}", with_causes(other));
                crate::exit::USAGE
            }
        }
    }
}

/// The error's message followed by each cause the message does not already contain.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = current.source();
    }
    message
}

/// Room in the write-buffer cap for a frame header and the `id` a notification gains.
pub const WRITE_BUFFER_HEADROOM: usize = 1024;

/// A configuration that passed every check, and what `--check-config` shows of it.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The settings.
    pub config: GatewayConfig,
    /// Each setting's value (secrets masked) and where it came from.
    pub effective: EffectiveConfig,
}

impl GatewayConfig {
    /// Reads the command line `args`, the environment (`env`) and the `--config` file, then
    /// runs every check: each value's parser, [`Self::validate`] and
    /// [`Self::check_resources`].
    pub fn load(
        args: Vec<OsString>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<LoadedConfig, LoadError> {
        let file = match config_path(&args, env) {
            Some(path) => FileValues::read(&path, &Self::command())?,
            None => FileValues::default(),
        };
        let matches = file.apply(Self::command()).try_get_matches_from(args)?;
        let mut config = Self::from_arg_matches(&matches)?;
        config.prefer_the_stronger_redis_url(&matches, &file)?;
        config.validate()?;
        config.check_resources()?;
        let effective = EffectiveConfig::from_matches(&Self::command(), &matches, &file, &config);
        Ok(LoadedConfig { config, effective })
    }

    /// `--redis-url` and `--redis-url-file` exclude each other on the command line; when one
    /// comes from the file and the other from a flag or variable, the flag or variable wins.
    fn prefer_the_stronger_redis_url(
        &mut self,
        matches: &ArgMatches,
        file: &FileValues,
    ) -> Result<(), ConfigError> {
        if self.redis_url.is_none() || self.redis_url_file.is_none() {
            return Ok(());
        }
        let from_file = |id| matches.value_source(id) == Some(ValueSource::DefaultValue);
        match (from_file("redis_url"), from_file("redis_url_file")) {
            (true, true) => Err(ConfigError::TwoRedisUrls {
                file: file
                    .path
                    .as_ref()
                    .map(|path| path.display().to_string())
                    .unwrap_or_default(),
            }),
            (true, false) => {
                self.redis_url = None;
                Ok(())
            }
            _ => {
                self.redis_url_file = None;
                Ok(())
            }
        }
    }

    /// Checks the rules between flags (each flag's own range is checked while parsing).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_cluster && self.redis_url().is_none() {
            return Err(ConfigError::ClusterWithoutRedisUrl);
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::IdleTimeoutNotAbovePing {
                idle: self.idle_timeout,
                ping: self.ping_interval,
            });
        }
        let needed = self.ws_write_buffer_bytes + self.max_payload_bytes + WRITE_BUFFER_HEADROOM;
        if self.ws_max_write_buffer_bytes() <= needed {
            return Err(ConfigError::WriteBufferCapTooSmall {
                cap: self.ws_max_write_buffer_bytes(),
                needed: needed + 1,
            });
        }
        // clap ties these pairs together on the command line; a file value can bring one alone.
        for (first, second, names) in [
            (
                self.tls_cert.is_some(),
                self.tls_key.is_some(),
                ("--tls-cert", "--tls-key"),
            ),
            (
                self.redis_client_cert.is_some(),
                self.redis_client_key.is_some(),
                ("--redis-client-cert", "--redis-client-key"),
            ),
        ] {
            if first != second {
                let (given, missing) = if first { names } else { (names.1, names.0) };
                return Err(ConfigError::HalfPair { given, missing });
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(ConfigError::HalfPair {
                given: "--proxy-protocol",
                missing: "--trusted-proxies",
            });
        }
        if let Some(suggestion) = self.redis_url().and_then(suggest_redis_url) {
            return Err(ConfigError::RedisUrlWithoutScheme {
                flag: self.redis_url_flag(),
                shown: suggestion["redis://".len()..].to_owned(),
                suggestion,
            });
        }
        Ok(())
    }

    /// Checks what the settings name without connecting or binding: the Redis URL parses
    /// (with its TLS files, if any) and the served certificate and key load.
    pub fn check_resources(&self) -> Result<(), ConfigError> {
        if let Some(url) = self.redis_url() {
            let layout = notify_proto::KeyLayout::for_cluster(self.redis_cluster);
            notify_core::broker::redis::RedisTarget::new(url, &self.redis_tls(), layout).map_err(
                |source| ConfigError::RedisUrl {
                    flag: self.redis_url_flag(),
                    source,
                },
            )?;
        }
        if let Some(files) = self.tls_files() {
            crate::tls::TlsTerminator::new(files)?;
        }
        Ok(())
    }

    /// The flag the Redis URL came from.
    fn redis_url_flag(&self) -> &'static str {
        if self.redis_url.is_some() {
            "--redis-url"
        } else {
            "--redis-url-file"
        }
    }

    /// `--ws-max-write-buffer-bytes`, or its default: twice one write batch plus the largest
    /// notification.
    pub fn ws_max_write_buffer_bytes(&self) -> usize {
        self.ws_max_write_buffer_bytes
            .unwrap_or(2 * (self.ws_write_buffer_bytes + self.max_payload_bytes))
    }
}

/// A duration flag: `humantime` syntax (`250ms`, `5s`, `1m`), at least 1 ms and at most a day.
/// Zero would panic the timers that use it; longer than a day is a typo.
fn parse_period(input: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(input).map_err(|error| error.to_string())?;
    if period < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    if period > MAX_PERIOD {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(MAX_PERIOD)
        ));
    }
    Ok(period)
}

/// A delay flag: like [`parse_period`] but zero is allowed (no delay).
fn parse_delay(input: &str) -> Result<Duration, String> {
    match humantime::parse_duration(input).map_err(|error| error.to_string())? {
        Duration::ZERO => Ok(Duration::ZERO),
        _ => parse_period(input),
    }
}

/// A count or size flag within `MIN..=MAX`.
fn count_within<const MIN: usize, const MAX: usize>(input: &str) -> Result<usize, String> {
    let value: usize = input
        .trim()
        .parse()
        .map_err(|error| format!("not a whole number: {error}"))?;
    if !(MIN..=MAX).contains(&value) {
        return Err(format!("must be between {MIN} and {MAX}"));
    }
    Ok(value)
}

fn parse_origin_pattern(input: &str) -> Result<OriginPattern, String> {
    OriginPattern::parse(input).map_err(|error| error.to_string())
}

fn parse_trusted_proxy(input: &str) -> Result<IpNet, String> {
    parse_proxy_network(input).map_err(|error| error.to_string())
}

fn parse_frame_ancestors_flag(input: &str) -> Result<String, String> {
    parse_frame_ancestors(input).map_err(|error| error.to_string())
}

fn parse_listen_flag(input: &str) -> Result<SocketAddr, String> {
    crate::listen_address::parse_listen_address(input).map_err(|error| error.to_string())
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
    fn drain_delay_is_off_by_default_and_may_be_zero() {
        let parse = |args: &[&str]| {
            GatewayConfig::try_parse_from(
                std::iter::once("notify-gateway").chain(args.iter().copied()),
            )
            .unwrap()
            .drain_delay
        };
        assert_eq!(parse(&[]), Duration::ZERO);
        assert_eq!(parse(&["--drain-delay", "0s"]), Duration::ZERO);
        assert_eq!(parse(&["--drain-delay", "3s"]), Duration::from_secs(3));
    }

    #[test]
    fn a_cluster_needs_its_seed_urls() {
        let without = GatewayConfig::try_parse_from(["notify-gateway", "--redis-cluster"]).unwrap();
        assert!(matches!(
            without.validate(),
            Err(ConfigError::ClusterWithoutRedisUrl)
        ));
        let with = GatewayConfig::try_parse_from([
            "notify-gateway",
            "--redis-cluster",
            "--redis-url",
            "redis://h1:7000,redis://h2:7001",
        ])
        .unwrap();
        assert!(with.validate().is_ok());
        assert!(with.check_resources().is_ok());
    }

    #[test]
    fn empty_api_keys_are_usage_errors() {
        for value in ["", "   "] {
            let error =
                GatewayConfig::try_parse_from(["notify-gateway", "--api-key", value]).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            assert!(error.to_string().contains("must not be empty"), "{error}");
        }
        let config = GatewayConfig::try_parse_from([
            "notify-gateway",
            "--api-key",
            "old,new",
            "--api-key",
            "third",
        ])
        .unwrap();
        assert_eq!(config.api_keys(), ["old", "new", "third"]);
    }

    #[test]
    fn limit_flags_parse_and_refuse_nonsense() {
        let config = GatewayConfig::try_parse_from([
            "notify-gateway",
            "--allowed-origins",
            "https://www.example.com,https://*.example.com",
            "--trusted-proxies",
            "10.0.0.0/8,192.0.2.1",
        ])
        .unwrap();
        assert_eq!(config.allowed_origins.len(), 2);
        assert_eq!(config.trusted_proxies[1].to_string(), "192.0.2.1/32");
        assert_eq!(config.max_connections_per_ip, 0);
        assert_eq!(config.handshake_rate_per_ip, 0);
        for args in [
            ["--allowed-origins", "*.example.com"],
            ["--trusted-proxies", "10.0.0.0/40"],
            ["--handshake-burst-per-ip", "0"],
            ["--frame-ancestors", "'none'; script-src *"],
            ["--proxy-protocol", "--regions=AE"],
        ] {
            let error =
                GatewayConfig::try_parse_from(["notify-gateway", args[0], args[1]]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }

    #[test]
    fn bad_region_is_a_usage_error() {
        let error = GatewayConfig::try_parse_from(["notify-gateway", "--regions", "AE,XX"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"XX\""), "{error}");
    }

    fn parse_error(args: &[&str]) -> String {
        let mut argv = vec!["notify-gateway"];
        argv.extend_from_slice(args);
        match GatewayConfig::try_parse_from(argv) {
            Ok(config) => match config.validate() {
                Ok(()) => panic!("{args:?} was accepted"),
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn zero_and_absurd_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--ping-interval", "0s"], "--ping-interval"),
            (&["--redis-ping-interval", "0s"], "--redis-ping-interval"),
            (&["--idle-timeout", "0ms"], "--idle-timeout"),
            (&["--write-timeout", "0s"], "--write-timeout"),
            (&["--drain-timeout", "0s"], "--drain-timeout"),
            (&["--handshake-timeout", "0s"], "--handshake-timeout"),
            (&["--handshake-timeout", "400days"], "--handshake-timeout"),
            (&["--drain-delay", "400days"], "--drain-delay"),
            (&["--drain-delay", "soon"], "--drain-delay"),
            (&["--queue-limit", "0"], "--queue-limit"),
            (&["--queue-limit", "18446744073709551615"], "--queue-limit"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--history-retention", "0"], "--history-retention"),
            (&["--max-payload-bytes", "0"], "--max-payload-bytes"),
            (
                &["--max-client-frame-bytes", "10"],
                "--max-client-frame-bytes",
            ),
            (&["--ws-read-buffer-bytes", "0"], "--ws-read-buffer-bytes"),
            (&["--ws-write-buffer-bytes", "0"], "--ws-write-buffer-bytes"),
            (
                &["--ping-interval", "30s", "--idle-timeout", "30s"],
                "--idle-timeout",
            ),
            (
                &["--ws-max-write-buffer-bytes", "4096"],
                "--ws-max-write-buffer-bytes",
            ),
        ];
        for (args, flag) in cases {
            let error = parse_error(args);
            assert!(error.contains(flag), "{args:?}: {error}");
        }
        for accepted in [
            &["--queue-limit", "65536"][..],
            &["--ws-write-buffer-bytes", "65536"],
            &["--max-payload-bytes", "16777216"],
        ] {
            let mut argv = vec!["notify-gateway"];
            argv.extend_from_slice(accepted);
            let config = GatewayConfig::try_parse_from(argv).unwrap();
            assert!(config.validate().is_ok(), "{accepted:?}");
        }
    }
}

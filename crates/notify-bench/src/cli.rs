//! Command-line flags, their limits, and the loopback-only rule for every address the
//! generator talks to.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use notify_proto::Region;
use serde::Serialize;

use crate::transport::Transport;

/// Most clients one run may open: the gateway, like this process, has 20,000 file descriptors.
pub const MAX_CLIENTS: usize = 19_900;
/// Most messages one run may publish (each is kept in memory for byte-exact verification).
pub const MAX_MESSAGES: u64 = 1_000_000;
/// Highest steady publish rate, messages per second.
pub const MAX_RATE: f64 = 100_000.0;
/// Longest steady phase and longest overall timeout.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Highest churn rate, client replacements per second.
pub const MAX_CHURN_RATE: f64 = 5_000.0;
/// Most clients a `scale` run spreads over its client processes.
pub const MAX_SCALE_CLIENTS: usize = 200_000;
/// Most client processes a `scale` run starts.
pub const MAX_CLIENT_PROCESSES: usize = 32;
/// Most gateways `chaos` starts.
pub const MAX_GATEWAYS: usize = 16;
/// Highest `chaos` client drop rate, per second.
pub const MAX_DROP_RATE: f64 = 1_000.0;
/// Longest `soak`.
pub const MAX_SOAK_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Shortest interval between link cuts or between gateway restarts.
pub const MIN_CHAOS_INTERVAL: Duration = Duration::from_millis(100);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Connect N clients and hold them: handshakes/s and gateway memory per connection.
    Idle,
    /// Connect N clients, publish M messages as fast as possible: deliveries/s, CPU per delivery.
    Fanout,
    /// Publish at a steady rate: publish-to-client latency percentiles.
    Latency,
    /// Clients connect and leave continuously while messages flow at a steady rate.
    Churn,
    /// Starts its own gateways and, while messages flow at a steady rate, drops clients, cuts
    /// the gateways' Redis subscriptions and restarts gateways; every client resumes with
    /// `?since=` and must get every message of its region exactly once, in order.
    Chaos,
    /// Runs for as long as `--duration` says (30 s … hours): clients with churn, plain and
    /// id-carrying publishes at a steady rate, and on a schedule every kind of fault (link
    /// cuts, Redis restarts with and without data, foreign ids, gateway restarts); a progress
    /// line every `--report-interval`, and a verdict on delivery, memory, descriptors,
    /// reconnects and readiness at the end.
    Soak,
    /// Needs no gateway: writes one `--frame-bytes` frame per round to each of `--clients`
    /// loopback sockets at `--rate` rounds/s for `--duration`, from one thread and from two —
    /// the kernel's floor under any gateway's fan-out (CPU per send, round time p50/p99).
    SendFloor,
    /// More clients than one process holds: starts its own gateways (`--gateways`) and
    /// `--client-processes` client processes, each with its share of `--clients` spread over
    /// every gateway; measures the fleet's RSS per idle connection, fan-out latency and Redis
    /// CPU per message at each of `--scale-rates`, and a reconnect storm (one gateway
    /// SIGKILLed, its clients resume with `since` on the others: time, loss, replay sources).
    Scale,
    /// One client process of `scale` (started by it; commands on stdin, answers on stdout).
    #[value(hide = true)]
    ScaleWorker,
}

/// Where messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `PUBLISH tvs:{REGION}` on Redis, pipelined.
    Redis,
    /// `POST /api/publish` on the gateway.
    Http,
}

/// `notify-bench <scenario> [flags]`: measures a running notify gateway from outside.
#[derive(Debug, Parser)]
#[command(name = "notify-bench", version, about, long_about = None)]
pub struct Args {
    /// Scenario to run.
    #[arg(value_enum, env = "NOTIFY_BENCH_SCENARIO")]
    pub scenario: Scenario,

    /// Gateway base URL (loopback only).
    #[arg(
        long,
        env = "NOTIFY_BENCH_GATEWAY",
        default_value = "http://127.0.0.1:8765"
    )]
    pub gateway: String,

    /// How the clients of `idle`, `fanout`, `latency` and `churn` connect: WebSocket
    /// (`/?region=XX`) or Server-Sent Events (`GET /events?region=XX`, plain HTTP only).
    #[arg(long, value_enum, env = "NOTIFY_BENCH_TRANSPORT", default_value_t = Transport::Websocket)]
    pub transport: Transport,

    /// PEM file of the CA that signed the gateway's certificate: clients connect with
    /// `wss://` and HTTP goes over `https://` (a gateway started with `--tls-cert`).
    #[arg(long, env = "NOTIFY_BENCH_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Redis URL the gateway subscribes to (loopback only); used with `--via redis`.
    #[arg(
        long,
        env = "NOTIFY_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// With `--via redis`: `--redis-url` holds a Redis Cluster's seed nodes, comma-separated;
    /// messages go out with `SPUBLISH` on each region's shard channel (`tvs:{AE}`), the path a
    /// gateway started with `--redis-cluster` listens on.
    #[arg(long, env = "NOTIFY_BENCH_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Publish through Redis or through the gateway's `POST /api/publish`.
    #[arg(long, value_enum, env = "NOTIFY_BENCH_VIA", default_value_t = Via::Redis)]
    pub via: Via,

    /// Bearer key for `POST /api/publish` when the gateway requires one.
    #[arg(long, env = "NOTIFY_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Regions to spread clients and messages over, round-robin.
    #[arg(
        long,
        env = "NOTIFY_BENCH_REGIONS",
        value_delimiter = ',',
        value_parser = parse_region,
        default_value = "AE,FI,CZ,DK,BE,GB,CH,US"
    )]
    pub regions: Vec<Region>,

    /// Redis channel prefix the gateway subscribes under.
    #[arg(long, env = "NOTIFY_BENCH_CHANNEL_PREFIX", default_value = "tvs:")]
    pub channel_prefix: String,

    /// `idle`: regions each client asks for on its one connection (`?region=AE,FI,CZ`): its
    /// own round-robin region and the next ones in `--regions`; at most `--regions`' count.
    #[arg(long, env = "NOTIFY_BENCH_REGIONS_PER_CLIENT", default_value_t = 1)]
    pub regions_per_client: usize,

    /// WebSocket clients to open (at most 19,900).
    #[arg(long, env = "NOTIFY_BENCH_CLIENTS", default_value_t = 1000)]
    pub clients: usize,

    /// Messages to publish in `fanout` (at most 1,000,000).
    #[arg(long, env = "NOTIFY_BENCH_MESSAGES", default_value_t = 1000)]
    pub messages: u64,

    /// Steady publish rate for `latency` and `churn`, messages per second.
    #[arg(long, env = "NOTIFY_BENCH_RATE", default_value_t = 10.0)]
    pub rate: f64,

    /// Length of the steady phase of `latency` and `churn` (e.g. 10s).
    #[arg(long, env = "NOTIFY_BENCH_DURATION", value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Clients replaced per second in `churn` (one leaves, a new one connects).
    #[arg(long, env = "NOTIFY_BENCH_CHURN_RATE", default_value_t = 20.0)]
    pub churn_rate: f64,

    /// In `churn`, a client must get every message published from this long after its
    /// handshake until this long before it leaves.
    #[arg(long, env = "NOTIFY_BENCH_GRACE", value_parser = parse_duration, default_value = "500ms")]
    pub grace: Duration,

    /// WebSocket handshakes in flight at once.
    #[arg(long, env = "NOTIFY_BENCH_CONNECT_CONCURRENCY", default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Loopback source addresses to spread clients over: 127.0.B.1 .. 127.0.B.N, with the
    /// block B chosen per run (see `--fixed-sources`).
    #[arg(long, env = "NOTIFY_BENCH_SOURCE_IPS", default_value_t = 8)]
    pub source_ips: u8,

    /// Always use 127.0.0.1 .. 127.0.0.N instead of a block chosen per run.
    #[arg(long, env = "NOTIFY_BENCH_FIXED_SOURCES")]
    pub fixed_sources: bool,

    /// Publishes in flight at once (Redis pipeline depth, concurrent HTTP requests).
    #[arg(long, env = "NOTIFY_BENCH_PIPELINE", default_value_t = 64)]
    pub pipeline: usize,

    /// Upper bound for the whole run.
    #[arg(long, env = "NOTIFY_BENCH_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,

    /// Pause after connecting before measuring memory or publishing.
    #[arg(long, env = "NOTIFY_BENCH_SETTLE", value_parser = parse_duration, default_value = "2s")]
    pub settle: Duration,

    /// Gateway process id for RSS and CPU; found via /proc when absent.
    #[arg(long, env = "NOTIFY_BENCH_GATEWAY_PID")]
    pub gateway_pid: Option<u32>,

    /// Runtime worker threads of the generator itself.
    #[arg(long, env = "NOTIFY_BENCH_THREADS", default_value_t = 2)]
    pub threads: usize,

    /// Exit 0 even when messages were lost, duplicated or reordered.
    #[arg(long, env = "NOTIFY_BENCH_ALLOW_LOSS")]
    pub allow_loss: bool,

    /// `chaos`: the notify-gateway binary to start (`--gateways` copies, on free loopback
    /// ports, each with `--redis-url`).
    #[arg(long, env = "NOTIFY_BENCH_GATEWAY_BIN")]
    pub gateway_bin: Option<PathBuf>,

    /// `chaos`: gateways to start.
    #[arg(long, env = "NOTIFY_BENCH_GATEWAYS", default_value_t = 2)]
    pub gateways: usize,

    /// `chaos`: one more argument for every gateway started (repeat the flag for several,
    /// e.g. `--gateway-arg=--drain-timeout=2s`).
    #[arg(long, env = "NOTIFY_BENCH_GATEWAY_ARG", allow_hyphen_values = true)]
    pub gateway_arg: Vec<String>,

    /// `chaos`: directory for the gateways' logs (`gateway-<n>.log`, appended across
    /// restarts); discarded when absent.
    #[arg(long, env = "NOTIFY_BENCH_GATEWAY_LOG_DIR")]
    pub gateway_log_dir: Option<PathBuf>,

    /// `chaos`: clients dropped per second (the client closes its socket and resumes); 0 for
    /// none.
    #[arg(long, env = "NOTIFY_BENCH_DROP_RATE", default_value_t = 5.0)]
    pub drop_rate: f64,

    /// `chaos`: mean interval between link cuts (`CLIENT KILL TYPE pubsub` on Redis: every
    /// gateway loses its subscription); each wait is drawn from 0.5x..1.5x of it. 0 for none.
    #[arg(long, env = "NOTIFY_BENCH_LINK_CUT_INTERVAL", value_parser = parse_duration, default_value = "3s")]
    pub link_cut_interval: Duration,

    /// `chaos`: mean interval between gateway restarts (SIGTERM a random gateway, start it
    /// again on the same port); each wait is drawn from 0.75x..1.25x of it. 0 for none.
    #[arg(long, env = "NOTIFY_BENCH_RESTART_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub restart_interval: Duration,

    /// `chaos`: pause between a gateway's exit and its restart.
    #[arg(long, env = "NOTIFY_BENCH_RESTART_DELAY", value_parser = parse_duration, default_value = "500ms")]
    pub restart_delay: Duration,

    /// `chaos`: longest jittered pause before a client reconnects (doubling, up to 2 s, after
    /// failed attempts).
    #[arg(long, env = "NOTIFY_BENCH_RECONNECT_DELAY", value_parser = parse_duration, default_value = "250ms")]
    pub reconnect_delay: Duration,

    /// `chaos`: failed connection attempts in a row after which a client gives up (a
    /// failure).
    #[arg(long, env = "NOTIFY_BENCH_RECONNECT_ATTEMPTS", default_value_t = 30)]
    pub reconnect_attempts: u32,

    /// `chaos`: after publishing stops, how long every client has to catch up.
    #[arg(long, env = "NOTIFY_BENCH_CATCH_UP_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub catch_up_timeout: Duration,

    /// `soak`: the redis-server binary; the soak runs its own (on a free loopback port, with
    /// append-only persistence in a temporary directory) so it can restart it.
    #[arg(
        long,
        env = "NOTIFY_BENCH_REDIS_SERVER_BIN",
        default_value = "redis-server"
    )]
    pub redis_server_bin: PathBuf,

    /// `soak`: pause between the end of one fault and the next; they take turns: subscription
    /// cut, stream-link cut, command-connection cut, foreign id, Redis restart with data,
    /// gateway restart, Redis restart without data.
    #[arg(long, env = "NOTIFY_BENCH_FAULT_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub fault_interval: Duration,

    /// `soak`: the faults that take turns (all by default; e.g. without `foreign-id` to
    /// check everything else).
    #[arg(
        long,
        env = "NOTIFY_BENCH_FAULTS",
        value_enum,
        value_delimiter = ',',
        default_values_t = crate::soak::faults::SCHEDULE
    )]
    pub faults: Vec<crate::soak::faults::Fault>,

    /// `soak`: plain (id-less, seed-style) publishes per second, besides `--rate` id-carrying
    /// ones.
    #[arg(long, env = "NOTIFY_BENCH_PLAIN_RATE", default_value_t = 10.0)]
    pub plain_rate: f64,

    /// `soak`: the gateways' `--redis-ping-interval` (the health check of their
    /// subscription; small, so many of its periods fit in a short run).
    #[arg(long, env = "NOTIFY_BENCH_REDIS_PING_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub redis_ping_interval: Duration,

    /// `soak`: interval between progress lines.
    #[arg(long, env = "NOTIFY_BENCH_REPORT_INTERVAL", value_parser = parse_duration, default_value = "60s")]
    pub report_interval: Duration,

    /// `soak`: memory and descriptors are judged from this long after the start.
    #[arg(long, env = "NOTIFY_BENCH_WARM_UP", value_parser = parse_duration, default_value = "60s")]
    pub warm_up: Duration,

    /// `soak`: most a gateway process's RSS may grow after warm-up, MiB.
    #[arg(long, env = "NOTIFY_BENCH_RSS_GROWTH_MIB", default_value_t = 16)]
    pub rss_growth_mib: u64,

    /// `soak`: open descriptors a gateway may hold beyond one per connected client.
    #[arg(long, env = "NOTIFY_BENCH_FD_SLACK", default_value_t = 64)]
    pub fd_slack: u64,

    /// `send-floor`: size of each frame written, header included.
    #[arg(long, env = "NOTIFY_BENCH_FRAME_BYTES", default_value_t = 300)]
    pub frame_bytes: usize,

    /// `send-floor`: groups the clients are split into, one written per round in turn, as a
    /// gateway's clients are split over regions and each message goes to one region's: with
    /// `--floor-groups 8`, `--rate 10` is the send pattern of `latency --rate 10` over 8
    /// regions (1 = every round writes to every client).
    #[arg(long, env = "NOTIFY_BENCH_FLOOR_GROUPS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub floor_groups: u32,

    /// `send-floor`: run as the receiving side (started by `send-floor` itself).
    #[arg(long, hide = true)]
    pub floor_sink: bool,
    /// `scale`: client processes to spread `--clients` over (each holds at most 19,900).
    #[arg(long, env = "NOTIFY_BENCH_CLIENT_PROCESSES", default_value_t = 2)]
    pub client_processes: usize,

    /// `scale`: publish rates to measure fan-out at, messages per second per region, each for
    /// `--duration`; the first one also runs during the reconnect storm.
    #[arg(
        long,
        env = "NOTIFY_BENCH_SCALE_RATES",
        value_delimiter = ',',
        default_value = "1,10"
    )]
    pub scale_rates: Vec<f64>,

    /// `scale`: after a phase's last publish, how long the clients may go without any
    /// delivery before what they still miss counts as lost (the wait goes on for as long as
    /// deliveries arrive).
    #[arg(long, env = "NOTIFY_BENCH_DRAIN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub drain_grace: Duration,

    /// `scale-worker`: the gateways to spread clients over (`HOST:PORT,...`, loopback only).
    #[arg(long, value_delimiter = ',', hide = true)]
    pub targets: Vec<String>,

    /// `scale-worker`: per region, the stream id clients first resume after.
    #[arg(long, value_delimiter = ',', hide = true)]
    pub epochs: Vec<String>,

    /// `scale-worker`: the run-wide number of its first client (region and gateway are
    /// chosen by it: regions round-robin, each run of one client per region on the next
    /// gateway).
    #[arg(long, default_value_t = 0, hide = true)]
    pub worker_first_client: usize,

    /// `chaos`: approximate length each region's stream is trimmed to on publish (the
    /// history script's `MAXLEN ~`).
    #[arg(long, env = "NOTIFY_BENCH_RETENTION", default_value_t = 10_000)]
    pub retention: usize,
}

impl Args {
    /// Checks every limit; the error names the flag.
    pub fn validate(&self) -> Result<()> {
        if self.regions.is_empty() {
            bail!("--regions: at least one region is needed");
        }
        if self.regions_per_client == 0 || self.regions_per_client > self.regions.len() {
            bail!(
                "--regions-per-client must be 1..={} (the --regions given)",
                self.regions.len()
            );
        }
        if self.regions_per_client > 1 && self.scenario != Scenario::Idle {
            bail!("--regions-per-client above 1 is for the idle scenario only");
        }
        let max_clients = if self.scenario == Scenario::Scale {
            MAX_SCALE_CLIENTS
        } else {
            MAX_CLIENTS
        };
        if self.clients == 0 || self.clients > max_clients {
            bail!("--clients must be 1..={max_clients}");
        }
        if self.scenario == Scenario::Scale {
            self.validate_scale()?;
        }
        if self.scenario == Scenario::Fanout && (self.messages == 0 || self.messages > MAX_MESSAGES)
        {
            bail!("--messages must be 1..={MAX_MESSAGES}");
        }
        if matches!(
            self.scenario,
            Scenario::Latency
                | Scenario::Churn
                | Scenario::Chaos
                | Scenario::Soak
                | Scenario::SendFloor
                | Scenario::Scale
        ) {
            if !(self.rate > 0.0 && self.rate <= MAX_RATE) {
                bail!("--rate must be in (0, {MAX_RATE}]");
            }
            let longest = self.max_duration();
            if self.duration.is_zero() || self.duration > longest {
                bail!("--duration must be in (0, {}s]", longest.as_secs());
            }
            if self.steady_messages() > MAX_MESSAGES {
                bail!("--rate x --duration must stay under {MAX_MESSAGES} messages");
            }
        }
        if self.scenario == Scenario::Churn
            && !(self.churn_rate > 0.0 && self.churn_rate <= MAX_CHURN_RATE)
        {
            bail!("--churn-rate must be in (0, {MAX_CHURN_RATE}]");
        }
        let max_timeout = self.max_timeout();
        if self.timeout.is_zero() || self.timeout > max_timeout {
            bail!("--timeout must be in (0, {}s]", max_timeout.as_secs());
        }
        if matches!(
            self.scenario,
            Scenario::Chaos | Scenario::Soak | Scenario::Scale
        ) {
            self.validate_chaos()?;
        }
        if self.scenario == Scenario::Soak {
            self.validate_soak()?;
        }
        if self.transport == Transport::Sse {
            if !matches!(
                self.scenario,
                Scenario::Idle | Scenario::Fanout | Scenario::Latency | Scenario::Churn
            ) {
                bail!("--transport sse is for idle, fanout, latency and churn");
            }
            if self.tls_ca.is_some() {
                bail!("--transport sse speaks plain HTTP only; drop --tls-ca");
            }
        }
        if self.connect_concurrency == 0 || self.connect_concurrency > 4096 {
            bail!("--connect-concurrency must be 1..=4096");
        }
        if self.source_ips == 0 || self.source_ips > 250 {
            bail!("--source-ips must be 1..=250");
        }
        if self.pipeline == 0 || self.pipeline > 10_000 {
            bail!("--pipeline must be 1..=10000");
        }
        if self.threads == 0 || self.threads > 64 {
            bail!("--threads must be 1..=64");
        }
        Ok(())
    }

    /// Longest `--timeout`: [`MAX_DURATION`], twice that for `chaos` (its steady phase is
    /// followed by a catch-up phase).
    pub fn max_timeout(&self) -> Duration {
        match self.scenario {
            Scenario::Chaos | Scenario::Scale => MAX_DURATION * 2,
            Scenario::Soak => MAX_SOAK_DURATION + MAX_DURATION,
            _ => MAX_DURATION,
        }
    }

    /// Longest `--duration`: [`MAX_SOAK_DURATION`] for `soak`, else [`MAX_DURATION`].
    pub fn max_duration(&self) -> Duration {
        if self.scenario == Scenario::Soak {
            MAX_SOAK_DURATION
        } else {
            MAX_DURATION
        }
    }

    /// The `--timeout` of a `chaos` or `scale` run when none is given: start-up, its phases
    /// and shutdown.
    pub fn own_fleet_default_timeout(&self) -> Duration {
        let phases = match self.scenario {
            // Connecting, one phase per rate, the storm (bounded at 2 min), a drain grace
            // after each, and shutdown.
            Scenario::Scale => {
                let phases = self.scale_rates.len() as u32;
                self.duration * phases + self.drain_grace * (phases + 1) + Duration::from_secs(300)
            }
            _ => self.duration + self.catch_up_timeout + Duration::from_secs(60),
        };
        phases.min(self.max_timeout())
    }

    fn validate_scale(&self) -> Result<()> {
        if self.client_processes == 0 || self.client_processes > MAX_CLIENT_PROCESSES {
            bail!("--client-processes must be 1..={MAX_CLIENT_PROCESSES}");
        }
        if self.clients.div_ceil(self.client_processes) > MAX_CLIENTS {
            bail!(
                "--clients {} over --client-processes {} is more than {MAX_CLIENTS} per process; \
                 add client processes",
                self.clients,
                self.client_processes
            );
        }
        if self.client_processes > self.clients {
            bail!("--client-processes must not exceed --clients");
        }
        // After the storm's SIGKILL the other gateways hold every client.
        let survivors = self.gateways.saturating_sub(1).max(1);
        if self.clients.div_ceil(survivors) > MAX_CLIENTS {
            bail!(
                "--clients {} on {survivors} gateways (the storm kills one of --gateways {}) is \
                 more than {MAX_CLIENTS} per gateway; add gateways",
                self.clients,
                self.gateways
            );
        }
        if self.drain_grace.is_zero() || self.drain_grace > MAX_DURATION {
            bail!("--drain-grace must be in (0, {}s]", MAX_DURATION.as_secs());
        }
        if self.scale_rates.is_empty()
            || self
                .scale_rates
                .iter()
                .any(|rate| !(*rate > 0.0 && *rate <= 1000.0))
        {
            bail!("--scale-rates: one or more rates in (0, 1000] messages per second per region");
        }
        Ok(())
    }

    fn validate_soak(&self) -> Result<()> {
        if !(self.plain_rate > 0.0 && self.plain_rate <= MAX_RATE) {
            bail!("--plain-rate must be in (0, {MAX_RATE}]");
        }
        if (self.plain_rate * self.duration.as_secs_f64()) as u64 > MAX_MESSAGES {
            bail!("--plain-rate x --duration must stay under {MAX_MESSAGES} messages");
        }
        for (flag, interval) in [
            ("--fault-interval", self.fault_interval),
            ("--report-interval", self.report_interval),
        ] {
            if interval < Duration::from_secs(1) || interval > MAX_SOAK_DURATION {
                bail!(
                    "{flag} must be between 1s and {}s",
                    MAX_SOAK_DURATION.as_secs()
                );
            }
        }
        if self.redis_ping_interval < Duration::from_millis(100)
            || self.redis_ping_interval > Duration::from_secs(60)
        {
            bail!("--redis-ping-interval must be between 100ms and 60s");
        }
        if self.warm_up >= self.duration {
            bail!("--warm-up must be shorter than --duration");
        }
        if self.rss_growth_mib == 0 || self.rss_growth_mib > 65_536 {
            bail!("--rss-growth-mib must be 1..=65536");
        }
        if self.fd_slack == 0 || self.fd_slack > 10_000 {
            bail!("--fd-slack must be 1..=10000");
        }
        Ok(())
    }

    fn validate_chaos(&self) -> Result<()> {
        let Some(bin) = &self.gateway_bin else {
            bail!("chaos and soak need --gateway-bin (the notify-gateway binary to start)");
        };
        if !bin.is_file() {
            bail!("--gateway-bin {}: no such file", bin.display());
        }
        if self.via != Via::Redis {
            bail!("chaos publishes through Redis only (--via redis)");
        }
        if self.gateways == 0 || self.gateways > MAX_GATEWAYS {
            bail!("--gateways must be 1..={MAX_GATEWAYS}");
        }
        if !(self.drop_rate >= 0.0 && self.drop_rate <= MAX_DROP_RATE) {
            bail!("--drop-rate must be in [0, {MAX_DROP_RATE}]");
        }
        for (flag, interval) in [
            ("--link-cut-interval", self.link_cut_interval),
            ("--restart-interval", self.restart_interval),
        ] {
            if !interval.is_zero() && interval < MIN_CHAOS_INTERVAL {
                bail!(
                    "{flag} must be 0 (off) or at least {}ms",
                    MIN_CHAOS_INTERVAL.as_millis()
                );
            }
        }
        if self.restart_delay > Duration::from_secs(60) {
            bail!("--restart-delay must be at most 60s");
        }
        if self.reconnect_delay > Duration::from_secs(10) {
            bail!("--reconnect-delay must be at most 10s");
        }
        if self.reconnect_attempts == 0 || self.reconnect_attempts > 1000 {
            bail!("--reconnect-attempts must be 1..=1000");
        }
        if self.catch_up_timeout.is_zero() || self.catch_up_timeout > MAX_DURATION {
            bail!(
                "--catch-up-timeout must be in (0, {}s]",
                MAX_DURATION.as_secs()
            );
        }
        if self.retention == 0 {
            bail!("--retention must be at least 1");
        }
        let needed = self.duration + Duration::from_secs(20);
        if self.timeout < needed {
            bail!(
                "--timeout ({}s) must be at least --duration plus 20s ({}s) for chaos",
                self.timeout.as_secs_f64(),
                needed.as_secs_f64()
            );
        }
        Ok(())
    }

    /// Messages the steady phase publishes: rate x duration.
    pub fn steady_messages(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round().max(1.0) as u64
    }
}

fn parse_region(input: &str) -> Result<Region, String> {
    Region::parse(input.trim()).map_err(|error| error.to_string())
}

fn parse_duration(input: &str) -> Result<Duration, String> {
    if let Ok(seconds) = input.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
    }
    humantime::parse_duration(input).map_err(|error| format!("{input:?}: {error}"))
}

/// The gateway's socket address from `http://host:port` (or `ws://`, `https://`, `wss://`),
/// refusing anything that does not resolve only to loopback.
pub fn gateway_addr(url: &str) -> Result<SocketAddr> {
    let rest = ["http://", "ws://", "https://", "wss://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .with_context(|| format!("--gateway {url:?}: expected http://HOST:PORT"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = loopback_only(&authority, "--gateway")?;
    Ok(addr)
}

/// Refuses a Redis URL (or, for a cluster, any of its comma-separated seed URLs) whose host is
/// not loopback.
pub fn check_redis_urls(urls: &str, cluster: bool) -> Result<()> {
    if !cluster {
        return check_redis_url(urls);
    }
    notify_core::broker::redis::split_seeds(urls)
        .into_iter()
        .try_for_each(check_redis_url)
}

/// Refuses a Redis URL whose host is not loopback (`unix://` sockets are local and allowed).
pub fn check_redis_url(url: &str) -> Result<()> {
    if url.starts_with("unix://") || url.starts_with("redis+unix://") {
        return Ok(());
    }
    let rest = ["redis://", "rediss://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .with_context(|| format!("--redis-url {url:?}: expected redis://HOST:PORT"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host_port = if host_port.is_empty() {
        "127.0.0.1:6379".to_owned()
    } else if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    loopback_only(&host_port, "--redis-url")?;
    Ok(())
}

fn loopback_only(host_port: &str, flag: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .with_context(|| format!("{flag}: cannot resolve {host_port:?}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{flag}: {host_port:?} resolves to no address");
    }
    if let Some(outside) = addrs.iter().find(|addr| !addr.ip().is_loopback()) {
        bail!(
            "{flag}: {host_port:?} resolves to {}, which is not a loopback address; \
             notify-bench only loads 127.0.0.0/8 or ::1",
            outside.ip()
        );
    }
    Ok(addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .copied()
        .unwrap_or(addrs[0]))
}

/// The loopback source addresses clients bind to before connecting: `127.0.{block}.1` ..
/// `127.0.{block}.{count}` for an IPv4 gateway, the gateway's own address for IPv6.
pub fn source_ips(gateway: SocketAddr, count: u8, block: u8) -> Vec<IpAddr> {
    match gateway.ip() {
        IpAddr::V4(_) => (1..=count)
            .map(|last| IpAddr::from([127, 0, block, last]))
            .collect(),
        IpAddr::V6(v6) => vec![IpAddr::V6(v6)],
    }
}

/// A `/24` block of 127.0.0.0/16 that differs from run to run. The gateway closes
/// connections first, so the TIME-WAIT entries of one run sit on its side for a minute; a next
/// run from the same source addresses would reuse some of those address/port pairs, and each
/// such SYN stalls for a second. Block 0 (127.0.0.x) is used when `fixed` is set.
pub fn source_block(fixed: bool) -> u8 {
    if fixed {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let mixed = (nanos ^ std::process::id().rotate_left(16)).wrapping_mul(2_654_435_761);
    (mixed >> 24) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_required() {
        assert_eq!(
            gateway_addr("http://127.0.0.1:8765").unwrap(),
            "127.0.0.1:8765".parse().unwrap()
        );
        assert!(gateway_addr("ws://127.0.0.5:1/x").is_ok());
        assert!(gateway_addr("https://127.0.0.1:8443").is_ok());
        assert!(gateway_addr("http://localhost:8765").is_ok());
        let error = gateway_addr("http://10.1.2.3:8765")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a loopback"), "{error}");
        assert!(gateway_addr("ftp://127.0.0.1:1").is_err());
        assert!(check_redis_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_redis_url("redis://:pw@127.0.0.1:6379").is_ok());
        assert!(check_redis_url("redis://127.0.0.1").is_ok());
        assert!(check_redis_url("redis://192.168.1.1:6379").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sources_follow_the_gateway_family() {
        let v4 = source_ips("127.0.0.1:1".parse().unwrap(), 3, source_block(true));
        assert_eq!(v4.len(), 3);
        assert_eq!(v4[2], IpAddr::from([127, 0, 0, 3]));
        let block = source_block(false);
        let v4 = source_ips("127.0.0.1:1".parse().unwrap(), 2, block);
        assert!(v4.iter().all(IpAddr::is_loopback));
        assert_eq!(v4[1], IpAddr::from([127, 0, block, 2]));
        assert_eq!(source_ips("[::1]:1".parse().unwrap(), 3, 0).len(), 1);
    }
}

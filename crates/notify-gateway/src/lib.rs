//! notify-gateway: WebSocket and Server-Sent Events fan-out and HTTP on one port, fed by Redis or the embedded
//! broker.
//!
//! The binary (`main.rs`) only parses configuration, sets up logging, binds, and waits for
//! SIGTERM/SIGINT; everything else is here so the tests can read it as one piece.
//!
//! # Layout
//! - [`config`]: flags, `NOTIFY_*` environment variables and their checks.
//! - [`config_file`]: the `--config` TOML file.
//! - [`effective_config`]: what `--check-config` prints.
//! - [`listen_address`]: the forms `--listen` accepts (`HOST:PORT`, `:PORT`).
//! - [`build_info`]: version and git commit.
//! - [`exit`]: exit codes.
//! - [`server`]: shared state, HTTP routes, the accept loop, shutdown and drain.
//! - [`handshake`]: what a WebSocket request's query asks for (`region`, `since`).
//! - [`positions`]: a resume position per region (`AE:<id>,FI:<id>`), for several regions.
//! - [`feed`]: what one connection receives: its regions' subscriptions and resumes.
//! - [`socket`]: one WebSocket connection: batching writes, pings, close codes.
//! - [`sse`]: Server-Sent Events at `GET /events`: the encoding and one stream's task.
//! - [`subscriber`]: the admission every client passes, whatever its transport.
//! - [`hangup`]: a streamed response cutting its own connection (a client that stopped reading).
//! - [`tls`]: TLS for clients (`wss://`, `https://`) and certificate reload.
//! - [`capacity`]: the open-files limit and connection slots.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`assets`]: the demo page and browser client compiled into the binary.
//! - [`admission`]: whether a WebSocket handshake is let in (origin, per-address rate and
//!   connection count).
//! - [`client_addr`]: the client's address, through trusted proxies.
//! - [`headers`]: security headers on every response.
//! - [`admin`]: the optional admin listener.
//! - [`proxy_protocol`]: PROXY protocol headers from trusted load balancers.
//! - [`publish_access`]: who may publish over HTTP.
//! - [`wrong_keys`]: the bound on wrong API keys per address (publish and ops).
//! - [`replay_budget`]: how many resumes replay history at once.
//! - [`ops`]: the live ops page (`/ops`) and its once-a-second feed.
//! - [`resume`]: the replay and seam of a resume, shared by both transports.

pub mod admin;
pub mod admission;
pub mod assets;
pub mod build_info;
pub mod capacity;
pub mod client_addr;
pub mod config;
pub mod config_file;
pub mod direct;
pub mod effective_config;
pub mod exit;
pub mod feed;
pub mod handshake;
pub mod hangup;
pub mod headers;
pub mod listen_address;
pub mod ops;
pub mod ping_clock;
pub mod positions;
pub mod proxy_protocol;
pub mod publish_access;
pub mod replay_budget;
pub mod resume;
pub mod server;
pub mod socket;
pub mod sse;
pub mod subscriber;
pub mod telemetry;
pub mod tls;
pub mod wrong_keys;

pub use config::GatewayConfig;
pub use server::run;

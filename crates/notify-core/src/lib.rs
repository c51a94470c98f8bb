//! The notify engine: everything between "a payload arrived" and "a client's queue holds it".
//!
//! # Layout
//! - [`hub`]: region → connected clients. One bounded ring per region; a message is encoded
//!   once and shared by reference with every subscriber; a subscriber that falls more than the
//!   ring's length behind is cut off ([`hub::SubscriptionError::Lagged`]) instead of slowing
//!   anyone else down.
//! - [`ingest`]: the one inbound path. Validates a raw channel payload against the wire contract,
//!   counts and skips bad ones (with rate-limited logs), encodes good ones once, hands them to
//!   the hub.
//! - [`broker`]: where payloads come from and where API publishes go: Redis pub/sub (multi-node)
//!   or an embedded in-process broker (single node, no Redis); and resumes, replayed a bounded
//!   page at a time ([`broker::replay`]).
//! - [`history`]: the last messages of each region by id, for `?since=` resume (the whole
//!   history with the embedded broker, a cache in front of Redis streams otherwise).
//! - [`log_limit`]: one log line per second for events remote parties can trigger at will.
//! - [`pending`]: which live ids to trust — id-carrying pub/sub messages held until the
//!   region's stream shows them ours or foreign.
//! - [`backoff`]: capped exponential backoff with jitter for reconnect loops.
//!
//! # Invariant
//! This crate knows nothing of HTTP or WebSocket framing: the hub is generic over the frame
//! type, so the gateway chooses its WebSocket library's shared text type and the engine never
//! copies a frame per client.

pub mod backoff;
pub mod broker;
pub mod history;
pub mod hub;
pub mod ingest;
pub mod log_limit;
pub mod pending;

pub use broker::{Broker, BrokerError, BrokerState, PublishReceipt};
pub use hub::{
    Attachment, Envelope, Handled, Hub, HubError, Outlet, Published, Subscription,
    SubscriptionError,
};
pub use ingest::{Ingest, IngestError};

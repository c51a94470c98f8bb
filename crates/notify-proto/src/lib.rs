//! The notify wire contract.
//!
//! Everything that crosses a process boundary is defined here, once: the `new_trending`
//! [`Notification`] that publishers put on Redis and browsers receive, the [`Region`] codes that
//! route it, the Redis [`ChannelNames`], and the [`ControlMessage`]s the gateway itself sends.
//! Validation returns typed errors ([`PayloadError`], [`RegionError`]) that name what is wrong.
//!
//! # Invariant
//! This crate does no I/O and knows nothing of tokio, Redis or sockets, so the publisher, the
//! gateway, the load generator and the tests all agree on the contract by construction.
//!
//! # Layout
//! - [`region`]: ISO 3166-1 alpha-2 codes, right-to-left defaults.
//! - [`notification`]: the payload, its parsing, validation and canonical encoding.
//! - [`channel`]: `{prefix}{REGION}` Redis channel names and their inverse.
//! - [`control`]: messages the gateway sends on its own behalf (not published by anyone).
//! - [`stream_id`]: message ids (`ms-seq`), the order of a region's history.
//! - [`publish_reply`]: how far a publish reached ([`Reach`]: gateway nodes or clients).
//! - [`strict_json`]: JSON parsing that refuses duplicate object keys.

pub mod channel;
pub mod control;
pub mod notification;
pub mod publish_reply;
pub mod region;
pub mod stream_id;
pub mod strict_json;

pub use channel::{ChannelNames, KeyLayout, DEFAULT_CHANNEL_PREFIX};
pub use control::ControlMessage;
pub use notification::{Notification, PayloadError, DEFAULT_MAX_PAYLOAD_BYTES, EVENT_NEW_TRENDING};
pub use publish_reply::Reach;
pub use region::{suggest_region, Region, RegionError, SEED_REGIONS};
pub use stream_id::{StreamId, StreamIdError};

//! Which transport the clients of `idle`, `fanout`, `latency` and `churn` speak, and opening
//! one client of either kind: a WebSocket ([`crate::client`]) or a Server-Sent Events stream
//! ([`crate::sse_client`]). Both readers verify into the same [`ClientStats`], so the
//! scenarios, their verdicts and their latency histograms do not know which it was.
//!
//! [`ClientStats`]: crate::client::ClientStats

use std::sync::Arc;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use crate::client::{self, Connector, Running};
use crate::messages::MessageLog;
use crate::sse_client;

/// How a client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /?region=XX` upgraded to a WebSocket.
    Websocket,
    /// `GET /events?region=XX`, a `text/event-stream` over HTTP/1.1.
    Sse,
}

/// Opens a client of `region` (its name, and its index in `log`) and starts its reader.
pub async fn open_client(
    connector: &Connector,
    transport: Transport,
    name: &str,
    region: usize,
    log: Arc<MessageLog>,
) -> Result<Running> {
    Ok(match transport {
        Transport::Websocket => client::spawn_reader(connector.connect(name).await?, region, log),
        Transport::Sse => {
            sse_client::spawn_reader(sse_client::connect(connector, name).await?, region, log)
        }
    })
}

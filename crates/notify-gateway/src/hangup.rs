//! Cutting one HTTP connection from inside its response: the way a streamed response body's
//! producer drops a client that stopped reading.
//!
//! A streamed body is only polled while hyper can write; a client that stops reading stalls
//! the connection inside hyper, where no code of ours runs. The producer (an SSE stream's task)
//! notices that its queue stays full past the write timeout and calls [`Hangup::now`]; the
//! connection's own task ([`crate::server`]) is waiting on [`Hangup::requested`] beside the
//! connection and drops it, which closes the socket at once. Every HTTP connection carries
//! one in its requests' extensions; it costs one small allocation while the connection is
//! plain HTTP, and nothing once it is upgraded to a WebSocket (whose own task ends hyper's).

use tokio_util::sync::CancellationToken;

/// A request to close this request's connection now, without finishing the response.
#[derive(Debug, Clone, Default)]
pub struct Hangup(CancellationToken);

impl Hangup {
    /// A hangup for a new connection.
    pub fn new() -> Self {
        Hangup::default()
    }

    /// Asks the connection's task to drop the connection.
    pub fn now(&self) {
        self.0.cancel();
    }

    /// Completes once [`Hangup::now`] was called.
    pub async fn requested(&self) {
        self.0.cancelled().await;
    }
}

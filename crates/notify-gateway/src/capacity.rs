//! Connection capacity: the open-files limit, and the slots that cap what the process holds.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit. Two caps follow from it:
//! - **sockets**: every accepted TCP connection — before its request head, plain HTTP
//!   keep-alive, upgraded WebSocket — holds one socket slot for exactly as long as its
//!   descriptor is open (the slot travels inside [`CountedStream`]). The socket cap is the
//!   limit less [`RESERVED_DESCRIPTORS`], which the process keeps for itself: Redis
//!   connections and their reconnects, the listener, logs. Past the cap the accept loop
//!   answers a minimal 503 and closes the socket at once, so no client, however many sockets it
//!   opens, can starve the gateway's own links.
//! - **WebSockets**: the smaller of `--max-connections` and the socket cap; past it a handshake
//!   is answered with HTTP 503.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::admission::per_ip::PerIpSlot;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Descriptors kept free for the process itself: the listener, Redis connections (and the
/// new one a reconnect opens before the old is gone), logs, the runtime's own descriptors.
/// A quarter of the limit when the limit is tiny.
pub const RESERVED_DESCRIPTORS: u64 = 100;

/// Raises the soft open-files limit to the hard limit; returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Sockets the process may hold at once given the open-files limit: the limit less the
/// reserve.
pub fn socket_capacity(open_files_limit: u64) -> usize {
    let reserve = RESERVED_DESCRIPTORS.min(open_files_limit / 4);
    usize::try_from(open_files_limit.saturating_sub(reserve)).unwrap_or(usize::MAX)
}

/// The WebSocket cap given `--max-connections` and the open-files limit.
pub fn connection_capacity(max_connections: usize, open_files_limit: u64) -> usize {
    max_connections.min(socket_capacity(open_files_limit))
}

/// Counts held resources (sockets, or WebSockets) against a cap.
#[derive(Debug)]
pub struct ConnectionSlots {
    open: AtomicUsize,
    capacity: usize,
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    slots: Arc<ConnectionSlots>,
}

impl ConnectionSlots {
    /// Slots for `capacity` connections.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            open: AtomicUsize::new(0),
            capacity,
        })
    }

    /// Takes a slot, or `None` at capacity.
    pub fn try_take(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.capacity).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionSlot {
                slots: Arc::clone(self),
            })
    }

    /// Slots held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that holds a socket slot for as long as it lives: through the HTTP exchange and,
/// after an upgrade, inside the WebSocket, so the slot is freed exactly when the descriptor
/// is closed.
#[derive(Debug)]
pub struct CountedStream<S> {
    stream: S,
    _slot: ConnectionSlot,
    /// The peer address's socket count, when sockets per address are capped.
    _address_slot: Option<Box<PerIpSlot>>,
}

impl<S> CountedStream<S> {
    /// `stream`, counted by `slot` and, when sockets per address are capped, `address_slot`.
    pub fn new(stream: S, slot: ConnectionSlot, address_slot: Option<Box<PerIpSlot>>) -> Self {
        CountedStream {
            stream,
            _slot: slot,
            _address_slot: address_slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_and_free() {
        let slots = ConnectionSlots::new(2);
        let first = slots.try_take().unwrap();
        let _second = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(first);
        assert!(slots.try_take().is_some());
        assert_eq!(connection_capacity(1_000_000, 20_000), 19_900);
        assert_eq!(connection_capacity(500, 20_000), 500);
        assert_eq!(connection_capacity(1_000, 64), 48);
        assert_eq!(socket_capacity(64), 48);
    }

    #[tokio::test]
    async fn a_counted_stream_frees_its_slot_when_dropped() {
        let slots = ConnectionSlots::new(1);
        let (near, _far) = tokio::io::duplex(64);
        let counted = CountedStream::new(near, slots.try_take().unwrap(), None);
        assert!(slots.try_take().is_none());
        drop(counted);
        assert_eq!(slots.open(), 0);
    }
}

//! Connection capacity: the open-files limit, and the slots that cap concurrent WebSockets.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit; the connection cap is the
//! smaller of `--max-connections` and that limit less a reserve for Redis, the listener and
//! HTTP requests. Past the cap a handshake is answered with HTTP 503 instead of accepting a
//! connection the process cannot serve.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Descriptors kept free for the listener, Redis, logs and plain HTTP requests (a quarter of
/// the limit when the limit is tiny).
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

/// The connection cap given `--max-connections` and the open-files limit.
pub fn connection_capacity(max_connections: usize, open_files_limit: u64) -> usize {
    let reserve = RESERVED_DESCRIPTORS.min(open_files_limit / 4);
    let by_descriptors = open_files_limit.saturating_sub(reserve);
    max_connections.min(usize::try_from(by_descriptors).unwrap_or(usize::MAX))
}

/// Counts open WebSockets against the cap.
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

    /// Connections open now.
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
    }
}

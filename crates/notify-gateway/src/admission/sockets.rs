//! Open sockets per peer address, whatever their state: a socket that never finishes its
//! request head, a plain HTTP keep-alive connection and a WebSocket all count. Without it one
//! address could hold every socket slot with idle TCP connects (each costs a descriptor) and
//! starve every other client, even with `--max-connections-per-ip`, which only sees
//! WebSocket handshakes.
//!
//! The cap is on by itself when `--max-connections-per-ip N` is set: `N` plus
//! [`SOCKET_HEADROOM_PER_ADDRESS`] sockets per address (room for health checks, publishes and
//! handshakes in flight beside `N` WebSockets). It counts the TCP peer, never a forwarded
//! address, and a trusted proxy is exempt: it carries many clients, which the handshake
//! admission counts one by one from their forwarding headers.

use std::net::IpAddr;
use std::sync::Arc;

use super::per_ip::{ClientKey, PerIpConnections, PerIpSlot};
use crate::client_addr::TrustedProxies;

/// Sockets an address may hold beyond its WebSocket cap.
pub const SOCKET_HEADROOM_PER_ADDRESS: usize = 16;

/// The per-address socket cap, checked when a connection is accepted.
#[derive(Debug, Clone)]
pub struct SocketsPerAddress {
    counts: Option<Arc<PerIpConnections>>,
    exempt: TrustedProxies,
}

/// A socket refused because its address holds too many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many open sockets from one address (at most {limit})")]
pub struct TooManySockets {
    /// The cap.
    pub limit: usize,
}

impl SocketsPerAddress {
    /// The cap for `--max-connections-per-ip` (0: none), with `exempt` proxies.
    pub fn new(max_connections_per_ip: usize, exempt: TrustedProxies) -> Self {
        let counts = (max_connections_per_ip > 0)
            .then(|| PerIpConnections::new(max_connections_per_ip + SOCKET_HEADROOM_PER_ADDRESS));
        SocketsPerAddress { counts, exempt }
    }

    /// The cap, when there is one.
    pub fn limit(&self) -> Option<usize> {
        self.counts.as_ref().map(|counts| counts.limit())
    }

    /// Counts one more socket from `peer`. `Ok(None)` when nothing is counted (no cap, or a
    /// trusted proxy); the slot, boxed to keep a connection's state one pointer larger at most,
    /// gives the count back when the socket closes.
    pub fn try_take(&self, peer: IpAddr) -> Result<Option<Box<PerIpSlot>>, TooManySockets> {
        let Some(counts) = &self.counts else {
            return Ok(None);
        };
        let peer = peer.to_canonical();
        if self.exempt.trusts(peer) {
            return Ok(None);
        }
        counts
            .try_take(ClientKey::of(peer))
            .map(|slot| Some(Box::new(slot)))
            .ok_or(TooManySockets {
                limit: counts.limit(),
            })
    }

    /// Addresses holding at least one counted socket.
    pub fn tracked(&self) -> usize {
        self.counts.as_ref().map_or(0, |counts| counts.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_capped_per_address_except_for_trusted_proxies() {
        let proxy: IpAddr = [10, 0, 0, 1].into();
        let exempt = TrustedProxies::new(vec![ipnet::IpNet::from(proxy)]);
        let sockets = SocketsPerAddress::new(1, exempt);
        let client: IpAddr = [192, 0, 2, 7].into();
        let held: Vec<_> = (0..1 + SOCKET_HEADROOM_PER_ADDRESS)
            .map(|_| sockets.try_take(client).unwrap().expect("counted"))
            .collect();
        assert_eq!(
            sockets.try_take(client).unwrap_err(),
            TooManySockets { limit: 17 }
        );
        assert!(sockets.try_take([192, 0, 2, 8].into()).unwrap().is_some());
        for _ in 0..100 {
            assert!(sockets.try_take(proxy).unwrap().is_none());
        }
        drop(held);
        assert!(sockets.try_take(client).unwrap().is_some());
        assert!(SocketsPerAddress::new(0, TrustedProxies::default())
            .try_take(client)
            .unwrap()
            .is_none());
    }
}

//! WebSocket connections per client address: `--max-connections-per-ip`.
//!
//! Clients are grouped by [`ClientKey`]: an IPv4 address, or an IPv6 /64 (one customer's
//! subnet; a single host can pick any of its 2^64 addresses, so counting them one by one would
//! count nothing). Each key with at least one open connection has one map entry (32 bytes of
//! key and count, under 100 with the map's slack) shared by all of that key's connections; the
//! entry is removed
//! when its count returns to 0, so the map holds at most one entry per open connection and is
//! empty when nobody is connected. Each connection holds a [`PerIpSlot`] that gives its count
//! back on drop.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// What the per-address limits count by: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

/// The bits of an IPv6 address that name its /64.
const IPV6_PREFIX_MASK: u128 = !((1u128 << 64) - 1);

impl ClientKey {
    /// The key of `address` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => ClientKey(IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & IPV6_PREFIX_MASK,
            ))),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(formatter, "{v4}"),
            IpAddr::V6(v6) => write!(formatter, "{v6}/64"),
        }
    }
}

/// Open connections per [`ClientKey`], capped at `limit` each.
#[derive(Debug)]
pub struct PerIpConnections {
    limit: usize,
    counts: Mutex<HashMap<ClientKey, usize>>,
}

/// One connection counted against its key; dropping it gives the count back.
#[derive(Debug)]
pub struct PerIpSlot {
    connections: Arc<PerIpConnections>,
    key: ClientKey,
}

impl PerIpConnections {
    /// At most `limit` connections per key.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PerIpConnections {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The per-key cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts one more connection for `key`, or `None` when it already has `limit`.
    pub fn try_take(self: &Arc<Self>, key: ClientKey) -> Option<PerIpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(PerIpSlot {
            connections: Arc::clone(self),
            key,
        })
    }

    /// Keys with at least one open connection (the map's size).
    pub fn keys(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .connections
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ClientKey {
        ClientKey::of(text.parse().unwrap())
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:203.0.113.9"), key("203.0.113.9"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("203.0.113.9").to_string(), "203.0.113.9");
    }

    #[test]
    fn counts_cap_per_key_and_entries_vanish_at_zero() {
        let connections = PerIpConnections::new(2);
        let first = connections.try_take(key("192.0.2.1")).unwrap();
        let second = connections.try_take(key("192.0.2.1")).unwrap();
        assert!(connections.try_take(key("192.0.2.1")).is_none());
        let other = connections.try_take(key("192.0.2.2")).unwrap();
        assert_eq!(connections.keys(), 2);
        drop(first);
        let third = connections.try_take(key("192.0.2.1")).unwrap();
        drop((second, third, other));
        assert_eq!(connections.keys(), 0);
        assert!(PerIpConnections::new(0)
            .try_take(key("192.0.2.1"))
            .is_none());
        assert_eq!(PerIpConnections::new(0).keys(), 0);
    }
}

//! Handshakes per client address per second: `--handshake-rate-per-ip` and
//! `--handshake-burst-per-ip`.
//!
//! A token bucket per [`ClientKey`] (governor's keyed GCRA limiter): an address may open
//! `burst` WebSockets at once, then `rate` per second. A reconnect storm from one address is
//! answered with 429 and `Retry-After` while other addresses keep connecting. The key map
//! holds one entry (a 17-byte key and an 8-byte state, under 100 bytes with the sharded map's
//! slack) per address whose bucket is not yet full again;
//! [`HandshakeRate::forget_idle`] (run every [`PRUNE_INTERVAL`]) drops the others, so the map
//! is bounded by the addresses that handshook within the last `burst / rate` seconds plus
//! one interval.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::per_ip::ClientKey;

/// How often buckets that are full again are dropped from the key map.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// The per-address handshake rate limiter.
#[derive(Debug)]
pub struct HandshakeRate {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl HandshakeRate {
    /// `per_second` handshakes per address, `burst` at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        HandshakeRate {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            per_second,
            burst,
        }
    }

    /// Sustained handshakes per second per address.
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// Handshakes an address may make at once.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Takes a token for `key`, or says how long until the next one.
    pub fn check(&self, key: ClientKey) -> Result<(), Duration> {
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops the buckets that are full again (indistinguishable from new ones).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Addresses in the key map.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_with_a_wait_and_other_keys_unaffected() {
        let rate = HandshakeRate::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap());
        let storm = ClientKey::of("192.0.2.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(rate.check(storm), Ok(()));
        }
        let wait = rate.check(storm).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(
            rate.check(ClientKey::of("192.0.2.2".parse().unwrap())),
            Ok(())
        );
        assert_eq!(rate.keys(), 2);
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let rate = HandshakeRate::new(NonZeroU32::new(1000).unwrap(), NonZeroU32::new(1).unwrap());
        for last in 0..100u8 {
            let _ = rate.check(ClientKey::of([192, 0, 2, last].into()));
        }
        assert_eq!(rate.keys(), 100);
        std::thread::sleep(Duration::from_millis(5));
        rate.forget_idle();
        assert_eq!(rate.keys(), 0);
    }
}

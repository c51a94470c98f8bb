//! Wrong API keys per client address: a bound on key guessing at `POST /api/publish` and
//! `/ops`.
//!
//! Keys are compared in constant time, but nothing stopped one address from trying keys as
//! fast as it could send requests. Each address may give [`WRONG_KEYS_PER_WINDOW`] wrong keys
//! per [`WINDOW`]; past that, every request of that address to a keyed endpoint — with a
//! right key too, so a guess cannot be confirmed — is answered 429 with `Retry-After` until
//! its window ends. Right keys count nothing, so a busy publisher is never slowed.
//!
//! Memory: one entry (an address and a window start, under 64 bytes with the map's slack)
//! per address that gave a wrong key within the last window, and never more than
//! [`MAX_TRACKED_ADDRESSES`]: when the map is full, expired windows are dropped first, and
//! if it is still full a new address is not tracked (it is then limited only by the other
//! bounds: handshake and request rates, connection caps).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;

use crate::admission::per_ip::ClientKey;

/// Wrong keys an address may give per window before it is refused.
pub const WRONG_KEYS_PER_WINDOW: u32 = 10;
/// The window over which wrong keys are counted (and the longest refusal).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses tracked at once.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Wrong-key counts per address.
#[derive(Debug)]
pub struct WrongKeys {
    strikes: Mutex<HashMap<ClientKey, Strikes>>,
    limit: u32,
    window: Duration,
    capacity: usize,
}

/// One address's wrong keys in its current window.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    since: Instant,
}

impl Default for WrongKeys {
    fn default() -> Self {
        WrongKeys::new(WRONG_KEYS_PER_WINDOW, WINDOW, MAX_TRACKED_ADDRESSES)
    }
}

impl WrongKeys {
    /// `limit` wrong keys per `window` per address, tracking at most `capacity` addresses.
    pub fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        WrongKeys {
            strikes: Mutex::new(HashMap::new()),
            limit: limit.max(1),
            window,
            capacity,
        }
    }

    /// How long `client` must wait before its keys are checked again, if it used up its
    /// wrong keys for the window.
    pub fn refused(&self, client: ClientKey) -> Option<Duration> {
        let mut strikes = self.strikes.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = *strikes.get(&client)?;
        let elapsed = entry.since.elapsed();
        if elapsed >= self.window {
            strikes.remove(&client);
            return None;
        }
        (entry.count >= self.limit).then(|| self.window - elapsed)
    }

    /// Counts a wrong key from `client`.
    pub fn record(&self, client: ClientKey) {
        let mut strikes = self.strikes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(entry) = strikes.get_mut(&client) {
            if now.duration_since(entry.since) >= self.window {
                *entry = Strikes {
                    count: 1,
                    since: now,
                };
            } else {
                entry.count = entry.count.saturating_add(1);
            }
            return;
        }
        if strikes.len() >= self.capacity {
            let window = self.window;
            strikes.retain(|_, entry| now.duration_since(entry.since) < window);
            if strikes.len() >= self.capacity {
                return;
            }
        }
        strikes.insert(
            client,
            Strikes {
                count: 1,
                since: now,
            },
        );
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.strikes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A `Retry-After` value for `wait`: whole seconds, rounded up, at least 1.
pub fn retry_after(wait: Duration) -> HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> ClientKey {
        ClientKey::of([192, 0, 2, last].into())
    }

    #[test]
    fn refused_after_the_limit_until_the_window_ends_and_others_unaffected() {
        let guesses = WrongKeys::new(3, Duration::from_millis(300), 16);
        for _ in 0..3 {
            assert_eq!(guesses.refused(address(1)), None);
            guesses.record(address(1));
        }
        let wait = guesses.refused(address(1)).expect("refused after 3");
        assert!(wait <= Duration::from_millis(300), "{wait:?}");
        assert_eq!(guesses.refused(address(2)), None);
        std::thread::sleep(Duration::from_millis(320));
        assert_eq!(guesses.refused(address(1)), None);
        assert_eq!(guesses.tracked(), 0);
    }

    /// Across several windows: a guesser that never stops gets `limit` wrong keys checked per
    /// window and no more (negative control), an address that stays under the limit is never
    /// refused (positive control), and the refusal always ends with its window.
    #[test]
    fn a_steady_guesser_gets_the_limit_per_window_across_several_windows() {
        const WINDOWS: u32 = 5;
        let window = Duration::from_millis(120);
        let guesses = WrongKeys::new(4, window, 16);
        let (guesser, careful) = (address(1), address(2));
        let started = Instant::now();
        let (mut checked, mut careful_refused, mut longest_wait) = (0u32, 0u32, Duration::ZERO);
        let mut careful_this_window = (0u32, 0u32);
        while started.elapsed() < window * WINDOWS {
            match guesses.refused(guesser) {
                None => {
                    checked += 1;
                    guesses.record(guesser);
                }
                Some(wait) => longest_wait = longest_wait.max(wait),
            }
            // Two wrong keys per window of the clock: any window of the address's own holds at
            // most four (two of two clock windows), so it never has to wait.
            let window_number = (started.elapsed().as_millis() / window.as_millis()) as u32;
            if careful_this_window.0 != window_number {
                careful_this_window = (window_number, 0);
            }
            if careful_this_window.1 < 2 {
                if guesses.refused(careful).is_some() {
                    careful_refused += 1;
                }
                guesses.record(careful);
                careful_this_window.1 += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Windows start at an address's first wrong key, so the run spans at most WINDOWS + 1
        // of the guesser's windows.
        assert!(
            (4 * WINDOWS..=4 * (WINDOWS + 1)).contains(&checked),
            "{checked} wrong keys checked over {WINDOWS} windows of a limit of 4"
        );
        assert!(longest_wait <= window, "refused for {longest_wait:?}");
        assert_eq!(careful_refused, 0, "an address under the limit was refused");
    }

    #[test]
    fn the_map_never_holds_more_than_its_capacity() {
        let guesses = WrongKeys::new(1, Duration::from_millis(50), 4);
        for last in 0..10 {
            guesses.record(address(last));
        }
        assert_eq!(guesses.tracked(), 4);
        assert!(guesses.refused(address(0)).is_some());
        assert_eq!(guesses.refused(address(9)), None, "not tracked when full");
        std::thread::sleep(Duration::from_millis(60));
        guesses.record(address(9));
        assert_eq!(guesses.tracked(), 1, "expired windows make room");
    }
}

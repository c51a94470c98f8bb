//! Capped exponential backoff with jitter, for reconnect loops.
//!
//! Delays grow `base, 2·base, 4·base, …` up to `cap`; each delay is drawn uniformly from the
//! upper half of its step ("equal jitter"), so a fleet of gateways that lost Redis at the same
//! moment does not reconnect in lockstep, and no delay is ever near zero.

use std::time::Duration;

/// Backoff state for one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The next delay to wait, and one step further.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut backoff = Backoff::new(base, cap);
        let first = backoff.next_delay();
        assert!(first >= base / 2 && first <= base, "{first:?}");
        for _ in 0..30 {
            let delay = backoff.next_delay();
            assert!(delay <= cap, "{delay:?}");
        }
        let late = backoff.next_delay();
        assert!(late >= cap / 2, "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}

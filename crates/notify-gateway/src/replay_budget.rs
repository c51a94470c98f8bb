//! The global budget of concurrent replays: what a storm of resumes (`?since=`) may cost the
//! gateway and Redis at once.
//!
//! A replay reads and sends its history one bounded page at a time
//! ([`notify_core::broker::replay`]); this budget bounds how many run together
//! (`--max-concurrent-replays`), so the total is at most that many pages in memory and that
//! many reads in flight to Redis. A resume waits for a turn at most `--replay-wait`; past it the
//! connection is closed with 1013 (try again later) and the client retries with backoff. A
//! client that does not read is cut by the write timeout or the write-buffer cap, which ends
//! its turn.
//!
//! Metrics: `notify_replays_active` (turns held now), `notify_replay_waits_total` (resumes that
//! found every turn taken and waited), `notify_replays_refused_total` (resumes closed with
//! 1013 after waiting `--replay-wait`).

use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a resume got no turn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoTurn {
    /// Every turn stayed taken for the whole wait.
    #[error("all {capacity} replay turns stayed taken for {waited:?}")]
    Busy {
        /// `--max-concurrent-replays`.
        capacity: usize,
        /// `--replay-wait`.
        waited: Duration,
    },
    /// The budget was closed (never done while the gateway runs).
    #[error("the replay budget is closed")]
    Closed,
}

/// Turns for concurrent replays.
#[derive(Debug)]
pub struct ReplayBudget {
    turns: Semaphore,
    capacity: usize,
    active: Gauge,
    waits: Counter,
    refused: Counter,
}

/// One replay's turn; ends when dropped.
#[derive(Debug)]
pub struct ReplayTurn<'a> {
    _permit: SemaphorePermit<'a>,
    active: &'a Gauge,
}

impl Drop for ReplayTurn<'_> {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

impl ReplayBudget {
    /// A budget of `capacity` concurrent replays (at least 1), with its metrics at zero.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let active = metrics::gauge!("notify_replays_active");
        active.set(0.0);
        let waits = metrics::counter!("notify_replay_waits_total");
        waits.absolute(0);
        let refused = metrics::counter!("notify_replays_refused_total");
        refused.absolute(0);
        ReplayBudget {
            turns: Semaphore::new(capacity),
            capacity,
            active,
            waits,
            refused,
        }
    }

    /// Most replays at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A turn, at once when one is free, else after waiting at most `wait` (counted).
    pub async fn take_turn(&self, wait: Duration) -> Result<ReplayTurn<'_>, NoTurn> {
        let permit = match self.turns.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(NoTurn::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.waits.increment(1);
                match tokio::time::timeout(wait, self.turns.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(NoTurn::Closed),
                    Err(_elapsed) => {
                        self.refused.increment(1);
                        return Err(NoTurn::Busy {
                            capacity: self.capacity,
                            waited: wait,
                        });
                    }
                }
            }
        };
        self.active.increment(1.0);
        Ok(ReplayTurn {
            _permit: permit,
            active: &self.active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_bounded_and_come_back_when_dropped() {
        let budget = ReplayBudget::new(2);
        let first = budget.take_turn(Duration::from_millis(10)).await.unwrap();
        let _second = budget.take_turn(Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            budget
                .take_turn(Duration::from_millis(10))
                .await
                .unwrap_err(),
            NoTurn::Busy {
                capacity: 2,
                waited: Duration::from_millis(10)
            }
        );
        drop(first);
        budget.take_turn(Duration::from_millis(10)).await.unwrap();
    }
}

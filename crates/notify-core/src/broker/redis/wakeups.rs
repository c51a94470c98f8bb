//! [`Wakeups`]: which regions the sharded subscription saw a message for since the stream
//! follower last looked. In a cluster the follower does not block in `XREAD` (see
//! [`super::cluster`]); these wake it as soon as a region's shard publishes. Bounded by the
//! number of served regions: a region is in the set once however many messages arrive.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use notify_proto::Region;
use tokio::sync::Notify;

/// Regions with news, and the signal that there are some.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    regions: Mutex<HashSet<Region>>,
    notify: Notify,
}

impl Wakeups {
    /// `region`'s shard published something.
    pub(super) fn wake(&self, region: Region) {
        self.lock().insert(region);
        self.notify.notify_one();
    }

    /// Waits up to `limit` for news; returns the regions woken since the last call (none on
    /// timeout).
    pub(super) async fn wait(&self, limit: Duration) -> Vec<Region> {
        if self.lock().is_empty() {
            // A wake between the check and the wait leaves a permit: `notified` returns at once.
            let _woken = tokio::time::timeout(limit, self.notify.notified()).await;
        }
        self.lock().drain().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Region>> {
        self.regions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_wake_or_the_limit() {
        let wakeups = Wakeups::default();
        let started = tokio::time::Instant::now();
        assert!(wakeups.wait(Duration::from_secs(1)).await.is_empty());
        assert!(started.elapsed() >= Duration::from_secs(1));
        let ae = Region::parse("AE").unwrap();
        wakeups.wake(ae);
        wakeups.wake(ae);
        assert_eq!(wakeups.wait(Duration::from_secs(1)).await, vec![ae]);
    }
}

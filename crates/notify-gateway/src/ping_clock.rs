//! One clock for every connection's pings and idle checks, instead of a timer per connection.
//!
//! A tokio timer (`Interval`) keeps a boxed 112-byte `Sleep` for each connection's life: at
//! 10,000 idle connections that is more than a megabyte of timers that all tick at the same
//! period. The clock keeps [`BUCKETS`] buckets instead, each a tick counter and the wakers of
//! the connections that wait on it, and one task ([`PingClock::run`]) ticks the buckets in
//! turn, one every `period / BUCKETS`: each bucket ticks once a period, and the buckets are
//! spread evenly over it. A connection's [`PingTimer`] joins the bucket ticked last, so its
//! first tick comes one period after it connected (less at most one step), and every period
//! after that — as an interval would, without a timer of its own: a connection costs its slot
//! in its bucket (its waker) and the timer's few bytes in its task.
//!
//! The clock also carries shutdown: [`PingClock::close`] wakes every timer at once, and a
//! closed clock's timers are always ready. A connection's task checks the gateway's closing
//! token whenever it wakes, so it needs no shutdown future of its own (another 72 bytes per
//! connection, and a lock taken and released on every wake-up).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;

/// How many buckets a period is divided into.
pub const BUCKETS: usize = 16;

/// The shared clock (see the module docs).
#[derive(Debug)]
pub struct PingClock {
    period: Duration,
    buckets: Box<[Mutex<Bucket>]>,
    /// The bucket ticked last: where new timers join.
    last_ticked: AtomicUsize,
    /// Set by [`PingClock::close`]: every timer is ready from then on.
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Ticks so far (wrapping).
    ticks: u32,
    /// The timers' wakers, registered at their first wait; a timer keeps its slot for its
    /// life (16 bytes).
    wakers: Slab<Waker>,
}

impl PingClock {
    /// A clock whose every timer ticks once per `period`. Nothing ticks until
    /// [`PingClock::run`] runs.
    pub fn new(period: Duration) -> Arc<Self> {
        Arc::new(PingClock {
            period,
            buckets: (0..BUCKETS).map(|_| Mutex::default()).collect(),
            last_ticked: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Makes every timer ready now and from now on, waking the tasks waiting on them
    /// (shutdown: each connection then finds the gateway closing).
    pub fn close(&self) {
        // Set before any bucket is swept: a timer that registers after its bucket's sweep
        // finds the flag under that bucket's lock.
        self.closed.store(true, Ordering::SeqCst);
        for index in 0..BUCKETS {
            for (_, waker) in &self.bucket(index).wakers {
                waker.wake_by_ref();
            }
        }
    }

    /// Ticks the buckets in turn until the clock is dropped.
    pub async fn run(clock: Weak<Self>) {
        let Some(step) = clock.upgrade().map(|clock| clock.step()) else {
            return;
        };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 1;
        loop {
            ticker.tick().await;
            let Some(clock) = clock.upgrade() else {
                return;
            };
            clock.tick(next);
            next = (next + 1) % BUCKETS;
        }
    }

    /// Time between two bucket ticks.
    fn step(&self) -> Duration {
        (self.period / u32::try_from(BUCKETS).unwrap_or(u32::MAX)).max(Duration::from_millis(1))
    }

    /// Ticks bucket `index`: wakes every timer waiting on it.
    fn tick(&self, index: usize) {
        let mut bucket = self.bucket(index);
        bucket.ticks = bucket.ticks.wrapping_add(1);
        for (_, waker) in &bucket.wakers {
            waker.wake_by_ref();
        }
        drop(bucket);
        self.last_ticked.store(index, Ordering::Relaxed);
    }

    fn bucket(&self, index: usize) -> MutexGuard<'_, Bucket> {
        self.buckets[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A timer whose first tick comes about one period from now.
    pub fn timer(&self) -> PingTimer<'_> {
        let index = self.last_ticked.load(Ordering::Relaxed);
        let seen = self.bucket(index).ticks;
        PingTimer {
            clock: self,
            bucket: u32::try_from(index).unwrap_or(0),
            key: UNREGISTERED,
            seen,
        }
    }

    /// Timers alive now.
    pub fn timers(&self) -> usize {
        (0..BUCKETS)
            .map(|index| self.bucket(index).wakers.len())
            .sum()
    }
}

/// A timer's key before its first wait.
const UNREGISTERED: u32 = u32::MAX;

/// One connection's ticks ([`PingClock::timer`]); gives its slot back when dropped.
#[derive(Debug)]
pub struct PingTimer<'a> {
    clock: &'a PingClock,
    bucket: u32,
    key: u32,
    /// The bucket's tick count when this timer last ticked.
    seen: u32,
}

impl PingTimer<'_> {
    /// Ready once per tick of its bucket: the first tick since the last one returned.
    /// Ticks missed while the connection was busy are one tick, not several. Always ready
    /// once the clock is closed.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut bucket = self.clock.bucket(self.bucket as usize);
        if self.clock.closed.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if bucket.ticks != self.seen {
            self.seen = bucket.ticks;
            return Poll::Ready(());
        }
        match bucket.wakers.get_mut(self.key as usize) {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => {
                let key = bucket.wakers.insert(cx.waker().clone());
                self.key = u32::try_from(key).expect("fewer than 2^32 timers per bucket");
            }
        }
        Poll::Pending
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await;
    }
}

impl Drop for PingTimer<'_> {
    fn drop(&mut self) {
        if self.key != UNREGISTERED {
            self.clock
                .bucket(self.bucket as usize)
                .wakers
                .try_remove(self.key as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Every timer ticks once per period, across several periods; the first tick comes about
    /// a period after the timer was made, whichever bucket it joined.
    #[tokio::test]
    async fn each_timer_ticks_once_a_period() {
        let period = Duration::from_millis(160);
        let clock = PingClock::new(period);
        tokio::spawn(PingClock::run(Arc::downgrade(&clock)));
        let started = Instant::now();
        let mut ticks = Vec::new();
        for offset in 0..4u64 {
            let clock = Arc::clone(&clock);
            ticks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(37 * offset)).await;
                let made = Instant::now();
                let mut timer = clock.timer();
                let mut at = Vec::new();
                for _ in 0..5 {
                    timer.tick().await;
                    at.push(made.elapsed());
                }
                at
            }));
        }
        for handle in ticks {
            let at = handle.await.unwrap();
            let step = period / BUCKETS as u32;
            assert!(
                at[0] >= period - 2 * step && at[0] <= period + period / 2,
                "first tick after {:?}",
                at[0]
            );
            for pair in at.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    gap >= period - 2 * step && gap <= period + period / 2,
                    "ticks {gap:?} apart: {at:?}"
                );
            }
        }
        assert!(started.elapsed() >= 5 * period);
        assert_eq!(clock.timers(), 0, "dropped timers give their slots back");
    }

    /// Negative control: with the clock's task not running, nothing ticks.
    #[tokio::test]
    async fn nothing_ticks_without_the_clock_task() {
        let clock = PingClock::new(Duration::from_millis(20));
        let mut timer = clock.timer();
        assert_eq!(clock.timers(), 0, "a timer takes a slot at its first wait");
        let ticked = tokio::time::timeout(Duration::from_millis(150), timer.tick()).await;
        assert!(ticked.is_err(), "a timer ticked with no clock running");
        assert_eq!(clock.timers(), 1);
    }

    /// Closing wakes every waiting timer at once, however far its next tick is, and a timer
    /// made after the close is ready at once.
    #[tokio::test]
    async fn closing_wakes_every_timer_at_once() {
        let clock = PingClock::new(Duration::from_secs(3600));
        tokio::spawn(PingClock::run(Arc::downgrade(&clock)));
        let mut waiting = Vec::new();
        for _ in 0..20 {
            let clock = Arc::clone(&clock);
            waiting.push(tokio::spawn(async move {
                let mut timer = clock.timer();
                timer.tick().await;
            }));
        }
        // Positive control: an hour-long period does not tick here.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(waiting.iter().all(|task| !task.is_finished()));
        assert_eq!(clock.timers(), 20);
        clock.close();
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .expect("woken by the close")
                .unwrap();
        }
        let mut late = clock.timer();
        tokio::time::timeout(Duration::from_millis(100), late.tick())
            .await
            .expect("ready at once after the close");
    }

    /// The clock's task ends when the clock is dropped.
    #[tokio::test]
    async fn the_clock_task_ends_with_the_clock() {
        let clock = PingClock::new(Duration::from_millis(16));
        let task = tokio::spawn(PingClock::run(Arc::downgrade(&clock)));
        drop(clock);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the clock's task ended")
            .unwrap();
    }
}

//! Publish-to-client latency, recorded into HDR histograms.
//!
//! Readers run on every runtime worker thread; each thread records into its own histogram
//! (an uncontended lock), and [`merged`] adds them up at the end of a run.

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly: one hour, in microseconds; larger values saturate.
const HIGHEST_US: u64 = 3_600_000_000;

static REGISTRY: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Mutex<Histogram<u64>>> = {
        let histogram = Arc::new(Mutex::new(new_histogram()));
        REGISTRY
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(histogram.clone());
        histogram
    };
}

fn new_histogram() -> Histogram<u64> {
    // Three significant digits over 1 µs .. 1 h: bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Records one latency in nanoseconds (stored with microsecond resolution).
#[inline]
pub fn record_ns(latency_ns: u64) {
    let micros = (latency_ns / 1_000).max(1);
    LOCAL.with(|histogram| {
        histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros);
    });
}

/// All threads' recordings so far, added up.
pub fn merged() -> Histogram<u64> {
    let mut total = new_histogram();
    for histogram in REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        let histogram = histogram.lock().unwrap_or_else(PoisonError::into_inner);
        // Same bounds everywhere, so adding cannot fail.
        let _ = total.add(&*histogram);
    }
    total
}

/// Takes every thread's recordings so far, leaving them empty (one phase of a run at a time).
pub fn take() -> Histogram<u64> {
    let mut total = new_histogram();
    for histogram in REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        let mut histogram = histogram.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = total.add(&*histogram);
        histogram.reset();
    }
    total
}

/// The non-empty buckets of `histogram` as `(value, count)`, to send to another process.
pub fn buckets(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
        .collect()
}

/// A histogram holding `buckets` (from [`buckets`], of any number of processes).
pub fn from_buckets(buckets: &[(u64, u64)]) -> Histogram<u64> {
    let mut histogram = new_histogram();
    for &(value, count) in buckets {
        histogram.saturating_record_n(value, count);
    }
    histogram
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Summarizes a microsecond histogram; `None` when empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| (micros as f64 / 1_000.0 * 1_000.0).round() / 1_000.0;
        Some(Percentiles {
            count: histogram.len(),
            mean: (histogram.mean() / 1_000.0 * 1_000.0).round() / 1_000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut histogram = new_histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros * 10).unwrap();
        }
        let summary = Percentiles::of(&histogram).unwrap();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50 - 5.0).abs() < 0.01, "{summary:?}");
        assert!((summary.max - 10.0).abs() < 0.01, "{summary:?}");
        assert!(Percentiles::of(&new_histogram()).is_none());
    }

    #[test]
    fn buckets_carry_a_histogram_to_another_process() {
        let mut histogram = new_histogram();
        for micros in [100u64, 100, 2_000, 50_000] {
            histogram.record(micros).unwrap();
        }
        let copy = from_buckets(&buckets(&histogram));
        assert_eq!(copy.len(), 4);
        assert_eq!(
            copy.value_at_quantile(0.5),
            histogram.value_at_quantile(0.5)
        );
        assert_eq!(copy.max(), histogram.max());
    }

    #[test]
    fn threads_are_merged() {
        let before = merged().len();
        let handles: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(|| record_ns(2_000_000)))
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert!(merged().len() >= before + 3);
    }
}

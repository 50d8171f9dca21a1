//! A fixed-bucket histogram of atomics for the per-program statistics (request time, queue
//! wait, exits per request): one relaxed add per bucket and one for the sum per observation,
//! no lock. The server exports it as a Prometheus histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request-time and queue-wait buckets: 50 µs to 10 s.
pub const TIME_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Upper bounds of the exits-per-request buckets.
pub const EXIT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// Observations counted per bucket (not cumulative; the last bucket is +Inf) and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// Sum of the observations in `1 / scale` units (nanoseconds for times).
    sum: AtomicU64,
    scale: f64,
}

/// A histogram's values at one moment, for export.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations (seconds for times).
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound, observations in this bucket and not in the one before) per bucket,
    /// `+Inf` last. (Prometheus's buckets are cumulative: the encoder sums them.)
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// A histogram of durations (exported in seconds).
    pub fn seconds() -> Self {
        Histogram::new(TIME_BUCKETS, 1e-9)
    }

    /// A histogram of exits per request.
    pub fn exits() -> Self {
        Histogram::new(EXIT_BUCKETS, 1.0)
    }

    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Count one duration.
    pub fn observe_duration(&self, d: Duration) {
        self.add(
            d.as_secs_f64(),
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
        );
    }

    /// Count one value (for the exits histogram).
    pub fn observe_count(&self, n: u64) {
        self.add(n as f64, n);
    }

    fn add(&self, value: f64, units: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    /// The values now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
            count: total,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_the_sum_in_seconds() {
        let h = Histogram::seconds();
        h.observe_duration(Duration::from_micros(30));
        h.observe_duration(Duration::from_micros(50));
        h.observe_duration(Duration::from_millis(3));
        h.observe_duration(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert!((s.sum - 20.00308).abs() < 1e-9, "{}", s.sum);
        assert_eq!(s.buckets.len(), TIME_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.00005, 2), "a bound is inclusive");
        assert_eq!(s.buckets[5], (0.0025, 0));
        assert_eq!(s.buckets[6], (0.005, 1));
        assert_eq!(s.buckets[TIME_BUCKETS.len() - 1], (10.0, 0));
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 4);
    }

    #[test]
    fn exits() {
        let h = Histogram::exits();
        for n in [1, 1, 3, 5000] {
            h.observe_count(n);
        }
        let s = h.snapshot();
        assert_eq!((s.count, s.sum), (4, 5005.0));
        assert_eq!(s.buckets[0], (1.0, 2));
        assert_eq!(s.buckets[2], (4.0, 1));
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 1));
    }
}

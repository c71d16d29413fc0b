//! The two kinds of series roost updates as things happen: a counter and a histogram with fixed
//! buckets. Both are relaxed atomics, so the hot path (every request, every database batch)
//! pays a few uncontended adds: no lock, no allocation. Gauges are not stored: they are read
//! from the running server when `/metrics` is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets (upper bounds, nanoseconds): 100 µs to 10 s, enough resolution for a device
/// PUT (sub-millisecond) and for a slow weather proxy or chart alike.
pub const LATENCY_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Nanoseconds per exported second.
pub const SECONDS: f64 = 1e9;

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Observations are integers in a fixed unit (nanoseconds, commits); `scale` is how many of
/// them make one exported unit (1e9 for seconds), so sums stay exact.
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    scale: f64,
    /// Observations in `(bounds[i-1], bounds[i]]`; cumulated only when rendered.
    counts: [AtomicU64; N],
    above: AtomicU64,
    sum: AtomicU64,
}

/// A histogram as exported: cumulative bucket counts by upper bound, then `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket), taken from the same reads as the buckets so the
    /// two always agree.
    pub count: u64,
    pub sum: f64,
}

impl<const N: usize> Histogram<N> {
    /// `bounds` must be ascending.
    pub const fn new(bounds: [u64; N], scale: f64) -> Self {
        Self {
            bounds,
            scale,
            counts: [const { AtomicU64::new(0) }; N],
            above: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|bound| *bound < value);
        self.counts.get(i).unwrap_or(&self.above).fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, took: Duration) {
        self.observe(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound as f64 / self.scale, cumulative)
            })
            .collect();
        let count = cumulative + self.above.load(Ordering::Relaxed);
        Snapshot { buckets, count, sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = Histogram::new([10, 20, 40], 10.0);
        for v in [0, 10, 11, 20, 40, 41, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (2.0, 4), (4.0, 5)]);
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, 112.2);
    }

    #[test]
    fn durations_are_exported_in_seconds() {
        let h = Histogram::new(LATENCY_NS, SECONDS);
        h.observe_duration(Duration::from_micros(300));
        h.observe_duration(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.0001, 0));
        assert_eq!(s.buckets[2], (0.0005, 1));
        assert_eq!(s.buckets.last(), Some(&(10.0, 1)));
        assert_eq!(s.count, 2);
        assert!((s.sum - 60.0003).abs() < 1e-9, "{}", s.sum);
    }
}

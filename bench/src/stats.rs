//! Distributions (HdrHistogram) and the median of a few repeated runs.

use std::time::Duration;

use serde::Serialize;

/// p50 / p99 / max / min of a distribution, in the unit the caller chose.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Smallest sample.
    pub min: f64,
}

/// A distribution of non-negative integer samples (nanoseconds,
/// microseconds, ...), kept to 3 significant digits: an HdrHistogram,
/// which also merges the histograms of many clients.
#[derive(Clone, Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram (it grows to whatever is recorded).
    #[expect(
        clippy::expect_used,
        reason = "new() fails only for a precision outside 0..=5"
    )]
    pub fn new() -> Histogram {
        Histogram(hdrhistogram::Histogram::new(3).expect("3 significant digits is valid"))
    }

    /// Records one sample.
    pub fn record(&mut self, value: u64) {
        // `record` grows the histogram; only a value beyond what any size
        // can track fails, and is then clamped to the largest trackable.
        if self.0.record(value).is_err() {
            self.0.saturating_record(value);
        }
    }

    /// Records a duration in nanoseconds.
    pub fn record_ns(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other`.
    pub fn add(&mut self, other: &Histogram) {
        // Both auto-resize, so adding cannot run out of range.
        let _ = self.0.add(&other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The nearest-rank percentiles, each divided by `per_unit` (e.g. 1000
    /// for nanoseconds shown as µs). An empty histogram gives all zeros.
    pub fn summary(&self, per_unit: f64) -> Summary {
        let h = &self.0;
        if h.is_empty() {
            return Summary::default();
        }
        let at = |v: u64| v as f64 / per_unit;
        Summary {
            count: usize::try_from(h.len()).unwrap_or(usize::MAX),
            p50: at(h.value_at_quantile(0.50)),
            p99: at(h.value_at_quantile(0.99)),
            max: at(h.max()),
            min: at(h.min()),
        }
    }
}

/// The median of a few repeated measurements (the lower middle one for an
/// even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// The smallest and the largest of `values` ((0, 0) for none).
pub fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().reduce(f64::min).unwrap_or(0.0);
    let hi = values.iter().copied().reduce(f64::max).unwrap_or(0.0);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut h = Histogram::new();
        (1..=100).for_each(|v| h.record(v));
        let s = h.summary(1.0);
        assert_eq!(
            (s.p50, s.p99, s.max, s.min, s.count),
            (50.0, 99.0, 100.0, 1.0, 100)
        );
    }

    #[test]
    fn large_values_keep_three_digits_and_histograms_merge() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record_ns(Duration::from_micros(9_510));
        b.record_ns(Duration::from_secs(5));
        a.add(&b);
        let s = a.summary(1000.0);
        assert_eq!(s.count, 2);
        assert!((s.min - 9_510.0).abs() / 9_510.0 < 1e-3, "{s:?}");
        assert!((s.max - 5e6).abs() / 5e6 < 1e-3, "{s:?}");
    }

    #[test]
    fn empty_is_all_zero() {
        let s = Histogram::new().summary(1.0);
        assert_eq!((s.count, s.p99), (0, 0.0));
    }

    #[test]
    fn median_and_range_of_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(range(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}

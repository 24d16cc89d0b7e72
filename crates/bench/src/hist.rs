//! A log-linear histogram of durations in nanoseconds.
//!
//! Values below 2^P are counted exactly; above, each power of two is split
//! into 2^P buckets, so a bucket's width is at most 1/2^P of its values
//! (P = 7: under 0.8 %). Recording is an index computation and an
//! increment; histograms of different threads merge by adding counts.

/// Precision bits: buckets per power of two.
const P: u32 = 7;
const SUB: usize = 1 << P;
/// Buckets for every u64: the exact range, then 2^P per exponent above it.
const BUCKETS: usize = (64 - P as usize + 1) * SUB;

/// Counts of values, log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket a value falls in.
fn index(v: u64) -> usize {
    if v < SUB as u64 {
        // Lossless: v < 128.
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - P;
    let mantissa = (v >> shift) as usize; // in [SUB, 2 * SUB)
    (shift as usize + 1) * SUB + (mantissa - SUB)
}

/// The largest value of a bucket.
fn highest(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = (index / SUB - 1) as u32;
    let mantissa = (index % SUB + SUB) as u64;
    let low = mantissa << shift;
    low.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    #[must_use]
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many values were counted.
    #[must_use]
    pub const fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact).
    #[must_use]
    pub const fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket
    /// holding the value of rank ceil(q * count), never above the maximum.
    /// 0 for an empty histogram.
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        // Rank of the wanted value, 1-based.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 0..100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 49);
        assert_eq!(h.quantile(1.0), 99);
        assert_eq!(h.quantile(0.0), 0);
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn percentiles_of_a_uniform_spread_are_within_the_precision() {
        let mut h = Histogram::new();
        for v in 1..=1_000_000u64 {
            h.record(v * 100);
        }
        for (q, want) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - want).abs() / want < 0.008,
                "q {q}: got {got}, want {want}"
            );
            // The highest value of a bucket: never below the true value.
            assert!(got >= want, "q {q}: {got} < {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000_000);
        assert_eq!(h.max(), 100_000_000);
    }

    #[test]
    fn a_lone_outlier_is_the_maximum_not_the_median() {
        let mut h = Histogram::new();
        for _ in 0..999 {
            h.record(80_000);
        }
        h.record(9_000_000);
        let p50 = h.quantile(0.5);
        assert!((80_000..=80_000 + 80_000 / 128).contains(&p50), "{p50}");
        assert!(h.quantile(0.99) < 81_000);
        assert_eq!(h.quantile(0.9999), 9_000_000);
        assert_eq!(h.max(), 9_000_000);
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in [
            0,
            1,
            127,
            128,
            129,
            255,
            256,
            1 << 20,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last, "{v}");
            assert!(highest(i) >= v, "{v}");
            last = i;
        }
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1000);
        b.record(2000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 2000);
        assert_eq!(a.quantile(0.34), highest(index(1000)));
        assert!(Histogram::new().quantile(0.5) == 0);
    }
}

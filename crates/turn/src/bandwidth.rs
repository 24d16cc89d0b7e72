//! Bandwidth per allocation (SECURITY.md §D): a token bucket of payload
//! bytes for each direction, refilled at the configured rate, holding at
//! most one second of it. What does not fit is dropped and counted.

use std::time::{Duration, Instant};

const NANOS: u64 = 1_000_000_000;

/// Bytes per second; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate(pub(crate) u64);

impl Rate {
    /// One second's worth, the most a budget holds, in nanobytes.
    fn capacity(self) -> u64 {
        self.0.saturating_mul(NANOS)
    }
}

/// One direction's budget.
///
/// Kept in nanobytes (bytes × 10⁹), so that a refill is one
/// multiplication, exact to the nanosecond, with no division on the data
/// path. The largest rate the configuration allows (100 Gbit/s) keeps one
/// second's worth within a `u64`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// What may pass now, in nanobytes.
    nanobytes: u64,
    /// When the budget was last refilled.
    at: Instant,
}

impl Budget {
    /// A full budget (one second's worth) at `now`.
    pub(crate) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            nanobytes: rate.capacity(),
            at: now,
        }
    }

    /// Takes `len` bytes, or says they do not fit (the budget is left as
    /// it was: a dropped packet costs nothing).
    #[inline]
    pub(crate) fn take(&mut self, rate: Rate, len: usize, now: Instant) -> bool {
        if rate.0 == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        // A second or more refills it whole.
        let nanos = if elapsed >= Duration::from_secs(1) {
            NANOS
        } else {
            u64::from(elapsed.subsec_nanos())
        };
        self.nanobytes = self
            .nanobytes
            .saturating_add(nanos.saturating_mul(rate.0))
            .min(rate.capacity());
        let need = u64::try_from(len).unwrap_or(u64::MAX).saturating_mul(NANOS);
        match self.nanobytes.checked_sub(need) {
            Some(left) => {
                self.nanobytes = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let rate = Rate(10_000);
        let mut b = Budget::new(rate, t0);
        // One second's worth at once, then nothing.
        assert_eq!((0..20).filter(|_| b.take(rate, 1_000, t0)).count(), 10);
        assert!(!b.take(rate, 1, t0));
        // 100 ms later, 1,000 bytes more; not 1,001.
        let t = t0 + Duration::from_millis(100);
        assert!(
            !b.take(rate, 1_001, t),
            "a packet that does not fit costs nothing"
        );
        assert!(b.take(rate, 1_000, t));
        assert!(!b.take(rate, 1, t));
        // Idle for a minute: still at most one second's worth.
        let later = t + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(rate, 1_000, later)).count(), 10);
    }

    #[test]
    fn small_steps_add_up() {
        // 1,000 bytes/s checked every 100 µs: 0.1 byte a step must not be
        // lost to rounding.
        let t0 = Instant::now();
        let rate = Rate(1_000);
        let mut b = Budget::new(rate, t0);
        assert!(b.take(rate, 1_000, t0));
        let mut passed = 0;
        for i in 1..=10_000u64 {
            if b.take(rate, 10, t0 + Duration::from_micros(100 * i)) {
                passed += 10;
            }
        }
        assert!(
            (990..=1_000).contains(&passed),
            "{passed} bytes in one second"
        );
    }

    #[test]
    fn zero_is_no_limit() {
        let t0 = Instant::now();
        let mut b = Budget::new(Rate(0), t0);
        assert!((0..1000).all(|_| b.take(Rate(0), 65_535, t0)));
    }
}

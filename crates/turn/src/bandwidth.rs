//! Bandwidth per allocation (SECURITY.md §D): a token bucket of payload
//! bytes for each direction, refilled at the configured rate, holding at
//! most one second of it. What does not fit is dropped and counted.

use std::time::{Duration, Instant};

const NANOS: u128 = 1_000_000_000;

/// Bytes per second; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate(pub(crate) u64);

/// One direction's budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Bytes that may pass now.
    bytes: u64,
    /// When `bytes` was last refilled.
    at: Instant,
}

impl Budget {
    /// A full budget (one second's worth) at `now`.
    pub(crate) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            bytes: rate.0,
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
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let refill = elapsed.saturating_mul(u128::from(rate.0)) / NANOS;
        if refill > 0 {
            let filled = u128::from(self.bytes).saturating_add(refill);
            if filled >= u128::from(rate.0) {
                self.bytes = rate.0;
                self.at = now;
            } else {
                // Advance by exactly the time those bytes took, so that
                // the fraction of a byte left over is not lost.
                self.bytes = u64::try_from(filled).unwrap_or(rate.0);
                let spent = refill.saturating_mul(NANOS) / u128::from(rate.0);
                self.at += Duration::from_nanos(u64::try_from(spent).unwrap_or(u64::MAX));
            }
        }
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        match self.bytes.checked_sub(len) {
            Some(left) => {
                self.bytes = left;
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

//! The send schedule of one generator thread.
//!
//! Packet n of the thread goes at `t0 + n / rate`, where `rate` is the
//! thread's total (its allocations times the rate of each), to allocation
//! `n mod allocations`: each allocation sends at its own rate, evenly
//! spaced, and the thread's packets are spread evenly over time, so the
//! server sees a smooth load rather than synchronized bursts. Times are
//! offsets in nanoseconds from the run's epoch.

/// A packet that is due: which allocation (position in the thread's list)
/// and its scheduled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub slot: usize,
    pub at_ns: u64,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    t0_ns: u64,
    /// Nanoseconds between two packets of the thread.
    period_ns: f64,
    slots: usize,
    n: u64,
    /// Packets passed over because the thread fell too far behind.
    skipped: u64,
}

impl Schedule {
    /// `per_slot` packets per second for each of `slots` allocations, from
    /// `t0_ns`. A rate of zero, or no slot, sends nothing.
    #[must_use]
    pub fn new(t0_ns: u64, per_slot: f64, slots: usize) -> Self {
        let total = per_slot * slots as f64;
        let period_ns = if total > 0.0 && total.is_finite() {
            1e9 / total
        } else {
            f64::INFINITY
        };
        Self {
            t0_ns,
            period_ns,
            slots,
            n: 0,
            skipped: 0,
        }
    }

    /// When packet `n` is due.
    #[must_use]
    pub fn time_of(&self, n: u64) -> u64 {
        let offset = n as f64 * self.period_ns;
        if offset.is_finite() && offset < u64::MAX as f64 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let offset = offset as u64;
            self.t0_ns.saturating_add(offset)
        } else {
            u64::MAX
        }
    }

    /// When the next packet is due; `u64::MAX` when nothing ever is.
    #[must_use]
    pub fn next_at(&self) -> u64 {
        if self.slots == 0 {
            return u64::MAX;
        }
        self.time_of(self.n)
    }

    /// The next packet if it is due at `now_ns`, before `end_ns`. A thread
    /// that fell more than `max_lag_ns` behind skips the packets it can no
    /// longer send on time (they are not offered, and so not counted as
    /// sent).
    pub fn next_due(&mut self, now_ns: u64, end_ns: u64, max_lag_ns: u64) -> Option<Due> {
        let mut at = self.next_at();
        if at > now_ns || at >= end_ns {
            return None;
        }
        if now_ns - at > max_lag_ns {
            // Jump to the first packet within the lag.
            let target = now_ns - max_lag_ns;
            let offset = target.saturating_sub(self.t0_ns) as f64;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let mut n = (offset / self.period_ns).ceil() as u64;
            n = n.max(self.n);
            self.skipped += n - self.n;
            self.n = n;
            at = self.time_of(n);
            if at > now_ns || at >= end_ns {
                return None;
            }
        }
        let slot = usize::try_from(self.n % self.slots as u64).unwrap_or(0);
        self.n += 1;
        Some(Due { slot, at_ns: at })
    }

    /// Packets passed over so far.
    #[must_use]
    pub const fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_evenly_spaced_and_round_robin() {
        // 4 allocations at 250 pps: the thread sends every millisecond.
        let mut s = Schedule::new(1_000, 250.0, 4);
        let mut got = Vec::new();
        while let Some(d) = s.next_due(1_000 + 10_000_000, u64::MAX, u64::MAX) {
            got.push(d);
        }
        assert_eq!(got.len(), 11, "0 ms ..= 10 ms");
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.slot, i % 4);
            assert_eq!(d.at_ns, 1_000 + i as u64 * 1_000_000);
        }
        assert_eq!(s.next_at(), 1_000 + 11_000_000);
        // Each allocation's own packets are 4 ms apart: its 250 pps.
        let a0: Vec<u64> = got
            .iter()
            .filter(|d| d.slot == 0)
            .map(|d| d.at_ns)
            .collect();
        assert_eq!(a0, [1_000, 4_001_000, 8_001_000]);
    }

    #[test]
    fn nothing_is_due_early_or_past_the_end() {
        let mut s = Schedule::new(5_000, 1000.0, 1);
        assert_eq!(s.next_due(4_999, u64::MAX, u64::MAX), None);
        assert!(s.next_due(5_000, u64::MAX, u64::MAX).is_some());
        // Packet 1 is at 1_005_000, not before the end 1_005_000.
        assert_eq!(s.next_due(2_000_000, 1_005_000, u64::MAX), None);
    }

    #[test]
    fn a_thread_far_behind_skips_rather_than_bursts() {
        let mut s = Schedule::new(0, 1000.0, 2); // every 0.5 ms
        // 100 ms late, 10 ms of lag allowed: packets from 90 ms on.
        let first = s.next_due(100_000_000, u64::MAX, 10_000_000).unwrap();
        assert_eq!(first.at_ns, 90_000_000);
        assert_eq!(s.skipped(), 180);
        let mut sent = 1;
        while s.next_due(100_000_000, u64::MAX, 10_000_000).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 21, "90 ms ..= 100 ms");
    }

    #[test]
    fn a_zero_rate_sends_nothing() {
        let mut s = Schedule::new(0, 0.0, 10);
        assert_eq!(s.next_at(), u64::MAX);
        assert_eq!(s.next_due(u64::MAX - 1, u64::MAX, 0), None);
        let mut s = Schedule::new(0, 50.0, 0);
        assert_eq!(s.next_due(1 << 40, u64::MAX, u64::MAX), None);
    }

    #[test]
    fn fractional_rates_keep_the_average() {
        // 3 allocations at 62.5 pps (a saturation step): 187.5 pps.
        let mut s = Schedule::new(0, 62.5, 3);
        let mut n = 0;
        while s.next_due(10_000_000_000, u64::MAX, u64::MAX).is_some() {
            n += 1;
        }
        assert_eq!(n, 1876, "10 s at 187.5 pps, both ends included");
    }
}

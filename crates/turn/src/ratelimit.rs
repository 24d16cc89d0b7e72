//! A per-source limit on answers to unauthenticated requests (SECURITY.md
//! §D): a spoofed-source flood of Binding requests or Allocates must not
//! turn the server into a reflector. The runtime uses it too, for its
//! probe responder's replies and for the check credentials it hands out.
//!
//! Token buckets live in a fixed table indexed by a keyed hash of the
//! source: memory does not grow with the number of sources, and sources
//! that share a slot share a bucket, which errs on the side of answering
//! less.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const SLOTS: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Tokens, in units of `1 / period_ms`: a bucket earns `count` units a
    /// millisecond exactly, however slow the rate.
    units: u64,
    /// When the bucket was last refilled, in milliseconds since `epoch`.
    at_ms: u64,
}

/// Token buckets per source address (an IPv4 address, or an IPv6 /64).
pub struct RateLimiter {
    buckets: Box<[Bucket]>,
    /// Tokens per `period`.
    count: u32,
    period_ms: u64,
    burst: u32,
    epoch: Instant,
    hasher: foldhash::fast::FixedState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("count", &self.count)
            .field("period_ms", &self.period_ms)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimiter {
    /// `per_second` answers per source, in bursts of up to `burst`;
    /// `per_second == 0` allows everything.
    #[must_use]
    pub fn new(per_second: u32, burst: u32, epoch: Instant, seed: u64) -> Self {
        Self::per_period(per_second, Duration::from_secs(1), burst, epoch, seed)
    }

    /// `count` answers per source every `period` (whole milliseconds, at
    /// most a day), in bursts of up to `burst`; `count == 0` allows
    /// everything. `seed` keys the hash of sources: draw it at random, or
    /// a flood can aim at one slot.
    #[must_use]
    pub fn per_period(count: u32, period: Duration, burst: u32, epoch: Instant, seed: u64) -> Self {
        let slots = if count == 0 { 0 } else { SLOTS };
        Self {
            buckets: vec![Bucket::default(); slots].into_boxed_slice(),
            count,
            period_ms: u64::try_from(period.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, 86_400_000),
            burst: burst.max(1),
            epoch,
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// How long an empty bucket takes to earn one token back.
    #[must_use]
    pub fn refill_time(&self) -> Duration {
        Duration::from_millis(self.period_ms.div_ceil(u64::from(self.count.max(1))))
    }

    /// Takes a token for `source`; `false` when its bucket is empty.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.count == 0 {
            return true;
        }
        let slot = self.slot(source);
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let token = self.period_ms;
        let cap = u64::from(self.burst).saturating_mul(token);
        let per_ms = u64::from(self.count);
        let Some(bucket) = self.buckets.get_mut(slot) else {
            return true;
        };
        let fresh = bucket.at_ms == 0 && bucket.units == 0;
        let elapsed = now_ms.saturating_sub(bucket.at_ms);
        let refilled = if fresh {
            cap
        } else {
            bucket
                .units
                .saturating_add(elapsed.saturating_mul(per_ms))
                .min(cap)
        };
        bucket.at_ms = now_ms.max(1);
        if refilled >= token {
            bucket.units = refilled - token;
            true
        } else {
            bucket.units = refilled;
            false
        }
    }

    fn slot(&self, source: IpAddr) -> usize {
        let mut h = self.hasher.build_hasher();
        match source {
            IpAddr::V4(v4) => h.write_u32(u32::from(v4)),
            // One host usually holds a whole /64.
            IpAddr::V6(v6) => h.write_u64((u128::from(v6) >> 64) as u64),
        }
        (h.finish() as usize) % SLOTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 5, t0, 1);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let t = t0 + Duration::from_secs(1);
        assert_eq!((0..8).filter(|_| rl.allow(a, t)).count(), 5, "burst");
        assert!(!rl.allow(a, t));
        assert!(rl.allow(b, t), "another source has its own bucket");
        assert!(
            rl.allow(a, t + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!rl.allow(a, t + Duration::from_millis(150)));
        let later = t + Duration::from_secs(60);
        assert_eq!(
            (0..8).filter(|_| rl.allow(a, later)).count(),
            5,
            "never more than the burst"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_distinct_64s_are_not() {
        let t0 = Instant::now();
        let t = t0 + Duration::from_secs(1);
        let mut rl = RateLimiter::new(10, 3, t0, 7);
        // A host rotating addresses inside its /64 shares one bucket.
        let same: Vec<IpAddr> = (1..=6u16)
            .map(|i| format!("2001:db8:1:2::{i:x}").parse().unwrap())
            .collect();
        assert_eq!(same.iter().filter(|ip| rl.allow(**ip, t)).count(), 3);
        // Sources in other /64s are not charged for it (unless their slot
        // collides, which this seed does not make happen).
        let others: Vec<IpAddr> = (3..=8u16)
            .map(|i| format!("2001:db8:1:{i:x}::1").parse().unwrap())
            .collect();
        assert!(others.iter().all(|ip| rl.allow(*ip, t)));
    }

    #[test]
    fn a_million_sources_take_no_more_memory_than_one() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(50, 100, t0, 3);
        let before = rl.buckets.len();
        let t = t0 + Duration::from_secs(1);
        for i in 0..1_000_000u32 {
            rl.allow(IpAddr::from(i.to_be_bytes()), t);
        }
        assert_eq!(rl.buckets.len(), before);
        assert_eq!(before, SLOTS);
    }

    #[test]
    fn a_rate_per_minute_refills_without_rounding_away() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::per_period(10, Duration::from_secs(60), 3, t0, 5);
        assert_eq!(rl.refill_time(), Duration::from_secs(6));
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let t = t0 + Duration::from_secs(1);
        assert_eq!((0..5).filter(|_| rl.allow(a, t)).count(), 3, "burst");
        // Asked every millisecond, the bucket still fills: one token per
        // 6 s, whatever the callers do meanwhile.
        let mut granted = 0;
        for ms in 1..=12_000u64 {
            if rl.allow(a, t + Duration::from_millis(ms)) {
                granted += 1;
            }
        }
        assert_eq!(granted, 2, "12 s earn two tokens");
    }

    #[test]
    fn keeps_refilling_after_49_days() {
        // Milliseconds since the epoch no longer fit in 32 bits.
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 1, t0, 1);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let late = t0 + Duration::from_secs(50 * 86_400);
        assert!(rl.allow(a, late));
        assert!(!rl.allow(a, late));
        assert!(rl.allow(a, late + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(0, 0, t0, 1);
        let a: IpAddr = "::1".parse().unwrap();
        assert!((0..10_000).all(|_| rl.allow(a, t0)));
    }
}

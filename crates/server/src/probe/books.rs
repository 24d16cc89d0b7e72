//! The responder's bookkeeping: cookies, the byte budget of validated
//! sources, session counts and pending `later` replies. Pure and bounded:
//! every table has a cap, and nothing here does I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Seconds a cookie epoch lasts.
pub(crate) const EPOCH_SECONDS: u64 = 60;
/// Sources with a byte budget at once.
pub(crate) const MAX_BUDGETS: usize = 8192;
/// (source, session) pairs counted at once.
pub(crate) const MAX_SESSIONS: usize = 8192;
/// How long a session count is kept without a request.
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(120);
/// `later` replies pending for one source IP.
pub(crate) const MAX_LATER_PER_IP: u32 = 64;
/// `later` replies pending in all.
pub(crate) const MAX_LATER: u32 = 4096;

/// Return-routability cookies: the first 8 bytes of HMAC-SHA256, under a
/// key drawn at start, of the source IP and the minute (Unix seconds /
/// 60). A cookie of the current or the previous minute is valid.
#[derive(Debug)]
pub(crate) struct Cookies {
    key: [u8; 32],
}

impl Cookies {
    pub(crate) const fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn at(&self, ip: IpAddr, epoch: u64) -> u64 {
        let Ok(mut mac) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.key) else {
            return 0;
        };
        match ip {
            IpAddr::V4(v4) => {
                mac.update(&[4]);
                mac.update(&v4.octets());
            }
            IpAddr::V6(v6) => {
                mac.update(&[6]);
                mac.update(&v6.octets());
            }
        }
        mac.update(&epoch.to_be_bytes());
        let out = mac.finalize().into_bytes();
        out.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b))
    }

    /// The cookie for `ip` at `unix_s` (seconds since the Unix epoch), to
    /// give it, and whether `cookie` is one this responder gave `ip` this
    /// minute or the one before (0, no cookie, never is). One keyed hash
    /// when the request brings this minute's cookie, two at most.
    pub(crate) fn check(&self, ip: IpAddr, cookie: u64, unix_s: u64) -> (u64, bool) {
        let epoch = unix_s / EPOCH_SECONDS;
        let current = self.at(ip, epoch);
        let valid = cookie != 0
            && (cookie == current
                || epoch
                    .checked_sub(1)
                    .is_some_and(|previous| cookie == self.at(ip, previous)));
        (current, valid)
    }
}

/// Bytes each validated source (an IP address) may be sent: a token
/// bucket of `rate` bytes per second holding one second's worth. Kept in
/// byte-nanoseconds so that no refill is lost to rounding.
#[derive(Debug)]
pub(crate) struct Budgets {
    /// Bytes per second.
    rate: u128,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bytes × 10⁹.
    tokens: u128,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl Budgets {
    /// A budget of `kbps` kbit/s per source.
    pub(crate) fn new(kbps: u32) -> Self {
        Self {
            rate: u128::from(kbps) * 1000 / 8,
            buckets: HashMap::new(),
        }
    }

    /// Bytes per second per source.
    #[cfg(test)]
    pub(crate) fn bytes_per_second(&self) -> u128 {
        self.rate
    }

    /// Takes `len` bytes from `ip`'s budget if it has them.
    pub(crate) fn spend(&mut self, ip: IpAddr, len: usize, now: Instant) -> bool {
        let full = self.rate.saturating_mul(NANOS);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_BUDGETS {
            // A bucket left alone for a second is full again: forgetting
            // it changes nothing.
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
            if self.buckets.len() >= MAX_BUDGETS {
                return false;
            }
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: full,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_nanos();
        bucket.tokens = bucket
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(full);
        bucket.last = now.max(bucket.last);
        let cost = (len as u128).saturating_mul(NANOS);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Requests counted per (source transport address, session).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    counts: HashMap<(SocketAddr, u64), (u32, Instant)>,
}

impl Sessions {
    /// Counts a request of `session` from `source` (unless `tally`) and
    /// returns the count: this one included, or for a tally the count so
    /// far.
    pub(crate) fn count(
        &mut self,
        source: SocketAddr,
        session: u64,
        tally: bool,
        now: Instant,
    ) -> u32 {
        let key = (source, session);
        if let Some((n, last)) = self.counts.get_mut(&key) {
            *last = now;
            if !tally {
                *n = n.saturating_add(1);
            }
            return *n;
        }
        if tally {
            return 0;
        }
        if self.counts.len() >= MAX_SESSIONS {
            self.counts
                .retain(|_, (_, last)| now.saturating_duration_since(*last) <= SESSION_IDLE);
        }
        if self.counts.len() >= MAX_SESSIONS {
            let oldest = self
                .counts
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.counts.remove(&oldest);
            }
        }
        self.counts.insert(key, (1, now));
        1
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }
}

/// Why a `later` reply was not scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaterRefused {
    PerSource,
    InAll,
}

/// `later` replies pending, per source IP and in all.
#[derive(Debug, Default)]
pub(crate) struct Laters {
    per_ip: HashMap<IpAddr, u32>,
    total: u32,
}

impl Laters {
    /// Takes a place for a reply to `ip`.
    pub(crate) fn add(&mut self, ip: IpAddr) -> Result<(), LaterRefused> {
        if self.total >= MAX_LATER {
            return Err(LaterRefused::InAll);
        }
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= MAX_LATER_PER_IP {
            return Err(LaterRefused::PerSource);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives the place back: the reply went out (or was given up).
    pub(crate) fn done(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    #[cfg(test)]
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    impl Cookies {
        fn issue(&self, ip: IpAddr, unix_s: u64) -> u64 {
            self.check(ip, 0, unix_s).0
        }

        fn valid(&self, ip: IpAddr, cookie: u64, unix_s: u64) -> bool {
            self.check(ip, cookie, unix_s).1
        }
    }

    #[test]
    fn cookies_are_per_ip_and_last_two_minutes() {
        let c = Cookies::new([7; 32]);
        let a = ip("192.0.2.1");
        let t = 1_800_000_000;
        let cookie = c.issue(a, t);
        assert_ne!(cookie, 0);
        assert!(c.valid(a, cookie, t));
        assert!(c.valid(a, cookie, t + EPOCH_SECONDS), "the previous minute");
        assert!(!c.valid(a, cookie, t + 2 * EPOCH_SECONDS), "too old");
        assert!(!c.valid(ip("192.0.2.2"), cookie, t), "another source");
        assert!(!c.valid(ip("::ffff:192.0.2.1"), cookie, t));
        assert!(!c.valid(a, 0, t));
        assert!(!c.valid(a, cookie ^ 1, t));
        let other_key = Cookies::new([8; 32]);
        assert!(!other_key.valid(a, cookie, t), "a key of its own");
        assert!(!c.valid(a, cookie, 0));
    }

    #[test]
    fn budgets_hold_a_second_and_refill_at_the_rate() {
        // 80 kbit/s: 10 000 bytes a second.
        let mut b = Budgets::new(80);
        assert_eq!(b.bytes_per_second(), 10_000);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(b.spend(a, 6000, t0));
        assert!(b.spend(a, 4000, t0));
        assert!(!b.spend(a, 1, t0), "the burst is spent");
        assert!(b.spend(ip("192.0.2.2"), 10_000, t0), "per source");
        let later = t0 + Duration::from_millis(100);
        assert!(b.spend(a, 1000, later));
        assert!(!b.spend(a, 1, later));
        let much_later = t0 + Duration::from_secs(60);
        assert!(b.spend(a, 10_000, much_later), "full again, no more");
        assert!(!b.spend(a, 1, much_later));
    }

    #[test]
    fn budgets_are_bounded() {
        let mut b = Budgets::new(80);
        let t0 = Instant::now();
        for i in 0..MAX_BUDGETS {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(i as u128 + 1));
            assert!(b.spend(ip, 1, t0));
        }
        assert!(!b.spend(ip("192.0.2.1"), 1, t0), "full, all active");
        assert!(b.spend(ip("192.0.2.1"), 1, t0 + Duration::from_secs(2)));
        assert_eq!(b.buckets.len(), 1, "idle ones forgotten");
    }

    #[test]
    fn sessions_count_per_source_and_session() {
        let mut s = Sessions::default();
        let t = Instant::now();
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        assert_eq!(s.count(a, 5, true, t), 0, "a tally counts nothing");
        assert_eq!(s.len(), 0);
        assert_eq!(s.count(a, 5, false, t), 1);
        assert_eq!(s.count(a, 5, false, t), 2);
        assert_eq!(s.count(a, 5, true, t), 2);
        assert_eq!(s.count(a, 6, false, t), 1);
        assert_eq!(s.count(b, 5, false, t), 1);
        assert_eq!(s.count(a, 5, false, t), 3);
    }

    #[test]
    fn sessions_are_bounded_idle_ones_first_then_the_oldest() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        for i in 0..MAX_SESSIONS as u64 {
            s.count(a, i + 1, false, t0 + Duration::from_millis(i));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(s.count(a, 0xFFFF_FFFF, false, t1), 1);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.count(a, 1, true, t1), 0, "the oldest went");
        assert_eq!(s.count(a, 2, true, t1), 1, "the next did not");
        let t2 = t1 + SESSION_IDLE + Duration::from_secs(1);
        s.count(a, 0xFFFF_FFFE, false, t2);
        assert_eq!(s.len(), 1, "idle ones dropped");
    }

    #[test]
    fn laters_are_capped_per_source_and_in_all() {
        let mut l = Laters::default();
        let a = ip("192.0.2.1");
        for _ in 0..MAX_LATER_PER_IP {
            l.add(a).unwrap();
        }
        assert_eq!(l.add(a), Err(LaterRefused::PerSource));
        l.done(a);
        l.add(a).unwrap();
        l.done(ip("192.0.2.99"));
        assert_eq!(l.total(), MAX_LATER_PER_IP);
        let mut i = 0u32;
        while l.total() < MAX_LATER {
            l.add(IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i / 64)))
                .unwrap();
            i += 1;
        }
        assert_eq!(l.add(ip("198.51.100.1")), Err(LaterRefused::InAll));
    }
}

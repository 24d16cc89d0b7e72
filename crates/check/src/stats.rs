//! The figures a stream of probe packets gives, computed from what was
//! sent and what arrived, with no clock of their own: every function here
//! takes its times as arguments, so that tests drive them exactly.
//!
//! - [`Jitter`]: interarrival jitter as RFC 3550 §6.4.1 defines it, from
//!   send and receive times on two different clocks (only differences
//!   count, so their offset cancels).
//! - [`Arrivals`]: loss, reordering and duplicates by sequence number.
//! - [`quantile`]: the median and p95 of round-trip times.
//! - [`mos`]: an estimated mean opinion score for audio, from the E-model
//!   (ITU-T G.107) in its common simplified form.

use std::collections::HashSet;

/// Interarrival jitter (RFC 3550 §6.4.1): a running estimate of the mean
/// deviation of the difference in transit time between consecutive
/// packets, smoothed with gain 1/16. Times in nanoseconds; the estimate
/// in nanoseconds too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Jitter {
    /// The previous packet's transit time (receive − send).
    last_transit: Option<i128>,
    estimate: f64,
    samples: u64,
}

impl Jitter {
    /// One packet, in arrival order: when it was sent (sender's clock) and
    /// when it arrived (receiver's clock).
    pub fn add(&mut self, sent_ns: u64, received_ns: u64) {
        let transit = i128::from(received_ns) - i128::from(sent_ns);
        if let Some(last) = self.last_transit {
            // D(i-1, i), in absolute value; an f64 holds any realistic one.
            #[allow(clippy::cast_precision_loss)]
            let d = (transit - last).unsigned_abs() as f64;
            self.estimate += (d - self.estimate) / 16.0;
            self.samples += 1;
        }
        self.last_transit = Some(transit);
    }

    /// The estimate, in milliseconds.
    #[must_use]
    pub fn ms(&self) -> f64 {
        self.estimate / 1e6
    }

    /// How many differences the estimate is made of (packets − 1).
    #[must_use]
    pub const fn samples(&self) -> u64 {
        self.samples
    }
}

/// What arrived of a stream numbered 0, 1, 2, … by its sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arrivals {
    seen: HashSet<u32>,
    highest: Option<u32>,
    /// Packets that arrived after one with a higher number.
    reordered: u64,
    /// Packets that arrived again.
    duplicates: u64,
}

impl Arrivals {
    /// One packet arrived, with its sequence number.
    pub fn add(&mut self, sequence: u32) {
        if !self.seen.insert(sequence) {
            self.duplicates += 1;
            return;
        }
        match self.highest {
            Some(h) if sequence < h => self.reordered += 1,
            _ => self.highest = Some(sequence),
        }
    }

    /// Distinct packets that arrived.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Of `sent` packets (numbered from 0), those that never arrived.
    #[must_use]
    pub fn lost(&self, sent: u32) -> u64 {
        u64::from(sent).saturating_sub(self.seen.iter().filter(|&&s| s < sent).count() as u64)
    }

    /// The share of `sent` packets lost, in percent; `None` for none sent.
    #[must_use]
    pub fn loss_pct(&self, sent: u32) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (sent > 0).then(|| self.lost(sent) as f64 * 100.0 / f64::from(sent))
    }

    #[must_use]
    pub const fn reordered(&self) -> u64 {
        self.reordered
    }

    #[must_use]
    pub const fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// The `q` quantile (0 to 1) of `values` by the nearest-rank method: the
/// smallest value with at least a share `q` of the values at or below it.
/// `None` for no values.
#[must_use]
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// The E-model's transmission rating factor R for audio (ITU-T G.107,
/// simplified as is usual for network planning), from the one-way mouth-
/// to-ear delay and the random packet loss:
///
/// - R = 93.2 − Id − Ie,eff (the default basic signal-to-noise ratio and
///   simultaneous impairments of G.107, no advantage factor);
/// - Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3), d in ms;
/// - Ie,eff = Ie + (95 − Ie)·Ppl / (Ppl + Bpl), with Ie = 0 and
///   Bpl = 25.1 (G.711 with packet loss concealment, ITU-T G.113
///   Appendix I), Ppl the loss in percent.
#[must_use]
pub fn r_factor(one_way_delay_ms: f64, loss_pct: f64) -> f64 {
    let d = one_way_delay_ms.max(0.0);
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let (ie, bpl) = (0.0, 25.1);
    let ppl = loss_pct.clamp(0.0, 100.0);
    let ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl);
    93.2 - id - ie_eff
}

/// The estimated mean opinion score (1 to 4.5) for a rating `r`
/// (ITU-T G.107 Annex B).
#[must_use]
pub fn mos_of(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// The estimated MOS of a call on a path with this round-trip time,
/// jitter and loss: the one-way delay counted is half the RTT, plus a
/// jitter buffer of twice the jitter, plus 10 ms of packetisation, as
/// network planning usually assumes.
#[must_use]
pub fn mos(rtt_ms: f64, jitter_ms: f64, loss_pct: f64) -> f64 {
    let delay = rtt_ms.max(0.0) / 2.0 + 2.0 * jitter_ms.max(0.0) + 10.0;
    mos_of(r_factor(delay, loss_pct))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn jitter_is_zero_for_a_constant_transit_whatever_the_clock_offset() {
        let mut j = Jitter::default();
        let offset = 5_000_000_000_000; // the receiver's clock is far ahead
        for i in 0..100u64 {
            j.add(i * 20 * MS, offset + i * 20 * MS + 30 * MS);
        }
        assert_eq!(j.ms(), 0.0);
        assert_eq!(j.samples(), 99);
    }

    #[test]
    fn jitter_follows_the_rfc_3550_recursion() {
        // Transit alternates 30 ms and 40 ms: |D| = 10 ms each time, so
        // J_n = 10 ms × (1 − (15/16)^n).
        let mut j = Jitter::default();
        for i in 0..50u64 {
            let transit = if i % 2 == 0 { 30 } else { 40 } * MS;
            j.add(i * 20 * MS, i * 20 * MS + transit);
        }
        let want = 10.0 * (1.0 - (15.0f64 / 16.0).powi(49));
        assert!(close(j.ms(), want, 1e-9), "{} vs {want}", j.ms());
        // And a packet that arrives earlier than sent (clocks apart) is
        // fine: only differences count.
        let mut j = Jitter::default();
        j.add(100 * MS, 0);
        j.add(120 * MS, 30 * MS);
        assert!(close(j.ms(), 10.0 / 16.0, 1e-9));
    }

    #[test]
    fn arrivals_count_loss_reordering_and_duplicates() {
        let mut a = Arrivals::default();
        for s in [0, 1, 3, 2, 4, 4, 6, 9] {
            a.add(s);
        }
        // Of 0..10: 5, 7, 8 never came.
        assert_eq!(a.received(), 7);
        assert_eq!(a.lost(10), 3);
        assert_eq!(a.loss_pct(10), Some(30.0));
        assert_eq!(a.reordered(), 1, "2 after 3");
        assert_eq!(a.duplicates(), 1, "4 twice");
        // Numbers beyond what was sent do not hide a loss.
        assert_eq!(a.lost(5), 0);
        assert_eq!(a.lost(4), 0);
        assert_eq!(a.loss_pct(0), None);
        assert_eq!(Arrivals::default().lost(3), 3);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[7.0], 0.95), Some(7.0));
        assert_eq!(quantile(&[3.0, 1.0], 0.5), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_e_model_at_known_points() {
        // No delay, no loss: the default rating.
        assert!(close(r_factor(0.0, 0.0), 93.2, 1e-9));
        assert!(close(mos_of(93.2), 4.409, 0.001));
        // 200 ms one way: Id = 4.8 + 0.11 × 22.7.
        assert!(close(r_factor(200.0, 0.0), 93.2 - 7.297, 1e-9));
        // 1 % loss: Ie,eff = 95 × 1 / 26.1.
        assert!(close(r_factor(0.0, 1.0), 93.2 - 95.0 / 26.1, 1e-9));
        // The bounds of the MOS scale.
        assert_eq!(mos_of(-5.0), 1.0);
        assert_eq!(mos_of(120.0), 4.5);
        // Worse paths score lower, and a good one is "good" (above 4).
        let good = mos(40.0, 5.0, 0.0);
        assert!(good > 4.0, "{good}");
        assert!(mos(300.0, 5.0, 0.0) < good);
        assert!(mos(40.0, 50.0, 0.0) < good);
        assert!(mos(40.0, 5.0, 5.0) < mos(40.0, 5.0, 1.0));
        assert!(mos(40.0, 5.0, 1.0) < good);
    }
}

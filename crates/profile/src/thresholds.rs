//! Limits a network must meet, each with where it comes from.

use serde::{Deserialize, Serialize};

/// A limit the measured figure must not exceed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpperLimit {
    pub max: f64,
    /// Where the figure comes from (a guide, a standard), shown in reports.
    pub source: String,
}

/// A limit the measured figure must reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowerLimit {
    pub min: f64,
    /// Where the figure comes from (a guide, a standard), shown in reports.
    pub source: String,
}

/// The `[thresholds]` table. Every entry is optional; a profile without
/// one leaves that figure to the checker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Round-trip time, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<UpperLimit>,
    /// Interarrival jitter (RFC 3550 §6.4.1), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<UpperLimit>,
    /// Packet loss, percent (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<UpperLimit>,
    /// Upstream bandwidth, kilobits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_kbps: Option<LowerLimit>,
    /// Downstream bandwidth, kilobits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_kbps: Option<LowerLimit>,
    /// How long an idle UDP flow keeps its NAT and firewall state, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout_s: Option<LowerLimit>,
}

/// Whether a threshold is a ceiling or a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The figure must be at most the limit.
    Max,
    /// The figure must be at least the limit.
    Min,
}

impl Bound {
    /// The key the limit is written under: `max` or `min`.
    #[must_use]
    pub const fn key(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::Min => "min",
        }
    }
}

impl Thresholds {
    /// The names of the entries, in file order, with their bound.
    pub const NAMES: [(&'static str, Bound); 6] = [
        ("rtt_ms", Bound::Max),
        ("jitter_ms", Bound::Max),
        ("loss_pct", Bound::Max),
        ("up_kbps", Bound::Min),
        ("down_kbps", Bound::Min),
        ("udp_idle_timeout_s", Bound::Min),
    ];

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The entries that are set: name, bound, limit, source.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Bound, f64, &str)> {
        fn max<'a>(
            name: &'static str,
            l: Option<&'a UpperLimit>,
        ) -> Option<(&'static str, Bound, f64, &'a str)> {
            l.map(|l| (name, Bound::Max, l.max, l.source.as_str()))
        }
        fn min<'a>(
            name: &'static str,
            l: Option<&'a LowerLimit>,
        ) -> Option<(&'static str, Bound, f64, &'a str)> {
            l.map(|l| (name, Bound::Min, l.min, l.source.as_str()))
        }
        [
            max("rtt_ms", self.rtt_ms.as_ref()),
            max("jitter_ms", self.jitter_ms.as_ref()),
            max("loss_pct", self.loss_pct.as_ref()),
            min("up_kbps", self.up_kbps.as_ref()),
            min("down_kbps", self.down_kbps.as_ref()),
            min("udp_idle_timeout_s", self.udp_idle_timeout_s.as_ref()),
        ]
        .into_iter()
        .flatten()
    }

    /// Sets an entry by name; false if there is no such entry or the bound
    /// is the wrong one.
    pub(crate) fn set(&mut self, name: &str, bound: Bound, value: f64, source: String) -> bool {
        let upper = || {
            Some(UpperLimit {
                max: value,
                source: source.clone(),
            })
        };
        let lower = || {
            Some(LowerLimit {
                min: value,
                source: source.clone(),
            })
        };
        match (name, bound) {
            ("rtt_ms", Bound::Max) => self.rtt_ms = upper(),
            ("jitter_ms", Bound::Max) => self.jitter_ms = upper(),
            ("loss_pct", Bound::Max) => self.loss_pct = upper(),
            ("up_kbps", Bound::Min) => self.up_kbps = lower(),
            ("down_kbps", Bound::Min) => self.down_kbps = lower(),
            ("udp_idle_timeout_s", Bound::Min) => self.udp_idle_timeout_s = lower(),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_iter_agree_with_names() {
        let mut t = Thresholds::default();
        assert!(t.is_empty());
        for (i, (name, bound)) in Thresholds::NAMES.into_iter().enumerate() {
            assert!(t.set(name, bound, i as f64, format!("s{i}")));
            let other = if bound == Bound::Max {
                Bound::Min
            } else {
                Bound::Max
            };
            assert!(!t.set(name, other, 0.0, String::new()));
        }
        assert!(!t.set("mos", Bound::Min, 4.0, String::new()));
        let all: Vec<_> = t.iter().collect();
        assert_eq!(all.len(), 6);
        for (i, ((name, bound), got)) in Thresholds::NAMES.into_iter().zip(all).enumerate() {
            assert_eq!(got, (name, bound, i as f64, format!("s{i}").as_str()));
        }
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["rtt_ms"]["max"], 0.0);
        assert_eq!(json["udp_idle_timeout_s"]["min"], 5.0);
    }
}

//! Port ranges, written `"LO-HI"` or `"PORT"`.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-empty, inclusive range of ports, none of them 0.
///
/// Written `"10000-20000"`, or `"5000"` for a single port. Spaces around
/// either number are allowed and dropped (`" 5 - 6 "` is `5-6`); anything
/// but ASCII digits is not (no sign, no underscore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

/// Why a port range was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortRangeError {
    /// Not digits, or not digits around one `-`.
    Malformed(String),
    /// A number that is not a port: 0, or above 65535.
    NotAPort(String),
    /// The low end above the high end.
    Reversed { lo: u16, hi: u16 },
}

impl fmt::Display for PortRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(s) => write!(
                f,
                "{s:?} is not a port range; write \"LOW-HIGH\" (like \"10000-20000\") or a single port"
            ),
            Self::NotAPort(n) => write!(f, "{n} is not a port (ports are 1 to 65535)"),
            Self::Reversed { lo, hi } => write!(
                f,
                "{lo}-{hi} is not a range (low end above high end); write {hi}-{lo}"
            ),
        }
    }
}

impl std::error::Error for PortRangeError {}

impl PortRange {
    /// The range `lo..=hi`.
    pub fn new(lo: u16, hi: u16) -> Result<Self, PortRangeError> {
        if lo == 0 {
            Err(PortRangeError::NotAPort("0".to_owned()))
        } else if lo > hi {
            Err(PortRangeError::Reversed { lo, hi })
        } else {
            Ok(Self { lo, hi })
        }
    }

    /// The one-port range `port..=port`; `None` for port 0.
    #[must_use]
    pub const fn single(port: u16) -> Option<Self> {
        if port == 0 {
            None
        } else {
            Some(Self { lo: port, hi: port })
        }
    }

    /// The lowest port.
    #[must_use]
    pub const fn lo(&self) -> u16 {
        self.lo
    }

    /// The highest port.
    #[must_use]
    pub const fn hi(&self) -> u16 {
        self.hi
    }

    /// How many ports (at least 1).
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.hi) - usize::from(self.lo) + 1
    }

    /// Always false: a range holds at least one port.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }

    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    /// Every port, lowest first.
    #[must_use]
    pub const fn iter(&self) -> RangeInclusive<u16> {
        self.lo..=self.hi
    }

    /// `n` ports spread evenly over the range, in ascending order, without
    /// repeats: for `n >= 2` the first is `lo` and the last is `hi`, and
    /// neighbouring gaps differ by at most one port. `n = 1` gives `lo`;
    /// `n >= len()` gives every port. Deterministic, so a check probes
    /// the same ports on every run.
    #[must_use]
    pub fn sample(&self, n: usize) -> Vec<u16> {
        if n >= self.len() {
            return self.iter().collect();
        }
        match n {
            0 => Vec::new(),
            1 => vec![self.lo],
            _ => {
                let span = u64::from(self.hi - self.lo);
                let steps = n as u64 - 1;
                (0..n as u64)
                    .map(|i| {
                        // Rounded i * span / steps: at most span, so it fits.
                        let offset = (i * span + steps / 2) / steps;
                        self.lo
                            .saturating_add(u16::try_from(offset).unwrap_or(u16::MAX))
                    })
                    .collect()
            }
        }
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (port(lo, s)?, port(hi, s)?),
            None => {
                let p = port(s, s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(PortRangeError::Reversed { lo, hi });
        }
        Ok(Self { lo, hi })
    }
}

/// One end of a range: ASCII digits, spaces around them allowed.
fn port(part: &str, whole: &str) -> Result<u16, PortRangeError> {
    let digits = part.trim_matches(' ');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortRangeError::Malformed(whole.to_owned()));
    }
    let not_a_port = || PortRangeError::NotAPort(digits.trim_start_matches('0').to_owned());
    match digits.parse::<u16>() {
        Ok(0) => Err(PortRangeError::NotAPort("0".to_owned())),
        Ok(p) => Ok(p),
        Err(_) => Err(not_a_port()),
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port range like \"10000-20000\", or a port")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .ok()
                    .and_then(PortRange::single)
                    .ok_or_else(|| E::custom(PortRangeError::NotAPort(v.to_string())))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .ok()
                    .and_then(PortRange::single)
                    .ok_or_else(|| E::custom(PortRangeError::NotAPort(v.to_string())))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Result<(u16, u16), String> {
        s.parse::<PortRange>()
            .map(|r| (r.lo(), r.hi()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_edges() {
        assert_eq!(range("1-65535"), Ok((1, 65535)));
        assert_eq!(range("5"), Ok((5, 5)));
        assert_eq!(range("65535"), Ok((65535, 65535)));
        assert_eq!(range("10000-20000"), Ok((10000, 20000)));
        assert_eq!(range("7-7"), Ok((7, 7)));
        assert_eq!(range("00080"), Ok((80, 80)));
    }

    #[test]
    fn spaces_around_numbers_are_dropped() {
        assert_eq!(range(" 5 - 6 "), Ok((5, 6)));
        assert_eq!(range("5 -6"), Ok((5, 6)));
        assert_eq!(range("  5  "), Ok((5, 5)));
        // Only spaces: a tab or a newline is not a typo worth forgiving.
        assert!(range("5\t-6").is_err());
        assert!(range("5-6\n").is_err());
        assert_eq!(
            " 5 - 6 ".parse::<PortRange>().map(|r| r.to_string()),
            Ok("5-6".to_owned())
        );
    }

    #[test]
    fn refuses_what_is_not_a_range() {
        let e = range("0-10").unwrap_err();
        assert!(e.contains("0 is not a port"), "{e}");
        assert!(range("0").unwrap_err().contains("0 is not a port"));
        let e = range("10-5").unwrap_err();
        assert!(
            e.contains("10-5 is not a range (low end above high end)"),
            "{e}"
        );
        let e = range("1-65536").unwrap_err();
        assert!(e.contains("65536 is not a port"), "{e}");
        assert!(
            range("1-99999999999999999999")
                .unwrap_err()
                .contains("is not a port")
        );
        for bad in [
            "", " ", "-", "5-", "-5", "1-2-3", "a-b", "+5", "5_000", "1,2", "١٢", "5..6",
        ] {
            let e = range(bad).unwrap_err();
            assert!(e.contains("is not a port range"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn new_and_single() {
        assert_eq!(PortRange::new(1, 1).map(|r| r.len()), Ok(1));
        assert!(PortRange::new(0, 1).is_err());
        assert_eq!(
            PortRange::new(2, 1),
            Err(PortRangeError::Reversed { lo: 2, hi: 1 })
        );
        assert_eq!(PortRange::single(0), None);
        assert_eq!(PortRange::single(9).map(|r| (r.lo(), r.hi())), Some((9, 9)));
    }

    #[test]
    fn len_contains_display() {
        let r: PortRange = "49152-65535".parse().unwrap();
        assert_eq!(r.len(), 16384);
        assert!(!r.is_empty());
        assert!(r.contains(49152) && r.contains(65535) && r.contains(50000));
        assert!(!r.contains(49151) && !r.contains(0));
        assert_eq!(r.to_string(), "49152-65535");
        assert_eq!(PortRange::single(443).unwrap().to_string(), "443");
        assert_eq!("1-65535".parse::<PortRange>().unwrap().len(), 65535);
        assert_eq!(r.iter().count(), r.len());
    }

    #[test]
    fn sample_properties() {
        let ranges = [
            "1-65535",
            "10000-20000",
            "49152-65535",
            "5-6",
            "7",
            "100-109",
            "1-3",
        ];
        for text in ranges {
            let r: PortRange = text.parse().unwrap();
            for n in [0, 1, 2, 3, 4, 7, 10, 11, 64, 1000, 70000] {
                let s = r.sample(n);
                assert_eq!(s.len(), n.min(r.len()), "{text} n={n}");
                assert!(
                    s.windows(2).all(|w| w[0] < w[1]),
                    "ascending, distinct: {text} n={n}"
                );
                assert!(s.iter().all(|&p| r.contains(p)));
                assert_eq!(s, r.sample(n), "deterministic");
                if n >= 1 {
                    assert_eq!(s[0], r.lo());
                }
                if n >= 2 {
                    assert_eq!(*s.last().unwrap(), r.hi(), "{text} n={n}");
                }
                if s.len() >= 2 {
                    let gaps: Vec<u16> = s.windows(2).map(|w| w[1] - w[0]).collect();
                    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
                    assert!(max - min <= 1, "even: {text} n={n} gaps {min}..{max}");
                }
            }
        }
        let r: PortRange = "10000-20000".parse().unwrap();
        assert_eq!(r.sample(3), vec![10000, 15000, 20000]);
        assert_eq!(r.sample(5), vec![10000, 12500, 15000, 17500, 20000]);
        assert_eq!(PortRange::single(80).unwrap().sample(3), vec![80]);
    }

    #[test]
    fn serde_string_or_integer() {
        let r: PortRange = serde_json::from_str("\"10000-20000\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"10000-20000\"");
        let one: PortRange = serde_json::from_str("443").unwrap();
        assert_eq!(serde_json::to_string(&one).unwrap(), "\"443\"");
        assert!(serde_json::from_str::<PortRange>("0").is_err());
        assert!(serde_json::from_str::<PortRange>("-1").is_err());
        assert!(serde_json::from_str::<PortRange>("\"20000-10000\"").is_err());
    }
}

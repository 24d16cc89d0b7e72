//! IP networks in CIDR notation (RFC 4632 §3.1, RFC 4291 §2.3), as the peer
//! policy and the configuration's `[peers] allow` / `deny` lists name them.
//!
//! Matching is done on integer masks, so a check is a few instructions and
//! never allocates. An IPv4 network never matches an IPv6 address, not even
//! an IPv4-mapped one: seeing through IPv6 spellings of IPv4 addresses is a
//! policy decision (see [`crate::policy`]), and doing it here as well would
//! hide it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with its host bits cleared and a
/// prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// A network from any address inside it. Host bits are cleared, so
    /// `127.0.0.1/8` is `127.0.0.0/8`: operators write either, and both
    /// mean the same range.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        if prefix_len > max_len(addr) {
            return Err(CidrError::PrefixTooLong {
                input: format!("{addr}/{prefix_len}"),
                max: max_len(addr),
            });
        }
        Ok(match addr {
            IpAddr::V4(a) => Self::v4_bits(a.to_bits(), prefix_len),
            IpAddr::V6(a) => Self::v6_bits(a.to_bits(), prefix_len),
        })
    }

    /// An IPv4 network, for `const` tables. A prefix above 32 is taken as 32
    /// rather than panicking; tables built with it are checked by tests.
    #[must_use]
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix_len: u8) -> Self {
        Self::v4_bits(Ipv4Addr::new(a, b, c, d).to_bits(), prefix_len)
    }

    /// An IPv6 network from its eight 16-bit segments, for `const` tables.
    /// A prefix above 128 is taken as 128.
    #[must_use]
    pub const fn v6(segments: [u16; 8], prefix_len: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self::v6_bits(Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits(), prefix_len)
    }

    const fn v4_bits(bits: u32, prefix_len: u8) -> Self {
        let prefix_len = if prefix_len > 32 { 32 } else { prefix_len };
        Self {
            addr: IpAddr::V4(Ipv4Addr::from_bits(bits & mask_v4(prefix_len))),
            prefix_len,
        }
    }

    const fn v6_bits(bits: u128, prefix_len: u8) -> Self {
        let prefix_len = if prefix_len > 128 { 128 } else { prefix_len };
        Self {
            addr: IpAddr::V6(Ipv6Addr::from_bits(bits & mask_v6(prefix_len))),
            prefix_len,
        }
    }

    /// Whether `ip` is inside this network. Families never mix.
    #[must_use]
    pub const fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & mask_v4(self.prefix_len) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & mask_v6(self.prefix_len) == net.to_bits()
            }
            _ => false,
        }
    }

    /// The network address (host bits zero).
    #[must_use]
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    #[must_use]
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

/// The longest prefix of the address's family.
const fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

// `checked_shl` because a shift by the full width (prefix 0) is an overflow
// in Rust, where the mask wanted is simply 0.
const fn mask_v4(prefix_len: u8) -> u32 {
    match u32::MAX.checked_shl(32 - prefix_len as u32) {
        Some(mask) => mask,
        None => 0,
    }
}

const fn mask_v6(prefix_len: u8) -> u128 {
    match u128::MAX.checked_shl(128 - prefix_len as u32) {
        Some(mask) => mask,
        None => 0,
    }
}

impl FromStr for IpNet {
    type Err = CidrError;

    /// Parses `addr/len`, or a bare address as a host route (`/32`,
    /// `/128`). Surrounding whitespace is rejected rather than trimmed, so
    /// that what the operator sees in an error is exactly what was read.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::InvalidAddress {
            input: s.to_owned(),
        })?;
        let prefix_len = match len {
            None => max_len(addr),
            // `u8::from_str` would accept "+8"; a number too large for u8
            // is reported as too long, which it is.
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse().unwrap_or(u8::MAX)
            }
            Some(_) => {
                return Err(CidrError::InvalidPrefixLength {
                    input: s.to_owned(),
                });
            }
        };
        Self::new(addr, prefix_len).map_err(|_| CidrError::PrefixTooLong {
            input: s.to_owned(),
            max: max_len(addr),
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a string is not a network. Each message quotes the input, so a
/// configuration error names the entry to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CidrError {
    /// The part before `/` (or the whole input) is not an IP address.
    InvalidAddress { input: String },
    /// The part after `/` is not a decimal number.
    InvalidPrefixLength { input: String },
    /// The prefix length is longer than the address (32 or 128 bits).
    PrefixTooLong { input: String, max: u8 },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidAddress { input } => write!(
                f,
                "invalid CIDR {input:?}: expected an IPv4 or IPv6 address, optionally \
                 followed by /prefix-length and without spaces (e.g. 10.0.0.0/8, fe80::/10, ::1)"
            ),
            Self::InvalidPrefixLength { input } => write!(
                f,
                "invalid CIDR {input:?}: the prefix length after '/' must be a decimal number, without spaces"
            ),
            Self::PrefixTooLong { input, max } => {
                let family = if *max == 32 { "IPv4" } else { "IPv6" };
                write!(
                    f,
                    "invalid CIDR {input:?}: prefix length must be at most {max} for {family}"
                )
            }
        }
    }
}

impl std::error::Error for CidrError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_host_routes() {
        let n = net("10.0.0.0/8");
        assert_eq!((n.addr(), n.prefix_len()), (ip("10.0.0.0"), 8));
        let n = net("fe80::/10");
        assert_eq!((n.addr(), n.prefix_len()), (ip("fe80::"), 10));
        let n = net("::1/128");
        assert_eq!((n.addr(), n.prefix_len()), (ip("::1"), 128));
        let n = net("192.0.2.7");
        assert_eq!((n.addr(), n.prefix_len()), (ip("192.0.2.7"), 32));
        let n = net("::1");
        assert_eq!((n.addr(), n.prefix_len()), (ip("::1"), 128));
        assert_eq!(net("10.0.0.0/008"), net("10.0.0.0/8"));
    }

    #[test]
    fn host_bits_are_masked() {
        assert_eq!(net("127.0.0.1/8"), net("127.0.0.0/8"));
        assert_eq!(net("127.0.0.1/8").to_string(), "127.0.0.0/8");
        assert_eq!(net("172.31.255.255/12").to_string(), "172.16.0.0/12");
        assert_eq!(net("fe80::1:2:3/10").to_string(), "fe80::/10");
        assert_eq!(net("febf:ffff::/10").to_string(), "fe80::/10");
        assert_eq!(
            IpNet::new(ip("2001:db8:ffff::1"), 32).unwrap(),
            net("2001:db8::/32")
        );
    }

    #[test]
    fn edges_of_a_network() {
        let n = net("172.16.0.0/12");
        assert!(!n.contains(ip("172.15.255.255")));
        assert!(n.contains(ip("172.16.0.0")));
        assert!(n.contains(ip("172.31.255.255")));
        assert!(!n.contains(ip("172.32.0.0")));
        let n = net("fe80::/10");
        assert!(!n.contains(ip("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(n.contains(ip("fe80::")));
        assert!(n.contains(ip("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!n.contains(ip("fec0::")));
        let host = net("192.0.2.7");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.6")));
        assert!(!host.contains(ip("192.0.2.8")));
    }

    #[test]
    fn prefix_zero_matches_its_whole_family() {
        let all4 = net("0.0.0.0/0");
        let all6 = net("::/0");
        for a in ["0.0.0.0", "8.8.8.8", "255.255.255.255"] {
            assert!(all4.contains(ip(a)), "{a}");
            assert!(!all6.contains(ip(a)), "{a}");
        }
        for a in [
            "::",
            "2606:4700::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(all6.contains(ip(a)), "{a}");
            assert!(!all4.contains(ip(a)), "{a}");
        }
        assert_eq!(net("1.2.3.4/0"), all4);
        assert_eq!(net("1::/0"), all6);
        assert_eq!(IpNet::v4(1, 2, 3, 4, 0), all4);
    }

    #[test]
    fn full_length_prefixes() {
        assert!(net("255.255.255.255/32").contains(ip("255.255.255.255")));
        assert!(!net("255.255.255.255/32").contains(ip("255.255.255.254")));
        let n = net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
        assert!(n.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!n.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")));
    }

    #[test]
    fn families_never_mix() {
        assert!(!net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("::ffff:0:0/96").contains(ip("127.0.0.1")));
        assert!(!net("::/0").contains(ip("0.0.0.0")));
    }

    #[test]
    fn const_constructors_match_parsing() {
        const LOOPBACK: IpNet = IpNet::v4(127, 0, 0, 1, 8);
        const LINK_LOCAL: IpNet = IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 1], 10);
        assert_eq!(LOOPBACK, net("127.0.0.0/8"));
        assert_eq!(LINK_LOCAL, net("fe80::/10"));
        assert_eq!(IpNet::v4(10, 0, 0, 1, 99), net("10.0.0.1/32"));
        assert_eq!(IpNet::v6([1, 0, 0, 0, 0, 0, 0, 1], 200), net("1::1/128"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "::/0",
            "::1/128",
            "2001:db8::/32",
            "64:ff9b::/96",
        ] {
            assert_eq!(net(s).to_string(), s);
            assert_eq!(net(&net(s).to_string()), net(s));
        }
        assert_eq!(net("::ffff:0:0/96").to_string(), "::ffff:0.0.0.0/96");
        assert_eq!(net("::ffff:0.0.0.0/96"), net("::ffff:0:0/96"));
    }

    #[test]
    fn rejects_bad_input() {
        for s in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.256/8",
            "localhost",
            "fe80::1%eth0",
            "fe80::1%eth0/64",
            " 10.0.0.0/8",
            "10.0.0.0 /8",
            "\t::1",
        ] {
            assert!(
                matches!(s.parse::<IpNet>(), Err(CidrError::InvalidAddress { .. })),
                "{s:?}"
            );
        }
        for s in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "10.0.0.0/8 ",
            "10.0.0.0/8/8",
            "::/x",
            "::/0x10",
        ] {
            assert!(
                matches!(
                    s.parse::<IpNet>(),
                    Err(CidrError::InvalidPrefixLength { .. })
                ),
                "{s:?}"
            );
        }
        for (s, max) in [
            ("10.0.0.0/33", 32),
            ("10.0.0.0/255", 32),
            ("10.0.0.0/256", 32),
            ("10.0.0.0/99999999999999999999", 32),
            ("::/129", 128),
        ] {
            assert_eq!(
                s.parse::<IpNet>(),
                Err(CidrError::PrefixTooLong {
                    input: s.to_owned(),
                    max
                }),
                "{s:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_input_and_the_fix() {
        let msg = |s: &str| s.parse::<IpNet>().unwrap_err().to_string();
        assert_eq!(
            msg("10.0.0.0/33"),
            r#"invalid CIDR "10.0.0.0/33": prefix length must be at most 32 for IPv4"#
        );
        assert_eq!(
            msg("::/129"),
            r#"invalid CIDR "::/129": prefix length must be at most 128 for IPv6"#
        );
        assert!(msg("10.0.0.0/x").starts_with(r#"invalid CIDR "10.0.0.0/x": "#));
        assert!(msg(" 10.0.0.0/8").starts_with(r#"invalid CIDR " 10.0.0.0/8": "#));
        assert!(msg("\t::1").starts_with(r#"invalid CIDR "\t::1": "#));
        assert_eq!(
            IpNet::new(ip("10.0.0.0"), 33).unwrap_err().to_string(),
            r#"invalid CIDR "10.0.0.0/33": prefix length must be at most 32 for IPv4"#
        );
        assert!(IpNet::new(ip("::"), 129).is_err());
        assert!(IpNet::new(ip("::"), 128).is_ok());
        let boxed: Box<dyn std::error::Error> = Box::new(CidrError::InvalidAddress {
            input: String::new(),
        });
        assert!(boxed.to_string().contains("IPv4 or IPv6"));
    }
}

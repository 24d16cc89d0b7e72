//! Check credentials: short-lived TURN credentials a server hands to
//! anyone who asks (`GET /api/v1/profile`, rate-limited), so that
//! `turnpike check` can test TURN against a public server. They may relay
//! only to the server's own probe responder.
//!
//! They have the TURN REST shape, `<expiry>:check:<random>` with password
//! `base64(HMAC-SHA1(key, username))`, but under a key of their own that
//! the runtime draws at start and never shows: they cannot be forged, and
//! an operator's REST secret never makes one. Which key verified a request
//! decides, not the name: a name of this shape that an operator's secret
//! verifies is an ordinary (unrestricted) REST user.
//!
//! An allocation made with them is *restricted* ([`CheckAccess::allows`]):
//! a peer must be one of the probe responder's addresses, the UDP range
//! for a UDP allocation and the TCP port for an RFC 6062 one; the peer
//! policy then still refuses the server's own listeners, relay loops and
//! the operator's `deny` ranges ([`crate::policy::PeerPolicy::check_probe`]),
//! but not the built-in ranges or the host's own address, where the probe
//! responder usually is. Restricted allocations have a quota of their own
//! and count towards the total, never towards an operator user's.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use crate::policy::canonical;

/// The word between the expiry and the random part of a check user name.
pub const TAG: &str = "check";

/// A check user name valid until `expires` (Unix seconds); `random` is
/// drawn afresh for each.
#[must_use]
pub fn username(expires: u64, random: &str) -> String {
    format!("{expires}:{TAG}:{random}")
}

/// Whether `username` has the shape of a check user name (only a check
/// key's signature makes it one).
#[must_use]
pub fn is_check_username(username: &str) -> bool {
    username
        .split_once(':')
        .and_then(|(_, rest)| rest.strip_prefix(TAG))
        .is_some_and(|rest| rest.starts_with(':'))
}

/// Where restricted allocations may relay to, and how many there may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckAccess {
    /// The probe responder's IP addresses, as it is bound and as clients
    /// know it (the advertised form behind a 1:1 NAT).
    pub ips: Vec<IpAddr>,
    /// Its UDP ports.
    pub udp_ports: RangeInclusive<u16>,
    /// Its TCP port, if it listens on one.
    pub tcp_port: Option<u16>,
    /// Restricted allocations alive at once, on all shards; beyond it
    /// Allocate gets 486.
    pub allocations: usize,
    /// Restricted allocations one check user name may hold at once.
    pub allocations_per_credential: usize,
}

impl CheckAccess {
    /// Whether a restricted allocation may have `peer`: one of the
    /// responder's UDP ports (for a UDP allocation) or its TCP port (for
    /// a TCP one), on one of its addresses (an IPv4-mapped IPv6 spelling
    /// counts as the IPv4 address; no other spelling does).
    #[must_use]
    pub fn allows(&self, peer: SocketAddr, tcp: bool) -> bool {
        let ip = canonical(peer.ip());
        let port_ok = if tcp {
            self.tcp_port == Some(peer.port())
        } else {
            self.udp_ports.contains(&peer.port())
        };
        port_ok && self.ips.iter().any(|&a| canonical(a) == ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(username(1_800_000_000, "abc"), "1800000000:check:abc");
        assert!(is_check_username("1800000000:check:abc"));
        assert!(!is_check_username("1800000000:checkers:abc"));
        assert!(!is_check_username("1800000000:alice"));
        assert!(!is_check_username("check:abc"));
        assert!(!is_check_username("1800000000:check"));
    }

    #[test]
    fn only_the_responders_addresses_and_ports() {
        let access = CheckAccess {
            ips: vec!["10.0.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap()],
            udp_ports: 50_000..=50_009,
            tcp_port: Some(50_010),
            allocations: 10,
            allocations_per_credential: 2,
        };
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(access.allows(sa("10.0.0.1:50000"), false));
        assert!(access.allows(sa("203.0.113.10:50009"), false));
        assert!(access.allows(sa("[::ffff:10.0.0.1]:50005"), false));
        assert!(!access.allows(sa("10.0.0.1:49999"), false));
        assert!(!access.allows(sa("10.0.0.1:50010"), false), "TCP port, UDP");
        assert!(!access.allows(sa("10.0.0.2:50000"), false));
        assert!(!access.allows(sa("[64:ff9b::a00:1]:50000"), false), "NAT64");
        assert!(access.allows(sa("10.0.0.1:50010"), true));
        assert!(!access.allows(sa("10.0.0.1:50000"), true), "UDP port, TCP");
    }
}

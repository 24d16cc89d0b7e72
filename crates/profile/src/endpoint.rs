//! An endpoint: one thing a service needs to reach, and how.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PortRange;

/// How an endpoint is reached, and so how the checker probes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A TCP connection.
    Tcp,
    /// A TLS handshake over TCP.
    Tls,
    /// An HTTPS request.
    Https,
    /// A WebSocket upgrade over TLS.
    Wss,
    /// A STUN Binding over UDP (RFC 8489).
    StunUdp,
    /// A STUN Binding over TCP.
    StunTcp,
    /// A TURN Allocate over UDP (RFC 8656).
    TurnUdp,
    /// A TURN Allocate over TCP.
    TurnTcp,
    /// A TURN Allocate over TLS.
    TurnTls,
    /// Direct UDP to a range of ports: media that flows without a relay.
    UdpRange,
}

impl Kind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Self; 10] = [
        Self::Tcp,
        Self::Tls,
        Self::Https,
        Self::Wss,
        Self::StunUdp,
        Self::StunTcp,
        Self::TurnUdp,
        Self::TurnTcp,
        Self::TurnTls,
        Self::UdpRange,
    ];

    /// The name used in profiles: `stun-udp`, `udp-range`, ...
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Https => "https",
            Self::Wss => "wss",
            Self::StunUdp => "stun-udp",
            Self::StunTcp => "stun-tcp",
            Self::TurnUdp => "turn-udp",
            Self::TurnTcp => "turn-tcp",
            Self::TurnTls => "turn-tls",
            Self::UdpRange => "udp-range",
        }
    }

    /// Carried over UDP.
    #[must_use]
    pub const fn is_udp(self) -> bool {
        matches!(self, Self::StunUdp | Self::TurnUdp | Self::UdpRange)
    }

    /// Carried over TLS.
    #[must_use]
    pub const fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Https | Self::Wss | Self::TurnTls)
    }

    #[must_use]
    pub const fn is_stun(self) -> bool {
        matches!(self, Self::StunUdp | Self::StunTcp)
    }

    #[must_use]
    pub const fn is_turn(self) -> bool {
        matches!(self, Self::TurnUdp | Self::TurnTcp | Self::TurnTls)
    }

    /// Takes `ports` (a range) rather than `port`.
    #[must_use]
    pub const fn is_range(self) -> bool {
        matches!(self, Self::UdpRange)
    }

    /// Takes a `path` (HTTP request target).
    #[must_use]
    pub const fn has_path(self) -> bool {
        matches!(self, Self::Https | Self::Wss)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                let hint = crate::error::did_you_mean(s, &names)
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                format!(
                    "{s:?} is not a kind{hint}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One destination the service needs, and what stands in for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Unique in the profile: `[a-z0-9-]+`, at most 64 characters.
    pub id: String,
    pub kind: Kind,
    /// A DNS name or an IP address literal, never a wildcard.
    pub host: String,
    /// For every kind but `udp-range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// For `udp-range` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// For `https` and `wss` only; starts with `/`. See
    /// [`request_path`](Self::request_path) for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether the service fails without it (or a working fallback).
    #[serde(default = "yes")]
    pub required: bool,
    /// Ids of the endpoints this one stands in for when they are blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_for: Vec<String>,
    /// What it is for, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Where the fact comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

const fn yes() -> bool {
    true
}

impl Endpoint {
    /// Carried over UDP (`stun-udp`, `turn-udp`, `udp-range`).
    #[must_use]
    pub const fn is_udp(&self) -> bool {
        self.kind.is_udp()
    }

    /// The ports to probe: `ports` for `udp-range`, else `port` alone.
    /// `None` only for an endpoint that would not validate.
    #[must_use]
    pub fn port_range(&self) -> Option<PortRange> {
        if self.kind.is_range() {
            self.ports
        } else {
            self.port.and_then(PortRange::single)
        }
    }

    /// The HTTP request target for `https` and `wss`: `path`, or `/`.
    #[must_use]
    pub fn request_path(&self) -> Option<&str> {
        self.kind
            .has_path()
            .then(|| self.path.as_deref().unwrap_or("/"))
    }

    /// The host as an IP address, when it is a literal.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether the host is a name reserved for examples (RFC 2606, RFC 6761:
    /// `.example`, `.invalid`, `.test`, `example.com`, `.net`, `.org`), a
    /// placeholder the profile's author left for the user to replace.
    #[must_use]
    pub fn has_placeholder_host(&self) -> bool {
        let host = self.host.trim_end_matches('.').to_ascii_lowercase();
        let under = |domain: &str| {
            host == domain
                || host
                    .strip_suffix(domain)
                    .is_some_and(|rest| rest.ends_with('.'))
        };
        [
            "example",
            "invalid",
            "test",
            "example.com",
            "example.net",
            "example.org",
        ]
        .into_iter()
        .any(under)
    }

    /// Whether this endpoint stands in for `id`.
    #[must_use]
    pub fn is_fallback_for(&self, id: &str) -> bool {
        self.fallback_for.iter().any(|f| f == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let e = "turn-tsl".parse::<Kind>().unwrap_err();
        assert!(e.contains("did you mean \"turn-tls\""), "{e}");
        assert!("UDP".parse::<Kind>().is_err());
    }

    #[test]
    fn kind_classes() {
        let udp: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.is_udp()).collect();
        assert_eq!(udp, [Kind::StunUdp, Kind::TurnUdp, Kind::UdpRange]);
        assert!(Kind::TurnTls.is_tls() && Kind::TurnTls.is_turn() && !Kind::TurnTls.is_udp());
        assert!(Kind::StunTcp.is_stun() && !Kind::StunTcp.is_tls());
        assert!(Kind::Wss.has_path() && !Kind::Tls.has_path());
    }

    #[test]
    fn helpers() {
        let mut e = Endpoint {
            id: "web".into(),
            kind: Kind::Https,
            host: "192.0.2.1".into(),
            port: Some(443),
            ports: None,
            path: None,
            required: true,
            fallback_for: vec!["media".into()],
            purpose: None,
            source: None,
        };
        assert_eq!(e.request_path(), Some("/"));
        assert_eq!(
            e.port_range().map(|r| r.to_string()),
            Some("443".to_owned())
        );
        assert_eq!(e.ip(), Some(IpAddr::from([192, 0, 2, 1])));
        assert!(e.is_fallback_for("media") && !e.is_fallback_for("web"));
        assert!(!e.is_udp());
        assert!(!e.has_placeholder_host());
        for placeholder in [
            "turn.example.net",
            "a.b.example",
            "Example.COM.",
            "x.invalid",
            "test",
        ] {
            e.host = placeholder.into();
            assert!(e.has_placeholder_host(), "{placeholder}");
        }
        for real in [
            "scoot.app",
            "myexample.com",
            "example.company",
            "global.turn.twilio.com",
        ] {
            e.host = real.into();
            assert!(!e.has_placeholder_host(), "{real}");
        }
        e.kind = Kind::UdpRange;
        e.ports = "1-2".parse().ok();
        assert_eq!(e.request_path(), None);
        assert_eq!(e.port_range().map(|r| r.len()), Some(2));
        assert!(e.is_udp());
    }
}

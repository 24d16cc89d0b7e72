//! Which peers a relay may send to: the defence against using the server to
//! reach what only the server can reach (SSRF).
//!
//! RFC 8656 leaves the choice of peers to the server (§21), and a relay
//! that takes any address hands the internet a path into the server's own
//! networks and services. The default here denies everything a stranger has
//! no business reaching: the special-purpose ranges of RFC 6890, the host's
//! own addresses and sockets, and IPv4 addresses spelled as IPv6 (RFC 4291
//! §2.5.5, RFC 6052, RFC 8215, RFC 3056, RFC 4380), because the host's own
//! stack or a translator on the path turns those back into IPv4, where the
//! IPv6 checks no longer see them. An operator opens ranges with `allow`;
//! nothing is allowed implicitly.
//!
//! Checks never allocate: [`PeerPolicy::check`] runs per CreatePermission
//! and ChannelBind, [`PeerPolicy::check_port`] per Send indication.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cidr::IpNet;

/// What [`PeerPolicy::new`] is built from; the server fills it from its
/// configuration and the host's interfaces.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// The operator's exceptions (`[peers] allow`). They open the built-in
    /// denials and the host's own addresses, never listeners or relay loops.
    pub allow: Vec<IpNet>,
    /// The operator's extra denials (`[peers] deny`); they win over `allow`.
    pub deny: Vec<IpNet>,
    /// Every IP address of this host, plus the addresses it is advertised
    /// as (behind a 1:1 NAT the public one reaches the host as well).
    pub own_ips: Vec<IpAddr>,
    /// The server's own listening addresses (STUN/TURN, HTTP). A wildcard
    /// IP stands for that port on every address of the host.
    pub listeners: Vec<SocketAddr>,
    /// The IPs relayed addresses are bound on, and their advertised forms.
    pub relay_ips: Vec<IpAddr>,
}

/// Why a peer address is refused. The server answers 403 (Forbidden) to
/// CreatePermission, ChannelBind and Connect, and drops a Send silently
/// (RFC 8656 §10.2, §11.2, §12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// 127.0.0.0/8, ::1: the host itself, where admin interfaces listen.
    Loopback,
    /// 0.0.0.0/8, ::: "this host"; Linux delivers a send to 0.0.0.0 locally.
    Unspecified,
    /// RFC 1918, RFC 6598 shared space, RFC 4193 unique local: the networks
    /// behind the server.
    Private,
    /// 169.254.0.0/16 (cloud metadata lives at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8: one packet in, many out.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4 (RFC 1112 §4, "future use").
    Reserved,
    /// Other RFC 6890 ranges: documentation, benchmarking, IETF protocol
    /// assignments, and the IPv6 spellings of IPv4 addresses.
    SpecialPurpose,
    /// One of the host's own addresses, on a port that is not a relayed
    /// address: other services on the same host.
    OwnAddress,
    /// One of the server's own listening addresses.
    Listener,
    /// The allocation's own relayed address: a packet would loop.
    RelayLoop,
    /// In an operator `deny` range.
    Configured,
    /// Not the probe responder, for an allocation made with check
    /// credentials, which may relay nowhere else (`crate::check`).
    NotProbe,
}

impl Denied {
    /// A short stable label, for metrics.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
            Self::SpecialPurpose => "special_purpose",
            Self::OwnAddress => "own_address",
            Self::Listener => "listener",
            Self::RelayLoop => "relay_loop",
            Self::Configured => "configured",
            Self::NotProbe => "not_probe",
        }
    }
}

// IPv6 ranges that carry an IPv4 address.
/// RFC 4291 §2.5.5.2: a dual-stack socket sends to the IPv4 address itself.
const MAPPED: IpNet = IpNet::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
/// RFC 4291 §2.5.5.1: deprecated, but a stack with automatic tunnelling
/// still sends it over IPv4.
const COMPATIBLE: IpNet = IpNet::v6([0; 8], 96);
/// RFC 2765 §2.1 (SIIT): a translator forwards it to the IPv4 address.
const TRANSLATED: IpNet = IpNet::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96);
/// RFC 6052 §2.1: a NAT64 in the server's network forwards it.
const NAT64: IpNet = IpNet::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// RFC 8215: local-use NAT64 prefixes, of any RFC 6052 length inside it.
const NAT64_LOCAL: IpNet = IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48);
/// RFC 3056 §2: 6to4, a relay router unwraps it to the IPv4 address.
const SIX_TO_FOUR: IpNet = IpNet::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
/// RFC 4380 §4: Teredo, which carries a server and a client IPv4 address.
const TEREDO: IpNet = IpNet::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);

/// The ranges denied by default (SECURITY.md §A): those of the RFC 6890
/// special-purpose registries that no stranger needs to reach through this
/// server, and every IPv6 range that carries an IPv4 address, whose IPv4 is
/// checked as well. The first match names the reason, so 255.255.255.255
/// precedes 240.0.0.0/4 and `::`, `::1` precede `::/96`.
const BUILTIN: &[(IpNet, Denied)] = &[
    (IpNet::v4(0, 0, 0, 0, 8), Denied::Unspecified),
    (IpNet::v4(127, 0, 0, 0, 8), Denied::Loopback),
    (IpNet::v4(10, 0, 0, 0, 8), Denied::Private),
    (IpNet::v4(172, 16, 0, 0, 12), Denied::Private),
    (IpNet::v4(192, 168, 0, 0, 16), Denied::Private),
    (IpNet::v4(100, 64, 0, 0, 10), Denied::Private),
    (IpNet::v4(169, 254, 0, 0, 16), Denied::LinkLocal),
    (IpNet::v4(224, 0, 0, 0, 4), Denied::Multicast),
    (IpNet::v4(255, 255, 255, 255, 32), Denied::Broadcast),
    (IpNet::v4(240, 0, 0, 0, 4), Denied::Reserved),
    (IpNet::v4(192, 0, 0, 0, 24), Denied::SpecialPurpose),
    (IpNet::v4(192, 0, 2, 0, 24), Denied::SpecialPurpose),
    (IpNet::v4(198, 18, 0, 0, 15), Denied::SpecialPurpose),
    (IpNet::v4(198, 51, 100, 0, 24), Denied::SpecialPurpose),
    (IpNet::v4(203, 0, 113, 0, 24), Denied::SpecialPurpose),
    (IpNet::v6([0; 8], 128), Denied::Unspecified),
    (IpNet::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), Denied::Loopback),
    (MAPPED, Denied::SpecialPurpose),
    (COMPATIBLE, Denied::SpecialPurpose),
    (TRANSLATED, Denied::SpecialPurpose),
    (NAT64, Denied::SpecialPurpose),
    (NAT64_LOCAL, Denied::SpecialPurpose),
    (SIX_TO_FOUR, Denied::SpecialPurpose),
    (TEREDO, Denied::SpecialPurpose),
    (
        IpNet::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        Denied::SpecialPurpose,
    ),
    (
        IpNet::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        Denied::SpecialPurpose,
    ),
    (IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), Denied::Private),
    (
        IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        Denied::LinkLocal,
    ),
    (
        IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        Denied::Multicast,
    ),
];

/// The form an address is compared in when permissions are keyed by IP:
/// an IPv4-mapped address is the IPv4 address it maps (RFC 4291 §2.5.5.2),
/// since a dual-stack socket sends to exactly that.
#[must_use]
pub const fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// The IPv4 addresses a packet to `ip` may end up at once some translator,
/// tunnel or the host's own stack has unwrapped it: at most two (Teredo's
/// server and client). The address where each RFC puts them:
///
/// - IPv4-mapped `::ffff:0:0/96` (RFC 4291 §2.5.5.2), IPv4-translated
///   `::ffff:0:0:0/96` (RFC 2765), IPv4-compatible `::/96` other than `::`
///   and `::1` (RFC 4291 §2.5.5.1), NAT64 `64:ff9b::/96` (RFC 6052) and
///   `64:ff9b:1::/48` (RFC 8215): the last 32 bits. For the local-use /48
///   the operator picks the prefix length; the last 32 bits are where the
///   common /96 puts it.
/// - 6to4 `2002::/16` (RFC 3056 §2): bits 16..48.
/// - Teredo `2001::/32` (RFC 4380 §4): the server in bits 32..64, the
///   client in the last 32 bits with every bit inverted.
pub fn embedded_ipv4(ip: Ipv6Addr) -> impl Iterator<Item = Ipv4Addr> + Clone {
    hidden_ipv4(ip).into_iter().flatten()
}

fn hidden_ipv4(ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let bits = ip.to_bits();
    // The truncating cast keeps the 32 bits that `shift` brought down.
    let at = |shift: u32| Ipv4Addr::from_bits((bits >> shift) as u32);
    let v6 = IpAddr::V6(ip);
    if [MAPPED, TRANSLATED, NAT64, NAT64_LOCAL]
        .iter()
        .any(|net| net.contains(v6))
        || (COMPATIBLE.contains(v6) && bits > 1)
    {
        [Some(at(0)), None]
    } else if SIX_TO_FOUR.contains(v6) {
        [Some(at(80)), None]
    } else if TEREDO.contains(v6) {
        [Some(at(64)), Some(Ipv4Addr::from_bits(!at(0).to_bits()))]
    } else {
        [None, None]
    }
}

/// An address and the IPv4 addresses hidden in it, hidden ones first, so
/// a denial names what the peer would really reach.
fn components(ip: IpAddr) -> impl Iterator<Item = IpAddr> + Clone {
    let [a, b] = match ip {
        IpAddr::V6(v6) => hidden_ipv4(v6),
        IpAddr::V4(_) => [None, None],
    };
    [a.map(IpAddr::V4), b.map(IpAddr::V4), Some(ip)]
        .into_iter()
        .flatten()
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(ip))
}

/// The peer address policy, built once from a [`PolicyConfig`].
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Box<[IpNet]>,
    deny: Box<[IpNet]>,
    /// `own_ips` and `relay_ips` together, canonical.
    own_ips: Box<[IpAddr]>,
    /// Canonical IPs.
    listeners: Box<[SocketAddr]>,
    /// Canonical.
    relay_ips: Box<[IpAddr]>,
}

impl PeerPolicy {
    #[must_use]
    pub fn new(cfg: PolicyConfig) -> Self {
        let canonical_all = |ips: &[IpAddr]| ips.iter().map(|&ip| canonical(ip)).collect();
        Self {
            allow: cfg.allow.into(),
            deny: cfg.deny.into(),
            own_ips: canonical_all(&[cfg.own_ips.as_slice(), &cfg.relay_ips].concat()),
            listeners: cfg
                .listeners
                .iter()
                .map(|l| SocketAddr::new(canonical(l.ip()), l.port()))
                .collect(),
            relay_ips: canonical_all(&cfg.relay_ips),
        }
    }

    /// The full check of a peer transport address, for CreatePermission,
    /// ChannelBind, Send and Connect. `own_relay` is the relayed address of
    /// the allocation asking; `live_relay` says whether an address on a
    /// relay IP is the relayed address of a live allocation (only the
    /// runtime knows), and is asked only for such addresses.
    pub fn check(
        &self,
        peer: SocketAddr,
        own_relay: Option<SocketAddr>,
        live_relay: impl FnOnce(SocketAddr) -> bool,
    ) -> Result<(), Denied> {
        self.check_self(peer, own_relay)?;
        if components(peer.ip()).any(|ip| in_any(&self.deny, ip)) {
            return Err(Denied::Configured);
        }
        // Two clients that both need a relay reach each other through one
        // server this way. Only a live relay counts: the other ports of a
        // relay IP may be anything, the host's own client sockets included.
        if self.is_relay_ip(peer.ip()) && live_relay(peer) {
            return Ok(());
        }
        // Every form must pass: allowing a carrier range such as
        // 64:ff9b::/96 must not open the loopback hidden inside it.
        components(peer.ip()).try_for_each(|ip| self.check_ip(ip))
    }

    /// The port-dependent part of [`check`](Self::check), per Send after a
    /// permission matched. Permissions are per IP (RFC 8656 §9), so the IP
    /// passed `check` when the permission was installed; the port of this
    /// packet has not been checked yet.
    pub fn check_port(
        &self,
        peer: SocketAddr,
        own_relay: Option<SocketAddr>,
        live_relay: impl FnOnce(SocketAddr) -> bool,
    ) -> Result<(), Denied> {
        self.check_self(peer, own_relay)?;
        // A permission to another allocation's relayed address must not open
        // the other services on that IP.
        let ip = canonical(peer.ip());
        if self.is_own(ip)
            && !in_any(&self.allow, ip)
            && !(self.is_relay_ip(ip) && live_relay(peer))
        {
            return Err(Denied::OwnAddress);
        }
        Ok(())
    }

    /// The check of a peer that is the server's own probe responder, for
    /// an allocation made with check credentials once `crate::check` has
    /// found the peer among the responder's addresses: the server's
    /// listeners, relay loops and the operator's `deny` ranges stay
    /// refused; the built-in ranges and the host's own addresses do not
    /// apply, since the responder lives on the host (on loopback, in
    /// tests).
    pub fn check_probe(
        &self,
        peer: SocketAddr,
        own_relay: Option<SocketAddr>,
    ) -> Result<(), Denied> {
        self.check_self(peer, own_relay)?;
        if components(peer.ip()).any(|ip| in_any(&self.deny, ip)) {
            return Err(Denied::Configured);
        }
        Ok(())
    }

    /// Whether relayed addresses are bound on, or advertised as, `ip`.
    #[must_use]
    pub fn is_relay_ip(&self, ip: IpAddr) -> bool {
        self.relay_ips.contains(&canonical(ip))
    }

    /// The server's own sockets, which no `allow` opens.
    fn check_self(&self, peer: SocketAddr, own_relay: Option<SocketAddr>) -> Result<(), Denied> {
        if self.listeners.iter().any(|&l| self.reaches(peer, l)) {
            return Err(Denied::Listener);
        }
        if let Some(relay) = own_relay {
            // The advertised (NATed) form of the relayed address, or another
            // relay IP on the same port of a wildcard-bound socket, loops too.
            let advertised = peer.port() == relay.port()
                && components(peer.ip()).any(|ip| self.relay_ips.contains(&ip));
            if advertised || self.reaches(peer, relay) {
                return Err(Denied::RelayLoop);
            }
        }
        Ok(())
    }

    /// Whether a packet sent to `peer` would arrive at a socket bound to
    /// `socket` on this host. Linux sends a packet for the unspecified
    /// address to the host itself, so that reaches every local port.
    fn reaches(&self, peer: SocketAddr, socket: SocketAddr) -> bool {
        let bound = canonical(socket.ip());
        peer.port() == socket.port()
            && components(peer.ip()).any(|ip| {
                ip == bound
                    || ip.is_unspecified()
                    || (bound.is_unspecified() && (ip.is_loopback() || self.is_own(ip)))
            })
    }

    fn is_own(&self, ip: IpAddr) -> bool {
        self.own_ips.contains(&ip)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        if in_any(&self.deny, ip) {
            return Err(Denied::Configured);
        }
        if in_any(&self.allow, ip) {
            return Ok(());
        }
        if let Some(reason) = builtin(ip) {
            return Err(reason);
        }
        if self.is_own(ip) {
            return Err(Denied::OwnAddress);
        }
        Ok(())
    }
}

fn builtin(ip: IpAddr) -> Option<Denied> {
    BUILTIN
        .iter()
        .find(|(net, _)| net.contains(ip))
        .map(|&(_, reason)| reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "93.184.216.34";
    const OWN6: &str = "2a01:4f8:1:2::34";
    /// The private address the relay binds on, behind a 1:1 NAT to OWN.
    const BOUND: &str = "10.1.2.3";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn config() -> PolicyConfig {
        PolicyConfig {
            own_ips: vec![ip(OWN), ip(OWN6), ip(BOUND)],
            listeners: vec![
                sa("0.0.0.0:3478"),
                sa("[::]:3478"),
                sa("127.0.0.1:8080"),
                sa("93.184.216.34:443"),
            ],
            relay_ips: vec![ip(BOUND), ip(OWN), ip(OWN6)],
            ..PolicyConfig::default()
        }
    }

    fn policy() -> PeerPolicy {
        PeerPolicy::new(config())
    }

    fn with_allow(allow: &[&str]) -> PeerPolicy {
        PeerPolicy::new(PolicyConfig {
            allow: nets(allow),
            ..config()
        })
    }

    fn check(p: &PeerPolicy, peer: &str) -> Result<(), Denied> {
        p.check(sa(peer), None, live)
    }

    /// The tests' relays: every port from 49152 up on a relay IP.
    fn live(peer: SocketAddr) -> bool {
        peer.port() >= 49152
    }

    fn v6_of(v4: &str, build: Build) -> Ipv6Addr {
        Ipv6Addr::from_bits(build(v4.parse::<Ipv4Addr>().unwrap().to_bits()))
    }

    /// Every IPv6 spelling of an IPv4 address that the policy sees through,
    /// with the carrier range an operator would have to allow to use it.
    /// Teredo's other address is a public one, so only `v4` can deny.
    type Build = fn(u32) -> u128;

    const SPELLINGS: &[(&str, &str, Build)] = &[
        ("mapped", "::ffff:0:0/96", |v| 0xffff << 32 | u128::from(v)),
        ("compatible", "::/96", |v| u128::from(v)),
        ("translated", "::ffff:0:0:0/96", |v| {
            0xffff << 48 | u128::from(v)
        }),
        ("nat64", "64:ff9b::/96", |v| 0x64_ff9b << 96 | u128::from(v)),
        ("nat64 local", "64:ff9b:1::/48", |v| {
            0x64_ff9b_0001 << 80 | u128::from(v)
        }),
        ("6to4", "2002::/16", |v| {
            0x2002 << 112 | u128::from(v) << 80 | 1
        }),
        ("teredo server", "2001::/32", |v| {
            0x2001_0000 << 96 | u128::from(v) << 64 | u128::from(!0x0808_0808_u32)
        }),
        ("teredo client", "2001::/32", |v| {
            0x2001_0000 << 96 | 0x0808_0404 << 64 | u128::from(!v)
        }),
    ];

    #[test]
    fn builtin_table_edges() {
        use Denied::*;
        // First and last address of every range, and the neighbours that
        // fall outside every range.
        let cases: &[(&str, Option<Denied>)] = &[
            ("0.0.0.0", Some(Unspecified)),
            ("0.255.255.255", Some(Unspecified)),
            ("1.0.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.0", Some(Loopback)),
            ("127.255.255.255", Some(Loopback)),
            ("128.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("11.0.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.168.0.0", Some(Private)),
            ("192.168.255.255", Some(Private)),
            ("192.169.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some(Private)),
            ("100.127.255.255", Some(Private)),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.0", Some(LinkLocal)),
            ("169.254.255.255", Some(LinkLocal)),
            ("169.255.0.0", None),
            ("223.255.255.255", None),
            ("224.0.0.0", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.0", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("191.255.255.255", None),
            ("192.0.0.0", Some(SpecialPurpose)),
            ("192.0.0.255", Some(SpecialPurpose)),
            ("192.0.1.0", None),
            ("192.0.1.255", None),
            ("192.0.2.0", Some(SpecialPurpose)),
            ("192.0.2.255", Some(SpecialPurpose)),
            ("192.0.3.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some(SpecialPurpose)),
            ("198.19.255.255", Some(SpecialPurpose)),
            ("198.20.0.0", None),
            ("198.51.99.255", None),
            ("198.51.100.0", Some(SpecialPurpose)),
            ("198.51.100.255", Some(SpecialPurpose)),
            ("198.51.101.0", None),
            ("203.0.112.255", None),
            ("203.0.113.0", Some(SpecialPurpose)),
            ("203.0.113.255", Some(SpecialPurpose)),
            ("203.0.114.0", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::2", Some(SpecialPurpose)),
            ("::ffff:ffff", Some(SpecialPurpose)),
            ("::1:0:0", None),
            ("::fffe:ffff:ffff", None),
            ("::ffff:0:0", Some(SpecialPurpose)),
            ("::ffff:ffff:ffff", Some(SpecialPurpose)),
            ("::1:0:0:0", None),
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("64:ff9b::", Some(SpecialPurpose)),
            ("64:ff9b::ffff:ffff", Some(SpecialPurpose)),
            ("64:ff9b::1:0:0", None),
            ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", None),
            ("64:ff9b:1::", Some(SpecialPurpose)),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some(SpecialPurpose)),
            ("64:ff9b:2::", None),
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2002::", Some(SpecialPurpose)),
            (
                "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(SpecialPurpose),
            ),
            ("2003::", None),
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2001::", Some(SpecialPurpose)),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some(SpecialPurpose)),
            ("2001:1::", None),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2001:db8::", Some(SpecialPurpose)),
            (
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(SpecialPurpose),
            ),
            ("2001:db9::", None),
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("100::", Some(SpecialPurpose)),
            ("100::ffff:ffff:ffff:ffff", Some(SpecialPurpose)),
            ("100:0:0:1::", None),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("fc00::", Some(Private)),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Private)),
            ("fe00::", None),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("fe80::", Some(LinkLocal)),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(LinkLocal)),
            ("fec0::", None),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("::ffff:0:0:0", Some(SpecialPurpose)),
            ("::ffff:0:ffff:ffff", Some(SpecialPurpose)),
            ("ff00::", Some(Multicast)),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Multicast)),
        ];
        let p = PeerPolicy::new(PolicyConfig::default());
        for &(addr, want) in cases {
            assert_eq!(builtin(ip(addr)), want, "{addr}");
            let peer = SocketAddr::new(ip(addr), 5000);
            match want {
                // Whatever the reason for the whole address, it is denied.
                Some(_) => assert!(p.check(peer, None, live).is_err(), "{addr}"),
                None => assert_eq!(p.check(peer, None, live), Ok(()), "{addr}"),
            }
        }
        // Every row is exercised by the cases above.
        for (net, _) in BUILTIN {
            assert!(cases.iter().any(|(a, _)| net.contains(ip(a))), "{net}");
        }
    }

    #[test]
    fn table_reason_is_what_check_reports_for_plain_addresses() {
        let p = PeerPolicy::new(PolicyConfig::default());
        assert_eq!(check(&p, "127.0.0.1:1"), Err(Denied::Loopback));
        assert_eq!(check(&p, "[::1]:1"), Err(Denied::Loopback));
        assert_eq!(check(&p, "0.0.0.0:1"), Err(Denied::Unspecified));
        assert_eq!(check(&p, "[::]:1"), Err(Denied::Unspecified));
        assert_eq!(check(&p, "169.254.169.254:80"), Err(Denied::LinkLocal));
        assert_eq!(check(&p, "[fd00::1]:80"), Err(Denied::Private));
        assert_eq!(check(&p, "[2001:db8::1]:80"), Err(Denied::SpecialPurpose));
    }

    #[test]
    fn public_addresses_are_allowed() {
        let p = policy();
        for peer in [
            "8.8.8.8:53",
            "1.1.1.1:443",
            "[2606:4700:4700::1111]:443",
            "[2a00:1450:4001:80b::200e]:3478",
            "93.184.216.35:22",
            "93.184.216.33:3478",
        ] {
            let peer = sa(peer);
            assert_eq!(
                p.check(peer, Some(sa("93.184.216.34:50000")), live),
                Ok(()),
                "{peer}"
            );
            assert_eq!(
                p.check_port(peer, Some(sa("93.184.216.34:50000")), live),
                Ok(()),
                "{peer}"
            );
        }
    }

    #[test]
    fn embedded_ipv4_vectors() {
        let embedded = |s: &str| embedded_ipv4(s.parse().unwrap()).collect::<Vec<_>>();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(embedded("::ffff:192.0.2.33"), [v4("192.0.2.33")]);
        assert_eq!(embedded("::192.0.2.33"), [v4("192.0.2.33")]);
        assert_eq!(embedded("::2"), [v4("0.0.0.2")]);
        assert_eq!(embedded("::ffff:0:192.0.2.33"), [v4("192.0.2.33")]);
        // RFC 6052 §2.4 and RFC 8215.
        assert_eq!(embedded("64:ff9b::192.0.2.33"), [v4("192.0.2.33")]);
        assert_eq!(embedded("64:ff9b:1:abcd::c000:221"), [v4("192.0.2.33")]);
        // RFC 3056 §2.
        assert_eq!(embedded("2002:c000:221:1::1"), [v4("192.0.2.33")]);
        // RFC 4380 §4: server 65.54.227.120, client 192.0.2.45.
        assert_eq!(
            embedded("2001:0000:4136:e378:8000:63bf:3fff:fdd2"),
            [v4("65.54.227.120"), v4("192.0.2.45")]
        );
        for plain in [
            "::",
            "::1",
            "::1:0:0",
            "2001:db8::1",
            "2606:4700:4700::1111",
            "fe80::1",
            "64:ff9b:2::1",
        ] {
            assert!(embedded(plain).is_empty(), "{plain}");
        }
    }

    #[test]
    fn every_ipv6_spelling_of_a_denied_ipv4_is_denied() {
        let cases = [
            ("127.0.0.1", Denied::Loopback),
            ("10.0.0.1", Denied::Private),
            ("169.254.169.254", Denied::LinkLocal),
        ];
        let default = policy();
        for (v4, reason) in cases {
            for &(name, carrier, build) in SPELLINGS {
                let v6 = v6_of(v4, build);
                assert!(
                    embedded_ipv4(v6).any(|e| e.to_string() == v4),
                    "{name} {v6}"
                );
                let peer = SocketAddr::new(IpAddr::V6(v6), 5000);
                assert_eq!(default.check(peer, None, live), Err(reason), "{name} {v6}");
                // Allowing the carrier range does not open what it carries...
                let carrier_allowed = with_allow(&[carrier]);
                assert_eq!(
                    carrier_allowed.check(peer, None, live),
                    Err(reason),
                    "{name} {v6}"
                );
                // ...allowing both does, which shows the carrier was the
                // only other obstacle.
                let both = with_allow(&[carrier, &format!("{v4}/32")]);
                assert_eq!(both.check(peer, None, live), Ok(()), "{name} {v6}");
            }
        }
    }

    #[test]
    fn literal_spellings_of_loopback() {
        let p = policy();
        for peer in [
            "[::ffff:127.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[::ffff:0:127.0.0.1]:80",
            "[64:ff9b::7f00:1]:80",
            "[64:ff9b:1::7f00:1]:80",
            "[2002:7f00:1::]:80",
            "[2001:0:7f00:1::f7f7:fbfb]:80",
            "[2001:0:808:404::80ff:fffe]:80",
        ] {
            assert_eq!(check(&p, peer), Err(Denied::Loopback), "{peer}");
        }
    }

    #[test]
    fn carriers_of_public_addresses_are_denied_unless_allowed() {
        for &(name, carrier, build) in SPELLINGS {
            let peer = SocketAddr::new(IpAddr::V6(v6_of("8.8.8.8", build)), 5000);
            assert_eq!(
                policy().check(peer, None, live),
                Err(Denied::SpecialPurpose),
                "{name} {peer}"
            );
            assert_eq!(
                with_allow(&[carrier]).check(peer, None, live),
                Ok(()),
                "{name} {peer}"
            );
        }
    }

    #[test]
    fn allowing_nat64_does_not_allow_its_loopback() {
        let p = with_allow(&["64:ff9b::/96"]);
        assert_eq!(check(&p, "[64:ff9b::7f00:1]:80"), Err(Denied::Loopback));
        assert_eq!(check(&p, "[64:ff9b::a9fe:a9fe]:80"), Err(Denied::LinkLocal));
        assert_eq!(check(&p, "[64:ff9b::808:808]:80"), Ok(()));
        let p = with_allow(&["64:ff9b::/96", "127.0.0.0/8"]);
        assert_eq!(check(&p, "[64:ff9b::7f00:1]:80"), Ok(()));
        let p = with_allow(&["2002::/16"]);
        assert_eq!(check(&p, "[2002:7f00:1::]:80"), Err(Denied::Loopback));
        assert_eq!(check(&p, "[2002:808:808::1]:80"), Ok(()));
    }

    #[test]
    fn allowing_loopback_never_opens_listeners_or_the_relay_loop() {
        let p = with_allow(&["127.0.0.0/8", "::1/128"]);
        assert_eq!(check(&p, "127.0.0.1:5000"), Ok(()));
        assert_eq!(check(&p, "127.1.2.3:5000"), Ok(()));
        assert_eq!(check(&p, "[::1]:5000"), Ok(()));
        // 0.0.0.0:3478 and [::]:3478 are wildcard listeners; 127.0.0.1:8080
        // is an exact one.
        for peer in [
            "127.0.0.1:3478",
            "127.1.2.3:3478",
            "[::1]:3478",
            "[::ffff:127.0.0.1]:3478",
            "127.0.0.1:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(check(&p, peer), Err(Denied::Listener), "{peer}");
            assert_eq!(
                p.check_port(sa(peer), None, live),
                Err(Denied::Listener),
                "{peer}"
            );
        }
        assert_eq!(check(&p, "127.0.0.2:8080"), Ok(()));
        let relay = Some(sa("127.0.0.1:50000"));
        assert_eq!(
            p.check(sa("127.0.0.1:50000"), relay, live),
            Err(Denied::RelayLoop)
        );
        assert_eq!(
            p.check_port(sa("127.0.0.1:50000"), relay, live),
            Err(Denied::RelayLoop)
        );
        assert_eq!(p.check(sa("127.0.0.1:50001"), relay, live), Ok(()));
    }

    #[test]
    fn an_exact_loopback_listener_is_denied_even_when_it_is_the_only_one() {
        for listener in ["127.0.0.1:3478", "0.0.0.0:3478", "[::]:3478"] {
            let p = PeerPolicy::new(PolicyConfig {
                allow: nets(&["127.0.0.0/8"]),
                listeners: vec![sa(listener)],
                ..PolicyConfig::default()
            });
            assert_eq!(
                check(&p, "127.0.0.1:3478"),
                Err(Denied::Listener),
                "{listener}"
            );
            assert_eq!(check(&p, "127.0.0.1:5000"), Ok(()), "{listener}");
        }
    }

    #[test]
    fn wildcard_listener_covers_every_own_address() {
        let p = with_allow(&["0.0.0.0/0", "::/0"]);
        for peer in [
            "93.184.216.34:3478",
            "10.1.2.3:3478",
            "[2a01:4f8:1:2::34]:3478",
            "[::ffff:93.184.216.34]:3478",
            "0.0.0.0:3478",
            "[::]:3478",
            "127.0.0.1:3478",
            "93.184.216.34:443",
            // Linux delivers a send to the unspecified address locally.
            "0.0.0.0:8080",
            "0.0.0.0:443",
        ] {
            assert_eq!(check(&p, peer), Err(Denied::Listener), "{peer}");
        }
        assert_eq!(check(&p, "8.8.8.8:3478"), Ok(()));
        assert_eq!(check(&p, "93.184.216.35:3478"), Ok(()));
        assert_eq!(check(&p, "10.1.2.3:443"), Ok(()));
        assert_eq!(check(&p, "93.184.216.34:8080"), Ok(()));
    }

    #[test]
    fn another_allocations_relayed_address_is_allowed() {
        let p = policy();
        let me = Some(sa("93.184.216.34:50000"));
        for peer in [
            "93.184.216.34:49152",
            "93.184.216.34:50001",
            "93.184.216.34:65535",
            "10.1.2.3:50001",
            "[2a01:4f8:1:2::34]:50001",
            "[::ffff:93.184.216.34]:50001",
        ] {
            assert_eq!(p.check(sa(peer), me, live), Ok(()), "{peer}");
            assert_eq!(p.check_port(sa(peer), me, live), Ok(()), "{peer}");
            assert!(p.is_relay_ip(sa(peer).ip()) && live(sa(peer)), "{peer}");
        }
    }

    #[test]
    fn own_address_outside_the_relay_range_is_denied_unless_allowed() {
        let p = policy();
        let me = Some(sa("93.184.216.34:50000"));
        for peer in [
            "93.184.216.34:22",
            "93.184.216.34:49151",
            "[2a01:4f8:1:2::34]:22",
            "[::ffff:93.184.216.34]:22",
        ] {
            assert_eq!(
                p.check(sa(peer), me, live),
                Err(Denied::OwnAddress),
                "{peer}"
            );
            assert_eq!(
                p.check_port(sa(peer), me, live),
                Err(Denied::OwnAddress),
                "{peer}"
            );
            assert!(!(p.is_relay_ip(sa(peer).ip()) && live(sa(peer))), "{peer}");
        }
        // The private relay IP is private first.
        assert_eq!(p.check(sa("10.1.2.3:22"), me, live), Err(Denied::Private));
        assert_eq!(
            p.check_port(sa("10.1.2.3:22"), me, live),
            Err(Denied::OwnAddress)
        );
        // Own addresses hidden in IPv6 spellings are own addresses too.
        let p = with_allow(&["2002::/16"]);
        assert_eq!(
            check(&p, "[2002:5db8:d822::]:50001"),
            Err(Denied::OwnAddress)
        );

        let p = with_allow(&["93.184.216.34/32"]);
        assert_eq!(p.check(sa("93.184.216.34:22"), me, live), Ok(()));
        assert_eq!(p.check_port(sa("93.184.216.34:22"), me, live), Ok(()));
        assert_eq!(
            p.check_port(sa("[2a01:4f8:1:2::34]:22"), me, live),
            Err(Denied::OwnAddress)
        );
        // Still not its listener, nor itself.
        assert_eq!(
            p.check(sa("93.184.216.34:443"), me, live),
            Err(Denied::Listener)
        );
        assert_eq!(
            p.check(sa("93.184.216.34:3478"), me, live),
            Err(Denied::Listener)
        );
        assert_eq!(
            p.check(sa("93.184.216.34:50000"), me, live),
            Err(Denied::RelayLoop)
        );
    }

    #[test]
    fn relay_loop_in_every_form() {
        let p = policy();
        // Bound on the private address, advertised as the public one.
        let me = Some(sa("10.1.2.3:50000"));
        for peer in [
            "10.1.2.3:50000",
            "93.184.216.34:50000",
            "[2a01:4f8:1:2::34]:50000",
            "[::ffff:10.1.2.3]:50000",
            "[::ffff:93.184.216.34]:50000",
            "0.0.0.0:50000",
        ] {
            assert_eq!(
                p.check(sa(peer), me, live),
                Err(Denied::RelayLoop),
                "{peer}"
            );
            assert_eq!(
                p.check_port(sa(peer), me, live),
                Err(Denied::RelayLoop),
                "{peer}"
            );
        }
        assert_eq!(p.check(sa("93.184.216.34:50001"), me, live), Ok(()));
        assert_eq!(p.check(sa("8.8.8.8:50000"), me, live), Ok(()));
        // Without an own relay, the same address is another allocation's.
        assert_eq!(p.check(sa("93.184.216.34:50000"), None, live), Ok(()));
        // An own relay given in mapped form is the same socket.
        let mapped = Some(sa("[::ffff:93.184.216.34]:50000"));
        assert_eq!(
            p.check(sa("93.184.216.34:50000"), mapped, live),
            Err(Denied::RelayLoop)
        );
    }

    #[test]
    fn operator_deny_beats_allow() {
        let p = PeerPolicy::new(PolicyConfig {
            allow: nets(&["8.0.0.0/8", "10.0.0.0/8", "2002::/16"]),
            deny: nets(&["8.8.8.0/24", "10.9.0.0/16", "2606:4700::/32"]),
            ..config()
        });
        assert_eq!(check(&p, "8.8.8.8:53"), Err(Denied::Configured));
        assert_eq!(check(&p, "8.8.4.4:53"), Ok(()));
        assert_eq!(check(&p, "10.9.0.1:53"), Err(Denied::Configured));
        assert_eq!(check(&p, "10.8.0.1:53"), Ok(()));
        assert_eq!(
            check(&p, "[2606:4700:4700::1111]:53"),
            Err(Denied::Configured)
        );
        assert_eq!(check(&p, "[2002:808:808::]:53"), Err(Denied::Configured));
        assert_eq!(check(&p, "[2002:808:404::]:53"), Ok(()));
        assert_eq!(check(&p, "1.1.1.1:53"), Ok(()));
    }

    #[test]
    fn operator_allow_opens_builtin_ranges() {
        let p = with_allow(&["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(check(&p, "10.0.0.1:5000"), Ok(()));
        assert_eq!(check(&p, "[fd12::1]:5000"), Ok(()));
        assert_eq!(check(&p, "[fc00::1]:5000"), Err(Denied::Private));
        assert_eq!(check(&p, "192.168.0.1:5000"), Err(Denied::Private));
        // The mapped spelling needs its carrier allowed too.
        assert_eq!(
            check(&p, "[::ffff:10.0.0.1]:5000"),
            Err(Denied::SpecialPurpose)
        );
    }

    #[test]
    fn canonical_unmaps_only_mapped_addresses() {
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("::ffff:0.0.0.0")), ip("0.0.0.0"));
        for same in [
            "10.0.0.1",
            "::10.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::a00:1",
            "::1",
            "::",
        ] {
            assert_eq!(canonical(ip(same)), ip(same), "{same}");
        }
    }

    #[test]
    fn only_a_live_relay_on_a_relay_ip_is_another_allocation() {
        let p = policy();
        let me = Some(sa("93.184.216.34:50000"));
        // A port of the relay IP that holds no relay is the host's own.
        let dead = |_: SocketAddr| false;
        assert_eq!(
            p.check(sa("93.184.216.34:50001"), me, dead),
            Err(Denied::OwnAddress)
        );
        assert_eq!(
            p.check_port(sa("93.184.216.34:50001"), me, dead),
            Err(Denied::OwnAddress)
        );
        assert_eq!(p.check(sa("93.184.216.34:50001"), me, live), Ok(()));
        // Liveness is only asked about relay IPs.
        let never = |_: SocketAddr| -> bool { panic!("asked about a stranger") };
        assert_eq!(p.check(sa("8.8.8.8:50001"), me, never), Ok(()));
        assert!(!p.is_relay_ip(ip("93.184.216.35")));
        assert!(p.is_relay_ip(ip("::ffff:93.184.216.34")));
    }

    #[test]
    fn labels_are_stable_snake_case() {
        use Denied::*;
        let all = [
            Loopback,
            Unspecified,
            Private,
            LinkLocal,
            Multicast,
            Broadcast,
            Reserved,
            SpecialPurpose,
            OwnAddress,
            Listener,
            RelayLoop,
            Configured,
        ];
        let labels: Vec<_> = all.iter().map(Denied::as_str).collect();
        assert_eq!(
            labels,
            [
                "loopback",
                "unspecified",
                "private",
                "link_local",
                "multicast",
                "broadcast",
                "reserved",
                "special_purpose",
                "own_address",
                "listener",
                "relay_loop",
                "configured"
            ]
        );
    }
}

//! The probe responder (`[probe]`) and what the server publishes about
//! itself at `GET /api/v1/profile`.
//!
//! The responder answers `turnpike-probe` requests on a range of UDP ports
//! (and one TCP port, if configured) with the source address it saw and the
//! time it received them, so that `turnpike check` can measure round trips,
//! loss and jitter to the server and see the client's NAT. It runs on a
//! thread of its own, away from the shards: nothing it does touches the
//! TURN data path. Answers are rate-limited per source, and never larger
//! than the request (the wire format refuses anything else), so a spoofed
//! flood gains nothing by going through it. Malformed datagrams are
//! dropped without an answer.
//!
//! The profile describes the live configuration: its TURN listeners and
//! the responder, with the thresholds of `profiles/turnpike.toml`.

mod binding;
mod books;
mod responder;

#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    use std::net::{IpAddr, SocketAddr};

    /// STUN on the responder's UDP ports: the answer to `bytes` from
    /// `from`, received on `local`, with the RFC 5780 sockets at
    /// (`address`, `alternate`) × (`p1`, `p2`): where it is sent from
    /// and its bytes in `out`; `None` for no answer.
    pub fn binding_answer(
        bytes: &[u8],
        from: SocketAddr,
        local: SocketAddr,
        address: IpAddr,
        alternate: Option<IpAddr>,
        p1: u16,
        p2: Option<u16>,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let layout = super::binding::Layout {
            address,
            alternate,
            p1,
            p2,
        };
        match super::binding::answer(bytes, from, local, &layout, out) {
            Ok(super::binding::Answer::Send { from, len }) => Some((from, len)),
            _ => None,
        }
    }
}

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use rand::Rng as _;
use tokio::sync::watch;
use tracing::warn;
use turnpike_profile::{
    About, Endpoint, Kind, LowerLimit, Probe as PublishedProbe, Profile, Published, Thresholds,
    UpperLimit,
};
use turnpike_turn::RelayIp;

pub(crate) use self::responder::Counters;
use self::responder::{Limits, Shared};
use crate::config::{self, Listen, ListenTransport, PortRange};

/// The responder's sockets, bound, before they serve.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The address it listens and answers on.
    pub(crate) ip: IpAddr,
    pub(crate) ports: PortRange,
    /// The TCP port, as bound (the system's pick for port 0).
    pub(crate) tcp_port: Option<u16>,
    /// The alternate address (RFC 5780), bound on the first two ports.
    pub(crate) alternate: Option<IpAddr>,
    udp: Vec<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
}

/// A UDP socket of the responder, reporting the TOS byte or traffic
/// class of what it receives.
fn bind_udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)
        .with_context(|| format!("cannot bind the probe responder on udp {addr}"))?;
    let sock = socket2::SockRef::from(&socket);
    if addr.is_ipv4() {
        sock.set_recv_tos_v4(true)
    } else {
        sock.set_recv_tclass_v6(true)
    }
    .with_context(|| format!("cannot read DSCP marks on udp {addr}"))?;
    Ok(socket)
}

/// Binds a UDP socket on every port of `settings.ports` at `ip` (and on
/// the first two at the alternate address), and the TCP listener.
pub(crate) fn bind(ip: IpAddr, settings: &config::Probe) -> anyhow::Result<Bound> {
    let ports = settings.ports;
    let alternate = settings
        .alternate_address
        .map(|alt| {
            config::check_alternate_address(alt, Some(ip), ports)
                .map_err(|m| anyhow::anyhow!("[probe] alternate_address: {m}"))
        })
        .transpose()?;
    let mut udp = (ports.first..=ports.last)
        .map(|port| bind_udp(SocketAddr::new(ip, port)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(alt) = alternate {
        for port in (ports.first..=ports.last).take(2) {
            udp.push(bind_udp(SocketAddr::new(alt, port))?);
        }
    }
    let tcp = settings
        .tcp_port
        .map(|port| {
            let addr = SocketAddr::new(ip, port);
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot bind the probe responder on tcp {addr}"))
        })
        .transpose()?;
    let tcp_port = tcp
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?
        .map(|a| a.port());
    Ok(Bound {
        ip,
        ports,
        tcp_port,
        alternate,
        udp,
        tcp,
    })
}

/// Serves `bound` on a thread of its own until `shutdown`.
pub(crate) fn spawn(
    bound: Bound,
    settings: &config::Probe,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    for socket in &bound.udp {
        socket.set_nonblocking(true)?;
    }
    if let Some(listener) = &bound.tcp {
        listener.set_nonblocking(true)?;
    }
    let mut rng = rand::rng();
    let seed = rng.next_u64();
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let limits = Limits {
        replies_per_second: settings.replies_per_second,
        max_kbps_per_source: settings.max_kbps_per_source,
    };
    let layout = binding::Layout {
        address: bound.ip,
        alternate: bound.alternate,
        p1: bound.ports.first,
        p2: (bound.ports.last > bound.ports.first).then(|| bound.ports.first.saturating_add(1)),
    };
    crate::serve::spawn_with_runtime("probe".into(), "the probe responder", move |runtime| {
        runtime.block_on(async move {
            let mut sockets = Vec::new();
            for socket in bound.udp {
                let addr = socket.local_addr();
                match (addr, tokio::net::UdpSocket::from_std(socket)) {
                    (Ok(addr), Ok(socket)) => sockets.push((addr, Arc::new(socket))),
                    (Err(e), _) | (_, Err(e)) => {
                        warn!(error = %e, "a probe port cannot be served");
                    }
                }
            }
            let count = sockets.len();
            let shared = Arc::new(Shared::new(sockets, layout, limits, counters, seed, key));
            for index in 0..count {
                tokio::spawn(responder::serve_udp(Arc::clone(&shared), index));
            }
            if let Some(listener) = bound.tcp {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tokio::spawn(responder::accept_tcp(listener, shared));
                    }
                    Err(e) => warn!(error = %e, "the probe TCP port cannot be served"),
                }
            }
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
        // Dropping the runtime ends every task and closes the sockets.
    })
}

/// Where the probe responder is, for the profile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeAt {
    pub(crate) ip: IpAddr,
    pub(crate) ports: PortRange,
    pub(crate) tcp_port: Option<u16>,
}

impl From<&Bound> for ProbeAt {
    fn from(b: &Bound) -> Self {
        Self {
            ip: b.ip,
            ports: b.ports,
            tcp_port: b.tcp_port,
        }
    }
}

/// The addresses a client may name the probe responder by: where it is
/// bound and, if that is a relay address, the advertised form of it.
pub(crate) fn probe_ips(ip: IpAddr, relays: &[RelayIp]) -> Vec<IpAddr> {
    let mut ips = vec![ip];
    ips.extend(
        relays
            .iter()
            .filter(|r| r.bound == ip && r.advertised != ip)
            .map(|r| r.advertised),
    );
    ips
}

/// What the profile is built from: the server as it runs.
#[derive(Debug)]
pub(crate) struct Described<'a> {
    /// The listeners, with the ports the system chose.
    pub(crate) listening: &'a [Listen],
    pub(crate) relays: &'a [RelayIp],
    /// `hostname` from the configuration, if set.
    pub(crate) hostname: Option<&'a str>,
    pub(crate) probe: Option<ProbeAt>,
}

/// The id of the probe responder's TCP endpoint.
pub(crate) const PROBE_TCP_ENDPOINT: &str = "probe-tcp";

/// The server's profile (without credentials or TLS issuer, which are
/// filled in per request).
pub(crate) fn published(d: &Described<'_>) -> Published {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut add = |mut e: Endpoint, port: u16| {
        let taken = |id: &str, all: &[Endpoint]| all.iter().any(|x| x.id == id);
        if taken(&e.id, &endpoints) {
            let base = format!("{}-{port}", e.id);
            e.id = (1..)
                .map(|n| {
                    if n == 1 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    }
                })
                .find(|id| !taken(id, &endpoints))
                .unwrap_or(base);
        }
        let id = e.id.clone();
        endpoints.push(e);
        id
    };
    let mut turn_udp = Vec::new();
    let mut streams = Vec::new();
    for l in d.listening {
        let Some(host) = host_for(d, l.address) else {
            continue;
        };
        let port = l.address.port();
        let source = Some(format!("[[listen]] {} {}", l.transport, l.address));
        let endpoint = |id: &str, kind: Kind, purpose: &str| Endpoint {
            id: id.to_owned(),
            kind,
            host: host.clone(),
            port: Some(port),
            ports: None,
            path: None,
            required: false,
            fallback_for: Vec::new(),
            purpose: Some(purpose.to_owned()),
            source: source.clone(),
        };
        match l.transport {
            ListenTransport::Udp => {
                add(
                    endpoint(
                        "stun",
                        Kind::StunUdp,
                        "STUN Binding: the client's public address",
                    ),
                    port,
                );
                let turn = Endpoint {
                    required: true,
                    ..endpoint(
                        "turn-udp",
                        Kind::TurnUdp,
                        "TURN over UDP: media relayed with the least delay",
                    )
                };
                turn_udp.push(add(turn, port));
            }
            ListenTransport::Tcp => streams.push(add(
                endpoint(
                    "turn-tcp",
                    Kind::TurnTcp,
                    "TURN over TCP where UDP is blocked",
                ),
                port,
            )),
            ListenTransport::Tls => {
                streams.push(add(
                    endpoint(
                        "turn-tls",
                        Kind::TurnTls,
                        "TURN over TLS where only TLS gets through",
                    ),
                    port,
                ));
                if l.http {
                    add(
                        Endpoint {
                            path: Some("/healthz".to_owned()),
                            ..endpoint(
                                "https",
                                Kind::Https,
                                "the HTTPS side on the same port: the certificate, and whether TLS is inspected on the way",
                            )
                        },
                        port,
                    );
                }
            }
        }
    }
    for e in endpoints.iter_mut().filter(|e| streams.contains(&e.id)) {
        e.fallback_for.clone_from(&turn_udp);
        // Without TURN over UDP, these are the only way through.
        e.required = turn_udp.is_empty();
    }
    let mut probe = None;
    if let Some(p) = d.probe {
        let host = probe_host(d, p.ip);
        let ports = turnpike_profile::PortRange::new(p.ports.first, p.ports.last).ok();
        endpoints.push(Endpoint {
            id: PublishedProbe::ENDPOINT.to_owned(),
            kind: Kind::UdpRange,
            host: host.clone(),
            port: None,
            ports,
            path: None,
            // Media goes straight to these ports where it can; through a
            // TURN relay (any of them) is the fallback.
            required: true,
            fallback_for: Vec::new(),
            purpose: Some(
                "the server's probe responder: direct UDP to its media ports (RTT, loss, jitter)"
                    .to_owned(),
            ),
            source: Some(format!("[probe] ports = \"{}\"", p.ports)),
        });
        for e in endpoints
            .iter_mut()
            .filter(|e| turn_udp.contains(&e.id) || streams.contains(&e.id))
        {
            e.fallback_for.push(PublishedProbe::ENDPOINT.to_owned());
        }
        let tcp_endpoint = p.tcp_port.map(|port| {
            endpoints.push(Endpoint {
                id: PROBE_TCP_ENDPOINT.to_owned(),
                kind: Kind::Tcp,
                host,
                port: Some(port),
                ports: None,
                path: None,
                required: false,
                fallback_for: Vec::new(),
                purpose: Some("the server's probe responder over TCP".to_owned()),
                source: Some(format!("[probe] tcp_port = {port}")),
            });
            PROBE_TCP_ENDPOINT.to_owned()
        });
        probe = Some(PublishedProbe {
            udp_endpoint: PublishedProbe::ENDPOINT.to_owned(),
            tcp_endpoint,
        });
    }
    let name = d
        .hostname
        .map(str::to_owned)
        .or_else(|| d.relays.first().map(|r| r.advertised.to_string()))
        .unwrap_or_else(|| "this server".to_owned());
    Published {
        profile: Profile {
            about: About {
                name: format!("turnpike relay {name}"),
                description: Some(format!(
                    "What a client network needs to use this turnpike relay: its TURN listeners{}, from its live configuration.",
                    if probe.is_some() {
                        " and its probe responder"
                    } else {
                        ""
                    }
                )),
                source: format!(
                    "turnpike {}: GET /api/v1/profile, from the running server's configuration",
                    env!("CARGO_PKG_VERSION")
                ),
            },
            endpoints,
            thresholds: thresholds(),
            measure: turnpike_profile::Measure::default(),
        },
        probe,
        credentials: None,
        tls_issuer: None,
    }
}

/// The host a client reaches `address` by: `hostname` if configured; for
/// a wildcard or a relay address, the advertised relay address of its
/// family; else the address itself. `None` for a wildcard of a family the
/// server has no relay address in.
fn host_for(d: &Described<'_>, address: SocketAddr) -> Option<String> {
    if let Some(h) = d.hostname {
        return Some(h.to_owned());
    }
    let ip = address.ip();
    let relay = d
        .relays
        .iter()
        .find(|r| r.bound == ip || (ip.is_unspecified() && r.advertised.is_ipv4() == ip.is_ipv4()));
    match relay {
        Some(r) => Some(r.advertised.to_string()),
        None if ip.is_unspecified() => None,
        None => Some(ip.to_string()),
    }
}

/// The probe responder's host: as a listener on its address would be.
fn probe_host(d: &Described<'_>, ip: IpAddr) -> String {
    host_for(d, SocketAddr::new(ip, 0)).unwrap_or_else(|| ip.to_string())
}

/// The thresholds of `profiles/turnpike.toml`, with the same sources.
fn thresholds() -> Thresholds {
    let max = |max: f64, source: &str| {
        Some(UpperLimit {
            max,
            source: source.to_owned(),
        })
    };
    let min = |min: f64, source: &str| {
        Some(LowerLimit {
            min,
            source: source.to_owned(),
        })
    };
    Thresholds {
        rtt_ms: max(
            150.0,
            "Sococo guide: RTT under 150 ms for good audio and video",
        ),
        jitter_ms: max(50.0, "Interactive Powers guide: jitter < 50 ms"),
        loss_pct: max(1.5, "Interactive Powers guide: packet loss < 1.5 %"),
        up_kbps: min(
            80.0,
            "Interactive Powers guide: 80 kbps up for Opus/VP8 audio and video",
        ),
        down_kbps: min(
            80.0,
            "Interactive Powers guide: 80 kbps down for Opus/VP8 audio and video",
        ),
        udp_idle_timeout_s: min(
            180.0,
            "Sococo and Vidyo guides: a 120 s firewall UDP timeout drops calls; 180 s is our margin above it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> Listen {
        s.parse().unwrap()
    }

    fn relay(bound: &str, advertised: &str) -> RelayIp {
        RelayIp {
            bound: bound.parse().unwrap(),
            advertised: advertised.parse().unwrap(),
        }
    }

    fn ids(p: &Published) -> Vec<&str> {
        p.profile.endpoints.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn the_thresholds_are_those_of_the_shipped_profile() {
        let shipped =
            Profile::from_toml(include_str!("../../../../profiles/turnpike.toml")).unwrap();
        assert_eq!(thresholds(), shipped.thresholds);
    }

    #[test]
    fn defaults_give_stun_and_turn_over_udp() {
        let listening = [listen("udp://0.0.0.0:3478")];
        let relays = [relay("10.0.0.5", "203.0.113.7")];
        let p = published(&Described {
            listening: &listening,
            relays: &relays,
            hostname: None,
            probe: None,
        });
        assert_eq!(p.profile.validate(), Ok(()));
        assert_eq!(ids(&p), ["stun", "turn-udp"]);
        assert!(p.profile.endpoints.iter().all(|e| e.host == "203.0.113.7"));
        assert!(p.probe.is_none() && p.credentials.is_none());
        assert_eq!(
            p.profile.endpoint("turn-udp").map(|e| e.required),
            Some(true)
        );
    }

    #[test]
    fn every_transport_with_fallbacks_and_the_probe() {
        let listening = [
            listen("udp://0.0.0.0:3478"),
            listen("udp://[::]:3478"),
            listen("tcp://0.0.0.0:3478"),
            listen("tls://0.0.0.0:5349"),
            listen("tls://0.0.0.0:443?http=true"),
        ];
        let relays = [
            relay("10.0.0.5", "203.0.113.7"),
            relay("2001:db8::5", "2001:db8::5"),
        ];
        let p = published(&Described {
            listening: &listening,
            relays: &relays,
            hostname: Some("turn.example.net"),
            probe: Some(ProbeAt {
                ip: "10.0.0.5".parse().unwrap(),
                ports: PortRange {
                    first: 50_000,
                    last: 50_009,
                },
                tcp_port: Some(50_010),
            }),
        });
        assert_eq!(p.profile.validate(), Ok(()));
        assert_eq!(
            ids(&p),
            [
                "stun",
                "turn-udp",
                "stun-3478",
                "turn-udp-3478",
                "turn-tcp",
                "turn-tls",
                "turn-tls-443",
                "https",
                "media",
                "probe-tcp"
            ]
        );
        for id in ["turn-tcp", "turn-tls", "turn-tls-443"] {
            let e = p.profile.endpoint(id).unwrap();
            assert_eq!(
                e.fallback_for,
                ["turn-udp", "turn-udp-3478", "media"],
                "{id}"
            );
            assert!(!e.required);
        }
        for id in ["turn-udp", "turn-udp-3478"] {
            let e = p.profile.endpoint(id).unwrap();
            assert_eq!(e.fallback_for, ["media"], "{id}");
            assert!(e.required);
        }
        let media = p.profile.endpoint("media").unwrap();
        assert!(media.required, "media goes direct where it can");
        assert_eq!(media.kind, Kind::UdpRange);
        assert_eq!(media.ports.map(|r| r.len()), Some(10));
        assert_eq!(media.host, "turn.example.net");
        assert_eq!(p.profile.endpoint("probe-tcp").unwrap().port, Some(50_010));
        assert_eq!(
            p.probe,
            Some(PublishedProbe {
                udp_endpoint: "media".into(),
                tcp_endpoint: Some("probe-tcp".into()),
            })
        );
        let json = serde_json::to_string(&p).unwrap();
        let back: Published = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn streams_alone_are_required_and_a_probe_elsewhere_is_named_by_address() {
        let listening = [listen("tls://127.0.0.1:443"), listen("udp://[::]:3478")];
        let relays = [relay("127.0.0.1", "127.0.0.1")];
        let p = published(&Described {
            listening: &listening,
            relays: &relays,
            hostname: None,
            probe: Some(ProbeAt {
                ip: "192.0.2.9".parse().unwrap(),
                ports: PortRange {
                    first: 40_000,
                    last: 40_000,
                },
                tcp_port: None,
            }),
        });
        assert_eq!(p.profile.validate(), Ok(()));
        // No IPv6 relay address names the [::] listener: left out.
        assert_eq!(ids(&p), ["turn-tls", "media"]);
        let tls = p.profile.endpoint("turn-tls").unwrap();
        assert!(tls.required);
        assert_eq!(tls.fallback_for, ["media"]);
        assert_eq!(tls.host, "127.0.0.1");
        assert_eq!(p.profile.endpoint("media").unwrap().host, "192.0.2.9");
        assert_eq!(p.probe.unwrap().tcp_endpoint, None);
    }

    #[test]
    fn probe_ips_include_the_advertised_form() {
        let relays = [relay("10.0.0.5", "203.0.113.7")];
        assert_eq!(
            probe_ips("10.0.0.5".parse().unwrap(), &relays),
            [
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "203.0.113.7".parse().unwrap()
            ]
        );
        assert_eq!(
            probe_ips("10.0.0.6".parse().unwrap(), &relays),
            ["10.0.0.6".parse::<IpAddr>().unwrap()]
        );
    }
}

//! NAT behaviour discovery (RFC 5780 §4.3-§4.5) against the probe
//! responder's STUN service: how the client's NAT maps (one public
//! address for every destination, or one per destination address, or per
//! destination address and port), how it filters (what may answer a
//! mapping), and whether it hairpins (loops a packet sent to its own
//! public address back inside).
//!
//! The responder answers STUN Binding requests on its first UDP port
//! (`primary`) with XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and, when it has
//! an alternate address, OTHER-ADDRESS (alternate IP, second port); it
//! honours CHANGE-REQUEST only then. Without an alternate address only
//! "is there a NAT" and hairpinning can be told.

use std::net::{IpAddr, SocketAddr};

use rand::RngExt as _;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::{Duration, Instant};
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId,
};

use crate::net::{Failure, Step};

/// What NAT behaviour discovery found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NatReport {
    /// How the NAT maps: `Some(None)` when there is no NAT (the mapped
    /// address is the local one); `None` when it could not be told.
    pub mapping: Option<NatBehaviour>,
    /// What may answer through a mapping: `Some(None)` when there is no
    /// NAT and nothing filters; `None` when it could not be told.
    pub filtering: Option<NatBehaviour>,
    /// Whether a packet to the client's own mapped address came back to
    /// it; `None` when not tested.
    pub hairpinning: Option<bool>,
    /// The client's address as the responder saw it.
    pub mapped: Option<SocketAddr>,
    /// What was found, in words.
    pub detail: String,
}

/// A mapping or filtering behaviour (RFC 4787 terms, as RFC 5780 tests
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum NatBehaviour {
    /// No NAT (mapping), or no filtering where there is no NAT.
    None,
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl NatBehaviour {
    /// The name the JSON report uses.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::EndpointIndependent => "endpoint-independent",
            Self::AddressDependent => "address-dependent",
            Self::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// How each transaction is retransmitted: `tries` sends, each waiting
/// `rto` for the response.
#[derive(Debug, Clone, Copy)]
struct Timing {
    tries: u32,
    rto: Duration,
}

const DEFAULT_TIMING: Timing = Timing {
    tries: 4,
    rto: Duration::from_millis(400),
};

/// Classifies the NAT between this host and the responder's STUN service
/// at `primary`, until `deadline` at most. Takes one round trip per test
/// where everything answers; a test that gets no answer (which is how
/// filtering and hairpinning show) costs 1.6 s, so about 4 s at most
/// behind the strictest NAT. An error when the first Binding request gets
/// no usable answer.
pub(crate) async fn classify(primary: SocketAddr, deadline: Instant) -> Result<NatReport, Failure> {
    classify_with(primary, deadline, DEFAULT_TIMING).await
}

/// A Binding response.
#[derive(Debug, Clone, Copy)]
struct Answer {
    mapped: Option<SocketAddr>,
    other: Option<SocketAddr>,
    /// Where it came from.
    from: SocketAddr,
}

#[derive(Debug, Clone)]
enum Outcome {
    Success(Answer),
    /// An error response, with its code (0 when it has none).
    Error(u16),
    Silent,
    OutOfTime,
    /// The request could not be sent (no route to the address, say).
    Unsendable(String),
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

fn protocol(e: impl std::fmt::Display) -> Failure {
    Failure::new(Step::Protocol, e.to_string())
}

/// A Binding request, with CHANGE-REQUEST when `change` is given.
fn binding_request(change: Option<(bool, bool)>) -> Result<(TransactionId, Vec<u8>), Failure> {
    let mut tid = TransactionId::default();
    rand::rng().fill(&mut tid.0);
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    )
    .map_err(protocol)?;
    if let Some((change_ip, change_port)) = change {
        w.add(&Attr::ChangeRequest {
            change_ip,
            change_port,
        })
        .map_err(protocol)?;
    }
    w.fingerprint().map_err(protocol)?;
    let len = w.finish();
    buf.truncate(len);
    Ok((tid, buf))
}

/// The response to `tid` in `bytes`, if that is what they are.
fn response(bytes: &[u8], tid: TransactionId, from: SocketAddr) -> Option<Outcome> {
    let msg = Message::parse(bytes).ok()?;
    if msg.transaction_id() != tid || msg.method() != Method::BINDING {
        return None;
    }
    match msg.class() {
        Class::Success => {
            let mapped = match msg.get(AttrType::XOR_MAPPED_ADDRESS) {
                Some(Ok(Attr::XorMappedAddress(a))) => Some(a),
                _ => match msg.get(AttrType::MAPPED_ADDRESS) {
                    Some(Ok(Attr::MappedAddress(a))) => Some(a),
                    _ => None,
                },
            };
            let other = match msg.get(AttrType::OTHER_ADDRESS) {
                Some(Ok(Attr::OtherAddress(a))) => Some(a),
                _ => None,
            };
            Some(Outcome::Success(Answer {
                mapped,
                other,
                from,
            }))
        }
        Class::Error => Some(Outcome::Error(match msg.get(AttrType::ERROR_CODE) {
            Some(Ok(Attr::ErrorCode { code, .. })) => code.0,
            _ => 0,
        })),
        Class::Request | Class::Indication => None,
    }
}

/// One Binding transaction from `socket` to `to`, retransmitted.
async fn binding(
    socket: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    timing: Timing,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let (tid, bytes) = binding_request(change)?;
    let mut buf = [0u8; 1500];
    for _ in 0..timing.tries {
        if Instant::now() >= deadline {
            return Ok(Outcome::OutOfTime);
        }
        if let Err(e) = socket.send_to(&bytes, to).await {
            return Ok(Outcome::Unsendable(format!("{to}: {e}")));
        }
        let wait = (Instant::now() + timing.rto).min(deadline);
        // Until the wait is over (or a receive error: then send again).
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(wait, socket.recv_from(&mut buf)).await
        {
            if let Some(o) = response(buf.get(..n).unwrap_or_default(), tid, from) {
                return Ok(o);
            }
        }
    }
    Ok(if Instant::now() >= deadline {
        Outcome::OutOfTime
    } else {
        Outcome::Silent
    })
}

async fn bind(ip: IpAddr) -> Result<UdpSocket, Failure> {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(|e| Failure::new(Step::Connect, e.to_string()))
}

/// The local address the kernel sends from towards `to`: the sockets are
/// bound to it so that "no NAT" is a plain comparison.
async fn local_ip_towards(to: SocketAddr) -> Result<IpAddr, Failure> {
    let probe = crate::net::udp_socket_for(to.ip()).await?;
    probe
        .connect(to)
        .await
        .map_err(|e| Failure::new(Step::Connect, format!("{to}: {e}")))?;
    probe
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| Failure::new(Step::Connect, e.to_string()))
}

async fn classify_with(
    primary: SocketAddr,
    deadline: Instant,
    timing: Timing,
) -> Result<NatReport, Failure> {
    let ip = local_ip_towards(primary).await?;
    let first = bind(ip).await?;
    let local = first
        .local_addr()
        .map_err(|e| Failure::new(Step::Connect, e.to_string()))?;
    let answer = match binding(&first, primary, None, timing, deadline).await? {
        Outcome::Success(a) => a,
        Outcome::Error(code) => {
            return Err(Failure::new(
                Step::Protocol,
                format!("{primary} answered a STUN Binding request with error {code}"),
            ));
        }
        Outcome::Silent => {
            return Err(Failure::new(
                Step::Connect,
                format!("no answer to STUN Binding requests from {primary}"),
            ));
        }
        Outcome::OutOfTime => return Err(Failure::new(Step::Connect, "timed out")),
        Outcome::Unsendable(why) => return Err(Failure::new(Step::Connect, why)),
    };
    let Some(x1) = answer.mapped else {
        return Err(Failure::new(
            Step::Protocol,
            format!("{primary}'s Binding response has no XOR-MAPPED-ADDRESS"),
        ));
    };
    let nat = !same(x1, local);
    let mut detail = vec![if nat {
        format!("mapped to {x1} from {local}: behind a NAT")
    } else {
        format!("mapped to {x1}, the local address: no NAT")
    }];
    let other = match answer.other {
        Some(o) if o.is_ipv4() == primary.is_ipv4() && o.ip() != primary.ip() => Some(o),
        Some(o) => {
            detail.push(format!(
                "the server's OTHER-ADDRESS {o} is not an alternate address usable for RFC 5780 tests"
            ));
            None
        }
        None => {
            detail.push(format!(
                "the server has no alternate address (no OTHER-ADDRESS): {} cannot be told",
                if nat {
                    "mapping and filtering behaviour"
                } else {
                    "filtering behaviour"
                }
            ));
            None
        }
    };

    let mapping_then_hairpin = async {
        let mapping = if !nat {
            Ok((Some(NatBehaviour::None), None))
        } else if let Some(other) = other {
            mapping_test(&first, primary, other, x1, timing, deadline).await
        } else {
            Ok((None, None))
        };
        let hairpin = hairpinning(&first, ip, x1, timing, deadline).await;
        (mapping, hairpin)
    };
    let filtering = async {
        match other {
            Some(other) => filtering_test(ip, primary, other, timing, deadline).await,
            None => Ok((None, None)),
        }
    };
    let ((mapping, hairpin), filtering) = tokio::join!(mapping_then_hairpin, filtering);
    let (mapping, mapping_detail) = mapping?;
    let (mut filtering, filtering_detail) = filtering?;
    let hairpinning = hairpin?;
    if !nat && filtering == Some(NatBehaviour::EndpointIndependent) {
        // Nothing maps and nothing filters.
        filtering = Some(NatBehaviour::None);
    }
    detail.extend(mapping_detail);
    if let Some(m) = mapping.filter(|_| nat) {
        detail.push(format!("mapping {}", m.as_str()));
    }
    detail.extend(filtering_detail);
    match filtering {
        Some(NatBehaviour::None) => detail.push("nothing filters".to_owned()),
        Some(f) => detail.push(format!("filtering {}", f.as_str())),
        None => {}
    }
    detail.push(match hairpinning {
        Some(true) => format!("a packet to {x1} came back: hairpinning works"),
        Some(false) => format!("a packet to {x1} did not come back: no hairpinning"),
        None => "hairpinning not tested (out of time, or no way to send)".to_owned(),
    });
    Ok(NatReport {
        mapping,
        filtering,
        hairpinning,
        mapped: Some(x1),
        detail: detail.join("; "),
    })
}

type Found = Result<(Option<NatBehaviour>, Option<String>), Failure>;

/// RFC 5780 §4.3: the mapped address towards the alternate IP (primary
/// port), then towards the alternate IP and port, against `x1`.
async fn mapping_test(
    socket: &UdpSocket,
    primary: SocketAddr,
    other: SocketAddr,
    x1: SocketAddr,
    timing: Timing,
    deadline: Instant,
) -> Found {
    let alt_ip = SocketAddr::new(other.ip(), primary.port());
    let x2 = match mapped(socket, alt_ip, timing, deadline).await? {
        Ok(x) => x,
        Err(why) => return Ok((None, Some(format!("mapping not told: {why}")))),
    };
    if same(x2, x1) {
        return Ok((Some(NatBehaviour::EndpointIndependent), None));
    }
    let x3 = match mapped(socket, other, timing, deadline).await? {
        Ok(x) => x,
        Err(why) => return Ok((None, Some(format!("mapping not told: {why}")))),
    };
    let mapping = if same(x3, x2) {
        NatBehaviour::AddressDependent
    } else {
        NatBehaviour::AddressAndPortDependent
    };
    Ok((
        Some(mapping),
        Some(format!(
            "mapped to {x2} towards {alt_ip}, {x3} towards {other}"
        )),
    ))
}

/// The mapped address a Binding request to `to` gets, or why not.
async fn mapped(
    socket: &UdpSocket,
    to: SocketAddr,
    timing: Timing,
    deadline: Instant,
) -> Result<Result<SocketAddr, String>, Failure> {
    Ok(match binding(socket, to, None, timing, deadline).await? {
        Outcome::Success(Answer {
            mapped: Some(x), ..
        }) => Ok(x),
        Outcome::Success(_) => Err(format!("{to}'s response has no XOR-MAPPED-ADDRESS")),
        Outcome::Error(code) => Err(format!("{to} answered with error {code}")),
        Outcome::Silent => Err(format!("no answer from {to}")),
        Outcome::OutOfTime => Err("out of time".to_owned()),
        Outcome::Unsendable(why) => Err(format!("cannot send: {why}")),
    })
}

/// RFC 5780 §4.4, from a fresh socket: may the alternate address and port
/// answer (endpoint-independent)? Else the primary address from its other
/// port (address-dependent)? Else only where the request went.
async fn filtering_test(
    ip: IpAddr,
    primary: SocketAddr,
    other: SocketAddr,
    timing: Timing,
    deadline: Instant,
) -> Found {
    let socket = bind(ip).await?;
    let outcome = binding(&socket, primary, Some((true, true)), timing, deadline).await?;
    match changed(outcome, primary, true) {
        Changed::Answered => return Ok((Some(NatBehaviour::EndpointIndependent), None)),
        Changed::Unknown(why) => return Ok((None, Some(format!("filtering not told: {why}")))),
        Changed::Silent => {}
    }
    let outcome = binding(&socket, primary, Some((false, true)), timing, deadline).await?;
    Ok(match changed(outcome, primary, false) {
        Changed::Answered => (
            Some(NatBehaviour::AddressDependent),
            Some(format!(
                "{other} could not answer; {primary}'s other port could"
            )),
        ),
        Changed::Silent => (
            Some(NatBehaviour::AddressAndPortDependent),
            Some(format!(
                "neither {other} nor {primary}'s other port could answer"
            )),
        ),
        Changed::Unknown(why) => (None, Some(format!("filtering not told: {why}"))),
    })
}

enum Changed {
    Answered,
    Silent,
    Unknown(String),
}

/// What a CHANGE-REQUEST transaction to `primary` showed.
fn changed(outcome: Outcome, primary: SocketAddr, change_ip: bool) -> Changed {
    match outcome {
        Outcome::Success(a) => {
            let moved_ip = a.from.ip() != primary.ip();
            let moved_port = a.from.port() != primary.port();
            if moved_port && moved_ip == change_ip {
                Changed::Answered
            } else {
                Changed::Unknown(format!(
                    "the server answered a CHANGE-REQUEST from {}, not from the address asked",
                    a.from
                ))
            }
        }
        Outcome::Error(code) => {
            Changed::Unknown(format!("the server refused CHANGE-REQUEST (error {code})"))
        }
        Outcome::Silent => Changed::Silent,
        Outcome::OutOfTime => Changed::Unknown("out of time".to_owned()),
        Outcome::Unsendable(why) => Changed::Unknown(format!("cannot send: {why}")),
    }
}

/// RFC 5780 §4.5 in spirit: a Binding request from another local socket
/// to `first`'s mapped address `x1`; hairpinning works when `first`
/// receives it. `None` when out of time (or it cannot be sent).
async fn hairpinning(
    first: &UdpSocket,
    ip: IpAddr,
    x1: SocketAddr,
    timing: Timing,
    deadline: Instant,
) -> Result<Option<bool>, Failure> {
    let second = bind(ip).await?;
    let (tid, bytes) = binding_request(None)?;
    let mut buf = [0u8; 1500];
    for _ in 0..timing.tries {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        if second.send_to(&bytes, x1).await.is_err() {
            return Ok(None);
        }
        let wait = (Instant::now() + timing.rto).min(deadline);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(wait, first.recv_from(&mut buf)).await {
            let arrived = Message::parse(buf.get(..n).unwrap_or_default())
                .is_ok_and(|m| m.transaction_id() == tid);
            if arrived {
                return Ok(Some(true));
            }
        }
    }
    Ok((Instant::now() < deadline).then_some(false))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;

    const QUICK: Timing = Timing {
        tries: 3,
        rto: Duration::from_millis(100),
    };

    /// What the fake server simulates: the NAT in front of the client
    /// (its mapping and filtering; `None`: no NAT, nothing filters), and
    /// what the server itself does.
    #[derive(Debug, Clone, Copy)]
    struct Fake {
        mapping: NatBehaviour,
        filtering: NatBehaviour,
        /// Has an alternate address (OTHER-ADDRESS, CHANGE-REQUEST).
        alternate: bool,
        /// Answers CHANGE-REQUEST from the socket asked to, ignoring it.
        ignores_change: bool,
        /// The OTHER-ADDRESS given instead of its own alternate.
        other: Option<SocketAddr>,
    }

    const PLAIN: Fake = Fake {
        mapping: NatBehaviour::None,
        filtering: NatBehaviour::None,
        alternate: true,
        ignores_change: false,
        other: None,
    };

    /// A public address no socket listens on (so nothing hairpins).
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

    /// An RFC 5780 server on (127.0.0.1, P1), (127.0.0.1, P2),
    /// (127.0.0.2, P1), (127.0.0.2, P2), behind which `fake.mapping`
    /// reports a mapped port per destination as a NAT would allocate it,
    /// and `fake.filtering` drops the responses the NAT would. Returns
    /// the primary address.
    async fn server(fake: Fake) -> SocketAddr {
        let sockets = loop {
            let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let (p1, p2) = (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            );
            let (Ok(c), Ok(d)) = (
                UdpSocket::bind(("127.0.0.2", p1)).await,
                UdpSocket::bind(("127.0.0.2", p2)).await,
            ) else {
                continue;
            };
            break [a, b, c, d].map(Arc::new);
        };
        let addrs = sockets.clone().map(|s| s.local_addr().unwrap());
        let other = fake.other.unwrap_or(addrs[3]);
        for (index, socket) in sockets.iter().enumerate() {
            let sockets = sockets.clone();
            let socket = Arc::clone(socket);
            tokio::spawn(async move {
                let (ip_i, port_i) = (index / 2, index % 2);
                let mut buf = [0u8; 1500];
                loop {
                    let (n, src) = socket.recv_from(&mut buf).await.unwrap();
                    let Ok(msg) = Message::parse(&buf[..n]) else {
                        continue;
                    };
                    let (change_ip, change_port) = match msg.get(AttrType::CHANGE_REQUEST) {
                        Some(Ok(Attr::ChangeRequest {
                            change_ip,
                            change_port,
                        })) => (change_ip, change_port),
                        _ => (false, false),
                    };
                    let tid = msg.transaction_id();
                    let mut out = [0u8; 256];
                    if (change_ip || change_port) && !fake.alternate {
                        let mut w = MessageWriter::new(
                            &mut out,
                            MessageType::new(Method::BINDING, Class::Error),
                            tid,
                        )
                        .unwrap();
                        w.add(&Attr::ErrorCode {
                            code: turnpike_stun::ErrorCode(420),
                            reason: "Unknown Attribute",
                        })
                        .unwrap();
                        let len = w.finish();
                        socket.send_to(&out[..len], src).await.unwrap();
                        continue;
                    }
                    let (change_ip, change_port) = if fake.ignores_change {
                        (false, false)
                    } else {
                        (change_ip, change_port)
                    };
                    let passes = match fake.filtering {
                        NatBehaviour::None | NatBehaviour::EndpointIndependent => true,
                        NatBehaviour::AddressDependent => !change_ip,
                        NatBehaviour::AddressAndPortDependent => !change_ip && !change_port,
                    };
                    if !passes {
                        continue;
                    }
                    let shift = match fake.mapping {
                        NatBehaviour::None | NatBehaviour::EndpointIndependent => 0,
                        NatBehaviour::AddressDependent => 1000 * ip_i,
                        NatBehaviour::AddressAndPortDependent => 1000 * ip_i + 100 * port_i,
                    };
                    let mapped = match fake.mapping {
                        NatBehaviour::None => src,
                        _ => SocketAddr::from((
                            PUBLIC,
                            src.port().wrapping_add(u16::try_from(shift).unwrap()),
                        )),
                    };
                    let from_i =
                        (ip_i ^ usize::from(change_ip)) * 2 + (port_i ^ usize::from(change_port));
                    let mut w = MessageWriter::new(
                        &mut out,
                        MessageType::new(Method::BINDING, Class::Success),
                        tid,
                    )
                    .unwrap();
                    w.add(&Attr::XorMappedAddress(mapped)).unwrap();
                    w.add(&Attr::ResponseOrigin(addrs[from_i])).unwrap();
                    if fake.alternate {
                        w.add(&Attr::OtherAddress(other)).unwrap();
                    }
                    w.fingerprint().unwrap();
                    let len = w.finish();
                    sockets[from_i].send_to(&out[..len], src).await.unwrap();
                }
            });
        }
        addrs[0]
    }

    async fn run(fake: Fake) -> NatReport {
        let primary = server(fake).await;
        classify_with(primary, Instant::now() + Duration::from_secs(10), QUICK)
            .await
            .unwrap()
    }

    use NatBehaviour::{AddressAndPortDependent, AddressDependent, EndpointIndependent};

    #[tokio::test]
    async fn no_nat_no_filter_hairpins() {
        let r = run(PLAIN).await;
        assert_eq!(r.mapping, Some(NatBehaviour::None));
        assert_eq!(r.filtering, Some(NatBehaviour::None));
        assert_eq!(r.hairpinning, Some(true));
        let mapped = r.mapped.unwrap();
        assert_eq!(mapped.ip(), IpAddr::from([127, 0, 0, 1]));
        assert!(r.detail.contains("no NAT"), "{}", r.detail);
    }

    #[tokio::test]
    async fn no_nat_behind_a_stateful_firewall() {
        let r = run(Fake {
            filtering: AddressAndPortDependent,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(NatBehaviour::None));
        assert_eq!(r.filtering, Some(AddressAndPortDependent));
    }

    #[tokio::test]
    async fn endpoint_independent_nat() {
        let r = run(Fake {
            mapping: EndpointIndependent,
            filtering: EndpointIndependent,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(EndpointIndependent));
        assert_eq!(r.filtering, Some(EndpointIndependent));
        assert_eq!(r.hairpinning, Some(false));
        assert_eq!(r.mapped.unwrap().ip(), IpAddr::from(PUBLIC));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mapping"], "endpoint-independent");
        assert_eq!(v["hairpinning"], false);
    }

    #[tokio::test]
    async fn address_dependent_nat() {
        let r = run(Fake {
            mapping: AddressDependent,
            filtering: AddressDependent,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(AddressDependent));
        assert_eq!(r.filtering, Some(AddressDependent));
        assert_eq!(r.hairpinning, Some(false));
    }

    #[tokio::test]
    async fn address_and_port_dependent_nat() {
        let r = run(Fake {
            mapping: AddressAndPortDependent,
            filtering: AddressAndPortDependent,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(AddressAndPortDependent));
        assert_eq!(r.filtering, Some(AddressAndPortDependent));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mapping"], "address-and-port-dependent");
        assert_eq!(v["filtering"], "address-and-port-dependent");
    }

    #[tokio::test]
    async fn mixed_mapping_and_filtering() {
        let r = run(Fake {
            mapping: EndpointIndependent,
            filtering: AddressAndPortDependent,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(EndpointIndependent));
        assert_eq!(r.filtering, Some(AddressAndPortDependent));
    }

    #[tokio::test]
    async fn without_an_alternate_address_only_the_nat_and_hairpinning_show() {
        let r = run(Fake {
            mapping: EndpointIndependent,
            alternate: false,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, None);
        assert_eq!(r.filtering, None);
        assert_eq!(r.hairpinning, Some(false));
        assert!(r.mapped.is_some());
        assert!(r.detail.contains("no alternate address"), "{}", r.detail);

        let r = run(Fake {
            alternate: false,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(NatBehaviour::None));
        assert_eq!(r.filtering, None);
        assert_eq!(r.hairpinning, Some(true));
        assert!(
            r.detail.contains("filtering behaviour cannot be told"),
            "{}",
            r.detail
        );
    }

    #[tokio::test]
    async fn a_server_ignoring_change_request_tells_no_filtering() {
        let r = run(Fake {
            mapping: EndpointIndependent,
            ignores_change: true,
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, Some(EndpointIndependent));
        assert_eq!(r.filtering, None);
        assert!(
            r.detail.contains("not from the address asked"),
            "{}",
            r.detail
        );
    }

    #[tokio::test]
    async fn an_alternate_address_that_cannot_be_sent_to_leaves_the_mapping_unknown() {
        let r = run(Fake {
            mapping: AddressDependent,
            other: Some(SocketAddr::from(([255, 255, 255, 255], 9))),
            ..PLAIN
        })
        .await;
        assert_eq!(r.mapping, None);
        assert_eq!(r.filtering, Some(NatBehaviour::EndpointIndependent));
        assert!(r.detail.contains("cannot send"), "{}", r.detail);
    }

    #[tokio::test]
    async fn a_server_answering_garbage_is_an_error_within_the_retransmissions() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let primary = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (_, client) = server.recv_from(&mut buf).await.unwrap();
                // Garbage, and a response to another transaction.
                server.send_to(&[0xFFu8; 40], client).await.unwrap();
                let mut out = [0u8; 64];
                let w = MessageWriter::new(
                    &mut out,
                    MessageType::new(Method::BINDING, Class::Success),
                    TransactionId([7; 12]),
                )
                .unwrap();
                let len = w.finish();
                server.send_to(&out[..len], client).await.unwrap();
            }
        });
        let start = Instant::now();
        let e = classify_with(primary, Instant::now() + Duration::from_secs(10), QUICK)
            .await
            .unwrap_err();
        assert_eq!(e.step, Step::Connect);
        assert!(e.detail.contains("no answer"), "{}", e.detail);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_deadline_bounds_it() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let primary = silent.local_addr().unwrap();
        let e = classify(primary, Instant::now() + Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.detail, "timed out");
    }
}

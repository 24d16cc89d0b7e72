//! STUN Binding on the responder's UDP ports (RFC 5780): the mapped
//! address, where the answer comes from, and, with `[probe]
//! alternate_address`, the other address and CHANGE-REQUEST.

use std::net::{IpAddr, SocketAddr};

use turnpike_stun::attr::TypeList;
use turnpike_stun::{
    Attr, AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method,
};

/// Where the RFC 5780 sockets are: (address, P1), (address, P2) and, with
/// an alternate address, (alternate, P1), (alternate, P2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) address: IpAddr,
    pub(crate) alternate: Option<IpAddr>,
    /// The first port of the range.
    pub(crate) p1: u16,
    /// The second, if the range has one.
    pub(crate) p2: Option<u16>,
}

impl Layout {
    /// With an alternate address: the four sockets' (other IP, other
    /// port) pair for `local`, if `local` is one of them.
    fn flip(&self, local: SocketAddr) -> Option<(IpAddr, u16, IpAddr, u16)> {
        let alternate = self.alternate?;
        let p2 = self.p2?;
        let ip = local.ip();
        let other_ip = if ip == self.address {
            alternate
        } else if ip == alternate {
            self.address
        } else {
            return None;
        };
        let other_port = match local.port() {
            p if p == self.p1 => p2,
            p if p == p2 => self.p1,
            _ => return None,
        };
        Some((ip, local.port(), other_ip, other_port))
    }

    /// OTHER-ADDRESS for a request that came to `local`: the address that
    /// differs in both IP and port; `None` without an alternate address.
    pub(crate) fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        match self.flip(local) {
            Some((_, _, ip, port)) => Some(SocketAddr::new(ip, port)),
            None => Some(SocketAddr::new(self.alternate?, self.p2?)),
        }
    }

    /// Where a response to a request that came to `local` is sent from,
    /// with CHANGE-REQUEST's flags; `None` when it cannot be honoured.
    pub(crate) fn changed(
        &self,
        local: SocketAddr,
        change_ip: bool,
        change_port: bool,
    ) -> Option<SocketAddr> {
        if !change_ip && !change_port {
            return Some(local);
        }
        let (ip, port, other_ip, other_port) = self.flip(local)?;
        Some(SocketAddr::new(
            if change_ip { other_ip } else { ip },
            if change_port { other_port } else { port },
        ))
    }
}

/// What to do with a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Send the first `len` bytes of the output, from the socket bound to
    /// `from`.
    Send { from: SocketAddr, len: usize },
    /// Nothing to answer (an indication, say).
    Ignore,
}

/// Not a STUN message a responder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// The answer to `bytes`, received on `local` from `from`, written into
/// `out`.
pub(crate) fn answer(
    bytes: &[u8],
    from: SocketAddr,
    local: SocketAddr,
    layout: &Layout,
    out: &mut [u8],
) -> Result<Answer, Malformed> {
    let msg = Message::parse(bytes).map_err(|_| Malformed)?;
    if msg.method() != Method::BINDING {
        return Err(Malformed);
    }
    match msg.class() {
        Class::Request => {}
        Class::Indication => return Ok(Answer::Ignore),
        Class::Success | Class::Error => return Err(Malformed),
    }
    let tid = msg.transaction_id();
    let unknown: Vec<u8> = msg
        .unknown_comprehension_required()
        .iter()
        .flat_map(|t| t.to_be_bytes())
        .collect();
    if !unknown.is_empty() {
        return unknown_attributes(&msg, &unknown, local, out);
    }
    let (change_ip, change_port) = match msg.get(AttrType::CHANGE_REQUEST) {
        None => (false, false),
        Some(Ok(Attr::ChangeRequest {
            change_ip,
            change_port,
        })) => (change_ip, change_port),
        Some(_) => {
            let typ = MessageType::new(Method::BINDING, Class::Error);
            let mut w = MessageWriter::new(out, typ, tid).map_err(|_| Malformed)?;
            w.add(&Attr::ErrorCode {
                code: ErrorCode(400),
                reason: "Bad Request",
            })
            .map_err(|_| Malformed)?;
            w.fingerprint().map_err(|_| Malformed)?;
            return Ok(Answer::Send {
                from: local,
                len: w.finish(),
            });
        }
    };
    let Some(origin) = layout.changed(local, change_ip, change_port) else {
        // RFC 5780 §7.2: a server that cannot change as asked answers 420.
        return unknown_attributes(&msg, &AttrType::CHANGE_REQUEST.0.to_be_bytes(), local, out);
    };
    let typ = MessageType::new(Method::BINDING, Class::Success);
    let mut w = MessageWriter::new(out, typ, tid).map_err(|_| Malformed)?;
    w.add(&Attr::XorMappedAddress(from))
        .map_err(|_| Malformed)?;
    w.add(&Attr::ResponseOrigin(origin))
        .map_err(|_| Malformed)?;
    if let Some(other) = layout.other_address(local) {
        w.add(&Attr::OtherAddress(other)).map_err(|_| Malformed)?;
    }
    w.fingerprint().map_err(|_| Malformed)?;
    Ok(Answer::Send {
        from: origin,
        len: w.finish(),
    })
}

/// 420 (Unknown Attribute) listing `types` (in wire form).
fn unknown_attributes(
    msg: &Message<'_>,
    types: &[u8],
    local: SocketAddr,
    out: &mut [u8],
) -> Result<Answer, Malformed> {
    let list = TypeList::new(types).map_err(|_| Malformed)?;
    let typ = MessageType::new(Method::BINDING, Class::Error);
    let mut w = MessageWriter::new(out, typ, msg.transaction_id()).map_err(|_| Malformed)?;
    w.add(&Attr::ErrorCode {
        code: ErrorCode::UNKNOWN_ATTRIBUTE,
        reason: "Unknown Attribute",
    })
    .map_err(|_| Malformed)?;
    w.add(&Attr::UnknownAttributes(list))
        .map_err(|_| Malformed)?;
    w.fingerprint().map_err(|_| Malformed)?;
    Ok(Answer::Send {
        from: local,
        len: w.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_stun::TransactionId;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const WITH: Layout = Layout {
        address: IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        alternate: Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2))),
        p1: 5000,
        p2: Some(5001),
    };
    const WITHOUT: Layout = Layout {
        alternate: None,
        ..WITH
    };

    fn binding(attrs: &[Attr<'_>]) -> Vec<u8> {
        let mut buf = [0u8; 200];
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([9; 12])).unwrap();
        for a in attrs {
            w.add(a).unwrap();
        }
        let n = w.finish();
        buf[..n].to_vec()
    }

    fn attrs(out: &[u8]) -> (Class, Vec<Attr<'_>>) {
        let m = Message::parse(out).unwrap();
        assert_eq!(m.transaction_id(), TransactionId([9; 12]));
        let list = m
            .attributes()
            .map(|raw| Attr::decode(raw, &m.transaction_id()).unwrap())
            .filter(|a| !matches!(a, Attr::Fingerprint(_)))
            .collect();
        (m.class(), list)
    }

    #[test]
    fn binding_reports_mapped_origin_and_other() {
        let client = sa("198.51.100.7:4000");
        let mut out = [0u8; 200];
        let local = sa("192.0.2.1:5000");
        let got = answer(&binding(&[]), client, local, &WITH, &mut out).unwrap();
        let Answer::Send { from, len } = got else {
            panic!("{got:?}")
        };
        assert_eq!(from, local);
        let (class, list) = attrs(&out[..len]);
        assert_eq!(class, Class::Success);
        assert_eq!(
            list,
            [
                Attr::XorMappedAddress(client),
                Attr::ResponseOrigin(local),
                Attr::OtherAddress(sa("192.0.2.2:5001")),
            ]
        );
        // Without an alternate: no OTHER-ADDRESS.
        let Answer::Send { len, .. } =
            answer(&binding(&[]), client, local, &WITHOUT, &mut out).unwrap()
        else {
            panic!()
        };
        assert_eq!(attrs(&out[..len]).1.len(), 2);
    }

    #[test]
    fn change_request_picks_the_socket_or_gets_420() {
        let client = sa("198.51.100.7:4000");
        let mut out = [0u8; 200];
        for (local, ip, port, want) in [
            ("192.0.2.1:5000", true, false, "192.0.2.2:5000"),
            ("192.0.2.1:5000", false, true, "192.0.2.1:5001"),
            ("192.0.2.1:5000", true, true, "192.0.2.2:5001"),
            ("192.0.2.2:5001", true, false, "192.0.2.1:5001"),
            ("192.0.2.2:5001", false, true, "192.0.2.2:5000"),
            ("192.0.2.1:5007", false, false, "192.0.2.1:5007"),
        ] {
            let req = binding(&[Attr::ChangeRequest {
                change_ip: ip,
                change_port: port,
            }]);
            let Answer::Send { from, len } =
                answer(&req, client, sa(local), &WITH, &mut out).unwrap()
            else {
                panic!()
            };
            assert_eq!(from, sa(want), "{local} {ip} {port}");
            let (class, list) = attrs(&out[..len]);
            assert_eq!(class, Class::Success);
            assert_eq!(list[1], Attr::ResponseOrigin(sa(want)));
        }
        let change = binding(&[Attr::ChangeRequest {
            change_ip: true,
            change_port: false,
        }]);
        for (layout, local) in [(WITHOUT, "192.0.2.1:5000"), (WITH, "192.0.2.1:5007")] {
            let Answer::Send { from, len } =
                answer(&change, client, sa(local), &layout, &mut out).unwrap()
            else {
                panic!()
            };
            assert_eq!(from, sa(local));
            let (class, list) = attrs(&out[..len]);
            assert_eq!(class, Class::Error);
            assert!(matches!(
                list[0],
                Attr::ErrorCode {
                    code: ErrorCode::UNKNOWN_ATTRIBUTE,
                    ..
                }
            ));
            let Attr::UnknownAttributes(types) = list[1] else {
                panic!("{list:?}")
            };
            assert_eq!(types.iter().collect::<Vec<_>>(), [AttrType::CHANGE_REQUEST]);
        }
    }

    #[test]
    fn anything_else_is_malformed_or_ignored() {
        let mut out = [0u8; 200];
        let client = sa("198.51.100.7:4000");
        let local = sa("192.0.2.1:5000");
        assert_eq!(
            answer(b"GET / HTTP/1.1", client, local, &WITH, &mut out),
            Err(Malformed)
        );
        let mut req = binding(&[]);
        req[1] = 0x11; // an indication
        assert_eq!(
            answer(&req, client, local, &WITH, &mut out),
            Ok(Answer::Ignore)
        );
        req[1] = 0x03; // Allocate
        assert_eq!(answer(&req, client, local, &WITH, &mut out), Err(Malformed));
        let full = binding(&[Attr::ChangeRequest {
            change_ip: true,
            change_port: true,
        }]);
        for cut in 0..full.len() {
            let _ = answer(&full[..cut], client, local, &WITH, &mut out);
        }
        assert_eq!(
            answer(&full, client, local, &WITH, &mut [0u8; 30]),
            Err(Malformed),
            "no room: no answer, no panic"
        );
    }
}

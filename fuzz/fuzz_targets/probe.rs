//! What the probe responder reads from anyone: probe messages (the
//! `turnpike-probe` wire format) and STUN Binding on its UDP ports
//! (RFC 5780). A request that parses encodes back to itself; its
//! immediate reply is never larger than it; a reply that parses encodes
//! back to itself; a train packet is the length asked. A STUN answer is
//! STUN for the request's transaction, sent from where the request came
//! or from one of the RFC 5780 sockets (only with an alternate address),
//! and a success names the request's source.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use turnpike_probe as wire;
use turnpike_server::fuzzing::binding_answer;
use turnpike_stun::{Attr, AttrType, Class, Message};

const P1: u16 = 50_000;
const P2: u16 = 50_001;

/// The input: five bytes saying where the datagram came from and which
/// socket received it, then the datagram. Read by hand, so that a seed is
/// those five bytes and a real message.
#[derive(Debug)]
struct Input<'a> {
    v6: bool,
    from_port: u16,
    /// Which socket received it: 0 (address, P1), 1 (address, P2),
    /// 2 (alternate, P1), 3 (alternate, P2), else (address, P1 + 5).
    socket: u8,
    alternate: bool,
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Option<Self> {
        let (&[v6, hi, lo, socket, alternate], bytes) = data.split_first_chunk::<5>()?;
        Some(Self {
            v6: v6 & 1 == 1,
            from_port: u16::from_be_bytes([hi, lo]),
            socket,
            alternate: alternate & 1 == 1,
            bytes,
        })
    }
}

fn probe(bytes: &[u8], from: SocketAddr) {
    if let Ok(r) = wire::parse_request(bytes) {
        assert!((wire::MIN_REQUEST_LEN..=wire::MAX_LEN).contains(&bytes.len()));
        let mut again = vec![0u8; bytes.len()];
        let n =
            wire::encode_request(&r, bytes.len(), &mut again).expect("a parsed request encodes");
        assert_eq!(wire::parse_request(&again[..n]), Ok(r));
        let len = u16::try_from(bytes.len()).expect("at most MAX_LEN");
        let reply = wire::Reply::to(&r, len, from, 1);
        let mut out = [0u8; wire::MAX_LEN];
        let m = wire::encode_reply(&reply, &mut out).expect("an immediate reply encodes");
        assert!(m <= bytes.len(), "a reply larger than its request");
        assert_eq!(wire::parse_reply(&out[..m]), Ok(reply));
        if let wire::Kind::Train(t) = r.kind {
            let p = wire::Reply::train_packet(&r, &t, len, from, 7, 9);
            let m = wire::encode_reply(&p, &mut out).expect("a train packet encodes");
            assert_eq!(m, usize::from(t.len).max(wire::reply_header_len(&from)));
            assert_eq!(wire::parse_reply(&out[..m]), Ok(p));
        }
    }
    if let Ok(reply) = wire::parse_reply(bytes) {
        assert_eq!(reply.len(), bytes.len());
        let mut out = [0u8; wire::MAX_LEN];
        // A reply that claims a request shorter than itself parses, but
        // is never written.
        if let Ok(m) = wire::encode_reply(&reply, &mut out) {
            assert_eq!(m, bytes.len());
            assert_eq!(wire::parse_reply(&out[..m]), Ok(reply));
        }
    }
}

fn stun(input: &Input<'_>, from: SocketAddr, address: IpAddr, other: IpAddr) {
    let alternate = input.alternate.then_some(other);
    let local = match input.socket {
        0 => SocketAddr::new(address, P1),
        1 => SocketAddr::new(address, P2),
        2 => SocketAddr::new(other, P1),
        3 => SocketAddr::new(other, P2),
        _ => SocketAddr::new(address, P1 + 5),
    };
    let mut out = [0u8; 1500];
    let Some((origin, n)) = binding_answer(
        input.bytes,
        from,
        local,
        address,
        alternate,
        P1,
        Some(P2),
        &mut out,
    ) else {
        return;
    };
    let request = Message::parse(input.bytes).expect("only a STUN request is answered");
    let answer = Message::parse(out.get(..n).expect("within the buffer")).expect("STUN");
    assert_eq!(answer.transaction_id(), request.transaction_id());
    assert_eq!(answer.method(), request.method());
    let sockets = [
        SocketAddr::new(address, P1),
        SocketAddr::new(address, P2),
        SocketAddr::new(other, P1),
        SocketAddr::new(other, P2),
    ];
    if alternate.is_none() || !sockets.contains(&local) {
        assert_eq!(origin, local, "changed without the RFC 5780 sockets");
    } else {
        assert!(sockets.contains(&origin), "sent from {origin}");
    }
    if answer.class() == Class::Success {
        match answer.get(AttrType::XOR_MAPPED_ADDRESS) {
            Some(Ok(Attr::XorMappedAddress(mapped))) => assert_eq!(mapped, from),
            other => panic!("a success without the mapped address: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else {
        return;
    };
    let (address, other, from_ip): (IpAddr, IpAddr, IpAddr) = if input.v6 {
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7).into(),
        )
    } else {
        (
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(192, 0, 2, 2).into(),
            Ipv4Addr::new(198, 51, 100, 7).into(),
        )
    };
    let from = SocketAddr::new(from_ip, input.from_port);
    probe(input.bytes, from);
    stun(&input, from, address, other);
});

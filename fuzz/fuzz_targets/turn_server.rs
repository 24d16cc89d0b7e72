//! The TURN state machine fed arbitrary input from clients and peers, with
//! simulated time, before and after a valid authentication.
//!
//! Besides "no panic", it checks what must hold whatever a stranger sends:
//! - every answer is a well-formed STUN message for the request's
//!   transaction, and answers to unsigned requests stay small (no
//!   amplification);
//! - nothing is ever relayed to a peer the policy refuses (SECURITY.md §A);
//! - once every lifetime has passed, no allocation is left.
//!
//! Signed requests are built by the target from the fuzzer's attributes, so
//! the fuzzer reaches the code behind the integrity check; the client takes
//! the nonce of each 401 or 438, as a real one does.

#![no_main]

#[path = "../../crates/turn/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Harness, Sent, udp};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use turnpike_turn::stun::{Attr, AttrType, Class, Message, MessageType, MessageWriter, Method};
use turnpike_turn::{Event, FiveTuple, Limits, Transport};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Allocate (with a channel and a permission) as alice first.
    authenticate_first: bool,
    actions: Vec<Action>,
}

#[derive(Debug, Arbitrary)]
enum Action {
    /// Raw bytes from one of a few client transport addresses.
    Raw { from: u8, bytes: Vec<u8> },
    /// A request from alice, signed with her key and latest nonce; the
    /// fuzzer's attributes come before the credentials.
    Signed {
        method: u16,
        attrs: Vec<(u16, Vec<u8>)>,
        fingerprint: bool,
    },
    /// A datagram from a peer to the relay of the n-th allocation made.
    Peer {
        allocation: u8,
        from: u8,
        bytes: Vec<u8>,
    },
    /// Time passes (and the timer runs).
    Advance { millis: u32 },
}

const PEERS: [&str; 4] = [
    "93.184.216.34:40000",
    "93.184.216.34:40001",
    "[2606:2800:220:1::1]:40000",
    "10.0.0.1:50001",
];

fn tuple(from: u8) -> FiveTuple {
    let (transport, client) = match from % 4 {
        0 => (Transport::Udp, "198.51.100.7:5000"),
        1 => (Transport::Udp, "198.51.100.8:6000"),
        2 => (Transport::Tcp, "198.51.100.7:5001"),
        _ => (Transport::Udp, "[2001:db8::7]:5000"),
    };
    FiveTuple {
        transport,
        client: client.parse().expect("an address"),
        ..udp("198.51.100.7:5000")
    }
}

/// Checks one answer to `request`.
fn check_answer(h: &mut Harness, request: &[u8], signed: bool, sent: &Sent) {
    match sent {
        Sent::Reply(bytes) => {
            let reply = Message::parse(bytes).expect("an answer is a STUN message");
            assert_eq!(reply.len(), bytes.len());
            if let Ok(req) = Message::parse(request) {
                assert_eq!(reply.transaction_id(), req.transaction_id());
                assert_eq!(reply.method(), req.method());
            }
            if !signed {
                assert!(
                    bytes.len() <= 300,
                    "{} bytes to an unsigned request",
                    bytes.len()
                );
            }
        }
        Sent::ToPeer { relay, peer, .. } => {
            let relays = h.server.relays_mut().bound.clone();
            let policy = &h.server.shared().config().policy;
            assert!(
                policy
                    .check(*peer, Some(*relay), |a| relays.contains(&a))
                    .is_ok(),
                "relayed to {peer}, which the policy refuses"
            );
        }
        Sent::Nothing | Sent::Connect { .. } | Sent::Bind { .. } => {}
    }
}

fn signed(alice: &mut Client, method: u16, attrs: &[(u16, Vec<u8>)], fingerprint: bool) -> Vec<u8> {
    let nonce = alice.nonce.clone().unwrap_or_default();
    let key = alice.key();
    let mut buf = vec![0u8; 4096];
    let Some(method) = Method::new(method & 0x0FFF) else {
        return Vec::new();
    };
    let typ = MessageType::new(method, Class::Request);
    let tid = alice.tid();
    let Ok(mut w) = MessageWriter::new(&mut buf, typ, tid) else {
        return Vec::new();
    };
    for (typ, value) in attrs {
        let _ = w.add(&Attr::Other {
            typ: AttrType(*typ),
            value,
        });
    }
    let _ = w.add(&Attr::Username(&alice.username));
    let _ = w.add(&Attr::Realm(common::REALM));
    let _ = w.add(&Attr::Nonce(&nonce));
    let _ = w.message_integrity(key.as_bytes());
    if fingerprint {
        let _ = w.fingerprint();
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        unauthenticated_per_second: 0,
        allocations_per_user: 4,
        permissions_per_allocation: 8,
        channels_per_allocation: 8,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    let mut alice = Client::new("198.51.100.7:5000", "alice", "wonderland");
    if input.authenticate_first {
        let peer: SocketAddr = PEERS[0].parse().expect("an address");
        assert!(common::is_success(&alice.allocate(&mut h)));
        assert!(common::is_success(&alice.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[Attr::ChannelNumber(0x4000), Attr::XorPeerAddress(peer)],
        )));
    }
    for action in input.actions.iter().take(64) {
        match action {
            Action::Raw { from, bytes } => {
                let sent = h.send(tuple(*from), bytes);
                let signed = Message::parse(bytes).is_ok_and(|m| m.has_integrity());
                check_answer(&mut h, bytes, signed, &sent);
            }
            Action::Signed {
                method,
                attrs,
                fingerprint,
            } => {
                let bytes = signed(&mut alice, *method, attrs, *fingerprint);
                let sent = h.send(alice.tuple, &bytes);
                check_answer(&mut h, &bytes, true, &sent);
                if let Sent::Reply(reply) = &sent
                    && let Ok(reply) = Message::parse(reply)
                    && let Some(Ok(Attr::Nonce(n))) = reply.get(AttrType::NONCE)
                {
                    alice.nonce = Some(n.to_owned());
                }
            }
            Action::Peer {
                allocation,
                from,
                bytes,
            } => {
                let ids: Vec<_> = h
                    .events
                    .iter()
                    .filter_map(|e| match e {
                        Event::AllocationCreated { id, .. } => Some(*id),
                        _ => None,
                    })
                    .collect();
                if let Some(&id) = ids.get(usize::from(*allocation) % ids.len().max(1)) {
                    let from: SocketAddr = PEERS[usize::from(*from) % PEERS.len()]
                        .parse()
                        .expect("an address");
                    if let Some((to, data)) = h.peer_datagram(id, from, bytes) {
                        assert!(data.len() >= bytes.len());
                        assert!(h.server.has_allocation(&to));
                    }
                }
            }
            Action::Advance { millis } => {
                h.advance(Duration::from_millis(u64::from(*millis % 4_000_000)));
            }
        }
    }
    // Past every lifetime (at most 3600 s), nothing is left.
    h.advance(Duration::from_secs(3601));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.shared().allocations(), 0);
});

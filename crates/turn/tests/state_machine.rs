//! The TURN state machine driven in memory with simulated time: no sockets,
//! no sleeping. Each test names the RFC rule it holds the server to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;

use common::*;
use turnpike_turn::stun::attr::{AlgorithmList, TypeList};
use turnpike_turn::stun::integrity::{LongTermKey, userhash};
use turnpike_turn::stun::{
    Attr, AttrType, Class, Family, Integrity, Message, MessageType, Method, PasswordAlgorithm,
    TransactionId, channel_data,
};
use turnpike_turn::{EndReason, Event, Limits, Output, Transport, auth};

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const PEER: &str = "93.184.216.34:40000";
const PEER2: &str = "93.184.216.35:40001";

fn allocated(h: &mut Harness, client: &str) -> Client {
    let mut c = Client::new(client, "alice", "wonderland");
    let sent = c.allocate(h);
    assert!(
        is_success(&sent),
        "allocate failed: {:?}",
        sent.error_code()
    );
    c
}

#[test]
fn binding_is_answered_without_authentication() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "", "");
    c.fingerprint = true;
    let sent = h.send(c.tuple, &c.unsigned(Method::BINDING, &[]));
    let reply = sent.reply();
    assert_eq!(
        reply.typ(),
        MessageType::new(Method::BINDING, Class::Success)
    );
    assert_eq!(
        reply.get(AttrType::XOR_MAPPED_ADDRESS),
        Some(Ok(Attr::XorMappedAddress(c.tuple.client)))
    );
    assert!(reply.has_fingerprint(), "FINGERPRINT mirrors the request");
    assert!(
        reply.get(AttrType::SOFTWARE).is_none(),
        "no SOFTWARE by default"
    );
}

#[test]
fn binding_with_rfc5780_attributes_gets_420_while_rfc5780_is_off() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "", "");
    let sent = h.send(
        c.tuple,
        &c.unsigned(
            Method::BINDING,
            &[Attr::ChangeRequest {
                change_ip: true,
                change_port: false,
            }],
        ),
    );
    assert_eq!(code(&sent), Some(420));
    let Some(Ok(Attr::UnknownAttributes(list))) = sent.reply().get(AttrType::UNKNOWN_ATTRIBUTES)
    else {
        panic!("no UNKNOWN-ATTRIBUTES");
    };
    assert_eq!(
        list.iter().collect::<Vec<_>>(),
        vec![AttrType::CHANGE_REQUEST]
    );
}

#[test]
fn allocate_without_credentials_gets_401_with_realm_nonce_and_algorithms() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = h.send(
        c.tuple,
        &c.unsigned(Method::ALLOCATE, &[Attr::RequestedTransport(17)]),
    );
    assert_eq!(code(&sent), Some(401));
    let reply = sent.reply();
    assert_eq!(reply.get(AttrType::REALM), Some(Ok(Attr::Realm(REALM))));
    let Some(Ok(Attr::Nonce(nonce))) = reply.get(AttrType::NONCE) else {
        panic!("no NONCE")
    };
    assert!(nonce.starts_with("obMatJos2"), "nonce cookie: {nonce}");
    let Some(Ok(Attr::PasswordAlgorithms(list))) = reply.get(AttrType::PASSWORD_ALGORITHMS) else {
        panic!("no PASSWORD-ALGORITHMS")
    };
    assert_eq!(
        list.iter().collect::<Vec<_>>(),
        vec![PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5]
    );
    assert!(!reply.has_integrity());
    assert_eq!(h.server.allocation_count(), 0, "nothing allocated");
}

#[test]
fn allocate_succeeds_signed_with_the_users_key() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = c.allocate(&mut h);
    assert!(is_success(&sent));
    let reply = sent.reply();
    assert_eq!(
        reply.verify_integrity(c.key().as_bytes()),
        Ok(Integrity::Sha1)
    );
    // Behind the configured 1:1 NAT the advertised address is reported.
    assert_eq!(relayed(&sent).ip().to_string(), "203.0.113.10");
    assert_eq!(lifetime(&sent), 600);
    assert_eq!(
        reply.get(AttrType::XOR_MAPPED_ADDRESS),
        Some(Ok(Attr::XorMappedAddress(c.tuple.client)))
    );
    assert!(
        matches!(&h.events[..], [Event::AllocationCreated { username, .. }] if &**username == "alice")
    );
}

#[test]
fn wrong_password_and_missing_attributes() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wrong");
    assert_eq!(code(&c.allocate(&mut h)), Some(401));
    let mut nobody = Client::new("198.51.100.7:5001", "nobody", "x");
    assert_eq!(code(&nobody.allocate(&mut h)), Some(401));

    // MESSAGE-INTEGRITY without USERNAME, REALM or NONCE is 400 (RFC 8489 §9.2.4).
    let mut c = Client::new("198.51.100.7:5002", "alice", "wonderland");
    let tid = c.tid();
    let key = c.key();
    let bytes = build(
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
        &[Attr::RequestedTransport(17), Attr::Realm(REALM)],
        Some(key.as_bytes()),
        false,
    );
    assert_eq!(code(&h.send(c.tuple, &bytes)), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn retransmitted_allocate_gets_the_same_success_and_another_gets_437() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    assert_eq!(code(&c.allocate(&mut h)), None);
    let tid = TransactionId([9; 12]);
    let mut c2 = Client::new("198.51.100.7:5001", "alice", "wonderland");
    c2.allocate(&mut h); // learn a nonce on a fresh tuple
    let mut c3 = Client::new("198.51.100.7:5002", "alice", "wonderland");
    c3.nonce = {
        let s = h.send(
            c3.tuple,
            &c3.unsigned(Method::ALLOCATE, &[Attr::RequestedTransport(17)]),
        );
        match s.reply().get(AttrType::NONCE) {
            Some(Ok(Attr::Nonce(n))) => Some(n.to_owned()),
            _ => None,
        }
    };
    let first = h.send(
        c3.tuple,
        &c3.signed_with(Method::ALLOCATE, tid, &[Attr::RequestedTransport(17)]),
    );
    let again = h.send(
        c3.tuple,
        &c3.signed_with(Method::ALLOCATE, tid, &[Attr::RequestedTransport(17)]),
    );
    assert!(is_success(&first) && is_success(&again));
    assert_eq!(relayed(&first), relayed(&again));
    let other = h.send(
        c3.tuple,
        &c3.signed(Method::ALLOCATE, &[Attr::RequestedTransport(17)]),
    );
    assert_eq!(code(&other), Some(437));
    assert_eq!(h.server.allocation_count(), 3);
}

#[test]
fn lifetime_is_clamped_and_floored() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::Lifetime(u32::MAX)],
    );
    assert_eq!(
        lifetime(&sent),
        3600,
        "LIFETIME 0xFFFFFFFF is clamped to the maximum"
    );
    let mut c = Client::new("198.51.100.7:5001", "alice", "wonderland");
    let sent = c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::Lifetime(10)],
    );
    assert_eq!(
        lifetime(&sent),
        600,
        "less than the default gets the default"
    );
}

#[test]
fn allocation_expires_exactly_at_its_lifetime() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4000),
            Attr::XorPeerAddress(peer(PEER))
        ]
    )));
    let cd = [0x40, 0x00, 0x00, 0x02, b'h', b'i'];
    // Keep the permission alive past 300 s, as a client would.
    h.advance(secs(290));
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    h.advance(secs(309)); // 599 s
    assert!(matches!(h.send(c.tuple, &cd), Sent::ToPeer { .. }));
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::AllocationEnded { .. }))
    );
    // At 600 s the allocation is gone, even before the timer has run.
    h.skip(secs(1));
    assert!(matches!(h.send(c.tuple, &cd), Sent::Nothing));
    assert!(h.peer_datagram(id, peer(PEER), b"x").is_none());
    h.advance(secs(0));
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::AllocationEnded { reason: EndReason::Expired, traffic, .. } if traffic.to_peer_packets == 1
    )));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.shared().allocations(), 0, "quota released");
}

#[test]
fn an_expired_allocation_frees_its_five_tuple_before_the_sweep() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    h.skip(secs(600)); // no timer run
    assert!(
        is_success(&c.allocate(&mut h)),
        "a new Allocate on the same 5-tuple"
    );
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::AllocationEnded {
            reason: EndReason::Expired,
            ..
        }
    )));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn refresh_extends_and_zero_deletes() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    h.advance(secs(500));
    let sent = c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(600)]);
    assert_eq!(lifetime(&sent), 600);
    h.advance(secs(500)); // 1000 s: alive thanks to the refresh
    assert_eq!(h.server.allocation_count(), 1);
    let sent = c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(0)]);
    assert_eq!(lifetime(&sent), 0);
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::AllocationEnded {
            reason: EndReason::Deleted,
            ..
        }
    )));
    // Without an allocation, Refresh is 437.
    assert_eq!(
        code(&c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(600)])),
        Some(437)
    );
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    assert!(is_success(&c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::Lifetime(3600)]
    )));
    let old = c.nonce.clone();
    h.advance(secs(600));
    let bytes = c.signed(Method::REFRESH, &[Attr::Lifetime(600)]);
    let sent = h.send(c.tuple, &bytes);
    assert_eq!(code(&sent), Some(438));
    let Some(Ok(Attr::Nonce(fresh))) = sent.reply().get(AttrType::NONCE) else {
        panic!("no nonce")
    };
    assert_ne!(Some(fresh.to_owned()), old);
    // The retry with the fresh nonce works.
    assert_eq!(
        lifetime(&c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(600)])),
        600
    );
}

#[test]
fn nonce_is_bound_to_the_client_address() {
    let mut h = Harness::new();
    let c = allocated(&mut h, "198.51.100.7:5000");
    let mut thief = Client::new("198.51.100.8:5000", "alice", "wonderland");
    thief.nonce = c.nonce.clone();
    let bytes = thief.signed(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    assert_eq!(code(&h.send(thief.tuple, &bytes)), Some(438));
}

#[test]
fn rest_credentials_with_two_secrets_and_expiry_checked_on_every_request() {
    let mut h = Harness::new();
    let expires = UNIX_T0 + 1000;
    let username = auth::rest_username(expires, "carol");
    for secret in [b"secret-one".as_slice(), b"secret-two"] {
        let password = auth::rest_password(secret, &username);
        let mut c = Client::new(
            if secret == b"secret-one" {
                "198.51.100.7:1"
            } else {
                "198.51.100.7:2"
            },
            &username,
            &password,
        );
        assert!(
            is_success(&c.allocate(&mut h)),
            "secret {:?}",
            std::str::from_utf8(secret)
        );
    }
    let wrong = auth::rest_password(b"not-a-secret", &username);
    assert_eq!(
        code(&Client::new("198.51.100.7:3", &username, &wrong).allocate(&mut h)),
        Some(401)
    );

    let password = auth::rest_password(b"secret-one", &username);
    let mut c = Client::new("198.51.100.7:4", &username, &password);
    assert!(is_success(&c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::Lifetime(3600)]
    )));
    // After the expiry, even a Refresh of a live allocation is refused.
    h.advance(secs(999));
    assert_eq!(lifetime(&c.call(&mut h, Method::REFRESH, &[])), 600);
    h.advance(secs(1));
    assert_eq!(code(&c.call(&mut h, Method::REFRESH, &[])), Some(401));
    assert_eq!(
        h.server.stats().auth_failures.get("expired"),
        2,
        "one per attempt"
    );

    let expired = auth::rest_username(UNIX_T0 - 1, "dave");
    let pw = auth::rest_password(b"secret-one", &expired);
    assert_eq!(
        code(&Client::new("198.51.100.7:5", &expired, &pw).allocate(&mut h)),
        Some(401)
    );
}

#[test]
fn quotas_per_user_and_in_total() {
    let limits = Limits {
        allocations: 3,
        allocations_per_user: 2,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    assert!(is_success(
        &Client::new("198.51.100.7:1", "alice", "wonderland").allocate(&mut h)
    ));
    assert!(is_success(
        &Client::new("198.51.100.7:2", "alice", "wonderland").allocate(&mut h)
    ));
    assert_eq!(
        code(&Client::new("198.51.100.7:3", "alice", "wonderland").allocate(&mut h)),
        Some(486)
    );
    assert!(is_success(
        &Client::new("198.51.100.7:4", "bob", "builder").allocate(&mut h)
    ));
    assert_eq!(
        code(&Client::new("198.51.100.7:5", "bob", "builder").allocate(&mut h)),
        Some(508)
    );
    assert_eq!(h.server.shared().allocations(), 3);
}

#[test]
fn draining_refuses_new_allocations_with_300_or_508_and_keeps_existing_ones() {
    let mut cfg = config(Limits::default(), &[]);
    let alternate: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    cfg.alternates = vec![alternate];
    let mut h = Harness::with_config(cfg);
    let mut held = allocated(&mut h, "198.51.100.7:5000");
    // An Allocate whose bytes are kept, to retransmit once draining.
    let mut again = Client::new("198.51.100.7:5001", "alice", "wonderland");
    let challenge = h.send(
        again.tuple,
        &again.unsigned(Method::ALLOCATE, &[Attr::RequestedTransport(17)]),
    );
    let Some(Ok(Attr::Nonce(nonce))) = challenge.reply().get(AttrType::NONCE) else {
        panic!("no nonce in the challenge");
    };
    again.nonce = Some(nonce.to_owned());
    let tid = again.tid();
    let original = again.signed_with(Method::ALLOCATE, tid, &[Attr::RequestedTransport(17)]);
    assert!(is_success(&h.send(again.tuple, &original)));
    h.server.shared().start_draining();
    assert!(h.server.shared().is_draining());

    // RFC 8489 §10: a newcomer is redirected, in an authenticated answer.
    let mut newcomer = Client::new("198.51.100.8:6000", "alice", "wonderland");
    let sent = newcomer.allocate(&mut h);
    assert_eq!(code(&sent), Some(300));
    let reply = sent.reply();
    assert_eq!(
        reply.get(AttrType::ALTERNATE_SERVER),
        Some(Ok(Attr::AlternateServer(alternate)))
    );
    assert!(reply.verify_integrity(newcomer.key().as_bytes()).is_ok());
    // No alternate of an IPv6 client's family: 508.
    let mut v6 = Client::new("[2001:db8::8]:6000", "alice", "wonderland");
    assert_eq!(code(&v6.allocate(&mut h)), Some(508));
    // Unauthenticated, the answer is the usual 401: nothing is said before
    // the client proves who it is.
    let mut stranger = Client::new("198.51.100.9:7000", "alice", "wrong");
    assert_eq!(code(&stranger.allocate(&mut h)), Some(401));
    assert_eq!(h.server.shared().allocations(), 2);

    // Existing allocations go on: refresh, permissions, and a
    // retransmitted Allocate still gets its success.
    assert!(is_success(&held.call(
        &mut h,
        Method::REFRESH,
        &[Attr::Lifetime(600)]
    )));
    assert!(is_success(&held.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    assert!(
        is_success(&h.send(again.tuple, &original)),
        "RFC 8656 §7.2: a retransmission"
    );
    // Deleting one frees its slot, and draining still refuses the next.
    assert!(is_success(&held.call(
        &mut h,
        Method::REFRESH,
        &[Attr::Lifetime(0)]
    )));
    assert_eq!(h.server.shared().allocations(), 1);
    assert_eq!(code(&held.allocate(&mut h)), Some(300));
}

#[test]
fn create_permission_is_all_or_nothing_and_policy_applies() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    assert_eq!(
        code(&c.call(&mut h, Method::CREATE_PERMISSION, &[])),
        Some(400)
    );
    // One allowed and one denied peer: 403, and neither is installed.
    let sent = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[
            Attr::XorPeerAddress(peer(PEER)),
            Attr::XorPeerAddress(peer("127.0.0.1:9")),
        ],
    );
    assert_eq!(code(&sent), Some(403));
    assert!(
        sent.reply().verify_integrity(c.key().as_bytes()).is_ok(),
        "errors after authentication are signed"
    );
    assert!(h.peer_datagram(id, peer(PEER), b"x").is_none());
    // Family mismatch is 443.
    let sent = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer("[2606:4700::1111]:1"))],
    );
    assert_eq!(code(&sent), Some(443));
    // A public peer gets a permission; its datagrams arrive as Data indications.
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    let (tuple, bytes) = h
        .peer_datagram(id, peer("93.184.216.34:1234"), b"hello")
        .expect("delivered");
    assert_eq!(tuple, c.tuple);
    let data = Message::parse(&bytes).unwrap();
    assert_eq!(
        data.typ(),
        MessageType::new(Method::DATA, Class::Indication)
    );
    assert_eq!(
        data.get(AttrType::DATA),
        Some(Ok(Attr::Data(b"hello".as_slice())))
    );
    assert_eq!(
        data.get(AttrType::XOR_PEER_ADDRESS),
        Some(Ok(Attr::XorPeerAddress(peer("93.184.216.34:1234"))))
    );
    // Permissions are per IP: another IP is still dropped.
    assert!(
        h.peer_datagram(id, peer("93.184.216.99:1234"), b"x")
            .is_none()
    );
    assert_eq!(
        h.server
            .stats()
            .peer_denied
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        1
    );
}

#[test]
fn another_allocation_is_a_peer_but_an_unused_relay_port_is_not() {
    let mut h = Harness::new();
    let mut a = allocated(&mut h, "198.51.100.7:5000");
    let mut b = Client::new("198.51.100.8:5000", "bob", "builder");
    let relayed_b = relayed(&b.allocate(&mut h));
    assert_eq!(relayed_b.ip().to_string(), "203.0.113.10", "advertised");
    assert!(is_success(&a.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(relayed_b)]
    )));
    // The same relay IP on a port no allocation holds is the host itself.
    for unused in ["203.0.113.10:60001", "10.0.0.1:60001"] {
        let sent = a.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[
                Attr::ChannelNumber(0x4000),
                Attr::XorPeerAddress(peer(unused)),
            ],
        );
        assert_eq!(code(&sent), Some(403), "{unused}");
    }
    // A channel to the other allocation is sent to its bound address, not
    // out through the NAT.
    assert!(is_success(&a.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attr::ChannelNumber(0x4001), Attr::XorPeerAddress(relayed_b)]
    )));
    match h.send(a.tuple, &[0x40, 0x01, 0x00, 0x01, b'x']) {
        Sent::ToPeer { peer: to, .. } => assert_eq!(
            to,
            SocketAddr::new("10.0.0.1".parse().unwrap(), relayed_b.port())
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn permission_expires_after_300_seconds() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    h.advance(secs(299));
    assert!(h.peer_datagram(id, peer(PEER), b"x").is_some());
    h.skip(secs(1));
    assert!(h.peer_datagram(id, peer(PEER), b"x").is_none());
}

#[test]
fn permission_cap_is_508() {
    let limits = Limits {
        permissions_per_allocation: 2,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let peers = ["93.184.216.1:1", "93.184.216.2:1", "93.184.216.3:1"].map(peer);
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[
            Attr::XorPeerAddress(peers[0]),
            Attr::XorPeerAddress(peers[1])
        ]
    )));
    // Refreshing existing ones is fine; a third is not.
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peers[1])]
    )));
    assert_eq!(
        code(&c.call(
            &mut h,
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(peers[2])]
        )),
        Some(508)
    );
}

#[test]
fn send_indication_needs_a_permission() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let send = |c: &mut Client| {
        let tid = c.tid();
        build(
            MessageType::new(Method::SEND, Class::Indication),
            tid,
            &[Attr::XorPeerAddress(peer(PEER)), Attr::Data(b"payload")],
            None,
            false,
        )
    };
    let bytes = send(&mut c);
    assert!(matches!(h.send(c.tuple, &bytes), Sent::Nothing));
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    let bytes = send(&mut c);
    match h.send(c.tuple, &bytes) {
        Sent::ToPeer {
            relay,
            peer: to,
            data,
        } => {
            assert_eq!(relay.ip().to_string(), "10.0.0.1");
            assert_eq!(to, peer(PEER));
            assert_eq!(data, b"payload");
        }
        other => panic!("{other:?}"),
    }
    // From another 5-tuple, nothing is relayed.
    let stranger = udp("198.51.100.9:5000");
    assert!(matches!(h.send(stranger, &bytes), Sent::Nothing));
}

#[test]
fn bandwidth_per_allocation_drops_and_counts_the_excess_each_way() {
    let limits = Limits {
        bandwidth_bytes_per_second: 10_000,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4000),
            Attr::XorPeerAddress(peer(PEER))
        ]
    )));
    let mut cd = vec![0x40, 0x00, 0x03, 0xE8];
    cd.extend([7u8; 1000]);
    // One second's worth passes at once, then nothing.
    let passed = (0..15)
        .filter(|_| matches!(h.send(c.tuple, &cd), Sent::ToPeer { .. }))
        .count();
    assert_eq!(passed, 10);
    assert_eq!(h.server.stats().over_bandwidth, [5, 0]);
    // The other direction has its own budget.
    let delivered = (0..12)
        .filter(|_| h.peer_datagram(id, peer(PEER), &[1u8; 1000]).is_some())
        .count();
    assert_eq!(delivered, 10);
    assert_eq!(h.server.stats().over_bandwidth, [5, 2]);
    // A Send indication draws on the same budget as ChannelData.
    let send = build(
        MessageType::new(Method::SEND, Class::Indication),
        c.tid(),
        &[Attr::XorPeerAddress(peer(PEER)), Attr::Data(&[0u8; 100])],
        None,
        false,
    );
    assert!(matches!(h.send(c.tuple, &send), Sent::Nothing));
    assert_eq!(h.server.stats().over_bandwidth, [6, 2]);
    // 300 ms later, 3,000 bytes more.
    h.advance(std::time::Duration::from_millis(300));
    let passed = (0..5)
        .filter(|_| matches!(h.send(c.tuple, &cd), Sent::ToPeer { .. }))
        .count();
    assert_eq!(passed, 3);
    // Only relayed packets count as relayed.
    assert_eq!(h.server.stats().traffic.to_peer_packets, 13);
    assert_eq!(h.server.stats().traffic.to_client_packets, 10);
}

#[test]
fn channels_relay_both_ways() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    for bad in [0x0000, 0x3FFF, 0x8000, 0xFFFF] {
        let sent = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[Attr::ChannelNumber(bad), Attr::XorPeerAddress(peer(PEER))],
        );
        assert_eq!(code(&sent), Some(400), "channel {bad:#x}");
    }
    assert_eq!(
        code(&c.call(&mut h, Method::CHANNEL_BIND, &[Attr::ChannelNumber(0x4001)])),
        Some(400)
    );
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4001),
            Attr::XorPeerAddress(peer(PEER))
        ]
    )));
    // Client to peer: the payload, without the header or UDP padding.
    let cd = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0x00];
    match h.send(c.tuple, &cd) {
        Sent::ToPeer { peer: to, data, .. } => {
            assert_eq!(to, peer(PEER));
            assert_eq!(data, b"abc");
        }
        other => panic!("{other:?}"),
    }
    // An unbound channel, or a length past the datagram: dropped.
    assert!(matches!(
        h.send(c.tuple, &[0x40, 0x02, 0x00, 0x01, b'x']),
        Sent::Nothing
    ));
    assert!(matches!(
        h.send(c.tuple, &[0x40, 0x01, 0x00, 0x09, b'x']),
        Sent::Nothing
    ));
    // Peer to client: ChannelData.
    let (_, bytes) = h.peer_datagram(id, peer(PEER), b"pong").unwrap();
    let cd = channel_data::parse(&bytes).unwrap();
    assert_eq!((cd.channel, cd.payload), (0x4001, b"pong".as_slice()));
    assert_eq!(bytes.len(), 8, "no padding over UDP");
    // RFC 5766's upper channels, which deployed clients use, work too.
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x7FFF),
            Attr::XorPeerAddress(peer(PEER2))
        ]
    )));
    match h.send(c.tuple, &[0x7F, 0xFF, 0x00, 0x01, b'z']) {
        Sent::ToPeer { peer: to, data, .. } => {
            assert_eq!((to, data.as_slice()), (peer(PEER2), b"z".as_slice()))
        }
        other => panic!("{other:?}"),
    }
    // A different port of the same peer IP has the permission but not the
    // channel: Data indication.
    let (_, bytes) = h
        .peer_datagram(id, peer("93.184.216.34:1"), b"pong")
        .unwrap();
    assert_eq!(Message::parse(&bytes).unwrap().method(), Method::DATA);
}

#[test]
fn channel_rebinding_rules_and_quarantine() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let bind = |c: &mut Client, h: &mut Harness, n: u16, p: &str| {
        code(&c.call(
            h,
            Method::CHANNEL_BIND,
            &[Attr::ChannelNumber(n), Attr::XorPeerAddress(peer(p))],
        ))
    };
    assert_eq!(bind(&mut c, &mut h, 0x4000, PEER), None);
    assert_eq!(bind(&mut c, &mut h, 0x4000, PEER), None, "refresh");
    assert_eq!(
        bind(&mut c, &mut h, 0x4000, PEER2),
        Some(400),
        "number bound to another peer"
    );
    assert_eq!(
        bind(&mut c, &mut h, 0x4001, PEER),
        Some(400),
        "peer bound to another number"
    );
    // Refresh the allocation so it outlives the channel.
    assert_eq!(
        lifetime(&c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(3600)])),
        3600
    );
    h.advance(secs(600)); // the channel expired...
    assert!(matches!(
        h.send(c.tuple, &[0x40, 0x00, 0x00, 0x00]),
        Sent::Nothing
    ));
    assert_eq!(
        bind(&mut c, &mut h, 0x4000, PEER2),
        Some(400),
        "...but is quarantined"
    );
    h.advance(secs(300));
    assert_eq!(
        bind(&mut c, &mut h, 0x4000, PEER2),
        None,
        "after 5 more minutes it is free"
    );
}

#[test]
fn channel_cap_is_508() {
    let limits = Limits {
        channels_per_allocation: 1,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4000),
            Attr::XorPeerAddress(peer(PEER))
        ]
    )));
    let sent = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4001),
            Attr::XorPeerAddress(peer(PEER2)),
        ],
    );
    assert_eq!(code(&sent), Some(508));
}

#[test]
fn another_user_on_the_same_five_tuple_gets_441() {
    let mut h = Harness::new();
    let alice = allocated(&mut h, "198.51.100.7:5000");
    let mut bob = Client::new("198.51.100.7:5000", "bob", "builder");
    bob.nonce = alice.nonce.clone();
    assert_eq!(code(&bob.call(&mut h, Method::REFRESH, &[])), Some(441));
    assert_eq!(
        code(&bob.call(
            &mut h,
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(peer(PEER))]
        )),
        Some(441)
    );
}

#[test]
fn transport_and_attribute_errors() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    // TCP relaying (RFC 6062) is for clients on TCP or TLS.
    assert_eq!(
        code(&c.call(&mut h, Method::ALLOCATE, &[Attr::RequestedTransport(6)])),
        Some(400)
    );
    assert_eq!(
        code(&c.call(&mut h, Method::ALLOCATE, &[Attr::RequestedTransport(132)])),
        Some(442)
    );
    assert_eq!(code(&c.call(&mut h, Method::ALLOCATE, &[])), Some(400));
    let unknown = [
        Attr::RequestedTransport(17),
        Attr::Other {
            typ: AttrType(0x7F01),
            value: b"?",
        },
    ];
    let sent = c.call(&mut h, Method::ALLOCATE, &unknown);
    assert_eq!(code(&sent), Some(420));
    assert!(sent.reply().verify_integrity(c.key().as_bytes()).is_ok());
    let token = [1u8; 8];
    let both = [
        Attr::RequestedTransport(17),
        Attr::EvenPort {
            reserve_next: false,
        },
        Attr::ReservationToken(&token),
    ];
    assert_eq!(code(&c.call(&mut h, Method::ALLOCATE, &both)), Some(400));
    let v6 = [
        Attr::RequestedTransport(17),
        Attr::RequestedAddressFamily(turnpike_turn::stun::Family::V6),
    ];
    assert_eq!(code(&c.call(&mut h, Method::ALLOCATE, &v6)), Some(440));
    assert_eq!(h.server.allocation_count(), 0);
    // Unknown methods are 400, unauthenticated.
    let sent = h.send(c.tuple, &c.unsigned(Method::new(0x0FF).unwrap(), &[]));
    assert_eq!(code(&sent), Some(400));
}

#[test]
fn even_port_reserves_the_next_port_for_a_token() {
    let mut h = Harness::new();
    let mut rtp = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = rtp.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::EvenPort { reserve_next: true },
        ],
    );
    let port = relayed(&sent).port();
    assert_eq!(port % 2, 0);
    let Some(Ok(Attr::ReservationToken(token))) = sent.reply().get(AttrType::RESERVATION_TOKEN)
    else {
        panic!("no token")
    };
    let token = *token;
    let mut rtcp = Client::new("198.51.100.7:5001", "alice", "wonderland");
    let sent = rtcp.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::ReservationToken(&token)],
    );
    assert_eq!(relayed(&sent).port(), port + 1);
    // A token is used once.
    let mut again = Client::new("198.51.100.7:5002", "alice", "wonderland");
    let sent = again.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::ReservationToken(&token)],
    );
    assert_eq!(code(&sent), Some(508));
    // And expires after 30 s.
    let mut rtp2 = Client::new("198.51.100.7:5003", "alice", "wonderland");
    let sent = rtp2.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::EvenPort { reserve_next: true },
        ],
    );
    let Some(Ok(Attr::ReservationToken(token))) = sent.reply().get(AttrType::RESERVATION_TOKEN)
    else {
        panic!()
    };
    let token = *token;
    h.advance(secs(30));
    let mut late = Client::new("198.51.100.7:5004", "alice", "wonderland");
    let sent = late.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::ReservationToken(&token)],
    );
    assert_eq!(code(&sent), Some(508));
}

#[test]
fn dont_fragment_reaches_the_relay_binder() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    assert!(is_success(&c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::DontFragment]
    )));
    assert!(h.server.relays_mut().requests.last().unwrap().dont_fragment);
}

#[test]
fn additional_ipv6_family_is_refused_inside_a_success() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = c.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::AdditionalAddressFamily(turnpike_turn::stun::Family::V6),
        ],
    );
    assert!(is_success(&sent));
    assert!(matches!(
        sent.reply().get(AttrType::ADDRESS_ERROR_CODE),
        Some(Ok(Attr::AddressErrorCode { code, .. })) if code.0 == 440
    ));
}

#[test]
fn dual_allocation_relays_both_families() {
    let mut h = Harness::new();
    h.server.relays_mut().ipv6 = true;
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = c.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::AdditionalAddressFamily(Family::V6),
        ],
    );
    let relayed = all_relayed(&sent);
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(
        relayed[0].is_ipv4() && relayed[1].is_ipv6(),
        "IPv4 first: {relayed:?}"
    );
    assert!(sent.reply().get(AttrType::ADDRESS_ERROR_CODE).is_none());
    let id = h.last_allocation();
    let (v4, v6) = (peer(PEER), peer("[2606:4700::1111]:3478"));
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(v4), Attr::XorPeerAddress(v6)]
    )));
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attr::ChannelNumber(0x4000), Attr::XorPeerAddress(v6)]
    )));
    // Each family leaves through its own relay.
    match h.send(c.tuple, &[0x40, 0x00, 0x00, 0x01, b'6']) {
        Sent::ToPeer {
            relay, peer: to, ..
        } => assert_eq!((relay, to), (relayed[1], v6)),
        other => panic!("{other:?}"),
    }
    let send = build(
        MessageType::new(Method::SEND, Class::Indication),
        c.tid(),
        &[Attr::XorPeerAddress(v4), Attr::Data(b"4")],
        None,
        false,
    );
    match h.send(c.tuple, &send) {
        Sent::ToPeer {
            relay, peer: to, ..
        } => assert_eq!((relay.ip().to_string().as_str(), to), ("10.0.0.1", v4)),
        other => panic!("{other:?}"),
    }
    // An IPv6 peer's datagram arrives on the channel.
    let (_, bytes) = h.peer_datagram(id, v6, b"from six").unwrap();
    assert_eq!(channel_data::parse(&bytes).unwrap().payload, b"from six");
    // Deleting the IPv6 half keeps the IPv4 one.
    let sent = c.call(
        &mut h,
        Method::REFRESH,
        &[Attr::Lifetime(0), Attr::RequestedAddressFamily(Family::V6)],
    );
    assert!(is_success(&sent));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(
        code(&c.call(
            &mut h,
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(v6)]
        )),
        Some(443)
    );
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(v4)]
    )));
    let sent = c.call(
        &mut h,
        Method::REFRESH,
        &[
            Attr::Lifetime(600),
            Attr::RequestedAddressFamily(Family::V6),
        ],
    );
    assert_eq!(code(&sent), Some(443), "the IPv6 half is gone");
}

#[test]
fn ipv6_only_allocation_and_family_rules() {
    let mut h = Harness::new();
    h.server.relays_mut().ipv6 = true;
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let sent = c.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::RequestedAddressFamily(Family::V6),
        ],
    );
    assert_eq!(
        all_relayed(&sent),
        vec![SocketAddr::new(
            RELAY_V6.parse().unwrap(),
            all_relayed(&sent)[0].port()
        )]
    );
    assert_eq!(
        code(&c.call(
            &mut h,
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(peer(PEER))]
        )),
        Some(443)
    );
    assert_eq!(
        code(&c.call(
            &mut h,
            Method::REFRESH,
            &[Attr::RequestedAddressFamily(Family::V4)]
        )),
        Some(443)
    );
    // Both families at once, or IPv4 as the additional one: 400.
    let mut d = Client::new("198.51.100.7:5001", "alice", "wonderland");
    let both = [
        Attr::RequestedTransport(17),
        Attr::RequestedAddressFamily(Family::V4),
        Attr::AdditionalAddressFamily(Family::V6),
    ];
    assert_eq!(code(&d.call(&mut h, Method::ALLOCATE, &both)), Some(400));
    let v4_additional = [
        Attr::RequestedTransport(17),
        Attr::AdditionalAddressFamily(Family::V4),
    ];
    assert_eq!(
        code(&d.call(&mut h, Method::ALLOCATE, &v4_additional)),
        Some(400)
    );
}

/// A client on TCP with a TCP allocation (RFC 6062).
fn tcp_allocated(h: &mut Harness, client: &str) -> Client {
    let mut c = Client::new(client, "alice", "wonderland");
    c.tuple.transport = Transport::Tcp;
    let sent = c.call(h, Method::ALLOCATE, &[Attr::RequestedTransport(6)]);
    assert!(is_success(&sent), "{:?}", sent.error_code());
    c
}

fn connection_id(bytes: &[u8]) -> u32 {
    match Message::parse(bytes).unwrap().get(AttrType::CONNECTION_ID) {
        Some(Ok(Attr::ConnectionId(id))) => id,
        other => panic!("no CONNECTION-ID: {other:?}"),
    }
}

#[test]
fn tcp_relay_connect_then_bind() {
    let mut h = Harness::new();
    let mut c = tcp_allocated(&mut h, "198.51.100.7:5000");
    // Channels and Send carry datagrams: not on a TCP allocation.
    let sent = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4000),
            Attr::XorPeerAddress(peer(PEER)),
        ],
    );
    assert_eq!(code(&sent), Some(400));
    // Connect: the server is asked to connect...
    let bytes = c.signed(Method::CONNECT, &[Attr::XorPeerAddress(peer(PEER))]);
    let Sent::Connect { relay, request } = h.send(c.tuple, &bytes) else {
        panic!("no connect")
    };
    assert_eq!(relay.ip().to_string(), "10.0.0.1");
    assert_eq!(request.peer, peer(PEER));
    // ...and the same peer again, meanwhile, is 446.
    let again = c.signed(Method::CONNECT, &[Attr::XorPeerAddress(peer(PEER))]);
    assert_eq!(code(&h.send(c.tuple, &again)), Some(446));
    // Connected: the answer carries the connection ID, signed.
    let mut out = vec![0u8; 1500];
    let len = h
        .server
        .connect_done(h.now, request.clone(), true, &mut out)
        .unwrap();
    let answer = Message::parse(&out[..len]).unwrap();
    assert_eq!(
        answer.typ(),
        MessageType::new(Method::CONNECT, Class::Success)
    );
    assert!(answer.verify_integrity(c.key().as_bytes()).is_ok());
    let id = connection_id(&out[..len]);
    assert_eq!(id, request.connection);
    // ConnectionBind on a new connection of the client's, once.
    let mut data = Client::new("198.51.100.7:5001", "alice", "wonderland");
    data.tuple.transport = Transport::Tcp;
    // Its nonce is its own (nonces are bound to the 5-tuple).
    let Sent::Bind { connection, reply } =
        data.call(&mut h, Method::CONNECTION_BIND, &[Attr::ConnectionId(id)])
    else {
        panic!("no bind")
    };
    assert_eq!(connection, id);
    assert_eq!(Message::parse(&reply).unwrap().class(), Class::Success);
    let twice = data.signed(Method::CONNECTION_BIND, &[Attr::ConnectionId(id)]);
    assert_eq!(code(&h.send(data.tuple, &twice)), Some(400));
    // Not on the control connection itself, and not by another user.
    let on_control = c.signed(Method::CONNECTION_BIND, &[Attr::ConnectionId(id)]);
    assert_eq!(code(&h.send(c.tuple, &on_control)), Some(400));
    assert_eq!(h.server.shared().tcp_connections(), 1);
    h.server.shared().connection_ended(id);
    assert_eq!(h.server.shared().tcp_connections(), 0);
}

#[test]
fn tcp_relay_failures_and_timeouts() {
    let mut h = Harness::new();
    let mut c = tcp_allocated(&mut h, "198.51.100.7:5000");
    let bytes = c.signed(Method::CONNECT, &[Attr::XorPeerAddress(peer(PEER))]);
    let Sent::Connect { request, .. } = h.send(c.tuple, &bytes) else {
        panic!("no connect")
    };
    let mut out = vec![0u8; 1500];
    let len = h
        .server
        .connect_done(h.now, request, false, &mut out)
        .unwrap();
    assert_eq!(Sent::Reply(out[..len].to_vec()).error_code(), Some(447));
    // The peer is free to try again; this time it connects but nobody
    // binds it within 30 s.
    let bytes = c.signed(Method::CONNECT, &[Attr::XorPeerAddress(peer(PEER))]);
    let Sent::Connect { request, .. } = h.send(c.tuple, &bytes) else {
        panic!("no connect")
    };
    let len = h
        .server
        .connect_done(h.now, request, true, &mut out)
        .unwrap();
    let id = connection_id(&out[..len]);
    h.advance(secs(30));
    let mut data = Client::new("198.51.100.7:5001", "alice", "wonderland");
    data.tuple.transport = Transport::Tcp;
    let sent = data.call(&mut h, Method::CONNECTION_BIND, &[Attr::ConnectionId(id)]);
    assert_eq!(code(&sent), Some(400));
    // Policy applies to Connect.
    let sent = c.call(
        &mut h,
        Method::CONNECT,
        &[Attr::XorPeerAddress(peer("127.0.0.1:80"))],
    );
    assert_eq!(code(&sent), Some(403));
    // A UDP allocation cannot Connect.
    let mut u = allocated(&mut h, "198.51.100.8:5000");
    assert_eq!(
        code(&u.call(&mut h, Method::CONNECT, &[Attr::XorPeerAddress(peer(PEER))])),
        Some(400)
    );
}

#[test]
fn tcp_relay_inbound_needs_a_permission_and_is_bound_by_its_owner() {
    let mut h = Harness::new();
    let mut c = tcp_allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    let mut out = vec![0u8; 1500];
    assert!(
        h.server
            .peer_connected(h.now, id, peer(PEER), &mut out)
            .is_none(),
        "no permission"
    );
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    let accepted = h
        .server
        .peer_connected(h.now, id, peer(PEER), &mut out)
        .unwrap();
    assert_eq!(accepted.control, c.tuple);
    let attempt = Message::parse(&out[..accepted.len]).unwrap();
    assert_eq!(
        attempt.typ(),
        MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication)
    );
    assert_eq!(
        attempt.get(AttrType::XOR_PEER_ADDRESS),
        Some(Ok(Attr::XorPeerAddress(peer(PEER))))
    );
    assert_eq!(connection_id(&out[..accepted.len]), accepted.connection);
    assert!(
        h.server
            .peer_connected(h.now, id, peer(PEER), &mut out)
            .is_none(),
        "one connection per peer address"
    );
    // Bob cannot take Alice's connection.
    let mut bob = Client::new("198.51.100.9:5000", "bob", "builder");
    bob.tuple.transport = Transport::Tcp;
    let sent = bob.call(
        &mut h,
        Method::CONNECTION_BIND,
        &[Attr::ConnectionId(accepted.connection)],
    );
    assert_eq!(code(&sent), Some(441));
    // Ending the allocation forgets its connections.
    assert_eq!(
        lifetime(&c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(0)])),
        0
    );
    assert_eq!(h.server.shared().tcp_connections(), 0);
}

#[test]
fn tcp_relay_is_off_unless_enabled() {
    let mut config = common::config(Limits::default(), &[]);
    config.tcp_relay = false;
    let mut h = Harness::with_config(config);
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    c.tuple.transport = Transport::Tcp;
    assert_eq!(
        code(&c.call(&mut h, Method::ALLOCATE, &[Attr::RequestedTransport(6)])),
        Some(442)
    );
    let bytes = c.unsigned(Method::CONNECT, &[]);
    assert_eq!(
        code(&h.send(c.tuple, &bytes)),
        Some(400),
        "an unknown method"
    );
}

#[test]
fn sha256_password_algorithm_is_negotiated() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let challenge = h.send(
        c.tuple,
        &c.unsigned(Method::ALLOCATE, &[Attr::RequestedTransport(17)]),
    );
    let Some(Ok(Attr::Nonce(nonce))) = challenge.reply().get(AttrType::NONCE) else {
        panic!()
    };
    let Some(Ok(Attr::PasswordAlgorithms(offer))) =
        challenge.reply().get(AttrType::PASSWORD_ALGORITHMS)
    else {
        panic!()
    };
    let offer = offer.as_bytes().to_vec();
    let nonce = nonce.to_owned();
    let key = LongTermKey::derive(PasswordAlgorithm::SHA256, "alice", REALM, "wonderland").unwrap();
    let request = |offer: &[u8], key: &LongTermKey| {
        let mut buf = vec![0u8; 512];
        let tid = TransactionId([5; 12]);
        let mut w = turnpike_turn::stun::MessageWriter::new(
            &mut buf,
            MessageType::new(Method::ALLOCATE, Class::Request),
            tid,
        )
        .unwrap();
        w.add(&Attr::RequestedTransport(17)).unwrap();
        w.add(&Attr::Username("alice")).unwrap();
        w.add(&Attr::Realm(REALM)).unwrap();
        w.add(&Attr::Nonce(&nonce)).unwrap();
        w.add(&Attr::PasswordAlgorithms(
            AlgorithmList::new(offer).unwrap(),
        ))
        .unwrap();
        w.add(&Attr::PasswordAlgorithm(PasswordAlgorithm::SHA256))
            .unwrap();
        w.message_integrity_sha256(key.as_bytes()).unwrap();
        let len = w.finish();
        buf.truncate(len);
        buf
    };
    // A tampered offer (MD5 only) is refused: no bid-down.
    let tampered = [0x00, 0x01, 0x00, 0x00];
    assert_eq!(code(&h.send(c.tuple, &request(&tampered, &key))), Some(400));
    let sent = h.send(c.tuple, &request(&offer, &key));
    assert!(is_success(&sent), "{:?}", sent.error_code());
    assert_eq!(
        sent.reply().verify_integrity(key.as_bytes()),
        Ok(Integrity::Sha256)
    );
    let _ = &mut c;
}

#[test]
fn userhash_identifies_a_static_user() {
    let mut h = Harness::new();
    let c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let challenge = h.send(
        c.tuple,
        &build(
            MessageType::new(Method::ALLOCATE, Class::Request),
            TransactionId([1; 12]),
            &[Attr::RequestedTransport(17)],
            None,
            false,
        ),
    );
    let Some(Ok(Attr::Nonce(nonce))) = challenge.reply().get(AttrType::NONCE) else {
        panic!()
    };
    let nonce = nonce.to_owned();
    let hash = userhash("alice", REALM);
    let bytes = build(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([2; 12]),
        &[
            Attr::RequestedTransport(17),
            Attr::Userhash(&hash),
            Attr::Realm(REALM),
            Attr::Nonce(&nonce),
        ],
        Some(c.key().as_bytes()),
        false,
    );
    assert!(is_success(&h.send(c.tuple, &bytes)));
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let limits = Limits {
        unauthenticated_per_second: 10,
        unauthenticated_burst: 20,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    let mut c = Client::new("198.51.100.7:5000", "", "");
    let answered = (0..100)
        .filter(|_| {
            let b = c.unsigned(Method::BINDING, &[]);
            matches!(h.send(c.tuple, &b), Sent::Reply(_))
        })
        .count();
    assert_eq!(answered, 20);
    assert_eq!(h.server.stats().rate_limited, 80);
    // Another source is not affected.
    let mut d = Client::new("198.51.100.8:5000", "", "");
    let b = d.unsigned(Method::BINDING, &[]);
    assert!(matches!(h.send(d.tuple, &b), Sent::Reply(_)));
}

#[test]
fn oversized_text_attributes_are_a_bad_request() {
    let mut h = Harness::new();
    let c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    // Hand-built: the writer itself refuses a USERNAME over 512 bytes.
    let mut bytes = build(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([3; 12]),
        &[
            Attr::RequestedTransport(17),
            Attr::Other {
                typ: AttrType::USERNAME,
                value: &[b'a'; 600],
            },
            Attr::Realm(REALM),
            Attr::Nonce("n"),
        ],
        Some(c.key().as_bytes()),
        false,
    );
    assert_eq!(code(&h.send(c.tuple, &bytes)), Some(400));
    // Format-string and SQL characters are just bytes.
    let name = "%s%n'; DROP TABLE users; --";
    let mut odd = Client::new("198.51.100.7:5001", name, "x");
    assert_eq!(code(&odd.allocate(&mut h)), Some(401));
    bytes.clear();
}

#[test]
fn malformed_input_is_counted_and_dropped() {
    let mut h = Harness::new();
    let t = udp("198.51.100.7:5000");
    for junk in [
        &b""[..],
        &[0x00],
        &[0xFF; 40],
        &[
            0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ] {
        assert!(matches!(h.send(t, junk), Sent::Nothing));
    }
    assert!(h.server.stats().malformed >= 3);
    // Trailing bytes after a STUN message in one datagram: not a message.
    let mut c = Client::new("198.51.100.7:5000", "", "");
    let mut b = c.unsigned(Method::BINDING, &[]);
    b.extend_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(h.send(t, &b), Sent::Nothing));
    // Attributes after MESSAGE-INTEGRITY are ignored (a LIFETIME appended
    // after signing does not count).
    let _ = TypeList::new(&[]).unwrap();
}

#[test]
fn stream_channel_data_is_padded() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    c.tuple.transport = Transport::Tcp;
    assert!(is_success(&c.allocate(&mut h)));
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attr::ChannelNumber(0x4000),
            Attr::XorPeerAddress(peer(PEER))
        ]
    )));
    let (_, bytes) = h.peer_datagram(id, peer(PEER), b"abcde").unwrap();
    assert_eq!(
        bytes,
        [
            0x40, 0x00, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0
        ]
    );
}

/// SECURITY.md §A on an IPv6 allocation: every IPv6 spelling of a denied
/// range, first and last address, and IPv4 hidden inside IPv6 (mapped,
/// compatible, NAT64, 6to4, Teredo), is refused with 403 by
/// CreatePermission, ChannelBind and Connect alike; a public IPv6 peer is
/// not.
#[test]
fn an_ipv6_allocation_refuses_every_denied_spelling() {
    const DENIED: &[&str] = &[
        "[::1]:5000",
        "[::]:5000",
        "[::ffff:127.0.0.1]:5000",
        "[::ffff:10.0.0.1]:5000",
        "[::ffff:169.254.169.254]:80",
        "[::127.0.0.1]:5000",
        "[::a9fe:a9fe]:80",
        "[64:ff9b::7f00:1]:5000",
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b:1::]:5000",
        "[64:ff9b:1:ffff:ffff:ffff:ffff:ffff]:5000",
        "[2002::]:5000",
        "[2002:7f00:1::]:5000",
        "[2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
        "[2001::]:5000",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]:5000",
        "[2001:0:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
        "[2001:db8::]:5000",
        "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
        "[100::]:5000",
        "[100::ffff:ffff:ffff:ffff]:5000",
        "[fc00::]:5000",
        "[fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
        "[fe80::]:5000",
        "[febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
        "[ff00::]:5000",
        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
    ];
    let mut h = Harness::new();
    h.server.relays_mut().ipv6 = true;
    let mut c = Client::new("[2001:db8:aa::7]:5000", "alice", "wonderland");
    c.tuple.transport = Transport::Tcp;
    let sent = c.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::RequestedAddressFamily(Family::V6),
        ],
    );
    assert!(is_success(&sent), "{:?}", sent.error_code());
    for (channel, p) in (0x4000..).zip(DENIED) {
        let p = peer(p);
        assert_eq!(
            code(&c.call(
                &mut h,
                Method::CREATE_PERMISSION,
                &[Attr::XorPeerAddress(p)]
            )),
            Some(403),
            "CreatePermission {p}"
        );
        assert_eq!(
            code(&c.call(
                &mut h,
                Method::CHANNEL_BIND,
                &[Attr::ChannelNumber(channel), Attr::XorPeerAddress(p)]
            )),
            Some(403),
            "ChannelBind {p}"
        );
        // A Send to it goes nowhere.
        let send = build(
            MessageType::new(Method::SEND, Class::Indication),
            c.tid(),
            &[Attr::XorPeerAddress(p), Attr::Data(b"x")],
            None,
            false,
        );
        assert!(matches!(h.send(c.tuple, &send), Sent::Nothing), "Send {p}");
    }
    let public = peer("[2606:2800:220:1::1]:443");
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(public)]
    )));

    // RFC 6062 Connect, on a TCP allocation of the IPv6 family.
    let mut t = Client::new("[2001:db8:aa::8]:5000", "alice", "wonderland");
    t.tuple.transport = Transport::Tcp;
    let sent = t.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(6),
            Attr::RequestedAddressFamily(Family::V6),
        ],
    );
    assert!(is_success(&sent), "{:?}", sent.error_code());
    for p in DENIED {
        let p = peer(p);
        let sent = t.call(&mut h, Method::CONNECT, &[Attr::XorPeerAddress(p)]);
        assert!(
            matches!(sent, Sent::Reply(_)) && code(&sent) == Some(403),
            "Connect {p}: {sent:?}"
        );
    }
}

/// SECURITY.md §B, RFC 8489 §14.5: what follows MESSAGE-INTEGRITY is not
/// part of the request. A LIFETIME 0 or an XOR-PEER-ADDRESS appended after
/// a valid integrity changes nothing.
#[test]
fn attributes_after_message_integrity_change_nothing() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let append = |mut bytes: Vec<u8>, attr: &[u8]| {
        bytes.extend_from_slice(attr);
        let len = u16::try_from(bytes.len() - 20).unwrap();
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        bytes
    };
    // A Refresh for 600 s with LIFETIME 0 after its integrity.
    let refresh = c.signed(Method::REFRESH, &[Attr::Lifetime(600)]);
    let refresh = append(refresh, &[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 0]);
    let sent = h.send(c.tuple, &refresh);
    assert!(is_success(&sent), "{:?}", sent.error_code());
    assert_eq!(lifetime(&sent), 600);
    assert_eq!(
        h.server.allocation_count(),
        1,
        "the appended LIFETIME 0 deleted it"
    );
    // A CreatePermission for one peer with another appended: only the
    // first is installed.
    let installed = peer(PEER);
    let appended = peer(PEER2);
    let create = c.signed(
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(installed)],
    );
    let mut xor = vec![0x00, 0x12, 0x00, 0x08, 0x00, 0x01];
    let port = appended.port() ^ 0x2112;
    xor.extend_from_slice(&port.to_be_bytes());
    let std::net::IpAddr::V4(ip) = appended.ip() else {
        unreachable!()
    };
    xor.extend_from_slice(&(u32::from(ip) ^ 0x2112_A442).to_be_bytes());
    let create = append(create, &xor);
    assert!(is_success(&h.send(c.tuple, &create)));
    let id = h.last_allocation();
    assert!(h.peer_datagram(id, installed, b"in").is_some());
    assert!(
        h.peer_datagram(id, appended, b"in").is_none(),
        "the appended peer got a permission"
    );
}

/// SECURITY.md §C: on a 5-tuple that holds an allocation (a spoofed UDP
/// source can send from it), unsigned requests get 401 and change
/// nothing.
#[test]
fn unsigned_requests_on_an_allocated_five_tuple_get_401_and_change_nothing() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    for (method, attrs) in [
        (Method::REFRESH, vec![Attr::Lifetime(0)]),
        (
            Method::CREATE_PERMISSION,
            vec![Attr::XorPeerAddress(peer(PEER))],
        ),
        (
            Method::CHANNEL_BIND,
            vec![
                Attr::ChannelNumber(0x4000),
                Attr::XorPeerAddress(peer(PEER)),
            ],
        ),
        (Method::ALLOCATE, vec![Attr::RequestedTransport(17)]),
    ] {
        let bytes = c.unsigned(method, &attrs);
        assert_eq!(code(&h.send(c.tuple, &bytes)), Some(401), "{method:?}");
    }
    assert_eq!(h.server.allocation_count(), 1);
    assert!(
        h.peer_datagram(id, peer(PEER), b"x").is_none(),
        "a permission was installed"
    );
    // The channel was not bound: ChannelData on it goes nowhere.
    assert!(matches!(
        h.send(c.tuple, &[0x40, 0x00, 0x00, 0x01, b'x', 0, 0, 0]),
        Sent::Nothing
    ));
}

/// SECURITY.md §A for inbound TCP peers (RFC 6062): a permission is per
/// IP, so a permission for another allocation's relayed address must not
/// let in a connection from another port of that IP (an unused relay
/// port, or a listener); the policy refuses it.
#[test]
fn tcp_relay_inbound_peer_is_checked_by_the_policy_as_well_as_the_permission() {
    let mut h = Harness::new();
    let mut other = Client::new("198.51.100.8:6000", "bob", "builder");
    let relayed_b = relayed(&other.allocate(&mut h));
    let mut c = tcp_allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(relayed_b)]
    )));
    let mut out = vec![0u8; 1500];
    let denied_before: u64 = h.server.stats().peer_denied.iter().map(|(_, n)| n).sum();
    for from in [
        SocketAddr::new(relayed_b.ip(), relayed_b.port() + 1000),
        SocketAddr::new(relayed_b.ip(), 3478),
    ] {
        assert!(
            h.server.peer_connected(h.now, id, from, &mut out).is_none(),
            "a connection from {from} was let in"
        );
    }
    let denied: u64 = h.server.stats().peer_denied.iter().map(|(_, n)| n).sum();
    assert_eq!(
        denied,
        denied_before + 2,
        "{:?}",
        h.server.stats().peer_denied
    );
    // From the relayed address itself, it is let in.
    assert!(
        h.server
            .peer_connected(h.now, id, relayed_b, &mut out)
            .is_some()
    );
}

/// SECURITY.md §A, "the server's own IP addresses, other ports": an own
/// address outside every built-in range is still refused on any port but
/// a live relay's, unless an explicit `allow` range covers it.
#[test]
fn the_servers_own_public_address_is_refused_unless_allowed() {
    let own: std::net::IpAddr = "93.184.216.10".parse().unwrap();
    let build_config = |allow: &[&str]| {
        let mut cfg = config(Limits::default(), allow);
        let own_ips = vec![
            own,
            "10.0.0.1".parse().unwrap(),
            "192.0.2.200".parse().unwrap(),
        ];
        cfg.policy = turnpike_turn::policy::PeerPolicy::new(turnpike_turn::policy::PolicyConfig {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: Vec::new(),
            own_ips,
            listeners: vec!["0.0.0.0:3478".parse().unwrap()],
            relay_ips: vec!["10.0.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap()],
        });
        cfg
    };
    for (allow, expected) in [(&[][..], Some(403)), (&["93.184.216.10/32"][..], None)] {
        let mut h = Harness::with_config(build_config(allow));
        let mut c = allocated(&mut h, "198.51.100.7:5000");
        for port in [22, 443, 5432] {
            let sent = c.call(
                &mut h,
                Method::CREATE_PERMISSION,
                &[Attr::XorPeerAddress(SocketAddr::new(own, port))],
            );
            assert_eq!(code(&sent), expected, "port {port}, allow {allow:?}");
        }
    }
    // A neighbour on the same /24 that is not the server's: allowed.
    let mut h = Harness::with_config(build_config(&[]));
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer("93.184.216.11:22"))]
    )));
}

/// SECURITY.md §C, RFC 8489 §9.2.4: MESSAGE-INTEGRITY with any one of
/// USERNAME, REALM and NONCE missing is 400, and nothing is allocated.
#[test]
fn integrity_without_each_credential_attribute_is_a_bad_request() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    // A valid nonce to leave out or keep.
    let challenge = h.send(
        c.tuple,
        &c.unsigned(Method::ALLOCATE, &[Attr::RequestedTransport(17)]),
    );
    let Some(Ok(Attr::Nonce(nonce))) = challenge.reply().get(AttrType::NONCE) else {
        panic!("no nonce");
    };
    let nonce = nonce.to_owned();
    let key = c.key();
    let username = Attr::Username("alice");
    let realm = Attr::Realm(REALM);
    let nonce_attr = Attr::Nonce(&nonce);
    for (missing, attrs) in [
        ("USERNAME", [realm, nonce_attr]),
        ("REALM", [username, nonce_attr]),
        ("NONCE", [username, realm]),
    ] {
        let mut all = vec![Attr::RequestedTransport(17)];
        all.extend(attrs);
        let bytes = build(
            MessageType::new(Method::ALLOCATE, Class::Request),
            c.tid(),
            &all,
            Some(key.as_bytes()),
            false,
        );
        assert_eq!(
            code(&h.send(c.tuple, &bytes)),
            Some(400),
            "without {missing}"
        );
    }
    assert_eq!(h.server.allocation_count(), 0);
    // With all three, it succeeds: the 400s were about the missing one.
    c.nonce = Some(nonce);
    let bytes = c.signed(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    assert!(is_success(&h.send(c.tuple, &bytes)));
}

/// SECURITY.md §B: a REALM or NONCE over 127 characters is refused (400),
/// and metacharacters in them are plain bytes: a wrong realm or an unknown
/// nonce, never more.
#[test]
fn oversized_or_odd_realm_and_nonce_are_refused_as_plain_bytes() {
    let mut h = Harness::new();
    let c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    let long = "r".repeat(128);
    let huge = "n".repeat(763);
    for (what, realm, nonce) in [
        ("REALM of 128", long.as_str(), "abc"),
        ("NONCE of 763", REALM, huge.as_str()),
    ] {
        let bytes = build(
            MessageType::new(Method::ALLOCATE, Class::Request),
            TransactionId([4; 12]),
            &[
                Attr::RequestedTransport(17),
                Attr::Username("alice"),
                Attr::Other {
                    typ: AttrType::REALM,
                    value: realm.as_bytes(),
                },
                Attr::Other {
                    typ: AttrType::NONCE,
                    value: nonce.as_bytes(),
                },
            ],
            Some(c.key().as_bytes()),
            false,
        );
        assert_eq!(code(&h.send(c.tuple, &bytes)), Some(400), "{what}");
    }
    for odd in [
        "%s%n%x",
        "'; DROP TABLE users; --",
        "line\nbreak",
        "obMatJos2%00",
    ] {
        let bytes = build(
            MessageType::new(Method::ALLOCATE, Class::Request),
            TransactionId([5; 12]),
            &[
                Attr::RequestedTransport(17),
                Attr::Username("alice"),
                Attr::Realm(REALM),
                Attr::Nonce(odd),
            ],
            Some(c.key().as_bytes()),
            false,
        );
        // Not a nonce this server issued: 438 with a fresh one.
        assert_eq!(code(&h.send(c.tuple, &bytes)), Some(438), "NONCE {odd:?}");
        let bytes = build(
            MessageType::new(Method::ALLOCATE, Class::Request),
            TransactionId([6; 12]),
            &[
                Attr::RequestedTransport(17),
                Attr::Username("alice"),
                Attr::Realm(odd),
                Attr::Nonce("abc"),
            ],
            Some(c.key().as_bytes()),
            false,
        );
        let code = code(&h.send(c.tuple, &bytes));
        assert!(
            matches!(code, Some(400 | 401 | 438)),
            "REALM {odd:?}: {code:?}"
        );
    }
    assert_eq!(h.server.allocation_count(), 0);
}

/// SECURITY.md §A: two XOR-PEER-ADDRESS, one allowed and one denied, in
/// either order: ChannelBind installs nothing and a Send sends nothing to
/// the denied one.
#[test]
fn two_peer_addresses_one_denied_install_and_send_nothing_denied() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    let allowed = peer(PEER);
    let denied = peer("10.1.2.3:5000");
    for (first, second) in [(allowed, denied), (denied, allowed)] {
        let sent = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[
                Attr::ChannelNumber(0x4000),
                Attr::XorPeerAddress(first),
                Attr::XorPeerAddress(second),
            ],
        );
        // The first counts (RFC 8489 §14): bound to it, or refused.
        if first == denied {
            assert_eq!(code(&sent), Some(403));
        } else {
            assert!(is_success(&sent), "{:?}", sent.error_code());
        }
        let send = build(
            MessageType::new(Method::SEND, Class::Indication),
            c.tid(),
            &[
                Attr::XorPeerAddress(first),
                Attr::XorPeerAddress(second),
                Attr::Data(b"x"),
            ],
            None,
            false,
        );
        match h.send(c.tuple, &send) {
            Sent::ToPeer { peer: to, .. } => assert_eq!(to, allowed, "sent to {to}"),
            Sent::Nothing => assert_eq!(first, denied),
            other => panic!("{other:?}"),
        }
    }
    // Nothing from the denied peer reaches the client.
    assert!(h.peer_datagram(id, denied, b"in").is_none());

    // Connect (RFC 6062) too: the first peer counts, and a denied one is
    // never connected to.
    let mut t = tcp_allocated(&mut h, "198.51.100.7:5001");
    for (first, second) in [(allowed, denied), (denied, allowed)] {
        let sent = t.call(
            &mut h,
            Method::CONNECT,
            &[Attr::XorPeerAddress(first), Attr::XorPeerAddress(second)],
        );
        match sent {
            Sent::Connect { request, .. } => {
                assert_eq!(first, allowed);
                assert_eq!(request.peer, allowed);
            }
            other => {
                assert_eq!(first, denied, "{other:?}");
                assert_eq!(code(&other), Some(403));
            }
        }
    }
}

/// SECURITY.md §C: REST credentials are checked for expiry on every
/// authenticated request, not only Allocate.
#[test]
fn expired_rest_credentials_stop_every_method() {
    let mut h = Harness::new();
    let user = auth::rest_username(UNIX_T0 + 60, "carol");
    let password = auth::rest_password(b"secret-one", &user);
    let mut c = Client::new("198.51.100.7:5000", &user, &password);
    assert!(is_success(&c.allocate(&mut h)));
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    h.advance(secs(61));
    h.server.set_wall_clock(h.now, UNIX_T0 + 61);
    for (method, attrs) in [
        (
            Method::CREATE_PERMISSION,
            vec![Attr::XorPeerAddress(peer(PEER2))],
        ),
        (
            Method::CHANNEL_BIND,
            vec![
                Attr::ChannelNumber(0x4000),
                Attr::XorPeerAddress(peer(PEER)),
            ],
        ),
        (Method::REFRESH, vec![Attr::Lifetime(600)]),
    ] {
        assert_eq!(
            code(&c.call(&mut h, method, &attrs)),
            Some(401),
            "{method:?}"
        );
    }
}

/// SECURITY.md §B: every byte sent is initialised. A peer's datagram is
/// wrapped in place in a buffer that still holds other data (the harness
/// fills it with 0xEE): the padding of the Data indication must be zeros.
/// (ChannelData on a stream: `stream_channel_data_is_padded`.)
#[test]
fn padding_around_relayed_data_is_zeroed() {
    let mut h = Harness::new();
    let mut c = allocated(&mut h, "198.51.100.7:5000");
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attr::XorPeerAddress(peer(PEER))]
    )));
    for len in [1usize, 2, 3, 5, 1001] {
        let payload = vec![0x5Au8; len];
        let (_, bytes) = h.peer_datagram(id, peer(PEER), &payload).unwrap();
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.len(), bytes.len(), "the datagram is the message");
        assert_eq!(
            msg.get(AttrType::DATA),
            Some(Ok(Attr::Data(payload.as_slice())))
        );
        let padding = (4 - len % 4) % 4;
        let tail = &bytes[bytes.len() - padding..];
        assert!(
            tail.iter().all(|&b| b == 0),
            "padding {tail:02x?} after {len} bytes"
        );
    }
}

/// SECURITY.md §B: every byte sent is initialised, in answers too. The
/// answer is written into a buffer that holds old data (0xEE): an error
/// whose reason phrase needs padding, and a success, carry none of it.
#[test]
fn answers_written_over_old_data_carry_none_of_it() {
    let mut h = Harness::new();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    // "Bad Request" is 11 bytes: its ERROR-CODE needs a byte of padding.
    let bad = c.unsigned(Method::new(0x0FF).unwrap(), &[]);
    let binding = c.unsigned(Method::BINDING, &[]);
    for request in [bad, binding] {
        let mut out = vec![0xEEu8; 1500];
        let len = match h.server.handle_client(h.now, c.tuple, &request, &mut out) {
            Output::Reply(len) => len,
            _ => panic!("no answer"),
        };
        let answer = &out[..len];
        assert!(Message::parse(answer).is_ok());
        assert!(
            !answer.contains(&0xEE),
            "old bytes in the answer: {answer:02x?}"
        );
    }
}

/// Check credentials (`turnpike_turn::check`): TURN credentials the server
/// hands to anyone, whose allocations relay to its probe responder only.
mod check_credentials {
    use super::*;

    use std::time::Duration;

    use turnpike_turn::Shared;
    use turnpike_turn::check::{self, CheckAccess};
    use turnpike_turn::policy::{PeerPolicy, PolicyConfig};

    const CHECK_KEY: &[u8] = b"the-check-key-never-leaves";
    /// The probe responder: on the relay address (bound 10.0.0.1, advertised
    /// 203.0.113.10), ports below the harness's relay ports.
    const PROBE: &str = "203.0.113.10:40000";
    const PROBE_BOUND: &str = "10.0.0.1:40005";
    const PROBE_TCP: &str = "10.0.0.1:40010";

    fn access(allocations: usize, per_credential: usize) -> CheckAccess {
        CheckAccess {
            ips: vec!["10.0.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap()],
            udp_ports: 40_000..=40_009,
            tcp_port: Some(40_010),
            allocations,
            allocations_per_credential: per_credential,
        }
    }

    fn harness_with(config: turnpike_turn::Config, access: Option<CheckAccess>) -> Harness {
        let credentials = common::credentials().with_check_key(CHECK_KEY);
        let t0 = std::time::Instant::now();
        let mut shared = Shared::new(config, credentials, [42; 32], t0);
        if let Some(access) = access {
            shared = shared.with_check_access(access);
        }
        Harness::with_shared(shared, t0)
    }

    /// Loopback allowed, as `--allow-peer 127.0.0.0/8` does in tests.
    fn harness() -> Harness {
        harness_with(
            common::config(Limits::default(), &["127.0.0.0/8"]),
            Some(access(100, 4)),
        )
    }

    /// A check client whose credentials expire `ttl` seconds after UNIX_T0.
    fn checker(client: &str, random: &str, ttl: u64) -> Client {
        let username = check::username(UNIX_T0 + ttl, random);
        let password = auth::rest_password(CHECK_KEY, &username);
        Client::new(client, &username, &password)
    }

    fn send_ind(c: &mut Client, to: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = c.tid();
        build(
            MessageType::new(Method::SEND, Class::Indication),
            tid,
            &[Attr::XorPeerAddress(to), Attr::Data(data)],
            None,
            false,
        )
    }

    fn permit(h: &mut Harness, c: &mut Client, peers: &[&str]) -> Option<u16> {
        let attrs: Vec<Attr<'_>> = peers
            .iter()
            .map(|p| Attr::XorPeerAddress(peer(p)))
            .collect();
        code(&c.call(h, Method::CREATE_PERMISSION, &attrs))
    }

    #[test]
    fn they_relay_to_the_probe_responder_and_nowhere_else() {
        let mut h = harness();
        let mut c = checker("198.51.100.7:5000", "r1", 300);
        assert!(is_success(&c.allocate(&mut h)));
        let id = h.last_allocation();
        // The responder, by its advertised or its bound address.
        assert_eq!(permit(&mut h, &mut c, &[PROBE]), None);
        assert_eq!(permit(&mut h, &mut c, &[PROBE_BOUND]), None);
        // Anything else is 403, even what the policy lets other users
        // reach: a public peer, an allowed loopback peer, the responder's
        // TCP port for a UDP allocation, a port next to the range.
        for other in [
            PEER,
            "127.0.0.1:40000",
            PROBE_TCP,
            "10.0.0.1:40011",
            "203.0.113.10:3478",
        ] {
            assert_eq!(permit(&mut h, &mut c, &[other]), Some(403), "{other}");
        }
        // All or nothing: one outsider refuses the whole request.
        let mut c2 = checker("198.51.100.7:5001", "r2", 300);
        assert!(is_success(&c2.allocate(&mut h)));
        assert_eq!(
            permit(&mut h, &mut c2, &["10.0.0.1:40001", PEER]),
            Some(403)
        );
        let data = send_ind(&mut c2, peer("10.0.0.1:40001"), b"x");
        assert!(matches!(h.send(c2.tuple, &data), Sent::Nothing));
        // ChannelBind likewise.
        let sent = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[
                Attr::ChannelNumber(0x4000),
                Attr::XorPeerAddress(peer(PEER)),
            ],
        );
        assert_eq!(code(&sent), Some(403));
        let sent = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[
                Attr::ChannelNumber(0x4001),
                Attr::XorPeerAddress(peer("203.0.113.10:40007")),
            ],
        );
        assert!(is_success(&sent));
        let mut cd = channel_data::header(0x4001, 5).unwrap().to_vec();
        cd.extend_from_slice(b"probe");
        let Sent::ToPeer { peer: to, data, .. } = h.send(c.tuple, &cd) else {
            panic!("ChannelData to the responder is relayed")
        };
        assert_eq!(to, peer("10.0.0.1:40007"), "sent to the bound address");
        assert_eq!(data, b"probe");
        // Send: the permission is per IP, but only the responder's ports
        // pass; the host's other services on that IP do not.
        let to_probe = send_ind(&mut c, peer("203.0.113.10:40003"), b"hi");
        assert!(matches!(
            h.send(c.tuple, &to_probe),
            Sent::ToPeer { peer: p, .. } if p == peer("10.0.0.1:40003")
        ));
        let stats_before = h.server.stats().peer_denied.get("not_probe");
        for port in [22, 3478, 40_010, 50_000] {
            let bytes = send_ind(&mut c, SocketAddr::new(peer(PROBE).ip(), port), b"x");
            assert!(matches!(h.send(c.tuple, &bytes), Sent::Nothing), "{port}");
        }
        assert_eq!(
            h.server.stats().peer_denied.get("not_probe"),
            stats_before + 4
        );
        // The client hears from the responder's ports only.
        assert!(
            h.peer_datagram(id, peer("10.0.0.1:40000"), b"reply")
                .is_some()
        );
        assert!(
            h.peer_datagram(id, peer("10.0.0.1:50001"), b"other")
                .is_none()
        );
        assert_eq!(h.server.shared().check_allocations(), 2);
    }

    #[test]
    fn the_key_decides_not_the_name() {
        let mut h = harness();
        // A check-shaped name signed with the operator's REST secret is an
        // ordinary REST user: unrestricted.
        let username = check::username(UNIX_T0 + 300, "operator");
        let password = auth::rest_password(b"secret-one", &username);
        let mut op = Client::new("198.51.100.7:5000", &username, &password);
        assert!(is_success(&op.allocate(&mut h)));
        assert_eq!(permit(&mut h, &mut op, &[PEER]), None);
        assert_eq!(h.server.shared().check_allocations(), 0);
        // A check-shaped name with a made-up password is refused.
        let username = check::username(UNIX_T0 + 300, "forged");
        let mut forged = Client::new("198.51.100.7:5001", &username, "guess");
        assert_eq!(code(&forged.allocate(&mut h)), Some(401));
        // The check key signs only check-shaped names.
        let plain = auth::rest_username(UNIX_T0 + 300, "mallory");
        let password = auth::rest_password(CHECK_KEY, &plain);
        let mut mallory = Client::new("198.51.100.7:5002", &plain, &password);
        assert_eq!(code(&mallory.allocate(&mut h)), Some(401));
        // Without a check access configured, check credentials allocate
        // nothing.
        let mut h = harness_with(common::config(Limits::default(), &[]), None);
        let mut c = checker("198.51.100.7:5003", "r1", 300);
        assert_eq!(code(&c.allocate(&mut h)), Some(403));
        assert_eq!(h.server.shared().allocations(), 0);
    }

    #[test]
    fn they_expire_like_rest_credentials() {
        let mut h = harness();
        let mut c = checker("198.51.100.7:5000", "r1", 60);
        let sent = c.allocate(&mut h);
        assert!(is_success(&sent));
        // The allocation ends with its credentials, whatever it asks for.
        assert_eq!(lifetime(&sent), 60);
        h.advance(Duration::from_secs(30));
        let sent = c.call(&mut h, Method::REFRESH, &[Attr::Lifetime(3600)]);
        assert_eq!(lifetime(&sent), 30);
        assert_eq!(h.server.allocation_count(), 1);
        h.advance(Duration::from_secs(31));
        assert_eq!(h.server.allocation_count(), 0, "expired with them");
        assert_eq!(code(&c.allocate(&mut h)), Some(401), "expired: 401");
        let sent = c.call(
            &mut h,
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(peer(PROBE))],
        );
        assert_eq!(code(&sent), Some(401), "checked on every request");
        let mut late = checker("198.51.100.7:5001", "r2", 60);
        assert_eq!(code(&late.allocate(&mut h)), Some(401));
        assert!(h.server.stats().auth_failures.get("expired") >= 3);
    }

    #[test]
    fn they_have_a_quota_of_their_own() {
        let limits = Limits {
            allocations: 3,
            allocations_per_user: 2,
            ..Limits::default()
        };
        let mut h = harness_with(common::config(limits, &[]), Some(access(2, 1)));
        let mut a = checker("198.51.100.7:1", "a", 300);
        assert!(is_success(&a.allocate(&mut h)));
        // One set of credentials holds `allocations_per_credential`.
        assert_eq!(
            code(&checker("198.51.100.7:2", "a", 300).allocate(&mut h)),
            Some(486)
        );
        let mut b = checker("198.51.100.7:3", "b", 300);
        assert!(is_success(&b.allocate(&mut h)));
        // The check quota is full: 486, while operator users go on.
        assert_eq!(
            code(&checker("198.51.100.7:4", "c", 300).allocate(&mut h)),
            Some(486)
        );
        assert!(is_success(
            &Client::new("198.51.100.7:5", "alice", "wonderland").allocate(&mut h)
        ));
        assert_eq!(h.server.shared().check_allocations(), 2);
        assert_eq!(h.server.shared().allocations(), 3);
        // Deleting one frees its place.
        assert_eq!(
            lifetime(&a.call(&mut h, Method::REFRESH, &[Attr::Lifetime(0)])),
            0
        );
        assert_eq!(h.server.shared().check_allocations(), 1);
        assert!(is_success(
            &checker("198.51.100.7:6", "c", 300).allocate(&mut h)
        ));
        // They count towards the total: with the server full, even a
        // check allocation within its own quota gets 508.
        assert_eq!(
            lifetime(&b.call(&mut h, Method::REFRESH, &[Attr::Lifetime(0)])),
            0
        );
        assert!(is_success(
            &Client::new("198.51.100.7:7", "alice", "wonderland").allocate(&mut h)
        ));
        assert_eq!(h.server.shared().check_allocations(), 1);
        assert_eq!(
            code(&checker("198.51.100.7:8", "d", 300).allocate(&mut h)),
            Some(508)
        );
    }

    #[test]
    fn tcp_allocations_connect_to_the_responders_tcp_port_only() {
        let mut h = harness();
        let mut c = checker("198.51.100.7:5000", "r1", 300);
        c.tuple.transport = Transport::Tcp;
        let sent = c.call(&mut h, Method::ALLOCATE, &[Attr::RequestedTransport(6)]);
        assert!(is_success(&sent), "{:?}", sent.error_code());
        let id = h.last_allocation();
        let bytes = c.signed(Method::CONNECT, &[Attr::XorPeerAddress(peer(PROBE_TCP))]);
        let Sent::Connect { request, .. } = h.send(c.tuple, &bytes) else {
            panic!("Connect to the responder's TCP port")
        };
        assert_eq!(request.peer, peer(PROBE_TCP));
        for other in [PEER, PROBE_BOUND, "127.0.0.1:40010"] {
            let bytes = c.signed(Method::CONNECT, &[Attr::XorPeerAddress(peer(other))]);
            assert_eq!(code(&h.send(c.tuple, &bytes)), Some(403), "{other}");
        }
        // No inbound connections, even from the responder's address.
        assert_eq!(permit(&mut h, &mut c, &[PROBE_TCP]), None);
        let mut out = vec![0u8; 1500];
        assert!(
            h.server
                .peer_connected(h.now, id, peer("10.0.0.1:40010"), &mut out)
                .is_none()
        );
    }

    #[test]
    fn the_servers_listeners_and_an_operator_deny_stay_refused() {
        // A responder range that (wrongly) covers the listener's port:
        // the listener is still refused.
        let mut config = common::config(Limits::default(), &[]);
        config.policy = PeerPolicy::new(PolicyConfig {
            deny: vec!["10.0.0.1/32".parse().unwrap()],
            own_ips: vec!["10.0.0.1".parse().unwrap(), "192.0.2.200".parse().unwrap()],
            listeners: vec!["0.0.0.0:3478".parse().unwrap()],
            relay_ips: vec!["10.0.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap()],
            ..PolicyConfig::default()
        });
        let wide = CheckAccess {
            udp_ports: 3000..=4000,
            ..access(100, 4)
        };
        let mut h = harness_with(config, Some(wide));
        let mut c = checker("198.51.100.7:5000", "r1", 300);
        assert!(is_success(&c.allocate(&mut h)));
        let id = h.last_allocation();
        assert_eq!(h.server.stats().peer_denied.get("listener"), 0);
        assert_eq!(permit(&mut h, &mut c, &["203.0.113.10:3478"]), Some(403));
        assert_eq!(h.server.stats().peer_denied.get("listener"), 1);
        // The operator's deny wins over the responder.
        assert_eq!(permit(&mut h, &mut c, &["10.0.0.1:3500"]), Some(403));
        assert_eq!(h.server.stats().peer_denied.get("configured"), 1);
        let _ = id;
    }
}

//! Mangled input at every entry point of the state machine: no panic, and
//! the server keeps serving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use turnpike_turn::Limits;
use turnpike_turn::stun::{Attr, Class, MessageType, Method};

#[test]
fn mangled_client_and_peer_input_never_panics() {
    let limits = Limits {
        unauthenticated_per_second: 0,
        ..Limits::default()
    };
    let mut h = Harness::with(limits, &[]);
    let peer: SocketAddr = "93.184.216.34:40000".parse().unwrap();
    let mut c = Client::new("198.51.100.7:5000", "alice", "wonderland");
    assert!(is_success(&c.allocate(&mut h)));
    let id = h.last_allocation();
    assert!(is_success(&c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attr::ChannelNumber(0x4000), Attr::XorPeerAddress(peer)]
    )));

    let token = [3u8; 8];
    let seeds: Vec<Vec<u8>> = vec![
        c.signed(
            Method::ALLOCATE,
            &[
                Attr::RequestedTransport(17),
                Attr::EvenPort { reserve_next: true },
            ],
        ),
        c.signed(
            Method::ALLOCATE,
            &[Attr::RequestedTransport(17), Attr::ReservationToken(&token)],
        ),
        c.signed(Method::REFRESH, &[Attr::Lifetime(600)]),
        c.signed(
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(peer), Attr::XorPeerAddress(peer)],
        ),
        c.signed(
            Method::CHANNEL_BIND,
            &[Attr::ChannelNumber(0x4001), Attr::XorPeerAddress(peer)],
        ),
        build(
            MessageType::new(Method::SEND, Class::Indication),
            c.tid(),
            &[Attr::XorPeerAddress(peer), Attr::Data(b"payload")],
            None,
            true,
        ),
        c.unsigned(Method::BINDING, &[]),
        vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
    ];
    // Seeded: a failure is reproducible.
    let mut rng = StdRng::seed_from_u64(0x1234_5678_9ABC_DEF1);
    for round in 0..20_000 {
        let mut m = seeds[round % seeds.len()].clone();
        for _ in 0..1 + rng.random_range(0..3) {
            if m.is_empty() {
                break;
            }
            match rng.random_range(0..4) {
                0 => {
                    let at = rng.random_range(0..m.len());
                    m[at] ^= 1 << rng.random_range(0..8);
                }
                1 => m.truncate(rng.random_range(0..m.len() + 1)),
                2 => m.extend((0..rng.random_range(0..8)).map(|_| rng.random::<u8>())),
                _ => {
                    let at = rng.random_range(0..m.len().saturating_sub(1).max(1));
                    if at + 1 < m.len() {
                        m[at..at + 2].copy_from_slice(&rng.random::<u16>().to_be_bytes());
                    }
                }
            }
        }
        let _ = h.send(c.tuple, &m);
        // And from strangers, with no allocation.
        let stranger = udp(&format!(
            "198.51.100.{}:{}",
            1 + rng.random_range(0..200),
            1 + rng.random_range(0..60000)
        ));
        let _ = h.send(stranger, &m);
        // Peers send anything, of any size.
        if round % 10 == 0 {
            let len = rng.random_range(0..1500);
            let payload: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
            let _ = h.peer_datagram(id, peer, &payload);
        }
        if round % 5000 == 0 {
            h.advance(secs(1));
        }
    }
    // Still serving.
    let mut fresh = Client::new("198.51.100.250:9", "", "");
    let b = fresh.unsigned(Method::BINDING, &[]);
    assert!(is_success(&h.send(fresh.tuple, &b)));
}

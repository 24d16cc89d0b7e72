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
use turnpike_turn::Limits;
use turnpike_turn::stun::{Attr, Class, MessageType, Method};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

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
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    for round in 0..20_000 {
        let mut m = seeds[round % seeds.len()].clone();
        for _ in 0..1 + rng.below(3) {
            if m.is_empty() {
                break;
            }
            match rng.below(4) {
                0 => {
                    let at = rng.below(m.len());
                    m[at] ^= 1 << rng.below(8);
                }
                1 => m.truncate(rng.below(m.len() + 1)),
                2 => m.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
                _ => {
                    let at = rng.below(m.len().saturating_sub(1));
                    if at + 1 < m.len() {
                        m[at..at + 2].copy_from_slice(&(rng.next() as u16).to_be_bytes());
                    }
                }
            }
        }
        let _ = h.send(c.tuple, &m);
        // And from strangers, with no allocation.
        let stranger = udp(&format!(
            "198.51.100.{}:{}",
            1 + rng.below(200),
            1 + rng.below(60000)
        ));
        let _ = h.send(stranger, &m);
        // Peers send anything, of any size.
        if round % 10 == 0 {
            let len = rng.below(1500);
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
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

//! The real binary on loopback, driven over UDP, TCP and TLS by a client
//! built on the project's codec: allocation, relaying both ways, shutdown,
//! logs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::*;
use turnpike_stun::{Attr, AttrType, Class, Family, Message, Method, channel_data};

#[test]
fn binding_answers_with_the_reflexive_address() {
    let server = ServerProcess::start_every_transport(&loopback_args());
    for via in EVERY_TRANSPORT {
        let mut client = server.client(via, "", "");
        let (tid, bytes) = client.build(Method::BINDING, &[]);
        let r = client.exchange(tid, &bytes).expect("an answer");
        assert_eq!(r.msg().class(), Class::Success, "{via:?}");
        assert_eq!(
            r.msg().get(AttrType::XOR_MAPPED_ADDRESS),
            Some(Ok(Attr::XorMappedAddress(client.local()))),
            "{via:?}"
        );
    }
}

#[test]
fn relays_both_ways_over_channels_and_indications() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    for via in EVERY_TRANSPORT {
        relay_both_ways(&server, via);
    }
}

fn relay_both_ways(server: &ServerProcess, via: Via) {
    let peer = echo_peer(1000);
    let mut client = server.client(via, "alice", "wonderland");
    let relayed = client.allocate();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");

    // Send and Data indications.
    client.create_permission(&[peer]).unwrap();
    client.send_indication(peer, b"over an indication");
    let got = client.recv(Duration::from_secs(5)).expect("echo");
    let msg = Message::parse(&got).unwrap();
    assert_eq!(msg.method(), Method::DATA);
    assert_eq!(
        msg.get(AttrType::DATA),
        Some(Ok(Attr::Data(b"over an indication".as_slice())))
    );
    assert_eq!(
        msg.get(AttrType::XOR_PEER_ADDRESS),
        Some(Ok(Attr::XorPeerAddress(peer)))
    );

    // ChannelData, 100 times, of sizes that need padding on streams,
    // nothing lost.
    client.channel_bind(0x4001, peer).unwrap();
    for i in 0..100u32 {
        let payload: Vec<u8> = std::iter::repeat_n(i as u8, 1 + i as usize % 7).collect();
        client.send_channel(0x4001, &payload);
        let got = client.recv(Duration::from_secs(5)).expect("echo");
        let cd = channel_data::parse(&got).unwrap();
        assert_eq!(
            (cd.channel, cd.payload),
            (0x4001, payload.as_slice()),
            "{via:?}"
        );
    }
}

#[test]
fn two_relayed_clients_reach_each_other_inside_the_server() {
    // One shard holds every allocation, so each datagram from one relayed
    // client to another is handed over inside the server.
    let mut args: Vec<&str> = loopback_args();
    let threads = args.iter().position(|a| *a == "--threads").unwrap();
    args[threads + 1] = "1";
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    let pairs = [
        (Via::Udp, Via::Udp),
        (Via::Tcp, Via::Udp),
        (Via::Tls { alpn: true }, Via::Tcp),
        (Via::Udp, Via::Tls { alpn: false }),
    ];
    let mut sent = 0;
    for (via_a, via_b) in pairs {
        let what = format!("{via_a:?} to {via_b:?}");
        let mut a = server.client(via_a, "alice", "wonderland");
        let mut b = server.client(via_b, "alice", "wonderland");
        let (relayed_a, relayed_b) = (a.allocate(), b.allocate());
        a.create_permission(&[relayed_b]).unwrap();

        // B has no permission for A yet: the first datagram is dropped,
        // inside the server as on the network.
        a.send_indication(relayed_b, b"before the permission");
        // A's next answer comes after its indication was handled.
        assert_eq!(
            a.request(Method::BINDING, &[]).msg().class(),
            Class::Success
        );
        b.create_permission(&[relayed_a]).unwrap();
        a.send_indication(relayed_b, b"after the permission");
        sent += 2;
        let got = b.recv(Duration::from_secs(5)).expect("a Data indication");
        let msg = Message::parse(&got).unwrap();
        assert_eq!(msg.method(), Method::DATA, "{what}");
        assert_eq!(
            msg.get(AttrType::XOR_PEER_ADDRESS),
            Some(Ok(Attr::XorPeerAddress(relayed_a))),
            "{what}: B sees A's relayed address"
        );
        assert_eq!(
            msg.get(AttrType::DATA),
            Some(Ok(Attr::Data(b"after the permission".as_slice()))),
            "{what}"
        );

        // Channels both ways, of sizes that need padding on streams.
        a.channel_bind(0x4001, relayed_b).unwrap();
        b.channel_bind(0x7FFE, relayed_a).unwrap();
        for i in 0..50u32 {
            let payload: Vec<u8> = std::iter::repeat_n(i as u8, 1 + i as usize % 7).collect();
            a.send_channel(0x4001, &payload);
            let got = b.recv(Duration::from_secs(5)).expect("A's datagram");
            let cd = channel_data::parse(&got).unwrap();
            assert_eq!(
                (cd.channel, cd.payload),
                (0x7FFE, payload.as_slice()),
                "{what}"
            );
            b.send_channel(0x7FFE, &payload);
            let got = a.recv(Duration::from_secs(5)).expect("B's datagram");
            let cd = channel_data::parse(&got).unwrap();
            assert_eq!(
                (cd.channel, cd.payload),
                (0x4001, payload.as_slice()),
                "{what}"
            );
            sent += 2;
        }
    }
    // Every one of them went inside: none crossed the network.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    server.metrics_when(deadline, |m| {
        metric(m, "turnpike_relayed_within_total") == sent
    });
}

#[test]
fn ipv6_clients_dual_allocations_and_ipv6_peers() {
    let args = [
        "--realm",
        REALM,
        "--user",
        "alice:wonderland",
        "--threads",
        "2",
        "--listen",
        "udp://[::1]:0",
        "--listen",
        "tcp://[::1]:0",
        "--relay-address",
        "127.0.0.1",
        "--relay-address",
        "::1",
        "--allow-peer",
        "127.0.0.0/8",
        "--allow-peer",
        "::1/128",
    ];
    let server = ServerProcess::start(&args);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l == "relaying: ::1 ports 49152-65535"),
        "{:?}",
        server.banner
    );
    let peer4 = echo_peer(100);
    let peer6 = echo_peer_on("[::1]:0", 100);
    for via in [Via::Udp, Via::Tcp] {
        let mut client = server.client(via, "alice", "wonderland");
        assert!(client.local().is_ipv6());
        let r = client.request(
            Method::ALLOCATE,
            &[
                Attr::RequestedTransport(17),
                Attr::AdditionalAddressFamily(Family::V6),
            ],
        );
        let relayed: Vec<_> = r
            .msg()
            .get_all(AttrType::XOR_RELAYED_ADDRESS)
            .map(|a| match a {
                Ok(Attr::XorRelayedAddress(a)) => a,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(relayed.len(), 2, "{via:?}");
        assert_eq!(
            (relayed[0].ip().to_string(), relayed[1].ip().to_string()),
            ("127.0.0.1".into(), "::1".into())
        );
        for (channel, peer) in [(0x4000, peer4), (0x4001, peer6)] {
            client.channel_bind(channel, peer).unwrap();
            client.send_channel(channel, b"both families");
            let got = client.recv(Duration::from_secs(5)).expect("echo");
            let cd = channel_data::parse(&got).unwrap();
            assert_eq!(
                (cd.channel, cd.payload),
                (channel, b"both families".as_slice()),
                "{via:?} {peer}"
            );
        }
    }
    // An IPv6-only allocation refuses IPv4 peers: 443.
    let mut v6 = server.client(Via::Udp, "alice", "wonderland");
    let r = v6.request(
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::RequestedAddressFamily(Family::V6),
        ],
    );
    assert!(
        matches!(r.msg().get(AttrType::XOR_RELAYED_ADDRESS), Some(Ok(Attr::XorRelayedAddress(a))) if a.is_ipv6())
    );
    assert_eq!(v6.create_permission(&[peer4]), Err(443));
    v6.create_permission(&[peer6]).unwrap();
}

#[test]
fn closing_a_stream_ends_its_allocation() {
    let server = ServerProcess::start_every_transport(&loopback_args());
    let mut relayed = Vec::new();
    for via in [Via::Tcp, Via::Tls { alpn: false }] {
        let mut client = server.client(via, "alice", "wonderland");
        relayed.push((client.local(), client.allocate()));
        drop(client);
    }
    // Each ends as soon as its connection closes; the stop that follows
    // ends nothing more.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    server.metrics_when(deadline, |m| {
        m.contains("turnpike_allocations{transport=\"tcp\"} 0")
            && m.contains("turnpike_allocations{transport=\"tls\"} 0")
            && m.contains("turnpike_connections 0")
    });
    let (code, log) = server.stop();
    assert_eq!(code, Some(0));
    for (client, relay) in relayed {
        let line = log
            .lines()
            .find(|l| l.contains("allocation ended") && l.contains(&format!("client={client}")))
            .unwrap_or_else(|| panic!("no end for {client}: {log}"));
        assert!(line.contains("reason=\"closed\""), "{line}");
        assert!(line.contains(&format!("relayed={relay}")), "{line}");
    }
}

#[test]
fn sigterm_ends_allocations_with_a_log_line_each_and_exits_cleanly() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start(&args);
    let peer = echo_peer(10);
    let mut client = TurnClient::new(server.addr, "alice", "wonderland");
    let relayed = client.allocate();
    client.channel_bind(0x4000, peer).unwrap();
    client.send_channel(0x4000, b"x");
    client.recv(Duration::from_secs(5)).expect("echo");
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    let created: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("allocation created"))
        .collect();
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("allocation ended"))
        .collect();
    assert_eq!(created.len(), 1, "{log}");
    assert_eq!(ended.len(), 1, "{log}");
    let line = ended[0];
    for field in [
        "user=alice".to_owned(),
        format!("client={}", client.local()),
        format!("relayed={relayed}"),
        "to_peer_packets=1".to_owned(),
        "to_peer_bytes=1".to_owned(),
        "to_client_packets=1".to_owned(),
        "duration_ms=".to_owned(),
        "reason=\"closed\"".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} missing from {line}");
    }
    // Nothing about unauthenticated traffic at info level. A whole word,
    // not digits inside a timestamp or a port.
    assert!(
        !log.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word == "401"),
        "{log}"
    );
}

/// SECURITY.md "Defaults to ship", on the binary as shipped: an allocation
/// lives 600 s unless asked otherwise, and at most 3600 s however long it
/// asks for, on Allocate and on Refresh.
#[test]
fn default_and_maximum_lifetimes() {
    let server = ServerProcess::start(&loopback_args());
    let lifetime = |r: &Response| match r.msg().get(AttrType::LIFETIME) {
        Some(Ok(Attr::Lifetime(s))) => s,
        other => panic!("no LIFETIME: {other:?} {:?}", r.code()),
    };
    let mut a = TurnClient::new(server.addr, "alice", "wonderland");
    let r = a.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    assert_eq!(lifetime(&r), 600);
    let r = a.request(Method::REFRESH, &[Attr::Lifetime(u32::MAX)]);
    assert_eq!(lifetime(&r), 3600);
    let mut b = TurnClient::new(server.addr, "alice", "wonderland");
    let r = b.request(
        Method::ALLOCATE,
        &[Attr::RequestedTransport(17), Attr::Lifetime(u32::MAX)],
    );
    assert_eq!(lifetime(&r), 3600);
}

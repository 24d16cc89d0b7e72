//! SECURITY.md over the wire, against the real binary, over UDP, TCP and
//! TLS: the peer policy (§A), malformed input (§B) and authentication (§C).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Every range of SECURITY.md §A, first and last address, as IPv4.
const DENIED_V4: &[&str] = &[
    "127.0.0.1:5000",
    "127.255.255.255:5000",
    "0.0.0.0:5000",
    "0.255.255.255:5000",
    "10.0.0.0:5000",
    "10.255.255.255:5000",
    "172.16.0.0:5000",
    "172.31.255.255:5000",
    "192.168.0.0:5000",
    "192.168.255.255:5000",
    "100.64.0.0:5000",
    "100.127.255.255:5000",
    "169.254.0.0:5000",
    "169.254.169.254:80",
    "169.254.255.255:5000",
    "224.0.0.0:5000",
    "239.255.255.255:5000",
    "240.0.0.0:5000",
    "255.255.255.254:5000",
    "255.255.255.255:5000",
    "192.0.0.0:5000",
    "192.0.0.255:5000",
    "192.0.2.0:5000",
    "192.0.2.255:5000",
    "198.18.0.0:5000",
    "198.19.255.255:5000",
    "198.51.100.0:5000",
    "198.51.100.255:5000",
    "203.0.113.0:5000",
    "203.0.113.255:5000",
];

/// The IPv6 spellings of §A: loopback, "this host", IPv4 hidden in IPv6,
/// private, link-local, multicast, documentation.
const DENIED_V6: &[&str] = &[
    "[::1]:5000",
    "[::]:5000",
    "[::ffff:127.0.0.1]:5000",
    "[::ffff:169.254.169.254]:80",
    "[::127.0.0.1]:5000",
    "[64:ff9b::7f00:1]:5000",
    "[64:ff9b:1::a9fe:a9fe]:80",
    "[2002:7f00:1::]:5000",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]:5000",
    "[2001:db8::1]:5000",
    "[100::1]:5000",
    "[fc00::1]:5000",
    "[fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5000",
    "[fe80::1]:5000",
    "[ff02::1]:5000",
];

#[test]
fn default_policy_refuses_every_special_range_and_allows_public_peers() {
    let mut args = loopback_args();
    args.extend(["--relay-address", "::1"]);
    let server = ServerProcess::start_every_transport(&args);
    for via in EVERY_TRANSPORT {
        default_policy(&server, via);
        default_policy_v6(&server, via);
    }
}

/// The same on an IPv6 allocation, where IPv6 peers reach the policy.
fn default_policy_v6(server: &ServerProcess, via: Via) {
    let mut client = server.client(via, "alice", "wonderland");
    let r = client.request(
        Method::ALLOCATE,
        &[
            Attr::RequestedTransport(17),
            Attr::RequestedAddressFamily(turnpike_stun::Family::V6),
        ],
    );
    match r.msg().get(AttrType::XOR_RELAYED_ADDRESS) {
        Some(Ok(Attr::XorRelayedAddress(a))) => assert!(a.is_ipv6(), "{a} {via:?}"),
        other => panic!("no IPv6 allocation over {via:?}: {other:?} {:?}", r.code()),
    }
    for peer in DENIED_V6 {
        assert_eq!(
            client.create_permission(&[sa(peer)]),
            Err(403),
            "CreatePermission {peer} {via:?}"
        );
        assert_eq!(
            client.channel_bind(0x4000, sa(peer)),
            Err(403),
            "ChannelBind {peer} {via:?}"
        );
    }
    // IPv4 peers on it are a family mismatch.
    assert_eq!(client.create_permission(&[sa("8.8.8.8:53")]), Err(443));
    client
        .create_permission(&[sa("[2606:4700:4700::1111]:53")])
        .unwrap();
    client
        .channel_bind(0x4000, sa("[2001:4860:4860::8888]:53"))
        .unwrap();
}

fn default_policy(server: &ServerProcess, via: Via) {
    let mut client = server.client(via, "alice", "wonderland");
    client.allocate();
    for peer in DENIED_V4 {
        assert_eq!(
            client.create_permission(&[sa(peer)]),
            Err(403),
            "CreatePermission {peer} {via:?}"
        );
        assert_eq!(
            client.channel_bind(0x4000, sa(peer)),
            Err(403),
            "ChannelBind {peer} {via:?}"
        );
    }
    // The allocation is IPv4: IPv6 peers are a family mismatch (443)
    // whatever they hide (`default_policy_v6` has them on an IPv6
    // allocation).
    for peer in DENIED_V6 {
        assert_eq!(
            client.create_permission(&[sa(peer)]),
            Err(443),
            "CreatePermission {peer}"
        );
        assert_eq!(
            client.channel_bind(0x4000, sa(peer)),
            Err(443),
            "ChannelBind {peer}"
        );
    }
    // A public address gets a permission and a channel (nothing is sent).
    client.create_permission(&[sa("8.8.8.8:53")]).unwrap();
    client.channel_bind(0x4000, sa("1.1.1.1:53")).unwrap();
}

#[test]
fn allowing_loopback_never_opens_the_servers_own_sockets_or_a_relay_loop() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    for via in EVERY_TRANSPORT {
        own_sockets_stay_closed(&server, via);
    }
}

fn own_sockets_stay_closed(server: &ServerProcess, via: Via) {
    let mut a = server.client(via, "alice", "wonderland");
    let relayed_a = a.allocate();
    let mut b = server.client(via, "alice", "wonderland");
    let relayed_b = b.allocate();

    // Its own listeners (TURN over every transport, HTTP) and its own
    // relayed address: 403 even so.
    for (transport, listener) in &server.listening {
        assert_eq!(
            a.channel_bind(0x4000, *listener),
            Err(403),
            "{transport} listener {via:?}"
        );
        assert_eq!(
            a.create_permission(&[*listener]),
            Err(403),
            "{transport} listener {via:?}"
        );
    }
    assert_eq!(
        a.channel_bind(0x4001, relayed_a),
        Err(403),
        "relay loop {via:?}"
    );
    // Another allocation's relayed address is how two relayed clients meet.
    a.channel_bind(0x4002, relayed_b).unwrap();
    b.create_permission(&[relayed_a]).unwrap();
    a.send_channel(0x4002, b"from a to b");
    let got = b.recv(Duration::from_secs(5)).expect("b hears a");
    let msg = Message::parse(&got).unwrap();
    assert_eq!(
        msg.get(AttrType::DATA),
        Some(Ok(Attr::Data(b"from a to b".as_slice())))
    );
    assert_eq!(
        msg.get(AttrType::XOR_PEER_ADDRESS),
        Some(Ok(Attr::XorPeerAddress(relayed_a)))
    );
}

#[test]
fn a_send_to_the_servers_own_listener_is_dropped() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    for via in EVERY_TRANSPORT {
        send_to_own_listener(&server, via);
    }
}

fn send_to_own_listener(server: &ServerProcess, via: Via) {
    let peer = echo_peer(10);
    let mut client = server.client(via, "alice", "wonderland");
    let relayed = client.allocate();
    // The permission is per IP (RFC 8656 §9): 127.0.0.1 covers the
    // listener's port as well, so the port is checked per Send.
    client.create_permission(&[peer]).unwrap();
    // A Binding request, which the listener would answer if it got it: the
    // answer would come back to us as a Data indication.
    let mut buf = [0u8; 64];
    let w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([7; 12]),
    )
    .unwrap();
    let len = w.finish();
    client.send_indication(server.addr, &buf[..len]);
    // Nor to the allocation's own relayed address: a loop, which would
    // come back to us as a Data indication.
    client.send_indication(relayed, b"loop");
    // A later send on the same 5-tuple is handled after it: once its echo
    // is back, the first one has been dealt with.
    client.send_indication(peer, b"barrier");
    let got = client.recv(Duration::from_secs(5)).expect("the echo");
    let msg = Message::parse(&got).unwrap();
    assert_eq!(
        msg.get(AttrType::DATA),
        Some(Ok(Attr::Data(b"barrier".as_slice())))
    );
    assert!(
        client.recv(Duration::from_millis(300)).is_none(),
        "nothing reached the listener"
    );
}

#[test]
fn two_peers_one_denied_installs_nothing() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    for via in EVERY_TRANSPORT {
        one_denied_installs_nothing(&server, via);
    }
}

fn one_denied_installs_nothing(server: &ServerProcess, via: Via) {
    let mut client = server.client(via, "alice", "wonderland");
    client.allocate();
    // Permissions are per IP, so the peers need addresses of their own.
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.set_nonblocking(true).unwrap();
    let allowed = stranger.local_addr().unwrap();
    assert_eq!(
        client.create_permission(&[allowed, sa("10.0.0.1:5000")]),
        Err(403)
    );
    let barrier = UdpSocket::bind("127.0.0.3:0").unwrap();
    client
        .create_permission(&[barrier.local_addr().unwrap()])
        .unwrap();
    // Had `allowed` been installed, this would reach it...
    client.send_indication(allowed, b"should not arrive");
    // ...before this, which the server handles after it.
    client.send_indication(barrier.local_addr().unwrap(), b"barrier");
    barrier
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = barrier.recv_from(&mut buf).expect("the barrier arrives");
    assert_eq!(&buf[..n], b"barrier");
    assert!(
        stranger.recv_from(&mut buf).is_err(),
        "the denied request installed a permission"
    );
}

/// Every kind of malformed input of SECURITY.md §B, and random variations.
fn malformed() -> Vec<Vec<u8>> {
    let header = |typ: u16, len: u16| {
        let mut v = typ.to_be_bytes().to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        v.extend_from_slice(&[1; 12]);
        v
    };
    let mut out: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        header(0x0001, 0)[..19].to_vec(),
        {
            let mut m = header(0x0001, 0);
            m[4] = 0;
            m
        },
        header(0x0003, 2),
        header(0x0003, 400),
        {
            let mut m = header(0x0003, 8);
            m.extend_from_slice(&[0x00, 0x19, 0x00, 0x40, 17, 0, 0, 0]);
            m
        },
        {
            let mut m = header(0x0003, 12);
            m.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0xFF, 0xFF, 0xFF, 0xFF]);
            m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
            m
        },
        // ChannelData whose length runs past the datagram, and the largest.
        vec![0x40, 0x00, 0xFF, 0xFF, 1, 2, 3],
        vec![0x7F, 0xFF, 0x00, 0x10],
        // Oversized USERNAME, format-string and SQL in the text attributes.
        {
            let mut m = header(0x0003, 0);
            let mut body = vec![0x00, 0x06, 0x02, 0x58];
            body.extend(std::iter::repeat_n(b'%', 600));
            body.extend_from_slice(&[0x00, 0x14, 0x00, 0x0C]);
            body.extend_from_slice(b"'; DROP --  ");
            m[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
            m.extend(body);
            m
        },
        // RFC 3489 (no cookie), a response, an indication of another method.
        vec![
            0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ],
        header(0x0101, 0),
        header(0x0017, 0),
    ];
    // Seeded, so a failure names the datagram that caused it.
    let mut rng = StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
    let bytes = |rng: &mut StdRng, n: usize| -> Vec<u8> {
        let mut v = vec![0; n];
        rng.fill(&mut v[..]);
        v
    };
    for i in 0..400 {
        let mut m = match i % 4 {
            0 => {
                let n = rng.random_range(1..=200);
                bytes(&mut rng, n)
            }
            1 => {
                // A plausible header with random attributes.
                let mut m = header(0x0003, 0);
                let n = 4 * rng.random_range(0..30);
                let body = bytes(&mut rng, n);
                m[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
                m.extend(body);
                m
            }
            2 => {
                let mut m = vec![0x40 | (rng.random::<u8>() & 0x3F), rng.random::<u8>()];
                let n = rng.random_range(0..64);
                m.extend(bytes(&mut rng, n));
                m
            }
            _ => {
                // A valid-looking request with one byte flipped.
                let mut m = header(0x0009, 8);
                m.extend_from_slice(&[0x00, 0x0C, 0x00, 0x04, 0x40, 0x00, 0, 0]);
                let at = rng.random_range(0..m.len());
                m[at] ^= 1 << rng.random_range(0..8);
                m
            }
        };
        if m.is_empty() {
            m.push(0);
        }
        out.push(m);
    }
    out
}

#[test]
fn malformed_datagrams_neither_crash_nor_stall_the_server() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let mut server = ServerProcess::start(&args);
    let peer = echo_peer(1000);
    // An allocation exists, so the ChannelData paths are exercised too.
    let mut client = TurnClient::new(server.addr, "alice", "wonderland");
    client.allocate();
    client.channel_bind(0x4000, peer).unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk = malformed();
    for (i, m) in junk.iter().enumerate() {
        attacker.send_to(m, server.addr).unwrap();
        client.send_raw(m);
        if i % 50 == 0 {
            assert!(server.is_running(), "crashed after datagram {i}: {m:02x?}");
        }
    }
    assert!(junk.len() >= 400);
    // It still answers, and still relays for the client that sent junk.
    let mut probe = TurnClient::new(server.addr, "", "");
    let (tid, bytes) = probe.build(Method::BINDING, &[]);
    assert!(
        probe.exchange(tid, &bytes).is_some(),
        "no answer after the junk"
    );
    client.send_channel(0x4000, b"still relaying");
    let mut relayed = false;
    while let Some(got) = client.recv(Duration::from_secs(3)) {
        if got.get(4..) == Some(b"still relaying".as_slice()) {
            relayed = true;
            break;
        }
    }
    assert!(relayed);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn garbage_on_a_stream_closes_only_that_connection() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    let peer = echo_peer(100);
    for via in [Via::Tcp, Via::Tls { alpn: false }] {
        let mut good = server.client(via, "alice", "wonderland");
        good.allocate();
        good.channel_bind(0x4000, peer).unwrap();
        // Not STUN, not ChannelData: the framing is lost for good.
        let mut junk = server.client(via, "", "");
        junk.send_raw(&[0x80, 0x00, 0x00, 0x00, 1, 2, 3, 4]);
        assert!(junk.closed_within(Duration::from_secs(5)), "{via:?}");
        // A ChannelData that announces 64 KiB and sends four bytes ties up
        // only its own connection's bounded buffer.
        let mut stall = server.client(via, "", "");
        stall.send_raw(&[0x40, 0x00, 0xFF, 0xFF, 1, 2, 3, 4]);
        good.send_channel(0x4000, b"still relaying");
        let got = good.recv(Duration::from_secs(5)).expect("echo");
        assert_eq!(got.get(4..), Some(b"still relaying".as_slice()), "{via:?}");
    }
}

/// The malformed corpus over TCP and TLS, one connection per message:
/// whatever a whole frame holds, the server either answers the Binding
/// that follows it (the stream kept its framing) or closes the connection;
/// a frame it cannot even delimit closes it. Never a hang, never a crash,
/// and other clients keep relaying.
#[test]
fn malformed_messages_on_a_stream_neither_desync_nor_crash() {
    // Hundreds of unauthenticated Bindings from one address: the limit on
    // answers to strangers would withhold some.
    let config = config_file("[limits]\nunauthenticated_per_second = 0\n");
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8", "--config", &config.path]);
    let mut server = ServerProcess::start_every_transport(&args);
    let peer = echo_peer(100);
    let junk = malformed();
    let mut checked = 0;
    for via in [Via::Tcp, Via::Tls { alpn: false }] {
        let mut good = server.client(via, "alice", "wonderland");
        good.allocate();
        good.channel_bind(0x4000, peer).unwrap();
        for m in &junk {
            let framed = turnpike_stun::framing::frame_len(m);
            let whole = matches!(framed, Ok(Some(len)) if len == m.len());
            let undelimitable = framed.is_err();
            if !whole && !undelimitable {
                // Shorter than its header says (the Binding would be read
                // as the rest of it), or several frames: skipped here.
                continue;
            }
            checked += 1;
            let mut c = server.client(via, "", "");
            c.send_raw(m);
            let (tid, binding) = c.build(Method::BINDING, &[]);
            let answered = c.exchange(tid, &binding).is_some();
            if undelimitable {
                assert!(!answered, "{via:?}: answered after {m:02x?}");
            }
            if !answered {
                assert!(
                    c.closed_within(Duration::from_secs(2)),
                    "{via:?}: neither answered nor closed after {m:02x?}"
                );
            }
        }
        assert!(server.is_running(), "{via:?}");
        good.send_channel(0x4000, b"still relaying");
        let got = good.recv(Duration::from_secs(5)).expect("echo");
        assert_eq!(got.get(4..), Some(b"still relaying".as_slice()), "{via:?}");
    }
    assert!(checked >= 200, "only {checked} messages were whole frames");
}

#[test]
fn authentication_is_always_on() {
    let server = ServerProcess::start_every_transport(&loopback_args());
    for via in EVERY_TRANSPORT {
        let mut anon = server.client(via, "alice", "wonderland");
        let (tid, bytes) = anon.build(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
        assert_eq!(
            anon.exchange(tid, &bytes).unwrap().code(),
            Some(401),
            "{via:?}"
        );
        let mut wrong = server.client(via, "alice", "not-the-password");
        let r = wrong.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
        assert_eq!(r.code(), Some(401), "{via:?}");
    }
    // No MESSAGE-INTEGRITY: 401 with a realm and a nonce, nothing allocated.
    let mut anon = TurnClient::new(server.addr, "alice", "wonderland");
    let (tid, bytes) = anon.build(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    let r = anon.exchange(tid, &bytes).unwrap();
    assert_eq!(r.code(), Some(401));
    assert_eq!(r.msg().get(AttrType::REALM), Some(Ok(Attr::Realm(REALM))));
    assert!(
        matches!(r.msg().get(AttrType::NONCE), Some(Ok(Attr::Nonce(n))) if n.starts_with("obMatJos2"))
    );
    assert!(
        r.msg().get(AttrType::SOFTWARE).is_none(),
        "no SOFTWARE in answers to strangers"
    );
    // Small: a reflector gains little from it (SECURITY.md §D). The
    // request is 32 bytes with its FINGERPRINT.
    assert!(
        r.0.len() <= 160,
        "{} bytes of 401 for a {}-byte Allocate",
        r.0.len(),
        bytes.len()
    );
    // Wrong password: 401 again; unknown method: 400.
    let mut wrong = TurnClient::new(server.addr, "alice", "not-the-password");
    assert_eq!(
        wrong
            .request(Method::ALLOCATE, &[Attr::RequestedTransport(17)])
            .code(),
        Some(401)
    );
    let (tid, bytes) = anon.build(Method::new(0x0FF).unwrap(), &[]);
    assert_eq!(anon.exchange(tid, &bytes).unwrap().code(), Some(400));
    // REST credentials minted by the CLI work.
    let out = std::process::Command::new(binary())
        .args([
            "credentials",
            "--secret",
            "a-rest-api-secret",
            "--user",
            "carol",
            "--ttl",
            "600",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rest = TurnClient::new(
        server.addr,
        json["username"].as_str().unwrap(),
        json["password"].as_str().unwrap(),
    );
    let relayed = rest.allocate();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    let _ = MessageType::new(Method::ALLOCATE, Class::Request);
}

/// Sends `count` unauthenticated Allocates from 127.0.0.2 as fast as one
/// socket can; returns how many were answered and how long sending took.
fn flood(target: SocketAddr, count: usize) -> (usize, Duration) {
    // Another source than the real clients' (127.0.0.1).
    flood_from(target, &["127.0.0.2".parse().unwrap()], count)
}

/// Sends `count` unauthenticated Allocates, spread evenly over `sources`,
/// 256 sockets at a time; returns how many were answered and how long
/// sending took.
fn flood_from(target: SocketAddr, sources: &[std::net::IpAddr], count: usize) -> (usize, Duration) {
    let mut buf = vec![0u8; 128];
    let mut rx = [0u8; 1500];
    let mut answers = 0usize;
    let started = std::time::Instant::now();
    let per_source = count.div_ceil(sources.len());
    let mut sent = 0;
    for group in sources.chunks(256) {
        let sockets: Vec<UdpSocket> = group
            .iter()
            .map(|ip| {
                let s = UdpSocket::bind((*ip, 0)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        for _ in 0..per_source {
            for socket in &sockets {
                if sent == count {
                    break;
                }
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&(sent as u64).to_be_bytes());
                let mut w = MessageWriter::new(
                    &mut buf,
                    MessageType::new(Method::ALLOCATE, Class::Request),
                    TransactionId(tid),
                )
                .unwrap();
                w.add(&Attr::RequestedTransport(17)).unwrap();
                let n = w.finish();
                // A full socket buffer is a drop, as on a real network.
                let _ = socket.send_to(&buf[..n], target);
                sent += 1;
                while socket.recv_from(&mut rx).is_ok() {
                    answers += 1;
                }
            }
        }
        // Late answers: until none came for 100 ms.
        let mut quiet_since = std::time::Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(100) {
            for socket in &sockets {
                while socket.recv_from(&mut rx).is_ok() {
                    answers += 1;
                    quiet_since = std::time::Instant::now();
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    (answers, started.elapsed())
}

/// A server for the flood tests (loopback peers allowed, metrics on) and
/// an echo peer, with a real allocation made and gone to warm every path.
fn flood_target() -> (ServerProcess, SocketAddr) {
    let mut args = loopback_args();
    args.extend([
        "--allow-peer",
        "127.0.0.0/8",
        "--http-address",
        "127.0.0.1:0",
    ]);
    let server = ServerProcess::start(&args);
    let peer = echo_peer(10_000);
    let mut warm = TurnClient::new(server.addr, "alice", "wonderland");
    warm.allocate();
    let _ = warm.request(Method::REFRESH, &[Attr::Lifetime(0)]);
    (server, peer)
}

/// Real clients allocating, relaying through `peer` and leaving, again
/// and again, until `flooder` is done (three times at least); returns how
/// many did.
fn real_clients_until<T>(
    server: &ServerProcess,
    peer: SocketAddr,
    flooder: &std::thread::JoinHandle<T>,
) -> usize {
    let mut rounds = 0;
    while !flooder.is_finished() || rounds < 3 {
        let mut client = TurnClient::new(server.addr, "alice", "wonderland");
        client.allocate();
        client.channel_bind(0x4000, peer).unwrap();
        // A datagram may be lost in a full socket buffer, as UDP allows:
        // like any real client, send again; five losses in a row mean the
        // flood starves real clients.
        let echoed = (0..5)
            .find_map(|_| {
                client.send_channel(0x4000, b"through the flood");
                client.recv(Duration::from_secs(1))
            })
            .expect("an echo during the flood");
        assert_eq!(
            turnpike_stun::channel_data::parse(&echoed).unwrap().payload,
            b"through the flood"
        );
        let gone = client.request(Method::REFRESH, &[Attr::Lifetime(0)]);
        assert_eq!(gone.code(), None);
        rounds += 1;
    }
    rounds
}

/// SECURITY.md §D: the flood comes from 4,096 sources (as a spoofed one
/// would), each within its rate, so that every Allocate is answered with
/// a 401 and its nonce. Nothing is kept per source: RSS stays put, no
/// allocation is left, and a real client is served all the while.
#[test]
fn a_flood_from_many_sources_leaves_nothing_behind() {
    const FLOOD: usize = 4096 * 25;
    let sources: Vec<std::net::IpAddr> = (0..4096u32)
        .map(|i| std::net::Ipv4Addr::from(0x7F10_0000 + i).into())
        .collect();
    let (server, peer) = flood_target();
    flood_from(server.addr, &sources[..256], 2_000);

    let rss_before = server.rss_kib();
    let flooder = {
        let target = server.addr;
        std::thread::spawn(move || flood_from(target, &sources, FLOOD))
    };
    let rounds = real_clients_until(&server, peer, &flooder);
    let (answers, elapsed) = flooder.join().unwrap();
    let rss_after = server.rss_kib();
    assert!(
        rss_after <= rss_before + 1024,
        "RSS grew from {rss_before} to {rss_after} KiB over {FLOOD} Allocates from 4,096 sources"
    );
    // Each source stayed within its burst: most were answered (some may
    // be lost to full socket buffers on either side).
    assert!(answers > FLOOD / 2, "only {answers} of {FLOOD} answered");
    server.metrics_when(std::time::Instant::now() + Duration::from_secs(5), |m| {
        metric(m, "turnpike_allocations") == 0
    });
    eprintln!(
        "flood from 4,096 sources: {FLOOD} Allocates in {elapsed:?}, {answers} answered, \
         RSS {rss_before} -> {rss_after} KiB, beside {rounds} real clients"
    );
}

/// SECURITY.md §D: 100,000 unauthenticated Allocates from one source, as
/// fast as one socket sends them. The server keeps no state for them
/// (nonces are stateless: RSS stays put), answers at most its per-source
/// rate, and serves real clients from another address all the while.
#[test]
fn a_flood_of_unauthenticated_allocates_leaves_nothing_behind() {
    const FLOOD: usize = 100_000;
    let (server, peer) = flood_target();
    // And a small flood, so that what follows measures only what a flood
    // adds.
    flood(server.addr, 2_000);

    // The flood alone: nothing stays.
    let rss_before = server.rss_kib();
    let (answers, elapsed) = flood(server.addr, FLOOD);
    let rss_after = server.rss_kib();
    assert!(
        rss_after <= rss_before + 512,
        "RSS grew from {rss_before} to {rss_after} KiB over {FLOOD} unauthenticated Allocates"
    );
    // Answers: the burst, then the per-source rate (50/s by default).
    let allowed = 100 + (elapsed.as_secs_f64() + 1.0) as usize * 50;
    assert!(
        answers <= allowed,
        "{answers} answers in {elapsed:?} (at most {allowed})"
    );

    // Again, with real clients allocating, relaying and leaving, again
    // and again, while it lasts.
    let flooder = {
        let target = server.addr;
        std::thread::spawn(move || flood(target, FLOOD))
    };
    let rounds = real_clients_until(&server, peer, &flooder);
    let (answers2, elapsed2) = flooder.join().unwrap();
    let allowed2 = 100 + (elapsed2.as_secs_f64() + 1.0) as usize * 50;
    assert!(answers2 <= allowed2, "{answers2} answers in {elapsed2:?}");

    let metrics = server.metrics_when(std::time::Instant::now() + Duration::from_secs(5), |m| {
        metric(m, "turnpike_allocations") == 0 && metric(m, "turnpike_rate_limited_total") > 0
    });
    eprintln!(
        "flood: {FLOOD} Allocates in {elapsed:?}, {answers} answered, RSS {rss_before} -> \
         {rss_after} KiB; again in {elapsed2:?} beside {rounds} real clients, {answers2} \
         answered; {} rate-limited in all",
        metric(&metrics, "turnpike_rate_limited_total")
    );
}

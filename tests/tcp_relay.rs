//! RFC 6062 TCP relaying, end to end against the real binary on loopback:
//! Connect, ConnectionAttempt, ConnectionBind, the bytes carried both
//! ways, and every refusal a client can meet.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use turnpike_stun::{Attr, AttrType, Class, Message, Method};

const WAIT: Duration = Duration::from_secs(5);

/// A server with TCP relaying on, peers on loopback allowed.
fn tcp_relay_server(extra: &[&str]) -> ServerProcess {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8", "--relay-tcp"]);
    args.extend(extra);
    ServerProcess::start_every_transport(&args)
}

/// A TCP peer on loopback.
fn peer_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The next connection to `listener`, within `WAIT`.
fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, from)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                return Some((stream, from));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

/// Reads from a plain TCP stream until `want` bytes, EOF or `WAIT`.
fn read_upto(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < want && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    got
}

/// Whether the other end closed `stream` (EOF or reset) within `WAIT`.
fn closed(stream: &mut TcpStream) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A pattern that shows reordering or loss, `len` bytes long.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn connect_and_bind_carry_bytes_both_ways() {
    for via in [Via::Tcp, Via::Tls { alpn: false }] {
        let server = tcp_relay_server(&[]);
        let mut control = server.client(via, "alice", "wonderland");
        let relayed = control.allocate_tcp().unwrap();
        let (listener, peer) = peer_listener();

        let id = control.connect(peer).unwrap();
        let (mut at_peer, source) = accept(&listener).expect("the server connects");
        assert_eq!(
            source, relayed,
            "{via:?}: the connection comes from the relayed address"
        );
        // Sent before the client binds: held for it.
        at_peer.write_all(b"early bytes").unwrap();

        let mut data = server.client(via, "alice", "wonderland");
        data.connection_bind(id).unwrap();
        assert_eq!(data.read_bytes(11, WAIT), b"early bytes", "{via:?}");
        // Both of the client's connections count as open.
        server.metrics_when(Instant::now() + WAIT, |m| {
            metric(m, "turnpike_connections") == 2
        });

        // A bulk transfer each way, larger than any buffer on the path.
        let up = pattern(256 * 1024, 0x5A);
        data.send_raw(&up);
        assert_eq!(
            read_upto(&mut at_peer, up.len()),
            up,
            "{via:?}: to the peer"
        );
        let down = pattern(256 * 1024, 0xA5);
        at_peer.write_all(&down).unwrap();
        assert_eq!(
            data.read_bytes(down.len(), WAIT),
            down,
            "{via:?}: to the client"
        );

        // The peer closing closes the client's data connection.
        drop(at_peer);
        assert!(data.closed_within(WAIT), "{via:?}");
        drop(data);

        // The bytes count in the relayed traffic.
        let carried = (11 + down.len()) as u64;
        server.metrics_when(Instant::now() + WAIT, |m| {
            metric(m, "turnpike_relayed_bytes_total{direction=\"to_client\"}") >= carried
                && metric(m, "turnpike_relayed_bytes_total{direction=\"to_peer\"}")
                    >= up.len() as u64
        });
        // The control connection and its allocation go on.
        assert_eq!(control.connect(peer).map(|_| ()), Ok(()), "{via:?}");
    }
}

#[test]
fn a_peer_connects_in_once_permitted() {
    let server = tcp_relay_server(&[]);
    let mut control = server.client(Via::Tcp, "alice", "wonderland");
    let relayed = control.allocate_tcp().unwrap();

    // Without a permission the server closes the peer's connection and
    // tells the client nothing.
    let mut stranger = TcpStream::connect(relayed).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    assert!(closed(&mut stranger), "a peer without a permission");
    assert!(control.recv(Duration::from_millis(300)).is_none());

    control
        .create_permission(&["127.0.0.1:9".parse().unwrap()])
        .unwrap();
    let mut peer = TcpStream::connect(relayed).unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    peer.write_all(b"from the peer").unwrap();

    let attempt = control.recv(WAIT).expect("a ConnectionAttempt");
    let msg = Message::parse(&attempt).unwrap();
    assert_eq!(msg.method(), Method::CONNECTION_ATTEMPT);
    assert_eq!(msg.class(), Class::Indication);
    let Some(Ok(Attr::XorPeerAddress(from))) = msg.get(AttrType::XOR_PEER_ADDRESS) else {
        panic!("no XOR-PEER-ADDRESS");
    };
    assert_eq!(from, peer.local_addr().unwrap());
    let Some(Ok(Attr::ConnectionId(id))) = msg.get(AttrType::CONNECTION_ID) else {
        panic!("no CONNECTION-ID");
    };

    let mut data = server.client(Via::Tcp, "alice", "wonderland");
    data.connection_bind(id).unwrap();
    assert_eq!(data.read_bytes(13, WAIT), b"from the peer");
    data.send_raw(b"to the peer");
    assert_eq!(read_upto(&mut peer, 11), b"to the peer");

    // A second bind of the same ID is refused.
    let mut again = server.client(Via::Tcp, "alice", "wonderland");
    assert_eq!(again.connection_bind(id), Err(400));

    // Deleting the allocation ends its peer connections.
    let deleted = control.request(Method::REFRESH, &[Attr::Lifetime(0)]);
    assert_eq!(deleted.code(), None);
    assert!(closed(&mut peer), "the peer connection ends");
    assert!(
        data.closed_within(WAIT),
        "the client's data connection ends"
    );
}

#[test]
fn connect_refusals() {
    let server = tcp_relay_server(&["--deny-peer", "127.0.0.2/32", "--user", "bob:builder"]);
    let mut control = server.client(Via::Tcp, "alice", "wonderland");
    control.allocate_tcp().unwrap();

    // Nobody listening: 447 Connection Timeout or Failure.
    let (listener, gone) = peer_listener();
    drop(listener);
    assert_eq!(control.connect(gone), Err(447));

    // The policy: 403, and no connection is tried.
    let (denied_listener, port) = {
        let l = TcpListener::bind("127.0.0.2:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap();
        (l, port)
    };
    assert_eq!(control.connect(port), Err(403));
    assert!(
        matches!(denied_listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "a denied peer is never connected to"
    );

    // One connection per peer address at a time: 446.
    let (listener, peer) = peer_listener();
    let id = control.connect(peer).unwrap();
    let _held = accept(&listener).unwrap();
    assert_eq!(control.connect(peer), Err(446));

    // Another user cannot bind it; an unknown ID, or a connection that has
    // an allocation, cannot bind at all.
    let mut bob = server.client(Via::Tcp, "bob", "builder");
    assert_eq!(bob.connection_bind(id), Err(441));
    let mut stranger = server.client(Via::Tcp, "alice", "wonderland");
    assert_eq!(stranger.connection_bind(id ^ 1), Err(400));
    assert_eq!(control.connection_bind(id), Err(400));

    // Connect on a UDP allocation: 400.
    let mut udp_alloc = server.client(Via::Tcp, "alice", "wonderland");
    udp_alloc.allocate();
    assert_eq!(udp_alloc.connect(peer), Err(400));

    // TCP allocations over UDP: 400 (RFC 6062 §5.1).
    let mut over_udp = server.client(Via::Udp, "alice", "wonderland");
    assert_eq!(over_udp.allocate_tcp(), Err(400));
}

/// SECURITY.md §A: Connect is the relay's only way to open a TCP
/// connection, so it is the way to the server's own TCP surface (TURN over
/// TCP and TLS, HTTPS, metrics, the credentials API). With loopback
/// allowed, every one of the server's own listeners, and the allocation's
/// own relayed address, is still refused with 403.
#[test]
fn connect_never_reaches_the_servers_own_listeners() {
    let server = tcp_relay_server(&[]);
    let mut control = server.client(Via::Tcp, "alice", "wonderland");
    let relayed = control.allocate_tcp().unwrap();
    let own: Vec<SocketAddr> = server.listening.iter().map(|(_, a)| *a).collect();
    assert!(own.len() >= 4, "{:?}", server.listening);
    for addr in own.iter().copied().chain([relayed]) {
        assert_eq!(control.connect(addr), Err(403), "Connect to {addr}");
    }
    // A loopback peer that is not the server is reached: the 403s above
    // are the own-address rule, not loopback.
    let (listener, peer) = peer_listener();
    control.connect(peer).unwrap();
    assert!(accept(&listener).is_some());
}

#[test]
fn off_unless_enabled() {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    let server = ServerProcess::start_every_transport(&args);
    let mut client = server.client(Via::Tcp, "alice", "wonderland");
    assert_eq!(client.allocate_tcp(), Err(442));
    client.allocate();
    let (_listener, peer) = peer_listener();
    assert_eq!(client.connect(peer), Err(400));
}

//! The probe responder (`[probe]`), the server's profile at
//! `GET /api/v1/profile`, and the check credentials handed out with it,
//! against the real binary on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use turnpike_probe::{Kind, ReplyKind, Request};
use turnpike_profile::{Kind as EndpointKind, Published};
use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithm,
    TransactionId, channel_data,
};

/// A server on loopback with the probe configured by `probe` (the body of
/// a `[probe]` table), an HTTP listener, and loopback peers allowed.
fn server_with_probe(probe: &str, extra: &[&str]) -> (ServerProcess, ConfigFile) {
    let config = config_file(&format!("[probe]\n{probe}"));
    let mut args = loopback_args();
    args.extend([
        "--config",
        config.path.as_str(),
        "--listen",
        "udp://127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--allow-peer",
        "127.0.0.0/8",
    ]);
    args.extend(extra);
    (ServerProcess::start(&args), config)
}

/// `GET /api/v1/profile`: status, headers, body.
fn get_profile(server: &ServerProcess) -> (u16, String, String) {
    let addr = server.http_addr().expect("an HTTP listener");
    get_profile_from(addr, [127, 0, 0, 1])
}

/// `GET /api/v1/profile` at `addr`, from the loopback address `source`.
fn get_profile_from(addr: SocketAddr, source: [u8; 4]) -> (u16, String, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let mut stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /api/v1/profile HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, _) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let head = head.to_owned();
    let (status, body) = parse_http(&response);
    (status, head, body)
}

/// The profile, parsed and validated.
fn profile(server: &ServerProcess) -> Published {
    let (status, _, body) = get_profile(server);
    assert_eq!(status, 200, "{body}");
    let published: Published = serde_json::from_str(&body).unwrap();
    published
        .profile
        .validate()
        .unwrap_or_else(|e| panic!("the profile does not validate: {e}\n{body}"));
    published
}

fn request(kind: Kind, sequence: u32, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let r = Request::new(kind, sequence, 0x1122_3344_5566_7788);
    turnpike_probe::encode_request(&r, len, &mut buf).unwrap();
    buf
}

fn udp_client(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

fn recv_reply(socket: &UdpSocket) -> turnpike_probe::Reply {
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).expect("a probe reply");
    turnpike_probe::parse_reply(&buf[..n]).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn off_by_default_the_profile_has_no_probe_and_no_credentials() {
    let mut args = loopback_args();
    args.extend([
        "--listen",
        "udp://127.0.0.1:0",
        "--listen",
        "tls://127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
    ]);
    let server = ServerProcess::start(&args);
    assert!(!server.banner.iter().any(|l| l.starts_with("probe:")));
    let p = profile(&server);
    assert!(p.probe.is_none() && p.credentials.is_none());
    let ids: Vec<&str> = p.profile.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["stun", "turn-udp", "turn-tls"]);
    let udp = p.profile.endpoint("turn-udp").unwrap();
    assert_eq!(udp.host, "127.0.0.1");
    assert_eq!(udp.port, Some(server.addr_for(Via::Udp).port()));
    let tls = p.profile.endpoint("turn-tls").unwrap();
    assert_eq!(
        tls.port,
        Some(server.addr_for(Via::Tls { alpn: false }).port())
    );
    assert_eq!(tls.fallback_for, ["turn-udp"]);
    assert!(p.profile.endpoint("media").is_none());
    assert_eq!(
        p.profile.thresholds.rtt_ms.as_ref().map(|l| l.max),
        Some(150.0)
    );
    // The generated certificate's issuer, as a checker reads it.
    let issuer = p.tls_issuer.expect("the TLS listener's issuer");
    assert!(issuer.contains("CN="), "{issuer}");
    stop_cleanly(server);
}

#[test]
fn udp_probes_are_answered_with_the_source_seen_and_malformed_ones_are_not() {
    let (first, last) = free_udp_range(3);
    let ports = format!("{first}-{last}");
    // The flag alone turns the responder on.
    let mut args = loopback_args();
    args.extend([
        "--listen",
        "udp://127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--probe-ports",
        ports.as_str(),
    ]);
    let server = ServerProcess::start(&args);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l == &format!("probe: 127.0.0.1 udp ports {ports}")),
        "{:?}",
        server.banner
    );
    let p = profile(&server);
    let media = p.profile.endpoint("media").unwrap();
    assert_eq!(media.kind, EndpointKind::UdpRange);
    assert_eq!(media.host, "127.0.0.1");
    assert_eq!(media.ports.map(|r| r.to_string()), Some(ports.clone()));
    assert_eq!(
        p.probe.as_ref().map(|x| x.udp_endpoint.as_str()),
        Some("media")
    );
    assert!(p.credentials.is_none(), "no credentials unless asked for");

    let client = udp_client("127.0.0.1");
    for (i, port) in (first..=last).enumerate() {
        let seq = u32::try_from(i).unwrap() + 1;
        let sent = request(Kind::Echo, seq, 200);
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        client.send_to(&sent, ("127.0.0.1", port)).unwrap();
        let reply = recv_reply(&client);
        assert_eq!(reply.kind, ReplyKind::Echo);
        assert_eq!(reply.sequence, seq);
        assert_eq!(reply.timestamp, 0x1122_3344_5566_7788);
        assert_eq!(reply.source, client.local_addr().unwrap());
        assert_eq!(reply.request_len, 200);
        assert_eq!(reply.dscp, Some(0), "the DSCP of the request, read on receive");
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let received = u128::from(reply.received_ns);
        assert!(
            received + 1_000_000 >= before && received <= after + 1_000_000,
            "receive time within the round trip"
        );
    }
    // A stamp request gets the header alone.
    client
        .send_to(&request(Kind::Stamp, 9, 300), ("127.0.0.1", first))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(n, turnpike_probe::REPLY_HEADER_V4_LEN);
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], first)));
    // Malformed datagrams (a foreign one, one too short to answer without
    // amplifying, garbage) get nothing; the valid one after them does. One
    // port is served in order, so its reply coming first proves it.
    let mut short = request(Kind::Echo, 10, 68);
    short.truncate(67);
    for bad in [b"GET / HTTP/1.1\r\n\r\n".to_vec(), short, vec![0xFF; 100]] {
        client.send_to(&bad, ("127.0.0.1", last)).unwrap();
    }
    client
        .send_to(&request(Kind::Echo, 11, 68), ("127.0.0.1", last))
        .unwrap();
    let reply = recv_reply(&client);
    assert_eq!(reply.sequence, 11);
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        metric(m, "turnpike_probe_requests_total{outcome=\"malformed\"}") == 3
    });
    assert_eq!(
        metric(
            &metrics,
            "turnpike_probe_requests_total{outcome=\"answered\"}"
        ),
        5
    );
    stop_cleanly(server);
}

#[test]
fn tcp_probes_are_framed_and_answered_the_same_way() {
    let (first, last) = free_udp_range(1);
    let (server, _config) = server_with_probe(
        &format!("enabled = true\nports = \"{first}-{last}\"\ntcp_port = 0\n"),
        &[],
    );
    let p = profile(&server);
    let tcp_id = p
        .probe
        .as_ref()
        .and_then(|x| x.tcp_endpoint.clone())
        .unwrap();
    let endpoint = p.profile.endpoint(&tcp_id).unwrap();
    assert_eq!(endpoint.kind, EndpointKind::Tcp);
    let port = endpoint.port.unwrap();
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.ends_with(&format!("tcp port {port}")))
    );

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let frame = |msg: &[u8]| {
        let mut f = turnpike_probe::frame_header(msg.len()).unwrap().to_vec();
        f.extend_from_slice(msg);
        f
    };
    let read_frame = |stream: &mut TcpStream| {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).unwrap();
        let mut body = vec![0u8; turnpike_probe::frame_len(head).unwrap()];
        stream.read_exact(&mut body).unwrap();
        turnpike_probe::parse_reply(&body).unwrap()
    };
    // A malformed message, then a valid one: only the valid one is answered.
    let mut bad = request(Kind::Echo, 1, 100);
    bad[0] = b'X';
    stream.write_all(&frame(&bad)).unwrap();
    stream
        .write_all(&frame(&request(Kind::Echo, 2, 100)))
        .unwrap();
    let reply = read_frame(&mut stream);
    assert_eq!(reply.sequence, 2);
    assert_eq!(reply.source, stream.local_addr().unwrap());
    assert_eq!(reply.request_len, 100);
    stream
        .write_all(&frame(&request(Kind::Stamp, 3, 68)))
        .unwrap();
    assert_eq!(read_frame(&mut stream).sequence, 3);
    // A frame longer than any message ends the connection.
    stream.write_all(&[0xFF, 0xFF]).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without an answer");
    stop_cleanly(server);
}

#[test]
fn replies_are_rate_limited_per_source() {
    let (first, last) = free_udp_range(1);
    let (server, _config) = server_with_probe(
        &format!("enabled = true\nports = \"{first}-{last}\"\nreplies_per_second = 5\n"),
        &[],
    );
    let flood = udp_client("127.0.0.1");
    for seq in 0..50 {
        flood
            .send_to(&request(Kind::Echo, seq, 68), ("127.0.0.1", first))
            .unwrap();
    }
    // Another source is answered at once. The port serves its requests in
    // order, so by then every request of the flood has been handled.
    let other = udp_client("127.0.0.2");
    other
        .send_to(&request(Kind::Echo, 1000, 68), ("127.0.0.1", first))
        .unwrap();
    let reply = recv_reply(&other);
    assert_eq!(reply.source, other.local_addr().unwrap());
    flood.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut answered = 0;
    while flood.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    // A burst of 5, and what the time the flood took earned back.
    assert!((5..=10).contains(&answered), "{answered} answers to 50");
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |_| true);
    assert_eq!(
        metric(
            &metrics,
            "turnpike_probe_requests_total{outcome=\"rate_limited\"}"
        ),
        50 - answered
    );
    stop_cleanly(server);
}

/// A check client: the credentials from the profile, over UDP.
fn check_client(server: &ServerProcess, p: &Published) -> TurnClient {
    let c = p.credentials.as_ref().expect("check credentials");
    TurnClient::new(server.addr, &c.username, &c.password)
}

#[test]
fn check_credentials_relay_to_the_probe_responder_only() {
    let (first, last) = free_udp_range(2);
    let (server, _config) = server_with_probe(
        &format!(
            "enabled = true\nports = \"{first}-{last}\"\ncredentials = true\ncredentials_per_minute = 3\n"
        ),
        &[],
    );
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("check credentials"))
    );
    let p = profile(&server);
    let creds = p.credentials.clone().unwrap();
    assert_eq!(creds.ttl_s, 300);
    assert!(creds.username.contains(":check:"), "{}", creds.username);
    let probe = SocketAddr::from(([127, 0, 0, 1], first));

    let mut c = check_client(&server, &p);
    let relayed = c.allocate();
    assert_eq!(c.create_permission(&[probe]), Ok(()));
    // Through the relay to the responder and back over a channel: the
    // responder saw the relayed address.
    c.channel_bind(0x4000, probe).unwrap();
    c.send_channel(0x4000, &request(Kind::Echo, 7, 120));
    let got = c.recv(Duration::from_secs(5)).expect("the reply, relayed");
    let cd = channel_data::parse(&got).unwrap();
    let reply = turnpike_probe::parse_reply(cd.payload).unwrap();
    assert_eq!(reply.sequence, 7);
    assert_eq!(reply.source, relayed);
    assert_eq!(reply.request_len, 120);
    // And with a Send indication to the other port (a Data indication back).
    let second = SocketAddr::from(([127, 0, 0, 1], last));
    c.send_indication(second, &request(Kind::Stamp, 8, 68));
    let got = c.recv(Duration::from_secs(5)).expect("a Data indication");
    let msg = Message::parse(&got).unwrap();
    assert_eq!(msg.typ(), MessageType::new(Method::DATA, Class::Indication));
    let Some(Ok(Attr::Data(data))) = msg.get(AttrType::DATA) else {
        panic!("no DATA")
    };
    let reply = turnpike_probe::parse_reply(data).unwrap();
    assert_eq!((reply.sequence, reply.source), (8, relayed));

    // Any other peer is refused, even one the operator allows (loopback
    // here), and even a port next to the range; an operator user reaches it.
    let echo = echo_peer(10);
    assert_eq!(c.create_permission(&[echo]), Err(403));
    let next = SocketAddr::from(([127, 0, 0, 1], last + 1));
    assert_eq!(c.create_permission(&[next]), Err(403));
    assert_eq!(c.channel_bind(0x4001, echo), Err(403));
    assert_eq!(c.create_permission(&[server.addr]), Err(403));
    let mut alice = TurnClient::new(server.addr, "alice", "wonderland");
    alice.allocate();
    assert_eq!(alice.create_permission(&[echo]), Ok(()));

    // Each profile request mints new credentials: three a minute here, so
    // the fourth is refused, with when to come back.
    for _ in 0..2 {
        let again = profile(&server);
        assert_ne!(again.credentials.unwrap().username, creds.username);
    }
    let (status, head, _) = get_profile(&server);
    assert_eq!(status, 429);
    let retry = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .expect("a Retry-After header");
    assert_eq!(retry.trim(), "20");
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        metric(m, "turnpike_peer_denied_total{reason=\"not_probe\"}") >= 4
    });
    assert_eq!(metric(&metrics, "turnpike_check_allocations"), 1);
    stop_cleanly(server);
}

#[test]
fn expired_check_credentials_get_401() {
    let (first, last) = free_udp_range(1);
    let (server, _config) = server_with_probe(
        &format!(
            "enabled = true\nports = \"{first}-{last}\"\ncredentials = true\ncredential_ttl = 1\n"
        ),
        &[],
    );
    let p = profile(&server);
    let creds = p.credentials.clone().unwrap();
    assert_eq!(creds.ttl_s, 1);
    let expires: u64 = creds.username.split(':').next().unwrap().parse().unwrap();
    // The expiry is a known instant: wait for it to pass (at most 2 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while unix_now() <= expires {
        assert!(Instant::now() < deadline, "the clock does not advance");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Take a nonce with an unsigned Allocate, then sign one.
    let mut c = check_client(&server, &p);
    let (tid, bytes) = c.build(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    let challenge = c.exchange(tid, &bytes).expect("a 401 challenge");
    assert_eq!(challenge.code(), Some(401));
    let Some(Ok(Attr::Nonce(nonce))) = challenge.msg().get(AttrType::NONCE) else {
        panic!("no nonce")
    };
    let key = LongTermKey::derive(
        PasswordAlgorithm::MD5,
        &creds.username,
        REALM,
        &creds.password,
    )
    .unwrap();
    let tid = TransactionId([0x77; 12]);
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    )
    .unwrap();
    w.add(&Attr::RequestedTransport(17)).unwrap();
    w.add(&Attr::Username(&creds.username)).unwrap();
    w.add(&Attr::Realm(REALM)).unwrap();
    w.add(&Attr::Nonce(nonce)).unwrap();
    w.message_integrity(key.as_bytes()).unwrap();
    let len = w.finish();
    let answer = c.exchange(tid, &buf[..len]).expect("an answer");
    assert_eq!(answer.code(), Some(401));
    // Refused as expired, not as a bad signature.
    server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        metric(m, "turnpike_auth_failures_total{reason=\"expired\"}") == 1
            && metric(m, "turnpike_auth_failures_total{reason=\"bad_integrity\"}") == 0
    });
    stop_cleanly(server);
}

#[test]
fn check_credentials_are_counted_per_source_on_a_port_shared_with_turn() {
    // On a TCP listener that serves HTTP next to TURN, the rate limit on
    // check credentials counts each client address on its own, as on the
    // HTTP listener: one client using up its share leaves another's.
    let (first, last) = free_udp_range(1);
    let (server, _config) = server_with_probe(
        &format!(
            "enabled = true\nports = \"{first}-{last}\"\ncredentials = true\ncredentials_per_minute = 1\n"
        ),
        &["--listen", "tcp://127.0.0.1:0?http=true"],
    );
    let shared = server
        .listening
        .iter()
        .find(|(what, _)| what.starts_with("tcp"))
        .map(|&(_, addr)| addr)
        .expect("the shared TCP listener");
    let status = |source| get_profile_from(shared, source).0;
    assert_eq!(status([127, 0, 0, 1]), 200);
    assert_eq!(status([127, 0, 0, 1]), 429);
    assert_eq!(
        status([127, 0, 0, 2]),
        200,
        "another client has its own share"
    );
    assert_eq!(status([127, 0, 0, 2]), 429);
    stop_cleanly(server);
}

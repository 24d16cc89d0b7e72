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
        assert_eq!(
            reply.dscp,
            Some(0),
            "the DSCP of the request, read on receive"
        );
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

// ---- The v2 responder: cookies, sessions, later, trains, DSCP, STUN ----

/// A probe server on `ports` free ports of 127.0.0.1, with `extra` keys
/// in `[probe]`; returns the first and last port too.
fn v2_server(ports: u16, extra: &str) -> (ServerProcess, ConfigFile, u16, u16) {
    let (first, last) = free_udp_range(ports);
    let (server, config) = server_with_probe(
        &format!("enabled = true\naddress = \"127.0.0.1\"\nports = \"{first}-{last}\"\n{extra}"),
        &[],
    );
    (server, config, first, last)
}

/// A request of `kind` with a session, a cookie and flags.
fn v2_request(kind: Kind, sequence: u32, session: u64, cookie: u64) -> Request {
    Request {
        session,
        cookie,
        ..Request::new(kind, sequence, 0x1122_3344_5566_7788)
    }
}

fn send_request(socket: &UdpSocket, r: &Request, len: usize, port: u16) {
    let mut buf = vec![0u8; len];
    turnpike_probe::encode_request(r, len, &mut buf).unwrap();
    socket.send_to(&buf, ("127.0.0.1", port)).unwrap();
}

/// Sends `r` and reads the reply to it (skipping any other datagram).
fn exchange_request(socket: &UdpSocket, r: &Request, port: u16) -> turnpike_probe::Reply {
    send_request(socket, r, 100, port);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no reply to {r:?}");
        let reply = recv_reply(socket);
        if reply.sequence == r.sequence && reply.kind != ReplyKind::Train {
            return reply;
        }
    }
}

/// The cookie the responder gives this socket's address.
fn cookie_for(socket: &UdpSocket, port: u16) -> u64 {
    let reply = exchange_request(socket, &v2_request(Kind::Stamp, 0xC00C, 0, 0), port);
    assert_ne!(reply.cookie, 0, "every reply carries a cookie");
    reply.cookie
}

fn outcome(metrics: &str, name: &str) -> u64 {
    metric(
        metrics,
        &format!("turnpike_probe_requests_total{{outcome=\"{name}\"}}"),
    )
}

/// Waits until the minute (the cookie epoch) has at least 10 s left, so
/// that a test comparing cookies does not straddle two epochs.
fn away_from_a_minute_boundary() {
    while unix_now() % 60 >= 50 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_valid_cookie_gets_session_counts_and_an_invalid_one_gets_none() {
    let (server, _config, port, _) = v2_server(1, "");
    away_from_a_minute_boundary();
    let client = udp_client("127.0.0.1");
    let cookie = cookie_for(&client, port);
    // The same cookie again: it is per source IP and minute.
    assert_eq!(cookie_for(&client, port), cookie);
    // Another source IP gets another cookie.
    let other = udp_client("127.0.0.2");
    let other_cookie = cookie_for(&other, port);
    assert_ne!(other_cookie, cookie);

    // Unvalidated: no count, even with a session.
    let r = exchange_request(&client, &v2_request(Kind::Echo, 1, 7, 0), port);
    assert_eq!((r.session, r.counted), (7, 0));
    // Validated: counted per session, this one included.
    for (seq, want) in [(2, 1), (3, 2), (4, 3)] {
        let r = exchange_request(&client, &v2_request(Kind::Echo, seq, 7, cookie), port);
        assert_eq!((r.kind, r.counted, r.session), (ReplyKind::Echo, want, 7));
        assert_eq!(r.cookie, cookie);
    }
    // A tally is not counted: the count so far, twice.
    for seq in [5, 6] {
        let tally = Request {
            tally: true,
            ..v2_request(Kind::Stamp, seq, 7, cookie)
        };
        assert_eq!(exchange_request(&client, &tally, port).counted, 3);
    }
    // Another session, another count; session 0 is never counted.
    assert_eq!(
        exchange_request(&client, &v2_request(Kind::Stamp, 7, 8, cookie), port).counted,
        1
    );
    assert_eq!(
        exchange_request(&client, &v2_request(Kind::Stamp, 8, 0, cookie), port).counted,
        0
    );
    // Counted per transport address: another port of the same IP starts
    // afresh with the same cookie.
    let second = udp_client("127.0.0.1");
    assert_eq!(
        exchange_request(&second, &v2_request(Kind::Echo, 9, 7, cookie), port).counted,
        1
    );
    // Another IP's cookie, or a forged one, is not valid: not counted.
    for bad in [other_cookie, cookie ^ 1, cookie.wrapping_add(1)] {
        let r = exchange_request(&client, &v2_request(Kind::Echo, 10, 7, bad), port);
        assert_eq!(r.counted, 0, "cookie {bad:x}");
        assert_eq!(r.cookie, cookie, "the right cookie comes back");
    }
    let tally = Request {
        tally: true,
        ..v2_request(Kind::Stamp, 11, 7, cookie)
    };
    assert_eq!(
        exchange_request(&client, &tally, port).counted,
        3,
        "the invalid ones were not counted"
    );

    // Without a valid cookie: no later reply, no train. A valid later
    // reply sent after them is what comes, and nothing before it.
    let bad = cookie ^ 0xFF00;
    send_request(
        &client,
        &v2_request(Kind::Later { delay_ms: 50 }, 20, 7, bad),
        100,
        port,
    );
    let train = Kind::Train(turnpike_probe::Train {
        packets: 5,
        interval_us: 1000,
        len: 100,
    });
    send_request(&client, &v2_request(train, 21, 7, bad), 100, port);
    send_request(&client, &v2_request(train, 22, 7, 0), 100, port);
    send_request(
        &client,
        &v2_request(Kind::Later { delay_ms: 300 }, 23, 7, cookie),
        100,
        port,
    );
    let r = recv_reply(&client);
    assert_eq!((r.kind, r.sequence), (ReplyKind::Later, 23));
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        outcome(m, "unvalidated") == 3
    });
    assert_eq!(outcome(&metrics, "unvalidated"), 3);
    assert_eq!(outcome(&metrics, "later"), 1);
    assert_eq!(outcome(&metrics, "train"), 0);
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert!(client.recv_from(&mut buf).is_err(), "nothing else came");
    stop_cleanly(server);
}

#[test]
fn a_later_reply_comes_after_its_delay_from_the_same_port() {
    let (server, _config, first, last) = v2_server(2, "");
    let client = udp_client("127.0.0.1");
    let cookie = cookie_for(&client, last);
    let sent_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let sent = Instant::now();
    send_request(
        &client,
        &v2_request(Kind::Later { delay_ms: 300 }, 5, 9, cookie),
        100,
        last,
    );
    let mut buf = [0u8; 2048];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    let waited = sent.elapsed();
    let reply = turnpike_probe::parse_reply(&buf[..n]).unwrap();
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], last)), "same port");
    assert_eq!((reply.kind, reply.sequence), (ReplyKind::Later, 5));
    assert_eq!(
        n,
        turnpike_probe::REPLY_HEADER_V4_LEN,
        "a stamp-sized reply"
    );
    assert_eq!((reply.counted, reply.session), (1, 9));
    assert!(
        waited >= Duration::from_millis(300),
        "not before the delay: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2300),
        "soon after the delay: {waited:?}"
    );
    // received_ns is when the request arrived, not when the reply left.
    let received = u128::from(reply.received_ns);
    assert!(
        received + 50_000_000 >= sent_ns && received < sent_ns + 200_000_000,
        "received {received}, sent {sent_ns}"
    );
    // Over ten minutes: malformed, dropped.
    send_request(
        &client,
        &v2_request(Kind::Later { delay_ms: 600_001 }, 6, 9, cookie),
        100,
        first,
    );
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        outcome(m, "malformed") == 1
    });
    assert_eq!(outcome(&metrics, "malformed"), 1);
    assert_eq!(
        metric(
            &metrics,
            "turnpike_probe_later_replies_total{outcome=\"sent\"}"
        ),
        1
    );
    stop_cleanly(server);
}

#[test]
fn pending_later_replies_are_capped_per_source() {
    let (server, _config, port, _) = v2_server(1, "");
    let client = udp_client("127.0.0.1");
    let cookie = cookie_for(&client, port);
    for seq in 0..70 {
        send_request(
            &client,
            &v2_request(Kind::Later { delay_ms: 1500 }, seq, 0, cookie),
            68,
            port,
        );
    }
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        outcome(m, "later") + outcome(m, "too_many_laters") == 70
    });
    assert_eq!(outcome(&metrics, "later"), 64, "64 pending per source");
    assert_eq!(outcome(&metrics, "too_many_laters"), 6);
    // Another source still has its own places.
    let other = udp_client("127.0.0.2");
    let other_cookie = cookie_for(&other, port);
    send_request(
        &other,
        &v2_request(Kind::Later { delay_ms: 300 }, 1, 0, other_cookie),
        68,
        port,
    );
    assert_eq!(recv_reply(&other).kind, ReplyKind::Later);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 64 {
        let r = recv_reply(&client);
        assert_eq!(r.kind, ReplyKind::Later);
        got.insert(r.sequence);
    }
    assert_eq!(got, (0..64).collect(), "the first 64 were kept");
    // Sent, the places are free again.
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        metric(m, "turnpike_probe_later_replies_total{outcome=\"sent\"}") == 65
    });
    assert_eq!(outcome(&metrics, "later"), 65);
    send_request(
        &client,
        &v2_request(Kind::Later { delay_ms: 1 }, 99, 0, cookie),
        68,
        port,
    );
    assert_eq!(recv_reply(&client).sequence, 99);
    stop_cleanly(server);
}

#[test]
fn a_train_arrives_at_the_rate_and_length_asked_and_only_with_a_cookie() {
    let (server, _config, port, _) = v2_server(1, "max_kbps_per_source = 8000\n");
    let client = udp_client("127.0.0.1");
    let cookie = cookie_for(&client, port);
    // 200 packets of 1000 bytes every 2 ms: 4 Mbit/s for 0.4 s.
    let train = turnpike_probe::Train {
        packets: 200,
        interval_us: 2000,
        len: 1000,
    };
    send_request(
        &client,
        &v2_request(Kind::Train(train), 3, 0, cookie),
        68,
        port,
    );
    let mut buf = [0u8; 2048];
    let mut seen = std::collections::BTreeSet::new();
    let mut first_at = None;
    let mut last_at = Instant::now();
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 200 && Instant::now() < deadline {
        let (n, from) = client.recv_from(&mut buf).expect("the train");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
        let r = turnpike_probe::parse_reply(&buf[..n]).unwrap();
        if r.kind == ReplyKind::Stamp {
            acks += 1;
            continue;
        }
        assert_eq!(r.kind, ReplyKind::Train);
        assert_eq!(n, 1000, "the length asked");
        assert_eq!(r.timestamp, 0x1122_3344_5566_7788);
        seen.insert(r.sequence);
        last_at = Instant::now();
        first_at.get_or_insert(last_at);
    }
    assert_eq!(seen, (0..200).collect(), "every packet, once each");
    assert_eq!(acks, 1, "one stamp acknowledges the train");
    let spread = last_at - first_at.unwrap();
    // 199 intervals of 2 ms: 398 ms. Loose, for a loaded machine.
    assert!(
        spread >= Duration::from_millis(300) && spread <= Duration::from_millis(1500),
        "paced: {spread:?}"
    );
    // Too large (8 MB), too fast (over max_kbps_per_source), too long:
    // refused.
    for t in [
        turnpike_probe::Train {
            packets: 8001,
            interval_us: 10_000,
            len: 1000,
        },
        turnpike_probe::Train {
            packets: 10,
            interval_us: 100,
            len: 1000,
        },
        turnpike_probe::Train {
            packets: 100,
            interval_us: 1_000_000,
            len: 100,
        },
    ] {
        send_request(&client, &v2_request(Kind::Train(t), 4, 0, cookie), 68, port);
    }
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        outcome(m, "train_too_large") == 3
    });
    assert_eq!(outcome(&metrics, "train"), 1);
    assert_eq!(
        metric(
            &metrics,
            "turnpike_probe_train_packets_total{outcome=\"sent\"}"
        ),
        200
    );
    stop_cleanly(server);
}

/// A UDP socket on 127.0.0.1 that marks what it sends with `tos` and
/// reports the TOS byte of what it receives.
fn tos_socket(tos: u32) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.set_tos_v4(tos).unwrap();
    s.set_recv_tos_v4(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Receives a datagram with the TOS byte it carried (from the IP_TOS
/// control message).
#[allow(unsafe_code)]
fn recv_with_tos(s: &socket2::Socket) -> (Vec<u8>, Option<u8>) {
    use std::mem::MaybeUninit;
    let mut data = [MaybeUninit::<u8>::uninit(); 2048];
    let mut control = [MaybeUninit::<u8>::uninit(); 128];
    let mut bufs = [socket2::MaybeUninitSlice::new(&mut data)];
    let mut msg = socket2::MsgHdrMut::new()
        .with_buffers(&mut bufs)
        .with_control(&mut control);
    let n = s.recvmsg(&mut msg, 0).expect("a datagram");
    let control_len = msg.control_len();
    // SAFETY: the kernel wrote the first `n` data bytes and the first
    // `control_len` control bytes.
    let data: Vec<u8> = data[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    let control: Vec<u8> = control[..control_len]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    // struct cmsghdr { size_t len; int level; int type; } then the data,
    // each message aligned to size_t.
    let word = std::mem::size_of::<usize>();
    let header = word + 8;
    let mut at = 0;
    let mut tos = None;
    while at + header <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + word].try_into().unwrap());
        let level = i32::from_ne_bytes(control[at + word..at + word + 4].try_into().unwrap());
        let kind = i32::from_ne_bytes(control[at + word + 4..at + header].try_into().unwrap());
        if level == 0 /* IPPROTO_IP */ && kind == 1 /* IP_TOS */ && len > header {
            tos = Some(control[at + header]);
        }
        if len == 0 {
            break;
        }
        at += len.div_ceil(word) * word;
    }
    (data, tos)
}

#[test]
fn dscp_is_read_on_the_way_in_and_set_as_asked_on_the_way_out() {
    let (server, _config, port, _) = v2_server(1, "");
    let to: socket2::SockAddr = SocketAddr::from(([127, 0, 0, 1], port)).into();
    let ef = tos_socket(46 << 2);
    let mut buf = [0u8; 100];
    let asked = Request {
        reply_dscp: Some(34),
        ..v2_request(Kind::Echo, 1, 0, 0)
    };
    turnpike_probe::encode_request(&asked, 100, &mut buf).unwrap();
    ef.send_to(&buf, &to).unwrap();
    let (reply, tos) = recv_with_tos(&ef);
    let reply = turnpike_probe::parse_reply(&reply).unwrap();
    assert_eq!(reply.dscp, Some(46), "EF seen on the way in");
    assert_eq!(tos, Some(34 << 2), "AF41 on the way out, ECN bits 0");
    // Unmarked both ways.
    let plain = tos_socket(0);
    turnpike_probe::encode_request(&v2_request(Kind::Stamp, 2, 0, 0), 100, &mut buf).unwrap();
    plain.send_to(&buf, &to).unwrap();
    let (reply, tos) = recv_with_tos(&plain);
    let reply = turnpike_probe::parse_reply(&reply).unwrap();
    assert_eq!((reply.dscp, tos), (Some(0), Some(0)));
    // A train's packets are marked as asked too.
    let cookie = reply.cookie;
    let train = Request {
        reply_dscp: Some(46),
        ..v2_request(
            Kind::Train(turnpike_probe::Train {
                packets: 3,
                interval_us: 1000,
                len: 200,
            }),
            3,
            0,
            cookie,
        )
    };
    turnpike_probe::encode_request(&train, 100, &mut buf).unwrap();
    plain.send_to(&buf, &to).unwrap();
    let mut packets = 0;
    while packets < 3 {
        let (bytes, tos) = recv_with_tos(&plain);
        assert_eq!(tos, Some(46 << 2));
        if turnpike_probe::parse_reply(&bytes).unwrap().kind == ReplyKind::Train {
            packets += 1;
        }
    }
    stop_cleanly(server);
}

fn binding_request(change: Option<(bool, bool)>) -> (TransactionId, Vec<u8>) {
    let tid = TransactionId(rand::random());
    let mut buf = [0u8; 100];
    let typ = MessageType::new(Method::BINDING, Class::Request);
    let mut w = MessageWriter::new(&mut buf, typ, tid).unwrap();
    if let Some((change_ip, change_port)) = change {
        w.add(&Attr::ChangeRequest {
            change_ip,
            change_port,
        })
        .unwrap();
    }
    let n = w.finish();
    (tid, buf[..n].to_vec())
}

/// Sends a Binding request to `to`; the response, where it came from,
/// and its attributes other than FINGERPRINT.
fn binding(
    client: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
) -> (Class, SocketAddr, Vec<Attr<'static>>) {
    let (tid, req) = binding_request(change);
    client.send_to(&req, to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = client.recv_from(&mut buf).expect("a STUN response");
    let bytes: &'static [u8] = Box::leak(buf[..n].to_vec().into_boxed_slice());
    let msg = Message::parse(bytes).unwrap();
    assert_eq!(msg.transaction_id(), tid);
    let attrs = msg
        .attributes()
        .map(|raw| Attr::decode(raw, &tid).unwrap())
        .filter(|a| !matches!(a, Attr::Fingerprint(_)))
        .collect();
    (msg.class(), from, attrs)
}

#[test]
fn stun_binding_with_an_alternate_address_honours_change_request() {
    let (server, _config, p1, p2) = v2_server(3, "alternate_address = \"127.0.0.2\"\n");
    let p2 = p2 - 1;
    let client = udp_client("127.0.0.1");
    let me = client.local_addr().unwrap();
    let a = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
    let (main, alt) = ([127, 0, 0, 1], [127, 0, 0, 2]);
    for (to, change, want_from, want_other) in [
        (a(main, p1), None, a(main, p1), a(alt, p2)),
        (a(main, p1), Some((false, false)), a(main, p1), a(alt, p2)),
        (a(main, p1), Some((true, false)), a(alt, p1), a(alt, p2)),
        (a(main, p1), Some((false, true)), a(main, p2), a(alt, p2)),
        (a(main, p1), Some((true, true)), a(alt, p2), a(alt, p2)),
        (a(alt, p2), Some((true, false)), a(main, p2), a(main, p1)),
        (a(alt, p1), None, a(alt, p1), a(main, p2)),
        (a(main, p2), Some((false, true)), a(main, p1), a(alt, p1)),
    ] {
        let (class, from, attrs) = binding(&client, to, change);
        assert_eq!(class, Class::Success, "{to} {change:?}");
        assert_eq!(from, want_from, "{to} {change:?}: sent from");
        assert_eq!(
            attrs,
            [
                Attr::XorMappedAddress(me),
                Attr::ResponseOrigin(want_from),
                Attr::OtherAddress(want_other),
            ],
            "{to} {change:?}"
        );
    }
    // The third port is not one of RFC 5780's four: no change there.
    let (class, from, attrs) = binding(&client, a(main, p2 + 1), Some((true, false)));
    assert_eq!((class, from), (Class::Error, a(main, p2 + 1)));
    assert!(matches!(
        attrs[0],
        Attr::ErrorCode {
            code: turnpike_stun::ErrorCode(420),
            ..
        }
    ));
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        outcome(m, "stun") == 9
    });
    assert_eq!(outcome(&metrics, "stun"), 9);
    stop_cleanly(server);
}

#[test]
fn stun_binding_without_an_alternate_address_refuses_change_request_with_420() {
    let (server, _config, p1, _) = v2_server(2, "");
    let client = udp_client("127.0.0.1");
    let me = client.local_addr().unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], p1));
    let (class, from, attrs) = binding(&client, to, None);
    assert_eq!((class, from), (Class::Success, to));
    assert_eq!(
        attrs,
        [Attr::XorMappedAddress(me), Attr::ResponseOrigin(to)],
        "no OTHER-ADDRESS without an alternate"
    );
    for change in [(true, false), (false, true)] {
        let (class, from, attrs) = binding(&client, to, Some(change));
        assert_eq!((class, from), (Class::Error, to));
        assert!(matches!(
            attrs[0],
            Attr::ErrorCode {
                code: turnpike_stun::ErrorCode(420),
                ..
            }
        ));
        let Attr::UnknownAttributes(types) = attrs[1] else {
            panic!("{attrs:?}")
        };
        assert_eq!(types.iter().collect::<Vec<_>>(), [AttrType::CHANGE_REQUEST]);
    }
    // Probe requests on the same port still work.
    let reply = exchange_request(&client, &v2_request(Kind::Echo, 1, 0, 0), p1);
    assert_eq!(reply.source, me);
    stop_cleanly(server);
}

#[test]
fn bad_alternate_addresses_stop_the_server_with_file_line_and_key() {
    let (first, last) = free_udp_range(2);
    for (probe, want) in [
        (
            "address = \"127.0.0.1\"\nalternate_address = \"127.0.0.1\"\n".to_owned(),
            "turnpike.toml:5: probe.alternate_address: 127.0.0.1 is the probe address itself",
        ),
        (
            "address = \"127.0.0.1\"\nalternate_address = \"::1\"\n".to_owned(),
            "turnpike.toml:5: probe.alternate_address: ::1 is not of the family of the probe address 127.0.0.1",
        ),
        (
            "alternate_address = \"0.0.0.0\"\n".to_owned(),
            "turnpike.toml:4: probe.alternate_address: 0.0.0.0 is a wildcard",
        ),
        (
            "ports = \"{first}-{first}\"\nalternate_address = \"127.0.0.2\"\n".to_owned(),
            "turnpike.toml:4: probe.alternate_address: needs at least two probe ports",
        ),
        (
            "alternate_address = \"not-an-ip\"\n".to_owned(),
            "turnpike.toml:4: probe.alternate_address: \"not-an-ip\" is not an IP address",
        ),
    ] {
        let probe = probe.replace("{first}", &first.to_string());
        let ports = if probe.contains("ports") {
            String::new()
        } else {
            format!("ports = \"{first}-{last}\"\n")
        };
        let config = config_file(&format!("[probe]\nenabled = true\n{ports}{probe}"));
        let out = std::process::Command::new(binary())
            .args(["serve", "--config", config.path.as_str()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{probe}: {err}");
        assert!(err.contains(want), "{probe}\n got: {err}\nwant: {want}");
    }
    // Checked when the responder binds, when the probe address is the
    // relay address: the family must match.
    let config = config_file(&format!(
        "[probe]\nenabled = true\nports = \"{first}-{last}\"\nalternate_address = \"::1\"\n"
    ));
    let mut args = loopback_args();
    args.extend([
        "--config",
        config.path.as_str(),
        "--listen",
        "udp://127.0.0.1:0",
    ]);
    let out = std::process::Command::new(binary())
        .arg("serve")
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("alternate_address: ::1 is not of the family of the probe address 127.0.0.1"),
        "{err}"
    );
}

#[test]
fn validated_sources_have_a_byte_budget_and_trains_are_capped() {
    // 80 kbit/s: 10 000 bytes a second, in a burst of as many.
    let (server, _config, port, _) = v2_server(1, "max_kbps_per_source = 80\n");
    let client = udp_client("127.0.0.1");
    let cookie = cookie_for(&client, port);
    // 1000-byte echoes: ten fit the burst (the unvalidated stamp that got
    // the cookie is not charged), so of twenty sent at once, about ten
    // are answered.
    for seq in 0..20 {
        send_request(&client, &v2_request(Kind::Echo, seq, 0, cookie), 1000, port);
    }
    let metrics = server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
        outcome(m, "answered") + outcome(m, "over_budget") == 21
    });
    let answered = outcome(&metrics, "answered") - 1;
    assert!((9..=11).contains(&answered), "{answered} of 20 answered");
    assert_eq!(outcome(&metrics, "over_budget"), 20 - answered);
    assert_eq!(
        outcome(&metrics, "rate_limited"),
        0,
        "not the unvalidated limit"
    );
    stop_cleanly(server);

    // Two trains at once to one IP; eight in all; a new train from the
    // same source address replaces that source's running one.
    let (server, _config, port, _) = v2_server(1, "");
    let slow = turnpike_probe::Train {
        packets: 50,
        interval_us: 1_000_000,
        len: 68,
    };
    // Starts a train to `c` (with its IP's cookie); whether it came.
    let start = |c: &UdpSocket, seq: u32| {
        let cookie = cookie_for(c, port);
        send_request(c, &v2_request(Kind::Train(slow), seq, 0, cookie), 68, port);
    };
    let first_packet = |c: &UdpSocket| {
        // The first packet of each comes at once, after the stamp ack.
        while recv_reply(c).kind != ReplyKind::Train {}
    };
    let counted = |want: u64| {
        server.metrics_when(Instant::now() + Duration::from_secs(10), |m| {
            outcome(m, "train") + outcome(m, "too_many_trains") == want
        })
    };
    // One host, three ports: the third is refused.
    let same_ip: Vec<UdpSocket> = (0..3).map(|_| udp_client("127.0.0.20")).collect();
    for (seq, c) in (0..).zip(&same_ip[..2]) {
        start(c, seq);
        first_packet(c);
    }
    start(&same_ip[2], 2);
    let metrics = counted(3);
    assert_eq!(outcome(&metrics, "too_many_trains"), 1, "two per IP");
    // Six more hosts fill the eight places; a ninth host is refused.
    let hosts: Vec<UdpSocket> = (1..=7)
        .map(|i| udp_client(&format!("127.0.0.{i}")))
        .collect();
    for (seq, c) in (10..).zip(&hosts[..6]) {
        start(c, seq);
        first_packet(c);
    }
    start(&hosts[6], 99);
    let metrics = counted(10);
    assert_eq!(outcome(&metrics, "train"), 8, "eight in all");
    assert_eq!(outcome(&metrics, "too_many_trains"), 2);
    // A new train from a source with one running replaces it.
    start(&same_ip[0], 100);
    let metrics = counted(11);
    assert_eq!(outcome(&metrics, "train"), 9, "eight, and one replaced");
    assert_eq!(outcome(&metrics, "too_many_trains"), 2);
    // The replacement starts afresh: its packet 0 comes.
    loop {
        let r = recv_reply(&same_ip[0]);
        if r.kind == ReplyKind::Train && r.sequence == 0 {
            break;
        }
    }
    stop_cleanly(server);
}

//! TCP and TLS specifics against the real binary: one port for TURN and
//! HTTP(S), the HTTP side, certificates replaced while allocations live,
//! and the limits on connections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use turnpike_stun::{Attr, Class, Method, channel_data};

const API_KEY: &str = "an-api-key-for-the-tests";

/// A server whose TCP and TLS listeners both serve HTTP too.
fn shared_port_server(extra: &[&str]) -> ServerProcess {
    let mut args = loopback_args();
    args.extend([
        "--listen",
        "udp://127.0.0.1:0",
        "--listen",
        "tcp://127.0.0.1:0?http=true",
        "--listen",
        "tls://127.0.0.1:0?http=true",
        "--api-key",
        API_KEY,
        "--hostname",
        "turn.test",
    ]);
    args.extend(extra);
    ServerProcess::start(&args)
}

fn binding_works(client: &mut TurnClient) -> bool {
    let (tid, bytes) = client.build(Method::BINDING, &[]);
    client
        .exchange(tid, &bytes)
        .is_some_and(|r| r.msg().class() == Class::Success)
}

#[test]
fn one_port_serves_turn_and_http_by_first_byte_and_alpn() {
    let server = shared_port_server(&[]);
    let tcp = server.addr_for(Via::Tcp);
    let tls = server.addr_for(Via::Tls { alpn: false });
    // Plain TCP: STUN, HTTP, and TLS (first byte 0x16), each recognised.
    assert!(binding_works(&mut server.client(Via::Tcp, "", "")));
    assert_eq!(http_get(tcp, "/healthz"), (200, "ok\n".to_owned()));
    assert!(binding_works(&mut TurnClient::via(
        Via::Tls { alpn: false },
        tcp,
        "",
        ""
    )));
    assert_eq!(https_request(tcp, None, "GET", "/healthz", &[], "").0, 200);
    // TLS: by ALPN when offered, by the first decrypted byte when not.
    for via in [Via::Tls { alpn: true }, Via::Tls { alpn: false }] {
        assert!(
            binding_works(&mut TurnClient::via(via, tls, "", "")),
            "{via:?}"
        );
    }
    assert_eq!(
        https_request(tls, Some(b"http/1.1"), "GET", "/healthz", &[], "").0,
        200
    );
    assert_eq!(https_request(tls, None, "GET", "/healthz", &[], "").0, 200);
    // A TURN allocation over the shared TLS port relays.
    let peer = echo_peer(10);
    let mut client = server.client(Via::Tls { alpn: false }, "alice", "wonderland");
    client.allocate();
    // The peer is on loopback, which this server does not allow: the
    // server's own policy answers, which is enough to show TURN works here.
    assert_eq!(client.channel_bind(0x4000, peer), Err(403));
}

#[test]
fn metrics_count_allocations_by_transport_without_names_or_addresses() {
    let server = shared_port_server(&["--allow-peer", "127.0.0.0/8"]);
    let peer = echo_peer(100);
    let mut clients = Vec::new();
    for via in [Via::Udp, Via::Tcp, Via::Tls { alpn: true }] {
        let mut c = server.client(via, "alice", "wonderland");
        c.allocate();
        c.channel_bind(0x4000, peer).unwrap();
        c.send_channel(0x4000, b"12345");
        c.recv(Duration::from_secs(5)).expect("echo");
        clients.push(c);
    }
    let mut bad = server.client(Via::Udp, "alice", "wrong");
    assert_eq!(
        bad.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)])
            .code(),
        Some(401)
    );
    let tls = server.addr_for(Via::Tls { alpn: false });
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, body) = https_request(tls, Some(b"http/1.1"), "GET", "/metrics", &[], "");
        assert_eq!(status, 200);
        if body.contains("turnpike_allocations{transport=\"tls\"} 1") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in [
        "turnpike_allocations{transport=\"udp\"} 1",
        "turnpike_allocations{transport=\"tcp\"} 1",
        "turnpike_allocations{transport=\"tls\"} 1",
        "turnpike_relayed_packets_total{direction=\"to_peer\"} 3",
        "turnpike_relayed_packets_total{direction=\"to_client\"} 3",
        "turnpike_relayed_bytes_total{direction=\"to_peer\"} 15",
        "turnpike_auth_failures_total{reason=\"bad_integrity\"} 1",
        "turnpike_connections 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(!metrics.contains("alice"), "a user name in the metrics");
    assert!(!metrics.contains("127.0.0.1"), "an address in the metrics");
    assert!(metrics.contains("turnpike_tls_handshakes_total{outcome=\"ok\"}"));
}

#[test]
fn credentials_api_hands_out_working_credentials_to_key_holders_only() {
    let server = shared_port_server(&[]);
    let tls = server.addr_for(Via::Tls { alpn: false });
    let post = |headers: &[&str], body: &str| {
        https_request(
            tls,
            Some(b"http/1.1"),
            "POST",
            "/api/v1/credentials",
            headers,
            body,
        )
    };
    assert_eq!(post(&[], "").0, 401);
    assert_eq!(
        post(&["Authorization: Bearer wrong-key-wrong-key"], "").0,
        401
    );
    assert_eq!(
        post(&[&format!("Authorization: Bearer {API_KEY}")], "{not json").0,
        400
    );
    let (status, body) = post(
        &[
            &format!("Authorization: Bearer {API_KEY}"),
            "Content-Type: application/json",
        ],
        r#"{"user":"browser"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ttl"], 86400);
    let ice = &json["iceServers"][0];
    let udp = server.addr_for(Via::Udp).port();
    let tcp = server.addr_for(Via::Tcp).port();
    assert_eq!(
        ice["urls"],
        serde_json::json!([
            format!("turn:turn.test:{udp}?transport=udp"),
            format!("turn:turn.test:{tcp}?transport=tcp"),
            format!("turns:turn.test:{}?transport=tcp", tls.port()),
        ])
    );
    let username = ice["username"].as_str().unwrap();
    assert!(username.ends_with(":browser"), "{username}");
    // They work, over TLS.
    let mut client = server.client(
        Via::Tls { alpn: false },
        username,
        ice["credential"].as_str().unwrap(),
    );
    client.allocate();
    // Without keys, the API is off.
    let plain = ServerProcess::start_every_transport(&loopback_args());
    let http = plain.listening.iter().find(|(t, _)| t == "http").unwrap().1;
    assert_eq!(
        http_request(http, "POST", "/api/v1/credentials", &[], "").0,
        404
    );
}

#[test]
fn curl_reads_health_and_metrics_from_the_turn_port() {
    let curl = require!(on_path("curl", "curl"));
    let server = shared_port_server(&[]);
    for addr in [
        server.addr_for(Via::Tls { alpn: false }),
        server.addr_for(Via::Tcp),
    ] {
        for (scheme, extra) in [
            ("https", "--http2"),
            ("https", "--http1.1"),
            ("http", "--http1.1"),
        ] {
            if scheme == "http" && addr == server.addr_for(Via::Tls { alpn: false }) {
                continue;
            }
            for path in ["/healthz", "/metrics"] {
                let url = format!("{scheme}://{addr}{path}");
                let out = std::process::Command::new(&curl)
                    .args([
                        "--silent",
                        "--show-error",
                        "--fail",
                        "--insecure",
                        "--max-time",
                        "10",
                        extra,
                        &url,
                    ])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{url}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let body = String::from_utf8_lossy(&out.stdout);
                let want = if path == "/healthz" {
                    "ok"
                } else {
                    "turnpike_allocations"
                };
                assert!(body.contains(want), "{url}: {body}");
            }
        }
    }
}

fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
    let pair =
        rcgen::generate_simple_self_signed(vec![name.to_owned(), "localhost".to_owned()]).unwrap();
    // Write beside, then rename: the server never reads half a file.
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(dir.join("key.tmp"), pair.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.tmp"), pair.cert.pem()).unwrap();
    std::fs::rename(dir.join("key.tmp"), key).unwrap();
    std::fs::rename(dir.join("cert.tmp"), cert).unwrap();
    pair.cert.der().to_vec()
}

#[test]
fn certificates_change_under_live_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_pair(dir.path(), "first.test");
    let listen = format!(
        "tls://127.0.0.1:0?http=true&cert={}&key={}",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8", "--listen", &listen]);
    let server = ServerProcess::start(&args);
    let tls = server.addr_for(Via::Tls { alpn: false });
    let peer = echo_peer(100);
    let mut live = server.client(Via::Tls { alpn: false }, "alice", "wonderland");
    assert_eq!(live.certificate(), first);
    live.allocate();
    live.channel_bind(0x4000, peer).unwrap();

    // The files change: new handshakes get the new certificate.
    let second = write_pair(dir.path(), "second.test");
    let deadline = Instant::now() + Duration::from_secs(15);
    while tls_certificate(tls) != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never presented"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGHUP reloads at once.
    let third = write_pair(dir.path(), "third.test");
    std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_certificate(tls) != third {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The allocation made under the first certificate lives on.
    assert_eq!(
        live.request(Method::REFRESH, &[Attr::Lifetime(600)]).code(),
        None
    );
    live.send_channel(0x4000, b"after the swap");
    let got = live.recv(Duration::from_secs(5)).expect("echo");
    assert_eq!(
        channel_data::parse(&got).unwrap().payload,
        b"after the swap"
    );
    // A broken pair is refused and the current certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tls_certificate(tls), third);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0));
    assert!(log.contains("certificate not reloaded"), "{log}");
    assert_eq!(log.matches("allocation ended").count(), 1, "{log}");
}

#[test]
fn half_open_idle_and_surplus_connections_are_closed() {
    let config =
        config_file("[limits]\nhandshake_timeout = 1\nidle_timeout = 1\nconnections = 3\n");
    let mut args = loopback_args();
    args.extend(["--config", &config.path]);
    let server = ServerProcess::start_every_transport(&args);
    let tcp = server.addr_for(Via::Tcp);
    let tls = server.addr_for(Via::Tls { alpn: false });

    // Half-open: a connection that says nothing, or starts a TLS
    // handshake and stops, is closed after handshake_timeout.
    let silent = TcpStream::connect(tcp).unwrap();
    let mut half_tls = TcpStream::connect(tls).unwrap();
    std::io::Write::write_all(&mut half_tls, &[0x16, 0x03, 0x01]).unwrap();
    for (name, mut s) in [("silent", silent), ("half a handshake", half_tls)] {
        let started = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = std::io::Read::read(&mut s, &mut [0u8; 16]).unwrap_or(0);
        assert_eq!(n, 0, "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
    }

    // A slow drip: a ChannelData that announces 64 KiB, a byte at a time,
    // never completes a message, so the connection stays half-open and is
    // closed at handshake_timeout, however steadily it drips.
    let mut drip = TcpStream::connect(tcp).unwrap();
    drip.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    std::io::Write::write_all(&mut drip, &[0x40, 0x00, 0xFF, 0xFF]).unwrap();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        if std::io::Write::write_all(&mut drip, &[0]).is_err() {
            closed = true;
            break;
        }
        match std::io::Read::read(&mut drip, &mut [0u8; 16]) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a connection dripping a message stayed open");

    // Idle: a client that made no allocation is closed after idle_timeout,
    // over TCP and TLS; one with an allocation stays.
    for via in [Via::Tcp, Via::Tls { alpn: false }, Via::Tls { alpn: true }] {
        let mut idle = server.client(via, "", "");
        assert!(binding_works(&mut idle), "{via:?}");
        assert!(
            idle.closed_within(Duration::from_secs(5)),
            "an idle connection stayed open over {via:?}"
        );
    }
    let mut busy = server.client(Via::Tcp, "alice", "wonderland");
    busy.allocate();
    assert!(
        !busy.closed_within(Duration::from_millis(2500)),
        "a connection with an allocation was closed"
    );

    // Surplus: with three connections allowed and `busy` holding one, the
    // fourth of these is refused.
    let mut extra: Vec<TurnClient> = (0..2).map(|_| server.client(Via::Tcp, "", "")).collect();
    for c in &mut extra {
        assert!(binding_works(c));
    }
    let mut refused = server.client(Via::Tcp, "", "");
    assert!(
        refused.closed_within(Duration::from_secs(5)),
        "a connection over the limit was kept"
    );
}

/// `limits.connections_per_source`: one address cannot hold more, and a
/// closed connection frees its place.
#[test]
fn connections_per_source_are_capped() {
    let config = config_file("[limits]\nconnections_per_source = 2\n");
    let mut args = loopback_args();
    args.extend(["--config", &config.path]);
    let server = ServerProcess::start_every_transport(&args);
    let mut held: Vec<TurnClient> = (0..2).map(|_| server.client(Via::Tcp, "", "")).collect();
    for c in &mut held {
        assert!(binding_works(c));
    }
    let mut third = server.client(Via::Tcp, "", "");
    assert!(
        third.closed_within(Duration::from_secs(5)),
        "a third connection from one address was kept"
    );
    // (That sources are told apart is the unit test in stream.rs.)
    // One closes: its place is free again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = server.client(Via::Tcp, "", "");
        if binding_works(&mut again) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `limits.max_message_size`: a datagram above it is dropped, a stream
/// that announces a message above it is closed; messages up to it pass.
#[test]
fn messages_above_the_size_limit_are_dropped_or_close_the_stream() {
    let config = config_file("[limits]\nmax_message_size = 1200\n");
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8", "--config", &config.path]);
    let server = ServerProcess::start_every_transport(&args);
    let peer = echo_peer(100);
    let echoed = |client: &mut TurnClient| {
        let got = client.recv(Duration::from_secs(5)).expect("an echo");
        channel_data::parse(&got).unwrap().payload.len()
    };
    for via in EVERY_TRANSPORT {
        let mut client = server.client(via, "alice", "wonderland");
        client.allocate();
        client.channel_bind(0x4000, peer).unwrap();
        // 4 + 1196 bytes: exactly the limit, on a stream too (no padding).
        client.send_channel(0x4000, &[1; 1196]);
        assert_eq!(echoed(&mut client), 1196, "{via:?}");
        // 1201 bytes as a datagram, 1204 with a stream's padding.
        client.send_channel(0x4000, &[2; 1197]);
        if via == Via::Udp {
            client.send_channel(0x4000, &[3; 10]);
            assert_eq!(echoed(&mut client), 10, "the large one was dropped");
        } else {
            assert!(
                client.closed_within(Duration::from_secs(5)),
                "{via:?}: the connection stayed open"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    server.metrics_when(deadline, |m| {
        metric(m, "turnpike_oversized_messages_total") == 4
    });
}

/// SECURITY.md "Defaults to ship": TLS 1.2 or later. A client that offers
/// only TLS 1.0 or 1.1 gets no session; TLS 1.2 and 1.3 do (so that the
/// refusals are about the version, not the tool).
#[test]
fn tls_below_1_2_is_refused() {
    let openssl = require!(on_path("openssl", "openssl"));
    let server = ServerProcess::start_every_transport(&loopback_args());
    let tls = server.addr_for(Via::Tls { alpn: false });
    let handshake = |version: &str| {
        let out = std::process::Command::new(&openssl)
            .args([
                "s_client",
                "-connect",
                &tls.to_string(),
                version,
                // OpenSSL 3 itself refuses TLS 1.0 and 1.1 at its default
                // security level; lower it so that the server decides.
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    for version in ["-tls1", "-tls1_1"] {
        let (ok, text) = handshake(version);
        assert!(!ok, "{version} was accepted:\n{text}");
        assert!(
            !text.contains("Cipher is") || text.contains("Cipher is (NONE)"),
            "{version} negotiated a cipher:\n{text}"
        );
    }
    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, text) = handshake(version);
        assert!(ok, "{version} was refused:\n{text}");
    }
}

/// SECURITY.md §D: per-connection buffers are bounded. A TCP client that
/// stops reading while its peer floods it costs the server its bounded
/// write queue, not memory in step with the flood; other clients go on.
#[test]
fn a_client_that_stops_reading_costs_a_bounded_queue() {
    // No bandwidth limit: the write queue's bound is what is tested.
    let config = config_file("[limits]\nbandwidth_kbps = 0\n");
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8", "--config", &config.path]);
    let server = ServerProcess::start_every_transport(&args);
    let flooder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut stuck = server.client(Via::Tcp, "alice", "wonderland");
    let relayed = stuck.allocate();
    stuck
        .channel_bind(0x4000, flooder.local_addr().unwrap())
        .unwrap();
    let before = server.rss_kib();
    // 100 MB toward a client that reads nothing, paced so that the server
    // takes most of it rather than the relay socket's buffer dropping it.
    let payload = vec![0xABu8; 1000];
    for i in 0..100_000 {
        let _ = flooder.send_to(&payload, relayed);
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    // Once the server has taken what it will (a round trip through it on
    // another connection orders us after the flood's datagrams).
    let peer = echo_peer(10);
    let mut other = server.client(Via::Tcp, "alice", "wonderland");
    other.allocate();
    other.channel_bind(0x4000, peer).unwrap();
    other.send_channel(0x4000, b"unaffected");
    let got = other
        .recv(Duration::from_secs(10))
        .expect("the other client's echo");
    assert_eq!(got.get(4..), Some(b"unaffected".as_slice()));
    let after = server.rss_kib();
    assert!(
        after <= before + 8 * 1024,
        "RSS grew from {before} to {after} KiB while a client did not read"
    );
}

//! Draining: on SIGTERM (or a first SIGINT) the real binary stops taking
//! new allocations, answering 300 with the configured alternate or 508,
//! and `/healthz` turns 503; existing allocations keep relaying until they
//! end or the drain timeout passes; a second signal stops at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use turnpike_stun::{Attr, AttrType, Method, channel_data};

fn start(extra: &[&str]) -> ServerProcess {
    let mut args = loopback_args();
    args.extend([
        "--allow-peer",
        "127.0.0.0/8",
        "--http-address",
        "127.0.0.1:0",
    ]);
    args.extend(extra);
    ServerProcess::start(&args)
}

/// Waits until `/healthz` says the server drains (the signal was taken).
fn wait_until_draining(server: &ServerProcess) {
    let http = server.http_addr().expect("an HTTP listener");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(http, "/healthz");
        if status == 503 {
            assert_eq!(body, "draining\n");
            return;
        }
        assert!(Instant::now() < deadline, "/healthz never said draining");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn draining_sends_new_clients_away_and_keeps_relaying_for_existing_ones() {
    let server = start(&[
        "--drain-timeout",
        "120",
        "--drain-alternate",
        "127.0.0.2:3478",
    ]);
    let peer = echo_peer(10);
    let mut alice = TurnClient::new(server.addr, "alice", "wonderland");
    alice.allocate();
    alice.channel_bind(0x4000, peer).unwrap();
    let http = server.http_addr().unwrap();
    assert_eq!(http_get(http, "/healthz"), (200, "ok\n".to_owned()));
    assert!(http_get(http, "/metrics").1.contains("turnpike_draining 0"));

    server.signal("TERM");
    wait_until_draining(&server);
    let metrics = http_get(server.http_addr().unwrap(), "/metrics").1;
    assert!(metrics.contains("turnpike_draining 1"), "{metrics}");

    // A newcomer is sent to the alternate, in an authenticated answer.
    let mut bob = TurnClient::new(server.addr, "alice", "wonderland");
    let r = bob.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    assert_eq!(r.code(), Some(300));
    let alternate: SocketAddr = "127.0.0.2:3478".parse().unwrap();
    assert_eq!(
        r.msg().get(AttrType::ALTERNATE_SERVER),
        Some(Ok(Attr::AlternateServer(alternate)))
    );
    assert!(r.msg().has_integrity());

    // The existing allocation relays and refreshes as before.
    alice.send_channel(0x4000, b"still here");
    let echoed = alice.recv(Duration::from_secs(5)).expect("the echo");
    assert_eq!(channel_data::parse(&echoed).unwrap().payload, b"still here");
    let refreshed = alice.request(Method::REFRESH, &[Attr::Lifetime(600)]);
    assert_eq!(refreshed.code(), None, "refresh while draining");

    // Its end is the server's end, long before the drain timeout.
    let ended = Instant::now();
    let deleted = alice.request(Method::REFRESH, &[Attr::Lifetime(0)]);
    assert_eq!(deleted.code(), None);
    let (code, log) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    assert!(ended.elapsed() < Duration::from_secs(20));
    assert_eq!(
        lines_with(&log, "draining: new allocations are refused").len(),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "the last allocation ended: stopping").len(),
        1,
        "{log}"
    );
}

#[test]
fn without_an_alternate_new_allocations_get_508_until_the_timeout_stops_the_server() {
    let server = start(&["--drain-timeout", "2"]);
    let mut alice = TurnClient::new(server.addr, "alice", "wonderland");
    let relayed = alice.allocate();
    let signalled = Instant::now();
    server.signal("TERM");
    wait_until_draining(&server);
    let mut bob = TurnClient::new(server.addr, "alice", "wonderland");
    let r = bob.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    assert_eq!(r.code(), Some(508));
    assert_eq!(r.msg().get(AttrType::ALTERNATE_SERVER), None);

    let (code, log) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "stopped before the timeout"
    );
    assert_eq!(
        lines_with(&log, "drain timeout passed: stopping").len(),
        1,
        "{log}"
    );
    // The allocation still held is ended and logged.
    let ended = lines_with(&log, "allocation ended");
    assert_eq!(ended.len(), 1, "{log}");
    assert!(
        ended[0].contains(&format!("relayed={relayed}")),
        "{}",
        ended[0]
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    for (first, second) in [("INT", "INT"), ("TERM", "INT"), ("INT", "TERM")] {
        let server = start(&["--drain-timeout", "600"]);
        let mut alice = TurnClient::new(server.addr, "alice", "wonderland");
        alice.allocate();
        server.signal(first);
        wait_until_draining(&server);
        let again = Instant::now();
        server.signal(second);
        let (code, log) = server.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{first} then {second}: {log}");
        assert!(again.elapsed() < Duration::from_secs(20));
        assert_eq!(
            lines_with(&log, &format!("SIG{second} again: stopping now")).len(),
            1,
            "{log}"
        );
        assert_eq!(lines_with(&log, "allocation ended").len(), 1, "{log}");
    }
}

#[test]
fn with_no_allocation_to_wait_for_sigterm_stops_at_once() {
    let server = start(&["--drain-timeout", "600"]);
    let signalled = Instant::now();
    server.signal("TERM");
    let (code, log) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    assert!(signalled.elapsed() < Duration::from_secs(20));
    assert!(lines_with(&log, "draining").is_empty(), "{log}");
}

#[test]
fn drain_settings_are_checked() {
    for (args, says) in [
        (
            vec!["--drain-alternate", "0.0.0.0:3478"],
            "not an address clients can reach",
        ),
        (
            vec![
                "--drain-alternate",
                "192.0.2.1:3478",
                "--drain-alternate",
                "192.0.2.2:3478",
            ],
            "at most one alternate per address family",
        ),
        (vec!["--drain-timeout", "86401"], "86400"),
    ] {
        let out = std::process::Command::new(binary())
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

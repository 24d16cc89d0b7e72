//! Interop with TURN clients this project did not write, against the real
//! binary on loopback: coturn's `turnutils_stunclient` and
//! `turnutils_uclient` with coturn's own echo peer `turnutils_peer` (Debian
//! package `coturn`), and aioice's TURN client (Python, driven by
//! `tests/interop/turn_client.py`).
//!
//! `scripts/test-deps` installs both. Without them a test prints
//! `SKIPPED: ...` and passes, except under `CI=true`, where it fails: CI
//! must not skip silently.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The REST API secret `loopback_args` gives the server.
const REST_SECRET: &str = "a-rest-api-secret";

/// `turnutils_uclient -m 20 -n 100`: clients, and messages each sends.
const UCLIENT_CLIENTS: u64 = 20;
const UCLIENT_MESSAGES: u64 = 100;

/// Datagrams the aioice client sends and expects back.
const AIOICE_COUNT: usize = 200;

/// A coturn program on PATH.
fn tool(name: &str) -> Result<PathBuf, String> {
    on_path(name, "coturn")
}

/// What a bounded run of a client printed and how it ended.
struct Run {
    /// `None` when it was killed for taking too long.
    status: Option<ExitStatus>,
    output: String,
    elapsed: Duration,
    command: String,
}

impl Run {
    fn assert_success(&self) {
        match self.status {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "`{}` failed ({status}) after {:?}:\n{}",
                self.command, self.elapsed, self.output
            ),
            None => panic!(
                "`{}` was killed after {:?}, still running:\n{}",
                self.command, self.elapsed, self.output
            ),
        }
    }
}

/// Runs `program` with `args`, killed if it runs longer than `limit`, so
/// a client that hangs fails the test instead of hanging it.
fn run_bounded(program: &Path, args: &[&str], limit: Duration) -> Run {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let finished = run_with_limit(Command::new(program).args(args), limit, |_| {});
    Run {
        status: finished.status,
        output: finished.stdout + &finished.stderr,
        elapsed: finished.elapsed,
        command,
    }
}

/// coturn's UDP echo server on a loopback port picked at run time, killed
/// when dropped.
struct CoturnPeer {
    child: Child,
    port: u16,
}

impl CoturnPeer {
    fn start(program: &Path) -> Self {
        // The port is free when picked but may be taken before the peer
        // binds it; then the peer exits and another port is tried.
        for _ in 0..10 {
            let port = UdpSocket::bind((LOOPBACK, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(program)
                .args(["-p", &port.to_string(), "-L", "127.0.0.1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if echoes(&mut child, SocketAddr::new(LOOPBACK, port)) {
                return Self { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("turnutils_peer did not start");
    }
}

impl Drop for CoturnPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `child` echoes a probe sent to `addr` within a few seconds.
fn echoes(child: &mut Child, addr: SocketAddr) -> bool {
    let probe = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    probe.connect(addr).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let _ = probe.send(b"ready?");
        match probe.recv(&mut buf) {
            Ok(n) if &buf[..n] == b"ready?" => return true,
            Ok(_) => {}
            // Nothing bound yet: the ICMP error comes back at once.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {}
        }
    }
    false
}

/// A server on loopback that relays to loopback peers, reachable over UDP,
/// TCP and TLS.
fn relay_server() -> ServerProcess {
    relay_server_with(&[])
}

fn relay_server_with(extra: &[&str]) -> ServerProcess {
    let mut args = loopback_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    args.extend(extra);
    ServerProcess::start_every_transport(&args)
}

/// Stops the server and checks its log: a clean exit, `allocations`
/// "allocation created" lines and as many "allocation ended" lines, nothing
/// at warning level. Returns the "allocation ended" lines.
fn stop_and_check_log(server: ServerProcess, allocations: usize) -> Vec<String> {
    let log = stop_cleanly(server);
    let created = lines_with(&log, "allocation created");
    let ended = lines_with(&log, "allocation ended");
    assert_eq!(created.len(), allocations, "allocations created:\n{log}");
    assert_eq!(ended.len(), allocations, "allocations ended:\n{log}");
    ended
}

/// The number after `key` in `line`, e.g. `tot_recv_msgs=` → 2000.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The sum of `key` (e.g. `to_peer_packets=`) over log lines.
fn sum_of(lines: &[String], key: &str) -> u64 {
    lines.iter().filter_map(|l| number_after(l, key)).sum()
}

#[test]
fn stunclient_learns_its_reflexive_address() {
    let stunclient = require!(tool("turnutils_stunclient"));
    let mut server = relay_server();
    let port = server.addr.port().to_string();
    let run = run_bounded(
        &stunclient,
        &["-p", &port, "127.0.0.1"],
        Duration::from_secs(20),
    );
    run.assert_success();
    // "0: : IPv4. UDP reflexive addr: 127.0.0.1:46121"
    let reflexive: SocketAddr = run
        .output
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| {
            panic!(
                "no reflexive address from `{}`:\n{}",
                run.command, run.output
            )
        })
        .trim()
        .parse()
        .unwrap();
    assert_eq!(reflexive.ip(), LOOPBACK, "{}", run.output);
    assert_ne!(reflexive.port(), 0, "{}", run.output);
    assert!(server.is_running());
    stop_and_check_log(server, 0);
}

/// Runs `turnutils_uclient` with `credentials` and `mode` against a fresh
/// server `via` a transport, with `turnutils_peer` as the peer, and checks
/// that all 2000 messages came back and that the server saw them. With
/// `-T` in `mode` the clients relay to one another over RFC 6062 TCP
/// connections instead.
fn uclient(via: Via, credentials: &[&str], mode: &[&str]) {
    let uclient = require!(tool("turnutils_uclient"));
    let peer_program = require!(tool("turnutils_peer"));
    let tcp_relay = mode.contains(&"-T");
    let mut server = relay_server_with(if tcp_relay { &["--relay-tcp"] } else { &[] });
    let peer = CoturnPeer::start(&peer_program);
    let server_port = server.addr_for(via).port().to_string();
    let peer_port = peer.port.to_string();
    let mut args: Vec<&str> = credentials.to_vec();
    args.extend(mode);
    // uclient: -t is TCP, -t -S is TLS (-S alone would be DTLS).
    args.extend(match via {
        Via::Udp => &[][..],
        Via::Tcp => &["-t"][..],
        Via::Tls { .. } => &["-t", "-S"][..],
    });
    args.extend([
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-m",
        "20",
        "-n",
        "100",
        "-l",
        "500",
        "-c",
        "-p",
        &server_port,
        "127.0.0.1",
    ]);
    let run = run_bounded(&uclient, &args, Duration::from_secs(90));
    run.assert_success();
    let out = &run.output;

    // "start_mclient: tot_send_msgs=2000, tot_recv_msgs=2000": the last
    // such line is the total (those before it are progress reports).
    let totals = out
        .lines()
        .rfind(|l| l.contains("tot_send_msgs="))
        .unwrap_or_else(|| panic!("no totals from `{}`:\n{out}", run.command));
    let sent = number_after(totals, "tot_send_msgs=");
    let received = number_after(totals, "tot_recv_msgs=");
    let expected = UCLIENT_CLIENTS * UCLIENT_MESSAGES;
    assert_eq!(sent, Some(expected), "sent, `{}`:\n{out}", run.command);
    assert_eq!(
        received,
        Some(expected),
        "received, `{}`:\n{out}",
        run.command
    );
    // "Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)"
    let lost = out
        .lines()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("no loss report from `{}`:\n{out}", run.command));
    assert_eq!(
        number_after(lost, "Total lost packets "),
        Some(0),
        "`{}`:\n{out}",
        run.command
    );
    assert_eq!(
        number_after(lost, "total send dropped "),
        Some(0),
        "`{}`:\n{out}",
        run.command
    );
    eprintln!(
        "`{}`: sent {expected}, received {expected}, {} in {:?}",
        run.command,
        lost.split(": : ").last().unwrap_or(lost),
        run.elapsed
    );

    assert!(server.is_running(), "the server died:\n{out}");
    drop(peer);
    if tcp_relay {
        check_tcp_relay_log(server, out);
        return;
    }
    // uclient allocates twice per client: a probe it abandons without
    // deleting (it looks for ALTERNATE-SERVER) and the allocation it relays
    // on. The probes end when the server stops.
    let clients = usize::try_from(UCLIENT_CLIENTS).unwrap();
    let ended = stop_and_check_log(server, 2 * clients);
    assert_eq!(
        ended
            .iter()
            .filter(|l| l.contains("reason=\"deleted\""))
            .count(),
        clients,
        "{ended:#?}"
    );
    // The server's own count of what it relayed agrees with the client's.
    assert_eq!(sum_of(&ended, "to_peer_packets="), expected, "{ended:#?}");
    assert_eq!(sum_of(&ended, "to_client_packets="), expected, "{ended:#?}");
}

/// After `turnutils_uclient -T`: every client connected to every other
/// (one Connect per pair, answered by a ConnectionAttempt at the other end),
/// all 380 peer connections were bound and joined, and the server carried
/// every byte the clients sent.
fn check_tcp_relay_log(server: ServerProcess, out: &str) {
    let clients = usize::try_from(UCLIENT_CLIENTS).unwrap();
    let joined = clients * (clients - 1);
    assert!(
        out.contains(&format!("{joined} connections are completed")),
        "not every peer connection was bound:\n{out}"
    );
    let log = stop_cleanly(server);
    let created = lines_with(&log, "allocation created");
    let ended = lines_with(&log, "allocation ended");
    assert_eq!(created.len(), ended.len(), "{log}");
    assert!(created.iter().all(|l| l.contains("transport=tcp")), "{log}");
    // The clients' allocations are deleted; the probes before them close.
    let deleted = ended
        .iter()
        .filter(|l| l.contains("reason=\"deleted\""))
        .count();
    assert_eq!(deleted, clients, "{ended:#?}");
    let peers = lines_with(&log, "peer connection ended");
    assert_eq!(peers.len(), joined, "{log}");
    let bytes = UCLIENT_CLIENTS * UCLIENT_MESSAGES * 500;
    assert_eq!(sum_of(&peers, "to_peer_bytes="), bytes, "{peers:#?}");
    assert_eq!(sum_of(&peers, "to_client_bytes="), bytes, "{peers:#?}");
}

#[test]
fn uclient_relays_over_channels() {
    uclient(Via::Udp, &["-u", "alice", "-w", "wonderland"], &[]);
}

#[test]
fn uclient_relays_over_send_indications() {
    uclient(Via::Udp, &["-u", "alice", "-w", "wonderland"], &["-s"]);
}

#[test]
fn uclient_relays_over_channels_with_rest_credentials() {
    uclient(Via::Udp, &["-u", "anyone", "-W", REST_SECRET], &[]);
}

#[test]
fn uclient_relays_over_send_indications_with_rest_credentials() {
    uclient(Via::Udp, &["-u", "anyone", "-W", REST_SECRET], &["-s"]);
}

#[test]
fn uclient_relays_over_tcp() {
    uclient(Via::Tcp, &["-u", "alice", "-w", "wonderland"], &[]);
}

#[test]
fn uclient_relays_over_tcp_connections() {
    // RFC 6062: -T makes uclient's control and data connections TCP.
    uclient(Via::Tcp, &["-u", "alice", "-w", "wonderland"], &["-T"]);
}

#[test]
fn uclient_relays_over_tls() {
    uclient(
        Via::Tls { alpn: false },
        &["-u", "anyone", "-W", REST_SECRET],
        &[],
    );
}

/// Runs the aioice client with `credentials` through `server` to a fresh
/// echo peer and checks that every datagram came back.
fn aioice(python: &Path, server: &ServerProcess, credentials: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/turn_client.py");
    let (server_addr, peer) = (server.addr.to_string(), echo_peer(AIOICE_COUNT).to_string());
    let count = AIOICE_COUNT.to_string();
    let mut args = vec![script, "--server", &server_addr, "--peer", &peer];
    args.extend(credentials);
    args.extend(["--count", &count, "--size", "500", "--timeout", "30"]);
    let run = run_bounded(python, &args, Duration::from_secs(60));
    run.assert_success();
    let report: serde_json::Value = run
        .output
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report from `{}`:\n{}", run.command, run.output));
    let expected = serde_json::json!(AIOICE_COUNT);
    assert_eq!(report["sent"], expected, "{report}");
    assert_eq!(report["received"], expected, "{report}");
    let relayed: SocketAddr = report["relayed"].as_str().unwrap().parse().unwrap();
    assert_eq!(relayed.ip(), LOOPBACK, "{report}");
    eprintln!("`{}`: {report} in {:?}", run.command, run.elapsed);
}

/// Checks what the server logged for aioice's allocations: deleted by the
/// client, every datagram relayed both ways.
fn check_aioice_allocations(ended: &[String], user: impl Fn(&str) -> bool) {
    for line in ended {
        assert!(line.contains("reason=\"deleted\""), "{line}");
        let user_field = line
            .split("user=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(user(user_field), "{line}");
        let count = u64::try_from(AIOICE_COUNT).unwrap();
        assert_eq!(
            number_after(line, "to_peer_packets="),
            Some(count),
            "{line}"
        );
        assert_eq!(
            number_after(line, "to_client_packets="),
            Some(count),
            "{line}"
        );
    }
}

#[test]
fn aioice_relays_with_static_credentials() {
    let python = require!(venv_python("aioice"));
    let mut server = relay_server();
    aioice(
        &python,
        &server,
        &["--username", "alice", "--password", "wonderland"],
    );
    assert!(server.is_running());
    let ended = stop_and_check_log(server, 1);
    check_aioice_allocations(&ended, |user| user == "alice");
}

#[test]
fn aioice_relays_with_rest_credentials() {
    let python = require!(venv_python("aioice"));
    let mut server = relay_server();

    // Credentials the Python script makes from the secret on its own.
    aioice(
        &python,
        &server,
        &["--username", "anyone", "--rest-secret", REST_SECRET],
    );
    assert!(server.is_running());

    // Credentials from `turnpike credentials`, as a service would hand out.
    let minted = Command::new(binary())
        .args(["credentials", "--secret", REST_SECRET, "--user", "anyone"])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let minted: serde_json::Value = serde_json::from_slice(&minted.stdout).unwrap();
    let (username, password) = (
        minted["username"].as_str().unwrap(),
        minted["password"].as_str().unwrap(),
    );
    aioice(
        &python,
        &server,
        &["--username", username, "--password", password],
    );
    assert!(server.is_running());

    let ended = stop_and_check_log(server, 2);
    check_aioice_allocations(&ended, |user| {
        user.split_once(':')
            .is_some_and(|(expiry, name)| name == "anyone" && expiry.parse::<u64>().is_ok())
    });
}

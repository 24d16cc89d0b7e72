//! The command line as a new user meets it: defaults, errors and exit
//! codes, credentials.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use turnpike_stun::{Attr, AttrType, Method};

/// Runs the binary; a run that is still going after 20 s (a server that
/// should have refused to start) is killed and fails the test.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_without_configuration_generates_a_secret_and_says_how_to_use_it() {
    // Only the port and the state directory differ from `turnpike serve`.
    let server = ServerProcess::start(&[]);
    let banner = server.banner.join("\n");
    assert!(
        banner.contains("credentials: REST secret kept in"),
        "{banner}"
    );
    assert!(
        banner.contains("turnpike credentials --state-dir"),
        "{banner}"
    );
    let secret = std::fs::read_to_string(server.state_dir().join("rest-secret")).unwrap();
    assert!(secret.trim().len() >= 32);

    // The instructions work: credentials from the state directory allocate.
    let out = run(&[
        "credentials",
        "--state-dir",
        server.state_dir().to_str().unwrap(),
        "--user",
        "newcomer",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut client = TurnClient::new(
        server.addr,
        json["username"].as_str().unwrap(),
        json["password"].as_str().unwrap(),
    );
    let realm = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let r = client.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    assert_eq!(
        r.code(),
        Some(401),
        "the realm is the host name, not the test realm"
    );
    assert_eq!(
        r.msg().get(AttrType::REALM),
        Some(Ok(Attr::Realm(realm.as_str())))
    );
}

#[test]
fn credentials_prints_the_documented_json() {
    let out = run(&[
        "credentials",
        "--secret",
        "s3cret",
        "--user",
        "alice",
        "--ttl",
        "3600",
        "--uri",
        "turn:turn.example.com:3478",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The documented shape, in the documented order.
    let text = String::from_utf8_lossy(&out.stdout);
    let order: Vec<usize> = ["\"username\":", "\"password\":", "\"ttl\":", "\"uris\":"]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
    assert!(order.is_sorted(), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let username = json["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 3590..=now + 3610).contains(&expiry),
        "{expiry} vs {now}"
    );
    assert_eq!(user, "alice");
    assert_eq!(json["ttl"], 3600);
    assert_eq!(
        json["uris"],
        serde_json::json!(["turn:turn.example.com:3478"])
    );
    // base64 of a 20-byte HMAC-SHA1.
    assert_eq!(json["password"].as_str().unwrap().len(), 28);

    for bad in [
        vec!["credentials", "--user", "alice"],
        vec!["credentials", "--secret", "", "--user", "alice"],
        vec![
            "credentials",
            "--secret",
            "s",
            "--user",
            "alice",
            "--ttl",
            "0",
        ],
        vec![
            "credentials",
            "--secret",
            "s",
            "--state-dir",
            "/nonexistent",
            "--user",
            "a",
        ],
    ] {
        let out = run(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}

#[test]
fn a_bad_configuration_stops_before_binding_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnpike.toml");
    std::fs::write(
        &path,
        "realm = \"turnpike.test\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n[relay]\nports = \"70000-1\"\n",
    )
    .unwrap();
    let out = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("turnpike.toml:6: relay.ports:"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));

    let out = run(&[
        "serve",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("missing.toml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        vec!["serve", "--relay-ports", "9-1"],
        vec!["serve", "--listen", "sctp://127.0.0.1:1"],
        vec!["serve", "--listen", "udp://127.0.0.1:1?http=true"],
        vec!["serve", "--user", "nopassword"],
        vec!["serve", "--allow-peer", "10.0.0.0/33"],
        vec!["serve", "--realm", ""],
        vec!["serve", "--threads", "0"],
        vec!["serve", "--log-level", "verbose"],
        vec!["serve", "--no-such-flag"],
        vec!["no-such-command"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}

#[test]
fn a_port_in_use_exits_1_with_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let listen = format!("udp://{addr}");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "serve",
        "--listen",
        &listen,
        "--user",
        "a:b",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot listen on {listen}")), "{err}");
}

#[test]
fn a_second_server_cannot_join_the_port_of_the_first() {
    let first = ServerProcess::start(&loopback_args());
    let listen = format!("udp://{}", first.addr);
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "serve",
        "--listen",
        &listen,
        "--user",
        "a:b",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot listen on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_documents_every_flag() {
    let out = run(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--realm",
        "--relay-address",
        "--relay-ports",
        "--advertised",
        "--user",
        "--secret",
        "--allow-peer",
        "--deny-peer",
        "--state-dir",
        "--threads",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = run(&["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status"));
}

//! `turnpike bench` against the real server on loopback: the JSON report
//! over UDP, TCP and TLS, churn, the server's process figures, and the
//! errors a user can make. Small and short runs; nothing here depends on
//! how fast the machine is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn server() -> ServerProcess {
    let mut args = loopback_args();
    args.extend([
        "--allow-peer",
        "127.0.0.0/8",
        "--listen",
        "udp://127.0.0.1:0",
        "--listen",
        "tcp://127.0.0.1:0",
        "--listen",
        "tls://127.0.0.1:0",
    ]);
    ServerProcess::start(&args)
}

/// Runs `turnpike bench` with `args`; returns the exit code, stdout and
/// stderr.
fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("bench").args(args);
    let done = run_with_limit(&mut cmd, Duration::from_secs(90), |_| {});
    (done.status.and_then(|s| s.code()), done.stdout, done.stderr)
}

/// Runs it and parses the JSON report, after checking it succeeded.
fn report(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = bench(&all);
    assert_eq!(code, Some(0), "bench failed:\nstdout: {out}\nstderr: {err}");
    assert_eq!(out.lines().count(), 1, "one JSON object: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn check_traffic(r: &serde_json::Value, allocations: u64) {
    assert_eq!(r["allocations"], allocations);
    assert_eq!(r["setup"]["created"], allocations, "{r}");
    assert_eq!(r["setup"]["failed"], 0, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    let received = r["received"].as_u64().unwrap();
    let peer = r["peer_received"].as_u64().unwrap();
    assert!(sent > 0 && received > 0, "{r}");
    assert!(received <= sent && peer <= sent, "{r}");
    assert_eq!(r["relayed_packets"].as_u64().unwrap(), peer + received);
    assert!(r["loss_pct"].as_f64().unwrap() < 5.0, "{r}");
    let rtt = &r["rtt_us"];
    assert!(
        rtt["p50"].as_u64().unwrap() <= rtt["p99"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        rtt["p999"].as_u64().unwrap() <= rtt["max"].as_u64().unwrap(),
        "{r}"
    );
    assert!(r["target_pps"].as_f64().unwrap() > 0.0);
    assert!(r["churn"].is_null() && r["steps"].is_null());
}

#[test]
fn udp_streams_and_reports_the_server_process() {
    let server = server();
    let addr = server.addr_for(Via::Udp).to_string();
    let pid = server.pid().to_string();
    let r = report(&[
        &addr,
        "--user",
        "alice:wonderland",
        "--allocations",
        "20",
        "--rate",
        "50",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--threads",
        "2",
        "--server-pid",
        &pid,
    ]);
    check_traffic(&r, 20);
    assert_eq!(r["transport"], "udp");
    assert_eq!(r["rate_pps"], 50);
    assert_eq!(r["target_pps"], 1000.0);
    let sp = &r["server_process"];
    assert_eq!(sp["pid"].as_u64().unwrap(), u64::from(server.pid()));
    assert!(sp["cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
    assert!(sp["cpu_us_per_relayed_packet"].as_f64().unwrap() >= 0.0);
    assert!(sp["rss_before_kib"].as_u64().unwrap() > 0);
    assert!(sp["rss_after_kib"].as_u64().unwrap() > 0);
    assert!(sp["peak_rss_kib"].as_u64().unwrap() >= sp["rss_after_kib"].as_u64().unwrap());
    assert!(sp["rss_per_allocation_bytes"].is_i64());
    // The allocations were deleted at the end: the server logged nothing
    // wrong and stops cleanly.
    stop_cleanly(server);
}

#[test]
fn tcp_and_tls_stream_one_connection_per_allocation() {
    let server = server();
    let tcp = server.addr_for(Via::Tcp).to_string();
    let r = report(&[
        &tcp,
        "--transport",
        "tcp",
        "--secret",
        "a-rest-api-secret",
        "--allocations",
        "20",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ]);
    check_traffic(&r, 20);
    assert_eq!(r["transport"], "tcp");
    assert!(r["tls_verified"].is_null());

    let tls = server.addr_for(Via::Tls { alpn: true }).to_string();
    let r = report(&[
        &tls,
        "--transport",
        "tls",
        "--user",
        "alice:wonderland",
        "--allocations",
        "5",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    check_traffic(&r, 5);
    assert_eq!(
        r["tls_verified"], false,
        "no --ca: not verified, and said so"
    );
}

#[test]
fn churn_creates_and_deletes() {
    let server = server();
    for (transport, addr) in [
        ("udp", server.addr_for(Via::Udp)),
        ("tcp", server.addr_for(Via::Tcp)),
    ] {
        let addr = addr.to_string();
        let r = report(&[
            &addr,
            "--transport",
            transport,
            "--user",
            "alice:wonderland",
            "--churn",
            "--allocations",
            "10",
            "--duration",
            "1",
        ]);
        let c = &r["churn"];
        let created = c["created"].as_u64().unwrap();
        assert!(created > 0, "{r}");
        assert!(c["deleted"].as_u64().unwrap() <= created, "{r}");
        assert_eq!(c["failed"], 0, "{r}");
        assert_eq!(c["seconds"], 1.0);
        assert!(c["per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(r["sent"], 0);
    }
    stop_cleanly(server);
}

#[test]
fn saturate_reports_steps_and_the_best() {
    let server = server();
    let addr = server.addr_for(Via::Udp).to_string();
    // Two allocations from 20,000 pps each: the ramp ends at the first
    // step with 1 % loss or where the generator falls short, whichever the
    // machine reaches; after a loss, up to three steps bisect.
    let r = report(&[
        &addr,
        "--user",
        "alice:wonderland",
        "--saturate",
        "--allocations",
        "2",
        "--rate",
        "20000",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ]);
    let steps = r["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{r}");
    for s in steps {
        assert!(s["rate_pps"].as_f64().unwrap() >= 20_000.0);
        assert!(s["offered_pps"].is_f64() && s["loss_pct"].is_f64());
    }
    // The ramp (rates rising by 1.25) ends at the first step that failed:
    // 1 % loss, or the generator falling short.
    let failed = |s: &serde_json::Value| {
        s["loss_pct"].as_f64().unwrap() >= 1.0 || s["generator_limited"] == true
    };
    let ended = steps.iter().position(failed);
    let Some(ended) = ended else {
        assert!(steps.len() >= 60, "the ramp stops for a reason: {r}");
        return;
    };
    for pair in steps[..=ended].windows(2) {
        let (a, b) = (
            pair[0]["rate_pps"].as_f64().unwrap(),
            pair[1]["rate_pps"].as_f64().unwrap(),
        );
        assert!((b / a - 1.25).abs() < 1e-6, "ramp steps ×1.25: {r}");
    }
    // After a loss (not a generator shortfall) with a good step before it,
    // three steps bisect between the two; otherwise nothing follows.
    let bisects = ended > 0 && steps[ended]["generator_limited"] != true;
    let after = &steps[ended + 1..];
    if bisects {
        assert!(!after.is_empty() && after.len() <= 3, "{r}");
        let low = steps[ended - 1]["rate_pps"].as_f64().unwrap();
        let high = steps[ended]["rate_pps"].as_f64().unwrap();
        for s in after {
            let rate = s["rate_pps"].as_f64().unwrap();
            assert!(
                rate > low && rate < high,
                "a bisecting step outside ({low}, {high}): {r}"
            );
        }
    } else {
        assert!(after.is_empty(), "{r}");
    }
    if let Some(best) = r["best_step"].as_u64() {
        let best = &steps[best as usize];
        assert!(best["loss_pct"].as_f64().unwrap() < 1.0);
        assert_eq!(best["delivered_pps"], r["delivered_pps"]);
        // The best is the highest delivered rate under 1 % loss.
        for s in steps
            .iter()
            .filter(|s| s["loss_pct"].as_f64().unwrap() < 1.0)
        {
            assert!(s["delivered_pps"].as_f64() <= best["delivered_pps"].as_f64());
        }
    }
}

#[test]
fn errors_are_one_clear_line() {
    // Nothing listens on a port the system just gave up.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, out, err) = bench(&[&free, "--user", "a:b", "--duration", "1"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach") || err.contains("no answer"),
        "{err}"
    );
    assert!(!err.contains("panicked"));

    let server = server();
    let addr = server.addr_for(Via::Udp).to_string();
    let (code, _, err) = bench(&[&addr, "--user", "alice:not-the-password", "--duration", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("authentication failed"), "{err}");

    // The server allows 100 allocations per user.
    let (code, _, err) = bench(&[
        &addr,
        "--user",
        "alice:wonderland",
        "--allocations",
        "101",
        "--rate",
        "0",
        "--duration",
        "1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("486") && err.contains("quota"), "{err}");

    let tcp = server.addr_for(Via::Tcp).to_string();
    let (code, _, err) = bench(&[&tcp, "--transport", "tcp", "--user", "alice:nope"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("authentication failed"), "{err}");

    for bad in [
        vec![addr.as_str(), "--user", "alice:wonderland", "--size", "10"],
        vec![addr.as_str(), "--user", "alice"],
        vec![addr.as_str()],
        vec![addr.as_str(), "--user", "a:b", "--secret", "s"],
        vec![addr.as_str(), "--user", "a:b", "--transport", "sctp"],
        vec![addr.as_str(), "--user", "a:b", "--ca", "x.pem"],
        vec!["no-port-here", "--user", "a:b"],
    ] {
        let (code, out, err) = bench(&bad);
        assert_eq!(code, Some(2), "{bad:?}: {out}{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    stop_cleanly(server);
}

/// The scale the README documents: 10,000 concurrent allocations on one
/// server, each with its own relay socket, in well under the memory the
/// README promises per allocation.
#[test]
fn ten_thousand_idle_allocations() {
    let config =
        config_file("[limits]\nallocations_per_user = 10000\nunauthenticated_per_second = 0\n");
    let mut args = loopback_args();
    args.extend([
        "--config",
        &config.path,
        "--allow-peer",
        "127.0.0.0/8",
        "--listen",
        "udp://127.0.0.1:0",
        "--relay-ports",
        "40000-51999",
    ]);
    let server = ServerProcess::start(&args);
    let addr = server.addr_for(Via::Udp).to_string();
    let pid = server.pid().to_string();
    let r = report(&[
        &addr,
        "--user",
        "alice:wonderland",
        "--allocations",
        "10000",
        "--rate",
        "0",
        "--duration",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["setup"]["created"], 10_000, "{r}");
    assert_eq!(r["setup"]["failed"], 0, "{r}");
    let per_allocation = r["server_process"]["rss_per_allocation_bytes"]
        .as_i64()
        .unwrap();
    assert!(
        per_allocation <= 4096,
        "{per_allocation} bytes of RSS per idle allocation: {r}"
    );
    stop_cleanly(server);
}

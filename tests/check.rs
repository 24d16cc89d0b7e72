//! `turnpike check` against a server on loopback: what works gives
//! "ready", a blocked UDP path with a TLS fallback gives "degraded" and
//! names the UDP rule, nothing reachable gives "blocked", and a malformed
//! profile is a usage error naming its line and key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `turnpike check` with `args`; its exit code and standard output.
fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("check")
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let done = run_with_limit(&mut cmd, Duration::from_secs(40), |c| {
        let _ = c.kill();
    });
    (done.status.and_then(|s| s.code()), done.stdout, done.stderr)
}

fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn a_reachable_server_is_ready_and_relays_between_two_allocations() {
    let server = ServerProcess::start_every_transport(&loopback_args());
    let text = relay_profile(
        server.addr_for(Via::Udp),
        server.addr_for(Via::Tcp),
        server.addr_for(Via::Tls { alpn: false }),
    );
    let file = config_file(&text);
    let started = std::time::Instant::now();
    let (code, out, err) = check(&[
        "--profile",
        &file.path,
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--json",
    ]);
    let took = started.elapsed();
    let r = report(&out);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(r["verdict"], "ready");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    for id in [
        "turn-udp:turn",
        "turn-tcp:turn-tcp",
        "turn-tls:turn-tls",
        "stun-udp:stun",
    ] {
        let c = check_of(&r, id);
        assert_eq!(c["status"], "pass", "{c:#}");
        assert_eq!(
            c["unit"],
            if id.starts_with("stun") {
                serde_json::Value::Null
            } else {
                "ms".into()
            },
            "{c:#}"
        );
    }
    let turn = check_of(&r, "turn-udp:turn");
    assert!(
        turn["detail"]
            .as_str()
            .unwrap()
            .contains("relayed from one allocation to another"),
        "{turn:#}"
    );
    let stun = check_of(&r, "stun-udp:stun");
    assert!(
        stun["value"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{stun:#}"
    );
    assert_eq!(check_of(&r, "dns:localhost")["status"], "pass");
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != "dns:127.0.0.1"),
        "an address is not looked up"
    );
}

/// A server with a probe responder on ten UDP ports and check
/// credentials, listening on UDP, TCP, and TLS shared with HTTPS.
fn server_with_probe() -> (ServerProcess, ConfigFile) {
    let (first, last) = free_udp_range(10);
    let config = config_file(&format!(
        "[probe]\nenabled = true\nports = \"{first}-{last}\"\ncredentials = true\n"
    ));
    let mut args = loopback_args();
    args.extend([
        "--config",
        config.path.as_str(),
        "--listen",
        "udp://127.0.0.1:0",
        "--listen",
        "tcp://127.0.0.1:0",
        "--listen",
        "tls://127.0.0.1:0?http=true",
        "--http-address",
        "127.0.0.1:0",
    ]);
    (ServerProcess::start(&args), config)
}

#[test]
fn a_turnpike_server_checked_by_its_url_is_ready_with_its_own_check_credentials() {
    let (server, _config) = server_with_probe();
    let url = format!("https://{}", server.addr_for(Via::Tls { alpn: false }));
    let started = std::time::Instant::now();
    let (code, out, err) = check(&[&url, "--json"]);
    let took = started.elapsed();
    let r = report(&out);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(r["verdict"], "ready", "{r:#}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(r["target"], url.as_str());
    // Every check passed, none skipped: the media range answered, and
    // TURN over each transport relayed to the probe responder with the
    // credentials the server handed out.
    for c in r["checks"].as_array().unwrap() {
        if c["id"].as_str().unwrap().starts_with("quality:") {
            // Measurements: they never change the verdict.
            assert!(c.get("endpoint").is_none(), "{c:#}");
            continue;
        }
        assert_eq!(c["status"], "pass", "{c:#}");
    }
    let media = check_of(&r, "udp-range:media");
    let detail = media["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("8 of 8 ports sampled answered"),
        "{media:#}"
    );
    assert!(
        detail.contains("the server saw this host as 127.0.0.1:"),
        "{media:#}"
    );
    assert_eq!(media["unit"], "ms");
    for id in [
        "turn-udp:turn-udp",
        "turn-tcp:turn-tcp",
        "turn-tls:turn-tls",
    ] {
        let c = check_of(&r, id);
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .contains("relayed to the probe responder"),
            "{c:#}"
        );
    }
    // The certificate is the one the server publishes: not intercepted.
    let https = check_of(&r, "https:https");
    assert!(
        https["detail"]
            .as_str()
            .unwrap()
            .contains("certificate from CN=turnpike self-signed, as the server publishes"),
        "{https:#}"
    );
    // The allocations were given back, and nothing was relayed anywhere
    // but to the responder.
    let metrics = server.metrics_when(std::time::Instant::now() + Duration::from_secs(10), |m| {
        metric(m, "turnpike_check_allocations") == 0
    });
    assert_eq!(
        metric(&metrics, "turnpike_peer_denied_total{reason=\"not_probe\"}"),
        0
    );
    assert!(
        metric(
            &metrics,
            "turnpike_probe_requests_total{outcome=\"answered\"}"
        ) >= 11
    );
    stop_cleanly(server);
}

#[test]
fn udp_blocked_with_a_tls_fallback_is_degraded_and_names_the_udp_rule() {
    let server = ServerProcess::start_every_transport(&loopback_args());
    let closed = closed_port();
    let udp: SocketAddr = format!("127.0.0.1:{closed}").parse().unwrap();
    let text = relay_profile(
        udp,
        format!("127.0.0.1:{}", closed_port()).parse().unwrap(),
        server.addr_for(Via::Tls { alpn: false }),
    );
    let file = config_file(&text);
    let (code, out, err) = check(&[
        "--profile",
        &file.path,
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--json",
        "--timeout",
        "8",
    ]);
    let r = report(&out);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert_eq!(r["verdict"], "degraded");
    let turn = check_of(&r, "turn-udp:turn");
    assert_eq!(turn["status"], "fail");
    assert_eq!(
        turn["remediation"],
        format!("allow outbound UDP to 127.0.0.1 port {closed}, and the replies"),
        "{turn:#}"
    );
    assert_eq!(check_of(&r, "turn-tls:turn-tls")["status"], "pass");
    assert_eq!(check_of(&r, "turn-tcp:turn-tcp")["status"], "fail");
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("turn through turn-tls"),
        "{r:#}"
    );

    // The text report says it in words, and lists the rule once.
    let (code, text_out, _) = check(&[
        "--profile",
        &file.path,
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--timeout",
        "8",
    ]);
    assert_eq!(code, Some(1));
    assert!(text_out.contains("DEGRADED"), "{text_out}");
    let rule = format!("allow outbound UDP to 127.0.0.1 port {closed}");
    let (checks, to_change) = text_out
        .split_once("What to change")
        .expect("a list of rules");
    assert_eq!(
        checks.matches(&rule).count(),
        2,
        "under the STUN and TURN checks: {text_out}"
    );
    assert_eq!(
        to_change.matches(&rule).count(),
        1,
        "listed once: {text_out}"
    );
}

#[test]
fn nothing_reachable_is_blocked() {
    let p = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let text = relay_profile(p(closed_port()), p(closed_port()), p(closed_port()));
    let file = config_file(&text);
    let (code, out, err) = check(&["--profile", &file.path, "--json", "--timeout", "5"]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert_eq!(report(&out)["verdict"], "blocked");
}

#[test]
fn bad_flags_and_profiles_are_usage_errors() {
    let file = config_file(
        "[profile]\nname = \"x\"\nsource = \"y\"\n\n[[endpoint]]\nid = \"a\"\nkind = \"turn-udp\"\nhost = \"127.0.0.1\"\nport = 70000\n",
    );
    let (code, out, err) = check(&["--profile", &file.path]);
    assert_eq!(code, Some(3), "{out}\n{err}");
    assert!(err.contains("line 9") && err.contains("port"), "{err}");
    assert_eq!(check(&[]).0, Some(3), "no URL and no profile");
    assert_eq!(check(&["ftp://example.com"]).0, Some(3));
    assert_eq!(
        check(&["--profile", &file.path, "--timeout", "0"]).0,
        Some(3)
    );
    assert_eq!(
        check(&["--profile", "/nonexistent/profile.toml"]).0,
        Some(3)
    );
}

/// The measurements of the path to the probe responder: every figure
/// under its stable name, with sane values on loopback, and a `quality:`
/// check for each; `--no-measure` leaves them out.
#[test]
fn a_turnpike_server_with_a_probe_responder_is_measured() {
    let (server, _config) = server_with_probe();
    let url = format!("https://{}", server.addr_for(Via::Tls { alpn: false }));
    let started = std::time::Instant::now();
    let (code, out, err) = check(&[
        &url,
        "--json",
        "--stream-seconds",
        "2",
        "--video-kbps",
        "480",
        "--max-kbps",
        "4000",
    ]);
    let took = started.elapsed();
    let r = report(&out);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let m = &r["measurements"];
    assert_eq!(m["path"], "udp-direct", "{m:#}");
    assert!(
        m["target"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{m:#}"
    );
    let rtt = &m["rtt_ms"];
    assert!(rtt["median"].as_f64().unwrap() < 50.0, "{rtt:#}");
    assert!(rtt["p95"].as_f64().unwrap() >= rtt["median"].as_f64().unwrap());
    assert!(rtt["samples"].as_u64().unwrap() > 150, "{rtt:#}");
    for way in ["up", "down"] {
        assert!(m["jitter_ms"][way].as_f64().unwrap() < 20.0, "{m:#}");
        assert!(m["loss_pct"][way].as_f64().unwrap() < 5.0, "{m:#}");
        assert!(m["reordered"][way].is_u64(), "{m:#}");
        assert!(m["duplicates"][way].is_u64(), "{m:#}");
        assert!(m["bandwidth"][way]["steps"].is_array(), "{m:#}");
        assert!(m["dscp_preserved"].get(way).is_some(), "{m:#}");
    }
    assert_eq!(
        m["loss_pct"]["sent_up"], 200,
        "audio 100 + video 100: {m:#}"
    );
    let names: Vec<&str> = m["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audio", "video"]);
    for way in ["up_kbps", "down_kbps"] {
        let kbps = m[way].as_f64().unwrap();
        assert!(kbps > 500.0 && kbps <= 4000.0, "{way} {kbps}: {m:#}");
    }
    let mos = m["mos"].as_f64().unwrap();
    assert!((4.0..=4.5).contains(&mos), "{mos}");
    for name in [
        "udp_idle_timeout_s",
        "udp_idle_timeout",
        "dscp",
        "nat_mapping",
        "nat_filtering",
        "hairpinning",
        "path_mtu",
    ] {
        assert!(m.get(name).is_some(), "{name} missing: {m:#}");
    }
    // Loopback keeps DSCP marks.
    assert_eq!(m["dscp_preserved"]["up"], true, "{m:#}");
    assert_eq!(m["dscp_preserved"]["down"], true, "{m:#}");
    for id in [
        "quality:rtt",
        "quality:jitter-up",
        "quality:jitter-down",
        "quality:loss-up",
        "quality:loss-down",
        "quality:up-kbps",
        "quality:down-kbps",
        "quality:dscp-up",
        "quality:dscp-down",
        "quality:nat",
        "quality:path-mtu",
        "quality:mos",
    ] {
        let c = check_of(&r, id);
        assert!(c.get("endpoint").is_none(), "{c:#}");
    }
    assert_eq!(check_of(&r, "quality:rtt")["unit"], "ms");
    assert_eq!(check_of(&r, "quality:rtt")["status"], "pass");

    let (code, out, _) = check(&[&url, "--json", "--no-measure"]);
    assert_eq!(code, Some(0));
    let r = report(&out);
    assert!(r.get("measurements").is_none(), "{r:#}");
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c["id"].as_str().unwrap().starts_with("quality:"))
    );
}

/// Serves `body` as `GET /api/v1/profile` (any request, in fact) on a
/// plain-HTTP loopback port, for as long as the test runs: a server
/// whose published profile says what the test needs.
fn serve_profile(body: String) -> SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            // The request head, then the answer.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A profile with `[measure] udp_idle_timeout = true` has the UDP
/// idle-timeout search run without `--udp-timeout`, up to its
/// `udp_idle_timeout_s` threshold (5 s here), within a time budget grown
/// to fit it; `--no-udp-timeout` declines. The profile is the server's
/// own, as it publishes it, with the table and the threshold added and
/// served from another port: the probe responder, which the search
/// needs, is measured only for a published profile.
#[test]
fn a_profile_that_asks_gets_the_udp_idle_timeout_search() {
    let (server, _config) = server_with_probe();
    let (status, body) = http_get(server.http_addr().unwrap(), "/api/v1/profile");
    assert_eq!(status, 200, "{body}");
    let mut published: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(published["profile"].get("measure").is_none(), "{body}");
    published["profile"]["measure"] = serde_json::json!({ "udp_idle_timeout": true });
    published["profile"]["thresholds"]["udp_idle_timeout_s"] =
        serde_json::json!({ "min": 5, "source": "a test" });
    let url = format!("http://{}", serve_profile(published.to_string()));
    let quick = ["--json", "--stream-seconds", "1", "--max-kbps", "2000"];

    // A budget of 5 s is too short for the search (5 s of silence after a
    // 2.5 s warm-up) on top of the rest, unless it grows as for the flag.
    let started = std::time::Instant::now();
    let (code, out, err) = check(&[&[url.as_str(), "--timeout", "5"][..], &quick].concat());
    let took = started.elapsed();
    let r = report(&out);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let m = &r["measurements"];
    assert_eq!(m["path"], "udp-direct", "{m:#}");
    // Loopback forgets nothing: every silence, up to the threshold's 5 s,
    // was outlived.
    assert_eq!(m["udp_idle_timeout_s"].as_f64(), Some(5.0), "{m:#}");
    assert_eq!(m["udp_idle_timeout"]["max_s"].as_f64(), Some(5.0), "{m:#}");
    assert_eq!(m["udp_idle_timeout"]["at_least"], true, "{m:#}");
    let c = check_of(&r, "quality:udp-idle-timeout");
    assert_eq!(c["status"], "pass", "{c:#}");
    assert!(took < Duration::from_secs(32), "took {took:?}");

    // Declined: no search, and no figure.
    let (code, out, err) = check(&[&[url.as_str(), "--no-udp-timeout"][..], &quick].concat());
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r = report(&out);
    assert!(r["measurements"]["path"].is_string(), "{r:#}");
    assert!(r["measurements"]["udp_idle_timeout_s"].is_null(), "{r:#}");
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != "quality:udp-idle-timeout"),
        "{r:#}"
    );
    // The two flags together are a usage error.
    let (code, _, err) = check(&[url.as_str(), "--udp-timeout", "--no-udp-timeout"]);
    assert_eq!(code, Some(3), "{err}");
}

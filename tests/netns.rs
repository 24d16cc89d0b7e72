//! `turnpike check` across the networks the IT guides warn about, built
//! for each test from network namespaces: a client host, a firewall that
//! NATs it, and a server host running `turnpike serve` with its probe
//! responder and check credentials.
//!
//! ```text
//!  client 10.77.1.2 ── 10.77.1.1 firewall/NAT 10.77.2.1 ── 10.77.2.2 server
//! ```
//!
//! Each scenario sets the firewall's rules with nftables, runs
//! `turnpike check https://10.77.2.2` on the client, and asserts the
//! verdict and that the remediation names the rule that blocks. On the
//! firewall there may also run a TLS-inspecting proxy (`socat`) or an HTTP
//! CONNECT proxy (`tests/netns/connect_proxy.py`). Traffic never leaves
//! the namespaces. Needs root, `ip`, `nft`, `socat` and `python3`
//! (scripts/test-deps installs them); skipped otherwise, a failure under
//! CI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;

const SERVER: &str = "10.77.2.2";
const MEDIA: &str = "50000-50009";
/// The firewall's address on the client's side, where its proxy listens.
const PROXY_IP: &str = "10.77.1.1";

/// What runs on the firewall besides its rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Middlebox {
    Nothing,
    /// A proxy that decrypts TLS to the server's port 443 and encrypts it
    /// again.
    TlsInspection,
    /// An HTTP CONNECT proxy that the client is told of (`HTTPS_PROXY`).
    ConnectProxy,
}

/// Three namespaces joined by two veth pairs; deleted on drop, with
/// everything in them.
struct Net {
    client: String,
    firewall: String,
    server: String,
    /// Processes started in the namespaces (besides the server).
    children: Vec<Child>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// The three hosts, or why they cannot be made here.
    fn new() -> Result<Self, String> {
        // The effective user, from /proc: namespaces and nftables need root.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
            .unwrap_or_default();
        if uid != "0" {
            return Err("network namespaces need root".into());
        }
        on_path("ip", "iproute2")?;
        on_path("nft", "nftables")?;
        on_path("socat", "socat")?;
        on_path("python3", "python3")?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "tp{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let net = Self {
            client: format!("{id}-client"),
            firewall: format!("{id}-fw"),
            server: format!("{id}-server"),
            children: Vec::new(),
        };
        for ns in [&net.client, &net.firewall, &net.server] {
            run(&["ip", "netns", "add", ns])?;
        }
        let (c, f, s) = (
            net.client.as_str(),
            net.firewall.as_str(),
            net.server.as_str(),
        );
        let steps: &[&[&str]] = &[
            &[
                "ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "f0",
                "netns", f,
            ],
            &[
                "ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "name", "f1",
                "netns", f,
            ],
            &["ip", "-n", c, "addr", "add", "10.77.1.2/24", "dev", "c0"],
            &["ip", "-n", f, "addr", "add", "10.77.1.1/24", "dev", "f0"],
            &["ip", "-n", f, "addr", "add", "10.77.2.1/24", "dev", "f1"],
            &["ip", "-n", s, "addr", "add", "10.77.2.2/24", "dev", "s0"],
            &["ip", "-n", c, "link", "set", "lo", "up"],
            &["ip", "-n", f, "link", "set", "lo", "up"],
            &["ip", "-n", s, "link", "set", "lo", "up"],
            &["ip", "-n", c, "link", "set", "c0", "up"],
            &["ip", "-n", f, "link", "set", "f0", "up"],
            &["ip", "-n", f, "link", "set", "f1", "up"],
            &["ip", "-n", s, "link", "set", "s0", "up"],
            &["ip", "-n", c, "route", "add", "default", "via", "10.77.1.1"],
            &["ip", "-n", s, "route", "add", "default", "via", "10.77.2.1"],
            &[
                "ip",
                "netns",
                "exec",
                f,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        ];
        for step in steps {
            run(step)?;
        }
        Ok(net)
    }

    /// Loads the firewall's ruleset: the client's connections leave NATed
    /// to the firewall's address, and `forward` (nftables statements, one
    /// per line) filters what the client sends on; replies to what passed
    /// always come back.
    fn firewall(&self, forward: &str) {
        let ruleset = format!(
            "table ip turnpike_test {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        iifname \"f0\" jump from_client
    }}
    chain from_client {{
{forward}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"f1\" masquerade
    }}
}}
"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.firewall, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = nft.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A TLS-inspecting proxy on the firewall: TCP to the server's port
    /// 443 is redirected to it; it ends the client's TLS with a
    /// certificate of its own and opens another TLS connection to the
    /// server, as inspecting firewalls do.
    fn intercept_tls(&mut self, dir: &std::path::Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![SERVER.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Inspecting Firewall CA");
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("inspector.pem");
        std::fs::write(&pem, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let listen = format!(
            "OPENSSL-LISTEN:8443,reuseaddr,fork,verify=0,cert={}",
            pem.display()
        );
        let upstream = format!("OPENSSL:{SERVER}:443,verify=0");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.firewall, "socat", &listen, &upstream])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        let nat = format!(
            "table ip turnpike_inspect {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname \"f0\" ip daddr {SERVER} tcp dport 443 redirect to :8443
    }}
}}
"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.firewall, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin.take().unwrap().write_all(nat.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success());
        // The proxy listens once its socket is bound: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while run(&[
            "ip",
            "netns",
            "exec",
            &self.firewall,
            "sh",
            "-c",
            "ss -Hltn 'sport = :8443' | grep -q .",
        ])
        .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the inspecting proxy did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An HTTP CONNECT proxy on the firewall's inner address, port 3128,
    /// that tunnels to port 443 only (`tests/netns/connect_proxy.py`).
    fn connect_proxy(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/connect_proxy.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.firewall, "python3", script])
            .args([PROXY_IP, "3128"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
        self.children.push(child);
        assert_eq!(ready.trim(), "listening", "the proxy did not start");
    }

    /// `turnpike serve` on the server host: UDP and TCP on 3478, TLS and
    /// HTTPS on 443, and the probe responder on the media ports with
    /// check credentials.
    fn serve(&self, config: &ConfigFile) -> ServerProcess {
        let udp = format!("udp://{SERVER}:3478");
        let tcp = format!("tcp://{SERVER}:3478");
        let tls = format!("tls://{SERVER}:443?http=true");
        ServerProcess::start_in(
            &self.server,
            &[
                "--config",
                &config.path,
                "--realm",
                REALM,
                "--relay-address",
                SERVER,
                "--user",
                "alice:wonderland",
                "--listen",
                &udp,
                "--listen",
                &tcp,
                "--listen",
                &tls,
            ],
        )
    }

    /// `turnpike check https://SERVER --json` on the client host: its exit
    /// code and report.
    fn check(&self, timeout_s: u32, proxy: bool) -> (Option<i32>, serde_json::Value) {
        let timeout = timeout_s.to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client])
            .arg(binary())
            .args([
                "check",
                &format!("https://{SERVER}"),
                "--json",
                "--timeout",
                &timeout,
            ])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy");
        if proxy {
            cmd.env("HTTPS_PROXY", format!("http://{PROXY_IP}:3128"));
        }
        let done = run_with_limit(
            &mut cmd,
            Duration::from_secs(u64::from(timeout_s) + 20),
            |c| {
                let _ = c.kill();
            },
        );
        let report = serde_json::from_str(&done.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", done.stdout, done.stderr));
        (done.status.and_then(|s| s.code()), report)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.firewall, &self.server] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// A server with its probe on [`MEDIA`] handing out check credentials.
fn probe_config() -> ConfigFile {
    let (first, last) = MEDIA.split_once('-').unwrap();
    config_file(&format!(
        "[probe]\nenabled = true\nports = \"{first}-{last}\"\ncredentials = true\n"
    ))
}

fn status<'a>(report: &'a serde_json::Value, id: &str) -> &'a str {
    check_of(report, id)["status"].as_str().unwrap()
}

fn remediation<'a>(report: &'a serde_json::Value, id: &str) -> &'a str {
    check_of(report, id)["remediation"]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no remediation: {report:#}"))
}

/// One scenario: a fresh network with `forward` on the firewall (and the
/// TLS-inspecting proxy if asked), a server, one check. `None` when the
/// namespaces cannot be made here (the test is skipped).
fn scenario(
    forward: &str,
    middlebox: Middlebox,
    timeout_s: u32,
) -> Option<(Option<i32>, serde_json::Value)> {
    let mut net = match Net::new() {
        Ok(net) => net,
        Err(why) => {
            skip(&why);
            return None;
        }
    };
    net.firewall(forward);
    let dir = tempfile::tempdir().unwrap();
    match middlebox {
        Middlebox::Nothing => {}
        Middlebox::TlsInspection => net.intercept_tls(dir.path()),
        Middlebox::ConnectProxy => net.connect_proxy(),
    }
    let config = probe_config();
    let server = net.serve(&config);
    let result = net.check(timeout_s, middlebox == Middlebox::ConnectProxy);
    stop_cleanly(server);
    Some(result)
}

#[test]
fn everything_open_is_ready() {
    let Some((code, r)) = scenario("", Middlebox::Nothing, 20) else {
        return;
    };
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["verdict"], "ready");
    for c in r["checks"].as_array().unwrap() {
        assert_eq!(c["status"], "pass", "{c:#}");
    }
    // Through the NAT: the server saw the firewall's address.
    let media = check_of(&r, "udp-range:media")["detail"].as_str().unwrap();
    assert!(
        media.contains("the server saw this host as 10.77.2.1:"),
        "{media}"
    );
    let stun = check_of(&r, "stun-udp:stun");
    assert!(
        stun["value"].as_str().unwrap().starts_with("10.77.2.1:"),
        "{stun:#}"
    );
}

#[test]
fn all_udp_blocked_is_degraded_and_names_udp_3478_and_the_media_range() {
    let Some((code, r)) = scenario("        meta l4proto udp drop", Middlebox::Nothing, 8) else {
        return;
    };
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["verdict"], "degraded");
    assert_eq!(status(&r, "turn-udp:turn-udp"), "fail");
    assert_eq!(
        remediation(&r, "turn-udp:turn-udp"),
        format!("allow outbound UDP to {SERVER} port 3478, and the replies")
    );
    assert_eq!(status(&r, "udp-range:media"), "fail");
    assert_eq!(
        remediation(&r, "udp-range:media"),
        format!("allow outbound UDP to {SERVER} ports {MEDIA}, and the replies")
    );
    // TURN over TLS (and TCP) still relays.
    assert_eq!(status(&r, "turn-tls:turn-tls"), "pass");
    assert_eq!(status(&r, "turn-tcp:turn-tcp"), "pass");
    let summary = r["summary"].as_str().unwrap();
    assert!(summary.contains("turn-udp through"), "{summary}");
    assert!(summary.contains("media through"), "{summary}");
}

#[test]
fn only_tcp_443_open_is_degraded_and_names_every_closed_port() {
    let rules = "        tcp dport 443 accept\n        drop";
    let Some((code, r)) = scenario(rules, Middlebox::Nothing, 8) else {
        return;
    };
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["verdict"], "degraded");
    assert_eq!(status(&r, "turn-tls:turn-tls"), "pass");
    assert_eq!(status(&r, "https:https"), "pass");
    assert_eq!(status(&r, "turn-tcp:turn-tcp"), "fail");
    assert_eq!(
        remediation(&r, "turn-tcp:turn-tcp"),
        format!("allow outbound TCP to {SERVER} port 3478, and the replies")
    );
    assert_eq!(
        remediation(&r, "turn-udp:turn-udp"),
        format!("allow outbound UDP to {SERVER} port 3478, and the replies")
    );
    assert_eq!(
        remediation(&r, "udp-range:media"),
        format!("allow outbound UDP to {SERVER} ports {MEDIA}, and the replies")
    );
}

#[test]
fn udp_3478_open_but_the_media_range_closed_is_degraded_and_names_the_range() {
    let rules = format!("        udp dport {MEDIA} drop");
    let Some((code, r)) = scenario(&rules, Middlebox::Nothing, 8) else {
        return;
    };
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["verdict"], "degraded");
    // TURN over UDP works, and relays to the very ports the client cannot
    // reach directly: the relay is the way round.
    assert_eq!(status(&r, "turn-udp:turn-udp"), "pass");
    assert_eq!(status(&r, "stun-udp:stun"), "pass");
    assert_eq!(status(&r, "udp-range:media"), "fail");
    assert_eq!(
        remediation(&r, "udp-range:media"),
        format!("allow outbound UDP to {SERVER} ports {MEDIA}, and the replies")
    );
    let summary = r["summary"].as_str().unwrap();
    assert!(summary.contains("media through turn-udp"), "{summary}");
}

#[test]
fn part_of_the_media_range_closed_is_a_warning_naming_the_range() {
    let rules = "        udp dport 50005-50009 drop";
    let Some((code, r)) = scenario(rules, Middlebox::Nothing, 8) else {
        return;
    };
    // The sample reached some ports: media flows, but not on every port
    // the service may pick.
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["verdict"], "ready");
    let media = check_of(&r, "udp-range:media");
    assert_eq!(media["status"], "warn", "{media:#}");
    let detail = media["detail"].as_str().unwrap();
    assert!(
        detail.contains("no answer from ports 50005, 50006, 50007, 50009"),
        "{detail}"
    );
    assert!(
        remediation(&r, "udp-range:media")
            .starts_with(&format!("allow outbound UDP to {SERVER} ports {MEDIA}")),
        "{media:#}"
    );
}

#[test]
fn tls_inspection_is_told_apart_and_its_exemption_named() {
    // UDP blocked, and TLS on 443 decrypted and re-encrypted on the way:
    // TURN over TLS still works, with a warning naming the inspection.
    let Some((code, r)) = scenario("        meta l4proto udp drop", Middlebox::TlsInspection, 8)
    else {
        return;
    };
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["verdict"], "degraded");
    for id in ["https:https", "turn-tls:turn-tls"] {
        let c = check_of(&r, id);
        assert_eq!(c["status"], "warn", "{c:#}");
        let detail = c["detail"].as_str().unwrap();
        assert!(
            detail.contains("Inspecting Firewall CA") && detail.contains("intercepted"),
            "{c:#}"
        );
        assert_eq!(
            remediation(&r, id),
            format!(
                "exempt {SERVER} port 443 from TLS inspection: real-time media over TLS does not survive being decrypted and re-encrypted"
            )
        );
    }
    // TCP 3478 is not inspected.
    assert_eq!(status(&r, "turn-tcp:turn-tcp"), "pass");
}

#[test]
fn only_an_https_proxy_gets_out_and_the_report_says_so() {
    // The firewall forwards nothing from the client; its proxy tunnels to
    // port 443. The profile comes through the proxy, and so does TURN over
    // TLS: calls can work, relayed, and each check says it was the proxy.
    let Some((code, r)) = scenario("        drop", Middlebox::ConnectProxy, 12) else {
        return;
    };
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["verdict"], "degraded");
    let direct = format!("allow outbound TCP to {SERVER} port 443, and the replies");
    for id in ["https:https", "turn-tls:turn-tls"] {
        let c = check_of(&r, id);
        assert_eq!(c["status"], "warn", "{c:#}");
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("only through the proxy {PROXY_IP}:3128")),
            "{c:#}"
        );
        assert_eq!(remediation(&r, id), direct);
    }
    assert!(
        check_of(&r, "turn-tls:turn-tls")["detail"]
            .as_str()
            .unwrap()
            .contains("relayed to the probe responder"),
        "{r:#}"
    );
    // The proxy tunnels to 443 only: TURN over TCP on 3478 is blocked.
    let tcp = check_of(&r, "turn-tcp:turn-tcp");
    assert_eq!(tcp["status"], "fail", "{tcp:#}");
    assert!(
        tcp["detail"]
            .as_str()
            .unwrap()
            .contains("the proxy refused the tunnel (403)"),
        "{tcp:#}"
    );
    assert_eq!(status(&r, "turn-udp:turn-udp"), "fail");
}

//! The four renderings of a report: terminal text, JSON, JUnit XML, HTML.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use turnpike_check::render;
use turnpike_check::report::{Check, Report, Status, Verdict};

const TRICKY_FIX: &str = r#"allow outbound TCP to 198.51.100.7 port 443 & ask for "turn.example.com" in <SNI> ('strict')"#;
const UDP_FIX: &str = "allow outbound UDP to 198.51.100.7 port 3478";
const MEDIA_FIX: &str = "allow outbound UDP to 192.0.2.0/24 ports 10000-20000";
const SOURCE: &str = "Microsoft Teams network requirements (learn.microsoft.com)";

#[allow(clippy::too_many_arguments)]
fn check(
    id: &str,
    title: &str,
    endpoint: Option<&str>,
    status: Status,
    value: serde_json::Value,
    unit: Option<&str>,
    threshold: Option<&str>,
    detail: Option<&str>,
    remediation: Option<&str>,
    duration_ms: f64,
) -> Check {
    let mut c = Check::new(id, title, status);
    c.endpoint = endpoint.map(Into::into);
    c.value = value;
    c.unit = unit.map(Into::into);
    c.threshold = threshold.map(Into::into);
    c.source = threshold.map(|_| SOURCE.into());
    c.detail = detail.map(Into::into);
    c.remediation = remediation.map(Into::into);
    c.duration_ms = duration_ms;
    c
}

/// A blocked network: UDP to the TURN server blocked, TLS to it
/// intercepted, a dozen checks in every status.
fn report(verdict: Verdict) -> Report {
    use Status::{Fail, Pass, Skip, Warn};
    let null = serde_json::Value::Null;
    let checks = vec![
        check(
            "dns:app.example.com",
            "DNS for app.example.com",
            Some("web"),
            Pass,
            json!(8),
            Some("ms"),
            None,
            Some("resolved to 203.0.113.10"),
            None,
            8.25,
        ),
        check(
            "tcp:web",
            "TCP to app.example.com:443",
            Some("web"),
            Pass,
            json!(23.5),
            Some("ms"),
            Some("< 150 ms"),
            Some("connected"),
            None,
            23.5,
        ),
        check(
            "https:web",
            "HTTPS to app.example.com",
            Some("web"),
            Warn,
            json!("Corp Inspection CA"),
            None,
            None,
            Some("certificate from an unexpected issuer: TLS inspection"),
            Some(TRICKY_FIX),
            120.0,
        ),
        check(
            "dns:turn.example.com",
            "DNS für turn.example.com — 日本語 ✓",
            Some("turn"),
            Pass,
            json!("198.51.100.7"),
            None,
            None,
            None,
            None,
            4.0,
        ),
        check(
            "turn-udp:turn",
            "TURN over UDP to turn.example.com:3478",
            Some("turn"),
            Fail,
            null.clone(),
            None,
            None,
            Some("timed out after 3 s\u{7} (no answer\u{1b}[31m)"),
            Some(UDP_FIX),
            3000.0,
        ),
        check(
            "turn-tcp:turn",
            "TURN over TCP to turn.example.com:3478",
            Some("turn"),
            Fail,
            null.clone(),
            None,
            None,
            Some("connection refused"),
            Some(TRICKY_FIX),
            12.0,
        ),
        check(
            "turn-tls:turn",
            "TURN over TLS to turn.example.com:443",
            Some("turn"),
            Warn,
            json!(180),
            Some("ms"),
            Some("< 150 ms"),
            Some("relayed round trip 180 ms"),
            Some("route media to the TURN server without the VPN concentrator"),
            850.0,
        ),
        check(
            "jitter:turn",
            "Jitter through the relay",
            Some("turn"),
            Pass,
            json!(4.2),
            Some("ms"),
            Some("< 30 ms"),
            None,
            None,
            2000.0,
        ),
        check(
            "loss:turn",
            "Packet loss through the relay",
            Some("turn"),
            Pass,
            json!(0.5),
            Some("%"),
            Some("< 1%"),
            None,
            None,
            2000.0,
        ),
        check(
            "udp-range:media",
            "UDP to 192.0.2.0/24 ports 10000-20000",
            Some("media"),
            Fail,
            null.clone(),
            None,
            None,
            Some("no answer on 12 sampled ports"),
            Some(MEDIA_FIX),
            3000.0,
        ),
        check(
            "bandwidth:media",
            "Bandwidth to the media servers",
            Some("media"),
            Skip,
            null.clone(),
            Some("kbps"),
            Some("> 1500 kbps"),
            Some("UDP to the media servers failed"),
            Some(MEDIA_FIX),
            0.0,
        ),
        check(
            "udp-timeout:media",
            "UDP idle timeout",
            Some("media"),
            Skip,
            null.clone(),
            None,
            None,
            None,
            None,
            0.0,
        ),
        check(
            "clock",
            "System clock",
            None,
            Pass,
            json!(0.75),
            Some("s"),
            Some("< 5 s"),
            Some("offset from the server's Date"),
            None,
            1.0,
        ),
    ];
    Report {
        verdict,
        summary: "Calls will not connect: UDP and TCP to the TURN server are blocked.".into(),
        profile: "teams".into(),
        target: "turn:turn.example.com?transport=udp".into(),
        started: "2024-05-01T12:34:56.789Z".into(),
        duration_ms: 12_346.0,
        checks,
        measurements: None,
    }
}

fn blocked() -> Report {
    report(Verdict::Blocked)
}

/// The remediations of failing and warning checks, each once, in order.
fn expected_fixes(r: &Report) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in &r.checks {
        if matches!(c.status, Status::Fail | Status::Warn)
            && let Some(fix) = &c.remediation
            && !out.contains(fix)
        {
            out.push(fix.clone());
        }
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

// ---- text ----

#[test]
fn text_plain_has_no_escapes() {
    let r = blocked();
    let t = render::text(&r, false);
    assert!(!t.contains('\u{1b}'), "escape in plain text:\n{t}");
    assert!(
        !t.chars().any(|c| c.is_control() && c != '\n'),
        "control character in plain text:\n{t}"
    );
    // The detail's control characters are shown, not sent.
    assert!(t.contains(r"\u{7}"), "{t}");
    assert!(t.contains(r"\u{1b}[31m"), "{t}");
}

#[test]
fn text_color_has_escapes() {
    let t = render::text(&blocked(), true);
    assert!(t.contains("\x1b[31m"), "{t}");
    assert!(t.contains("\x1b[32m"), "{t}");
    assert!(t.contains("\x1b[33m"), "{t}");
    assert!(t.contains("\x1b[0m"), "{t}");
    // The escape in the report's detail is still neutralised.
    assert!(t.contains(r"\u{1b}[31m"), "{t}");
}

#[test]
fn text_verdict_and_layout() {
    for (verdict, word) in [
        (Verdict::Ready, "READY"),
        (Verdict::Degraded, "DEGRADED"),
        (Verdict::Blocked, "BLOCKED"),
    ] {
        let r = report(verdict);
        let t = render::text(&r, false);
        let first = t.lines().next().unwrap();
        assert!(first.starts_with(word), "{first}");
        assert!(first.contains(&r.summary), "{first}");
        assert!(t.contains("teams"));
        assert!(t.contains("turn:turn.example.com?transport=udp"));
        assert!(t.contains("12.3 s"), "{t}");
        assert!(t.contains("2024-05-01 12:34:56 UTC"), "{t}");
    }
    let r = blocked();
    let t = render::text(&r, false);
    std::fs::write(scratch("render-report.txt"), &t).unwrap();
    // Every check, on a line with its mark.
    for c in &r.checks {
        let mark = c.status.as_str().to_uppercase();
        let line = t
            .lines()
            .find(|l| l.contains(&c.title))
            .unwrap_or_else(|| panic!("no line for {}:\n{t}", c.id));
        assert!(line.trim_start().starts_with(&mark), "{line}");
    }
    assert!(t.contains("23.5 ms (< 150 ms)"), "{t}");
    assert!(t.contains("0.5% (< 1%)"), "{t}");
    assert!(t.contains("→ fix: allow outbound UDP to 198.51.100.7 port 3478"));
    assert!(t.contains(&format!("threshold from {SOURCE}")), "{t}");
    // Unicode titles pass through.
    assert!(t.contains("DNS für turn.example.com — 日本語 ✓"));
    // Lines stay narrow, but for remediation text.
    for line in t.lines() {
        if !line.contains("fix:") && !line.contains("threshold from") && !line.contains(". ") {
            assert!(line.chars().count() <= 100, "too long: {line}");
        }
    }
}

#[test]
fn text_what_to_change() {
    let r = blocked();
    let t = render::text(&r, false);
    let (_, section) = t
        .split_once("\nWhat to change\n")
        .expect("no What to change");
    let fixes = expected_fixes(&r);
    assert_eq!(fixes.len(), 4);
    for (i, fix) in fixes.iter().enumerate() {
        assert_eq!(
            section.matches(fix.as_str()).count(),
            1,
            "{fix} in:\n{section}"
        );
        assert!(section.contains(&format!("{}. {fix}", i + 1)), "{section}");
    }
    // In check order.
    let pos: Vec<usize> = fixes
        .iter()
        .map(|f| section.find(f.as_str()).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{section}");
    // The skipped check's remediation is not something to change yet,
    // but it is the same as a failing one's, so listed once all the same.
    assert_eq!(section.lines().count(), 4, "{section}");

    // Nothing to change: no section.
    let mut ok = report(Verdict::Ready);
    for c in &mut ok.checks {
        c.status = Status::Pass;
    }
    let t = render::text(&ok, false);
    assert!(!t.contains("What to change"), "{t}");
    assert!(!t.contains("fix:"), "{t}");
}

#[test]
fn progress_line_fits() {
    assert_eq!(
        render::progress_line(7, 12, &["turn-tls:turn", "https:web"]),
        "checking 7/12: turn-tls:turn, https:web"
    );
    let r = blocked();
    let ids: Vec<&str> = r.checks.iter().map(|c| c.id.as_str()).collect();
    for n in 0..=ids.len() {
        let line = render::progress_line(n, ids.len(), &ids[n..]);
        assert!(line.chars().count() <= 79, "{line}");
        assert!(!line.contains('\n') && !line.contains('\r'));
    }
    let line = render::progress_line(1, 2, &["日本語-endpoint-with-a-very-long-name"; 5]);
    assert_eq!(line.chars().count(), 79);
    assert!(line.ends_with('…'));
}

// ---- JSON ----

#[test]
fn json_round_trips() {
    for verdict in [Verdict::Ready, Verdict::Degraded, Verdict::Blocked] {
        let r = report(verdict);
        let s = render::json(&r);
        assert!(s.ends_with("}\n"), "{s}");
        let back: Report = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
    }
}

#[test]
fn json_field_names_are_stable() {
    let r = blocked();
    let v: serde_json::Value = serde_json::from_str(&render::json(&r)).unwrap();
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        top,
        [
            "verdict",
            "summary",
            "profile",
            "target",
            "started",
            "duration_ms",
            "checks"
        ]
    );
    assert_eq!(v["verdict"], "blocked");
    assert_eq!(v["duration_ms"], 12_346.0);
    // A check with every field.
    let tls = &v["checks"][6];
    let keys: Vec<&str> = tls
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "title",
            "endpoint",
            "status",
            "value",
            "unit",
            "threshold",
            "source",
            "remediation",
            "detail",
            "duration_ms"
        ]
    );
    assert_eq!(tls["id"], "turn-tls:turn");
    assert_eq!(tls["status"], "warn");
    assert_eq!(tls["value"], 180);
    assert_eq!(tls["unit"], "ms");
    assert_eq!(tls["threshold"], "< 150 ms");
    let statuses: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    for s in ["pass", "warn", "fail", "skip"] {
        assert!(statuses.contains(&s));
    }
    // The control character survives, escaped as JSON does.
    assert!(render::json(&r).contains(r"\u0007"));
}

// ---- JUnit ----

#[test]
fn junit_shape() {
    let r = blocked();
    let x = render::junit(&r);
    assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites"));
    assert!(x.contains(
        r#"<testsuite name="turnpike check: teams" tests="13" failures="3" errors="0" skipped="2" time="12.346" timestamp="2024-05-01T12:34:56">"#
    ), "{x}");
    assert_eq!(x.matches("<testcase ").count(), 13);
    assert_eq!(x.matches("<failure ").count(), 3);
    assert_eq!(x.matches("<skipped ").count(), 2);
    assert!(x.contains(r#"<property name="verdict" value="blocked"/>"#));
    assert!(x.contains(r#"<property name="profile" value="teams"/>"#));
    assert!(x.contains(r#"<property name="target" value="turn:turn.example.com?transport=udp"/>"#));
    assert!(x.contains(
        r#"<testcase classname="turnpike.check.turn" name="turn-udp:turn: TURN over UDP to turn.example.com:3478" time="3.000">"#
    ), "{x}");
    assert!(x.contains(r#"classname="turnpike.check.general" name="clock: System clock""#));
    // Warnings pass, with the warning in system-out.
    assert!(
        x.contains("<system-out>WARN: relayed round trip 180 ms"),
        "{x}"
    );
    // Escaped, and the characters XML forbids gone.
    assert!(x.contains(
        "&amp; ask for &quot;turn.example.com&quot; in &lt;SNI&gt; (&apos;strict&apos;)"
    ));
    assert!(!x.contains("<SNI>"));
    assert!(
        !x.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    );
    assert!(
        x.contains(r#"<failure message="timed out after 3 s (no answer[31m)" type="fail">"#),
        "{x}"
    );
    assert!(x.contains("DNS für turn.example.com — 日本語 ✓"));
}

const JUNIT_READER: &str = r#"
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
suites = root.findall("testsuite")
assert len(suites) == 1, len(suites)
total = {"tests": 0, "failures": 0, "skipped": 0, "errors": 0}
for suite in suites:
    cases = suite.findall("testcase")
    failures = [f for c in cases for f in c.findall("failure")]
    skipped = [s for c in cases for s in c.findall("skipped")]
    errors = [e for c in cases for e in c.findall("error")]
    assert int(suite.get("tests")) == len(cases), (suite.get("tests"), len(cases))
    assert int(suite.get("failures")) == len(failures)
    assert int(suite.get("skipped")) == len(skipped)
    assert int(suite.get("errors")) == len(errors)
    float(suite.get("time"))
    for f in failures:
        assert f.get("message"), "failure without a message"
        assert f.get("type") == "fail"
    for c in cases:
        assert c.get("classname").startswith("turnpike.check."), c.get("classname")
        assert c.get("name")
        float(c.get("time"))
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    for key in ("verdict", "target", "profile"):
        assert props.get(key), key
    total["tests"] += len(cases)
    total["failures"] += len(failures)
    total["skipped"] += len(skipped)
for key in ("tests", "failures", "skipped"):
    assert int(root.get(key)) == total[key], key
print(props["verdict"], total["tests"], total["failures"], total["skipped"])
"#;

#[test]
fn junit_reads_in_python() {
    let path = scratch("render-junit.xml");
    std::fs::write(&path, render::junit(&blocked())).unwrap();
    let run = Command::new("python3")
        .arg("-c")
        .arg(JUNIT_READER)
        .arg(&path)
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => {
            eprintln!("python3 not run ({e}): the JUnit XML is not checked by a reader");
            return;
        }
    };
    assert!(
        out.status.success(),
        "python3 rejected {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "blocked 13 3 2"
    );
}

#[test]
fn junit_empty_report() {
    let mut r = report(Verdict::Ready);
    r.checks.clear();
    r.started = "not a time".into();
    let x = render::junit(&r);
    assert!(
        x.contains(r#"tests="0" failures="0" errors="0" skipped="0""#),
        "{x}"
    );
    assert!(x.contains(r#"timestamp="not a time""#), "{x}");
}

// ---- HTML ----

#[test]
fn html_verdict() {
    for (verdict, word) in [
        (Verdict::Ready, "Ready"),
        (Verdict::Degraded, "Degraded"),
        (Verdict::Blocked, "Blocked"),
    ] {
        let h = render::html(&report(verdict));
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert_eq!(h.matches(r#"id="verdict""#).count(), 1);
        assert!(
            h.contains(&format!(r#"<h1 id="verdict">{word}</h1>"#)),
            "{h}"
        );
        assert!(h.contains(&format!(r#"class="banner {}""#, word.to_lowercase())));
    }
}

#[test]
fn html_self_contained() {
    let h = render::html(&blocked());
    let lower = h.to_lowercase();
    assert!(!lower.contains("<script"), "no script needed");
    for attr in ["src=", "href=", "url("] {
        for (i, _) in lower.match_indices(attr) {
            let rest = lower[i + attr.len()..].trim_start_matches(['"', '\'', ' ']);
            assert!(
                !rest.starts_with("http:")
                    && !rest.starts_with("https:")
                    && !rest.starts_with("//"),
                "remote reference at {i}: {}",
                &h[i..(i + 80).min(h.len())]
            );
        }
    }
    assert!(!lower.contains("http://") && !lower.contains("https://"));
    assert!(!lower.contains("@import"));
    assert!(lower.contains("prefers-color-scheme: dark"));
    assert!(lower.contains("@media print"));
}

#[test]
fn html_escapes() {
    let r = blocked();
    let h = render::html(&r);
    assert!(!h.contains(TRICKY_FIX));
    assert!(!h.contains("<SNI>"));
    assert!(!h.contains("'strict'"));
    let escaped = "&amp; ask for &quot;turn.example.com&quot; in &lt;SNI&gt; (&#39;strict&#39;)";
    assert!(h.contains(escaped));
    // Once in What to change, twice in the table (the HTTPS and TURN/TCP
    // rows).
    assert_eq!(h.matches(escaped).count(), 3);
    let (_, fixes) = h.split_once(r#"<section id="what-to-change">"#).unwrap();
    let (fixes, _) = fixes.split_once("</section>").unwrap();
    assert_eq!(fixes.matches("<li").count(), expected_fixes(&r).len());
    assert!(
        !h.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    );
    assert!(h.contains("DNS für turn.example.com — 日本語 ✓"));
    // Every check has a row.
    assert_eq!(h.matches("<tr class=").count(), r.checks.len());
    std::fs::write(scratch("render-report.html"), &h).unwrap();
}

#[test]
fn the_measurements_figures_are_grouped_as_quality() {
    let mut r = report(Verdict::Ready);
    r.checks.push(check(
        "quality:rtt",
        "Round-trip time",
        None,
        Status::Pass,
        json!(12.5),
        Some("ms"),
        Some("< 150 ms"),
        Some("median 12.5 ms over 300 round trips"),
        None,
        5000.0,
    ));
    let t = render::text(&r, false);
    let heading = t.lines().position(|l| l == "quality").expect(&t);
    assert!(
        t.lines()
            .nth(heading + 1)
            .unwrap()
            .contains("Round-trip time"),
        "{t}"
    );
    let x = render::junit(&r);
    assert!(
        x.contains(r#"classname="turnpike.check.quality" name="quality:rtt: Round-trip time""#),
        "{x}"
    );
    // Other checks without an endpoint stay general.
    assert!(x.contains(r#"classname="turnpike.check.general" name="clock: System clock""#));
}

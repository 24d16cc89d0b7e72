//! The reports `turnpike check` writes for people and for CI, read by
//! programs this project did not write: the HTML page opened in headless
//! Chromium (Debian's `chromium`, driven by npm's `playwright-core` through
//! `tests/browser/show_page.mjs`), which must show the verdict and load
//! nothing but the file itself; the JUnit XML read with PyPI's
//! `junitparser`, whose totals and cases must be the JSON report's checks.
//! Each against a server on loopback that is ready, and against a profile
//! whose every endpoint is a closed port, blocked.
//!
//! `scripts/test-deps` installs Chromium, playwright-core and the virtualenv
//! with junitparser. Without them a test prints `SKIPPED: ...` and passes,
//! except under `CI=true`, where it fails: CI must not skip silently.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::browser::{Browser, kill_browsers_using, run_bounded};
use common::*;

/// What the node script gives itself, browser start to close; opening a
/// local page takes a second or two.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// When the node script is killed if its own timeout did not end it.
const KILL_AFTER: Duration = Duration::from_secs(30);

/// The TURN credentials `loopback_args` gives the server.
const CREDENTIALS: [&str; 4] = ["--user", "alice", "--password", "wonderland"];

/// A server on every transport, and the profile of its listeners.
fn ready_server() -> (ServerProcess, ConfigFile) {
    let server = ServerProcess::start_every_transport(&loopback_args());
    let file = config_file(&relay_profile(
        server.addr_for(Via::Udp),
        server.addr_for(Via::Tcp),
        server.addr_for(Via::Tls { alpn: false }),
    ));
    (server, file)
}

/// A profile whose every endpoint is a closed loopback port.
fn blocked_profile() -> ConfigFile {
    let p = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    config_file(&relay_profile(
        p(closed_port()),
        p(closed_port()),
        p(closed_port()),
    ))
}

/// A run of `turnpike check`: its exit code and JSON report.
struct Checked {
    code: Option<i32>,
    report: serde_json::Value,
    /// The command and what it printed, for failure messages.
    shown: String,
}

impl Checked {
    fn checks(&self) -> &[serde_json::Value] {
        self.report["checks"].as_array().unwrap()
    }

    fn count(&self, status: &str) -> usize {
        self.checks()
            .iter()
            .filter(|c| c["status"] == status)
            .count()
    }
}

/// Runs `turnpike check --json` with `args` (a file it writes among them).
fn check(args: &[&str]) -> Checked {
    let mut cmd = Command::new(binary());
    cmd.arg("check")
        .arg("--json")
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let done = run_with_limit(&mut cmd, Duration::from_secs(30), |c| {
        let _ = c.kill();
    });
    let shown = format!(
        "turnpike check --json {} ({:?} after {:?})\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        done.status,
        done.elapsed,
        done.stdout,
        done.stderr
    );
    let report =
        serde_json::from_str(&done.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {shown}"));
    Checked {
        code: done.status.and_then(|s| s.code()),
        report,
        shown,
    }
}

/// Checks the ready server, also writing the report to `file` with
/// `flag` (`--html` or `--junit`).
fn check_ready(flag: &str, file: &Path) -> Checked {
    let (server, profile) = ready_server();
    let mut args = vec!["--profile", profile.path.as_str()];
    args.extend(CREDENTIALS);
    args.extend([flag, file.to_str().unwrap()]);
    let run = check(&args);
    drop(server);
    assert_eq!(run.code, Some(0), "{}", run.shown);
    assert_eq!(run.report["verdict"], "ready", "{}", run.shown);
    assert_eq!(run.count("fail"), 0, "{}", run.shown);
    run
}

/// Checks the blocked profile, also writing the report to `file` with
/// `flag`.
fn check_blocked(flag: &str, file: &Path) -> Checked {
    let profile = blocked_profile();
    let run = check(&[
        "--profile",
        &profile.path,
        "--timeout",
        "5",
        flag,
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.shown);
    assert_eq!(run.report["verdict"], "blocked", "{}", run.shown);
    assert!(run.count("fail") > 0, "{}", run.shown);
    run
}

/// Opens `page` in Chromium; what the script saw in it.
fn show(browser: &Browser, page: &Path) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/show_page.mjs");
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&browser.node);
    cmd.arg(script)
        .arg("--modules")
        .arg(&browser.modules)
        .arg("--user-data-dir")
        .arg(profile.path())
        .arg("--chromium")
        .arg(&browser.chromium)
        .arg("--file")
        .arg(page)
        .args(["--timeout", &PAGE_TIMEOUT.as_secs().to_string()])
        // Playwright never fetches a browser here: it drives Debian's.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    let run = run_bounded(&mut cmd, KILL_AFTER, profile.path());
    // Whatever of this browser outlived the script.
    kill_browsers_using(profile.path());
    let shown = format!(
        "node {script} --file {} ({:?} after {:?})\nstdout:\n{}\nstderr:\n{}",
        page.display(),
        run.status,
        run.elapsed,
        run.stdout,
        run.stderr
    );
    let seen: serde_json::Value = run
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report from {shown}"));
    assert!(
        run.status.is_some_and(|s| s.success()) && seen["ok"] == true,
        "the page did not open: {shown}"
    );
    eprintln!(
        "Chromium {} opened {} in {:?}: verdict {}, title {}, {} check rows, requests {}",
        seen["browser"],
        page.display(),
        run.elapsed,
        seen["verdict"],
        seen["title"],
        seen["checks"],
        seen["requests"]
    );
    seen
}

/// What Chromium showed of the page against the JSON report of the same
/// run: the verdict as `word`, the title, one row per check, and nothing
/// loaded from anywhere but the file.
fn assert_page(seen: &serde_json::Value, run: &Checked, word: &str) {
    assert_eq!(seen["verdict"], word, "{seen:#}");
    assert_eq!(
        seen["title"],
        format!("{word}: turnpike check, {RELAY_PROFILE}"),
        "{seen:#}"
    );
    assert_eq!(
        seen["checks"].as_u64(),
        Some(run.checks().len() as u64),
        "one row per check of {}\n{seen:#}",
        run.shown
    );
    assert_eq!(
        seen["requests"],
        serde_json::json!([]),
        "the page is self-contained: {seen:#}"
    );
}

#[test]
fn the_html_report_opens_in_chromium_and_shows_the_verdict() {
    let browser = require!(Browser::find());
    let out = tempfile::tempdir().unwrap();

    let page = out.path().join("ready.html");
    let run = check_ready("--html", &page);
    assert_page(&show(&browser, &page), &run, "Ready");

    let page = out.path().join("blocked.html");
    let run = check_blocked("--html", &page);
    assert_page(&show(&browser, &page), &run, "Blocked");
}

/// Reads a JUnit file with junitparser and prints, as JSON, what it made
/// of it: the totals of the root and of each suite, each suite's
/// properties, and each case's name and result.
const READ_JUNIT: &str = r#"
import json, sys
from importlib.metadata import version
from junitparser import JUnitXml

xml = JUnitXml.fromfile(sys.argv[1])
def totals(e):
    return {k: getattr(e, k) for k in ("tests", "failures", "errors", "skipped")}
def result(case):
    if case.is_passed: return "passed"
    if case.is_failure: return "failure"
    if case.is_error: return "error"
    if case.is_skipped: return "skipped"
    return "unknown"
print(json.dumps({
    "junitparser": version("junitparser"),
    "root": type(xml).__name__,
    "totals": totals(xml),
    "suites": [{
        "name": suite.name,
        "totals": totals(suite),
        "properties": {p.name: p.value for p in suite.properties()},
        "cases": [{
            "name": case.name,
            "classname": case.classname,
            "result": result(case),
        } for case in suite],
    } for suite in xml],
}))
"#;

/// Reads `file` with junitparser.
fn read_junit(python: &Path, file: &Path) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.args(["-c", READ_JUNIT]).arg(file);
    let run = run_with_limit(&mut cmd, Duration::from_secs(20), |c| {
        let _ = c.kill();
    });
    let shown = format!(
        "{} -c READ_JUNIT {} ({:?})\nstdout:\n{}\nstderr:\n{}\nthe file:\n{}",
        python.display(),
        file.display(),
        run.status,
        run.stdout,
        run.stderr,
        std::fs::read_to_string(file).unwrap_or_default()
    );
    assert!(
        run.status.is_some_and(|s| s.success()),
        "junitparser could not read it: {shown}"
    );
    let read: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {shown}"));
    let totals = &read["totals"];
    eprintln!(
        "junitparser {} read {}: tests={} failures={} errors={} skipped={}",
        read["junitparser"],
        file.display(),
        totals["tests"],
        totals["failures"],
        totals["errors"],
        totals["skipped"]
    );
    for suite in read["suites"].as_array().into_iter().flatten() {
        for case in suite["cases"].as_array().into_iter().flatten() {
            eprintln!("  {}: {}", case["name"], case["result"]);
        }
    }
    read
}

/// What junitparser read against the JSON report of the same run: one
/// suite for the profile, one case per check named and ended as the check,
/// totals that count them, and the verdict, target and profile among the
/// suite's properties.
fn assert_junit(read: &serde_json::Value, run: &Checked) {
    let shown = format!("{read:#}\n{}", run.shown);
    assert_eq!(read["root"], "JUnitXml", "{shown}");
    let suites = read["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 1, "{shown}");
    let suite = &suites[0];
    assert_eq!(
        suite["name"],
        format!("turnpike check: {RELAY_PROFILE}"),
        "{shown}"
    );

    let checks = run.checks();
    let cases = suite["cases"].as_array().unwrap();
    assert_eq!(cases.len(), checks.len(), "one case per check: {shown}");
    for (case, c) in cases.iter().zip(checks) {
        let name = format!(
            "{}: {}",
            c["id"].as_str().unwrap(),
            c["title"].as_str().unwrap()
        );
        assert_eq!(case["name"], name, "{shown}");
        let result = match c["status"].as_str().unwrap() {
            // A warning must not fail a pipeline.
            "pass" | "warn" => "passed",
            "fail" => "failure",
            "skip" => "skipped",
            other => panic!("status {other}: {shown}"),
        };
        assert_eq!(case["result"], result, "{name}: {shown}");
    }

    let expected = serde_json::json!({
        "tests": checks.len(),
        "failures": run.count("fail"),
        "errors": 0,
        "skipped": run.count("skip"),
    });
    assert_eq!(read["totals"], expected, "{shown}");
    assert_eq!(suite["totals"], expected, "{shown}");
    // The totals agree with the cases as the reader classed them.
    let counted = |result: &str| cases.iter().filter(|c| c["result"] == result).count();
    assert_eq!(counted("failure"), run.count("fail"), "{shown}");
    assert_eq!(counted("error"), 0, "{shown}");
    assert_eq!(counted("skipped"), run.count("skip"), "{shown}");

    let properties = &suite["properties"];
    assert_eq!(properties["verdict"], run.report["verdict"], "{shown}");
    assert_eq!(properties["target"], run.report["target"], "{shown}");
    assert_eq!(properties["profile"], RELAY_PROFILE, "{shown}");
    assert_eq!(properties["summary"], run.report["summary"], "{shown}");
}

#[test]
fn the_junit_report_reads_with_junitparser() {
    let python = require!(venv_python("junitparser"));
    let out = tempfile::tempdir().unwrap();

    let file = out.path().join("ready.xml");
    let run = check_ready("--junit", &file);
    let read = read_junit(&python, &file);
    assert_junit(&read, &run);
    assert_eq!(read["totals"]["failures"], 0, "{read:#}");

    let file = out.path().join("blocked.xml");
    let run = check_blocked("--junit", &file);
    let read = read_junit(&python, &file);
    assert_junit(&read, &run);
    assert_eq!(read["suites"][0]["properties"]["verdict"], "blocked");
    assert!(read["totals"]["failures"].as_u64() > Some(0), "{read:#}");
}

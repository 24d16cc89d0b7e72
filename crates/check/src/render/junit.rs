//! The report as JUnit XML, for CI systems that show test results.
//!
//! One `<testsuite>` in a `<testsuites>`, one `<testcase>` per check. A
//! failing check is a `<failure>`; a warning passes (it must not fail a
//! pipeline) with the warning in `<system-out>`; a skipped check is
//! `<skipped>`. Checks have no notion of an error, so `errors` is 0.

use std::fmt::{self, Write as _};

use super::{measure_text, parse_rfc3339, status_mark, verdict_id};
use crate::report::{Check, Report, Status};

/// The report as JUnit XML (UTF-8, XML 1.0).
///
/// `<testsuite name="turnpike check: PROFILE">` carries the counts, the
/// run's time in seconds and its start (`timestamp`, UTC, without zone as
/// the JUnit schema wants), and `<properties>` verdict, target, profile and
/// summary. Each `<testcase>` is `classname="turnpike.check.ENDPOINT"`
/// (`general` without one) and `name="ID: TITLE"`.
#[must_use]
pub fn junit(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_junit(&mut out, report);
    out
}

fn write_junit(out: &mut String, report: &Report) -> fmt::Result {
    let tests = report.checks.len();
    let failures = report.count(Status::Fail);
    let skipped = report.count(Status::Skip);
    let time = seconds(report.duration_ms);
    let suite = format!("turnpike check: {}", report.profile);

    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        out,
        r#"<testsuites name="turnpike check" tests="{tests}" failures="{failures}" errors="0" skipped="{skipped}" time="{time}">"#
    )?;
    write!(
        out,
        r#"  <testsuite name="{}" tests="{tests}" failures="{failures}" errors="0" skipped="{skipped}" time="{time}""#,
        attr(&suite)
    )?;
    let timestamp = parse_rfc3339(&report.started)
        .map_or_else(|| report.started.trim().to_owned(), |t| t.iso());
    if !timestamp.is_empty() {
        write!(out, r#" timestamp="{}""#, attr(&timestamp))?;
    }
    writeln!(out, ">")?;

    writeln!(out, "    <properties>")?;
    for (name, value) in [
        ("verdict", verdict_id(report.verdict)),
        ("target", report.target.as_str()),
        ("profile", report.profile.as_str()),
        ("summary", report.summary.as_str()),
    ] {
        writeln!(
            out,
            r#"      <property name="{name}" value="{}"/>"#,
            attr(value)
        )?;
    }
    writeln!(out, "    </properties>")?;

    for c in &report.checks {
        write_case(out, c)?;
    }

    writeln!(out, "  </testsuite>")?;
    writeln!(out, "</testsuites>")?;
    Ok(())
}

fn write_case(out: &mut String, c: &Check) -> fmt::Result {
    let classname = format!(
        "turnpike.check.{}",
        super::group(c)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .unwrap_or("general")
    );
    let name = format!("{}: {}", c.id, c.title);
    write!(
        out,
        r#"    <testcase classname="{}" name="{}" time="{}""#,
        attr(&classname),
        attr(&name),
        seconds(c.duration_ms)
    )?;
    let detail = c.detail.as_deref().map(str::trim).filter(|d| !d.is_empty());
    match c.status {
        Status::Pass if detail.is_none() => {
            writeln!(out, "/>")?;
            return Ok(());
        }
        Status::Pass => {
            writeln!(out, ">")?;
            writeln!(
                out,
                "      <system-out>{}</system-out>",
                text(&explanation(c))
            )?;
        }
        Status::Warn => {
            writeln!(out, ">")?;
            writeln!(
                out,
                "      <system-out>{}</system-out>",
                text(&explanation(c))
            )?;
        }
        Status::Fail => {
            writeln!(out, ">")?;
            let message = detail.unwrap_or("failed");
            writeln!(
                out,
                r#"      <failure message="{}" type="fail">{}</failure>"#,
                attr(message),
                text(&explanation(c))
            )?;
        }
        Status::Skip => {
            writeln!(out, ">")?;
            let message = detail.unwrap_or("not run");
            writeln!(out, r#"      <skipped message="{}"/>"#, attr(message))?;
        }
    }
    writeln!(out, "    </testcase>")?;
    Ok(())
}

/// What a check found and what to do, a fact a line: "WARN: detail",
/// "measured: 180 ms (< 150 ms)", "fix: ...", "threshold source: ...".
fn explanation(c: &Check) -> String {
    let mut lines: Vec<String> = Vec::new();
    let detail = c.detail.as_deref().map(str::trim).filter(|d| !d.is_empty());
    lines.push(match detail {
        Some(d) => format!("{}: {d}", status_mark(c.status)),
        None => status_mark(c.status).to_owned(),
    });
    if let Some(m) = measure_text(c) {
        lines.push(format!("measured: {m}"));
    }
    if c.status != Status::Pass {
        if let Some(r) = c
            .remediation
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            lines.push(format!("fix: {r}"));
        }
        if let Some(s) = c.source.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            lines.push(format!("threshold source: {s}"));
        }
    }
    lines.join("\n")
}

/// Milliseconds as seconds with three decimals: "1.250".
fn seconds(ms: f64) -> String {
    if ms.is_finite() && ms > 0.0 {
        format!("{:.3}", ms / 1000.0)
    } else {
        "0.000".to_owned()
    }
}

/// Whether XML 1.0 allows a character at all.
const fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// Escaped for element content; forbidden characters dropped.
fn text(s: &str) -> String {
    escape(s, false)
}

/// Escaped for a double-quoted attribute; tabs and line breaks kept as
/// character references (a parser would turn them into spaces).
fn attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if xml_char(c) => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            text(r#"a<b & "c" 'd'>"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(text("x\u{0}\u{7}\u{1b}y\u{fffe}\u{ffff}"), "xy");
        assert_eq!(text("a\tb\nc\rd"), "a\tb\nc&#13;d");
        assert_eq!(attr("a\tb\nc"), "a&#9;b&#10;c");
        assert_eq!(text("é 日本 🚀"), "é 日本 🚀");
    }

    #[test]
    fn seconds_form() {
        assert_eq!(seconds(1250.0), "1.250");
        assert_eq!(seconds(0.4), "0.000");
        assert_eq!(seconds(-3.0), "0.000");
        assert_eq!(seconds(f64::NAN), "0.000");
    }
}

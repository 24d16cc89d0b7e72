//! The report as one self-contained HTML page, to attach to a mail or a
//! ticket: inline CSS, no script, nothing fetched.

use std::fmt::{self, Write as _};

use super::{
    counts, duration_text, parse_rfc3339, remediations, started_text, status_mark, value_text,
    verdict_id, verdict_word,
};
use crate::report::{Check, Report};

/// The report as an HTML page: a banner with the verdict (its element
/// `id="verdict"`, its text exactly `Ready`, `Degraded` or `Blocked`) and
/// the summary; profile, target, start and duration; what to change; a
/// table of every check. Light and dark color schemes; prints on white.
///
/// Everything from the report is HTML-escaped, and the page refers to no
/// other resource, so it is safe to open from anywhere.
#[must_use]
pub fn html(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_html(&mut out, report);
    out
}

const STYLE: &str = r#"
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --row: #f6f8fa;
  --pass: #1a7f37; --warn: #9a6700; --fail: #cf222e; --skip: #6e7781;
  --ready-bg: #dafbe1; --ready-fg: #116329; --ready-edge: #1a7f37;
  --degraded-bg: #fff8c5; --degraded-fg: #7d4e00; --degraded-edge: #bf8700;
  --blocked-bg: #ffebe9; --blocked-fg: #a40e26; --blocked-edge: #cf222e;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #30363d; --row: #151b23;
    --pass: #3fb950; --warn: #d29922; --fail: #f85149; --skip: #9198a1;
    --ready-bg: #11281c; --ready-fg: #56d364; --ready-edge: #2ea043;
    --degraded-bg: #2a2213; --degraded-fg: #e3b341; --degraded-edge: #bb8009;
    --blocked-bg: #301416; --blocked-fg: #ff7b72; --blocked-edge: #da3633;
  }
}
* { box-sizing: border-box; }
html { background: var(--bg); }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
main { max-width: 1180px; margin: 0 auto; padding: 24px 16px 40px; }
.banner {
  border-left: 10px solid var(--edge); background: var(--bbg);
  border-radius: 8px; padding: 20px 24px;
}
.banner.ready { --edge: var(--ready-edge); --bbg: var(--ready-bg); --bfg: var(--ready-fg); }
.banner.degraded { --edge: var(--degraded-edge); --bbg: var(--degraded-bg); --bfg: var(--degraded-fg); }
.banner.blocked { --edge: var(--blocked-edge); --bbg: var(--blocked-bg); --bfg: var(--blocked-fg); }
.banner .kicker {
  margin: 0; color: var(--bfg); font-size: 13px; font-weight: 600;
  text-transform: uppercase; letter-spacing: .08em;
}
#verdict { margin: 2px 0 0; color: var(--bfg); font-size: 44px; line-height: 1.1; font-weight: 800; }
.summary { margin: 8px 0 0; font-size: 18px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 20px; margin: 20px 0 8px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
h2 { font-size: 20px; margin: 28px 0 10px; }
ol.fixes { margin: 0; padding-left: 1.6em; }
ol.fixes li { margin: 4px 0; padding-left: 4px; }
.mono, .fix { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 13px; }
.muted, .none { color: var(--muted); }
.scroll { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 8px 10px; border-bottom: 1px solid var(--line); }
td { overflow-wrap: anywhere; }
th { font-size: 12px; font-weight: 600; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
tbody tr:nth-child(even) { background: var(--row); }
td.title { min-width: 14em; }
td.title .id { display: block; color: var(--muted); font-size: 12px; }
td.value { white-space: nowrap; }
td.value .threshold { display: block; color: var(--muted); font-size: 12px; }
.st {
  display: inline-block; min-width: 3.8em; padding: 2px 6px; border-radius: 4px;
  text-align: center; font-size: 12px; font-weight: 700; letter-spacing: .04em; color: var(--bg);
  white-space: nowrap;
}
.st.pass { background: var(--pass); }
.st.warn { background: var(--warn); }
.st.fail { background: var(--fail); }
.st.skip { background: var(--skip); }
tr.skip td { color: var(--muted); }
footer { margin-top: 28px; color: var(--muted); font-size: 12px; }
@media print {
  :root {
    --bg: #ffffff; --fg: #000000; --muted: #555555; --line: #bbbbbb; --row: #f3f3f3;
    --pass: #1a7f37; --warn: #9a6700; --fail: #cf222e; --skip: #6e7781;
    --ready-bg: #dafbe1; --ready-fg: #116329; --ready-edge: #1a7f37;
    --degraded-bg: #fff8c5; --degraded-fg: #7d4e00; --degraded-edge: #bf8700;
    --blocked-bg: #ffebe9; --blocked-fg: #a40e26; --blocked-edge: #cf222e;
  }
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  .banner, .st, tbody tr { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  .scroll { overflow: visible; }
  table { font-size: 9.5pt; }
  thead { display: table-header-group; }
  tr, .banner, ol.fixes li { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"#;

fn write_html(out: &mut String, report: &Report) -> fmt::Result {
    let word = verdict_word(report.verdict);
    let class = verdict_id(report.verdict);
    let profile = esc(&report.profile);
    let started = esc(&started_text(report));

    writeln!(out, "<!DOCTYPE html>")?;
    writeln!(out, r#"<html lang="en">"#)?;
    writeln!(out, "<head>")?;
    writeln!(out, r#"<meta charset="utf-8">"#)?;
    writeln!(
        out,
        r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#
    )?;
    writeln!(out, r#"<meta name="color-scheme" content="light dark">"#)?;
    writeln!(out, r#"<meta name="generator" content="turnpike check">"#)?;
    // No favicon to fetch, even when the page is served.
    writeln!(out, r#"<link rel="icon" href="data:,">"#)?;
    writeln!(out, "<title>{word}: turnpike check, {profile}</title>")?;
    writeln!(out, "<style>{STYLE}</style>")?;
    writeln!(out, "</head>")?;
    writeln!(out, "<body>")?;
    writeln!(out, "<main>")?;

    writeln!(out, r#"<header class="banner {class}">"#)?;
    writeln!(out, r#"<p class="kicker">Network readiness</p>"#)?;
    writeln!(out, r#"<h1 id="verdict">{word}</h1>"#)?;
    if !report.summary.trim().is_empty() {
        writeln!(
            out,
            r#"<p class="summary">{}</p>"#,
            esc(report.summary.trim())
        )?;
    }
    writeln!(out, "</header>")?;

    writeln!(out, r#"<dl class="meta">"#)?;
    writeln!(out, "<dt>Profile</dt><dd>{profile}</dd>")?;
    writeln!(
        out,
        r#"<dt>Target</dt><dd class="mono">{}</dd>"#,
        esc(&report.target)
    )?;
    match parse_rfc3339(&report.started) {
        Some(t) => writeln!(
            out,
            r#"<dt>Started</dt><dd><time datetime="{}Z">{started}</time></dd>"#,
            t.iso()
        )?,
        None => writeln!(out, "<dt>Started</dt><dd>{started}</dd>")?,
    }
    writeln!(
        out,
        "<dt>Duration</dt><dd>{}</dd>",
        esc(&duration_text(report.duration_ms))
    )?;
    writeln!(out, "<dt>Checks</dt><dd>{}</dd>", esc(&counts(report)))?;
    writeln!(out, "</dl>")?;

    writeln!(out, r#"<section id="what-to-change">"#)?;
    writeln!(out, "<h2>What to change</h2>")?;
    let fixes = remediations(report);
    if fixes.is_empty() {
        writeln!(out, r#"<p class="none">Nothing.</p>"#)?;
    } else {
        writeln!(out, r#"<ol class="fixes">"#)?;
        for fix in fixes {
            writeln!(out, r#"<li class="fix">{}</li>"#, esc(fix))?;
        }
        writeln!(out, "</ol>")?;
    }
    writeln!(out, "</section>")?;

    writeln!(out, r#"<section id="checks">"#)?;
    writeln!(out, "<h2>Checks</h2>")?;
    writeln!(out, r#"<div class="scroll">"#)?;
    writeln!(out, "<table>")?;
    writeln!(
        out,
        "<thead><tr><th>Status</th><th>Check</th><th>Measured</th><th>Detail</th>\
         <th>What to change</th><th>Threshold source</th></tr></thead>"
    )?;
    writeln!(out, "<tbody>")?;
    for c in &report.checks {
        write_row(out, c)?;
    }
    writeln!(out, "</tbody>")?;
    writeln!(out, "</table>")?;
    writeln!(out, "</div>")?;
    writeln!(out, "</section>")?;

    writeln!(
        out,
        "<footer>turnpike check, profile {profile}, started {started}.</footer>"
    )?;
    writeln!(out, "</main>")?;
    writeln!(out, "</body>")?;
    writeln!(out, "</html>")?;
    Ok(())
}

fn write_row(out: &mut String, c: &Check) -> fmt::Result {
    let status = c.status.as_str();
    writeln!(out, r#"<tr class="{status}">"#)?;
    writeln!(
        out,
        r#"<td><span class="st {status}">{}</span></td>"#,
        status_mark(c.status)
    )?;
    writeln!(
        out,
        r#"<td class="title">{}<span class="id mono">{}</span></td>"#,
        esc(&c.title),
        esc(&c.id)
    )?;
    let threshold = c
        .threshold
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let value = value_text(c);
    write!(out, r#"<td class="value">"#)?;
    if let Some(v) = &value {
        write!(out, "{}", esc(v))?;
    }
    if let Some(t) = threshold {
        write!(out, r#"<span class="threshold">{}</span>"#, esc(t))?;
    }
    writeln!(out, "</td>")?;
    writeln!(out, "<td>{}</td>", opt(c.detail.as_deref()))?;
    writeln!(
        out,
        r#"<td class="fix">{}</td>"#,
        opt(c.remediation.as_deref())
    )?;
    writeln!(out, "<td>{}</td>", opt(c.source.as_deref()))?;
    writeln!(out, "</tr>")?;
    Ok(())
}

fn opt(s: Option<&str>) -> String {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(esc)
        .unwrap_or_default()
}

/// Escaped for HTML text and quoted attributes. Control characters (but
/// tabs and line breaks) become U+FFFD, so what was there shows.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}') => out.push('\u{fffd}'),
            c => out.push(c),
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
            esc(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("a\u{1b}b\u{0}"), "a\u{fffd}b\u{fffd}");
        assert_eq!(esc("日本 🚀"), "日本 🚀");
    }
}

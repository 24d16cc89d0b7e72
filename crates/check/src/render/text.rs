//! The terminal report, and the progress line shown while checks run.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use super::{
    counts, duration_text, measure_text, needs_change, remediations, started_text, status_mark,
};
use crate::report::{Check, Report, Status, Verdict};

/// The widest a title column gets before it is left ragged.
const TITLE_MAX: usize = 44;
/// The widest the value column gets before it is left ragged.
const MEASURE_MAX: usize = 24;
/// Past this, a check's detail goes on a line of its own.
const LINE_MAX: usize = 100;
/// The longest progress line: one short of 80 columns, so a terminal
/// does not wrap it (the cursor sits after the last character).
const PROGRESS_MAX: usize = 79;

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// The report for a terminal: the verdict, each check on a line (grouped
/// by endpoint, in report order), and what to change. With `color`, ANSI
/// colors; without, no escape sequence at all.
///
/// Text from the report is made safe to print: control characters (an
/// escape sequence in a server's error, say) are shown as `\u{1b}`.
#[must_use]
pub fn text(report: &Report, color: bool) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_text(&mut out, report, Paint(color));
    out
}

/// One line of progress, at most 79 characters: "checking 7/12:
/// turn-tls:turn, https:web", cut short with "…". The caller redraws it
/// with `\r` (and clears to the end of the line).
#[must_use]
pub fn progress_line(done: usize, total: usize, running: &[&str]) -> String {
    let mut line = format!("checking {done}/{total}");
    if !running.is_empty() {
        line.push_str(": ");
        let names: Vec<Cow<'_, str>> = running.iter().map(|r| clean(r)).collect();
        line.push_str(&names.join(", "));
    }
    truncate(&line, PROGRESS_MAX)
}

#[derive(Debug, Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn paint<'a>(self, code: &str, s: &'a str) -> Cow<'a, str> {
        if self.0 && !s.is_empty() {
            Cow::Owned(format!("{code}{s}{RESET}"))
        } else {
            Cow::Borrowed(s)
        }
    }

    fn status(self, status: Status) -> Cow<'static, str> {
        let code = match status {
            Status::Pass => GREEN,
            Status::Warn => YELLOW,
            Status::Fail => RED,
            Status::Skip => DIM,
        };
        self.paint(code, status_mark(status))
    }
}

fn write_text(out: &mut String, report: &Report, p: Paint) -> fmt::Result {
    let verdict = match report.verdict {
        Verdict::Ready => "READY",
        Verdict::Degraded => "DEGRADED",
        Verdict::Blocked => "BLOCKED",
    };
    let verdict_color = match report.verdict {
        Verdict::Ready => GREEN,
        Verdict::Degraded => YELLOW,
        Verdict::Blocked => RED,
    };
    let verdict = if p.0 {
        format!("{BOLD}{verdict_color}{verdict}{RESET}")
    } else {
        verdict.to_owned()
    };
    let summary = clean(report.summary.trim());
    if summary.is_empty() {
        writeln!(out, "{verdict}")?;
    } else {
        writeln!(out, "{verdict}  {summary}")?;
    }
    writeln!(out, "  profile  {}", clean(&report.profile))?;
    writeln!(out, "  target   {}", clean(&report.target))?;
    let started = clean(&started_text(report)).into_owned();
    if started.trim().is_empty() {
        writeln!(out, "  took     {}", duration_text(report.duration_ms))?;
    } else {
        writeln!(
            out,
            "  started  {started}, took {}",
            duration_text(report.duration_ms)
        )?;
    }
    writeln!(out, "  checks   {}", counts(report))?;

    let title_w = report
        .checks
        .iter()
        .map(|c| width(&clean(&c.title)))
        .max()
        .unwrap_or(0)
        .min(TITLE_MAX);
    let measure_w = report
        .checks
        .iter()
        .filter_map(measure_text)
        .map(|m| width(&clean(&m)))
        .max()
        .unwrap_or(0)
        .min(MEASURE_MAX);

    // Groups by endpoint, in the order each first appears.
    let mut groups: Vec<Option<&str>> = Vec::new();
    for c in &report.checks {
        let key = super::group(c);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    let headed = groups.len() > 1;
    for group in &groups {
        writeln!(out)?;
        if headed {
            let name = clean(group.unwrap_or("general"));
            writeln!(out, "{}", p.paint(BOLD, &name))?;
        }
        for c in report.checks.iter().filter(|c| super::group(c) == *group) {
            write_check(out, c, p, title_w, measure_w)?;
        }
    }

    let fixes = remediations(report);
    if !fixes.is_empty() {
        writeln!(out)?;
        writeln!(out, "{}", p.paint(BOLD, "What to change"))?;
        for (i, fix) in fixes.iter().enumerate() {
            writeln!(out, "  {}. {}", i + 1, clean(fix))?;
        }
    }
    Ok(())
}

fn write_check(
    out: &mut String,
    c: &Check,
    p: Paint,
    title_w: usize,
    measure_w: usize,
) -> fmt::Result {
    let title = clean(c.title.trim());
    let measure = measure_text(c).map(|m| clean(&m).into_owned());
    let detail = c
        .detail
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(clean);

    // The line without color, to measure, then the same with it.
    let mut plain = format!("  {}  {}", status_mark(c.status), pad(&title, title_w));
    let mut line = format!("  {}  {}", p.status(c.status), pad(&title, title_w));
    if measure.is_some() || detail.is_some() {
        let m = pad(measure.as_deref().unwrap_or(""), measure_w);
        plain.push_str("  ");
        plain.push_str(&m);
        line.push_str("  ");
        line.push_str(&m);
    }
    let mut detail_below = None;
    if let Some(d) = &detail {
        if width(&plain) + 2 + width(d) <= LINE_MAX {
            line.push_str("  ");
            line.push_str(&p.paint(DIM, d));
        } else {
            detail_below = Some(d);
        }
    }
    writeln!(out, "{}", line.trim_end())?;
    if let Some(d) = detail_below {
        writeln!(out, "        {}", p.paint(DIM, d))?;
    }

    if needs_change(c.status) {
        if let Some(fix) = c
            .remediation
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            let arrow = match c.status {
                Status::Fail => p.paint(RED, "→ fix:"),
                _ => p.paint(YELLOW, "→ fix:"),
            };
            writeln!(out, "        {arrow} {}", clean(fix))?;
        }
        if let Some(source) = c.source.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            let line = format!("threshold from {}", clean(source));
            writeln!(out, "          {}", p.paint(DIM, &line))?;
        }
    }
    Ok(())
}

/// Characters a terminal would act on rather than show: C0 and C1
/// controls, and the bidirectional overrides that reorder what is shown.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text safe to print: tabs and line breaks become spaces, other unsafe
/// characters are shown escaped (`\u{1b}`).
fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' | '\n' | '\r' => out.push(' '),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Width in columns, counting each character as one (close enough for the
/// text a report holds).
fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, w: usize) -> String {
    let n = width(s);
    if n >= w {
        s.to_owned()
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// At most `max` characters, the last an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_controls() {
        assert_eq!(clean("plain"), "plain");
        assert_eq!(clean("a\x1b[31mb"), "a\\u{1b}[31mb");
        assert_eq!(clean("a\tb\nc"), "a b c");
        assert_eq!(clean("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn progress() {
        assert_eq!(progress_line(0, 3, &[]), "checking 0/3");
        assert_eq!(
            progress_line(7, 12, &["turn-tls:turn", "https:web"]),
            "checking 7/12: turn-tls:turn, https:web"
        );
        let many = ["turn-udp:turn-server-with-a-long-name"; 8];
        let line = progress_line(1, 100, &many);
        assert_eq!(line.chars().count(), 79);
        assert!(line.ends_with('…'));
    }
}

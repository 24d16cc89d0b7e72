//! How a [`Report`](crate::report::Report) is written out: for a terminal
//! ([`text`], with [`progress_line`] while the checks run), for programs
//! ([`json`]), for CI ([`junit`]) and for people reading it later
//! ([`html`], one self-contained page).
//!
//! Every renderer returns a `String`; none prints. What a report holds
//! comes partly from the network (certificate issuers, server errors), so
//! each renderer neutralises it for its medium: control characters made
//! visible on a terminal, XML and HTML escaped.

mod html;
mod json;
mod junit;
mod text;

pub use html::html;
pub use json::json;
pub use junit::junit;
pub use text::{progress_line, text};

use crate::report::{Check, Report, Status, Verdict};

/// The group a check is shown in: its endpoint, or "quality" for the
/// measurements' figures; `None` for the rest (DNS and the like).
fn group(c: &Check) -> Option<&str> {
    c.endpoint
        .as_deref()
        .or_else(|| c.id.starts_with("quality:").then_some("quality"))
}

/// The verdict as a word, capitalised: "Ready".
const fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Ready => "Ready",
        Verdict::Degraded => "Degraded",
        Verdict::Blocked => "Blocked",
    }
}

/// The verdict as it is serialised: "ready".
const fn verdict_id(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Ready => "ready",
        Verdict::Degraded => "degraded",
        Verdict::Blocked => "blocked",
    }
}

/// The status as a four-letter mark: "PASS".
const fn status_mark(status: Status) -> &'static str {
    match status {
        Status::Pass => "PASS",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
        Status::Skip => "SKIP",
    }
}

/// Whether a check's remediation is something to change.
const fn needs_change(status: Status) -> bool {
    matches!(status, Status::Warn | Status::Fail)
}

/// Each distinct remediation of a failing or warning check, once, in check
/// order.
fn remediations(report: &Report) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for check in &report.checks {
        if !needs_change(check.status) {
            continue;
        }
        if let Some(r) = check.remediation.as_deref() {
            let r = r.trim();
            if !r.is_empty() && !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// "9 passed, 2 warnings, 1 failed, 1 skipped", leaving out the zeros.
fn counts(report: &Report) -> String {
    let parts = [
        (Status::Pass, "passed", "passed"),
        (Status::Warn, "warning", "warnings"),
        (Status::Fail, "failed", "failed"),
        (Status::Skip, "skipped", "skipped"),
    ];
    let mut out: Vec<String> = Vec::new();
    for (status, one, many) in parts {
        let n = report.count(status);
        if n > 0 {
            out.push(format!("{n} {}", if n == 1 { one } else { many }));
        }
    }
    if out.is_empty() {
        "no checks".to_owned()
    } else {
        out.join(", ")
    }
}

/// A number for people: integers as they are, others with at most two
/// decimals, trailing zeros dropped.
fn number(n: f64) -> String {
    if !n.is_finite() {
        return "?".to_owned();
    }
    let s = format!("{n:.2}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// What was measured, with its unit: "42 ms", "0.5%", "198.51.100.7".
/// `None` when nothing was.
fn value_text(check: &Check) -> Option<String> {
    use serde_json::Value;
    let v = match &check.value {
        Value::Null => return None,
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                number(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if v.is_empty() {
        return None;
    }
    match check.unit.as_deref().map(str::trim) {
        None | Some("") => Some(v),
        Some("%") => Some(format!("{v}%")),
        Some(unit) => Some(format!("{v} {unit}")),
    }
}

/// The value and the threshold it was held to: "42 ms (< 150 ms)".
fn measure_text(check: &Check) -> Option<String> {
    let threshold = check
        .threshold
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    match (value_text(check), threshold) {
        (Some(v), Some(t)) => Some(format!("{v} ({t})")),
        (Some(v), None) => Some(v),
        (None, Some(t)) => Some(format!("({t})")),
        (None, None) => None,
    }
}

/// A duration for people: "420 ms", "12.3 s", "2 min 5 s".
fn duration_text(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "?".to_owned();
    }
    if ms < 1000.0 {
        return format!("{} ms", number(ms.round()));
    }
    let s = ms / 1000.0;
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    // Whole seconds from here (`as` saturates; finite and positive here).
    let total = s.round() as u64;
    let (h, m, sec) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h} h {m} min {sec} s")
    } else {
        format!("{m} min {sec} s")
    }
}

/// A time, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl UtcTime {
    /// "2024-05-01T12:00:00", the form JUnit's `timestamp` takes.
    fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// "2024-05-01 12:00:00 UTC", for people.
    fn human(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (`civil_from_days`).
const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both in range by construction: 1..=31 and 1..=12.
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Reads an RFC 3339 time ("2024-05-01T12:00:00.123Z",
/// "2024-05-01t14:00:00+02:00"), fractions of a second dropped, and brings
/// it to UTC. A leap second is read as the second before it.
fn parse_rfc3339(s: &str) -> Option<UtcTime> {
    fn digits(s: &str, range: std::ops::Range<usize>) -> Option<u32> {
        let part = s.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    }
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let year = i64::from(digits(s, 0..4)?);
    let month = digits(s, 5..7)?;
    let day = digits(s, 8..10)?;
    let hour = digits(s, 11..13)?;
    let minute = digits(s, 14..16)?;
    let second = digits(s, 17..19)?.min(59);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = frac.get(n..)?;
    }
    let offset_min: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            let (oh, om) = (digits(rest, 1..3)?, digits(rest, 4..6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * i64::from(oh * 60 + om)
        }
    };
    let local = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    let utc = local - offset_min * 60;
    let (year, month, day) = civil_from_days(utc.div_euclid(86_400));
    let secs = utc.rem_euclid(86_400);
    // In 0..86_400, so each part fits.
    let (hour, minute, second) = (
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    );
    Some(UtcTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
    })
}

/// When the report started, for people: "2024-05-01 12:00:00 UTC", or the
/// text as it is when it is not RFC 3339.
fn started_text(report: &Report) -> String {
    parse_rfc3339(&report.started).map_or_else(|| report.started.clone(), |t| t.human())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2024-05-01T12:34:56.789Z").unwrap();
        assert_eq!(t.iso(), "2024-05-01T12:34:56");
        assert_eq!(t.human(), "2024-05-01 12:34:56 UTC");
        let t = parse_rfc3339("2024-03-01T01:00:00+02:00").unwrap();
        assert_eq!(t.iso(), "2024-02-29T23:00:00");
        let t = parse_rfc3339("2023-12-31T23:30:00-01:00").unwrap();
        assert_eq!(t.iso(), "2024-01-01T00:30:00");
        let t = parse_rfc3339("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(t.iso(), "1970-01-01T00:00:00");
        for bad in [
            "",
            "yesterday",
            "2024-05-01T12:34:56",
            "2024-02-30T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:34:56.Z",
            "2024-05-01T12:34:56+0200",
            "2024-05-01T12:34:56+02:00x",
            "+024-05-01T12:34:56Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for z in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(number(42.0), "42");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(12.346), "12.35");
        assert_eq!(number(-0.001), "0");
        assert_eq!(duration_text(420.4), "420 ms");
        assert_eq!(duration_text(12_345.0), "12.3 s");
        assert_eq!(duration_text(125_000.0), "2 min 5 s");
        assert_eq!(duration_text(f64::NAN), "?");
    }
}

//! The report as JSON: the stable interface CI pipelines parse.

use crate::report::Report;

/// The report as pretty JSON, with a trailing newline. The field names are
/// those of [`Report`] and [`Check`](crate::report::Check) and never
/// change: `verdict`, `summary`, `profile`, `target`, `started`,
/// `duration_ms`, `checks[]` (`id`, `title`, `endpoint`, `status`,
/// `value`, `unit`, `threshold`, `source`, `remediation`, `detail`,
/// `duration_ms`). Optional fields are left out when empty.
#[must_use]
pub fn json(report: &Report) -> String {
    match serde_json::to_string_pretty(report) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        // Serialising a report does not fail (its maps have string keys);
        // should it ever, say so in JSON rather than print nothing.
        Err(e) => {
            let msg = serde_json::Value::String(e.to_string());
            format!("{{\n  \"error\": {msg}\n}}\n")
        }
    }
}

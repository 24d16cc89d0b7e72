//! What a check found: one [`Check`] per probe, and a [`Verdict`].
//!
//! The JSON form is a stable interface (CI pipelines parse it): fields are
//! only ever added, never renamed or removed.

use serde::{Deserialize, Serialize};

pub use turnpike_profile::Verdict;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works, and within its threshold.
    Pass,
    /// Works, but short of what the service needs (a threshold missed, a
    /// certificate from an unexpected issuer, only a proxy path).
    Warn,
    /// Does not work.
    Fail,
    /// Not run: nothing to run it against, or what it needs failed first.
    Skip,
}

impl Status {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

/// One check: what was tried, what came of it, and what to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable and unique within a report: `<kind>:<endpoint id>`, such as
    /// `tcp:signalling`, `turn-udp:turn`, `dns:turn.example.com`.
    pub id: String,
    /// What was checked, for people: "TURN over TLS to turn.example.com:443".
    pub title: String,
    /// The profile endpoint it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub status: Status,
    /// What was measured: a number (ms, kbit/s, %), or text (an address,
    /// a certificate issuer), or nothing.
    #[serde(default)]
    pub value: serde_json::Value,
    /// The unit of `value` when it is a number: "ms", "%", "kbps", "s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The limit it was held to, as text ("< 150 ms").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    /// Where the threshold comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The rule to change, naming protocol, address and port: "allow
    /// outbound UDP to 198.51.100.7 port 3478".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
    /// What happened, in a line: "timed out after 3 s", "connection
    /// refused", "relayed round trip 12 ms".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long the check took.
    pub duration_ms: f64,
}

impl Check {
    /// A check with no measurement yet.
    #[must_use]
    pub fn new(id: impl Into<String>, title: impl Into<String>, status: Status) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            endpoint: None,
            status,
            value: serde_json::Value::Null,
            unit: None,
            threshold: None,
            source: None,
            remediation: None,
            detail: None,
            duration_ms: 0.0,
        }
    }
}

/// A whole check run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    /// One sentence on what the verdict means for calls.
    pub summary: String,
    /// The profile's name.
    pub profile: String,
    /// What was checked: the server URL or the profile file.
    pub target: String,
    /// When the check started, in RFC 3339 (UTC).
    pub started: String,
    pub duration_ms: f64,
    pub checks: Vec<Check>,
}

impl Report {
    /// The exit code of `turnpike check`: 0 ready, 1 degraded, 2 blocked
    /// (3 is for usage and configuration errors, before any report).
    #[must_use]
    pub const fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Ready => 0,
            Verdict::Degraded => 1,
            Verdict::Blocked => 2,
        }
    }

    /// How many checks ended with `status`.
    #[must_use]
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

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
    /// The path measured to the server's probe responder, when there was
    /// one to measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<Measurements>,
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

/// A figure per direction: up (client to responder) and down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ways<T> {
    pub up: T,
    pub down: T,
}

/// Round-trip times, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    pub median: Option<f64>,
    pub p95: Option<f64>,
    pub samples: u64,
}

/// Interarrival jitter (RFC 3550 §6.4.1) each way, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Jitter {
    pub up: Option<f64>,
    pub down: Option<f64>,
    pub samples_up: u64,
    pub samples_down: u64,
}

/// Packet loss each way, in percent, and the counts it comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    /// `None` when the responder keeps no count to tell the ways apart.
    pub up: Option<f64>,
    pub down: Option<f64>,
    pub sent_up: u64,
    pub received_up: Option<u64>,
    pub sent_down: Option<u64>,
    pub received_down: u64,
}

/// The figures of one media-like stream (or of them all, pooled).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamFigures {
    pub rtt_ms: Rtt,
    pub jitter_ms: Jitter,
    pub loss_pct: Loss,
    pub reordered: Ways<u64>,
    pub duplicates: Ways<u64>,
}

/// One media-like stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// "audio" or "video".
    pub name: String,
    /// Its rate, packets per second, and each packet's UDP payload.
    pub packets_per_second: f64,
    pub packet_bytes: u16,
    #[serde(flatten)]
    pub figures: StreamFigures,
}

/// One step of a bandwidth ramp.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RampStep {
    /// The rate sent (IP packets, headers included), kbit/s.
    pub offered_kbps: f64,
    /// The rate that arrived, by the receiver's dispersion, kbit/s.
    pub delivered_kbps: Option<f64>,
    pub loss_pct: Option<f64>,
    /// How much the one-way delay grew over its minimum, ms.
    pub delay_growth_ms: Option<f64>,
    /// Loss or delay grew: the path's bottleneck is below this rate.
    pub congested: bool,
}

/// A bandwidth ramp, one way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    /// No step congested up to the cap: the rate is at least the cap.
    pub at_cap: bool,
    pub steps: Vec<RampStep>,
}

/// The DSCP seen for each mark sent, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DscpSeen {
    pub ef: Option<u8>,
    pub af41: Option<u8>,
}

/// What the UDP idle-timeout search found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleTimeout {
    pub longest_kept_s: Option<f64>,
    pub shortest_lost_s: Option<f64>,
    pub max_s: f64,
    /// The mapping outlived the longest silence tried.
    pub at_least: bool,
}

/// What was measured of the path to the server's probe responder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    /// "udp-direct", "turn-udp", "turn-tcp" or "turn-tls".
    pub path: String,
    /// The responder's address measured against.
    pub target: String,
    /// Audio and video pooled.
    #[serde(flatten)]
    pub pooled: StreamFigures,
    pub streams: Vec<Stream>,
    pub up_kbps: Option<f64>,
    pub down_kbps: Option<f64>,
    pub bandwidth: Ways<Option<Ramp>>,
    pub udp_idle_timeout_s: Option<f64>,
    pub udp_idle_timeout: Option<IdleTimeout>,
    pub dscp_preserved: Ways<Option<bool>>,
    pub dscp: Ways<DscpSeen>,
    /// RFC 5780 mapping: "none" (no NAT), "endpoint-independent",
    /// "address-dependent", "address-and-port-dependent"; `None`: not
    /// found.
    pub nat_mapping: Option<String>,
    pub nat_filtering: Option<String>,
    pub hairpinning: Option<bool>,
    /// The public address the responder saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_address: Option<String>,
    /// The largest IP packet that reached the responder with DF set.
    pub path_mtu: Option<u16>,
    pub mos: Option<f64>,
    /// What could not be measured, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

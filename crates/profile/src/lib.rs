//! Requirement profiles: what a real-time service needs from a network.
//!
//! A profile is a TOML file (documented key by key in `profiles/README.md`)
//! naming the endpoints a service reaches (host, port or port range, how),
//! which of them stand in for which when blocked, the limits on RTT,
//! jitter, loss, bandwidth and UDP idle timeout, each with its source, and
//! which optional measurements a check runs by default (`[measure]`).
//! `turnpike check --profile FILE` tests a network against one;
//! `turnpike serve` describes itself as one at `GET /api/v1/profile`.
//!
//! [`Profile::from_toml`] reads and validates, naming the line and key of
//! any error; [`Profile::to_toml`] and serde (JSON) give it back losslessly.
//! No I/O here but [`Profile::load`].

#![forbid(unsafe_code)]

mod assess;
mod endpoint;
mod error;
mod host;
mod measure;
mod parse;
mod ports;
mod published;
mod thresholds;
mod validate;

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use assess::{Assessment, EndpointReach, Reach, Verdict};
pub use endpoint::{Endpoint, Kind};
pub use error::{EndpointRef, ProfileError};
pub use measure::Measure;
pub use ports::{PortRange, PortRangeError};
pub use published::{CheckCredentials, Probe, Published};
pub use thresholds::{Bound, LowerLimit, Thresholds, UpperLimit};

/// The most endpoints a profile may list.
pub const MAX_ENDPOINTS: usize = 256;
/// The longest profile read, in bytes.
pub const MAX_BYTES: usize = 64 * 1024;

/// A requirement profile. The fields map one to one onto the file:
/// `[profile]`, `[[endpoint]]`, `[thresholds]`, `[measure]`; JSON has the
/// same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(rename = "profile")]
    pub about: About,
    /// At least one, at most [`MAX_ENDPOINTS`], ids unique.
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Thresholds::is_empty")]
    pub thresholds: Thresholds,
    /// Left out when nothing is asked, so that profiles without the
    /// table read and write as before.
    #[serde(default, skip_serializing_if = "Measure::is_default")]
    pub measure: Measure,
}

/// The `[profile]` table: which service, and on whose word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct About {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the facts come from: a URL, or a guide's title.
    pub source: String,
}

impl Profile {
    /// Reads and validates a profile. Unknown keys are errors; every
    /// error names its line and key.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let (profile, spans) = parse::parse(text)?;
        validate::validate(&profile, &spans)?;
        Ok(profile)
    }

    /// Reads a profile file; errors name the file too.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let in_file = |mut e: ProfileError| {
            e.file = Some(path.to_owned());
            e
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| {
                // One byte past the limit is enough to refuse the file.
                f.take(MAX_BYTES as u64 + 1).read_to_string(&mut text)
            })
            .map_err(|e| {
                in_file(ProfileError::new(
                    None,
                    None,
                    None,
                    format!("cannot read: {e}"),
                ))
            })?;
        Self::from_toml(&text).map_err(in_file)
    }

    /// The profile as TOML that [`from_toml`](Self::from_toml) reads back
    /// to an equal profile.
    pub fn to_toml(&self) -> Result<String, ProfileError> {
        toml::to_string(self)
            .map_err(|e| ProfileError::new(None, None, None, format!("cannot write as TOML: {e}")))
    }

    /// Checks the rules [`from_toml`](Self::from_toml) checks, for a
    /// profile built in code or read from JSON. Errors have no line.
    pub fn validate(&self) -> Result<(), ProfileError> {
        validate::validate(self, &parse::Spans::default())
    }

    /// The endpoint with this id.
    #[must_use]
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// The endpoints that stand in for `id` when it is blocked (those
    /// listing it in `fallback_for`), in profile order.
    pub fn fallbacks_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.iter().filter(move |e| e.is_fallback_for(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[profile]
name = "Small"
source = "a test"

[[endpoint]]
id = "media"
kind = "udp-range"
host = "192.0.2.10"
ports = "10000-20000"

[[endpoint]]
id = "turn"
kind = "turn-tls"
host = "turn.example.com"
port = 443
required = false
fallback_for = ["media"]

[thresholds]
rtt_ms = { max = 150, source = "a guide" }
"#;

    #[test]
    fn reads_a_small_profile() {
        let p = Profile::from_toml(SMALL).unwrap();
        assert_eq!(p.about.name, "Small");
        assert_eq!(p.endpoints.len(), 2);
        assert_eq!(
            p.endpoint("media").and_then(|e| e.ports).map(|r| r.len()),
            Some(10001)
        );
        assert!(p.endpoint("media").unwrap().required);
        let ids: Vec<&str> = p.fallbacks_of("media").map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["turn"]);
        assert_eq!(p.fallbacks_of("turn").count(), 0);
        assert_eq!(p.thresholds.rtt_ms.as_ref().map(|l| l.max), Some(150.0));
        assert!(p.thresholds.loss_pct.is_none());
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn to_toml_reads_back() {
        let p = Profile::from_toml(SMALL).unwrap();
        let text = p.to_toml().unwrap();
        assert_eq!(Profile::from_toml(&text), Ok(p), "{text}");
    }

    #[test]
    fn measure_is_off_and_left_out_by_default() {
        let p = Profile::from_toml(SMALL).unwrap();
        assert_eq!(p.measure, Measure::default());
        assert!(!p.measure.udp_idle_timeout);
        // Profiles that do not ask write as before.
        assert!(!p.to_toml().unwrap().contains("measure"));
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("measure").is_none(), "{json}");
        // Asking for nothing is the same as leaving the table out.
        let off = Profile::from_toml(&format!("{SMALL}\n[measure]\nudp_idle_timeout = false\n"));
        assert_eq!(off, Ok(p.clone()));
        let empty = Profile::from_toml(&format!("{SMALL}\n[measure]\n"));
        assert_eq!(empty, Ok(p));
    }

    #[test]
    fn measure_reads_validates_and_round_trips() {
        let text = format!("{SMALL}\n[measure]\nudp_idle_timeout = true\n");
        let p = Profile::from_toml(&text).unwrap();
        assert!(p.measure.udp_idle_timeout);
        assert_eq!(p.validate(), Ok(()));
        let toml = p.to_toml().unwrap();
        assert!(
            toml.contains("[measure]\nudp_idle_timeout = true"),
            "{toml}"
        );
        assert_eq!(Profile::from_toml(&toml), Ok(p.clone()), "{toml}");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json["measure"],
            serde_json::json!({"udp_idle_timeout": true})
        );
        assert_eq!(serde_json::from_value::<Profile>(json.clone()).unwrap(), p);
        // JSON is as strict as TOML.
        let mut bad = json;
        bad["measure"]["udp_idle_timout"] = true.into();
        let e = serde_json::from_value::<Profile>(bad).unwrap_err();
        assert!(
            e.to_string().contains("unknown field `udp_idle_timout`"),
            "{e}"
        );
        // First in the file, too: tables come in any order.
        let first = format!("[measure]\nudp_idle_timeout = true\n{SMALL}");
        assert_eq!(Profile::from_toml(&first), Ok(p));
    }

    #[test]
    fn validate_without_lines() {
        let mut p = Profile::from_toml(SMALL).unwrap();
        p.endpoints[1].fallback_for = vec!["nothing".into()];
        let e = p.validate().unwrap_err();
        assert_eq!(e.line, None);
        assert_eq!(e.key.as_deref(), Some("fallback_for"));
        assert_eq!(e.endpoint, Some(EndpointRef::Id("turn".into())));
        assert_eq!(
            e.to_string(),
            "endpoint \"turn\", key \"fallback_for\": no endpoint has the id \"nothing\""
        );
        p.endpoints.clear();
        assert_eq!(p.validate().unwrap_err().key.as_deref(), Some("endpoint"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("turnpike-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, SMALL.replace("port = 443", "port = 70000")).unwrap();
        let e = Profile::load(&path).unwrap_err();
        assert_eq!(e.file.as_deref(), Some(path.as_path()));
        assert!(
            e.to_string()
                .starts_with(&format!("{}: line 16: ", path.display())),
            "{e}"
        );
        let good = dir.join("good.toml");
        std::fs::write(&good, SMALL).unwrap();
        assert!(Profile::load(&good).is_ok());
        let e = Profile::load(&dir.join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

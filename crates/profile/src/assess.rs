//! From which endpoints work to a verdict: ready, degraded or blocked.

use serde::{Deserialize, Serialize};

use crate::Profile;

/// What a network is, for a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every required endpoint works directly.
    Ready,
    /// Every required endpoint works, some only through a fallback.
    Degraded,
    /// Some required endpoint works neither directly nor through a fallback.
    Blocked,
}

/// How one endpoint fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Reach {
    /// It works.
    Works,
    /// It is blocked, but these endpoints that stand in for it work.
    Fallback { via: Vec<String> },
    /// It is blocked, and nothing that stands in for it works.
    Blocked,
}

/// One endpoint's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointReach {
    pub id: String,
    pub required: bool,
    #[serde(flatten)]
    pub reach: Reach,
}

/// A profile's verdict, with every endpoint's part in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// In profile order.
    pub endpoints: Vec<EndpointReach>,
}

impl Profile {
    /// The verdict, given which endpoints work. `works` is asked once per
    /// endpoint, in profile order.
    ///
    /// An endpoint that does not work falls back on every endpoint that
    /// lists it in `fallback_for` and works (one level: a fallback's own
    /// fallbacks do not count). Only required endpoints decide the verdict:
    /// one that is blocked makes the network blocked; else one that only
    /// works through a fallback makes it degraded; else it is ready.
    #[must_use]
    pub fn assess(&self, mut works: impl FnMut(&crate::Endpoint) -> bool) -> Assessment {
        let ok: Vec<bool> = self.endpoints.iter().map(&mut works).collect();
        let mut verdict = Verdict::Ready;
        let endpoints = self
            .endpoints
            .iter()
            .zip(&ok)
            .map(|(e, &works)| {
                let reach = if works {
                    Reach::Works
                } else {
                    let via: Vec<String> = self
                        .endpoints
                        .iter()
                        .zip(&ok)
                        .filter(|(f, f_ok)| **f_ok && f.is_fallback_for(&e.id))
                        .map(|(f, _)| f.id.clone())
                        .collect();
                    if via.is_empty() {
                        Reach::Blocked
                    } else {
                        Reach::Fallback { via }
                    }
                };
                if e.required {
                    let this = match reach {
                        Reach::Works => Verdict::Ready,
                        Reach::Fallback { .. } => Verdict::Degraded,
                        Reach::Blocked => Verdict::Blocked,
                    };
                    verdict = verdict.max(this);
                }
                EndpointReach {
                    id: e.id.clone(),
                    required: e.required,
                    reach,
                }
            })
            .collect();
        Assessment { verdict, endpoints }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"
[profile]
name = "t"
source = "test"

[[endpoint]]
id = "web"
kind = "https"
host = "app.example.com"
port = 443

[[endpoint]]
id = "media"
kind = "udp-range"
host = "192.0.2.1"
ports = "10000-20000"

[[endpoint]]
id = "turn-udp"
kind = "turn-udp"
host = "turn.example.com"
port = 3478
required = false
fallback_for = ["media"]

[[endpoint]]
id = "turn-tls"
kind = "turn-tls"
host = "turn.example.com"
port = 443
required = false
fallback_for = ["media", "turn-udp"]

[[endpoint]]
id = "extra"
kind = "tcp"
host = "example.com"
port = 8080
required = false
"#;

    fn assess(working: &[&str]) -> Assessment {
        let p = Profile::from_toml(PROFILE).unwrap();
        p.assess(|e| working.contains(&e.id.as_str()))
    }

    fn reach(a: &Assessment, id: &str) -> Reach {
        a.endpoints
            .iter()
            .find(|e| e.id == id)
            .unwrap()
            .reach
            .clone()
    }

    #[test]
    fn verdicts() {
        let a = assess(&["web", "media", "turn-udp", "turn-tls", "extra"]);
        assert_eq!(a.verdict, Verdict::Ready);
        // Optional endpoints do not change the verdict.
        assert_eq!(assess(&["web", "media"]).verdict, Verdict::Ready);

        let a = assess(&["web", "turn-tls"]);
        assert_eq!(a.verdict, Verdict::Degraded);
        assert_eq!(
            reach(&a, "media"),
            Reach::Fallback {
                via: vec!["turn-tls".into()]
            }
        );
        assert_eq!(
            reach(&a, "turn-udp"),
            Reach::Fallback {
                via: vec!["turn-tls".into()]
            }
        );
        assert_eq!(reach(&a, "extra"), Reach::Blocked);

        let a = assess(&["web", "turn-udp", "turn-tls"]);
        assert_eq!(
            reach(&a, "media"),
            Reach::Fallback {
                via: vec!["turn-udp".into(), "turn-tls".into()]
            }
        );

        let a = assess(&["web"]);
        assert_eq!(a.verdict, Verdict::Blocked);
        assert_eq!(reach(&a, "media"), Reach::Blocked);
        // A required endpoint without fallbacks.
        assert_eq!(assess(&["media", "turn-tls"]).verdict, Verdict::Blocked);
    }

    #[test]
    fn asks_once_per_endpoint_in_order() {
        let p = Profile::from_toml(PROFILE).unwrap();
        let mut asked = Vec::new();
        let _ = p.assess(|e| {
            asked.push(e.id.clone());
            true
        });
        assert_eq!(asked, ["web", "media", "turn-udp", "turn-tls", "extra"]);
    }

    #[test]
    fn json_shape() {
        let a = assess(&["web", "turn-tls"]);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["verdict"], "degraded");
        assert_eq!(json["endpoints"][1]["id"], "media");
        assert_eq!(json["endpoints"][1]["status"], "fallback");
        assert_eq!(json["endpoints"][1]["via"][0], "turn-tls");
        assert_eq!(json["endpoints"][4]["status"], "blocked");
        let back: Assessment = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
    }
}

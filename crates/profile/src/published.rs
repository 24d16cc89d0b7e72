//! What `turnpike serve` answers at `GET /api/v1/profile`, and what
//! `turnpike check URL` reads: the server's profile, built from its live
//! configuration, with what a check of it needs.

use serde::{Deserialize, Serialize};

use crate::Profile;

/// The body of `GET /api/v1/profile` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub profile: Profile,
    /// The server's probe responder, when `[probe]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// Short-lived TURN credentials that may relay only to the probe
    /// responder, when the server hands them out (`[probe] credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CheckCredentials>,
    /// The issuer of the certificate the server's TLS listeners present
    /// (RFC 4514 text), so that a checker that sees another one can say
    /// the connection is intercepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_issuer: Option<String>,
}

/// Where the probe responder listens. Its UDP range is the `udp-range`
/// endpoint of the profile with id [`Probe::ENDPOINT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// The id of the profile's `udp-range` endpoint the responder serves.
    pub udp_endpoint: String,
    /// The id of the profile's `tcp` endpoint the responder serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_endpoint: Option<String>,
}

impl Probe {
    /// The id a server gives its probe range.
    pub const ENDPOINT: &'static str = "media";
}

/// TURN credentials for a check (TURN REST shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckCredentials {
    pub username: String,
    pub password: String,
    /// Seconds they stay valid.
    pub ttl_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../profiles/turnpike.toml"
        ))
        .unwrap();
        let published = Published {
            profile: Profile::from_toml(&text).unwrap(),
            probe: Some(Probe {
                udp_endpoint: Probe::ENDPOINT.into(),
                tcp_endpoint: None,
            }),
            credentials: Some(CheckCredentials {
                username: "1800000000:check".into(),
                password: "c2VjcmV0".into(),
                ttl_s: 300,
            }),
            tls_issuer: Some("CN=turnpike".into()),
        };
        let json = serde_json::to_string(&published).unwrap();
        assert_eq!(serde_json::from_str::<Published>(&json).unwrap(), published);
        let bare: Published = serde_json::from_str(&format!(
            "{{\"profile\":{}}}",
            serde_json::to_string(&published.profile).unwrap()
        ))
        .unwrap();
        assert!(bare.probe.is_none() && bare.credentials.is_none());
    }
}

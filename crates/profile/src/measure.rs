//! The `[measure]` table: measurements a check of the profile runs by
//! default, beyond those it always runs.

use serde::{Deserialize, Serialize};

/// The `[measure]` table. Every key is optional and off by default, and a
/// profile without the table leaves it out of its TOML and JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// Search for the UDP idle timeout of the NAT or firewall, up to the
    /// `udp_idle_timeout_s` threshold's `min` (180 s without one). It
    /// makes a check take about that long more.
    #[serde(default, skip_serializing_if = "is_false")]
    pub udp_idle_timeout: bool,
}

impl Measure {
    /// The keys of the table, in the order the documentation gives.
    pub const KEYS: [&'static str; 1] = ["udp_idle_timeout"];

    /// Nothing asked: the table is left out.
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

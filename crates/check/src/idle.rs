//! Placeholder: the UDP idle-timeout search (replaced at merge).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::net::{Failure, Step};

/// What the idle-timeout search found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IdleReport {
    pub longest_kept_s: Option<f64>,
    pub shortest_lost_s: Option<f64>,
    pub max_s: f64,
    pub at_least: bool,
    pub detail: String,
}

/// How long a UDP mapping to `target` survives silence, up to `max`.
#[allow(clippy::unused_async)]
pub(crate) async fn udp_idle_timeout(
    target: SocketAddr,
    max: Duration,
    deadline: Instant,
) -> Result<IdleReport, Failure> {
    let _ = (target, max, deadline);
    Err(Failure::new(
        Step::Protocol,
        "the UDP idle-timeout search is not built",
    ))
}

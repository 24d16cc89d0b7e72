//! Placeholder: path MTU discovery (replaced at merge).

#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::net::{Failure, Step};

/// What the path MTU search found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MtuReport {
    pub path_mtu: Option<u16>,
    pub largest_payload: Option<u16>,
    pub needed: u16,
    pub detail: String,
}

/// The path MTU to `target`.
#[allow(clippy::unused_async)]
pub(crate) async fn path_mtu(
    target: SocketAddr,
    cookie_hint: Option<u64>,
    deadline: Instant,
) -> Result<MtuReport, Failure> {
    let _ = (target, cookie_hint, deadline);
    Err(Failure::new(
        Step::Protocol,
        "path MTU discovery is not built",
    ))
}

//! Placeholder: RFC 5780 NAT behaviour discovery (replaced at merge).

#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::net::{Failure, Step};

/// What the NAT between here and the responder does.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NatReport {
    pub mapping: Option<NatBehaviour>,
    pub filtering: Option<NatBehaviour>,
    pub hairpinning: Option<bool>,
    pub mapped: Option<SocketAddr>,
    pub detail: String,
}

/// RFC 5780 mapping or filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatBehaviour {
    None,
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// Classifies the NAT on the way to `primary`.
#[allow(clippy::unused_async)]
pub(crate) async fn classify(primary: SocketAddr, deadline: Instant) -> Result<NatReport, Failure> {
    let _ = (primary, deadline);
    Err(Failure::new(Step::Protocol, "NAT discovery is not built"))
}

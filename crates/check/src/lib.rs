//! `turnpike check`: measures what a network lets through against a
//! requirement profile, and says which firewall rule to change.
//!
//! [`report`] is what a check finds, and how it is written out (terminal,
//! JSON, JUnit, HTML).

mod client;
pub mod fetch;
#[allow(dead_code, unreachable_pub)] // called by the measurements in run.rs
mod idle;
#[allow(dead_code, unreachable_pub)] // called by the measurements in run.rs
mod mtu;
#[allow(dead_code, unreachable_pub)] // called by the measurements in run.rs
mod nat;
mod net;
mod probe;
mod remedy;
pub mod render;
pub mod report;
pub mod run;
pub mod stats;
#[allow(dead_code)] // used by the measurements
mod sys;
mod tls;

pub use net::Proxy;
pub use run::{Plan, ProbeTarget, Progress, run};

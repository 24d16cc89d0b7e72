//! `turnpike check`: measures what a network lets through against a
//! requirement profile, and says which firewall rule to change.
//!
//! [`report`] is what a check finds, and how it is written out (terminal,
//! JSON, JUnit, HTML).

mod client;
pub mod fetch;
mod idle;
mod measure;
mod mtu;
mod nat;
mod net;
mod probe;
mod remedy;
pub mod render;
pub mod report;
pub mod run;
pub mod stats;
mod sys;
mod tls;
mod udp;

pub use net::Proxy;
pub use run::{MeasureOptions, Plan, ProbeTarget, Progress, run};

//! `turnpike check`: measures what a network lets through against a
//! requirement profile, and says which firewall rule to change.
//!
//! [`report`] is what a check finds, and how it is written out (terminal,
//! JSON, JUnit, HTML).

pub mod report;

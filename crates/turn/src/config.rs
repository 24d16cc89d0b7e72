//! What the state machine is told at start: lifetimes, limits, policy.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::policy::PeerPolicy;

/// Lifetimes (RFC 8656 §3.2, §9, §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Granted when a client asks for less or for nothing: 600 s.
    pub allocation_default: Duration,
    /// The most a client can get: 3600 s.
    pub allocation_max: Duration,
    /// A permission's life, fixed by the RFC: 300 s.
    pub permission: Duration,
    /// A channel binding's life, fixed by the RFC: 600 s.
    pub channel: Duration,
    /// How long after its expiry a channel number and peer stay unusable
    /// for another binding (RFC 8656 §12: 5 minutes).
    pub channel_quarantine: Duration,
    /// How long a nonce is accepted: at most 600 s.
    pub nonce: Duration,
    /// How long an EVEN-PORT reservation is held (RFC 8656 §7.2: about 30 s).
    pub reservation: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            allocation_default: Duration::from_secs(600),
            allocation_max: Duration::from_secs(3600),
            permission: Duration::from_secs(300),
            channel: Duration::from_secs(600),
            channel_quarantine: Duration::from_secs(300),
            nonce: Duration::from_secs(600),
            reservation: Duration::from_secs(30),
        }
    }
}

/// Limits that keep one client or a flood from exhausting the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Allocations in total, across shards; above it Allocate gets 508.
    pub allocations: usize,
    /// Allocations per user name; above it Allocate gets 486.
    pub allocations_per_user: usize,
    /// Permissions per allocation; above it CreatePermission gets 508.
    pub permissions_per_allocation: usize,
    /// Channels per allocation; above it ChannelBind gets 508.
    pub channels_per_allocation: usize,
    /// Answers to unauthenticated requests (Binding, 401, 438) per second,
    /// per source IP address; 0 turns the limit off.
    pub unauthenticated_per_second: u32,
    /// How many such answers a source may get in a burst.
    pub unauthenticated_burst: u32,
    /// Payload bytes per second an allocation may relay in each
    /// direction, in bursts of up to one second's worth; beyond it,
    /// datagrams are dropped and counted. 0 turns the limit off.
    pub bandwidth_bytes_per_second: u64,
    /// The largest message a client may send, in bytes (over a stream,
    /// ChannelData padding included); a larger datagram is dropped, and
    /// a stream that announces one is closed.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            allocations: 100_000,
            allocations_per_user: 100,
            permissions_per_allocation: 128,
            channels_per_allocation: 128,
            unauthenticated_per_second: 50,
            unauthenticated_burst: 100,
            // 25 Mbit/s each way: several HD video streams.
            bandwidth_bytes_per_second: 25_000_000 / 8,
            // Any message the protocol allows.
            max_message_size: turnpike_stun::framing::MAX_FRAME,
        }
    }
}

/// An address relays are bound on, and the address put in
/// XOR-RELAYED-ADDRESS for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayIp {
    pub bound: IpAddr,
    pub advertised: IpAddr,
}

/// The server's configuration, as far as the protocol is concerned.
#[derive(Debug, Clone)]
pub struct Config {
    /// The REALM of long-term credentials.
    pub realm: String,
    /// A SOFTWARE attribute for every answer; none by default (answers to
    /// strangers stay small and say nothing about the server).
    pub software: Option<String>,
    /// The addresses relays are bound on, each with the address clients
    /// and peers know it by (different behind a 1:1 NAT).
    pub relay_ips: Vec<RelayIp>,
    pub lifetimes: Lifetimes,
    pub limits: Limits,
    pub policy: PeerPolicy,
    /// RFC 6062: TCP allocations, Connect and ConnectionBind. Off unless
    /// asked for.
    pub tcp_relay: bool,
    /// While draining, a new allocation is sent to one of these (300 Try
    /// Alternate with ALTERNATE-SERVER, RFC 8489 §10): the first of the
    /// client's address family. Without one it is refused with 508.
    pub alternates: Vec<SocketAddr>,
}

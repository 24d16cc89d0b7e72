//! The TURN server as a state machine (RFC 8656), without I/O.
//!
//! A [`Server`] is fed what arrives — `(now, five-tuple, bytes)` from a
//! client, `(now, allocation, peer, bytes)` from a peer — and answers with
//! what to send. It never reads a clock, opens a socket or spawns: time is
//! an argument, relay sockets are bound through the [`Relays`] trait the
//! runtime implements, and randomness comes from a seed the runtime gives.
//!
//! One `Server` serves one shard; the state shards share — credentials,
//! the nonce key, quotas, reservations — lives in [`Shared`].

#![forbid(unsafe_code)]

mod allocation;
pub mod auth;
mod bandwidth;
pub mod check;
pub mod cidr;
mod config;
mod connections;
pub mod nonce;
pub mod policy;
pub mod ratelimit;
mod server;
mod shared;

use std::fmt;
use std::net::SocketAddr;

pub use config::{Config, Lifetimes, Limits, RelayIp};
pub use connections::{ConnectionId, MAX_PER_ALLOCATION as MAX_CONNECTIONS_PER_ALLOCATION};
pub use server::{
    BIND_WINDOW, BindError, BindRequest, Bound, ConnectRequest, Counts, EndReason, Event, Output,
    PEER_HEADROOM, PEER_TAILROOM, PeerConnection, PeerOutput, Relays, Server, Stats, TrafficStats,
};
pub use shared::Shared;
pub use turnpike_stun as stun;

/// The transport between a client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Whether messages travel on a byte stream (and ChannelData is padded).
    #[must_use]
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's 5-tuple as the server sees it: the transport, the client's
/// address, and the server address it reached (RFC 8656 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}->{}", self.transport, self.client, self.server)
    }
}

/// An allocation's relayed transport addresses: IPv4, IPv6, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Relayed {
    pub v4: Option<SocketAddr>,
    pub v6: Option<SocketAddr>,
}

impl fmt::Display for Relayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a},{b}"),
            (Some(a), None) | (None, Some(a)) => write!(f, "{a}"),
            (None, None) => f.write_str("none"),
        }
    }
}

/// Names one allocation of one [`Server`], stable for its life; a stale id
/// never reaches a newer allocation in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(u64);

impl AllocationId {
    pub(crate) const fn new(index: u32, generation: u32) -> Self {
        Self(((generation as u64) << 32) | index as u64)
    }

    pub(crate) const fn index(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    pub(crate) const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The id as a number, for logs and for a runtime's event tokens.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id [`get`](Self::get) returned. Any number is safe to pass: one
    /// that names no live allocation finds nothing.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

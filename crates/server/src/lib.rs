//! The turnpike runtime: the only part that touches sockets, threads and
//! the clock. It feeds the TURN state machine (`turnpike-turn`) with what
//! arrives and sends what it answers.
//!
//! - [`config`]: the configuration file and flags, checked before anything
//!   is bound.
//! - [`serve::start`]: binds the listeners (one SO_REUSEPORT socket per
//!   shard) and starts one thread per shard.
//! - `shard`: a shard's event loop: listeners, relay sockets, the timer.
//! - `relay`: relay sockets (UDP, and RFC 6062 TCP) and the port pool.
//! - `tcp_relay`: RFC 6062 peer connections: Connect, accept, bind, join.
//! - `stream`: TURN over TCP and TLS, and the port shared with HTTP(S).
//! - `http`, `tls`: the HTTP side and certificates.
//! - `probe`: the probe responder (`[probe]`), and the profile the HTTP
//!   side publishes.
//! - `listener`: batched receive with destination addresses.
//! - `sys`: the socket options that need `unsafe`.

#![deny(unsafe_code)]

pub mod config;
pub mod http;
mod listener;
pub mod net;
mod probe;
mod relay;
pub mod serve;
mod shard;
pub mod state;
mod stream;
mod sys;
mod tcp_relay;
pub mod tls;

pub use config::{Config, ConfigError, Overrides};

/// What the fuzz targets (`fuzz/`, built with `--cfg fuzzing`) reach of
/// the server's private parts.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::probe::fuzzing::binding_answer;
}
pub use serve::{Running, start};

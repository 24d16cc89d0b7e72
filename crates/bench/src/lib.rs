//! `turnpike bench`: a TURN load generator that speaks standard TURN
//! (RFC 8656, long-term credentials) to any server.
//!
//! Each allocation sends ChannelData at a fixed rate to one of the
//! generator's own UDP echo peers; the peer sends each datagram straight
//! back to the relayed address, so the server relays every packet twice.
//! The payload carries the allocation, a sequence number and the send
//! time, so the echo is timed without any lookup. The report gives the
//! allocation setup rate, offered and delivered packets per second, loss,
//! round-trip latency, and with `--server-pid` the server's CPU time and
//! memory.
//!
//! The generator must not be the bottleneck: it runs a few threads, each
//! with its own allocations and echo peer, paced by a schedule and sleeping
//! between bursts; over UDP on loopback every allocation gets its own
//! source address in 127.0.0.0/8 on one wildcard socket per thread, so
//! sends and receives are batched (`sendmmsg`/`recvmmsg` with IP_PKTINFO).
//! TCP and TLS use one stream per allocation.

mod hist;
mod pacing;
mod payload;
mod procfs;
mod proto;
mod report;
mod run;
mod stream;
mod sys;
mod udp;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

pub use hist::Histogram;
pub use pacing::{Due, Schedule};
pub use payload::{MIN_SIZE, Payload};
pub use report::{Churn, Report, Rtt, ServerProcess, Setup, Step, Traffic};
pub use run::run;

/// The transport to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// Long-term credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A static user.
    User { name: String, password: String },
    /// TURN REST API credentials minted from this shared secret.
    Secret(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User { name, .. } => write!(f, "User({name})"),
            Self::Secret(_) => f.write_str("Secret(..)"),
        }
    }
}

/// The user part of REST user names the generator mints.
pub const REST_USER: &str = "bench";

impl Credentials {
    /// The user name and password to use; REST credentials are valid from
    /// `now_unix` for `valid_s` seconds.
    #[must_use]
    pub fn resolve(&self, now_unix: u64, valid_s: u64) -> (String, String) {
        match self {
            Self::User { name, password } => (name.clone(), password.clone()),
            Self::Secret(secret) => {
                let username =
                    turnpike_turn::auth::rest_username(now_unix.saturating_add(valid_s), REST_USER);
                let password = turnpike_turn::auth::rest_password(secret.as_bytes(), &username);
                (username, password)
            }
        }
    }
}

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Set up the allocations, stream for the warmup and the measured
    /// window, delete them.
    Stream,
    /// Create and delete allocations for the duration.
    Churn,
    /// Steps of increasing rate until loss reaches 1 % or the generator
    /// cannot keep up.
    Saturate,
}

/// A run's parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// HOST:PORT of the server, as given.
    pub server: String,
    pub transport: Transport,
    pub credentials: Credentials,
    pub allocations: usize,
    /// Packets per second per allocation; 0 holds the allocations idle.
    pub rate: u32,
    /// ChannelData payload bytes.
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: usize,
    /// Where the echo peers bind.
    pub peer_ip: IpAddr,
    pub server_pid: Option<u32>,
    pub mode: Mode,
    /// A PEM CA to verify a TLS server with; `None` accepts any certificate.
    pub ca: Option<PathBuf>,
}

impl Config {
    /// A configuration with the documented defaults.
    #[must_use]
    pub fn new(server: String, credentials: Credentials) -> Self {
        Self {
            server,
            transport: Transport::Udp,
            credentials,
            allocations: 100,
            rate: 50,
            size: 160,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            peer_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            server_pid: None,
            mode: Mode::Stream,
            ca: None,
        }
    }

    /// Checks what flags alone can get wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let usage = |m: &str| Err(Error::Usage(m.to_owned()));
        if self.allocations == 0 {
            return usage("--allocations must be at least 1");
        }
        if self.allocations > 1_000_000 {
            return usage("--allocations must be at most 1000000");
        }
        if self.size < MIN_SIZE {
            return usage(&format!(
                "--size must be at least {MIN_SIZE} (the packet header: run tag, allocation, sequence, echo hold time, send time)"
            ));
        }
        if self.size > MAX_SIZE {
            return usage(&format!("--size must be at most {MAX_SIZE}"));
        }
        if self.duration.is_zero() {
            return usage("--duration must be more than 0");
        }
        if self.threads == 0 {
            return usage("--threads must be at least 1");
        }
        if !self.peer_ip.is_ipv4() {
            return usage("--peer-ip must be an IPv4 address");
        }
        if self.ca.is_some() && self.transport != Transport::Tls {
            return usage("--ca applies to --transport tls only");
        }
        if self.mode == Mode::Saturate && self.rate == 0 {
            return usage("--saturate needs a --rate above 0 to start from");
        }
        if let Credentials::User { name, password } = &self.credentials
            && (name.is_empty() || password.is_empty())
        {
            return usage("--user is NAME:PASSWORD, neither empty");
        }
        if let Credentials::Secret(s) = &self.credentials
            && s.is_empty()
        {
            return usage("--secret must not be empty");
        }
        Ok(())
    }
}

/// The largest `--size`: a ChannelData message in one unfragmented
/// datagram on loopback, with room to spare.
pub const MAX_SIZE: usize = 8192;

/// Why a run did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Flags that do not make sense together.
    Usage(String),
    /// The run failed: the server is unreachable, refused the credentials,
    /// ran out of quota...
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_verify_as_the_server_does() {
        let creds = Credentials::Secret("s3cret".into());
        let (user, pass) = creds.resolve(1_700_000_000, 3600);
        assert_eq!(user, "1700003600:bench");
        // base64(HMAC-SHA1("s3cret", "1700003600:bench")), computed
        // independently with: printf %s 1700003600:bench |
        //   openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(pass, "wq+NDZRTyEJOesczBPQ+RpGaiJ0=");
        assert_eq!(turnpike_turn::auth::rest_expiry(&user), Some(1_700_003_600));
        let fixed = Credentials::User {
            name: "a".into(),
            password: "b".into(),
        };
        assert_eq!(fixed.resolve(0, 0), ("a".into(), "b".into()));
    }

    #[test]
    fn validation_names_the_flag() {
        let mut c = Config::new("127.0.0.1:3478".into(), Credentials::Secret("x".into()));
        assert!(c.validate().is_ok());
        c.size = 10;
        assert!(matches!(c.validate(), Err(Error::Usage(m)) if m.contains("--size")));
        c.size = 160;
        c.ca = Some("ca.pem".into());
        assert!(matches!(c.validate(), Err(Error::Usage(m)) if m.contains("--ca")));
        c.ca = None;
        c.mode = Mode::Saturate;
        c.rate = 0;
        assert!(matches!(c.validate(), Err(Error::Usage(m)) if m.contains("--saturate")));
    }
}

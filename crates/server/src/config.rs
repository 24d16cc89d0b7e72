//! The configuration file and the command-line flags that override it.
//!
//! Parsing is strict: an unknown key, a malformed value or an inconsistent
//! pair of values stops the program before it binds anything, with the
//! file, line and key named.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use turnpike_turn::cidr::IpNet;
use turnpike_turn::stun::framing::MAX_FRAME;

/// The state directory when none is configured.
pub const DEFAULT_STATE_DIR: &str = "./turnpike-data";
/// The listener when none is configured.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3478";
/// The relay port range when none is configured (the IANA dynamic range).
pub const DEFAULT_RELAY_PORTS: PortRange = PortRange {
    first: 49152,
    last: 65535,
};

/// A configuration error, naming where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `None` for a command-line flag.
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// The key, as a dotted path (`relay.ports`), or the flag.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A listener's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenTransport {
    Udp,
    Tcp,
    Tls,
}

impl ListenTransport {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Whether the listener accepts connections (TCP or TLS).
    #[must_use]
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

impl FromStr for ListenTransport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Self::Udp),
            "tcp" => Ok(Self::Tcp),
            "tls" => Ok(Self::Tls),
            _ => Err(format!(
                "unknown transport \"{s}\"; expected \"udp\", \"tcp\" or \"tls\""
            )),
        }
    }
}

impl fmt::Display for ListenTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listening address with its transport, and what else it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub transport: ListenTransport,
    pub address: SocketAddr,
    /// HTTP (and HTTPS on TLS) on the same port as TURN.
    pub http: bool,
    /// PEM certificate chain and private key for TLS; a self-signed pair in
    /// the state directory when absent.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Listen {
    /// A listener with nothing but a transport and an address.
    #[must_use]
    pub const fn plain(transport: ListenTransport, address: SocketAddr) -> Self {
        Self {
            transport,
            address,
            http: false,
            cert: None,
            key: None,
        }
    }

    /// The rules that tie a listener's settings together.
    fn check(&self) -> Result<(), String> {
        if self.http && !self.transport.is_stream() {
            return Err("http = true needs transport \"tcp\" or \"tls\"".to_owned());
        }
        if self.transport != ListenTransport::Tls && (self.cert.is_some() || self.key.is_some()) {
            return Err("cert and key belong to transport \"tls\"".to_owned());
        }
        match (&self.cert, &self.key) {
            (Some(_), None) | (None, Some(_)) => {
                Err("cert and key go together: give both or neither".to_owned())
            }
            (Some(cert), Some(key)) => crate::tls::load_pair(cert, key).map(|_| ()),
            (None, None) => Ok(()),
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    /// `udp://127.0.0.1:3478`, `tcp://[::]:3478`,
    /// `tls://0.0.0.0:443?http=true&cert=/etc/turn.pem&key=/etc/turn.key`.
    fn from_str(s: &str) -> Result<Self, String> {
        let form = || {
            format!(
                "\"{s}\" is not of the form udp|tcp|tls://ADDRESS:PORT[?http=true&cert=PATH&key=PATH]"
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(form)?;
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let transport = scheme.parse()?;
        let address = address.parse().map_err(|_| {
            format!("\"{address}\" is not an IP address and port (use [..] around IPv6)")
        })?;
        let mut listen = Self::plain(transport, address);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').ok_or_else(form)? {
                ("http", "true") => listen.http = true,
                ("http", "false") => listen.http = false,
                ("cert", path) => listen.cert = Some(PathBuf::from(path)),
                ("key", path) => listen.key = Some(PathBuf::from(path)),
                _ => return Err(form()),
            }
        }
        listen.check()?;
        Ok(listen)
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport, self.address)?;
        if self.http {
            f.write_str(" (and HTTP)")?;
        }
        Ok(())
    }
}

/// An inclusive range of ports, written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.last) - usize::from(self.first) + 1
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a port range like 49152-65535");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!(
                "\"{s}\": the first port must be between 1 and the last"
            ));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A static user, written `NAME:PASSWORD`.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User({:?}, <password>)", self.name)
    }
}

impl FromStr for User {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, password) = s
            .split_once(':')
            .ok_or_else(|| "a user is written NAME:PASSWORD".to_owned())?;
        if name.is_empty() || password.is_empty() {
            return Err("a user is written NAME:PASSWORD, neither empty".to_owned());
        }
        // RFC 8489 §14.3: USERNAME is less than 513 bytes.
        if name.len() > 512 {
            return Err("a user name must be at most 512 bytes".to_owned());
        }
        if name.chars().chain(password.chars()).any(char::is_control) {
            return Err("user names and passwords must not contain control characters".to_owned());
        }
        Ok(Self {
            name: name.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// One IP address or a list of them, as TOML writes either.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addresses(Vec<IpAddr>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Addresses;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address, or a list of them")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Addresses, E> {
                parse_ip(s).map(|ip| Addresses(vec![ip])).map_err(E::custom)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Addresses, A::Error> {
                let mut ips = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    ips.push(parse_ip(&s).map_err(de::Error::custom)?);
                }
                Ok(Addresses(ips))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("\"{s}\" is not an IP address"))
}

/// Deserializes any of the types above from a TOML string.
fn from_str<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: FromStr<Err = String>,
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

fn from_strs<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
where
    T: FromStr<Err = String>,
    D: Deserializer<'de>,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(de::Error::custom))
        .collect()
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse::<IpNet>().map_err(de::Error::custom))
        .collect()
}

fn opt<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: FromStr<Err = String>,
    D: Deserializer<'de>,
{
    from_str(d).map(Some)
}

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    realm: Option<toml::Spanned<String>>,
    hostname: Option<toml::Spanned<String>>,
    state_dir: Option<PathBuf>,
    threads: Option<toml::Spanned<usize>>,
    #[serde(default)]
    listen: Vec<toml::Spanned<ListenEntry>>,
    #[serde(default)]
    relay: RelaySection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    peers: PeersSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    drain: DrainSection,
    #[serde(default)]
    probe: ProbeSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    #[serde(default)]
    enabled: bool,
    address: Option<toml::Spanned<String>>,
    ports: Option<toml::Spanned<String>>,
    tcp_port: Option<toml::Spanned<u16>>,
    replies_per_second: Option<toml::Spanned<u32>>,
    credentials: Option<toml::Spanned<bool>>,
    credential_ttl: Option<toml::Spanned<u64>>,
    credentials_per_minute: Option<toml::Spanned<u32>>,
    max_check_allocations: Option<toml::Spanned<usize>>,
    alternate_address: Option<toml::Spanned<String>>,
    max_kbps_per_source: Option<toml::Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainSection {
    timeout: Option<toml::Spanned<u64>>,
    #[serde(default)]
    alternate: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenEntry {
    #[serde(deserialize_with = "from_str")]
    transport: ListenTransport,
    address: SocketAddr,
    #[serde(default)]
    http: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySection {
    address: Option<toml::Spanned<Addresses>>,
    #[serde(default, deserialize_with = "opt")]
    ports: Option<PortRange>,
    advertised: Option<toml::Spanned<Addresses>>,
    #[serde(default)]
    tcp: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    address: Option<SocketAddr>,
    #[serde(default)]
    api_keys: Vec<toml::Spanned<String>>,
    credential_ttl: Option<toml::Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    #[serde(default, deserialize_with = "from_strs")]
    users: Vec<User>,
    #[serde(default)]
    secrets: Vec<toml::Spanned<String>>,
    nonce_lifetime: Option<toml::Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersSection {
    #[serde(default, deserialize_with = "cidrs")]
    allow: Vec<IpNet>,
    #[serde(default, deserialize_with = "cidrs")]
    deny: Vec<IpNet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    allocations: Option<toml::Spanned<usize>>,
    allocations_per_user: Option<toml::Spanned<usize>>,
    permissions_per_allocation: Option<toml::Spanned<usize>>,
    channels_per_allocation: Option<toml::Spanned<usize>>,
    unauthenticated_per_second: Option<u32>,
    unauthenticated_burst: Option<toml::Spanned<u32>>,
    bandwidth_kbps: Option<toml::Spanned<u64>>,
    max_message_size: Option<toml::Spanned<usize>>,
    connections: Option<toml::Spanned<usize>>,
    connections_per_source: Option<toml::Spanned<usize>>,
    handshake_timeout: Option<toml::Spanned<u64>>,
    idle_timeout: Option<toml::Spanned<u64>>,
}

/// Values from the command line; each replaces the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<Listen>,
    pub realm: Option<String>,
    pub relay_addresses: Vec<IpAddr>,
    pub relay_ports: Option<PortRange>,
    pub advertised: Vec<IpAddr>,
    pub users: Vec<User>,
    pub secrets: Vec<String>,
    pub allow_peers: Vec<IpNet>,
    pub deny_peers: Vec<IpNet>,
    pub state_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    pub hostname: Option<String>,
    pub http_address: Option<SocketAddr>,
    pub api_keys: Vec<String>,
    pub relay_tcp: Option<bool>,
    pub drain_timeout: Option<u64>,
    pub drain_alternates: Vec<SocketAddr>,
    /// Turns the probe responder on, on these UDP ports.
    pub probe_ports: Option<PortRange>,
}

/// Limits on TCP and TLS connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Connections open at once, across listeners; more are refused.
    pub connections: usize,
    /// Connections open at once from one source (an IPv4 address or an
    /// IPv6 /64). Offices behind one NAT share a source: keep it high.
    pub connections_per_source: usize,
    /// Time a new connection has to finish its TLS handshake and send its
    /// first message (half-open connections end here).
    pub handshake_timeout: Duration,
    /// Time a connection without an allocation may stay silent.
    pub idle_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            connections: 10_000,
            connections_per_source: 1_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The smallest `limits.max_message_size`: RFC 8489 §6.1 has every agent
/// take a 576-byte IPv4 datagram, which leaves 548 bytes for the message.
const MIN_MESSAGE_SIZE: usize = 548;

/// The largest `limits.bandwidth_kbps`: 100 Gbit/s.
const MAX_BANDWIDTH_KBPS: u64 = 100_000_000;

/// What SIGTERM does (`[drain]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// How long existing allocations may go on after SIGTERM; the server
    /// exits when the last one ends or this time has passed. Zero stops at
    /// once.
    pub timeout: Duration,
    /// Where new allocations are sent while draining (300 Try Alternate
    /// with ALTERNATE-SERVER): at most one per address family. Without one
    /// for the client's family, they get 508.
    pub alternates: Vec<SocketAddr>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            alternates: Vec::new(),
        }
    }
}

/// The most UDP ports the probe responder listens on (a socket each).
pub const MAX_PROBE_PORTS: usize = 1024;

/// The probe responder (`[probe]`), and the check credentials handed out
/// with the server's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Off unless asked for.
    pub enabled: bool,
    /// Where it listens; `None`: the IPv4 relay address (`relay.address`,
    /// or the one found at start).
    pub address: Option<IpAddr>,
    /// Its UDP ports, one socket each (at most [`MAX_PROBE_PORTS`]).
    pub ports: PortRange,
    /// A TCP port too, if given (0: one the system picks).
    pub tcp_port: Option<u16>,
    /// Replies per second to one source (an IPv4 address or an IPv6 /64),
    /// in bursts of as many; beyond it requests are dropped.
    pub replies_per_second: u32,
    /// `GET /api/v1/profile` includes check credentials, which may relay
    /// only to this responder.
    pub credentials: bool,
    /// How long check credentials stay valid, in seconds.
    pub credential_ttl: u64,
    /// Check credentials one source IP may get per minute; beyond it the
    /// profile request gets 429.
    pub credentials_per_minute: u32,
    /// Allocations made with check credentials alive at once.
    pub max_check_allocations: usize,
    /// A second address of the host for RFC 5780 NAT behaviour discovery:
    /// the responder binds its first two ports there too, answers STUN
    /// Binding with OTHER-ADDRESS and honours CHANGE-REQUEST. Same family
    /// as `address`, not equal to it; needs at least two ports.
    pub alternate_address: Option<IpAddr>,
    /// What the responder sends one source (an IP address) that has shown
    /// it receives at its address (a valid cookie): replies and train
    /// packets, in kbit/s, in bursts of one second's worth.
    pub max_kbps_per_source: u32,
}

/// The highest `[probe] max_kbps_per_source`: 10 Gbit/s.
pub const MAX_PROBE_KBPS: u32 = 10_000_000;

impl Default for Probe {
    fn default() -> Self {
        Self {
            enabled: false,
            address: None,
            ports: PortRange {
                first: 50_000,
                last: 50_009,
            },
            tcp_port: None,
            replies_per_second: 100,
            credentials: false,
            credential_ttl: 300,
            credentials_per_minute: 10,
            max_check_allocations: 100,
            alternate_address: None,
            max_kbps_per_source: 20_000,
        }
    }
}

/// The HTTP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    /// A plain-HTTP listener of its own, besides listeners with `http`.
    pub address: Option<SocketAddr>,
    /// Bearer keys for the credentials API; without any, it is off.
    pub api_keys: Vec<String>,
    /// Lifetime of the credentials the API hands out, in seconds.
    pub credential_ttl: u64,
}

/// The validated configuration. Values that depend on the host (the
/// hostname, the relay address) are resolved when serving starts.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: Option<String>,
    /// The name clients reach the server by: in credential URLs and the
    /// self-signed certificate. Default: the advertised relay address.
    pub hostname: Option<String>,
    pub state_dir: PathBuf,
    /// Shards; `None` means one per CPU.
    pub threads: Option<usize>,
    pub listen: Vec<Listen>,
    /// Where relays are bound: at most one address per family. A family
    /// left out is found from the host when serving starts (IPv4), or not
    /// relayed (IPv6).
    pub relay_addresses: Vec<IpAddr>,
    pub relay_ports: PortRange,
    /// What XOR-RELAYED-ADDRESS says behind a 1:1 NAT, per family.
    pub advertised: Vec<IpAddr>,
    pub users: Vec<User>,
    pub secrets: Vec<String>,
    pub nonce_lifetime: u64,
    pub allow_peers: Vec<IpNet>,
    pub deny_peers: Vec<IpNet>,
    pub limits: turnpike_turn::Limits,
    pub streams: StreamLimits,
    pub http: Http,
    pub drain: Drain,
    /// RFC 6062 TCP relaying.
    pub relay_tcp: bool,
    pub probe: Probe,
}

impl Config {
    /// Reads `path` (if given) and applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    file: Some(path.to_owned()),
                    line: None,
                    key: None,
                    message: format!("cannot read: {e}"),
                })?;
                Self::from_toml(&text, path, overrides)
            }
            None => Self::resolve(File::default(), overrides).map_err(Located::into_config_error),
        }
    }

    /// Parses `text`, the contents of the file at `path` (named in
    /// errors, not read), and applies `overrides`.
    pub fn from_toml(text: &str, path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = parse(text).map_err(|e| e.in_file(path, text))?;
        Self::resolve(file, overrides).map_err(|e| e.in_file(path, text))
    }

    fn resolve(file: File, o: &Overrides) -> Result<Self, Located> {
        let realm = match (&o.realm, file.realm) {
            (Some(r), _) => Some(check_realm(r).map_err(|m| Located::flag("--realm", m))?),
            (None, Some(r)) => {
                Some(check_realm(r.get_ref()).map_err(|m| Located::at(&r, "realm", m))?)
            }
            (None, None) => None,
        };

        let listen = if !o.listen.is_empty() {
            o.listen.clone()
        } else if !file.listen.is_empty() {
            file.listen
                .iter()
                .map(|l| {
                    let e = l.get_ref();
                    let listen = Listen {
                        transport: e.transport,
                        address: e.address,
                        http: e.http,
                        cert: e.cert.clone(),
                        key: e.key.clone(),
                    };
                    listen
                        .check()
                        .map(|()| listen)
                        .map_err(|m| Located::at(l, "listen", m))
                })
                .collect::<Result<_, _>>()?
        } else {
            vec![Listen::plain(
                ListenTransport::Udp,
                DEFAULT_LISTEN
                    .parse()
                    .map_err(|_| Located::plain("listen", "bad default"))?,
            )]
        };
        for (i, l) in listen.iter().enumerate() {
            // UDP and TCP may share a port; TCP and TLS may not. Port 0
            // is a new port each time.
            let clash = l.address.port() != 0
                && listen.iter().skip(i + 1).any(|other| {
                    other.address == l.address
                        && other.transport.is_stream() == l.transport.is_stream()
                });
            if clash {
                let at = file.listen.get(i).map(|s| s.span());
                let what = if l.transport.is_stream() {
                    "TCP"
                } else {
                    "UDP"
                };
                return Err(Located::span(
                    at,
                    "listen",
                    format!("{} is listed twice for {what}", l.address),
                ));
            }
        }

        let relay_addresses = match (&o.relay_addresses[..], &file.relay.address) {
            ([], Some(a)) => check_addresses(&a.get_ref().0, check_relay_address)
                .map_err(|m| Located::at(a, "relay.address", m))?,
            (flags, _) => check_addresses(flags, check_relay_address)
                .map_err(|m| Located::flag("--relay-address", m))?,
        };
        let check_advertised = |ip: IpAddr| -> Result<IpAddr, String> {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(format!("{ip} cannot be advertised"));
            }
            if !relay_addresses.is_empty()
                && !relay_addresses.iter().any(|r| r.is_ipv4() == ip.is_ipv4())
            {
                return Err(format!(
                    "{ip} has no relay.address of its address family to stand for"
                ));
            }
            Ok(ip)
        };
        let advertised = match (&o.advertised[..], &file.relay.advertised) {
            ([], Some(a)) => check_addresses(&a.get_ref().0, check_advertised)
                .map_err(|m| Located::at(a, "relay.advertised", m))?,
            (flags, _) => check_addresses(flags, check_advertised)
                .map_err(|m| Located::flag("--advertised", m))?,
        };
        let relay_ports = o
            .relay_ports
            .or(file.relay.ports)
            .unwrap_or(DEFAULT_RELAY_PORTS);

        let users = if o.users.is_empty() {
            file.auth.users
        } else {
            o.users.clone()
        };
        for (i, u) in users.iter().enumerate() {
            if users.iter().skip(i + 1).any(|other| other.name == u.name) {
                return Err(Located::plain(
                    "auth.users",
                    format!("user \"{}\" is listed twice", u.name),
                ));
            }
        }
        let secrets = if !o.secrets.is_empty() {
            for s in &o.secrets {
                check_secret(s).map_err(|m| Located::flag("--secret", m))?;
            }
            o.secrets.clone()
        } else {
            file.auth
                .secrets
                .iter()
                .map(|s| {
                    check_secret(s.get_ref())
                        .map(|()| s.get_ref().clone())
                        .map_err(|m| Located::at(s, "auth.secrets", m))
                })
                .collect::<Result<_, _>>()?
        };
        let nonce_lifetime = match &file.auth.nonce_lifetime {
            Some(n) if !(1..=600).contains(n.get_ref()) => {
                return Err(Located::at(
                    n,
                    "auth.nonce_lifetime",
                    "must be between 1 and 600 seconds",
                ));
            }
            Some(n) => *n.get_ref(),
            None => 600,
        };

        let threads = match (o.threads, &file.threads) {
            (Some(t), _) => Some(check_threads(t).map_err(|m| Located::flag("--threads", m))?),
            (None, Some(t)) => {
                Some(check_threads(*t.get_ref()).map_err(|m| Located::at(t, "threads", m))?)
            }
            (None, None) => None,
        };

        let defaults = turnpike_turn::Limits::default();
        let positive = |v: &Option<toml::Spanned<usize>>, key: &str, default: usize| match v {
            Some(s) if *s.get_ref() == 0 => Err(Located::at(s, key, "must be at least 1")),
            Some(s) => Ok(*s.get_ref()),
            None => Ok(default),
        };
        let l = &file.limits;
        let limits = turnpike_turn::Limits {
            allocations: positive(&l.allocations, "limits.allocations", defaults.allocations)?,
            allocations_per_user: positive(
                &l.allocations_per_user,
                "limits.allocations_per_user",
                defaults.allocations_per_user,
            )?,
            permissions_per_allocation: positive(
                &l.permissions_per_allocation,
                "limits.permissions_per_allocation",
                defaults.permissions_per_allocation,
            )?,
            channels_per_allocation: positive(
                &l.channels_per_allocation,
                "limits.channels_per_allocation",
                defaults.channels_per_allocation,
            )?,
            unauthenticated_per_second: l
                .unauthenticated_per_second
                .unwrap_or(defaults.unauthenticated_per_second),
            unauthenticated_burst: match &l.unauthenticated_burst {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(Located::at(
                        b,
                        "limits.unauthenticated_burst",
                        "must be at least 1",
                    ));
                }
                Some(b) => *b.get_ref(),
                None => defaults.unauthenticated_burst,
            },
            bandwidth_bytes_per_second: match &l.bandwidth_kbps {
                Some(b) if *b.get_ref() > MAX_BANDWIDTH_KBPS => {
                    return Err(Located::at(
                        b,
                        "limits.bandwidth_kbps",
                        format!(
                            "must be at most {MAX_BANDWIDTH_KBPS} (100 Gbit/s); 0 turns the limit off"
                        ),
                    ));
                }
                Some(b) => *b.get_ref() * 1000 / 8,
                None => defaults.bandwidth_bytes_per_second,
            },
            max_message_size: match &l.max_message_size {
                Some(m) if !(MIN_MESSAGE_SIZE..=MAX_FRAME).contains(m.get_ref()) => {
                    return Err(Located::at(
                        m,
                        "limits.max_message_size",
                        format!(
                            "must be between {MIN_MESSAGE_SIZE} (the smallest datagram a STUN agent must take) and {MAX_FRAME} (the largest message there is)"
                        ),
                    ));
                }
                Some(m) => *m.get_ref(),
                None => defaults.max_message_size,
            },
        };

        let hostname = match (&o.hostname, &file.hostname) {
            (Some(h), _) => Some(check_hostname(h).map_err(|m| Located::flag("--hostname", m))?),
            (None, Some(h)) => {
                Some(check_hostname(h.get_ref()).map_err(|m| Located::at(h, "hostname", m))?)
            }
            (None, None) => None,
        };
        let api_keys = if o.api_keys.is_empty() {
            file.http
                .api_keys
                .iter()
                .map(|k| {
                    check_api_key(k.get_ref())
                        .map(|()| k.get_ref().clone())
                        .map_err(|m| Located::at(k, "http.api_keys", m))
                })
                .collect::<Result<_, _>>()?
        } else {
            for k in &o.api_keys {
                check_api_key(k).map_err(|m| Located::flag("--api-key", m))?;
            }
            o.api_keys.clone()
        };
        let credential_ttl = match &file.http.credential_ttl {
            Some(t) if !(60..=31_536_000).contains(t.get_ref()) => {
                return Err(Located::at(
                    t,
                    "http.credential_ttl",
                    "must be between 60 seconds and a year",
                ));
            }
            Some(t) => *t.get_ref(),
            None => 86_400,
        };
        let http = Http {
            address: o.http_address.or(file.http.address),
            api_keys,
            credential_ttl,
        };
        let stream_defaults = StreamLimits::default();
        let seconds = |v: &Option<toml::Spanned<u64>>, key: &str, default: Duration| match v {
            Some(s) if !(1..=86_400).contains(s.get_ref()) => {
                Err(Located::at(s, key, "must be between 1 and 86400 seconds"))
            }
            Some(s) => Ok(Duration::from_secs(*s.get_ref())),
            None => Ok(default),
        };
        let streams = StreamLimits {
            connections: positive(
                &l.connections,
                "limits.connections",
                stream_defaults.connections,
            )?,
            connections_per_source: positive(
                &l.connections_per_source,
                "limits.connections_per_source",
                stream_defaults.connections_per_source,
            )?,
            handshake_timeout: seconds(
                &l.handshake_timeout,
                "limits.handshake_timeout",
                stream_defaults.handshake_timeout,
            )?,
            idle_timeout: seconds(
                &l.idle_timeout,
                "limits.idle_timeout",
                stream_defaults.idle_timeout,
            )?,
        };

        let mut drain = resolve_drain(&file.drain)?;
        if let Some(secs) = o.drain_timeout {
            if secs > 86_400 {
                return Err(Located::flag(
                    "--drain-timeout",
                    "must be between 0 and 86400 seconds",
                ));
            }
            drain.timeout = Duration::from_secs(secs);
        }
        if !o.drain_alternates.is_empty() {
            drain.alternates = check_alternates(
                o.drain_alternates
                    .iter()
                    .map(|a| (*a, None::<&toml::Spanned<String>>)),
            )?;
        }

        let probe = resolve_probe(&file.probe, o, &listen, http.address)?;

        Ok(Self {
            realm,
            hostname,
            probe,
            streams,
            http,
            drain,
            relay_tcp: o.relay_tcp.unwrap_or(file.relay.tcp),
            state_dir: o
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            threads,
            listen,
            relay_addresses,
            relay_ports,
            advertised,
            users,
            secrets,
            nonce_lifetime,
            allow_peers: if o.allow_peers.is_empty() {
                file.peers.allow
            } else {
                o.allow_peers.clone()
            },
            deny_peers: if o.deny_peers.is_empty() {
                file.peers.deny
            } else {
                o.deny_peers.clone()
            },
            limits,
        })
    }
}

fn resolve_probe(
    section: &ProbeSection,
    o: &Overrides,
    listen: &[Listen],
    http: Option<SocketAddr>,
) -> Result<Probe, Located> {
    let defaults = Probe::default();
    let (ports, ports_at) = match (o.probe_ports, &section.ports) {
        (Some(p), _) => (p, None),
        (None, Some(p)) => (
            p.get_ref()
                .parse::<PortRange>()
                .map_err(|m| Located::at(p, "probe.ports", m))?,
            Some(p),
        ),
        (None, None) => (defaults.ports, None),
    };
    let ports_error = |message: String| match ports_at {
        Some(p) => Located::at(p, "probe.ports", message),
        None if o.probe_ports.is_some() => Located::flag("--probe-ports", message),
        None => Located::plain("probe.ports", message),
    };
    if ports.len() > MAX_PROBE_PORTS {
        return Err(ports_error(format!(
            "{ports} is {} ports; the responder listens on at most {MAX_PROBE_PORTS} (a socket each)",
            ports.len()
        )));
    }
    let enabled = section.enabled || o.probe_ports.is_some();
    let address = match &section.address {
        Some(a) => Some(
            parse_ip(a.get_ref())
                .and_then(check_probe_address)
                .map_err(|m| Located::at(a, "probe.address", m))?,
        ),
        None => None,
    };
    let tcp_port = section.tcp_port.as_ref().map(|p| *p.get_ref());
    let replies_per_second = match &section.replies_per_second {
        Some(r) if !(1..=1_000_000).contains(r.get_ref()) => {
            return Err(Located::at(
                r,
                "probe.replies_per_second",
                "must be between 1 and 1000000",
            ));
        }
        Some(r) => *r.get_ref(),
        None => defaults.replies_per_second,
    };
    let credentials = match &section.credentials {
        Some(c) if *c.get_ref() && !enabled => {
            return Err(Located::at(
                c,
                "probe.credentials",
                "check credentials relay only to the probe responder: set [probe] enabled = true as well",
            ));
        }
        Some(c) => *c.get_ref(),
        None => false,
    };
    let credential_ttl = match &section.credential_ttl {
        Some(t) if !(1..=3600).contains(t.get_ref()) => {
            return Err(Located::at(
                t,
                "probe.credential_ttl",
                "must be between 1 and 3600 seconds",
            ));
        }
        Some(t) => *t.get_ref(),
        None => defaults.credential_ttl,
    };
    let credentials_per_minute = match &section.credentials_per_minute {
        Some(c) if !(1..=10_000).contains(c.get_ref()) => {
            return Err(Located::at(
                c,
                "probe.credentials_per_minute",
                "must be between 1 and 10000",
            ));
        }
        Some(c) => *c.get_ref(),
        None => defaults.credentials_per_minute,
    };
    let max_check_allocations = match &section.max_check_allocations {
        Some(m) if *m.get_ref() == 0 => {
            return Err(Located::at(
                m,
                "probe.max_check_allocations",
                "must be at least 1 (set credentials = false to hand out none)",
            ));
        }
        Some(m) => *m.get_ref(),
        None => defaults.max_check_allocations,
    };
    let max_kbps_per_source = match &section.max_kbps_per_source {
        Some(k) if !(1..=MAX_PROBE_KBPS).contains(k.get_ref()) => {
            return Err(Located::at(
                k,
                "probe.max_kbps_per_source",
                format!("must be between 1 and {MAX_PROBE_KBPS} (kbit/s)"),
            ));
        }
        Some(k) => *k.get_ref(),
        None => defaults.max_kbps_per_source,
    };
    let alternate_address = match &section.alternate_address {
        Some(a) => Some(
            parse_ip(a.get_ref())
                .and_then(|ip| check_alternate_address(ip, address, ports))
                .map_err(|m| Located::at(a, "probe.alternate_address", m))?,
        ),
        None => None,
    };
    if enabled {
        // The responder must not take, or pose as, a port of the server's
        // own: check credentials may reach every probe port.
        if let Some(l) = listen.iter().find(|l| {
            !l.transport.is_stream() && l.address.port() != 0 && ports.contains(l.address.port())
        }) {
            return Err(ports_error(format!(
                "{ports} includes the port of the listener {l}"
            )));
        }
        if let Some(at) = section.tcp_port.as_ref().filter(|p| *p.get_ref() != 0) {
            let port = *at.get_ref();
            let taken = listen
                .iter()
                .filter(|l| l.transport.is_stream())
                .map(|l| l.address)
                .chain(http)
                .find(|a| a.port() == port);
            if let Some(a) = taken {
                return Err(Located::at(
                    at,
                    "probe.tcp_port",
                    format!("{port} is the port of the server's own TCP listener {a}"),
                ));
            }
        }
    }
    Ok(Probe {
        enabled,
        address,
        ports,
        tcp_port,
        replies_per_second,
        credentials,
        credential_ttl,
        credentials_per_minute,
        max_check_allocations,
        alternate_address,
        max_kbps_per_source,
    })
}

fn resolve_drain(section: &DrainSection) -> Result<Drain, Located> {
    let defaults = Drain::default();
    let timeout = match &section.timeout {
        Some(s) if *s.get_ref() > 86_400 => {
            return Err(Located::at(
                s,
                "drain.timeout",
                "must be between 0 and 86400 seconds",
            ));
        }
        Some(s) => Duration::from_secs(*s.get_ref()),
        None => defaults.timeout,
    };
    let mut parsed = Vec::new();
    for entry in &section.alternate {
        let addr: SocketAddr = entry.get_ref().parse().map_err(|_| {
            Located::at(
                entry,
                "drain.alternate",
                format!(
                    "\"{}\" is not an IP address and port, such as \"203.0.113.9:3478\" or \"[2001:db8::9]:3478\"",
                    entry.get_ref()
                ),
            )
        })?;
        parsed.push((addr, Some(entry)));
    }
    let alternates = check_alternates(parsed.into_iter())?;
    Ok(Drain {
        timeout,
        alternates,
    })
}

/// Alternate servers for draining: reachable addresses, at most one per
/// family. Each comes with where it was written (`None`: on the command
/// line).
fn check_alternates<'a>(
    entries: impl Iterator<Item = (SocketAddr, Option<&'a toml::Spanned<String>>)>,
) -> Result<Vec<SocketAddr>, Located> {
    let fail = |at: Option<&toml::Spanned<String>>, message: String| match at {
        Some(s) => Located::at(s, "drain.alternate", message),
        None => Located::flag("--drain-alternate", message),
    };
    let mut alternates: Vec<SocketAddr> = Vec::new();
    for (addr, at) in entries {
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(fail(
                at,
                format!("{addr} is not an address clients can reach"),
            ));
        }
        if alternates.iter().any(|a| a.is_ipv4() == addr.is_ipv4()) {
            return Err(fail(
                at,
                "at most one alternate per address family (clients get the one of their own)"
                    .to_owned(),
            ));
        }
        alternates.push(addr);
    }
    Ok(alternates)
}

fn check_realm(realm: &str) -> Result<String, String> {
    // RFC 8489 §14.9: fewer than 128 characters.
    if realm.is_empty() || realm.chars().count() > 127 {
        return Err("must be 1 to 127 characters".to_owned());
    }
    if realm
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err("must not contain control characters, quotes or backslashes".to_owned());
    }
    Ok(realm.to_owned())
}

/// A DNS name (RFC 1123 labels) or an IP address.
fn check_hostname(name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.');
    if name.parse::<IpAddr>().is_ok() {
        return Ok(name.to_owned());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("\"{name}\" is not a host name or an IP address"))
    }
}

fn check_api_key(key: &str) -> Result<(), String> {
    if key.len() < 16 || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Err("an API key must be at least 16 characters, without spaces".to_owned())
    } else {
        Ok(())
    }
}

fn check_probe_address(ip: IpAddr) -> Result<IpAddr, String> {
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} is a wildcard; give the one address the responder listens and answers on (default: the relay address)"
        ));
    }
    if ip.is_multicast() {
        return Err(format!("{ip} is a multicast address"));
    }
    Ok(ip)
}

/// `[probe] alternate_address`: an address of its own, of the family of
/// the probe address (when that is given; else checked when the responder
/// binds), and a range of at least two ports (RFC 5780 needs two).
pub(crate) fn check_alternate_address(
    ip: IpAddr,
    address: Option<IpAddr>,
    ports: PortRange,
) -> Result<IpAddr, String> {
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} is a wildcard; give a second address of this host that clients can reach"
        ));
    }
    let ip = check_probe_address(ip)?;
    if let Some(address) = address {
        if address == ip {
            return Err(format!(
                "{ip} is the probe address itself; give a second address of this host"
            ));
        }
        if address.is_ipv4() != ip.is_ipv4() {
            return Err(format!(
                "{ip} is not of the family of the probe address {address}"
            ));
        }
    }
    if ports.len() < 2 {
        return Err(format!(
            "needs at least two probe ports (RFC 5780 changes the port too); ports = \"{ports}\" has one"
        ));
    }
    Ok(ip)
}

fn check_relay_address(ip: IpAddr) -> Result<IpAddr, String> {
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} is not an address peers can reach; give the address of an interface (and relay.advertised behind a NAT)"
        ));
    }
    if ip.is_multicast() {
        return Err(format!("{ip} is a multicast address"));
    }
    Ok(ip)
}

/// Addresses checked one by one, at most one per family.
fn check_addresses(
    ips: &[IpAddr],
    check: impl Fn(IpAddr) -> Result<IpAddr, String>,
) -> Result<Vec<IpAddr>, String> {
    let checked = ips
        .iter()
        .map(|&ip| check(ip))
        .collect::<Result<Vec<_>, _>>()?;
    if checked.iter().filter(|ip| ip.is_ipv4()).count() > 1
        || checked.iter().filter(|ip| ip.is_ipv6()).count() > 1
    {
        return Err("give at most one IPv4 and one IPv6 address".to_owned());
    }
    Ok(checked)
}

fn check_secret(secret: &str) -> Result<(), String> {
    if secret.is_empty() {
        Err("a secret must not be empty".to_owned())
    } else {
        Ok(())
    }
}

fn check_threads(n: usize) -> Result<usize, String> {
    if (1..=1024).contains(&n) {
        Ok(n)
    } else {
        Err("must be between 1 and 1024".to_owned())
    }
}

/// An error located by a byte span or a flag, before it knows its file.
#[derive(Debug)]
struct Located {
    span: Option<std::ops::Range<usize>>,
    key: Option<String>,
    message: String,
}

impl Located {
    fn at<T>(spanned: &toml::Spanned<T>, key: &str, message: impl Into<String>) -> Self {
        Self::span(Some(spanned.span()), key, message)
    }

    fn span(span: Option<std::ops::Range<usize>>, key: &str, message: impl Into<String>) -> Self {
        Self {
            span,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn plain(key: &str, message: impl Into<String>) -> Self {
        Self::span(None, key, message)
    }

    fn flag(flag: &str, message: impl Into<String>) -> Self {
        Self {
            span: None,
            key: Some(format!("flag {flag}")),
            message: message.into(),
        }
    }

    fn in_file(self, path: &Path, text: &str) -> ConfigError {
        let is_flag = self.key.as_deref().is_some_and(|k| k.starts_with("flag "));
        ConfigError {
            file: (!is_flag).then(|| path.to_owned()),
            line: self.span.map(|s| line_of(text, s.start)),
            key: self.key,
            message: self.message,
        }
    }

    fn into_config_error(self) -> ConfigError {
        ConfigError {
            file: None,
            line: None,
            key: self.key,
            message: self.message,
        }
    }
}

fn parse(text: &str) -> Result<File, Located> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| Located {
        span: e.span(),
        key: None,
        message: e.message().to_owned(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` values add a private segment to the path.
        let path = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        Located {
            span: inner.span(),
            key: (path != ".").then_some(path),
            message: inner.message().to_owned(),
        }
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turnpike.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &Overrides::default()).map_err(|mut e| {
            e.file = e.file.map(|f| PathBuf::from(f.file_name().unwrap()));
            e
        })
    }

    const EXAMPLE: &str = r#"
realm = "turnpike.test"
[[listen]]
transport = "udp"            # "tcp" and "tls" come with the next issue
address = "127.0.0.1:3478"
[relay]
address = "127.0.0.1"        # where relayed addresses are bound
ports = "49152-65535"
# advertised = "203.0.113.7" # address put in XOR-RELAYED-ADDRESS behind a 1:1 NAT
[auth]
users = ["alice:wonderland"]
secrets = ["a-rest-api-secret"]
[peers]
allow = ["127.0.0.0/8"]
deny = []
"#;

    #[test]
    fn the_documented_example_loads_exactly() {
        let c = load(EXAMPLE).unwrap();
        assert_eq!(c.realm.as_deref(), Some("turnpike.test"));
        assert_eq!(c.listen, vec!["udp://127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(
            c.relay_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            c.relay_ports,
            PortRange {
                first: 49152,
                last: 65535
            }
        );
        assert_eq!(
            c.users,
            vec![User {
                name: "alice".into(),
                password: "wonderland".into()
            }]
        );
        assert_eq!(c.secrets, vec!["a-rest-api-secret".to_owned()]);
        assert_eq!(c.allow_peers, vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(c.deny_peers.is_empty());
    }

    #[test]
    fn the_annotated_example_in_the_repository_loads() {
        let c = load(include_str!("../../../turnpike.example.toml")).unwrap();
        assert_eq!(c.realm.as_deref(), Some("turnpike.test"));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.limits.allocations,
            turnpike_turn::Limits::default().allocations
        );
        assert_eq!(c.nonce_lifetime, 600);
        let transports: Vec<_> = c.listen.iter().map(|l| (l.transport, l.http)).collect();
        assert_eq!(
            transports,
            vec![
                (ListenTransport::Udp, false),
                (ListenTransport::Tcp, false),
                (ListenTransport::Tls, true)
            ]
        );
        assert!(!c.relay_tcp);
        assert_eq!(c.streams, StreamLimits::default());
        assert_eq!(c.http.credential_ttl, 86_400);
        assert_eq!(c.http.api_keys.len(), 1);
        assert_eq!(c.drain.timeout, Drain::default().timeout);
        assert_eq!(c.drain.alternates, vec!["127.0.0.1:3479".parse().unwrap()]);
        assert_eq!(
            c.probe,
            Probe {
                tcp_port: Some(50_010),
                ..Probe::default()
            }
        );
    }

    #[test]
    fn drain_section() {
        let c = load(
            "[drain]\ntimeout = 0\nalternate = [\"192.0.2.9:3478\", \"[2001:db8::9]:3478\"]\n",
        )
        .unwrap();
        assert_eq!(c.drain.timeout, Duration::ZERO);
        assert_eq!(c.drain.alternates.len(), 2);
        for (text, says) in [
            ("[drain]\ntimeout = 86401\n", "between 0 and 86400"),
            (
                "[drain]\nalternate = [\"192.0.2.9\"]\n",
                "not an IP address and port",
            ),
            (
                "[drain]\nalternate = [\"[::]:3478\"]\n",
                "not an address clients can reach",
            ),
            (
                "[drain]\nalternate = [\"192.0.2.9:1\", \"192.0.2.10:1\"]\n",
                "at most one alternate per address family",
            ),
            ("[drain]\nwait = 3\n", "unknown field"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains("drain"), "{text}: {e}");
        }
        assert_eq!(load("").unwrap().drain, Drain::default());
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.listen, vec!["udp://0.0.0.0:3478".parse().unwrap()]);
        assert_eq!(c.relay_ports, DEFAULT_RELAY_PORTS);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.nonce_lifetime, 600);
        assert!(c.realm.is_none() && c.users.is_empty() && c.secrets.is_empty());
        // SECURITY.md "Defaults to ship": no admin surface anywhere, no
        // RFC 6062, no special peers, quotas on.
        assert!(c.http.address.is_none() && c.listen.iter().all(|l| !l.http));
        assert!(c.http.api_keys.is_empty(), "the credentials API is off");
        assert!(!c.relay_tcp);
        assert!(c.allow_peers.is_empty());
        assert_eq!(c.limits, turnpike_turn::Limits::default());
        assert!(c.limits.bandwidth_bytes_per_second > 0 && c.limits.unauthenticated_per_second > 0);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[relay]\nports = \"9-1\"\n",
                "turnpike.toml:2: relay.ports: \"9-1\": the first port must be between 1 and the last",
            ),
            (
                "realm = \"x\"\n[relay]\nprots = \"1-2\"\n",
                "turnpike.toml:3: relay.prots: unknown field `prots`, expected one of `address`, `ports`, `advertised`",
            ),
            (
                "[auth]\nusers = [\"alice\"]\n",
                "turnpike.toml:2: auth.users: a user is written NAME:PASSWORD",
            ),
            (
                "[peers]\nallow = [\"10.0.0.0/33\"]\n",
                "turnpike.toml:2: peers.allow: invalid CIDR",
            ),
            (
                "[[listen]]\ntransport = \"sctp\"\naddress = \"127.0.0.1:1\"\n",
                "turnpike.toml:2: listen[0].transport: unknown transport \"sctp\"",
            ),
            (
                "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:1\"\nhttp = true\n",
                "turnpike.toml:1: listen: http = true needs transport \"tcp\" or \"tls\"",
            ),
            (
                "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:1\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
                "turnpike.toml:1: listen: cert and key belong to transport \"tls\"",
            ),
            (
                "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:1\"\ncert = \"c.pem\"\n",
                "turnpike.toml:1: listen: cert and key go together",
            ),
            (
                "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:1\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
                "turnpike.toml:1: listen: /nonexistent/c.pem: ",
            ),
            (
                "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:1\"\n[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:1\"\n",
                "listen: 127.0.0.1:1 is listed twice for TCP",
            ),
            (
                "hostname = \"not a host!\"\n",
                "turnpike.toml:1: hostname: \"not a host!\" is not a host name or an IP address",
            ),
            (
                "[http]\napi_keys = [\"short\"]\n",
                "turnpike.toml:2: http.api_keys: an API key must be at least 16 characters",
            ),
            (
                "[limits]\nidle_timeout = 0\n",
                "turnpike.toml:2: limits.idle_timeout: must be between 1 and 86400 seconds",
            ),
            (
                "[relay]\naddress = \"0.0.0.0\"\n",
                "turnpike.toml:2: relay.address: 0.0.0.0 is not an address peers can reach",
            ),
            (
                "[relay]\naddress = \"127.0.0.1\"\nadvertised = \"::1\"\n",
                "turnpike.toml:3: relay.advertised: ::1 has no relay.address of its address family",
            ),
            (
                "[relay]\naddress = [\"192.0.2.1\", \"192.0.2.2\"]\n",
                "turnpike.toml:2: relay.address: give at most one IPv4 and one IPv6 address",
            ),
            (
                "[relay]\naddress = [\"192.0.2.1\", \"nope\"]\n",
                "turnpike.toml:2: relay.address: \"nope\" is not an IP address",
            ),
            (
                "[auth]\nnonce_lifetime = 601\n",
                "turnpike.toml:2: auth.nonce_lifetime: must be between 1 and 600 seconds",
            ),
            (
                "realm = \"\"\n",
                "turnpike.toml:1: realm: must be 1 to 127 characters",
            ),
            (
                "threads = 0\n",
                "turnpike.toml:1: threads: must be between 1 and 1024",
            ),
            (
                "[limits]\nallocations = 0\n",
                "turnpike.toml:2: limits.allocations: must be at least 1",
            ),
            (
                "[limits]\nmax_message_size = 547\n",
                "turnpike.toml:2: limits.max_message_size: must be between 548 (",
            ),
            (
                "[limits]\nmax_message_size = 65556\n",
                "turnpike.toml:2: limits.max_message_size: must be between 548 (the smallest datagram a STUN agent must take) and 65555 (",
            ),
            ("realm = \n", "turnpike.toml:1: "),
            (
                "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:1\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:1\"\n",
                "turnpike.toml:1: listen: 127.0.0.1:1 is listed twice for UDP",
            ),
            (
                "[probe]\nenabled = true\nports = \"50009-50000\"\n",
                "turnpike.toml:3: probe.ports: \"50009-50000\": the first port must be between 1 and the last",
            ),
            (
                "[probe]\nenabled = true\nports = \"40000-41024\"\n",
                "turnpike.toml:3: probe.ports: 40000-41024 is 1025 ports; the responder listens on at most 1024 (a socket each)",
            ),
            (
                "[probe]\nenabled = true\naddress = \"0.0.0.0\"\n",
                "turnpike.toml:3: probe.address: 0.0.0.0 is a wildcard",
            ),
            (
                "[probe]\naddress = \"nope\"\n",
                "turnpike.toml:2: probe.address: \"nope\" is not an IP address",
            ),
            (
                "[probe]\ncredentials = true\n",
                "turnpike.toml:2: probe.credentials: check credentials relay only to the probe responder: set [probe] enabled = true as well",
            ),
            (
                "[probe]\nenabled = true\ncredential_ttl = 3601\n",
                "turnpike.toml:3: probe.credential_ttl: must be between 1 and 3600 seconds",
            ),
            (
                "[probe]\nenabled = true\nreplies_per_second = 0\n",
                "turnpike.toml:3: probe.replies_per_second: must be between 1 and 1000000",
            ),
            (
                "[probe]\nenabled = true\ncredentials_per_minute = 0\n",
                "turnpike.toml:3: probe.credentials_per_minute: must be between 1 and 10000",
            ),
            (
                "[probe]\nenabled = true\nmax_check_allocations = 0\n",
                "turnpike.toml:3: probe.max_check_allocations: must be at least 1",
            ),
            (
                "[probe]\nenabled = true\ntcp_port = 70000\n",
                "turnpike.toml:3: probe.tcp_port: ",
            ),
            (
                "[probe]\nenabled = true\nalternate_address = \"nope\"\n",
                "turnpike.toml:3: probe.alternate_address: \"nope\" is not an IP address",
            ),
            (
                "[probe]\nenabled = true\nalternate_address = \"0.0.0.0\"\n",
                "turnpike.toml:3: probe.alternate_address: 0.0.0.0 is a wildcard",
            ),
            (
                "[probe]\nenabled = true\nalternate_address = \"::\"\n",
                "turnpike.toml:3: probe.alternate_address: :: is a wildcard",
            ),
            (
                "[probe]\nenabled = true\nalternate_address = \"239.1.2.3\"\n",
                "turnpike.toml:3: probe.alternate_address: 239.1.2.3 is a multicast address",
            ),
            (
                "[probe]\nenabled = true\naddress = \"192.0.2.9\"\nalternate_address = \"192.0.2.9\"\n",
                "turnpike.toml:4: probe.alternate_address: 192.0.2.9 is the probe address itself",
            ),
            (
                "[probe]\nenabled = true\naddress = \"192.0.2.9\"\nalternate_address = \"2001:db8::9\"\n",
                "turnpike.toml:4: probe.alternate_address: 2001:db8::9 is not of the family of the probe address 192.0.2.9",
            ),
            (
                "[probe]\nenabled = true\nports = \"40000-40000\"\n\nalternate_address = \"192.0.2.10\"\n",
                "turnpike.toml:5: probe.alternate_address: needs at least two probe ports",
            ),
            (
                "[probe]\nenabled = true\nmax_kbps_per_source = 0\n",
                "turnpike.toml:3: probe.max_kbps_per_source: must be between 1 and 10000000",
            ),
            (
                "[probe]\nenabled = true\nmax_kbps_per_source = 10000001\n",
                "turnpike.toml:3: probe.max_kbps_per_source: must be between 1 and 10000000",
            ),
            (
                "[probe]\nenable = true\n",
                "turnpike.toml:2: probe.enable: unknown field `enable`",
            ),
            (
                "[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:50005\"\n[probe]\nenabled = true\nports = \"50000-50009\"\n",
                "turnpike.toml:6: probe.ports: 50000-50009 includes the port of the listener udp://127.0.0.1:50005",
            ),
            (
                "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:3478\"\n[probe]\nenabled = true\ntcp_port = 3478\n",
                "turnpike.toml:6: probe.tcp_port: 3478 is the port of the server's own TCP listener 127.0.0.1:3478",
            ),
            (
                "[http]\naddress = \"127.0.0.1:8080\"\n[probe]\nenabled = true\ntcp_port = 8080\n",
                "turnpike.toml:5: probe.tcp_port: 8080 is the port of the server's own TCP listener 127.0.0.1:8080",
            ),
        ];
        for (text, want) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "for {text:?}\n got: {err}\nwant: {want}"
            );
        }
    }

    #[test]
    fn probe_section() {
        let c = load("").unwrap();
        assert_eq!(c.probe, Probe::default());
        assert!(!c.probe.enabled && !c.probe.credentials, "off by default");
        assert_eq!(c.probe.ports.to_string(), "50000-50009");
        assert_eq!(
            (c.probe.credential_ttl, c.probe.max_check_allocations),
            (300, 100)
        );
        let c = load(
            "[probe]\nenabled = true\naddress = \"192.0.2.9\"\nports = \"40000-41023\"\ntcp_port = 40000\nreplies_per_second = 20\ncredentials = true\ncredential_ttl = 60\ncredentials_per_minute = 3\nmax_check_allocations = 5\n",
        )
        .unwrap();
        assert_eq!(
            c.probe,
            Probe {
                enabled: true,
                address: Some("192.0.2.9".parse().unwrap()),
                ports: PortRange {
                    first: 40_000,
                    last: 41_023
                },
                tcp_port: Some(40_000),
                replies_per_second: 20,
                credentials: true,
                credential_ttl: 60,
                credentials_per_minute: 3,
                max_check_allocations: 5,
                alternate_address: None,
                max_kbps_per_source: 20_000,
            }
        );
        let c = load(
            "[probe]\nenabled = true\naddress = \"127.0.0.1\"\nalternate_address = \"127.0.0.2\"\nports = \"40000-40001\"\nmax_kbps_per_source = 5000\n",
        )
        .unwrap();
        assert_eq!(
            (c.probe.alternate_address, c.probe.max_kbps_per_source),
            (Some("127.0.0.2".parse().unwrap()), 5000)
        );
        // Without a probe address, the family is checked when it binds.
        let c = load("[probe]\nenabled = true\nalternate_address = \"2001:db8::2\"\n").unwrap();
        assert_eq!(
            c.probe.alternate_address,
            Some("2001:db8::2".parse().unwrap())
        );
        // Off, the responder's ports may be anything.
        let c = load("[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:50000\"\n").unwrap();
        assert!(!c.probe.enabled);
        // The flag turns it on, on its ports, and is checked like the key.
        let o = Overrides {
            probe_ports: Some("41000-41001".parse().unwrap()),
            ..Overrides::default()
        };
        let c = Config::load(None, &o).unwrap();
        assert!(c.probe.enabled);
        assert_eq!(c.probe.ports.len(), 2);
        let o = Overrides {
            probe_ports: Some("1-2000".parse().unwrap()),
            ..Overrides::default()
        };
        let e = Config::load(None, &o).unwrap_err().to_string();
        assert!(
            e.starts_with("flag --probe-ports: 1-2000 is 2000 ports"),
            "{e}"
        );
        let o = Overrides {
            probe_ports: Some("3478-3479".parse().unwrap()),
            ..Overrides::default()
        };
        let e = Config::load(None, &o).unwrap_err().to_string();
        assert!(
            e.contains("includes the port of the listener udp://0.0.0.0:3478"),
            "{e}"
        );
    }

    #[test]
    fn relay_addresses_are_one_or_one_per_family() {
        let c = load(
            "[relay]\naddress = [\"192.0.2.1\", \"2001:db8::1\"]\nadvertised = \"203.0.113.1\"\n",
        )
        .unwrap();
        assert_eq!(c.relay_addresses.len(), 2);
        assert_eq!(c.advertised, vec!["203.0.113.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn udp_and_tcp_share_a_port() {
        let c = load("[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:3478\"\n[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:3478\"\n").unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let o = Overrides {
            listen: vec!["udp://127.0.0.1:4000".parse().unwrap()],
            realm: Some("other".into()),
            relay_ports: Some("50000-50100".parse().unwrap()),
            users: vec!["bob:builder".parse().unwrap()],
            allow_peers: vec!["10.0.0.0/8".parse().unwrap()],
            ..Overrides::default()
        };
        let c = Config::load(Some(&path), &o).unwrap();
        assert_eq!(c.realm.as_deref(), Some("other"));
        assert_eq!(c.listen, o.listen);
        assert_eq!(c.relay_ports.len(), 101);
        assert_eq!(c.users[0].name, "bob");
        assert_eq!(
            c.secrets,
            vec!["a-rest-api-secret".to_owned()],
            "not overridden"
        );
        assert_eq!(c.allow_peers, o.allow_peers);
        let bad = Overrides {
            realm: Some(String::new()),
            ..Overrides::default()
        };
        let err = Config::load(Some(&path), &bad).unwrap_err().to_string();
        assert_eq!(err, "flag --realm: must be 1 to 127 characters");
    }

    #[test]
    fn flag_values_parse() {
        assert!("udp://[::1]:3478".parse::<Listen>().is_ok());
        assert!("tcp://127.0.0.1:1".parse::<Listen>().is_ok());
        let shared: Listen = "tcp://0.0.0.0:443?http=true".parse().unwrap();
        assert!(shared.http && shared.transport == ListenTransport::Tcp);
        assert!("udp://127.0.0.1:1?http=true".parse::<Listen>().is_err());
        assert!(
            "tls://127.0.0.1:1?cert=/nonexistent"
                .parse::<Listen>()
                .is_err()
        );
        assert!("tls://127.0.0.1:1?bogus=1".parse::<Listen>().is_err());
        assert!("sctp://127.0.0.1:1".parse::<Listen>().is_err());
        assert!("127.0.0.1:1".parse::<Listen>().is_err());
        assert!("1-65535".parse::<PortRange>().is_ok());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("10".parse::<PortRange>().is_err());
        assert!("a:b:c".parse::<User>().unwrap().password == "b:c");
        assert!(":x".parse::<User>().is_err());
    }
}

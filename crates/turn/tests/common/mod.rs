//! A harness that drives the state machine in memory, with simulated time.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike_turn::auth::Credentials;
use turnpike_turn::cidr::IpNet;
use turnpike_turn::policy::{PeerPolicy, PolicyConfig};
use turnpike_turn::stun::integrity::LongTermKey;
use turnpike_turn::stun::{
    Attr, AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method,
    PasswordAlgorithm, TransactionId,
};
use turnpike_turn::{
    AllocationId, BindError, BindRequest, Bound, Config, ConnectRequest, Event, FiveTuple,
    Lifetimes, Limits, Output, PEER_HEADROOM, PEER_TAILROOM, RelayIp, Relays, Server, Shared,
    Transport,
};

pub const REALM: &str = "turnpike.test";
pub const UNIX_T0: u64 = 1_800_000_000;

/// Relays that bind nothing: a socket is its address.
#[derive(Debug, Default)]
pub struct FakeRelays {
    pub next_port: u16,
    pub requests: Vec<BindRequest>,
    pub fail: Option<BindError>,
    /// Every address bound, as the runtime's port pool would know them.
    pub bound: std::collections::HashSet<SocketAddr>,
    /// Whether IPv6 relays can be bound (on `RELAY_V6`).
    pub ipv6: bool,
}

/// The harness's IPv6 relay address, when IPv6 is on.
pub const RELAY_V6: &str = "2001:db8:1::1";

impl Relays for FakeRelays {
    type Socket = SocketAddr;
    type Reserved = SocketAddr;

    fn bind(&mut self, request: &BindRequest) -> Result<Bound<SocketAddr, SocketAddr>, BindError> {
        self.requests.push(*request);
        if let Some(e) = self.fail {
            return Err(e);
        }
        let ip: std::net::IpAddr = match request.family {
            turnpike_turn::stun::Family::V4 => "10.0.0.1".parse().unwrap(),
            turnpike_turn::stun::Family::V6 if self.ipv6 => RELAY_V6.parse().unwrap(),
            turnpike_turn::stun::Family::V6 => return Err(BindError::FamilyNotSupported),
        };
        if self.next_port == 0 {
            self.next_port = 50_000;
        }
        if request.even_port && self.next_port % 2 == 1 {
            self.next_port += 1;
        }
        let port = self.next_port;
        self.next_port += if request.reserve_next { 2 } else { 1 };
        let addr: SocketAddr = SocketAddr::new(ip, port);
        self.bound.insert(addr);
        let reserved = request.reserve_next.then(|| {
            (
                SocketAddr::new(addr.ip(), port + 1),
                SocketAddr::new(addr.ip(), port + 1),
            )
        });
        Ok(Bound {
            socket: addr,
            addr,
            reserved,
        })
    }

    fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.bound.contains(&addr)
    }

    fn adopt(&mut self, _id: AllocationId, reserved: SocketAddr) -> Result<SocketAddr, BindError> {
        Ok(reserved)
    }
}

/// What the server did with one message.
#[derive(Debug)]
pub enum Sent {
    Nothing,
    Reply(Vec<u8>),
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    Connect {
        relay: SocketAddr,
        request: ConnectRequest,
    },
    Bind {
        connection: u32,
        reply: Vec<u8>,
    },
}

impl Sent {
    pub fn reply(&self) -> Message<'_> {
        match self {
            Sent::Reply(bytes) => Message::parse(bytes).expect("a valid STUN reply"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    pub fn error_code(&self) -> Option<u16> {
        match self.reply().get(AttrType::ERROR_CODE) {
            Some(Ok(Attr::ErrorCode { code, .. })) => Some(code.0),
            _ => None,
        }
    }
}

pub struct Harness {
    pub server: Server<FakeRelays>,
    pub t0: Instant,
    pub now: Instant,
    pub events: Vec<Event>,
}

pub fn config(limits: Limits, allow: &[&str]) -> Config {
    let policy = PeerPolicy::new(PolicyConfig {
        allow: allow.iter().map(|s| s.parse::<IpNet>().unwrap()).collect(),
        deny: Vec::new(),
        own_ips: vec!["10.0.0.1".parse().unwrap(), "192.0.2.200".parse().unwrap()],
        listeners: vec!["0.0.0.0:3478".parse().unwrap()],
        relay_ips: vec![
            "10.0.0.1".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
            RELAY_V6.parse().unwrap(),
        ],
    });
    Config {
        realm: REALM.into(),
        software: None,
        relay_ips: vec![
            RelayIp {
                bound: "10.0.0.1".parse().unwrap(),
                advertised: "203.0.113.10".parse().unwrap(),
            },
            RelayIp {
                bound: RELAY_V6.parse().unwrap(),
                advertised: RELAY_V6.parse().unwrap(),
            },
        ],
        lifetimes: Lifetimes::default(),
        limits,
        policy,
        tcp_relay: true,
        alternates: Vec::new(),
    }
}

/// The users (alice, bob) and REST secrets (secret-one, secret-two) of
/// every harness.
pub fn credentials() -> Credentials {
    Credentials::new(
        REALM,
        [("alice", "wonderland"), ("bob", "builder")],
        [b"secret-one".as_slice(), b"secret-two".as_slice()],
    )
}

impl Harness {
    pub fn new() -> Self {
        Self::with(Limits::default(), &[])
    }

    pub fn with(limits: Limits, allow: &[&str]) -> Self {
        Self::with_config(config(limits, allow))
    }

    pub fn with_config(config: Config) -> Self {
        let t0 = Instant::now();
        Self::with_shared(Shared::new(config, credentials(), [42; 32], t0), t0)
    }

    /// A server on `shared`, made at `t0`.
    pub fn with_shared(shared: Shared<SocketAddr>, t0: Instant) -> Self {
        let server = Server::new(
            Arc::new(shared),
            FakeRelays::default(),
            [1; 32],
            t0,
            UNIX_T0,
        );
        Self {
            server,
            t0,
            now: t0,
            events: Vec::new(),
        }
    }

    /// Moves simulated time forward and runs the timer.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.drain();
    }

    /// Moves time without running the timer (expiry must hold anyway).
    pub fn skip(&mut self, by: Duration) {
        self.now += by;
    }

    pub fn drain(&mut self) {
        while let Some(e) = self.server.poll_event() {
            self.events.push(e);
        }
    }

    pub fn send(&mut self, tuple: FiveTuple, bytes: &[u8]) -> Sent {
        let mut out = vec![0u8; 1500];
        let sent = match self.server.handle_client(self.now, tuple, bytes, &mut out) {
            Output::None => Sent::Nothing,
            Output::Reply(len) => Sent::Reply(out[..len].to_vec()),
            Output::ToPeer { socket, peer, data } => Sent::ToPeer {
                relay: *socket,
                peer,
                data: data.to_vec(),
            },
            Output::Connect { socket, request } => Sent::Connect {
                relay: *socket,
                request,
            },
            Output::Bind { connection, reply } => Sent::Bind {
                connection,
                reply: out[..reply].to_vec(),
            },
        };
        self.drain();
        sent
    }

    /// A peer's datagram to allocation `id`; returns the bytes for the
    /// client, if any.
    pub fn peer_datagram(
        &mut self,
        id: AllocationId,
        from: SocketAddr,
        payload: &[u8],
    ) -> Option<(FiveTuple, Vec<u8>)> {
        let mut buf = vec![0xEE; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let out = self
            .server
            .handle_peer(self.now, id, from, &mut buf, payload.len())?;
        Some((out.tuple, buf[out.range].to_vec()))
    }

    /// The id of the most recently created allocation.
    pub fn last_allocation(&self) -> AllocationId {
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::AllocationCreated { id, .. } => Some(*id),
                _ => None,
            })
            .expect("an allocation was created")
    }
}

pub fn udp(client: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: client.parse().unwrap(),
        server: "192.0.2.200:3478".parse().unwrap(),
    }
}

/// A TURN client that keeps its nonce, as a real one would.
pub struct Client {
    pub tuple: FiveTuple,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    pub algorithm: PasswordAlgorithm,
    pub fingerprint: bool,
    next_tid: u8,
}

impl Client {
    pub fn new(client: &str, username: &str, password: &str) -> Self {
        Self {
            tuple: udp(client),
            username: username.into(),
            password: password.into(),
            nonce: None,
            algorithm: PasswordAlgorithm::MD5,
            fingerprint: false,
            next_tid: 0,
        }
    }

    pub fn key(&self) -> LongTermKey {
        LongTermKey::derive(self.algorithm, &self.username, REALM, &self.password).unwrap()
    }

    pub fn tid(&mut self) -> TransactionId {
        self.next_tid = self.next_tid.wrapping_add(1);
        let mut t = [0xAB; 12];
        t[0] = self.next_tid;
        TransactionId(t)
    }

    /// An unsigned request.
    pub fn unsigned(&mut self, method: Method, attrs: &[Attr<'_>]) -> Vec<u8> {
        let tid = self.tid();
        build(
            MessageType::new(method, Class::Request),
            tid,
            attrs,
            None,
            self.fingerprint,
        )
    }

    /// A request signed with the long-term key, with the current nonce.
    pub fn signed_with(
        &mut self,
        method: Method,
        tid: TransactionId,
        attrs: &[Attr<'_>],
    ) -> Vec<u8> {
        let nonce = self.nonce.clone().unwrap_or_default();
        let mut all: Vec<Attr<'_>> = attrs.to_vec();
        all.push(Attr::Username(&self.username));
        all.push(Attr::Realm(REALM));
        all.push(Attr::Nonce(&nonce));
        let key = self.key();
        build(
            MessageType::new(method, Class::Request),
            tid,
            &all,
            Some(key.as_bytes()),
            self.fingerprint,
        )
    }

    pub fn signed(&mut self, method: Method, attrs: &[Attr<'_>]) -> Vec<u8> {
        let tid = self.tid();
        self.signed_with(method, tid, attrs)
    }

    /// Sends a signed request; on 401 or 438 takes the nonce and retries
    /// once, as clients do.
    pub fn call(&mut self, h: &mut Harness, method: Method, attrs: &[Attr<'_>]) -> Sent {
        let bytes = self.signed(method, attrs);
        let sent = h.send(self.tuple, &bytes);
        if let Sent::Reply(_) = &sent {
            let code = sent.error_code();
            if matches!(code, Some(401 | 438))
                && let Some(Ok(Attr::Nonce(n))) = sent.reply().get(AttrType::NONCE)
            {
                self.nonce = Some(n.to_owned());
                let bytes = self.signed(method, attrs);
                return h.send(self.tuple, &bytes);
            }
        }
        sent
    }

    pub fn allocate(&mut self, h: &mut Harness) -> Sent {
        self.call(h, Method::ALLOCATE, &[Attr::RequestedTransport(17)])
    }
}

pub fn build(
    typ: MessageType,
    tid: TransactionId,
    attrs: &[Attr<'_>],
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut w = MessageWriter::new(&mut buf, typ, tid).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    if let Some(key) = key {
        w.message_integrity(key).unwrap();
    }
    if fingerprint {
        w.fingerprint().unwrap();
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

pub fn code(sent: &Sent) -> Option<u16> {
    sent.error_code()
}

pub fn is_success(sent: &Sent) -> bool {
    matches!(sent, Sent::Reply(_)) && sent.reply().class() == Class::Success
}

pub fn relayed(sent: &Sent) -> SocketAddr {
    match sent.reply().get(AttrType::XOR_RELAYED_ADDRESS) {
        Some(Ok(Attr::XorRelayedAddress(a))) => a,
        other => panic!("no XOR-RELAYED-ADDRESS: {other:?}"),
    }
}

/// Every XOR-RELAYED-ADDRESS of a success, in order.
pub fn all_relayed(sent: &Sent) -> Vec<SocketAddr> {
    sent.reply()
        .get_all(AttrType::XOR_RELAYED_ADDRESS)
        .map(|a| match a {
            Ok(Attr::XorRelayedAddress(a)) => a,
            other => panic!("{other:?}"),
        })
        .collect()
}

pub fn lifetime(sent: &Sent) -> u32 {
    match sent.reply().get(AttrType::LIFETIME) {
        Some(Ok(Attr::Lifetime(s))) => s,
        other => panic!("no LIFETIME: {other:?}"),
    }
}

pub const BAD_REQUEST: u16 = ErrorCode::BAD_REQUEST.0;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

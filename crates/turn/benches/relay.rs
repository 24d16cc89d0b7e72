//! Micro-benchmarks of the TURN state machine, without I/O: a `Server` with
//! a fake `Relays` and a fixed clock, its allocations made, their
//! permissions installed and their channels bound through the protocol.
//!
//! Measured: `handle_client` on ChannelData (client to peer) and on a Send
//! indication; `handle_peer` for a peer datagram over a channel (ChannelData
//! built in place) and without one (a Data indication); a Binding request;
//! an authenticated Refresh (nonce check, integrity check and signed answer
//! included). Each data-path case runs with 1, 1,000 and 10,000
//! allocations on the server, both on one client's allocation (`one`) and
//! going round all of them in turn (`all`), to show lookups stay O(1).
//!
//! The global allocator counts allocations per operation. Run with
//! `cargo bench -p turnpike-turn --bench relay`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_debug_implementations,
    unreachable_pub
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use divan::{Bencher, black_box};
use turnpike_turn::auth::{self, Credentials};
use turnpike_turn::policy::{PeerPolicy, PolicyConfig};
use turnpike_turn::stun::integrity::LongTermKey;
use turnpike_turn::stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithm,
    TransactionId, channel_data,
};
use turnpike_turn::{
    AllocationId, BindError, BindRequest, Bound, Config, Event, FiveTuple, Lifetimes, Limits,
    Output, PEER_HEADROOM, PEER_TAILROOM, RelayIp, Relays, Server, Shared, Transport,
};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

const REALM: &str = "turnpike.bench";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const CHANNEL: u16 = 0x4000;
const ALLOCATIONS: [usize; 3] = [1, 1_000, 10_000];

/// The peer every allocation has a channel to.
fn peer() -> SocketAddr {
    "93.184.216.34:40000".parse().unwrap()
}

/// Another port of the same peer host: the permission lets it through, but
/// no channel is bound to it, so it gets Data indications.
fn peer_without_channel() -> SocketAddr {
    "93.184.216.34:40001".parse().unwrap()
}

/// Relays that bind nothing: a socket is its address.
#[derive(Default)]
struct FakeRelays {
    next_port: u16,
}

impl Relays for FakeRelays {
    type Socket = SocketAddr;
    type Reserved = SocketAddr;

    fn bind(&mut self, request: &BindRequest) -> Result<Bound<SocketAddr, SocketAddr>, BindError> {
        if request.family != turnpike_turn::stun::Family::V4 {
            return Err(BindError::FamilyNotSupported);
        }
        let port = 20_000 + self.next_port;
        self.next_port += 1;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port);
        Ok(Bound {
            socket: addr,
            addr,
            reserved: None,
        })
    }

    fn is_relayed(&self, _addr: SocketAddr) -> bool {
        false
    }

    fn adopt(&mut self, _id: AllocationId, reserved: SocketAddr) -> Result<SocketAddr, BindError> {
        Ok(reserved)
    }
}

fn config() -> Config {
    let relay: IpAddr = "10.0.0.1".parse().unwrap();
    let advertised: IpAddr = "203.0.113.10".parse().unwrap();
    let policy = PeerPolicy::new(PolicyConfig {
        allow: Vec::new(),
        deny: Vec::new(),
        own_ips: vec![relay, "192.0.2.200".parse().unwrap()],
        listeners: vec!["0.0.0.0:3478".parse().unwrap()],
        relay_ips: vec![relay, advertised],
    });
    Config {
        realm: REALM.into(),
        software: None,
        relay_ips: vec![RelayIp {
            bound: relay,
            advertised,
        }],
        lifetimes: Lifetimes::default(),
        limits: Limits {
            allocations: 100_000,
            allocations_per_user: 100_000,
            ..Limits::default()
        },
        policy,
        tcp_relay: false,
        alternates: Vec::new(),
    }
}

/// One client with an allocation, a permission for the peer's IP and a
/// channel to the peer.
struct Client {
    tuple: FiveTuple,
    id: AllocationId,
    nonce: String,
}

/// A server holding `n` such allocations, at a fixed time.
struct Bed {
    server: Server<FakeRelays>,
    now: Instant,
    clients: Vec<Client>,
    username: String,
    key: LongTermKey,
}

/// How the clients authenticate.
#[derive(Clone, Copy)]
enum Auth {
    /// A static user of the configuration, whose keys are derived once.
    Static,
    /// A TURN REST user name, valid under the last of `secrets` secrets.
    Rest { secrets: usize },
}

const UNIX_NOW: u64 = 1_800_000_000;

/// Client `i`'s 5-tuple. Each client has its own address, in the
/// benchmarking range (RFC 2544), so that the per-source limit on
/// unauthenticated answers never applies while they are set up.
fn tuple(i: usize) -> FiveTuple {
    let i = u16::try_from(i).unwrap();
    let [hi, lo] = i.to_be_bytes();
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, hi, lo)), 50_000),
        server: "192.0.2.200:3478".parse().unwrap(),
    }
}

fn build(
    method: Method,
    class: Class,
    tid: TransactionId,
    attrs: &[Attr<'_>],
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let mut w = MessageWriter::new(&mut buf, MessageType::new(method, class), tid).unwrap();
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

impl Bed {
    fn new(allocations: usize) -> Self {
        Self::with(allocations, Auth::Static)
    }

    fn with(allocations: usize, auth: Auth) -> Self {
        let t0 = Instant::now();
        let secrets: Vec<Vec<u8>> = match auth {
            Auth::Static => Vec::new(),
            Auth::Rest { secrets } => (0..secrets)
                .map(|i| format!("rest-secret-{i}").into_bytes())
                .collect(),
        };
        let (username, password) = match secrets.last() {
            None => (USER.to_owned(), PASSWORD.to_owned()),
            Some(secret) => {
                let username = auth::rest_username(UNIX_NOW + 86_400, USER);
                let password = auth::rest_password(secret, &username);
                (username, password)
            }
        };
        let credentials =
            Credentials::new(REALM, [(USER, PASSWORD)], secrets.iter().map(Vec::as_slice));
        let shared = Arc::new(Shared::new(config(), credentials, [42; 32], t0));
        let server = Server::new(shared, FakeRelays::default(), [1; 32], t0, UNIX_NOW);
        let key = LongTermKey::derive(PasswordAlgorithm::MD5, &username, REALM, &password).unwrap();
        let mut bed = Self {
            server,
            now: t0 + Duration::from_secs(1),
            clients: Vec::with_capacity(allocations),
            username,
            key,
        };
        for i in 0..allocations {
            bed.add_client(i);
        }
        assert_eq!(bed.server.allocation_count(), allocations);
        bed
    }

    /// Sends `bytes` from `tuple`; returns the reply, if any.
    fn request(&mut self, tuple: FiveTuple, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; 1500];
        match self.server.handle_client(self.now, tuple, bytes, &mut out) {
            Output::Reply(len) => Some(out[..len].to_vec()),
            _ => None,
        }
    }

    /// A request signed with the user's key, carrying `nonce`.
    fn signed(&self, nonce: &str, method: Method, attrs: &[Attr<'_>]) -> Vec<u8> {
        let mut all = attrs.to_vec();
        all.extend([
            Attr::Username(&self.username),
            Attr::Realm(REALM),
            Attr::Nonce(nonce),
        ]);
        build(
            method,
            Class::Request,
            TransactionId([7; 12]),
            &all,
            Some(self.key.as_bytes()),
            true,
        )
    }

    fn add_client(&mut self, i: usize) {
        let tuple = tuple(i);
        let allocate = [Attr::RequestedTransport(17)];
        // The first Allocate is challenged: it brings the nonce.
        let unsigned = build(
            Method::ALLOCATE,
            Class::Request,
            TransactionId([1; 12]),
            &allocate,
            None,
            true,
        );
        let challenge = self.request(tuple, &unsigned).expect("a 401");
        let nonce = match Message::parse(&challenge).unwrap().get(AttrType::NONCE) {
            Some(Ok(Attr::Nonce(n))) => n.to_owned(),
            other => panic!("no NONCE: {other:?}"),
        };
        let bytes = self.signed(&nonce, Method::ALLOCATE, &allocate);
        let reply = self.request(tuple, &bytes).expect("an Allocate success");
        assert_eq!(
            Message::parse(&reply).unwrap().class(),
            Class::Success,
            "Allocate"
        );
        let id = loop {
            match self.server.poll_event() {
                Some(Event::AllocationCreated { id, .. }) => break id,
                Some(_) => {}
                None => panic!("no AllocationCreated"),
            }
        };
        // ChannelBind installs the permission too.
        let bind = [Attr::ChannelNumber(CHANNEL), Attr::XorPeerAddress(peer())];
        let bytes = self.signed(&nonce, Method::CHANNEL_BIND, &bind);
        let reply = self.request(tuple, &bytes).expect("a ChannelBind success");
        assert_eq!(
            Message::parse(&reply).unwrap().class(),
            Class::Success,
            "ChannelBind"
        );
        self.clients.push(Client { tuple, id, nonce });
    }
}

/// The length of what goes to a peer, if anything does.
fn to_peer<S>(output: Output<'_, S>) -> Option<usize> {
    match output {
        Output::ToPeer { data, .. } => Some(data.len()),
        _ => None,
    }
}

/// A ChannelData message carrying `len` bytes on the bound channel.
fn channel_data_message(len: usize) -> Vec<u8> {
    let mut msg = channel_data::header(CHANNEL, len).unwrap().to_vec();
    msg.resize(channel_data::HEADER_LEN + len, 0x55);
    msg
}

/// A Send indication of `len` bytes to the peer.
fn send_indication(len: usize) -> Vec<u8> {
    let payload = vec![0x55u8; len];
    build(
        Method::SEND,
        Class::Indication,
        TransactionId([3; 12]),
        &[Attr::XorPeerAddress(peer()), Attr::Data(&payload)],
        None,
        false,
    )
}

/// Runs `op` on client 0 every time (`round_robin == false`) or on each
/// client in turn.
fn each_client(bed: &Bed, round_robin: bool) -> impl FnMut() -> usize + use<> {
    let n = if round_robin { bed.clients.len() } else { 1 };
    let mut i = 0;
    move || {
        let at = i;
        i += 1;
        if i == n {
            i = 0;
        }
        at
    }
}

/// Client to peer: `handle_client` on ChannelData and Send indications.
mod client_to_peer {
    use super::*;

    fn channel_data(bencher: Bencher, allocations: usize, len: usize, round_robin: bool) {
        let mut bed = Bed::new(allocations);
        let msg = channel_data_message(len);
        let mut out = [0u8; 1500];
        let mut next = each_client(&bed, round_robin);
        let tuples: Vec<FiveTuple> = bed.clients.iter().map(|c| c.tuple).collect();
        let now = bed.now;
        assert_eq!(
            to_peer(bed.server.handle_client(now, tuples[0], &msg, &mut out)),
            Some(len)
        );
        bencher.bench_local(|| {
            let tuple = tuples[next()];
            to_peer(
                bed.server
                    .handle_client(now, black_box(tuple), black_box(&msg), &mut out),
            )
        });
    }

    /// ChannelData from one client, among `allocations`.
    #[divan::bench(consts = [160, 1200], args = ALLOCATIONS)]
    fn channel_data_one<const LEN: usize>(bencher: Bencher, allocations: usize) {
        channel_data(bencher, allocations, LEN, false);
    }

    /// ChannelData from each of `allocations` clients in turn.
    #[divan::bench(consts = [160, 1200], args = ALLOCATIONS)]
    fn channel_data_all<const LEN: usize>(bencher: Bencher, allocations: usize) {
        channel_data(bencher, allocations, LEN, true);
    }

    fn send(bencher: Bencher, allocations: usize, round_robin: bool) {
        let mut bed = Bed::new(allocations);
        let msg = send_indication(160);
        let mut out = [0u8; 1500];
        let mut next = each_client(&bed, round_robin);
        let tuples: Vec<FiveTuple> = bed.clients.iter().map(|c| c.tuple).collect();
        let now = bed.now;
        assert_eq!(
            to_peer(bed.server.handle_client(now, tuples[0], &msg, &mut out)),
            Some(160)
        );
        bencher.bench_local(|| {
            let tuple = tuples[next()];
            to_peer(
                bed.server
                    .handle_client(now, black_box(tuple), black_box(&msg), &mut out),
            )
        });
    }

    /// A Send indication of 160 bytes from one client.
    #[divan::bench(args = ALLOCATIONS)]
    fn send_indication_one(bencher: Bencher, allocations: usize) {
        send(bencher, allocations, false);
    }

    /// A Send indication of 160 bytes from each client in turn.
    #[divan::bench(args = ALLOCATIONS)]
    fn send_indication_all(bencher: Bencher, allocations: usize) {
        send(bencher, allocations, true);
    }
}

/// Peer to client: `handle_peer`, wrapping the datagram in place.
mod peer_to_client {
    use super::*;

    fn datagram(
        bencher: Bencher,
        allocations: usize,
        len: usize,
        from: SocketAddr,
        round_robin: bool,
    ) {
        let mut bed = Bed::new(allocations);
        let mut buf = vec![0x55u8; PEER_HEADROOM + len + PEER_TAILROOM];
        let mut next = each_client(&bed, round_robin);
        let ids: Vec<AllocationId> = bed.clients.iter().map(|c| c.id).collect();
        let now = bed.now;
        let first = bed.server.handle_peer(now, ids[0], from, &mut buf, len);
        assert!(first.is_some(), "the peer's datagram is relayed");
        bencher.bench_local(|| {
            let id = ids[next()];
            bed.server
                .handle_peer(now, black_box(id), black_box(from), &mut buf, len)
                .map(|out| out.range.len())
        });
    }

    /// From the peer of a channel: a ChannelData header is written before
    /// the payload.
    #[divan::bench(consts = [160, 1200], args = ALLOCATIONS)]
    fn channel_one<const LEN: usize>(bencher: Bencher, allocations: usize) {
        datagram(bencher, allocations, LEN, peer(), false);
    }

    #[divan::bench(consts = [160, 1200], args = ALLOCATIONS)]
    fn channel_all<const LEN: usize>(bencher: Bencher, allocations: usize) {
        datagram(bencher, allocations, LEN, peer(), true);
    }

    /// From a permitted peer without a channel: a Data indication (header,
    /// XOR-PEER-ADDRESS, DATA header) is written before 160 bytes.
    #[divan::bench(args = ALLOCATIONS)]
    fn data_indication_one(bencher: Bencher, allocations: usize) {
        datagram(bencher, allocations, 160, peer_without_channel(), false);
    }

    #[divan::bench(args = ALLOCATIONS)]
    fn data_indication_all(bencher: Bencher, allocations: usize) {
        datagram(bencher, allocations, 160, peer_without_channel(), true);
    }
}

/// Requests answered in `out`.
mod requests {
    use super::*;

    /// A Binding request with FINGERPRINT, answered with
    /// XOR-MAPPED-ADDRESS and FINGERPRINT. The clock moves 25 ms per
    /// request so that the per-source limit (50 a second) never withholds
    /// the answer: its check is part of what is measured.
    #[divan::bench]
    fn binding(bencher: Bencher) {
        let mut bed = Bed::new(1);
        let msg = build(
            Method::BINDING,
            Class::Request,
            TransactionId([9; 12]),
            &[],
            None,
            true,
        );
        let tuple = tuple(60_000);
        let mut out = [0u8; 1500];
        bencher.bench_local(|| {
            bed.now += Duration::from_millis(25);
            match bed
                .server
                .handle_client(bed.now, tuple, black_box(&msg), &mut out)
            {
                Output::Reply(len) => len,
                _ => 0,
            }
        });
        assert_eq!(bed.server.stats().rate_limited, 0);
    }

    fn refresh(bencher: Bencher, allocations: usize, round_robin: bool, auth: Auth) {
        let mut bed = Bed::with(allocations, auth);
        let messages: Vec<(FiveTuple, Vec<u8>)> = bed
            .clients
            .iter()
            .map(|c| {
                let msg = bed.signed(&c.nonce, Method::REFRESH, &[Attr::Lifetime(600)]);
                (c.tuple, msg)
            })
            .collect();
        let mut out = [0u8; 1500];
        let mut next = each_client(&bed, round_robin);
        let now = bed.now;
        let (tuple, msg) = &messages[0];
        let Output::Reply(len) = bed.server.handle_client(now, *tuple, msg, &mut out) else {
            panic!("no answer to Refresh");
        };
        assert_eq!(
            Message::parse(&out[..len]).unwrap().class(),
            Class::Success,
            "Refresh"
        );
        bencher.bench_local(|| {
            let (tuple, msg) = &messages[next()];
            match bed
                .server
                .handle_client(now, *tuple, black_box(msg), &mut out)
            {
                Output::Reply(len) => len,
                _ => 0,
            }
        });
    }

    /// Refresh with LIFETIME, USERNAME, REALM, NONCE, MESSAGE-INTEGRITY and
    /// FINGERPRINT, answered with a signed success: parse, nonce HMAC,
    /// HMAC-SHA1 check, answer signed with HMAC-SHA1 and FINGERPRINT.
    #[divan::bench(args = ALLOCATIONS)]
    fn refresh_one(bencher: Bencher, allocations: usize) {
        refresh(bencher, allocations, false, Auth::Static);
    }

    #[divan::bench(args = ALLOCATIONS)]
    fn refresh_all(bencher: Bencher, allocations: usize) {
        refresh(bencher, allocations, true, Auth::Static);
    }

    /// Refresh by a TURN REST user: its key is derived on every request
    /// (HMAC-SHA1 of the user name under each secret, base64, MD5), here
    /// with 1 or 2 secrets configured and the last one valid.
    #[divan::bench(args = [1, 2])]
    fn refresh_rest(bencher: Bencher, secrets: usize) {
        refresh(bencher, 1, false, Auth::Rest { secrets });
    }
}

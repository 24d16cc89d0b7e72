//! The TURN server state machine of one shard (RFC 8656).
//!
//! This module has the server and its entry points; requests are
//! authenticated in `authenticate`, allocations made and refreshed in
//! `allocate`, and permissions, channels and relayed data handled in
//! `relay`.

mod allocate;
mod authenticate;
mod relay;
mod tcp;

pub use tcp::{BIND_WINDOW, ConnectRequest, PeerConnection};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use turnpike_stun::channel_data;
use turnpike_stun::{
    Attr, AttrType, Class, ErrorCode, Family, FirstByte, Integrity, Message, MessageType,
    MessageWriter, Method, TransactionId,
};

use crate::allocation::Allocation;
use crate::auth::Verified;
use crate::bandwidth::Rate;
use crate::connections::ConnectionId;
use crate::ratelimit::RateLimiter;
use crate::shared::Shared;
use crate::{AllocationId, FiveTuple, Relayed, Transport};

/// Bytes the runtime leaves free before a peer's payload, so the server
/// can wrap it in ChannelData (4 bytes) or a Data indication (at most 48)
/// without copying.
pub const PEER_HEADROOM: usize = 64;

/// Bytes the runtime leaves free after a peer's payload, for padding.
pub const PEER_TAILROOM: usize = 3;

/// How the runtime binds relayed transport addresses. The server decides
/// when; the runtime owns the sockets, which the server holds opaquely.
pub trait Relays {
    /// A bound relay socket, owned by its allocation; dropping it closes it.
    type Socket;
    /// A port held for a later allocation (EVEN-PORT with R=1). Any shard
    /// may claim it, so it must be `Send`.
    type Reserved: Send;

    /// Binds a relay socket for allocation `request.id`.
    fn bind(
        &mut self,
        request: &BindRequest,
    ) -> Result<Bound<Self::Socket, Self::Reserved>, BindError>;

    /// Whether `addr` (a bound address) is a relayed address of this
    /// server, on any shard: another allocation a peer may be.
    fn is_relayed(&self, addr: SocketAddr) -> bool;

    /// Turns a reserved port into allocation `id`'s relay socket.
    fn adopt(
        &mut self,
        id: AllocationId,
        reserved: Self::Reserved,
    ) -> Result<Self::Socket, BindError>;
}

/// What a new allocation needs from the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindRequest {
    pub id: AllocationId,
    pub family: Family,
    /// EVEN-PORT: the port must be even.
    pub even_port: bool,
    /// EVEN-PORT with R=1: also hold the next port.
    pub reserve_next: bool,
    /// DONT-FRAGMENT: send with the DF bit set.
    pub dont_fragment: bool,
    /// A TCP relay (RFC 6062): a listening socket that peers connect to,
    /// and that Connect connects from.
    pub tcp: bool,
}

/// A bound relay, and the port reserved with it, if one was asked for.
#[derive(Debug)]
pub struct Bound<S, R> {
    pub socket: S,
    pub addr: SocketAddr,
    pub reserved: Option<(R, SocketAddr)>,
}

/// Why a relay could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindError {
    /// No relay address of that family is configured (answered with 440).
    FamilyNotSupported,
    /// The port range is exhausted (508).
    NoPorts,
    /// The operating system refused (508).
    Failed,
}

/// What to send after a client's message.
#[derive(Debug)]
pub enum Output<'a, S> {
    /// Nothing.
    None,
    /// `out[..len]` back to the client, on the same 5-tuple.
    Reply(usize),
    /// `data` to `peer`, from the allocation's relay `socket`.
    ToPeer {
        socket: &'a S,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// RFC 6062 Connect: open a TCP connection from the relay `socket` to
    /// `request.peer`, then hand the outcome to [`Server::connect_done`].
    Connect {
        socket: &'a S,
        request: ConnectRequest,
    },
    /// RFC 6062 ConnectionBind: send `out[..reply]`, then carry this
    /// client connection's bytes to and from peer connection `connection`.
    Bind {
        connection: ConnectionId,
        reply: usize,
    },
}

/// What to send after a peer's datagram: `buf[range]` to the client of
/// `tuple`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOutput {
    pub tuple: FiveTuple,
    pub range: Range<usize>,
}

/// Packets and bytes an allocation relayed each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// Its lifetime ran out.
    Expired,
    /// The client deleted it (Refresh with LIFETIME 0).
    Deleted,
    /// The runtime ended it (its connection closed, or shutdown).
    Closed,
}

impl EndReason {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Deleted => "deleted",
            Self::Closed => "closed",
        }
    }
}

/// Something worth a log line or a metric; drained with
/// [`Server::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    AllocationCreated {
        id: AllocationId,
        username: Box<str>,
        tuple: FiveTuple,
        relayed: Relayed,
        lifetime: Duration,
    },
    AllocationEnded {
        id: AllocationId,
        username: Box<str>,
        tuple: FiveTuple,
        relayed: Relayed,
        reason: EndReason,
        duration: Duration,
        traffic: TrafficStats,
    },
}

/// Counters of one shard. Labels are fixed sets: never a user name or an
/// address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages that were neither valid STUN nor ChannelData.
    pub malformed: u64,
    /// Messages above `limits.max_message_size`: datagrams dropped, and
    /// streams closed.
    pub oversized: u64,
    /// Answers to unauthenticated requests withheld by the rate limit.
    pub rate_limited: u64,
    /// Binding requests answered.
    pub bindings: u64,
    /// Authentication failures, by reason.
    pub auth_failures: Counts,
    /// Peer addresses refused by the policy, by reason.
    pub peer_denied: Counts,
    /// ChannelData or Send indications dropped: no allocation, channel or
    /// permission.
    pub client_dropped: u64,
    /// Peer datagrams dropped: no permission.
    pub peer_dropped: u64,
    /// Error responses, by code.
    pub errors: Counts,
    /// Relayed traffic of this shard.
    pub traffic: TrafficStats,
    /// Datagrams dropped because their allocation was over its bandwidth:
    /// toward peers, toward clients.
    pub over_bandwidth: [u64; 2],
}

/// Counts by a label from a small fixed set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(Vec<(&'static str, u64)>);

impl Counts {
    fn add(&mut self, label: &'static str) {
        match self.0.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => self.0.push((label, 1)),
        }
    }

    /// The count for `label`.
    #[must_use]
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().copied()
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Slot<S> {
    generation: u32,
    allocation: Option<Allocation<S>>,
}

/// How one request ends: the length of the answer in `out`, if any.
type Answer = Option<usize>;

/// The TURN server of one shard.
pub struct Server<R: Relays> {
    shared: Arc<Shared<R::Reserved>>,
    relays: R,
    slots: Vec<Slot<R::Socket>>,
    free: Vec<u32>,
    by_tuple: Map<FiveTuple, AllocationId>,
    limiter: RateLimiter,
    rng: StdRng,
    events: VecDeque<Event>,
    stats: Stats,
    /// Unix time at an instant, set by the runtime.
    wall_clock: (Instant, u64),
    next_timeout: Option<Instant>,
}

impl<R: Relays> std::fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.by_tuple.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<R: Relays> Server<R> {
    /// A shard's server. `seed` (random, distinct per shard) drives the
    /// transaction IDs of Data indications and the rate limiter's hash.
    pub fn new(
        shared: Arc<Shared<R::Reserved>>,
        relays: R,
        seed: [u8; 32],
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let limits = shared.config.limits;
        let mut rng = StdRng::from_seed(seed);
        let limiter = RateLimiter::new(
            limits.unauthenticated_per_second,
            limits.unauthenticated_burst,
            shared.epoch,
            rng.next_u64(),
        );
        Self {
            shared,
            relays,
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: Map::default(),
            limiter,
            rng,
            events: VecDeque::new(),
            stats: Stats::default(),
            wall_clock: (now, unix_now),
            next_timeout: None,
        }
    }

    /// Tells the server the Unix time at `now` (REST credentials expire by
    /// the wall clock). The runtime calls it on every timer tick.
    pub fn set_wall_clock(&mut self, now: Instant, unix_now: u64) {
        self.wall_clock = (now, unix_now);
    }

    /// The shared state.
    #[must_use]
    pub fn shared(&self) -> &Arc<Shared<R::Reserved>> {
        &self.shared
    }

    /// The relay binder, for the runtime.
    pub fn relays_mut(&mut self) -> &mut R {
        &mut self.relays
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Allocations on this shard (expired ones not yet swept included).
    #[must_use]
    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// The relay sockets of allocation `id` (one, or two for a dual
    /// allocation), expired or not: the runtime reads whatever they hold.
    pub fn relay_sockets(&self, id: AllocationId) -> impl Iterator<Item = &R::Socket> {
        let alloc = self
            .slots
            .get(id.index())
            .filter(|slot| slot.generation == id.generation())
            .and_then(|slot| slot.allocation.as_ref());
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(move |family| alloc?.relay(family).map(|relay| &relay.socket))
    }

    /// Whether `tuple` has a live allocation.
    #[must_use]
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// The bandwidth each allocation may use each way.
    #[inline]
    fn bandwidth(&self) -> Rate {
        Rate(self.shared.config.limits.bandwidth_bytes_per_second)
    }

    /// Allocations on this shard by client transport: UDP, TCP, TLS.
    #[must_use]
    pub fn allocations_by_transport(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for tuple in self.by_tuple.keys() {
            let i = match tuple.transport {
                Transport::Udp => 0,
                Transport::Tcp => 1,
                Transport::Tls => 2,
            };
            if let Some(n) = counts.get_mut(i) {
                *n += 1;
            }
        }
        counts
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Server::handle_timeout`] should next run. Expiry is exact
    /// whatever the timer does: an expired allocation, permission or
    /// channel is never used, even before it is swept.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    /// Ends expired allocations, forgets expired permissions and channels,
    /// and drops expired port reservations.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.shared.expire_reservations(now);
        self.shared.connections.expire(now);
        if self.next_timeout.is_some_and(|t| t > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(alloc) = slot.allocation.as_mut() else {
                continue;
            };
            if !alloc.is_live(now) {
                expired.push(AllocationId::new(
                    u32::try_from(index).unwrap_or(u32::MAX),
                    slot.generation,
                ));
                continue;
            }
            let due = alloc
                .collect_garbage(now)
                .map_or(alloc.expires, |gc| gc.min(alloc.expires));
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        for id in expired {
            self.remove(id, now, EndReason::Expired);
        }
        self.next_timeout = next;
    }

    /// Ends the allocation of `tuple`, if any (its connection closed).
    pub fn close(&mut self, now: Instant, tuple: &FiveTuple) {
        if let Some(&id) = self.by_tuple.get(tuple) {
            self.remove(id, now, EndReason::Closed);
        }
    }

    /// Counts a stream closed because it announced a message above
    /// `limits.max_message_size` (the runtime's deframer refuses it
    /// before it is read).
    pub fn count_oversized(&mut self) {
        self.stats.oversized += 1;
    }

    /// Ends every allocation (shutdown).
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<AllocationId> = self.by_tuple.values().copied().collect();
        for id in ids {
            self.remove(id, now, EndReason::Closed);
        }
    }

    /// Handles a message from a client: STUN or ChannelData. `out` receives
    /// any answer; it should hold at least 1500 bytes.
    pub fn handle_client<'a>(
        &'a mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &'a [u8],
        out: &mut [u8],
    ) -> Output<'a, R::Socket> {
        if data.len() > self.shared.config.limits.max_message_size {
            self.stats.oversized += 1;
            return Output::None;
        }
        match FirstByte::of(data) {
            FirstByte::ChannelData => self.channel_data(now, &tuple, data),
            FirstByte::Stun => match Message::parse(data) {
                // A datagram holds exactly one message.
                Ok(msg) if tuple.transport.is_stream() || msg.len() == data.len() => {
                    self.stun(now, &tuple, &msg, out)
                }
                _ => {
                    self.stats.malformed += 1;
                    Output::None
                }
            },
            FirstByte::Other => {
                self.stats.malformed += 1;
                Output::None
            }
        }
    }

    /// Handles a datagram a peer sent to allocation `id`'s relay from
    /// `from`. Its `len` bytes are at `buf[PEER_HEADROOM..]`, and `buf` has
    /// [`PEER_TAILROOM`] bytes after them. The answer is built in place.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocationId,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<PeerOutput> {
        let peer = self.as_advertised(from);
        let bandwidth = self.bandwidth();
        let alloc = live_mut(&mut self.slots, id, now)?;
        if !alloc.permits(peer.ip(), now) {
            self.stats.peer_dropped += 1;
            return None;
        }
        // A check allocation hears from the probe responder alone, not from
        // whatever else shares its IP (permissions are per IP).
        if alloc.restricted
            && !self
                .shared
                .check
                .as_ref()
                .is_some_and(|c| c.allows(peer, false) || c.allows(from, false))
        {
            self.stats.peer_dropped += 1;
            return None;
        }
        if !alloc.to_client_budget.take(bandwidth, len, now) {
            self.stats.over_bandwidth[1] += 1;
            return None;
        }
        let payload_end = PEER_HEADROOM.checked_add(len)?;
        let stream = alloc.tuple.transport.is_stream();
        let range = if let Some(number) = alloc.channel_for_peer(peer, now) {
            let start = PEER_HEADROOM - channel_data::HEADER_LEN;
            let header = channel_data::header(number, len)?;
            buf.get_mut(start..PEER_HEADROOM)?.copy_from_slice(&header);
            // RFC 8656 §12.5: over streams, ChannelData is padded to 4.
            let end = if stream {
                start + channel_data::stream_frame_len(header)
            } else {
                payload_end
            };
            buf.get_mut(payload_end..end)?.fill(0);
            start..end
        } else {
            let start = PEER_HEADROOM - data_indication_prefix(&peer);
            let mut tid = TransactionId::default();
            self.rng.fill_bytes(&mut tid.0);
            let typ = MessageType::new(Method::DATA, Class::Indication);
            let mut w = MessageWriter::new(buf.get_mut(start..)?, typ, tid).ok()?;
            w.add(&Attr::XorPeerAddress(peer)).ok()?;
            w.add_in_place(AttrType::DATA, len).ok()?;
            start..start + w.finish()
        };
        let bytes = u64::try_from(len).unwrap_or(u64::MAX);
        alloc.traffic.to_client_packets += 1;
        alloc.traffic.to_client_bytes += bytes;
        self.stats.traffic.to_client_packets += 1;
        self.stats.traffic.to_client_bytes += bytes;
        Some(PeerOutput {
            tuple: alloc.tuple,
            range,
        })
    }

    fn stun<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'a>,
        out: &mut [u8],
    ) -> Output<'a, R::Socket> {
        match msg.class() {
            Class::Request => self.request(now, tuple, msg, out),
            Class::Indication if msg.method() == Method::SEND => {
                self.send_indication(now, tuple, msg)
            }
            // Responses and other indications have no business here.
            _ => Output::None,
        }
    }

    fn request<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Output<'a, R::Socket> {
        let reply = |answer: Answer| answer.map_or(Output::None, Output::Reply);
        let method = msg.method();
        if method == Method::BINDING {
            return reply(self.binding(now, tuple, msg, out));
        }
        let tcp_relay = self.shared.config.tcp_relay;
        let known = matches!(
            method,
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        ) || (tcp_relay && matches!(method, Method::CONNECT | Method::CONNECTION_BIND));
        if !known {
            // Unknown methods, and RFC 6062's while TCP relaying is off.
            return reply(self.unauthenticated_error(now, tuple, msg, out, ErrorCode::BAD_REQUEST));
        }
        let auth = match self.authenticate(now, tuple, msg, out) {
            Ok(auth) => auth,
            Err(answer) => return reply(answer),
        };
        if !msg.unknown_comprehension_required().is_empty() {
            let unknown = msg.unknown_comprehension_required();
            return reply(self.unknown_attributes(msg, out, unknown, Some(&auth)));
        }
        let result = match method {
            Method::CONNECT => return self.connect(now, tuple, msg, auth, out),
            Method::CONNECTION_BIND => match self.connection_bind(now, tuple, msg, &auth, out) {
                Ok((connection, reply)) => return Output::Bind { connection, reply },
                Err(code) => Err(code),
            },
            Method::ALLOCATE => self.allocate(now, tuple, msg, &auth, out),
            Method::REFRESH => self.refresh(now, tuple, msg, &auth, out),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, &auth, out),
            _ => self.channel_bind(now, tuple, msg, &auth, out),
        };
        match result {
            Ok(len) => Output::Reply(len),
            Err(code) => reply(self.error(msg, out, code, Some(&auth), |_| Ok(()))),
        }
    }

    /// RFC 8489 §10.1: Binding requests are answered without
    /// authentication, with the address the request came from.
    fn binding(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Answer {
        // RFC 5780 is off: its comprehension-required attributes are
        // unknown here (RFC 5780 §6.1 asks for exactly this 420).
        let mut unknown = [0u16; 8];
        let mut n = 0;
        for typ in msg.unknown_comprehension_required().iter().copied().chain(
            [
                AttrType::CHANGE_REQUEST,
                AttrType::RESPONSE_PORT,
                AttrType::PADDING,
            ]
            .into_iter()
            .filter(|t| msg.raw(*t).is_some())
            .map(|t| t.0),
        ) {
            if let Some(slot) = unknown.get_mut(n) {
                *slot = typ;
                n += 1;
            }
        }
        if !self.limiter.allow(tuple.client.ip(), now) {
            self.stats.rate_limited += 1;
            return None;
        }
        if n > 0 {
            return self.unknown_attributes(msg, out, unknown.get(..n).unwrap_or(&[]), None);
        }
        self.stats.bindings += 1;
        self.respond(msg, out, msg.typ().success(), None, |w| {
            w.add(&Attr::XorMappedAddress(tuple.client))
        })
    }

    pub(super) fn error(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        code: ErrorCode,
        auth: Option<&Verified>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), turnpike_stun::EncodeError>,
    ) -> Answer {
        self.stats.errors.add(error_label(code));
        self.respond(msg, out, msg.typ().error(), auth, |w| {
            w.add(&Attr::ErrorCode {
                code,
                reason: code.reason(),
            })?;
            body(w)
        })
    }

    /// Writes an answer to `msg`: the body, SOFTWARE if configured, the
    /// integrity the request used if it was authenticated, and a
    /// FINGERPRINT if the request had one.
    fn respond(
        &self,
        msg: &Message<'_>,
        out: &mut [u8],
        typ: MessageType,
        auth: Option<&Verified>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), turnpike_stun::EncodeError>,
    ) -> Answer {
        let mut w = MessageWriter::new(out, typ, msg.transaction_id()).ok()?;
        body(&mut w).ok()?;
        self.sign(&mut w, auth, msg.has_fingerprint())?;
        Some(w.finish())
    }

    /// Ends an answer: SOFTWARE if configured, the integrity the request
    /// used if it was authenticated, a FINGERPRINT if it had one.
    fn sign(
        &self,
        w: &mut MessageWriter<'_>,
        auth: Option<&Verified>,
        fingerprint: bool,
    ) -> Option<()> {
        if let Some(software) = &self.shared.config.software {
            w.add(&Attr::Software(software)).ok()?;
        }
        if let Some(auth) = auth {
            match auth.integrity {
                Integrity::Sha1 => w.message_integrity(auth.key.as_bytes()).ok()?,
                Integrity::Sha256 => w.message_integrity_sha256(auth.key.as_bytes()).ok()?,
            }
        }
        if fingerprint {
            w.fingerprint().ok()?;
        }
        Some(())
    }

    fn remove(&mut self, id: AllocationId, now: Instant, reason: EndReason) {
        let Some(slot) = self.slots.get_mut(id.index()) else {
            return;
        };
        if slot.generation != id.generation() {
            return;
        }
        let Some(alloc) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free
            .push(u32::try_from(id.index()).unwrap_or(u32::MAX));
        self.by_tuple.remove(&alloc.tuple);
        self.shared.release(&alloc.username, alloc.restricted);
        let relayed = alloc.relayed();
        if alloc.tcp {
            for addr in [relayed.v4, relayed.v6].into_iter().flatten() {
                self.shared.connections.remove_allocation(addr);
            }
        }
        self.events.push_back(Event::AllocationEnded {
            id,
            username: alloc.username,
            tuple: alloc.tuple,
            relayed,
            reason,
            duration: now.saturating_duration_since(alloc.created),
            traffic: alloc.traffic,
        });
        // Dropping the allocation drops its socket: the runtime closes it.
    }

    fn unix_now(&self, now: Instant) -> u64 {
        let (at, unix) = self.wall_clock;
        match now.checked_duration_since(at) {
            Some(d) => unix.saturating_add(d.as_secs()),
            None => unix.saturating_sub(at.saturating_duration_since(now).as_secs()),
        }
    }

    /// A relay's bound address as clients and peers know it.
    fn as_advertised(&self, addr: SocketAddr) -> SocketAddr {
        self.shared
            .config
            .relay_ips
            .iter()
            .find(|r| r.bound == addr.ip())
            .map_or(addr, |r| SocketAddr::new(r.advertised, addr.port()))
    }

    /// Where to send to a peer: another allocation known by its advertised
    /// address is reached at its bound address, not through the NAT.
    fn as_bound(&self, peer: SocketAddr) -> SocketAddr {
        self.shared
            .config
            .relay_ips
            .iter()
            .find(|r| r.advertised == peer.ip())
            .map_or(peer, |r| SocketAddr::new(r.bound, peer.port()))
    }
}

fn live<S>(slots: &[Slot<S>], id: AllocationId, now: Instant) -> Option<&Allocation<S>> {
    let slot = slots.get(id.index())?;
    if slot.generation != id.generation() {
        return None;
    }
    slot.allocation.as_ref().filter(|a| a.is_live(now))
}

#[inline]
fn live_mut<S>(
    slots: &mut [Slot<S>],
    id: AllocationId,
    now: Instant,
) -> Option<&mut Allocation<S>> {
    let slot = slots.get_mut(id.index())?;
    if slot.generation != id.generation() {
        return None;
    }
    slot.allocation.as_mut().filter(|a| a.is_live(now))
}

/// Bytes before a peer's payload in a Data indication: header,
/// XOR-PEER-ADDRESS, and DATA's attribute header.
fn data_indication_prefix(peer: &SocketAddr) -> usize {
    let addr = if peer.is_ipv4() { 8 } else { 20 };
    turnpike_stun::HEADER_LEN + 4 + addr + 4
}

pub(super) fn error_label(code: ErrorCode) -> &'static str {
    match code.0 {
        300 => "300",
        400 => "400",
        401 => "401",
        403 => "403",
        420 => "420",
        437 => "437",
        438 => "438",
        440 => "440",
        441 => "441",
        442 => "442",
        443 => "443",
        446 => "446",
        447 => "447",
        486 => "486",
        508 => "508",
        _ => "other",
    }
}

//! The TURN server state machine of one shard (RFC 8656).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use turnpike_stun::attr::{AlgorithmList, TRANSPORT_UDP, TypeList};
use turnpike_stun::channel_data;
use turnpike_stun::nonce_cookie;
use turnpike_stun::{
    Attr, AttrType, Class, ErrorCode, Family, FirstByte, Integrity, Message, MessageType,
    MessageWriter, Method, PasswordAlgorithm, TransactionId,
};

use crate::allocation::{Allocation, Channel, Rebind};
use crate::auth::{AuthError, Verified};
use crate::policy::Denied;
use crate::ratelimit::RateLimiter;
use crate::shared::Shared;
use crate::{AllocationId, FiveTuple};

/// Bytes the runtime leaves free before a peer's payload, so the server
/// can wrap it in ChannelData (4 bytes) or a Data indication (at most 48)
/// without copying.
pub const PEER_HEADROOM: usize = 64;

/// Bytes the runtime leaves free after a peer's payload, for padding.
pub const PEER_TAILROOM: usize = 3;

/// The PASSWORD-ALGORITHMS this server offers, in order of preference:
/// SHA-256, then MD5 (RFC 8489 §14.12).
const OFFERED_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

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
        relayed: SocketAddr,
        lifetime: Duration,
    },
    AllocationEnded {
        id: AllocationId,
        username: Box<str>,
        tuple: FiveTuple,
        relayed: SocketAddr,
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
        let mut tid = TransactionId::default();
        self.rng.fill_bytes(&mut tid.0);
        let alloc = live_mut(&mut self.slots, id, now)?;
        if !alloc.permits(peer.ip(), now) {
            self.stats.peer_dropped += 1;
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

    // ---------------------------------------------------------------
    // Client messages
    // ---------------------------------------------------------------

    /// RFC 8656 §12.6: ChannelData on a bound channel goes to its peer;
    /// anything else is dropped silently.
    #[inline]
    fn channel_data<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        data: &'a [u8],
    ) -> Output<'a, R::Socket> {
        let Ok(cd) = channel_data::parse(data) else {
            self.stats.malformed += 1;
            return Output::None;
        };
        let Some(&id) = self.by_tuple.get(tuple) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        let Some(alloc) = live_mut(&mut self.slots, id, now) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        let Some(dest) = alloc.channel(cd.channel, now).map(|c| c.dest) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        let bytes = u64::try_from(cd.payload.len()).unwrap_or(u64::MAX);
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += bytes;
        self.stats.traffic.to_peer_packets += 1;
        self.stats.traffic.to_peer_bytes += bytes;
        Output::ToPeer {
            socket: &alloc.socket,
            peer: dest,
            data: cd.payload,
        }
    }

    fn stun<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'a>,
        out: &mut [u8],
    ) -> Output<'a, R::Socket> {
        match msg.class() {
            Class::Request => match self.request(now, tuple, msg, out) {
                Some(len) => Output::Reply(len),
                None => Output::None,
            },
            Class::Indication if msg.method() == Method::SEND => {
                self.send_indication(now, tuple, msg)
            }
            // Responses and other indications have no business here.
            _ => Output::None,
        }
    }

    /// RFC 8656 §11.2: a Send indication's data goes to its peer if a
    /// permission allows; indications are never answered.
    fn send_indication<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'a>,
    ) -> Output<'a, R::Socket> {
        let peer = match msg.get(AttrType::XOR_PEER_ADDRESS) {
            Some(Ok(Attr::XorPeerAddress(peer))) => peer,
            _ => return self.drop_client(),
        };
        let data = match msg.get(AttrType::DATA) {
            Some(Ok(Attr::Data(data))) => data,
            _ => return self.drop_client(),
        };
        if !msg.unknown_comprehension_required().is_empty() {
            return self.drop_client();
        }
        let Some(&id) = self.by_tuple.get(tuple) else {
            return self.drop_client();
        };
        let dest = self.as_bound(peer);
        let policy = &self.shared.config.policy;
        let Some(alloc) = live_mut(&mut self.slots, id, now) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        if Family::of(&peer) != Family::of(&alloc.relayed) || !alloc.permits(peer.ip(), now) {
            self.stats.client_dropped += 1;
            return Output::None;
        }
        if let Err(denied) = policy.check_port(peer, Some(alloc.relayed)) {
            self.stats.peer_denied.add(denied.as_str());
            return Output::None;
        }
        let bytes = u64::try_from(data.len()).unwrap_or(u64::MAX);
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += bytes;
        self.stats.traffic.to_peer_packets += 1;
        self.stats.traffic.to_peer_bytes += bytes;
        Output::ToPeer {
            socket: &alloc.socket,
            peer: dest,
            data,
        }
    }

    fn drop_client<'a>(&mut self) -> Output<'a, R::Socket> {
        self.stats.client_dropped += 1;
        Output::None
    }

    fn request(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Answer {
        let method = msg.method();
        if method == Method::BINDING {
            return self.binding(now, tuple, msg, out);
        }
        if !matches!(
            method,
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        ) {
            // Unknown methods, and RFC 6062's while TCP relaying is off.
            return self.unauthenticated_error(now, tuple, msg, out, ErrorCode::BAD_REQUEST);
        }
        let auth = match self.authenticate(now, tuple, msg, out) {
            Ok(auth) => auth,
            Err(answer) => return answer,
        };
        if !msg.unknown_comprehension_required().is_empty() {
            let unknown = msg.unknown_comprehension_required();
            return self.unknown_attributes(msg, out, unknown, Some(&auth));
        }
        let result = match method {
            Method::ALLOCATE => self.allocate(now, tuple, msg, &auth, out),
            Method::REFRESH => self.refresh(now, tuple, msg, &auth, out),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, &auth, out),
            _ => self.channel_bind(now, tuple, msg, &auth, out),
        };
        match result {
            Ok(len) => Some(len),
            Err(code) => self.error(msg, out, code, Some(&auth), |_| Ok(())),
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

    /// RFC 8489 §9.2.4, in its order.
    fn authenticate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<Verified, Answer> {
        if !msg.has_integrity() {
            self.stats.auth_failures.add("challenge");
            return Err(self.challenge(now, tuple, msg, out, ErrorCode::UNAUTHENTICATED));
        }
        let username = match (msg.get(AttrType::USERNAME), msg.get(AttrType::USERHASH)) {
            (Some(Ok(Attr::Username(u))), _) => Some(u),
            (None, Some(Ok(Attr::Userhash(hash)))) => {
                match self.shared.credentials.user_for_hash(hash) {
                    Ok(u) => Some(u),
                    Err(e) => return Err(self.reject(now, tuple, msg, out, e)),
                }
            }
            _ => None,
        };
        let nonce = match msg.get(AttrType::NONCE) {
            Some(Ok(Attr::Nonce(n))) => Some(n),
            _ => None,
        };
        let has_realm = matches!(msg.get(AttrType::REALM), Some(Ok(Attr::Realm(_))));
        let (Some(username), Some(nonce), true) = (username, nonce, has_realm) else {
            self.stats.auth_failures.add("bad_request");
            return Err(self.unauthenticated_error(now, tuple, msg, out, ErrorCode::BAD_REQUEST));
        };
        let algorithm = match self.password_algorithm(msg, nonce) {
            Ok(alg) => alg,
            Err(()) => {
                self.stats.auth_failures.add("bad_request");
                return Err(self.unauthenticated_error(
                    now,
                    tuple,
                    msg,
                    out,
                    ErrorCode::BAD_REQUEST,
                ));
            }
        };
        let verified =
            match self
                .shared
                .credentials
                .verify(msg, username, algorithm, self.unix_now(now))
            {
                Ok(v) => v,
                Err(e) => return Err(self.reject(now, tuple, msg, out, e)),
            };
        if !self.shared.nonces.is_valid(nonce, now, tuple) {
            self.stats.auth_failures.add("stale_nonce");
            // RFC 8489 §9.2.4 allows signing a 438 with the key just
            // verified, which spares the client a blind retry.
            let nonce = self.shared.nonces.issue(now, tuple);
            let realm = self.shared.config.realm.clone();
            return Err(
                self.error(msg, out, ErrorCode::STALE_NONCE, Some(&verified), |w| {
                    w.add(&Attr::Realm(&realm))?;
                    w.add(&Attr::Nonce(nonce.as_str()))?;
                    w.add(&Attr::PasswordAlgorithms(
                        AlgorithmList::new(&OFFERED_ALGORITHMS)
                            .map_err(|_| turnpike_stun::EncodeError::InvalidValue)?,
                    ))
                }),
            );
        }
        Ok(verified)
    }

    /// The password algorithm a request uses (RFC 8489 §9.2.4, the checks
    /// for a nonce whose cookie has the "Password algorithms" bit).
    fn password_algorithm(&self, msg: &Message<'_>, nonce: &str) -> Result<PasswordAlgorithm, ()> {
        let algorithms = msg.get(AttrType::PASSWORD_ALGORITHMS);
        let algorithm = msg.get(AttrType::PASSWORD_ALGORITHM);
        let cookie = nonce_cookie::parse(nonce).unwrap_or_default();
        if !cookie.password_algorithms || (algorithms.is_none() && algorithm.is_none()) {
            return Ok(PasswordAlgorithm::MD5);
        }
        match (algorithms, algorithm) {
            (Some(Ok(Attr::PasswordAlgorithms(list))), Some(Ok(Attr::PasswordAlgorithm(alg))))
                if list.as_bytes() == OFFERED_ALGORITHMS && list.iter().any(|a| a == alg) =>
            {
                Ok(alg)
            }
            _ => Err(()),
        }
    }

    fn reject(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        e: AuthError,
    ) -> Answer {
        self.stats.auth_failures.add(e.as_str());
        self.challenge(now, tuple, msg, out, ErrorCode::UNAUTHENTICATED)
    }

    /// An unsigned 401 (or 438) with a fresh nonce, the realm and the
    /// password algorithms on offer.
    fn challenge(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        code: ErrorCode,
    ) -> Answer {
        if !self.limiter.allow(tuple.client.ip(), now) {
            self.stats.rate_limited += 1;
            return None;
        }
        let nonce = self.shared.nonces.issue(now, tuple);
        let realm = self.shared.config.realm.clone();
        self.error(msg, out, code, None, |w| {
            w.add(&Attr::Realm(&realm))?;
            w.add(&Attr::Nonce(nonce.as_str()))?;
            w.add(&Attr::PasswordAlgorithms(
                AlgorithmList::new(&OFFERED_ALGORITHMS)
                    .map_err(|_| turnpike_stun::EncodeError::InvalidValue)?,
            ))
        })
    }

    fn unauthenticated_error(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        code: ErrorCode,
    ) -> Answer {
        if !self.limiter.allow(tuple.client.ip(), now) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.error(msg, out, code, None, |_| Ok(()))
    }

    fn unknown_attributes(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        unknown: &[u16],
        auth: Option<&Verified>,
    ) -> Answer {
        let mut wire = [0u8; 32];
        let mut len = 0;
        for (chunk, typ) in wire.chunks_exact_mut(2).zip(unknown) {
            chunk.copy_from_slice(&typ.to_be_bytes());
            len += 2;
        }
        let list = TypeList::new(wire.get(..len).unwrap_or(&[])).ok()?;
        self.error(msg, out, ErrorCode::UNKNOWN_ATTRIBUTE, auth, |w| {
            w.add(&Attr::UnknownAttributes(list))
        })
    }

    // ---------------------------------------------------------------
    // TURN methods (RFC 8656 §7–§12). Each returns the answer's length,
    // or the error code to answer with.
    // ---------------------------------------------------------------

    fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        if let Some(&id) = self.by_tuple.get(tuple) {
            // RFC 8656 §7.2: a retransmitted Allocate gets the same success;
            // anything else on a 5-tuple in use is a mismatch.
            let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
            if alloc.transaction != msg.transaction_id() || *alloc.username != *auth.username {
                return Err(ErrorCode::ALLOCATION_MISMATCH);
            }
            let remaining = alloc.expires.saturating_duration_since(now);
            let (relayed, token) = (alloc.relayed, alloc.reservation_token);
            return self.allocate_success(msg, out, auth, tuple, relayed, remaining, token, None);
        }

        match msg.get(AttrType::REQUESTED_TRANSPORT) {
            Some(Ok(Attr::RequestedTransport(TRANSPORT_UDP))) => {}
            Some(Ok(Attr::RequestedTransport(_))) => {
                return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL);
            }
            _ => return Err(ErrorCode::BAD_REQUEST),
        }
        let dont_fragment = msg.raw(AttrType::DONT_FRAGMENT).is_some();
        let even_port = match msg.get(AttrType::EVEN_PORT) {
            None => None,
            Some(Ok(Attr::EvenPort { reserve_next })) => Some(reserve_next),
            Some(_) => return Err(ErrorCode::BAD_REQUEST),
        };
        let token = match msg.get(AttrType::RESERVATION_TOKEN) {
            None => None,
            Some(Ok(Attr::ReservationToken(t))) => Some(*t),
            Some(_) => return Err(ErrorCode::BAD_REQUEST),
        };
        let requested_family = match msg.get(AttrType::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(Attr::RequestedAddressFamily(f))) => Some(f),
            Some(_) => return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
        };
        let additional = match msg.get(AttrType::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some(Ok(Attr::AdditionalAddressFamily(Family::V6))) => true,
            Some(_) => return Err(ErrorCode::BAD_REQUEST),
        };
        // RFC 8656 §7.2: these combinations make no sense.
        if (token.is_some() && (even_port.is_some() || requested_family.is_some()))
            || (additional && requested_family.is_some())
        {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let family = requested_family.unwrap_or(Family::V4);
        let lifetime = self.allocation_lifetime(msg);

        self.shared.acquire(&auth.username)?;
        let index = self.free.pop().map_or(self.slots.len(), |i| i as usize);
        let generation = self.slots.get(index).map_or(0, |s| s.generation);
        let id = AllocationId::new(
            u32::try_from(index).map_err(|_| ErrorCode::INSUFFICIENT_CAPACITY)?,
            generation,
        );
        let bound = match token {
            Some(token) => self.claim_reservation(id, &token, now),
            None => self
                .relays
                .bind(&BindRequest {
                    id,
                    family,
                    even_port: even_port.is_some(),
                    reserve_next: even_port == Some(true),
                    dont_fragment,
                })
                .map_err(|e| match e {
                    BindError::FamilyNotSupported => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                    BindError::NoPorts | BindError::Failed => ErrorCode::INSUFFICIENT_CAPACITY,
                }),
        };
        let bound = match bound {
            Ok(bound) => bound,
            Err(code) => {
                self.shared.release(&auth.username);
                if index < self.slots.len() {
                    self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
                }
                return Err(code);
            }
        };
        let reservation_token = bound.reserved.and_then(|(handle, addr)| {
            self.shared
                .reserve(handle, addr, now + self.shared.config.lifetimes.reservation)
        });
        let relayed = self.as_advertised(bound.addr);
        let alloc = Allocation::new(
            *tuple,
            auth.username.clone(),
            msg.transaction_id(),
            bound.socket,
            relayed,
            reservation_token,
            now,
            lifetime,
        );
        match self.slots.get_mut(index) {
            Some(slot) => slot.allocation = Some(alloc),
            None => self.slots.push(Slot {
                generation,
                allocation: Some(alloc),
            }),
        }
        self.by_tuple.insert(*tuple, id);
        let expires = now + lifetime;
        self.next_timeout = Some(self.next_timeout.map_or(expires, |t| t.min(expires)));
        self.events.push_back(Event::AllocationCreated {
            id,
            username: auth.username.clone(),
            tuple: *tuple,
            relayed,
            lifetime,
        });
        // Without IPv6 relays, the second family of a dual allocation is
        // refused in the success response (RFC 8656 §7.2, §18.12).
        let refused_v6 = additional.then_some(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
        self.allocate_success(
            msg,
            out,
            auth,
            tuple,
            relayed,
            lifetime,
            reservation_token,
            refused_v6,
        )
    }

    fn claim_reservation(
        &mut self,
        id: AllocationId,
        token: &[u8; 8],
        now: Instant,
    ) -> Result<Bound<R::Socket, R::Reserved>, ErrorCode> {
        // RFC 8656 §7.2: an unknown or expired token is 508.
        let (handle, addr) = self
            .shared
            .claim(token, now)
            .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)?;
        let socket = self
            .relays
            .adopt(id, handle)
            .map_err(|_| ErrorCode::INSUFFICIENT_CAPACITY)?;
        Ok(Bound {
            socket,
            addr,
            reserved: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_success(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        auth: &Verified,
        tuple: &FiveTuple,
        relayed: SocketAddr,
        lifetime: Duration,
        token: Option<[u8; 8]>,
        refused_v6: Option<ErrorCode>,
    ) -> Result<usize, ErrorCode> {
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.respond(msg, out, msg.typ().success(), Some(auth), |w| {
            w.add(&Attr::XorRelayedAddress(relayed))?;
            w.add(&Attr::Lifetime(seconds))?;
            if let Some(token) = &token {
                w.add(&Attr::ReservationToken(token))?;
            }
            if let Some(code) = refused_v6 {
                w.add(&Attr::AddressErrorCode {
                    family: Family::V6,
                    code,
                    reason: code.reason(),
                })?;
            }
            w.add(&Attr::XorMappedAddress(tuple.client))
        })
        .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// RFC 8656 §7.2: min(requested, max), but never less than the default.
    fn allocation_lifetime(&self, msg: &Message<'_>) -> Duration {
        let l = &self.shared.config.lifetimes;
        match msg.get(AttrType::LIFETIME) {
            Some(Ok(Attr::Lifetime(s))) => Duration::from_secs(u64::from(s))
                .min(l.allocation_max)
                .max(l.allocation_default),
            _ => l.allocation_default,
        }
    }

    /// RFC 8656 §7.3.
    fn refresh(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        let lifetimes = self.shared.config.lifetimes;
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if let Some(Ok(Attr::RequestedAddressFamily(f))) =
            msg.get(AttrType::REQUESTED_ADDRESS_FAMILY)
            && f != Family::of(&alloc.relayed)
        {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        let lifetime = match msg.get(AttrType::LIFETIME) {
            Some(Ok(Attr::Lifetime(s))) => {
                Duration::from_secs(u64::from(s)).min(lifetimes.allocation_max)
            }
            _ => lifetimes.allocation_default,
        };
        if lifetime.is_zero() {
            self.remove(id, now, EndReason::Deleted);
        } else {
            alloc.expires = now + lifetime;
        }
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.respond(msg, out, msg.typ().success(), Some(auth), |w| {
            w.add(&Attr::Lifetime(seconds))
        })
        .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// RFC 8656 §10.2: all peers pass, or nothing is installed.
    fn create_permission(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        let mut peers = [None; 16];
        let mut count = 0usize;
        for attr in msg.get_all(AttrType::XOR_PEER_ADDRESS) {
            let Ok(Attr::XorPeerAddress(peer)) = attr else {
                return Err(ErrorCode::BAD_REQUEST);
            };
            let slot = peers
                .get_mut(count)
                .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)?;
            *slot = Some(peer);
            count += 1;
        }
        if count == 0 {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let peers = peers.iter().flatten().copied();
        let limit = self.shared.config.limits.permissions_per_allocation;
        let permission = self.shared.config.lifetimes.permission;
        let relayed = live(&self.slots, id, now)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?
            .relayed;
        for peer in peers.clone() {
            self.admit(relayed, peer)?;
        }
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let new = peers
            .clone()
            .filter(|p| !alloc.permits(p.ip(), now))
            .count();
        if alloc.permission_count(now) + new > limit {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        for peer in peers {
            alloc.permit(peer.ip(), now + permission);
        }
        self.note_deadline(now + permission);
        self.respond(msg, out, msg.typ().success(), Some(auth), |_| Ok(()))
            .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// RFC 8656 §11.2.
    fn channel_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        let number = match msg.get(AttrType::CHANNEL_NUMBER) {
            Some(Ok(Attr::ChannelNumber(n))) if channel_data::is_valid_channel(n) => n,
            _ => return Err(ErrorCode::BAD_REQUEST),
        };
        let peer = match msg.get(AttrType::XOR_PEER_ADDRESS) {
            Some(Ok(Attr::XorPeerAddress(p))) => p,
            _ => return Err(ErrorCode::BAD_REQUEST),
        };
        let lifetimes = self.shared.config.lifetimes;
        let limit = self.shared.config.limits.channels_per_allocation;
        let dest = self.as_bound(peer);
        let relayed = live(&self.slots, id, now)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?
            .relayed;
        self.admit(relayed, peer)?;
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let rebind = alloc
            .may_bind(number, peer, now)
            .map_err(|()| ErrorCode::BAD_REQUEST)?;
        if rebind == Rebind::New && alloc.channel_count(now) >= limit {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let permission_limit = self.shared.config.limits.permissions_per_allocation;
        if !alloc.permits(peer.ip(), now) && alloc.permission_count(now) >= permission_limit {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let expires = now + lifetimes.channel;
        alloc.bind_channel(
            number,
            Channel {
                peer,
                dest,
                expires,
                released: expires + lifetimes.channel_quarantine,
            },
        );
        alloc.permit(peer.ip(), now + lifetimes.permission);
        self.note_deadline(now + lifetimes.permission);
        self.respond(msg, out, msg.typ().success(), Some(auth), |_| Ok(()))
            .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// The allocation of `tuple`, which `auth` must own (RFC 8656 §5:
    /// 437 without one, 441 for another user's).
    fn owned(
        &self,
        now: Instant,
        tuple: &FiveTuple,
        auth: &Verified,
    ) -> Result<AllocationId, ErrorCode> {
        let id = *self
            .by_tuple
            .get(tuple)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if *alloc.username != *auth.username {
            return Err(ErrorCode::WRONG_CREDENTIALS);
        }
        Ok(id)
    }

    /// The family and policy checks for a peer (RFC 8656 §9.1, §10).
    fn admit(&mut self, relayed: SocketAddr, peer: SocketAddr) -> Result<(), ErrorCode> {
        if Family::of(&peer) != Family::of(&relayed) {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        self.shared
            .config
            .policy
            .check(peer, Some(relayed))
            .map_err(|denied: Denied| {
                self.stats.peer_denied.add(denied.as_str());
                ErrorCode::FORBIDDEN
            })
    }

    fn note_deadline(&mut self, at: Instant) {
        self.next_timeout = Some(self.next_timeout.map_or(at, |t| t.min(at)));
    }

    // ---------------------------------------------------------------
    // Answers
    // ---------------------------------------------------------------

    fn error(
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
        if let Some(software) = &self.shared.config.software {
            w.add(&Attr::Software(software)).ok()?;
        }
        if let Some(auth) = auth {
            match auth.integrity {
                Integrity::Sha1 => w.message_integrity(auth.key.as_bytes()).ok()?,
                Integrity::Sha256 => w.message_integrity_sha256(auth.key.as_bytes()).ok()?,
            }
        }
        if msg.has_fingerprint() {
            w.fingerprint().ok()?;
        }
        Some(w.finish())
    }

    // ---------------------------------------------------------------
    // Bookkeeping
    // ---------------------------------------------------------------

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
        self.shared.release(&alloc.username);
        self.events.push_back(Event::AllocationEnded {
            id,
            username: alloc.username,
            tuple: alloc.tuple,
            relayed: alloc.relayed,
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

fn error_label(code: ErrorCode) -> &'static str {
    match code.0 {
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
        486 => "486",
        508 => "508",
        _ => "other",
    }
}

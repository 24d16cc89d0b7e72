//! The responder's serving loops: UDP (probe requests and STUN Binding,
//! `later` replies, trains) and TCP (echo and stamp).
//!
//! Everything runs on the responder's own current-thread runtime. The
//! books (rate limiter, budgets, sessions, pending replies, trains) are
//! behind one mutex that is never held across an await.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use turnpike_probe as wire;
use turnpike_turn::ratelimit::RateLimiter;

use super::binding::{self, Answer, Layout};
use super::books::{Budgets, Cookies, Laters, Sessions};
use crate::stream::OpenConnections;
use crate::sys;

/// TCP probe connections open at once, in all.
const TCP_CONNECTIONS: usize = 256;
/// TCP probe connections open at once from one source (an IPv4 address
/// or an IPv6 /64).
const TCP_CONNECTIONS_PER_SOURCE: usize = 8;
/// How long a TCP probe connection may stay silent.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// How long the responder waits after a failed receive or accept (a full
/// descriptor table, say) before it tries again.
const BACKOFF: Duration = Duration::from_millis(50);
/// The longest `later` delay.
pub(crate) const MAX_LATER_MS: u32 = 600_000;
/// Trains running at once, in all.
pub(crate) const MAX_TRAINS: usize = 8;
/// Trains running at once to one source IP (from different ports): one
/// host cannot take every place.
pub(crate) const MAX_TRAINS_PER_IP: usize = 2;
/// The most bytes one train may carry.
pub(crate) const MAX_TRAIN_BYTES: u64 = 8_000_000;
/// The longest a train may last: it holds one of [`MAX_TRAINS`] places.
pub(crate) const MAX_TRAIN_DURATION: Duration = Duration::from_secs(60);
/// How often a train's due packets are sent.
const TRAIN_TICK: Duration = Duration::from_millis(1);

/// Why a request went unanswered, or what became of it: the label values
/// of `turnpike_probe_requests_total{outcome=...}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// Answered at once (echo, stamp; the stamp that acknowledges a train).
    Answered,
    /// A `later` reply scheduled.
    Later,
    /// A train started.
    Train,
    /// A STUN Binding request answered.
    Stun,
    /// Over the per-source rate limit (unvalidated requests and STUN).
    RateLimited,
    /// Not a probe or STUN request, or one that breaks the rules.
    Malformed,
    /// A `later` or train without a valid cookie.
    Unvalidated,
    /// Over the byte budget of a validated source.
    OverBudget,
    /// Too many `later` replies pending (per source or in all).
    TooManyLaters,
    /// Too many trains running.
    TooManyTrains,
    /// A train longer or faster than allowed.
    TrainTooLarge,
    /// A `later` or train over TCP.
    NotOverTcp,
}

impl Outcome {
    pub(crate) const ALL: [Self; 12] = [
        Self::Answered,
        Self::Later,
        Self::Train,
        Self::Stun,
        Self::RateLimited,
        Self::Malformed,
        Self::Unvalidated,
        Self::OverBudget,
        Self::TooManyLaters,
        Self::TooManyTrains,
        Self::TrainTooLarge,
        Self::NotOverTcp,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Later => "later",
            Self::Train => "train",
            Self::Stun => "stun",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
            Self::Unvalidated => "unvalidated",
            Self::OverBudget => "over_budget",
            Self::TooManyLaters => "too_many_laters",
            Self::TooManyTrains => "too_many_trains",
            Self::TrainTooLarge => "train_too_large",
            Self::NotOverTcp => "not_over_tcp",
        }
    }
}

/// What became of a scheduled packet (a `later` reply, a train packet):
/// the label values of `turnpike_probe_sent_total{outcome=...}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sent {
    Out,
    OverBudget,
    Failed,
}

impl Sent {
    pub(crate) const ALL: [Self; 3] = [Self::Out, Self::OverBudget, Self::Failed];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Out => "sent",
            Self::OverBudget => "over_budget",
            Self::Failed => "failed",
        }
    }
}

/// What the responder did, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: [AtomicU64; Outcome::ALL.len()],
    later: [AtomicU64; Sent::ALL.len()],
    train: [AtomicU64; Sent::ALL.len()],
}

impl Counters {
    fn add(&self, outcome: Outcome) {
        if let Some(c) = self.requests.get(outcome as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sent(counters: &[AtomicU64], what: Sent) {
        if let Some(c) = counters.get(what as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn load<T: Copy>(
        counters: &[AtomicU64],
        all: &[T],
        label: fn(T) -> &'static str,
    ) -> Vec<(&'static str, u64)> {
        all.iter()
            .zip(counters)
            .map(|(o, c)| (label(*o), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests by outcome.
    pub(crate) fn requests(&self) -> Vec<(&'static str, u64)> {
        Self::load(&self.requests, &Outcome::ALL, Outcome::label)
    }

    /// `later` replies by what became of them.
    pub(crate) fn later(&self) -> Vec<(&'static str, u64)> {
        Self::load(&self.later, &Sent::ALL, Sent::label)
    }

    /// Train packets by what became of them.
    pub(crate) fn train(&self) -> Vec<(&'static str, u64)> {
        Self::load(&self.train, &Sent::ALL, Sent::label)
    }
}

/// The limits the responder serves with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) replies_per_second: u32,
    pub(crate) max_kbps_per_source: u32,
}

struct Books {
    limiter: RateLimiter,
    budgets: Budgets,
    sessions: Sessions,
    laters: Laters,
    /// Running trains by destination: an id and the task.
    trains: HashMap<SocketAddr, (u64, AbortHandle)>,
    next_train: u64,
}

/// What every serving task shares.
pub(crate) struct Shared {
    books: Mutex<Books>,
    cookies: Cookies,
    counters: Arc<Counters>,
    /// Every UDP socket, with its address.
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    layout: Layout,
    /// The fastest train, in bits per second.
    max_train_bps: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("sockets", &self.sockets.len())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
        layout: Layout,
        limits: Limits,
        counters: Arc<Counters>,
        seed: u64,
        key: [u8; 32],
    ) -> Self {
        let books = Books {
            limiter: RateLimiter::new(
                limits.replies_per_second,
                limits.replies_per_second,
                Instant::now(),
                seed,
            ),
            budgets: Budgets::new(limits.max_kbps_per_source),
            sessions: Sessions::default(),
            laters: Laters::default(),
            trains: HashMap::new(),
            next_train: 0,
        };
        Self {
            books: Mutex::new(books),
            cookies: Cookies::new(key),
            counters,
            sockets,
            layout,
            max_train_bps: u64::from(limits.max_kbps_per_source) * 1000,
        }
    }

    fn books(&self) -> Option<MutexGuard<'_, Books>> {
        self.books.lock().ok()
    }

    fn socket_at(&self, addr: SocketAddr) -> Option<&Arc<UdpSocket>> {
        self.sockets
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, s)| s)
    }

    /// The per-source rate limit of unvalidated requests and STUN.
    fn allowed(&self, ip: IpAddr) -> bool {
        self.books()
            .is_some_and(|mut b| b.limiter.allow(ip, Instant::now()))
    }

    /// Takes `len` bytes from a validated source's budget.
    fn spend(&self, ip: IpAddr, len: usize) -> bool {
        self.books()
            .is_some_and(|mut b| b.budgets.spend(ip, len, Instant::now()))
    }
}

/// Nanoseconds since the Unix epoch, now.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The TOS byte (or traffic class) for a DSCP, ECN bits 0.
fn tos_of(dscp: Option<u8>) -> Option<u8> {
    dscp.map(|d| (d & 0x3F) << 2)
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr, tos: Option<u8>) -> bool {
    socket
        .async_io(Interest::WRITABLE, || {
            sys::send_with_tos(socket, bytes, to, tos)
        })
        .await
        .is_ok()
}

/// Serves the UDP socket `index` of `shared.sockets`.
pub(crate) async fn serve_udp(shared: Arc<Shared>, index: usize) {
    let Some((local, socket)) = shared.sockets.get(index).cloned() else {
        return;
    };
    // One byte more than a message may have, to see a longer one.
    let mut buf = [0u8; wire::MAX_LEN + 1];
    let mut out = [0u8; wire::MAX_LEN];
    loop {
        let got = match socket
            .async_io(Interest::READABLE, || {
                sys::recv_with_tos(&*socket, &mut buf)
            })
            .await
        {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let received = now_ns();
        let Some(bytes) = buf.get(..got.len).filter(|_| !got.truncated) else {
            shared.counters.add(Outcome::Malformed);
            continue;
        };
        if wire::is_probe(bytes) {
            probe_udp(
                &shared, &socket, bytes, got.from, got.tos, received, &mut out,
            )
            .await;
        } else {
            stun_udp(&shared, local, &socket, bytes, got.from, &mut out).await;
        }
    }
}

async fn stun_udp(
    shared: &Shared,
    local: SocketAddr,
    socket: &Arc<UdpSocket>,
    bytes: &[u8],
    from: SocketAddr,
    out: &mut [u8],
) {
    let answer = match binding::answer(bytes, from, local, &shared.layout, out) {
        Ok(a) => a,
        Err(_) => {
            shared.counters.add(Outcome::Malformed);
            return;
        }
    };
    let Answer::Send { from: origin, len } = answer else {
        return;
    };
    if !shared.allowed(from.ip()) {
        shared.counters.add(Outcome::RateLimited);
        return;
    }
    let sender = if origin == local {
        Some(socket)
    } else {
        shared.socket_at(origin)
    };
    if let (Some(sender), Some(reply)) = (sender, out.get(..len)) {
        // Counted first: whoever sees the answer sees it counted.
        shared.counters.add(Outcome::Stun);
        send(sender, reply, from, None).await;
    }
}

/// A request that has passed the checks, with its reply.
struct Accepted {
    request: wire::Request,
    reply: wire::Reply,
    validated: bool,
}

/// Parses and checks a request from `from`, counts it in its session,
/// and builds its reply; `Err` says why it is dropped.
fn accept(
    shared: &Shared,
    bytes: &[u8],
    from: SocketAddr,
    dscp: Option<u8>,
    received_ns: u64,
    over_tcp: bool,
) -> Result<Accepted, Outcome> {
    let request = wire::parse_request(bytes).map_err(|_| Outcome::Malformed)?;
    let len = u16::try_from(bytes.len()).map_err(|_| Outcome::Malformed)?;
    let unix_s = received_ns / 1_000_000_000;
    let ip = from.ip();
    let (cookie, validated) = shared.cookies.check(ip, request.cookie, unix_s);
    match request.kind {
        wire::Kind::Later { .. } | wire::Kind::Train(_) if over_tcp => {
            return Err(Outcome::NotOverTcp);
        }
        wire::Kind::Later { delay_ms } if delay_ms > MAX_LATER_MS => {
            return Err(Outcome::Malformed);
        }
        wire::Kind::Later { .. } | wire::Kind::Train(_) if !validated => {
            return Err(Outcome::Unvalidated);
        }
        _ => {}
    }
    if !validated && !shared.allowed(ip) {
        return Err(Outcome::RateLimited);
    }
    let counted = if validated && request.session != 0 {
        shared.books().map_or(0, |mut b| {
            b.sessions
                .count(from, request.session, request.tally, Instant::now())
        })
    } else {
        0
    };
    let mut reply = wire::Reply::to(&request, len, from, received_ns);
    reply.dscp = dscp;
    reply.counted = counted;
    reply.cookie = cookie;
    Ok(Accepted {
        request,
        reply,
        validated,
    })
}

async fn probe_udp(
    shared: &Arc<Shared>,
    socket: &Arc<UdpSocket>,
    bytes: &[u8],
    from: SocketAddr,
    tos: Option<u8>,
    received_ns: u64,
    out: &mut [u8],
) {
    let dscp = tos.map(|t| t >> 2);
    let accepted = match accept(shared, bytes, from, dscp, received_ns, false) {
        Ok(a) => a,
        Err(outcome) => {
            shared.counters.add(outcome);
            return;
        }
    };
    let Accepted {
        request,
        reply,
        validated,
    } = accepted;
    let reply_tos = tos_of(request.reply_dscp);
    match request.kind {
        wire::Kind::Echo | wire::Kind::Stamp => {
            if validated && !shared.spend(from.ip(), reply.len()) {
                shared.counters.add(Outcome::OverBudget);
                return;
            }
            let Ok(n) = wire::encode_reply(&reply, out) else {
                shared.counters.add(Outcome::Malformed);
                return;
            };
            if let Some(bytes) = out.get(..n) {
                // Counted first: whoever sees the answer sees it counted.
                shared.counters.add(Outcome::Answered);
                send(socket, bytes, from, reply_tos).await;
            }
        }
        wire::Kind::Later { delay_ms } => {
            let placed = shared.books().map(|mut b| b.laters.add(from.ip()));
            if !matches!(placed, Some(Ok(()))) {
                shared.counters.add(Outcome::TooManyLaters);
                return;
            }
            shared.counters.add(Outcome::Later);
            let shared = Arc::clone(shared);
            let socket = Arc::clone(socket);
            tokio::spawn(async move {
                let place = LaterPlace {
                    shared: &shared,
                    ip: from.ip(),
                };
                tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
                let mut out = [0u8; wire::REPLY_HEADER_V6_LEN];
                let what = if !shared.spend(from.ip(), reply.len()) {
                    Sent::OverBudget
                } else {
                    match wire::encode_reply(&reply, &mut out) {
                        Ok(n) => match out.get(..n) {
                            Some(bytes) if send(&socket, bytes, from, reply_tos).await => Sent::Out,
                            _ => Sent::Failed,
                        },
                        Err(_) => Sent::Failed,
                    }
                };
                Counters::sent(&shared.counters.later, what);
                drop(place);
            });
        }
        wire::Kind::Train(train) => {
            let lasts_us =
                u128::from(train.packets.saturating_sub(1)) * u128::from(train.interval_us);
            if train.bytes() > MAX_TRAIN_BYTES
                || train.bits_per_second() > shared.max_train_bps
                || lasts_us > MAX_TRAIN_DURATION.as_micros()
            {
                shared.counters.add(Outcome::TrainTooLarge);
                return;
            }
            start_train(shared, socket, request, train, reply, from, out).await;
        }
    }
}

/// Gives a `later` reply's place back when its task ends, however it
/// ends.
struct LaterPlace<'a> {
    shared: &'a Shared,
    ip: IpAddr,
}

impl Drop for LaterPlace<'_> {
    fn drop(&mut self) {
        if let Some(mut b) = self.shared.books() {
            b.laters.done(self.ip);
        }
    }
}

async fn start_train(
    shared: &Arc<Shared>,
    socket: &Arc<UdpSocket>,
    request: wire::Request,
    train: wire::Train,
    ack: wire::Reply,
    to: SocketAddr,
    out: &mut [u8],
) {
    let id = {
        let Some(mut books) = shared.books() else {
            return;
        };
        if let Some((_, running)) = books.trains.remove(&to) {
            // A new train from the same source replaces the running one.
            running.abort();
        } else if books.trains.len() >= MAX_TRAINS
            || books.trains.keys().filter(|a| a.ip() == to.ip()).count() >= MAX_TRAINS_PER_IP
        {
            drop(books);
            shared.counters.add(Outcome::TooManyTrains);
            return;
        }
        books.next_train = books.next_train.wrapping_add(1);
        books.next_train
    };
    shared.counters.add(Outcome::Train);
    // The acknowledgement: a stamp reply, with the count and the cookie.
    if shared.spend(to.ip(), ack.len())
        && let Ok(n) = wire::encode_reply(&ack, out)
        && let Some(bytes) = out.get(..n)
    {
        let _ = send(socket, bytes, to, tos_of(request.reply_dscp)).await;
    }
    let task = {
        let shared = Arc::clone(shared);
        let socket = Arc::clone(socket);
        tokio::spawn(async move {
            run_train(&shared, &socket, &request, &train, ack.request_len, to).await;
            if let Some(mut books) = shared.books()
                && books.trains.get(&to).is_some_and(|(i, _)| *i == id)
            {
                books.trains.remove(&to);
            }
        })
    };
    if let Some(mut books) = shared.books() {
        books.trains.insert(to, (id, task.abort_handle()));
    }
}

/// Sends a train, every packet when it is due, checked at each tick.
async fn run_train(
    shared: &Shared,
    socket: &UdpSocket,
    request: &wire::Request,
    train: &wire::Train,
    request_len: u16,
    to: SocketAddr,
) {
    let tos = tos_of(request.reply_dscp);
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(TRAIN_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = [0u8; wire::MAX_LEN];
    let interval = u128::from(train.interval_us.max(1));
    let mut next = 0u32;
    while next < train.packets {
        ticks.tick().await;
        let elapsed = start.elapsed().as_micros();
        let due = u32::try_from(elapsed / interval)
            .unwrap_or(u32::MAX)
            .saturating_add(1)
            .min(train.packets);
        while next < due {
            let packet = wire::Reply::train_packet(request, train, request_len, to, next, now_ns());
            next += 1;
            if !shared.spend(to.ip(), packet.len()) {
                Counters::sent(&shared.counters.train, Sent::OverBudget);
                continue;
            }
            let what = match wire::encode_reply(&packet, &mut out) {
                Ok(n) => match out.get(..n) {
                    Some(bytes) if send(socket, bytes, to, tos).await => Sent::Out,
                    _ => Sent::Failed,
                },
                Err(_) => Sent::Failed,
            };
            Counters::sent(&shared.counters.train, what);
        }
    }
}

pub(crate) async fn accept_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(OpenConnections::default());
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        // Over the caps the connection is closed at once.
        let Ok(place) = OpenConnections::admit(
            &open,
            from.ip(),
            TCP_CONNECTIONS,
            TCP_CONNECTIONS_PER_SOURCE,
        ) else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _place = place;
            let _ = serve_tcp(stream, from, &shared).await;
        });
    }
}

/// Answers length-prefixed requests until the client closes, stays
/// silent for [`TCP_IDLE`], or announces a message longer than allowed.
/// A malformed request goes unanswered; the next one is read as usual.
async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    from: SocketAddr,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = [0u8; wire::MAX_LEN];
    let mut out = [0u8; wire::FRAME_HEADER_LEN + wire::MAX_LEN];
    let idle = || io::Error::from(io::ErrorKind::TimedOut);
    loop {
        let mut head = [0u8; wire::FRAME_HEADER_LEN];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut head))
            .await
            .map_err(|_| idle())??;
        let len = wire::frame_len(head).map_err(io::Error::other)?;
        let request = buf
            .get_mut(..len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        tokio::time::timeout(TCP_IDLE, stream.read_exact(request))
            .await
            .map_err(|_| idle())??;
        let received = now_ns();
        let accepted = match accept(shared, request, from, None, received, true) {
            Ok(a) => a,
            Err(outcome) => {
                shared.counters.add(outcome);
                continue;
            }
        };
        if accepted.validated && !shared.spend(from.ip(), accepted.reply.len()) {
            shared.counters.add(Outcome::OverBudget);
            continue;
        }
        let (header, body) = out.split_at_mut(wire::FRAME_HEADER_LEN);
        let Ok(reply) = wire::encode_reply(&accepted.reply, body) else {
            shared.counters.add(Outcome::Malformed);
            continue;
        };
        header.copy_from_slice(&wire::frame_header(reply).map_err(io::Error::other)?);
        let frame = out
            .get(..wire::FRAME_HEADER_LEN + reply)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        shared.counters.add(Outcome::Answered);
        stream.write_all(frame).await?;
    }
}

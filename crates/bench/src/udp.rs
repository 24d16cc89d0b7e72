//! The UDP generator: one thread owns a share of the allocations, their
//! client socket(s) and an echo peer, and drives them all from one epoll
//! loop: transactions (with retransmission), the paced ChannelData
//! schedule, the echo, refreshes, and the deletions at the end.
//!
//! With the server on IPv4 loopback, the thread's allocations share one
//! wildcard socket, each with its own source address in 127.0.0.0/8
//! (IP_PKTINFO), so that every send and receive is batched. Otherwise each
//! allocation has its own connected socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{FirstByte, Message, TransactionId, channel_data};

use crate::pacing::Schedule;
use crate::payload::{self, Payload};
use crate::proto::{self, Answer, Auth, Request};
use crate::run::{ChurnStats, Cmd, Event, Phase, PhaseStats, Shared, Work};
use crate::sys::{self, BATCH, Epoll, Meta, Out};

/// Epoll token of the echo peer socket.
const PEER: u64 = u64::MAX;
/// Epoll token of the shared client socket (loopback mode).
const CLIENT: u64 = u64::MAX - 1;
/// Allocations being set up at once per thread.
const MAX_INFLIGHT: usize = 256;
/// How often transactions and refreshes are checked.
const TICK_NS: u64 = 10_000_000;
/// Retransmission: first timeout, cap, and transmissions in all.
const RTO_NS: u64 = 250_000_000;
const RTO_MAX_NS: u64 = 1_000_000_000;
const TRIES: u8 = 6;
/// While traffic flows, the loop runs at most once per period: packets
/// due meanwhile are sent in one batch, and what arrives meanwhile is read
/// in one. Waking up costs more than sending a packet (a context switch),
/// so batches keep the generator's share of the CPU down; kernel receive
/// timestamps (and the time the echo peer held a packet, which it writes
/// in) keep the wait out of the round-trip times. The period is what
/// makes batches of about `BURST` packets, within these bounds: bursts
/// stay small enough not to overflow a server's socket buffer.
const PERIOD_MIN_NS: u64 = 50_000;
const PERIOD_MAX_NS: u64 = 500_000;
const BURST: f64 = 16.0;
/// Most packets sent before looking at what came in.
const MAX_BURST: usize = 4 * BATCH;
/// A thread this far behind its schedule skips packets instead of
/// bursting to catch up.
const MAX_LAG_NS: u64 = 20_000_000;
/// 438 answers accepted in a row for one request.
const MAX_STALE: u8 = 4;
/// Refresh allocations and channels (with their permission) at least this
/// often.
const REFRESH_MAX_S: u64 = 120;
/// Socket buffers asked for (the kernel caps them at its maximum).
const SOCKET_BUFFER: usize = 4 << 20;

/// Where allocations' source addresses start on loopback: 127.1.0.1 is
/// the first.
const SOURCE_BASE: u32 = 0x7F01_0000;
/// Source addresses used (churn goes round them).
const SOURCE_SPACE: u64 = 1 << 22;

/// The loopback source address of allocation `index`.
pub(crate) fn source_ip(index: u64) -> Ipv4Addr {
    let offset = u32::try_from(index % SOURCE_SPACE).unwrap_or(0);
    Ipv4Addr::from(SOURCE_BASE + 1 + offset)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Not started (or, in churn, between two allocations).
    Idle,
    /// Allocate sent, waiting for an answer (a 401 first).
    Allocating,
    /// CreatePermission and ChannelBind sent.
    Binding {
        perm: bool,
        bind: bool,
    },
    Ready,
    /// Refresh with lifetime 0 sent.
    Deleting,
    Deleted,
    Failed,
}

#[derive(Debug)]
struct Txn {
    req: Request,
    tid: TransactionId,
    due_ns: u64,
    rto_ns: u64,
    tries: u8,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Alloc {
    /// Index of the allocation in the whole run (streaming) or of the slot
    /// (churn).
    global: u32,
    /// Source address on loopback.
    src: Ipv4Addr,
    state: St,
    realm: String,
    nonce: String,
    txns: [Option<Txn>; 2],
    counter: u32,
    stale: u8,
    seq: u32,
    refresh_at_ns: u64,
    /// Churn: generations of this slot so far.
    generation: u64,
    /// Churn: whether this allocation counts (created before the end).
    counted: bool,
}

/// Datagrams to send, gathered so they go in batches.
#[derive(Debug, Default)]
struct Outbox {
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
    slot: usize,
    /// A test packet sent in the measured window: count it once sent.
    counts: bool,
}

impl Outbox {
    fn push(&mut self, slot: usize, bytes: &[u8], counts: bool) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.entries.push(Entry {
            start,
            len: bytes.len(),
            slot,
            counts,
        });
    }

    /// Room for a datagram of `len` bytes written in place; returns it.
    fn reserve(&mut self, slot: usize, len: usize, counts: bool) -> &mut [u8] {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        self.entries.push(Entry {
            start,
            len,
            slot,
            counts,
        });
        self.buf.get_mut(start..).unwrap_or_default()
    }
}

/// The client side's sockets.
#[derive(Debug)]
enum Client {
    /// One wildcard socket; each allocation has its own source address.
    Loopback {
        socket: UdpSocket,
        server: SocketAddrV4,
    },
    /// A connected socket per allocation.
    Connected(Vec<UdpSocket>),
}

/// Receive buffers: `BATCH` slots.
#[derive(Debug)]
struct Rx {
    buf: Vec<u8>,
    slot: usize,
    metas: Vec<Meta>,
}

impl Rx {
    fn new(slot: usize) -> Self {
        Self {
            buf: vec![0; slot * BATCH],
            slot,
            metas: vec![Meta::default(); BATCH],
        }
    }
}

/// Everything but the sockets and buffers: what handling a datagram
/// changes.
#[derive(Debug)]
struct Core {
    shared: Arc<Shared>,
    id: u16,
    allocs: Vec<Alloc>,
    out: Outbox,
    peer: SocketAddr,
    stats: PhaseStats,
    /// The window of the current phase, for the echo's counts.
    window: (u64, u64),
    churn: ChurnStats,
    /// Churn: the end of the measured time.
    churn_end_ns: u64,
    churning: bool,
    inflight: usize,
    settled: usize,
    created: u64,
    failed: u64,
    deleted: u64,
    first_error: Option<String>,
    fatal: Option<String>,
    key_cache: Option<(String, LongTermKey)>,
    scratch: Vec<u8>,
    /// CLOCK_REALTIME minus the run's clock, in nanoseconds: turns kernel
    /// receive timestamps into the run's time. Measured again every tick,
    /// so that clock adjustments do not accumulate.
    realtime_offset_ns: i128,
}

pub(crate) struct Worker {
    core: Core,
    client: Client,
    peer_socket: UdpSocket,
    epoll: Epoll,
    rx: Rx,
    peer_rx: Rx,
    tokens: Vec<u64>,
    next_tick_ns: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.core.id).finish()
    }
}

fn buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

impl Worker {
    /// Binds the thread's sockets.
    pub(crate) fn new(shared: Arc<Shared>, work: &Work) -> io::Result<Self> {
        let peer_socket = UdpSocket::bind(SocketAddrV4::new(shared.peer_ip, 0))?;
        peer_socket.set_nonblocking(true)?;
        buffers(&peer_socket);
        // Without timestamps, times are taken when datagrams are read.
        let _ = sys::enable_rx_timestamps(&peer_socket);
        let peer = peer_socket.local_addr()?;
        let epoll = Epoll::new()?;
        epoll.add(peer_socket.as_raw_fd(), PEER)?;
        let count = work.count;
        let client = match shared.server {
            SocketAddr::V4(server) if server.ip().is_loopback() => {
                let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                socket.set_nonblocking(true)?;
                sys::enable_pktinfo(&socket)?;
                let _ = sys::enable_rx_timestamps(&socket);
                buffers(&socket);
                epoll.add(socket.as_raw_fd(), CLIENT)?;
                Client::Loopback { socket, server }
            }
            server => {
                let mut socks = Vec::with_capacity(count);
                for i in 0..count {
                    let local: SocketAddr = if server.is_ipv4() {
                        (Ipv4Addr::UNSPECIFIED, 0).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    let s = UdpSocket::bind(local)?;
                    s.connect(server)?;
                    s.set_nonblocking(true)?;
                    let _ = sys::enable_rx_timestamps(&s);
                    epoll.add(s.as_raw_fd(), i as u64)?;
                    socks.push(s);
                }
                Client::Connected(socks)
            }
        };
        let allocs = (0..count)
            .map(|i| {
                let global = work.first_global + u32::try_from(i).unwrap_or(0);
                Alloc {
                    global,
                    src: source_ip(u64::from(global)),
                    state: St::Idle,
                    realm: String::new(),
                    nonce: String::new(),
                    txns: [None, None],
                    counter: 0,
                    stale: 0,
                    seq: 0,
                    refresh_at_ns: u64::MAX,
                    generation: 0,
                    counted: false,
                }
            })
            .collect();
        let slot = (shared.size + 64).max(2048);
        let now = shared.now_ns();
        Ok(Self {
            core: Core {
                shared,
                id: work.thread,
                allocs,
                out: Outbox {
                    buf: Vec::with_capacity(MAX_BURST * (slot + 4)),
                    entries: Vec::with_capacity(MAX_BURST),
                },
                peer,
                stats: PhaseStats::default(),
                window: (u64::MAX, u64::MAX),
                churn: ChurnStats::default(),
                churn_end_ns: u64::MAX,
                churning: false,
                inflight: 0,
                settled: 0,
                created: 0,
                failed: 0,
                deleted: 0,
                first_error: None,
                fatal: None,
                key_cache: None,
                scratch: vec![0; 1024],
                realtime_offset_ns: 0,
            },
            client,
            peer_socket,
            epoll,
            rx: Rx::new(slot),
            peer_rx: Rx::new(slot),
            tokens: vec![0; 256],
            next_tick_ns: now,
        })
    }

    /// The thread's life: set up (unless churning), then follow commands;
    /// whatever ends it, the allocations it holds are deleted.
    pub(crate) fn run(mut self, work: &Work, cmds: &Receiver<Cmd>, events: &Sender<(u16, Event)>) {
        self.serve(work, cmds, events);
        if self.core.holds_any() {
            self.core.fatal = None;
            let deadline = self.core.shared.now_ns() + 3_000_000_000;
            self.core.delete_all(self.core.shared.now_ns());
            self.pump(Goal::Delete {
                deadline_ns: deadline,
            });
        }
    }

    fn serve(&mut self, work: &Work, cmds: &Receiver<Cmd>, events: &Sender<(u16, Event)>) {
        let id = self.core.id;
        if !work.churn {
            self.pump(Goal::Setup);
        }
        if let Some(f) = self.core.fatal.take() {
            let _ = events.send((id, Event::Fatal(f)));
            return;
        }
        let _ = events.send((
            id,
            Event::SetupDone {
                created: self.core.created,
                failed: self.core.failed,
                error: self.core.first_error.clone(),
            },
        ));
        while let Ok(cmd) = cmds.recv() {
            if self.core.shared.abort.load(Ordering::Relaxed) {
                return;
            }
            let event = match cmd {
                Cmd::Phase(phase) => {
                    self.core.stats = PhaseStats::default();
                    self.core.window = (phase.window_start_ns, phase.window_end_ns);
                    self.pump(Goal::Phase(phase));
                    Event::PhaseDone(std::mem::take(&mut self.core.stats))
                }
                Cmd::Churn { start_ns, end_ns } => {
                    self.core.churning = true;
                    self.core.churn_end_ns = end_ns;
                    self.pump(Goal::Churn { start_ns, end_ns });
                    self.core.churning = false;
                    Event::ChurnDone(std::mem::take(&mut self.core.churn))
                }
                Cmd::Finish => {
                    let deadline = self.core.shared.now_ns() + 3_000_000_000;
                    self.core.delete_all(self.core.shared.now_ns());
                    self.pump(Goal::Delete {
                        deadline_ns: deadline,
                    });
                    Event::Finished {
                        deleted: self.core.deleted,
                    }
                }
            };
            let event = match self.core.fatal.take() {
                Some(f) => Event::Fatal(f),
                None => event,
            };
            let last = matches!(event, Event::Finished { .. } | Event::Fatal(_));
            let _ = events.send((id, event));
            if last {
                return;
            }
        }
    }

    /// Runs the loop until the goal is reached.
    fn pump(&mut self, goal: Goal) {
        let shared = Arc::clone(&self.core.shared);
        let mut schedule = match &goal {
            Goal::Phase(p) => {
                let ready: usize = self
                    .core
                    .allocs
                    .iter()
                    .filter(|a| a.state == St::Ready)
                    .count();
                Some(Schedule::new(p.start_ns, p.rate, ready))
            }
            _ => None,
        };
        let ready: Vec<usize> = self
            .core
            .allocs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.state == St::Ready)
            .map(|(i, _)| i)
            .collect();
        let deleting = matches!(goal, Goal::Delete { .. });
        let mut loaded = false;
        let pacing = matches!(goal, Goal::Phase(_));
        let period = match &goal {
            Goal::Phase(p) if p.rate > 0.0 && !ready.is_empty() => {
                let per_s = p.rate * ready.len() as f64;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let ns = (BURST * 1e9 / per_s) as u64;
                ns.clamp(PERIOD_MIN_NS, PERIOD_MAX_NS)
            }
            _ => PERIOD_MAX_NS,
        };
        self.core.calibrate();
        loop {
            // Deletions go on after an error: they clean up after it.
            if !deleting && (shared.abort.load(Ordering::Relaxed) || self.core.fatal.is_some()) {
                return;
            }
            let now = shared.now_ns();
            let mut wake = now.saturating_add(1_000_000_000);
            match &goal {
                Goal::Setup => {
                    if self.core.settled >= self.core.allocs.len() {
                        return;
                    }
                    self.core.start_setups(now);
                }
                Goal::Phase(p) => {
                    if now >= p.drain_end_ns {
                        if let Some(s) = &schedule {
                            self.core.stats.skipped = s.skipped();
                        }
                        return;
                    }
                    wake = wake.min(p.drain_end_ns);
                }
                Goal::Churn { start_ns, end_ns } => {
                    if now >= *end_ns && self.core.inflight == 0 {
                        return;
                    }
                    if now >= end_ns.saturating_add(5_000_000_000) {
                        return;
                    }
                    if now >= *start_ns && now < *end_ns {
                        self.core.start_setups(now);
                    } else if now < *start_ns {
                        wake = wake.min(*start_ns);
                    }
                }
                Goal::Delete { deadline_ns } => {
                    if self.core.inflight == 0 || now >= *deadline_ns {
                        return;
                    }
                    wake = wake.min(*deadline_ns);
                }
            }
            if now >= self.next_tick_ns {
                self.core.calibrate();
                self.core.timers(now);
                self.next_tick_ns = now + TICK_NS;
            }
            wake = wake.min(self.next_tick_ns);
            let mut busy = false;
            if let (Goal::Phase(p), Some(s)) = (&goal, schedule.as_mut()) {
                busy = self.core.send_due(s, &ready, p, now) >= MAX_BURST;
                let next = s.next_at();
                if next < p.window_end_ns {
                    wake = wake.min(next.max(now + period));
                }
            }
            self.flush();
            if loaded && !busy {
                // Let datagrams gather, so that they are read in batches.
                let since = shared.now_ns().saturating_sub(now);
                if since < period {
                    std::thread::sleep(Duration::from_nanos(period - since));
                }
            }
            let now = shared.now_ns();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                Some(Duration::from_nanos(wake.saturating_sub(now)))
            };
            let n = match self.epoll.wait(&mut self.tokens, timeout) {
                Ok(n) => n,
                Err(e) => {
                    self.core.fatal = Some(format!("epoll: {e}"));
                    return;
                }
            };
            let mut got = 0;
            for i in 0..n {
                let token = self.tokens.get(i).copied().unwrap_or(PEER);
                got += if token == PEER {
                    self.echo()
                } else {
                    self.receive(token)
                };
            }
            loaded = pacing && got > 0;
            self.flush();
        }
    }

    /// The echo peer: every datagram straight back to where it came from,
    /// with the time it was held written in. Returns how many came.
    fn echo(&mut self) -> usize {
        let (start, end) = self.core.window;
        let tag = self.core.shared.tag;
        let mut total = 0;
        for _ in 0..4 {
            let rx = &mut self.peer_rx;
            let Ok(got) =
                sys::recv_batch(&self.peer_socket, &mut rx.buf, rx.slot, &mut rx.metas, true)
            else {
                return total;
            };
            total += got;
            let now = self.core.shared.now_ns();
            for (meta, chunk) in rx
                .metas
                .iter()
                .zip(rx.buf.chunks_exact_mut(rx.slot))
                .take(got)
            {
                let data = chunk.get_mut(..meta.len).unwrap_or_default();
                if let Some(p) = payload::decode(data, tag) {
                    if p.sent_ns >= start && p.sent_ns < end {
                        self.core.stats.peer_received += 1;
                    }
                    let arrived = self.core.arrival(meta, now);
                    let held = u32::try_from(now.saturating_sub(arrived)).unwrap_or(u32::MAX);
                    payload::set_held(data, held);
                }
            }
            let mut outs = [Out {
                data: &[],
                dst: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                src: None,
            }; BATCH];
            for ((out, meta), chunk) in outs
                .iter_mut()
                .zip(rx.metas.iter())
                .zip(rx.buf.chunks_exact(rx.slot))
                .take(got)
            {
                *out = Out {
                    data: chunk.get(..meta.len).unwrap_or_default(),
                    dst: meta.from,
                    src: None,
                };
            }
            let mut from = 0;
            while from < got {
                match sys::send_batch(&self.peer_socket, outs.get(from..got).unwrap_or_default()) {
                    Ok(0) => break,
                    Ok(k) => from += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => from += 1,
                }
            }
            if got < BATCH {
                break;
            }
        }
        total
    }

    /// Datagrams for the clients; returns how many came.
    fn receive(&mut self, token: u64) -> usize {
        let mut total = 0;
        for _ in 0..4 {
            let rx = &mut self.rx;
            let result = match &self.client {
                Client::Loopback { socket, .. } => {
                    sys::recv_batch(socket, &mut rx.buf, rx.slot, &mut rx.metas, true)
                }
                Client::Connected(socks) => {
                    let Some(s) = usize::try_from(token).ok().and_then(|i| socks.get(i)) else {
                        return total;
                    };
                    sys::recv_batch(s, &mut rx.buf, rx.slot, &mut rx.metas, true)
                }
            };
            let Ok(got) = result else { return total };
            total += got;
            let now = self.core.shared.now_ns();
            for (meta, chunk) in rx.metas.iter().zip(rx.buf.chunks_exact(rx.slot)).take(got) {
                let data = chunk.get(..meta.len).unwrap_or_default();
                let arrived = self.core.arrival(meta, now);
                self.core.on_datagram(data, arrived, now);
            }
            if got < BATCH {
                break;
            }
        }
        total
    }

    /// Sends what the outbox holds.
    fn flush(&mut self) {
        let out = &mut self.core.out;
        if out.entries.is_empty() {
            return;
        }
        let mut sent_counted = 0u64;
        match &self.client {
            Client::Loopback { socket, server } => {
                for chunk in out.entries.chunks(BATCH) {
                    let mut outs = [Out {
                        data: &[],
                        dst: *server,
                        src: None,
                    }; BATCH];
                    for (o, e) in outs.iter_mut().zip(chunk) {
                        o.data = out.buf.get(e.start..e.start + e.len).unwrap_or_default();
                        o.src = self.core.allocs.get(e.slot).map(|a| a.src);
                    }
                    let n = chunk.len();
                    let mut from = 0;
                    while from < n {
                        match sys::send_batch(socket, outs.get(from..n).unwrap_or_default()) {
                            Ok(0) => break,
                            Ok(k) => {
                                sent_counted += chunk
                                    .get(from..from + k)
                                    .unwrap_or_default()
                                    .iter()
                                    .filter(|e| e.counts)
                                    .count() as u64;
                                from += k;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => from += 1,
                        }
                    }
                }
            }
            Client::Connected(socks) => {
                for e in &out.entries {
                    let (Some(sock), Some(data)) =
                        (socks.get(e.slot), out.buf.get(e.start..e.start + e.len))
                    else {
                        continue;
                    };
                    if sock.send(data).is_ok() && e.counts {
                        sent_counted += 1;
                    }
                }
            }
        }
        self.core.stats.sent += sent_counted;
        out.entries.clear();
        out.buf.clear();
    }
}

enum Goal {
    Setup,
    Phase(Phase),
    Churn { start_ns: u64, end_ns: u64 },
    Delete { deadline_ns: u64 },
}

impl Core {
    fn key_for(&mut self, realm: &str) -> Option<LongTermKey> {
        if let Some((r, k)) = &self.key_cache
            && r == realm
        {
            return Some(*k);
        }
        let k = proto::key(&self.shared.username, realm, &self.shared.password)?;
        self.key_cache = Some((realm.to_owned(), k));
        Some(k)
    }

    /// Starts allocations that are idle, up to the in-flight limit.
    fn start_setups(&mut self, now: u64) {
        if self.inflight >= MAX_INFLIGHT {
            return;
        }
        for slot in 0..self.allocs.len() {
            if self.inflight >= MAX_INFLIGHT {
                break;
            }
            let Some(a) = self.allocs.get_mut(slot) else {
                break;
            };
            if a.state != St::Idle {
                continue;
            }
            if self.churning {
                // A fresh 5-tuple for each allocation of the slot.
                let total = u64::from(self.shared.allocations);
                a.src = source_ip(u64::from(a.global) + a.generation * total);
                a.generation += 1;
                a.counted = false;
            }
            a.state = St::Allocating;
            a.nonce.clear();
            a.stale = 0;
            self.inflight += 1;
            self.request(slot, 0, Request::Allocate, false, now);
        }
    }

    /// Sends a request in transaction slot `j` of allocation `slot`,
    /// signed when `authed`.
    fn request(&mut self, slot: usize, j: usize, req: Request, authed: bool, now: u64) {
        let realm = self
            .allocs
            .get(slot)
            .map(|a| a.realm.clone())
            .unwrap_or_default();
        let key = if authed { self.key_for(&realm) } else { None };
        let shared = Arc::clone(&self.shared);
        let id = self.id;
        let Some(a) = self.allocs.get_mut(slot) else {
            return;
        };
        a.counter = a.counter.wrapping_add(1);
        let tid = proto::transaction_id(
            id,
            u32::try_from(slot).unwrap_or(u32::MAX),
            a.counter,
            shared.tid_tag,
        );
        let auth = key.as_ref().map(|k| Auth {
            username: &shared.username,
            realm: &a.realm,
            nonce: &a.nonce,
            key: k,
        });
        let Ok(len) = proto::encode(&mut self.scratch, tid, req, auth.as_ref()) else {
            self.fatal = Some(format!(
                "cannot encode a {} request (user name, realm or nonce too long?)",
                req.method().name()
            ));
            return;
        };
        let bytes = self.scratch.get(..len).unwrap_or_default().to_vec();
        self.out.push(slot, &bytes, false);
        if let Some(t) = a.txns.get_mut(j) {
            *t = Some(Txn {
                req,
                tid,
                due_ns: now + RTO_NS,
                rto_ns: RTO_NS,
                tries: 1,
                bytes,
            });
        }
    }

    /// Retransmissions, timeouts and refreshes.
    fn timers(&mut self, now: u64) {
        for slot in 0..self.allocs.len() {
            let mut timed_out = None;
            let Some(a) = self.allocs.get_mut(slot) else {
                break;
            };
            for t in a.txns.iter_mut().flatten() {
                if t.due_ns > now {
                    continue;
                }
                if t.tries >= TRIES {
                    timed_out = Some(t.req);
                    continue;
                }
                t.tries += 1;
                t.rto_ns = (t.rto_ns * 2).min(RTO_MAX_NS);
                t.due_ns = now + t.rto_ns;
                self.out.push(slot, &t.bytes, false);
            }
            if let Some(req) = timed_out {
                for t in &mut a.txns {
                    if t.as_ref().is_some_and(|t| t.req == req) {
                        *t = None;
                    }
                }
                self.fail(slot, &format!("{}: no answer", req.method().name()));
                continue;
            }
            if a.state == St::Ready && a.refresh_at_ns <= now && a.txns.iter().all(Option::is_none)
            {
                a.refresh_at_ns = u64::MAX;
                self.request(slot, 0, Request::Refresh(None), true, now);
                let peer = self.peer;
                self.request(slot, 1, Request::Bind(peer), true, now);
            }
        }
    }

    /// Queues the test packets due at `now`; returns how many.
    fn send_due(&mut self, s: &mut Schedule, ready: &[usize], p: &Phase, now: u64) -> usize {
        let size = self.shared.size;
        let tag = self.shared.tag;
        let mut n = 0;
        while n < MAX_BURST {
            let Some(due) = s.next_due(now, p.window_end_ns, MAX_LAG_NS) else {
                break;
            };
            let Some(&slot) = ready.get(due.slot) else {
                continue;
            };
            let Some(a) = self.allocs.get_mut(slot) else {
                continue;
            };
            if a.state != St::Ready {
                continue;
            }
            let counts = now >= p.window_start_ns && now < p.window_end_ns;
            let seq = a.seq;
            a.seq = a.seq.wrapping_add(1);
            let global = a.global;
            let Some(header) = channel_data::header(proto::CHANNEL, size) else {
                break;
            };
            let buf = self
                .out
                .reserve(slot, channel_data::HEADER_LEN + size, counts);
            if let Some((h, rest)) = buf.split_first_chunk_mut::<{ channel_data::HEADER_LEN }>() {
                *h = header;
                payload::encode(
                    rest,
                    tag,
                    &Payload {
                        allocation: global,
                        sequence: seq,
                        held_ns: 0,
                        sent_ns: now,
                    },
                );
            }
            n += 1;
        }
        n
    }

    /// Measures the offset of CLOCK_REALTIME from the run's clock.
    fn calibrate(&mut self) {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mono = self.shared.now_ns();
        self.realtime_offset_ns = i128::try_from(real).unwrap_or(0) - i128::from(mono);
    }

    /// When a datagram arrived, in the run's time: its kernel timestamp
    /// when there is one (never later than `now`), else `now`.
    fn arrival(&self, meta: &Meta, now: u64) -> u64 {
        meta.rx_realtime_ns
            .and_then(|rt| u64::try_from(i128::from(rt) - self.realtime_offset_ns).ok())
            .map_or(now, |t| t.min(now))
    }

    /// A datagram from the server, which arrived at `arrived`.
    fn on_datagram(&mut self, data: &[u8], arrived: u64, now: u64) {
        match FirstByte::of(data) {
            FirstByte::ChannelData => {
                let Ok(cd) = channel_data::parse(data) else {
                    return;
                };
                if let Some(p) = payload::decode(cd.payload, self.shared.tag)
                    && p.sent_ns >= self.window.0
                    && p.sent_ns < self.window.1
                {
                    self.stats.received += 1;
                    self.stats.hist.record(
                        arrived
                            .saturating_sub(p.sent_ns)
                            .saturating_sub(u64::from(p.held_ns)),
                    );
                }
            }
            FirstByte::Stun => {
                let Ok(msg) = Message::parse(data) else {
                    return;
                };
                let Some((thread, slot)) = proto::owner(&msg.transaction_id(), self.shared.tid_tag)
                else {
                    return;
                };
                if thread != self.id {
                    return;
                }
                self.on_answer(usize::try_from(slot).unwrap_or(usize::MAX), &msg, now);
            }
            FirstByte::Other => {}
        }
    }

    fn on_answer(&mut self, slot: usize, msg: &Message<'_>, now: u64) {
        let tid = msg.transaction_id();
        let Some(a) = self.allocs.get_mut(slot) else {
            return;
        };
        let Some(j) = a
            .txns
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.tid == tid))
        else {
            return; // an answer to a retransmission already answered
        };
        let Some(txn) = a.txns.get_mut(j).and_then(Option::take) else {
            return;
        };
        let authed = !a.nonce.is_empty();
        match proto::answer(msg) {
            Answer::Challenge { code, realm, nonce } => {
                if code == 401 && authed && (a.stale > 0 || nonce == a.nonce) {
                    self.fatal = proto::fatal(txn.req.method(), 401, "Unauthenticated");
                    return;
                }
                a.stale += 1;
                if a.stale > MAX_STALE {
                    self.fail(slot, "authentication did not converge (repeated 438)");
                    return;
                }
                if let Some(r) = realm {
                    r.clone_into(&mut a.realm);
                }
                nonce.clone_into(&mut a.nonce);
                self.request(slot, j, txn.req, true, now);
            }
            Answer::Success { relayed, lifetime } => {
                a.stale = 0;
                self.on_success(slot, txn.req, relayed, lifetime, now);
            }
            Answer::Error { code, reason } => {
                if txn.req == Request::Refresh(Some(0)) && code == 437 {
                    // Already gone: deleted all the same.
                    self.on_success(slot, txn.req, None, None, now);
                    return;
                }
                if let Some(f) = proto::fatal(txn.req.method(), code, reason) {
                    self.fatal = Some(f);
                    return;
                }
                self.fail(
                    slot,
                    &format!("{}: {code} {reason}", txn.req.method().name()),
                );
            }
            Answer::Other => {}
        }
    }

    fn on_success(
        &mut self,
        slot: usize,
        req: Request,
        relayed: Option<SocketAddr>,
        lifetime: Option<u32>,
        now: u64,
    ) {
        let peer = self.peer;
        let churning = self.churning;
        let churn_end = self.churn_end_ns;
        let Some(a) = self.allocs.get_mut(slot) else {
            return;
        };
        let refresh_in = |lifetime: Option<u32>| {
            let half = u64::from(lifetime.unwrap_or(600) / 2).clamp(1, REFRESH_MAX_S);
            now + half * 1_000_000_000
        };
        match (req, a.state) {
            (Request::Allocate, St::Allocating) => {
                if churning {
                    a.counted = now < churn_end;
                    if a.counted {
                        self.churn.created += 1;
                    }
                    a.state = St::Deleting;
                    self.request(slot, 0, Request::Refresh(Some(0)), true, now);
                    return;
                }
                if !matches!(relayed, Some(SocketAddr::V4(_))) {
                    self.fail(slot, "Allocate: no IPv4 XOR-RELAYED-ADDRESS in the answer");
                    return;
                }
                a.refresh_at_ns = refresh_in(lifetime);
                a.state = St::Binding {
                    perm: false,
                    bind: false,
                };
                self.request(slot, 0, Request::Permission(peer), true, now);
                self.request(slot, 1, Request::Bind(peer), true, now);
            }
            (Request::Permission(_), St::Binding { bind, .. }) => {
                a.state = St::Binding { perm: true, bind };
                self.maybe_ready(slot);
            }
            (Request::Bind(_), St::Binding { perm, .. }) => {
                a.state = St::Binding { perm, bind: true };
                self.maybe_ready(slot);
            }
            (Request::Refresh(Some(0)), St::Deleting) => {
                self.inflight = self.inflight.saturating_sub(1);
                if churning {
                    if a.counted {
                        self.churn.deleted += 1;
                    }
                    a.state = St::Idle;
                } else {
                    a.state = St::Deleted;
                    self.deleted += 1;
                }
            }
            (Request::Refresh(_), St::Ready) => {
                a.refresh_at_ns = refresh_in(lifetime);
            }
            _ => {}
        }
    }

    fn maybe_ready(&mut self, slot: usize) {
        let Some(a) = self.allocs.get_mut(slot) else {
            return;
        };
        if a.state
            == (St::Binding {
                perm: true,
                bind: true,
            })
        {
            a.state = St::Ready;
            self.inflight = self.inflight.saturating_sub(1);
            self.settled += 1;
            self.created += 1;
        }
    }

    /// An allocation (or its deletion) failed.
    fn fail(&mut self, slot: usize, why: &str) {
        let churning = self.churning;
        let Some(a) = self.allocs.get_mut(slot) else {
            return;
        };
        a.txns = [None, None];
        match a.state {
            St::Allocating | St::Binding { .. } => {
                self.inflight = self.inflight.saturating_sub(1);
                if churning {
                    self.churn.failed += 1;
                    a.state = St::Idle;
                } else {
                    self.settled += 1;
                    self.failed += 1;
                    a.state = St::Failed;
                }
            }
            St::Deleting => {
                self.inflight = self.inflight.saturating_sub(1);
                if churning {
                    if a.counted {
                        self.churn.failed += 1;
                    }
                    a.state = St::Idle;
                } else {
                    a.state = St::Failed;
                }
            }
            // A refresh that failed: the allocation may expire; it keeps
            // sending (the loss will show).
            St::Ready | St::Idle | St::Deleted | St::Failed => {}
        }
        if self.first_error.is_none() {
            self.first_error = Some(why.to_owned());
        }
    }

    /// Whether any allocation is (or may be) held on the server.
    fn holds_any(&self) -> bool {
        self.allocs
            .iter()
            .any(|a| matches!(a.state, St::Ready | St::Binding { .. } | St::Allocating))
    }

    /// Sends Refresh(0) for every allocation that holds one.
    fn delete_all(&mut self, now: u64) {
        for slot in 0..self.allocs.len() {
            let Some(a) = self.allocs.get_mut(slot) else {
                break;
            };
            let held = matches!(a.state, St::Ready | St::Binding { .. })
                || (a.state == St::Allocating && !a.nonce.is_empty());
            if held {
                if a.state != St::Ready {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                a.txns = [None, None];
                a.state = St::Deleting;
                a.stale = 0;
                self.inflight += 1;
                self.request(slot, 0, Request::Refresh(Some(0)), true, now);
            } else if a.state == St::Allocating {
                // Never authenticated: nothing was made.
                a.txns = [None, None];
                a.state = St::Failed;
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
    }
}

/// The thread body.
pub(crate) fn thread(
    shared: Arc<Shared>,
    work: &Work,
    cmds: &Receiver<Cmd>,
    events: &Sender<(u16, Event)>,
) {
    match Worker::new(Arc::clone(&shared), work) {
        Ok(w) => w.run(work, cmds, events),
        Err(e) => {
            let _ = events.send((
                work.thread,
                Event::Fatal(format!("cannot open the generator's sockets: {e}")),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_addresses() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(source_ip(65_535), Ipv4Addr::new(127, 2, 0, 0));
        assert!(source_ip(SOURCE_SPACE - 1).is_loopback());
        assert_eq!(source_ip(SOURCE_SPACE), source_ip(0));
    }
}

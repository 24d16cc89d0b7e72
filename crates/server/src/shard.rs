//! One shard: a thread with its own single-threaded runtime, its share of
//! every listener (SO_REUSEPORT), its allocations and their relay sockets.
//!
//! The kernel sends a client's datagrams to the same listener socket every
//! time, so an allocation, its relay socket and every packet relayed for it
//! stay on one thread: no locks on the data path.
//!
//! UDP runs outside the async runtime's per-socket machinery: the shard's
//! listeners and UDP relay sockets sit in one level-triggered epoll set,
//! which the runtime watches as a single descriptor. Each round takes the
//! sockets ready now, reads one batch from each (`recvmmsg`), handles every
//! datagram, and queues what goes to clients; the queues leave in one
//! `sendmmsg` per listener at the end of the round. A datagram thus costs a
//! share of three system calls, with no wake-up per socket and no final
//! read that finds nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn_udp::RecvMeta;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use turnpike_turn::policy::canonical;
use turnpike_turn::{
    AllocationId, ConnectRequest, ConnectionId, Event, FiveTuple, Output, PEER_HEADROOM,
    PEER_TAILROOM, PeerConnection, Server, Shared, Transport,
};

use crate::http::{Reports, ShardReport};
use crate::listener::{Listener, SendQueue};
use crate::relay::{Binder, LocalRelays, PortPool, ReservedPort};
use crate::stream::{self, Outbound, StreamListener};
use crate::sys::{self, Epoll, Ready, Received, SharedEpoll};
use crate::tcp_relay::{self, Parked};

/// Datagrams taken from one relay socket per round.
const PEER_BATCH: usize = 8;
/// Ready sockets taken per round.
const READY_PER_ROUND: usize = 256;
/// Rounds before the shard's other tasks (streams, timers) get a turn.
const ROUNDS_PER_TURN: usize = 16;
/// Receive buffer per datagram slot of a listener: large enough for a
/// GRO-coalesced batch of segments.
const RX_SLOT: usize = 64 * 1024;
/// The largest UDP payload a peer can send.
const MAX_PEER_PAYLOAD: usize = 65_535;
/// A peer datagram's slot: room for a TURN header before it and padding
/// after it.
const PEER_SLOT: usize = PEER_HEADROOM + MAX_PEER_PAYLOAD + PEER_TAILROOM;
/// Listener tokens in the epoll set have this low half, which no
/// allocation id has (slot indices stay far below it).
const LISTENER_TOKEN: u64 = 0xFFFF_FFFF;

/// Everything one shard owns.
pub(crate) struct Shard {
    index: usize,
    /// This shard, for the tasks it spawns.
    me: Weak<RefCell<Shard>>,
    pub(crate) server: Server<Binder>,
    listeners: Vec<Listener>,
    /// What each listener sends, flushed at the end of a round.
    queues: Vec<SendQueue>,
    /// The TCP and TLS clients, by 5-tuple.
    pub(crate) connections: HashMap<FiveTuple, Rc<Outbound>>,
    /// RFC 6062 peer connections waiting for a ConnectionBind.
    pub(crate) parked: Parked,
    pub(crate) streams: StreamCounters,
    reports: Arc<Reports>,
    /// The relay IPs, and this shard's UDP relays on them: what a client
    /// sends to another allocation of the shard is handed over here.
    relay_ips: Vec<std::net::IpAddr>,
    local_relays: LocalRelays,
    /// Datagrams handed from one allocation to another inside the shard.
    relayed_within: u64,
    /// Answers to clients are written here.
    reply: Box<[u8]>,
    /// Peer datagrams land here, [`PEER_SLOT`] bytes each, after room for
    /// a TURN header.
    peer_buf: Box<[u8]>,
    peer_got: [Received; PEER_BATCH],
    rx: Box<[u8]>,
    rx_meta: Box<[RecvMeta]>,
    send_errors: u64,
}

/// TLS outcomes on this shard.
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    pub(crate) tls_handshakes: u64,
    pub(crate) tls_failures: u64,
    /// Client connections joined to an RFC 6062 peer connection.
    pub(crate) joined: usize,
}

/// What a shard is started with.
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared<ReservedPort>>,
    pub(crate) relay_ips: Vec<std::net::IpAddr>,
    pub(crate) pool: Arc<std::sync::Mutex<PortPool>>,
    pub(crate) listeners: Vec<std::net::UdpSocket>,
    pub(crate) stream_listeners: Vec<(std::net::TcpListener, StreamListener)>,
    pub(crate) reports: Arc<Reports>,
    pub(crate) parked: Parked,
    pub(crate) seed: [u8; 32],
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Runs a shard on a thread of its own until shutdown.
pub(crate) fn spawn(setup: ShardSetup) -> io::Result<std::thread::JoinHandle<()>> {
    let name = format!("shard-{}", setup.index);
    crate::serve::spawn_with_runtime(name, "a shard", move |runtime| {
        let local = tokio::task::LocalSet::new();
        if let Err(e) = local.block_on(runtime, run(setup)) {
            warn!(error = %e, "shard stopped");
        }
    })
}

async fn run(setup: ShardSetup) -> io::Result<()> {
    let ShardSetup {
        index,
        shared,
        relay_ips,
        pool,
        listeners,
        stream_listeners,
        reports,
        parked,
        seed,
        mut shutdown,
    } = setup;
    let listeners = listeners
        .into_iter()
        .map(Listener::new)
        .collect::<io::Result<Vec<_>>>()?;
    let epoll = Rc::new(Epoll::new()?);
    for (i, listener) in listeners.iter().enumerate() {
        epoll.add(listener, listener_token(i))?;
    }
    let queues = listeners.iter().map(|_| SendQueue::new()).collect();
    let ready = SharedEpoll(Rc::clone(&epoll)).watch()?;
    let mut relays = Binder::new(&relay_ips, pool, epoll);
    let local_relays = relays.local.clone();
    let batch = quinn_udp::BATCH_SIZE;
    let now = Instant::now();
    let shard = Rc::new_cyclic(|me: &Weak<RefCell<Shard>>| {
        relays.shard = me.clone();
        RefCell::new(Shard {
            index,
            me: me.clone(),
            server: Server::new(shared, relays, seed, now, unix_now()),
            listeners,
            queues,
            connections: HashMap::new(),
            parked,
            streams: StreamCounters::default(),
            reports,
            relay_ips,
            local_relays,
            relayed_within: 0,
            reply: vec![0; 2048].into_boxed_slice(),
            peer_buf: vec![0; PEER_SLOT * PEER_BATCH].into_boxed_slice(),
            peer_got: [Received::EMPTY; PEER_BATCH],
            rx: vec![0; RX_SLOT * batch].into_boxed_slice(),
            rx_meta: vec![RecvMeta::default(); batch].into_boxed_slice(),
            send_errors: 0,
        })
    });

    tokio::task::spawn_local(udp(Rc::downgrade(&shard), ready));
    for (listener, serves) in stream_listeners {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::task::spawn_local(stream::accept_loop(Rc::downgrade(&shard), listener, serves));
    }
    tokio::task::spawn_local(tick(Rc::downgrade(&shard)));
    debug!(shard = index, "shard running");

    // Either a shutdown request or the sender's end stops the shard.
    let _ = shutdown.wait_for(|stop| *stop).await;
    let mut s = shard.borrow_mut();
    s.server.close_all(Instant::now());
    s.log_events();
    debug!(shard = index, stats = ?s.server.stats(), send_errors = s.send_errors, "shard stopped");
    Ok(())
}

fn listener_token(index: usize) -> u64 {
    ((index as u64) << 32) | LISTENER_TOKEN
}

/// Serves the shard's UDP sockets: rounds of whatever is ready, until
/// nothing is.
async fn udp(shard: Weak<RefCell<Shard>>, epoll: AsyncFd<SharedEpoll>) {
    let mut ready = vec![Ready::EMPTY; READY_PER_ROUND];
    loop {
        let mut guard = match epoll.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!(error = %e, "UDP sockets cannot be watched");
                return;
            }
        };
        let mut rounds = 0;
        loop {
            let count = match epoll.get_ref().0.poll(&mut ready) {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "UDP sockets cannot be watched");
                    return;
                }
            };
            if count == 0 {
                guard.clear_ready();
                break;
            }
            let Some(shard) = shard.upgrade() else { return };
            let more = shard
                .borrow_mut()
                .round(ready.get(..count).unwrap_or_default());
            if !more && count < ready.len() {
                // Every ready socket was read dry, and a datagram that
                // arrived since makes the set readable anew: no need to
                // ask again before sleeping.
                guard.clear_ready();
                break;
            }
            rounds += 1;
            if rounds == ROUNDS_PER_TURN {
                // Still ready: the next wait returns at once, after the
                // shard's other tasks have had their turn.
                drop(guard);
                tokio::task::yield_now().await;
                break;
            }
        }
    }
}

/// Keeps time: expiry, the wall clock for REST credentials, and the
/// allocation log.
async fn tick(shard: Weak<RefCell<Shard>>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shard) = shard.upgrade() else { return };
        let mut s = shard.borrow_mut();
        let now = Instant::now();
        s.server.set_wall_clock(now, unix_now());
        s.server.handle_timeout(now);
        s.log_events();
        s.report();
    }
}

impl Shard {
    /// Handles one round of ready sockets: a batch from each, then the
    /// answers and relayed datagrams go out. Returns whether a socket may
    /// still hold data (it filled its batch).
    fn round(&mut self, ready: &[Ready]) -> bool {
        let now = Instant::now();
        let mut more = false;
        for event in ready {
            let token = event.token();
            more |= if token & LISTENER_TOKEN == LISTENER_TOKEN {
                let index = usize::try_from(token >> 32).unwrap_or(usize::MAX);
                self.drain_listener(index, now)
            } else {
                self.drain_relay(AllocationId::from_raw(token), now)
            };
        }
        for (listener, queue) in self.listeners.iter().zip(self.queues.iter_mut()) {
            self.send_errors += queue.flush(listener);
        }
        self.log_events();
        more
    }

    /// Handles one batch a listener has received; returns whether it was a
    /// full one.
    fn drain_listener(&mut self, index: usize, now: Instant) -> bool {
        let Self {
            server,
            listeners,
            queues,
            connections,
            relay_ips,
            local_relays,
            relayed_within,
            reply,
            peer_buf,
            rx,
            rx_meta,
            send_errors,
            ..
        } = self;
        let Some(listener) = listeners.get(index) else {
            return false;
        };
        let mut chunks = rx.chunks_mut(RX_SLOT);
        let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let count = match listener.recv(&mut slices, rx_meta) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                // An ICMP error reported on the socket, say: reading it
                // cleared it, and the next round goes on.
                debug!(error = %e, "receive failed");
                return true;
            }
        };
        for (meta, slot) in rx_meta.iter().take(count).zip(rx.chunks(RX_SLOT)) {
            let data = slot.get(..meta.len).unwrap_or_default();
            let client = SocketAddr::new(canonical(meta.addr.ip()), meta.addr.port());
            let server_ip = meta.dst_ip.map_or(listener.local.ip(), canonical);
            let tuple = FiveTuple {
                transport: Transport::Udp,
                client,
                server: SocketAddr::new(server_ip, listener.local.port()),
            };
            // With GRO, one buffer holds several datagrams of `stride`
            // bytes each.
            let stride = if meta.stride == 0 {
                data.len()
            } else {
                meta.stride
            };
            for datagram in data.chunks(stride.max(1)) {
                match server.handle_client(now, tuple, datagram, reply) {
                    Output::None => {}
                    Output::Reply(len) => {
                        let answer = reply.get(..len).unwrap_or_default();
                        if let Some(queue) = queues.get_mut(index) {
                            *send_errors += queue.push(listener, meta.addr, server_ip, answer);
                        }
                    }
                    Output::ToPeer { socket, peer, data } => {
                        match local_relay(relay_ips, local_relays, peer) {
                            Some(to) => {
                                let from = socket.local();
                                let len = stage(peer_buf, data);
                                *relayed_within += 1;
                                let Some(out) = server.handle_peer(now, to, from, peer_buf, len)
                                else {
                                    continue;
                                };
                                let framed = peer_buf.get(out.range).unwrap_or_default();
                                *send_errors +=
                                    to_client(listeners, queues, connections, &out.tuple, framed);
                            }
                            None => {
                                if socket.send_to(data, peer).is_err() {
                                    *send_errors += 1;
                                }
                            }
                        }
                    }
                    // RFC 6062 runs over streams only: the server
                    // refuses it over UDP before it gets here.
                    Output::Connect { .. } | Output::Bind { .. } => {}
                }
            }
        }
        count == quinn_udp::BATCH_SIZE
    }

    /// Handles one batch a relay socket has received: peers' datagrams for
    /// allocation `id`'s client. Returns whether it was a full one.
    fn drain_relay(&mut self, id: AllocationId, now: Instant) -> bool {
        let Self {
            server,
            listeners,
            queues,
            connections,
            peer_buf,
            peer_got,
            send_errors,
            ..
        } = self;
        let mut count = 0;
        let mut failed = false;
        // One socket, or two for a dual allocation (whose event does not
        // say which is ready).
        for socket in server.relay_sockets(id).filter_map(|s| s.udp()) {
            let mut slots: [&mut [u8]; PEER_BATCH] = {
                let mut chunks = peer_buf.chunks_mut(PEER_SLOT);
                std::array::from_fn(|_| {
                    chunks
                        .next()
                        .and_then(|c| c.get_mut(PEER_HEADROOM..PEER_HEADROOM + MAX_PEER_PAYLOAD))
                        .unwrap_or_default()
                })
            };
            let free = slots.get_mut(count..).unwrap_or_default();
            let got = peer_got.get_mut(count..).unwrap_or_default();
            match sys::recv_many::<PEER_BATCH>(socket, free, got) {
                Ok(n) => count += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // Reading the error cleared it; data may still wait.
                    debug!(error = %e, "relay receive failed");
                    failed = true;
                }
            }
        }
        let full = failed || count == PEER_BATCH;
        for (got, slot) in peer_got
            .iter()
            .take(count)
            .zip(peer_buf.chunks_mut(PEER_SLOT))
        {
            let Some(out) = server.handle_peer(now, id, got.from, slot, got.len) else {
                continue;
            };
            let data = slot.get(out.range).unwrap_or_default();
            *send_errors += to_client(listeners, queues, connections, &out.tuple, data);
        }
        full
    }

    /// A message from a TCP or TLS client; `Some` when it was a
    /// ConnectionBind that succeeded: the connection now carries that peer
    /// connection's bytes, once the answer queued on `out` is written.
    pub(crate) fn on_stream_message(
        &mut self,
        tuple: FiveTuple,
        message: &[u8],
        out: &Outbound,
    ) -> Option<ConnectionId> {
        let now = Instant::now();
        let mut bound = None;
        match self
            .server
            .handle_client(now, tuple, message, &mut self.reply)
        {
            Output::None => {}
            Output::Reply(len) => {
                out.push(self.reply.get(..len).unwrap_or_default());
            }
            Output::ToPeer { socket, peer, data } => {
                match local_relay(&self.relay_ips, &self.local_relays, peer) {
                    Some(to) => {
                        let from = socket.local();
                        let len = stage(&mut self.peer_buf, data);
                        self.relayed_within += 1;
                        if let Some(out) =
                            self.server
                                .handle_peer(now, to, from, &mut self.peer_buf, len)
                        {
                            let framed = self.peer_buf.get(out.range).unwrap_or_default();
                            self.send_errors += to_client(
                                &self.listeners,
                                &mut self.queues,
                                &self.connections,
                                &out.tuple,
                                framed,
                            );
                            // A stream message is not part of a UDP round:
                            // what it queued for UDP clients leaves now.
                            for (listener, queue) in self.listeners.iter().zip(&mut self.queues) {
                                self.send_errors += queue.flush(listener);
                            }
                        }
                    }
                    None => {
                        if socket.send_to(data, peer).is_err() {
                            self.send_errors += 1;
                        }
                    }
                }
            }
            Output::Connect { socket, request } => {
                debug!(client = %tuple.client, peer = %request.peer, connection = request.connection, "Connect");
                if let Some(closed) = socket.closed() {
                    tokio::task::spawn_local(tcp_relay::connect(
                        self.me.clone(),
                        socket.local(),
                        closed,
                        request,
                    ));
                }
            }
            Output::Bind { connection, reply } => {
                // Queued whole, ahead of any peer byte: the client may not
                // send data before it has the answer (RFC 6062 §5.4).
                out.push_always(self.reply.get(..reply).unwrap_or_default());
                bound = Some(connection);
            }
        }
        self.log_events();
        bound
    }

    /// Hands an accepted peer connection to the state machine.
    pub(crate) fn peer_connected(
        &mut self,
        id: AllocationId,
        peer: SocketAddr,
    ) -> Option<PeerConnection> {
        self.server
            .peer_connected(Instant::now(), id, peer, &mut self.reply)
    }

    /// Sends the ConnectionAttempt for `attempt` to its client; `false` if
    /// the control connection is gone or not keeping up.
    pub(crate) fn announce(&self, attempt: &PeerConnection) -> bool {
        let indication = self.reply.get(..attempt.len).unwrap_or_default();
        self.connections
            .get(&attempt.control)
            .is_some_and(|conn| conn.push(indication))
    }

    /// Answers a Connect on its control connection; `false` if nobody is
    /// left to answer.
    pub(crate) fn connect_done(&mut self, request: ConnectRequest, connected: bool) -> bool {
        let tuple = request.tuple;
        let Some(len) =
            self.server
                .connect_done(Instant::now(), request, connected, &mut self.reply)
        else {
            return false;
        };
        let answer = self.reply.get(..len).unwrap_or_default();
        self.connections
            .get(&tuple)
            .is_some_and(|conn| conn.push_always(answer))
    }

    /// Tells the HTTP side this shard's figures.
    fn report(&self) {
        self.reports.publish(
            self.index,
            ShardReport {
                stats: self.server.stats().clone(),
                allocations: self.server.allocations_by_transport(),
                tls_handshakes: self.streams.tls_handshakes,
                tls_failures: self.streams.tls_failures,
                relayed_within: self.relayed_within,
                connections: self.connections.len() + self.streams.joined,
            },
        );
    }

    /// One line per allocation created and ended.
    pub(crate) fn log_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::AllocationCreated {
                    id,
                    username,
                    tuple,
                    relayed,
                    lifetime,
                } => info!(
                    shard = self.index,
                    allocation = %id,
                    user = %Printable(&username),
                    transport = %tuple.transport,
                    client = %tuple.client,
                    server = %tuple.server,
                    relayed = %relayed,
                    lifetime_s = lifetime.as_secs(),
                    "allocation created"
                ),
                Event::AllocationEnded {
                    id,
                    username,
                    tuple,
                    relayed,
                    reason,
                    duration,
                    traffic,
                } => info!(
                    shard = self.index,
                    allocation = %id,
                    user = %Printable(&username),
                    transport = %tuple.transport,
                    client = %tuple.client,
                    server = %tuple.server,
                    relayed = %relayed,
                    reason = reason.as_str(),
                    duration_ms = duration.as_millis(),
                    to_peer_packets = traffic.to_peer_packets,
                    to_peer_bytes = traffic.to_peer_bytes,
                    to_client_packets = traffic.to_client_packets,
                    to_client_bytes = traffic.to_client_bytes,
                    "allocation ended"
                ),
                _ => {}
            }
        }
    }
}

/// The allocation of this shard whose UDP relay is bound at `peer`, if
/// any. Most peers are not on a relay IP, and are told apart by comparing
/// one or two addresses.
#[inline]
fn local_relay(
    relay_ips: &[std::net::IpAddr],
    local: &LocalRelays,
    peer: SocketAddr,
) -> Option<AllocationId> {
    if relay_ips.contains(&peer.ip()) {
        local.get(&peer)
    } else {
        None
    }
}

/// Puts `data` in the first peer slot of `peer_buf`, where a datagram
/// read from a relay socket would be; returns its length.
fn stage(peer_buf: &mut [u8], data: &[u8]) -> usize {
    let len = data.len().min(MAX_PEER_PAYLOAD);
    if let Some(slot) = peer_buf.get_mut(PEER_HEADROOM..PEER_HEADROOM + len) {
        slot.copy_from_slice(data.get(..len).unwrap_or_default());
    }
    len
}

/// Sends `data`, a relayed datagram framed for its client, to the client
/// of `tuple`; returns the number of send errors.
fn to_client(
    listeners: &[Listener],
    queues: &mut [SendQueue],
    connections: &HashMap<FiveTuple, Rc<Outbound>>,
    tuple: &FiveTuple,
    data: &[u8],
) -> u64 {
    if tuple.transport.is_stream() {
        if let Some(conn) = connections.get(tuple) {
            conn.push(data);
        }
        return 0;
    }
    listeners
        .iter()
        .zip(queues.iter_mut())
        .find(|(l, _)| l.serves(tuple.server))
        .map_or(0, |(listener, queue)| {
            queue.push(listener, tuple.client, tuple.server.ip(), data)
        })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A user name as a log line shows it: control characters escaped, so
/// that a name (REST user names are whatever the minting service chose)
/// cannot forge log lines.
struct Printable<'a>(&'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod printable_tests {
    use super::Printable;

    #[test]
    fn control_characters_in_user_names_are_escaped() {
        assert_eq!(Printable("alice").to_string(), "alice");
        assert_eq!(
            Printable("1800000000:bob smith").to_string(),
            "1800000000:bob smith"
        );
        assert_eq!(
            Printable("x\nINFO forged\r\u{1b}[31m").to_string(),
            "x\\nINFO forged\\r\\u{1b}[31m"
        );
        assert_eq!(Printable("ünïcödé").to_string(), "ünïcödé");
    }
}

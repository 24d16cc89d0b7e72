//! Relayed transport addresses: one UDP socket per allocation, on a port
//! drawn at random from the configured range (RFC 8656 §7.2 asks for
//! unpredictable ports; a scan of the range finds nothing to aim at).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

use rand::RngExt as _;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use turnpike_turn::stun::Family;
use turnpike_turn::{AllocationId, BindError, BindRequest, Bound, Relays};

use crate::config::PortRange;
use crate::net::bind_udp;
use crate::shard::Shard;
use crate::sys::{self, Epoll};
use crate::tcp_relay;

/// How many ports one Allocate may try before giving up with 508.
const MAX_ATTEMPTS: usize = 64;

/// Which ports of the range this process holds. Shared by the shards;
/// locked only while an allocation is made or ends.
#[derive(Debug)]
pub(crate) struct PortPool {
    range: PortRange,
    used: Vec<u64>,
}

impl PortPool {
    pub(crate) fn new(range: PortRange) -> Self {
        Self {
            range,
            used: vec![0; range.len().div_ceil(64)],
        }
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.range
            .contains(port)
            .then(|| usize::from(port - self.range.first))
    }

    fn is_free(&self, port: u16) -> bool {
        self.index(port)
            .and_then(|i| self.used.get(i / 64).map(|w| w & (1 << (i % 64)) == 0))
            .unwrap_or(false)
    }

    fn set(&mut self, port: u16, used: bool) {
        if let Some(i) = self.index(port)
            && let Some(word) = self.used.get_mut(i / 64)
        {
            if used {
                *word |= 1 << (i % 64);
            } else {
                *word &= !(1 << (i % 64));
            }
        }
    }

    /// Free ports from `start` (an offset into the range) onwards, wrapping
    /// around, that satisfy `wanted`.
    fn candidates<'a>(
        &'a self,
        start: usize,
        wanted: impl Fn(&Self, u16) -> bool + 'a,
    ) -> impl Iterator<Item = u16> + 'a {
        let len = self.range.len();
        (0..len)
            .map(move |i| (start + i) % len)
            .filter_map(|offset| u16::try_from(offset).ok())
            .filter_map(|offset| self.range.first.checked_add(offset))
            .filter(move |&port| wanted(self, port))
    }
}

/// A port of the pool, returned when dropped.
#[derive(Debug)]
pub(crate) struct PortLease {
    pool: Arc<Mutex<PortPool>>,
    port: u16,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.set(self.port, false);
        }
    }
}

/// A port held for a later allocation (EVEN-PORT with R=1): its bound
/// socket and its lease. Any shard may claim it.
#[derive(Debug)]
pub(crate) struct ReservedPort {
    socket: std::net::UdpSocket,
    lease: PortLease,
}

/// An allocation's relay socket. A UDP relay is watched by its shard's
/// epoll set, which forgets it when it closes; dropping a TCP relay stops
/// its acceptor task, which holds the last other reference, and ends the
/// peer connections made through it.
#[derive(Debug)]
pub(crate) struct RelaySocket {
    inner: Rc<RelayInner>,
}

#[derive(Debug)]
pub(crate) struct RelayInner {
    pub(crate) kind: RelayKind,
    /// The bound address.
    pub(crate) local: SocketAddr,
    task: RefCell<Option<AbortHandle>>,
    /// The shard's table of its UDP relays, which this one leaves when it
    /// closes.
    listed: Option<LocalRelays>,
    _lease: PortLease,
}

/// A shard's UDP relay sockets by bound address: a datagram one of its
/// allocations sends to another of its allocations is handed over inside
/// the shard instead of crossing the kernel twice.
#[derive(Debug, Default, Clone)]
pub(crate) struct LocalRelays(Rc<RefCell<HashMap<SocketAddr, AllocationId>>>);

impl LocalRelays {
    /// The allocation whose relay is bound at `addr`, on this shard.
    #[inline]
    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<AllocationId> {
        self.0.borrow().get(addr).copied()
    }

    fn insert(&self, addr: SocketAddr, id: AllocationId) {
        self.0.borrow_mut().insert(addr, id);
    }

    fn remove(&self, addr: &SocketAddr) {
        self.0.borrow_mut().remove(addr);
    }
}

/// What a relay carries.
#[derive(Debug)]
pub(crate) enum RelayKind {
    /// Datagrams, on this non-blocking socket.
    Udp(std::net::UdpSocket),
    /// TCP connections (RFC 6062): peers connect to a listening socket
    /// (owned by the acceptor task); `closed` ends every connection of the
    /// allocation when the relay goes.
    Tcp { closed: watch::Sender<()> },
}

impl RelaySocket {
    /// Sends one datagram to a peer; a full socket buffer drops it, as UDP
    /// would. The send goes straight to the socket: waiting on the
    /// runtime's idea of writability would refuse the first send of a new
    /// socket, before the runtime has seen it writable.
    #[inline]
    pub(crate) fn send_to(&self, data: &[u8], peer: SocketAddr) -> io::Result<usize> {
        match &self.inner.kind {
            RelayKind::Udp(socket) => socket2::SockRef::from(socket).send_to(data, &peer.into()),
            RelayKind::Tcp { .. } => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// A UDP relay's socket.
    #[inline]
    pub(crate) fn udp(&self) -> Option<&std::net::UdpSocket> {
        match &self.inner.kind {
            RelayKind::Udp(socket) => Some(socket),
            RelayKind::Tcp { .. } => None,
        }
    }

    /// The bound address, which a TCP relay connects from.
    pub(crate) fn local(&self) -> SocketAddr {
        self.inner.local
    }

    /// For a TCP relay: a signal that the allocation has ended.
    pub(crate) fn closed(&self) -> Option<watch::Receiver<()>> {
        match &self.inner.kind {
            RelayKind::Tcp { closed } => Some(closed.subscribe()),
            RelayKind::Udp(_) => None,
        }
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        if let Some(task) = self.inner.task.borrow_mut().take() {
            task.abort();
        }
    }
}

impl Drop for RelayInner {
    fn drop(&mut self) {
        // Before the lease frees the port for another relay.
        if let Some(listed) = &self.listed {
            listed.remove(&self.local);
        }
    }
}

/// Binds relay sockets for one shard: UDP relays join the shard's epoll
/// set, TCP relays get an acceptor task.
#[derive(Debug)]
pub(crate) struct Binder {
    ipv4: Option<IpAddr>,
    ipv6: Option<IpAddr>,
    pool: Arc<Mutex<PortPool>>,
    epoll: Rc<Epoll>,
    /// This shard's UDP relays, by bound address.
    pub(crate) local: LocalRelays,
    /// The shard the tasks deliver to; set once the shard exists.
    pub(crate) shard: Weak<RefCell<Shard>>,
}

impl Binder {
    pub(crate) fn new(addresses: &[IpAddr], pool: Arc<Mutex<PortPool>>, epoll: Rc<Epoll>) -> Self {
        Self {
            ipv4: addresses.iter().copied().find(IpAddr::is_ipv4),
            ipv6: addresses.iter().copied().find(IpAddr::is_ipv6),
            pool,
            epoll,
            local: LocalRelays::default(),
            shard: Weak::new(),
        }
    }

    fn start_udp(
        &self,
        id: AllocationId,
        socket: std::net::UdpSocket,
        lease: PortLease,
    ) -> Result<RelaySocket, BindError> {
        let local = socket.local_addr().map_err(|_| BindError::Failed)?;
        self.epoll
            .add(&socket, id.get())
            .map_err(|_| BindError::Failed)?;
        self.local.insert(local, id);
        Ok(RelaySocket {
            inner: Rc::new(RelayInner {
                kind: RelayKind::Udp(socket),
                local,
                task: RefCell::new(None),
                listed: Some(self.local.clone()),
                _lease: lease,
            }),
        })
    }

    fn start_tcp(
        &self,
        id: AllocationId,
        listener: std::net::TcpListener,
        lease: PortLease,
    ) -> Result<RelaySocket, BindError> {
        let local = listener.local_addr().map_err(|_| BindError::Failed)?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|_| BindError::Failed)?;
        let (closed, ended) = watch::channel(());
        let inner = Rc::new(RelayInner {
            kind: RelayKind::Tcp { closed },
            local,
            task: RefCell::new(None),
            listed: None,
            _lease: lease,
        });
        let task = tokio::task::spawn_local(tcp_relay::accept_peers(
            self.shard.clone(),
            listener,
            id,
            ended,
        ));
        *inner.task.borrow_mut() = Some(task.abort_handle());
        Ok(RelaySocket { inner })
    }
}

/// A TCP relay's listening socket. It shares its port with the
/// connections Connect makes from it, which needs SO_REUSEPORT; set only
/// after the bind, the bind still fails on a port another socket holds, so
/// no two relays, of this process or another, ever share a port.
fn bind_tcp_relay(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.set_reuse_port(true)?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A TCP connection from a TCP relay's address to `peer` (RFC 6062 §5.2).
pub(crate) async fn connect_from(
    local: SocketAddr,
    peer: SocketAddr,
) -> io::Result<tokio::net::TcpStream> {
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    socket.connect(peer).await
}

impl Relays for Binder {
    type Socket = RelaySocket;
    type Reserved = ReservedPort;

    fn bind(
        &mut self,
        request: &BindRequest,
    ) -> Result<Bound<RelaySocket, ReservedPort>, BindError> {
        let ip = match request.family {
            Family::V4 => self.ipv4,
            Family::V6 => self.ipv6,
        }
        .ok_or(BindError::FamilyNotSupported)?;
        let bind_one = |port: u16| -> Option<Either> {
            let addr = SocketAddr::new(ip, port);
            if request.tcp {
                return bind_tcp_relay(addr).ok().map(Either::Tcp);
            }
            let socket = bind_udp(addr, false).ok()?;
            if request.dont_fragment {
                sys::set_dont_fragment(&socket, ip.is_ipv6()).ok()?;
            }
            Some(Either::Udp(socket))
        };

        let mut pool = self.pool.lock().map_err(|_| BindError::Failed)?;
        let even = request.even_port;
        let pair = request.reserve_next;
        let mut rng = rand::rng();
        for _ in 0..MAX_ATTEMPTS {
            // The first port this process does not hold, from a random
            // point of the range. Each attempt starts afresh at random: a
            // port that fails to bind is held by another program, which may
            // hold a long run of them (another relay, the ephemeral range),
            // so the next port along would most likely fail too.
            let start = rng.random_range(0..pool.range.len());
            let Some(port) = pool
                .candidates(start, |pool, port| {
                    (!even || port % 2 == 0)
                        && (!pair || port.checked_add(1).is_some_and(|next| pool.is_free(next)))
                        && pool.is_free(port)
                })
                .next()
            else {
                // Every port of the range is this process's own.
                return Err(BindError::NoPorts);
            };
            let Some(socket) = bind_one(port) else {
                continue;
            };
            let reserved = if pair {
                let next = port + 1;
                match bind_udp(SocketAddr::new(ip, next), false) {
                    Ok(socket) => {
                        pool.set(next, true);
                        Some((socket, next))
                    }
                    Err(_) => continue,
                }
            } else {
                None
            };
            pool.set(port, true);
            drop(pool);
            let lease = |port| PortLease {
                pool: Arc::clone(&self.pool),
                port,
            };
            let reserved = reserved.map(|(socket, next)| {
                (
                    ReservedPort {
                        socket,
                        lease: lease(next),
                    },
                    SocketAddr::new(ip, next),
                )
            });
            let socket = match socket {
                Either::Udp(socket) => self.start_udp(request.id, socket, lease(port))?,
                Either::Tcp(listener) => self.start_tcp(request.id, listener, lease(port))?,
            };
            return Ok(Bound {
                socket,
                addr: SocketAddr::new(ip, port),
                reserved,
            });
        }
        Err(BindError::NoPorts)
    }

    fn is_relayed(&self, addr: SocketAddr) -> bool {
        let ours = Some(addr.ip()) == self.ipv4 || Some(addr.ip()) == self.ipv6;
        ours && self
            .pool
            .lock()
            .is_ok_and(|pool| pool.index(addr.port()).is_some() && !pool.is_free(addr.port()))
    }

    fn adopt(
        &mut self,
        id: AllocationId,
        reserved: ReservedPort,
    ) -> Result<RelaySocket, BindError> {
        self.start_udp(id, reserved.socket, reserved.lease)
    }
}

/// A freshly bound relay socket of either kind.
enum Either {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_relay_port_is_its_own_and_its_connections() {
        let listener = bind_tcp_relay("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Another relay cannot bind it, nor a socket without SO_REUSEPORT...
        assert!(bind_tcp_relay(addr).is_err());
        let intruder = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        intruder.set_reuse_address(true).unwrap();
        assert!(intruder.bind(&addr.into()).is_err());
        // ...but a connection made from it does.
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = runtime
            .block_on(connect_from(addr, peer.local_addr().unwrap()))
            .unwrap();
        assert_eq!(stream.local_addr().unwrap(), addr);
        assert_eq!(peer.accept().unwrap().1, addr);
    }

    /// A plain UDP relay for allocation `i`.
    fn udp_request(i: u64) -> BindRequest {
        BindRequest {
            id: AllocationId::from_raw(i),
            family: turnpike_turn::stun::Family::V4,
            even_port: false,
            reserve_next: false,
            dont_fragment: false,
            tcp: false,
        }
    }

    #[test]
    fn a_long_run_of_ports_another_program_holds_is_stepped_over() {
        // Another program (this test) holds 200 consecutive ports of a
        // 256-port range; its own address keeps other tests out of it.
        let ip: IpAddr = "127.0.0.77".parse().unwrap();
        let range: PortRange = "61000-61255".parse().unwrap();
        let held: Vec<std::net::UdpSocket> = (61_000..61_200)
            .filter_map(|port| std::net::UdpSocket::bind((ip, port)).ok())
            .collect();
        assert!(held.len() > 190, "only {} ports could be held", held.len());
        let pool = Arc::new(Mutex::new(PortPool::new(range)));
        let mut binder = Binder::new(&[ip], pool, Rc::new(Epoll::new().unwrap()));
        let mut relays = Vec::new();
        for i in 0..40u64 {
            let request = udp_request(i);
            // Trying the next port after each that fails would meet 64
            // held ones in a row about half the time.
            let bound = binder
                .bind(&request)
                .unwrap_or_else(|e| panic!("relay {i}: {e:?}"));
            relays.push(bound);
        }
    }

    /// SECURITY.md §C: relay ports are drawn at random, not handed out in
    /// order. 200 relays from a range of 1,000 ports land in every tenth of
    /// it (the chance that a tenth stays empty by luck is 10 × 0.9^200,
    /// below 10^-8), and few follow the previous one.
    #[test]
    fn relay_ports_are_unpredictable() {
        let ip: IpAddr = "127.0.0.78".parse().unwrap();
        let range: PortRange = "62000-62999".parse().unwrap();
        let pool = Arc::new(Mutex::new(PortPool::new(range)));
        let mut binder = Binder::new(&[ip], pool, Rc::new(Epoll::new().unwrap()));
        let mut relays = Vec::new();
        for i in 0..200u64 {
            let request = udp_request(i);
            relays.push(binder.bind(&request).unwrap());
        }
        let ports: Vec<u16> = relays.iter().map(|r| r.addr.port()).collect();
        for tenth in 0..10 {
            let low = 62_000 + tenth * 100;
            assert!(
                ports.iter().any(|p| (low..low + 100).contains(p)),
                "no relay port in {low}..{}: {ports:?}",
                low + 100
            );
        }
        let in_sequence = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(
            in_sequence < 20,
            "{in_sequence} of 200 ports follow the previous one"
        );
    }

    #[test]
    fn pool_hands_out_free_ports_with_parity() {
        let range: PortRange = "40000-40009".parse().unwrap();
        let mut pool = PortPool::new(range);
        let all: Vec<u16> = pool.candidates(3, |p, port| p.is_free(port)).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], 40003, "starts at the offset");
        pool.set(40004, true);
        let even: Vec<u16> = pool
            .candidates(0, |p, port| port % 2 == 0 && p.is_free(port))
            .collect();
        assert_eq!(even, vec![40000, 40002, 40006, 40008]);
        assert!(!pool.is_free(40004));
        assert!(!pool.is_free(39999), "outside the range is never free");
        pool.set(40004, false);
        assert!(pool.is_free(40004));
    }
}

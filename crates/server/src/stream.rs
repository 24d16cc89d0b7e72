//! TURN over TCP and TLS, and the port shared with HTTP(S).
//!
//! Each accepted connection is one client 5-tuple (RFC 8656 §3.1): its
//! messages are framed out of the byte stream and fed to the shard's
//! server; answers and relayed data go out through a bounded buffer that a
//! writer drains. Closing the connection ends its allocation. A connection
//! that binds an RFC 6062 peer connection stops carrying messages and
//! carries that connection's bytes instead (`tcp_relay`).
//!
//! A listener with `http` decides per connection what it carries: on TLS,
//! by ALPN when the client names a protocol, else by the first decrypted
//! byte; on plain TCP, by the first byte (0x16 starts a TLS handshake).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::debug;
use turnpike_turn::stun::framing::{Deframer, FrameError};
use turnpike_turn::{ConnectionId, FiveTuple, Transport};

use crate::config::StreamLimits;
use crate::shard::Shard;
use crate::tcp_relay;
use crate::tls::{ALPN_HTTP, ALPN_TURN};

/// Bytes waiting to be written to one client before more are dropped.
/// Relayed datagrams are dropped as UDP would drop them.
const OUTBOUND_LIMIT: usize = 256 * 1024;

/// What a listener socket of a shard serves.
#[derive(Clone)]
pub(crate) struct StreamListener {
    /// Every connection starts with a TLS handshake.
    pub(crate) tls_only: bool,
    /// The certificate for TLS: on TLS listeners, and on TCP listeners
    /// shared with HTTP (where a first byte 0x16 starts a handshake).
    pub(crate) acceptor: Option<TlsAcceptor>,
    pub(crate) http: bool,
    pub(crate) router: Option<axum::Router>,
    pub(crate) limits: StreamLimits,
    /// Connections open on every shard, against `limits.connections` and
    /// `limits.connections_per_source`.
    pub(crate) open: Arc<OpenConnections>,
}

/// Accepts connections on one listener socket of a shard.
pub(crate) async fn accept_loop(
    shard: Weak<RefCell<Shard>>,
    listener: tokio::net::TcpListener,
    serves: StreamListener,
) {
    loop {
        let (socket, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: a later accept may succeed.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(tcp_relay::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = match OpenConnections::take(&serves.open, client.ip(), &serves.limits) {
            Ok(slot) => slot,
            Err(limit) => {
                debug!(%client, limit, "connection refused");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let server = match socket.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let shard = shard.clone();
        let serves = serves.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            if let Err(e) = connection(shard, socket, client, server, serves).await {
                debug!(%client, error = %e, "connection ended");
            }
        });
    }
}

/// TCP and TLS connections open on every shard together: in all, and per
/// source. A source is an IPv4 address or an IPv6 /64 (one host usually
/// holds a whole /64). Sources with nothing open are forgotten.
#[derive(Debug, Default)]
pub(crate) struct OpenConnections {
    total: AtomicUsize,
    by_source: Mutex<HashMap<Source, usize>>,
}

/// Which cap a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    Total,
    PerSource,
}

impl OpenConnections {
    /// Counts a new connection from `ip`, or names the limit it is over.
    fn take(
        open: &Arc<Self>,
        ip: IpAddr,
        limits: &StreamLimits,
    ) -> Result<ConnectionSlot, &'static str> {
        Self::admit(open, ip, limits.connections, limits.connections_per_source).map_err(|over| {
            match over {
                Over::Total => "limits.connections",
                Over::PerSource => "limits.connections_per_source",
            }
        })
    }

    /// Counts a new connection from `ip` if fewer than `connections` are
    /// open in all and fewer than `per_source` from its source.
    pub(crate) fn admit(
        open: &Arc<Self>,
        ip: IpAddr,
        connections: usize,
        per_source: usize,
    ) -> Result<ConnectionSlot, Over> {
        if open.total.fetch_add(1, Ordering::Relaxed) >= connections {
            open.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Over::Total);
        }
        let source = source_key(ip);
        let Ok(mut by_source) = open.by_source.lock() else {
            open.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Over::PerSource);
        };
        let held = by_source.entry(source).or_insert(0);
        if *held >= per_source {
            if *held == 0 {
                by_source.remove(&source);
            }
            open.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Over::PerSource);
        }
        *held += 1;
        Ok(ConnectionSlot {
            open: Arc::clone(open),
            source,
        })
    }

    /// Sources with a connection open (for tests: it must fall back to 0).
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.by_source.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// What connections count under: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

fn source_key(ip: IpAddr) -> Source {
    match turnpike_turn::policy::canonical(ip) {
        IpAddr::V4(v4) => Source::V4(u32::from(v4)),
        IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
    }
}

/// One open connection, counted until dropped.
pub(crate) struct ConnectionSlot {
    open: Arc<OpenConnections>,
    source: Source,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.total.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut by_source) = self.open.by_source.lock()
            && let Some(held) = by_source.get_mut(&self.source)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// What a connection turned out to carry.
enum Carries {
    Turn,
    Http,
    Tls,
}

async fn connection(
    shard: Weak<RefCell<Shard>>,
    socket: tokio::net::TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    serves: StreamListener,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + serves.limits.handshake_timeout;
    let tuple = |transport| FiveTuple {
        transport,
        client: canonical(client),
        server: canonical(server),
    };
    match (&serves.acceptor, serves.tls_only, serves.http) {
        (Some(acceptor), true, _) => {
            let io = Prefixed::new(socket, Vec::new());
            tls(
                shard,
                io,
                acceptor,
                tuple(Transport::Tls),
                &serves,
                deadline,
            )
            .await
        }
        (_, _, false) => {
            turn(
                shard,
                Prefixed::new(socket, Vec::new()),
                tuple(Transport::Tcp),
                serves.limits,
            )
            .await
        }
        (acceptor, _, true) => {
            let (socket, first) = first_bytes(socket, deadline).await?;
            let io = Prefixed::new(socket, first);
            match (classify_plain(io.prefix.first().copied()), acceptor) {
                (Carries::Turn, _) => turn(shard, io, tuple(Transport::Tcp), serves.limits).await,
                (Carries::Tls, Some(acceptor)) => {
                    tls(
                        shard,
                        io,
                        acceptor,
                        tuple(Transport::Tls),
                        &serves,
                        deadline,
                    )
                    .await
                }
                (Carries::Http | Carries::Tls, _) => {
                    crate::http::serve_from(io, serves.router.clone(), client).await
                }
            }
        }
    }
}

/// A connection's first byte on a plain TCP listener shared with HTTP.
fn classify_plain(first: Option<u8>) -> Carries {
    match first {
        Some(0x16) => Carries::Tls,
        Some(0x00..=0x01) => Carries::Turn,
        _ => Carries::Http,
    }
}

async fn tls(
    shard: Weak<RefCell<Shard>>,
    io: Prefixed<tokio::net::TcpStream>,
    acceptor: &TlsAcceptor,
    tuple: FiveTuple,
    serves: &StreamListener,
    deadline: tokio::time::Instant,
) -> io::Result<()> {
    let accepted = tokio::time::timeout_at(deadline, acceptor.accept(io)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => {
            count(&shard, |c| c.tls_handshakes += 1);
            stream
        }
        Ok(Err(e)) => {
            count(&shard, |c| c.tls_failures += 1);
            return Err(e);
        }
        Err(_) => {
            count(&shard, |c| c.tls_failures += 1);
            return Err(io::ErrorKind::TimedOut.into());
        }
    };
    if !serves.http {
        return turn(
            shard,
            Prefixed::new(stream, Vec::new()),
            tuple,
            serves.limits,
        )
        .await;
    }
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    match alpn.as_deref() {
        Some(ALPN_TURN) => {
            turn(
                shard,
                Prefixed::new(stream, Vec::new()),
                tuple,
                serves.limits,
            )
            .await
        }
        Some(p) if ALPN_HTTP.contains(&p) => {
            crate::http::serve_from(
                Prefixed::new(stream, Vec::new()),
                serves.router.clone(),
                tuple.client,
            )
            .await
        }
        _ => {
            // Most TURN clients name no protocol: the first byte decides.
            let (stream, first) = first_bytes(stream, deadline).await?;
            if matches!(first.first(), Some(0x00..=0x01)) {
                turn(shard, Prefixed::new(stream, first), tuple, serves.limits).await
            } else {
                crate::http::serve_from(
                    Prefixed::new(stream, first),
                    serves.router.clone(),
                    tuple.client,
                )
                .await
            }
        }
    }
}

/// Reads until at least one byte arrives, before `deadline`.
async fn first_bytes<S: AsyncRead + Unpin>(
    mut io: S,
    deadline: tokio::time::Instant,
) -> io::Result<(S, Vec<u8>)> {
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout_at(deadline, io.read(&mut buf))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.truncate(n);
    Ok((io, buf))
}

fn count(shard: &Weak<RefCell<Shard>>, f: impl FnOnce(&mut crate::shard::StreamCounters)) {
    if let Some(s) = shard.upgrade() {
        f(&mut s.borrow_mut().streams);
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(turnpike_turn::policy::canonical(addr.ip()), addr.port())
}

/// A TURN client on a stream, until it closes or times out; or, once it
/// binds an RFC 6062 peer connection, until that ends.
async fn turn<S>(
    shard: Weak<RefCell<Shard>>,
    io: Prefixed<S>,
    tuple: FiveTuple,
    limits: StreamLimits,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let out = Rc::new(Outbound::default());
    let Some(strong) = shard.upgrade() else {
        return Ok(());
    };
    strong
        .borrow_mut()
        .connections
        .insert(tuple, Rc::clone(&out));
    drop(strong);

    let (mut rd, mut wr) = tokio::io::split(io);
    let (result, bound) = {
        let reader = read_messages(&shard, &mut rd, tuple, &out, limits);
        let writer = write_out(&mut wr, &out);
        tokio::pin!(reader, writer);
        let (result, bound) = tokio::select! {
            r = &mut reader => match r {
                Ok(bound) => (Ok(()), bound),
                Err(e) => (Err(e), None),
            },
            w = &mut writer => (w, None),
        };
        if bound.is_some() {
            // The answer to ConnectionBind goes out before any peer byte.
            out.finish();
            ((&mut writer).await, bound)
        } else {
            (result, bound)
        }
    };
    if let Some(s) = shard.upgrade() {
        let mut s = s.borrow_mut();
        s.connections.remove(&tuple);
        s.server.close(Instant::now(), &tuple);
        s.log_events();
    }
    let Some((connection, leftover)) = bound.filter(|_| result.is_ok()) else {
        let _ = wr.shutdown().await;
        return result;
    };
    let waiting = shard
        .upgrade()
        .and_then(|s| s.borrow().parked.take(connection));
    let mut client = Prefixed::new(rd.unsplit(wr), leftover);
    if let Some(waiting) = waiting {
        count(&shard, |c| c.joined += 1);
        let (to_peer, to_client) = tcp_relay::join(&mut client, connection, waiting).await;
        if let Some(s) = shard.upgrade() {
            let mut s = s.borrow_mut();
            s.streams.joined = s.streams.joined.saturating_sub(1);
            s.server.tcp_relayed(to_peer, to_client);
            s.server.shared().connection_ended(connection);
        }
    }
    let _ = client.shutdown().await;
    Ok(())
}

/// Feeds the shard every message the client sends, until it closes, times
/// out, or binds a peer connection: then returns the connection's ID and
/// the bytes read past the ConnectionBind, which are the peer's.
async fn read_messages<R: AsyncRead + Unpin>(
    shard: &Weak<RefCell<Shard>>,
    rd: &mut R,
    tuple: FiveTuple,
    out: &Outbound,
    limits: StreamLimits,
) -> io::Result<Option<(ConnectionId, Vec<u8>)>> {
    let mut frames = match shard.upgrade() {
        Some(s) => {
            Deframer::with_limit(s.borrow().server.shared().config().limits.max_message_size)
        }
        None => return Ok(None),
    };
    // Until its first message is in, a connection is half-open.
    let mut deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    loop {
        // Every complete message in the buffer, in order.
        let mut took = false;
        while let Some(message) = frames.next_message().map_err(|e| {
            if let (FrameError::TooLarge { .. }, Some(s)) = (e, shard.upgrade()) {
                s.borrow_mut().server.count_oversized();
            }
            io::Error::new(io::ErrorKind::InvalidData, e)
        })? {
            took = true;
            let Some(s) = shard.upgrade() else {
                return Ok(None);
            };
            let bound = s.borrow_mut().on_stream_message(tuple, message, out);
            if let Some(connection) = bound {
                return Ok(Some((connection, frames.rest().to_vec())));
            }
        }
        if took {
            // A connection without an allocation is idle after a while; one
            // with an allocation lives as long as the allocation does.
            let Some(s) = shard.upgrade() else {
                return Ok(None);
            };
            let allocated = s.borrow().server.has_allocation(&tuple);
            let idle = if allocated {
                ALLOCATED_IDLE
            } else {
                limits.idle_timeout
            };
            deadline = tokio::time::Instant::now() + idle;
        }
        let n = tokio::time::timeout_at(deadline, rd.read(frames.room()))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(None);
        }
        frames.filled(n);
    }
}

/// How long a connection that holds an allocation may be silent: longer
/// than any allocation lives, since the allocation's own expiry governs.
const ALLOCATED_IDLE: std::time::Duration = std::time::Duration::from_secs(3700);

/// Writes what is queued for the client; returns once [`Outbound::finish`]
/// was called and everything queued is written.
async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &Outbound) -> io::Result<()> {
    let mut spare = Vec::with_capacity(16 * 1024);
    loop {
        if out.finishing.get() && out.buf.borrow().is_empty() {
            return Ok(());
        }
        out.ready.notified().await;
        std::mem::swap(&mut *out.buf.borrow_mut(), &mut spare);
        if spare.is_empty() {
            continue;
        }
        wr.write_all(&spare).await?;
        wr.flush().await?;
        spare.clear();
    }
}

/// Bytes on their way to one stream client.
#[derive(Default)]
pub(crate) struct Outbound {
    buf: RefCell<Vec<u8>>,
    ready: Notify,
    dropped: Cell<u64>,
    finishing: Cell<bool>,
}

impl Outbound {
    /// Queues `data`; `false` (and dropped) when the client is not keeping
    /// up.
    pub(crate) fn push(&self, data: &[u8]) -> bool {
        if self.buf.borrow().len() + data.len() > OUTBOUND_LIMIT {
            self.dropped.set(self.dropped.get() + 1);
            return false;
        }
        self.push_always(data)
    }

    /// Queues an answer that must not be lost, whatever is queued already.
    /// Only for answers the state machine bounds (RFC 6062's, at most
    /// [`turnpike_turn::MAX_CONNECTIONS_PER_ALLOCATION`] per allocation).
    pub(crate) fn push_always(&self, data: &[u8]) -> bool {
        if self.finishing.get() {
            return false;
        }
        self.buf.borrow_mut().extend_from_slice(data);
        self.ready.notify_one();
        true
    }

    /// Nothing more will be queued: the writer stops once the queue is out.
    fn finish(&self) {
        self.finishing.set(true);
        self.ready.notify_one();
    }
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.prefix.get(this.at..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, per_source: usize) -> StreamLimits {
        StreamLimits {
            connections,
            connections_per_source: per_source,
            ..StreamLimits::default()
        }
    }

    #[test]
    fn connections_are_capped_in_all_and_per_source_and_forgotten_when_closed() {
        let open = Arc::new(OpenConnections::default());
        let l = limits(5, 2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let a_mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        let b6: IpAddr = "2001:db8::1".parse().unwrap();
        let b6_same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c6: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let a1 = OpenConnections::take(&open, a, &l).unwrap();
        let a2 = OpenConnections::take(&open, a_mapped, &l).unwrap();
        assert_eq!(
            OpenConnections::take(&open, a, &l).err(),
            Some("limits.connections_per_source"),
            "a mapped address is the same source"
        );
        let b1 = OpenConnections::take(&open, b6, &l).unwrap();
        let b2 = OpenConnections::take(&open, b6_same_64, &l).unwrap();
        assert!(
            OpenConnections::take(&open, b6, &l).is_err(),
            "one /64, one source"
        );
        let c1 = OpenConnections::take(&open, c6, &l).unwrap();
        assert_eq!(
            OpenConnections::take(&open, "192.0.2.9".parse().unwrap(), &l).err(),
            Some("limits.connections")
        );
        assert_eq!(open.sources(), 3);
        drop(a1);
        let a3 = OpenConnections::take(&open, a, &l).unwrap();
        for slot in [a2, a3, b1, b2, c1] {
            drop(slot);
        }
        assert_eq!(open.sources(), 0, "nothing kept for sources that left");
        assert_eq!(open.total.load(Ordering::Relaxed), 0);
    }
}

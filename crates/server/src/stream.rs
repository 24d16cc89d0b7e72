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
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::debug;
use turnpike_turn::stun::framing::{self, MAX_FRAME};
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
    /// Connections open on every shard, against `limits.connections`.
    pub(crate) open: Arc<AtomicUsize>,
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
        let Some(slot) = ConnectionSlot::take(&serves.open, serves.limits.connections) else {
            debug!(%client, "connection refused: at the connection limit");
            continue;
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

/// Counts an open connection; released when dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        if open.fetch_add(1, Ordering::Relaxed) >= limit {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(Arc::clone(open)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
                    crate::http::serve(io, serves.router.clone()).await
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
            crate::http::serve(Prefixed::new(stream, Vec::new()), serves.router.clone()).await
        }
        _ => {
            // Most TURN clients name no protocol: the first byte decides.
            let (stream, first) = first_bytes(stream, deadline).await?;
            if matches!(first.first(), Some(0x00..=0x01)) {
                turn(shard, Prefixed::new(stream, first), tuple, serves.limits).await
            } else {
                crate::http::serve(Prefixed::new(stream, first), serves.router.clone()).await
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
    let mut buf = vec![0u8; MAX_FRAME];
    let mut filled = 0;
    // Until its first message is in, a connection is half-open.
    let mut deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    loop {
        // Every complete message in the buffer, in order.
        let mut start = 0;
        while let Some(len) = framing::frame_len(buf.get(start..filled).unwrap_or_default())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            let Some(message) = buf
                .get(start..start + len)
                .filter(|_| start + len <= filled)
            else {
                break;
            };
            let Some(s) = shard.upgrade() else {
                return Ok(None);
            };
            let bound = s.borrow_mut().on_stream_message(tuple, message, out);
            start += len;
            if let Some(connection) = bound {
                let rest = buf.get(start..filled).unwrap_or_default().to_vec();
                return Ok(Some((connection, rest)));
            }
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
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
        let room = buf.get_mut(filled..).unwrap_or_default();
        let n = tokio::time::timeout_at(deadline, rd.read(room))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
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

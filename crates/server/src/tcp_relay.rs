//! RFC 6062 at run time: the TCP connections a TCP allocation relays.
//!
//! A peer connection is made by Connect or accepted on the relayed
//! address; until the client binds it with ConnectionBind (on a new
//! connection, which may land on any shard) it waits here, parked, with
//! what the peer sends held in the kernel's buffer. Once bound, the two
//! connections are joined and bytes flow as they are until either side
//! closes or the allocation ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Weak;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tracing::{debug, info};
use turnpike_turn::{AllocationId, BIND_WINDOW, ConnectRequest, ConnectionId};

use crate::relay;
use crate::shard::Shard;

/// How long Connect waits for a peer to accept: less than a client's
/// transaction timeout over TCP (39.5 s, RFC 8489 §6.2.2), so the client
/// hears the 447 before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before accepting again after the system refused (out
/// of descriptors, say).
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Peer connections waiting for their ConnectionBind, by ID. Shared by the
/// shards: the bind may arrive on any of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parked(Arc<Mutex<HashMap<ConnectionId, Waiting>>>);

#[derive(Debug)]
pub(crate) struct Waiting {
    /// Taken off its shard's runtime, to be picked up by another.
    stream: std::net::TcpStream,
    /// Fires when the allocation ends.
    closed: watch::Receiver<()>,
}

impl Parked {
    /// Holds `stream` as `id` until a bind takes it, the window closes or
    /// the allocation ends; the last two free the ID.
    fn park(
        &self,
        shard: &Weak<RefCell<Shard>>,
        id: ConnectionId,
        stream: tokio::net::TcpStream,
        closed: watch::Receiver<()>,
    ) -> io::Result<()> {
        let stream = stream.into_std()?;
        let mut ended = closed.clone();
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .insert(id, Waiting { stream, closed });
        let parked = self.clone();
        let shard = shard.clone();
        tokio::task::spawn_local(async move {
            tokio::select! {
                () = tokio::time::sleep(BIND_WINDOW) => {}
                _ = ended.changed() => {}
            }
            if parked.take(id).is_some() {
                debug!(connection = id, "peer connection never bound");
                if let Some(shard) = shard.upgrade() {
                    shard.borrow().server.shared().connection_ended(id);
                }
            }
        });
        Ok(())
    }

    /// The peer connection `id`, for the client connection that bound it.
    pub(crate) fn take(&self, id: ConnectionId) -> Option<Waiting> {
        self.0.lock().ok()?.remove(&id)
    }
}

/// Accepts peers' connections to a TCP allocation's relayed address
/// (RFC 6062 §5.3): each one the allocation admits is announced to the
/// client with ConnectionAttempt and parked; the others are closed.
pub(crate) async fn accept_peers(
    shard: Weak<RefCell<Shard>>,
    listener: tokio::net::TcpListener,
    id: AllocationId,
    closed: watch::Receiver<()>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "relay accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(strong) = shard.upgrade() else {
            return;
        };
        let mut s = strong.borrow_mut();
        let peer = SocketAddr::new(turnpike_turn::policy::canonical(peer.ip()), peer.port());
        let Some(attempt) = s.peer_connected(id, peer) else {
            debug!(allocation = %id, %peer, "peer connection refused");
            continue;
        };
        debug!(allocation = %id, %peer, connection = attempt.connection, "peer connection accepted");
        let parked = s.parked.clone();
        let announced = parked
            .park(&shard, attempt.connection, stream, closed.clone())
            .is_ok()
            && s.announce(&attempt);
        if !announced {
            parked.take(attempt.connection);
            s.server.shared().connection_ended(attempt.connection);
        }
    }
}

/// Carries out a Connect (RFC 6062 §5.2) from the relayed address `local`
/// and answers it on the client's control connection.
pub(crate) async fn connect(
    shard: Weak<RefCell<Shard>>,
    local: SocketAddr,
    closed: watch::Receiver<()>,
    request: ConnectRequest,
) {
    let peer = request.peer;
    let mut ended = closed.clone();
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, relay::connect_from(local, peer));
    let outcome = tokio::select! {
        outcome = attempt => outcome,
        // The allocation is gone, and its connection IDs with it.
        _ = ended.changed() => return,
    };
    let stream = match outcome {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(%local, %peer, error = %e, "Connect failed");
            None
        }
        Err(_) => {
            debug!(%local, %peer, "Connect timed out");
            None
        }
    };
    let Some(strong) = shard.upgrade() else {
        return;
    };
    let mut s = strong.borrow_mut();
    let id = request.connection;
    let parked = s.parked.clone();
    let connected = match stream {
        Some(stream) => parked.park(&shard, id, stream, closed).is_ok(),
        None => false,
    };
    if !s.connect_done(request, connected) && connected {
        // The allocation or its control connection is gone.
        parked.take(id);
    }
}

/// Joins a bound client connection to its peer connection `id` until
/// either closes or the allocation ends; returns the bytes carried to the
/// peer and to the client, however it ended.
pub(crate) async fn join<C>(client: &mut C, id: ConnectionId, waiting: Waiting) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Waiting { stream, mut closed } = waiting;
    let Ok(peer) = tokio::net::TcpStream::from_std(stream) else {
        return (0, 0);
    };
    let _ = peer.set_nodelay(true);
    let peer_addr = peer
        .peer_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
    let mut peer = Counted::new(peer);
    let started = Instant::now();
    let reason = tokio::select! {
        copied = tokio::io::copy_bidirectional(client, &mut peer) => match copied {
            Ok(_) => "closed",
            Err(_) => "failed",
        },
        _ = closed.changed() => "deallocated",
    };
    info!(
        connection = id,
        peer = %peer_addr,
        reason,
        duration_ms = started.elapsed().as_millis(),
        to_peer_bytes = peer.written,
        to_client_bytes = peer.read,
        "peer connection ended"
    );
    (peer.written, peer.read)
}

/// A stream that counts the bytes through it.
struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

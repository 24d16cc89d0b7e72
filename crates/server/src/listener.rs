//! A client-facing UDP socket of one shard, with batched receive and the
//! destination address of each datagram (so that a wildcard listener
//! answers from the address the client reached), and the queue of
//! datagrams it sends, flushed in batches.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use quinn_udp::{RecvMeta, UdpSocketState};

use crate::sys::{self, Outgoing};

/// Bytes a send queue holds before it must flush.
const QUEUE_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct Listener {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    pub(crate) local: SocketAddr,
}

impl Listener {
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        Ok(Self {
            socket,
            state,
            local,
        })
    }

    /// Whether this socket is the server side of `server`.
    pub(crate) fn serves(&self, server: SocketAddr) -> bool {
        self.local.port() == server.port()
            && self.local.is_ipv4() == server.is_ipv4()
            && (self.local.ip().is_unspecified() || self.local.ip() == server.ip())
    }

    /// Receives a batch of datagrams; `WouldBlock` when there is none.
    pub(crate) fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv((&self.socket).into(), bufs, meta)
    }

    /// The source address to send from, when the socket is bound to a
    /// wildcard address and so cannot tell by itself.
    pub(crate) fn source(&self, from: IpAddr) -> Option<IpAddr> {
        self.local.ip().is_unspecified().then_some(from)
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Datagrams waiting to leave through one listener. A shard queues what it
/// sends while it handles a round of ready sockets, then flushes once, so
/// one system call carries many datagrams.
#[derive(Debug)]
pub(crate) struct SendQueue {
    bytes: Vec<u8>,
    datagrams: Vec<Outgoing>,
}

impl SendQueue {
    pub(crate) fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(QUEUE_BYTES),
            datagrams: Vec::with_capacity(sys::MAX_BATCH),
        }
    }

    /// Queues `data` for `to`, flushing first when the queue is full;
    /// returns how many datagrams that flush dropped.
    pub(crate) fn push(
        &mut self,
        listener: &Listener,
        to: SocketAddr,
        from: IpAddr,
        data: &[u8],
    ) -> u64 {
        let mut dropped = 0;
        if self.datagrams.len() == sys::MAX_BATCH
            || self.bytes.len() + data.len() > QUEUE_BYTES.max(data.len())
        {
            dropped = self.flush(listener);
        }
        self.datagrams.push(Outgoing {
            to,
            from: listener.source(from),
            start: self.bytes.len(),
            len: data.len(),
        });
        self.bytes.extend_from_slice(data);
        dropped
    }

    /// Sends everything queued. A datagram the kernel refuses (a full
    /// buffer, say) is dropped, as UDP would, and the rest go on; returns
    /// how many were dropped.
    pub(crate) fn flush(&mut self, listener: &Listener) -> u64 {
        let mut dropped = 0;
        let mut rest = self.datagrams.as_slice();
        while !rest.is_empty() {
            match sys::send_many(listener, &self.bytes, rest) {
                Ok(n) if n > 0 => {
                    rest = rest.get(n..).unwrap_or_default();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket buffer is full: the rest would fare no
                    // better.
                    dropped += rest.len() as u64;
                    break;
                }
                Ok(_) | Err(_) => {
                    dropped += 1;
                    rest = rest.get(1..).unwrap_or_default();
                }
            }
        }
        self.datagrams.clear();
        self.bytes.clear();
        dropped
    }
}

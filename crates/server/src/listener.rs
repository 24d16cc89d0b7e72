//! A client-facing UDP socket of one shard, with batched receive and the
//! destination address of each datagram (so that a wildcard listener
//! answers from the address the client reached).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    pub(crate) local: SocketAddr,
}

impl Listener {
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        Ok(Self {
            socket: tokio::net::UdpSocket::from_std(socket)?,
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
        self.socket.try_io(Interest::READABLE, || {
            self.state.recv((&self.socket).into(), bufs, meta)
        })
    }

    /// Sends one datagram to `to`, from `from` when the socket is bound to
    /// a wildcard address. A full socket buffer drops it, as UDP would; the
    /// send goes straight to the socket, never waiting for writability.
    pub(crate) fn send(&self, to: SocketAddr, from: IpAddr, data: &[u8]) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: self.local.ip().is_unspecified().then_some(from),
        };
        self.socket.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), &transmit)
        })
    }
}

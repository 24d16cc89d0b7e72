//! A UDP socket for probe traffic that marks what it sends with a DSCP
//! and tells the DSCP of what it receives: a tokio socket made with
//! socket2 (`IP_TOS` / `IPV6_TCLASS` for sends, `IP_RECVTOS` /
//! `IPV6_RECVTCLASS` for receipts), read with `recvmsg` so that the TOS
//! byte or traffic class arrives as a control message. Safe code only:
//! the control messages are parsed by nix's safe interface.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

/// The mark last set: none yet.
const UNSET: u16 = u16::MAX;

/// A datagram received: its length, where it came from, and its DSCP
/// (0-63) when the system told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    pub(crate) dscp: Option<u8>,
}

/// A UDP socket that marks and reads DSCP.
#[derive(Debug)]
pub(crate) struct Udp {
    socket: UdpSocket,
    v6: bool,
    /// The DSCP sends carry now ([`UNSET`]: the system's default).
    mark: AtomicU16,
}

impl Udp {
    /// A socket bound to `local`, asking for the DSCP of what arrives.
    pub(crate) fn bind(local: SocketAddr) -> io::Result<Self> {
        let v6 = local.is_ipv6();
        let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
        if v6 {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        // Without it, receipts carry no DSCP (None): not an error.
        let _ = if v6 {
            socket.set_recv_tclass_v6(true)
        } else {
            socket.set_recv_tos_v4(true)
        };
        Ok(Self {
            socket: UdpSocket::from_std(socket.into())?,
            v6,
            mark: AtomicU16::new(UNSET),
        })
    }

    /// A socket on an ephemeral port of the unspecified address of
    /// `peer`'s family.
    pub(crate) fn for_peer(peer: SocketAddr) -> io::Result<Self> {
        Self::bind(crate::net::wildcard_for(peer.ip()))
    }

    /// Sends go to `peer` alone, and only its datagrams arrive.
    pub(crate) async fn connect(&self, peer: SocketAddr) -> io::Result<()> {
        self.socket.connect(peer).await
    }

    /// Marks what is sent from now on with `dscp` (0-63; ECN bits 0), or
    /// with none (0). Nothing is done when the mark is already that one.
    pub(crate) fn set_dscp(&self, dscp: Option<u8>) -> io::Result<()> {
        let want = u16::from(dscp.unwrap_or(0) & 0x3F);
        if self.mark.load(Ordering::Relaxed) == want {
            return Ok(());
        }
        let tos = u32::from(want) << 2;
        let socket = SockRef::from(&self.socket);
        if self.v6 {
            socket.set_tclass_v6(tos)?;
        } else {
            socket.set_tos_v4(tos)?;
        }
        self.mark.store(want, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `bytes` on a connected socket.
    pub(crate) async fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        self.socket.send(bytes).await
    }

    /// The next datagram, into `buf`, with its DSCP when known.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.socket
            .async_io(tokio::io::Interest::READABLE, || {
                recv_now(&self.socket, buf)
            })
            .await
    }
}

/// One `recvmsg`, without waiting (the socket is non-blocking: nothing
/// there is `WouldBlock`, which tokio waits on).
#[cfg(unix)]
fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd as _;

    let mut iov = [io::IoSliceMut::new(buf)];
    // Room for one int-sized control message (IPV6_TCLASS is an int,
    // IP_TOS a byte) and more, should the system add any.
    let mut control = nix::cmsg_space!(i32, i32);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut dscp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Tos(tos) => dscp = Some(tos >> 2),
                ControlMessageOwned::Ipv6TClass(tclass) => {
                    dscp = u8::try_from((tclass & 0xFF) >> 2).ok();
                }
                _ => {}
            }
        }
    }
    let from = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no source address"))?;
    Ok(Received {
        len: msg.bytes,
        from,
        dscp,
    })
}

#[cfg(unix)]
fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Elsewhere: the datagram without its DSCP.
#[cfg(not(unix))]
fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let (len, from) = socket.try_recv_from(buf)?;
    Ok(Received {
        len,
        from,
        dscp: None,
    })
}

/// What only the tests use.
#[cfg(test)]
impl Udp {
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(bytes, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_sent_are_the_marks_received_on_loopback() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(a) = Udp::bind(any.parse().unwrap()) else {
                continue; // no IPv6 here
            };
            let b = Udp::bind(any.parse().unwrap()).unwrap();
            let to = b.local_addr().unwrap();
            let mut buf = [0u8; 64];
            for dscp in [Some(46), Some(34), None, Some(46)] {
                a.set_dscp(dscp).unwrap();
                a.send_to(b"hello", to).await.unwrap();
                let got = b.recv(&mut buf).await.unwrap();
                assert_eq!(got.len, 5);
                assert_eq!(&buf[..5], b"hello");
                assert_eq!(got.from, a.local_addr().unwrap());
                assert_eq!(got.dscp, Some(dscp.unwrap_or(0)), "{any} {dscp:?}");
            }
            // Connected: the same.
            a.connect(to).await.unwrap();
            a.set_dscp(Some(10)).unwrap();
            a.send(b"x").await.unwrap();
            assert_eq!(b.recv(&mut buf).await.unwrap().dscp, Some(10));
        }
    }
}

//! What the server learns about the host, and how it opens UDP sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers asked for on listeners; the kernel may grant less.
const LISTENER_BUFFER: usize = 4 << 20;

/// Every IP address of the host's interfaces.
#[must_use]
pub fn interface_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// The host's name, for the default realm.
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "turnpike".to_owned())
}

/// The IPv4 address other hosts most likely reach this one at: the source
/// address of the default route. Connecting a UDP socket only consults the
/// routing table; nothing is sent.
#[must_use]
pub fn default_route_ipv4() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // A documentation address (RFC 5737): routed like any other, owned by
    // no one.
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The first non-loopback IPv4 address of an interface.
#[must_use]
pub fn first_interface_ipv4(ips: &[IpAddr]) -> Option<IpAddr> {
    ips.iter()
        .copied()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// A non-blocking UDP socket bound to `addr`; with `reuse_port`, several
/// such sockets share the address and the kernel spreads clients over them
/// by their address, so one client always reaches the same socket.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
        // Best effort: a listener drops datagrams when its buffer is full.
        let _ = socket.set_recv_buffer_size(LISTENER_BUFFER);
        let _ = socket.set_send_buffer_size(LISTENER_BUFFER);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `n` sockets sharing `addr` (SO_REUSEPORT), on a port no other socket
/// holds. SO_REUSEPORT alone would let another process of the same user
/// join a port already in use, and split its clients between two servers;
/// a plain bind first proves the port free (and picks one for port 0).
pub fn bind_group(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let probe = bind_udp(addr, false)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n.max(1)).map(|_| bind_udp(addr, true)).collect()
}

/// `n` TCP listeners sharing `addr` (SO_REUSEPORT, so the kernel spreads
/// connections over the shards), on a port no other socket listens on.
pub fn bind_tcp_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let bind = |addr: SocketAddr, reuse_port: bool| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Restarts must not wait out TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket)
    };
    let probe = bind(addr, false)?;
    let addr = probe
        .local_addr()?
        .as_socket()
        .ok_or(io::ErrorKind::InvalidInput)?;
    drop(probe);
    (0..n.max(1))
        .map(|_| {
            let socket = bind(addr, true)?;
            socket.listen(1024)?;
            Ok(socket.into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_port_sockets_share_an_address() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = bind_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port), true).unwrap();
        assert_eq!(b.local_addr().unwrap().port(), port);
        // Without SO_REUSEPORT the same address is refused.
        assert!(
            bind_udp(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn a_group_never_joins_a_port_in_use() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert_eq!(group[1].local_addr().unwrap(), addr);
        let err = bind_group(addr, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_tcp_group_never_joins_a_port_in_use() {
        let group = bind_tcp_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert_eq!(group[1].local_addr().unwrap(), addr);
        assert_eq!(
            bind_tcp_group(addr, 2).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
    }

    #[test]
    fn hostname_is_never_empty() {
        assert!(!hostname().is_empty());
    }
}

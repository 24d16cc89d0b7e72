//! The socket options the standard library does not offer: the DF bit and
//! the path MTU the kernel knows, for the path MTU search. This is the
//! only module of the checker with `unsafe`; each block says why it is
//! sound.

#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;

/// Sets the DF bit on everything the socket sends: IPv4 uses path-MTU
/// discovery in "do" mode (a datagram larger than the known path MTU is
/// refused with `EMSGSIZE` rather than fragmented), IPv6 (which routers
/// never fragment) refuses to fragment locally.
pub(crate) fn set_dont_fragment(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    let len = socklen_of::<libc::c_int>();
    // SAFETY: the descriptor is open for the duration of the borrow of
    // `socket`; `value` is a live `c_int` on the stack and `len` is its
    // size, which is what these options read.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The path MTU the kernel knows for a connected socket's destination
/// (IP_MTU / IPV6_MTU): the interface's MTU, or less once an ICMP
/// "fragmentation needed" / "packet too big" has lowered it.
pub(crate) fn known_path_mtu(socket: &impl AsRawFd, ipv6: bool) -> io::Result<u32> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: the descriptor is open for the duration of the borrow of
    // `socket`; `value` is a live `c_int` the kernel writes at most `len`
    // bytes of, and `len` is a live `socklen_t` it updates.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(&mut value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dont_fragment_applies_to_both_families() {
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&v4, false).unwrap();
        if let Ok(v6) = std::net::UdpSocket::bind("[::1]:0") {
            set_dont_fragment(&v6, true).unwrap();
        }
    }

    #[test]
    fn a_connected_socket_knows_its_path_mtu() {
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Unconnected: the kernel has no destination to say it for.
        assert!(known_path_mtu(&v4, false).is_err());
        v4.connect("127.0.0.1:9").unwrap();
        set_dont_fragment(&v4, false).unwrap();
        // Loopback's MTU (65536 on Linux), at least an Ethernet's.
        assert!(known_path_mtu(&v4, false).unwrap() >= 1500);
    }
}

//! The few socket options the standard library and socket2 do not offer.
//! This is the only module with `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Sets the DF bit on everything the socket sends (RFC 8656 §7.2,
/// DONT-FRAGMENT): IPv4 uses path-MTU discovery in "do" mode, IPv6 (which
/// routers never fragment) refuses to fragment locally.
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
    set_int(socket, level, name, value)
}

fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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
}

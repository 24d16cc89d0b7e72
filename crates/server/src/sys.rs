//! The few socket options the standard library and socket2 do not offer.
//! This is the only module with `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};

use socket2::SockAddr;

/// The most datagrams one [`recv_many`] or [`send_many`] call moves.
pub(crate) const MAX_BATCH: usize = 32;

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

/// Raises the soft limit on open descriptors to the hard limit: every
/// allocation holds a socket, and the default soft limit (often 1024) would
/// cap a server at about that many. Returns the limit now in force.
pub(crate) fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live local the kernel writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a live local the kernel reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// A level-triggered epoll set: a socket with data waiting is reported on
/// every wait until it has been read, so a reader takes one batch per
/// socket per round and never needs a final read that finds nothing.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// One readiness report: the token the socket was added with.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Ready(libc::epoll_event);

impl Ready {
    pub(crate) const EMPTY: Self = Self(libc::epoll_event { events: 0, u64: 0 });

    pub(crate) fn token(self) -> u64 {
        self.0.u64
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ready").field(&self.token()).finish()
    }
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no pointers are involved; the call returns a new
        // descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `socket` for data, reported with `token`. Closing the socket
    /// removes it from the set.
    pub(crate) fn add(&self, socket: &impl AsRawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open for the duration of the call;
        // `event` is a live local the kernel only reads.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &raw mut event,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The sockets ready now, without waiting; how many were written to
    /// `ready`.
    pub(crate) fn poll(&self, ready: &mut [Ready]) -> io::Result<usize> {
        let max = libc::c_int::try_from(ready.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `Ready` is a transparent `epoll_event`, and the kernel
        // writes at most `max` of them into `ready`, which holds that many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                ready.as_mut_ptr().cast::<libc::epoll_event>(),
                max,
                0,
            )
        };
        match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// An epoll set shared by the runtime (which watches it) and the code that
/// adds sockets to it.
#[derive(Debug, Clone)]
pub(crate) struct SharedEpoll(pub(crate) std::rc::Rc<Epoll>);

impl AsRawFd for SharedEpoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl SharedEpoll {
    /// The set as the async runtime sees it: one descriptor, readable while
    /// any socket in it is.
    pub(crate) fn watch(self) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the descriptor belongs to the `Epoll` this value keeps
        // alive through its `Rc`; the `AsyncFd` owns this value, so the
        // descriptor stays open until the runtime has let go of it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
                .map_err(tokio::io::unix::AsyncFdRegisterError::into_parts)
                .map_err(|(_, e)| e)
        }
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A datagram [`recv_many`] received: its length and sender.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
}

impl Received {
    pub(crate) const EMPTY: Self = Self {
        len: 0,
        from: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
        )),
    };
}

/// Receives up to `bufs.len()` datagrams (and at most `N`) in one call,
/// without waiting: `bufs[i]` gets the i-th, described by `got[i]`.
/// `WouldBlock` when nothing is waiting. `N` sizes the call's bookkeeping,
/// which is set up afresh each time: keep it near the batch expected.
pub(crate) fn recv_many<const N: usize>(
    socket: &impl AsRawFd,
    bufs: &mut [&mut [u8]],
    got: &mut [Received],
) -> io::Result<usize> {
    let n = bufs.len().min(got.len()).min(N);
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; N];
    // An IPv6 socket address is the largest an IP socket reports.
    // SAFETY: all-zero bytes are a valid `sockaddr_in6` and `mmsghdr`
    // (null pointers, zero lengths).
    let mut names: [libc::sockaddr_in6; N] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut msgs: [libc::mmsghdr; N] = unsafe { MaybeUninit::zeroed().assume_init() };
    for ((buf, iov), (name, msg)) in bufs
        .iter_mut()
        .zip(iovs.iter_mut())
        .zip(names.iter_mut().zip(msgs.iter_mut()))
        .take(n)
    {
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = buf.len();
        msg.msg_hdr.msg_iov = std::ptr::from_mut(iov);
        msg.msg_hdr.msg_iovlen = 1;
        msg.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
        msg.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_in6>();
    }
    let vlen = libc::c_uint::try_from(n).unwrap_or(0);
    // SAFETY: the first `n` headers point at live iovecs, each covering a
    // distinct buffer borrowed mutably for the call, and at live address
    // storage of the size given; the kernel fills no more than `vlen`.
    let rc = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            vlen,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let count = usize::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    let mut kept = 0;
    for (msg, name) in msgs.iter().zip(names.iter()).take(count) {
        let (Some(from), Some(slot)) = (socket_addr(name), got.get_mut(kept)) else {
            continue;
        };
        *slot = Received {
            len: msg.msg_len as usize,
            from,
        };
        kept += 1;
    }
    Ok(kept)
}

/// The IP socket address the kernel wrote into `name`, if it is one.
fn socket_addr(name: &libc::sockaddr_in6) -> Option<SocketAddr> {
    match libc::c_int::from(name.sin6_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // which is smaller than a `sockaddr_in6`.
            let v4 = unsafe {
                std::ptr::from_ref(name)
                    .cast::<libc::sockaddr_in>()
                    .read_unaligned()
            };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            let v6 = name;
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A datagram for [`send_many`]: `len` bytes at `start` of the buffer, to
/// `to`, from source address `from` when the socket is bound to a wildcard
/// address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing {
    pub(crate) to: SocketAddr,
    pub(crate) from: Option<IpAddr>,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// Room for one IP_PKTINFO or IPV6_PKTINFO control message, aligned as
/// control messages must be.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Sends up to [`MAX_BATCH`] datagrams of `msgs` (their bytes in `buf`) in
/// one call, without waiting; returns how many the kernel took, counting
/// from the first. The caller drops or retries the one after them.
pub(crate) fn send_many(socket: &impl AsRawFd, buf: &[u8], msgs: &[Outgoing]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    let mut names: [MaybeUninit<SockAddr>; MAX_BATCH] =
        [const { MaybeUninit::uninit() }; MAX_BATCH];
    let mut controls = [Control([0; 64]); MAX_BATCH];
    // SAFETY: all-zero bytes are a valid `mmsghdr` (null pointers, zero
    // lengths).
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut count = 0;
    for (((out, iov), (name, control)), hdr) in msgs
        .iter()
        .zip(iovs.iter_mut())
        .zip(names.iter_mut().zip(controls.iter_mut()))
        .zip(hdrs.iter_mut())
        .take(n)
    {
        let Some(data) = out
            .start
            .checked_add(out.len)
            .and_then(|end| buf.get(out.start..end))
        else {
            break;
        };
        iov.iov_base = data.as_ptr().cast_mut().cast();
        iov.iov_len = data.len();
        let name = name.write(SockAddr::from(out.to));
        hdr.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
        hdr.msg_hdr.msg_namelen = name.len();
        hdr.msg_hdr.msg_iov = std::ptr::from_mut(iov);
        hdr.msg_hdr.msg_iovlen = 1;
        if let Some(from) = out.from {
            write_source(&mut hdr.msg_hdr, control, from);
        }
        count += 1;
    }
    let vlen = libc::c_uint::try_from(count).unwrap_or(0);
    // SAFETY: the first `count` headers point at live iovecs over `buf`
    // (which the kernel only reads), at initialized socket addresses of
    // the lengths given, and at control buffers of the lengths given.
    let rc = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            vlen,
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Puts the source address of a datagram in `hdr`'s control data, backed
/// by `control`.
fn write_source(hdr: &mut libc::msghdr, control: &mut Control, from: IpAddr) {
    match from {
        IpAddr::V4(ip) => write_cmsg(
            hdr,
            control,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            },
        ),
        IpAddr::V6(ip) => write_cmsg(
            hdr,
            control,
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            },
        ),
    }
}

/// A datagram [`recv_with_tos`] received.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceivedTos {
    /// Its length, as received (at most the buffer's).
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    /// The TOS byte (IPv4) or traffic class (IPv6) it carried, when the
    /// socket reports it (`IP_RECVTOS`, `IPV6_RECVTCLASS`).
    pub(crate) tos: Option<u8>,
    /// It was longer than the buffer: the rest was cut off.
    pub(crate) truncated: bool,
}

/// Receives one datagram without waiting, with the TOS byte or traffic
/// class it carried. `WouldBlock` when nothing is waiting.
pub(crate) fn recv_with_tos(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<ReceivedTos> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero bytes are a valid `sockaddr_in6` and `msghdr` (null
    // pointers, zero lengths).
    let mut name: libc::sockaddr_in6 = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut control = Control([0; 64]);
    hdr.msg_name = std::ptr::from_mut(&mut name).cast();
    hdr.msg_namelen = socklen_of::<libc::sockaddr_in6>();
    hdr.msg_iov = std::ptr::from_mut(&mut iov);
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = control.0.len();
    // SAFETY: `hdr` points at a live iovec over `buf` (borrowed mutably
    // for the call), at address storage and a control buffer of the
    // lengths given; the kernel writes within them.
    let rc = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut hdr, libc::MSG_DONTWAIT) };
    let len = usize::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    let from = socket_addr(&name).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok(ReceivedTos {
        len: len.min(buf.len()),
        from,
        tos: read_tos(&hdr),
        truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// The TOS byte or traffic class among the control messages of `hdr`,
/// which [`recv_with_tos`] filled.
fn read_tos(hdr: &libc::msghdr) -> Option<u8> {
    let int_len = u32::try_from(size_of::<libc::c_int>()).unwrap_or(u32::MAX);
    // SAFETY: `hdr` describes a control buffer the kernel filled, of the
    // length it set; CMSG_FIRSTHDR and CMSG_NXTHDR return headers inside
    // it (or null), and data is read only when the header's length says
    // the bytes are there, unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let len = (*cmsg).cmsg_len as usize;
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TOS) if len >= libc::CMSG_LEN(1) as usize => {
                    return Some(data.read_unaligned());
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
                    if len >= libc::CMSG_LEN(int_len) as usize =>
                {
                    return u8::try_from(data.cast::<libc::c_int>().read_unaligned()).ok();
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Sends `data` to `to` without waiting, marked with the TOS byte (IPv4)
/// or traffic class (IPv6) `tos` when given, else as the socket marks it.
pub(crate) fn send_with_tos(
    socket: &impl AsRawFd,
    data: &[u8],
    to: SocketAddr,
    tos: Option<u8>,
) -> io::Result<usize> {
    let name = SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: all-zero bytes are a valid `msghdr`.
    let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    hdr.msg_name = name.as_ptr().cast_mut().cast();
    hdr.msg_namelen = name.len();
    hdr.msg_iov = std::ptr::from_mut(&mut iov);
    hdr.msg_iovlen = 1;
    if let Some(tos) = tos {
        let (level, kind) = if to.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_TOS)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
        };
        write_cmsg(&mut hdr, &mut control, level, kind, libc::c_int::from(tos));
    }
    // SAFETY: `hdr` points at a live iovec over `data` (which the kernel
    // only reads), an initialized socket address and a control buffer of
    // the lengths given.
    let rc = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const hdr, libc::MSG_DONTWAIT) };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Puts one control message holding `value` (a plain C struct or
/// integer) in `hdr`, backed by `control`; none if it does not fit.
fn write_cmsg<T: Copy>(
    hdr: &mut libc::msghdr,
    control: &mut Control,
    level: libc::c_int,
    kind: libc::c_int,
    value: T,
) {
    let size = u32::try_from(size_of::<T>()).unwrap_or(u32::MAX);
    hdr.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(size) } as usize;
    if space > control.0.len() {
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        return;
    }
    hdr.msg_controllen = space;
    // SAFETY: `hdr` points at `control`, 8-aligned and at least
    // CMSG_SPACE(size) bytes long (checked above), so the first header
    // and its data fit inside it; the data is written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        if cmsg.is_null() {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            return;
        }
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size) as usize;
        libc::CMSG_DATA(cmsg).cast::<T>().write_unaligned(value);
    }
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
    fn batches_go_out_from_the_chosen_source_and_come_back_whole() {
        let sender = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let to = receiver.local_addr().unwrap();
        let buf: Vec<u8> = (0..=255).collect();
        let msgs: Vec<Outgoing> = (0..3)
            .map(|i| Outgoing {
                to,
                from: Some(IpAddr::from([127, 0, 0, 2 + i])),
                start: usize::from(i) * 10,
                len: 10 + usize::from(i),
            })
            .collect();
        assert_eq!(send_many(&sender, &buf, &msgs).unwrap(), 3);

        let epoll = Epoll::new().unwrap();
        epoll.add(&receiver, 7).unwrap();
        let mut ready = [Ready::EMPTY; 4];
        assert_eq!(epoll.poll(&mut ready).unwrap(), 1);
        assert_eq!(ready[0].token(), 7);

        let mut space = vec![0u8; 4 * 64];
        let mut bufs: Vec<&mut [u8]> = space.chunks_mut(64).collect();
        let mut got = [Received::EMPTY; 4];
        assert_eq!(recv_many::<4>(&receiver, &mut bufs, &mut got).unwrap(), 3);
        let port = sender.local_addr().unwrap().port();
        for (i, (got, buf)) in got.iter().zip(&bufs).take(3).enumerate() {
            let i = u8::try_from(i).unwrap();
            assert_eq!(got.from, SocketAddr::from(([127, 0, 0, 2 + i], port)));
            assert_eq!(got.len, 10 + usize::from(i));
            assert_eq!(&buf[..got.len], &buf_of(i)[..]);
        }
        // Read dry: level-triggered, nothing is reported any more.
        assert_eq!(epoll.poll(&mut ready).unwrap(), 0);
        assert_eq!(
            recv_many::<4>(&receiver, &mut bufs, &mut got)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );

        fn buf_of(i: u8) -> Vec<u8> {
            (i * 10..i * 10 + 10 + i).collect()
        }
    }

    #[test]
    fn the_tos_byte_is_read_on_receive_and_set_per_send() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&receiver)
            .set_recv_tos_v4(true)
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        for (tos, want) in [
            (Some(46 << 2), 46 << 2),
            (None, 0),
            (Some(34 << 2), 34 << 2),
        ] {
            assert_eq!(send_with_tos(&sender, b"hello", to, tos).unwrap(), 5);
            receiver.set_nonblocking(false).unwrap();
            let mut peek = [0u8; 1];
            receiver.peek_from(&mut peek).unwrap();
            let mut buf = [0u8; 3];
            let got = recv_with_tos(&receiver, &mut buf).unwrap();
            assert_eq!(got.from, sender.local_addr().unwrap());
            assert_eq!((got.len, got.truncated), (3, true));
            assert_eq!(&buf, b"hel");
            assert_eq!(got.tos, Some(want), "{tos:?}");
        }
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            recv_with_tos(&receiver, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        if let (Ok(v6r), Ok(v6s)) = (
            std::net::UdpSocket::bind("[::1]:0"),
            std::net::UdpSocket::bind("[::1]:0"),
        ) {
            socket2::SockRef::from(&v6r)
                .set_recv_tclass_v6(true)
                .unwrap();
            send_with_tos(&v6s, b"x", v6r.local_addr().unwrap(), Some(46 << 2)).unwrap();
            let mut peek = [0u8; 1];
            v6r.peek_from(&mut peek).unwrap();
            let got = recv_with_tos(&v6r, &mut buf).unwrap();
            assert_eq!((got.len, got.tos), (1, Some(46 << 2)));
        }
    }

    #[test]
    fn a_datagram_left_unread_is_reported_again() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            sender
                .send_to(b"x", receiver.local_addr().unwrap())
                .unwrap();
        }
        let epoll = Epoll::new().unwrap();
        epoll.add(&receiver, 1).unwrap();
        let mut ready = [Ready::EMPTY; 2];
        let mut space = [0u8; 8];
        let mut got = [Received::EMPTY; 1];
        for _ in 0..3 {
            assert_eq!(epoll.poll(&mut ready).unwrap(), 1);
            let mut bufs: [&mut [u8]; 1] = [&mut space];
            assert_eq!(recv_many::<4>(&receiver, &mut bufs, &mut got).unwrap(), 1);
        }
        assert_eq!(epoll.poll(&mut ready).unwrap(), 0);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let limit = raise_open_files_limit().unwrap();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut now) },
            0
        );
        assert_eq!(now.rlim_cur, limit);
        assert_eq!(now.rlim_cur, now.rlim_max);
    }
}

//! The system calls the standard library and socket2 do not offer: batched
//! UDP send and receive with per-message addresses and IP_PKTINFO, epoll
//! with a nanosecond timeout, and the clock tick. This is the only module
//! with `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::time::Duration;

/// Messages per `sendmmsg`/`recvmmsg` call.
pub(crate) const BATCH: usize = 64;

/// Room for the control messages of one datagram (IP_PKTINFO and a
/// timestamp need 32 bytes each on 64-bit Linux), aligned as `cmsghdr`
/// requires.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 128]);

/// SO_TIMESTAMPNS (and SCM_TIMESTAMPNS): a receive timestamp, as a
/// timespec of CLOCK_REALTIME, on every datagram. The number of the
/// architectures with the generic socket option numbers (libc does not
/// name it for them).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
))]
const SO_TIMESTAMPNS: libc::c_int = 35;

/// One datagram to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) dst: SocketAddrV4,
    /// The source address to send from (IP_PKTINFO), for a socket bound to
    /// the wildcard address.
    pub(crate) src: Option<Ipv4Addr>,
}

/// What was received in one slot of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) len: usize,
    pub(crate) from: SocketAddrV4,
    /// The datagram's destination address (IP_PKTINFO), when asked for.
    pub(crate) dst: Option<Ipv4Addr>,
    /// When the kernel received it, in nanoseconds of CLOCK_REALTIME
    /// (SO_TIMESTAMPNS), when enabled.
    pub(crate) rx_realtime_ns: Option<u64>,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            len: 0,
            from: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            dst: None,
            rx_realtime_ns: None,
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr = libc::in_addr {
        s_addr: u32::from(*a.ip()).to_be(),
    };
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// Asks the kernel for each datagram's destination address (IP_PKTINFO),
/// which also lets sends choose their source address.
pub(crate) fn enable_pktinfo(socket: &impl AsRawFd) -> io::Result<()> {
    set_int(socket, libc::IPPROTO_IP, libc::IP_PKTINFO)
}

/// Asks the kernel to timestamp each datagram it receives on the socket.
pub(crate) fn enable_rx_timestamps(socket: &impl AsRawFd) -> io::Result<()> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    {
        set_int(socket, libc::SOL_SOCKET, SO_TIMESTAMPNS)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )))]
    {
        let _ = socket;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Sets an int socket option to 1.
fn set_int(socket: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    let len = libc::socklen_t::try_from(mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open while `socket` is borrowed; `one` is a
    // live c_int and `len` its size, which is what these boolean options
    // read.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&one).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends up to [`BATCH`] datagrams with one `sendmmsg`; returns how many
/// went (the first that failed stops the batch; its error is returned when
/// it is the first).
pub(crate) fn send_batch(socket: &impl AsRawFd, msgs: &[Out<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: these are plain old data arrays; zeroes are valid values
    // (null pointers and zero lengths), and every field the kernel reads is
    // set below for the first `n` entries.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut names: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control([0; 128]); BATCH];
    let cmsg_space = pktinfo_space();
    for (i, m) in msgs.iter().take(n).enumerate() {
        let (Some(hdr), Some(iov), Some(name), Some(control)) = (
            hdrs.get_mut(i),
            iovs.get_mut(i),
            names.get_mut(i),
            controls.get_mut(i),
        ) else {
            break;
        };
        *name = sockaddr(m.dst);
        iov.iov_base = m.data.as_ptr().cast_mut().cast::<libc::c_void>();
        iov.iov_len = m.data.len();
        hdr.msg_hdr.msg_name = std::ptr::from_mut(name).cast::<libc::c_void>();
        hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        hdr.msg_hdr.msg_iov = std::ptr::from_mut(iov);
        hdr.msg_hdr.msg_iovlen = 1;
        if let Some(src) = m.src {
            hdr.msg_hdr.msg_control = control.0.as_mut_ptr().cast::<libc::c_void>();
            hdr.msg_hdr.msg_controllen = cmsg_space as _;
            // SAFETY: msg_control points at `control`, 64 bytes aligned to 8,
            // and msg_controllen (CMSG_SPACE of in_pktinfo, 32) fits in it,
            // so CMSG_FIRSTHDR returns a pointer into it (it is not null
            // since the length covers a header), and CMSG_DATA of it has
            // room for one in_pktinfo, written unaligned.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&raw const hdr.msg_hdr);
                if cmsg.is_null() {
                    hdr.msg_hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_hdr.msg_controllen = 0;
                } else {
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_PKTINFO;
                    (*cmsg).cmsg_len =
                        libc::CMSG_LEN(mem::size_of::<libc::in_pktinfo>() as libc::c_uint) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(src).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(),
                        info,
                    );
                }
            }
        }
    }
    let count = libc::c_uint::try_from(n).unwrap_or(0);
    // SAFETY: `hdrs[..n]` are initialized message headers whose pointers
    // (names, iovecs, control buffers, and the callers' data slices) stay
    // valid for the call; the kernel only reads them, and writes msg_len.
    let rc = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            count,
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(rc).unwrap_or(0))
    }
}

fn pktinfo_space() -> usize {
    // SAFETY: CMSG_SPACE only computes an aligned size.
    unsafe { libc::CMSG_SPACE(mem::size_of::<libc::in_pktinfo>() as libc::c_uint) as usize }
}

/// Receives up to [`BATCH`] datagrams without blocking into `buf`, cut in
/// slots of `slot` bytes (a longer datagram is truncated: its `len` is the
/// slot's). With `control`, reads the destination address (IP_PKTINFO)
/// and the receive timestamp (SO_TIMESTAMPNS) the socket was asked for.
/// Returns how many came; `WouldBlock` when none.
pub(crate) fn recv_batch(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    slot: usize,
    metas: &mut [Meta],
    control: bool,
) -> io::Result<usize> {
    let n = metas.len().min(BATCH).min(buf.len() / slot.max(1));
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: plain old data arrays; zeroes are valid, and the fields the
    // kernel reads are set below for the first `n` entries.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut names: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control([0; 128]); BATCH];
    for (i, chunk) in buf.chunks_exact_mut(slot).take(n).enumerate() {
        let (Some(hdr), Some(iov), Some(name), Some(cmsgs)) = (
            hdrs.get_mut(i),
            iovs.get_mut(i),
            names.get_mut(i),
            controls.get_mut(i),
        ) else {
            break;
        };
        iov.iov_base = chunk.as_mut_ptr().cast::<libc::c_void>();
        iov.iov_len = chunk.len();
        hdr.msg_hdr.msg_name = std::ptr::from_mut(name).cast::<libc::c_void>();
        hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        hdr.msg_hdr.msg_iov = std::ptr::from_mut(iov);
        hdr.msg_hdr.msg_iovlen = 1;
        if control {
            hdr.msg_hdr.msg_control = cmsgs.0.as_mut_ptr().cast::<libc::c_void>();
            hdr.msg_hdr.msg_controllen = cmsgs.0.len() as _;
        }
    }
    let count = libc::c_uint::try_from(n).unwrap_or(0);
    // SAFETY: `hdrs[..n]` point at buffers that live through the call:
    // slots of `buf` (each `slot` bytes, distinct), `names`, `controls`;
    // the kernel writes within the lengths given. A null timeout is allowed.
    let rc = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            count,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = usize::try_from(rc).unwrap_or(0).min(n);
    for (i, meta) in metas.iter_mut().take(got).enumerate() {
        let (Some(hdr), Some(name)) = (hdrs.get(i), names.get(i)) else {
            break;
        };
        meta.len = (hdr.msg_len as usize).min(slot);
        meta.from = from_sockaddr(name);
        meta.dst = None;
        meta.rx_realtime_ns = None;
        if control {
            // SAFETY: the kernel set msg_control/msg_controllen to the
            // control messages it wrote into `controls[i]`; the CMSG_* macros
            // walk them within that length, and each payload is read
            // unaligned from a message of the type and level that says what
            // it holds.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&raw const hdr.msg_hdr);
                while !cmsg.is_null() {
                    let (level, typ) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
                    if level == libc::IPPROTO_IP && typ == libc::IP_PKTINFO {
                        let info = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(),
                        );
                        meta.dst = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                    } else if level == libc::SOL_SOCKET && is_timestamp(typ) {
                        let ts = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<libc::timespec>(),
                        );
                        meta.rx_realtime_ns = u64::try_from(ts.tv_sec).ok().and_then(|s| {
                            s.checked_mul(1_000_000_000)?
                                .checked_add(u64::try_from(ts.tv_nsec).ok()?)
                        });
                    }
                    cmsg = libc::CMSG_NXTHDR(&raw const hdr.msg_hdr, cmsg);
                }
            }
        }
    }
    Ok(got)
}

/// Whether a control message type is the SO_TIMESTAMPNS timestamp.
fn is_timestamp(typ: libc::c_int) -> bool {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    {
        typ == SO_TIMESTAMPNS
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )))]
    {
        let _ = typ;
        false
    }
}

/// An epoll instance (level-triggered, readable events).
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
    /// Whether epoll_pwait2 (nanosecond timeouts, Linux 5.11) works.
    fine: bool,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointer; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned open and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, fine: true })
    }

    /// Watches `fd` for input, reported with `token`.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event for the call; the kernel copies
        // it. `fd` is the caller's open descriptor.
        let rc =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits until a watched descriptor is readable or `timeout` passes
    /// (`None`: no limit); writes the ready tokens into `tokens` and returns
    /// how many. An interrupted wait returns 0.
    pub(crate) fn wait(
        &mut self,
        tokens: &mut [u64],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        const MAX: usize = 256;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let max = tokens.len().min(MAX);
        let max_c = libc::c_int::try_from(max).unwrap_or(1);
        let rc = if self.fine {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(t.subsec_nanos()),
            });
            let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
            // SAFETY: `events` has room for `max` entries; `ts_ptr` is null
            // or points at a live timespec; a null sigmask leaves the mask
            // as it is. The raw system call avoids needing the symbol from
            // an older C library.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max_c,
                    ts_ptr,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.fine = false;
                return self.wait(tokens, timeout);
            }
            rc
        } else {
            // Milliseconds, rounded up so a wait is never cut short.
            let ms = timeout.map_or(-1, |t| {
                let ms = t.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            });
            // SAFETY: `events` has room for `max` entries.
            libc::c_long::from(unsafe {
                libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max_c, ms)
            })
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let got = usize::try_from(rc).unwrap_or(0).min(max);
        for (t, ev) in tokens.iter_mut().zip(events.iter()).take(got) {
            *t = ev.u64;
        }
        Ok(got)
    }
}

/// Clock ticks per second, the unit of /proc/PID/stat's CPU times.
pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes no pointer.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batches_carry_addresses_both_ways() {
        let a = UdpSocket::bind("0.0.0.0:0").unwrap();
        enable_pktinfo(&a).unwrap();
        enable_rx_timestamps(&a).unwrap();
        let port_a = a.local_addr().unwrap().port();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_addr = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            std::net::SocketAddr::V6(_) => unreachable!(),
        };
        // From two loopback source addresses of one wildcard socket.
        let srcs = [Ipv4Addr::new(127, 1, 0, 1), Ipv4Addr::new(127, 1, 0, 2)];
        let msgs = [
            Out {
                data: b"one",
                dst: b_addr,
                src: Some(srcs[0]),
            },
            Out {
                data: b"two!",
                dst: b_addr,
                src: Some(srcs[1]),
            },
        ];
        assert_eq!(send_batch(&a, &msgs).unwrap(), 2);
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from.ip()),
            (&b"one"[..], std::net::IpAddr::V4(srcs[0]))
        );
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from.ip()),
            (&b"two!"[..], std::net::IpAddr::V4(srcs[1]))
        );

        // Answers to each source come back with their destination.
        b.send_to(b"back1", (srcs[0], port_a)).unwrap();
        b.send_to(b"back2", (srcs[1], port_a)).unwrap();
        let mut epoll = Epoll::new().unwrap();
        epoll.add(a.as_raw_fd(), 7).unwrap();
        let mut tokens = [0u64; 4];
        assert_eq!(
            epoll
                .wait(&mut tokens, Some(Duration::from_secs(2)))
                .unwrap(),
            1
        );
        assert_eq!(tokens[0], 7);
        let mut rbuf = vec![0u8; 4 * 128];
        let mut metas = [Meta::default(); 4];
        let mut got = 0;
        while got < 2 {
            got +=
                recv_batch(&a, &mut rbuf[got * 128..], 128, &mut metas[got..], true).unwrap_or(0);
        }
        assert_eq!(&rbuf[..metas[0].len], b"back1");
        assert_eq!(metas[0].dst, Some(srcs[0]));
        assert_eq!(metas[1].dst, Some(srcs[1]));
        assert_eq!(metas[1].from, b_addr);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let stamped = metas[0].rx_realtime_ns.unwrap();
        assert!(
            stamped <= now && now - stamped < 10_000_000_000,
            "{stamped} vs {now}"
        );
        assert!(
            recv_batch(&a, &mut rbuf, 128, &mut metas, true).is_err(),
            "WouldBlock"
        );
        assert!(clock_ticks() > 0);
    }

    #[test]
    fn waits_time_out() {
        let mut epoll = Epoll::new().unwrap();
        let started = std::time::Instant::now();
        let mut tokens = [0u64; 1];
        assert_eq!(
            epoll
                .wait(&mut tokens, Some(Duration::from_millis(5)))
                .unwrap(),
            0
        );
        assert!(started.elapsed() >= Duration::from_millis(5));
    }
}

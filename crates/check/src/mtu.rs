//! Path MTU: the largest UDP datagram with DF set that reaches the probe
//! responder, found by a binary search over probe `stamp` requests of
//! varying lengths (whose replies are small, so only the way up is
//! measured).
//!
//! A size is "through" when the responder's reply says it received the
//! request at that length; "too big" when the kernel refuses to send it
//! (`EMSGSIZE`: larger than the path MTU it knows, from the interface or
//! an ICMP "fragmentation needed"), in which case the MTU it knows
//! (IP_MTU / IPV6_MTU) narrows the search; and "lost" when no reply comes
//! to any of its tries (a router dropped it without saying: a PMTU black
//! hole, or plain loss).

use std::net::SocketAddr;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::{Duration, Instant};
use turnpike_probe::{self as wire, Kind, ReplyKind, Request};

use crate::net::{Failure, Step};

/// What the path MTU search found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MtuReport {
    /// The largest IP packet that reached the responder with DF set (the
    /// largest payload answered + 28 for IPv4, + 48 for IPv6); `None`
    /// when no size was answered.
    pub path_mtu: Option<u16>,
    /// The largest UDP payload answered.
    pub largest_payload: Option<u16>,
    /// The IP packet TURN over UDP needs for 1200-byte media without
    /// fragmentation: 1200 + 36 (Send/Data indication framing) + 8 (UDP)
    /// + 20 (IPv4) = 1264, or 1284 over IPv6.
    pub needed: u16,
    /// What was tried, in words.
    pub detail: String,
}

/// The media payload a TURN path should carry unfragmented.
const MEDIA_PAYLOAD: u16 = 1200;
/// A TURN Send indication's framing around its data (20 header +
/// XOR-PEER-ADDRESS 4+8 (IPv4; the larger Data indication's is the same)
/// + DATA header 4), IPv6 peers: 12 more. The larger of Send and Data.
const TURN_FRAMING: u16 = 36;
const UDP_HEADER: u16 = 8;

/// The search's range and overheads for one family.
#[derive(Debug, Clone, Copy)]
struct Family {
    /// The smallest payload tried: what every path must carry (576 − 28
    /// for IPv4, 1280 − 48 for IPv6).
    low: u16,
    /// The largest payload tried: a 1500-byte packet.
    high: u16,
    /// IP and UDP headers.
    overhead: u16,
    ip_header: u16,
}

const V4: Family = Family {
    low: 548,
    high: 1472,
    overhead: 28,
    ip_header: 20,
};
const V6: Family = Family {
    low: 1232,
    high: 1452,
    overhead: 48,
    ip_header: 40,
};

/// How hard each size is tried.
#[derive(Debug, Clone, Copy)]
struct Timing {
    tries: u32,
    /// How long each try waits for its reply.
    wait: Duration,
}

const DEFAULT_TIMING: Timing = Timing {
    tries: 3,
    wait: Duration::from_millis(300),
};

/// The path MTU to `target` (a probe responder's UDP port), searching
/// until `deadline` at most. `cookie_hint`: a cookie the responder gave
/// earlier, if any. Takes about 1-2 s on a path that carries 1500-byte
/// packets, up to about 10 s where large packets vanish silently.
pub(crate) async fn path_mtu(
    target: SocketAddr,
    cookie_hint: Option<u64>,
    deadline: Instant,
) -> Result<MtuReport, Failure> {
    search(target, cookie_hint, deadline, DEFAULT_TIMING).await
}

/// What one size got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Through,
    /// Refused by the kernel; the path MTU it knows, if it says.
    TooBig(Option<u32>),
    Lost,
    OutOfTime,
}

struct Prober {
    socket: UdpSocket,
    ipv6: bool,
    cookie: u64,
    sequence: u32,
    buf: Vec<u8>,
}

impl Prober {
    fn known_mtu(&self) -> Option<u32> {
        crate::sys::known_path_mtu(&self.socket, self.ipv6).ok()
    }

    /// Tries `len` bytes of payload up to `timing.tries` times.
    async fn probe(
        &mut self,
        len: u16,
        timing: Timing,
        deadline: Instant,
    ) -> Result<Outcome, Failure> {
        let mut reply = [0u8; wire::MAX_LEN];
        for _ in 0..timing.tries {
            if Instant::now() >= deadline {
                return Ok(Outcome::OutOfTime);
            }
            self.sequence = self.sequence.wrapping_add(1);
            let request = Request {
                cookie: self.cookie,
                ..Request::new(Kind::Stamp, self.sequence, 0)
            };
            let n = wire::encode_request(&request, usize::from(len), &mut self.buf)
                .map_err(|e| Failure::new(Step::Protocol, e.to_string()))?;
            let bytes = self.buf.get(..n).unwrap_or_default();
            match self.socket.send(bytes).await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    return Ok(Outcome::TooBig(self.known_mtu()));
                }
                Err(e) => return Err(send_failure(&e)),
            }
            let wait = (Instant::now() + timing.wait).min(deadline);
            loop {
                match tokio::time::timeout_at(wait, self.socket.recv(&mut reply)).await {
                    Ok(Ok(got)) => {
                        let Ok(r) = wire::parse_reply(reply.get(..got).unwrap_or_default()) else {
                            continue;
                        };
                        if r.kind != ReplyKind::Stamp || r.request_len != len {
                            // A late reply to another size, or not ours.
                            continue;
                        }
                        if r.cookie != 0 {
                            self.cookie = r.cookie;
                        }
                        return Ok(Outcome::Through);
                    }
                    // An ICMP "fragmentation needed" for what was sent.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                        return Ok(Outcome::TooBig(self.known_mtu()));
                    }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(send_failure(&e));
                    }
                    // Anything else: this try is lost.
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        Ok(Outcome::Lost)
    }
}

fn send_failure(e: &std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        Failure::new(
            Step::Connect,
            "refused (ICMP port unreachable): nothing listens there, or a firewall rejects it",
        )
    } else {
        Failure::new(Step::Connect, e.to_string())
    }
}

async fn search(
    target: SocketAddr,
    cookie_hint: Option<u64>,
    deadline: Instant,
    timing: Timing,
) -> Result<MtuReport, Failure> {
    let ipv6 = target.is_ipv6();
    let family = if ipv6 { V6 } else { V4 };
    let needed = MEDIA_PAYLOAD + TURN_FRAMING + UDP_HEADER + family.ip_header;
    let socket = crate::net::udp_socket_for(target.ip()).await?;
    socket
        .connect(target)
        .await
        .map_err(|e| Failure::new(Step::Connect, format!("{target}: {e}")))?;
    crate::sys::set_dont_fragment(&socket, ipv6)
        .map_err(|e| Failure::new(Step::Connect, format!("cannot set DF: {e}")))?;
    let mut prober = Prober {
        socket,
        ipv6,
        cookie: cookie_hint.unwrap_or(0),
        sequence: 0,
        buf: vec![0u8; wire::MAX_LEN],
    };

    // The answer is `good` or in good+1..=high; `high` drops as sizes
    // fail. The top is tried first (most paths carry it), then the
    // bottom (if that fails too, nothing will), then halves.
    let mut good: Option<u16> = None;
    let mut high = family.high;
    let mut lost_above: Option<u16> = None;
    let mut kernel_mtu: Option<u32> = None;
    let mut out_of_time = false;
    // A size worth trying next rather than the middle.
    let mut hint: Option<u16> = None;
    let mut next = Some(family.high);
    while let Some(len) = next {
        match prober.probe(len, timing, deadline).await? {
            Outcome::Through => good = Some(len),
            Outcome::TooBig(known) => {
                high = len.saturating_sub(1);
                if let Some(k) = known {
                    kernel_mtu = Some(k);
                    let fits = u16::try_from(k.saturating_sub(u32::from(family.overhead)))
                        .unwrap_or(u16::MAX);
                    high = high.min(fits);
                    // The kernel said how large: try exactly that.
                    hint = Some(high);
                }
            }
            Outcome::Lost => {
                high = len.saturating_sub(1);
                lost_above = Some(lost_above.map_or(len, |l| l.min(len)));
                if good.is_none() {
                    // Lost at the top: is anything answered at all?
                    hint = Some(family.low);
                }
            }
            Outcome::OutOfTime => {
                out_of_time = true;
                break;
            }
        }
        let low = good.map_or(family.low, |g| g.saturating_add(1));
        next = if low > high {
            None
        } else if let Some(h) = hint.take().filter(|h| (low..=high).contains(h)) {
            Some(h)
        } else {
            Some(low + (high - low).div_ceil(2))
        };
    }

    let path_mtu = good.map(|g| g.saturating_add(family.overhead));
    let mut detail = match (good, path_mtu) {
        (Some(g), Some(mtu)) if g == family.high => format!(
            "{g}-byte UDP payloads reached the responder with DF set: the path carries \
             {mtu}-byte packets (the largest tried)"
        ),
        (Some(g), Some(mtu)) => format!(
            "the largest UDP payload that reached the responder with DF set was {g} bytes: \
             a path MTU of {mtu}"
        ),
        _ if out_of_time => "no probe was answered before the deadline".to_owned(),
        _ => format!(
            "no probe reached the responder with DF set, not even {} bytes of payload",
            family.low
        ),
    };
    if let Some(k) = kernel_mtu {
        detail.push_str(&format!(
            "; larger packets were refused locally (the path MTU known to this host is {k})"
        ));
    }
    if let (Some(l), Some(_)) = (lost_above, good) {
        detail.push_str(&format!("; {l} bytes and more went unanswered"));
    }
    if let Some(mtu) = path_mtu
        && mtu < needed
    {
        detail.push_str(&format!(
            "; TURN over UDP needs {needed} for 1200-byte media packets, so they would be \
             fragmented or lost"
        ));
    }
    if out_of_time && good.is_some() {
        detail.push_str("; the search ran out of time");
    }
    Ok(MtuReport {
        path_mtu,
        largest_payload: good,
        needed,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Timing = Timing {
        tries: 2,
        wait: Duration::from_millis(100),
    };

    /// A responder that answers stamp requests whose payload is at most
    /// `limit` bytes, as a path with a smaller MTU that drops the rest
    /// silently would; returns its address.
    async fn responder(bind: &str, limit: usize) -> SocketAddr {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut out = [0u8; wire::MAX_LEN];
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                if n > limit {
                    continue;
                }
                if let Ok(Some(len)) = wire::answer(&buf[..n], from, 1, &mut out) {
                    socket.send_to(&out[..len], from).await.unwrap();
                }
            }
        });
        addr
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    #[tokio::test]
    async fn loopback_carries_the_largest_size_tried() {
        let target = responder("127.0.0.1:0", usize::MAX).await;
        let r = search(target, None, soon(), QUICK).await.unwrap();
        assert_eq!(r.path_mtu, Some(1500));
        assert_eq!(r.largest_payload, Some(1472));
        assert_eq!(r.needed, 1264);
        assert!(r.detail.contains("1500"), "{}", r.detail);
    }

    #[tokio::test]
    async fn the_default_timing_with_a_cookie_hint() {
        let target = responder("127.0.0.1:0", usize::MAX).await;
        let r = path_mtu(target, Some(7), soon()).await.unwrap();
        assert_eq!(r.path_mtu, Some(1500));
    }

    #[tokio::test]
    async fn a_path_dropping_large_packets_is_searched_to_the_byte() {
        let target = responder("127.0.0.1:0", 1000).await;
        let r = search(target, None, soon(), QUICK).await.unwrap();
        assert_eq!(r.largest_payload, Some(1000));
        assert_eq!(r.path_mtu, Some(1028));
        assert!(r.detail.contains("1001 bytes and more"), "{}", r.detail);
        assert!(r.detail.contains("needs 1264"), "{}", r.detail);
    }

    #[tokio::test]
    async fn the_smallest_size_alone() {
        let target = responder("127.0.0.1:0", 548).await;
        let r = search(target, None, soon(), QUICK).await.unwrap();
        assert_eq!(r.path_mtu, Some(576));
    }

    #[tokio::test]
    async fn nothing_answered_is_no_mtu_and_stops_after_the_bottom() {
        let target = responder("127.0.0.1:0", 0).await;
        let start = Instant::now();
        let r = search(target, None, soon(), QUICK).await.unwrap();
        assert_eq!(r.path_mtu, None);
        assert_eq!(r.largest_payload, None);
        assert!(r.detail.contains("not even 548"), "{}", r.detail);
        // The top and the bottom, each tried twice for 100 ms.
        assert!(start.elapsed() < Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn the_deadline_ends_the_search() {
        let target = responder("127.0.0.1:0", 0).await;
        let r = search(
            target,
            None,
            Instant::now() + Duration::from_millis(150),
            QUICK,
        )
        .await
        .unwrap();
        assert_eq!(r.path_mtu, None);
        assert!(r.detail.contains("before the deadline"), "{}", r.detail);
        // Cut short after an answer: what was found stands.
        let target = responder("127.0.0.1:0", 1000).await;
        let r = search(
            target,
            None,
            Instant::now() + Duration::from_millis(500),
            QUICK,
        )
        .await
        .unwrap();
        assert!(
            r.largest_payload.is_some_and(|g| (548..=1000).contains(&g)),
            "{r:?}"
        );
        assert!(r.detail.contains("ran out of time"), "{}", r.detail);
    }

    #[tokio::test]
    async fn ipv6_searches_its_own_range() {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            return; // no IPv6 here
        }
        let target = responder("[::1]:0", 1300).await;
        let r = search(target, None, soon(), QUICK).await.unwrap();
        assert_eq!(r.largest_payload, Some(1300));
        assert_eq!(r.path_mtu, Some(1348));
        assert_eq!(r.needed, 1284);
        let whole = responder("[::1]:0", usize::MAX).await;
        let r = search(whole, None, soon(), QUICK).await.unwrap();
        assert_eq!(r.path_mtu, Some(1500));
    }
}

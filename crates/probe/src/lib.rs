//! The probe wire format: what `turnpike check` sends to a server's probe
//! responder (`[probe]` in `turnpike serve`'s configuration), and what the
//! responder answers. No I/O: encoders write into the caller's buffer,
//! parsers borrow, and nothing here panics on any input.
//!
//! # Messages
//!
//! All integers are big-endian. A **request** is one UDP datagram (or, over
//! TCP, one frame: see below):
//!
//! ```text
//!  0..4    magic "TPKP"
//!  4       version: 1
//!  5       kind: 0x01 echo, 0x02 stamp
//!  6..8    flags: 0 (a version 1 responder ignores them)
//!  8..12   sequence number (the sender's; echoed)
//! 12..20   sender's timestamp (opaque to the responder; echoed; nanoseconds
//!          on the sender's clock by convention)
//! 20..     padding: any bytes, up to a total of MAX_LEN (1400)
//! ```
//!
//! A request is at least [`MIN_REQUEST_LEN`] (48) bytes, padding included,
//! so that no reply is ever larger than the request it answers: the
//! responder cannot be used to amplify a spoofed flood. Shorter requests
//! are malformed, and a responder drops malformed datagrams silently.
//!
//! A **reply** says what the responder saw:
//!
//! ```text
//!  0..4    magic "TPKP"
//!  4       version: 1
//!  5       kind: 0x80 | the request's kind (0x81 echo reply, 0x82 stamp reply)
//!  6       DSCP the request carried (0-63), or 0xFF: unknown
//!  7       address family of the source: 4 or 6
//!  8..12   the request's sequence number
//! 12..20   the request's timestamp
//! 20..28   when the responder received the request: nanoseconds since the
//!          Unix epoch, on the responder's clock
//! 28..30   the request's length in bytes, as received
//! 30..32   the source port the responder saw
//! 32..36   the source IPv4 address it saw (family 4), or
//! 32..48   the source IPv6 address (family 6)
//! then     an echo reply only: zeros up to the request's length
//! ```
//!
//! A stamp reply is its header alone (36 or 48 bytes); an echo reply is as
//! long as the request, so that the path back carries what the path out
//! did. Either way a reply is at most as long as its request.
//!
//! What the format is for: the echoed sequence number finds lost and
//! reordered round trips; the echoed timestamp gives the RTT on the
//! sender's clock alone; the receive time, against the sender's send
//! times, gives one-way delay variation (jitter, RFC 3550 §6.4.1) on the
//! way out without synchronised clocks; the reported length detects
//! truncation on the way; the source address shows NAT mapping; the DSCP
//! byte, once responders read it, shows whether markings survive the
//! network. Later versions add fields behind the version byte.
//!
//! # Over TCP
//!
//! The same messages, each preceded by its length as a 2-byte big-endian
//! integer ([`frame_header`], [`frame_len`]). A frame longer than
//! [`MAX_LEN`] is an error that ends the connection.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"TPKP";
/// The version this crate reads and writes.
pub const VERSION: u8 = 1;
/// The longest message, request or reply, in bytes.
pub const MAX_LEN: usize = 1400;
/// The fixed part of a request.
pub const REQUEST_HEADER_LEN: usize = 20;
/// The shortest request: the longest reply header (IPv6).
pub const MIN_REQUEST_LEN: usize = REPLY_HEADER_V6_LEN;
/// A reply's fixed part for an IPv4 source.
pub const REPLY_HEADER_V4_LEN: usize = 36;
/// A reply's fixed part for an IPv6 source.
pub const REPLY_HEADER_V6_LEN: usize = 48;
/// The DSCP byte of a reply when the responder could not read it.
pub const DSCP_UNKNOWN: u8 = 0xFF;
/// The length prefix of a message over TCP.
pub const FRAME_HEADER_LEN: usize = 2;

const REPLY_BIT: u8 = 0x80;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A reply as long as the request (padding echoed as zeros).
    Echo,
    /// A reply with the header alone: the smallest answer, for timing.
    Stamp,
}

impl Kind {
    /// The kind byte of a request.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::Echo => 0x01,
            Self::Stamp => 0x02,
        }
    }

    const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::Echo),
            0x02 => Some(Self::Stamp),
            _ => None,
        }
    }
}

/// A request, without its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub sequence: u32,
    /// The sender's timestamp, echoed as it is.
    pub timestamp: u64,
}

/// A reply, without its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The kind of the request it answers.
    pub kind: Kind,
    pub sequence: u32,
    pub timestamp: u64,
    /// When the responder received the request, in nanoseconds since the
    /// Unix epoch.
    pub received_ns: u64,
    /// The request's source transport address, as the responder saw it.
    pub source: SocketAddr,
    /// The request's length, as received.
    pub request_len: u16,
    /// The DSCP (0-63) the request carried, if the responder knows it.
    pub dscp: Option<u8>,
}

impl Reply {
    /// The reply to `request` (of `request_len` bytes) from `source`.
    #[must_use]
    pub const fn to(
        request: &Request,
        request_len: u16,
        source: SocketAddr,
        received_ns: u64,
        dscp: Option<u8>,
    ) -> Self {
        Self {
            kind: request.kind,
            sequence: request.sequence,
            timestamp: request.timestamp,
            received_ns,
            source,
            request_len,
            dscp,
        }
    }

    /// The reply's length on the wire.
    #[must_use]
    pub fn len(&self) -> usize {
        let header = reply_header_len(&self.source);
        match self.kind {
            Kind::Echo => header.max(usize::from(self.request_len)),
            Kind::Stamp => header,
        }
    }

    /// Never: a reply has at least its header.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than its fixed part (or, for a request, than
    /// [`MIN_REQUEST_LEN`]); or a reply shorter than it says it is.
    Truncated,
    /// Longer than [`MAX_LEN`], or a reply longer than it says it is.
    TooLong,
    /// Not [`MAGIC`].
    BadMagic,
    /// A version this crate does not read.
    Version(u8),
    /// A kind byte that is not a request's (or, in a reply, a reply's).
    Kind(u8),
    /// An address family other than 4 or 6.
    Family(u8),
    /// A DSCP byte other than 0-63 or [`DSCP_UNKNOWN`].
    Dscp(u8),
    /// The reply would be longer than the request it answers.
    LargerThanRequest,
    /// The caller's buffer cannot hold the message.
    BufferTooSmall,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated probe message"),
            Self::TooLong => write!(f, "probe message longer than {MAX_LEN} bytes"),
            Self::BadMagic => f.write_str("not a probe message (bad magic)"),
            Self::Version(v) => write!(f, "probe version {v} is not supported"),
            Self::Kind(k) => write!(f, "unknown probe message kind 0x{k:02x}"),
            Self::Family(a) => write!(f, "unknown address family {a}"),
            Self::Dscp(d) => write!(f, "DSCP byte 0x{d:02x} is neither 0-63 nor unknown"),
            Self::LargerThanRequest => f.write_str("the reply would be larger than the request"),
            Self::BufferTooSmall => f.write_str("buffer too small for the probe message"),
        }
    }
}

impl std::error::Error for Error {}

/// The fixed part of a reply to `source`.
#[must_use]
pub const fn reply_header_len(source: &SocketAddr) -> usize {
    match source {
        SocketAddr::V4(_) => REPLY_HEADER_V4_LEN,
        SocketAddr::V6(_) => REPLY_HEADER_V6_LEN,
    }
}

/// Writes `request` padded with zeros to `len` bytes
/// ([`MIN_REQUEST_LEN`] to [`MAX_LEN`]) at the start of `buf`; returns
/// `len`.
pub fn encode_request(request: &Request, len: usize, buf: &mut [u8]) -> Result<usize, Error> {
    if len < MIN_REQUEST_LEN {
        return Err(Error::Truncated);
    }
    if len > MAX_LEN {
        return Err(Error::TooLong);
    }
    let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    out.fill(0);
    let mut w = Writer(out);
    w.put(0, &MAGIC)?;
    w.put(4, &[VERSION, request.kind.to_byte(), 0, 0])?;
    w.put(8, &request.sequence.to_be_bytes())?;
    w.put(12, &request.timestamp.to_be_bytes())?;
    Ok(len)
}

/// Reads a request: `bytes` is the whole datagram (or TCP frame).
pub fn parse_request(bytes: &[u8]) -> Result<Request, Error> {
    if bytes.len() > MAX_LEN {
        return Err(Error::TooLong);
    }
    let r = Reader(bytes);
    let kind = common_header(&r)?;
    if kind & REPLY_BIT != 0 {
        return Err(Error::Kind(kind));
    }
    let kind = Kind::from_byte(kind).ok_or(Error::Kind(kind))?;
    if bytes.len() < MIN_REQUEST_LEN {
        return Err(Error::Truncated);
    }
    Ok(Request {
        kind,
        sequence: r.u32(8)?,
        timestamp: r.u64(12)?,
    })
}

/// Writes `reply` at the start of `buf`; returns its length
/// ([`Reply::len`]). Refuses a reply longer than the request it answers.
pub fn encode_reply(reply: &Reply, buf: &mut [u8]) -> Result<usize, Error> {
    let len = reply.len();
    if len > usize::from(reply.request_len) {
        return Err(Error::LargerThanRequest);
    }
    if len > MAX_LEN {
        return Err(Error::TooLong);
    }
    if let Some(d) = reply.dscp.filter(|d| *d > 63) {
        return Err(Error::Dscp(d));
    }
    let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    out.fill(0);
    let mut w = Writer(out);
    w.put(0, &MAGIC)?;
    let family = if reply.source.is_ipv4() { 4 } else { 6 };
    w.put(
        4,
        &[
            VERSION,
            REPLY_BIT | reply.kind.to_byte(),
            reply.dscp.unwrap_or(DSCP_UNKNOWN),
            family,
        ],
    )?;
    w.put(8, &reply.sequence.to_be_bytes())?;
    w.put(12, &reply.timestamp.to_be_bytes())?;
    w.put(20, &reply.received_ns.to_be_bytes())?;
    w.put(28, &reply.request_len.to_be_bytes())?;
    w.put(30, &reply.source.port().to_be_bytes())?;
    match reply.source.ip() {
        IpAddr::V4(v4) => w.put(32, &v4.octets())?,
        IpAddr::V6(v6) => w.put(32, &v6.octets())?,
    }
    Ok(len)
}

/// Reads a reply: `bytes` is the whole datagram (or TCP frame), which must
/// be exactly as long as the reply says.
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, Error> {
    if bytes.len() > MAX_LEN {
        return Err(Error::TooLong);
    }
    let r = Reader(bytes);
    let kind = common_header(&r)?;
    if kind & REPLY_BIT == 0 {
        return Err(Error::Kind(kind));
    }
    let kind = Kind::from_byte(kind & !REPLY_BIT).ok_or(Error::Kind(kind))?;
    let dscp = match r.u8(6)? {
        DSCP_UNKNOWN => None,
        d if d <= 63 => Some(d),
        d => return Err(Error::Dscp(d)),
    };
    let port = r.u16(30)?;
    let source = match r.u8(7)? {
        4 => SocketAddr::new(Ipv4Addr::from(r.array::<4>(32)?).into(), port),
        6 => SocketAddr::new(Ipv6Addr::from(r.array::<16>(32)?).into(), port),
        f => return Err(Error::Family(f)),
    };
    let reply = Reply {
        kind,
        sequence: r.u32(8)?,
        timestamp: r.u64(12)?,
        received_ns: r.u64(20)?,
        request_len: r.u16(28)?,
        source,
        dscp,
    };
    match bytes.len().cmp(&reply.len()) {
        std::cmp::Ordering::Less => Err(Error::Truncated),
        std::cmp::Ordering::Greater => Err(Error::TooLong),
        std::cmp::Ordering::Equal => Ok(reply),
    }
}

/// The responder's whole job for one request: the reply to `request`
/// (the bytes received) from `source`, received at `received_ns`, written
/// into `out`; its length. Errors for anything malformed, which the
/// responder drops without an answer.
pub fn answer(
    request: &[u8],
    source: SocketAddr,
    received_ns: u64,
    dscp: Option<u8>,
    out: &mut [u8],
) -> Result<usize, Error> {
    let parsed = parse_request(request)?;
    let len = u16::try_from(request.len()).map_err(|_| Error::TooLong)?;
    encode_reply(&Reply::to(&parsed, len, source, received_ns, dscp), out)
}

/// The 2-byte prefix of a `len`-byte message over TCP.
pub fn frame_header(len: usize) -> Result<[u8; FRAME_HEADER_LEN], Error> {
    if len > MAX_LEN {
        return Err(Error::TooLong);
    }
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| Error::TooLong)
}

/// The length of the message a TCP frame prefix announces; longer than
/// [`MAX_LEN`] is an error (the connection should end).
pub fn frame_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, Error> {
    let len = usize::from(u16::from_be_bytes(header));
    if len > MAX_LEN {
        Err(Error::TooLong)
    } else {
        Ok(len)
    }
}

/// Magic and version; returns the kind byte.
fn common_header(r: &Reader<'_>) -> Result<u8, Error> {
    if r.array::<4>(0)? != MAGIC {
        return Err(Error::BadMagic);
    }
    match r.u8(4)? {
        VERSION => r.u8(5),
        v => Err(Error::Version(v)),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N], Error> {
        self.0
            .get(at..at.checked_add(N).ok_or(Error::Truncated)?)
            .and_then(|s| s.try_into().ok())
            .ok_or(Error::Truncated)
    }

    fn u8(&self, at: usize) -> Result<u8, Error> {
        self.0.get(at).copied().ok_or(Error::Truncated)
    }

    fn u16(&self, at: usize) -> Result<u16, Error> {
        self.array(at).map(u16::from_be_bytes)
    }

    fn u32(&self, at: usize) -> Result<u32, Error> {
        self.array(at).map(u32::from_be_bytes)
    }

    fn u64(&self, at: usize) -> Result<u64, Error> {
        self.array(at).map(u64::from_be_bytes)
    }
}

struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put(&mut self, at: usize, bytes: &[u8]) -> Result<(), Error> {
        let end = at.checked_add(bytes.len()).ok_or(Error::BufferTooSmall)?;
        self.0
            .get_mut(at..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const REQ: Request = Request {
        kind: Kind::Echo,
        sequence: 0xDEAD_BEEF,
        timestamp: 0x0102_0304_0506_0708,
    };

    #[test]
    fn request_layout_is_as_documented() {
        let mut buf = [0xEE; 64];
        assert_eq!(encode_request(&REQ, 48, &mut buf), Ok(48));
        assert_eq!(&buf[..4], b"TPKP");
        assert_eq!(buf[4..8], [1, 1, 0, 0]);
        assert_eq!(buf[8..12], [0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(buf[12..20], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(buf[20..48].iter().all(|b| *b == 0), "padding is zeros");
        assert!(buf[48..].iter().all(|b| *b == 0xEE), "nothing past len");
    }

    #[test]
    fn round_trip_every_kind_and_family() {
        for kind in [Kind::Echo, Kind::Stamp] {
            for source in [sa("198.51.100.7:5000"), sa("[2001:db8::7]:65535")] {
                for len in [MIN_REQUEST_LEN, 100, MAX_LEN] {
                    let request = Request { kind, ..REQ };
                    let mut req = [0u8; MAX_LEN];
                    let n = encode_request(&request, len, &mut req).unwrap();
                    assert_eq!(parse_request(&req[..n]), Ok(request));
                    let mut out = [0u8; MAX_LEN];
                    let m = answer(&req[..n], source, 1_800_000_000_123_456_789, None, &mut out)
                        .unwrap();
                    assert!(m <= n, "never larger than the request");
                    let expected_len = match kind {
                        Kind::Echo => n,
                        Kind::Stamp => reply_header_len(&source),
                    };
                    assert_eq!(m, expected_len);
                    let reply = parse_reply(&out[..m]).unwrap();
                    assert_eq!(
                        reply,
                        Reply {
                            kind,
                            sequence: REQ.sequence,
                            timestamp: REQ.timestamp,
                            received_ns: 1_800_000_000_123_456_789,
                            source,
                            request_len: u16::try_from(n).unwrap(),
                            dscp: None,
                        }
                    );
                    assert_eq!(out[6], DSCP_UNKNOWN);
                }
            }
        }
    }

    #[test]
    fn reply_layout_is_as_documented() {
        let reply = Reply {
            kind: Kind::Stamp,
            sequence: 7,
            timestamp: 9,
            received_ns: 11,
            source: sa("192.0.2.1:258"),
            request_len: 60,
            dscp: Some(46),
        };
        let mut buf = [0u8; 64];
        assert_eq!(encode_reply(&reply, &mut buf), Ok(36));
        assert_eq!(&buf[..4], b"TPKP");
        assert_eq!(buf[4..8], [1, 0x82, 46, 4]);
        assert_eq!(buf[8..12], [0, 0, 0, 7]);
        assert_eq!(buf[12..20], [0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(buf[20..28], [0, 0, 0, 0, 0, 0, 0, 11]);
        assert_eq!(buf[28..30], [0, 60]);
        assert_eq!(buf[30..32], [1, 2]);
        assert_eq!(buf[32..36], [192, 0, 2, 1]);
        assert_eq!(parse_reply(&buf[..36]), Ok(reply));
    }

    #[test]
    fn truncations_at_every_length() {
        let mut req = [0u8; 200];
        let n = encode_request(&REQ, 200, &mut req).unwrap();
        for cut in 0..n {
            let got = parse_request(&req[..cut]);
            if cut < MIN_REQUEST_LEN {
                assert_eq!(got, Err(Error::Truncated), "request cut at {cut}");
            } else {
                // Padding is optional: a shorter request is still one.
                assert_eq!(got, Ok(REQ), "request cut at {cut}");
            }
        }
        for source in [sa("198.51.100.7:5000"), sa("[2001:db8::7]:5000")] {
            for kind in [Kind::Echo, Kind::Stamp] {
                let request = Request { kind, ..REQ };
                encode_request(&request, 200, &mut req).unwrap();
                let mut out = [0u8; 200];
                let m = answer(&req, source, 5, Some(0), &mut out).unwrap();
                assert!(parse_reply(&out[..m]).is_ok());
                for cut in 0..m {
                    assert_eq!(
                        parse_reply(&out[..cut]),
                        Err(Error::Truncated),
                        "{kind:?} reply to {source} cut at {cut}"
                    );
                }
                let mut longer = out[..m].to_vec();
                longer.push(0);
                assert_eq!(parse_reply(&longer), Err(Error::TooLong));
            }
        }
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let mut req = [0u8; 64];
        encode_request(&REQ, 64, &mut req).unwrap();
        let mut bad = req;
        bad[0] = b'X';
        assert_eq!(parse_request(&bad), Err(Error::BadMagic));
        let mut bad = req;
        bad[4] = 2;
        assert_eq!(parse_request(&bad), Err(Error::Version(2)));
        for kind in [0u8, 3, 0x81, 0xFF] {
            let mut bad = req;
            bad[5] = kind;
            assert_eq!(parse_request(&bad), Err(Error::Kind(kind)));
        }
        assert_eq!(parse_request(&[0u8; MAX_LEN + 1]), Err(Error::TooLong));
        // A request is not a reply, nor the reverse.
        assert_eq!(parse_reply(&req), Err(Error::Kind(1)));
        let mut out = [0u8; 64];
        let m = answer(&req, sa("192.0.2.1:1"), 0, None, &mut out).unwrap();
        assert_eq!(parse_request(&out[..m]), Err(Error::Kind(0x81)));
        let mut bad = out;
        bad[7] = 5;
        assert_eq!(parse_reply(&bad[..m]), Err(Error::Family(5)));
        let mut bad = out;
        bad[6] = 64;
        assert_eq!(parse_reply(&bad[..m]), Err(Error::Dscp(64)));
        // Every byte value at every header position: no panic.
        for at in 0..MIN_REQUEST_LEN {
            for value in 0..=255u8 {
                let mut m1 = req;
                m1[at] = value;
                let _ = parse_request(&m1);
                let mut m2 = out;
                m2[at] = value;
                let _ = parse_reply(&m2[..m]);
                let _ = parse_reply(&m2);
            }
        }
    }

    #[test]
    fn no_reply_is_larger_than_its_request() {
        // A stamp request of the minimum length from an IPv6 source: the
        // reply header exactly fills it.
        let mut req = [0u8; MIN_REQUEST_LEN];
        let stamp = Request {
            kind: Kind::Stamp,
            ..REQ
        };
        encode_request(&stamp, MIN_REQUEST_LEN, &mut req).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(
            answer(&req, sa("[2001:db8::1]:1"), 0, None, &mut out),
            Ok(MIN_REQUEST_LEN)
        );
        // A reply claiming a shorter request is refused.
        let reply = Reply::to(&REQ, 40, sa("[2001:db8::1]:1"), 0, None);
        assert_eq!(
            encode_reply(&reply, &mut out),
            Err(Error::LargerThanRequest)
        );
        assert_eq!(
            encode_request(&REQ, MIN_REQUEST_LEN - 1, &mut out),
            Err(Error::Truncated)
        );
        assert_eq!(
            encode_request(&REQ, MAX_LEN + 1, &mut [0u8; 2000]),
            Err(Error::TooLong)
        );
        assert_eq!(
            encode_request(&REQ, 60, &mut [0u8; 59]),
            Err(Error::BufferTooSmall)
        );
        let reply = Reply::to(&REQ, 60, sa("192.0.2.1:1"), 0, Some(64));
        assert_eq!(encode_reply(&reply, &mut out), Err(Error::Dscp(64)));
    }

    #[test]
    fn tcp_frames() {
        assert_eq!(frame_header(48), Ok([0, 48]));
        assert_eq!(frame_header(MAX_LEN), Ok([0x05, 0x78]));
        assert_eq!(frame_header(MAX_LEN + 1), Err(Error::TooLong));
        assert_eq!(frame_len([0x05, 0x78]), Ok(MAX_LEN));
        assert_eq!(frame_len([0x05, 0x79]), Err(Error::TooLong));
        assert_eq!(frame_len([0xFF, 0xFF]), Err(Error::TooLong));
        assert_eq!(frame_len([0, 0]), Ok(0));
    }
}

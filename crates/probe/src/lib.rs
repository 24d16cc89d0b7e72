//! The probe wire format: what `turnpike check` sends to a server's probe
//! responder (`[probe]` in `turnpike serve`'s configuration), and what the
//! responder answers. No I/O: encoders write into the caller's buffer,
//! parsers borrow, and nothing here panics on any input.
//!
//! # Requests
//!
//! All integers are big-endian. A request is one UDP datagram (or, over
//! TCP, one frame: see below):
//!
//! ```text
//!  0..4    magic "TPKP"
//!  4       version: 2
//!  5       kind: 0x01 echo, 0x02 stamp, 0x03 later, 0x04 train
//!  6       flags: bit 0 TALLY (not counted in its session); others 0
//!  7       the DSCP (0-63) to mark the answer with, or 0xFF: unmarked
//!  8..12   sequence number (the sender's; echoed)
//! 12..20   sender's timestamp (opaque to the responder; echoed)
//! 20..28   session: a number the sender draws per stream, 0 for none
//! 28..36   cookie: the last one the responder gave this sender, or 0
//! 36..48   the kind's arguments (zeros where it has none):
//!            later: 36..40 the delay in milliseconds
//!            train: 36..40 packets, 40..44 interval in microseconds,
//!                   44..46 each packet's length
//! 48..     padding: any bytes, up to a total of MAX_LEN (1472)
//! ```
//!
//! - **echo**: a reply as long as the request, at once.
//! - **stamp**: a reply of the header alone, at once.
//! - **later**: a stamp reply, after the delay, from the port the request
//!   came to and to the address it came from: whether a NAT or firewall
//!   still forwards it is whether the mapping outlived the silence.
//! - **train**: a train of packets from the responder at the interval
//!   asked, each of the length asked: what the way down carries, for
//!   bandwidth and downstream loss and jitter.
//!
//! A request is at least [`MIN_REQUEST_LEN`] (68) bytes, padding included,
//! so that no echo, stamp or later reply is larger than the request it
//! answers: the responder cannot be used to amplify a spoofed flood. A
//! train is larger than its request, so a responder sends one only to a
//! request with a valid cookie (the sender has shown that it receives at
//! its address), within limits of its own. Shorter requests are
//! malformed, and a responder drops malformed datagrams silently.
//!
//! # Replies
//!
//! ```text
//!  0..4    magic "TPKP"
//!  4       version: 2
//!  5       kind: 0x80 | the request's kind
//!  6       DSCP the request carried (0-63), or 0xFF: unknown
//!  7       address family of the source: 4 or 6
//!  8..12   the request's sequence number (train: the packet's index)
//! 12..20   the request's timestamp
//! 20..28   when the responder received the request (train: when it sent
//!          this packet): nanoseconds since the Unix epoch, its clock
//! 28..30   the request's length in bytes, as received
//! 30..32   the source port the responder saw
//! 32..40   the request's session
//! 40..44   requests of that session the responder has received from this
//!          source, this one included unless TALLY; 0 when it keeps no
//!          count (session 0, or no valid cookie)
//! 44..52   the cookie for this source, to put in later requests
//! 52..56   the source IPv4 address it saw (family 4), or
//! 52..68   the source IPv6 address (family 6)
//! then     zeros: an echo reply up to the request's length, a train
//!          packet up to the length asked
//! ```
//!
//! What the format is for: the echoed sequence number finds lost and
//! reordered round trips; the echoed timestamp gives the RTT on the
//! sender's clock alone; the receive time, against the sender's send
//! times, gives one-way delay variation (jitter, RFC 3550 §6.4.1) on the
//! way up without synchronised clocks, and the sender's receive times
//! against it the same on the way down; the session count separates loss
//! on the way up (sent − counted) from loss on the way down (counted −
//! replies received); the source address shows NAT mapping; the DSCP byte
//! shows whether markings survive the way up, and the reply's own marking
//! (asked in byte 7) whether they survive the way down.
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
pub const VERSION: u8 = 2;
/// The longest message, request or reply, in bytes: the UDP payload of a
/// 1500-byte IPv4 packet.
pub const MAX_LEN: usize = 1472;
/// The fixed part of a request.
pub const REQUEST_HEADER_LEN: usize = 48;
/// A reply's fixed part for an IPv4 source.
pub const REPLY_HEADER_V4_LEN: usize = 56;
/// A reply's fixed part for an IPv6 source.
pub const REPLY_HEADER_V6_LEN: usize = 68;
/// The shortest request: the longest reply header (IPv6).
pub const MIN_REQUEST_LEN: usize = REPLY_HEADER_V6_LEN;
/// The DSCP byte when there is none: unknown in a reply, unmarked in a
/// request.
pub const DSCP_NONE: u8 = 0xFF;
/// The length prefix of a message over TCP.
pub const FRAME_HEADER_LEN: usize = 2;
/// Request flag: the responder does not count this request in its
/// session (a tally: "how many have you seen?").
pub const FLAG_TALLY: u8 = 0x01;

const REPLY_BIT: u8 = 0x80;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A reply as long as the request (padding echoed as zeros).
    Echo,
    /// A reply with the header alone: the smallest answer, for timing.
    Stamp,
    /// A stamp reply after a delay, on the same mapping.
    Later { delay_ms: u32 },
    /// A train of packets down.
    Train(Train),
}

/// A train of packets the responder sends: `packets` packets of `len`
/// bytes, one every `interval_us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Train {
    pub packets: u32,
    pub interval_us: u32,
    pub len: u16,
}

impl Train {
    /// Its rate in bits per second (0 for a zero interval).
    #[must_use]
    pub fn bits_per_second(&self) -> u64 {
        if self.interval_us == 0 {
            return 0;
        }
        u64::from(self.len) * 8 * 1_000_000 / u64::from(self.interval_us)
    }

    /// Its bytes in all.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        u64::from(self.packets) * u64::from(self.len)
    }
}

impl Kind {
    /// The kind byte of a request.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::Echo => 0x01,
            Self::Stamp => 0x02,
            Self::Later { .. } => 0x03,
            Self::Train(_) => 0x04,
        }
    }
}

/// A request, without its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// Not counted in its session.
    pub tally: bool,
    /// The DSCP to mark the answer with; `None`: unmarked.
    pub reply_dscp: Option<u8>,
    pub sequence: u32,
    /// The sender's timestamp, echoed as it is.
    pub timestamp: u64,
    /// The stream it belongs to; 0 for none.
    pub session: u64,
    /// The cookie the responder gave, or 0.
    pub cookie: u64,
}

impl Request {
    /// A plain request of `kind`: no session, no cookie, unmarked replies.
    #[must_use]
    pub const fn new(kind: Kind, sequence: u32, timestamp: u64) -> Self {
        Self {
            kind,
            tally: false,
            reply_dscp: None,
            sequence,
            timestamp,
            session: 0,
            cookie: 0,
        }
    }
}

/// What a reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    Echo,
    Stamp,
    Later,
    /// One packet of a train.
    Train,
}

impl ReplyKind {
    const fn to_byte(self) -> u8 {
        REPLY_BIT
            | match self {
                Self::Echo => 0x01,
                Self::Stamp => 0x02,
                Self::Later => 0x03,
                Self::Train => 0x04,
            }
    }

    const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x81 => Some(Self::Echo),
            0x82 => Some(Self::Stamp),
            0x83 => Some(Self::Later),
            0x84 => Some(Self::Train),
            _ => None,
        }
    }
}

/// A reply, without its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    /// The request's sequence number; a train packet's index.
    pub sequence: u32,
    pub timestamp: u64,
    /// When the responder received the request (a train packet: sent
    /// it), in nanoseconds since the Unix epoch.
    pub received_ns: u64,
    /// The request's source transport address, as the responder saw it.
    pub source: SocketAddr,
    /// The request's length, as received.
    pub request_len: u16,
    /// The DSCP (0-63) the request carried, if the responder knows it.
    pub dscp: Option<u8>,
    pub session: u64,
    /// Requests of the session counted so far (0: not counted).
    pub counted: u32,
    /// The cookie for this source.
    pub cookie: u64,
    /// The reply's whole length on the wire, header and padding.
    pub len: u16,
}

impl Reply {
    /// The immediate or later reply to `request` (of `request_len` bytes)
    /// from `source`: as long as the request for an echo, the header
    /// alone otherwise. A train's packets are [`Reply::train_packet`].
    #[must_use]
    pub fn to(request: &Request, request_len: u16, source: SocketAddr, received_ns: u64) -> Self {
        let kind = match request.kind {
            Kind::Echo => ReplyKind::Echo,
            Kind::Later { .. } => ReplyKind::Later,
            Kind::Stamp | Kind::Train(_) => ReplyKind::Stamp,
        };
        let header = header_len_u16(&source);
        let len = match kind {
            ReplyKind::Echo => header.max(request_len),
            _ => header,
        };
        Self {
            kind,
            sequence: request.sequence,
            timestamp: request.timestamp,
            received_ns,
            source,
            request_len,
            dscp: None,
            session: request.session,
            counted: 0,
            cookie: 0,
            len,
        }
    }

    /// Packet `index` of the train `request` asked for, sent at `sent_ns`.
    #[must_use]
    pub fn train_packet(
        request: &Request,
        train: &Train,
        request_len: u16,
        source: SocketAddr,
        index: u32,
        sent_ns: u64,
    ) -> Self {
        Self {
            kind: ReplyKind::Train,
            sequence: index,
            received_ns: sent_ns,
            len: header_len_u16(&source).max(train.len),
            ..Self::to(request, request_len, source, sent_ns)
        }
    }

    /// The reply's length on the wire.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len as usize
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
    /// Flags this version does not define.
    Flags(u8),
    /// An address family other than 4 or 6.
    Family(u8),
    /// A DSCP byte other than 0-63 or [`DSCP_NONE`].
    Dscp(u8),
    /// A train with no packets, a zero interval, or a packet length
    /// outside what a reply may have.
    Train,
    /// The reply would be longer than the request it answers (or, for a
    /// train packet, than the train asked).
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
            Self::Flags(x) => write!(f, "unknown probe flags 0x{x:02x}"),
            Self::Family(a) => write!(f, "unknown address family {a}"),
            Self::Dscp(d) => write!(f, "DSCP byte 0x{d:02x} is neither 0-63 nor none"),
            Self::Train => {
                f.write_str("a train needs packets, an interval, and a length a reply may have")
            }
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

#[allow(clippy::cast_possible_truncation)] // 56 or 68
const fn header_len_u16(source: &SocketAddr) -> u16 {
    reply_header_len(source) as u16
}

fn dscp_byte(dscp: Option<u8>) -> Result<u8, Error> {
    match dscp {
        None => Ok(DSCP_NONE),
        Some(d) if d <= 63 => Ok(d),
        Some(d) => Err(Error::Dscp(d)),
    }
}

fn dscp_of(byte: u8) -> Result<Option<u8>, Error> {
    match byte {
        DSCP_NONE => Ok(None),
        d if d <= 63 => Ok(Some(d)),
        d => Err(Error::Dscp(d)),
    }
}

fn check_train(t: &Train) -> Result<(), Error> {
    let len = usize::from(t.len);
    if t.packets == 0 || t.interval_us == 0 || !(MIN_REQUEST_LEN..=MAX_LEN).contains(&len) {
        return Err(Error::Train);
    }
    Ok(())
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
    if let Kind::Train(t) = &request.kind {
        check_train(t)?;
    }
    let reply_dscp = dscp_byte(request.reply_dscp)?;
    let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    out.fill(0);
    let mut w = Writer(out);
    w.put(0, &MAGIC)?;
    let flags = if request.tally { FLAG_TALLY } else { 0 };
    w.put(4, &[VERSION, request.kind.to_byte(), flags, reply_dscp])?;
    w.put(8, &request.sequence.to_be_bytes())?;
    w.put(12, &request.timestamp.to_be_bytes())?;
    w.put(20, &request.session.to_be_bytes())?;
    w.put(28, &request.cookie.to_be_bytes())?;
    match request.kind {
        Kind::Echo | Kind::Stamp => {}
        Kind::Later { delay_ms } => w.put(36, &delay_ms.to_be_bytes())?,
        Kind::Train(t) => {
            w.put(36, &t.packets.to_be_bytes())?;
            w.put(40, &t.interval_us.to_be_bytes())?;
            w.put(44, &t.len.to_be_bytes())?;
        }
    }
    Ok(len)
}

/// Reads a request: `bytes` is the whole datagram (or TCP frame).
pub fn parse_request(bytes: &[u8]) -> Result<Request, Error> {
    if bytes.len() > MAX_LEN {
        return Err(Error::TooLong);
    }
    let r = Reader(bytes);
    let kind = common_header(&r)?;
    let kind = match kind {
        0x01 => Kind::Echo,
        0x02 => Kind::Stamp,
        0x03 => Kind::Later {
            delay_ms: r.u32(36)?,
        },
        0x04 => {
            let t = Train {
                packets: r.u32(36)?,
                interval_us: r.u32(40)?,
                len: r.u16(44)?,
            };
            check_train(&t)?;
            Kind::Train(t)
        }
        k => return Err(Error::Kind(k)),
    };
    if bytes.len() < MIN_REQUEST_LEN {
        return Err(Error::Truncated);
    }
    let flags = r.u8(6)?;
    if flags & !FLAG_TALLY != 0 {
        return Err(Error::Flags(flags));
    }
    Ok(Request {
        kind,
        tally: flags & FLAG_TALLY != 0,
        reply_dscp: dscp_of(r.u8(7)?)?,
        sequence: r.u32(8)?,
        timestamp: r.u64(12)?,
        session: r.u64(20)?,
        cookie: r.u64(28)?,
    })
}

/// Writes `reply` at the start of `buf`; returns its length
/// ([`Reply::len`]). Refuses an echo, stamp or later reply longer than
/// the request it answers, and any reply shorter than its header.
pub fn encode_reply(reply: &Reply, buf: &mut [u8]) -> Result<usize, Error> {
    let len = reply.len();
    let header = reply_header_len(&reply.source);
    if len < header {
        return Err(Error::Truncated);
    }
    if reply.kind != ReplyKind::Train && len > usize::from(reply.request_len) {
        return Err(Error::LargerThanRequest);
    }
    if len > MAX_LEN {
        return Err(Error::TooLong);
    }
    let dscp = dscp_byte(reply.dscp)?;
    let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    out.fill(0);
    let mut w = Writer(out);
    w.put(0, &MAGIC)?;
    let family = if reply.source.is_ipv4() { 4 } else { 6 };
    w.put(4, &[VERSION, reply.kind.to_byte(), dscp, family])?;
    w.put(8, &reply.sequence.to_be_bytes())?;
    w.put(12, &reply.timestamp.to_be_bytes())?;
    w.put(20, &reply.received_ns.to_be_bytes())?;
    w.put(28, &reply.request_len.to_be_bytes())?;
    w.put(30, &reply.source.port().to_be_bytes())?;
    w.put(32, &reply.session.to_be_bytes())?;
    w.put(40, &reply.counted.to_be_bytes())?;
    w.put(44, &reply.cookie.to_be_bytes())?;
    match reply.source.ip() {
        IpAddr::V4(v4) => w.put(52, &v4.octets())?,
        IpAddr::V6(v6) => w.put(52, &v6.octets())?,
    }
    Ok(len)
}

/// Reads a reply: `bytes` is the whole datagram (or TCP frame). An echo
/// reply must be exactly as long as its request was, a stamp or later
/// reply exactly its header; a train packet at least its header.
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, Error> {
    if bytes.len() > MAX_LEN {
        return Err(Error::TooLong);
    }
    let r = Reader(bytes);
    let byte = common_header(&r)?;
    let kind = ReplyKind::from_byte(byte).ok_or(Error::Kind(byte))?;
    let dscp = dscp_of(r.u8(6)?)?;
    let port = r.u16(30)?;
    let source = match r.u8(7)? {
        4 => SocketAddr::new(Ipv4Addr::from(r.array::<4>(52)?).into(), port),
        6 => SocketAddr::new(Ipv6Addr::from(r.array::<16>(52)?).into(), port),
        f => return Err(Error::Family(f)),
    };
    let request_len = r.u16(28)?;
    let header = header_len_u16(&source);
    let expected = match kind {
        ReplyKind::Echo => Some(header.max(request_len)),
        ReplyKind::Stamp | ReplyKind::Later => Some(header),
        ReplyKind::Train => None,
    };
    let len = u16::try_from(bytes.len()).map_err(|_| Error::TooLong)?;
    match expected {
        Some(e) if len < e => return Err(Error::Truncated),
        Some(e) if len > e => return Err(Error::TooLong),
        None if len < header => return Err(Error::Truncated),
        _ => {}
    }
    Ok(Reply {
        kind,
        sequence: r.u32(8)?,
        timestamp: r.u64(12)?,
        received_ns: r.u64(20)?,
        source,
        request_len,
        dscp,
        session: r.u64(32)?,
        counted: r.u32(40)?,
        cookie: r.u64(44)?,
        len,
    })
}

/// The immediate reply to an echo or stamp request in `request` (the
/// bytes received) from `source`, received at `received_ns`, written into
/// `out`: its length, or `None` for a later or train request, which a
/// responder schedules. No session count, cookie or DSCP: what a
/// stateless responder sends (a test's, say). Errors for anything
/// malformed, which a responder drops without an answer.
pub fn answer(
    request: &[u8],
    source: SocketAddr,
    received_ns: u64,
    out: &mut [u8],
) -> Result<Option<usize>, Error> {
    let parsed = parse_request(request)?;
    if matches!(parsed.kind, Kind::Later { .. } | Kind::Train(_)) {
        return Ok(None);
    }
    let len = u16::try_from(request.len()).map_err(|_| Error::TooLong)?;
    encode_reply(&Reply::to(&parsed, len, source, received_ns), out).map(Some)
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

/// Whether `bytes` starts like a probe message (the magic), as opposed to
/// STUN, which shares the responder's ports.
#[must_use]
pub fn is_probe(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC[..])
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
        tally: false,
        reply_dscp: None,
        sequence: 0xDEAD_BEEF,
        timestamp: 0x0102_0304_0506_0708,
        session: 0x1112_1314_1516_1718,
        cookie: 0x2122_2324_2526_2728,
    };

    const TRAIN: Train = Train {
        packets: 1000,
        interval_us: 9600,
        len: 1200,
    };

    fn kinds() -> [Kind; 4] {
        [
            Kind::Echo,
            Kind::Stamp,
            Kind::Later { delay_ms: 120_000 },
            Kind::Train(TRAIN),
        ]
    }

    #[test]
    fn request_layout_is_as_documented() {
        let mut buf = [0xEE; 80];
        let req = Request {
            kind: Kind::Train(TRAIN),
            tally: true,
            reply_dscp: Some(46),
            ..REQ
        };
        assert_eq!(encode_request(&req, 68, &mut buf), Ok(68));
        assert_eq!(&buf[..4], b"TPKP");
        assert_eq!(buf[4..8], [2, 4, 1, 46]);
        assert_eq!(buf[8..12], [0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(buf[12..20], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            buf[20..28],
            [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(
            buf[28..36],
            [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]
        );
        assert_eq!(buf[36..40], 1000u32.to_be_bytes());
        assert_eq!(buf[40..44], 9600u32.to_be_bytes());
        assert_eq!(buf[44..46], 1200u16.to_be_bytes());
        assert!(buf[46..68].iter().all(|b| *b == 0), "padding is zeros");
        assert!(buf[68..].iter().all(|b| *b == 0xEE), "nothing past len");
        assert_eq!(parse_request(&buf[..68]), Ok(req));
        let later = Request {
            kind: Kind::Later {
                delay_ms: 0x0A0B_0C0D,
            },
            ..REQ
        };
        encode_request(&later, 68, &mut buf).unwrap();
        assert_eq!(buf[4..8], [2, 3, 0, 0xFF]);
        assert_eq!(buf[36..40], [0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(parse_request(&buf[..68]), Ok(later));
    }

    #[test]
    fn reply_layout_is_as_documented() {
        let reply = Reply {
            kind: ReplyKind::Stamp,
            sequence: 7,
            timestamp: 9,
            received_ns: 11,
            source: sa("192.0.2.1:258"),
            request_len: 80,
            dscp: Some(46),
            session: 13,
            counted: 15,
            cookie: 17,
            len: 56,
        };
        let mut buf = [0u8; 80];
        assert_eq!(encode_reply(&reply, &mut buf), Ok(56));
        assert_eq!(&buf[..4], b"TPKP");
        assert_eq!(buf[4..8], [2, 0x82, 46, 4]);
        assert_eq!(buf[8..12], [0, 0, 0, 7]);
        assert_eq!(buf[12..20], 9u64.to_be_bytes());
        assert_eq!(buf[20..28], 11u64.to_be_bytes());
        assert_eq!(buf[28..30], [0, 80]);
        assert_eq!(buf[30..32], [1, 2]);
        assert_eq!(buf[32..40], 13u64.to_be_bytes());
        assert_eq!(buf[40..44], 15u32.to_be_bytes());
        assert_eq!(buf[44..52], 17u64.to_be_bytes());
        assert_eq!(buf[52..56], [192, 0, 2, 1]);
        assert_eq!(parse_reply(&buf[..56]), Ok(reply));
    }

    #[test]
    fn round_trip_every_kind_and_family() {
        for kind in kinds() {
            for source in [sa("198.51.100.7:5000"), sa("[2001:db8::7]:65535")] {
                for len in [MIN_REQUEST_LEN, 100, MAX_LEN] {
                    let request = Request { kind, ..REQ };
                    let mut req = [0u8; MAX_LEN];
                    let n = encode_request(&request, len, &mut req).unwrap();
                    assert_eq!(parse_request(&req[..n]), Ok(request));
                    let n16 = u16::try_from(n).unwrap();
                    let mut reply = Reply::to(&request, n16, source, 1_800_000_000_123_456_789);
                    reply.cookie = 99;
                    reply.counted = 3;
                    reply.dscp = Some(34);
                    let mut out = [0u8; MAX_LEN];
                    let m = encode_reply(&reply, &mut out).unwrap();
                    assert!(m <= n, "{kind:?}: never larger than the request");
                    let expected_len = match kind {
                        Kind::Echo => n,
                        _ => reply_header_len(&source),
                    };
                    assert_eq!(m, expected_len, "{kind:?}");
                    let back = parse_reply(&out[..m]).unwrap();
                    assert_eq!(back, reply);
                    assert_eq!(back.session, REQ.session);
                    assert_eq!(
                        back.kind,
                        match kind {
                            Kind::Echo => ReplyKind::Echo,
                            Kind::Later { .. } => ReplyKind::Later,
                            _ => ReplyKind::Stamp,
                        }
                    );
                    // The stateless answer agrees for echo and stamp.
                    let got = answer(&req[..n], source, 5, &mut out).unwrap();
                    match kind {
                        Kind::Echo | Kind::Stamp => assert_eq!(got, Some(expected_len)),
                        _ => assert_eq!(got, None),
                    }
                }
            }
        }
    }

    #[test]
    fn train_packets_have_the_length_asked() {
        let request = Request {
            kind: Kind::Train(TRAIN),
            ..REQ
        };
        for source in [sa("198.51.100.7:5000"), sa("[2001:db8::7]:5000")] {
            let p = Reply::train_packet(&request, &TRAIN, 68, source, 41, 77);
            assert_eq!(p.len(), 1200);
            let mut out = [0u8; MAX_LEN];
            assert_eq!(encode_reply(&p, &mut out), Ok(1200));
            let back = parse_reply(&out[..1200]).unwrap();
            assert_eq!(back, p);
            assert_eq!(
                (back.kind, back.sequence, back.received_ns),
                (ReplyKind::Train, 41, 77)
            );
            // A train packet of any length from its header up parses.
            assert!(parse_reply(&out[..reply_header_len(&source)]).is_ok());
            assert_eq!(
                parse_reply(&out[..reply_header_len(&source) - 1]),
                Err(Error::Truncated)
            );
        }
        assert_eq!(TRAIN.bits_per_second(), 1_000_000);
        assert_eq!(TRAIN.bytes(), 1_200_000);
    }

    #[test]
    fn bad_trains_are_refused_both_ways() {
        let mut buf = [0u8; 100];
        for t in [
            Train {
                packets: 0,
                ..TRAIN
            },
            Train {
                interval_us: 0,
                ..TRAIN
            },
            Train { len: 67, ..TRAIN },
            Train { len: 1473, ..TRAIN },
        ] {
            let req = Request {
                kind: Kind::Train(t),
                ..REQ
            };
            assert_eq!(
                encode_request(&req, 100, &mut buf),
                Err(Error::Train),
                "{t:?}"
            );
            // The same on the wire, written by hand.
            let ok = Request {
                kind: Kind::Train(TRAIN),
                ..REQ
            };
            encode_request(&ok, 100, &mut buf).unwrap();
            buf[36..40].copy_from_slice(&t.packets.to_be_bytes());
            buf[40..44].copy_from_slice(&t.interval_us.to_be_bytes());
            buf[44..46].copy_from_slice(&t.len.to_be_bytes());
            assert_eq!(parse_request(&buf), Err(Error::Train), "{t:?}");
        }
    }

    #[test]
    fn truncations_at_every_length() {
        for kind in kinds() {
            let request = Request { kind, ..REQ };
            let mut req = [0u8; 200];
            let n = encode_request(&request, 200, &mut req).unwrap();
            for cut in 0..n {
                let got = parse_request(&req[..cut]);
                if cut < MIN_REQUEST_LEN {
                    assert!(got.is_err(), "request cut at {cut}");
                } else {
                    // Padding is optional: a shorter request is still one.
                    assert_eq!(got, Ok(request), "request cut at {cut}");
                }
            }
        }
        for source in [sa("198.51.100.7:5000"), sa("[2001:db8::7]:5000")] {
            for kind in [Kind::Echo, Kind::Stamp, Kind::Later { delay_ms: 1 }] {
                let request = Request { kind, ..REQ };
                let reply = Reply::to(&request, 200, source, 5);
                let mut out = [0u8; 200];
                let m = encode_reply(&reply, &mut out).unwrap();
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
        let mut req = [0u8; 80];
        encode_request(&REQ, 80, &mut req).unwrap();
        let mut bad = req;
        bad[0] = b'X';
        assert_eq!(parse_request(&bad), Err(Error::BadMagic));
        for v in [1, 3] {
            let mut bad = req;
            bad[4] = v;
            assert_eq!(parse_request(&bad), Err(Error::Version(v)));
        }
        for kind in [0u8, 5, 0x81, 0xFF] {
            let mut bad = req;
            bad[5] = kind;
            assert_eq!(parse_request(&bad), Err(Error::Kind(kind)));
        }
        let mut bad = req;
        bad[6] = 0x02;
        assert_eq!(parse_request(&bad), Err(Error::Flags(2)));
        let mut bad = req;
        bad[7] = 64;
        assert_eq!(parse_request(&bad), Err(Error::Dscp(64)));
        assert_eq!(parse_request(&[0u8; MAX_LEN + 1]), Err(Error::TooLong));
        // A request is not a reply, nor the reverse.
        assert_eq!(parse_reply(&req), Err(Error::Kind(1)));
        let mut out = [0u8; 80];
        let m = answer(&req, sa("192.0.2.1:1"), 0, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(parse_request(&out[..m]), Err(Error::Kind(0x81)));
        let mut bad = out;
        bad[7] = 5;
        assert_eq!(parse_reply(&bad[..m]), Err(Error::Family(5)));
        let mut bad = out;
        bad[6] = 64;
        assert_eq!(parse_reply(&bad[..m]), Err(Error::Dscp(64)));
        assert!(!is_probe(b"\x00\x01\x00\x00\x21\x12\xa4\x42"));
        assert!(is_probe(&req));
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
    fn no_immediate_reply_is_larger_than_its_request() {
        // A stamp request of the minimum length from an IPv6 source: the
        // reply header exactly fills it.
        let mut req = [0u8; MIN_REQUEST_LEN];
        let stamp = Request {
            kind: Kind::Stamp,
            ..REQ
        };
        encode_request(&stamp, MIN_REQUEST_LEN, &mut req).unwrap();
        let mut out = [0u8; 100];
        assert_eq!(
            answer(&req, sa("[2001:db8::1]:1"), 0, &mut out),
            Ok(Some(MIN_REQUEST_LEN))
        );
        // A reply claiming a shorter request is refused.
        let reply = Reply::to(&REQ, 60, sa("[2001:db8::1]:1"), 0);
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
            encode_request(&REQ, 80, &mut [0u8; 79]),
            Err(Error::BufferTooSmall)
        );
        let mut reply = Reply::to(&REQ, 80, sa("192.0.2.1:1"), 0);
        reply.dscp = Some(64);
        assert_eq!(encode_reply(&reply, &mut out), Err(Error::Dscp(64)));
        let bad = Request {
            reply_dscp: Some(64),
            ..REQ
        };
        assert_eq!(encode_request(&bad, 80, &mut out), Err(Error::Dscp(64)));
    }

    #[test]
    fn tcp_frames() {
        assert_eq!(frame_header(68), Ok([0, 68]));
        assert_eq!(frame_header(MAX_LEN), Ok([0x05, 0xC0]));
        assert_eq!(frame_header(MAX_LEN + 1), Err(Error::TooLong));
        assert_eq!(frame_len([0x05, 0xC0]), Ok(MAX_LEN));
        assert_eq!(frame_len([0x05, 0xC1]), Err(Error::TooLong));
        assert_eq!(frame_len([0xFF, 0xFF]), Err(Error::TooLong));
        assert_eq!(frame_len([0, 0]), Ok(0));
    }
}

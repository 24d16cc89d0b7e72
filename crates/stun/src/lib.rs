//! STUN message codec: RFC 8489 messages with the attributes of RFC 8489,
//! RFC 8656 (TURN), RFC 6062 (TURN over TCP), RFC 5780 (NAT behaviour
//! discovery) and RFC 8445 (ICE).
//!
//! The codec does no I/O and allocates nothing:
//!
//! - [`Message::parse`] validates the framing of a datagram or stream frame
//!   and borrows it; attributes are decoded on demand into [`Attr`] values
//!   that borrow the same bytes.
//! - [`MessageWriter`] writes a message into a buffer the caller owns, then
//!   appends MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.
//! - [`channel_data`] frames TURN ChannelData messages; [`framing`] finds
//!   where a message ends on a TCP or TLS stream.
//!
//! The rules that keep a hostile peer from confusing the parser are the
//! codec's, not its callers': lengths are checked before use, attributes that
//! follow MESSAGE-INTEGRITY are not returned, the first of duplicate
//! attributes counts, and unknown comprehension-required attributes are
//! collected for a 420 answer.

#![forbid(unsafe_code)]

mod addr;
pub mod attr;
pub mod channel_data;
mod error;
pub mod framing;
pub mod integrity;
mod message;
pub mod nonce_cookie;
mod writer;

pub use addr::Family;
pub use attr::{Attr, AttrType};
pub use error::{AttrError, DecodeError, EncodeError, ErrorCode};
pub use integrity::{Integrity, IntegrityError, PasswordAlgorithm};
pub use message::{Class, Message, MessageType, Method, RawAttr, TransactionId};
pub use writer::MessageWriter;

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of the STUN message header.
pub const HEADER_LEN: usize = 20;

/// Length of an attribute's type and length fields.
pub const ATTR_HEADER_LEN: usize = 4;

/// What the first byte of a datagram or stream frame says it carries
/// (RFC 8656 §12, RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    /// 0x00–0x03: a STUN message.
    Stun,
    /// 0x40–0x7F: TURN ChannelData (channel numbers 0x4000–0x7FFF; see
    /// [`channel_data::CHANNEL_RANGE`]).
    ChannelData,
    /// Anything else: not for a TURN server.
    Other,
}

impl FirstByte {
    /// Classifies a message by its first byte.
    #[inline]
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        match bytes.first() {
            Some(0x00..=0x03) => Self::Stun,
            Some(0x40..=0x7F) => Self::ChannelData,
            _ => Self::Other,
        }
    }
}

/// Rounds an attribute value length up to the 4-byte boundary attributes are
/// aligned on.
#[inline]
#[must_use]
pub(crate) const fn padded(len: usize) -> usize {
    (len.saturating_add(3)) & !3
}

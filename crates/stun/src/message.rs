//! The message header and the borrowed message (RFC 8489 §5, §14).

use std::fmt;

use crate::attr::{Attr, AttrType};
use crate::error::{AttrError, DecodeError};
use crate::integrity::{self, Integrity, IntegrityError};
use crate::{ATTR_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE, padded};

/// The class of a message (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A STUN method (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1). Methods are
/// 12 bits; unknown ones are carried as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(u16);

impl Method {
    pub const BINDING: Self = Self(0x001);
    pub const ALLOCATE: Self = Self(0x003);
    pub const REFRESH: Self = Self(0x004);
    pub const SEND: Self = Self(0x006);
    pub const DATA: Self = Self(0x007);
    pub const CREATE_PERMISSION: Self = Self(0x008);
    pub const CHANNEL_BIND: Self = Self(0x009);
    pub const CONNECT: Self = Self(0x00A);
    pub const CONNECTION_BIND: Self = Self(0x00B);
    pub const CONNECTION_ATTEMPT: Self = Self(0x00C);

    /// A method from its 12-bit number; `None` above 0xFFF.
    #[must_use]
    pub const fn new(number: u16) -> Option<Self> {
        if number <= 0xFFF {
            Some(Self(number))
        } else {
            None
        }
    }

    #[must_use]
    pub const fn number(self) -> u16 {
        self.0
    }

    /// The method's name, for logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x001 => "Binding",
            0x003 => "Allocate",
            0x004 => "Refresh",
            0x006 => "Send",
            0x007 => "Data",
            0x008 => "CreatePermission",
            0x009 => "ChannelBind",
            0x00A => "Connect",
            0x00B => "ConnectionBind",
            0x00C => "ConnectionAttempt",
            _ => "Unknown",
        }
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:03x})", self.name(), self.0)
    }
}

/// A method and a class, as packed into the 14-bit message type field
/// (RFC 8489 §5, figure 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    #[must_use]
    pub const fn new(method: Method, class: Class) -> Self {
        Self { method, class }
    }

    /// Unpacks the type field; the two top bits must already be known zero.
    #[must_use]
    pub const fn from_bits(bits: u16) -> Self {
        let method = (bits & 0x000F) | ((bits & 0x00E0) >> 1) | ((bits & 0x3E00) >> 2);
        let class = match ((bits >> 7) & 0x2) | ((bits >> 4) & 0x1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        Self {
            method: Method(method),
            class,
        }
    }

    /// Packs the method and class into the type field.
    #[must_use]
    pub const fn bits(self) -> u16 {
        let m = self.method.0;
        let c: u16 = match self.class {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        (m & 0x000F)
            | ((m & 0x0070) << 1)
            | ((m & 0x0F80) << 2)
            | ((c & 0x1) << 4)
            | ((c & 0x2) << 7)
    }

    /// The success response type for this request's method.
    #[must_use]
    pub const fn success(self) -> Self {
        Self::new(self.method, Class::Success)
    }

    /// The error response type for this request's method.
    #[must_use]
    pub const fn error(self) -> Self {
        Self::new(self.method, Class::Error)
    }
}

/// The 96-bit transaction ID (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// An attribute as found on the wire: its type and its unpadded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttr<'a> {
    pub typ: AttrType,
    pub value: &'a [u8],
}

/// A STUN message whose framing has been checked, borrowing its bytes.
///
/// Attribute accessors only see attributes that precede the first
/// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5: anything
/// after them is ignored); when an attribute repeats, the first counts.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    /// Exactly the header and the attributes the header's length covers.
    bytes: &'a [u8],
    typ: MessageType,
    tid: TransactionId,
    /// Offset of the end of the attributes that count.
    attrs_end: usize,
    /// Offset of MESSAGE-INTEGRITY, if present before any MI-SHA256.
    mi: Option<usize>,
    /// Offset of MESSAGE-INTEGRITY-SHA256, if present.
    mi_sha256: Option<usize>,
    has_fingerprint: bool,
    unknown: UnknownRequired,
}

/// Comprehension-required attribute types the codec does not know, in the
/// order found (at most [`UnknownRequired::MAX`], enough for a 420 answer).
#[derive(Clone, Copy, Default)]
pub(crate) struct UnknownRequired {
    types: [u16; UnknownRequired::MAX],
    len: u8,
}

impl UnknownRequired {
    const MAX: usize = 16;

    fn push(&mut self, typ: u16) {
        let len = usize::from(self.len);
        if self.as_slice().contains(&typ) {
            return;
        }
        if let Some(slot) = self.types.get_mut(len) {
            *slot = typ;
            self.len = self.len.saturating_add(1);
        }
    }

    fn as_slice(&self) -> &[u16] {
        self.types.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl<'a> Message<'a> {
    /// Checks the header and the attribute framing of `bytes` (RFC 8489 §6.3).
    ///
    /// `bytes` may be longer than the message; [`Message::len`] says how much
    /// of it the message used. A FINGERPRINT, when present, is verified here:
    /// a message whose fingerprint fails is not a STUN message.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::TooShort)?;
        let [t0, t1, l0, l1, c0, c1, c2, c3, tid @ ..] = *header;
        if t0 & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        if u32::from_be_bytes([c0, c1, c2, c3]) != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie);
        }
        let body_len = usize::from(u16::from_be_bytes([l0, l1]));
        if !body_len.is_multiple_of(4) {
            return Err(DecodeError::UnalignedLength);
        }
        let total = HEADER_LEN + body_len;
        let bytes = bytes.get(..total).ok_or(DecodeError::Truncated)?;

        let mut msg = Self {
            bytes,
            typ: MessageType::from_bits(u16::from_be_bytes([t0, t1])),
            tid: TransactionId(tid),
            attrs_end: total,
            mi: None,
            mi_sha256: None,
            has_fingerprint: false,
            unknown: UnknownRequired::default(),
        };

        let mut integrity_seen = false;
        let mut offset = HEADER_LEN;
        while offset < total {
            if msg.has_fingerprint {
                return Err(DecodeError::AfterFingerprint);
            }
            let (typ, value_len) =
                attr_header(bytes, offset).ok_or(DecodeError::AttributeOverrun)?;
            let next = offset
                .checked_add(ATTR_HEADER_LEN)
                .and_then(|o| o.checked_add(padded(value_len)))
                .filter(|&next| next <= total)
                .ok_or(DecodeError::AttributeOverrun)?;
            match typ {
                AttrType::MESSAGE_INTEGRITY if !integrity_seen => {
                    msg.mi = Some(offset);
                    msg.attrs_end = offset;
                    integrity_seen = true;
                }
                AttrType::MESSAGE_INTEGRITY_SHA256 if msg.mi_sha256.is_none() => {
                    msg.mi_sha256 = Some(offset);
                    if !integrity_seen {
                        msg.attrs_end = offset;
                        integrity_seen = true;
                    }
                }
                AttrType::FINGERPRINT => {
                    // Exactly 4 bytes (§14.7): a shorter value would take
                    // its padding for part of the CRC.
                    let crc = bytes
                        .get(offset + ATTR_HEADER_LEN..offset + ATTR_HEADER_LEN + value_len)
                        .and_then(|v| <[u8; 4]>::try_from(v).ok())
                        .map(u32::from_be_bytes);
                    if crc != Some(integrity::fingerprint(bytes, offset)) {
                        return Err(DecodeError::BadFingerprint);
                    }
                    msg.has_fingerprint = true;
                    if !integrity_seen {
                        msg.attrs_end = offset;
                    }
                }
                _ if !integrity_seen && typ.is_comprehension_required() && !typ.is_known() => {
                    msg.unknown.push(typ.0);
                }
                _ => {}
            }
            offset = next;
        }
        Ok(msg)
    }

    /// The message's type (method and class).
    #[must_use]
    pub const fn typ(&self) -> MessageType {
        self.typ
    }

    #[must_use]
    pub const fn method(&self) -> Method {
        self.typ.method
    }

    #[must_use]
    pub const fn class(&self) -> Class {
        self.typ.class
    }

    #[must_use]
    pub const fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// The number of bytes the message occupies.
    #[must_use]
    #[allow(clippy::len_without_is_empty)] // a message is never empty
    pub const fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The message's bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether the message carries MESSAGE-INTEGRITY or
    /// MESSAGE-INTEGRITY-SHA256.
    #[must_use]
    pub const fn has_integrity(&self) -> bool {
        self.mi.is_some() || self.mi_sha256.is_some()
    }

    /// Whether the message ends with a FINGERPRINT (already verified).
    #[must_use]
    pub const fn has_fingerprint(&self) -> bool {
        self.has_fingerprint
    }

    /// Comprehension-required attributes this codec does not know, in the
    /// order first seen; a request carrying any is answered with 420.
    #[must_use]
    pub fn unknown_comprehension_required(&self) -> &[u16] {
        self.unknown.as_slice()
    }

    /// The attributes that count, in order, undecoded.
    #[must_use]
    pub fn attributes(&self) -> RawAttrs<'a> {
        RawAttrs {
            bytes: self.bytes.get(..self.attrs_end).unwrap_or(&[]),
            offset: HEADER_LEN,
        }
    }

    /// The first attribute of type `typ`, undecoded.
    #[must_use]
    pub fn raw(&self, typ: AttrType) -> Option<RawAttr<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }

    /// The first attribute of type `typ`, decoded; `None` when absent.
    #[must_use]
    pub fn get(&self, typ: AttrType) -> Option<Result<Attr<'a>, AttrError>> {
        self.raw(typ).map(|raw| Attr::decode(raw, &self.tid))
    }

    /// Every attribute of type `typ` (some, like XOR-PEER-ADDRESS, may repeat).
    pub fn get_all(&self, typ: AttrType) -> impl Iterator<Item = Result<Attr<'a>, AttrError>> + 'a {
        let tid = self.tid;
        self.attributes()
            .filter(move |a| a.typ == typ)
            .map(move |raw| Attr::decode(raw, &tid))
    }

    /// Checks the message's integrity with `key` (RFC 8489 §9.2.4, §14.5,
    /// §14.6). MESSAGE-INTEGRITY-SHA256 is preferred when both are present.
    /// Returns which attribute was verified, so the answer can use the same.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<Integrity, IntegrityError> {
        if let Some(at) = self.mi_sha256 {
            integrity::verify(self.bytes, at, Integrity::Sha256, key)?;
            Ok(Integrity::Sha256)
        } else if let Some(at) = self.mi {
            integrity::verify(self.bytes, at, Integrity::Sha1, key)?;
            Ok(Integrity::Sha1)
        } else {
            Err(IntegrityError::Missing)
        }
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_struct("Message");
        list.field("type", &self.typ)
            .field("transaction_id", &self.tid);
        for raw in self.attributes() {
            match Attr::decode(raw, &self.tid) {
                Ok(attr) => list.field("attr", &attr),
                Err(e) => list.field("attr", &(raw.typ, e)),
            };
        }
        list.finish()
    }
}

/// Iterator over a message's attributes, in order.
#[derive(Debug, Clone)]
pub struct RawAttrs<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for RawAttrs<'a> {
    type Item = RawAttr<'a>;

    fn next(&mut self) -> Option<RawAttr<'a>> {
        // Framing was checked by `Message::parse`; a failure here only ends
        // the iteration.
        let (typ, len) = attr_header(self.bytes, self.offset)?;
        let start = self.offset.checked_add(ATTR_HEADER_LEN)?;
        let value = self.bytes.get(start..start.checked_add(len)?)?;
        self.offset = start.checked_add(padded(len))?;
        Some(RawAttr { typ, value })
    }
}

/// The type and value length of the attribute at `offset`.
fn attr_header(bytes: &[u8], offset: usize) -> Option<(AttrType, usize)> {
    let h = bytes.get(offset..offset.checked_add(ATTR_HEADER_LEN)?)?;
    let [t0, t1, l0, l1] = <[u8; 4]>::try_from(h).ok()?;
    Some((
        AttrType(u16::from_be_bytes([t0, t1])),
        usize::from(u16::from_be_bytes([l0, l1])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_bits_round_trip() {
        // RFC 8489 §5: Binding request 0x0001, success 0x0101, error 0x0111.
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Request).bits(),
            0x0001
        );
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Success).bits(),
            0x0101
        );
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Error).bits(),
            0x0111
        );
        assert_eq!(
            MessageType::new(Method::SEND, Class::Indication).bits(),
            0x0016
        );
        assert_eq!(
            MessageType::new(Method::DATA, Class::Indication).bits(),
            0x0017
        );
        assert_eq!(
            MessageType::new(Method::ALLOCATE, Class::Request).bits(),
            0x0003
        );
        for bits in 0..0x4000u16 {
            assert_eq!(MessageType::from_bits(bits).bits(), bits);
        }
    }

    fn header(typ: u16, len: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&typ.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        v.extend_from_slice(&[7; 12]);
        v
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(Message::parse(&[0; 19]).unwrap_err(), DecodeError::TooShort);
        let mut m = header(0x0001, 0);
        m[0] = 0x80;
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::NotStun);
        let mut m = header(0x0001, 0);
        m[4] = 0;
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::BadMagicCookie);
        let m = header(0x0001, 2);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            DecodeError::UnalignedLength
        );
        let m = header(0x0001, 8);
        assert_eq!(Message::parse(&m).unwrap_err(), DecodeError::Truncated);
        let mut m = header(0x0001, 8);
        m.extend_from_slice(&[0x00, 0x06, 0x00, 0x05, b'a', b'b', b'c', b'd']);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            DecodeError::AttributeOverrun
        );
    }

    #[test]
    fn first_duplicate_counts_and_unknown_required_collected() {
        let mut m = header(0x0001, 32);
        m.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 1]); // LIFETIME 1
        m.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 2]); // LIFETIME 2
        m.extend_from_slice(&[0x7F, 0xFF, 0x00, 0x00]); // unknown, required
        m.extend_from_slice(&[0xBF, 0xFF, 0x00, 0x00]); // unknown, optional
        m.extend_from_slice(&[0x7F, 0xFF, 0x00, 0x04, 1, 2, 3, 4]); // repeated
        let msg = Message::parse(&m).unwrap();
        assert_eq!(msg.get(AttrType::LIFETIME), Some(Ok(Attr::Lifetime(1))));
        assert_eq!(msg.unknown_comprehension_required(), &[0x7FFF]);
        assert_eq!(msg.attributes().count(), 5);
    }

    #[test]
    fn a_fingerprint_is_exactly_four_bytes() {
        // Found by the differential test: a FINGERPRINT of length 3 was
        // read with its padding byte as the fourth byte of the CRC, so a
        // message with a malformed FINGERPRINT could pass.
        let mut m = header(0x0001, 8);
        m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
        let crc = integrity::fingerprint(&m, HEADER_LEN).to_be_bytes();
        m[24..28].copy_from_slice(&crc);
        assert!(Message::parse(&m).unwrap().has_fingerprint());
        for len in [0u8, 3] {
            let mut short = m.clone();
            short[23] = len;
            let crc = integrity::fingerprint(&short, HEADER_LEN).to_be_bytes();
            short[24..28].copy_from_slice(&crc);
            assert_eq!(
                Message::parse(&short).unwrap_err(),
                DecodeError::BadFingerprint,
                "FINGERPRINT of {len} bytes"
            );
        }
    }

    #[test]
    fn longer_input_is_not_part_of_the_message() {
        let mut m = header(0x0001, 0);
        m.extend_from_slice(&[1, 2, 3, 4]);
        let msg = Message::parse(&m).unwrap();
        assert_eq!(msg.len(), 20);
        assert_eq!(msg.attributes().count(), 0);
    }
}

//! Writing messages into a caller's buffer.

use hmac::Hmac;
use sha1::Sha1;
use sha2::Sha256;

use crate::attr::{Attr, AttrType};
use crate::error::EncodeError;
use crate::integrity;
use crate::message::{MessageType, TransactionId};
use crate::{ATTR_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE, padded};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Attributes,
    AfterIntegrity,
    AfterIntegritySha256,
    AfterFingerprint,
}

/// Writes one STUN message into a buffer the caller owns.
///
/// Attributes are appended in order; the header's length is kept current so
/// the bytes are a valid message after every call. Padding is zeroed: no byte
/// of the buffer's previous contents is ever sent.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
    stage: Stage,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message of type `typ` with transaction ID `tid`.
    pub fn new(
        buf: &'b mut [u8],
        typ: MessageType,
        tid: TransactionId,
    ) -> Result<Self, EncodeError> {
        let header = buf
            .get_mut(..HEADER_LEN)
            .ok_or(EncodeError::BufferTooSmall)?;
        let [t0, t1] = typ.bits().to_be_bytes();
        let [c0, c1, c2, c3] = MAGIC_COOKIE.to_be_bytes();
        let [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11] = tid.0;
        header.copy_from_slice(&[
            t0, t1, 0, 0, c0, c1, c2, c3, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11,
        ]);
        Ok(Self {
            buf,
            len: HEADER_LEN,
            tid,
            stage: Stage::Attributes,
        })
    }

    /// The transaction ID the message carries.
    #[must_use]
    pub const fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// Appends an attribute. Integrity and fingerprint attributes have their
    /// own methods, which compute them.
    pub fn add(&mut self, attr: &Attr<'_>) -> Result<(), EncodeError> {
        if self.stage != Stage::Attributes {
            return Err(EncodeError::AfterIntegrity);
        }
        let tid = self.tid;
        let before = self.len;
        let value = self.reserve(attr.typ(), attr.value_len())?;
        let result = attr.encode_value(value, &tid);
        if result.is_err() {
            self.truncate(before);
        }
        result
    }

    /// Appends an attribute whose value is already in the buffer, right
    /// after the attribute header this writes: only the header and the
    /// padding are written. This lets a relay wrap a datagram it received in
    /// place, without copying it (a Data indication around a peer's payload).
    pub fn add_in_place(&mut self, typ: AttrType, value_len: usize) -> Result<(), EncodeError> {
        if self.stage != Stage::Attributes {
            return Err(EncodeError::AfterIntegrity);
        }
        let wire_len = u16::try_from(value_len).map_err(|_| EncodeError::TooLong)?;
        let at = self.len;
        let value_end = at
            .checked_add(ATTR_HEADER_LEN)
            .and_then(|e| e.checked_add(value_len))
            .ok_or(EncodeError::TooLong)?;
        let end = at + ATTR_HEADER_LEN + padded(value_len);
        let body_len = u16::try_from(end - HEADER_LEN).map_err(|_| EncodeError::TooLong)?;
        let slot = self
            .buf
            .get_mut(at..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        let [t0, t1] = typ.0.to_be_bytes();
        let [l0, l1] = wire_len.to_be_bytes();
        if let Some(h) = slot.first_chunk_mut::<4>() {
            *h = [t0, t1, l0, l1];
        }
        if let Some(padding) = self.buf.get_mut(value_end..end) {
            padding.fill(0);
        }
        let [b0, b1] = body_len.to_be_bytes();
        if let Some(h) = self.buf.get_mut(2..4) {
            h.copy_from_slice(&[b0, b1]);
        }
        self.len = end;
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY: HMAC-SHA1 keyed with `key` (RFC 8489 §14.5).
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        if self.stage != Stage::Attributes {
            return Err(EncodeError::AfterIntegrity);
        }
        self.integrity::<Hmac<Sha1>>(AttrType::MESSAGE_INTEGRITY, 20, key)?;
        self.stage = Stage::AfterIntegrity;
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY-SHA256: HMAC-SHA256 keyed with `key`, in full
    /// (RFC 8489 §14.6). It may follow MESSAGE-INTEGRITY.
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        if self.stage > Stage::AfterIntegrity {
            return Err(EncodeError::AfterIntegrity);
        }
        self.integrity::<Hmac<Sha256>>(AttrType::MESSAGE_INTEGRITY_SHA256, 32, key)?;
        self.stage = Stage::AfterIntegritySha256;
        Ok(())
    }

    /// Appends FINGERPRINT, which ends the message (RFC 8489 §14.7).
    pub fn fingerprint(&mut self) -> Result<(), EncodeError> {
        if self.stage == Stage::AfterFingerprint {
            return Err(EncodeError::AfterIntegrity);
        }
        let at = self.len;
        self.reserve(AttrType::FINGERPRINT, 4)?;
        let crc = integrity::fingerprint(self.buf, at);
        self.value_mut(at, 4)?.copy_from_slice(&crc.to_be_bytes());
        self.stage = Stage::AfterFingerprint;
        Ok(())
    }

    /// The message so far.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Ends the message; returns its length in the buffer.
    #[must_use]
    pub fn finish(self) -> usize {
        self.len
    }

    fn integrity<M: hmac::Mac + hmac::KeyInit>(
        &mut self,
        typ: AttrType,
        value_len: usize,
        key: &[u8],
    ) -> Result<(), EncodeError> {
        let at = self.len;
        self.reserve(typ, value_len)?;
        let mut tag = [0u8; 32];
        integrity::mac_into::<M>(key, self.buf, at, value_len, &mut tag)
            .ok_or(EncodeError::BadKey)?;
        let tag = tag.get(..value_len).ok_or(EncodeError::BadKey)?;
        self.value_mut(at, value_len)?.copy_from_slice(tag);
        Ok(())
    }

    /// Writes an attribute header for a value of `value_len` bytes, zeroes
    /// the value and its padding, updates the message length, and returns
    /// the value's bytes.
    fn reserve(&mut self, typ: AttrType, value_len: usize) -> Result<&mut [u8], EncodeError> {
        let wire_len = u16::try_from(value_len).map_err(|_| EncodeError::TooLong)?;
        let at = self.len;
        let end = at
            .checked_add(ATTR_HEADER_LEN)
            .and_then(|e| e.checked_add(padded(value_len)))
            .ok_or(EncodeError::TooLong)?;
        let body_len = u16::try_from(end - HEADER_LEN).map_err(|_| EncodeError::TooLong)?;
        let slot = self
            .buf
            .get_mut(at..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        slot.fill(0);
        let [t0, t1] = typ.0.to_be_bytes();
        let [l0, l1] = wire_len.to_be_bytes();
        if let Some(h) = slot.first_chunk_mut::<4>() {
            *h = [t0, t1, l0, l1];
        }
        let [b0, b1] = body_len.to_be_bytes();
        if let Some(h) = self.buf.get_mut(2..4) {
            h.copy_from_slice(&[b0, b1]);
        }
        self.len = end;
        self.value_mut(at, value_len)
    }

    /// Forgets everything after `len` bytes.
    fn truncate(&mut self, len: usize) {
        self.len = len;
        let [b0, b1] = u16::try_from(len - HEADER_LEN).unwrap_or(0).to_be_bytes();
        if let Some(h) = self.buf.get_mut(2..4) {
            h.copy_from_slice(&[b0, b1]);
        }
    }

    fn value_mut(&mut self, at: usize, value_len: usize) -> Result<&mut [u8], EncodeError> {
        let start = at + ATTR_HEADER_LEN;
        self.buf
            .get_mut(start..start + value_len)
            .ok_or(EncodeError::BufferTooSmall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Class, Message, Method};
    use crate::{Integrity, IntegrityError};

    #[test]
    fn writes_what_parses_back() {
        let mut buf = [0xAAu8; 512];
        let tid = TransactionId([9; 12]);
        let typ = MessageType::new(Method::ALLOCATE, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, tid).unwrap();
        w.add(&Attr::RequestedTransport(17)).unwrap();
        w.add(&Attr::Username("alice")).unwrap();
        w.add(&Attr::EvenPort { reserve_next: true }).unwrap();
        w.add(&Attr::XorPeerAddress("[2001:db8::1]:3478".parse().unwrap()))
            .unwrap();
        w.message_integrity(b"key").unwrap();
        w.message_integrity_sha256(b"key").unwrap();
        w.fingerprint().unwrap();
        assert_eq!(w.add(&Attr::DontFragment), Err(EncodeError::AfterIntegrity));
        let len = w.finish();

        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(msg.typ(), typ);
        assert_eq!(msg.transaction_id(), tid);
        assert!(msg.has_fingerprint());
        assert_eq!(
            msg.get(AttrType::USERNAME),
            Some(Ok(Attr::Username("alice")))
        );
        // "alice" is padded with zeros, not with the buffer's old 0xAA bytes.
        let raw = msg.as_bytes();
        let at = raw.windows(5).position(|w| w == b"alice").unwrap();
        assert_eq!(&raw[at + 5..at + 8], &[0, 0, 0]);
        assert_eq!(
            msg.get(AttrType::EVEN_PORT),
            Some(Ok(Attr::EvenPort { reserve_next: true }))
        );
        assert_eq!(msg.verify_integrity(b"key"), Ok(Integrity::Sha256));
        assert_eq!(
            msg.verify_integrity(b"other"),
            Err(IntegrityError::Mismatch)
        );
    }

    #[test]
    fn sha1_integrity_alone_verifies() {
        let mut buf = [0u8; 128];
        let typ = MessageType::new(Method::REFRESH, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([1; 12])).unwrap();
        w.add(&Attr::Lifetime(0)).unwrap();
        w.message_integrity(b"k").unwrap();
        let len = w.finish();
        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(msg.verify_integrity(b"k"), Ok(Integrity::Sha1));
        assert!(!msg.has_fingerprint());
    }

    #[test]
    fn add_in_place_wraps_bytes_already_there() {
        let mut buf = [0xEEu8; 64];
        buf[24..29].copy_from_slice(b"hello");
        let typ = MessageType::new(Method::DATA, Class::Indication);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([3; 12])).unwrap();
        w.add_in_place(AttrType::DATA, 5).unwrap();
        let len = w.finish();
        assert_eq!(len, 32);
        assert_eq!(&buf[29..32], &[0, 0, 0], "padding zeroed");
        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(msg.get(AttrType::DATA), Some(Ok(Attr::Data(b"hello"))));
    }

    #[test]
    fn buffer_too_small_is_an_error() {
        let mut buf = [0u8; 24];
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([1; 12])).unwrap();
        assert_eq!(w.add(&Attr::Lifetime(1)), Err(EncodeError::BufferTooSmall));
        assert!(MessageWriter::new(&mut [0u8; 19], typ, TransactionId([1; 12])).is_err());
    }

    #[test]
    fn text_limits_are_enforced() {
        let mut buf = [0u8; 2048];
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([1; 12])).unwrap();
        let long = "x".repeat(128);
        assert_eq!(w.add(&Attr::Realm(&long)), Err(EncodeError::InvalidValue));
        assert_eq!(w.add(&Attr::Realm(&long[..127])), Ok(()));
    }
}

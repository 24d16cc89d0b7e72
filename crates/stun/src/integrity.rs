//! MESSAGE-INTEGRITY (RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6),
//! FINGERPRINT (§14.7), and the long-term credential keys they use (§9.2.2).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ATTR_HEADER_LEN, HEADER_LEN};

/// Which integrity attribute protects a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integrity {
    /// MESSAGE-INTEGRITY: HMAC-SHA1, 20 bytes.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, 32 bytes when we write it.
    Sha256,
}

/// Why a message's integrity does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityError {
    /// Neither integrity attribute is present.
    Missing,
    /// The HMAC does not match: wrong key or altered message.
    Mismatch,
}

impl fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "no message integrity",
            Self::Mismatch => "message integrity does not match",
        })
    }
}

impl std::error::Error for IntegrityError {}

/// A password algorithm (RFC 8489 §18.5).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithm(pub u16);

impl PasswordAlgorithm {
    pub const MD5: Self = Self(0x0001);
    pub const SHA256: Self = Self(0x0002);
}

impl fmt::Debug for PasswordAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MD5 => f.write_str("MD5"),
            Self::SHA256 => f.write_str("SHA-256"),
            Self(n) => write!(f, "PasswordAlgorithm({n:#06x})"),
        }
    }
}

/// A long-term credential key (RFC 8489 §9.2.2): the hash, by the password
/// algorithm, of `username ":" realm ":" password`.
///
/// The strings are used as given; callers that need OpaqueString (RFC 8265)
/// preparation apply it first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LongTermKey {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl LongTermKey {
    /// Derives the key; `None` for an algorithm other than MD5 or SHA-256.
    #[must_use]
    pub fn derive(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Option<Self> {
        let parts = [
            username.as_bytes(),
            b":",
            realm.as_bytes(),
            b":",
            password.as_bytes(),
        ];
        match algorithm {
            PasswordAlgorithm::MD5 => {
                let mut h = Md5::new();
                parts.iter().for_each(|p| h.update(p));
                Some(Self::Md5(h.finalize().into()))
            }
            PasswordAlgorithm::SHA256 => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                Some(Self::Sha256(h.finalize().into()))
            }
            _ => None,
        }
    }

    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Md5(k) => k,
            Self::Sha256(k) => k,
        }
    }
}

impl fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongTermKey(..)")
    }
}

/// USERHASH (RFC 8489 §14.4): SHA-256 of `username ":" realm`.
#[must_use]
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// Verifies the integrity attribute at offset `at` of `bytes`.
pub(crate) fn verify(
    bytes: &[u8],
    at: usize,
    kind: Integrity,
    key: &[u8],
) -> Result<(), IntegrityError> {
    let value_start = at
        .checked_add(ATTR_HEADER_LEN)
        .ok_or(IntegrityError::Mismatch)?;
    let value_len = bytes
        .get(at.saturating_add(2)..value_start)
        .and_then(|l| <[u8; 2]>::try_from(l).ok())
        .map(|l| usize::from(u16::from_be_bytes(l)))
        .ok_or(IntegrityError::Mismatch)?;
    let got = bytes
        .get(value_start..value_start.saturating_add(value_len))
        .ok_or(IntegrityError::Mismatch)?;
    let mut want = [0u8; 32];
    let ok = match kind {
        Integrity::Sha1 => {
            mac_into::<Hmac<Sha1>>(key, bytes, at, value_len, &mut want)
                .ok_or(IntegrityError::Mismatch)?;
            got.len() == 20 && want.get(..20).is_some_and(|w| bool::from(w.ct_eq(got)))
        }
        Integrity::Sha256 => {
            mac_into::<Hmac<Sha256>>(key, bytes, at, value_len, &mut want)
                .ok_or(IntegrityError::Mismatch)?;
            // RFC 8489 §14.6: the value may be truncated to 16..=32 bytes, in
            // multiples of 4.
            (16..=32).contains(&got.len())
                && got.len().is_multiple_of(4)
                && want
                    .get(..got.len())
                    .is_some_and(|w| bool::from(w.ct_eq(got)))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(IntegrityError::Mismatch)
    }
}

/// Writes into `out` the HMAC over `bytes[..at]`, with the header's length
/// field set as if the message ended after an integrity attribute of
/// `value_len` bytes at `at`.
pub(crate) fn mac_into<M: Mac + KeyInit>(
    key: &[u8],
    bytes: &[u8],
    at: usize,
    value_len: usize,
    out: &mut [u8],
) -> Option<()> {
    let mut m = <M as KeyInit>::new_from_slice(key).ok()?;
    feed_patched(bytes, at, value_len, |chunk| m.update(chunk))?;
    let tag = m.finalize().into_bytes();
    out.get_mut(..tag.len())?.copy_from_slice(&tag);
    Some(())
}

/// FINGERPRINT of a message whose FINGERPRINT attribute starts at `at`
/// (RFC 8489 §14.7): CRC-32 of what precedes it, with the length field
/// covering the attribute, XOR 0x5354554e.
pub(crate) fn fingerprint(bytes: &[u8], at: usize) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    // A failure leaves a CRC that cannot match a well-formed message.
    let _ = feed_patched(bytes, at, 4, |chunk| crc.update(chunk));
    crc.finalize() ^ 0x5354_554E
}

/// Feeds `bytes[..at]` to `sink`, with the header length patched to end
/// after an attribute of `value_len` bytes at `at`.
fn feed_patched(
    bytes: &[u8],
    at: usize,
    value_len: usize,
    mut sink: impl FnMut(&[u8]),
) -> Option<()> {
    let mut header: [u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let body = bytes.get(HEADER_LEN..at)?;
    let len = at
        .checked_add(ATTR_HEADER_LEN)?
        .checked_add(crate::padded(value_len))?
        .checked_sub(HEADER_LEN)?;
    let [l0, l1] = u16::try_from(len).ok()?.to_be_bytes();
    header[2] = l0;
    header[3] = l1;
    sink(&header);
    sink(body);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_algorithm_has_no_key() {
        assert!(LongTermKey::derive(PasswordAlgorithm(7), "u", "r", "p").is_none());
    }
}

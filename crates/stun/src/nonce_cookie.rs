//! The nonce cookie and STUN security feature bits (RFC 8489 §9.2, §18.1).
//!
//! A NONCE that starts with `obMatJos2` is followed by four base64
//! characters that encode 24 feature bits. Because the nonce is covered by
//! the client's MESSAGE-INTEGRITY, a man in the middle cannot strip a
//! feature (such as SHA-256 passwords) without the server noticing.
//!
//! The RFC's prose numbers the bits from the left, while its verified
//! erratum 6290 numbers them from the right, and deployed code follows both.
//! [`encode`] therefore sets each feature at both positions (each position
//! is unassigned under the other reading, so no feature is claimed by
//! mistake), and [`parse`] accepts either.

/// The prefix of a nonce that carries security feature bits.
pub const COOKIE: &str = "obMatJos2";

/// Length of the cookie and the encoded feature bits.
pub const PREFIX_LEN: usize = COOKIE.len() + 4;

/// A set of STUN security features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// The server supports PASSWORD-ALGORITHMS (RFC 8489 §9.2.4).
    pub password_algorithms: bool,
    /// The server supports USERHASH instead of USERNAME (RFC 8489 §9.2.4).
    pub username_anonymity: bool,
}

const PASSWORD_ALGORITHMS: u32 = 0x80_0001;
const USERNAME_ANONYMITY: u32 = 0x40_0002;

impl Features {
    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.password_algorithms {
            bits |= PASSWORD_ALGORITHMS;
        }
        if self.username_anonymity {
            bits |= USERNAME_ANONYMITY;
        }
        bits
    }

    fn from_bits(bits: u32) -> Self {
        Self {
            password_algorithms: bits & PASSWORD_ALGORITHMS != 0,
            username_anonymity: bits & USERNAME_ANONYMITY != 0,
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The cookie followed by the encoded `features`: the start of a nonce.
#[must_use]
pub fn encode(features: Features) -> [u8; PREFIX_LEN] {
    let mut out = [0u8; PREFIX_LEN];
    let (cookie, bits) = out.split_at_mut(COOKIE.len());
    cookie.copy_from_slice(COOKIE.as_bytes());
    let value = features.bits();
    for (i, c) in bits.iter_mut().enumerate() {
        let shift = 18 - 6 * i;
        let sextet = (value >> shift) & 0x3F;
        *c = ALPHABET.get(sextet as usize).copied().unwrap_or(b'A');
    }
    out
}

/// The features a nonce advertises; `None` when it has no cookie.
#[must_use]
pub fn parse(nonce: &str) -> Option<Features> {
    let rest = nonce.strip_prefix(COOKIE)?;
    let chars = rest.as_bytes().get(..4)?;
    let mut value = 0u32;
    for &c in chars {
        let sextet = ALPHABET.iter().position(|&a| a == c)?;
        value = (value << 6) | u32::try_from(sextet).ok()?;
    }
    Some(Features::from_bits(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for pa in [false, true] {
            for ua in [false, true] {
                let f = Features {
                    password_algorithms: pa,
                    username_anonymity: ua,
                };
                let prefix = encode(f);
                let s = std::str::from_utf8(&prefix).unwrap();
                assert!(s.starts_with(COOKIE));
                assert_eq!(parse(s), Some(f));
            }
        }
        assert_eq!(
            std::str::from_utf8(&encode(Features::default())).unwrap(),
            "obMatJos2AAAA"
        );
    }

    #[test]
    fn reads_both_bit_orders() {
        // "gAAA" = 0x800000 (numbered from the left), "AAAB" = 0x000001
        // (numbered from the right): both mean password algorithms.
        assert!(parse("obMatJos2gAAAxyz").unwrap().password_algorithms);
        assert!(parse("obMatJos2AAABxyz").unwrap().password_algorithms);
        assert!(parse("obMatJos2AAACxyz").unwrap().username_anonymity);
        assert_eq!(parse("plainnonce"), None);
        assert_eq!(parse("obMatJos2A"), None);
        assert_eq!(parse("obMatJos2A*AA"), None);
    }
}

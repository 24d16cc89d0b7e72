//! Address attributes, plain (RFC 8489 §14.1) and XOR-masked (§14.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::MAGIC_COOKIE;
use crate::error::{AttrError, EncodeError};
use crate::message::TransactionId;

/// An address family as STUN and TURN number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// From the one-byte wire value (0x01 IPv4, 0x02 IPv6).
    #[must_use]
    pub const fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(Self::V4),
            0x02 => Some(Self::V6),
            _ => None,
        }
    }

    #[must_use]
    pub const fn to_wire(self) -> u8 {
        match self {
            Self::V4 => 0x01,
            Self::V6 => 0x02,
        }
    }

    /// The family of an address.
    #[must_use]
    pub const fn of(addr: &SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(_) => Self::V4,
            SocketAddr::V6(_) => Self::V6,
        }
    }
}

pub(crate) const fn encoded_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Decodes a plain address value.
pub(crate) fn decode(v: &[u8]) -> Result<SocketAddr, AttrError> {
    let (head, ip) = v.split_first_chunk::<4>().ok_or(AttrError::BadLength)?;
    let [_, family, p0, p1] = *head;
    let port = u16::from_be_bytes([p0, p1]);
    let ip = match Family::from_wire(family).ok_or(AttrError::BadFamily)? {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(ip).map_err(|_| AttrError::BadLength)?,
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(ip).map_err(|_| AttrError::BadLength)?,
        )),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes an XOR-masked address value.
pub(crate) fn decode_xor(v: &[u8], tid: &TransactionId) -> Result<SocketAddr, AttrError> {
    let masked = decode(v)?;
    Ok(xor(masked, tid))
}

/// Encodes a plain address value into `out` (exactly `encoded_len` bytes).
pub(crate) fn encode(addr: &SocketAddr, out: &mut [u8]) -> Result<(), EncodeError> {
    let (head, ip) = out
        .split_first_chunk_mut::<4>()
        .ok_or(EncodeError::BufferTooSmall)?;
    let [p0, p1] = addr.port().to_be_bytes();
    *head = [0, Family::of(addr).to_wire(), p0, p1];
    match addr.ip() {
        IpAddr::V4(v4) => copy(ip, &v4.octets()),
        IpAddr::V6(v6) => copy(ip, &v6.octets()),
    }
}

/// Encodes an XOR-masked address value.
pub(crate) fn encode_xor(
    addr: &SocketAddr,
    tid: &TransactionId,
    out: &mut [u8],
) -> Result<(), EncodeError> {
    encode(&xor(*addr, tid), out)
}

/// XOR masking is its own inverse: the port with the cookie's top half, an
/// IPv4 address with the cookie, an IPv6 address with the cookie and the
/// transaction ID.
fn xor(addr: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ MAGIC_COOKIE)),
        IpAddr::V6(v6) => {
            let mut mask = [0u8; 16];
            let (head, tail) = mask.split_at_mut(4);
            head.copy_from_slice(&cookie);
            tail.copy_from_slice(tid.as_bytes());
            let mut octets = v6.octets();
            for (o, m) in octets.iter_mut().zip(mask) {
                *o ^= m;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    SocketAddr::new(ip, port)
}

fn copy(out: &mut [u8], value: &[u8]) -> Result<(), EncodeError> {
    if out.len() != value.len() {
        return Err(EncodeError::BufferTooSmall);
    }
    out.copy_from_slice(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_round_trips_both_families() {
        let tid = TransactionId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        for addr in [
            "192.0.2.1:32853".parse::<SocketAddr>().unwrap(),
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap(),
        ] {
            let mut buf = [0u8; 20];
            let out = &mut buf[..encoded_len(&addr)];
            encode_xor(&addr, &tid, out).unwrap();
            assert_eq!(decode_xor(out, &tid).unwrap(), addr);
            assert_ne!(decode(out).unwrap(), addr, "the wire form is masked");
        }
    }

    #[test]
    fn rejects_bad_family_and_length() {
        assert_eq!(decode(&[0, 3, 0, 1, 1, 2, 3, 4]), Err(AttrError::BadFamily));
        assert_eq!(decode(&[0, 1, 0, 1, 1, 2, 3]), Err(AttrError::BadLength));
        assert_eq!(decode(&[0, 2, 0, 1, 1, 2, 3, 4]), Err(AttrError::BadLength));
        assert_eq!(decode(&[0, 1]), Err(AttrError::BadLength));
    }
}

//! The TURN client side (RFC 8656) as far as the generator needs it: the
//! requests it sends and what their answers mean. No I/O.

use std::net::SocketAddr;

use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{
    Attr, AttrType, Class, EncodeError, Message, MessageType, MessageWriter, Method,
    PasswordAlgorithm, TransactionId,
};

/// The channel every allocation binds to its peer (channels are per
/// allocation, so all can use the first).
pub(crate) const CHANNEL: u16 = 0x4000;

/// REQUESTED-TRANSPORT for UDP relaying.
const UDP: u8 = 17;

/// A request the generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Allocate,
    Permission(SocketAddr),
    Bind(SocketAddr),
    /// Refresh with this LIFETIME; `None` leaves it to the server.
    Refresh(Option<u32>),
}

impl Request {
    #[must_use]
    pub(crate) const fn method(&self) -> Method {
        match self {
            Self::Allocate => Method::ALLOCATE,
            Self::Permission(_) => Method::CREATE_PERMISSION,
            Self::Bind(_) => Method::CHANNEL_BIND,
            Self::Refresh(_) => Method::REFRESH,
        }
    }
}

/// What signs a request: the long-term credentials and the server's
/// realm and nonce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Auth<'a> {
    pub(crate) username: &'a str,
    pub(crate) realm: &'a str,
    pub(crate) nonce: &'a str,
    pub(crate) key: &'a LongTermKey,
}

/// The long-term key (MD5, RFC 8489 §9.2.2) for a realm.
#[must_use]
pub(crate) fn key(username: &str, realm: &str, password: &str) -> Option<LongTermKey> {
    LongTermKey::derive(PasswordAlgorithm::MD5, username, realm, password)
}

/// A transaction ID that names its owner: the generator thread, the
/// allocation's slot in it, and a counter; the rest is the run's tag.
#[must_use]
pub(crate) fn transaction_id(thread: u16, slot: u32, counter: u32, tag: u16) -> TransactionId {
    let [t0, t1] = thread.to_be_bytes();
    let [s0, s1, s2, s3] = slot.to_be_bytes();
    let [c0, c1, c2, c3] = counter.to_be_bytes();
    let [g0, g1] = tag.to_be_bytes();
    TransactionId([t0, t1, s0, s1, s2, s3, c0, c1, c2, c3, g0, g1])
}

/// The owner of a transaction ID made by [`transaction_id`]: thread and
/// slot, if the tag matches.
#[must_use]
pub(crate) fn owner(tid: &TransactionId, tag: u16) -> Option<(u16, u32)> {
    let [t0, t1, s0, s1, s2, s3, _, _, _, _, g0, g1] = tid.0;
    (u16::from_be_bytes([g0, g1]) == tag).then(|| {
        (
            u16::from_be_bytes([t0, t1]),
            u32::from_be_bytes([s0, s1, s2, s3]),
        )
    })
}

/// Writes `request` into `buf`, signed when `auth` is given, with a
/// FINGERPRINT; returns its length.
pub(crate) fn encode(
    buf: &mut [u8],
    tid: TransactionId,
    request: Request,
    auth: Option<&Auth<'_>>,
) -> Result<usize, EncodeError> {
    let typ = MessageType::new(request.method(), Class::Request);
    let mut w = MessageWriter::new(buf, typ, tid)?;
    match request {
        Request::Allocate => w.add(&Attr::RequestedTransport(UDP))?,
        Request::Permission(peer) => w.add(&Attr::XorPeerAddress(peer))?,
        Request::Bind(peer) => {
            w.add(&Attr::ChannelNumber(CHANNEL))?;
            w.add(&Attr::XorPeerAddress(peer))?;
        }
        Request::Refresh(Some(lifetime)) => w.add(&Attr::Lifetime(lifetime))?,
        Request::Refresh(None) => {}
    }
    if let Some(a) = auth {
        w.add(&Attr::Username(a.username))?;
        w.add(&Attr::Realm(a.realm))?;
        w.add(&Attr::Nonce(a.nonce))?;
        w.message_integrity(a.key.as_bytes())?;
    }
    w.fingerprint()?;
    Ok(w.finish())
}

/// What an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer<'a> {
    /// Success; for Allocate, the relayed address and lifetime.
    Success {
        relayed: Option<SocketAddr>,
        lifetime: Option<u32>,
    },
    /// 401 or 438 with a NONCE (and for 401 a REALM): try again with them.
    Challenge {
        code: u16,
        realm: Option<&'a str>,
        nonce: &'a str,
    },
    /// Any other error (or a 401/438 without a nonce).
    Error { code: u16, reason: &'a str },
    /// Not an answer (a request or indication).
    Other,
}

/// Reads an answer.
#[must_use]
pub(crate) fn answer<'a>(msg: &Message<'a>) -> Answer<'a> {
    match msg.class() {
        Class::Success => {
            let relayed = match msg.get(AttrType::XOR_RELAYED_ADDRESS) {
                Some(Ok(Attr::XorRelayedAddress(a))) => Some(a),
                _ => None,
            };
            let lifetime = match msg.get(AttrType::LIFETIME) {
                Some(Ok(Attr::Lifetime(l))) => Some(l),
                _ => None,
            };
            Answer::Success { relayed, lifetime }
        }
        Class::Error => {
            let (code, reason) = match msg.get(AttrType::ERROR_CODE) {
                Some(Ok(Attr::ErrorCode { code, reason })) => (code.0, reason),
                _ => (0, ""),
            };
            let nonce = match msg.get(AttrType::NONCE) {
                Some(Ok(Attr::Nonce(n))) => Some(n),
                _ => None,
            };
            let realm = match msg.get(AttrType::REALM) {
                Some(Ok(Attr::Realm(r))) => Some(r),
                _ => None,
            };
            match (code, nonce) {
                (401 | 438, Some(nonce)) => Answer::Challenge { code, realm, nonce },
                _ => Answer::Error { code, reason },
            }
        }
        Class::Request | Class::Indication => Answer::Other,
    }
}

/// A one-line explanation of an error answer that stops the run, or
/// `None` for one that only fails the allocation.
#[must_use]
pub(crate) fn fatal(method: Method, code: u16, reason: &str) -> Option<String> {
    let what = method.name();
    match code {
        401 => Some(format!(
            "authentication failed: the server refused the credentials ({what}: 401 {reason})"
        )),
        441 => Some(format!(
            "authentication failed: wrong credentials ({what}: 441 {reason})"
        )),
        486 => Some(format!(
            "allocation quota reached ({what}: 486 {reason}): the server allows fewer allocations \
             per user than --allocations (turnpike: limits.allocations_per_user)"
        )),
        508 => Some(format!(
            "the server is out of capacity ({what}: 508 {reason}): fewer --allocations, or raise \
             the server's limits"
        )),
        403 => Some(format!(
            "the server refuses to relay to the echo peers ({what}: 403 {reason}): let it relay \
             to --peer-ip (turnpike: --allow-peer)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_back_signed() {
        let key = key("alice", "example.org", "secret").unwrap();
        let auth = Auth {
            username: "alice",
            realm: "example.org",
            nonce: "n0nce",
            key: &key,
        };
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for req in [
            Request::Allocate,
            Request::Permission(peer),
            Request::Bind(peer),
            Request::Refresh(Some(0)),
            Request::Refresh(None),
        ] {
            let mut buf = [0u8; 512];
            let tid = transaction_id(3, 77, 9, 0xBEEF);
            let len = encode(&mut buf, tid, req, Some(&auth)).unwrap();
            let msg = Message::parse(&buf[..len]).unwrap();
            assert_eq!(msg.method(), req.method());
            assert_eq!(msg.class(), Class::Request);
            assert!(msg.verify_integrity(key.as_bytes()).is_ok());
            assert_eq!(owner(&msg.transaction_id(), 0xBEEF), Some((3, 77)));
            assert_eq!(owner(&msg.transaction_id(), 0xBEEE), None);
        }
    }

    #[test]
    fn answers_are_read() {
        let tid = transaction_id(0, 0, 0, 0);
        let mut buf = [0u8; 512];
        let typ = MessageType::new(Method::ALLOCATE, Class::Error);
        let mut w = MessageWriter::new(&mut buf, typ, tid).unwrap();
        w.add(&Attr::ErrorCode {
            code: turnpike_stun::ErrorCode(401),
            reason: "Unauthenticated",
        })
        .unwrap();
        w.add(&Attr::Realm("r")).unwrap();
        w.add(&Attr::Nonce("abc")).unwrap();
        let len = w.finish();
        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(
            answer(&msg),
            Answer::Challenge {
                code: 401,
                realm: Some("r"),
                nonce: "abc"
            }
        );

        let typ = MessageType::new(Method::ALLOCATE, Class::Success);
        let mut w = MessageWriter::new(&mut buf, typ, tid).unwrap();
        let relayed: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        w.add(&Attr::XorRelayedAddress(relayed)).unwrap();
        w.add(&Attr::Lifetime(600)).unwrap();
        let len = w.finish();
        let msg = Message::parse(&buf[..len]).unwrap();
        assert_eq!(
            answer(&msg),
            Answer::Success {
                relayed: Some(relayed),
                lifetime: Some(600)
            }
        );
        assert!(fatal(Method::ALLOCATE, 486, "").is_some());
        assert!(fatal(Method::ALLOCATE, 437, "").is_none());
    }
}

//! Stateless nonces (RFC 8489 §9.2.4, RFC 8656 §7.2).
//!
//! A nonce is the nonce cookie with the server's security features, then
//! the time it was issued and a MAC over that time, the features and the
//! client's 5-tuple (its IP address only, on streams), under a key only the
//! server knows. The server
//! keeps nothing per nonce: a flood of spoofed Allocates costs it one HMAC
//! each and no memory, and a nonce is useless from any other address or
//! after its lifetime.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use turnpike_stun::nonce_cookie::{self, Features};

use crate::{FiveTuple, Transport};

const MAC_LEN: usize = 12;
const RAW_LEN: usize = 4 + MAC_LEN;
const ENCODED_LEN: usize = 22; // base64 of 16 bytes, unpadded

/// Length of every nonce this server issues.
pub const NONCE_LEN: usize = nonce_cookie::PREFIX_LEN + ENCODED_LEN;

/// The features every nonce advertises: SHA-256 passwords and USERHASH.
pub const FEATURES: Features = Features {
    password_algorithms: true,
    username_anonymity: true,
};

/// Issues and checks nonces. Shared by every shard.
pub struct Nonces {
    mac: Hmac<Sha256>,
    epoch: Instant,
    lifetime: Duration,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// A nonce, as ASCII text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Built from the cookie and base64 alphabets only.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Nonces {
    /// Nonces keyed with `key` (random, from the runtime), counting time
    /// from `epoch`, valid for `lifetime`.
    #[must_use]
    pub fn new(key: &[u8; 32], epoch: Instant, lifetime: Duration) -> Self {
        // HMAC takes keys of any length: the fallback is never used.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        Self {
            mac,
            epoch,
            lifetime,
        }
    }

    /// A fresh nonce for the client of `tuple`.
    #[must_use]
    pub fn issue(&self, now: Instant, tuple: &FiveTuple) -> Nonce {
        let issued = self.seconds(now);
        let mut raw = [0u8; RAW_LEN];
        let (stamp, mac) = raw.split_at_mut(4);
        stamp.copy_from_slice(&issued.to_be_bytes());
        mac.copy_from_slice(&self.tag(issued, tuple));

        let mut out = [0u8; NONCE_LEN];
        let (prefix, encoded) = out.split_at_mut(nonce_cookie::PREFIX_LEN);
        prefix.copy_from_slice(&nonce_cookie::encode(FEATURES));
        // The output is exactly ENCODED_LEN bytes; a failure would leave a
        // nonce that never validates, not a crash.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, encoded);
        Nonce(out)
    }

    /// Whether `nonce` was issued by this server to this client, within its
    /// lifetime.
    #[must_use]
    pub fn is_valid(&self, nonce: &str, now: Instant, tuple: &FiveTuple) -> bool {
        let Some(encoded) = nonce
            .strip_prefix(nonce_cookie::COOKIE)
            .and_then(|rest| rest.get(4..))
            .filter(|e| e.len() == ENCODED_LEN)
        else {
            return false;
        };
        if nonce_cookie::parse(nonce) != Some(FEATURES) {
            return false;
        }
        let mut raw = [0u8; RAW_LEN + 2];
        if URL_SAFE_NO_PAD.decode_slice(encoded, &mut raw) != Ok(RAW_LEN) {
            return false;
        }
        let Some((stamp, rest)) = raw.split_first_chunk::<4>() else {
            return false;
        };
        let issued = u32::from_be_bytes(*stamp);
        let tag = self.tag(issued, tuple);
        let authentic = rest
            .get(..MAC_LEN)
            .is_some_and(|m| bool::from(m.ct_eq(&tag)));
        let age = self.seconds(now).checked_sub(issued);
        authentic && age.is_some_and(|age| u64::from(age) < self.lifetime.as_secs().max(1))
    }

    fn seconds(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    fn tag(&self, issued: u32, tuple: &FiveTuple) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&issued.to_be_bytes());
        mac.update(&[match tuple.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        }]);
        // On a stream, a client's connections share its nonces: RFC 6062
        // binds peer connections from new connections (a new source port)
        // with the credentials of the control connection, and a TCP source
        // address cannot be spoofed anyway. A UDP nonce holds for one source
        // port only.
        match tuple.transport {
            Transport::Udp => feed_addr(&mut mac, tuple.client),
            Transport::Tcp | Transport::Tls => feed_ip(&mut mac, tuple.client.ip()),
        }
        feed_addr(&mut mac, tuple.server);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        if let Some(head) = full.get(..MAC_LEN) {
            tag.copy_from_slice(head);
        }
        tag
    }
}

fn feed_addr(mac: &mut Hmac<Sha256>, addr: SocketAddr) {
    feed_ip(mac, addr.ip());
    mac.update(&addr.port().to_be_bytes());
}

fn feed_ip(mac: &mut Hmac<Sha256>, ip: IpAddr) {
    mac.update(&match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(client: &str) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: client.parse().unwrap(),
            server: "192.0.2.1:3478".parse().unwrap(),
        }
    }

    #[test]
    fn valid_for_its_client_and_lifetime_only() {
        let t0 = Instant::now();
        let nonces = Nonces::new(&[7; 32], t0, Duration::from_secs(600));
        let a = tuple("198.51.100.1:5000");
        let nonce = nonces.issue(t0 + Duration::from_secs(10), &a);
        let s = nonce.as_str();
        assert_eq!(s.len(), NONCE_LEN);
        assert!(s.starts_with("obMatJos2"));
        assert!(nonces.is_valid(s, t0 + Duration::from_secs(10), &a));
        assert!(nonces.is_valid(s, t0 + Duration::from_secs(609), &a));
        assert!(
            !nonces.is_valid(s, t0 + Duration::from_secs(610), &a),
            "expired"
        );
        assert!(
            !nonces.is_valid(s, t0 + Duration::from_secs(20), &tuple("198.51.100.1:5001")),
            "other port"
        );
        assert!(
            !nonces.is_valid(s, t0 + Duration::from_secs(20), &tuple("198.51.100.2:5000")),
            "other host"
        );
        let other_key = Nonces::new(&[8; 32], t0, Duration::from_secs(600));
        assert!(
            !other_key.is_valid(s, t0 + Duration::from_secs(20), &a),
            "other key"
        );
    }

    #[test]
    fn on_streams_a_clients_connections_share_nonces() {
        let t0 = Instant::now();
        let nonces = Nonces::new(&[7; 32], t0, Duration::from_secs(600));
        let on = |transport, client: &str| FiveTuple {
            transport,
            ..tuple(client)
        };
        let control = on(Transport::Tcp, "198.51.100.1:5000");
        let nonce = nonces.issue(t0, &control);
        let s = nonce.as_str();
        assert!(
            nonces.is_valid(s, t0, &on(Transport::Tcp, "198.51.100.1:5001")),
            "another connection"
        );
        assert!(
            !nonces.is_valid(s, t0, &on(Transport::Tcp, "198.51.100.2:5000")),
            "another host"
        );
        assert!(
            !nonces.is_valid(s, t0, &on(Transport::Tls, "198.51.100.1:5000")),
            "another transport"
        );
        assert!(
            !nonces.is_valid(s, t0, &on(Transport::Udp, "198.51.100.1:5000")),
            "UDP"
        );
        let udp = nonces.issue(t0, &on(Transport::Udp, "198.51.100.1:5000"));
        assert!(
            !nonces.is_valid(udp.as_str(), t0, &on(Transport::Udp, "198.51.100.1:5001")),
            "UDP binds the port"
        );
    }

    #[test]
    fn garbage_is_not_valid() {
        let t0 = Instant::now();
        let nonces = Nonces::new(&[7; 32], t0, Duration::from_secs(600));
        let a = tuple("198.51.100.1:5000");
        for junk in [
            "",
            "obMatJos2",
            "obMatJos2AAAA",
            "x".repeat(35).as_str(),
            "obMatJos2gAAD%%%%%%%%%%%%%%%%%%%%%%",
        ] {
            assert!(!nonces.is_valid(junk, t0, &a), "{junk:?}");
        }
        // A nonce from the future (clock confusion) is not accepted.
        let later = nonces.issue(t0 + Duration::from_secs(100), &a);
        assert!(!nonces.is_valid(later.as_str(), t0 + Duration::from_secs(50), &a));
    }
}

//! Authentication of requests (RFC 8489 §9.2.4), and the answers to
//! requests that did not authenticate.

use std::sync::Arc;
use std::time::Instant;

use turnpike_stun::attr::{AlgorithmList, TypeList};
use turnpike_stun::nonce_cookie;
use turnpike_stun::{
    Attr, AttrType, EncodeError, ErrorCode, Message, MessageWriter, PasswordAlgorithm,
};

use super::{Answer, Relays, Server};
use crate::FiveTuple;
use crate::auth::{AuthError, Verified};
use crate::nonce::Nonce;

/// The PASSWORD-ALGORITHMS this server offers, in order of preference:
/// SHA-256, then MD5 (RFC 8489 §14.12).
const OFFERED_ALGORITHMS: AlgorithmList<'static> =
    AlgorithmList::from_static(&[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);

/// What a client needs to authenticate again: the realm, a fresh nonce and
/// the password algorithms on offer.
fn add_challenge(w: &mut MessageWriter<'_>, realm: &str, nonce: &Nonce) -> Result<(), EncodeError> {
    w.add(&Attr::Realm(realm))?;
    w.add(&Attr::Nonce(nonce.as_str()))?;
    w.add(&Attr::PasswordAlgorithms(OFFERED_ALGORITHMS))
}

impl<R: Relays> Server<R> {
    /// RFC 8489 §9.2.4, in its order.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<Verified, Answer> {
        if !msg.has_integrity() {
            self.stats.auth_failures.add("challenge");
            return Err(self.challenge(now, tuple, msg, out));
        }
        let username = match (msg.get(AttrType::USERNAME), msg.get(AttrType::USERHASH)) {
            (Some(Ok(Attr::Username(u))), _) => Some(u),
            (None, Some(Ok(Attr::Userhash(hash)))) => {
                match self.shared.credentials.user_for_hash(hash) {
                    Ok(u) => Some(u),
                    Err(e) => return Err(self.reject(now, tuple, msg, out, e)),
                }
            }
            _ => None,
        };
        let nonce = match msg.get(AttrType::NONCE) {
            Some(Ok(Attr::Nonce(n))) => Some(n),
            _ => None,
        };
        let has_realm = matches!(msg.get(AttrType::REALM), Some(Ok(Attr::Realm(_))));
        let (Some(username), Some(nonce), true) = (username, nonce, has_realm) else {
            self.stats.auth_failures.add("bad_request");
            return Err(self.unauthenticated_error(now, tuple, msg, out, ErrorCode::BAD_REQUEST));
        };
        let algorithm = match self.password_algorithm(msg, nonce) {
            Ok(alg) => alg,
            Err(()) => {
                self.stats.auth_failures.add("bad_request");
                return Err(self.unauthenticated_error(
                    now,
                    tuple,
                    msg,
                    out,
                    ErrorCode::BAD_REQUEST,
                ));
            }
        };
        let verified =
            match self
                .shared
                .credentials
                .verify(msg, username, algorithm, self.unix_now(now))
            {
                Ok(v) => v,
                Err(e) => return Err(self.reject(now, tuple, msg, out, e)),
            };
        if !self.shared.nonces.is_valid(nonce, now, tuple) {
            self.stats.auth_failures.add("stale_nonce");
            // RFC 8489 §9.2.4 allows signing a 438 with the key just
            // verified, which spares the client a blind retry.
            let nonce = self.shared.nonces.issue(now, tuple);
            let shared = Arc::clone(&self.shared);
            return Err(
                self.error(msg, out, ErrorCode::STALE_NONCE, Some(&verified), |w| {
                    add_challenge(w, &shared.config.realm, &nonce)
                }),
            );
        }
        Ok(verified)
    }

    /// The password algorithm a request uses (RFC 8489 §9.2.4, the checks
    /// for a nonce whose cookie has the "Password algorithms" bit).
    pub(super) fn password_algorithm(
        &self,
        msg: &Message<'_>,
        nonce: &str,
    ) -> Result<PasswordAlgorithm, ()> {
        let algorithms = msg.get(AttrType::PASSWORD_ALGORITHMS);
        let algorithm = msg.get(AttrType::PASSWORD_ALGORITHM);
        let cookie = nonce_cookie::parse(nonce).unwrap_or_default();
        if !cookie.password_algorithms || (algorithms.is_none() && algorithm.is_none()) {
            return Ok(PasswordAlgorithm::MD5);
        }
        match (algorithms, algorithm) {
            (Some(Ok(Attr::PasswordAlgorithms(list))), Some(Ok(Attr::PasswordAlgorithm(alg))))
                if list == OFFERED_ALGORITHMS && list.iter().any(|a| a == alg) =>
            {
                Ok(alg)
            }
            _ => Err(()),
        }
    }

    pub(super) fn reject(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        e: AuthError,
    ) -> Answer {
        self.stats.auth_failures.add(e.as_str());
        self.challenge(now, tuple, msg, out)
    }

    /// An unsigned 401 with what the client needs to authenticate.
    pub(super) fn challenge(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Answer {
        if !self.limiter.allow(tuple.client.ip(), now) {
            self.stats.rate_limited += 1;
            return None;
        }
        let nonce = self.shared.nonces.issue(now, tuple);
        let shared = Arc::clone(&self.shared);
        self.error(msg, out, ErrorCode::UNAUTHENTICATED, None, |w| {
            add_challenge(w, &shared.config.realm, &nonce)
        })
    }

    pub(super) fn unauthenticated_error(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        code: ErrorCode,
    ) -> Answer {
        if !self.limiter.allow(tuple.client.ip(), now) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.error(msg, out, code, None, |_| Ok(()))
    }

    pub(super) fn unknown_attributes(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        unknown: &[u16],
        auth: Option<&Verified>,
    ) -> Answer {
        let mut wire = [0u8; 32];
        let mut len = 0;
        for (chunk, typ) in wire.chunks_exact_mut(2).zip(unknown) {
            chunk.copy_from_slice(&typ.to_be_bytes());
            len += 2;
        }
        let list = TypeList::new(wire.get(..len).unwrap_or(&[])).ok()?;
        self.error(msg, out, ErrorCode::UNKNOWN_ATTRIBUTE, auth, |w| {
            w.add(&Attr::UnknownAttributes(list))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offered_algorithms_are_well_formed() {
        let list = AlgorithmList::new(OFFERED_ALGORITHMS.as_bytes()).unwrap();
        let algorithms: Vec<_> = list.iter().collect();
        assert_eq!(
            algorithms,
            vec![PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5]
        );
    }
}

//! Long-term credentials (RFC 8489 §9.2): static users from the
//! configuration, and the ephemeral credentials of the TURN REST API
//! (draft-uberti-behave-turn-rest §2.2).
//!
//! A REST user name is `<expiry unix time>:<user>`; its password is
//! `base64(HMAC-SHA1(secret, username))`, so any service that holds the
//! secret can mint credentials without talking to the server. Several
//! secrets may be valid at once, for rotation; the expiry is checked on
//! every request, not only when the allocation is made.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use turnpike_stun::integrity::{LongTermKey, userhash};
use turnpike_stun::{Integrity, Message, PasswordAlgorithm};

/// The password of a REST user name under `secret`.
#[must_use]
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length; the error arm cannot happen.
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A REST user name valid until `expires` (Unix seconds).
#[must_use]
pub fn rest_username(expires: u64, user: &str) -> String {
    format!("{expires}:{user}")
}

/// The expiry of a REST user name, if it has the REST form.
#[must_use]
pub fn rest_expiry(username: &str) -> Option<u64> {
    let stamp = username
        .split_once(':')
        .map_or(username, |(stamp, _)| stamp);
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// Why credentials were refused. Every variant is answered with 401; the
/// distinction is for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No such static user, and not a REST user name (or no secrets).
    UnknownUser,
    /// A REST user name whose expiry has passed.
    Expired,
    /// The key did not verify the message's integrity.
    BadIntegrity,
    /// USERHASH names no known user (REST users cannot use USERHASH: the
    /// server cannot recover their name from its hash).
    UnknownUserhash,
}

impl AuthError {
    /// A short label for metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::Expired => "expired",
            Self::BadIntegrity => "bad_integrity",
            Self::UnknownUserhash => "unknown_userhash",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request proved to be, and the key to sign the answer with.
#[derive(Debug, Clone)]
pub struct Verified {
    pub username: Box<str>,
    pub key: LongTermKey,
    pub integrity: Integrity,
    /// Check credentials (the check key verified them): what they
    /// allocate may relay only to the probe responder (`crate::check`).
    pub restricted: bool,
}

#[derive(Clone)]
struct StaticUser {
    md5: LongTermKey,
    sha256: LongTermKey,
}

/// The users and secrets the server accepts, with keys derived once.
#[derive(Clone)]
pub struct Credentials {
    realm: String,
    users: HashMap<Box<str>, StaticUser>,
    by_userhash: HashMap<[u8; 32], Box<str>>,
    secrets: Vec<Box<[u8]>>,
    /// The key of check credentials (`crate::check`), when the server
    /// hands them out.
    check_key: Option<Box<[u8]>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .field("check_credentials", &self.check_key.is_some())
            .finish()
    }
}

impl Credentials {
    /// Static `(user, password)` pairs and REST secrets for `realm`.
    pub fn new<'a>(
        realm: &str,
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
        secrets: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut by_name = HashMap::new();
        let mut by_userhash = HashMap::new();
        for (user, password) in users {
            let derive = |alg| LongTermKey::derive(alg, user, realm, password);
            if let (Some(md5), Some(sha256)) = (
                derive(PasswordAlgorithm::MD5),
                derive(PasswordAlgorithm::SHA256),
            ) {
                by_name.insert(Box::from(user), StaticUser { md5, sha256 });
                by_userhash.insert(userhash(user, realm), Box::from(user));
            }
        }
        Self {
            realm: realm.to_owned(),
            users: by_name,
            by_userhash,
            secrets: secrets.into_iter().map(Box::from).collect(),
            check_key: None,
        }
    }

    /// Accepts check credentials signed with `key` (random, kept by the
    /// server alone): they authenticate as REST users whose allocations
    /// are restricted (`crate::check`).
    #[must_use]
    pub fn with_check_key(mut self, key: &[u8]) -> Self {
        self.check_key = Some(Box::from(key));
        self
    }

    #[must_use]
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Whether any user or secret is configured (check credentials do
    /// not count: they cannot be used for anything but a check).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.secrets.is_empty()
    }

    /// The user name a USERHASH stands for.
    pub fn user_for_hash(&self, hash: &[u8; 32]) -> Result<&str, AuthError> {
        self.by_userhash
            .get(hash)
            .map(|u| &**u)
            .ok_or(AuthError::UnknownUserhash)
    }

    /// Verifies `msg`, signed by `username` with `algorithm`, at Unix time
    /// `unix_now`. Static users come first; otherwise a REST user name is
    /// tried against the check key (if it has the check shape) and then
    /// each secret.
    pub fn verify(
        &self,
        msg: &Message<'_>,
        username: &str,
        algorithm: PasswordAlgorithm,
        unix_now: u64,
    ) -> Result<Verified, AuthError> {
        let check = |key: LongTermKey| {
            msg.verify_integrity(key.as_bytes())
                .ok()
                .map(|integrity| Verified {
                    username: Box::from(username),
                    key,
                    integrity,
                    restricted: false,
                })
        };
        if let Some(user) = self.users.get(username) {
            let key = if algorithm == PasswordAlgorithm::SHA256 {
                user.sha256
            } else {
                user.md5
            };
            return check(key).ok_or(AuthError::BadIntegrity);
        }
        let check_key = self
            .check_key
            .as_deref()
            .filter(|_| crate::check::is_check_username(username));
        if self.secrets.is_empty() && check_key.is_none() {
            return Err(AuthError::UnknownUser);
        }
        let expires = rest_expiry(username).ok_or(AuthError::UnknownUser)?;
        if expires <= unix_now {
            return Err(AuthError::Expired);
        }
        let derive = |secret: &[u8]| {
            let password = rest_password(secret, username);
            LongTermKey::derive(algorithm, username, &self.realm, &password)
        };
        if let Some(verified) = check_key.and_then(derive).and_then(check) {
            return Ok(Verified {
                restricted: true,
                ..verified
            });
        }
        self.secrets
            .iter()
            .filter_map(|secret| derive(secret))
            .find_map(check)
            .ok_or(AuthError::BadIntegrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_the_published_construction() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed
        // independently with Python's hmac and base64 modules.
        assert_eq!(
            rest_password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn rest_expiry_parses_only_the_rest_form() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry(":alice"), None);
        assert_eq!(rest_expiry("-1:alice"), None);
        assert_eq!(rest_expiry("99999999999999999999999:x"), None);
    }
}

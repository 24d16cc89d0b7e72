//! State every shard sees: configuration, credentials, the nonce key,
//! quotas and port reservations. Only allocation setup and teardown touch
//! the locks here; relaying never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use turnpike_stun::ErrorCode;

use crate::auth::Credentials;
use crate::check::CheckAccess;
use crate::config::Config;
use crate::connections::{ConnectionId, Connections};
use crate::nonce::Nonces;

/// What all shards share. `T` is the runtime's reserved-port handle
/// (RFC 8656 §7.2, EVEN-PORT with R=1), which another shard may claim.
pub struct Shared<T = ()> {
    pub(crate) config: Config,
    pub(crate) credentials: Credentials,
    pub(crate) nonces: Nonces,
    pub(crate) epoch: Instant,
    key: [u8; 32],
    quota: Mutex<Quota>,
    reservations: Mutex<HashMap<[u8; 8], Reservation<T>>>,
    tokens_issued: AtomicU64,
    pub(crate) connections: Connections,
    draining: AtomicBool,
    /// Where restricted (check) allocations may relay, and their quota.
    pub(crate) check: Option<CheckAccess>,
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Quota {
    total: usize,
    /// Restricted (check) allocations, counted in `total` as well.
    check: usize,
    per_user: HashMap<Box<str>, usize>,
}

struct Reservation<T> {
    handle: T,
    addr: SocketAddr,
    expires: Instant,
}

impl<T> Shared<T> {
    /// `key` is 32 random bytes from the runtime: it keys nonces and
    /// reservation tokens. `epoch` is any instant before the first call.
    pub fn new(config: Config, credentials: Credentials, key: [u8; 32], epoch: Instant) -> Self {
        Self {
            nonces: Nonces::new(&key, epoch, config.lifetimes.nonce),
            config,
            credentials,
            epoch,
            key,
            quota: Mutex::new(Quota::default()),
            reservations: Mutex::new(HashMap::new()),
            tokens_issued: AtomicU64::new(0),
            connections: Connections::default(),
            draining: AtomicBool::new(false),
            check: None,
        }
    }

    /// Lets check credentials allocate, restricted to `access`; without
    /// it, their allocations are refused (403) even if the credentials
    /// verify.
    #[must_use]
    pub fn with_check_access(mut self, access: CheckAccess) -> Self {
        self.check = Some(access);
        self
    }

    /// Where check allocations may relay, if they are on.
    #[must_use]
    pub fn check_access(&self) -> Option<&CheckAccess> {
        self.check.as_ref()
    }

    /// Restricted (check) allocations alive on all shards.
    #[must_use]
    pub fn check_allocations(&self) -> usize {
        self.quota.lock().map(|q| q.check).unwrap_or(0)
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    #[must_use]
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// An RFC 6062 peer connection ended (either side closed, or it was
    /// never bound): its ID is free.
    pub fn connection_ended(&self, id: ConnectionId) {
        self.connections.remove(id);
    }

    /// RFC 6062 peer connections known, bound or waiting.
    #[must_use]
    pub fn tcp_connections(&self) -> usize {
        self.connections.len()
    }

    /// Stops taking new allocations, on every shard: an Allocate that
    /// would create one gets 300 (Try Alternate) or 508. Allocations that
    /// exist go on as before. There is no way back: a draining server
    /// stops.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Allocations alive on all shards.
    #[must_use]
    pub fn allocations(&self) -> usize {
        self.quota.lock().map(|q| q.total).unwrap_or(0)
    }

    /// Counts one more allocation for `user`, or says which limit stops it.
    /// A `restricted` (check) allocation counts against the check quota
    /// and its credential's, never against an operator user's.
    pub(crate) fn acquire(&self, user: &str, restricted: bool) -> Result<(), ErrorCode> {
        let limits = &self.config.limits;
        let mut q = self.quota.lock().map_err(|_| ErrorCode::SERVER_ERROR)?;
        if q.total >= limits.allocations {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let per_user = if restricted {
            let access = self.check.as_ref().ok_or(ErrorCode::FORBIDDEN)?;
            if q.check >= access.allocations {
                return Err(ErrorCode::ALLOCATION_QUOTA_REACHED);
            }
            access.allocations_per_credential
        } else {
            limits.allocations_per_user
        };
        let held = q.per_user.get(user).copied().unwrap_or(0);
        if held >= per_user {
            return Err(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        q.per_user.insert(Box::from(user), held + 1);
        q.total += 1;
        if restricted {
            q.check += 1;
        }
        Ok(())
    }

    /// Undoes one [`Shared::acquire`].
    pub(crate) fn release(&self, user: &str, restricted: bool) {
        let Ok(mut q) = self.quota.lock() else { return };
        q.total = q.total.saturating_sub(1);
        if restricted {
            q.check = q.check.saturating_sub(1);
        }
        if let Some(held) = q.per_user.get_mut(user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                q.per_user.remove(user);
            }
        }
    }

    /// Holds `handle` (a reserved port at `addr`) until `expires`; returns
    /// the token that claims it. Tokens are a keyed PRF of a counter:
    /// unique, and unguessable without the key.
    pub(crate) fn reserve(&self, handle: T, addr: SocketAddr, expires: Instant) -> Option<[u8; 8]> {
        let n = self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).ok()?;
        mac.update(b"reservation-token");
        mac.update(&n.to_be_bytes());
        let token: [u8; 8] = mac.finalize().into_bytes().get(..8)?.try_into().ok()?;
        self.reservations.lock().ok()?.insert(
            token,
            Reservation {
                handle,
                addr,
                expires,
            },
        );
        Some(token)
    }

    /// Claims a reservation, if it exists and has not expired.
    pub(crate) fn claim(&self, token: &[u8; 8], now: Instant) -> Option<(T, SocketAddr)> {
        let r = self.reservations.lock().ok()?.remove(token)?;
        (r.expires > now).then_some((r.handle, r.addr))
    }

    /// Drops reservations that expired, closing their ports.
    pub(crate) fn expire_reservations(&self, now: Instant) {
        let expired: Vec<Reservation<T>> = match self.reservations.lock() {
            Ok(mut map) if !map.is_empty() => {
                let tokens: Vec<[u8; 8]> = map
                    .iter()
                    .filter(|(_, r)| r.expires <= now)
                    .map(|(t, _)| *t)
                    .collect();
                tokens.iter().filter_map(|t| map.remove(t)).collect()
            }
            _ => return,
        };
        // Handles are dropped here, outside the lock.
        drop(expired);
    }
}

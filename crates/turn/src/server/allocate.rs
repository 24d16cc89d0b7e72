//! Allocate and Refresh (RFC 8656 §7).

use std::time::{Duration, Instant};

use turnpike_stun::attr::{TRANSPORT_TCP, TRANSPORT_UDP};
use turnpike_stun::{Attr, AttrType, ErrorCode, Family, Message};

use super::{
    BindError, BindRequest, Bound, EndReason, Event, Relays, Server, Slot, live, live_mut,
};
use crate::allocation::{Allocation, Relay, slot};
use crate::auth::Verified;
use crate::{AllocationId, FiveTuple, Relayed};

/// What an Allocate asks for, once its attributes are checked.
struct Wanted {
    /// REQUESTED-ADDRESS-FAMILY, IPv4 by default.
    family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY: an IPv6 relay as well (a dual allocation).
    dual: bool,
    even_port: Option<bool>,
    token: Option<[u8; 8]>,
    dont_fragment: bool,
    /// REQUESTED-TRANSPORT TCP (RFC 6062).
    tcp: bool,
}

impl<R: Relays> Server<R> {
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        if let Some(&id) = self.by_tuple.get(tuple) {
            match live(&self.slots, id, now) {
                // RFC 8656 §7.2: a retransmitted Allocate gets the same
                // success; anything else on a 5-tuple in use is a mismatch.
                Some(alloc) => {
                    if alloc.transaction != msg.transaction_id()
                        || *alloc.username != *auth.username
                    {
                        return Err(ErrorCode::ALLOCATION_MISMATCH);
                    }
                    let remaining = alloc.expires.saturating_duration_since(now);
                    let answer = (alloc.relayed(), alloc.reservation_token, alloc.refused_v6);
                    return self.allocate_success(msg, out, auth, tuple, answer, remaining);
                }
                // Expired, not yet swept: the 5-tuple is free again.
                None => self.remove(id, now, EndReason::Expired),
            }
        }
        if self.shared.is_draining() {
            return self.refuse_while_draining(tuple, msg, out, auth);
        }
        let wanted = wanted(msg)?;
        // RFC 6062 §5.1: TCP relaying, when enabled, for clients on TCP or
        // TLS.
        if wanted.tcp && !self.shared.config.tcp_relay {
            return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL);
        }
        if wanted.tcp && !tuple.transport.is_stream() {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let lifetime = self
            .allocation_lifetime(msg)
            .min(self.credential_left(now, auth));

        self.shared.acquire(&auth.username, auth.restricted)?;
        let index = self.free.pop().map_or(self.slots.len(), |i| i as usize);
        let generation = self.slots.get(index).map_or(0, |s| s.generation);
        let id = match u32::try_from(index) {
            Ok(i) => AllocationId::new(i, generation),
            Err(_) => {
                self.shared.release(&auth.username, auth.restricted);
                return Err(ErrorCode::INSUFFICIENT_CAPACITY);
            }
        };
        let bound = match wanted.token {
            Some(token) => self.claim_reservation(id, &token, now),
            None => self.bind(
                id,
                wanted.family,
                wanted.even_port,
                wanted.dont_fragment,
                wanted.tcp,
            ),
        };
        let bound = match bound {
            Ok(bound) => bound,
            Err(code) => {
                self.shared.release(&auth.username, auth.restricted);
                if index < self.slots.len() {
                    self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
                }
                return Err(code);
            }
        };
        let reservation_token = bound.reserved.and_then(|(handle, addr)| {
            self.shared
                .reserve(handle, addr, now + self.shared.config.lifetimes.reservation)
        });
        let mut relays = [None, None];
        if let Some(r) = relays.get_mut(slot(Family::of(&bound.addr))) {
            *r = Some(Relay {
                relayed: self.as_advertised(bound.addr),
                socket: bound.socket,
            });
        }
        // RFC 8656 §7.2: the IPv6 half of a dual allocation is refused in
        // the success response when it cannot be made.
        let mut refused_v6 = None;
        if wanted.dual {
            match self.bind(id, Family::V6, None, wanted.dont_fragment, false) {
                Ok(v6) => {
                    if let Some(r) = relays.get_mut(slot(Family::V6)) {
                        *r = Some(Relay {
                            relayed: self.as_advertised(v6.addr),
                            socket: v6.socket,
                        });
                    }
                }
                Err(code) => refused_v6 = Some(code),
            }
        }
        let mut alloc = Allocation::new(
            *tuple,
            auth.username.clone(),
            msg.transaction_id(),
            relays,
            refused_v6,
            reservation_token,
            now,
            lifetime,
            self.bandwidth(),
        );
        alloc.tcp = wanted.tcp;
        alloc.restricted = auth.restricted;
        let relayed = alloc.relayed();
        match self.slots.get_mut(index) {
            Some(slot) => slot.allocation = Some(alloc),
            None => self.slots.push(Slot {
                generation,
                allocation: Some(alloc),
            }),
        }
        self.by_tuple.insert(*tuple, id);
        self.note_deadline(now + lifetime);
        self.events.push_back(Event::AllocationCreated {
            id,
            username: auth.username.clone(),
            tuple: *tuple,
            relayed,
            lifetime,
        });
        let answer = (relayed, reservation_token, refused_v6);
        self.allocate_success(msg, out, auth, tuple, answer, lifetime)
    }

    /// A new allocation while the server drains: 300 with ALTERNATE-SERVER
    /// when an alternate of the client's family is configured (RFC 8489
    /// §10, RFC 8656 §7.2), else 508. Retransmissions and the allocations
    /// that exist are answered as usual, above.
    fn refuse_while_draining(
        &mut self,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
        auth: &Verified,
    ) -> Result<usize, ErrorCode> {
        let family = Family::of(&tuple.client);
        let alternate = self
            .shared
            .config
            .alternates
            .iter()
            .copied()
            .find(|a| Family::of(a) == family)
            .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)?;
        self.error(msg, out, ErrorCode::TRY_ALTERNATE, Some(auth), |w| {
            w.add(&Attr::AlternateServer(alternate))
        })
        .ok_or(ErrorCode::SERVER_ERROR)
    }

    fn bind(
        &mut self,
        id: AllocationId,
        family: Family,
        even_port: Option<bool>,
        dont_fragment: bool,
        tcp: bool,
    ) -> Result<Bound<R::Socket, R::Reserved>, ErrorCode> {
        self.relays
            .bind(&BindRequest {
                id,
                family,
                even_port: even_port.is_some(),
                reserve_next: even_port == Some(true),
                dont_fragment,
                tcp,
            })
            .map_err(|e| match e {
                BindError::FamilyNotSupported => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                BindError::NoPorts | BindError::Failed => ErrorCode::INSUFFICIENT_CAPACITY,
            })
    }

    pub(super) fn claim_reservation(
        &mut self,
        id: AllocationId,
        token: &[u8; 8],
        now: Instant,
    ) -> Result<Bound<R::Socket, R::Reserved>, ErrorCode> {
        // RFC 8656 §7.2: an unknown or expired token is 508.
        let (handle, addr) = self
            .shared
            .claim(token, now)
            .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)?;
        let socket = self
            .relays
            .adopt(id, handle)
            .map_err(|_| ErrorCode::INSUFFICIENT_CAPACITY)?;
        Ok(Bound {
            socket,
            addr,
            reserved: None,
        })
    }

    /// The success response: every relayed address, the lifetime, the
    /// reservation token and the refusal of a dual allocation's IPv6 half,
    /// when there are any.
    fn allocate_success(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        auth: &Verified,
        tuple: &FiveTuple,
        (relayed, token, refused_v6): (Relayed, Option<[u8; 8]>, Option<ErrorCode>),
        lifetime: Duration,
    ) -> Result<usize, ErrorCode> {
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.respond(msg, out, msg.typ().success(), Some(auth), |w| {
            for addr in [relayed.v4, relayed.v6].into_iter().flatten() {
                w.add(&Attr::XorRelayedAddress(addr))?;
            }
            w.add(&Attr::Lifetime(seconds))?;
            if let Some(token) = &token {
                w.add(&Attr::ReservationToken(token))?;
            }
            if let Some(code) = refused_v6 {
                w.add(&Attr::AddressErrorCode {
                    family: Family::V6,
                    code,
                    reason: code.reason(),
                })?;
            }
            w.add(&Attr::XorMappedAddress(tuple.client))
        })
        .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// How long `auth`'s credentials stay valid, for check credentials
    /// (their allocations end with them, so that the public cannot hold
    /// the check quota for an hour); unbounded for anyone else.
    fn credential_left(&self, now: Instant, auth: &Verified) -> Duration {
        if !auth.restricted {
            return Duration::MAX;
        }
        let expires = crate::auth::rest_expiry(&auth.username).unwrap_or(0);
        Duration::from_secs(expires.saturating_sub(self.unix_now(now)))
    }

    /// RFC 8656 §7.2: min(requested, max), but never less than the default.
    pub(super) fn allocation_lifetime(&self, msg: &Message<'_>) -> Duration {
        let l = &self.shared.config.lifetimes;
        match msg.get(AttrType::LIFETIME) {
            Some(Ok(Attr::Lifetime(s))) => Duration::from_secs(u64::from(s))
                .min(l.allocation_max)
                .max(l.allocation_default),
            _ => l.allocation_default,
        }
    }

    /// RFC 8656 §7.3. In a dual allocation, REQUESTED-ADDRESS-FAMILY with
    /// LIFETIME 0 deletes that family's relay only.
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        let lifetimes = self.shared.config.lifetimes;
        let left = self.credential_left(now, auth);
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let family = match msg.get(AttrType::REQUESTED_ADDRESS_FAMILY) {
            Some(Ok(Attr::RequestedAddressFamily(f))) if alloc.relay(f).is_some() => Some(f),
            Some(Ok(Attr::RequestedAddressFamily(_))) => {
                return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
            }
            Some(_) => return Err(ErrorCode::BAD_REQUEST),
            None => None,
        };
        let lifetime = match msg.get(AttrType::LIFETIME) {
            Some(Ok(Attr::Lifetime(s))) => {
                Duration::from_secs(u64::from(s)).min(lifetimes.allocation_max)
            }
            _ => lifetimes.allocation_default,
        }
        .min(left);
        if !lifetime.is_zero() {
            alloc.expires = now + lifetime;
        } else if !family.is_some_and(|f| alloc.drop_family(f)) {
            self.remove(id, now, EndReason::Deleted);
        }
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.respond(msg, out, msg.typ().success(), Some(auth), |w| {
            w.add(&Attr::Lifetime(seconds))
        })
        .ok_or(ErrorCode::SERVER_ERROR)
    }
}

/// The Allocate attributes, checked in RFC 8656 §7.2's order.
fn wanted(msg: &Message<'_>) -> Result<Wanted, ErrorCode> {
    let tcp = match msg.get(AttrType::REQUESTED_TRANSPORT) {
        Some(Ok(Attr::RequestedTransport(TRANSPORT_UDP))) => false,
        Some(Ok(Attr::RequestedTransport(TRANSPORT_TCP))) => true,
        Some(Ok(Attr::RequestedTransport(_))) => {
            return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL);
        }
        _ => return Err(ErrorCode::BAD_REQUEST),
    };
    let even_port = match msg.get(AttrType::EVEN_PORT) {
        None => None,
        Some(Ok(Attr::EvenPort { reserve_next })) => Some(reserve_next),
        Some(_) => return Err(ErrorCode::BAD_REQUEST),
    };
    let token = match msg.get(AttrType::RESERVATION_TOKEN) {
        None => None,
        Some(Ok(Attr::ReservationToken(t))) => Some(*t),
        Some(_) => return Err(ErrorCode::BAD_REQUEST),
    };
    let requested = match msg.get(AttrType::REQUESTED_ADDRESS_FAMILY) {
        None => None,
        Some(Ok(Attr::RequestedAddressFamily(f))) => Some(f),
        Some(_) => return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
    };
    let dual = match msg.get(AttrType::ADDITIONAL_ADDRESS_FAMILY) {
        None => false,
        // Only IPv6 can be additional.
        Some(Ok(Attr::AdditionalAddressFamily(Family::V6))) => true,
        Some(_) => return Err(ErrorCode::BAD_REQUEST),
    };
    let dont_fragment = msg.raw(AttrType::DONT_FRAGMENT).is_some();
    // These combinations make no sense (RFC 8656 §7.2, RFC 6062 §5.1).
    if (token.is_some() && (even_port.is_some() || requested.is_some() || dual))
        || (dual && requested.is_some())
        || (tcp && (token.is_some() || even_port.is_some() || dual || dont_fragment))
    {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(Wanted {
        family: requested.unwrap_or(Family::V4),
        dual,
        even_port,
        token,
        dont_fragment,
        tcp,
    })
}

//! Allocate and Refresh (RFC 8656 §7).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnpike_stun::attr::TRANSPORT_UDP;
use turnpike_stun::{Attr, AttrType, ErrorCode, Family, Message};

use super::{
    BindError, BindRequest, Bound, EndReason, Event, Relays, Server, Slot, live, live_mut,
};
use crate::allocation::Allocation;
use crate::auth::Verified;
use crate::{AllocationId, FiveTuple};

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
                    let (relayed, token) = (alloc.relayed, alloc.reservation_token);
                    return self
                        .allocate_success(msg, out, auth, tuple, relayed, remaining, token, None);
                }
                // Expired, not yet swept: the 5-tuple is free again.
                None => self.remove(id, now, EndReason::Expired),
            }
        }

        match msg.get(AttrType::REQUESTED_TRANSPORT) {
            Some(Ok(Attr::RequestedTransport(TRANSPORT_UDP))) => {}
            Some(Ok(Attr::RequestedTransport(_))) => {
                return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL);
            }
            _ => return Err(ErrorCode::BAD_REQUEST),
        }
        let dont_fragment = msg.raw(AttrType::DONT_FRAGMENT).is_some();
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
        let requested_family = match msg.get(AttrType::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(Attr::RequestedAddressFamily(f))) => Some(f),
            Some(_) => return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
        };
        let additional = match msg.get(AttrType::ADDITIONAL_ADDRESS_FAMILY) {
            None => false,
            Some(Ok(Attr::AdditionalAddressFamily(Family::V6))) => true,
            Some(_) => return Err(ErrorCode::BAD_REQUEST),
        };
        // RFC 8656 §7.2: these combinations make no sense.
        if (token.is_some() && (even_port.is_some() || requested_family.is_some()))
            || (additional && requested_family.is_some())
        {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let family = requested_family.unwrap_or(Family::V4);
        let lifetime = self.allocation_lifetime(msg);

        self.shared.acquire(&auth.username)?;
        let index = self.free.pop().map_or(self.slots.len(), |i| i as usize);
        let generation = self.slots.get(index).map_or(0, |s| s.generation);
        let id = AllocationId::new(
            u32::try_from(index).map_err(|_| ErrorCode::INSUFFICIENT_CAPACITY)?,
            generation,
        );
        let bound = match token {
            Some(token) => self.claim_reservation(id, &token, now),
            None => self
                .relays
                .bind(&BindRequest {
                    id,
                    family,
                    even_port: even_port.is_some(),
                    reserve_next: even_port == Some(true),
                    dont_fragment,
                })
                .map_err(|e| match e {
                    BindError::FamilyNotSupported => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                    BindError::NoPorts | BindError::Failed => ErrorCode::INSUFFICIENT_CAPACITY,
                }),
        };
        let bound = match bound {
            Ok(bound) => bound,
            Err(code) => {
                self.shared.release(&auth.username);
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
        let relayed = self.as_advertised(bound.addr);
        let alloc = Allocation::new(
            *tuple,
            auth.username.clone(),
            msg.transaction_id(),
            bound.socket,
            relayed,
            reservation_token,
            now,
            lifetime,
        );
        match self.slots.get_mut(index) {
            Some(slot) => slot.allocation = Some(alloc),
            None => self.slots.push(Slot {
                generation,
                allocation: Some(alloc),
            }),
        }
        self.by_tuple.insert(*tuple, id);
        let expires = now + lifetime;
        self.next_timeout = Some(self.next_timeout.map_or(expires, |t| t.min(expires)));
        self.events.push_back(Event::AllocationCreated {
            id,
            username: auth.username.clone(),
            tuple: *tuple,
            relayed,
            lifetime,
        });
        // Without IPv6 relays, the second family of a dual allocation is
        // refused in the success response (RFC 8656 §7.2, §18.12).
        let refused_v6 = additional.then_some(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
        self.allocate_success(
            msg,
            out,
            auth,
            tuple,
            relayed,
            lifetime,
            reservation_token,
            refused_v6,
        )
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn allocate_success(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        auth: &Verified,
        tuple: &FiveTuple,
        relayed: SocketAddr,
        lifetime: Duration,
        token: Option<[u8; 8]>,
        refused_v6: Option<ErrorCode>,
    ) -> Result<usize, ErrorCode> {
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.respond(msg, out, msg.typ().success(), Some(auth), |w| {
            w.add(&Attr::XorRelayedAddress(relayed))?;
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

    /// RFC 8656 §7.3.
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
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if let Some(Ok(Attr::RequestedAddressFamily(f))) =
            msg.get(AttrType::REQUESTED_ADDRESS_FAMILY)
            && f != Family::of(&alloc.relayed)
        {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        let lifetime = match msg.get(AttrType::LIFETIME) {
            Some(Ok(Attr::Lifetime(s))) => {
                Duration::from_secs(u64::from(s)).min(lifetimes.allocation_max)
            }
            _ => lifetimes.allocation_default,
        };
        if lifetime.is_zero() {
            self.remove(id, now, EndReason::Deleted);
        } else {
            alloc.expires = now + lifetime;
        }
        let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        self.respond(msg, out, msg.typ().success(), Some(auth), |w| {
            w.add(&Attr::Lifetime(seconds))
        })
        .ok_or(ErrorCode::SERVER_ERROR)
    }
}

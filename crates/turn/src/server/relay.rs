//! Permissions, channels and the data they let through (RFC 8656 §9–§12).

use std::net::SocketAddr;
use std::time::Instant;

use turnpike_stun::{Attr, AttrType, ErrorCode, Family, Message, channel_data};

use super::{Output, Relays, Server, live, live_mut};
use crate::allocation::{Channel, Rebind};
use crate::auth::Verified;
use crate::check::CheckAccess;
use crate::policy::{Denied, PeerPolicy};
use crate::{AllocationId, FiveTuple};

impl<R: Relays> Server<R> {
    /// RFC 8656 §12.6: ChannelData on a bound channel goes to its peer;
    /// anything else is dropped silently.
    #[inline]
    pub(super) fn channel_data<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        data: &'a [u8],
    ) -> Output<'a, R::Socket> {
        let Ok(cd) = channel_data::parse(data) else {
            self.stats.malformed += 1;
            return Output::None;
        };
        let Some(&id) = self.by_tuple.get(tuple) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        let bandwidth = self.bandwidth();
        let Some(alloc) = live_mut(&mut self.slots, id, now) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        let Some(dest) = alloc.channel(cd.channel, now).map(|c| c.dest) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        if !alloc.to_peer_budget.take(bandwidth, cd.payload.len(), now) {
            self.stats.over_bandwidth[0] += 1;
            return Output::None;
        }
        let bytes = u64::try_from(cd.payload.len()).unwrap_or(u64::MAX);
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += bytes;
        self.stats.traffic.to_peer_packets += 1;
        self.stats.traffic.to_peer_bytes += bytes;
        // The channel was bound through the relay of the peer's family.
        match alloc.relay(Family::of(&dest)) {
            Some(relay) => Output::ToPeer {
                socket: &relay.socket,
                peer: dest,
                data: cd.payload,
            },
            None => Output::None,
        }
    }

    /// RFC 8656 §11.2: a Send indication's data goes to its peer if a
    /// permission allows; indications are never answered.
    pub(super) fn send_indication<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'a>,
    ) -> Output<'a, R::Socket> {
        let peer = match msg.get(AttrType::XOR_PEER_ADDRESS) {
            Some(Ok(Attr::XorPeerAddress(peer))) => peer,
            _ => return self.drop_client(),
        };
        let data = match msg.get(AttrType::DATA) {
            Some(Ok(Attr::Data(data))) => data,
            _ => return self.drop_client(),
        };
        if !msg.unknown_comprehension_required().is_empty() {
            return self.drop_client();
        }
        let Some(&id) = self.by_tuple.get(tuple) else {
            return self.drop_client();
        };
        let dest = self.as_bound(peer);
        let bandwidth = self.bandwidth();
        let policy = &self.shared.config.policy;
        let relays = &self.relays;
        let Some(alloc) = live_mut(&mut self.slots, id, now) else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        let family = Family::of(&peer);
        let Some(relayed) = alloc
            .relay(family)
            .filter(|_| !alloc.tcp)
            .map(|r| r.relayed)
        else {
            self.stats.client_dropped += 1;
            return Output::None;
        };
        if !alloc.permits(peer.ip(), now) {
            self.stats.client_dropped += 1;
            return Output::None;
        }
        let checked = if alloc.restricted {
            probe_peer(
                self.shared.check.as_ref(),
                policy,
                peer,
                dest,
                relayed,
                false,
            )
        } else {
            policy.check_port(peer, Some(relayed), |_| relays.is_relayed(dest))
        };
        if let Err(denied) = checked {
            self.stats.peer_denied.add(denied.as_str());
            return Output::None;
        }
        if !alloc.to_peer_budget.take(bandwidth, data.len(), now) {
            self.stats.over_bandwidth[0] += 1;
            return Output::None;
        }
        let bytes = u64::try_from(data.len()).unwrap_or(u64::MAX);
        alloc.traffic.to_peer_packets += 1;
        alloc.traffic.to_peer_bytes += bytes;
        self.stats.traffic.to_peer_packets += 1;
        self.stats.traffic.to_peer_bytes += bytes;
        match alloc.relay(family) {
            Some(relay) => Output::ToPeer {
                socket: &relay.socket,
                peer: dest,
                data,
            },
            None => Output::None,
        }
    }

    pub(super) fn drop_client<'a>(&mut self) -> Output<'a, R::Socket> {
        self.stats.client_dropped += 1;
        Output::None
    }

    /// RFC 8656 §10.2: all peers pass, or nothing is installed.
    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        let mut peers = [None; 16];
        let mut count = 0usize;
        for attr in msg.get_all(AttrType::XOR_PEER_ADDRESS) {
            let Ok(Attr::XorPeerAddress(peer)) = attr else {
                return Err(ErrorCode::BAD_REQUEST);
            };
            let slot = peers
                .get_mut(count)
                .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)?;
            *slot = Some(peer);
            count += 1;
        }
        if count == 0 {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let peers = peers.iter().flatten().copied();
        let limit = self.shared.config.limits.permissions_per_allocation;
        let permission = self.shared.config.lifetimes.permission;
        for peer in peers.clone() {
            self.admit(id, now, peer)?;
        }
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let new = peers
            .clone()
            .filter(|p| !alloc.permits(p.ip(), now))
            .count();
        if alloc.permission_count(now) + new > limit {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        for peer in peers {
            alloc.permit(peer.ip(), now + permission);
        }
        self.note_deadline(now + permission);
        self.respond(msg, out, msg.typ().success(), Some(auth), |_| Ok(()))
            .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// RFC 8656 §11.2.
    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<usize, ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        let number = match msg.get(AttrType::CHANNEL_NUMBER) {
            Some(Ok(Attr::ChannelNumber(n))) if channel_data::is_valid_channel(n) => n,
            _ => return Err(ErrorCode::BAD_REQUEST),
        };
        let peer = peer_address(msg)?;
        // Channels carry datagrams; a TCP allocation has none (RFC 6062 §5).
        if live(&self.slots, id, now).is_some_and(|a| a.tcp) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let lifetimes = self.shared.config.lifetimes;
        let limit = self.shared.config.limits.channels_per_allocation;
        let dest = self.as_bound(peer);
        self.admit(id, now, peer)?;
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let rebind = alloc
            .may_bind(number, peer, now)
            .map_err(|()| ErrorCode::BAD_REQUEST)?;
        if rebind == Rebind::New && alloc.channel_count(now) >= limit {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let permission_limit = self.shared.config.limits.permissions_per_allocation;
        if !alloc.permits(peer.ip(), now) && alloc.permission_count(now) >= permission_limit {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let alloc = live_mut(&mut self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let expires = now + lifetimes.channel;
        alloc.bind_channel(
            number,
            Channel {
                peer,
                dest,
                expires,
                released: expires + lifetimes.channel_quarantine,
            },
        );
        alloc.permit(peer.ip(), now + lifetimes.permission);
        self.note_deadline(now + lifetimes.permission);
        self.respond(msg, out, msg.typ().success(), Some(auth), |_| Ok(()))
            .ok_or(ErrorCode::SERVER_ERROR)
    }

    /// The allocation of `tuple`, which `auth` must own (RFC 8656 §5:
    /// 437 without one, 441 for another user's).
    pub(super) fn owned(
        &self,
        now: Instant,
        tuple: &FiveTuple,
        auth: &Verified,
    ) -> Result<AllocationId, ErrorCode> {
        let id = *self
            .by_tuple
            .get(tuple)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if *alloc.username != *auth.username {
            return Err(ErrorCode::WRONG_CREDENTIALS);
        }
        Ok(id)
    }

    /// The family and policy checks for a peer of allocation `id`
    /// (RFC 8656 §9.1, §10): the allocation needs a relay of the peer's
    /// family (443 otherwise), and the policy must allow the peer (403).
    pub(super) fn admit(
        &mut self,
        id: AllocationId,
        now: Instant,
        peer: SocketAddr,
    ) -> Result<(), ErrorCode> {
        let alloc = live(&self.slots, id, now).ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let (restricted, tcp) = (alloc.restricted, alloc.tcp);
        let relayed = alloc
            .relay(Family::of(&peer))
            .ok_or(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH)?
            .relayed;
        let dest = self.as_bound(peer);
        let relays = &self.relays;
        let policy = &self.shared.config.policy;
        let checked = if restricted {
            probe_peer(self.shared.check.as_ref(), policy, peer, dest, relayed, tcp)
        } else {
            policy.check(peer, Some(relayed), |_| relays.is_relayed(dest))
        };
        checked.map_err(|denied: Denied| {
            self.stats.peer_denied.add(denied.as_str());
            ErrorCode::FORBIDDEN
        })
    }

    pub(super) fn note_deadline(&mut self, at: Instant) {
        self.next_timeout = Some(self.next_timeout.map_or(at, |t| t.min(at)));
    }
}

/// The peer check of an allocation made with check credentials
/// (`crate::check`): the probe responder's addresses only (its UDP range,
/// or its TCP port for a `tcp` allocation), and even those not when they
/// are the server's listeners, a relay loop or in an operator `deny`
/// range, whether named as the client named them or as they are sent to.
fn probe_peer(
    check: Option<&CheckAccess>,
    policy: &PeerPolicy,
    peer: SocketAddr,
    dest: SocketAddr,
    relayed: SocketAddr,
    tcp: bool,
) -> Result<(), Denied> {
    if !check.is_some_and(|c| c.allows(peer, tcp)) {
        return Err(Denied::NotProbe);
    }
    policy.check_probe(peer, Some(relayed))?;
    policy.check_probe(dest, Some(relayed))
}

/// The request's XOR-PEER-ADDRESS: 400 when it is missing or malformed.
pub(super) fn peer_address(msg: &Message<'_>) -> Result<SocketAddr, ErrorCode> {
    match msg.get(AttrType::XOR_PEER_ADDRESS) {
        Some(Ok(Attr::XorPeerAddress(peer))) => Ok(peer),
        _ => Err(ErrorCode::BAD_REQUEST),
    }
}

//! One allocation: its relayed address, permissions and channels
//! (RFC 8656 §2.2, §9, §12).

use crate::bandwidth::{Budget, Rate};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turnpike_stun::{ErrorCode, Family, TransactionId};

use crate::policy::canonical;
use crate::server::TrafficStats;
use crate::{FiveTuple, Relayed};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A channel binding. After `expires` the binding no longer carries data,
/// but its number and peer stay reserved to each other until `released`
/// (RFC 8656 §12: no rebinding to something else for 5 minutes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    /// The peer as the client names it.
    pub peer: SocketAddr,
    /// Where datagrams for the peer are sent (differs from `peer` when the
    /// peer is another allocation known by its advertised address).
    pub dest: SocketAddr,
    pub expires: Instant,
    pub released: Instant,
}

/// A relayed transport address, and the runtime's socket for it.
#[derive(Debug)]
pub(crate) struct Relay<S> {
    pub socket: S,
    /// As clients and peers know it (the advertised form).
    pub relayed: SocketAddr,
}

#[derive(Debug)]
pub(crate) struct Allocation<S> {
    pub tuple: FiveTuple,
    pub username: Box<str>,
    /// The Allocate transaction, to answer its retransmissions.
    pub transaction: TransactionId,
    /// The IPv4 and IPv6 relays; a dual allocation has both
    /// (RFC 8656 §7.2).
    relays: [Option<Relay<S>>; 2],
    /// Why the IPv6 half of a dual allocation was not made, if it was not.
    pub refused_v6: Option<ErrorCode>,
    /// A TCP allocation (RFC 6062): connections, not datagrams.
    pub tcp: bool,
    /// Made with check credentials: relays to the probe responder only
    /// (`crate::check`).
    pub restricted: bool,
    pub reservation_token: Option<[u8; 8]>,
    pub created: Instant,
    pub expires: Instant,
    /// Permissions by peer IP (canonical form), with their expiry.
    permissions: Map<IpAddr, Instant>,
    channels: Map<u16, Channel>,
    channel_of_peer: Map<SocketAddr, u16>,
    /// The earliest time a permission or channel needs cleaning up.
    next_gc: Option<Instant>,
    pub traffic: TrafficStats,
    /// What the allocation may still relay now, to its peers and to its
    /// client.
    pub to_peer_budget: Budget,
    pub to_client_budget: Budget,
}

impl<S> Allocation<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tuple: FiveTuple,
        username: Box<str>,
        transaction: TransactionId,
        relays: [Option<Relay<S>>; 2],
        refused_v6: Option<ErrorCode>,
        reservation_token: Option<[u8; 8]>,
        now: Instant,
        lifetime: Duration,
        bandwidth: Rate,
    ) -> Self {
        Self {
            tuple,
            username,
            transaction,
            relays,
            refused_v6,
            tcp: false,
            restricted: false,
            reservation_token,
            created: now,
            expires: now + lifetime,
            permissions: Map::default(),
            channels: Map::default(),
            channel_of_peer: Map::default(),
            next_gc: None,
            traffic: TrafficStats::default(),
            to_peer_budget: Budget::new(bandwidth, now),
            to_client_budget: Budget::new(bandwidth, now),
        }
    }

    pub(crate) fn is_live(&self, now: Instant) -> bool {
        self.expires > now
    }

    /// The relay for peers of `family`, if the allocation has one.
    #[inline]
    pub(crate) fn relay(&self, family: Family) -> Option<&Relay<S>> {
        self.relays.get(slot(family)).and_then(Option::as_ref)
    }

    /// The relayed addresses, as clients know them.
    pub(crate) fn relayed(&self) -> Relayed {
        Relayed {
            v4: self.relay(Family::V4).map(|r| r.relayed),
            v6: self.relay(Family::V6).map(|r| r.relayed),
        }
    }

    /// Deletes the relay of one family; returns whether any is left.
    pub(crate) fn drop_family(&mut self, family: Family) -> bool {
        if let Some(relay) = self.relays.get_mut(slot(family)) {
            *relay = None;
        }
        self.relays.iter().any(Option::is_some)
    }

    /// Whether datagrams from `ip` may reach the client (RFC 8656 §9).
    pub(crate) fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&canonical(ip))
            .is_some_and(|&t| t > now)
    }

    /// Live permissions, as of `now`.
    pub(crate) fn permission_count(&self, now: Instant) -> usize {
        self.permissions.values().filter(|&&t| t > now).count()
    }

    /// Installs or refreshes a permission for `ip` until `until`.
    pub(crate) fn permit(&mut self, ip: IpAddr, until: Instant) {
        self.permissions.insert(canonical(ip), until);
        self.schedule_gc(until);
    }

    /// The channel bound to `number`, if it carries data at `now`.
    #[inline]
    pub(crate) fn channel(&self, number: u16, now: Instant) -> Option<&Channel> {
        self.channels.get(&number).filter(|c| c.expires > now)
    }

    /// The channel number bound to `peer`, if it carries data at `now`.
    #[inline]
    pub(crate) fn channel_for_peer(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let number = *self.channel_of_peer.get(&peer)?;
        self.channel(number, now).map(|_| number)
    }

    /// Checks a ChannelBind of `number` to `peer` against existing
    /// bindings, including those in quarantine.
    pub(crate) fn may_bind(
        &self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Rebind, ()> {
        let by_number = self.channels.get(&number).filter(|c| c.released > now);
        let by_peer = self
            .channel_of_peer
            .get(&peer)
            .copied()
            .filter(|n| self.channels.get(n).is_some_and(|c| c.released > now));
        match (by_number, by_peer) {
            (Some(c), _) if c.peer != peer => Err(()),
            (_, Some(n)) if n != number => Err(()),
            (Some(_), _) => Ok(Rebind::Refresh),
            (None, _) => Ok(Rebind::New),
        }
    }

    /// Channels that still hold their number (live or in quarantine).
    pub(crate) fn channel_count(&self, now: Instant) -> usize {
        self.channels.values().filter(|c| c.released > now).count()
    }

    pub(crate) fn bind_channel(&mut self, number: u16, channel: Channel) {
        self.schedule_gc(channel.released);
        self.channel_of_peer.insert(channel.peer, number);
        self.channels.insert(number, channel);
    }

    fn schedule_gc(&mut self, at: Instant) {
        self.next_gc = Some(self.next_gc.map_or(at, |t| t.min(at)));
    }

    /// Drops expired permissions and released channels, if any are due;
    /// returns when it next needs to run.
    pub(crate) fn collect_garbage(&mut self, now: Instant) -> Option<Instant> {
        if self.next_gc.is_some_and(|t| t <= now) {
            self.permissions.retain(|_, t| *t > now);
            self.channels.retain(|_, c| c.released > now);
            let channels = &self.channels;
            self.channel_of_peer.retain(|_, n| channels.contains_key(n));
            let next_permission = self.permissions.values().min().copied();
            let next_channel = self.channels.values().map(|c| c.released).min();
            self.next_gc = match (next_permission, next_channel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.next_gc
    }
}

/// Where a family's relay is kept.
pub(crate) const fn slot(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// What a valid ChannelBind does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebind {
    New,
    Refresh,
}

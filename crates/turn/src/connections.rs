//! RFC 6062 peer data connections, as every shard sees them.
//!
//! A connection ID is issued by the shard that holds the allocation, but
//! the client binds it from a new connection of its own (RFC 6062 §5.4),
//! which may land on any shard: the IDs live here, in the shared state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use turnpike_stun::ErrorCode;

/// An RFC 6062 CONNECTION-ID.
pub type ConnectionId = u32;

/// Peer connections one allocation may have, made, waiting or bound: each
/// holds a socket on the server.
pub const MAX_PER_ALLOCATION: usize = 64;

#[derive(Debug)]
struct Entry {
    /// The allocation's relayed address: it names the allocation across
    /// shards.
    relayed: SocketAddr,
    peer: SocketAddr,
    owner: Box<str>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connect sent the server connecting to the peer.
    Connecting,
    /// Connected, waiting for the client's ConnectionBind until then.
    Waiting { until: Instant },
    /// Joined to a client data connection.
    Bound,
}

#[derive(Debug, Default)]
pub(crate) struct Connections {
    map: Mutex<HashMap<ConnectionId, Entry>>,
}

impl Connections {
    /// Whether the allocation at `relayed` has a connection to `peer`, made
    /// or in the making (RFC 6062 §5.2: 446).
    pub(crate) fn has_peer(&self, relayed: SocketAddr, peer: SocketAddr) -> bool {
        self.map
            .lock()
            .is_ok_and(|m| m.values().any(|e| e.relayed == relayed && e.peer == peer))
    }

    /// Records a new connection; `false` if the ID is taken or the
    /// allocation has [`MAX_PER_ALLOCATION`] already.
    pub(crate) fn insert(
        &self,
        id: ConnectionId,
        relayed: SocketAddr,
        peer: SocketAddr,
        owner: &str,
        waiting_until: Option<Instant>,
    ) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        if id == 0 || map.contains_key(&id) {
            return false;
        }
        if map.values().filter(|e| e.relayed == relayed).count() >= MAX_PER_ALLOCATION {
            return false;
        }
        let state = waiting_until.map_or(State::Connecting, |until| State::Waiting { until });
        map.insert(
            id,
            Entry {
                relayed,
                peer,
                owner: Box::from(owner),
                state,
            },
        );
        true
    }

    /// A Connect's connection is up: the client has until `until` to bind it.
    pub(crate) fn connected(&self, id: ConnectionId, until: Instant) {
        if let Ok(mut map) = self.map.lock()
            && let Some(e) = map.get_mut(&id)
        {
            e.state = State::Waiting { until };
        }
    }

    /// ConnectionBind (RFC 6062 §5.4): the ID must wait for a bind, and
    /// belong to the same user.
    pub(crate) fn bind(&self, id: ConnectionId, user: &str, now: Instant) -> Result<(), ErrorCode> {
        let mut map = self.map.lock().map_err(|_| ErrorCode::SERVER_ERROR)?;
        let entry = map.get_mut(&id).ok_or(ErrorCode::BAD_REQUEST)?;
        match entry.state {
            State::Waiting { until } if until > now => {}
            _ => return Err(ErrorCode::BAD_REQUEST),
        }
        if *entry.owner != *user {
            return Err(ErrorCode::WRONG_CREDENTIALS);
        }
        entry.state = State::Bound;
        Ok(())
    }

    /// The connection is gone.
    pub(crate) fn remove(&self, id: ConnectionId) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&id);
        }
    }

    /// Every connection of the allocation at `relayed` is gone.
    pub(crate) fn remove_allocation(&self, relayed: SocketAddr) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, e| e.relayed != relayed);
        }
    }

    /// Forgets connections whose client never bound them in time.
    pub(crate) fn expire(&self, now: Instant) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, e| !matches!(e.state, State::Waiting { until } if until <= now));
        }
    }

    /// Connections known, for tests and metrics.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lifecycle() {
        let c = Connections::default();
        let t0 = Instant::now();
        let relayed: SocketAddr = "192.0.2.1:50000".parse().unwrap();
        let peer: SocketAddr = "198.51.100.1:80".parse().unwrap();
        assert!(c.insert(7, relayed, peer, "alice", None));
        assert!(!c.insert(7, relayed, peer, "alice", None), "IDs are unique");
        assert!(
            !c.insert(0, relayed, peer, "alice", None),
            "0 is never an ID"
        );
        assert!(c.has_peer(relayed, peer));
        assert_eq!(
            c.bind(7, "alice", t0),
            Err(ErrorCode::BAD_REQUEST),
            "still connecting"
        );
        c.connected(7, t0 + Duration::from_secs(30));
        assert_eq!(c.bind(7, "bob", t0), Err(ErrorCode::WRONG_CREDENTIALS));
        assert_eq!(c.bind(7, "alice", t0), Ok(()));
        assert_eq!(
            c.bind(7, "alice", t0),
            Err(ErrorCode::BAD_REQUEST),
            "bound once"
        );
        assert!(c.insert(
            8,
            relayed,
            "198.51.100.2:80".parse().unwrap(),
            "alice",
            Some(t0 + Duration::from_secs(30))
        ));
        c.expire(t0 + Duration::from_secs(30));
        assert_eq!(c.len(), 1, "the unbound one expired");
        c.remove_allocation(relayed);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_allocation_has_a_bounded_number_of_connections() {
        let c = Connections::default();
        let relayed: SocketAddr = "192.0.2.1:50000".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:50002".parse().unwrap();
        let peer = |n: u16| SocketAddr::from(([198, 51, 100, 1], 1000 + n));
        for n in 0..MAX_PER_ALLOCATION {
            let id = u32::try_from(n).unwrap() + 1;
            assert!(c.insert(id, relayed, peer(u16::try_from(n).unwrap()), "alice", None));
        }
        assert!(
            !c.insert(1000, relayed, peer(999), "alice", None),
            "the cap holds"
        );
        assert!(
            c.insert(1000, other, peer(999), "alice", None),
            "per allocation"
        );
        c.remove(1);
        assert!(
            c.insert(1001, relayed, peer(998), "alice", None),
            "room again once one ends"
        );
    }
}

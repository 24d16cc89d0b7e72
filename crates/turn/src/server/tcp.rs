//! TCP relaying (RFC 6062): Connect, ConnectionAttempt, ConnectionBind.
//!
//! A TCP allocation relays TCP connections instead of datagrams. The
//! server connects to a peer when the client sends Connect, or accepts a
//! peer's connection and tells the client with ConnectionAttempt; either
//! way the connection gets an ID, which the client binds from a new
//! connection of its own with ConnectionBind. From then on that connection
//! carries the peer's bytes as they are. The runtime does the connecting
//! and the carrying; this decides, answers and keeps the IDs.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng as _;
use turnpike_stun::{
    Attr, AttrType, Class, ErrorCode, Family, Message, MessageType, MessageWriter, Method,
    TransactionId,
};

use super::{Answer, Output, Relays, Server, live};
use crate::auth::Verified;
use crate::connections::ConnectionId;
use crate::{AllocationId, FiveTuple};

/// How long a client has to bind a peer connection (RFC 6062 §5.2, §5.3);
/// the runtime holds an unbound peer connection this long.
pub const BIND_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// A Connect the runtime is carrying out: hand it back to
/// [`Server::connect_done`] with the outcome.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Where to connect (the peer's bound form, for another allocation).
    pub peer: SocketAddr,
    /// The client's control connection, where the answer goes.
    pub tuple: FiveTuple,
    /// The ID the connection gets if it is made.
    pub connection: ConnectionId,
    transaction: TransactionId,
    method_type: MessageType,
    auth: Verified,
    fingerprint: bool,
}

/// A peer's TCP connection to a relayed address, accepted: send
/// `out[..len]` (a ConnectionAttempt indication) to the client on
/// `control`, and hold the connection as `connection` until it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConnection {
    pub connection: ConnectionId,
    pub control: FiveTuple,
    pub len: usize,
}

impl<R: Relays> Server<R> {
    /// Connect (RFC 6062 §5.2): checks the request and, if it stands, asks
    /// the runtime to connect.
    pub(super) fn connect<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: Verified,
        out: &mut [u8],
    ) -> Output<'a, R::Socket> {
        let (id, peer, relayed) = match self.check_connect(now, tuple, msg, &auth) {
            Ok(found) => found,
            Err(code) => return self.error_output(msg, out, code, &auth),
        };
        let Some(connection) = self.new_connection_id(relayed, peer, &auth.username, None) else {
            return self.error_output(msg, out, ErrorCode::INSUFFICIENT_CAPACITY, &auth);
        };
        let request = ConnectRequest {
            peer: self.as_bound(peer),
            tuple: *tuple,
            connection,
            transaction: msg.transaction_id(),
            method_type: msg.typ(),
            auth,
            fingerprint: msg.has_fingerprint(),
        };
        match live(&self.slots, id, now).and_then(|a| a.relay(Family::of(&peer))) {
            Some(relay) => Output::Connect {
                socket: &relay.socket,
                request,
            },
            None => Output::None,
        }
    }

    fn check_connect(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
    ) -> Result<(AllocationId, SocketAddr, SocketAddr), ErrorCode> {
        let id = self.owned(now, tuple, auth)?;
        if !live(&self.slots, id, now).is_some_and(|a| a.tcp) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let peer = super::relay::peer_address(msg)?;
        self.admit(id, now, peer)?;
        let relayed = live(&self.slots, id, now)
            .and_then(|a| a.relay(Family::of(&peer)))
            .map(|r| r.relayed)
            .ok_or(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH)?;
        if self.shared.connections.has_peer(relayed, peer) {
            return Err(ErrorCode::CONNECTION_ALREADY_EXISTS);
        }
        Ok((id, peer, relayed))
    }

    /// The outcome of a Connect: the answer to send on the control
    /// connection, `out[..len]`, or nothing if the allocation is gone (the
    /// runtime then drops the connection).
    pub fn connect_done(
        &mut self,
        now: Instant,
        request: ConnectRequest,
        connected: bool,
        out: &mut [u8],
    ) -> Answer {
        let live_allocation = self
            .by_tuple
            .get(&request.tuple)
            .and_then(|&id| live(&self.slots, id, now))
            .is_some();
        if !live_allocation {
            self.shared.connections.remove(request.connection);
            return None;
        }
        let answer = |w: &mut MessageWriter<'_>| w.add(&Attr::ConnectionId(request.connection));
        if connected {
            self.shared
                .connections
                .connected(request.connection, now + BIND_WINDOW);
            self.respond_to(&request, out, request.method_type.success(), answer)
        } else {
            self.shared.connections.remove(request.connection);
            let code = ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE;
            self.stats.errors.add(super::error_label(code));
            self.respond_to(&request, out, request.method_type.error(), |w| {
                w.add(&Attr::ErrorCode {
                    code,
                    reason: code.reason(),
                })
            })
        }
    }

    /// A peer connected to a relayed address of allocation `id`, from
    /// `peer` (RFC 6062 §5.3): accepted only with a permission and past the
    /// policy, and never twice from the same peer address.
    pub fn peer_connected(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
        out: &mut [u8],
    ) -> Option<PeerConnection> {
        let peer = self.as_advertised(peer);
        let dest = self.as_bound(peer);
        let alloc = live(&self.slots, id, now).filter(|a| a.tcp)?;
        // The probe responder never connects out: a check allocation
        // takes no inbound connections.
        if alloc.restricted {
            self.stats
                .peer_denied
                .add(crate::policy::Denied::NotProbe.as_str());
            return None;
        }
        let relay = alloc.relay(Family::of(&peer))?;
        let (relayed, control, username) = (relay.relayed, alloc.tuple, alloc.username.clone());
        if !alloc.permits(peer.ip(), now) {
            self.stats.peer_dropped += 1;
            return None;
        }
        let relays = &self.relays;
        if let Err(denied) = self
            .shared
            .config
            .policy
            .check(peer, Some(relayed), |_| relays.is_relayed(dest))
        {
            self.stats.peer_denied.add(denied.as_str());
            return None;
        }
        if self.shared.connections.has_peer(relayed, peer) {
            return None;
        }
        let connection =
            self.new_connection_id(relayed, peer, &username, Some(now + BIND_WINDOW))?;
        let mut tid = TransactionId::default();
        self.rng.fill_bytes(&mut tid.0);
        let mut w = MessageWriter::new(
            out,
            MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication),
            tid,
        )
        .ok()?;
        w.add(&Attr::XorPeerAddress(peer)).ok()?;
        w.add(&Attr::ConnectionId(connection)).ok()?;
        Some(PeerConnection {
            connection,
            control,
            len: w.finish(),
        })
    }

    /// ConnectionBind (RFC 6062 §5.4), on a new connection of the client's
    /// that has no allocation: returns the ID to join and the answer.
    pub(super) fn connection_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Verified,
        out: &mut [u8],
    ) -> Result<(ConnectionId, usize), ErrorCode> {
        if !tuple.transport.is_stream() || self.by_tuple.contains_key(tuple) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let connection = match msg.get(AttrType::CONNECTION_ID) {
            Some(Ok(Attr::ConnectionId(id))) => id,
            _ => return Err(ErrorCode::BAD_REQUEST),
        };
        self.shared
            .connections
            .bind(connection, &auth.username, now)?;
        let len = self
            .respond(msg, out, msg.typ().success(), Some(auth), |_| Ok(()))
            .ok_or(ErrorCode::SERVER_ERROR)?;
        Ok((connection, len))
    }

    /// A fresh connection ID, recorded for the allocation at `relayed`.
    fn new_connection_id(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        owner: &str,
        waiting_until: Option<Instant>,
    ) -> Option<ConnectionId> {
        (0..8).find_map(|_| {
            let id = self.rng.next_u32();
            self.shared
                .connections
                .insert(id, relayed, peer, owner, waiting_until)
                .then_some(id)
        })
    }

    fn error_output<'a>(
        &mut self,
        msg: &Message<'_>,
        out: &mut [u8],
        code: ErrorCode,
        auth: &Verified,
    ) -> Output<'a, R::Socket> {
        match self.error(msg, out, code, Some(auth), |_| Ok(())) {
            Some(len) => Output::Reply(len),
            None => Output::None,
        }
    }

    /// Bytes a TCP relay carried for one peer connection, counted into the
    /// traffic figures when the connection ends.
    pub fn tcp_relayed(&mut self, to_peer_bytes: u64, to_client_bytes: u64) {
        self.stats.traffic.to_peer_bytes += to_peer_bytes;
        self.stats.traffic.to_client_bytes += to_client_bytes;
    }

    /// Answers a request that is no longer at hand, from what was kept.
    fn respond_to(
        &self,
        request: &ConnectRequest,
        out: &mut [u8],
        typ: MessageType,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), turnpike_stun::EncodeError>,
    ) -> Answer {
        let mut w = MessageWriter::new(out, typ, request.transaction).ok()?;
        body(&mut w).ok()?;
        self.sign(&mut w, Some(&request.auth), request.fingerprint)?;
        Some(w.finish())
    }
}

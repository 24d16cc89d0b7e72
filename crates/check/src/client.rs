//! A small STUN/TURN client for checks: Binding, and an allocation with
//! long-term credentials (RFC 8489 §9.2, RFC 8656), over UDP or a stream.

use std::net::SocketAddr;

use rand::RngExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;
use tokio::time::{Duration, Instant};
use turnpike_stun::framing::{Deframer, MAX_FRAME};
use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithm,
    TransactionId,
};

use crate::net::{Failure, Step, Stream};

/// Where the messages go: a connected UDP socket, or a TCP/TLS stream.
pub(crate) enum Link {
    /// The socket, and whether an ICMP error said the port is closed.
    Udp(UdpSocket, bool),
    Stream(Stream, Box<Deframer>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Udp(..) => "Link::Udp",
            Self::Stream(..) => "Link::Stream",
        })
    }
}

impl Link {
    /// A UDP socket connected to `server`.
    pub(crate) async fn udp(server: SocketAddr) -> Result<Self, Failure> {
        let socket = crate::net::udp_socket_for(server.ip()).await?;
        socket
            .connect(server)
            .await
            .map_err(|e| Failure::new(Step::Connect, format!("{server}: {e}")))?;
        Ok(Self::Udp(socket, false))
    }

    pub(crate) fn stream(stream: Stream) -> Self {
        Self::Stream(stream, Box::new(Deframer::new()))
    }

    fn is_stream(&self) -> bool {
        matches!(self, Self::Stream(..))
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Udp(s, _) => s.send(bytes).await.map(drop),
            Self::Stream(s, _) => s.write_all(bytes).await,
        }
    }

    /// The next message, or `None` at the deadline (or when the stream
    /// ends or breaks).
    async fn recv(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        match self {
            Self::Udp(s, refused) => {
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    match tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
                        Ok(Ok(n)) => {
                            buf.truncate(n);
                            return Some(buf);
                        }
                        // ICMP port unreachable: nothing listens there, or
                        // a firewall rejects (rather than drops).
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            *refused = true;
                            return None;
                        }
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Err(_) => return None,
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
            }
            Self::Stream(s, frames) => loop {
                if let Some(m) = frames.next_message().ok()? {
                    return Some(m.to_vec());
                }
                let n = tokio::time::timeout_at(deadline, s.read(frames.room()))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                frames.filled(n);
            },
        }
    }
}

/// A response, owned.
#[derive(Debug, Clone)]
pub(crate) struct Response(Vec<u8>);

impl Response {
    pub(crate) fn msg(&self) -> Option<Message<'_>> {
        Message::parse(&self.0).ok()
    }

    pub(crate) fn code(&self) -> Option<u16> {
        match self.msg()?.get(AttrType::ERROR_CODE) {
            Some(Ok(Attr::ErrorCode { code, .. })) => Some(code.0),
            _ => None,
        }
    }

    fn text(&self, t: AttrType) -> Option<String> {
        match self.msg()?.get(t)? {
            Ok(Attr::Realm(s) | Attr::Nonce(s)) => Some(s.to_owned()),
            _ => None,
        }
    }

    pub(crate) fn address(&self, t: AttrType) -> Option<SocketAddr> {
        match self.msg()?.get(t)? {
            Ok(
                Attr::XorMappedAddress(a) | Attr::XorRelayedAddress(a) | Attr::XorPeerAddress(a),
            ) => Some(a),
            _ => None,
        }
    }
}

/// A STUN/TURN client on one link.
#[derive(Debug)]
pub(crate) struct Client {
    link: Link,
    credentials: Option<(String, String)>,
    realm: Option<String>,
    nonce: Option<String>,
}

impl Client {
    pub(crate) fn new(link: Link, credentials: Option<(String, String)>) -> Self {
        Self {
            link,
            credentials,
            realm: None,
            nonce: None,
        }
    }

    fn build(
        &self,
        method: Method,
        class: Class,
        attrs: &[Attr<'_>],
    ) -> Result<(TransactionId, Vec<u8>), Failure> {
        let encode = |e: turnpike_stun::EncodeError| Failure::new(Step::Protocol, e.to_string());
        let mut tid = TransactionId::default();
        rand::rng().fill(&mut tid.0);
        let mut buf = vec![0u8; 1500];
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(method, class), tid).map_err(encode)?;
        for a in attrs {
            w.add(a).map_err(encode)?;
        }
        if let (Some((user, password)), Some(realm), Some(nonce)) =
            (&self.credentials, &self.realm, &self.nonce)
        {
            w.add(&Attr::Username(user)).map_err(encode)?;
            w.add(&Attr::Realm(realm)).map_err(encode)?;
            w.add(&Attr::Nonce(nonce)).map_err(encode)?;
            let key = LongTermKey::derive(PasswordAlgorithm::MD5, user, realm, password)
                .ok_or_else(|| {
                    Failure::new(
                        Step::Protocol,
                        "the credentials cannot be used with this realm",
                    )
                })?;
            w.message_integrity(key.as_bytes()).map_err(encode)?;
        }
        w.fingerprint().map_err(encode)?;
        let len = w.finish();
        buf.truncate(len);
        Ok((tid, buf))
    }

    /// Sends a request and waits for its response, retransmitting over UDP
    /// (RFC 8489 §6.2.1, from 250 ms, doubling) until the deadline.
    pub(crate) async fn transaction(
        &mut self,
        method: Method,
        attrs: &[Attr<'_>],
        deadline: Instant,
    ) -> Result<Response, Failure> {
        let (tid, bytes) = self.build(method, Class::Request, attrs)?;
        let mut rto = Duration::from_millis(250);
        loop {
            self.link
                .send(&bytes)
                .await
                .map_err(|e| Failure::new(Step::Connect, e.to_string()))?;
            let wait = if self.link.is_stream() {
                deadline
            } else {
                (Instant::now() + rto).min(deadline)
            };
            while let Some(got) = self.link.recv(wait).await {
                if Message::parse(&got).is_ok_and(|m| m.transaction_id() == tid) {
                    return Ok(Response(got));
                }
            }
            if matches!(self.link, Link::Udp(_, true)) {
                return Err(Failure::new(
                    Step::Connect,
                    "refused (ICMP port unreachable): nothing listens there, or a firewall rejects it",
                ));
            }
            if Instant::now() >= deadline || self.link.is_stream() {
                return Err(Failure::new(Step::Connect, "no answer"));
            }
            rto *= 2;
        }
    }

    /// A request, with the 401/438 round trip clients do (RFC 8489 §9.2).
    pub(crate) async fn request(
        &mut self,
        method: Method,
        attrs: &[Attr<'_>],
        deadline: Instant,
    ) -> Result<Response, Failure> {
        let mut response = self.transaction(method, attrs, deadline).await?;
        for _ in 0..2 {
            if !matches!(response.code(), Some(401 | 438)) || self.credentials.is_none() {
                break;
            }
            let nonce = response.text(AttrType::NONCE);
            if nonce.is_none() || nonce == self.nonce && response.code() == Some(401) {
                break;
            }
            self.nonce = nonce;
            if let Some(realm) = response.text(AttrType::REALM) {
                self.realm = Some(realm);
            }
            response = self.transaction(method, attrs, deadline).await?;
        }
        Ok(response)
    }

    /// Sends an indication (no answer comes).
    pub(crate) async fn indicate(
        &mut self,
        method: Method,
        attrs: &[Attr<'_>],
    ) -> Result<(), Failure> {
        let (_, bytes) = self.build(method, Class::Indication, attrs)?;
        self.link
            .send(&bytes)
            .await
            .map_err(|e| Failure::new(Step::Connect, e.to_string()))
    }

    /// The next Data indication: its peer and data.
    pub(crate) async fn data(&mut self, deadline: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        while let Some(got) = self.link.recv(deadline).await {
            let Ok(msg) = Message::parse(&got) else {
                continue;
            };
            if msg.method() != Method::DATA || msg.class() != Class::Indication {
                continue;
            }
            if let (Some(Ok(Attr::XorPeerAddress(peer))), Some(Ok(Attr::Data(data)))) =
                (msg.get(AttrType::XOR_PEER_ADDRESS), msg.get(AttrType::DATA))
            {
                return Some((peer, data.to_vec()));
            }
        }
        None
    }
}

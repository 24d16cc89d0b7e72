//! Shared by the integration tests: the real `turnpike` binary on loopback,
//! and a small blocking TURN client built on the project's STUN codec.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stdout
)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithm,
    TransactionId,
};

pub const REALM: &str = "turnpike.test";

/// A `turnpike serve` process, stopped with SIGTERM when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// The first UDP listener, as the server reported it.
    pub addr: SocketAddr,
    /// Everything the server printed on stdout up to "listening".
    pub banner: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    state: tempfile::TempDir,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_turnpike"))
}

impl ServerProcess {
    /// Starts the server with `args` after `serve`, on a loopback port the
    /// system picks, with a private state directory.
    pub fn start(args: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .args(args)
            .arg("--state-dir")
            .arg(state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("TURNPIKE_LOG", "info");
        if !args.contains(&"--listen") && !args.contains(&"--config") {
            cmd.args(["--listen", "udp://127.0.0.1:0"]);
        }
        let mut child = cmd.spawn().expect("the turnpike binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .strip_prefix("listening: udp ")
                        .map(|a| a.parse().unwrap());
                    banner.push(line);
                    if let Some(addr) = found {
                        break addr;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let err = stderr.join().unwrap_or_default();
                    panic!("the server did not start; stdout: {banner:?}\nstderr: {err}");
                }
            }
        };
        // Keep reading the rest of the banner.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            banner.push(line);
        }
        Self {
            child: Some(child),
            addr,
            banner,
            stderr: Some(stderr),
            state,
        }
    }

    /// The server's state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits; returns the exit code and everything the
    /// server logged.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.code(), log)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The arguments for a server on loopback with the test users, relaying
/// on 127.0.0.1, loopback peers allowed.
pub fn loopback_args() -> Vec<&'static str> {
    vec![
        "--realm",
        REALM,
        "--relay-address",
        "127.0.0.1",
        "--user",
        "alice:wonderland",
        "--secret",
        "a-rest-api-secret",
        "--threads",
        "2",
    ]
}

/// An error code from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u16);

/// A response, owned.
#[derive(Debug, Clone)]
pub struct Response(pub Vec<u8>);

impl Response {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.0).unwrap()
    }

    pub fn code(&self) -> Option<u16> {
        match self.msg().get(AttrType::ERROR_CODE) {
            Some(Ok(Attr::ErrorCode { code, .. })) => Some(code.0),
            _ => None,
        }
    }
}

/// A blocking TURN client over UDP: one 5-tuple, long-term credentials.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    nonce: Option<String>,
    realm: String,
    next: u32,
}

impl TurnClient {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Self {
            socket,
            server,
            username: username.into(),
            password: password.into(),
            nonce: None,
            realm: REALM.into(),
            next: 0,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn tid(&mut self) -> TransactionId {
        self.next += 1;
        let mut t = [0x5A; 12];
        t[..4].copy_from_slice(&self.next.to_be_bytes());
        t[4..8].copy_from_slice(&std::process::id().to_be_bytes());
        TransactionId(t)
    }

    fn key(&self) -> LongTermKey {
        LongTermKey::derive(
            PasswordAlgorithm::MD5,
            &self.username,
            &self.realm,
            &self.password,
        )
        .unwrap()
    }

    /// Builds a request; signed once a nonce is known.
    pub fn build(&mut self, method: Method, attrs: &[Attr<'_>]) -> (TransactionId, Vec<u8>) {
        let tid = self.tid();
        let mut buf = vec![0u8; 2048];
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid).unwrap();
        for a in attrs {
            w.add(a).unwrap();
        }
        if let Some(nonce) = self.nonce.clone() {
            w.add(&Attr::Username(&self.username)).unwrap();
            w.add(&Attr::Realm(&self.realm)).unwrap();
            w.add(&Attr::Nonce(&nonce)).unwrap();
            w.message_integrity(self.key().as_bytes()).unwrap();
        }
        w.fingerprint().unwrap();
        let len = w.finish();
        buf.truncate(len);
        (tid, buf)
    }

    /// Sends raw bytes and waits for the STUN response with `tid`,
    /// retransmitting (RFC 8489 §6.2.1), skipping anything else.
    pub fn exchange(&self, tid: TransactionId, bytes: &[u8]) -> Option<Response> {
        let mut buf = [0u8; 4096];
        for _ in 0..7 {
            self.socket.send_to(bytes, self.server).unwrap();
            let deadline = Instant::now() + Duration::from_millis(300);
            while Instant::now() < deadline {
                let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                    break;
                };
                if let Ok(msg) = Message::parse(&buf[..n])
                    && msg.transaction_id() == tid
                {
                    return Some(Response(buf[..n].to_vec()));
                }
            }
        }
        None
    }

    /// A request, with the 401/438 round trip done as clients do.
    pub fn request(&mut self, method: Method, attrs: &[Attr<'_>]) -> Response {
        for _ in 0..3 {
            let (tid, bytes) = self.build(method, attrs);
            let response = self.exchange(tid, &bytes).expect("the server answers");
            if matches!(response.code(), Some(401 | 438))
                && let Some(Ok(Attr::Nonce(n))) = response.msg().get(AttrType::NONCE)
                && self.nonce.as_deref() != Some(n)
            {
                self.nonce = Some(n.to_owned());
                continue;
            }
            return response;
        }
        panic!("authentication did not converge")
    }

    pub fn allocate(&mut self) -> SocketAddr {
        let r = self.request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
        match r.msg().get(AttrType::XOR_RELAYED_ADDRESS) {
            Some(Ok(Attr::XorRelayedAddress(a))) => a,
            _ => panic!("allocate failed: {:?}", r.code()),
        }
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), u16> {
        let attrs: Vec<Attr<'_>> = peers.iter().map(|p| Attr::XorPeerAddress(*p)).collect();
        match self.request(Method::CREATE_PERMISSION, &attrs).code() {
            None => Ok(()),
            Some(code) => Err(code),
        }
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        match self
            .request(
                Method::CHANNEL_BIND,
                &[Attr::ChannelNumber(channel), Attr::XorPeerAddress(peer)],
            )
            .code()
        {
            None => Ok(()),
            Some(code) => Err(code),
        }
    }

    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let tid = self.tid();
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::SEND, Class::Indication),
            tid,
        )
        .unwrap();
        w.add(&Attr::XorPeerAddress(peer)).unwrap();
        w.add(&Attr::Data(data)).unwrap();
        let len = w.finish();
        self.socket.send_to(&buf[..len], self.server).unwrap();
    }

    pub fn send_channel(&self, channel: u16, data: &[u8]) {
        let mut msg = channel.to_be_bytes().to_vec();
        msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
        msg.extend_from_slice(data);
        self.socket.send_to(&msg, self.server).unwrap();
    }

    /// The next datagram from the server, within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    }
}

/// A UDP echo peer on loopback, in a thread; stops after `limit` datagrams
/// or 60 s.
pub fn echo_peer(limit: usize) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut seen = 0;
        let end = Instant::now() + Duration::from_secs(60);
        while seen < limit && Instant::now() < end {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                seen += 1;
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

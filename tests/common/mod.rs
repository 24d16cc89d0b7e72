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

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithm,
    TransactionId,
};

pub mod browser;

pub const REALM: &str = "turnpike.test";

/// Says why a test is skipped: something it needs is missing. Under
/// `CI=true` that is a failure: CI must not skip silently.
pub fn skip(why: &str) {
    let message = format!("SKIPPED: {why}; run scripts/test-deps");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    // Straight to stderr: the test harness captures `eprintln!` of a test
    // that passes, and a skip should show.
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Unwraps what a test needs, or returns from the test after saying why it
/// is skipped (a failure under CI).
#[macro_export]
macro_rules! require {
    ($need:expr) => {
        match $need {
            Ok(found) => found,
            Err(why) => {
                $crate::common::skip(&why);
                return;
            }
        }
    };
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The program `name` on PATH; the error names the Debian `package`.
pub fn on_path(name: &str, package: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{name} is not on PATH (Debian package {package})"))
}

/// `name` in each target directory scripts/test-deps may have installed
/// into: CARGO_TARGET_DIR's (a relative one taken from the repo root), then
/// the repo's own `target`.
pub fn in_target_dirs(name: &str) -> Vec<PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(manifest.join(dir).join(name));
    }
    candidates.push(manifest.join("target").join(name));
    candidates
}

/// The Python of the virtualenv scripts/test-deps makes in the target
/// directory, if it can import `module`.
pub fn venv_python(module: &str) -> Result<PathBuf, String> {
    let candidates = in_target_dirs("test-venv/bin/python");
    for python in &candidates {
        let imports = Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if imports {
            return Ok(python.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "no Python that imports {module} at {}",
        tried.join(" or ")
    ))
}

/// A program's run, as [`run_with_limit`] saw it.
pub struct Finished {
    /// `None` when it was stopped for taking too long.
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` with its output captured; if it runs longer than `limit`,
/// `stop` ends it (and whatever it started), so that a program that hangs
/// fails the test instead of hanging it.
pub fn run_with_limit(
    cmd: &mut Command,
    limit: Duration,
    stop: impl FnOnce(&mut Child),
) -> Finished {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let mut stop = Some(stop);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            if let Some(stop) = stop.take() {
                stop(&mut child);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: started.elapsed(),
    }
}

/// Stops `server` and returns its log, after checking that it exited
/// cleanly and logged nothing at warning level or above.
pub fn stop_cleanly(server: ServerProcess) -> String {
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "the server exits cleanly:\n{log}");
    assert!(
        !log.contains(" WARN ") && !log.contains(" ERROR "),
        "the server warned:\n{log}"
    );
    log
}

/// The lines of `log` that contain `what`.
pub fn lines_with(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// A `turnpike serve` process, stopped with SIGTERM when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// The first UDP listener, as the server reported it.
    pub addr: SocketAddr,
    /// Every listener: transport ("udp", "tcp", "tls", "http") and address.
    pub listening: Vec<(String, SocketAddr)>,
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
        Self::start_command(Command::new(binary()), args)
    }

    /// Starts the server as [`ServerProcess::start`] does, in the network
    /// namespace `netns` (`ip netns exec`, which becomes the server: its
    /// process id is the server's).
    pub fn start_in(netns: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(binary());
        Self::start_command(cmd, args)
    }

    fn start_command(mut cmd: Command, args: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
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
        // SIGTERM stops at once (tests/drain.rs tests draining).
        if !args.contains(&"--drain-timeout") {
            cmd.args(["--drain-timeout", "0"]);
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
        // The listeners come first, then the relay line.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with("relaying:");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let err = stderr.join().unwrap_or_default();
                    panic!("the server did not start; stdout: {banner:?}\nstderr: {err}");
                }
            }
        }
        // Keep reading the rest of the banner.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            banner.push(line);
        }
        let listening: Vec<(String, SocketAddr)> = banner
            .iter()
            .filter_map(|l| l.strip_prefix("listening: "))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
            })
            .collect();
        let addr = listening
            .iter()
            .find(|(t, _)| t == "udp")
            .or(listening.first())
            .map(|(_, a)| *a)
            .expect("a listener");
        Self {
            child: Some(child),
            addr,
            listening,
            banner,
            stderr: Some(stderr),
            state,
        }
    }

    /// The server's state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    /// Starts the server listening on UDP, TCP and TLS on loopback.
    pub fn start_every_transport(args: &[&str]) -> Self {
        let mut all = args.to_vec();
        all.extend([
            "--listen",
            "udp://127.0.0.1:0",
            "--listen",
            "tcp://127.0.0.1:0",
            "--listen",
            "tls://127.0.0.1:0",
            "--http-address",
            "127.0.0.1:0",
        ]);
        Self::start(&all)
    }

    /// `/metrics`, read until `ready` holds or `deadline` passes (shards
    /// report once a second).
    pub fn metrics_when(&self, deadline: Instant, ready: impl Fn(&str) -> bool) -> String {
        let http = self
            .listening
            .iter()
            .find(|(t, _)| t == "http")
            .map(|(_, a)| *a)
            .expect("an HTTP listener");
        loop {
            let (status, body) = http_get(http, "/metrics");
            assert_eq!(status, 200);
            if ready(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never got there:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where to reach the server `via` a transport.
    pub fn addr_for(&self, via: Via) -> SocketAddr {
        let want = match via {
            Via::Udp => "udp",
            Via::Tcp => "tcp",
            Via::Tls { .. } => "tls",
        };
        self.listening
            .iter()
            .find(|(t, _)| t == want)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {want} listener in {:?}", self.listening))
    }

    /// A client for this server.
    pub fn client(&self, via: Via, username: &str, password: &str) -> TurnClient {
        TurnClient::via(via, self.addr_for(via), username, password)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits; returns the exit code and everything the
    /// server logged.
    pub fn stop(self) -> (Option<i32>, String) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    /// Sends a signal ("TERM", "INT", "HUP").
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, killing it after `limit`; returns
    /// the exit code (`None` when it had to be killed) and everything the
    /// server logged.
    pub fn wait_exit(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.and_then(|s| s.code()), log)
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// The plain-HTTP listener (`--http-address`), if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listening
            .iter()
            .find(|(t, _)| t == "http")
            .map(|(_, a)| *a)
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

/// Every way to reach a server.
pub const EVERY_TRANSPORT: [Via; 4] = [
    Via::Udp,
    Via::Tcp,
    Via::Tls { alpn: false },
    Via::Tls { alpn: true },
];

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

/// How a test client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    Tcp,
    /// TLS, naming `stun.turn` in ALPN or nothing.
    Tls {
        alpn: bool,
    },
}

/// The client's side of its 5-tuple.
pub enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Link {
    /// Connects to `server` as `via` says.
    pub fn open(via: Via, server: SocketAddr) -> Self {
        match via {
            Via::Udp => {
                let local = if server.is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let socket = UdpSocket::bind(local).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                Self::Udp(socket)
            }
            Via::Tcp => Self::Tcp(tcp(server)),
            Via::Tls { alpn } => {
                let stream = tcp(server);
                let mut config = tls_client_config();
                if alpn {
                    config.alpn_protocols = vec![b"stun.turn".to_vec()];
                }
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                // Finish the handshake now, so its failures show here.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
                }
                Self::Tls(Box::new(tls))
            }
        }
    }

    fn local(&self) -> SocketAddr {
        match self {
            Self::Udp(s) => s.local_addr().unwrap(),
            Self::Tcp(s) => s.local_addr().unwrap(),
            Self::Tls(s) => s.sock.local_addr().unwrap(),
        }
    }

    fn is_stream(&self) -> bool {
        !matches!(self, Self::Udp(_))
    }

    /// Sends one message; errors (a closed connection) are returned.
    pub fn send(&mut self, server: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Udp(s) => s.send_to(bytes, server).map(|_| ()),
            Self::Tcp(s) => s.write_all(bytes),
            Self::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }

    /// Reads what arrived, up to `buf.len()`; `Ok(0)` on a closed stream,
    /// `Err(WouldBlock|TimedOut)` when nothing came within the read timeout.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Udp(s) => s.recv_from(buf).map(|(n, _)| n),
            Self::Tcp(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

fn tcp(server: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A TLS client that accepts any certificate: the tests talk to their own
/// server, whose certificate is self-signed.
pub fn tls_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let _ = end_entity;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate a TLS server at `addr` presents to a new handshake.
pub fn tls_certificate(addr: SocketAddr) -> Vec<u8> {
    match Link::open(Via::Tls { alpn: false }, addr) {
        Link::Tls(tls) => tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A blocking TURN client: one 5-tuple over UDP, TCP or TLS, long-term
/// credentials.
pub struct TurnClient {
    pub link: Link,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    nonce: Option<String>,
    realm: String,
    next: u32,
    /// Stream bytes read but not yet a whole message.
    pending: Vec<u8>,
}

impl TurnClient {
    /// A client over UDP.
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        Self::via(Via::Udp, server, username, password)
    }

    pub fn via(via: Via, server: SocketAddr, username: &str, password: &str) -> Self {
        Self {
            link: Link::open(via, server),
            server,
            username: username.into(),
            password: password.into(),
            nonce: None,
            realm: REALM.into(),
            next: 0,
            pending: Vec::new(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.link.local()
    }

    /// The certificate the server presented, over TLS.
    pub fn certificate(&self) -> Vec<u8> {
        match &self.link {
            Link::Tls(tls) => tls
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
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

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.link.send(self.server, bytes);
    }

    /// Sends a request and waits for the STUN response with `tid`,
    /// retransmitting over UDP (RFC 8489 §6.2.1), skipping anything else.
    pub fn exchange(&mut self, tid: TransactionId, bytes: &[u8]) -> Option<Response> {
        let tries = if self.link.is_stream() { 1 } else { 7 };
        let wait = if self.link.is_stream() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(300)
        };
        for _ in 0..tries {
            self.link.send(self.server, bytes).ok()?;
            let deadline = Instant::now() + wait;
            while let Some(got) = self.recv(deadline.saturating_duration_since(Instant::now())) {
                if let Ok(msg) = Message::parse(&got)
                    && msg.transaction_id() == tid
                {
                    return Some(Response(got));
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
        self.send_raw(&buf[..len]);
    }

    /// ChannelData, padded to four bytes on streams (RFC 8656 §12.5).
    pub fn send_channel(&mut self, channel: u16, data: &[u8]) {
        let mut msg = channel.to_be_bytes().to_vec();
        msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
        msg.extend_from_slice(data);
        if self.link.is_stream() {
            msg.resize(msg.len().next_multiple_of(4), 0);
        }
        self.send_raw(&msg);
    }

    /// The next message from the server, within `timeout`: a datagram, or
    /// a message framed out of the stream (ChannelData without padding).
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            if self.link.is_stream()
                && let Ok(Some(len)) = turnpike_stun::framing::frame_len(&self.pending)
                && self.pending.len() >= len
            {
                let mut msg: Vec<u8> = self.pending.drain(..len).collect();
                if let Ok(cd) = turnpike_stun::channel_data::parse(&msg) {
                    let unpadded = 4 + cd.payload.len();
                    msg.truncate(unpadded);
                }
                return Some(msg);
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.link.read(&mut buf) {
                Ok(0) if self.link.is_stream() => return None,
                Ok(n) if !self.link.is_stream() => return Some(buf[..n].to_vec()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// An RFC 6062 TCP allocation: its relayed address, or the error code.
    pub fn allocate_tcp(&mut self) -> Result<SocketAddr, u16> {
        let r = self.request(Method::ALLOCATE, &[Attr::RequestedTransport(6)]);
        match (r.code(), r.msg().get(AttrType::XOR_RELAYED_ADDRESS)) {
            (None, Some(Ok(Attr::XorRelayedAddress(a)))) => Ok(a),
            (code, _) => Err(code.unwrap_or(0)),
        }
    }

    /// RFC 6062 Connect: the new connection's ID, or the error code.
    pub fn connect(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let r = self.request(Method::CONNECT, &[Attr::XorPeerAddress(peer)]);
        match (r.code(), r.msg().get(AttrType::CONNECTION_ID)) {
            (None, Some(Ok(Attr::ConnectionId(id)))) => Ok(id),
            (code, _) => Err(code.unwrap_or(0)),
        }
    }

    /// RFC 6062 ConnectionBind on this (new) connection; from then on it
    /// carries the peer's bytes.
    pub fn connection_bind(&mut self, id: u32) -> Result<(), u16> {
        match self
            .request(Method::CONNECTION_BIND, &[Attr::ConnectionId(id)])
            .code()
        {
            None => Ok(()),
            Some(code) => Err(code),
        }
    }

    /// Raw bytes from the stream (after a ConnectionBind), what was read
    /// past the last message first, until `want` bytes are in or `timeout`
    /// passes.
    pub fn read_bytes(&mut self, want: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = std::mem::take(&mut self.pending);
        let mut buf = vec![0u8; 65536];
        while got.len() < want && Instant::now() < deadline {
            match self.link.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        got
    }

    /// Whether the server has closed this client's stream, within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.link.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// A plain HTTP/1.1 GET; returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "")
}

/// A plain HTTP/1.1 request; returns the status and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = request_text(method, path, headers, body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    parse_http(&response)
}

/// An HTTP/1.1 request that closes the connection after the answer.
fn request_text(method: &str, path: &str, headers: &[&str], body: &str) -> String {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

/// An HTTP/1.1 request over TLS, naming `alpn` (or nothing); returns the
/// status and the body.
pub fn https_request(
    addr: SocketAddr,
    alpn: Option<&[u8]>,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut config = tls_client_config();
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let request = request_text(method, path, headers, body);
    tls.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // A server that closes without close_notify still gave its answer.
    let _ = tls.read_to_end(&mut response);
    parse_http(&String::from_utf8_lossy(&response))
}

/// Status and body of a whole HTTP/1.1 response (fixed length or chunked).
pub fn parse_http(response: &str) -> (u16, String) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return (status, body.to_owned());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size.min(tail.len())]);
        rest = tail.get(size + 2..).unwrap_or("");
    }
    (status, out)
}

/// A UDP echo peer on loopback, in a thread; stops after `limit` datagrams
/// or 60 s.
pub fn echo_peer(limit: usize) -> SocketAddr {
    echo_peer_on("127.0.0.1:0", limit)
}

/// A UDP echo peer bound to `addr`.
pub fn echo_peer_on(addr: &str, limit: usize) -> SocketAddr {
    let socket = UdpSocket::bind(addr).unwrap();
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

/// A configuration file for `--config`, in a directory that lives as long
/// as this value.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: String,
}

pub fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnpike.toml");
    std::fs::write(&path, text).unwrap();
    ConfigFile {
        path: path.to_str().unwrap().to_owned(),
        _dir: dir,
    }
}

/// The value of a metric in Prometheus text: `name` unlabelled, the sum
/// over its labels, or one sample when `name` carries them.
pub fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `n` consecutive UDP ports free on 127.0.0.1 right now, below the
/// ephemeral range (so that the system hands none of them out meanwhile)
/// and away from the relay range.
pub fn free_udp_range(n: u16) -> (u16, u16) {
    for _ in 0..200 {
        let first: u16 = rand::random_range(20_000..30_000);
        let held: Result<Vec<UdpSocket>, _> = (first..first + n)
            .map(|p| UdpSocket::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return (first, first + n - 1);
        }
    }
    panic!("no {n} free consecutive UDP ports");
}

/// A loopback port where nothing listens, on UDP and TCP.
pub fn closed_port() -> u16 {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp);
    port
}

/// The name of [`relay_profile`]'s profile, as reports carry it.
pub const RELAY_PROFILE: &str = "Loopback relay";

/// A requirement profile (for `turnpike check --profile`) of a server's
/// TURN listeners on loopback: UDP required, TCP and TLS (named
/// `localhost`) as its fallbacks, and STUN.
pub fn relay_profile(udp: SocketAddr, tcp: SocketAddr, tls: SocketAddr) -> String {
    format!(
        r#"
[profile]
name = "{RELAY_PROFILE}"
source = "the test"

[[endpoint]]
id = "stun"
kind = "stun-udp"
host = "127.0.0.1"
port = {udp_port}
required = false

[[endpoint]]
id = "turn"
kind = "turn-udp"
host = "127.0.0.1"
port = {udp_port}

[[endpoint]]
id = "turn-tcp"
kind = "turn-tcp"
host = "127.0.0.1"
port = {tcp_port}
required = false
fallback_for = ["turn"]

[[endpoint]]
id = "turn-tls"
kind = "turn-tls"
host = "localhost"
port = {tls_port}
required = false
fallback_for = ["turn"]

[thresholds]
rtt_ms = {{ max = 150, source = "Sococo guide" }}
"#,
        udp_port = udp.port(),
        tcp_port = tcp.port(),
        tls_port = tls.port()
    )
}

/// The check `id` of a `turnpike check --json` report.
pub fn check_of<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {report:#}"))
}

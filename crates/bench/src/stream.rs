//! The TCP and TLS generator: one stream per allocation, each a task on
//! the thread's single-threaded tokio runtime. Requests are answered in
//! order on a stream, so setup is a plain sequence of exchanges; during a
//! phase each stream's task sends on its own schedule (staggered with the
//! others of the thread) and reads the echoes. The echo peer is a UDP
//! socket of the thread, as with the UDP generator.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{FirstByte, Message, channel_data, framing};

use crate::pacing::Schedule;
use crate::payload::{self, Payload};
use crate::proto::{self, Answer, Auth, Request};
use crate::run::{ChurnStats, Cmd, Event, Phase, PhaseStats, Shared, Work, unreachable};
use crate::{Error, Transport};

/// Streams being set up at once per thread.
const MAX_INFLIGHT: usize = 128;
/// How long a request may wait for its answer, or a connection for its
/// handshake.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A task this far behind its schedule skips packets.
const MAX_LAG_NS: u64 = 20_000_000;
/// Refresh allocations and channels at least this often.
const REFRESH_MAX_S: u64 = 120;

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// Checks that the server accepts TCP connections.
pub(crate) fn probe(server: SocketAddr, name: &str) -> Result<(), Error> {
    let transport = "tcp";
    StdTcpStream::connect_timeout(&server, Duration::from_secs(3))
        .map(drop)
        .map_err(|e| unreachable(name, transport, &e))
}

/// Accepts any certificate; the report says the server was not verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration: the CA in `ca`, or any certificate.
pub(crate) fn tls_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Failed(format!("TLS: {e}")))?;
    let mut config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Usage(format!("--ca {}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| Error::Usage(format!("--ca {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Usage(format!("--ca {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::Usage(format!(
                    "--ca {}: no certificate in the file",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    // RFC 7443: TURN over TLS.
    config.alpn_protocols = vec![b"stun.turn".to_vec()];
    Ok(Arc::new(config))
}

/// Why a stream's allocation did not go through.
#[derive(Debug)]
enum Fail {
    /// Stops the run.
    Fatal(String),
    /// Counts as a failed allocation.
    Alloc(String),
}

/// An answer, owned.
#[derive(Debug)]
enum Owned {
    Success {
        relayed: Option<SocketAddr>,
        lifetime: Option<u32>,
    },
    Challenge {
        code: u16,
        realm: Option<String>,
        nonce: String,
    },
    Error {
        code: u16,
        reason: String,
    },
}

fn owned(a: Answer<'_>) -> Option<Owned> {
    Some(match a {
        Answer::Success { relayed, lifetime } => Owned::Success { relayed, lifetime },
        Answer::Challenge { code, realm, nonce } => Owned::Challenge {
            code,
            realm: realm.map(str::to_owned),
            nonce: nonce.to_owned(),
        },
        Answer::Error { code, reason } => Owned::Error {
            code,
            reason: reason.to_owned(),
        },
        Answer::Other => return None,
    })
}

/// What a thread's tasks share.
struct Ctx {
    shared: Arc<Shared>,
    id: u16,
    peer: SocketAddr,
    stats: RefCell<PhaseStats>,
    window: Cell<(u64, u64)>,
    churn: RefCell<ChurnStats>,
    fatal: RefCell<Option<String>>,
}

impl Ctx {
    fn set_fatal(&self, m: String) {
        let mut f = self.fatal.borrow_mut();
        if f.is_none() {
            *f = Some(m);
        }
        self.shared.abort.store(true, Ordering::Relaxed);
    }
}

/// One allocation's stream.
struct Conn {
    io: Box<dyn Io>,
    rbuf: Vec<u8>,
    /// Bytes of `rbuf` read and not yet framed.
    filled: usize,
    wbuf: Vec<u8>,
    slot: u32,
    global: u32,
    realm: String,
    nonce: String,
    key: Option<LongTermKey>,
    counter: u32,
    seq: u32,
    refresh_at_ns: u64,
    /// Requests sent during a phase whose answers are awaited.
    pending: Vec<(turnpike_stun::TransactionId, Request)>,
}

impl Conn {
    /// Connects (from the loopback source address of `source` when the
    /// server is on IPv4 loopback, so that each stream has its own, as over
    /// UDP) and does the TLS handshake.
    async fn connect(ctx: &Ctx, slot: u32, global: u32, source: u64) -> Result<Self, Fail> {
        let shared = &ctx.shared;
        let name = shared.host.as_str();
        let connect = async {
            match shared.server {
                SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                    let socket = TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::from((crate::udp::source_ip(source), 0)))?;
                    socket.connect(shared.server).await
                }
                server => TcpStream::connect(server).await,
            }
        };
        let tcp = tokio::time::timeout(ANSWER_TIMEOUT, connect)
            .await
            .map_err(|_| Fail::Alloc("TCP connect timed out".into()))?
            .map_err(|e| Fail::Alloc(format!("TCP connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match (&shared.transport, &shared.tls) {
            (Transport::Tls, Some(config)) => {
                let server_name = ServerName::try_from(name.to_owned())
                    .map_err(|e| Fail::Fatal(format!("TLS server name {name}: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let tls = tokio::time::timeout(ANSWER_TIMEOUT, connector.connect(server_name, tcp))
                    .await
                    .map_err(|_| Fail::Alloc("TLS handshake timed out".into()))?
                    .map_err(|e| {
                        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                            Fail::Fatal(format!("TLS handshake with {name}: {e}"))
                        } else {
                            Fail::Alloc(format!("TLS handshake: {e}"))
                        }
                    })?;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        Ok(Self {
            io,
            rbuf: vec![0; framing::MAX_FRAME + 4],
            filled: 0,
            wbuf: Vec::with_capacity(4096),
            slot,
            global,
            realm: String::new(),
            nonce: String::new(),
            key: None,
            counter: 0,
            seq: 0,
            refresh_at_ns: u64::MAX,
            pending: Vec::new(),
        })
    }

    /// Writes `req` (signed once a nonce is known); returns its ID.
    async fn send(
        &mut self,
        ctx: &Ctx,
        req: Request,
    ) -> Result<turnpike_stun::TransactionId, Fail> {
        let shared = &ctx.shared;
        self.counter = self.counter.wrapping_add(1);
        let tid = proto::transaction_id(ctx.id, self.slot, self.counter, shared.tid_tag);
        let mut buf = [0u8; 1024];
        let auth = match (&self.key, self.nonce.is_empty()) {
            (Some(k), false) => Some(Auth {
                username: &shared.username,
                realm: &self.realm,
                nonce: &self.nonce,
                key: k,
            }),
            _ => None,
        };
        let len = proto::encode(&mut buf, tid, req, auth.as_ref())
            .map_err(|e| Fail::Fatal(format!("cannot encode a request: {e}")))?;
        self.io
            .write_all(buf.get(..len).unwrap_or_default())
            .await
            .map_err(|e| Fail::Alloc(format!("write: {e}")))?;
        Ok(tid)
    }

    /// The next whole message on the stream (a ChannelData message without
    /// its padding), copied into `out`.
    async fn next_frame(&mut self, out: &mut Vec<u8>) -> Result<(), Fail> {
        loop {
            let have = self.rbuf.get(..self.filled).unwrap_or_default();
            match framing::frame_len(have) {
                Ok(Some(len)) if len <= self.filled => {
                    out.clear();
                    out.extend_from_slice(self.rbuf.get(..len).unwrap_or_default());
                    self.rbuf.copy_within(len..self.filled, 0);
                    self.filled -= len;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(Fail::Alloc(format!("stream: {e}"))),
            }
            let n = self
                .io
                .read(self.rbuf.get_mut(self.filled..).unwrap_or_default())
                .await
                .map_err(|e| Fail::Alloc(format!("read: {e}")))?;
            if n == 0 {
                return Err(Fail::Alloc("the server closed the connection".into()));
            }
            self.filled += n;
        }
    }

    /// Sends `req` and waits for its answer, skipping anything else.
    async fn exchange(&mut self, ctx: &Ctx, req: Request) -> Result<Owned, Fail> {
        let tid = self.send(ctx, req).await?;
        let mut frame = Vec::new();
        let wait = async {
            loop {
                self.next_frame(&mut frame).await?;
                if let Ok(msg) = Message::parse(&frame)
                    && msg.transaction_id() == tid
                    && let Some(a) = owned(proto::answer(&msg))
                {
                    return Ok(a);
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, wait)
            .await
            .map_err(|_| Fail::Alloc(format!("{}: no answer", req.method().name())))?
    }

    /// A request, with the 401 and 438 round trips.
    async fn request(
        &mut self,
        ctx: &Ctx,
        req: Request,
    ) -> Result<(Option<SocketAddr>, Option<u32>), Fail> {
        let method = req.method();
        let mut stale = 0;
        loop {
            let authed = !self.nonce.is_empty();
            match self.exchange(ctx, req).await? {
                Owned::Success { relayed, lifetime } => return Ok((relayed, lifetime)),
                Owned::Challenge { code, realm, nonce } => {
                    if code == 401 && authed && (stale > 0 || nonce == self.nonce) {
                        return Err(Fail::Fatal(
                            proto::fatal(method, 401, "Unauthenticated").unwrap_or_default(),
                        ));
                    }
                    stale += 1;
                    if stale > 4 {
                        return Err(Fail::Alloc("authentication did not converge".into()));
                    }
                    if let Some(r) = realm
                        && (r != self.realm || self.key.is_none())
                    {
                        self.key = proto::key(&ctx.shared.username, &r, &ctx.shared.password);
                        self.realm = r;
                    }
                    self.nonce = nonce;
                }
                Owned::Error { code, reason } => {
                    if req == Request::Refresh(Some(0)) && code == 437 {
                        return Ok((None, None));
                    }
                    return Err(match proto::fatal(method, code, &reason) {
                        Some(f) => Fail::Fatal(f),
                        None => Fail::Alloc(format!("{}: {code} {reason}", method.name())),
                    });
                }
            }
        }
    }

    /// Allocate, CreatePermission, ChannelBind.
    async fn setup(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        let (relayed, lifetime) = self.request(ctx, Request::Allocate).await?;
        if !matches!(relayed, Some(SocketAddr::V4(_))) {
            return Err(Fail::Alloc(
                "Allocate: no IPv4 XOR-RELAYED-ADDRESS in the answer".into(),
            ));
        }
        self.request(ctx, Request::Permission(ctx.peer)).await?;
        self.request(ctx, Request::Bind(ctx.peer)).await?;
        self.refresh_at_ns = refresh_at(ctx.shared.now_ns(), lifetime);
        Ok(())
    }

    /// Streams for a phase; `offset_ns` staggers this stream's schedule
    /// against the others of the thread.
    async fn phase(mut self, ctx: Rc<Ctx>, p: Phase, offset_ns: u64) -> Self {
        if let Err(Fail::Fatal(f)) = self.stream(&ctx, &p, offset_ns).await {
            ctx.set_fatal(f);
        }
        self
    }

    async fn stream(&mut self, ctx: &Ctx, p: &Phase, offset_ns: u64) -> Result<(), Fail> {
        let shared = Arc::clone(&ctx.shared);
        let size = shared.size;
        let mut schedule = Schedule::new(p.start_ns + offset_ns, p.rate, 1);
        let Some(header) = channel_data::header(proto::CHANNEL, size) else {
            return Ok(());
        };
        // ChannelData is padded to four bytes on streams (RFC 8656 §12.5).
        let frame_len = channel_data::HEADER_LEN + size.next_multiple_of(4);
        let mut frame = Vec::new();
        loop {
            if shared.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = shared.now_ns();
            if now >= p.drain_end_ns {
                return Ok(());
            }
            // Due packets, written together.
            self.wbuf.clear();
            let mut counted = 0u64;
            while let Some(_due) = schedule.next_due(now, p.window_end_ns, MAX_LAG_NS) {
                let start = self.wbuf.len();
                self.wbuf.resize(start + frame_len, 0);
                if let Some(buf) = self.wbuf.get_mut(start..)
                    && let Some((h, rest)) =
                        buf.split_first_chunk_mut::<{ channel_data::HEADER_LEN }>()
                {
                    *h = header;
                    payload::encode(
                        rest,
                        shared.tag,
                        &Payload {
                            allocation: self.global,
                            sequence: self.seq,
                            held_ns: 0,
                            sent_ns: now,
                        },
                    );
                }
                self.seq = self.seq.wrapping_add(1);
                if now >= p.window_start_ns && now < p.window_end_ns {
                    counted += 1;
                }
            }
            if !self.wbuf.is_empty() {
                self.io
                    .write_all(&self.wbuf)
                    .await
                    .map_err(|e| Fail::Alloc(format!("write: {e}")))?;
                ctx.stats.borrow_mut().sent += counted;
            }
            if now >= self.refresh_at_ns && self.pending.is_empty() {
                self.refresh_at_ns = u64::MAX;
                for req in [Request::Refresh(None), Request::Bind(ctx.peer)] {
                    let tid = self.send(ctx, req).await?;
                    self.pending.push((tid, req));
                }
            }
            let mut wake = p.drain_end_ns.min(self.refresh_at_ns);
            let next = schedule.next_at();
            if next < p.window_end_ns {
                wake = wake.min(next);
            }
            let deadline = shared.instant(wake);
            let rbuf = self.rbuf.get_mut(self.filled..).unwrap_or_default();
            tokio::select! {
                r = self.io.read(rbuf) => {
                    let n = r.map_err(|e| Fail::Alloc(format!("read: {e}")))?;
                    if n == 0 {
                        return Err(Fail::Alloc("the server closed the connection".into()));
                    }
                    self.filled += n;
                    self.frames(ctx, p, &mut frame).await?;
                }
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// Handles the whole messages read so far.
    async fn frames(&mut self, ctx: &Ctx, p: &Phase, frame: &mut Vec<u8>) -> Result<(), Fail> {
        let now = ctx.shared.now_ns();
        let mut at = 0;
        loop {
            let have = self.rbuf.get(at..self.filled).unwrap_or_default();
            let len = match framing::frame_len(have) {
                Ok(Some(len)) if len <= have.len() => len,
                Ok(_) => break,
                Err(e) => return Err(Fail::Alloc(format!("stream: {e}"))),
            };
            let msg = have.get(..len).unwrap_or_default();
            match FirstByte::of(msg) {
                FirstByte::ChannelData => {
                    if let Ok(cd) = channel_data::parse(msg)
                        && let Some(pl) = payload::decode(cd.payload, ctx.shared.tag)
                        && pl.sent_ns >= p.window_start_ns
                        && pl.sent_ns < p.window_end_ns
                    {
                        let mut s = ctx.stats.borrow_mut();
                        s.received += 1;
                        s.hist.record(
                            now.saturating_sub(pl.sent_ns)
                                .saturating_sub(u64::from(pl.held_ns)),
                        );
                    }
                }
                _ => {
                    frame.clear();
                    frame.extend_from_slice(msg);
                }
            }
            at += len;
            if !frame.is_empty() {
                self.on_answer(ctx, frame).await?;
                frame.clear();
            }
        }
        self.rbuf.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(())
    }

    /// An answer to a refresh sent during a phase.
    async fn on_answer(&mut self, ctx: &Ctx, frame: &[u8]) -> Result<(), Fail> {
        let Ok(msg) = Message::parse(frame) else {
            return Ok(());
        };
        let tid = msg.transaction_id();
        let Some(i) = self.pending.iter().position(|(t, _)| *t == tid) else {
            return Ok(());
        };
        let (_, req) = self.pending.swap_remove(i);
        match owned(proto::answer(&msg)) {
            Some(Owned::Success { lifetime, .. }) => {
                if matches!(req, Request::Refresh(_)) {
                    self.refresh_at_ns = refresh_at(ctx.shared.now_ns(), lifetime);
                }
            }
            Some(Owned::Challenge {
                code: 438, nonce, ..
            }) => {
                self.nonce = nonce;
                let tid = self.send(ctx, req).await?;
                self.pending.push((tid, req));
            }
            Some(Owned::Challenge { code, .. } | Owned::Error { code, .. }) => {
                if let Some(f) = proto::fatal(req.method(), code, "") {
                    return Err(Fail::Fatal(f));
                }
            }
            None => {}
        }
        Ok(())
    }
}

fn refresh_at(now: u64, lifetime: Option<u32>) -> u64 {
    let half = u64::from(lifetime.unwrap_or(600) / 2).clamp(1, REFRESH_MAX_S);
    now + half * 1_000_000_000
}

/// The echo peer: every datagram straight back to where it came from.
async fn echo(socket: UdpSocket, ctx: Rc<Ctx>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let data = buf.get(..n).unwrap_or_default();
        let (start, end) = ctx.window.get();
        if let Some(p) = payload::decode(data, ctx.shared.tag)
            && p.sent_ns >= start
            && p.sent_ns < end
        {
            ctx.stats.borrow_mut().peer_received += 1;
        }
        let _ = socket.send_to(data, from).await;
    }
}

/// The thread body.
pub(crate) fn thread(
    shared: Arc<Shared>,
    work: &Work,
    cmds: &Receiver<Cmd>,
    events: &Sender<(u16, Event)>,
) {
    let id = work.thread;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = events.send((id, Event::Fatal(format!("cannot start a runtime: {e}"))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        if let Err(f) = body(shared, work, cmds, events).await {
            let _ = events.send((id, Event::Fatal(f)));
        }
    });
}

async fn body(
    shared: Arc<Shared>,
    work: &Work,
    cmds: &Receiver<Cmd>,
    events: &Sender<(u16, Event)>,
) -> Result<(), String> {
    let id = work.thread;
    let socket = UdpSocket::bind((shared.peer_ip, 0))
        .await
        .map_err(|e| format!("cannot bind an echo peer on {}: {e}", shared.peer_ip))?;
    let peer = socket.local_addr().map_err(|e| format!("echo peer: {e}"))?;
    let ctx = Rc::new(Ctx {
        shared: Arc::clone(&shared),
        id,
        peer,
        stats: RefCell::new(PhaseStats::default()),
        window: Cell::new((u64::MAX, u64::MAX)),
        churn: RefCell::new(ChurnStats::default()),
        fatal: RefCell::new(None),
    });
    let echo_task = tokio::task::spawn_local(echo(socket, Rc::clone(&ctx)));
    let fatal = |ctx: &Ctx| ctx.fatal.borrow_mut().take();

    let mut conns: Vec<Conn> = Vec::new();
    let mut created = 0;
    let mut failed = 0;
    let mut first_error = None;
    if !work.churn {
        let gate = Rc::new(Semaphore::new(MAX_INFLIGHT));
        let tasks: Vec<_> = (0..work.count)
            .map(|i| {
                let ctx = Rc::clone(&ctx);
                let gate = Rc::clone(&gate);
                let slot = u32::try_from(i).unwrap_or(u32::MAX);
                let global = work.first_global.saturating_add(slot);
                tokio::task::spawn_local(async move {
                    let _permit = gate.acquire().await;
                    if ctx.shared.abort.load(Ordering::Relaxed) {
                        return Err(Fail::Alloc("aborted".into()));
                    }
                    let mut c = Conn::connect(&ctx, slot, global, u64::from(global)).await?;
                    c.setup(&ctx).await?;
                    Ok(c)
                })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(Ok(c)) => {
                    conns.push(c);
                    created += 1;
                }
                Ok(Err(Fail::Fatal(f))) => ctx.set_fatal(f),
                Ok(Err(Fail::Alloc(why))) => {
                    failed += 1;
                    first_error.get_or_insert(why);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(format!("task: {e}"));
                }
            }
        }
        if let Some(f) = fatal(&ctx) {
            return Err(f);
        }
    }
    let _ = events.send((
        id,
        Event::SetupDone {
            created,
            failed,
            error: first_error,
        },
    ));

    // Commands come from a blocking channel; between phases nothing runs.
    while let Ok(cmd) = cmds.recv() {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let event = match cmd {
            Cmd::Phase(p) => {
                *ctx.stats.borrow_mut() = PhaseStats::default();
                ctx.window.set((p.window_start_ns, p.window_end_ns));
                let count = conns.len().max(1) as f64;
                let period = if p.rate > 0.0 { 1e9 / p.rate } else { 0.0 };
                let tasks: Vec<_> = conns
                    .drain(..)
                    .enumerate()
                    .map(|(i, c)| {
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        let offset = (period * i as f64 / count) as u64;
                        tokio::task::spawn_local(c.phase(Rc::clone(&ctx), p, offset))
                    })
                    .collect();
                for t in tasks {
                    if let Ok(c) = t.await {
                        conns.push(c);
                    }
                }
                Event::PhaseDone(std::mem::take(&mut *ctx.stats.borrow_mut()))
            }
            Cmd::Churn { start_ns, end_ns } => {
                let tasks: Vec<_> = (0..work.count)
                    .map(|i| {
                        let slot = u32::try_from(i).unwrap_or(u32::MAX);
                        tokio::task::spawn_local(churn(
                            Rc::clone(&ctx),
                            work.first_global,
                            slot,
                            start_ns,
                            end_ns,
                        ))
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
                Event::ChurnDone(std::mem::take(&mut *ctx.churn.borrow_mut()))
            }
            Cmd::Finish => {
                let tasks: Vec<_> = conns
                    .drain(..)
                    .map(|mut c| {
                        let ctx = Rc::clone(&ctx);
                        tokio::task::spawn_local(async move {
                            c.request(&ctx, Request::Refresh(Some(0))).await.is_ok()
                        })
                    })
                    .collect();
                let mut deleted = 0;
                for t in tasks {
                    if matches!(t.await, Ok(true)) {
                        deleted += 1;
                    }
                }
                Event::Finished { deleted }
            }
        };
        let event = match fatal(&ctx) {
            Some(f) => Event::Fatal(f),
            None => event,
        };
        let last = matches!(event, Event::Finished { .. } | Event::Fatal(_));
        let _ = events.send((id, event));
        if last {
            break;
        }
    }
    echo_task.abort();
    Ok(())
}

/// One churn slot: connect, allocate, delete, close, again until the end.
async fn churn(ctx: Rc<Ctx>, first_global: u32, slot: u32, start_ns: u64, end_ns: u64) {
    let shared = Arc::clone(&ctx.shared);
    let now = shared.now_ns();
    if now < start_ns {
        tokio::time::sleep_until(shared.instant(start_ns).into()).await;
    }
    let global = u64::from(first_global) + u64::from(slot);
    let mut generation = 0u64;
    while shared.now_ns() < end_ns && !shared.abort.load(Ordering::Relaxed) {
        // A fresh source address for each allocation of the slot.
        let source = global + generation * u64::from(shared.allocations);
        generation += 1;
        let result = async {
            let mut c = Conn::connect(&ctx, slot, slot, source).await?;
            c.request(&ctx, Request::Allocate).await?;
            let counted = shared.now_ns() < end_ns;
            if counted {
                ctx.churn.borrow_mut().created += 1;
            }
            c.request(&ctx, Request::Refresh(Some(0))).await?;
            if counted {
                ctx.churn.borrow_mut().deleted += 1;
            }
            Ok::<(), Fail>(())
        }
        .await;
        match result {
            Ok(()) => {}
            Err(Fail::Fatal(f)) => {
                ctx.set_fatal(f);
                return;
            }
            Err(Fail::Alloc(_)) => ctx.churn.borrow_mut().failed += 1,
        }
    }
}

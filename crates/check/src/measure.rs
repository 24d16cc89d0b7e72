//! Measurements of the path to a turnpike server's probe responder: an
//! audio-like and a video-like stream (RTT, jitter, loss, reordering and
//! duplicates, each way), a bandwidth ramp each way, and whether DSCP
//! marks survive each way.
//!
//! Everything goes through a [`Prober`]: one task that owns the transport
//! (a UDP socket to the responder, or a TURN allocation that relays to
//! it), stamps each request with its send time as it sends it, and hands
//! each reply, with its arrival time, to the [`Session`] it belongs to.
//! All times are the client's monotonic clock ([`Instant`]) as
//! nanoseconds since the prober's origin; the responder's clock appears
//! only in differences (jitter, one-way delay growth, dispersion).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use turnpike_probe::{self as wire, Kind, Reply, ReplyKind, Request, Train};
use turnpike_stun::{Attr, Method};

use crate::client::Client;
use crate::net::{Failure, Step};
use crate::report::{self, DscpSeen, Ramp, RampStep, StreamFigures, Ways};
use crate::stats::{self, Arrivals, Jitter};
use crate::udp::Udp;

/// An audio-like stream: 50 packets a second of a 12-byte RTP header and
/// 160 bytes of payload (20 ms of G.711).
pub(crate) const AUDIO_PPS: f64 = 50.0;
pub(crate) const AUDIO_LEN: usize = 172;
/// The video-like stream's packets, and the ramp's.
pub(crate) const VIDEO_LEN: usize = 1200;
/// Sequence numbers from here on are tallies, not stream packets.
const TALLY_BASE: u32 = 0xF000_0000;
/// The DSCPs tried: expedited forwarding (audio) and AF41 (video).
pub(crate) const EF: u8 = 46;
pub(crate) const AF41: u8 = 34;
/// A ramp's step: how long it sends.
const STEP: Duration = Duration::from_millis(400);
/// A ramp's first rate, kbit/s (IP packets, headers included).
const RAMP_START_KBPS: f64 = 400.0;
/// How much more loss than the streams had (percentage points), or
/// how much more one-way delay than its minimum (ms), is congestion.
const CONGESTED_LOSS_POINTS: f64 = 3.0;
const CONGESTED_DELAY_MS: f64 = 30.0;

/// What a stream of requests is sent through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    UdpDirect,
    TurnUdp,
    TurnTcp,
    TurnTls,
}

impl PathKind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::UdpDirect => "udp-direct",
            Self::TurnUdp => "turn-udp",
            Self::TurnTcp => "turn-tcp",
            Self::TurnTls => "turn-tls",
        }
    }
}

/// A request for the prober's task to send: it fills in the timestamp
/// and the cookie as it sends.
#[derive(Debug)]
struct Out {
    request: Request,
    len: usize,
    /// The DSCP to mark the packet with (direct UDP only).
    mark: Option<u8>,
}

/// A reply, as it arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Got {
    pub(crate) reply: Reply,
    /// When it arrived: nanoseconds since the prober's origin.
    pub(crate) at_ns: u64,
    /// The DSCP it arrived with, when the socket tells.
    pub(crate) dscp: Option<u8>,
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Got>>>>;

/// The transport to the responder, driven by a task of its own.
#[derive(Debug)]
pub(crate) struct Prober {
    pub(crate) kind: PathKind,
    pub(crate) target: SocketAddr,
    out: mpsc::UnboundedSender<Out>,
    routes: Routes,
    cookie: Arc<AtomicU64>,
    /// Whether the transport broke.
    ended: Arc<AtomicBool>,
    origin: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn ns_since(origin: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// Parses a reply and passes it to its session; remembers its cookie.
fn route(routes: &Routes, cookie: &AtomicU64, bytes: &[u8], at_ns: u64, dscp: Option<u8>) {
    let Ok(reply) = wire::parse_reply(bytes) else {
        return;
    };
    if reply.cookie != 0 {
        cookie.store(reply.cookie, Ordering::Relaxed);
    }
    let tx = routes
        .lock()
        .ok()
        .and_then(|r| r.get(&reply.session).cloned());
    if let Some(tx) = tx {
        let _ = tx.send(Got { reply, at_ns, dscp });
    }
}

/// Encodes `out` as sent now, with the cookie known; its bytes.
fn encode(out: &Out, origin: Instant, cookie: &AtomicU64, buf: &mut [u8]) -> Option<usize> {
    let mut request = out.request;
    request.timestamp = ns_since(origin, Instant::now());
    request.cookie = cookie.load(Ordering::Relaxed);
    wire::encode_request(&request, out.len, buf).ok()
}

impl Prober {
    fn parts(
        kind: PathKind,
        target: SocketAddr,
    ) -> (Self, mpsc::UnboundedReceiver<Out>, Routes, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let routes: Routes = Arc::default();
        let cookie = Arc::new(AtomicU64::new(0));
        let prober = Self {
            kind,
            target,
            out: tx,
            routes: Arc::clone(&routes),
            cookie: Arc::clone(&cookie),
            ended: Arc::new(AtomicBool::new(false)),
            origin: Instant::now(),
            tasks: Vec::new(),
        };
        (prober, rx, routes, cookie)
    }

    /// Direct UDP to the responder at `target`.
    pub(crate) async fn direct(target: SocketAddr) -> Result<Self, Failure> {
        let udp = Udp::for_peer(target)
            .map_err(|e| Failure::new(Step::Connect, format!("cannot open a UDP socket: {e}")))?;
        udp.connect(target)
            .await
            .map_err(|e| Failure::new(Step::Connect, format!("{target}: {e}")))?;
        let udp = Arc::new(udp);
        let (mut prober, mut rx, routes, cookie) = Self::parts(PathKind::UdpDirect, target);
        let origin = prober.origin;
        let sender = {
            let udp = Arc::clone(&udp);
            let cookie = Arc::clone(&cookie);
            tokio::spawn(async move {
                let mut buf = vec![0u8; wire::MAX_LEN];
                while let Some(out) = rx.recv().await {
                    let _ = udp.set_dscp(out.mark);
                    if let Some(bytes) =
                        encode(&out, origin, &cookie, &mut buf).and_then(|n| buf.get(..n))
                    {
                        // A send refused (ICMP from an earlier one, a full
                        // buffer) is a loss on the way up.
                        let _ = udp.send(bytes).await;
                    }
                }
            })
        };
        let ended = Arc::clone(&prober.ended);
        let receiver = tokio::spawn(async move {
            let mut buf = vec![0u8; wire::MAX_LEN + 1];
            let mut errors = 0u32;
            loop {
                match udp.recv(&mut buf).await {
                    Ok(got) => {
                        errors = 0;
                        let at = ns_since(origin, Instant::now());
                        if let Some(bytes) = buf.get(..got.len) {
                            route(&routes, &cookie, bytes, at, got.dscp);
                        }
                    }
                    Err(_) => {
                        // ICMP errors come back as receive errors on a
                        // connected socket: not the end, unless endless.
                        errors += 1;
                        if errors > 1000 {
                            ended.store(true, Ordering::Relaxed);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
        prober.tasks = vec![sender, receiver];
        Ok(prober)
    }

    /// Through a TURN allocation `client` holds, relaying to `target`
    /// (a permission for it is made here).
    pub(crate) async fn turn(
        kind: PathKind,
        mut client: Client,
        target: SocketAddr,
        deadline: Instant,
    ) -> Result<Self, Failure> {
        let r = client
            .request(
                Method::CREATE_PERMISSION,
                &[Attr::XorPeerAddress(target)],
                deadline,
            )
            .await?;
        if let Some(code) = r.code() {
            return Err(Failure::new(
                Step::Protocol,
                format!("CreatePermission for the probe responder {target} refused ({code})"),
            ));
        }
        let (mut prober, mut rx, routes, cookie) = Self::parts(kind, target);
        let origin = prober.origin;
        let ended = Arc::clone(&prober.ended);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; wire::MAX_LEN];
            loop {
                let far = Instant::now() + Duration::from_secs(3600);
                tokio::select! {
                    out = rx.recv() => {
                        let Some(out) = out else { break };
                        if let Some(bytes) = encode(&out, origin, &cookie, &mut buf)
                            .and_then(|n| buf.get(..n))
                        {
                            let attrs = [Attr::XorPeerAddress(target), Attr::Data(bytes)];
                            if client.indicate(Method::SEND, &attrs).await.is_err() {
                                break;
                            }
                        }
                    }
                    got = client.data(far) => {
                        let Some((from, data)) = got else { break };
                        if from == target {
                            route(&routes, &cookie, &data, ns_since(origin, Instant::now()), None);
                        }
                    }
                }
            }
            ended.store(true, Ordering::Relaxed);
            let bye = Instant::now() + Duration::from_secs(1);
            let _ = client
                .request(Method::REFRESH, &[Attr::Lifetime(0)], bye)
                .await;
        });
        prober.tasks = vec![task];
        Ok(prober)
    }

    /// Whether marks can be set on what is sent and read on what arrives.
    pub(crate) fn marks(&self) -> bool {
        self.kind == PathKind::UdpDirect
    }

    /// The IP and UDP headers of each packet (IPv4 28, IPv6 48).
    pub(crate) fn overhead(&self) -> usize {
        if self.target.is_ipv4() { 28 } else { 48 }
    }

    /// The cookie the responder gave, if any yet.
    pub(crate) fn cookie(&self) -> Option<u64> {
        Some(self.cookie.load(Ordering::Relaxed)).filter(|c| *c != 0)
    }

    /// A new session, with a number of its own.
    pub(crate) fn session(&self) -> Session<'_> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut id: u64 = rand::random();
        if let Ok(mut routes) = self.routes.lock() {
            while id == 0 || routes.contains_key(&id) {
                id = rand::random();
            }
            routes.insert(id, tx);
        }
        Session {
            prober: self,
            id,
            rx,
        }
    }

    /// Requests until one is answered (which gives the cookie): the
    /// round trip, or why none came.
    pub(crate) async fn hello(&self, deadline: Instant) -> Result<Duration, Failure> {
        let mut s = self.session();
        for sequence in 0u32.. {
            if Instant::now() >= deadline || self.ended.load(Ordering::Relaxed) {
                break;
            }
            s.send(Kind::Stamp, sequence, wire::MIN_REQUEST_LEN);
            let wait = (Instant::now() + Duration::from_millis(250)).min(deadline);
            while let Some(g) = s.recv(wait).await {
                if g.reply.cookie != 0 || sequence >= 2 {
                    return Ok(Duration::from_nanos(
                        g.at_ns.saturating_sub(g.reply.timestamp),
                    ));
                }
            }
        }
        Err(Failure::new(
            Step::Connect,
            format!("the probe responder {} did not answer", self.target),
        ))
    }
}

/// A stream of requests that the responder counts together.
#[derive(Debug)]
pub(crate) struct Session<'a> {
    prober: &'a Prober,
    pub(crate) id: u64,
    rx: mpsc::UnboundedReceiver<Got>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.prober.routes.lock() {
            routes.remove(&self.id);
        }
    }
}

impl Session<'_> {
    fn send_request(&self, request: Request, len: usize, mark: Option<u8>) {
        let _ = self.prober.out.send(Out {
            request: Request {
                session: self.id,
                ..request
            },
            len,
            mark,
        });
    }

    /// A plain request of the session.
    pub(crate) fn send(&self, kind: Kind, sequence: u32, len: usize) {
        self.send_request(Request::new(kind, sequence, 0), len, None);
    }

    /// The next reply, or `None` at `until`.
    pub(crate) async fn recv(&mut self, until: Instant) -> Option<Got> {
        tokio::time::timeout_at(until, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// How many requests of the session the responder counted: TALLY
    /// requests until one is answered (each waits `wait`). Other replies
    /// that arrive meanwhile go to `late`. `None` when none was answered.
    async fn tally(
        &mut self,
        wait: Duration,
        deadline: Instant,
        late: &mut Vec<Got>,
    ) -> Option<u32> {
        for k in 0..8u32 {
            if Instant::now() >= deadline {
                break;
            }
            let request = Request {
                tally: true,
                ..Request::new(Kind::Stamp, TALLY_BASE + k, 0)
            };
            self.send_request(request, wire::MIN_REQUEST_LEN, None);
            let until = (Instant::now() + wait).min(deadline);
            while let Some(g) = self.recv(until).await {
                if g.reply.sequence >= TALLY_BASE && g.reply.kind == ReplyKind::Stamp {
                    return Some(g.reply.counted);
                }
                late.push(g);
            }
        }
        None
    }
}

/// Sends `n` requests made by `make(i)` at `pps` per second, from now,
/// collecting what arrives meanwhile; stops early at `deadline`. Returns
/// how many were sent.
async fn paced(
    s: &mut Session<'_>,
    n: u32,
    pps: f64,
    deadline: Instant,
    got: &mut Vec<Got>,
    mut make: impl FnMut(u32) -> (Request, usize, Option<u8>),
) -> u32 {
    let start = Instant::now();
    let mut sent = 0u32;
    while sent < n && Instant::now() < deadline {
        let elapsed = start.elapsed().as_secs_f64();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = ((elapsed * pps).floor() as u32).saturating_add(1).min(n);
        while sent < due {
            let (request, len, mark) = make(sent);
            s.send_request(request, len, mark);
            sent += 1;
        }
        if sent >= n {
            break;
        }
        let next = start + Duration::from_secs_f64(f64::from(sent) / pps);
        // At least a millisecond: the timer's grain.
        let next = next.max(Instant::now() + Duration::from_millis(1));
        while let Some(g) = s.recv(next.min(deadline)).await {
            got.push(g);
        }
    }
    sent
}

/// [`paced`], then a wait for the stragglers, then a tally: how many
/// requests went out, and how many the responder counted.
async fn send_and_tally(
    s: &mut Session<'_>,
    n: u32,
    pps: f64,
    deadline: Instant,
    got: &mut Vec<Got>,
    make: impl FnMut(u32) -> (Request, usize, Option<u8>),
) -> (u32, Option<u32>) {
    let sent = paced(s, n, pps, deadline, got, make).await;
    let tail = tail_wait(got);
    drain(s, (Instant::now() + tail).min(deadline), got, sent as usize).await;
    let counted = s.tally(tail, deadline, got).await;
    (sent, counted)
}

/// What arrives until `until`, or until `expected` replies have.
async fn drain(s: &mut Session<'_>, until: Instant, got: &mut Vec<Got>, expected: usize) {
    while got.len() < expected {
        match s.recv(until).await {
            Some(g) => got.push(g),
            None => break,
        }
    }
}

/// The figures of a stream of `sent` echo requests (numbered from 0),
/// given its replies in arrival order and the responder's count.
pub(crate) fn figures(
    sent: u32,
    counted: Option<u32>,
    replies: &[Got],
) -> (StreamFigures, Vec<f64>) {
    let mut first: HashMap<u32, Got> = HashMap::new();
    let mut in_order: Vec<Got> = Vec::new();
    let mut dup_up = 0u64;
    let mut dup_down = 0u64;
    let mut up_copies: Vec<Got> = Vec::new();
    for g in replies.iter().filter(|g| g.reply.sequence < sent) {
        match first.get(&g.reply.sequence) {
            None => {
                first.insert(g.reply.sequence, *g);
                in_order.push(*g);
                up_copies.push(*g);
            }
            // The same receipt answered twice: doubled on the way down.
            Some(f) if f.reply.received_ns == g.reply.received_ns => dup_down += 1,
            // Received twice: doubled on the way up.
            Some(_) => {
                dup_up += 1;
                up_copies.push(*g);
            }
        }
    }
    let rtts: Vec<f64> = in_order
        .iter()
        .map(|g| g.at_ns.saturating_sub(g.reply.timestamp) as f64 / 1e6)
        .collect();
    // The way up, in the order the responder received.
    up_copies.sort_by_key(|g| g.reply.received_ns);
    let mut up_order = Arrivals::default();
    let mut jitter_up = Jitter::default();
    for g in &up_copies {
        up_order.add(g.reply.sequence);
        jitter_up.add(g.reply.timestamp, g.reply.received_ns);
    }
    // The way down, in the order the client received.
    let mut jitter_down = Jitter::default();
    let mut latest = None;
    let mut reordered_down = 0u64;
    for g in &in_order {
        jitter_down.add(g.reply.received_ns, g.at_ns);
        match latest {
            Some(l) if g.reply.received_ns < l => reordered_down += 1,
            _ => latest = Some(g.reply.received_ns),
        }
    }
    let received_down = in_order.len() as u64;
    // A responder that keeps no count answers 0 while answering: then
    // the ways cannot be told apart.
    let counted = counted.filter(|&c| c > 0 || received_down == 0);
    let received_up = counted.map(|c| u64::from(c.min(sent)));
    let pct = |lost: u64, of: u64| (of > 0).then(|| lost as f64 * 100.0 / of as f64);
    let sent_up = u64::from(sent);
    let loss = report::Loss {
        up: received_up.and_then(|r| pct(sent_up.saturating_sub(r), sent_up)),
        down: received_up.and_then(|r| pct(r.saturating_sub(received_down), r)),
        sent_up,
        received_up,
        sent_down: received_up,
        received_down,
    };
    let jitter = |j: &Jitter| (j.samples() > 0).then(|| round3(j.ms()));
    let figures = StreamFigures {
        rtt_ms: rtt_of(&rtts),
        jitter_ms: report::Jitter {
            up: jitter(&jitter_up),
            down: jitter(&jitter_down),
            samples_up: jitter_up.samples(),
            samples_down: jitter_down.samples(),
        },
        loss_pct: loss,
        reordered: Ways {
            up: up_order.reordered(),
            down: reordered_down,
        },
        duplicates: Ways {
            up: dup_up,
            down: dup_down,
        },
    };
    (figures, rtts)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rtt_of(rtts: &[f64]) -> report::Rtt {
    report::Rtt {
        median: stats::quantile(rtts, 0.5).map(round3),
        p95: stats::quantile(rtts, 0.95).map(round3),
        samples: rtts.len() as u64,
    }
}

/// A media-like stream's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) name: &'static str,
    pub(crate) pps: f64,
    pub(crate) len: usize,
}

impl Shape {
    pub(crate) const AUDIO: Self = Self {
        name: "audio",
        pps: AUDIO_PPS,
        len: AUDIO_LEN,
    };

    /// The video-like stream at `kbps` of UDP payload.
    pub(crate) fn video(kbps: u32) -> Self {
        Self {
            name: "video",
            pps: (f64::from(kbps) * 1000.0 / (VIDEO_LEN as f64 * 8.0)).max(1.0),
            len: VIDEO_LEN,
        }
    }
}

/// One stream run: its figures and its round trips.
#[derive(Debug, Clone)]
pub(crate) struct StreamRun {
    pub(crate) stream: report::Stream,
    pub(crate) rtts: Vec<f64>,
}

/// Runs a media-like stream for `seconds`, then asks for its tally.
pub(crate) async fn stream(p: &Prober, shape: Shape, seconds: f64, deadline: Instant) -> StreamRun {
    let mut s = p.session();
    let mut got = Vec::new();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (shape.pps * seconds).round().max(1.0) as u32;
    let (sent, counted) = send_and_tally(&mut s, n, shape.pps, deadline, &mut got, |i| {
        (Request::new(Kind::Echo, i, 0), shape.len, None)
    })
    .await;
    let (figures, rtts) = figures(sent, counted, &got);
    StreamRun {
        stream: report::Stream {
            name: shape.name.to_owned(),
            packets_per_second: shape.pps,
            packet_bytes: u16::try_from(shape.len).unwrap_or(u16::MAX),
            figures,
        },
        rtts,
    }
}

/// How long to wait for stragglers: three times the slowest round trip
/// seen, at least 200 ms, at most a second.
fn tail_wait(got: &[Got]) -> Duration {
    let slowest = got
        .iter()
        .map(|g| g.at_ns.saturating_sub(g.reply.timestamp))
        .max()
        .unwrap_or(300_000_000);
    Duration::from_nanos(slowest.saturating_mul(3))
        .clamp(Duration::from_millis(200), Duration::from_secs(1))
}

/// Audio and video pooled: loss counts summed, the larger jitter each
/// way, RTT quantiles over every round trip.
pub(crate) fn pool(runs: &[StreamRun]) -> StreamFigures {
    let rtts: Vec<f64> = runs.iter().flat_map(|r| r.rtts.iter().copied()).collect();
    let figs: Vec<&StreamFigures> = runs.iter().map(|r| &r.stream.figures).collect();
    let max =
        |f: fn(&StreamFigures) -> Option<f64>| figs.iter().filter_map(|x| f(x)).reduce(f64::max);
    let sum = |f: fn(&StreamFigures) -> u64| figs.iter().map(|x| f(x)).sum::<u64>();
    let opt_sum =
        |f: fn(&StreamFigures) -> Option<u64>| figs.iter().map(|x| f(x)).sum::<Option<u64>>();
    let sent_up = sum(|f| f.loss_pct.sent_up);
    let received_up = opt_sum(|f| f.loss_pct.received_up);
    let received_down = sum(|f| f.loss_pct.received_down);
    let pct = |lost: u64, of: u64| (of > 0).then(|| round3(lost as f64 * 100.0 / of as f64));
    StreamFigures {
        rtt_ms: rtt_of(&rtts),
        jitter_ms: report::Jitter {
            up: max(|f| f.jitter_ms.up),
            down: max(|f| f.jitter_ms.down),
            samples_up: sum(|f| f.jitter_ms.samples_up),
            samples_down: sum(|f| f.jitter_ms.samples_down),
        },
        loss_pct: report::Loss {
            up: received_up.and_then(|r| pct(sent_up.saturating_sub(r), sent_up)),
            down: received_up.and_then(|r| pct(r.saturating_sub(received_down), r)),
            sent_up,
            received_up,
            sent_down: received_up,
            received_down,
        },
        reordered: Ways {
            up: sum(|f| f.reordered.up),
            down: sum(|f| f.reordered.down),
        },
        duplicates: Ways {
            up: sum(|f| f.duplicates.up),
            down: sum(|f| f.duplicates.down),
        },
    }
}

/// The estimated MOS of the audio stream.
pub(crate) fn mos(audio: &StreamFigures) -> Option<f64> {
    let rtt = audio.rtt_ms.median?;
    let jitter = audio
        .jitter_ms
        .up
        .into_iter()
        .chain(audio.jitter_ms.down)
        .reduce(f64::max)
        .unwrap_or(0.0);
    let loss = audio.loss_pct.up.unwrap_or(0.0) + audio.loss_pct.down.unwrap_or(0.0);
    Some((stats::mos(rtt, jitter, loss) * 100.0).round() / 100.0)
}

/// The most common of `values`, if any.
fn most_common(values: impl Iterator<Item = u8>) -> Option<u8> {
    let mut counts = [0u32; 256];
    let mut any = false;
    for v in values {
        if let Some(c) = counts.get_mut(usize::from(v)) {
            *c += 1;
            any = true;
        }
    }
    let best = (0u8..=255).max_by_key(|&v| counts.get(usize::from(v)).copied().unwrap_or(0))?;
    any.then_some(best)
}

/// Packets marked EF and AF41, interleaved, each asking for the same mark
/// back: the DSCP the responder saw (up) and the client saw (down).
pub(crate) async fn dscp(p: &Prober, deadline: Instant) -> (Ways<DscpSeen>, Ways<Option<bool>>) {
    let mut s = p.session();
    let mut got = Vec::new();
    let mark = |i: u32| if i.is_multiple_of(2) { EF } else { AF41 };
    let n = 80;
    let sent = paced(&mut s, n, 200.0, deadline, &mut got, |i| {
        let request = Request {
            reply_dscp: Some(mark(i)),
            ..Request::new(Kind::Echo, i, 0)
        };
        (request, AUDIO_LEN, Some(mark(i)))
    })
    .await;
    let tail = tail_wait(&got);
    drain(
        &mut s,
        (Instant::now() + tail).min(deadline),
        &mut got,
        sent as usize,
    )
    .await;
    // Back to unmarked for whatever is sent next.
    s.send_request(
        Request::new(Kind::Stamp, TALLY_BASE, 0),
        wire::MIN_REQUEST_LEN,
        None,
    );
    let seen = |m: u8, down: bool| {
        most_common(
            got.iter()
                .filter(|g| mark(g.reply.sequence) == m && g.reply.sequence < n)
                .filter_map(|g| if down { g.dscp } else { g.reply.dscp }),
        )
    };
    let up = DscpSeen {
        ef: seen(EF, false),
        af41: seen(AF41, false),
    };
    let down = DscpSeen {
        ef: seen(EF, true),
        af41: seen(AF41, true),
    };
    let preserved = |d: DscpSeen| match (d.ef, d.af41) {
        (Some(ef), Some(af41)) => Some(ef == EF && af41 == AF41),
        _ => None,
    };
    (
        Ways { up, down },
        Ways {
            up: preserved(up),
            down: preserved(down),
        },
    )
}

/// The rate of the later half of `times` (ns, sorted), packets of
/// `bytes` each: the bottleneck's, once its queue has filled. kbit/s.
fn dispersion_kbps(times: &mut [u64], bytes: usize) -> Option<f64> {
    times.sort_unstable();
    let half = times.get(times.len() / 2..)?;
    let (first, last) = (*half.first()?, *half.last()?);
    let span = last.checked_sub(first).filter(|s| *s > 0)?;
    let bits = (half.len() - 1) as f64 * bytes as f64 * 8.0;
    Some(bits * 1e6 / span as f64)
}

/// How much the one-way delay of the later half of a step grew over the
/// minimum seen so far (updated with this step's), in ms.
fn delay_growth(owd_ns: &mut [i128], min: &mut Option<i128>) -> Option<f64> {
    let step_min = owd_ns.iter().copied().min()?;
    let m = *min.get_or_insert(step_min);
    let m = m.min(step_min);
    *min = Some(m);
    let half = owd_ns.get(owd_ns.len() / 2..)?;
    let mut half: Vec<i128> = half.to_vec();
    half.sort_unstable();
    let median = *half.get(half.len() / 2)?;
    Some((median - m) as f64 / 1e6)
}

/// The rates of a ramp up to `cap` kbit/s: doubling from
/// [`RAMP_START_KBPS`], the cap last.
pub(crate) fn ramp_rates(cap: f64) -> Vec<f64> {
    let mut rates = Vec::new();
    let mut r = RAMP_START_KBPS.min(cap);
    while r < cap && rates.len() < 16 {
        rates.push(r);
        r *= 2.0;
    }
    rates.push(cap);
    rates
}

/// Which way a ramp goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    Up,
    Down,
}

/// A bandwidth ramp one way, up to `cap` kbit/s: steps of [`STEP`] at
/// growing rates until loss grows past `baseline_loss` by
/// [`CONGESTED_LOSS_POINTS`] or delay by [`CONGESTED_DELAY_MS`]. The
/// sustainable rate is what arrived at the congested step, or the cap.
pub(crate) async fn ramp(
    p: &Prober,
    way: Way,
    cap: f64,
    baseline_loss: f64,
    deadline: Instant,
) -> (Ramp, Option<f64>) {
    let mut result = Ramp::default();
    let mut min_owd = None;
    let bytes = VIDEO_LEN + p.overhead();
    for rate in ramp_rates(cap) {
        // A step, its tail and its tally.
        if Instant::now() + STEP + Duration::from_millis(400) > deadline {
            return (result, None);
        }
        let step = match way {
            Way::Up => step_up(p, rate, bytes, &mut min_owd, deadline).await,
            Way::Down => step_down(p, rate, bytes, &mut min_owd, deadline).await,
        };
        let Some(mut step) = step else {
            return (result, None);
        };
        step.congested = step
            .loss_pct
            .is_some_and(|l| l > baseline_loss + CONGESTED_LOSS_POINTS)
            || step.delay_growth_ms.is_some_and(|d| d > CONGESTED_DELAY_MS);
        let congested = step
            .congested
            .then(|| step.delivered_kbps.unwrap_or(0.0).min(step.offered_kbps));
        result.steps.push(step);
        if let Some(rate) = congested {
            return (result, Some(round1(rate)));
        }
    }
    result.at_cap = true;
    (result, Some(cap))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Packets per second for `kbps` of `bytes`-byte IP packets.
fn pps_of(kbps: f64, bytes: usize) -> f64 {
    kbps * 1000.0 / (bytes as f64 * 8.0)
}

async fn step_up(
    p: &Prober,
    rate: f64,
    bytes: usize,
    min_owd: &mut Option<i128>,
    deadline: Instant,
) -> Option<RampStep> {
    let mut s = p.session();
    let mut got = Vec::new();
    let pps = pps_of(rate, bytes);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (pps * STEP.as_secs_f64()).ceil().max(2.0) as u32;
    let (sent, counted) = send_and_tally(&mut s, n, pps, deadline, &mut got, |i| {
        (Request::new(Kind::Stamp, i, 0), VIDEO_LEN, None)
    })
    .await;
    let replies: Vec<&Got> = got.iter().filter(|g| g.reply.sequence < sent).collect();
    let mut times: Vec<u64> = replies.iter().map(|g| g.reply.received_ns).collect();
    times.dedup();
    // One-way delay up, in the order sent.
    let mut by_seq: Vec<&Got> = replies.clone();
    by_seq.sort_by_key(|g| g.reply.sequence);
    let mut owd: Vec<i128> = by_seq
        .iter()
        .map(|g| i128::from(g.reply.received_ns) - i128::from(g.reply.timestamp))
        .collect();
    let received = counted
        .filter(|&c| c > 0 || replies.is_empty())
        .map_or(replies.len() as u64, |c| u64::from(c.min(sent)));
    Some(RampStep {
        offered_kbps: round1(rate),
        delivered_kbps: dispersion_kbps(&mut times, bytes).map(round1),
        loss_pct: (sent > 0).then(|| {
            round3(u64::from(sent).saturating_sub(received) as f64 * 100.0 / f64::from(sent))
        }),
        delay_growth_ms: delay_growth(&mut owd, min_owd).map(round3),
        congested: false,
    })
}

async fn step_down(
    p: &Prober,
    rate: f64,
    bytes: usize,
    min_owd: &mut Option<i128>,
    deadline: Instant,
) -> Option<RampStep> {
    let mut s = p.session();
    let pps = pps_of(rate, bytes);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let packets = (pps * STEP.as_secs_f64()).ceil().max(2.0) as u32;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let interval_us = (1e6 / pps).round().max(1.0) as u32;
    let payload = u16::try_from(VIDEO_LEN).ok()?;
    let train = Train {
        packets,
        interval_us,
        len: payload,
    };
    let offered = (bytes as f64) * 8.0 * 1e3 / f64::from(interval_us);
    let mut got: Vec<Got> = Vec::new();
    let mut asked = 0u32;
    let started = Instant::now();
    let span = Duration::from_micros(u64::from(packets) * u64::from(interval_us));
    // The request again if nothing of the train came (the request or
    // the train's start lost).
    while asked < 2 && Instant::now() < deadline {
        s.send(Kind::Train(train), asked, wire::MIN_REQUEST_LEN);
        asked += 1;
        let first = (Instant::now() + Duration::from_millis(500)).min(deadline);
        while !got.iter().any(|g| g.reply.kind == ReplyKind::Train) {
            match s.recv(first).await {
                Some(g) => got.push(g),
                None => break,
            }
        }
        if got.iter().any(|g| g.reply.kind == ReplyKind::Train) {
            break;
        }
    }
    // The train's span, then a tail for stragglers: until the last
    // packet or a quiet 300 ms.
    let end = (started + span + Duration::from_millis(300)).min(deadline);
    loop {
        let quiet = (Instant::now() + Duration::from_millis(300)).min(deadline);
        match s.recv(quiet.max(end.min(deadline))).await {
            Some(g) => {
                let last = g.reply.kind == ReplyKind::Train && g.reply.sequence + 1 >= packets;
                got.push(g);
                if last {
                    break;
                }
            }
            None => break,
        }
    }
    let train: Vec<&Got> = got
        .iter()
        .filter(|g| g.reply.kind == ReplyKind::Train && g.reply.sequence < packets)
        .collect();
    let mut arrivals = Arrivals::default();
    for g in &train {
        arrivals.add(g.reply.sequence);
    }
    let mut times: Vec<u64> = train.iter().map(|g| g.at_ns).collect();
    let mut owd: Vec<i128> = train
        .iter()
        .map(|g| i128::from(g.at_ns) - i128::from(g.reply.received_ns))
        .collect();
    Some(RampStep {
        offered_kbps: round1(offered.min(rate.max(offered))),
        delivered_kbps: dispersion_kbps(&mut times, bytes).map(round1),
        loss_pct: arrivals.loss_pct(packets).map(round3),
        delay_growth_ms: delay_growth(&mut owd, min_owd).map(round3),
        congested: false,
    })
}

/// How the measurements run (`turnpike check`'s flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How long the media-like streams run, seconds.
    pub stream_seconds: f64,
    /// The video-like stream's rate, kbit/s of UDP payload; `None`: the
    /// profile's largest bandwidth threshold, else 1000.
    pub video_kbps: Option<u32>,
    /// The bandwidth ramps' cap, each way, kbit/s.
    pub max_kbps: u32,
    /// The UDP idle-timeout search's longest silence, when it runs.
    pub udp_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            stream_seconds: 5.0,
            video_kbps: None,
            max_kbps: 10_000,
            udp_timeout: None,
        }
    }
}

/// What the other measurements (NAT, path MTU, idle timeout) found, as
/// far as the quality checks need them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    pub(crate) nat: Option<crate::nat::NatReport>,
    pub(crate) mtu: Option<crate::mtu::MtuReport>,
    pub(crate) idle: Option<crate::idle::IdleReport>,
}

/// Streams, DSCP and ramps on `p` (which has said hello), within
/// `deadline`.
pub(crate) async fn run(
    p: &Prober,
    opts: &Options,
    video_kbps: u32,
    deadline: Instant,
) -> report::Measurements {
    let mut m = report::Measurements {
        path: p.kind.as_str().to_owned(),
        target: p.target.to_string(),
        ..report::Measurements::default()
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    // The streams take at most a third of what is left; the ramps the
    // rest.
    let seconds = opts.stream_seconds.min((left - 3.0) / 3.0).max(0.5);
    if seconds < opts.stream_seconds {
        m.notes.push(format!(
            "the streams ran {seconds:.1} s, not {:.1} s, to end within the time given",
            opts.stream_seconds
        ));
    }
    let phase_a = (Instant::now() + Duration::from_secs_f64(seconds + 2.5)).min(deadline);
    let audio = stream(p, Shape::AUDIO, seconds, phase_a);
    let video = stream(p, Shape::video(video_kbps), seconds, phase_a);
    let marks = async {
        if p.marks() {
            Some(dscp(p, phase_a).await)
        } else {
            None
        }
    };
    let (audio, video, marks) = tokio::join!(audio, video, marks);
    m.mos = mos(&audio.stream.figures);
    let runs = [audio, video];
    m.pooled = pool(&runs);
    m.streams = runs.into_iter().map(|r| r.stream).collect();
    if let Some((seen, preserved)) = marks {
        m.dscp = seen;
        m.dscp_preserved = preserved;
    } else {
        m.notes
            .push("DSCP marks are tested on direct UDP only".to_owned());
    }

    let cap = f64::from(opts.max_kbps);
    let half = deadline.saturating_duration_since(Instant::now()) / 2;
    let up_deadline = (Instant::now() + half.min(Duration::from_secs(5))).min(deadline);
    let baseline_up = m.pooled.loss_pct.up.unwrap_or(0.0);
    let (up, up_kbps) = ramp(p, Way::Up, cap, baseline_up, up_deadline).await;
    let down_deadline = (Instant::now() + Duration::from_secs(5)).min(deadline);
    let baseline_down = m.pooled.loss_pct.down.unwrap_or(0.0);
    let (down, down_kbps) = ramp(p, Way::Down, cap, baseline_down, down_deadline).await;
    for (way, kbps) in [("up", up_kbps), ("down", down_kbps)] {
        if kbps.is_none() {
            m.notes.push(format!(
                "the bandwidth {way} was not found within the time given"
            ));
        }
    }
    m.up_kbps = up_kbps;
    m.down_kbps = down_kbps;
    m.bandwidth = Ways {
        up: Some(up),
        down: Some(down),
    };
    m
}

/// Fills in what the NAT, path MTU and idle-timeout measurements found.
pub(crate) fn merge(m: &mut report::Measurements, extra: &Extra) {
    let name = |b: crate::nat::NatBehaviour| {
        serde_json::to_value(b)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    };
    if let Some(nat) = &extra.nat {
        m.nat_mapping = nat.mapping.and_then(name);
        m.nat_filtering = nat.filtering.and_then(name);
        m.hairpinning = nat.hairpinning;
        m.mapped_address = nat.mapped.map(|a| a.to_string());
    }
    if let Some(mtu) = &extra.mtu {
        m.path_mtu = mtu.path_mtu;
    }
    if let Some(idle) = &extra.idle {
        m.udp_idle_timeout_s = if idle.at_least {
            Some(idle.max_s)
        } else {
            idle.longest_kept_s
        };
        m.udp_idle_timeout = Some(report::IdleTimeout {
            longest_kept_s: idle.longest_kept_s,
            shortest_lost_s: idle.shortest_lost_s,
            max_s: idle.max_s,
            at_least: idle.at_least,
        });
    }
}

/// A `quality:` check of `value` against an optional limit: warn beyond
/// it (never fail: quality does not change the verdict), skip when
/// there is no figure.
fn quality(
    id: &str,
    title: &str,
    value: Option<f64>,
    unit: &str,
    limit: Option<(turnpike_profile::Bound, f64, &str)>,
    detail: String,
) -> report::Check {
    use turnpike_profile::Bound;
    let mut c = report::Check::new(format!("quality:{id}"), title, report::Status::Pass);
    c.detail = Some(detail);
    let Some(v) = value else {
        c.status = report::Status::Skip;
        return c;
    };
    c.value = serde_json::json!(v);
    c.unit = Some(unit.to_owned());
    if let Some((bound, limit, source)) = limit {
        let (beyond, text) = match bound {
            Bound::Max => (v > limit, format!("< {limit} {unit}")),
            Bound::Min => (v < limit, format!(">= {limit} {unit}")),
        };
        c.threshold = Some(text);
        c.source = Some(source.to_owned());
        if beyond {
            c.status = report::Status::Warn;
        }
    }
    c
}

fn fmt_opt(x: Option<f64>, unit: &str) -> String {
    x.map_or_else(|| "unknown".to_owned(), |v| format!("{v} {unit}"))
}

/// The `quality:` checks of `m`, against the profile's thresholds.
pub(crate) fn quality_checks(
    m: &report::Measurements,
    t: &turnpike_profile::Thresholds,
    extra: &Extra,
    opts: &Options,
) -> Vec<report::Check> {
    use turnpike_profile::Bound;
    fn max(l: Option<&turnpike_profile::UpperLimit>) -> Option<(Bound, f64, &str)> {
        l.map(|l| (Bound::Max, l.max, l.source.as_str()))
    }
    fn min(l: Option<&turnpike_profile::LowerLimit>) -> Option<(Bound, f64, &str)> {
        l.map(|l| (Bound::Min, l.min, l.source.as_str()))
    }
    let f = &m.pooled;
    let path = format!("{} to {}", m.path, m.target);
    let mut checks = vec![quality(
        "rtt",
        "Round-trip time",
        f.rtt_ms.median,
        "ms",
        max(t.rtt_ms.as_ref()),
        format!(
            "median {}, p95 {} over {} round trips ({path})",
            fmt_opt(f.rtt_ms.median, "ms"),
            fmt_opt(f.rtt_ms.p95, "ms"),
            f.rtt_ms.samples
        ),
    )];
    for (way, value, samples) in [
        ("up", f.jitter_ms.up, f.jitter_ms.samples_up),
        ("down", f.jitter_ms.down, f.jitter_ms.samples_down),
    ] {
        checks.push(quality(
            &format!("jitter-{way}"),
            &format!("Jitter {way}"),
            value,
            "ms",
            max(t.jitter_ms.as_ref()),
            format!("interarrival jitter (RFC 3550) over {samples} packets"),
        ));
    }
    for (way, value, lost, of) in [
        (
            "up",
            f.loss_pct.up,
            f.loss_pct
                .received_up
                .map(|r| f.loss_pct.sent_up.saturating_sub(r)),
            Some(f.loss_pct.sent_up),
        ),
        (
            "down",
            f.loss_pct.down,
            f.loss_pct
                .sent_down
                .map(|s| s.saturating_sub(f.loss_pct.received_down)),
            f.loss_pct.sent_down,
        ),
    ] {
        let detail = match (lost, of) {
            (Some(lost), Some(of)) => format!("{lost} of {of} packets lost {way}"),
            _ => "the responder keeps no count: the ways cannot be told apart".to_owned(),
        };
        checks.push(quality(
            &format!("loss-{way}"),
            &format!("Packet loss {way}"),
            value,
            "%",
            max(t.loss_pct.as_ref()),
            detail,
        ));
    }
    for (way, value, ramp, limit) in [
        ("up", m.up_kbps, &m.bandwidth.up, min(t.up_kbps.as_ref())),
        (
            "down",
            m.down_kbps,
            &m.bandwidth.down,
            min(t.down_kbps.as_ref()),
        ),
    ] {
        let detail = match ramp {
            Some(r) if r.at_cap => format!(
                "at least {} kbit/s: no step up to the cap (--max-kbps) lost packets or queued",
                opts.max_kbps
            ),
            Some(r) => match r.steps.last() {
                Some(s) if s.congested => format!(
                    "sent at {} kbit/s, {} kbit/s arrived ({} lost, delay +{} ms): the bottleneck",
                    s.offered_kbps,
                    s.delivered_kbps.unwrap_or(0.0),
                    fmt_opt(s.loss_pct, "%"),
                    s.delay_growth_ms.unwrap_or(0.0)
                ),
                _ => "the ramp did not finish within the time given".to_owned(),
            },
            None => "not measured".to_owned(),
        };
        checks.push(quality(
            &format!("{way}-kbps"),
            &format!("Bandwidth {way}"),
            value,
            "kbps",
            limit,
            detail,
        ));
    }
    if let Some(idle) = &extra.idle {
        let mut c = quality(
            "udp-idle-timeout",
            "UDP idle timeout",
            m.udp_idle_timeout_s,
            "s",
            min(t.udp_idle_timeout_s.as_ref()),
            idle.detail.clone(),
        );
        if c.status == report::Status::Warn
            && let (Some(s), Some(need)) = (m.udp_idle_timeout_s, &t.udp_idle_timeout_s)
        {
            c.remediation = Some(format!(
                "media on a path that goes quiet for more than {s:.0} s is cut (a muted call, a paused video, one side on hold): raise the UDP idle timeout of the NAT or firewall on this network (the UDP session / conntrack timeout) to at least {} s",
                need.min
            ));
        }
        checks.push(c);
    }
    if m.path == PathKind::UdpDirect.as_str() {
        for (way, preserved, seen) in [
            ("up", m.dscp_preserved.up, m.dscp.up),
            ("down", m.dscp_preserved.down, m.dscp.down),
        ] {
            let mut c = report::Check::new(
                format!("quality:dscp-{way}"),
                format!("DSCP marks {way}"),
                report::Status::Pass,
            );
            let show = |d: Option<u8>| d.map_or_else(|| "unknown".to_owned(), |d| d.to_string());
            c.detail = Some(format!(
                "EF (46) arrived as {}, AF41 (34) as {}",
                show(seen.ef),
                show(seen.af41)
            ));
            match preserved {
                Some(p) => {
                    c.value = serde_json::json!(p);
                    if !p {
                        c.status = report::Status::Warn;
                        c.remediation = Some(if way == "up" {
                            format!(
                                "DSCP marks are cleared on the way up, from this network to {}: let outbound UDP keep its marks (EF 46 for audio, AF41 34 for video), or mark media at the network's edge",
                                m.target
                            )
                        } else {
                            format!(
                                "DSCP marks are cleared on the way down, from {} to this network: let inbound UDP keep its marks, or have the provider honour them",
                                m.target
                            )
                        });
                    }
                }
                None => c.status = report::Status::Skip,
            }
            checks.push(c);
        }
        let mut c = report::Check::new("quality:nat", "NAT behaviour", report::Status::Skip);
        if let Some(nat) = &extra.nat {
            c.detail = Some(nat.detail.clone());
            if let Some(mapping) = &m.nat_mapping {
                c.status = report::Status::Pass;
                c.value = serde_json::json!(mapping);
                if mapping == "address-and-port-dependent" {
                    c.status = report::Status::Warn;
                    c.remediation = Some("the NAT maps each destination to a new port (symmetric NAT): peer-to-peer media cannot get through, every call needs the TURN relay; make its mapping endpoint-independent".to_owned());
                }
            }
        }
        checks.push(c);
        let mut c = report::Check::new("quality:path-mtu", "Path MTU", report::Status::Skip);
        if let Some(mtu) = &extra.mtu {
            c.detail = Some(mtu.detail.clone());
            if let Some(v) = mtu.path_mtu {
                c.status = report::Status::Pass;
                c.value = serde_json::json!(v);
                c.unit = Some("bytes".to_owned());
                c.threshold = Some(format!(">= {} bytes", mtu.needed));
                c.source = Some("TURN over UDP without fragmentation".to_owned());
                if v < mtu.needed {
                    c.status = report::Status::Warn;
                    c.remediation = Some(format!(
                        "a link between this network and {} carries IP packets of at most {v} bytes (a tunnel, VPN or PPPoE link, typically): raise its MTU to {} or let ICMP \"fragmentation needed\" through, else large media packets are fragmented or lost",
                        m.target, mtu.needed
                    ));
                }
            }
        }
        checks.push(c);
    }
    checks.push(quality(
        "mos",
        "Estimated audio quality (MOS)",
        m.mos,
        "MOS",
        Some((
            Bound::Min,
            3.6,
            "ITU-T G.107 E-model: below R 70 (MOS 3.6) some users are dissatisfied",
        )),
        "the audio stream's RTT, jitter and loss through the E-model (ITU-T G.107, simplified)"
            .to_owned(),
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: u64 = 0x1234_5678;

    /// How the fake responder misbehaves.
    #[derive(Debug, Clone, Copy, Default)]
    struct Fake {
        /// Drop every Nth counted request of each session, on the way up.
        drop_up_every: Option<u32>,
        /// Answer after this long.
        delay: Duration,
        /// Say every request arrived unmarked.
        clear_dscp_up: bool,
        /// Police the way up to this rate (IP bytes), kbit/s.
        police_up_kbps: Option<f64>,
    }

    fn now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    /// A responder on loopback with the v2 semantics the client needs:
    /// a cookie, counts per (source, session), tallies, trains, the DSCP
    /// seen and the reply marked as asked.
    async fn fake(cfg: Fake) -> SocketAddr {
        let udp = Arc::new(Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut counts: HashMap<(SocketAddr, u64), (u32, u32)> = HashMap::new();
            let mut buf = [0u8; 2048];
            let mut tokens = 0.0f64;
            let mut last = Instant::now();
            loop {
                let Ok(got) = udp.recv(&mut buf).await else {
                    continue;
                };
                let Ok(req) = wire::parse_request(&buf[..got.len]) else {
                    continue;
                };
                let valid = req.cookie == COOKIE;
                if let Some(kbps) = cfg.police_up_kbps {
                    let now = Instant::now();
                    let bits = kbps * 1000.0;
                    tokens =
                        (tokens + now.duration_since(last).as_secs_f64() * bits).min(bits * 0.02);
                    last = now;
                    let cost = ((got.len + 28) * 8) as f64;
                    if !req.tally && req.session != 0 {
                        if tokens < cost {
                            continue;
                        }
                        tokens -= cost;
                    }
                }
                let mut counted = 0;
                if valid && req.session != 0 {
                    let e = counts.entry((got.from, req.session)).or_default();
                    if !req.tally {
                        e.0 += 1;
                        if cfg.drop_up_every.is_some_and(|n| e.0.is_multiple_of(n)) {
                            continue;
                        }
                        e.1 += 1;
                    }
                    counted = e.1;
                }
                let len = got.len as u16;
                let dscp = if cfg.clear_dscp_up { Some(0) } else { got.dscp };
                match req.kind {
                    Kind::Train(train) if valid => {
                        let udp = Arc::clone(&udp);
                        let from = got.from;
                        tokio::spawn(async move {
                            let start = Instant::now();
                            let mut out = [0u8; 2048];
                            for i in 0..train.packets {
                                let at = start
                                    + Duration::from_micros(
                                        u64::from(i) * u64::from(train.interval_us),
                                    );
                                tokio::time::sleep_until(at).await;
                                let mut p =
                                    Reply::train_packet(&req, &train, len, from, i, now_ns());
                                p.cookie = COOKIE;
                                p.dscp = dscp;
                                let n = wire::encode_reply(&p, &mut out).unwrap();
                                let _ = udp.send_to(&out[..n], from).await;
                            }
                        });
                    }
                    Kind::Echo | Kind::Stamp => {
                        let mut r = Reply::to(&req, len, got.from, now_ns());
                        r.cookie = COOKIE;
                        r.counted = counted;
                        r.dscp = dscp;
                        let mut out = [0u8; 2048];
                        let n = wire::encode_reply(&r, &mut out).unwrap();
                        if cfg.delay.is_zero() {
                            let _ = udp.set_dscp(req.reply_dscp);
                            let _ = udp.send_to(&out[..n], got.from).await;
                        } else {
                            let udp = Arc::clone(&udp);
                            let from = got.from;
                            tokio::spawn(async move {
                                tokio::time::sleep(cfg.delay).await;
                                let _ = udp.send_to(&out[..n], from).await;
                            });
                        }
                    }
                    _ => {}
                }
            }
        });
        addr
    }

    async fn measure(cfg: Fake, max_kbps: u32) -> report::Measurements {
        let target = fake(cfg).await;
        let p = Prober::direct(target).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        p.hello(deadline).await.unwrap();
        assert_eq!(p.cookie(), Some(COOKIE));
        let opts = Options {
            stream_seconds: 1.0,
            max_kbps,
            ..Options::default()
        };
        // 480 kbit/s of 1200-byte packets: 50 a second, as audio.
        run(&p, &opts, 480, deadline).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_tenth_request_dropped_going_up_is_ten_percent_up_and_none_down() {
        let m = measure(
            Fake {
                drop_up_every: Some(10),
                ..Fake::default()
            },
            2000,
        )
        .await;
        eprintln!("{}", serde_json::to_string_pretty(&m).unwrap());
        assert_eq!(m.path, "udp-direct");
        let audio = &m.streams[0].figures.loss_pct;
        assert_eq!((audio.sent_up, audio.received_up), (50, Some(45)));
        assert_eq!(audio.up, Some(10.0));
        assert_eq!(audio.down, Some(0.0));
        assert_eq!(audio.received_down, 45);
        assert_eq!(m.pooled.loss_pct.up, Some(10.0));
        assert_eq!(m.pooled.loss_pct.down, Some(0.0));
        // The losses do not count as reordering or duplicates.
        assert_eq!(m.pooled.reordered, Ways { up: 0, down: 0 });
        assert_eq!(m.pooled.duplicates, Ways { up: 0, down: 0 });
        // 10 % loss throughout is the baseline, not congestion.
        assert_eq!(m.up_kbps, Some(2000.0));
        assert!(m.bandwidth.up.as_ref().unwrap().at_cap);
        assert_eq!(m.down_kbps, Some(2000.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delaying_responder_gives_its_delay_as_rtt() {
        let m = measure(
            Fake {
                delay: Duration::from_millis(40),
                ..Fake::default()
            },
            1000,
        )
        .await;
        let rtt = &m.pooled.rtt_ms;
        let median = rtt.median.unwrap();
        assert!((40.0..55.0).contains(&median), "{rtt:?}");
        assert!(rtt.p95.unwrap() >= median);
        assert!(rtt.samples >= 90, "{rtt:?}");
        assert_eq!(m.pooled.loss_pct.up, Some(0.0));
        assert_eq!(m.pooled.loss_pct.down, Some(0.0));
        let audio_rtt = m.streams[0].figures.rtt_ms.median.unwrap();
        assert!((40.0..55.0).contains(&audio_rtt));
        let mos = m.mos.unwrap();
        assert!((4.0..=4.5).contains(&mos), "{mos}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dscp_marks_each_way() {
        let m = measure(Fake::default(), 1000).await;
        assert_eq!(
            m.dscp.up,
            DscpSeen {
                ef: Some(46),
                af41: Some(34)
            }
        );
        assert_eq!(
            m.dscp.down,
            DscpSeen {
                ef: Some(46),
                af41: Some(34)
            }
        );
        assert_eq!(
            m.dscp_preserved,
            Ways {
                up: Some(true),
                down: Some(true)
            }
        );
        let m = measure(
            Fake {
                clear_dscp_up: true,
                ..Fake::default()
            },
            1000,
        )
        .await;
        assert_eq!(
            m.dscp.up,
            DscpSeen {
                ef: Some(0),
                af41: Some(0)
            }
        );
        assert_eq!(
            m.dscp_preserved,
            Ways {
                up: Some(false),
                down: Some(true)
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_policed_way_up_gives_the_policer_rate() {
        let m = measure(
            Fake {
                police_up_kbps: Some(2000.0),
                ..Fake::default()
            },
            8000,
        )
        .await;
        let up = m.up_kbps.unwrap();
        let ramp = m.bandwidth.up.as_ref().unwrap();
        assert!(!ramp.at_cap, "{ramp:?}");
        assert!((1600.0..2400.0).contains(&up), "{up} {ramp:?}");
        assert!(m.bandwidth.down.as_ref().unwrap().at_cap);
    }

    fn got(sequence: u32, sent: u64, received: u64, at: u64) -> Got {
        let request = Request::new(Kind::Echo, sequence, sent);
        Got {
            reply: Reply::to(&request, 172, "127.0.0.1:1".parse().unwrap(), received),
            at_ns: at,
            dscp: None,
        }
    }

    #[test]
    fn duplicates_and_reordering_are_told_apart_by_direction() {
        const MS: u64 = 1_000_000;
        let replies = [
            got(0, 0, 100 * MS, 10 * MS),
            // 2 overtook 1 on the way up (received before it).
            got(2, 40 * MS, 120 * MS, 50 * MS),
            got(1, 20 * MS, 125 * MS, 55 * MS),
            // 3 received twice (two receive times): doubled up.
            got(3, 60 * MS, 160 * MS, 70 * MS),
            got(3, 60 * MS, 161 * MS, 71 * MS),
            // 5 answered once, arrived twice: doubled down; 4 after 5
            // on the way down.
            got(5, 100 * MS, 200 * MS, 110 * MS),
            got(5, 100 * MS, 200 * MS, 111 * MS),
            got(4, 80 * MS, 180 * MS, 112 * MS),
        ];
        let (f, rtts) = figures(7, Some(7), &replies);
        assert_eq!(f.duplicates, Ways { up: 1, down: 1 });
        assert_eq!(f.reordered, Ways { up: 1, down: 1 });
        // 6 never came back: lost down (counted 7 of 7 up).
        assert_eq!(f.loss_pct.up, Some(0.0));
        assert_eq!(f.loss_pct.received_down, 6);
        let down = f.loss_pct.down.unwrap();
        assert!((down - 100.0 / 7.0).abs() < 1e-9);
        assert_eq!(rtts.len(), 6);
        assert_eq!(f.rtt_ms.median, Some(10.0));
        // A responder that counts nothing: no split.
        let (f, _) = figures(7, Some(0), &replies);
        assert_eq!((f.loss_pct.up, f.loss_pct.down), (None, None));
    }

    #[test]
    fn ramps_double_up_to_the_cap() {
        assert_eq!(
            ramp_rates(10_000.0),
            vec![400.0, 800.0, 1600.0, 3200.0, 6400.0, 10_000.0]
        );
        assert_eq!(ramp_rates(300.0), vec![300.0]);
        assert_eq!(ramp_rates(400.0), vec![400.0]);
    }

    #[test]
    fn dispersion_of_the_later_half() {
        // 1000-byte packets every 8 ms after a burst: 1000 kbit/s.
        let mut t: Vec<u64> = (0..10).map(|i| i * 100).collect();
        t.extend((1..=10).map(|i| 1_000 + i * 8_000_000));
        assert_eq!(
            dispersion_kbps(&mut t, 1000).map(|r| r.round()),
            Some(1000.0)
        );
    }
}

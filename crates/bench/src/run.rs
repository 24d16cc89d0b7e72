//! The run: threads, their commands, and the report.
//!
//! The main thread resolves the server, checks it answers, starts the
//! generator threads (which set their allocations up at once), then gives
//! them phases: a traffic phase (warmup, measured window, drain), a churn
//! window, or the saturation steps one after the other; it reads the
//! server's CPU time at the window's edges and finally has the threads
//! delete their allocations.

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnpike_stun::Message;

use crate::hist::Histogram;
use crate::proto::{self, Answer, Request};
use crate::report::{self, Churn, Report, ServerProcess, Setup, Step, Traffic};
use crate::{Config, Error, Mode, Transport, procfs, stream, udp};

/// What every generator thread shares, read-only but for `abort`.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) server: SocketAddr,
    /// The server's host name as given (TLS server name).
    pub(crate) host: String,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) size: usize,
    pub(crate) peer_ip: Ipv4Addr,
    /// Marks this run's test packets.
    pub(crate) tag: u32,
    /// Marks this run's transaction IDs.
    pub(crate) tid_tag: u16,
    /// All times are nanoseconds since this instant.
    pub(crate) epoch: Instant,
    /// Set when the run must stop (a fatal error).
    pub(crate) abort: AtomicBool,
    pub(crate) allocations: u32,
    pub(crate) transport: Transport,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Shared {
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

/// A thread's share of the allocations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Work {
    pub(crate) thread: u16,
    pub(crate) first_global: u32,
    pub(crate) count: usize,
    /// Churn mode: no setup; slots create and delete allocations.
    pub(crate) churn: bool,
}

/// A traffic phase, times in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    /// Packets per second per allocation.
    pub(crate) rate: f64,
    /// Sending starts (warmup).
    pub(crate) start_ns: u64,
    pub(crate) window_start_ns: u64,
    /// Sending stops.
    pub(crate) window_end_ns: u64,
    /// Echoes still in flight are waited for until then.
    pub(crate) drain_end_ns: u64,
}

#[derive(Debug)]
pub(crate) enum Cmd {
    Phase(Phase),
    Churn {
        start_ns: u64,
        end_ns: u64,
    },
    /// Delete the allocations and end.
    Finish,
}

/// Counts of a phase, of the packets sent in its window.
#[derive(Debug, Clone, Default)]
pub(crate) struct PhaseStats {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) peer_received: u64,
    pub(crate) skipped: u64,
    pub(crate) hist: Histogram,
}

impl PhaseStats {
    pub(crate) fn merge(&mut self, o: &Self) {
        self.sent += o.sent;
        self.received += o.received;
        self.peer_received += o.peer_received;
        self.skipped += o.skipped;
        self.hist.merge(&o.hist);
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChurnStats {
    pub(crate) created: u64,
    pub(crate) deleted: u64,
    pub(crate) failed: u64,
}

#[derive(Debug)]
pub(crate) enum Event {
    SetupDone {
        created: u64,
        failed: u64,
        error: Option<String>,
    },
    PhaseDone(PhaseStats),
    ChurnDone(ChurnStats),
    Finished {
        deleted: u64,
    },
    Fatal(String),
}

/// Echoes in flight when sending stops are waited for this long.
const DRAIN: Duration = Duration::from_millis(500);
/// Time between the order to start a phase and its start.
const LEAD: Duration = Duration::from_millis(50);
/// Saturation: rate factor between steps, the loss that ends the ramp,
/// and a bound on the steps.
const STEP_FACTOR: f64 = 1.25;
const MAX_LOSS_PCT: f64 = 1.0;
const MAX_STEPS: usize = 60;
/// Saturation: steps that bisect between the last step under the loss
/// limit and the first over it, which brings the ramp's resolution from
/// 25 % to under 3 %.
const REFINE_STEPS: usize = 3;

fn failed(m: impl Into<String>) -> Error {
    Error::Failed(m.into())
}

/// Resolves HOST:PORT, preferring IPv4.
fn resolve(server: &str) -> Result<(SocketAddr, String), Error> {
    let addrs: Vec<SocketAddr> = server
        .to_socket_addrs()
        .map_err(|e| {
            Error::Usage(format!(
                "cannot resolve the server {server}: {e} (give HOST:PORT)"
            ))
        })?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::Usage(format!("{server} resolves to no address")))?;
    let host = server
        .rsplit_once(':')
        .map_or(server, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((addr, host))
}

/// Checks, with an unauthenticated Allocate (answered with 401, creating
/// nothing), that a TURN server answers over UDP.
fn probe_udp(server: SocketAddr, name: &str) -> Result<(), Error> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock =
        UdpSocket::bind(local).map_err(|e| failed(format!("cannot open a UDP socket: {e}")))?;
    sock.connect(server)
        .map_err(|e| failed(format!("cannot reach {name} over udp: {e}")))?;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 1500];
    let tid = proto::transaction_id(u16::MAX, u32::MAX, 0, 0x5052);
    let len = proto::encode(&mut buf, tid, Request::Allocate, None)
        .map_err(|e| failed(format!("cannot encode a probe: {e}")))?;
    let probe = buf.get(..len).unwrap_or_default().to_vec();
    for _ in 0..4 {
        if let Err(e) = sock.send(&probe) {
            return Err(unreachable(name, "udp", &e));
        }
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    if let Ok(msg) = Message::parse(buf.get(..n).unwrap_or_default())
                        && msg.transaction_id() == tid
                        && proto::answer(&msg) != Answer::Other
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(unreachable(name, "udp", &e));
                }
                Err(_) => break,
            }
        }
    }
    Err(failed(format!(
        "no answer from {name} over udp: is a TURN server listening there?"
    )))
}

pub(crate) fn unreachable(name: &str, transport: &str, e: &std::io::Error) -> Error {
    failed(format!("cannot reach {name} over {transport}: {e}"))
}

/// A random 64-bit value (std's hasher keys are random per process).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

struct Threads {
    shared: Arc<Shared>,
    events: Receiver<(u16, Event)>,
    cmds: Vec<Sender<Cmd>>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    fn count(&self) -> usize {
        self.cmds.len()
    }

    fn send(&self, cmd: impl Fn() -> Cmd) {
        for c in &self.cmds {
            let _ = c.send(cmd());
        }
    }

    /// One event from every thread, within `limit`.
    fn collect(&self, limit: Duration) -> Result<Vec<Event>, Error> {
        let deadline = Instant::now() + limit;
        let mut got: Vec<Option<Event>> = (0..self.count()).map(|_| None).collect();
        let mut left = self.count();
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok((_, Event::Fatal(m))) => return Err(failed(m)),
                Ok((id, e)) => {
                    if let Some(slot) = got.get_mut(usize::from(id))
                        && slot.is_none()
                    {
                        *slot = Some(e);
                        left -= 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(failed("the generator threads stopped answering"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(failed("a generator thread ended early"));
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Stops everything (after an error).
    fn abort(self) {
        self.shared.abort.store(true, Ordering::Relaxed);
        drop(self.cmds);
        for h in self.handles {
            let _ = h.join();
        }
    }

    /// Has the threads delete their allocations, and waits for them;
    /// returns how many were deleted.
    fn finish(self) -> u64 {
        self.send(|| Cmd::Finish);
        let deleted = self.collect(Duration::from_secs(30)).map_or(0, |events| {
            events
                .iter()
                .map(|e| match e {
                    Event::Finished { deleted } => *deleted,
                    _ => 0,
                })
                .sum()
        });
        drop(self.cmds);
        for h in self.handles {
            let _ = h.join();
        }
        deleted
    }
}

/// Runs the benchmark the configuration describes.
pub fn run(config: &Config) -> Result<Report, Error> {
    config.validate()?;
    let (server, host) = resolve(&config.server)?;
    let IpAddr::V4(peer_ip) = config.peer_ip else {
        return Err(Error::Usage("--peer-ip must be an IPv4 address".into()));
    };
    let threads = config
        .threads
        .min(config.allocations)
        .clamp(1, usize::from(u16::MAX));
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // REST credentials valid for a day past any reasonable run.
    let (username, password) = config.credentials.resolve(now_unix, 86_400);
    let tls = match config.transport {
        Transport::Tls => Some(stream::tls_config(config.ca.as_deref())?),
        Transport::Udp | Transport::Tcp => None,
    };
    let rss_before = match config.server_pid {
        Some(pid) => Some(
            procfs::memory_kib(pid)
                .map_err(|e| Error::Usage(format!("--server-pid {pid}: {e}")))?,
        ),
        None => None,
    };
    match config.transport {
        Transport::Udp => probe_udp(server, &config.server)?,
        Transport::Tcp | Transport::Tls => stream::probe(server, &config.server)?,
    }

    let r = random();
    let shared = Arc::new(Shared {
        server,
        host,
        username,
        password,
        size: config.size,
        peer_ip,
        tag: (r >> 32) as u32,
        tid_tag: (r & 0xFFFF) as u16,
        epoch: Instant::now(),
        abort: AtomicBool::new(false),
        allocations: u32::try_from(config.allocations).unwrap_or(u32::MAX),
        transport: config.transport,
        tls,
    });

    let setup_started = Instant::now();
    let (ev_tx, events) = mpsc::channel();
    let mut cmds = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    let mut first = 0usize;
    for t in 0..threads {
        let count = config.allocations / threads + usize::from(t < config.allocations % threads);
        let work = Work {
            thread: u16::try_from(t).unwrap_or(u16::MAX),
            first_global: u32::try_from(first).unwrap_or(u32::MAX),
            count,
            churn: config.mode == Mode::Churn,
        };
        first += count;
        let (cmd_tx, cmd_rx) = mpsc::channel();
        cmds.push(cmd_tx);
        let shared = Arc::clone(&shared);
        let ev_tx = ev_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || match shared.transport {
                Transport::Udp => udp::thread(shared, &work, &cmd_rx, &ev_tx),
                Transport::Tcp | Transport::Tls => stream::thread(shared, &work, &cmd_rx, &ev_tx),
            })
            .map_err(|e| failed(format!("cannot start a generator thread: {e}")))?;
        handles.push(handle);
    }
    drop(ev_tx);
    let threads = Threads {
        shared,
        events,
        cmds,
        handles,
    };
    match drive(config, &threads, setup_started, rss_before) {
        Ok(report) => {
            let deleted = threads.finish();
            if config.mode != Mode::Churn && deleted < report.setup.created {
                eprintln_progress(&format!(
                    "{} allocation(s) could not be deleted; they expire on the server",
                    report.setup.created - deleted
                ));
            }
            Ok(report)
        }
        Err(e) => {
            threads.abort();
            Err(e)
        }
    }
}

fn drive(
    config: &Config,
    threads: &Threads,
    setup_started: Instant,
    rss_before: Option<(u64, u64)>,
) -> Result<Report, Error> {
    let shared = &threads.shared;
    let mut report = Report {
        server: config.server.clone(),
        transport: config.transport.as_str(),
        allocations: config.allocations,
        rate_pps: config.rate,
        size: config.size,
        duration_s: config.duration.as_secs_f64(),
        threads: threads.count(),
        tls_verified: (config.transport == Transport::Tls).then_some(config.ca.is_some()),
        ..Report::default()
    };

    // Setup: every thread makes its allocations at once.
    let setup_limit = Duration::from_secs(120 + (config.allocations / 100) as u64);
    let mut created = 0;
    let mut failed_count = 0;
    let mut first_error = None;
    for e in threads.collect(setup_limit)? {
        if let Event::SetupDone {
            created: c,
            failed: f,
            error,
        } = e
        {
            created += c;
            failed_count += f;
            first_error = first_error.or(error);
        }
    }
    let seconds = setup_started.elapsed().as_secs_f64();
    if config.mode != Mode::Churn {
        report.setup = Setup {
            created,
            failed: failed_count,
            seconds: report::round(seconds, 4),
            per_second: report::round(created as f64 / seconds.max(1e-9), 1),
        };
        if created == 0 {
            return Err(failed(format!(
                "no allocation could be created on {}: {}",
                config.server,
                first_error.unwrap_or_else(|| "no answer".into())
            )));
        }
    }
    let rss_after = match config.server_pid {
        Some(pid) => Some(procfs::memory_kib(pid).map_err(failed)?),
        None => None,
    };

    match config.mode {
        Mode::Churn => {
            let start = shared.now_ns() + nanos(LEAD);
            let end = start + nanos(config.duration);
            threads.send(|| Cmd::Churn {
                start_ns: start,
                end_ns: end,
            });
            let (cpu0, gen0) = sample_at(shared, start, config.server_pid)?;
            let (cpu1, gen1) = sample_at(shared, end, config.server_pid)?;
            let mut c = ChurnStats::default();
            let limit = config.duration + Duration::from_secs(30);
            for e in threads.collect(limit)? {
                if let Event::ChurnDone(s) = e {
                    c.created += s.created;
                    c.deleted += s.deleted;
                    c.failed += s.failed;
                }
            }
            let seconds = config.duration.as_secs_f64();
            let churn = Churn {
                created: c.created,
                deleted: c.deleted,
                failed: c.failed,
                seconds,
                per_second: report::round(c.created as f64 / seconds, 1),
            };
            report.setup = Setup {
                created: churn.created,
                failed: churn.failed,
                seconds,
                per_second: churn.per_second,
            };
            report.churn = Some(churn);
            report.generator_cpu_s = report::round(gen1 - gen0, 3);
            report.server_process = server_process(config, cpu0, cpu1, 0, rss_before, rss_after)?;
        }
        Mode::Stream => {
            let (step, gen_cpu) = phase(
                config,
                threads,
                f64::from(config.rate),
                created,
                rss_before,
                rss_after,
            )?;
            report.traffic = step.traffic;
            report.server_process = step.server_process;
            report.generator_cpu_s = report::round(gen_cpu, 3);
        }
        Mode::Saturate => {
            let mut rate = f64::from(config.rate);
            let mut steps: Vec<Step> = Vec::new();
            let mut gen_total = 0.0;
            let mut step_at = |rate: f64, steps: &mut Vec<Step>| -> Result<Verdict, Error> {
                let (step, gen_cpu) = phase(config, threads, rate, created, rss_before, rss_after)?;
                gen_total += gen_cpu;
                let verdict = Verdict::of(&step);
                let t = &step.traffic;
                eprintln_progress(&format!(
                    "step {}: {:.1} pps/allocation, offered {:.0}/s, delivered {:.0}/s, loss {:.3} %{}",
                    steps.len() + 1,
                    rate,
                    t.offered_pps,
                    t.delivered_pps,
                    t.loss_pct,
                    if t.generator_limited {
                        " (generator-limited)"
                    } else {
                        ""
                    }
                ));
                steps.push(step);
                Ok(verdict)
            };
            let mut good = None;
            loop {
                match step_at(rate, &mut steps)? {
                    Verdict::Held => good = Some(rate),
                    Verdict::Lost => break,
                    Verdict::GeneratorLimited => {
                        good = None;
                        break;
                    }
                }
                if steps.len() >= MAX_STEPS {
                    good = None;
                    break;
                }
                rate *= STEP_FACTOR;
            }
            // The ramp ended on loss: bisect (geometrically) between the
            // last rate that held and the one that did not.
            if let Some(mut low) = good {
                let mut high = rate;
                for _ in 0..REFINE_STEPS {
                    let mid = (low * high).sqrt();
                    match step_at(mid, &mut steps)? {
                        Verdict::Held => low = mid,
                        Verdict::Lost => high = mid,
                        Verdict::GeneratorLimited => break,
                    }
                }
            }
            let best = steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.traffic.loss_pct < MAX_LOSS_PCT)
                .max_by(|(_, a), (_, b)| {
                    a.traffic.delivered_pps.total_cmp(&b.traffic.delivered_pps)
                })
                .map(|(i, _)| i);
            if let Some(s) = steps.get(best.unwrap_or(0)) {
                report.traffic = s.traffic.clone();
                report.server_process.clone_from(&s.server_process);
            }
            report.best_step = best;
            report.steps = Some(steps);
            report.generator_cpu_s = report::round(gen_total, 3);
        }
    }
    Ok(report)
}

/// How a saturation step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Loss stayed under the limit.
    Held,
    /// Loss reached the limit: the server (or the path) is saturated.
    Lost,
    /// The generator could not offer the rate; no conclusion on the server.
    GeneratorLimited,
}

impl Verdict {
    fn of(step: &Step) -> Self {
        if step.traffic.generator_limited {
            Self::GeneratorLimited
        } else if step.traffic.loss_pct >= MAX_LOSS_PCT {
            Self::Lost
        } else {
            Self::Held
        }
    }
}

/// Progress for a person, on standard error.
fn eprintln_progress(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "turnpike bench: {line}");
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sleeps until `at_ns`, then reads the server's and the generator's CPU
/// seconds.
fn sample_at(shared: &Shared, at_ns: u64, pid: Option<u32>) -> Result<(f64, f64), Error> {
    let at = shared.instant(at_ns);
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
    let server = match pid {
        Some(pid) => procfs::cpu_seconds(pid).map_err(|e| failed(format!("--server-pid: {e}")))?,
        None => 0.0,
    };
    let me = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0);
    Ok((server, me))
}

fn server_process(
    config: &Config,
    cpu0: f64,
    cpu1: f64,
    relayed: u64,
    rss_before: Option<(u64, u64)>,
    rss_after: Option<(u64, u64)>,
) -> Result<Option<ServerProcess>, Error> {
    let Some(pid) = config.server_pid else {
        return Ok(None);
    };
    let (_, peak) = procfs::memory_kib(pid).map_err(|e| failed(format!("--server-pid: {e}")))?;
    let before = rss_before.map_or(0, |(rss, _)| rss);
    let after = rss_after.map_or(0, |(rss, _)| rss);
    let cpu_s = (cpu1 - cpu0).max(0.0);
    let delta = i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
    let per_alloc = delta * 1024 / i64::try_from(config.allocations.max(1)).unwrap_or(1);
    Ok(Some(ServerProcess {
        pid,
        cpu_s: report::round(cpu_s, 3),
        cpu_us_per_relayed_packet: if relayed > 0 {
            report::round(cpu_s * 1e6 / relayed as f64, 3)
        } else {
            0.0
        },
        rss_before_kib: before,
        rss_after_kib: after,
        peak_rss_kib: peak,
        rss_per_allocation_bytes: per_alloc,
    }))
}

/// One traffic phase at `rate` per allocation; returns it as a step and
/// the generator's CPU seconds over its window.
fn phase(
    config: &Config,
    threads: &Threads,
    rate: f64,
    created: u64,
    rss_before: Option<(u64, u64)>,
    rss_after: Option<(u64, u64)>,
) -> Result<(Step, f64), Error> {
    let shared = &threads.shared;
    let start = shared.now_ns() + nanos(LEAD);
    let window_start = start + nanos(config.warmup);
    let window_end = window_start + nanos(config.duration);
    let p = Phase {
        rate,
        start_ns: start,
        window_start_ns: window_start,
        window_end_ns: window_end,
        drain_end_ns: window_end + nanos(DRAIN),
    };
    threads.send(|| Cmd::Phase(p));
    let (cpu0, gen0) = sample_at(shared, window_start, config.server_pid)?;
    let (cpu1, gen1) = sample_at(shared, window_end, config.server_pid)?;
    let limit = config.duration + DRAIN + Duration::from_secs(30);
    let mut stats = PhaseStats::default();
    for e in threads.collect(limit)? {
        if let Event::PhaseDone(s) = e {
            stats.merge(&s);
        }
    }
    let seconds = config.duration.as_secs_f64();
    let traffic = Traffic::new(
        report::round(created as f64 * rate, 1),
        seconds,
        stats.sent,
        stats.received,
        stats.peer_received,
        &stats.hist,
    );
    let relayed = traffic.relayed_packets;
    Ok((
        Step {
            rate_pps: report::round(rate, 3),
            traffic,
            server_process: server_process(config, cpu0, cpu1, relayed, rss_before, rss_after)?,
            generator_cpu_s: report::round(gen1 - gen0, 3),
        },
        gen1 - gen0,
    ))
}

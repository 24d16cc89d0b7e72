//! A check run: every endpoint of a profile probed at once, within one
//! time budget, and the verdict drawn from what worked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use turnpike_profile::{Endpoint, Kind, Profile};
use turnpike_stun::{Attr, AttrType, Method};

use crate::client::{Client, Link};
use crate::net::{self, Failure, Proxy, Route, Step};
use crate::report::{Check, Report, Status};
use crate::tls::Seen;
use crate::{idle, measure, mtu, nat, probe, remedy};

/// What to check, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    pub profile: Profile,
    /// What the report says was checked (a URL or a file).
    pub target: String,
    /// TURN credentials, for allocations.
    pub credentials: Option<(String, String)>,
    /// The issuer the service's TLS certificates should have; another one
    /// means the connection is intercepted.
    pub tls_issuer: Option<String>,
    /// The whole run's time.
    pub budget: Duration,
    /// `HTTPS_PROXY`, tried for TLS endpoints that fail directly.
    pub proxy: Option<Proxy>,
    /// The server's probe responder, when the profile came from a
    /// turnpike server that runs one.
    pub probe: Option<ProbeTarget>,
    /// The measurements of the path to the probe responder, when it is
    /// there; `None`: skip them (`--no-measure`).
    pub measure: Option<MeasureOptions>,
}

pub use crate::measure::Options as MeasureOptions;

/// A turnpike server's probe responder (`[probe]`), as its profile names
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The id of its `udp-range` endpoint: that range is checked by
    /// sending to a sample of its ports, which answer.
    pub udp_endpoint: String,
    /// Whether the credentials are the server's check credentials, which
    /// relay to the responder alone: TURN checks then make their relayed
    /// round trip to it instead of between two allocations.
    pub relay_to_it: bool,
}

/// What a run tells while it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Started { id: String },
    Finished { id: String, status: Status },
}

/// Runs every check of `plan`; `progress` hears of each as it starts and
/// ends.
pub async fn run(plan: Plan, progress: Option<mpsc::UnboundedSender<Progress>>) -> Report {
    let started_at = std::time::SystemTime::now();
    let started = Instant::now();
    // What is left at the end goes to writing the report.
    let deadline = started + plan.budget.saturating_sub(Duration::from_millis(300));
    let plan = Arc::new(plan);
    let tell = |p: Progress| {
        if let Some(tx) = &progress {
            let _ = tx.send(p);
        }
    };

    // Names first, each once: every endpoint on a host waits for it.
    let mut hosts: Vec<&str> = plan
        .profile
        .endpoints
        .iter()
        .filter(|e| e.ip().is_none())
        .map(|e| e.host.as_str())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let dns_deadline = (Instant::now() + Duration::from_secs(5)).min(deadline);
    let mut lookups = tokio::task::JoinSet::new();
    for host in hosts {
        let host = host.to_owned();
        tell(Progress::Started {
            id: format!("dns:{host}"),
        });
        lookups.spawn(async move {
            let t = Instant::now();
            let result = match tokio::time::timeout_at(dns_deadline, net::resolve(&host, 0)).await {
                Ok(r) => r.map(|addrs| addrs.into_iter().map(|a| a.ip()).collect::<Vec<_>>()),
                Err(_) => Err("timed out".to_owned()),
            };
            (host, result, t.elapsed())
        });
    }
    let mut resolved: HashMap<String, Result<Vec<std::net::IpAddr>, String>> = plan
        .profile
        .endpoints
        .iter()
        .filter_map(|e| Some((e.host.clone(), Ok(vec![e.ip()?]))))
        .collect();
    let mut checks = Vec::new();
    while let Some(Ok((host, result, took))) = lookups.join_next().await {
        let check = remedy::dns_check(&host, &result, took);
        tell(Progress::Finished {
            id: check.id.clone(),
            status: check.status,
        });
        checks.push(check);
        resolved.insert(host, result);
    }
    checks.sort_by(|a, b| a.id.cmp(&b.id));
    let probe_peer = probe_peer(&plan, &resolved);

    let mut tasks = tokio::task::JoinSet::new();
    for (index, endpoint) in plan.profile.endpoints.iter().enumerate() {
        let addrs = resolved
            .get(&endpoint.host)
            .cloned()
            .unwrap_or_else(|| Err("not resolved".into()));
        let plan = Arc::clone(&plan);
        let endpoint = endpoint.clone();
        tell(Progress::Started {
            id: check_id(&endpoint),
        });
        tasks.spawn(async move {
            let t = Instant::now();
            let mut check = match addrs {
                Ok(ips) => check_endpoint(&plan, &endpoint, &ips, probe_peer, deadline).await,
                Err(_) => {
                    let mut c =
                        Check::new(check_id(&endpoint), remedy::title(&endpoint), Status::Skip);
                    c.detail = Some(format!("{} does not resolve", endpoint.host));
                    c
                }
            };
            check.endpoint = Some(endpoint.id.clone());
            check.duration_ms = t.elapsed().as_secs_f64() * 1000.0;
            (index, check)
        });
    }
    let mut by_endpoint: Vec<Option<Check>> = vec![None; plan.profile.endpoints.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, check)) = joined {
            tell(Progress::Finished {
                id: check.id.clone(),
                status: check.status,
            });
            if let Some(slot) = by_endpoint.get_mut(index) {
                *slot = Some(check);
            }
        }
    }
    let endpoint_checks: Vec<Check> = by_endpoint.into_iter().flatten().collect();
    let works = |e: &Endpoint| {
        endpoint_checks.iter().any(|c| {
            c.endpoint.as_deref() == Some(&e.id) && matches!(c.status, Status::Pass | Status::Warn)
        })
    };
    let assessment = plan.profile.assess(works);
    let measured = match &plan.measure {
        Some(opts) => measure_path(&plan, opts, &resolved, &endpoint_checks, deadline).await,
        None => None,
    };
    checks.extend(endpoint_checks);
    let measurements = measured.map(|(m, quality)| {
        checks.extend(quality);
        m
    });
    let summary = remedy::summary(&plan.profile, &assessment);
    Report {
        verdict: assessment.verdict,
        summary,
        profile: plan.profile.about.name.clone(),
        target: plan.target.clone(),
        started: rfc3339(started_at),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        checks,
        measurements,
    }
}

/// The UDP idle-timeout search's longest silence when no threshold names
/// one, and the search's bounds (the responder delays a reply 600 s at
/// most).
const UDP_TIMEOUT_S: f64 = 180.0;
const UDP_TIMEOUT_RANGE_S: (f64, f64) = (5.0, 600.0);

/// The UDP idle-timeout search the profile asks for (`[measure]
/// udp_idle_timeout`), as its longest silence: the `udp_idle_timeout_s`
/// threshold's `min`, so that the search can show the network reaches it,
/// else 180 s; within 5 to 600 s. `None` when it does not ask. The
/// `--udp-timeout` and `--no-udp-timeout` flags override it.
#[must_use]
pub fn profile_udp_timeout(profile: &Profile) -> Option<Duration> {
    if !profile.measure.udp_idle_timeout {
        return None;
    }
    let (lo, hi) = UDP_TIMEOUT_RANGE_S;
    let max = profile
        .thresholds
        .udp_idle_timeout_s
        .as_ref()
        .map_or(UDP_TIMEOUT_S, |l| l.min)
        .clamp(lo, hi);
    Some(Duration::from_secs_f64(max))
}

/// The probe responder's first UDP port on its first address.
fn responder(
    plan: &Plan,
    resolved: &HashMap<String, Result<Vec<std::net::IpAddr>, String>>,
) -> Option<(SocketAddr, String)> {
    let target = plan.probe.as_ref()?;
    let e = plan
        .profile
        .endpoints
        .iter()
        .find(|e| e.id == target.udp_endpoint)?;
    let ip = *resolved.get(&e.host)?.as_ref().ok()?.first()?;
    Some((SocketAddr::new(ip, e.port_range()?.lo()), check_id(e)))
}

/// The best path to the probe responder: direct UDP when its range
/// answered, else through the first TURN transport that relayed (UDP,
/// then TCP, then TLS). Its measurements and `quality:` checks.
async fn measure_path(
    plan: &Plan,
    opts: &MeasureOptions,
    resolved: &HashMap<String, Result<Vec<std::net::IpAddr>, String>>,
    checks: &[Check],
    deadline: Instant,
) -> Option<(crate::report::Measurements, Vec<Check>)> {
    let (target, range_check) = responder(plan, resolved)?;
    let works = |id: &str| {
        checks
            .iter()
            .any(|c| c.id == id && matches!(c.status, Status::Pass | Status::Warn))
    };
    let mut prober = None;
    if works(&range_check) {
        prober = measure::Prober::direct(target).await.ok();
    }
    if prober.is_none() && plan.credentials.is_some() {
        for (kind, path) in [
            (Kind::TurnUdp, measure::PathKind::TurnUdp),
            (Kind::TurnTcp, measure::PathKind::TurnTcp),
            (Kind::TurnTls, measure::PathKind::TurnTls),
        ] {
            for e in plan.profile.endpoints.iter().filter(|e| e.kind == kind) {
                if prober.is_some() || !works(&check_id(e)) {
                    continue;
                }
                let Some(Ok(ips)) = resolved.get(&e.host) else {
                    continue;
                };
                let port = e.port.unwrap_or(0);
                let addrs: Vec<SocketAddr> =
                    ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
                let within = (Instant::now() + Duration::from_secs(5)).min(deadline);
                prober = turn_prober(plan, e, &addrs, path, target, within)
                    .await
                    .ok();
            }
        }
    }
    let prober = prober?;
    let mut m = crate::report::Measurements {
        path: prober.kind.as_str().to_owned(),
        target: target.to_string(),
        ..crate::report::Measurements::default()
    };
    let mut extra = measure::Extra::default();
    let hello = (Instant::now() + Duration::from_secs(3)).min(deadline);
    if let Err(f) = prober.hello(hello).await {
        m.notes.push(f.detail);
        return Some((m, Vec::new()));
    }
    let video_kbps = opts
        .video_kbps
        .or_else(|| {
            let t = &plan.profile.thresholds;
            let up = t.up_kbps.as_ref().map(|l| l.min);
            let down = t.down_kbps.as_ref().map(|l| l.min);
            let most = up.into_iter().chain(down).reduce(f64::max)?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(most.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
        })
        .unwrap_or(1000)
        .min(opts.max_kbps.max(1));
    let direct = prober.kind == measure::PathKind::UdpDirect;
    let side = (Instant::now() + Duration::from_secs(6)).min(deadline);
    let nat = async {
        if direct {
            Some(nat::classify(target, side).await)
        } else {
            None
        }
    };
    let cookie = prober.cookie();
    let mtu = async {
        if direct {
            Some(mtu::path_mtu(target, cookie, side).await)
        } else {
            None
        }
    };
    let idle = async {
        match opts.udp_timeout {
            Some(max) if direct => Some(idle::udp_idle_timeout(target, max, deadline).await),
            _ => None,
        }
    };
    let (measured, nat, mtu, idle) = tokio::join!(
        measure::run(&prober, opts, video_kbps, deadline),
        nat,
        mtu,
        idle
    );
    m = crate::report::Measurements {
        notes: [m.notes, measured.notes.clone()].concat(),
        ..measured
    };
    match nat {
        Some(Ok(r)) => extra.nat = Some(r),
        Some(Err(f)) => m.notes.push(format!("NAT behaviour: {}", f.detail)),
        None => {}
    }
    match mtu {
        Some(Ok(r)) => extra.mtu = Some(r),
        Some(Err(f)) => m.notes.push(format!("path MTU: {}", f.detail)),
        None => {}
    }
    match idle {
        Some(Ok(r)) => extra.idle = Some(r),
        Some(Err(f)) => m.notes.push(format!("UDP idle timeout: {}", f.detail)),
        None if opts.udp_timeout.is_some() => m
            .notes
            .push("UDP idle timeout: searched on direct UDP only".to_owned()),
        None => {}
    }
    measure::merge(&mut m, &extra);
    let quality = measure::quality_checks(&m, &plan.profile.thresholds, &extra, opts);
    Some((m, quality))
}

/// A TURN allocation on `e` (at `addrs`) that relays to `target`.
async fn turn_prober(
    plan: &Plan,
    e: &Endpoint,
    addrs: &[SocketAddr],
    path: measure::PathKind,
    target: SocketAddr,
    deadline: Instant,
) -> Result<measure::Prober, Failure> {
    let linked = link(plan, e, addrs, deadline).await?;
    let mut client = Client::new(linked.link, plan.credentials.clone());
    allocate(&mut client, deadline).await?;
    measure::Prober::turn(path, client, target, deadline).await
}

/// Where TURN checks relay to when the credentials may relay only to the
/// probe responder: its first UDP port, on its first address.
fn probe_peer(
    plan: &Plan,
    resolved: &HashMap<String, Result<Vec<std::net::IpAddr>, String>>,
) -> Option<SocketAddr> {
    plan.probe.as_ref().filter(|p| p.relay_to_it)?;
    responder(plan, resolved).map(|(at, _)| at)
}

/// `<kind>:<endpoint id>`.
fn check_id(e: &Endpoint) -> String {
    format!("{}:{}", e.kind.as_str(), e.id)
}

async fn check_endpoint(
    plan: &Plan,
    e: &Endpoint,
    ips: &[std::net::IpAddr],
    probe_peer: Option<SocketAddr>,
    deadline: Instant,
) -> Check {
    let port = e.port.unwrap_or(0);
    let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    let mut check = Check::new(check_id(e), remedy::title(e), Status::Fail);
    let outcome = match e.kind {
        Kind::Tcp => net::connect(&addrs, deadline)
            .await
            .map(|(_, at)| Outcome::plain(format!("connected to {at}"))),
        Kind::Tls | Kind::Https | Kind::Wss => tls_endpoint(plan, e, &addrs, deadline).await,
        Kind::StunUdp | Kind::StunTcp => stun_binding(plan, e, &addrs, deadline).await,
        Kind::TurnUdp | Kind::TurnTcp | Kind::TurnTls => {
            turn_endpoint(plan, e, &addrs, probe_peer, deadline).await
        }
        Kind::UdpRange => {
            let responder = plan.probe.as_ref().is_some_and(|p| p.udp_endpoint == e.id);
            match (responder, e.port_range(), ips.first()) {
                (true, Some(range), Some(&ip)) => udp_range(ip, range, deadline).await,
                _ => {
                    check.status = Status::Skip;
                    check.detail = Some(
                        "UDP ports cannot be told open without a responder on them; check against a turnpike server with [probe] on".into(),
                    );
                    return check;
                }
            }
        }
    };
    match outcome {
        Ok(o) => {
            check.status = o.status;
            check.value = o.value;
            check.unit = o.unit;
            check.detail = Some(o.detail);
            check.remediation = o.remediation;
        }
        Err(f) => {
            check.status = Status::Fail;
            check.detail = Some(f.detail.clone());
            check.remediation = Some(remedy::for_failure(e, ips, &f));
        }
    }
    check
}

/// What a check that reached its endpoint found.
#[derive(Debug)]
struct Outcome {
    status: Status,
    value: serde_json::Value,
    unit: Option<String>,
    detail: String,
    remediation: Option<String>,
}

impl Outcome {
    fn plain(detail: String) -> Self {
        Self {
            status: Status::Pass,
            value: serde_json::Value::Null,
            unit: None,
            detail,
            remediation: None,
        }
    }

    /// A warning when `route` went through the proxy: the direct rule is
    /// the one to change.
    fn through(mut self, route: &Route, e: &Endpoint, addrs: &[SocketAddr]) -> Self {
        if let Route::Proxied(proxy, direct) = route {
            self.status = Status::Warn;
            self.detail = format!(
                "only through the proxy {}:{}: {}; direct: {}",
                proxy.host, proxy.port, self.detail, direct.detail
            );
            let ips: Vec<std::net::IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            self.remediation = Some(remedy::for_failure(e, &ips, direct));
        }
        self
    }

    fn ms(detail: String, took: Duration) -> Self {
        Self {
            value: serde_json::json!((took.as_secs_f64() * 10_000.0).round() / 10.0),
            unit: Some("ms".into()),
            ..Self::plain(detail)
        }
    }
}

/// A sample of the probe responder's UDP range: pass when every port
/// sampled answers, warn (naming the silent ones) when only some do.
async fn udp_range(
    ip: std::net::IpAddr,
    range: turnpike_profile::PortRange,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let ports = probe::sample(range);
    let deadline = (Instant::now() + Duration::from_secs(5)).min(deadline);
    let result = probe::udp_range(ip, &ports, deadline).await?;
    let Some(best) = result.best() else {
        return Err(Failure::new(
            Step::Connect,
            format!(
                "none of the {} ports sampled ({}) answered",
                ports.len(),
                list(&ports)
            ),
        ));
    };
    let seen = result
        .seen_as
        .map(|a| format!("; the server saw this host as {a}"))
        .unwrap_or_default();
    let silent = result.silent();
    let mut outcome = Outcome::ms(
        format!(
            "{} of {} ports sampled answered ({}), the fastest in {:.1} ms{seen}",
            result.answered.len(),
            ports.len(),
            list(&ports),
            best.as_secs_f64() * 1000.0
        ),
        best,
    );
    if !silent.is_empty() {
        outcome.status = Status::Warn;
        outcome.detail = format!(
            "{}; no answer from port{} {}",
            outcome.detail,
            if silent.len() == 1 { "" } else { "s" },
            list(&silent)
        );
        outcome.remediation = Some(format!(
            "allow outbound UDP to {ip} ports {range} (the whole range), and the replies: some of its ports are blocked"
        ));
    }
    Ok(outcome)
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// TLS, HTTPS and WebSocket endpoints: directly, else through the proxy.
async fn tls_endpoint(
    plan: &Plan,
    e: &Endpoint,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let port = e.port.unwrap_or(443);
    let direct = |deadline| net::connect(addrs, deadline);
    let (tcp, route) =
        net::direct_or_tunnel(direct, &e.host, port, plan.proxy.as_ref(), deadline).await?;
    let o = tls_session(plan, e, tcp, deadline).await?;
    Ok(o.through(&route, e, addrs))
}

async fn tls_session(
    plan: &Plan,
    e: &Endpoint,
    tcp: tokio::net::TcpStream,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let t = Instant::now();
    let alpn: &[&[u8]] = match e.kind {
        Kind::Https => &[b"http/1.1"],
        _ => &[],
    };
    let (mut stream, seen) = net::tls_over(tcp, &e.host, alpn, deadline).await?;
    let handshake = t.elapsed();
    let (mut status, note) = certificate(plan, &seen);
    let mut notes = vec![note];
    let what = match e.kind {
        Kind::Https => {
            let code = http_exchange(&mut stream, e, false, deadline).await?;
            format!("HTTP {code}")
        }
        Kind::Wss => {
            let code = http_exchange(&mut stream, e, true, deadline).await?;
            if code != 101 {
                status = Status::Warn;
                notes.push(format!(
                    "the server answered the upgrade with {code}, not 101"
                ));
            }
            format!("WebSocket upgrade: {code}")
        }
        _ => "TLS handshake".to_owned(),
    };
    let mut o = Outcome::ms(
        format!(
            "{what} in {:.1} ms; {}",
            handshake.as_secs_f64() * 1000.0,
            notes.join("; ")
        ),
        handshake,
    );
    o.status = status;
    if intercepted(plan, &seen) {
        o.remediation = Some(remedy::for_interception(e));
    }
    Ok(o)
}

/// Whether the certificate seen is not from the issuer the service
/// publishes: something in the path decrypts and re-encrypts.
fn intercepted(plan: &Plan, seen: &Seen) -> bool {
    plan.tls_issuer
        .as_deref()
        .is_some_and(|expected| seen.issuer.as_deref() != Some(expected))
}

/// What the report says of the certificate seen: a warning when the
/// connection is intercepted.
fn certificate(plan: &Plan, seen: &Seen) -> (Status, String) {
    let issuer = seen
        .issuer
        .clone()
        .unwrap_or_else(|| "an unreadable certificate".into());
    match (&plan.tls_issuer, &seen.untrusted) {
        (Some(expected), _) if intercepted(plan, seen) => (
            Status::Warn,
            format!(
                "the certificate is issued by {issuer}, not {expected}: the connection is intercepted (TLS inspection)"
            ),
        ),
        (Some(_), _) => (
            Status::Pass,
            format!("certificate from {issuer}, as the server publishes"),
        ),
        (None, Some(why)) => (
            Status::Pass,
            format!("certificate from {issuer}, not trusted by the web PKI ({why})"),
        ),
        (None, None) => (Status::Pass, format!("certificate from {issuer}")),
    }
}

/// An HTTP/1.1 GET (or WebSocket upgrade) on the session; the status code.
async fn http_exchange(
    stream: &mut net::Stream,
    e: &Endpoint,
    upgrade: bool,
    deadline: Instant,
) -> Result<u16, Failure> {
    let path = e.request_path().unwrap_or("/");
    let host = if e.port == Some(443) {
        e.host.clone()
    } else {
        format!("{}:{}", e.host, e.port.unwrap_or(443))
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: turnpike-check\r\nAccept: */*\r\n"
    );
    if upgrade {
        let key: [u8; 16] = rand::random();
        use base64::Engine as _;
        request.push_str(&format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        ));
    } else {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    net::within(deadline, Step::Protocol, async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Failure::new(Step::Protocol, e.to_string()))?;
        let head = net::read_head(stream)
            .await
            .map_err(|e| Failure::new(Step::Protocol, format!("no HTTP answer: {e}")))?;
        net::status_code(&head)
            .ok_or_else(|| Failure::new(Step::Protocol, "the answer is not HTTP"))
    })
    .await
}

/// A link to a STUN/TURN endpoint over its transport.
/// A link to a STUN or TURN endpoint.
struct Linked {
    link: Link,
    /// The certificate, over TLS.
    seen: Option<Seen>,
    /// Directly or through the proxy.
    route: Route,
}

/// A link to a STUN or TURN endpoint: TURN over TCP and TLS that cannot
/// connect directly go through the HTTPS proxy, if there is one, as
/// browsers do.
async fn link(
    plan: &Plan,
    e: &Endpoint,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<Linked, Failure> {
    if matches!(e.kind, Kind::StunUdp | Kind::TurnUdp) {
        let first = addrs
            .first()
            .ok_or_else(|| Failure::new(Step::Connect, "no address"))?;
        return Ok(Linked {
            link: Link::udp(*first).await?,
            seen: None,
            route: Route::Direct,
        });
    }
    let proxy = plan
        .proxy
        .as_ref()
        .filter(|_| matches!(e.kind, Kind::TurnTcp | Kind::TurnTls));
    let direct = |deadline| net::connect(addrs, deadline);
    let port = e.port.unwrap_or(0);
    let (tcp, route) = net::direct_or_tunnel(direct, &e.host, port, proxy, deadline).await?;
    let (link, seen) = if e.kind == Kind::TurnTls {
        let (stream, seen) = net::tls_over(tcp, &e.host, &[b"stun.turn"], deadline).await?;
        (Link::stream(stream), Some(seen))
    } else {
        (Link::stream(Box::new(tcp)), None)
    };
    Ok(Linked { link, seen, route })
}

async fn stun_binding(
    plan: &Plan,
    e: &Endpoint,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let deadline = (Instant::now() + Duration::from_secs(8)).min(deadline);
    let mut client = Client::new(link(plan, e, addrs, deadline).await?.link, None);
    let t = Instant::now();
    let response = client.transaction(Method::BINDING, &[], deadline).await?;
    let took = t.elapsed();
    match response.address(AttrType::XOR_MAPPED_ADDRESS) {
        Some(mapped) => {
            let mut o = Outcome::ms(
                format!(
                    "Binding answered in {:.1} ms; public address {mapped}",
                    took.as_secs_f64() * 1000.0
                ),
                took,
            );
            o.value = serde_json::json!(mapped.to_string());
            o.unit = None;
            Ok(o)
        }
        None => Err(Failure::new(
            Step::Protocol,
            "the answer carries no XOR-MAPPED-ADDRESS",
        )),
    }
}

/// A TURN endpoint: an allocation, and a relayed round trip, when
/// credentials are given; else only that the server answers. The round
/// trip goes to the probe responder (`probe_peer`) when the credentials
/// may relay only there, else between two allocations (the second one is
/// the peer).
async fn turn_endpoint(
    plan: &Plan,
    e: &Endpoint,
    addrs: &[SocketAddr],
    probe_peer: Option<SocketAddr>,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let deadline = (Instant::now() + Duration::from_secs(10)).min(deadline);
    let t = Instant::now();
    let first = link(plan, e, addrs, deadline).await?;
    let a = Client::new(first.link, plan.credentials.clone());
    let mut outcome = turn_exchange(plan, e, addrs, a, t, probe_peer, deadline)
        .await?
        .through(&first.route, e, addrs);
    if let Some(seen) = first.seen {
        let (status, note) = certificate(plan, &seen);
        outcome.detail = format!("{}; {note}", outcome.detail);
        if status == Status::Warn {
            outcome.status = Status::Warn;
            outcome.remediation = Some(remedy::for_interception(e));
        }
    }
    Ok(outcome)
}

/// What [`turn_endpoint`] does over its first link, `a`, opened at `t`.
async fn turn_exchange(
    plan: &Plan,
    e: &Endpoint,
    addrs: &[SocketAddr],
    mut a: Client,
    t: Instant,
    probe_peer: Option<SocketAddr>,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let transport = [Attr::RequestedTransport(17)];
    let first = a
        .transaction(Method::ALLOCATE, &transport, deadline)
        .await?;
    let reached = t.elapsed();
    if plan.credentials.is_none() {
        return match first.code() {
            Some(401) => Ok(Outcome::ms(
                format!(
                    "the TURN server answers ({:.1} ms); no credentials given to allocate (--user, --password)",
                    reached.as_secs_f64() * 1000.0
                ),
                reached,
            )),
            Some(code) => Ok(Outcome::ms(
                format!("the TURN server answers with {code}"),
                reached,
            )),
            None => Ok(Outcome::ms("allocated without credentials".into(), reached)),
        };
    }
    let relayed_a = allocate(&mut a, deadline).await?;
    if let Some(peer) = probe_peer {
        let round_trip = probe::relayed_round_trip(&mut a, relayed_a, peer, deadline).await;
        let _ = a
            .request(Method::REFRESH, &[Attr::Lifetime(0)], deadline)
            .await;
        let took = round_trip?;
        return Ok(Outcome::ms(
            format!(
                "allocated {relayed_a}; relayed to the probe responder {peer} and back in {:.1} ms",
                took.as_secs_f64() * 1000.0
            ),
            took,
        ));
    }
    let mut b = Client::new(
        link(plan, e, addrs, deadline).await?.link,
        plan.credentials.clone(),
    );
    let relayed_b = allocate(&mut b, deadline).await?;
    for (client, peer) in [(&mut a, relayed_b), (&mut b, relayed_a)] {
        let r = client
            .request(
                Method::CREATE_PERMISSION,
                &[Attr::XorPeerAddress(peer)],
                deadline,
            )
            .await?;
        if let Some(code) = r.code() {
            return Err(Failure::new(
                Step::Protocol,
                format!("CreatePermission refused ({code})"),
            ));
        }
    }
    // Round trips A → relay → B until one arrives (datagrams may be lost).
    let mut best: Option<Duration> = None;
    for i in 0u32..5 {
        let sent = Instant::now();
        let payload = i.to_be_bytes();
        a.indicate(
            Method::SEND,
            &[Attr::XorPeerAddress(relayed_b), Attr::Data(&payload)],
        )
        .await?;
        let wait = (Instant::now() + Duration::from_millis(1000)).min(deadline);
        if let Some((from, data)) = b.data(wait).await
            && from == relayed_a
            && data == payload
        {
            let took = sent.elapsed();
            best = Some(best.map_or(took, |b| b.min(took)));
            if i >= 2 {
                break;
            }
        }
    }
    for client in [&mut a, &mut b] {
        let _ = client
            .request(Method::REFRESH, &[Attr::Lifetime(0)], deadline)
            .await;
    }
    match best {
        Some(took) => Ok(Outcome::ms(
            format!(
                "allocated {relayed_a}; relayed from one allocation to another in {:.1} ms",
                took.as_secs_f64() * 1000.0
            ),
            took,
        )),
        None => Err(Failure::new(
            Step::Protocol,
            format!("allocated {relayed_a}, but nothing relayed between two allocations came back"),
        )),
    }
}

async fn allocate(client: &mut Client, deadline: Instant) -> Result<SocketAddr, Failure> {
    let r = client
        .request(Method::ALLOCATE, &[Attr::RequestedTransport(17)], deadline)
        .await?;
    match (r.code(), r.address(AttrType::XOR_RELAYED_ADDRESS)) {
        (None, Some(relayed)) => Ok(relayed),
        (Some(401), _) => Err(Failure::new(
            Step::Protocol,
            "the credentials were refused (401)",
        )),
        (Some(code), _) => Err(Failure::new(
            Step::Protocol,
            format!("Allocate refused ({code})"),
        )),
        (None, None) => Err(Failure::new(
            Step::Protocol,
            "Allocate answered without XOR-RELAYED-ADDRESS",
        )),
    }
}

/// RFC 3339 in UTC, to the second.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_asks_for_the_idle_timeout_search_up_to_its_threshold() {
        let base = "[profile]\nname = \"x\"\nsource = \"y\"\n\n[[endpoint]]\nid = \"media\"\nkind = \"udp-range\"\nhost = \"192.0.2.1\"\nports = \"5000-5009\"\n";
        let asks = "\n[measure]\nudp_idle_timeout = true\n";
        let threshold = |min: &str| {
            format!("\n[thresholds]\nudp_idle_timeout_s = {{ min = {min}, source = \"z\" }}\n")
        };
        let max = |text: String| {
            let p = Profile::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            profile_udp_timeout(&p).map(|d| d.as_secs_f64())
        };
        // Not asked: no search, whatever the threshold.
        assert_eq!(max(base.to_owned()), None);
        assert_eq!(max(format!("{base}{}", threshold("120"))), None);
        assert_eq!(
            max(format!("{base}\n[measure]\nudp_idle_timeout = false\n")),
            None
        );
        // Asked: up to the threshold's min, else 180 s.
        assert_eq!(max(format!("{base}{asks}")), Some(180.0));
        assert_eq!(
            max(format!("{base}{asks}{}", threshold("120"))),
            Some(120.0)
        );
        assert_eq!(max(format!("{base}{asks}{}", threshold("7.5"))), Some(7.5));
        // Within what the search can do.
        assert_eq!(max(format!("{base}{asks}{}", threshold("0"))), Some(5.0));
        assert_eq!(
            max(format!("{base}{asks}{}", threshold("3600"))),
            Some(600.0)
        );
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_267_845), "2026-11-21T13:30:45Z");
    }
}

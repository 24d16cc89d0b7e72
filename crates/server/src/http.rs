//! The HTTP side: health, Prometheus metrics, ephemeral credentials and
//! the server's profile (with check credentials, when `[probe]` hands them
//! out), served on listeners with `http = true` (next to TURN, on the same
//! port) and on `[http] address`.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rand::Rng as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncWrite};
use turnpike_profile::{CheckCredentials, Published};
use turnpike_turn::policy::canonical;
use turnpike_turn::ratelimit::RateLimiter;
use turnpike_turn::{Counts, Shared, Stats, auth, check};

use crate::probe::Counters;
use crate::relay::ReservedPort;
use crate::tls::CertStore;

/// What one shard last reported.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub stats: Stats,
    /// Allocations by transport: UDP, TCP, TLS.
    pub allocations: [usize; 3],
    pub tls_handshakes: u64,
    pub tls_failures: u64,
    /// Datagrams relayed from one allocation to another inside a shard.
    pub relayed_within: u64,
    pub connections: usize,
}

/// The shards' reports, gathered for `/metrics`. Shards report once a
/// second; a scrape sees figures at most that old.
#[derive(Debug, Default)]
pub struct Reports {
    shards: Mutex<Vec<ShardReport>>,
}

impl Reports {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            shards: Mutex::new(vec![ShardReport::default(); shards]),
        }
    }

    /// Replaces shard `index`'s report.
    pub fn publish(&self, index: usize, report: ShardReport) {
        if let Ok(mut shards) = self.shards.lock()
            && let Some(slot) = shards.get_mut(index)
        {
            *slot = report;
        }
    }

    fn snapshot(&self) -> Vec<ShardReport> {
        self.shards.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What the credentials API hands out.
#[derive(Debug, Clone)]
pub struct Minter {
    pub secret: String,
    pub urls: Vec<String>,
    pub ttl: u64,
    pub api_keys: Vec<String>,
}

/// What `GET /api/v1/profile` answers with.
#[derive(Debug)]
pub(crate) struct ProfileApi {
    /// The profile of the live configuration, without the parts made per
    /// request.
    pub(crate) published: Published,
    /// The certificate whose issuer is published (the first TLS
    /// listener's), read at each request: a reloaded one shows.
    pub(crate) certificate: Option<Arc<CertStore>>,
    pub(crate) check: Option<CheckMinter>,
}

/// Mints check credentials (`turnpike_turn::check`), per source at a
/// limited rate.
pub(crate) struct CheckMinter {
    /// The check key: drawn at start, never leaves the process.
    pub(crate) key: [u8; 32],
    /// Seconds the credentials stay valid.
    pub(crate) ttl: u64,
    /// Per source IP (an IPv6 /64).
    pub(crate) limiter: Mutex<RateLimiter>,
}

impl std::fmt::Debug for CheckMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckMinter")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CheckMinter {
    fn mint(&self, unix_now: u64) -> CheckCredentials {
        let mut random = [0u8; 12];
        rand::rng().fill_bytes(&mut random);
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let username = check::username(unix_now.saturating_add(self.ttl), &random);
        let password = auth::rest_password(&self.key, &username);
        CheckCredentials {
            username,
            password,
            ttl_s: self.ttl,
        }
    }
}

/// Everything the HTTP side needs.
#[derive(Debug)]
pub struct HttpState {
    pub reports: Arc<Reports>,
    pub minter: Option<Minter>,
    /// What the shards share; `/healthz` and `/metrics` read whether the
    /// server drains from it.
    pub(crate) shared: Arc<Shared<ReservedPort>>,
    pub(crate) profile: ProfileApi,
    /// The probe responder's counters, when it runs.
    pub(crate) probe: Option<Arc<Counters>>,
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/credentials", post(credentials))
        .route("/api/v1/profile", get(profile))
        .with_state(state)
}

/// Serves one HTTP/1.1 or HTTP/2 connection from `client` (per-source
/// limits count by its address).
pub(crate) async fn serve_from<I>(
    io: I,
    router: Option<Router>,
    client: SocketAddr,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(router) = router else { return Ok(()) };
    serve_router(io, router.layer(Extension(ConnectInfo(client)))).await
}

async fn serve_router<I>(io: I, router: Router) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .await
        .map_err(io::Error::other)
}

/// Serves `router` on a plain-HTTP listener of its own (`[http] address`),
/// on a thread of its own, until `shutdown`.
pub(crate) fn spawn_plain(
    listener: std::net::TcpListener,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    crate::serve::spawn_with_runtime("http".into(), "the HTTP listener", move |runtime| {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let stop = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!(error = %e, "the HTTP listener stopped");
            }
        });
    })
}

/// 200 "ok" while the server takes new allocations; 503 "draining" once
/// it has stopped taking them (SIGTERM), so that health checks take it out
/// of rotation while its existing allocations finish.
async fn healthz(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    if state.shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collected {
        shards: state.reports.snapshot(),
        draining: state.shared.is_draining(),
        probe: state.probe.as_ref().map(|c| ProbeCounts {
            requests: c.requests(),
            later: c.later(),
            train: c.train(),
        }),
        check_allocations: state
            .shared
            .check_access()
            .map(|_| state.shared.check_allocations()),
    }));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsRequest {
    user: Option<String>,
}

async fn credentials(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(minter) = &state.minter else {
        return (
            StatusCode::NOT_FOUND,
            "the credentials API is off: set [http] api_keys and a REST secret\n",
        )
            .into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let authorized = minter.api_keys.iter().fold(false, |ok, key| {
        ok | bool::from(key.as_bytes().ct_eq(presented.as_bytes()))
    });
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid API key is needed: Authorization: Bearer KEY\n",
        )
            .into_response();
    }
    let request: CredentialsRequest = if body.trim().is_empty() {
        CredentialsRequest::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad request body: {e}\n"))
                    .into_response();
            }
        }
    };
    let user = request.user.unwrap_or_else(|| "user".to_owned());
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return (
            StatusCode::BAD_REQUEST,
            "user must be 1 to 128 characters without control characters\n",
        )
            .into_response();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let username = auth::rest_username(now.saturating_add(minter.ttl), &user);
    let credential = auth::rest_password(minter.secret.as_bytes(), &username);
    axum::Json(serde_json::json!({
        "iceServers": [{
            "urls": minter.urls,
            "username": username,
            "credential": credential,
        }],
        "ttl": minter.ttl,
    }))
    .into_response()
}

/// The server's profile (`turnpike_profile::Published`, JSON): public,
/// since it only describes the server. With `[probe] credentials`, each
/// answer carries fresh check credentials, at most
/// `credentials_per_minute` per source IP (then 429 with Retry-After).
async fn profile(
    State(state): State<Arc<HttpState>>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let api = &state.profile;
    let mut published = api.published.clone();
    published.tls_issuer = api.certificate.as_deref().and_then(issuer);
    if let Some(minter) = &api.check {
        // A connection whose address is unknown counts as one source with
        // every other such connection.
        let source = client.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |c| canonical(c.0.0.ip()));
        let refused = match minter.limiter.lock() {
            Ok(mut l) => (!l.allow(source, Instant::now())).then(|| l.refill_time()),
            Err(_) => Some(std::time::Duration::from_secs(60)),
        };
        if let Some(retry) = refused {
            let retry = retry.as_secs().max(1);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry.to_string())],
                "too many check credentials for this address; try again later\n",
            )
                .into_response();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        published.credentials = Some(minter.mint(now));
        return ([(header::CACHE_CONTROL, "no-store")], axum::Json(published)).into_response();
    }
    axum::Json(published).into_response()
}

/// The issuer of the certificate `store` presents, as RFC 4514 text (as
/// `turnpike check` reads it from the handshake).
fn issuer(store: &CertStore) -> Option<String> {
    let key = store.current()?;
    let leaf = key.cert.first()?;
    x509_parser::parse_x509_certificate(leaf.as_ref())
        .ok()
        .map(|(_, cert)| cert.issuer().to_string())
}

/// The shards' reports, summed, as Prometheus metrics. Labels come from
/// fixed sets: transport, direction, reason, outcome; never a user name or
/// an address.
#[derive(Debug)]
struct Collected {
    shards: Vec<ShardReport>,
    draining: bool,
    /// The probe responder's counters: requests by outcome, `later`
    /// replies and train packets by what became of them.
    probe: Option<ProbeCounts>,
    /// Allocations made with check credentials, when they are on.
    check_allocations: Option<usize>,
}

/// The probe responder's counters, read for one scrape.
#[derive(Debug)]
struct ProbeCounts {
    requests: Vec<(&'static str, u64)>,
    later: Vec<(&'static str, u64)>,
    train: Vec<(&'static str, u64)>,
}

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        single(
            &mut encoder,
            Kind::Gauge,
            "turnpike_draining",
            "1 once the server has stopped taking new allocations (SIGTERM)",
            u64::from(self.draining),
        )?;
        let sum = |f: fn(&ShardReport) -> u64| shards.iter().map(f).sum::<u64>();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);

        let by_transport = ["udp", "tcp", "tls"].into_iter().enumerate().map(|(i, t)| {
            (
                t,
                shards
                    .iter()
                    .map(|s| count(s.allocations.get(i).copied().unwrap_or(0)))
                    .sum(),
            )
        });
        family(
            &mut encoder,
            Kind::Gauge,
            "turnpike_allocations",
            "Allocations alive, by client transport",
            "transport",
            by_transport,
        )?;
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_relayed_packets",
            "Datagrams relayed, by direction",
            "direction",
            [
                ("to_peer", sum(|s| s.stats.traffic.to_peer_packets)),
                ("to_client", sum(|s| s.stats.traffic.to_client_packets)),
            ],
        )?;
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_bandwidth_dropped",
            "Datagrams dropped because their allocation was over limits.bandwidth_kbps, by direction",
            "direction",
            [
                ("to_peer", sum(|s| s.stats.over_bandwidth[0])),
                ("to_client", sum(|s| s.stats.over_bandwidth[1])),
            ],
        )?;
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_relayed_bytes",
            "Payload bytes relayed, by direction",
            "direction",
            [
                ("to_peer", sum(|s| s.stats.traffic.to_peer_bytes)),
                ("to_client", sum(|s| s.stats.traffic.to_client_bytes)),
            ],
        )?;
        let merged = |pick: fn(&Stats) -> &Counts| {
            let mut labels: Vec<&'static str> = shards
                .iter()
                .flat_map(|s| pick(&s.stats).iter().map(|(l, _)| l))
                .collect();
            labels.sort_unstable();
            labels.dedup();
            labels
                .into_iter()
                .map(|l| (l, shards.iter().map(|s| pick(&s.stats).get(l)).sum::<u64>()))
                .collect::<Vec<_>>()
        };
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_auth_failures",
            "Requests that failed authentication, by reason",
            "reason",
            merged(|s| &s.auth_failures),
        )?;
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_peer_denied",
            "Peer addresses refused by the peer policy, by reason",
            "reason",
            merged(|s| &s.peer_denied),
        )?;
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_error_responses",
            "Error responses sent, by code",
            "code",
            merged(|s| &s.errors),
        )?;
        family(
            &mut encoder,
            Kind::Counter,
            "turnpike_tls_handshakes",
            "TLS handshakes, by outcome",
            "outcome",
            [
                ("ok", sum(|s| s.tls_handshakes)),
                ("failed", sum(|s| s.tls_failures)),
            ],
        )?;
        single(
            &mut encoder,
            Kind::Gauge,
            "turnpike_connections",
            "TCP and TLS connections open",
            shards.iter().map(|s| count(s.connections)).sum(),
        )?;
        single(
            &mut encoder,
            Kind::Counter,
            "turnpike_relayed_within",
            "Datagrams a client sent to another allocation of the same shard, handed over without crossing the network",
            sum(|s| s.relayed_within),
        )?;
        single(
            &mut encoder,
            Kind::Counter,
            "turnpike_malformed_messages",
            "Messages that were neither STUN nor ChannelData",
            sum(|s| s.stats.malformed),
        )?;
        single(
            &mut encoder,
            Kind::Counter,
            "turnpike_oversized_messages",
            "Messages above limits.max_message_size: datagrams dropped, streams closed",
            sum(|s| s.stats.oversized),
        )?;
        single(
            &mut encoder,
            Kind::Counter,
            "turnpike_rate_limited",
            "Answers to unauthenticated requests withheld by the rate limit",
            sum(|s| s.stats.rate_limited),
        )?;
        if let Some(probe) = &self.probe {
            family(
                &mut encoder,
                Kind::Counter,
                "turnpike_probe_requests",
                "Requests to the probe responder, by outcome: answered at once, later or train scheduled, STUN answered, or dropped and why",
                "outcome",
                probe.requests.iter().copied(),
            )?;
            family(
                &mut encoder,
                Kind::Counter,
                "turnpike_probe_later_replies",
                "Delayed (later) replies of the probe responder, by what became of them when due",
                "outcome",
                probe.later.iter().copied(),
            )?;
            family(
                &mut encoder,
                Kind::Counter,
                "turnpike_probe_train_packets",
                "Train packets of the probe responder, by what became of them",
                "outcome",
                probe.train.iter().copied(),
            )?;
        }
        if let Some(n) = self.check_allocations {
            single(
                &mut encoder,
                Kind::Gauge,
                "turnpike_check_allocations",
                "Allocations made with check credentials, alive",
                count(n),
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Self::Counter => MetricType::Counter,
            Self::Gauge => MetricType::Gauge,
        }
    }

    fn encode(self, value: u64, encoder: MetricEncoder<'_>) -> std::fmt::Result {
        match self {
            Self::Counter => ConstCounter::new(value).encode(encoder),
            Self::Gauge => {
                ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder)
            }
        }
    }
}

/// A metric with one label, one sample per value.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    kind: Kind,
    name: &str,
    help: &str,
    key: &str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind.metric_type())?;
    for (label, value) in values {
        kind.encode(value, family.encode_family(&[(key, label)])?)?;
    }
    Ok(())
}

/// A metric without labels.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    kind: Kind,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    kind.encode(
        value,
        encoder.encode_descriptor(name, help, None, kind.metric_type())?,
    )
}

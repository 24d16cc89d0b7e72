//! Starting and stopping the server: resolve what the configuration left
//! to the host, bind every socket, start the shards.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rand::Rng as _;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use turnpike_turn::auth::Credentials;
use turnpike_turn::check::CheckAccess;
use turnpike_turn::policy::{PeerPolicy, PolicyConfig};
use turnpike_turn::ratelimit::RateLimiter;
use turnpike_turn::{Lifetimes, RelayIp, Shared};

use crate::config::{Config, Listen, ListenTransport, PortRange};
use crate::http::{self, CheckMinter, HttpState, Minter, ProfileApi, Reports};
use crate::probe::{self, Described, ProbeAt};
use crate::relay::{PortPool, ReservedPort};
use crate::shard::{self, ShardSetup};
use crate::stream::{OpenConnections, StreamListener};
use crate::tcp_relay::Parked;
use crate::tls::{self, CertStore, Source};
use crate::{net, state};

/// How often certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

/// Allocations one set of check credentials may hold at once: enough for
/// a check over UDP, TCP and TLS at the same time.
const CHECK_ALLOCATIONS_PER_CREDENTIAL: usize = 4;

/// Where the probe responder listens (`[probe]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeListening {
    pub ip: IpAddr,
    pub ports: PortRange,
    /// The TCP port, as bound.
    pub tcp_port: Option<u16>,
    /// Whether `GET /api/v1/profile` hands out check credentials.
    pub credentials: bool,
}

/// Runs `f` on a thread named `name` with a current-thread tokio runtime
/// of its own (shards, the HTTP listener, the probe responder); a runtime
/// that cannot start is logged, naming `what`, and the thread ends.
pub(crate) fn spawn_with_runtime(
    name: String,
    what: &'static str,
    f: impl FnOnce(&tokio::runtime::Runtime) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => f(&runtime),
            Err(e) => warn!(error = %e, "cannot start {what}'s runtime"),
        }
    })
}

/// Where the REST secret came from, when none was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratedSecret {
    /// Created at this start, in this file.
    Created(PathBuf),
    /// Read from this file, created at an earlier start.
    Kept(PathBuf),
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The listeners, with the ports the system chose for port 0.
    pub listening: Vec<Listen>,
    /// The plain-HTTP listener of `[http] address`, if any.
    pub http_address: Option<SocketAddr>,
    pub realm: String,
    /// The name clients reach the server by.
    pub hostname: String,
    /// The addresses relays are bound on (one per family), and the ones
    /// advertised for them.
    pub relays: Vec<RelayIp>,
    pub relay_ports: PortRange,
    pub threads: usize,
    /// Set when no users or secrets were configured.
    pub generated_secret: Option<GeneratedSecret>,
    /// The TURN URLs clients use, as the credentials API gives them.
    pub urls: Vec<String>,
    /// Whether `POST /api/v1/credentials` mints credentials.
    pub credentials_api: bool,
    /// How long [`Running::drain`] lets allocations go on.
    pub drain_timeout: Duration,
    /// The probe responder, when it runs.
    pub probe: Option<ProbeListening>,
    certificates: Vec<Arc<CertStore>>,
    shared: Arc<Shared<ReservedPort>>,
    shutdown: watch::Sender<bool>,
    watcher_stop: mpsc::Sender<()>,
    threads_running: Vec<JoinHandle<()>>,
}

impl Running {
    /// Reads every certificate again (SIGHUP): new handshakes get the new
    /// one; established sessions keep theirs. A pair that fails to load
    /// leaves the current one in place.
    pub fn reload_certificates(&self) {
        for store in &self.certificates {
            match store.reload(true) {
                Ok(_) => info!(source = ?store.source(), "certificate reloaded"),
                Err(e) => warn!(error = %e, "certificate not reloaded; the current one stays"),
            }
        }
    }

    /// Stops taking new allocations (SIGTERM): every shard answers a new
    /// Allocate with 300 and the configured alternate, or 508, and
    /// `/healthz` answers 503. Existing allocations go on.
    pub fn drain(&self) {
        self.shared.start_draining();
    }

    /// Allocations alive, across shards.
    #[must_use]
    pub fn allocations(&self) -> usize {
        self.shared.allocations()
    }

    /// Ends every allocation, logs each, and waits for the threads.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.watcher_stop.send(());
        for thread in self.threads_running {
            if thread.join().is_err() {
                warn!("a server thread panicked");
            }
        }
    }
}

/// Descriptors a server needs beyond one per relay port: listeners, the
/// HTTP side, TCP and TLS clients of a modest deployment.
const SPARE_DESCRIPTORS: usize = 1024;

/// Raises the open-files limit as far as allowed, and warns when it still
/// cannot hold a socket for every port of the relay range.
fn check_open_files(relay_ports: usize) {
    let wanted = relay_ports + SPARE_DESCRIPTORS;
    match crate::sys::raise_open_files_limit() {
        Ok(limit) if usize::try_from(limit).unwrap_or(usize::MAX) < wanted => warn!(
            limit,
            wanted,
            "the open-files limit (ulimit -n) caps allocations below the relay port range; raise it to at least {wanted}"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Binds everything `config` asks for and starts serving.
pub fn start(config: &Config) -> anyhow::Result<Running> {
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let realm = config.realm.clone().unwrap_or_else(net::hostname);
    check_open_files(config.relay_ports.len());
    let interfaces = net::interface_ips();
    let relays = relay_ips(config, &interfaces);
    let hostname = match (&config.hostname, relays.first()) {
        (Some(h), _) => h.clone(),
        (None, Some(r)) => r.advertised.to_string(),
        (None, None) => net::hostname(),
    };

    let (secrets, generated_secret) = if config.users.is_empty() && config.secrets.is_empty() {
        let (secret, created) =
            state::load_or_create_secret(&config.state_dir).with_context(|| {
                format!(
                    "cannot keep a REST secret in {}",
                    config.state_dir.display()
                )
            })?;
        let path = state::secret_path(&config.state_dir);
        let generated = if created {
            GeneratedSecret::Created(path)
        } else {
            GeneratedSecret::Kept(path)
        };
        (vec![secret], Some(generated))
    } else {
        (config.secrets.clone(), None)
    };

    // Sockets: one per listener per shard, all on the same address.
    let mut udp: Vec<Vec<std::net::UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    let mut tcp: Vec<Vec<(std::net::TcpListener, usize)>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut listening = Vec::new();
    for (i, listen) in config.listen.iter().enumerate() {
        let context = || format!("cannot listen on {listen}");
        let address = if listen.transport.is_stream() {
            let group = net::bind_tcp_group(listen.address, threads).with_context(context)?;
            let address = group
                .first()
                .map_or(Ok(listen.address), |s| s.local_addr())?;
            tcp.iter_mut()
                .zip(group)
                .for_each(|(shard, socket)| shard.push((socket, i)));
            address
        } else {
            let group = net::bind_group(listen.address, threads).with_context(context)?;
            let address = group
                .first()
                .map_or(Ok(listen.address), |s| s.local_addr())?;
            udp.iter_mut()
                .zip(group)
                .for_each(|(shard, socket)| shard.push(socket));
            address
        };
        listening.push(Listen {
            address,
            ..listen.clone()
        });
    }
    let http_listener = config
        .http
        .address
        .map(|a| {
            std::net::TcpListener::bind(a).with_context(|| format!("cannot listen for HTTP on {a}"))
        })
        .transpose()?;
    let http_address = http_listener
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;

    // The probe responder: bound now, before any relay could take one of
    // its ports.
    let probe_bound = if config.probe.enabled {
        let ip = config
            .probe
            .address
            .or_else(|| relays.iter().map(|r| r.bound).find(IpAddr::is_ipv4))
            .or_else(|| relays.first().map(|r| r.bound))
            .ok_or_else(|| anyhow!("no address for the probe responder: set [probe] address"))?;
        Some(probe::bind(ip, &config.probe)?)
    } else {
        None
    };

    // TLS: every TLS listener, and every TCP listener shared with HTTP
    // (where a client may start a handshake), presents a certificate.
    let mut certificates: Vec<Arc<CertStore>> = Vec::new();
    // The first TLS listener's, whose issuer the profile publishes.
    let mut published_certificate: Option<Arc<CertStore>> = None;
    let mut generated: Option<Arc<CertStore>> = None;
    let mut acceptors = Vec::new();
    for listen in &listening {
        let needs_tls = listen.transport == ListenTransport::Tls
            || (listen.transport == ListenTransport::Tcp && listen.http);
        if !needs_tls {
            acceptors.push(None);
            continue;
        }
        let store = match (&listen.cert, &listen.key) {
            (Some(cert), Some(key)) => {
                let source = Source::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                match certificates.iter().find(|s| *s.source() == source) {
                    Some(store) => Arc::clone(store),
                    None => {
                        let store = CertStore::new(source).map_err(|e| anyhow!(e))?;
                        certificates.push(Arc::clone(&store));
                        store
                    }
                }
            }
            _ => match &generated {
                Some(store) => Arc::clone(store),
                None => {
                    state::ensure_dir(&config.state_dir)
                        .with_context(|| format!("cannot use {}", config.state_dir.display()))?;
                    let names = certificate_names(&hostname, &relays);
                    let source =
                        tls::generated(&config.state_dir, &names).map_err(|e| anyhow!(e))?;
                    let store = CertStore::new(source).map_err(|e| anyhow!(e))?;
                    certificates.push(Arc::clone(&store));
                    generated = Some(Arc::clone(&store));
                    store
                }
            },
        };
        if listen.transport == ListenTransport::Tls && published_certificate.is_none() {
            published_certificate = Some(Arc::clone(&store));
        }
        let tls_config = tls::server_config(store, listen.http).map_err(|e| anyhow!(e))?;
        acceptors.push(Some(TlsAcceptor::from(tls_config)));
    }

    // The HTTP side.
    let urls = turn_urls(&listening, &hostname);
    let reports = Arc::new(Reports::new(threads));
    let minter = match (config.http.api_keys.is_empty(), secrets.first()) {
        (false, Some(secret)) => Some(Minter {
            secret: secret.clone(),
            urls: urls.clone(),
            ttl: config.http.credential_ttl,
            api_keys: config.http.api_keys.clone(),
        }),
        (false, None) => {
            bail!("[http] api_keys needs a REST secret to mint credentials with (auth.secrets)")
        }
        (true, _) => None,
    };
    let credentials_api = minter.is_some();

    // The peer policy: the server's own sockets are never peers.
    let relay_addresses: Vec<IpAddr> = relays
        .iter()
        .flat_map(|r| [r.bound, r.advertised])
        .collect();
    let mut own_ips = interfaces;
    own_ips.extend(&relay_addresses);
    own_ips.extend(
        listening
            .iter()
            .map(|l| l.address.ip())
            .filter(|ip| !ip.is_unspecified()),
    );
    let mut own_sockets: Vec<SocketAddr> = listening.iter().map(|l| l.address).collect();
    own_sockets.extend(http_address);
    let policy = PeerPolicy::new(PolicyConfig {
        allow: config.allow_peers.clone(),
        deny: config.deny_peers.clone(),
        own_ips,
        listeners: own_sockets,
        relay_ips: relay_addresses,
    });
    let turn_config = turnpike_turn::Config {
        realm: realm.clone(),
        software: None,
        relay_ips: relays.clone(),
        lifetimes: Lifetimes {
            nonce: Duration::from_secs(config.nonce_lifetime),
            ..Lifetimes::default()
        },
        limits: config.limits,
        policy,
        tcp_relay: config.relay_tcp,
        alternates: config.drain.alternates.clone(),
    };
    let credentials = Credentials::new(
        &realm,
        config
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.password.as_str())),
        secrets.iter().map(|s| s.as_bytes()),
    );
    if credentials.is_empty() {
        bail!("no users or secrets: nobody could authenticate");
    }
    // Check credentials: signed with a key of their own, drawn now and
    // never shown, so that they can be neither forged nor taken for an
    // operator's REST credentials; they relay to the probe responder only.
    let check = probe_bound
        .as_ref()
        .filter(|_| config.probe.credentials)
        .map(|bound| {
            let access = CheckAccess {
                ips: probe::probe_ips(bound.ip, &relays),
                udp_ports: bound.ports.first..=bound.ports.last,
                tcp_port: bound.tcp_port,
                allocations: config.probe.max_check_allocations,
                allocations_per_credential: CHECK_ALLOCATIONS_PER_CREDENTIAL,
            };
            (random(), access)
        });
    let credentials = match &check {
        Some((key, _)) => credentials.with_check_key(key),
        None => credentials,
    };
    let mut shared = Shared::new(turn_config, credentials, random(), Instant::now());
    let mut check_minter = None;
    if let Some((key, access)) = check {
        shared = shared.with_check_access(access);
        let per_minute = config.probe.credentials_per_minute;
        check_minter = Some(CheckMinter {
            key,
            ttl: config.probe.credential_ttl,
            limiter: Mutex::new(RateLimiter::per_period(
                per_minute,
                Duration::from_secs(60),
                per_minute,
                Instant::now(),
                rand::rng().next_u64(),
            )),
        });
    }
    let shared = Arc::new(shared);
    let published = probe::published(&Described {
        listening: &listening,
        relays: &relays,
        hostname: config.hostname.as_deref(),
        probe: probe_bound.as_ref().map(ProbeAt::from),
    });
    if let Err(e) = published.profile.validate() {
        warn!(error = %e, "the published profile does not validate");
    }
    let probe_counters = probe_bound
        .as_ref()
        .map(|_| Arc::new(probe::Counters::default()));
    let router = http::router(Arc::new(HttpState {
        reports: Arc::clone(&reports),
        minter,
        shared: Arc::clone(&shared),
        profile: ProfileApi {
            published,
            certificate: published_certificate,
            check: check_minter,
        },
        probe: probe_counters.clone(),
    }));
    let pool = Arc::new(Mutex::new(PortPool::new(config.relay_ports)));
    let open_connections = Arc::new(OpenConnections::default());
    let parked = Parked::default();

    let (shutdown, watcher) = watch::channel(false);
    let mut threads_running = Vec::with_capacity(threads + 2);
    for (index, (udp, tcp)) in udp.into_iter().zip(tcp).enumerate() {
        let stream_listeners = tcp
            .into_iter()
            .map(|(socket, i)| {
                let listen = listening.get(i);
                let serves = StreamListener {
                    tls_only: listen.is_some_and(|l| l.transport == ListenTransport::Tls),
                    acceptor: acceptors.get(i).cloned().flatten(),
                    http: listen.is_some_and(|l| l.http),
                    router: listen.filter(|l| l.http).map(|_| router.clone()),
                    limits: config.streams,
                    open: Arc::clone(&open_connections),
                };
                (socket, serves)
            })
            .collect();
        let setup = ShardSetup {
            index,
            shared: Arc::clone(&shared),
            relay_ips: relays.iter().map(|r| r.bound).collect(),
            pool: Arc::clone(&pool),
            listeners: udp,
            stream_listeners,
            reports: Arc::clone(&reports),
            parked: parked.clone(),
            seed: random(),
            shutdown: watcher.clone(),
        };
        threads_running.push(shard::spawn(setup).context("cannot start a shard thread")?);
    }
    let probe = probe_bound.as_ref().map(|bound| ProbeListening {
        ip: bound.ip,
        ports: bound.ports,
        tcp_port: bound.tcp_port,
        credentials: config.probe.credentials,
    });
    if let (Some(bound), Some(counters)) = (probe_bound, probe_counters) {
        threads_running.push(
            probe::spawn(bound, &config.probe, counters, watcher.clone())
                .context("cannot start the probe responder")?,
        );
    }
    if let Some(listener) = http_listener {
        threads_running.push(
            http::spawn_plain(listener, router, watcher).context("cannot start the HTTP thread")?,
        );
    }
    let (watcher_stop, stop) = mpsc::channel();
    threads_running.push(watch_certificates(certificates.clone(), stop)?);

    Ok(Running {
        listening,
        http_address,
        realm,
        hostname,
        relays,
        relay_ports: config.relay_ports,
        threads,
        generated_secret,
        urls,
        credentials_api,
        drain_timeout: config.drain.timeout,
        probe,
        certificates,
        shared,
        shutdown,
        watcher_stop,
        threads_running,
    })
}

/// Reloads certificate files when they change, until told to stop.
fn watch_certificates(
    stores: Vec<Arc<CertStore>>,
    stop: mpsc::Receiver<()>,
) -> anyhow::Result<JoinHandle<()>> {
    let files: Vec<Arc<CertStore>> = stores
        .into_iter()
        .filter(|s| matches!(s.source(), Source::Files { .. }))
        .collect();
    std::thread::Builder::new()
        .name("certificates".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CERT_POLL) {
                for store in &files {
                    match store.reload(false) {
                        Ok(true) => info!(source = ?store.source(), "certificate files changed; reloaded"),
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "certificate files changed but do not load; the current one stays"),
                    }
                }
            }
        })
        .context("cannot start the certificate watcher")
}

/// The TURN URLs for the listeners (RFC 7065), as browsers take them.
fn turn_urls(listening: &[Listen], hostname: &str) -> Vec<String> {
    let host = match hostname.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => hostname.to_owned(),
    };
    listening
        .iter()
        .map(|l| {
            let port = l.address.port();
            match l.transport {
                ListenTransport::Udp => format!("turn:{host}:{port}?transport=udp"),
                ListenTransport::Tcp => format!("turn:{host}:{port}?transport=tcp"),
                ListenTransport::Tls => format!("turns:{host}:{port}?transport=tcp"),
            }
        })
        .collect()
}

/// What the generated certificate is valid for.
fn certificate_names(hostname: &str, relays: &[RelayIp]) -> Vec<String> {
    let mut names = vec![
        hostname.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(
        relays
            .iter()
            .flat_map(|r| [r.advertised, r.bound])
            .map(|ip| ip.to_string()),
    );
    names.sort();
    names.dedup();
    names
}

/// Where relays are bound, one address per family, each with the address
/// advertised for it. IPv4, when the configuration does not say: the
/// address of a listener bound to one, else the source address of the
/// default route, else an interface's. IPv6 only when configured, or when
/// a listener is bound to a specific IPv6 address.
fn relay_ips(config: &Config, interfaces: &[IpAddr]) -> Vec<RelayIp> {
    let configured = |v4: bool| {
        config
            .relay_addresses
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == v4)
    };
    let listener = |v4: bool| {
        config
            .listen
            .iter()
            .map(|l| l.address.ip())
            .find(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified())
    };
    let v4 = configured(true)
        .or_else(|| listener(true))
        .or_else(net::default_route_ipv4)
        .or_else(|| net::first_interface_ipv4(interfaces))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let v6 = configured(false).or_else(|| listener(false));
    [Some(v4), v6]
        .into_iter()
        .flatten()
        .map(|bound| RelayIp {
            bound,
            advertised: config
                .advertised
                .iter()
                .copied()
                .find(|a| a.is_ipv4() == bound.is_ipv4())
                .unwrap_or(bound),
        })
        .collect()
}

fn random() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The address clients should be given for `listen`: a wildcard listener
/// is reached at the advertised relay address of its family.
#[must_use]
pub fn public_address(listen: &Listen, relays: &[RelayIp]) -> SocketAddr {
    let same_family = relays
        .iter()
        .find(|r| r.advertised.is_ipv4() == listen.address.is_ipv4());
    match same_family {
        Some(r) if listen.address.ip().is_unspecified() => {
            SocketAddr::new(r.advertised, listen.address.port())
        }
        _ => listen.address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_listeners() {
        let listening = vec![
            Listen::plain(ListenTransport::Udp, "0.0.0.0:3478".parse().unwrap()),
            Listen::plain(ListenTransport::Tcp, "0.0.0.0:3478".parse().unwrap()),
            Listen::plain(ListenTransport::Tls, "0.0.0.0:443".parse().unwrap()),
        ];
        assert_eq!(
            turn_urls(&listening, "turn.example.com"),
            vec![
                "turn:turn.example.com:3478?transport=udp",
                "turn:turn.example.com:3478?transport=tcp",
                "turns:turn.example.com:443?transport=tcp",
            ]
        );
        assert_eq!(
            turn_urls(&listening[..1], "2001:db8::1"),
            vec!["turn:[2001:db8::1]:3478?transport=udp"]
        );
    }

    /// SECURITY.md §C: the nonce key and the shards' seeds are drawn
    /// afresh from the operating system's CSPRNG each time: two draws
    /// never repeat, and no byte position is stuck.
    #[test]
    fn keys_are_drawn_afresh_each_time() {
        let draws: Vec<[u8; 32]> = (0..64).map(|_| random()).collect();
        for (i, a) in draws.iter().enumerate() {
            for b in &draws[i + 1..] {
                assert_ne!(a, b, "a key repeated");
            }
        }
        for position in 0..32 {
            let first = draws[0][position];
            assert!(
                draws.iter().any(|d| d[position] != first),
                "byte {position} is the same in 64 keys"
            );
        }
    }
}

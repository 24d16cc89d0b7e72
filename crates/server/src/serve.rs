//! Starting and stopping the server: resolve what the configuration left
//! to the host, bind every socket, start the shards.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context as _, bail};
use rand::Rng as _;
use tokio::sync::watch;
use tracing::warn;
use turnpike_turn::auth::Credentials;
use turnpike_turn::policy::{PeerPolicy, PolicyConfig};
use turnpike_turn::{Lifetimes, RelayIp, Shared};

use crate::config::{Config, Listen, PortRange};
use crate::relay::PortPool;
use crate::shard::{self, ShardSetup};
use crate::{net, state};

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
    pub realm: String,
    /// The address relays are bound on, and the one advertised for it.
    pub relay: RelayIp,
    pub relay_ports: PortRange,
    pub threads: usize,
    /// Set when no users or secrets were configured.
    pub generated_secret: Option<GeneratedSecret>,
    shutdown: watch::Sender<bool>,
    shards: Vec<JoinHandle<()>>,
}

impl Running {
    /// Ends every allocation, logs each, and waits for the shards.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        for shard in self.shards {
            if shard.join().is_err() {
                warn!("a shard panicked");
            }
        }
    }
}

/// Binds everything `config` asks for and starts serving.
pub fn start(config: &Config) -> anyhow::Result<Running> {
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let realm = config.realm.clone().unwrap_or_else(net::hostname);
    let interfaces = net::interface_ips();
    let relay_ip = relay_address(config, &interfaces);
    let relay = RelayIp {
        bound: relay_ip,
        advertised: config.advertised.unwrap_or(relay_ip),
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

    // One socket per listener per shard, all on the same address.
    let mut per_shard: Vec<Vec<std::net::UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    let mut listening = Vec::new();
    for listen in &config.listen {
        let sockets = net::bind_group(listen.address, threads)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = sockets
            .first()
            .map_or(Ok(listen.address), |s| s.local_addr())?;
        for (shard, socket) in per_shard.iter_mut().zip(sockets) {
            shard.push(socket);
        }
        listening.push(Listen {
            transport: listen.transport,
            address,
        });
    }

    let mut own_ips = interfaces;
    own_ips.extend([relay.bound, relay.advertised]);
    own_ips.extend(
        listening
            .iter()
            .map(|l| l.address.ip())
            .filter(|ip| !ip.is_unspecified()),
    );
    let policy = PeerPolicy::new(PolicyConfig {
        allow: config.allow_peers.clone(),
        deny: config.deny_peers.clone(),
        own_ips,
        listeners: listening.iter().map(|l| l.address).collect(),
        relay_ips: vec![relay.bound, relay.advertised],
        relay_ports: config.relay_ports.first..=config.relay_ports.last,
    });
    let turn_config = turnpike_turn::Config {
        realm: realm.clone(),
        software: None,
        relay_ips: vec![relay],
        lifetimes: Lifetimes {
            nonce: std::time::Duration::from_secs(config.nonce_lifetime),
            ..Lifetimes::default()
        },
        limits: config.limits,
        policy,
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
    let shared = Arc::new(Shared::new(
        turn_config,
        credentials,
        random(),
        Instant::now(),
    ));
    let pool = Arc::new(Mutex::new(PortPool::new(config.relay_ports)));

    let (shutdown, watcher) = watch::channel(false);
    let mut shards = Vec::with_capacity(threads);
    for (index, listeners) in per_shard.into_iter().enumerate() {
        let setup = ShardSetup {
            index,
            shared: Arc::clone(&shared),
            relay_ips: vec![relay.bound],
            pool: Arc::clone(&pool),
            listeners,
            seed: random(),
            shutdown: watcher.clone(),
        };
        shards.push(shard::spawn(setup).context("cannot start a shard thread")?);
    }
    Ok(Running {
        listening,
        realm,
        relay,
        relay_ports: config.relay_ports,
        threads,
        generated_secret,
        shutdown,
        shards,
    })
}

/// Where relays are bound when the configuration does not say: the
/// address of a listener bound to one, else the source address of the
/// default route, else an interface's.
fn relay_address(config: &Config, interfaces: &[IpAddr]) -> IpAddr {
    config
        .relay_address
        .or_else(|| {
            config
                .listen
                .iter()
                .map(|l| l.address.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_unspecified())
        })
        .or_else(net::default_route_ipv4)
        .or_else(|| net::first_interface_ipv4(interfaces))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn random() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The address clients should be given for `listen`: a wildcard listener
/// is reached at the relay's advertised address.
#[must_use]
pub fn public_address(listen: &Listen, relay: &RelayIp) -> SocketAddr {
    if listen.address.ip().is_unspecified() {
        SocketAddr::new(relay.advertised, listen.address.port())
    } else {
        listen.address
    }
}

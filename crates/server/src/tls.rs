//! Certificates and TLS configuration for TURN over TLS and HTTPS.
//!
//! Every TLS listener resolves its certificate through a [`CertStore`],
//! which can be reloaded while the server runs: new handshakes get the new
//! certificate, established sessions keep theirs.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol id of TURN (RFC 7443).
pub const ALPN_TURN: &[u8] = b"stun.turn";
/// The ALPN ids of HTTP.
pub const ALPN_HTTP: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Names of the generated certificate and key in the state directory.
pub const GENERATED_CERT: &str = "tls-cert.pem";
pub const GENERATED_KEY: &str = "tls-key.pem";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain and private key, and checks they match.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
}

/// Where a certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Files the operator manages; reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed pair generated into the state directory.
    Generated { cert: PathBuf, key: PathBuf },
}

impl Source {
    fn paths(&self) -> (&Path, &Path) {
        match self {
            Self::Files { cert, key } | Self::Generated { cert, key } => (cert, key),
        }
    }
}

/// The generated self-signed pair in `state_dir`, created on first use for
/// `names` (host names and IP addresses).
pub fn generated(state_dir: &Path, names: &[String]) -> Result<Source, String> {
    let cert = state_dir.join(GENERATED_CERT);
    let key = state_dir.join(GENERATED_KEY);
    if !cert.exists() || !key.exists() {
        let failed = |e: rcgen::Error| format!("cannot generate a certificate: {e}");
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(failed)?;
        // Its subject and issuer, which `turnpike check` reports and the
        // profile publishes: say what made it.
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, "turnpike self-signed");
        params.distinguished_name = name;
        let signing_key = rcgen::KeyPair::generate().map_err(failed)?;
        let generated = params.self_signed(&signing_key).map_err(failed)?;
        write_private(&key, signing_key.serialize_pem().as_bytes())?;
        fs::write(&cert, generated.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    }
    Ok(Source::Generated { cert, key })
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(contents)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificate a listener presents, replaceable at run time.
pub struct CertStore {
    source: Source,
    current: RwLock<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// Modification times of the files when they were read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .finish()
    }
}

fn stamp(source: &Source) -> (Option<SystemTime>, Option<SystemTime>) {
    let (cert, key) = source.paths();
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

impl CertStore {
    /// Loads the certificate from `source`.
    pub fn new(source: Source) -> Result<Arc<Self>, String> {
        let stamp = stamp(&source);
        let (cert, key) = source.paths();
        let key = Arc::new(load_pair(cert, key)?);
        Ok(Arc::new(Self {
            current: RwLock::new(Loaded { key, stamp }),
            source,
        }))
    }

    #[must_use]
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Reads the files again if they changed since they were read (or
    /// always, with `force`). A pair that fails to load leaves the current
    /// certificate in place; the error says why.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now = stamp(&self.source);
        let unchanged = self.current.read().map(|c| c.stamp == now).unwrap_or(false);
        if unchanged && !force {
            return Ok(false);
        }
        let (cert, key) = self.source.paths();
        let key = Arc::new(load_pair(cert, key)?);
        let mut current = self
            .current
            .write()
            .map_err(|_| "certificate store poisoned".to_owned())?;
        *current = Loaded { key, stamp: now };
        Ok(true)
    }

    /// The certificate new handshakes get.
    #[must_use]
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c.key))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// A TLS 1.2/1.3 server configuration presenting `store`'s certificate.
/// With `http`, it offers the TURN and HTTP ALPN ids, so a client that
/// names its protocol is routed by it.
pub fn server_config(
    store: Arc<CertStore>,
    http: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    if http {
        config.alpn_protocols = std::iter::once(ALPN_TURN)
            .chain(ALPN_HTTP)
            .map(<[u8]>::to_vec)
            .collect();
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_loads_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let source = generated(dir.path(), &names).unwrap();
        let first = fs::read(dir.path().join(GENERATED_CERT)).unwrap();
        let again = generated(dir.path(), &names).unwrap();
        assert_eq!(source, again);
        assert_eq!(
            fs::read(dir.path().join(GENERATED_CERT)).unwrap(),
            first,
            "kept, not regenerated"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.path().join(GENERATED_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let store = CertStore::new(source.clone()).unwrap();
        let before = store.current().unwrap();
        assert!(!store.reload(false).unwrap(), "nothing changed");
        // Replace the pair: a forced reload picks it up.
        fs::remove_file(dir.path().join(GENERATED_CERT)).unwrap();
        fs::remove_file(dir.path().join(GENERATED_KEY)).unwrap();
        generated(dir.path(), &names).unwrap();
        assert!(store.reload(true).unwrap());
        assert_ne!(store.current().unwrap().cert, before.cert);
    }

    #[test]
    fn a_broken_pair_is_refused_and_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let source = generated(dir.path(), &["localhost".to_owned()]).unwrap();
        let store = CertStore::new(source).unwrap();
        let before = store.current().unwrap();
        fs::write(dir.path().join(GENERATED_KEY), "not a key").unwrap();
        assert!(store.reload(true).is_err());
        assert_eq!(store.current().unwrap().cert, before.cert);
        let err = load_pair(
            &dir.path().join(GENERATED_CERT),
            &dir.path().join("missing.pem"),
        )
        .unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }
}

//! TLS as a checker sees it: the handshake always completes when the
//! network lets it, whatever the certificate, and the certificate and the
//! verdict on it are kept for the report. A check must tell "blocked" from
//! "intercepted" from "self-signed", which a failing handshake would hide.

use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// What the server presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The leaf certificate's issuer and subject (RFC 4514 text).
    pub(crate) issuer: Option<String>,
    pub(crate) subject: Option<String>,
    /// Why the certificate is not trusted (web PKI roots, for the name
    /// asked); `None` when it is.
    pub(crate) untrusted: Option<String>,
}

/// Records the certificate of each handshake it verifies.
#[derive(Debug)]
pub(crate) struct Recorder {
    webpki: Arc<WebPkiServerVerifier>,
    seen: Mutex<Seen>,
}

impl Recorder {
    pub(crate) fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (issuer, subject) = names(end_entity);
        let untrusted = self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .err()
            .map(|e| e.to_string());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Seen {
                issuer,
                subject,
                untrusted,
            };
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A client configuration for one handshake, and where it records what it
/// saw. `alpn`: the protocols to offer.
pub(crate) fn client(alpn: &[&[u8]]) -> Result<(Arc<rustls::ClientConfig>, Arc<Recorder>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| e.to_string())?;
    let recorder = Arc::new(Recorder {
        webpki,
        seen: Mutex::new(Seen::default()),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&recorder) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), recorder))
}

/// The issuer and subject of a certificate, as RFC 4514 text.
fn names(cert: &CertificateDer<'_>) -> (Option<String>, Option<String>) {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => (
            Some(parsed.issuer().to_string()),
            Some(parsed.subject().to_string()),
        ),
        Err(_) => (None, None),
    }
}

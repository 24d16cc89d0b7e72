//! Reaching an endpoint: names resolved, TCP connected (directly or
//! through an HTTPS proxy), TLS shaken hands with, each within a deadline.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::tls::{self, Seen};

/// A byte stream to an endpoint: TCP, or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type Stream = Box<dyn Io>;

/// Why reaching an endpoint failed, in words for the report, and at which
/// step (so that the remediation names the right rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) step: Step,
    pub(crate) detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Connect,
    Tls,
    Protocol,
}

impl Failure {
    pub(crate) fn new(step: Step, detail: impl Into<String>) -> Self {
        Self {
            step,
            detail: detail.into(),
        }
    }
}

/// Runs `f` until `deadline`; "timed out" after.
pub(crate) async fn within<T>(
    deadline: Instant,
    step: Step,
    f: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(step, "timed out")),
    }
}

/// The host's addresses, IPv4 first (the path most networks filter
/// explicitly), each once.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no address".into());
    }
    Ok(addrs)
}

/// A TCP connection to the first of `addrs` that answers before the
/// deadline; each gets an equal share of the time left.
/// The wildcard address of `peer`'s family, port 0: where a socket that
/// talks to `peer` binds.
pub(crate) fn wildcard_for(peer: std::net::IpAddr) -> SocketAddr {
    let any: std::net::IpAddr = if peer.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(any, 0)
}

/// A UDP socket on an ephemeral port of [`wildcard_for`] `peer`.
pub(crate) async fn udp_socket_for(
    peer: std::net::IpAddr,
) -> Result<tokio::net::UdpSocket, Failure> {
    tokio::net::UdpSocket::bind(wildcard_for(peer))
        .await
        .map_err(|e| Failure::new(Step::Connect, format!("cannot open a UDP socket: {e}")))
}

pub(crate) async fn connect(
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), Failure> {
    let mut last = Failure::new(Step::Connect, "no address to connect to");
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(1).max(1);
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, *addr));
            }
            Ok(Err(e)) => last = Failure::new(Step::Connect, format!("{addr}: {e}")),
            Err(_) => last = Failure::new(Step::Connect, format!("{addr}: timed out")),
        }
    }
    Err(last)
}

/// How long a direct connection may take when a proxy is there to try
/// next: a reachable host answers a SYN well within it, and a firewall
/// that drops it leaves the proxy the rest of the time.
const DIRECT_WHEN_PROXIED: std::time::Duration = std::time::Duration::from_secs(3);

/// How a TCP connection to an endpoint was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Direct,
    /// Through the proxy, after the direct attempt failed thus.
    Proxied(Proxy, Failure),
}

/// A TCP connection made by `direct` (given its deadline), else, when
/// that cannot connect and `proxy` is given, a tunnel through the proxy to
/// `host:port`. With a proxy to try next, `direct` gets
/// [`DIRECT_WHEN_PROXIED`] at most.
pub(crate) async fn direct_or_tunnel<F, Fut>(
    direct: F,
    host: &str,
    port: u16,
    proxy: Option<&Proxy>,
    deadline: Instant,
) -> Result<(TcpStream, Route), Failure>
where
    F: FnOnce(Instant) -> Fut,
    Fut: Future<Output = Result<(TcpStream, SocketAddr), Failure>>,
{
    let Some(proxy) = proxy else {
        return direct(deadline).await.map(|(tcp, _)| (tcp, Route::Direct));
    };
    let f = match direct((Instant::now() + DIRECT_WHEN_PROXIED).min(deadline)).await {
        Ok((tcp, _)) => return Ok((tcp, Route::Direct)),
        Err(f) if f.step == Step::Connect => f,
        Err(f) => return Err(f),
    };
    match connect_via(proxy, host, port, deadline).await {
        Ok(tcp) => Ok((tcp, Route::Proxied(proxy.clone(), f))),
        Err(via) => Err(Failure::new(
            f.step,
            format!("{}; through the proxy: {}", f.detail, via.detail),
        )),
    }
}

/// An HTTP proxy for HTTPS (`HTTPS_PROXY`, `https_proxy`): `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
}

impl Proxy {
    /// The proxy the environment names, if any.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        ["HTTPS_PROXY", "https_proxy"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .and_then(|s| Self::parse(&s))
    }

    /// `http://host:port`, `host:port` or `http://[v6]:port`; credentials
    /// in the URL are not supported.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("http://").unwrap_or(text);
        let rest = rest.split('/').next()?;
        if rest.contains('@') {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().ok()?),
            _ => (rest, 8080),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then(|| Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// A tunnel to `host:port` through `proxy` (HTTP CONNECT).
pub(crate) async fn connect_via(
    proxy: &Proxy,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, Failure> {
    let addrs = within(deadline, Step::Connect, async {
        resolve(&proxy.host, proxy.port)
            .await
            .map_err(|e| Failure::new(Step::Connect, format!("proxy {}: {e}", proxy.host)))
    })
    .await?;
    let (mut stream, _) = connect(&addrs, deadline).await?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    within(deadline, Step::Connect, async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Failure::new(Step::Connect, format!("proxy: {e}")))?;
        let head = read_head(&mut stream)
            .await
            .map_err(|e| Failure::new(Step::Connect, format!("proxy: {e}")))?;
        match status_code(&head) {
            Some(200..=299) => Ok(()),
            Some(code) => Err(Failure::new(
                Step::Connect,
                format!("the proxy refused the tunnel ({code})"),
            )),
            None => Err(Failure::new(
                Step::Connect,
                "the proxy's answer is not HTTP",
            )),
        }
    })
    .await?;
    Ok(stream)
}

/// A TLS session over `tcp`, naming `host`; returns what the server
/// presented too.
pub(crate) async fn tls_over(
    tcp: TcpStream,
    host: &str,
    alpn: &[&[u8]],
    deadline: Instant,
) -> Result<(Stream, Seen), Failure> {
    let (config, recorder) = tls::client(alpn).map_err(|e| Failure::new(Step::Tls, e))?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Failure::new(Step::Tls, format!("{host}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let stream = within(deadline, Step::Tls, async {
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::new(Step::Tls, format!("handshake failed: {e}")))
    })
    .await?;
    Ok((Box::new(stream), recorder.seen()))
}

/// Reads an HTTP response head (up to the blank line, 16 KiB at most).
pub(crate) async fn read_head<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "an HTTP head over 16 KiB",
            ));
        }
        if r.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of an HTTP response head.
pub(crate) fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_from_their_usual_spellings() {
        let p = |host: &str, port| {
            Some(Proxy {
                host: host.into(),
                port,
            })
        };
        assert_eq!(
            Proxy::parse("http://proxy.corp:3128"),
            p("proxy.corp", 3128)
        );
        assert_eq!(
            Proxy::parse("http://proxy.corp:3128/"),
            p("proxy.corp", 3128)
        );
        assert_eq!(Proxy::parse("10.0.0.1:8080"), p("10.0.0.1", 8080));
        assert_eq!(
            Proxy::parse("http://[2001:db8::1]:3128"),
            p("2001:db8::1", 3128)
        );
        assert_eq!(Proxy::parse("proxy.corp"), p("proxy.corp", 8080));
        assert_eq!(Proxy::parse("http://user:pw@proxy:1"), None);
        assert_eq!(Proxy::parse(""), None);
    }

    #[test]
    fn status_codes_of_response_heads() {
        assert_eq!(
            status_code("HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            status_code("HTTP/1.0 407 Proxy Authentication Required\r\n"),
            Some(407)
        );
        assert_eq!(status_code("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(""), None);
    }
}

//! `turnpike check URL`: the server's published profile, fetched from
//! `URL/api/v1/profile` over HTTPS (or plain HTTP).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use turnpike_profile::Published;

use crate::net::{self, Proxy, Route, Step};

/// The largest profile document read.
const MAX_BODY: usize = 1 << 20;

/// A server's base URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The path before `/api/v1/profile`, without its last slash.
    pub path: String,
}

impl BaseUrl {
    /// `https://host[:port][/path]` or `http://...`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url}: give an https:// (or http://) URL"));
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: no host, or credentials in the URL"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{url}: bad authority")),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{url}: no host or port"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            path: format!("/{}", path.trim_end_matches('/'))
                .trim_end_matches('/')
                .to_owned(),
        })
    }
}

/// What the server published, and the issuer of the certificate it
/// presented (over HTTPS). When the server cannot be reached directly
/// within a few seconds, the request goes through `proxy` (HTTP CONNECT),
/// if given.
pub async fn published(
    base: &BaseUrl,
    deadline: Instant,
    proxy: Option<&Proxy>,
) -> Result<(Published, Option<String>), String> {
    let direct = |deadline| async move {
        let addrs = net::within(deadline, Step::Connect, async {
            net::resolve(&base.host, base.port)
                .await
                .map_err(|e| net::Failure::new(Step::Connect, format!("{}: {e}", base.host)))
        })
        .await?;
        net::connect(&addrs, deadline).await
    };
    let (tcp, route) = net::direct_or_tunnel(direct, &base.host, base.port, proxy, deadline)
        .await
        .map_err(|f| f.detail)?;
    let at = match route {
        Route::Direct => format!("{}:{}", base.host, base.port),
        Route::Proxied(..) => format!("{}:{} (through the proxy)", base.host, base.port),
    };
    let (mut stream, issuer): (net::Stream, _) = if base.tls {
        let (s, seen) = net::tls_over(tcp, &base.host, &[b"http/1.1"], deadline)
            .await
            .map_err(|f| format!("{at}: {}", f.detail))?;
        (s, seen.issuer)
    } else {
        (Box::new(tcp), None)
    };
    let host = if base.host.contains(':') {
        format!("[{}]", base.host)
    } else {
        base.host.clone()
    };
    let request = format!(
        "GET {}/api/v1/profile HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: turnpike-check\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        base.path, base.port
    );
    let body = tokio::time::timeout_at(deadline, async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let head = net::read_head(&mut stream)
            .await
            .map_err(|e| e.to_string())?;
        match net::status_code(&head) {
            Some(200) => {}
            Some(code) => return Err(format!("GET /api/v1/profile: HTTP {code}")),
            None => return Err("GET /api/v1/profile: the answer is not HTTP".into()),
        }
        let mut body = Vec::new();
        (&mut stream)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        if body.len() > MAX_BODY {
            return Err("the profile is over 1 MiB".into());
        }
        Ok(body)
    })
    .await
    .map_err(|_| "timed out fetching the profile".to_owned())??;
    let published: Published = serde_json::from_slice(&body)
        .map_err(|e| format!("the published profile is not valid: {e}"))?;
    published
        .profile
        .validate()
        .map_err(|e| format!("the published profile is not valid: {e}"))?;
    Ok((published, issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let u = |tls, host: &str, port, path: &str| BaseUrl {
            tls,
            host: host.into(),
            port,
            path: path.into(),
        };
        assert_eq!(
            BaseUrl::parse("https://turn.example.com"),
            Ok(u(true, "turn.example.com", 443, ""))
        );
        assert_eq!(
            BaseUrl::parse("https://turn.example.com/"),
            Ok(u(true, "turn.example.com", 443, ""))
        );
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:8080/turn/"),
            Ok(u(false, "127.0.0.1", 8080, "/turn"))
        );
        assert_eq!(
            BaseUrl::parse("https://[::1]:5349"),
            Ok(u(true, "::1", 5349, ""))
        );
        assert!(BaseUrl::parse("turn.example.com").is_err());
        assert!(BaseUrl::parse("https://:443").is_err());
        assert!(BaseUrl::parse("https://h:0").is_err());
        assert!(BaseUrl::parse("https://h:x").is_err());
        assert!(BaseUrl::parse("https://u:p@h").is_err());
    }
}

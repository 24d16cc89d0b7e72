//! What each check is called, and what to change when it fails: the exact
//! rule, with protocol, address and port.

use std::net::IpAddr;
use std::time::Duration;

use turnpike_profile::{Assessment, Endpoint, Kind, Profile, Reach, Verdict};

use crate::net::{Failure, Step};
use crate::report::{Check, Status};

/// "TURN over TLS to turn.example.com:443".
pub(crate) fn title(e: &Endpoint) -> String {
    let what = match e.kind {
        Kind::Tcp => "TCP",
        Kind::Tls => "TLS",
        Kind::Https => "HTTPS",
        Kind::Wss => "WebSocket (wss)",
        Kind::StunUdp => "STUN over UDP",
        Kind::StunTcp => "STUN over TCP",
        Kind::TurnUdp => "TURN over UDP",
        Kind::TurnTcp => "TURN over TCP",
        Kind::TurnTls => "TURN over TLS",
        Kind::UdpRange => "UDP media",
    };
    match (e.port, e.port_range()) {
        (_, Some(range)) if e.kind.is_range() => format!("{what} to {} ports {range}", e.host),
        (Some(port), _) => format!("{what} to {}", authority(&e.host, port)),
        _ => format!("{what} to {}", e.host),
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The check of one host name's resolution.
pub(crate) fn dns_check(host: &str, result: &Result<Vec<IpAddr>, String>, took: Duration) -> Check {
    let mut c = Check::new(
        format!("dns:{host}"),
        format!("DNS name {host}"),
        Status::Pass,
    );
    c.duration_ms = took.as_secs_f64() * 1000.0;
    match result {
        Ok(ips) => {
            let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            c.value = serde_json::json!(list);
            c.detail = Some(format!("resolves to {}", list.join(", ")));
        }
        Err(e) => {
            c.status = Status::Fail;
            c.detail = Some(format!("does not resolve: {e}"));
            c.remediation = Some(format!(
                "make {host} resolvable: allow DNS (UDP and TCP port 53) to your resolvers, and check that the name is not filtered"
            ));
        }
    }
    c
}

fn addresses(ips: &[IpAddr]) -> String {
    let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    match list.as_slice() {
        [] => "its addresses".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The rule to change for an endpoint that could not be reached.
pub(crate) fn for_failure(e: &Endpoint, ips: &[IpAddr], f: &Failure) -> String {
    let to = addresses(ips);
    let host = &e.host;
    let ports = match (e.port, e.port_range()) {
        (_, Some(r)) if r.len() > 1 => format!("ports {r}"),
        (_, Some(r)) => format!("port {r}"),
        (Some(p), None) => format!("port {p}"),
        (None, None) => "its port".into(),
    };
    let proto = if e.kind.is_udp() { "UDP" } else { "TCP" };
    let by_name = if to == *host {
        String::new()
    } else {
        format!(" ({host})")
    };
    match f.step {
        Step::Connect => {
            format!("allow outbound {proto} to {to}{by_name} {ports}, and the replies")
        }
        Step::Tls => format!(
            "allow TLS to {host} {ports} end to end: a firewall or proxy lets TCP through but breaks the TLS handshake"
        ),
        Step::Protocol => match e.kind {
            Kind::TurnUdp | Kind::TurnTcp | Kind::TurnTls if f.detail.contains("credentials") => {
                "check the TURN credentials given (--user, --password): the server refused them"
                    .into()
            }
            Kind::TurnUdp | Kind::TurnTcp | Kind::TurnTls => format!(
                "allow {proto} to {to}{by_name} {ports} for TURN, and UDP between the relay and the relayed addresses it hands out"
            ),
            _ => format!(
                "allow {proto} to {to}{by_name} {ports} without filtering the protocol spoken on it"
            ),
        },
    }
}

/// The rule to change when TLS is intercepted.
pub(crate) fn for_interception(e: &Endpoint) -> String {
    format!(
        "exempt {} port {} from TLS inspection: real-time media over TLS does not survive being decrypted and re-encrypted",
        e.host,
        e.port.unwrap_or(443)
    )
}

/// One sentence on what the verdict means for calls.
pub(crate) fn summary(profile: &Profile, a: &Assessment) -> String {
    let name = &profile.about.name;
    match a.verdict {
        Verdict::Ready => format!(
            "Everything {name} needs works directly: calls get the best quality this network allows."
        ),
        Verdict::Degraded => {
            let via: Vec<String> = a
                .endpoints
                .iter()
                .filter_map(|r| match &r.reach {
                    Reach::Fallback { via } if r.required => {
                        Some(format!("{} through {}", r.id, via.join(" or ")))
                    }
                    _ => None,
                })
                .collect();
            format!(
                "Calls will work, but only through fallbacks ({}): expect more delay and lower quality until the rules below are changed.",
                via.join("; ")
            )
        }
        Verdict::Blocked => {
            let blocked: Vec<&str> = a
                .endpoints
                .iter()
                .filter(|r| r.required && r.reach == Reach::Blocked)
                .map(|r| r.id.as_str())
                .collect();
            format!(
                "{name} will not work from this network: {} blocked, with no fallback that works.",
                blocked.join(", ")
            )
        }
    }
}

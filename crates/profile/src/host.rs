//! Which host names a profile accepts: what the checker can resolve and
//! connect to, written alone (no scheme, port or path).

use std::net::IpAddr;

/// The longest DNS name, without its trailing dot (RFC 1035 §2.3.4).
const MAX_NAME: usize = 253;
/// The longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

/// Checks a host: a DNS name (RFC 1123 labels) or an IPv4/IPv6 literal.
/// The message says what to write instead.
pub(crate) fn check(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some(c) = host.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{host:?} contains {c:?}; write the host name alone"
        ));
    }
    if let Some((scheme, rest)) = host.split_once("://") {
        let bare = rest.split(['/', ':']).next().unwrap_or(rest);
        return Err(format!(
            "{host:?} has a scheme ({scheme}://); write the host alone ({bare:?}) and the protocol in key \"kind\""
        ));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.split(']').next().unwrap_or(inner);
        return Err(format!(
            "{host:?}: write an IPv6 address without brackets ({inner:?}), and any port in key \"port\""
        ));
    }
    if let Some((before, _)) = host.split_once('/') {
        return Err(format!(
            "{host:?} has a path; write the host alone ({before:?}) and the path in key \"path\""
        ));
    }
    if host.contains(':') {
        return Err(match host.rsplit_once(':') {
            Some((name, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && !name.contains(':') =>
            {
                format!(
                    "{host:?} has a port; write the host alone ({name:?}) and {port} in key \"port\""
                )
            }
            _ => format!("{host:?} is not a valid IPv6 address"),
        });
    }
    if !host.is_ascii() {
        return Err(format!(
            "{host:?} is not ASCII; write an internationalised name in its ASCII (\"xn--\") form"
        ));
    }
    if let Some(domain) = host.strip_prefix("*.") {
        return Err(format!(
            "{host:?} is a wildcard, which the checker cannot resolve; name one concrete host the service uses under {domain:?} (the firewall rule may keep the wildcard)"
        ));
    }
    // One trailing dot marks a fully qualified name; it is not a label.
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_NAME {
        return Err(format!(
            "is {} characters long; a DNS name has at most {MAX_NAME}",
            name.len()
        ));
    }
    for label in name.split('.') {
        check_label(label, host)?;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{host:?} is neither an IPv4 address nor a DNS name (a name's last label is not all digits)"
        ));
    }
    Ok(())
}

fn check_label(label: &str, host: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!(
            "{host:?} has an empty label (two dots in a row, or a dot at the start)"
        ));
    }
    if label == "*" || label.contains('*') {
        return Err(format!(
            "{host:?} has a wildcard, which the checker cannot resolve; name a concrete host"
        ));
    }
    if label.len() > MAX_LABEL {
        return Err(format!(
            "{host:?} has a label of {} characters; at most {MAX_LABEL}",
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{host:?} contains {c:?}; a host name has letters, digits, '-' and '.'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "{host:?} has a label that starts or ends with '-' ({label:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_literals() {
        for ok in [
            "app.example.com",
            "global.turn.twilio.com",
            "Global.Stun.Twilio.com",
            "localhost",
            "a",
            "xn--bcher-kva.example",
            "example.com.",
            "1a.example",
            "3com.com",
            "192.0.2.1",
            "2001:db8::1",
            "::1",
            "::ffff:192.0.2.1",
            "fe80::1%eth0",
        ] {
            // A zone index is not something a profile can carry.
            if ok.contains('%') {
                assert!(check(ok).is_err(), "{ok}");
                continue;
            }
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let long_label = "a".repeat(63);
        assert_eq!(check(&format!("{long_label}.example")), Ok(()));
        let name = [
            &"a".repeat(63)[..],
            &"b".repeat(63),
            &"c".repeat(63),
            &"d".repeat(61),
        ]
        .join(".");
        assert_eq!(name.len(), 253);
        assert_eq!(check(&name), Ok(()));
        assert_eq!(check(&format!("{name}.")), Ok(()));
    }

    fn refused(host: &str, says: &str) {
        let e = check(host).unwrap_err();
        assert!(e.contains(says), "{host:?}: {e}");
    }

    #[test]
    fn refuses_with_advice() {
        refused("", "empty");
        refused("app example.com", "contains ' '");
        refused(
            "https://app.example.com/x",
            "write the host alone (\"app.example.com\")",
        );
        refused("app.example.com:443", "443 in key \"port\"");
        refused("app.example.com/socket", "the path in key \"path\"");
        refused("[2001:db8::1]", "without brackets (\"2001:db8::1\")");
        refused("[2001:db8::1]:443", "without brackets");
        refused("2001:db8::g", "not a valid IPv6");
        refused(
            "*.scoot.app",
            "concrete host the service uses under \"scoot.app\"",
        );
        refused("a.*.example", "wildcard");
        refused("*", "wildcard");
        refused("app..example", "empty label");
        refused(".example", "empty label");
        refused("example..", "empty label");
        refused("-a.example", "starts or ends with '-'");
        refused("a-.example", "starts or ends with '-'");
        refused("a_b.example", "contains '_'");
        refused("bücher.example", "ASCII");
        refused(&format!("{}.example", "a".repeat(64)), "label of 64");
        refused(&format!("{}.example", ["a"; 125].join(".")), "at most 253");
        refused("999.1.1.1", "neither an IPv4 address nor a DNS name");
        refused("1.2.3", "neither");
        refused("10", "neither");
        refused("tab\there", "contains '\\t'");
    }
}

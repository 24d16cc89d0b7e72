//! The rules a parsed profile must follow, beyond its shape. The same
//! rules hold for a profile read from TOML (errors with lines) and one
//! built in code or read from JSON (errors without).

use std::collections::{HashMap, HashSet};

use crate::error::{EndpointRef, ProfileError, did_you_mean};
use crate::parse::Spans;
use crate::{Endpoint, MAX_ENDPOINTS, Profile, host};

/// The longest endpoint id.
pub(crate) const MAX_ID: usize = 64;

pub(crate) fn validate(p: &Profile, spans: &Spans) -> Result<(), ProfileError> {
    let about = |key: &str, message: String| {
        let line = spans.profile.line(key);
        ProfileError::new(line, None, Some(&format!("profile.{key}")), message)
    };
    text(&p.about.name, false).map_err(|m| about("name", m))?;
    if let Some(d) = &p.about.description {
        text(d, true).map_err(|m| about("description", m))?;
    }
    text(&p.about.source, false).map_err(|m| about("source", m))?;

    if p.endpoints.is_empty() {
        return Err(ProfileError::new(
            spans.end,
            None,
            Some("endpoint"),
            "missing: a profile lists at least one [[endpoint]]",
        ));
    }
    if p.endpoints.len() > MAX_ENDPOINTS {
        return Err(ProfileError::new(
            spans.endpoint(MAX_ENDPOINTS, "id"),
            None,
            Some("endpoint"),
            format!(
                "too many endpoints ({}); a profile has at most {MAX_ENDPOINTS}",
                p.endpoints.len()
            ),
        ));
    }
    let ids: Vec<&str> = p.endpoints.iter().map(|e| e.id.as_str()).collect();
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, e) in p.endpoints.iter().enumerate() {
        let label = if e.id.is_empty() {
            EndpointRef::Number(i + 1)
        } else {
            EndpointRef::Id(e.id.clone())
        };
        let err = |key: &str, message: String| {
            ProfileError::new(spans.endpoint(i, key), Some(&label), Some(key), message)
        };
        id(&e.id).map_err(|m| err("id", m))?;
        if let Some(&first) = first_seen.get(e.id.as_str()) {
            let at = spans
                .endpoint(first, "id")
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default();
            return Err(err(
                "id",
                format!(
                    "duplicate id: endpoint #{}{at} already has it; ids must be unique",
                    first + 1
                ),
            ));
        }
        first_seen.insert(&e.id, i);
        host::check(&e.host).map_err(|m| err("host", m))?;
        ports(e).map_err(|(key, m)| err(key, m))?;
        if let Some(path) = &e.path {
            request_path(e, path).map_err(|m| err("path", m))?;
        }
        let mut listed = HashSet::new();
        for (j, target) in e.fallback_for.iter().enumerate() {
            let item = |message: String| {
                ProfileError::new(
                    spans.fallback_item(i, j),
                    Some(&label),
                    Some("fallback_for"),
                    message,
                )
            };
            if *target == e.id {
                return Err(item(format!(
                    "{target:?} is this endpoint's own id; an endpoint cannot stand in for itself"
                )));
            }
            if !ids.contains(&target.as_str()) {
                let hint = did_you_mean(target, &ids)
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                return Err(item(format!("no endpoint has the id {target:?}{hint}")));
            }
            if !listed.insert(target.as_str()) {
                return Err(item(format!("{target:?} is listed twice")));
            }
        }
        if let Some(purpose) = &e.purpose {
            text(purpose, true).map_err(|m| err("purpose", m))?;
        }
        if let Some(source) = &e.source {
            text(source, true).map_err(|m| err("source", m))?;
        }
    }

    for (name, bound, limit, source) in p.thresholds.iter() {
        let err = |key: &str, message: String| {
            let line = spans.thresholds.line(&format!("{name}.{key}"));
            ProfileError::new(
                line,
                None,
                Some(&format!("thresholds.{name}.{key}")),
                message,
            )
        };
        threshold(name, limit).map_err(|m| err(bound.key(), m))?;
        text(source, true).map_err(|m| err("source", m))?;
    }
    Ok(())
}

/// A threshold's limit: finite, 0 or more, and a percentage for loss.
pub(crate) fn threshold(name: &str, limit: f64) -> Result<(), String> {
    if !limit.is_finite() {
        return Err(format!("{limit} is not a finite number"));
    }
    if limit < 0.0 {
        return Err(format!("{limit} is negative; a limit is 0 or more"));
    }
    if name == "loss_pct" && limit > 100.0 {
        return Err(format!("{limit} is not a percentage (0 to 100)"));
    }
    Ok(())
}

/// Text for people: not blank, and no control characters that could
/// play tricks on a terminal (newlines and tabs only where `multiline`).
pub(crate) fn text(s: &str, multiline: bool) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty (leave the key out if it is optional)".to_owned());
    }
    match s
        .chars()
        .find(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\t')))
    {
        Some(c) => Err(format!(
            "contains the control character U+{:04X}",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

pub(crate) fn id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty; write an id like \"media\"".to_owned());
    }
    if id.len() > MAX_ID {
        return Err(format!("is {} characters long; at most {MAX_ID}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{id:?} contains {c:?}; an id has lowercase letters, digits and '-' only"
        ));
    }
    Ok(())
}

/// `port` for every kind but `udp-range`, `ports` for it.
fn ports(e: &Endpoint) -> Result<(), (&'static str, String)> {
    let kind = e.kind;
    if kind.is_range() {
        if e.port.is_some() {
            return Err((
                "port",
                format!(
                    "kind {kind} takes \"ports\" (like \"10000-20000\", or one port), not \"port\""
                ),
            ));
        }
        if e.ports.is_none() {
            return Err((
                "ports",
                format!("missing: kind {kind} needs the range, like ports = \"10000-20000\""),
            ));
        }
        return Ok(());
    }
    if e.ports.is_some() {
        return Err((
            "ports",
            format!("only kind udp-range takes a range; kind {kind} takes one \"port\""),
        ));
    }
    match e.port {
        None => Err((
            "port",
            format!("missing: kind {kind} needs a port, like port = 443"),
        )),
        Some(0) => Err(("port", "0 is not a port (ports are 1 to 65535)".to_owned())),
        Some(_) => Ok(()),
    }
}

fn request_path(e: &Endpoint, path: &str) -> Result<(), String> {
    if !e.kind.has_path() {
        return Err(format!(
            "only kinds https and wss have a path; kind {} has none",
            e.kind
        ));
    }
    path_text(path)
}

/// A request target as it goes on the wire.
pub(crate) fn path_text(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if let Some(c) = path
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "{path:?} contains {c:?}; percent-encode it (a path is sent as written)"
        ));
    }
    Ok(())
}

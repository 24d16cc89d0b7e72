//! From TOML text to a [`Profile`], keeping the line of every key for
//! the checks that follow.
//!
//! The walk is over toml's spanned document (`DeTable`) rather than
//! through serde, so that every error can name both its line and its key:
//! a serde error knows one or the other.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{EndpointRef, Lines, ProfileError, did_you_mean};
use crate::thresholds::Bound;
use crate::{
    About, Endpoint, Kind, MAX_BYTES, MAX_ENDPOINTS, Measure, PortRange, Profile, Thresholds,
};
use crate::{host, validate};

type Value<'i> = Spanned<DeValue<'i>>;
/// A table's key and value, or the error that the key is unknown.
type Entry<'a, 'i> = Result<(&'a str, &'a Value<'i>), ProfileError>;

/// The keys of an endpoint table, in the order the documentation gives.
pub(crate) const ENDPOINT_KEYS: [&str; 10] = [
    "id",
    "kind",
    "host",
    "port",
    "ports",
    "path",
    "required",
    "fallback_for",
    "purpose",
    "source",
];
const PROFILE_KEYS: [&str; 3] = ["name", "description", "source"];
const TOP_KEYS: [&str; 4] = ["profile", "endpoint", "thresholds", "measure"];

/// The lines keys were found on, for errors found after the walk.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    /// The line blamed for what is missing from the whole file.
    pub(crate) end: Option<usize>,
    pub(crate) profile: KeyLines,
    pub(crate) endpoints: Vec<KeyLines>,
    /// Threshold entries: the key is `rtt_ms` for the entry itself,
    /// `rtt_ms.max` and `rtt_ms.source` for its fields.
    pub(crate) thresholds: KeyLines,
}

/// Where a table starts and where each of its keys is.
#[derive(Debug, Default)]
pub(crate) struct KeyLines {
    pub(crate) table: Option<usize>,
    keys: Vec<(String, usize)>,
    /// The lines of `fallback_for`'s items.
    pub(crate) items: Vec<usize>,
}

impl KeyLines {
    /// The line of `key`, or of its table when the key is missing.
    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, l)| *l)
            .or(self.table)
    }
}

impl Spans {
    pub(crate) fn endpoint(&self, i: usize, key: &str) -> Option<usize> {
        self.endpoints.get(i).and_then(|k| k.line(key))
    }

    pub(crate) fn fallback_item(&self, i: usize, j: usize) -> Option<usize> {
        let e = self.endpoints.get(i)?;
        e.items.get(j).copied().or_else(|| e.line("fallback_for"))
    }
}

/// Free text that may run over lines.
fn multiline(s: &str) -> Result<(), String> {
    validate::text(s, true)
}

pub(crate) fn parse(text: &str) -> Result<(Profile, Spans), ProfileError> {
    let lines = Lines::new(text);
    if text.len() > MAX_BYTES {
        return Err(ProfileError::new(
            Some(lines.line(MAX_BYTES)),
            None,
            None,
            format!(
                "the profile is {} bytes long; at most {MAX_BYTES} are read (the limit falls on this line)",
                text.len()
            ),
        ));
    }
    let doc = DeTable::parse(text).map_err(|e| syntax_error(&e, text, &lines))?;
    let mut w = Walker {
        text,
        lines,
        spans: Spans::default(),
    };
    w.spans.end = Some(w.lines.last());
    w.document(doc.get_ref()).map(|p| (p, w.spans))
}

fn syntax_error(e: &toml::de::Error, text: &str, lines: &Lines) -> ProfileError {
    let line = lines.line(e.span().map_or(0, |s| s.start));
    // The key the broken line assigns, if it is a plain `key = ...` line.
    let key = lines.text(text, line).and_then(|l| {
        let (key, _) = l.split_once('=')?;
        let key = key.trim();
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        plain.then_some(key)
    });
    ProfileError::new(
        Some(line),
        None,
        key,
        format!("not valid TOML: {}", e.message()),
    )
}

/// Where an error is: the endpoint it is in, if any, and the key.
#[derive(Clone, Copy)]
struct At<'a> {
    endpoint: Option<&'a EndpointRef>,
    /// What key paths start with here: `""` in an endpoint, else the
    /// enclosing tables (`"profile."`).
    prefix: &'a str,
}

struct Walker<'t> {
    text: &'t str,
    lines: Lines,
    spans: Spans,
}

impl Walker<'_> {
    fn error(
        &self,
        span: &Range<usize>,
        at: At<'_>,
        key: &str,
        message: impl Into<String>,
    ) -> ProfileError {
        let key = format!("{}{key}", at.prefix);
        ProfileError::new(
            Some(self.lines.line(span.start)),
            at.endpoint,
            Some(&key),
            message,
        )
    }

    fn document(&mut self, doc: &DeTable<'_>) -> Result<Profile, ProfileError> {
        let top = At {
            endpoint: None,
            prefix: "",
        };
        let mut about = None;
        let mut endpoints = None;
        let mut thresholds = Thresholds::default();
        let mut measure = Measure::default();
        for entry in self.entries(doc, &TOP_KEYS, top, "tables") {
            let (key, value) = entry?;
            match key {
                "profile" => about = Some(self.about(value)?),
                "endpoint" => endpoints = Some(self.endpoints(value)?),
                "thresholds" => thresholds = self.thresholds(value)?,
                _ => measure = self.measure(value)?,
            }
        }
        let about = about.ok_or_else(|| {
            ProfileError::new(
                Some(1),
                None,
                Some("profile"),
                "missing: a profile starts with a [profile] table (name, source)",
            )
        })?;
        let endpoints = endpoints.ok_or_else(|| {
            ProfileError::new(
                self.spans.end,
                None,
                Some("endpoint"),
                "missing: a profile lists at least one [[endpoint]]",
            )
        })?;
        Ok(Profile {
            about,
            endpoints,
            thresholds,
            measure,
        })
    }

    /// A table's entries in file order, each checked against `allowed`
    /// only when its turn comes, so that the first error in the file is
    /// the one reported.
    fn entries<'a, 'i>(
        &self,
        table: &'a DeTable<'i>,
        allowed: &[&str],
        at: At<'_>,
        what: &str,
    ) -> Vec<Entry<'a, 'i>> {
        let mut entries: Vec<(&Spanned<Cow<'i, str>>, &Value<'i>)> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        entries
            .into_iter()
            .map(|(key, value)| {
                let name: &str = key.get_ref();
                if allowed.contains(&name) {
                    Ok((name, value))
                } else {
                    let hint = did_you_mean(name, allowed)
                        .map(|s| format!(" (did you mean {s:?}?)"))
                        .unwrap_or_default();
                    Err(self.error(
                        &key.span(),
                        at,
                        name,
                        format!(
                            "unknown key{hint}; the {what} here are {}",
                            allowed.join(", ")
                        ),
                    ))
                }
            })
            .collect()
    }

    fn table<'a, 'i>(
        &self,
        value: &'a Value<'i>,
        at: At<'_>,
        key: &str,
    ) -> Result<&'a DeTable<'i>, ProfileError> {
        match value.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.mismatch(value, at, key, "a table")),
        }
    }

    fn about(&mut self, value: &Value<'_>) -> Result<About, ProfileError> {
        let at = At {
            endpoint: None,
            prefix: "profile.",
        };
        let table = self.table(value, At { prefix: "", ..at }, "profile")?;
        self.spans.profile.table = Some(self.lines.line(value.span().start));
        let (mut name, mut description, mut source) = (None, None, None);
        for entry in self.entries(table, &PROFILE_KEYS, at, "keys") {
            let (key, v) = entry?;
            let s = self.string(v, at, key)?;
            validate::text(&s, key == "description")
                .map_err(|m| self.error(&v.span(), at, key, m))?;
            self.spans
                .profile
                .keys
                .push((key.to_owned(), self.lines.line(v.span().start)));
            match key {
                "name" => name = Some(s),
                "description" => description = Some(s),
                _ => source = Some(s),
            }
        }
        let missing =
            |key: &str, what: &str| self.error(&value.span(), at, key, format!("missing: {what}"));
        Ok(About {
            name: name.ok_or_else(|| missing("name", "the service's name"))?,
            description,
            source: source.ok_or_else(|| {
                missing(
                    "source",
                    "where the facts come from (a URL or the guide's title)",
                )
            })?,
        })
    }

    fn endpoints(&mut self, value: &Value<'_>) -> Result<Vec<Endpoint>, ProfileError> {
        let top = At {
            endpoint: None,
            prefix: "",
        };
        let items = match value.get_ref() {
            DeValue::Array(items) => items,
            DeValue::Table(_) => {
                return Err(self.error(
                    &value.span(),
                    top,
                    "endpoint",
                    "write [[endpoint]] (one table per endpoint), not [endpoint]",
                ));
            }
            _ => return Err(self.mismatch(value, top, "endpoint", "[[endpoint]] tables")),
        };
        if let Some(extra) = items.get(MAX_ENDPOINTS) {
            return Err(self.error(
                &extra.span(),
                top,
                "endpoint",
                format!(
                    "too many endpoints ({}); a profile has at most {MAX_ENDPOINTS}",
                    items.len()
                ),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.endpoint(i, item))
            .collect()
    }

    fn endpoint(&mut self, i: usize, value: &Value<'_>) -> Result<Endpoint, ProfileError> {
        let top = At {
            endpoint: None,
            prefix: "",
        };
        let table = self.table(value, top, "endpoint")?;
        // Name the endpoint by its id in every message, even one about a
        // key that comes before `id`.
        let label = table
            .iter()
            .find(|(k, _)| k.get_ref() == "id")
            .and_then(|(_, v)| v.get_ref().as_str())
            .filter(|id| !id.is_empty())
            .map_or(EndpointRef::Number(i + 1), |id| {
                EndpointRef::Id(id.to_owned())
            });
        let at = At {
            endpoint: Some(&label),
            prefix: "",
        };
        let mut lines = KeyLines {
            table: Some(self.lines.line(value.span().start)),
            ..KeyLines::default()
        };
        let (mut id, mut kind, mut host) = (None, None, None);
        let mut e = Endpoint {
            id: String::new(),
            kind: Kind::Tcp,
            host: String::new(),
            port: None,
            ports: None,
            path: None,
            required: true,
            fallback_for: Vec::new(),
            purpose: None,
            source: None,
        };
        for entry in self.entries(table, &ENDPOINT_KEYS, at, "keys of an endpoint") {
            let (key, v) = entry?;
            lines
                .keys
                .push((key.to_owned(), self.lines.line(v.span().start)));
            match key {
                "id" => id = Some(self.checked(v, at, key, validate::id)?),
                "kind" => {
                    let s = self.string(v, at, key)?;
                    kind = Some(
                        s.parse::<Kind>()
                            .map_err(|m| self.error(&v.span(), at, key, m))?,
                    );
                }
                "host" => host = Some(self.checked(v, at, key, host::check)?),
                "port" => {
                    let n = self.integer(v, at, key)?;
                    let port = u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                        self.error(
                            &v.span(),
                            at,
                            key,
                            format!("{n} is not a port (ports are 1 to 65535)"),
                        )
                    })?;
                    e.port = Some(port);
                }
                "ports" => e.ports = Some(self.port_range(v, at, key)?),
                "path" => e.path = Some(self.checked(v, at, key, validate::path_text)?),
                "required" => e.required = self.boolean(v, at, key)?,
                "fallback_for" => {
                    let (ids, item_lines) = self.strings(v, at, key)?;
                    e.fallback_for = ids;
                    lines.items = item_lines;
                }
                "purpose" => e.purpose = Some(self.checked(v, at, key, multiline)?),
                _ => e.source = Some(self.checked(v, at, key, multiline)?),
            }
        }
        let missing =
            |key: &str, what: &str| self.error(&value.span(), at, key, format!("missing: {what}"));
        e.id = id.ok_or_else(|| missing("id", "a unique id like \"media\" ([a-z0-9-]+)"))?;
        e.kind = kind.ok_or_else(|| {
            missing(
                "kind",
                "how it is reached (tcp, tls, https, wss, stun-udp, stun-tcp, turn-udp, turn-tcp, turn-tls or udp-range)",
            )
        })?;
        e.host = host.ok_or_else(|| missing("host", "a DNS name or IP address"))?;
        self.spans.endpoints.push(lines);
        Ok(e)
    }

    fn thresholds(&mut self, value: &Value<'_>) -> Result<Thresholds, ProfileError> {
        let at = At {
            endpoint: None,
            prefix: "thresholds.",
        };
        let table = self.table(value, At { prefix: "", ..at }, "thresholds")?;
        self.spans.thresholds.table = Some(self.lines.line(value.span().start));
        let names: Vec<&str> = Thresholds::NAMES.iter().map(|(n, _)| *n).collect();
        let mut thresholds = Thresholds::default();
        for item in self.entries(table, &names, at, "thresholds") {
            let (name, entry) = item?;
            let bound = Thresholds::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Bound::Max, |(_, b)| *b);
            let limit = bound.key();
            let example = format!("{{ {limit} = ..., source = \"...\" }}");
            let inner = match entry.get_ref() {
                DeValue::Table(t) => t,
                _ => {
                    return Err(self.mismatch(
                        entry,
                        at,
                        name,
                        &format!("a table like {name} = {example}"),
                    ));
                }
            };
            let entry_line = self.lines.line(entry.span().start);
            self.spans
                .thresholds
                .keys
                .push((name.to_owned(), entry_line));
            let prefix = format!("thresholds.{name}.");
            let inner_at = At {
                endpoint: None,
                prefix: &prefix,
            };
            let (mut figure, mut source) = (None, None);
            for item in self.inner_entries(inner, name, bound, inner_at) {
                let (key, v) = item?;
                self.spans
                    .thresholds
                    .keys
                    .push((format!("{name}.{key}"), self.lines.line(v.span().start)));
                if key == "source" {
                    source = Some(self.checked(v, inner_at, key, multiline)?);
                } else {
                    let n = self.number(v, inner_at, key)?;
                    validate::threshold(name, n)
                        .map_err(|m| self.error(&v.span(), inner_at, key, m))?;
                    figure = Some(n);
                }
            }
            let missing = |key: &str, what: String| {
                self.error(&entry.span(), inner_at, key, format!("missing: {what}"))
            };
            let figure =
                figure.ok_or_else(|| missing(limit, format!("write {name} = {example}")))?;
            let source = source.ok_or_else(|| {
                missing(
                    "source",
                    "say where the figure comes from (a guide, a standard)".to_owned(),
                )
            })?;
            thresholds.set(name, bound, figure, source);
        }
        Ok(thresholds)
    }

    /// The `[measure]` table: switches, each true or false.
    fn measure(&self, value: &Value<'_>) -> Result<Measure, ProfileError> {
        let at = At {
            endpoint: None,
            prefix: "measure.",
        };
        let table = self.table(value, At { prefix: "", ..at }, "measure")?;
        let mut measure = Measure::default();
        for entry in self.entries(table, &Measure::KEYS, at, "keys") {
            let (key, v) = entry?;
            // One key so far: `udp_idle_timeout`.
            measure.udp_idle_timeout = self.boolean(v, at, key)?;
        }
        Ok(measure)
    }

    /// A threshold's keys; `min` where `max` belongs (or the reverse) gets
    /// its own advice.
    fn inner_entries<'a, 'i>(
        &self,
        table: &'a DeTable<'i>,
        name: &str,
        bound: Bound,
        at: At<'_>,
    ) -> Vec<Entry<'a, 'i>> {
        let (what, wrong) = match bound {
            Bound::Max => ("a ceiling", "min"),
            Bound::Min => ("a floor", "max"),
        };
        let limit = bound.key();
        self.entries(table, &[limit, "source", wrong], at, "keys")
            .into_iter()
            .map(|entry| match entry {
                Ok((key, v)) if key == wrong => {
                    let key_span = table
                        .iter()
                        .find(|(k, _)| k.get_ref() == wrong)
                        .map_or(v.span(), |(k, _)| k.span());
                    Err(self.error(
                        &key_span,
                        at,
                        wrong,
                        format!("{name} is {what}: write {limit}, not {wrong}"),
                    ))
                }
                other => other,
            })
            .collect()
    }

    fn port_range(&self, v: &Value<'_>, at: At<'_>, key: &str) -> Result<PortRange, ProfileError> {
        match v.get_ref() {
            DeValue::String(s) => s
                .parse()
                .map_err(|e: crate::PortRangeError| self.error(&v.span(), at, key, e.to_string())),
            DeValue::Integer(_) => {
                let n = self.integer(v, at, key)?;
                u16::try_from(n)
                    .ok()
                    .and_then(PortRange::single)
                    .ok_or_else(|| {
                        self.error(
                            &v.span(),
                            at,
                            key,
                            format!("{n} is not a port (ports are 1 to 65535)"),
                        )
                    })
            }
            _ => Err(self.mismatch(v, at, key, "a string like \"10000-20000\"")),
        }
    }

    /// A string that passes `check`.
    fn checked(
        &self,
        v: &Value<'_>,
        at: At<'_>,
        key: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, ProfileError> {
        let s = self.string(v, at, key)?;
        check(&s).map_err(|m| self.error(&v.span(), at, key, m))?;
        Ok(s)
    }

    fn string(&self, v: &Value<'_>, at: At<'_>, key: &str) -> Result<String, ProfileError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.mismatch(v, at, key, "a string")),
        }
    }

    fn boolean(&self, v: &Value<'_>, at: At<'_>, key: &str) -> Result<bool, ProfileError> {
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.mismatch(v, at, key, "true or false")),
        }
    }

    fn integer(&self, v: &Value<'_>, at: At<'_>, key: &str) -> Result<i64, ProfileError> {
        match v.get_ref() {
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
                .map_err(|_| self.error(&v.span(), at, key, "the integer is out of range")),
            _ => Err(self.mismatch(v, at, key, "an integer")),
        }
    }

    fn number(&self, v: &Value<'_>, at: At<'_>, key: &str) -> Result<f64, ProfileError> {
        match v.get_ref() {
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .map_err(|_| self.error(&v.span(), at, key, "not a number")),
            // Integers above 2^53 lose precision: harmless for a limit.
            DeValue::Integer(_) => self.integer(v, at, key).map(|n| n as f64),
            _ => Err(self.mismatch(v, at, key, "a number")),
        }
    }

    /// An array of strings, with the line of each.
    fn strings(
        &self,
        v: &Value<'_>,
        at: At<'_>,
        key: &str,
    ) -> Result<(Vec<String>, Vec<usize>), ProfileError> {
        let DeValue::Array(items) = v.get_ref() else {
            return Err(self.mismatch(v, at, key, "an array of ids like [\"media\"]"));
        };
        let mut strings = Vec::with_capacity(items.len());
        let mut lines = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => strings.push(s.to_string()),
                _ => return Err(self.mismatch(item, at, key, "an array of ids (strings)")),
            }
            lines.push(self.lines.line(item.span().start));
        }
        Ok((strings, lines))
    }

    /// "expected X, found Y": Y with what was written, when it is short.
    fn mismatch(&self, v: &Value<'_>, at: At<'_>, key: &str, expected: &str) -> ProfileError {
        let kind = match v.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date-time",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        };
        let written = self
            .text
            .get(v.span())
            .filter(|w| w.len() <= 40 && !w.contains('\n') && !w.is_empty())
            .filter(|_| !matches!(v.get_ref(), DeValue::Table(_)))
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        self.error(
            &v.span(),
            at,
            key,
            format!("expected {expected}, found {kind}{written}"),
        )
    }
}

//! What is wrong with a profile, and where.

use std::fmt;
use std::path::PathBuf;

/// Which endpoint an error is about: its id when it has one that is a
/// string, else its place among the `[[endpoint]]` tables (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointRef {
    Id(String),
    Number(usize),
}

impl fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "endpoint {id:?}"),
            Self::Number(n) => write!(f, "endpoint #{n}"),
        }
    }
}

/// A profile that could not be read or is not valid.
///
/// Shown as `line 12: endpoint "media", key "ports": 20000-10000 is not a
/// range (low end above high end); write 10000-20000`. Errors from
/// [`Profile::from_toml`](crate::Profile::from_toml) always have a line;
/// errors from [`Profile::validate`](crate::Profile::validate) on a profile
/// that came from elsewhere (JSON, code) have none.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProfileError {
    /// The file, when read by [`Profile::load`](crate::Profile::load).
    pub file: Option<PathBuf>,
    /// 1-based.
    pub line: Option<usize>,
    pub endpoint: Option<EndpointRef>,
    /// The key as written in its table: `ports` inside an endpoint,
    /// a dotted path elsewhere (`profile.name`, `thresholds.rtt_ms.max`).
    pub key: Option<String>,
    pub message: String,
}

impl ProfileError {
    pub(crate) fn new(
        line: Option<usize>,
        endpoint: Option<&EndpointRef>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: None,
            line,
            endpoint: endpoint.cloned(),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        match (&self.endpoint, &self.key) {
            (Some(e), Some(k)) => write!(f, "{e}, key {k:?}: ")?,
            (Some(e), None) => write!(f, "{e}: ")?,
            (None, Some(k)) => write!(f, "key {k:?}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProfileError {}

/// Line numbers from byte offsets.
#[derive(Debug)]
pub(crate) struct Lines {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// The 1-based line holding `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The last line: past a final newline, the empty line after it.
    pub(crate) fn last(&self) -> usize {
        self.starts.len()
    }

    /// The text of a line, without its newline.
    pub(crate) fn text<'t>(&self, text: &'t str, line: usize) -> Option<&'t str> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let rest = text.get(start..)?;
        Some(rest.split('\n').next().unwrap_or(rest))
    }
}

/// The closest of `candidates` to a misspelt `word`, if close enough to be
/// a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Long words are not typos of short names, and cost time to compare.
    if word.len() > 64 {
        return None;
    }
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions,
/// substitutions and swaps of neighbours each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    // d[i * width + j]: the distance between a[..i] and b[..j].
    let mut d: Vec<usize> = vec![0; (a.len() + 1) * width];
    let at = |d: &[usize], i: usize, j: usize| d.get(i * width + j).copied().unwrap_or(usize::MAX);
    for (i, ca) in std::iter::once(None).chain(a.iter().map(Some)).enumerate() {
        for (j, cb) in std::iter::once(None).chain(b.iter().map(Some)).enumerate() {
            let v = match (ca, cb) {
                (None, _) => j,
                (_, None) => i,
                (Some(x), Some(y)) => {
                    let mut v = (at(&d, i - 1, j - 1) + usize::from(x != y))
                        .min(at(&d, i - 1, j) + 1)
                        .min(at(&d, i, j - 1) + 1);
                    let swapped =
                        i > 1 && j > 1 && a.get(i - 2) == Some(y) && b.get(j - 2) == Some(x);
                    if swapped {
                        v = v.min(at(&d, i - 2, j - 2) + 1);
                    }
                    v
                }
            };
            if let Some(cell) = d.get_mut(i * width + j) {
                *cell = v;
            }
        }
    }
    at(&d, a.len(), b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_from_offsets() {
        let l = Lines::new("a\nbc\n\nd");
        assert_eq!(l.line(0), 1);
        assert_eq!(l.line(1), 1);
        assert_eq!(l.line(2), 2);
        assert_eq!(l.line(5), 3);
        assert_eq!(l.line(6), 4);
        assert_eq!(l.line(600), 4);
        assert_eq!(Lines::new("").line(0), 1);
        assert_eq!(l.last(), 4);
        assert_eq!(l.text("a\nbc\n\nd", 2), Some("bc"));
        assert_eq!(l.text("a\nbc\n\nd", 4), Some("d"));
        assert_eq!(l.text("a\nbc\n\nd", 5), None);
        assert_eq!(l.text("a\nbc\n\nd", 0), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(did_you_mean(&"x".repeat(65), &["x"]), None);
        assert_eq!(
            did_you_mean("prot", &["port", "ports", "path"]),
            Some("port")
        );
        assert_eq!(
            did_you_mean("fallbacks_for", &["fallback_for"]),
            Some("fallback_for")
        );
        assert_eq!(did_you_mean("zzzz", &["port", "host"]), None);
    }

    #[test]
    fn display() {
        let e = ProfileError::new(
            Some(12),
            Some(&EndpointRef::Id("media".into())),
            Some("ports"),
            "bad",
        );
        assert_eq!(
            e.to_string(),
            "line 12: endpoint \"media\", key \"ports\": bad"
        );
        let e = ProfileError::new(Some(3), Some(&EndpointRef::Number(2)), None, "bad");
        assert_eq!(e.to_string(), "line 3: endpoint #2: bad");
        let e = ProfileError::new(None, None, Some("profile.name"), "bad");
        assert_eq!(e.to_string(), "key \"profile.name\": bad");
    }
}

//! Malformed profiles: each error names the right line and key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use turnpike_profile::{MAX_BYTES, MAX_ENDPOINTS, Profile, ProfileError};

/// A valid profile; the cases below change one of its lines.
const BASE: &str = r#"[profile]
name = "Example"
source = "a guide"

[[endpoint]]
id = "web"
kind = "https"
host = "app.example.com"
port = 443

[[endpoint]]
id = "media"
kind = "udp-range"
host = "192.0.2.1"
ports = "10000-20000"

[[endpoint]]
id = "turn"
kind = "turn-tls"
host = "turn.example.com"
port = 443
required = false
fallback_for = ["media"]

[thresholds]
rtt_ms = { max = 150, source = "a guide" }
loss_pct = { max = 1.5, source = "a guide" }
"#;

/// BASE with line `n` (1-based) replaced by `text` (which may span lines).
fn with_line(n: usize, text: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    assert!(n >= 1 && n <= lines.len() + 1);
    if n > lines.len() {
        lines.push(text);
    } else {
        lines[n - 1] = text;
    }
    lines.join("\n") + "\n"
}

struct Case {
    what: &'static str,
    text: String,
    line: usize,
    key: &'static str,
    says: &'static str,
}

fn case(
    what: &'static str,
    text: String,
    line: usize,
    key: &'static str,
    says: &'static str,
) -> Case {
    Case {
        what,
        text,
        line,
        key,
        says,
    }
}

fn many_endpoints(n: usize) -> String {
    let mut text = String::from("[profile]\nname = \"Many\"\nsource = \"a test\"\n");
    for i in 0..n {
        text += &format!(
            "\n[[endpoint]]\nid = \"e{i}\"\nkind = \"tcp\"\nhost = \"192.0.2.1\"\nport = {}\n",
            i + 1
        );
    }
    text
}

fn cases() -> Vec<Case> {
    vec![
        case("base is valid", BASE.to_owned(), 0, "", ""),
        case(
            "unknown key in an endpoint",
            with_line(10, "prot = 1"),
            10,
            "prot",
            "unknown key (did you mean \"port\"?)",
        ),
        case(
            "unknown key in [profile]",
            with_line(4, "nmae = \"x\""),
            4,
            "profile.nmae",
            "did you mean \"name\"?",
        ),
        case(
            "unknown table",
            with_line(28, "[credentials]\nuser = \"x\""),
            28,
            "credentials",
            "unknown key",
        ),
        case(
            "unknown threshold",
            with_line(28, "mos = { min = 4, source = \"x\" }"),
            28,
            "thresholds.mos",
            "rtt_ms, jitter_ms",
        ),
        case(
            "base with [measure] is valid",
            with_line(28, "[measure]\nudp_idle_timeout = true"),
            0,
            "",
            "",
        ),
        case(
            "port as a string",
            with_line(9, "port = \"443\""),
            9,
            "port",
            "expected an integer, found a string (\"443\")",
        ),
        case(
            "required as a string",
            with_line(22, "required = \"no\""),
            22,
            "required",
            "expected true or false",
        ),
        case(
            "host as an integer",
            with_line(8, "host = 1"),
            8,
            "host",
            "expected a string, found an integer",
        ),
        case(
            "fallback_for as a string",
            with_line(23, "fallback_for = \"media\""),
            23,
            "fallback_for",
            "expected an array of ids",
        ),
        case(
            "fallback_for with a number",
            with_line(23, "fallback_for = [\"media\",\n  7]"),
            24,
            "fallback_for",
            "found an integer (7)",
        ),
        case(
            "reversed range",
            with_line(15, "ports = \"20000-10000\""),
            15,
            "ports",
            "20000-10000 is not a range (low end above high end)",
        ),
        case(
            "range from port 0",
            with_line(15, "ports = \"0-10\""),
            15,
            "ports",
            "0 is not a port",
        ),
        case(
            "range past 65535",
            with_line(15, "ports = \"60000-70000\""),
            15,
            "ports",
            "70000 is not a port",
        ),
        case(
            "range that is not one",
            with_line(15, "ports = \"10000:20000\""),
            15,
            "ports",
            "is not a port range",
        ),
        case(
            "duplicate id",
            with_line(18, "id = \"web\""),
            18,
            "id",
            "duplicate id: endpoint #1 at line 6 already has it",
        ),
        case(
            "dangling fallback",
            with_line(23, "fallback_for = [\"medai\"]"),
            23,
            "fallback_for",
            "no endpoint has the id \"medai\" (did you mean \"media\"?)",
        ),
        case(
            "fallback on a later line",
            with_line(23, "fallback_for = [\n  \"media\",\n  \"nope\",\n]"),
            25,
            "fallback_for",
            "\"nope\"",
        ),
        case(
            "fallback for itself",
            with_line(23, "fallback_for = [\"turn\"]"),
            23,
            "fallback_for",
            "cannot stand in for itself",
        ),
        case(
            "fallback listed twice",
            with_line(23, "fallback_for = [\"media\", \"media\"]"),
            23,
            "fallback_for",
            "listed twice",
        ),
        case(
            "wildcard host",
            with_line(8, "host = \"*.example.com\""),
            8,
            "host",
            "name one concrete host the service uses under \"example.com\"",
        ),
        case(
            "host with a scheme",
            with_line(8, "host = \"https://app.example.com\""),
            8,
            "host",
            "has a scheme",
        ),
        case(
            "host with a port",
            with_line(8, "host = \"app.example.com:443\""),
            8,
            "host",
            "has a port",
        ),
        case(
            "host with a space",
            with_line(8, "host = \"app example.com\""),
            8,
            "host",
            "contains ' '",
        ),
        case(
            "empty host",
            with_line(8, "host = \"\""),
            8,
            "host",
            "must not be empty",
        ),
        case(
            "port 0",
            with_line(9, "port = 0"),
            9,
            "port",
            "0 is not a port",
        ),
        case(
            "port 70000",
            with_line(9, "port = 70000"),
            9,
            "port",
            "70000 is not a port (ports are 1 to 65535)",
        ),
        case(
            "negative port",
            with_line(9, "port = -1"),
            9,
            "port",
            "-1 is not a port",
        ),
        case(
            "huge port",
            with_line(9, "port = 99999999999999999999"),
            9,
            "port",
            "the integer is out of range",
        ),
        case(
            "missing port",
            with_line(9, "# no port"),
            5,
            "port",
            "missing: kind https needs a port",
        ),
        case(
            "port on a range",
            with_line(16, "port = 5000"),
            16,
            "port",
            "takes \"ports\"",
        ),
        case(
            "ports on a single-port kind",
            with_line(10, "ports = \"1-2\""),
            10,
            "ports",
            "only kind udp-range takes a range",
        ),
        case(
            "missing ports",
            with_line(15, "# no ports"),
            11,
            "ports",
            "missing: kind udp-range needs the range",
        ),
        case(
            "path on a udp kind",
            with_line(16, "path = \"/x\""),
            16,
            "path",
            "only kinds https and wss have a path",
        ),
        case(
            "path without a slash",
            with_line(10, "path = \"socket\""),
            10,
            "path",
            "must start with '/'",
        ),
        case(
            "missing id",
            with_line(6, "# no id"),
            5,
            "id",
            "endpoint #1, key \"id\": missing",
        ),
        case(
            "malformed id",
            with_line(6, "id = \"Web_1\""),
            6,
            "id",
            "lowercase letters, digits and '-'",
        ),
        case(
            "missing kind",
            with_line(7, "# no kind"),
            5,
            "kind",
            "missing: how it is reached",
        ),
        case(
            "misspelt kind",
            with_line(7, "kind = \"htps\""),
            7,
            "kind",
            "did you mean \"https\"?",
        ),
        case(
            "missing host",
            with_line(8, "# no host"),
            5,
            "host",
            "missing",
        ),
        case(
            "negative threshold",
            with_line(26, "rtt_ms = { max = -5, source = \"g\" }"),
            26,
            "thresholds.rtt_ms.max",
            "-5 is negative",
        ),
        case(
            "loss of 150 %",
            with_line(27, "loss_pct = { max = 150, source = \"g\" }"),
            27,
            "thresholds.loss_pct.max",
            "150 is not a percentage (0 to 100)",
        ),
        case(
            "infinite threshold",
            with_line(26, "rtt_ms = { max = inf, source = \"g\" }"),
            26,
            "thresholds.rtt_ms.max",
            "not a finite number",
        ),
        case(
            "NaN threshold",
            with_line(26, "rtt_ms = { max = nan, source = \"g\" }"),
            26,
            "thresholds.rtt_ms.max",
            "NaN is not a finite number",
        ),
        case(
            "threshold without source",
            with_line(27, "loss_pct = { max = 1 }"),
            27,
            "thresholds.loss_pct.source",
            "missing: say where the figure comes from",
        ),
        case(
            "threshold with an empty source",
            with_line(27, "loss_pct = { max = 1, source = \" \" }"),
            27,
            "thresholds.loss_pct.source",
            "must not be empty",
        ),
        case(
            "threshold without its limit",
            with_line(27, "loss_pct = { source = \"g\" }"),
            27,
            "thresholds.loss_pct.max",
            "write loss_pct = { max = ..., source = \"...\" }",
        ),
        case(
            "min for a ceiling",
            with_line(26, "rtt_ms = { min = 5, source = \"g\" }"),
            26,
            "thresholds.rtt_ms.min",
            "rtt_ms is a ceiling: write max",
        ),
        case(
            "threshold as a number",
            with_line(26, "rtt_ms = 150"),
            26,
            "thresholds.rtt_ms",
            "expected a table like rtt_ms = { max = ..., source",
        ),
        case(
            "threshold as a string",
            with_line(26, "rtt_ms = { max = \"150\", source = \"g\" }"),
            26,
            "thresholds.rtt_ms.max",
            "expected a number",
        ),
        case(
            "unknown key in [measure]",
            with_line(28, "[measure]\nudp_idle_timout = true"),
            29,
            "measure.udp_idle_timout",
            "unknown key (did you mean \"udp_idle_timeout\"?); the keys here are udp_idle_timeout",
        ),
        case(
            "measure switch as a string",
            with_line(28, "[measure]\nudp_idle_timeout = \"yes\""),
            29,
            "measure.udp_idle_timeout",
            "expected true or false, found a string (\"yes\")",
        ),
        case(
            "measure switch as an integer",
            with_line(28, "[measure]\nudp_idle_timeout = 1"),
            29,
            "measure.udp_idle_timeout",
            "expected true or false, found an integer (1)",
        ),
        case(
            "measure as a boolean",
            with_line(1, "measure = true\n[profile]"),
            1,
            "measure",
            "expected a table, found a boolean (true)",
        ),
        case(
            "[[measure]] for [measure]",
            with_line(28, "[[measure]]\nudp_idle_timeout = true"),
            28,
            "measure",
            "expected a table, found an array",
        ),
        case(
            "measure switch under [thresholds]",
            with_line(28, "udp_idle_timeout = true"),
            28,
            "thresholds.udp_idle_timeout",
            "did you mean \"udp_idle_timeout_s\"?",
        ),
        case(
            "misspelt [measure] table",
            with_line(28, "[mesure]\nudp_idle_timeout = true"),
            28,
            "mesure",
            "did you mean \"measure\"?",
        ),
        case(
            "missing profile source",
            with_line(3, "description = \"x\""),
            1,
            "profile.source",
            "missing: where the facts come from",
        ),
        case(
            "empty profile name",
            with_line(2, "name = \"\""),
            2,
            "profile.name",
            "must not be empty",
        ),
        case(
            "control character in name",
            with_line(2, "name = \"a\\u001b[31m\""),
            2,
            "profile.name",
            "control character U+001B",
        ),
        case(
            "profile as a string",
            with_line(1, "profile = \"x\"\n[p]"),
            1,
            "profile",
            "expected a table",
        ),
        case(
            "syntax error",
            with_line(9, "port = 44 3"),
            9,
            "port",
            "not valid TOML",
        ),
        case(
            "unclosed string",
            with_line(13, "kind = \"udp-range"),
            13,
            "kind",
            "not valid TOML",
        ),
        case(
            "duplicate key",
            with_line(10, "port = 444"),
            10,
            "port",
            "duplicate key",
        ),
        case(
            "empty file",
            String::new(),
            1,
            "profile",
            "missing: a profile starts with a [profile] table",
        ),
        case(
            "no endpoints",
            "[profile]\nname = \"x\"\nsource = \"y\"\n".to_owned(),
            4,
            "endpoint",
            "at least one [[endpoint]]",
        ),
        case(
            "[endpoint] for [[endpoint]]",
            "[profile]\nname = \"x\"\nsource = \"y\"\n[endpoint]\nid = \"a\"\n".to_owned(),
            4,
            "endpoint",
            "write [[endpoint]]",
        ),
        case(
            "too many endpoints",
            many_endpoints(MAX_ENDPOINTS + 1),
            4 + 6 * MAX_ENDPOINTS + 1,
            "endpoint",
            "too many endpoints (257); a profile has at most 256",
        ),
    ]
}

#[test]
fn each_error_names_its_line_and_key() {
    let mut failures = Vec::new();
    for c in cases() {
        let result = Profile::from_toml(&c.text);
        if c.line == 0 {
            if let Err(e) = result {
                failures.push(format!("{}: {e}", c.what));
            }
            continue;
        }
        let e: ProfileError = match result {
            Ok(_) => {
                failures.push(format!("{}: accepted", c.what));
                continue;
            }
            Err(e) => e,
        };
        let shown = e.to_string();
        let ok = e.line == Some(c.line)
            && shown.starts_with(&format!("line {}: ", c.line))
            && e.key.as_deref() == Some(c.key)
            && shown.contains(&format!("key \"{}\"", c.key))
            && shown.contains(c.says);
        if !ok {
            failures.push(format!(
                "{}: want line {} key {:?} saying {:?}\n    got  {shown}",
                c.what, c.line, c.key, c.says
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn endpoint_errors_name_the_endpoint() {
    let e = Profile::from_toml(&with_line(15, "ports = \"20000-10000\"")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 15: endpoint \"media\", key \"ports\": 20000-10000 is not a range (low end above high end); write 10000-20000"
    );
    // Named by id even when the error is on a key before `id`.
    let text = BASE.replace(
        "[[endpoint]]\nid = \"web\"\n",
        "[[endpoint]]\nprot = 80\nid = \"web\"\n",
    );
    let e = Profile::from_toml(&text).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("line 6: endpoint \"web\", key \"prot\": unknown key"),
        "{e}"
    );
}

#[test]
fn at_most_256_endpoints() {
    assert!(Profile::from_toml(&many_endpoints(MAX_ENDPOINTS)).is_ok());
    assert!(Profile::from_toml(&many_endpoints(1)).is_ok());
}

#[test]
fn at_most_64_kib() {
    let padding = format!("# {}\n", "x".repeat(98));
    let mut text = BASE.to_owned();
    while text.len() <= MAX_BYTES - padding.len() {
        text += &padding;
    }
    assert!(Profile::from_toml(&text).is_ok(), "{} bytes", text.len());
    text += &padding;
    let e = Profile::from_toml(&text).unwrap_err();
    let line = text[..MAX_BYTES].matches('\n').count() + 1;
    assert_eq!(e.line, Some(line));
    assert!(
        e.to_string().contains(&format!("at most {MAX_BYTES}")),
        "{e}"
    );
}

#[test]
fn errors_come_in_file_order() {
    // Two unknown keys: the first in the file is reported, whatever their
    // alphabetical order.
    let text = with_line(10, "zzz = 1\naaa = 2");
    let e = Profile::from_toml(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(10), Some("zzz")), "{e}");

    // A bad value comes before a later key of the wrong type, and a bad
    // host before a dangling fallback further down.
    let text = BASE
        .replace("host = \"app.example.com\"", "host = \"*.example.com\"")
        .replace("required = false", "required = 0")
        .replace("[\"media\"]", "[\"nope\"]");
    let e = Profile::from_toml(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("host")), "{e}");
    let text = BASE
        .replace("max = 150,", "max = -1,")
        .replace("{ max = 1.5,", "{ min = 1.5,");
    let e = Profile::from_toml(&text).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(26), Some("thresholds.rtt_ms.max")),
        "{e}"
    );
}

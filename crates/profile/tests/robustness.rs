//! Mutated profiles, from a fixed seed: never a panic, every error on a
//! line of the text, and whatever is accepted reads back the same.
//! (The fuzz target `profile` does the same with coverage guidance.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;

use turnpike_profile::{MAX_BYTES, Profile};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces that make TOML and profiles interesting.
const PIECES: &[&str] = &[
    "\n",
    " ",
    "=",
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "-",
    "#",
    "0",
    "1",
    "65535",
    "65536",
    "-1",
    "nan",
    "inf",
    "1e999",
    "true",
    "*.",
    ":",
    "/",
    "\\u0000",
    "é",
    "\"10-5\"",
    "\"0-1\"",
    "port",
    "ports",
    "id",
    "kind",
    "host",
    "path",
    "required",
    "fallback_for",
    "source",
    "max",
    "min",
    "udp-range",
    "turn-tls",
    "[[endpoint]]\n",
    "[thresholds]\n",
    "[profile]\n",
    "\"\"",
];

fn check(text: &str) {
    match Profile::from_toml(text) {
        Ok(profile) => {
            assert_eq!(profile.validate(), Ok(()), "{text}");
            let again = profile.to_toml().unwrap();
            if again.len() <= MAX_BYTES {
                assert_eq!(
                    Profile::from_toml(&again).as_ref(),
                    Ok(&profile),
                    "{text}\n--\n{again}"
                );
            }
            let json = serde_json::to_string(&profile).unwrap();
            assert_eq!(serde_json::from_str::<Profile>(&json).unwrap(), profile);
        }
        Err(e) => {
            let line = e.line.expect("a TOML error has a line");
            let last = text.split('\n').count();
            assert!((1..=last).contains(&line), "line {line} of {last}: {e}");
            assert!(!e.message.is_empty());
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }
}

fn seeds() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
    let mut texts: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    texts.sort();
    texts
}

#[test]
fn truncations() {
    // Every line end, and every few characters between.
    for text in seeds() {
        for (n, (i, c)) in text.char_indices().enumerate() {
            if c == '\n' || n % 5 == 0 {
                check(&text[..i]);
            }
        }
    }
}

#[test]
fn random_mutations() {
    let seeds = seeds();
    let mut rng = Rng(0x7475_726e_7069_6b65);
    for _ in 0..3_000 {
        let mut text = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let boundaries: Vec<usize> = text
                .char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect();
            let at = boundaries[rng.below(boundaries.len())];
            match rng.below(3) {
                0 => text.insert_str(at, PIECES[rng.below(PIECES.len())]),
                1 => {
                    let end = boundaries
                        .iter()
                        .copied()
                        .find(|&b| b > at)
                        .unwrap_or(text.len());
                    text.replace_range(at..end, "");
                }
                _ => {
                    // Swap a line with another: tables and keys move about.
                    let mut lines: Vec<&str> = text.split('\n').collect();
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                    text = lines.join("\n");
                }
            }
        }
        check(&text);
    }
}

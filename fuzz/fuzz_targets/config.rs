//! The configuration file parser on arbitrary text: a configuration or an
//! error that names where, never a panic; and what parsed once parses the
//! same way again.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use turnpike_server::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match Config::from_toml(text, path, &Overrides::default()) {
        Ok(config) => {
            let again = Config::from_toml(text, path, &Overrides::default())
                .expect("the same text parses again");
            assert_eq!(format!("{config:?}"), format!("{again:?}"));
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "line {line} of {message}"
                );
            }
        }
    }
});

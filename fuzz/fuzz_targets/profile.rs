//! The requirement profile parser on arbitrary text: a valid profile or an
//! error on a line of the text, never a panic; and what parsed writes back
//! (TOML) and reads again to an equal profile.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_profile::{MAX_BYTES, Profile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Profile::from_toml(text) {
        Ok(profile) => {
            assert_eq!(profile.validate(), Ok(()), "a parsed profile validates");
            let written = profile.to_toml().expect("a valid profile writes as TOML");
            // Escaping can make the text longer than the limit on input.
            if written.len() <= MAX_BYTES {
                let again = Profile::from_toml(&written).expect("what was written reads back");
                assert_eq!(again, profile);
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!e.message.is_empty());
            let line = e.line.expect("an error in a text names its line");
            assert!(
                line >= 1 && line <= text.split('\n').count(),
                "line {line} of {message}"
            );
            assert!(message.starts_with(&format!("line {line}: ")), "{message}");
        }
    }
});

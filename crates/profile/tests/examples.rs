//! Every profile in `profiles/` reads, validates, and comes back equal
//! through TOML and through JSON; the README documents every key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;

use turnpike_profile::{Kind, Measure, Profile, Thresholds, Verdict};

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../profiles")
}

fn examples() -> Vec<(String, Profile)> {
    let mut found: Vec<(String, Profile)> = std::fs::read_dir(profiles_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let profile = Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            (name, profile)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn every_example_loads() {
    let names: Vec<String> = examples().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "interactive-powers.toml",
        "quicklink.toml",
        "scoot.toml",
        "sococo.toml",
        "turnpike.toml",
        "vidyo-cern.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[test]
fn every_example_round_trips_through_toml() {
    for (name, profile) in examples() {
        let text = profile.to_toml().unwrap();
        let again = Profile::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(again, profile, "{name}");
        // And it is stable: writing it again gives the same text.
        assert_eq!(again.to_toml().unwrap(), text, "{name}");
    }
}

#[test]
fn every_example_round_trips_through_json() {
    for (name, profile) in examples() {
        let json = serde_json::to_string(&profile).unwrap();
        let again: Profile = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again, profile, "{name}");
        assert_eq!(again.validate(), Ok(()), "{name}");
        let pretty = serde_json::to_string_pretty(&profile).unwrap();
        assert_eq!(
            serde_json::from_str::<Profile>(&pretty).unwrap(),
            profile,
            "{name}"
        );
    }
}

#[test]
fn json_refuses_unknown_fields() {
    let (_, profile) = examples().into_iter().next().unwrap();
    let mut json = serde_json::to_value(&profile).unwrap();
    json["endpoint"][0]["prot"] = 1.into();
    let e = serde_json::from_value::<Profile>(json).unwrap_err();
    assert!(e.to_string().contains("unknown field `prot`"), "{e}");
}

#[test]
fn every_example_has_sources_and_reachable_verdicts() {
    for (name, p) in examples() {
        assert!(!p.about.source.is_empty(), "{name}");
        for (t, _, _, source) in p.thresholds.iter() {
            assert!(!source.is_empty(), "{name}: {t}");
        }
        assert_eq!(p.assess(|_| true).verdict, Verdict::Ready, "{name}");
        assert_eq!(p.assess(|_| false).verdict, Verdict::Blocked, "{name}");
        // Every fallback stands in for something, and something required
        // is covered by a fallback or works on its own.
        for e in &p.endpoints {
            for target in &e.fallback_for {
                assert!(p.endpoint(target).is_some(), "{name}: {target}");
                assert!(p.fallbacks_of(target).any(|f| f.id == e.id));
            }
        }
        // Blocking direct UDP media, with every fallback working, degrades
        // at worst.
        let has_media = p
            .endpoints
            .iter()
            .any(|e| e.kind == Kind::UdpRange && e.required);
        if has_media {
            let a = p.assess(|e| e.kind != Kind::UdpRange);
            assert!(
                a.verdict <= Verdict::Degraded || name == "vidyo-cern.toml",
                "{name}: {a:?}"
            );
        }
    }
}

#[test]
fn turnpike_profile_matches_server_defaults() {
    let p = examples()
        .into_iter()
        .find(|(n, _)| n == "turnpike.toml")
        .map(|(_, p)| p)
        .unwrap();
    let relay = p.endpoint("relay").and_then(|e| e.ports).unwrap();
    assert_eq!((relay.lo(), relay.hi()), (49152, 65535));
    assert_eq!(p.endpoint("turn-udp").and_then(|e| e.port), Some(3478));
    // A tripwire: if the server's defaults move, this profile must follow.
    let config = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/src/config.rs"),
    )
    .unwrap();
    assert!(
        config.contains("DEFAULT_LISTEN: &str = \"0.0.0.0:3478\""),
        "default listener moved"
    );
    assert!(
        config.contains("first: 49152,") && config.contains("last: 65535,"),
        "default relay ports moved"
    );
}

#[test]
fn readme_documents_every_key_and_kind() {
    let readme = std::fs::read_to_string(profiles_dir().join("README.md")).unwrap();
    let keys = [
        "name",
        "description",
        "source",
        "id",
        "kind",
        "host",
        "port",
        "ports",
        "path",
        "required",
        "fallback_for",
        "purpose",
        "max",
        "min",
    ];
    for key in keys {
        assert!(readme.contains(&format!("`{key}`")), "README lacks `{key}`");
    }
    for kind in Kind::ALL {
        assert!(
            readme.contains(&format!("`{kind}`")),
            "README lacks kind `{kind}`"
        );
    }
    for (name, _) in Thresholds::NAMES {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README lacks threshold `{name}`"
        );
    }
    assert!(readme.contains("`[measure]`"), "README lacks [measure]");
    for key in Measure::KEYS {
        assert!(
            readme.contains(&format!("`{key}`")),
            "README lacks measure key `{key}`"
        );
    }
    for (file, _) in examples() {
        assert!(readme.contains(&file), "README lacks {file}");
    }
}

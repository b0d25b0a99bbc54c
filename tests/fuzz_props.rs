//! Property tests over untrusted-input parsers, with a fixed budget and a fixed seed so CI is
//! deterministic and fast: reference parsing, manifest parsing, and path sanitising
//! (src/safe_path.rs, which every tar entry and title annotation goes through).
//! Set PROPTEST_CASES to run more cases locally.

use std::path::{Component, Path};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tugboat::artifact::manifest::{parse, Parsed, MAX_BLOB_SIZE, MAX_LAYERS};
use tugboat::digest::Digest;
use tugboat::reference::Reference;
use tugboat::safe_path::SafePath;

const SEED: [u8; 32] = *b"tugboat-fuzz-props-fixed-seed-01";

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
    )
}

/// Path-ish strings: components drawn from the tricky ones plus arbitrary text.
fn path_strategy() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("a".to_string()),
        Just("weights.gguf".to_string()),
        Just("\\..".to_string()),
        Just("..\\..".to_string()),
        Just("\0".to_string()),
        Just("...".to_string()),
        Just("/".to_string()),
        "[a-zA-Z0-9._ -]{1,12}",
        any::<String>(),
    ];
    (any::<bool>(), prop::collection::vec(component, 0..8)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

#[test]
fn safe_paths_never_leave_their_root() {
    runner()
        .run(&path_strategy(), |raw| {
            if let Ok(safe) = SafePath::new(&raw) {
                let s = safe.as_str();
                prop_assert!(!s.is_empty());
                prop_assert!(!s.starts_with('/'));
                prop_assert!(!s.contains('\0') && !s.contains('\\'));
                for c in Path::new(s).components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{raw:?} -> {s:?}");
                }
                let root = Path::new("/srv/root");
                let joined = safe.under(root);
                prop_assert!(joined.starts_with(root) && joined != root);
                // Normalising is idempotent.
                prop_assert_eq!(SafePath::new(s).unwrap(), safe.clone());
                prop_assert!(!safe.top().is_empty() && safe.top() != "..");
            } else {
                // Refused inputs are ones with something to refuse.
                let suspicious = raw.is_empty()
                    || raw.starts_with('/')
                    || raw.contains('\\')
                    || raw.contains('\0')
                    || raw.split('/').any(|p| p == ".." || p.len() > 255)
                    || raw.split('/').all(|p| p.is_empty() || p == ".")
                    || raw.len() > 4096;
                prop_assert!(suspicious, "refused an innocent path {raw:?}");
            }
            Ok(())
        })
        .unwrap();
}

fn reference_strategy() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        Just("".to_string()),
        Just("registry.example.com/".to_string()),
        Just("127.0.0.1:5000/".to_string()),
        Just("localhost/".to_string()),
        Just("[::1]:5000/".to_string()),
        Just("Upper.Example:99999/".to_string()),
        "[a-z0-9.:-]{0,20}/",
    ];
    let repo = prop_oneof![
        "[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*){0,3}",
        Just("../../etc".to_string()),
        Just("a//b".to_string()),
        Just("A/B".to_string()),
        "[ -~]{0,30}",
    ];
    let tag = prop_oneof![
        Just("".to_string()),
        ":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        ":[ -~]{0,10}",
    ];
    let digest = prop_oneof![
        Just("".to_string()),
        "@sha256:[0-9a-f]{64}",
        "@sha512:[0-9a-f]{128}",
        "@sha256:[0-9a-fA-F]{60,66}",
        "@[ -~]{0,20}",
    ];
    (host, repo, tag, digest).prop_map(|(h, r, t, d)| format!("{h}{r}{t}{d}"))
}

#[test]
fn references_parse_to_canonical_forms_or_are_refused() {
    runner()
        .run(
            &prop_oneof![reference_strategy(), any::<String>()],
            |text| {
                if let Ok(reference) = text.parse::<Reference>() {
                    let repo = reference.repository();
                    prop_assert!(!repo.is_empty());
                    prop_assert!(!repo.starts_with('/') && !repo.ends_with('/'));
                    for part in repo.split('/') {
                        prop_assert!(!part.is_empty() && part != "." && part != "..", "{text:?}");
                        prop_assert!(part.bytes().all(|b| b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b"._-".contains(&b)));
                    }
                    let registry = reference.registry();
                    prop_assert!(!registry.is_empty() && !registry.contains('/'));
                    prop_assert!(!registry.chars().any(char::is_whitespace));
                    if let Some(tag) = reference.tag() {
                        prop_assert!(!tag.is_empty() && tag.len() <= 128);
                        // The OCI tag grammar: never a path separator, never "." or "..".
                        let first = tag.as_bytes()[0];
                        prop_assert!(first.is_ascii_alphanumeric() || first == b'_', "{tag:?}");
                        prop_assert!(tag
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
                    }
                    // The printed form parses back to the same reference.
                    let printed = reference.to_string();
                    let again: Reference = printed.parse().unwrap();
                    prop_assert_eq!(again.to_string(), printed);
                    prop_assert_eq!(again.repository(), repo);
                }
                Ok(())
            },
        )
        .unwrap();
}

fn digest_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "sha256:[0-9a-f]{64}",
        "sha256:[0-9a-fA-F]{62,66}",
        "sha512:[0-9a-f]{128}",
        "[a-z0-9]{0,8}:[ -~]{0,70}",
        any::<String>(),
    ]
}

fn descriptor_strategy() -> impl Strategy<Value = serde_json::Value> {
    (
        digest_strategy(),
        prop_oneof![
            (0i64..1 << 40).prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(-1)),
            Just(serde_json::Value::from(i64::MAX)),
            Just(serde_json::Value::from(u64::MAX)),
            Just(serde_json::Value::from(1.5)),
            Just(serde_json::Value::from("12")),
        ],
        prop::option::of("[ -~]{0,20}"),
    )
        .prop_map(|(digest, size, title)| {
            let mut d = serde_json::json!({
                "mediaType": "application/octet-stream", "digest": digest, "size": size,
            });
            if let Some(t) = title {
                d["annotations"] = serde_json::json!({"org.opencontainers.image.title": t});
            }
            d
        })
}

fn manifest_strategy() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        prop_oneof![Just(2i64), Just(1), any::<i64>()],
        prop::option::of(prop_oneof![
            Just("application/vnd.oci.image.manifest.v1+json".to_string()),
            Just("application/vnd.oci.image.index.v1+json".to_string()),
            "[ -~]{0,20}",
        ]),
        descriptor_strategy(),
        prop::collection::vec(descriptor_strategy(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(version, media_type, config, layers, index)| {
            let mut m = serde_json::json!({"schemaVersion": version});
            if let Some(mt) = media_type {
                m["mediaType"] = mt.into();
            }
            if index {
                m["manifests"] = layers.into();
            } else {
                m["config"] = config;
                m["layers"] = layers.into();
            }
            serde_json::to_vec(&m).unwrap()
        });
    prop_oneof![
        3 => structured,
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => "[{}\\[\\]\":,0-9a-z ]{0,100}".prop_map(String::into_bytes),
    ]
}

#[test]
fn manifests_parse_within_limits_or_are_refused() {
    runner()
        .run(&manifest_strategy(), |bytes| {
            match parse(&bytes, None) {
                Ok(Parsed::Manifest(m)) => {
                    prop_assert!(m.layers.len() <= MAX_LAYERS);
                    for d in m.layers.iter().chain([&m.config]) {
                        prop_assert!(d.size <= MAX_BLOB_SIZE);
                        let text = d.digest.to_string();
                        prop_assert!(text.parse::<Digest>().is_ok());
                        prop_assert_eq!(text.len(), 71);
                    }
                }
                Ok(Parsed::Index(entries)) => {
                    prop_assert!(entries.len() <= MAX_LAYERS);
                    for d in &entries {
                        prop_assert!(d.size <= MAX_BLOB_SIZE);
                    }
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn digests_accept_only_sha256_lowercase_hex() {
    runner()
        .run(&digest_strategy(), |text| {
            let valid = text.len() == 71
                && text.starts_with("sha256:")
                && text[7..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(text.parse::<Digest>().is_ok(), valid, "{:?}", text);
            Ok(())
        })
        .unwrap();
}

//! `tugboat affinity REF`: the label key printed is the one the node daemon advertises (the
//! library's key scheme), and the YAML printed parses as a Kubernetes affinity with that key
//! under both the preferred and the required rule.

use serde_yaml_ng::Value;
use std::process::{Command, Output};
use tugboat::advertise::keys;
use tugboat::reference::Reference;

fn tugboat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .args(args)
        .env_clear()
        .output()
        .expect("running tugboat")
}

fn stdout_of(args: &[&str]) -> String {
    let out = tugboat(args);
    assert!(
        out.status.success(),
        "tugboat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|de| <Value as serde::Deserialize>::deserialize(de).expect("YAML"))
        .collect()
}

fn expressions<'a>(doc: &'a Value, path: &[&str]) -> &'a Vec<Value> {
    let mut v = doc;
    for key in path {
        v = match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[*key],
        };
    }
    v.as_sequence()
        .unwrap_or_else(|| panic!("no {path:?} in {doc:?}"))
}

const PREFERRED: [&str; 6] = [
    "affinity",
    "nodeAffinity",
    "preferredDuringSchedulingIgnoredDuringExecution",
    "0",
    "preference",
    "matchExpressions",
];
const REQUIRED: [&str; 6] = [
    "affinity",
    "nodeAffinity",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "nodeSelectorTerms",
    "0",
    "matchExpressions",
];

/// The key the default output uses, checked to be the same under both rules.
fn check_both(reference: &str, expected: &str) {
    let text = stdout_of(&["affinity", reference]);
    assert!(text.contains(expected), "{text}");
    let docs = documents(&text);
    assert_eq!(docs.len(), 2, "preferred, then required:\n{text}");
    let preferred = expressions(&docs[0], &PREFERRED);
    assert_eq!(preferred.len(), 1);
    assert_eq!(preferred[0]["key"].as_str(), Some(expected));
    assert_eq!(preferred[0]["operator"].as_str(), Some("Exists"));
    assert_eq!(
        docs[0]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
            ["weight"]
            .as_i64(),
        Some(100)
    );
    let required = expressions(&docs[1], &REQUIRED);
    assert_eq!(required[0]["key"].as_str(), Some(expected));
    assert_eq!(required[0]["operator"].as_str(), Some("Exists"));
    assert_eq!(
        stdout_of(&["affinity", reference, "--keys"]).trim(),
        expected
    );
}

#[test]
fn a_tag_reference_is_matched_by_its_tag_key() {
    for text in [
        "harbor.example.com/ml-models/tinyllama:v1.0.0-gguf",
        "127.0.0.1:5000/models/tiny:Q4_K_M",
        "ubuntu",
        "tugboat://h.example/team/model:v2",
    ] {
        let reference: Reference = text.parse().unwrap();
        let expected = keys::tag_key(&reference);
        assert!(expected.starts_with("tag.model.tugboat.io/"), "{expected}");
        check_both(text, &expected);
    }
    // Written differently, the same model: the same key.
    assert_eq!(
        stdout_of(&["affinity", "ubuntu", "--keys"]),
        stdout_of(&["affinity", "docker.io/library/ubuntu:latest", "--keys"])
    );
}

#[test]
fn a_digest_reference_is_matched_by_its_digest_key() {
    let hex = "5f0c3c48f0b7b2d3d9e1a6b4c8f2e7a9d0b1c3e5f7a9b2c4d6e8f0a1b3c5d7e9";
    for text in [
        format!("harbor.example.com/ml-models/tinyllama@sha256:{hex}"),
        format!("harbor.example.com/ml-models/tinyllama:v1@sha256:{hex}"),
    ] {
        let expected = format!("digest.model.tugboat.io/sha256.{}", &hex[..56]);
        let reference: Reference = text.parse().unwrap();
        assert_eq!(keys::digest_key(reference.digest().unwrap()), expected);
        check_both(&text, &expected);
    }
}

#[test]
fn one_rule_at_a_time_and_warm_list_names() {
    let reference = "harbor.example.com/ml-models/tinyllama:v1.0.0-gguf";
    let key = keys::tag_key(&reference.parse().unwrap());
    let required = documents(&stdout_of(&["affinity", reference, "--required"]));
    assert_eq!(required.len(), 1);
    assert_eq!(
        expressions(&required[0], &REQUIRED)[0]["key"].as_str(),
        Some(key.as_str())
    );
    let preferred = documents(&stdout_of(&[
        "affinity",
        reference,
        "--preferred",
        "--weight",
        "40",
    ]));
    assert_eq!(preferred.len(), 1);
    assert_eq!(
        preferred[0]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["weight"]
            .as_i64(),
        Some(40)
    );
    let named = stdout_of(&["affinity", "--name", "tinyllama", "--keys"]);
    assert_eq!(named.trim(), "name.model.tugboat.io/tinyllama");
    let docs = documents(&stdout_of(&["affinity", "--name", "tinyllama"]));
    assert_eq!(
        expressions(&docs[1], &REQUIRED)[0]["key"].as_str(),
        Some("name.model.tugboat.io/tinyllama")
    );
}

#[test]
fn bad_input_is_refused_with_exit_2() {
    for args in [
        vec!["affinity", "UPPER/Case:tag"],
        vec!["affinity", "hf://Qwen/Qwen2.5"],
        vec!["affinity"],
        vec!["affinity", "--name", "-bad"],
        vec!["affinity", "r.example/m:v1", "--name", "x"],
        vec!["affinity", "r.example/m:v1", "--weight", "0"],
    ] {
        let out = tugboat(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

//! The reconcile plan, pure: from the models a scan found, the label set the Node should carry
//! (bounded: at most `max_models` models, the warm list's first, then the most recently used;
//! a few keys per model at most), and from that set and the Node's current labels, the one
//! merge patch that makes the tugboat-owned labels equal to it. Labels tugboat does not own
//! are never touched.

use super::keys;
use super::scan::Held;
use std::collections::{BTreeMap, BTreeSet};

/// Tag keys advertised per model at most (one per tag the cache records for it).
pub const MAX_TAGS_PER_MODEL: usize = 8;
/// Digest keys per model at most (the manifest's and its indexes').
pub const MAX_DIGESTS_PER_MODEL: usize = 4;
/// Name keys per model at most (warm-list names).
pub const MAX_NAMES_PER_MODEL: usize = 4;

/// The labels the Node should carry, and what they stand for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub labels: BTreeMap<String, String>,
    /// Models advertised.
    pub models: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Complete models not advertised because of the bound.
    pub left_out: usize,
}

/// The desired label set for `held` (in the scan's order: warm first, then most recent).
pub fn desired(held: &[Held], max_models: usize) -> Desired {
    let mut out = Desired::default();
    for model in held.iter().take(max_models) {
        // The manifest's own digest first, then its indexes'.
        let digests = std::iter::once(&model.snapshot)
            .chain(model.digests.iter().filter(|d| **d != model.snapshot))
            .take(MAX_DIGESTS_PER_MODEL);
        for digest in digests {
            out.labels
                .insert(keys::digest_key(digest), keys::DIGEST_KEY_VALUE.to_string());
        }
        for (tag, digest) in model.tags.iter().take(MAX_TAGS_PER_MODEL) {
            if let Ok(reference) = tag.parse() {
                out.labels
                    .insert(keys::tag_key(&reference), keys::digest_value(digest));
            }
        }
        for (name, digest) in model.names.iter().take(MAX_NAMES_PER_MODEL) {
            if keys::name_problem(name).is_none() {
                out.labels
                    .insert(keys::name_key(name), keys::digest_value(digest));
            }
        }
        out.models += 1;
        out.bytes += model.bytes;
    }
    out.left_out = held.len().saturating_sub(max_models);
    out
}

/// What to change on the Node: labels to set (added or changed) and labels to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub set: BTreeMap<String, String>,
    pub remove: BTreeSet<String>,
}

/// The changes that turn the tugboat-owned labels among `current` into `desired`.
pub fn plan(desired: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Plan {
    let set = desired
        .iter()
        .filter(|(key, value)| current.get(*key) != Some(value))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = current
        .keys()
        .filter(|key| keys::is_owned(key) && !desired.contains_key(*key))
        .cloned()
        .collect();
    Plan { set, remove }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// The JSON merge patch (RFC 7386) of the Node: `metadata.labels` with each label to set
    /// and `null` for each to remove; everything else is left as it is.
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut labels = serde_json::Map::new();
        for (key, value) in &self.set {
            labels.insert(key.clone(), serde_json::Value::String(value.clone()));
        }
        for key in &self.remove {
            labels.insert(key.clone(), serde_json::Value::Null);
        }
        serde_json::json!({ "metadata": { "labels": labels } })
    }

    /// `labels` as they are once the patch is applied.
    pub fn applied_to(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = labels.clone();
        out.retain(|key, _| !self.remove.contains(key));
        out.extend(self.set.clone());
        out
    }
}

/// The tugboat-owned labels among a Node's labels.
pub fn owned(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(key, _)| keys::is_owned(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::time::{Duration, SystemTime};

    fn model(seed: &str, age_seconds: u64, warm: Option<usize>) -> Held {
        let snapshot = Digest::of_bytes(seed.as_bytes());
        Held {
            digests: BTreeSet::from([snapshot.clone()]),
            tags: BTreeMap::from([(format!("r.example/m/{seed}:v1"), snapshot.clone())]),
            names: BTreeMap::new(),
            snapshot,
            bytes: 1000,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_seconds),
            warm,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_model_gets_its_digest_and_tag_keys() {
        let m = model("a", 0, None);
        let d = desired(std::slice::from_ref(&m), 100);
        let tag_key = keys::tag_key(&"r.example/m/a:v1".parse().unwrap());
        assert_eq!(
            d.labels,
            labels(&[
                (&keys::digest_key(&m.snapshot), "true"),
                (&tag_key, &keys::digest_value(&m.snapshot)),
            ])
        );
        assert_eq!((d.models, d.bytes, d.left_out), (1, 1000, 0));
    }

    #[test]
    fn names_and_index_digests_are_advertised() {
        let mut m = model("a", 0, Some(0));
        let index = Digest::of_bytes(b"index");
        m.digests.insert(index.clone());
        m.names.insert("tinyllama".into(), index.clone());
        let d = desired(&[m], 100);
        assert_eq!(
            d.labels.get(&keys::digest_key(&index)).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            d.labels.get("name.model.tugboat.io/tinyllama"),
            Some(&keys::digest_value(&index))
        );
        assert_eq!(d.labels.len(), 4);
    }

    #[test]
    fn the_set_is_bounded_and_keeps_the_first_models() {
        // The scan orders warm entries first, then the most recently used.
        let held: Vec<Held> = (0..10).map(|i| model(&format!("m{i}"), i, None)).collect();
        let d = desired(&held, 3);
        assert_eq!((d.models, d.left_out, d.bytes), (3, 7, 3000));
        for m in &held[..3] {
            assert!(d.labels.contains_key(&keys::digest_key(&m.snapshot)));
        }
        for m in &held[3..] {
            assert!(!d.labels.contains_key(&keys::digest_key(&m.snapshot)));
        }
        assert_eq!(desired(&held, 0).labels.len(), 0);
        // Many tags of one model: a few keys at most.
        let mut m = model("many", 0, None);
        for i in 0..50 {
            m.tags
                .insert(format!("r.example/m/many:t{i}"), m.snapshot.clone());
        }
        assert_eq!(desired(&[m], 1).labels.len(), 1 + MAX_TAGS_PER_MODEL);
    }

    #[test]
    fn nothing_to_do_when_the_node_already_has_the_set() {
        let d = desired(&[model("a", 0, None)], 100);
        let mut current = d.labels.clone();
        current.insert("kubernetes.io/hostname".into(), "node-a".into());
        let p = plan(&d.labels, &current);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn one_patch_adds_changes_and_removes_only_owned_labels() {
        let a = model("a", 0, None);
        let b = model("b", 0, None);
        let d = desired(std::slice::from_ref(&a), 100);
        let tag_a = keys::tag_key(&"r.example/m/a:v1".parse().unwrap());
        let stale_b = keys::digest_key(&b.snapshot);
        let current = labels(&[
            ("kubernetes.io/hostname", "node-a"),
            ("gpu", "a100"),
            (&tag_a, "sha256.0000"), // edited by hand: set again
            (&stale_b, "true"),      // a model no longer held
            ("name.model.tugboat.io/old", "sha256.1"), // a name no longer given
            ("tugboat.io/other", "x"), // not one of ours
        ]);
        let p = plan(&d.labels, &current);
        assert_eq!(
            p.set,
            labels(&[
                (&keys::digest_key(&a.snapshot), "true"),
                (&tag_a, &keys::digest_value(&a.snapshot)),
            ])
        );
        assert_eq!(
            p.remove,
            BTreeSet::from([stale_b.clone(), "name.model.tugboat.io/old".to_string()])
        );
        let patch = p.merge_patch();
        let patched = &patch["metadata"]["labels"];
        assert_eq!(patch.as_object().unwrap().len(), 1);
        assert!(patched[&stale_b].is_null());
        assert_eq!(patched[&tag_a], keys::digest_value(&a.snapshot));
        assert_eq!(patched.as_object().unwrap().len(), 4);
        // Applied, the owned labels are exactly the desired set and the rest is untouched.
        let after = p.applied_to(&current);
        assert_eq!(owned(&after), d.labels);
        assert_eq!(after.get("gpu").map(String::as_str), Some("a100"));
        assert_eq!(after.get("tugboat.io/other").map(String::as_str), Some("x"));
        assert!(plan(&d.labels, &after).is_empty());
    }

    #[test]
    fn an_empty_cache_removes_every_owned_label() {
        let current = labels(&[
            ("digest.model.tugboat.io/sha256.aa", "true"),
            ("tag.model.tugboat.io/x_v1-0123456789ab", "sha256.aa"),
            ("kubernetes.io/os", "linux"),
        ]);
        let p = plan(&BTreeMap::new(), &current);
        assert!(p.set.is_empty());
        assert_eq!(p.remove.len(), 2);
        assert_eq!(owned(&p.applied_to(&current)), BTreeMap::new());
    }
}

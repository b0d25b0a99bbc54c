//! The label key scheme: how a model a node holds is named on its Node object, so that a pod
//! author can match it from the reference they write. Three prefixes, all owned by tugboat
//! (every label under them is tugboat's to add and remove):
//!
//! | key | value | for |
//! |---|---|---|
//! | `digest.model.tugboat.io/sha256.<56 hex>` | `true` | a by-digest reference (`repo@sha256:...`) |
//! | `tag.model.tugboat.io/<repo>_<tag>-<12 hex>` | `sha256.<56 hex>` | a tag reference (`repo:tag`) |
//! | `name.model.tugboat.io/<warm-list name>` | `sha256.<56 hex>` | a warm-list entry's `name` |
//!
//! A label name (after the prefix) is at most 63 characters of `[A-Za-z0-9._-]`, beginning and
//! ending with a letter or digit; a value likewise. A digest is cut to its first 56 hex
//! characters (224 bits) to fit `sha256.` in front. A tag key carries the repository's last
//! path segment and the tag, cut to fit (the segment to no less than 12 characters when the
//! tag is long, the tag to the rest), for people reading `kubectl get node --show-labels`;
//! what makes it unique is the 12 hex characters of sha256 over the normalised
//! `registry/repository:tag` (Docker Hub names expanded, ports kept), as
//! [`Reference`](crate::reference::Reference) prints it.

use crate::digest::Digest;
use crate::reference::Reference;
use sha2::{Digest as _, Sha256};

/// Prefix of the labels naming a model by manifest digest.
pub const DIGEST_PREFIX: &str = "digest.model.tugboat.io";
/// Prefix of the labels naming a model by the tag it was pulled as.
pub const TAG_PREFIX: &str = "tag.model.tugboat.io";
/// Prefix of the labels naming a model by its warm-list short name.
pub const NAME_PREFIX: &str = "name.model.tugboat.io";

/// The longest label name (the part after `prefix/`) and the longest value.
pub const MAX_NAME: usize = 63;
/// Hex characters of a digest kept in a key or value (`sha256.` + 56 = 63).
const DIGEST_HEX: usize = 56;
/// Hex characters of the reference hash that makes a tag key unique.
const TAG_HASH_HEX: usize = 12;
/// Characters of the repository segment always kept beside a long tag.
const SEGMENT_MIN: usize = 12;

/// `sha256.<first 56 hex>`: the value of tag and name labels, and the name part of a digest key.
pub fn digest_value(digest: &Digest) -> String {
    format!("sha256.{}", &digest.hex()[..DIGEST_HEX])
}

/// `digest.model.tugboat.io/sha256.<56 hex>`.
pub fn digest_key(digest: &Digest) -> String {
    format!("{DIGEST_PREFIX}/{}", digest_value(digest))
}

/// The value of a digest key.
pub const DIGEST_KEY_VALUE: &str = "true";

/// `tag.model.tugboat.io/<repo segment>_<tag>-<12 hex>` for the tag `reference` names
/// (`latest` when it names none); its digest, if any, is ignored.
pub fn tag_key(reference: &Reference) -> String {
    let tag = reference.tag_or_latest();
    let normalised = format!("{}/{}:{tag}", reference.registry(), reference.repository());
    let hash = hex::encode(Sha256::digest(normalised.as_bytes()));
    let hash = &hash[..TAG_HASH_HEX];
    let segment = sanitize(reference.repository().rsplit('/').next().unwrap_or(""));
    let segment = segment.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let segment = if segment.is_empty() { "model" } else { segment };
    let tag = sanitize(tag);
    // <segment>_<tag>-<hash>: 2 separators and the hash leave 49 characters for the two texts.
    let room = MAX_NAME - 2 - TAG_HASH_HEX;
    let tag_len = tag.len().min(room - segment.len().min(SEGMENT_MIN));
    let segment_len = segment.len().min(room - tag_len);
    format!(
        "{TAG_PREFIX}/{}_{}-{hash}",
        &segment[..segment_len],
        &tag[..tag_len]
    )
}

/// `name.model.tugboat.io/<name>` for a warm-list short name (see [`valid_name`]).
pub fn name_key(name: &str) -> String {
    format!("{NAME_PREFIX}/{name}")
}

/// Why a warm-list name cannot be a label name, or `None` when it can.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Some("must be 1-63 characters");
    }
    if !valid_label_text(name) {
        return Some(
            "must be letters, digits, '-', '_' and '.', beginning and ending with a letter or digit",
        );
    }
    None
}

/// Whether `key` is a label tugboat owns (one of the three prefixes).
pub fn is_owned(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(prefix, _)| [DIGEST_PREFIX, TAG_PREFIX, NAME_PREFIX].contains(&prefix))
}

/// Label syntax for a name part or a non-empty value: at most 63 characters of
/// `[A-Za-z0-9._-]`, beginning and ending with a letter or digit.
pub fn valid_label_text(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A whole label key: an optional DNS-subdomain prefix (at most 253 characters) and a name.
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                let b = part.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                    && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            })
    });
    prefix_ok && valid_label_text(name)
}

/// Keeps `[A-Za-z0-9._-]`, turning anything else into `-`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap()
    }

    fn name_of(key: &str) -> &str {
        key.split_once('/').unwrap().1
    }

    fn assert_valid(key: &str) {
        assert!(valid_label_key(key), "{key:?} is not a valid label key");
        assert!(name_of(key).len() <= MAX_NAME, "{key:?}");
        assert!(is_owned(key), "{key:?}");
    }

    #[test]
    fn a_tag_key_reads_as_repository_and_tag() {
        let key = tag_key(&parse("harbor.example.com/ml-models/tinyllama:v1.0.0-gguf"));
        assert_valid(&key);
        let expected = hex::encode(Sha256::digest(
            b"harbor.example.com/ml-models/tinyllama:v1.0.0-gguf",
        ));
        assert_eq!(
            key,
            format!(
                "tag.model.tugboat.io/tinyllama_v1.0.0-gguf-{}",
                &expected[..12]
            )
        );
    }

    #[test]
    fn references_that_name_the_same_model_share_a_key() {
        // Docker Hub defaults, URI schemes and a missing tag normalise as the parser does.
        assert_eq!(
            tag_key(&parse("ubuntu")),
            tag_key(&parse("docker.io/library/ubuntu:latest"))
        );
        assert_eq!(
            tag_key(&parse("index.docker.io/org/m:1")),
            tag_key(&parse("org/m:1"))
        );
        assert_eq!(
            tag_key(&parse("tugboat://h.example/m:v1")),
            tag_key(&parse("h.example/m:v1"))
        );
        // The digest of a tag@digest reference does not change the tag key.
        let hex = "c".repeat(64);
        assert_eq!(
            tag_key(&parse(&format!("h.example/m:v1@sha256:{hex}"))),
            tag_key(&parse("h.example/m:v1"))
        );
        let hash = hex::encode(Sha256::digest(b"docker.io/library/ubuntu:latest"));
        assert!(tag_key(&parse("ubuntu")).ends_with(&hash[..12]));
    }

    #[test]
    fn ports_registries_and_repositories_tell_keys_apart() {
        let keys = [
            tag_key(&parse("127.0.0.1:5000/models/tiny:v1")),
            tag_key(&parse("127.0.0.1:5001/models/tiny:v1")),
            tag_key(&parse("127.0.0.1/models/tiny:v1")),
            tag_key(&parse("other.example/models/tiny:v1")),
            tag_key(&parse("127.0.0.1:5000/team/tiny:v1")),
            tag_key(&parse("127.0.0.1:5000/models/tiny:v2")),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert_valid(a);
            assert!(a.starts_with("tag.model.tugboat.io/tiny_v"), "{a}");
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let hash = hex::encode(Sha256::digest(b"127.0.0.1:5000/models/tiny:v1"));
        assert!(keys[0].ends_with(&hash[..12]), "the port is in the hash");
    }

    #[test]
    fn uppercase_tags_keep_their_case_and_differ() {
        let upper = tag_key(&parse("h.example/m/llama:Q4_K_M"));
        let lower = tag_key(&parse("h.example/m/llama:q4_k_m"));
        assert_valid(&upper);
        assert_valid(&lower);
        assert!(upper.contains("llama_Q4_K_M-"), "{upper}");
        assert_ne!(upper, lower);
    }

    #[test]
    fn long_names_are_cut_to_63_characters() {
        let long_repo = format!("h.example/{}", "a".repeat(200));
        let long_tag = "T".repeat(128);
        for text in [
            format!("{long_repo}:v1"),
            format!("h.example/m:{long_tag}"),
            format!("{long_repo}:{long_tag}"),
            format!("{long_repo}:_starts-with-underscore"),
            "h.example/x:_".to_string(),
            format!(
                "h.example/{}/{}:{}",
                "b".repeat(100),
                "c".repeat(100),
                "d".repeat(49)
            ),
        ] {
            assert_valid(&tag_key(&parse(&text)));
        }
        // Both texts keep some of themselves: the segment at least 12 characters, the tag the rest.
        let key = tag_key(&parse(&format!("{long_repo}:{long_tag}")));
        let name = name_of(&key);
        assert_eq!(name.len(), 63);
        assert!(name.starts_with(&"a".repeat(12)), "{name}");
        assert!(name.contains(&format!("_{}-", "T".repeat(37))), "{name}");
        // A short segment leaves the tag the rest: 48 characters beside a one-letter segment.
        let key = tag_key(&parse(&format!("h.example/m:{long_tag}")));
        assert!(name_of(&key).starts_with(&format!("m_{}-", "T".repeat(48))));
        // Tags that agree on every character kept still get different keys.
        let a = tag_key(&parse(&format!("h.example/m:{}a", "x".repeat(60))));
        let b = tag_key(&parse(&format!("h.example/m:{}b", "x".repeat(60))));
        assert_ne!(a, b);
    }

    #[test]
    fn digest_keys_and_values_fit() {
        let digest = Digest::of_bytes(b"manifest");
        let key = digest_key(&digest);
        assert_valid(&key);
        assert_eq!(
            key,
            format!("digest.model.tugboat.io/sha256.{}", &digest.hex()[..56])
        );
        assert_eq!(name_of(&key).len(), 63);
        let value = digest_value(&digest);
        assert!(valid_label_text(&value) && value.len() == 63, "{value}");
        assert!(valid_label_text(DIGEST_KEY_VALUE));
    }

    #[test]
    fn warm_list_names_must_be_label_names() {
        for good in ["tinyllama", "Llama-3.1_8B", "a", &"x".repeat(63)] {
            assert_eq!(name_problem(good), None, "{good:?}");
            assert_valid(&name_key(good));
        }
        for bad in ["", "-x", "x-", "a b", "a/b", "ünï", &"x".repeat(64)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_three_prefixes_are_owned() {
        assert!(is_owned("digest.model.tugboat.io/sha256.abc"));
        assert!(is_owned("tag.model.tugboat.io/x"));
        assert!(is_owned("name.model.tugboat.io/x"));
        for other in [
            "kubernetes.io/hostname",
            "model.tugboat.io/x",
            "tugboat.io/x",
            "x.tag.model.tugboat.io/y",
            "tag.model.tugboat.io",
        ] {
            assert!(!is_owned(other), "{other}");
        }
    }

    #[test]
    fn the_label_syntax_check_refuses_what_the_apiserver_refuses() {
        assert!(valid_label_key("kubernetes.io/hostname"));
        assert!(valid_label_key("app"));
        for bad in [
            "Upper.Case/x",
            "a/-x",
            "a/x-",
            &format!("a/{}", "x".repeat(64)),
            "/x",
            "a/",
            "a..b/x",
        ] {
            assert!(!valid_label_key(bad), "{bad:?}");
        }
    }
}

//! Image references: `registry[:port]/repo[:tag][@sha256:...]` parsing, validation and
//! Docker Hub normalisation. Everything that names a model goes through here first; a URI
//! scheme in front (`oci://`, `tugboat://`, `kit://`) is read by `scheme`.

mod scheme;

pub use scheme::ACCEPTED as ACCEPTED_SCHEMES;

use crate::digest::{Digest, DigestError};
use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical name, and the host its API actually lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed, normalised reference. A reference with neither tag nor digest means `:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty reference: expected registry/repository[:tag][@sha256:digest]")]
    Empty,
    #[error("reference {reference:?}: {problem}")]
    Invalid { reference: String, problem: String },
    #[error("reference {reference:?}: tugboat does not fetch {scheme}:// URIs: {advice}")]
    Scheme {
        reference: String,
        scheme: String,
        advice: String,
    },
    #[error("reference {reference:?}")]
    Digest {
        reference: String,
        source: DigestError,
    },
}

impl Reference {
    /// Host (and port) as written, with Docker Hub normalised to `docker.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host the registry API is reached on (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The tag a tag-addressed pull resolves (`latest` when none was written).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let invalid = |problem: &str| ReferenceError::Invalid {
            reference: input.to_string(),
            problem: problem.to_string(),
        };
        if input.len() > 4096 {
            return Err(invalid("longer than 4096 characters"));
        }
        let whole = input;
        let input = scheme::strip(whole).map_err(|refusal| ReferenceError::Scheme {
            reference: whole.to_string(),
            scheme: refusal.scheme,
            advice: refusal.advice,
        })?;
        if input.is_empty() {
            return Err(invalid(
                "nothing follows the scheme: expected registry/repository[:tag]",
            ));
        }
        if input.contains("://") {
            return Err(invalid("write one scheme at most (oci://host/repo:tag)"));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse().map_err(|source| ReferenceError::Digest {
                    reference: whole.to_string(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };

        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&rest[..split], Some(&rest[split + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(
                    "tag must be 1-128 characters of letters, digits, '_', '.', '-' and not start with '.' or '-'",
                ));
            }
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_host(first) => (first.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry != DOCKER_HUB && !valid_host(&registry) {
            return Err(invalid("registry host is not a valid host[:port]"));
        }
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if path.is_empty() {
            return Err(invalid("repository name is missing"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(invalid(
                "repository must be lowercase letters, digits and separators ('.', '_', '__', '-') between '/'",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > 255 {
            return Err(invalid("repository name is longer than 255 characters"));
        }

        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if name.starts_with('[') && name.ends_with(']') {
        return name[1..name.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` from the distribution spec.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn harbor_reference() {
        let r = parse("harbor.example.com/ml-models/tinyllama:v1.0.0-gguf");
        assert_eq!(r.registry(), "harbor.example.com");
        assert_eq!(r.repository(), "ml-models/tinyllama");
        assert_eq!(r.tag(), Some("v1.0.0-gguf"));
        assert_eq!(r.manifest_reference(), "v1.0.0-gguf");
    }

    #[test]
    fn port_and_digest() {
        let hex = "a".repeat(64);
        let r = parse(&format!("127.0.0.1:5000/models/tiny:v1@sha256:{hex}"));
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        let r = parse("localhost:5000/tiny");
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.tag_or_latest(), "latest");
    }

    #[test]
    fn docker_hub_normalisation() {
        let r = parse("ubuntu");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/ubuntu");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(parse("index.docker.io/org/m:1").repository(), "org/m");
        assert_eq!(parse("org/m:1").to_string(), "docker.io/org/m:1");
    }

    #[test]
    fn scheme_prefixes_name_the_same_reference() {
        let plain = parse("harbor.example.com/ml-models/tinyllama:v1");
        for prefix in ["oci://", "tugboat://", "kit://"] {
            let r = parse(&format!(
                "{prefix}harbor.example.com/ml-models/tinyllama:v1"
            ));
            assert_eq!(r, plain);
            assert_eq!(r.to_string(), "harbor.example.com/ml-models/tinyllama:v1");
        }
        assert_eq!(parse("oci://ubuntu").repository(), "library/ubuntu");
        for bad in ["oci://", "oci://oci://h/r", "tugboat://https://h/r"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?}");
        }
        let hf = "hf://Qwen/Qwen2.5-0.5B".parse::<Reference>().unwrap_err();
        assert!(matches!(&hf, ReferenceError::Scheme { scheme, .. } if scheme == "hf"));
        assert!(hf.to_string().contains("does not fetch hf:// URIs"), "{hf}");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "UPPER/Case:tag",
            "host:5000/repo:",
            "repo@sha256:xyz",
            "repo@md5:abc",
            "https://host/repo",
            "host/repo/../x",
            "host/-repo",
            "host//repo",
            "host:99999999/repo",
            "host/repo:-bad",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}

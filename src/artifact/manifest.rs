//! OCI manifests and indexes as served, parsed strictly: sizes must be sane, digests sha256,
//! layer counts bounded. Everything here is untrusted input.

use super::ArtifactError;
use crate::digest::Digest;
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests with more layers than this are refused (real models have tens).
pub const MAX_LAYERS: usize = 4096;
/// A single blob larger than this is refused as implausible (16 TiB).
pub const MAX_BLOB_SIZE: u64 = 16 << 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    pub platform: Option<Platform>,
    pub artifact_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

pub enum Parsed {
    Manifest(Box<Manifest>),
    Index(Vec<Descriptor>),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    artifact_type: Option<String>,
}

impl RawDescriptor {
    fn validate(self, role: &str) -> Result<Descriptor, ArtifactError> {
        let digest = self.digest.parse().map_err(|e| ArtifactError::Malformed {
            detail: format!("{role}: {e}"),
        })?;
        if self.size < 0 || self.size as u64 > MAX_BLOB_SIZE {
            return Err(ArtifactError::Malformed {
                detail: format!(
                    "{role} {digest} claims {} bytes; tugboat refuses blobs outside 0..=16 TiB",
                    self.size
                ),
            });
        }
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size: self.size as u64,
            annotations: self.annotations.unwrap_or_default(),
            platform: self.platform,
            artifact_type: self.artifact_type,
        })
    }
}

/// Parses manifest or index bytes; `content_type` is the registry's header (may be absent).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, ArtifactError> {
    let raw: RawDocument = serde_json::from_slice(bytes).map_err(|e| ArtifactError::Malformed {
        detail: format!("manifest is not valid JSON: {e}"),
    })?;
    if let Some(version) = raw.schema_version {
        if version != 2 {
            return Err(ArtifactError::Malformed {
                detail: format!("schemaVersion {version} is not supported (need 2)"),
            });
        }
    }
    let media_type = raw
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()))
        .unwrap_or_default();
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || (raw.manifests.is_some() && raw.layers.is_none());
    if is_index {
        let entries = raw.manifests.unwrap_or_default();
        if entries.len() > MAX_LAYERS {
            return Err(ArtifactError::Malformed {
                detail: format!(
                    "index lists {} manifests (limit {MAX_LAYERS})",
                    entries.len()
                ),
            });
        }
        let entries = entries
            .into_iter()
            .map(|d| d.validate("index entry"))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Parsed::Index(entries));
    }
    let config = raw
        .config
        .ok_or_else(|| ArtifactError::Malformed {
            detail: "manifest has no config descriptor".into(),
        })?
        .validate("config")?;
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(ArtifactError::Malformed {
            detail: format!(
                "manifest lists {} layers (limit {MAX_LAYERS})",
                layers.len()
            ),
        });
    }
    let layers = layers
        .into_iter()
        .map(|d| d.validate("layer"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed::Manifest(Box::new(Manifest {
        media_type: if media_type.is_empty() {
            OCI_MANIFEST.to_string()
        } else {
            media_type
        },
        artifact_type: raw.artifact_type,
        config,
        layers,
        annotations: raw.annotations.unwrap_or_default(),
    })))
}

/// Picks one manifest from an index: this machine's platform when entries carry platforms,
/// otherwise (artifacts) the first entry.
pub fn select_from_index(entries: &[Descriptor]) -> Option<&Descriptor> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    entries
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| entries.iter().find(|d| d.platform.is_none()))
        .or_else(|| entries.first())
}

//! `tugboat inspect`: what an artifact is and what a pull would fetch, from the registry's
//! manifest and config alone (never a layer). Needs no cache.

use crate::artifact::{self, describe::Description, ArtifactError, Format, Parsed, Selection};
use crate::digest::Digest;
use crate::errors::{Classify, FailureKind};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use futures_util::StreamExt;

/// Config blobs larger than this are not read (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference}")]
    Artifact {
        reference: String,
        #[source]
        source: ArtifactError,
    },
    #[error(
        "{what} {expected}: the registry served bytes whose digest is {actual}; refusing them"
    )]
    Mismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    pub reference: String,
    pub digest: Digest,
    #[serde(flatten)]
    pub description: Description,
}

/// Reads the manifest (following an index to one manifest) and its config, and describes them.
pub async fn inspect(
    registry: &RegistryClient,
    reference: &Reference,
    format: Option<Format>,
    selection: &Selection,
) -> Result<Inspection, InspectError> {
    let fetched = manifest_and_config(registry, reference).await?;
    let plan = artifact::plan_selected(&fetched.manifest, format, selection).map_err(|source| {
        InspectError::Artifact {
            reference: reference.to_string(),
            source,
        }
    })?;
    let description =
        artifact::describe::describe(&fetched.manifest, fetched.config.as_deref(), &plan);
    Ok(Inspection {
        reference: reference.to_string(),
        digest: fetched.digest,
        description,
    })
}

/// A manifest as the registry serves it, verified against its digest.
pub struct Fetched {
    /// The manifest's digest (the one an index led to, when the reference named an index).
    pub digest: Digest,
    pub manifest: artifact::Manifest,
    /// The config blob's bytes; `None` when it is empty or implausibly large.
    pub config: Option<Vec<u8>>,
}

/// Reads the manifest (following an index to its first manifest) and its config blob.
pub async fn manifest_and_config(
    registry: &RegistryClient,
    reference: &Reference,
) -> Result<Fetched, InspectError> {
    let artifact_error = |source| InspectError::Artifact {
        reference: reference.to_string(),
        source,
    };
    let mut target = reference.clone();
    let mut expected = reference.digest().cloned();
    for _ in 0..2 {
        let fetched = registry.manifest(&target).await?;
        let digest = Digest::of_bytes(&fetched.bytes);
        if let Some(expected) = expected.take() {
            if expected != digest {
                return Err(InspectError::Mismatch {
                    what: "manifest",
                    expected,
                    actual: digest,
                });
            }
        }
        let parsed = artifact::manifest::parse(&fetched.bytes, fetched.media_type.as_deref())
            .map_err(artifact_error)?;
        match parsed {
            Parsed::Index(entries) => {
                let chosen = artifact::manifest::select_from_index(&entries).ok_or_else(|| {
                    artifact_error(ArtifactError::Malformed {
                        detail: "the image index lists no manifests".into(),
                    })
                })?;
                expected = Some(chosen.digest.clone());
                target = reference.with_digest(chosen.digest.clone());
            }
            Parsed::Manifest(manifest) => {
                let config = read_config(registry, reference, &manifest.config).await?;
                return Ok(Fetched {
                    digest,
                    manifest: *manifest,
                    config,
                });
            }
        }
    }
    Err(artifact_error(ArtifactError::Malformed {
        detail: "an image index points to another index; nested indexes are not followed".into(),
    }))
}

/// The config blob's bytes, verified; `None` when it is empty or implausibly large.
async fn read_config(
    registry: &RegistryClient,
    reference: &Reference,
    config: &artifact::Descriptor,
) -> Result<Option<Vec<u8>>, InspectError> {
    if config.size <= 2 || config.size > MAX_CONFIG_BYTES {
        return Ok(None);
    }
    let mut body = registry.blob(reference, &config.digest, 0).await?;
    let mut bytes = Vec::with_capacity(config.size as usize);
    while let Some(chunk) = body.stream.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() as u64 > config.size {
            break;
        }
    }
    let actual = Digest::of_bytes(&bytes);
    if actual != config.digest {
        return Err(InspectError::Mismatch {
            what: "config",
            expected: config.digest.clone(),
            actual,
        });
    }
    Ok(Some(bytes))
}

impl Classify for InspectError {
    fn kind(&self) -> FailureKind {
        match self {
            InspectError::Registry(e) => e.kind(),
            InspectError::Artifact { .. } => FailureKind::Input,
            InspectError::Mismatch { .. } => FailureKind::Integrity,
        }
    }
}

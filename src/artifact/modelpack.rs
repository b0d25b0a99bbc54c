//! CNCF ModelPack artifacts (model-spec, as `modctl` and modelpack-client build them): artifactType
//! `application/vnd.cncf.model.manifest.v1+json`, config `application/vnd.cncf.model.config.v1+json`,
//! layers `application/vnd.cncf.model.<kind>.v1.<raw|tar|tar+gzip|tar+zstd>` whose path in the
//! model is the `org.cncf.model.filepath` annotation. Raw layers are the file itself; archives
//! hold that path (a file or a folder) relative to the model root.
//! The same under the pre-2025 namespace (`vnd.cnai.model.*`, `org.cnai.model.filepath`:
//! modctl 0.1.x, what registries still hold), including RamaLama's `vnd.cnai.model.layer.v1.tar`,
//! and Docker Model Runner's `weight.v1.gguf` / `weight.v1.safetensors` (raw files).
//! A ModelPack `kit pack` built carries its Kitfile in a manifest annotation; it is written as
//! `Kitfile`, as `kit unpack` does.

use super::manifest::Manifest;
use super::{annotated_path, kitfile, oras, Action, ArtifactError, Kind, ManifestKitfile};
use super::{PlanEntry, Unpack};
use crate::safe_path::SafePath;

pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
pub const LAYER_PREFIX: &str = "application/vnd.cncf.model.";
pub const FILEPATH: &str = "org.cncf.model.filepath";

/// The pre-2025 namespace (modctl 0.1.x, RamaLama).
pub const CNAI_ARTIFACT_TYPE: &str = "application/vnd.cnai.model.manifest.v1+json";
pub const CNAI_CONFIG_MEDIA_TYPE: &str = "application/vnd.cnai.model.config.v1+json";
pub const CNAI_LAYER_PREFIX: &str = "application/vnd.cnai.model.";
pub const CNAI_FILEPATH: &str = "org.cnai.model.filepath";

/// The manifest annotation in which `kit pack` (ModelPack format) stores the Kitfile as JSON.
pub const KITFILE_ANNOTATION: &str = "ml.kitops.modelkit.kitfile";

/// The Kitfile a ModelPack manifest carries, if `kit pack` built it.
pub fn manifest_kitfile(manifest: &Manifest) -> Option<ManifestKitfile> {
    let json = manifest.annotations.get(KITFILE_ANNOTATION)?;
    (!json.trim().is_empty()).then(|| ManifestKitfile {
        path: SafePath::new(kitfile::FILE_NAME).expect("constant is safe"),
        json: json.clone(),
    })
}

/// Whether `media_type` is a ModelPack config in either namespace.
pub fn is_config(media_type: &str) -> bool {
    media_type == CONFIG_MEDIA_TYPE || media_type == CNAI_CONFIG_MEDIA_TYPE
}

pub fn detect(manifest: &Manifest) -> bool {
    matches!(
        manifest.artifact_type.as_deref(),
        Some(ARTIFACT_TYPE | CNAI_ARTIFACT_TYPE)
    ) || is_config(&manifest.config.media_type)
        || manifest
            .layers
            .iter()
            .any(|l| parse_media_type(&l.media_type).is_some())
}

/// `(kind, packing)` of a ModelPack layer media type, e.g. `weight.config`, `tar+gzip`.
pub fn parse_media_type(media_type: &str) -> Option<(Kind, &str)> {
    let rest = media_type
        .strip_prefix(LAYER_PREFIX)
        .or_else(|| media_type.strip_prefix(CNAI_LAYER_PREFIX))?;
    let (kind, packing) = rest.rsplit_once(".v1.")?;
    let kind = match kind {
        // RamaLama's one kind of layer.
        "weight" | "layer" => Kind::Weights,
        "weight.config" => Kind::Config,
        "doc" => Kind::Docs,
        "code" => Kind::Code,
        "dataset" => Kind::Dataset,
        _ => return None,
    };
    match packing {
        "raw" | "tar" | "tar+gzip" | "tar+zstd" => Some((kind, packing)),
        // Docker Model Runner's weight types of 2025 (`weight.v1.gguf`): the file itself.
        "gguf" | "safetensors" if kind == Kind::Weights => Some((kind, "raw")),
        _ => None,
    }
}

pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let mut entries = Vec::new();
    for layer in &manifest.layers {
        let Some((kind, packing)) = parse_media_type(&layer.media_type) else {
            return Err(ArtifactError::UnknownLayer {
                format: "modelpack",
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        };
        let path = match [FILEPATH, CNAI_FILEPATH, oras::TITLE]
            .into_iter()
            .find_map(|key| layer.annotations.get(key).map(|value| (key, value)))
        {
            Some((key, value)) => Some(annotated_path(key, value)?),
            None => None,
        };
        let action = if packing == "raw" {
            let path = path.ok_or_else(|| ArtifactError::Malformed {
                detail: format!(
                    "raw layer {} has no {FILEPATH} annotation: its file has no name",
                    layer.digest
                ),
            })?;
            Action::File { path }
        } else {
            Action::Unpack(Unpack {
                within: path,
                overlay: false,
                tar_digest: None,
            })
        };
        entries.push(PlanEntry {
            blob: layer.clone(),
            action,
            kind: Some(kind),
        });
    }
    Ok(entries)
}

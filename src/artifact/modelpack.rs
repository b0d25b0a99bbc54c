//! CNCF ModelPack artifacts (model-spec, as `modctl` builds them): artifactType
//! `application/vnd.cncf.model.manifest.v1+json`, config `application/vnd.cncf.model.config.v1+json`,
//! layers `application/vnd.cncf.model.<kind>.v1.<raw|tar|tar+gzip|tar+zstd>` whose path in the
//! model is the `org.cncf.model.filepath` annotation. Raw layers are the file itself; archives
//! hold that path (a file or a folder) relative to the model root.

use super::manifest::Manifest;
use super::{annotated_path, oras, Action, ArtifactError, Kind, PlanEntry, Unpack};

pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
pub const LAYER_PREFIX: &str = "application/vnd.cncf.model.";
pub const FILEPATH: &str = "org.cncf.model.filepath";

pub fn detect(manifest: &Manifest) -> bool {
    manifest.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
        || manifest.config.media_type == CONFIG_MEDIA_TYPE
        || manifest
            .layers
            .iter()
            .any(|l| l.media_type.starts_with(LAYER_PREFIX))
}

/// `(kind, packing)` of a ModelPack layer media type, e.g. `weight.config`, `tar+gzip`.
pub fn parse_media_type(media_type: &str) -> Option<(Kind, &str)> {
    let rest = media_type.strip_prefix(LAYER_PREFIX)?;
    let (kind, packing) = rest.rsplit_once(".v1.")?;
    let kind = match kind {
        "weight" => Kind::Weights,
        "weight.config" => Kind::Config,
        "doc" => Kind::Docs,
        "code" => Kind::Code,
        "dataset" => Kind::Dataset,
        _ => return None,
    };
    matches!(packing, "raw" | "tar" | "tar+gzip" | "tar+zstd").then_some((kind, packing))
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
        let path = match (
            layer.annotations.get(FILEPATH),
            layer.annotations.get(oras::TITLE),
        ) {
            (Some(p), _) => Some(annotated_path(FILEPATH, p)?),
            (None, Some(t)) => Some(annotated_path(oras::TITLE, t)?),
            (None, None) => None,
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

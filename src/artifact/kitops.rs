//! KitOps ModelKits (`kit pack` / `kit push`): config `application/vnd.kitops.modelkit.config.v1+json`
//! (the Kitfile as JSON), layers `application/vnd.kitops.modelkit.<kind>.v1.tar[+gzip|+zstd]` whose
//! entries are paths relative to the Kitfile's folder. `kit unpack` writes the Kitfile beside
//! them; so does tugboat (JSON is YAML, so it reads as a Kitfile).

use super::manifest::Manifest;
use super::{Action, ArtifactError, Kind, PlanEntry, Unpack};
use crate::safe_path::SafePath;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kitops.modelkit.config.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.kitops.modelkit.manifest.v1+json";
pub const LAYER_PREFIX: &str = "application/vnd.kitops.modelkit.";
pub const KITFILE: &str = "Kitfile";

pub fn detect(manifest: &Manifest) -> bool {
    manifest.config.media_type == CONFIG_MEDIA_TYPE
        || manifest.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
        || manifest
            .layers
            .iter()
            .any(|l| l.media_type.starts_with(LAYER_PREFIX))
}

pub fn parse_media_type(media_type: &str) -> Option<Kind> {
    let rest = media_type.strip_prefix(LAYER_PREFIX)?;
    let (kind, packing) = rest.split_once(".v1.")?;
    if !matches!(packing, "tar" | "tar+gzip" | "tar+zstd") {
        return None;
    }
    Some(match kind {
        "model" => Kind::Weights,
        "modelpart" => Kind::Modelpart,
        "dataset" => Kind::Dataset,
        "code" => Kind::Code,
        "docs" => Kind::Docs,
        "prompts" => Kind::Prompts,
        _ => return None,
    })
}

pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let mut entries = Vec::new();
    if manifest.config.media_type == CONFIG_MEDIA_TYPE {
        entries.push(PlanEntry {
            blob: manifest.config.clone(),
            action: Action::File {
                path: SafePath::new(KITFILE).expect("constant is safe"),
            },
            kind: Some(Kind::Config),
        });
    }
    for layer in &manifest.layers {
        let Some(kind) = parse_media_type(&layer.media_type) else {
            return Err(ArtifactError::UnknownLayer {
                format: "kitops",
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        };
        entries.push(PlanEntry {
            blob: layer.clone(),
            action: Action::Unpack(Unpack::default()),
            kind: Some(kind),
        });
    }
    Ok(entries)
}

//! ORAS file artifacts (`oras push REF file:type ...`): one layer per file, named by the
//! `org.opencontainers.image.title` annotation. Layers without a title are not files and are
//! skipped, as `oras pull` does.

use super::manifest::Manifest;
use super::{Action, ArtifactError, PlanEntry};
use crate::safe_path::SafePath;

pub const TITLE: &str = "org.opencontainers.image.title";
pub const UNPACK: &str = "io.deis.oras.content.unpack";

/// True when the manifest looks like an ORAS artifact (titled layers).
pub fn detect(manifest: &Manifest) -> bool {
    manifest
        .layers
        .iter()
        .any(|l| l.annotations.contains_key(TITLE))
}

pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let mut entries = Vec::new();
    for layer in &manifest.layers {
        let Some(title) = layer.annotations.get(TITLE) else {
            tracing::debug!(digest = %layer.digest, "layer without a title skipped");
            continue;
        };
        let path = SafePath::new(title).map_err(|e| ArtifactError::UnsafeName {
            annotation: TITLE,
            source: e,
        })?;
        let action = if layer.annotations.get(UNPACK).map(String::as_str) == Some("true") {
            Action::Unpack { under: path }
        } else {
            Action::File { path }
        };
        entries.push(PlanEntry {
            blob: layer.clone(),
            action,
        });
    }
    Ok(entries)
}

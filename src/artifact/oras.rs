//! ORAS artifacts (`oras push REF file[:type] dir/ ...`): one layer per file, named by the
//! `org.opencontainers.image.title` annotation. Directories are tar+gzip layers whose entries
//! all sit under `title/`, marked `io.deis.oras.content.unpack: "true"` by oras-go (oras-py marks
//! them by the media type alone). Layers without a title are not files and are skipped, as
//! `oras pull` does.

use super::manifest::Manifest;
use super::{annotated_path, Action, ArtifactError, PlanEntry, Unpack};

pub const TITLE: &str = "org.opencontainers.image.title";
pub const UNPACK: &str = "io.deis.oras.content.unpack";
/// sha256 of the uncompressed tar of a directory layer.
pub const TAR_DIGEST: &str = "io.deis.oras.content.digest";
/// The media type both ORAS clients give directory layers.
pub const DIRECTORY_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

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
        let path = annotated_path(TITLE, title)?;
        let unpack = match layer.annotations.get(UNPACK).map(String::as_str) {
            Some(flag) => flag == "true",
            None => layer.media_type == DIRECTORY_MEDIA_TYPE,
        };
        let action = if unpack {
            Action::Unpack(Unpack {
                within: Some(path),
                overlay: false,
                tar_digest: layer
                    .annotations
                    .get(TAR_DIGEST)
                    .and_then(|d| d.parse().ok()),
            })
        } else {
            Action::File { path }
        };
        entries.push(PlanEntry {
            blob: layer.clone(),
            action,
            kind: None,
        });
    }
    Ok(entries)
}

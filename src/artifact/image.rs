//! OCI and Docker images whose filesystem holds the model (KServe Modelcars keep it in
//! `/models`): every layer is a tar (plain, gzip, zstd) applied in order with overlay rules
//! (whiteouts delete, later layers replace). `--subpath /models` takes one folder as the root.

use super::manifest::Manifest;
use super::{Action, ArtifactError, PlanEntry, Unpack};

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer media types of OCI and Docker images.
const LAYER_PREFIXES: [&str; 3] = [
    "application/vnd.oci.image.layer.",
    "application/vnd.docker.image.rootfs.",
    "application/vnd.oci.image.layer.nondistributable.",
];

/// An image: an image config, or layers that are all image layers.
pub fn detect(manifest: &Manifest) -> bool {
    let config = manifest.config.media_type.as_str();
    config == OCI_CONFIG
        || config == DOCKER_CONFIG
        || (!manifest.layers.is_empty()
            && manifest
                .layers
                .iter()
                .all(|l| LAYER_PREFIXES.iter().any(|p| l.media_type.starts_with(p))))
}

/// Layers of an image; with `--format image` any layer is tried as a tar.
pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    Ok(manifest
        .layers
        .iter()
        .map(|layer| PlanEntry {
            blob: layer.clone(),
            action: Action::Unpack(Unpack {
                within: None,
                overlay: true,
                tar_digest: None,
            }),
            kind: None,
        })
        .collect())
}

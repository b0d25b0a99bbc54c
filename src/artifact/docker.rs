//! Docker model artifacts (`docker model package` / `docker model push`, Docker Hub's `ai/*`):
//! config `application/vnd.docker.ai.model.config.v0.1+json` (one layer per file kind) or
//! `...v0.2+json` (one layer per file, named by a filepath annotation), layers
//! `application/vnd.docker.ai.{gguf.v3, safetensors, dduf, mmproj, license, chat.template.jinja}`
//! placed as files, and `application/vnd.docker.ai.{vllm.config.tar, dir.tar}` unpacked.
//! A layer without a name gets the one Docker Model Runner's bundle gives its kind:
//! `model.gguf` (shards `model-00001-of-00003.gguf`), `model.safetensors`, `model.mmproj`,
//! `template.jinja`, `LICENSE`.

use super::manifest::Manifest;
use super::{annotated_path, modelpack, oras, Action, ArtifactError, Kind, PlanEntry, Unpack};
use crate::safe_path::SafePath;

pub const CONFIG_PREFIX: &str = "application/vnd.docker.ai.model.config.";
pub const LAYER_PREFIX: &str = "application/vnd.docker.ai.";

pub fn detect(manifest: &Manifest) -> bool {
    manifest.config.media_type.starts_with(CONFIG_PREFIX)
        || manifest
            .layers
            .iter()
            .any(|l| l.media_type.starts_with(LAYER_PREFIX))
}

/// What a Docker model layer is: a file with the default name and extension of its kind, or
/// an archive to unpack.
enum Layer {
    File {
        stem: &'static str,
        extension: &'static str,
        kind: Kind,
    },
    Archive,
}

fn classify(media_type: &str) -> Option<Layer> {
    let file = |stem, extension, kind| {
        Some(Layer::File {
            stem,
            extension,
            kind,
        })
    };
    match media_type.strip_prefix(LAYER_PREFIX)? {
        "gguf.v3" => file("model", "gguf", Kind::Weights),
        "safetensors" => file("model", "safetensors", Kind::Weights),
        "dduf" => file("model", "dduf", Kind::Weights),
        "mmproj" => file("model", "mmproj", Kind::Modelpart),
        "chat.template.jinja" => file("template", "jinja", Kind::Config),
        "license" => file("LICENSE", "", Kind::Docs),
        "vllm.config.tar" | "dir.tar" => Some(Layer::Archive),
        _ => None,
    }
}

pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let mut entries = Vec::new();
    for (index, layer) in manifest.layers.iter().enumerate() {
        let Some(class) = classify(&layer.media_type) else {
            return Err(ArtifactError::UnknownLayer {
                format: "docker",
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        };
        let named = [modelpack::FILEPATH, modelpack::CNAI_FILEPATH, oras::TITLE]
            .into_iter()
            .find_map(|key| layer.annotations.get(key).map(|value| (key, value)));
        let (action, kind) = match class {
            Layer::Archive => (
                Action::Unpack(Unpack {
                    within: None,
                    overlay: false,
                    tar_digest: None,
                }),
                Some(Kind::Config),
            ),
            Layer::File {
                stem,
                extension,
                kind,
            } => {
                let path = match named {
                    Some((key, value)) => annotated_path(key, value)?,
                    None => default_name(manifest, index, stem, extension),
                };
                (Action::File { path }, Some(kind))
            }
        };
        entries.push(PlanEntry {
            blob: layer.clone(),
            action,
            kind,
        });
    }
    Ok(entries)
}

/// `stem.extension`, or `stem-0000i-of-0000n.extension` when the manifest has several unnamed
/// layers of this media type (sharded weights), or `stem-i` for several extension-less files.
fn default_name(manifest: &Manifest, index: usize, stem: &str, extension: &str) -> SafePath {
    let media_type = &manifest.layers[index].media_type;
    let siblings: Vec<usize> = manifest
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| &l.media_type == media_type)
        .map(|(i, _)| i)
        .collect();
    let position = siblings.iter().position(|&i| i == index).unwrap_or(0) + 1;
    let name = match (siblings.len(), extension) {
        (1, "") => stem.to_string(),
        (1, ext) => format!("{stem}.{ext}"),
        (_, "") => format!("{stem}-{position}"),
        (n, ext) => format!("{stem}-{position:05}-of-{n:05}.{ext}"),
    };
    SafePath::new(&name).expect("generated names are safe")
}

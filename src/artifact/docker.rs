//! Docker model artifacts (`docker model package` / `docker model push`, Docker Hub's `ai/*`),
//! laid out as Docker Model Runner's bundle lays out its `model/` folder:
//! - config `application/vnd.docker.ai.model.config.v0.2+json` (`--safetensors-dir`): one layer
//!   per file, each placed at its `org.cncf.model.filepath` annotation whatever its media type;
//!   a layer without one is left out, as the runner leaves it out.
//! - config `...v0.1+json` (`--gguf`, `--dduf`, older pushes), named by media type alone: GGUF
//!   weights (`vnd.docker.ai.gguf.v3`) become `model.gguf`, or `model-00001-of-0000N.gguf` in
//!   layer order when sharded (annotations are not read); safetensors take their annotated
//!   paths when any has one, else `model.safetensors` / `model-0000i-of-0000N.safetensors`;
//!   DDUF `<digest hex>.dduf`. Only the first weight format present (GGUF, safetensors, DDUF)
//!   is placed. One `mmproj` layer becomes `model.mmproj`, one chat template `template.jinja`;
//!   the `vllm.config.tar` and `dir.tar` archives unpack at the root; `model.file` layers go to
//!   their annotated paths. License layers are not placed (the runner does not unpack them).

use super::manifest::{Descriptor, Manifest};
use super::{annotated_path, modelpack, Action, ArtifactError, Kind, PlanEntry, Unpack};
use crate::safe_path::SafePath;

pub const CONFIG_PREFIX: &str = "application/vnd.docker.ai.model.config.";
/// The layer-per-file config: files named by their filepath annotations.
pub const CONFIG_V02: &str = "application/vnd.docker.ai.model.config.v0.2+json";
pub const LAYER_PREFIX: &str = "application/vnd.docker.ai.";

const GGUF: &str = "application/vnd.docker.ai.gguf.v3";
const SAFETENSORS: &str = "application/vnd.docker.ai.safetensors";
const DDUF: &str = "application/vnd.docker.ai.dduf";
const MMPROJ: &str = "application/vnd.docker.ai.mmproj";
const CHAT_TEMPLATE: &str = "application/vnd.docker.ai.chat.template.jinja";
const LICENSE: &str = "application/vnd.docker.ai.license";
const MODEL_FILE: &str = "application/vnd.docker.ai.model.file";
const VLLM_CONFIG_TAR: &str = "application/vnd.docker.ai.vllm.config.tar";
const DIR_TAR: &str = "application/vnd.docker.ai.dir.tar";
/// Weight types Docker Model Runner once wrote under the ModelPack namespace.
const CNCF_GGUF: &str = "application/vnd.cncf.model.weight.v1.gguf";
const CNCF_SAFETENSORS: &str = "application/vnd.cncf.model.weight.v1.safetensors";

pub fn detect(manifest: &Manifest) -> bool {
    manifest.config.media_type.starts_with(CONFIG_PREFIX)
        || manifest
            .layers
            .iter()
            .any(|l| l.media_type.starts_with(LAYER_PREFIX))
}

pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    if manifest.config.media_type == CONFIG_V02 {
        plan_by_annotation(manifest)
    } else {
        plan_by_media_type(manifest)
    }
}

/// What a layer holds, by media type (for `--only`).
fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        GGUF | SAFETENSORS | DDUF | CNCF_GGUF | CNCF_SAFETENSORS => Some(Kind::Weights),
        MMPROJ => Some(Kind::Modelpart),
        CHAT_TEMPLATE | MODEL_FILE | VLLM_CONFIG_TAR | DIR_TAR => Some(Kind::Config),
        LICENSE => Some(Kind::Docs),
        _ => None,
    }
}

fn filepath(layer: &Descriptor) -> Option<&String> {
    layer
        .annotations
        .get(modelpack::FILEPATH)
        .filter(|p| !p.is_empty())
}

fn file(layer: &Descriptor, path: SafePath) -> PlanEntry {
    PlanEntry {
        blob: layer.clone(),
        action: Action::File { path },
        kind: kind_of(&layer.media_type),
    }
}

fn archive(layer: &Descriptor) -> PlanEntry {
    PlanEntry {
        blob: layer.clone(),
        action: Action::Unpack(Unpack::default()),
        kind: Some(Kind::Config),
    }
}

fn name(text: &str) -> SafePath {
    SafePath::new(text).expect("generated names are safe")
}

/// v0.2: every annotated layer is the file its annotation names (a layer repeated under the
/// same name once); unannotated layers are left out.
fn plan_by_annotation(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let mut entries: Vec<PlanEntry> = Vec::new();
    for layer in &manifest.layers {
        let Some(path) = filepath(layer) else {
            continue;
        };
        let path = annotated_path(modelpack::FILEPATH, path)?;
        let repeated = entries
            .iter()
            .any(|e| e.declared_path() == Some(&path) && e.blob.digest == layer.digest);
        if !repeated {
            entries.push(file(layer, path));
        }
    }
    Ok(entries)
}

/// v0.1: names come from media types (see the module comment).
fn plan_by_media_type(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let of_type = |types: &[&str]| -> Vec<&Descriptor> {
        manifest
            .layers
            .iter()
            .filter(|l| types.contains(&l.media_type.as_str()))
            .collect()
    };
    let gguf = of_type(&[GGUF, CNCF_GGUF]);
    let safetensors = of_type(&[SAFETENSORS, CNCF_SAFETENSORS]);
    let dduf = of_type(&[DDUF]);
    let mut entries = if !gguf.is_empty() {
        sharded(&gguf, "model", "gguf", false)?
    } else if !safetensors.is_empty() {
        let annotated = safetensors.iter().any(|l| filepath(l).is_some());
        sharded(&safetensors, "model", "safetensors", annotated)?
    } else if let Some(first) = dduf.first() {
        vec![file(first, name(&format!("{}.dduf", first.digest.hex())))]
    } else {
        return Err(ArtifactError::Malformed {
            detail: format!(
                "this Docker model artifact has no weights Docker Model Runner can run (a {GGUF}, \
                 {SAFETENSORS} or {DDUF} layer)"
            ),
        });
    };
    for (media_type, path) in [(MMPROJ, "model.mmproj"), (CHAT_TEMPLATE, "template.jinja")] {
        if let Some(layer) = at_most_one(&of_type(&[media_type]), media_type)? {
            entries.push(file(layer, name(path)));
        }
    }
    if let Some(layer) = at_most_one(&of_type(&[VLLM_CONFIG_TAR]), VLLM_CONFIG_TAR)? {
        entries.push(archive(layer));
    }
    entries.extend(of_type(&[DIR_TAR]).into_iter().map(archive));
    for layer in of_type(&[MODEL_FILE]) {
        if let Some(path) = filepath(layer) {
            entries.push(file(layer, annotated_path(modelpack::FILEPATH, path)?));
        }
    }
    Ok(entries)
}

/// `stem.extension` for one layer, `stem-0000i-of-0000n.extension` for several, in layer
/// order; with `annotated`, a layer's filepath annotation takes precedence.
fn sharded(
    layers: &[&Descriptor],
    stem: &str,
    extension: &str,
    annotated: bool,
) -> Result<Vec<PlanEntry>, ArtifactError> {
    let count = layers.len();
    let mut entries = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let path = match filepath(layer).filter(|_| annotated) {
            Some(path) => annotated_path(modelpack::FILEPATH, path)?,
            None if count == 1 => name(&format!("{stem}.{extension}")),
            None => name(&format!(
                "{stem}-{:05}-of-{count:05}.{extension}",
                index + 1
            )),
        };
        entries.push(file(layer, path));
    }
    Ok(entries)
}

/// The one layer of `media_type`, if any; the runner refuses a model with several.
fn at_most_one<'m>(
    layers: &[&'m Descriptor],
    media_type: &str,
) -> Result<Option<&'m Descriptor>, ArtifactError> {
    match layers {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        several => Err(ArtifactError::Malformed {
            detail: format!(
                "the artifact has {} {media_type} layers; Docker Model Runner takes exactly one",
                several.len()
            ),
        }),
    }
}

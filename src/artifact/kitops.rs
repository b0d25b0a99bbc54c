//! KitOps ModelKits (`kit pack` / `kit push`): config `application/vnd.kitops.modelkit.config.v1+json`
//! (the Kitfile as JSON), layers `application/vnd.kitops.modelkit.<kind>.v1.<tar|raw>[+gzip|+zstd]`:
//! tar entries are paths relative to the Kitfile's folder; a raw layer is one file named by its
//! `org.cncf.model.filepath` annotation (as `kit unpack` reads it). `kit unpack` writes the
//! Kitfile beside them, as YAML; so does tugboat (see `kitfile`).
//! A ModelKit index (`kit index`, artifactType `application/vnd.kitops.modelkit.index.v1+json`)
//! lists variants of one model (q4_0, q8_0...): `variants` reads them, `choose` picks one.

use super::manifest::{Descriptor, Manifest};
use super::{annotated_path, kitfile, modelpack, Action, ArtifactError, Kind, PlanEntry, Unpack};
use crate::safe_path::SafePath;
use std::collections::BTreeMap;

pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.kitops.modelkit.index.v1+json";
/// The tag a ModelKit had when `kit index add` put it in the index.
pub const ORIGINAL_TAG: &str = "ml.kitops.modelkit.original-tag";
/// The OCI annotation naming an index entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kitops.modelkit.config.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.kitops.modelkit.manifest.v1+json";
pub const LAYER_PREFIX: &str = "application/vnd.kitops.modelkit.";

pub fn detect(manifest: &Manifest) -> bool {
    manifest.config.media_type == CONFIG_MEDIA_TYPE
        || manifest.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
        || manifest
            .layers
            .iter()
            .any(|l| l.media_type.starts_with(LAYER_PREFIX))
}

/// `(kind, packing)` of a KitOps layer media type; packing is `tar`, `tar+gzip`, `tar+zstd` or `raw`.
pub fn parse_media_type(media_type: &str) -> Option<(Kind, &str)> {
    let rest = media_type.strip_prefix(LAYER_PREFIX)?;
    let (kind, packing) = rest.split_once(".v1.")?;
    if !matches!(
        packing,
        "tar" | "tar+gzip" | "tar+gzip-fastest" | "tar+zstd" | "raw"
    ) {
        return None;
    }
    let kind = match kind {
        "model" => Kind::Weights,
        "modelpart" => Kind::Modelpart,
        "dataset" => Kind::Dataset,
        // MCP bundles ship as code beside the model.
        "code" | "mcpb" => Kind::Code,
        "docs" => Kind::Docs,
        "prompts" => Kind::Prompts,
        _ => return None,
    };
    Some((kind, packing))
}

pub fn plan(manifest: &Manifest) -> Result<Vec<PlanEntry>, ArtifactError> {
    let mut entries = Vec::new();
    if manifest.config.media_type == CONFIG_MEDIA_TYPE {
        entries.push(PlanEntry {
            blob: manifest.config.clone(),
            action: Action::Kitfile {
                path: SafePath::new(kitfile::FILE_NAME).expect("constant is safe"),
            },
            kind: Some(Kind::Config),
        });
    }
    for layer in &manifest.layers {
        let Some((kind, packing)) = parse_media_type(&layer.media_type) else {
            return Err(ArtifactError::UnknownLayer {
                format: "kitops",
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        };
        let action = if packing == "raw" {
            let path = layer.annotations.get(modelpack::FILEPATH).ok_or_else(|| {
                ArtifactError::Malformed {
                    detail: format!(
                        "raw layer {} has no {} annotation: its file has no name",
                        layer.digest,
                        modelpack::FILEPATH
                    ),
                }
            })?;
            Action::File {
                path: annotated_path(modelpack::FILEPATH, path)?,
            }
        } else {
            Action::Unpack(Unpack::default())
        };
        entries.push(PlanEntry {
            blob: layer.clone(),
            action,
            kind: Some(kind),
        });
    }
    Ok(entries)
}

/// One ModelKit an index lists.
#[derive(Clone, Debug)]
pub struct Variant {
    pub manifest: Descriptor,
    /// The tag it was added by (`kit index add ... repo:q4_0`), if any.
    pub tag: Option<String>,
    /// `kit index add -l key=value` labels (JSON values; strings shown without quotes).
    pub labels: BTreeMap<String, String>,
}

impl Variant {
    /// How an error message names it: `q4_0 (quantization=q4_0)`.
    pub fn describe(&self) -> String {
        let name = self
            .tag
            .clone()
            .unwrap_or_else(|| self.manifest.digest.to_string());
        if self.labels.is_empty() {
            return name;
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{name} ({})", labels.join(", "))
    }

    /// `name` is its tag, `key=value` one of its labels, or the value of one of its labels.
    fn answers_to(&self, name: &str) -> bool {
        if self.tag.as_deref() == Some(name) {
            return true;
        }
        if let Some((key, value)) = name.split_once('=') {
            return self.labels.get(key).is_some_and(|v| v == value);
        }
        self.labels.values().any(|v| v == name)
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    artifact_type: Option<String>,
    #[serde(default)]
    manifests: Vec<RawEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    model_metadata: BTreeMap<String, serde_json::Value>,
}

/// The variants of a ModelKit index; `None` when `bytes` is not one. `entries` are the index's
/// validated descriptors (from `manifest::parse`).
pub fn variants(bytes: &[u8], entries: &[Descriptor]) -> Option<Vec<Variant>> {
    let raw: RawIndex = serde_json::from_slice(bytes).ok()?;
    if raw.artifact_type.as_deref() != Some(INDEX_ARTIFACT_TYPE) {
        return None;
    }
    let variants = raw
        .manifests
        .into_iter()
        .filter_map(|entry| {
            let manifest = entries
                .iter()
                .find(|d| d.digest.to_string() == entry.digest)?
                .clone();
            let tag = entry
                .annotations
                .get(ORIGINAL_TAG)
                .or_else(|| entry.annotations.get(REF_NAME))
                .cloned();
            let labels = entry
                .model_metadata
                .into_iter()
                .map(|(k, v)| {
                    let shown = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, shown)
                })
                .collect();
            Some(Variant {
                manifest,
                tag,
                labels,
            })
        })
        .collect();
    Some(variants)
}

/// The variant `wanted` names; an index of one variant needs no name.
pub fn choose<'v>(
    variants: &'v [Variant],
    wanted: Option<&str>,
) -> Result<&'v Variant, ArtifactError> {
    let listing = || {
        variants
            .iter()
            .map(Variant::describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    match wanted {
        None if variants.len() == 1 => Ok(&variants[0]),
        None => Err(ArtifactError::VariantNeeded {
            variants: listing(),
        }),
        Some(name) => {
            let matching: Vec<&Variant> = variants.iter().filter(|v| v.answers_to(name)).collect();
            match matching.as_slice() {
                [one] => Ok(one),
                [] => Err(ArtifactError::NoSuchVariant {
                    wanted: name.to_string(),
                    variants: listing(),
                }),
                _ => Err(ArtifactError::AmbiguousVariant {
                    wanted: name.to_string(),
                    variants: matching
                        .iter()
                        .map(|v| v.describe())
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
            }
        }
    }
}

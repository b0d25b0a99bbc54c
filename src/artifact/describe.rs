//! What `tugboat inspect` reports about an artifact, from its manifest and config alone:
//! format, model metadata (CNAI annotations, the ModelPack config, the Kitfile), every layer
//! with its size and place, and what a pull with the same selection would fetch.

use super::manifest::Manifest;
use super::{kitops, modelpack, Action, Plan, PlanEntry};
use std::collections::BTreeMap;

/// CNAI annotation keys shown to users, and the name each is reported under.
pub const CNAI: [(&str, &str); 6] = [
    ("org.cnai.model.name", "name"),
    ("org.cnai.model.family", "family"),
    ("org.cnai.model.format", "format"),
    ("org.cnai.model.architecture", "architecture"),
    ("org.cnai.model.param.size", "param_size"),
    ("org.cnai.model.quantization", "quantization"),
];

#[derive(Clone, Debug, serde::Serialize)]
pub struct Description {
    pub format: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub config_media_type: String,
    /// name, family, format, architecture, param_size, quantization, version, precision...
    pub metadata: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub layers: Vec<LayerDescription>,
    /// Blobs a pull with this selection downloads, and their bytes.
    pub fetch_layers: usize,
    pub fetch_bytes: u64,
    pub skip_layers: usize,
    pub skip_bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerDescription {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The file's path, or the folder an archive declares; `None` for archives unpacked at the root.
    pub path: Option<String>,
    /// `file` (placed as is) or `unpack` (a tar archive).
    pub action: &'static str,
    pub kind: Option<&'static str>,
    /// Whether a pull with this selection downloads it.
    pub fetch: bool,
}

fn layer(entry: &PlanEntry, fetch: bool) -> LayerDescription {
    LayerDescription {
        digest: entry.blob.digest.to_string(),
        media_type: entry.blob.media_type.clone(),
        size: entry.blob.size,
        path: entry.declared_path().map(|p| p.to_string()),
        action: match entry.action {
            Action::File { .. } => "file",
            Action::Kitfile { .. } => "kitfile",
            Action::Unpack(_) => "unpack",
        },
        kind: entry.kind.map(|k| k.name()),
        fetch,
    }
}

/// Builds the description; `config` is the config blob's bytes when it was read.
pub fn describe(manifest: &Manifest, config: Option<&[u8]>, plan: &Plan) -> Description {
    let mut metadata = BTreeMap::new();
    for (key, name) in CNAI {
        if let Some(value) = manifest.annotations.get(key) {
            metadata.insert(name.to_string(), value.clone());
        }
    }
    if let Some(config) = config.and_then(|c| serde_json::from_slice::<serde_json::Value>(c).ok()) {
        let fields: &[(&str, &str)] = match manifest.config.media_type.as_str() {
            t if modelpack::is_config(t) => &[
                ("/descriptor/name", "name"),
                ("/descriptor/family", "family"),
                ("/descriptor/version", "version"),
                ("/config/format", "format"),
                ("/config/architecture", "architecture"),
                ("/config/paramSize", "param_size"),
                ("/config/precision", "precision"),
                ("/config/quantization", "quantization"),
            ],
            kitops::CONFIG_MEDIA_TYPE => &[
                ("/package/name", "name"),
                ("/package/version", "version"),
                ("/package/description", "description"),
                ("/model/name", "model"),
                ("/model/framework", "format"),
                ("/model/format", "format"),
            ],
            _ => &[],
        };
        for (pointer, name) in fields {
            let value = match config.pointer(pointer) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(v @ serde_json::Value::Number(_)) => v.to_string(),
                _ => continue,
            };
            metadata.entry(name.to_string()).or_insert(value);
        }
    }
    let mut layers: Vec<LayerDescription> = plan.entries.iter().map(|e| layer(e, true)).collect();
    layers.extend(plan.skipped.iter().map(|e| layer(e, false)));
    let skip_bytes = plan.skipped.iter().map(|e| e.blob.size).sum();
    Description {
        format: plan.format.name().to_string(),
        media_type: manifest.media_type.clone(),
        artifact_type: manifest.artifact_type.clone(),
        config_media_type: manifest.config.media_type.clone(),
        metadata,
        annotations: manifest.annotations.clone(),
        fetch_layers: plan.entries.len(),
        fetch_bytes: plan.total_bytes(),
        skip_layers: plan.skipped.len(),
        skip_bytes,
        layers,
    }
}

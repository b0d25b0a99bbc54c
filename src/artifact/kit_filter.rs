//! `kit unpack --filter` (and the `UNPACK_FILTER` of KitOps' init container), read as kit reads
//! it: `TYPES[:NAMES]`, TYPES a comma-separated list of `kitfile`, `model`, `datasets`, `code`,
//! `docs`; NAMES an optional comma-separated list matched exactly against the Kitfile entries'
//! `name` or `path` (code and docs have no name: path only). `model` also covers model parts.
//! A layer is taken when any of several filters takes it.
//!
//! Types alone map onto layer kinds (`--only`), so they need nothing but the manifest. Names
//! need the Kitfile: [`select_layers`] pairs the manifest's layers with its entries as kit does
//! (in order within each type, checked against `layerInfo.digest` where the Kitfile records
//! it) and answers with the digests of the layers to take.

use super::kitops::LAYER_PREFIX;
use super::{ArtifactError, Kind, Manifest};
use serde_json::Value;
use std::collections::BTreeSet;
use std::str::FromStr;

/// One Kitfile field a filter names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KitType {
    Kitfile,
    Model,
    Datasets,
    Code,
    Docs,
}

impl KitType {
    fn parse(word: &str) -> Option<KitType> {
        Some(match word {
            "kitfile" => KitType::Kitfile,
            "model" => KitType::Model,
            "datasets" => KitType::Datasets,
            "code" => KitType::Code,
            "docs" => KitType::Docs,
            _ => return None,
        })
    }

    fn word(self) -> &'static str {
        match self {
            KitType::Kitfile => "kitfile",
            KitType::Model => "model",
            KitType::Datasets => "datasets",
            KitType::Code => "code",
            KitType::Docs => "docs",
        }
    }

    /// The tugboat layer kinds holding this field's content.
    fn kinds(self) -> &'static [Kind] {
        match self {
            KitType::Kitfile => &[Kind::Config],
            KitType::Model => &[Kind::Weights, Kind::Modelpart],
            KitType::Datasets => &[Kind::Dataset],
            KitType::Code => &[Kind::Code],
            KitType::Docs => &[Kind::Docs],
        }
    }
}

/// One `--filter` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KitFilter {
    types: Vec<KitType>,
    /// Entry names or paths; empty: every entry of the types.
    names: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter {filter:?}: {detail}")]
pub struct FilterError {
    pub filter: String,
    pub detail: String,
}

impl FromStr for KitFilter {
    type Err = FilterError;

    fn from_str(filter: &str) -> Result<Self, Self::Err> {
        let error = |detail: String| FilterError {
            filter: filter.to_string(),
            detail,
        };
        let parts: Vec<&str> = filter.split(':').collect();
        if parts.len() > 2 {
            return Err(error(
                "should be in format <type1>,<type2>[:<filter1>,<filter2>]".to_string(),
            ));
        }
        let types = parts[0]
            .split(',')
            .map(|word| {
                KitType::parse(word).ok_or_else(|| {
                    error(format!(
                        "invalid filter type {word:?} (must be one of 'kitfile', 'model', \
                         'datasets', 'code', or 'docs')"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names = match parts.get(1) {
            Some(names) => names.split(',').map(str::to_string).collect(),
            None => Vec::new(),
        };
        Ok(KitFilter { types, names })
    }
}

impl std::fmt::Display for KitFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<&str> = self.types.iter().map(|t| t.word()).collect();
        write!(f, "{}", types.join(","))?;
        if !self.names.is_empty() {
            write!(f, ":{}", self.names.join(","))?;
        }
        Ok(())
    }
}

impl KitFilter {
    fn takes(&self, kit_type: KitType, fields: &[Option<&str>]) -> bool {
        self.types.contains(&kit_type)
            && (self.names.is_empty()
                || fields
                    .iter()
                    .flatten()
                    .any(|field| self.names.iter().any(|n| n == field)))
    }
}

/// The layer kinds any of `filters` can take (what `--only` would say).
pub fn kinds(filters: &[KitFilter]) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for kind in filters
        .iter()
        .flat_map(|f| &f.types)
        .flat_map(|t| t.kinds())
    {
        if !kinds.contains(kind) {
            kinds.push(*kind);
        }
    }
    kinds
}

/// Whether any filter names entries (and so needs the Kitfile to be applied).
pub fn names_entries(filters: &[KitFilter]) -> bool {
    filters.iter().any(|f| !f.names.is_empty())
}

/// The digests of the blobs `filters` take from a ModelKit: its layers, paired with the
/// Kitfile's entries as kit pairs them, and the config itself when a filter names `kitfile`.
pub fn select_layers(
    filters: &[KitFilter],
    manifest: &Manifest,
    kitfile_json: &[u8],
) -> Result<BTreeSet<String>, ArtifactError> {
    let malformed = |detail: String| ArtifactError::Malformed { detail };
    let kitfile: Value = serde_json::from_slice(kitfile_json)
        .map_err(|e| malformed(format!("the Kitfile (config) is not JSON: {e}")))?;
    let mut taken = BTreeSet::new();
    if filters.iter().any(|f| f.types.contains(&KitType::Kitfile)) {
        taken.insert(manifest.config.digest.to_string());
    }
    let (mut parts, mut code, mut datasets, mut docs) = (0, 0, 0, 0);
    let nth = |field: &str, i: &mut usize| {
        let entry = kitfile.get(field).and_then(|v| v.get(*i));
        *i += 1;
        entry
    };
    for layer in &manifest.layers {
        let base = layer
            .media_type
            .strip_prefix(LAYER_PREFIX)
            .and_then(|rest| rest.split_once(".v1."))
            .map(|(base, _)| base);
        let (kit_type, what, entry) = match base {
            Some("model") => (KitType::Model, "model", kitfile.get("model")),
            Some("modelpart") => (
                KitType::Model,
                "model parts",
                kitfile
                    .get("model")
                    .and_then(|m| m.get("parts"))
                    .and_then(|p| p.get(parts)),
            ),
            Some("code") => (KitType::Code, "code", nth("code", &mut code)),
            Some("dataset") => (
                KitType::Datasets,
                "datasets",
                nth("datasets", &mut datasets),
            ),
            Some("docs") => (KitType::Docs, "docs", nth("docs", &mut docs)),
            // Layers kit's filter has no type for are not taken by a filter.
            _ => continue,
        };
        if base == Some("modelpart") {
            parts += 1;
        }
        let entry = entry.ok_or_else(|| {
            malformed(format!(
                "layer {} has no {what} entry in the Kitfile to match the filter against",
                layer.digest
            ))
        })?;
        let field = |key: &str| entry.get(key).and_then(Value::as_str);
        if let Some(recorded) = entry.get("layerInfo").and_then(|i| i.get("digest")) {
            if recorded.as_str() != Some(layer.digest.to_string().as_str()) {
                return Err(malformed(format!(
                    "digest in config and manifest do not match in {what} (layer {})",
                    layer.digest
                )));
            }
        }
        let fields = match kit_type {
            KitType::Code | KitType::Docs => [None, field("path")],
            _ => [field("name"), field("path")],
        };
        if filters.iter().any(|f| f.takes(kit_type, &fields)) {
            taken.insert(layer.digest.to_string());
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::manifest;

    fn filter(s: &str) -> KitFilter {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn reads_kits_grammar() {
        assert_eq!(
            filter("model,datasets:train,./README.md"),
            KitFilter {
                types: vec![KitType::Model, KitType::Datasets],
                names: vec!["train".into(), "./README.md".into()],
            }
        );
        assert_eq!(kinds(&[filter("model")]), [Kind::Weights, Kind::Modelpart]);
        assert_eq!(
            kinds(&[filter("kitfile,docs"), filter("docs:x")]),
            [Kind::Config, Kind::Docs]
        );
        for bad in ["", "weights", "model:a:b", "model,,code"] {
            let e = bad.parse::<KitFilter>().unwrap_err();
            assert!(e.to_string().starts_with("invalid filter"), "{e}");
        }
        assert!(!names_entries(&[filter("model,code")]));
        assert_eq!(
            filter("model,datasets:a,b").to_string(),
            "model,datasets:a,b"
        );
        assert!(names_entries(&[filter("model"), filter("docs:README.md")]));
    }

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn modelkit() -> Manifest {
        let layer = |kind: &str, n: u8| {
            format!(
                r#"{{"mediaType":"application/vnd.kitops.modelkit.{kind}.v1.tar","digest":"{}","size":1}}"#,
                digest(n)
            )
        };
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.kitops.modelkit.config.v1+json","digest":"{}","size":1}},
            "layers":[{},{},{},{},{},{}]}}"#,
            digest(0),
            layer("model", 1),
            layer("modelpart", 2),
            layer("dataset", 3),
            layer("dataset", 4),
            layer("code", 5),
            layer("docs", 6),
        );
        match manifest::parse(text.as_bytes(), None).unwrap() {
            crate::artifact::Parsed::Manifest(m) => *m,
            _ => unreachable!(),
        }
    }

    const KITFILE: &str = r#"{
        "model": {"name": "tiny", "path": "tiny.gguf",
                  "parts": [{"name": "lora", "path": "adapters/lora"}]},
        "datasets": [{"name": "train", "path": "data/train.csv"},
                     {"name": "validation", "path": "data/val.csv"}],
        "code": [{"path": "src"}],
        "docs": [{"path": "./README.md"}]
    }"#;

    fn take(filters: &[&str]) -> Vec<String> {
        let filters: Vec<KitFilter> = filters.iter().map(|f| filter(f)).collect();
        select_layers(&filters, &modelkit(), KITFILE.as_bytes())
            .unwrap()
            .into_iter()
            .collect()
    }

    #[test]
    fn names_and_paths_pick_entries_as_kit_does() {
        assert_eq!(take(&["datasets:validation"]), [digest(4)]);
        assert_eq!(take(&["datasets:data/train.csv"]), [digest(3)]);
        assert_eq!(take(&["docs:./README.md"]), [digest(6)]);
        // `model` covers its parts; names match either.
        assert_eq!(take(&["model"]), [digest(1), digest(2)]);
        assert_eq!(take(&["model:lora"]), [digest(2)]);
        // Several filters: any of them.
        assert_eq!(
            take(&["model:tiny", "datasets:train", "kitfile"]),
            [digest(0), digest(1), digest(3)]
        );
        // Code has no name: only its path matches.
        assert!(take(&["code:tiny"]).is_empty());
        assert_eq!(take(&["code:src"]), [digest(5)]);
    }

    #[test]
    fn a_kitfile_that_does_not_fit_the_manifest_is_refused() {
        let short = r#"{"model": {"name": "tiny"}, "datasets": [{"name": "train"}]}"#;
        let e =
            select_layers(&[filter("datasets:train")], &modelkit(), short.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no model parts entry"), "{e}");
        let wrong = format!(
            r#"{{"model": {{"name": "tiny", "layerInfo": {{"digest": "{}"}}}}}}"#,
            digest(9)
        );
        let e = select_layers(&[filter("model")], &modelkit(), wrong.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("do not match"), "{e}");
    }
}

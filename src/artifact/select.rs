//! What part of a model the user asked for: `--subpath` (one folder, re-rooted), `--include` /
//! `--exclude` globs over the final paths, `--only` layer kinds (ModelPack, KitOps), and a set
//! of layers by digest (a `kit unpack --filter` naming Kitfile entries, see `kit_filter`).
//! A glob that matches a folder selects (or drops) everything below it.

use crate::safe_path::SafePath;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeSet;

/// Kinds of layers ModelPack and KitOps artifacts label their content with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Model weights (ModelPack `weight`, KitOps `model`).
    Weights,
    /// Files beside the weights: tokenizer, config.json (ModelPack `weight.config`; the Kitfile).
    Config,
    /// KitOps model parts (adapters, extra weight files).
    Modelpart,
    Docs,
    Code,
    Dataset,
    Prompts,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Weights => "weights",
            Kind::Config => "config",
            Kind::Modelpart => "modelpart",
            Kind::Docs => "docs",
            Kind::Code => "code",
            Kind::Dataset => "dataset",
            Kind::Prompts => "prompts",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("bad {flag} pattern {pattern:?}: {detail}")]
pub struct SelectionError {
    pub flag: &'static str,
    pub pattern: String,
    pub detail: String,
}

/// The user's selection; the default takes everything.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    subpath: Option<SafePath>,
    include: Option<GlobSet>,
    include_patterns: Vec<String>,
    exclude: Option<GlobSet>,
    exclude_patterns: Vec<String>,
    only: Vec<Kind>,
    /// Only these blobs (layer or config digests, `sha256:<hex>`); `None`: any.
    layers: Option<BTreeSet<String>>,
}

fn build(flag: &'static str, patterns: &[String]) -> Result<Option<GlobSet>, SelectionError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let trimmed = pattern.trim_start_matches("./").trim_start_matches('/');
        let glob = Glob::new(trimmed).map_err(|e| SelectionError {
            flag,
            pattern: pattern.clone(),
            detail: e.kind().to_string(),
        })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| SelectionError {
        flag,
        pattern: patterns.join(","),
        detail: e.to_string(),
    })
}

impl Selection {
    pub fn new(
        subpath: Option<&str>,
        include: &[String],
        exclude: &[String],
        only: &[Kind],
    ) -> Result<Self, SelectionError> {
        let subpath = match subpath.map(|s| s.trim_start_matches('/')) {
            None | Some("") | Some(".") => None,
            Some(raw) => Some(SafePath::new(raw).map_err(|e| SelectionError {
                flag: "--subpath",
                pattern: raw.to_string(),
                detail: e.reason.to_string(),
            })?),
        };
        Ok(Selection {
            subpath,
            include: build("--include", include)?,
            include_patterns: include.to_vec(),
            exclude: build("--exclude", exclude)?,
            exclude_patterns: exclude.to_vec(),
            only: only.to_vec(),
            layers: None,
        })
    }

    /// The same selection restricted to the blobs `digests` names (layers, and the config for
    /// a KitOps Kitfile).
    pub fn with_layers(mut self, digests: BTreeSet<String>) -> Self {
        self.layers = Some(digests);
        self
    }

    /// A canonical description of a non-default selection (empty for "everything"): pulls
    /// with different selections build different snapshots.
    pub fn key(&self) -> String {
        if self.is_everything() {
            return String::new();
        }
        let mut only: Vec<&str> = self.only.iter().map(|k| k.name()).collect();
        only.sort_unstable();
        only.dedup();
        let mut key = format!(
            "subpath={};include={};exclude={};only={}",
            self.subpath.as_ref().map_or("", |s| s.as_str()),
            self.include_patterns.join(","),
            self.exclude_patterns.join(","),
            only.join(",")
        );
        if let Some(layers) = &self.layers {
            let layers: Vec<&str> = layers.iter().map(String::as_str).collect();
            key.push_str(&format!(";layers={}", layers.join(",")));
        }
        key
    }

    pub fn subpath(&self) -> Option<&SafePath> {
        self.subpath.as_ref()
    }

    pub fn only(&self) -> &[Kind] {
        &self.only
    }

    pub fn is_everything(&self) -> bool {
        self.subpath.is_none()
            && self.include.is_none()
            && self.exclude.is_none()
            && self.only.is_empty()
            && self.layers.is_none()
    }

    /// Whether the blob `digest` may contribute (the layer set, when one was given).
    pub fn wants_layer(&self, digest: &str) -> bool {
        self.layers.as_ref().is_none_or(|set| set.contains(digest))
    }

    /// Whether a layer of `kind` is wanted (`--only`); layers without a kind always are.
    pub fn wants_kind(&self, kind: Option<Kind>) -> bool {
        match kind {
            Some(kind) => self.only.is_empty() || self.only.contains(&kind),
            None => true,
        }
    }

    /// Moves a model path under `--subpath` to its place in the tree: `None` when it lies
    /// outside the subpath. `Some(None)` is the subpath folder itself (the tree's root).
    pub fn reroot(&self, path: &SafePath) -> Option<Option<SafePath>> {
        let Some(sub) = &self.subpath else {
            return Some(Some(path.clone()));
        };
        if path == sub {
            return Some(None);
        }
        let rest = path
            .as_str()
            .strip_prefix(sub.as_str())?
            .strip_prefix('/')?;
        Some(Some(
            SafePath::new(rest).expect("a suffix of a safe path is safe"),
        ))
    }

    /// Whether a final tree path passes `--include` / `--exclude` (a folder match counts for
    /// everything below it).
    pub fn wants_path(&self, path: &SafePath) -> bool {
        let hits = |set: &GlobSet| ancestors(path.as_str()).any(|p| set.is_match(p));
        if self.exclude.as_ref().is_some_and(hits) {
            return false;
        }
        self.include.as_ref().is_none_or(hits)
    }

    /// Whether anything at or below the final tree path `dir` could pass the filters: an
    /// archive declared to hold only `dir` is not downloaded when this is false.
    pub fn could_want_below(&self, dir: &SafePath) -> bool {
        if self
            .exclude
            .as_ref()
            .is_some_and(|set| ancestors(dir.as_str()).any(|p| set.is_match(p)))
        {
            return false;
        }
        if self.include.is_none() || self.wants_path(dir) {
            return true;
        }
        // A pattern whose literal prefix is compatible with `dir/` might match below it.
        let below = format!("{}/", dir.as_str());
        self.include_patterns.iter().any(|pattern| {
            let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
            let literal: String = pattern
                .chars()
                .take_while(|c| !matches!(c, '*' | '?' | '[' | '{' | '\\'))
                .collect();
            below.starts_with(&literal) || literal.starts_with(&below)
        })
    }
}

/// `a/b/c`, `a/b`, `a`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.rsplit_once('/').map(|(parent, _)| parent);
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SafePath {
        SafePath::new(s).unwrap()
    }

    #[test]
    fn globs_match_folders_and_files() {
        let s = Selection::new(None, &["*.gguf".into()], &["drafts".into()], &[]).unwrap();
        assert!(s.wants_path(&p("model.gguf")));
        assert!(s.wants_path(&p("q/model.gguf")));
        assert!(!s.wants_path(&p("README.md")));
        assert!(!s.wants_path(&p("drafts/x.gguf")));
        let s = Selection::new(None, &["tokenizer".into()], &[], &[]).unwrap();
        assert!(s.wants_path(&p("tokenizer/vocab.json")));
        assert!(s.could_want_below(&p("tokenizer")));
        let s = Selection::new(None, &["weights/*.safetensors".into()], &[], &[]).unwrap();
        assert!(s.could_want_below(&p("weights")));
        assert!(!s.could_want_below(&p("docs")));
    }

    #[test]
    fn a_layer_set_restricts_and_changes_the_key() {
        let all = Selection::new(None, &[], &[], &[]).unwrap();
        assert!(all.wants_layer("sha256:aa") && all.key().is_empty());
        let some = all.with_layers(BTreeSet::from(["sha256:aa".to_string()]));
        assert!(some.wants_layer("sha256:aa") && !some.wants_layer("sha256:bb"));
        assert!(!some.is_everything() && some.key().ends_with("layers=sha256:aa"));
    }

    #[test]
    fn subpath_reroots() {
        let s = Selection::new(Some("/models"), &[], &[], &[]).unwrap();
        assert_eq!(s.reroot(&p("models/a/b")), Some(Some(p("a/b"))));
        assert_eq!(s.reroot(&p("models")), Some(None));
        assert_eq!(s.reroot(&p("modelsx/a")), None);
        assert_eq!(s.reroot(&p("etc/passwd")), None);
    }
}

//! One layer being unpacked: its state (digest, unpack rules, selection, what it created, the
//! layer-digest tap, a one-file layer's adopted file), where an archive path lands through
//! `--subpath`, and what the archives may spend (entries, expanded bytes, the ratio to the
//! compressed size). Also the refusal every entry rule gives.

use super::readers::LayerTap;
use super::Tree;
use crate::artifact::{Selection, Unpack};
use crate::cache::VerifiedFile;
use crate::materialize::MaterializeError;
use crate::safe_path::SafePath;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Where an archive path lands in the tree.
pub(super) enum Place {
    Root,
    At(SafePath),
    Outside,
}

/// Per-layer state.
pub(super) struct Layer<'l> {
    pub(super) digest: String,
    pub(super) unpack: &'l Unpack,
    pub(super) selection: &'l Selection,
    pub(super) budget: u64,
    pub(super) expanded: u64,
    /// Tree paths this layer created (whiteouts only hide what lower layers made).
    pub(super) created: HashSet<String>,
    /// The layer digest being taken of a plain tar: regular files' bytes are fed to it
    /// together with the file's digest.
    pub(super) tap: Option<Rc<RefCell<LayerTap>>>,
    /// A one-file layer's file, already downloaded and verified: the regular entry becomes
    /// this file (renamed into place) instead of being read from the archive.
    pub(super) adopt: Option<VerifiedFile>,
}

impl<'l> Layer<'l> {
    pub(super) fn new(
        digest: String,
        unpack: &'l Unpack,
        selection: &'l Selection,
        budget: u64,
    ) -> Self {
        Layer {
            digest,
            unpack,
            selection,
            budget,
            expanded: 0,
            created: HashSet::new(),
            tap: None,
            adopt: None,
        }
    }
}
impl Tree {
    pub(super) fn refuse(
        layer: &Layer<'_>,
        entry: &str,
        reason: impl Into<String>,
    ) -> MaterializeError {
        MaterializeError::UnsafeEntry {
            digest: layer.digest.clone(),
            entry: entry.chars().take(200).collect(),
            reason: reason.into(),
        }
    }

    /// Maps an archive path to the tree through `--subpath`.
    pub(super) fn place(&self, path: &SafePath, selection: &Selection) -> Place {
        match selection.reroot(path) {
            Some(Some(target)) => Place::At(target),
            Some(None) => Place::Root,
            None => Place::Outside,
        }
    }

    pub(super) fn count(&mut self, layer: &Layer<'_>, raw: &str) -> Result<(), MaterializeError> {
        self.count_for(&layer.digest, raw)
    }

    pub(super) fn count_for(&mut self, digest: &str, raw: &str) -> Result<(), MaterializeError> {
        let placed = self.placed.fetch_add(1, Ordering::Relaxed) + 1;
        if placed > self.limits.max_files {
            return Err(MaterializeError::Limit {
                digest: digest.to_string(),
                detail: format!(
                    "the archives hold more than {} entries (limit reached at {raw:?}); raise \
                     --max-files if the model really has this many files",
                    self.limits.max_files
                ),
            });
        }
        Ok(())
    }

    pub(super) fn charge(
        &mut self,
        layer: &mut Layer<'_>,
        bytes: u64,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        layer.expanded = layer.expanded.saturating_add(bytes);
        let expanded = self
            .expanded
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if layer.expanded > layer.budget {
            return Err(MaterializeError::Limit {
                digest: layer.digest.clone(),
                detail: format!(
                    "it expands to more than {} bytes at {raw:?}, over {}x its compressed size \
                     (a decompression bomb?); raise --max-compression-ratio (now {}) if the model \
                     really compresses this well",
                    layer.budget, self.limits.max_ratio, self.limits.max_ratio
                ),
            });
        }
        if expanded > self.limits.max_expanded.0 {
            return Err(MaterializeError::Limit {
                digest: layer.digest.clone(),
                detail: format!(
                    "unpacked files would exceed {} in total (at {raw:?}); raise \
                     --max-expanded-size if the model is really this large",
                    self.limits.max_expanded
                ),
            });
        }
        Ok(())
    }
}

/// `path` equals `dir` or lies below it.
pub(super) fn is_at_or_below(path: &SafePath, dir: &SafePath) -> bool {
    path == dir
        || path
            .as_str()
            .strip_prefix(dir.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
}

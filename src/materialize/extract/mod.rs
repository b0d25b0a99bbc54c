//! Builds a snapshot tree from a plan's verified blobs: the [`Tree`] under construction (its
//! folder, the files placed so far with their sizes and digests, the limit counters shared by
//! every archive of one pull), whole files placed from their blobs (raw layers, Kitfiles), and
//! the final sync. Archives are unpacked by the modules below, each with one job:
//! `archive` (opening a tar layer: compression, caps, the annotated tar digest), `readers`
//! (the byte plumbing that takes a plain tar's layer digest as the tar reader consumes it),
//! `entry` (the safe tar entry rules: names, links, special files), `layer` (one layer's
//! state and what it may spend), `room` (making room for an entry in the tree), `overlay`
//! (image whiteouts) and `one_file` (a one-file layer whose file was downloaded on its own).
//! Archives are hostile input: on any refusal the caller drops the snapshot builder, which
//! removes the partial tree.

mod archive;
mod entry;
mod layer;
mod one_file;
mod overlay;
mod readers;
mod room;

use layer::Layer;
pub use one_file::{one_file_layout, ONE_FILE_HEAD_PROBE};
pub use readers::LayerDigest;

use super::limits::Limits;
use super::MaterializeError;
use crate::artifact::{kitfile, Action, Descriptor, ManifestKitfile, Selection};
use crate::cache::{CacheError, SnapshotFile};
use crate::digest::Digest;
use crate::safe_path::SafePath;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The tree under construction: every regular file placed so far, and the running totals
/// the limits apply to.
pub struct Tree {
    root: PathBuf,
    limits: Limits,
    files: BTreeMap<SafePath, SnapshotFile>,
    /// Entries and bytes placed so far; shared with the trees `fork` made, so the limits
    /// hold for all archives together even when they unpack at once.
    placed: Arc<AtomicU64>,
    expanded: Arc<AtomicU64>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MaterializeError + '_ {
    move |e| MaterializeError::Cache(CacheError::io(path, e))
}

impl Tree {
    pub fn new(root: &Path, limits: Limits) -> Self {
        Tree {
            root: root.to_path_buf(),
            limits,
            files: BTreeMap::new(),
            placed: Arc::new(AtomicU64::new(0)),
            expanded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A tree over the same folder and limit counters, holding none of this tree's files:
    /// an archive whose paths cannot overlap another's (no image layers) unpacks into it on
    /// its own thread, then `merge` brings its files back. Outside images a path is never
    /// removed or placed twice, so the result does not depend on the order they ran in.
    pub fn fork(&self) -> Tree {
        Tree {
            root: self.root.clone(),
            limits: self.limits,
            files: BTreeMap::new(),
            placed: Arc::clone(&self.placed),
            expanded: Arc::clone(&self.expanded),
        }
    }

    /// Takes the files a forked tree placed.
    pub fn merge(&mut self, forked: Tree) {
        self.files.extend(forked.files);
    }

    pub fn into_files(self) -> Vec<SnapshotFile> {
        self.files.into_values().collect()
    }

    /// Places a raw blob as the file `path` (hard link from the cache, else a copy).
    pub fn place_blob(
        &mut self,
        path: &SafePath,
        blob: &Path,
        descriptor: &Descriptor,
    ) -> Result<(), MaterializeError> {
        let digest = descriptor.digest.to_string();
        self.ensure_parent(path, &digest, false, None)?;
        self.clear_target(path, &digest, false, false)?;
        super::link_or_copy(blob, &path.under(&self.root))?;
        self.files.insert(
            path.clone(),
            SnapshotFile {
                path: path.clone(),
                size: descriptor.size,
                digest: descriptor.digest.clone(),
            },
        );
        Ok(())
    }

    /// Lays one plan entry from its verified blob at `blob`: a file linked, a Kitfile written
    /// as YAML, an archive unpacked.
    pub fn place_entry(
        &mut self,
        action: &Action,
        blob: &Path,
        descriptor: &Descriptor,
        selection: &Selection,
    ) -> Result<(), MaterializeError> {
        match action {
            Action::File { path } => self.place_blob(path, blob, descriptor),
            Action::Kitfile { path } => self.place_kitfile(path, blob, descriptor),
            Action::Unpack(unpack) => self.unpack(blob, descriptor, unpack, selection),
        }
    }

    /// Writes a ModelKit's config (the Kitfile as JSON) as the YAML `kit unpack` writes; a
    /// config kit could not read either is written as it is (JSON is YAML too).
    fn place_kitfile(
        &mut self,
        path: &SafePath,
        blob: &Path,
        descriptor: &Descriptor,
    ) -> Result<(), MaterializeError> {
        let json = fs::read(blob).map_err(io_err(blob))?;
        self.write_kitfile(path, json, &descriptor.digest.to_string())
    }

    /// Writes the Kitfile a manifest carries (see [`ManifestKitfile`]), unless a layer
    /// already placed something at its path (the artifact's own file wins).
    pub fn place_manifest_kitfile(
        &mut self,
        kitfile: &ManifestKitfile,
    ) -> Result<(), MaterializeError> {
        if fs::symlink_metadata(kitfile.path.under(&self.root)).is_ok() {
            tracing::debug!(path = %kitfile.path, "a layer placed a file where the manifest's Kitfile goes; keeping the layer's");
            return Ok(());
        }
        let json = kitfile.json.clone().into_bytes();
        self.write_kitfile(&kitfile.path, json, "the manifest's Kitfile annotation")
    }

    /// Writes a Kitfile given as JSON as YAML (as it is, when kit could not read it either:
    /// JSON is YAML too); `origin` names where it came from in messages.
    fn write_kitfile(
        &mut self,
        path: &SafePath,
        json: Vec<u8>,
        origin: &str,
    ) -> Result<(), MaterializeError> {
        let yaml = kitfile::kitfile_yaml(&json).unwrap_or_else(|reason| {
            tracing::warn!(%origin, %reason, "the Kitfile is not one kit can read; writing it as it is");
            json
        });
        self.ensure_parent(path, origin, false, None)?;
        self.clear_target(path, origin, false, false)?;
        let at = path.under(&self.root);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&at)
            .and_then(|mut file| file.write_all(&yaml))
            .map_err(io_err(&at))?;
        self.files.insert(
            path.clone(),
            SnapshotFile {
                path: path.clone(),
                size: yaml.len() as u64,
                digest: Digest::of_bytes(&yaml),
            },
        );
        Ok(())
    }

    fn read_error(&self, layer: &Layer<'_>, e: io::Error, what: &str) -> MaterializeError {
        self.read_error_for(&layer.digest, e, what)
    }

    fn read_error_for(&self, digest: &str, e: io::Error, what: &str) -> MaterializeError {
        if e.kind() == io::ErrorKind::FileTooLarge {
            return MaterializeError::Limit {
                digest: digest.to_string(),
                detail: e.to_string(),
            };
        }
        MaterializeError::Archive {
            digest: digest.to_string(),
            detail: format!("{what}: {e}"),
        }
    }

    /// Flushes every file and folder of the tree to disk (the snapshot is published next).
    pub fn sync(&self) -> Result<(), MaterializeError> {
        sync_tree(&self.root)
    }
}

/// fsyncs every regular file and folder below (and including) `dir`; symlinks are skipped.
fn sync_tree(dir: &Path) -> Result<(), MaterializeError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

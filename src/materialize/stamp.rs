//! The stamp `DEST/.tugboat/stamp.json`: which model a destination holds (manifest digest and
//! every file's size and digest), so a restored volume is recognised without the registry.

use crate::cache::{write_atomically, CacheError, SnapshotFile};
use crate::digest::Digest;
use std::path::{Path, PathBuf};

/// The hidden folder tugboat keeps inside a destination.
pub const WORK_DIR: &str = ".tugboat";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub reference: String,
    pub digest: Digest,
    pub format: String,
    pub files: Vec<SnapshotFile>,
    /// Seconds since the epoch.
    pub pulled_at: u64,
    /// The snapshot installed: the manifest digest, or one derived from it and the selection
    /// (`--subpath`, `--include`, `--only`, `--format`), so a different choice pulls again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Digest>,
}

pub fn work_dir(dest: &Path) -> PathBuf {
    dest.join(WORK_DIR)
}

fn stamp_path(dest: &Path) -> PathBuf {
    work_dir(dest).join("stamp.json")
}

impl Stamp {
    /// The stamp of `dest`, if it has a readable one.
    pub fn read(dest: &Path) -> Option<Stamp> {
        let bytes = std::fs::read(stamp_path(dest)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write(&self, dest: &Path) -> Result<(), CacheError> {
        let dir = work_dir(dest);
        std::fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        let json = serde_json::to_vec_pretty(self).expect("stamp serialises");
        write_atomically(&stamp_path(dest), &json)?;
        crate::cache::sync_dir(&dir)
    }

    /// Every stamped file is present with its size; with `rehash`, also its digest.
    /// Returns the first file that does not match.
    pub fn check(&self, dest: &Path, rehash: bool) -> Result<(), String> {
        for file in &self.files {
            let path = file.path.under(dest);
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|_| format!("{} is missing", file.path))?;
            if !meta.is_file() || meta.len() != file.size {
                return Err(format!("{} has changed size", file.path));
            }
            if rehash {
                let actual = Digest::of_file(&path).map_err(|e| format!("{}: {e}", file.path))?;
                if actual != file.digest {
                    return Err(format!("{} does not match {}", file.path, file.digest));
                }
            }
        }
        Ok(())
    }
}

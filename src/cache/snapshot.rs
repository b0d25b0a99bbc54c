//! Snapshots: `snapshots/<manifest-hex>/` holds a model's materialised tree, with its
//! description in `snapshots/<manifest-hex>.json`. A snapshot is built in a private folder
//! under the snapshot's lock and renamed into place, so it either exists whole or not at all.

use super::error::CacheError;
use super::lock::FileLock;
use super::{sync_dir, write_atomically, Cache};
use crate::digest::Digest;
use crate::safe_path::SafePath;
use std::fs;
use std::path::{Path, PathBuf};

/// One regular file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFile {
    pub path: SafePath,
    pub size: u64,
    pub digest: Digest,
}

/// What a snapshot holds and where it came from.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    pub reference: String,
    pub digest: Digest,
    pub format: String,
    pub files: Vec<SnapshotFile>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Every cache blob the snapshot was built from (kept while the snapshot lives).
    #[serde(default)]
    pub blobs: Vec<Digest>,
}

impl SnapshotInfo {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A snapshot under construction; dropped without `commit`, it leaves nothing behind.
pub struct SnapshotBuilder {
    building: PathBuf,
    final_dir: PathBuf,
    info_path: PathBuf,
    committed: bool,
    _lock: FileLock,
}

/// Result of asking to build a snapshot.
pub enum SnapshotSlot {
    /// Someone (maybe another process) finished it while we waited for the lock.
    Ready(SnapshotInfo),
    Build(SnapshotBuilder),
}

/// The first file the description lists that the snapshot does not hold as a regular file of
/// the listed size (a file deleted or truncated by hand): such a snapshot is not complete. One
/// `lstat` per file; contents are `cache verify`'s job.
fn first_missing_file(dir: &Path, info: &SnapshotInfo) -> Option<String> {
    info.files
        .iter()
        .find(|file| {
            !fs::symlink_metadata(file.path.under(dir))
                .is_ok_and(|m| m.is_file() && m.len() == file.size)
        })
        .map(|file| file.path.to_string())
}

impl Cache {
    pub fn snapshot_dir(&self, manifest: &Digest) -> PathBuf {
        self.snapshots_dir().join(manifest.hex())
    }

    /// The description of a complete snapshot, if there is one.
    pub fn snapshot(&self, manifest: &Digest) -> Result<Option<SnapshotInfo>, CacheError> {
        let dir = self.snapshot_dir(manifest);
        if !dir.is_dir() {
            return Ok(None);
        }
        let info_path = self
            .snapshots_dir()
            .join(format!("{}.json", manifest.hex()));
        match fs::read(&info_path) {
            Ok(bytes) => match serde_json::from_slice::<SnapshotInfo>(&bytes) {
                Ok(info) if &info.digest == manifest => match first_missing_file(&dir, &info) {
                    None => Ok(Some(info)),
                    Some(missing) => {
                        tracing::warn!(snapshot = %dir.display(), file = %missing, "a file of the cached model is missing or has the wrong size; the snapshot will be rebuilt");
                        Ok(None)
                    }
                },
                _ => {
                    tracing::warn!(path = %info_path.display(), "snapshot description unreadable; the snapshot will be rebuilt");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io(info_path, e)),
        }
    }

    /// Takes the snapshot's lock; returns the finished snapshot if it appeared meanwhile.
    pub async fn snapshot_slot(&self, manifest: &Digest) -> Result<SnapshotSlot, CacheError> {
        let lock = FileLock::acquire(
            self.snapshots_dir()
                .join(format!("{}.lock", manifest.hex())),
        )
        .await?;
        if let Some(info) = self.snapshot(manifest)? {
            return Ok(SnapshotSlot::Ready(info));
        }
        let final_dir = self.snapshot_dir(manifest);
        let building = self
            .snapshots_dir()
            .join(format!(".building-{}", manifest.hex()));
        // Leftovers of a crashed build, or a directory without a description: start clean.
        for stale in [&building, &final_dir] {
            remove_tree(stale)?;
        }
        fs::create_dir_all(&building).map_err(|e| CacheError::io(&building, e))?;
        Ok(SnapshotSlot::Build(SnapshotBuilder {
            building,
            final_dir,
            info_path: self
                .snapshots_dir()
                .join(format!("{}.json", manifest.hex())),
            committed: false,
            _lock: lock,
        }))
    }
}

impl Cache {
    /// Deletes a snapshot and its description (callers hold no lease on it).
    pub fn remove_snapshot(&self, manifest: &Digest) -> Result<(), CacheError> {
        let _lock = self.snapshot_lock(manifest)?;
        self.remove_snapshot_locked(manifest)
    }

    /// Removes a snapshot unless it is leased, deciding under the snapshot's lock (where
    /// leases are taken), so a volume being published cannot lose its model. Returns whether
    /// it was removed.
    pub fn remove_snapshot_unless_leased(&self, manifest: &Digest) -> Result<bool, CacheError> {
        let _lock = self.snapshot_lock(manifest)?;
        if self.is_leased(manifest)? {
            return Ok(false);
        }
        self.remove_snapshot_locked(manifest)?;
        Ok(true)
    }

    fn snapshot_lock(&self, manifest: &Digest) -> Result<FileLock, CacheError> {
        FileLock::acquire_blocking(
            &self
                .snapshots_dir()
                .join(format!("{}.lock", manifest.hex())),
        )
    }

    fn remove_snapshot_locked(&self, manifest: &Digest) -> Result<(), CacheError> {
        let info = self
            .snapshots_dir()
            .join(format!("{}.json", manifest.hex()));
        if info.exists() {
            fs::remove_file(&info).map_err(|e| CacheError::io(&info, e))?;
        }
        remove_tree(&self.snapshot_dir(manifest))
    }
}

impl Cache {
    /// Records a use of the snapshot (its description's mtime): GC evicts the least recent.
    pub fn touch_snapshot(&self, manifest: &Digest) {
        let info = self
            .snapshots_dir()
            .join(format!("{}.json", manifest.hex()));
        if let Ok(file) = fs::File::options().write(true).open(&info) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// When the snapshot was last used.
    pub fn snapshot_last_used(&self, manifest: &Digest) -> Option<std::time::SystemTime> {
        let info = self
            .snapshots_dir()
            .join(format!("{}.json", manifest.hex()));
        fs::metadata(info).and_then(|m| m.modified()).ok()
    }
}

impl SnapshotBuilder {
    /// Where to materialise the tree.
    pub fn dir(&self) -> &Path {
        &self.building
    }

    /// Publishes the snapshot: description first, then the directory by rename.
    pub fn commit(mut self, info: &SnapshotInfo) -> Result<PathBuf, CacheError> {
        let json = serde_json::to_vec_pretty(info).expect("snapshot info serialises");
        write_atomically(&self.info_path, &json)?;
        sync_dir(&self.building)?;
        fs::rename(&self.building, &self.final_dir)
            .map_err(|e| CacheError::io(&self.final_dir, e))?;
        sync_dir(self.final_dir.parent().expect("snapshot has a parent"))?;
        self.committed = true;
        Ok(self.final_dir.clone())
    }
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_tree(&self.building);
        }
    }
}

/// Removes a tree whose files may be read-only; a missing tree is fine.
pub fn remove_tree(path: &Path) -> Result<(), CacheError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::io(path, e)),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(|e| CacheError::io(path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| CacheError::io(path, e)),
    }
}

impl Cache {
    /// Every complete snapshot, newest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, CacheError> {
        let dir = self.snapshots_dir();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| CacheError::io(&dir, e))? {
            let entry = entry.map_err(|e| CacheError::io(&dir, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(digest) = Digest::from_hex(hex) {
                if let Some(info) = self.snapshot(&digest)? {
                    found.push(info);
                }
            }
        }
        found.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.reference.cmp(&b.reference))
        });
        Ok(found)
    }
}

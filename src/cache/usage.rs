//! What the cache holds on disk: blobs, snapshots (with last use, lease state and the blobs
//! they keep alive) and partial downloads, and how many bytes they take once hard links are
//! counted once. GC, `cache ls` and the metrics read the cache through this inventory.

use super::error::CacheError;
use super::snapshot::SnapshotInfo;
use super::Cache;
use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A snapshot with its bookkeeping.
#[derive(Clone, Debug)]
pub struct SnapshotEntry {
    pub info: SnapshotInfo,
    pub last_used: SystemTime,
    pub leased: bool,
    /// Inodes of the snapshot's own files (unpacked files not shared with a blob).
    pub own_inodes: HashMap<u64, u64>,
}

#[derive(Clone, Debug)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub inode: u64,
    pub modified: SystemTime,
}

#[derive(Clone, Debug)]
pub struct PartialEntry {
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
}

/// Everything GC needs to decide, read in one pass.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub snapshots: Vec<SnapshotEntry>,
    pub blobs: Vec<BlobEntry>,
    pub partials: Vec<PartialEntry>,
}

impl Inventory {
    /// Bytes on disk, each inode counted once.
    pub fn total_bytes(&self) -> u64 {
        let mut inodes: HashMap<u64, u64> = HashMap::new();
        for blob in &self.blobs {
            inodes.insert(blob.inode, blob.size);
        }
        for snapshot in &self.snapshots {
            inodes.extend(snapshot.own_inodes.iter().map(|(k, v)| (*k, *v)));
        }
        inodes.values().sum::<u64>() + self.partials.iter().map(|p| p.size).sum::<u64>()
    }

    /// Blobs some snapshot still needs.
    pub fn referenced_blobs(&self) -> HashSet<Digest> {
        self.snapshots
            .iter()
            .flat_map(|s| {
                s.info
                    .blobs
                    .iter()
                    .chain(s.info.files.iter().map(|f| &f.digest))
            })
            .cloned()
            .collect()
    }
}

impl Cache {
    /// Reads the inventory. Unreadable entries are logged and skipped.
    pub fn inventory(&self) -> Result<Inventory, CacheError> {
        let mut inventory = Inventory::default();
        let blob_inodes = self.read_blobs(&mut inventory)?;
        for info in self.snapshots()? {
            let dir = self.snapshot_dir(&info.digest);
            let mut own_inodes = HashMap::new();
            collect_inodes(&dir, &blob_inodes, &mut own_inodes);
            inventory.snapshots.push(SnapshotEntry {
                last_used: self
                    .snapshot_last_used(&info.digest)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                leased: self.is_leased(&info.digest)?,
                own_inodes,
                info,
            });
        }
        let ingest = self.ingest_dir();
        for entry in fs::read_dir(&ingest)
            .map_err(|e| CacheError::io(&ingest, e))?
            .flatten()
        {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("partial") {
                continue;
            }
            if let Ok(meta) = entry.metadata() {
                inventory.partials.push(PartialEntry {
                    path,
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(inventory)
    }

    fn read_blobs(&self, inventory: &mut Inventory) -> Result<HashSet<u64>, CacheError> {
        let dir = self.root().join("blobs/sha256");
        let mut inodes = HashSet::new();
        for entry in fs::read_dir(&dir)
            .map_err(|e| CacheError::io(&dir, e))?
            .flatten()
        {
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            inodes.insert(meta.ino());
            inventory.blobs.push(BlobEntry {
                digest,
                size: meta.len(),
                inode: meta.ino(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(inodes)
    }
}

fn collect_inodes(dir: &Path, shared: &HashSet<u64>, out: &mut HashMap<u64, u64>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            collect_inodes(&entry.path(), shared, out);
        } else if meta.is_file() && !shared.contains(&meta.ino()) {
            out.insert(meta.ino(), meta.len());
        }
    }
}

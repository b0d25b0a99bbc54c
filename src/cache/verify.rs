//! `cache verify`: re-hashes every blob and every snapshot file. A blob that no longer
//! matches its name is moved to `quarantine/` and the unleased snapshots built from it are
//! dropped, so the next pull fetches and rebuilds them. Leased (mounted) snapshots are
//! reported, never pulled from under a running pod.

use super::error::CacheError;
use super::Cache;
use crate::digest::Digest;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// Snapshot files re-hashed against the digests their snapshot records (files that are
    /// a verified blob's hard link are not hashed twice).
    pub files_checked: usize,
    pub file_bytes_checked: u64,
    /// Blobs whose bytes no longer match their digest (now in `quarantine/`).
    pub corrupt_blobs: Vec<Digest>,
    /// Snapshots removed because a file in them was damaged.
    pub snapshots_dropped: Vec<Digest>,
    /// Damaged snapshots kept because a volume still uses them.
    pub leased_damaged: Vec<Digest>,
}

impl Cache {
    pub fn quarantine_dir(&self) -> std::path::PathBuf {
        self.root().join("quarantine")
    }

    /// Re-hashes everything; see the module comment for what happens to damage.
    pub fn verify(&self) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        let inventory = self.inventory()?;
        let mut good_inodes = HashSet::new();
        for blob in &inventory.blobs {
            let path = self.blob_path(&blob.digest);
            let actual = Digest::of_file(&path).map_err(|e| CacheError::io(&path, e))?;
            report.blobs_checked += 1;
            report.bytes_checked += blob.size;
            if actual == blob.digest {
                good_inodes.insert(blob.inode);
                continue;
            }
            tracing::error!(digest = %blob.digest, %actual, "cached blob is corrupt; quarantining it");
            let quarantine = self.quarantine_dir();
            fs::create_dir_all(&quarantine).map_err(|e| CacheError::io(&quarantine, e))?;
            let target = quarantine.join(blob.digest.hex());
            fs::rename(&path, &target).map_err(|e| CacheError::io(&target, e))?;
            report.corrupt_blobs.push(blob.digest.clone());
        }
        let corrupt: HashSet<&Digest> = report.corrupt_blobs.iter().collect();
        for snapshot in &inventory.snapshots {
            let dir = self.snapshot_dir(&snapshot.info.digest);
            let mut damaged = snapshot.info.blobs.iter().any(|d| corrupt.contains(d));
            for file in &snapshot.info.files {
                if damaged {
                    break;
                }
                let path = file.path.under(&dir);
                let shared_with_good_blob =
                    fs::metadata(&path).is_ok_and(|m| good_inodes.contains(&m.ino()));
                if shared_with_good_blob {
                    continue;
                }
                report.files_checked += 1;
                report.file_bytes_checked += file.size;
                damaged = Digest::of_file(&path).ok().as_ref() != Some(&file.digest);
            }
            if !damaged {
                continue;
            }
            if self.remove_snapshot_unless_leased(&snapshot.info.digest)? {
                report.snapshots_dropped.push(snapshot.info.digest.clone());
            } else {
                tracing::error!(snapshot = %snapshot.info.digest, "a mounted snapshot is damaged; it is kept until its volumes are unpublished");
                report.leased_damaged.push(snapshot.info.digest.clone());
            }
        }
        Ok(report)
    }
}

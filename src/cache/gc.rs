//! Garbage collection: keeps the cache under its size limit and the filesystem under its high
//! watermark. Stale partial downloads and unreferenced blobs go first, then least-recently-used
//! snapshots with the blobs only they needed. A leased or protected snapshot, and a blob that
//! running work holds, are never removed; what dead work held is reclaimed first.

use super::error::CacheError;
use super::usage::Inventory;
use super::{remove_tree, Cache};
use crate::digest::Digest;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// When and how far to collect.
#[derive(Clone, Debug)]
pub struct GcPolicy {
    /// Evict until the cache is at most `low_watermark * max_size` once it exceeds `max_size`.
    pub max_size: Option<u64>,
    /// Also evict while the cache filesystem is more than this fraction full (e.g. 0.85) ...
    pub high_watermark: Option<f64>,
    /// ... down to this fraction (of `max_size`, or of the filesystem).
    pub low_watermark: f64,
    /// Partial downloads untouched for this long are removed.
    pub partial_max_age: Duration,
    /// Unreferenced blobs younger than this are kept (a pull may be about to use them).
    pub blob_grace: Duration,
    /// Hidden temporary files (of writers killed between write and rename) older than this go.
    pub temp_max_age: Duration,
    /// Snapshots that must stay whatever the pressure (warm list, pulls in flight).
    pub protected: HashSet<Digest>,
    /// Report what would go, remove nothing.
    pub dry_run: bool,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            max_size: None,
            high_watermark: None,
            low_watermark: 0.8,
            partial_max_age: Duration::from_secs(24 * 3600),
            blob_grace: Duration::from_secs(3600),
            temp_max_age: Duration::from_secs(60),
            protected: HashSet::new(),
            dry_run: false,
        }
    }
}

/// What a pass removed (or, dry, would remove).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: u64,
    pub snapshots_removed: Vec<String>,
    pub blobs_removed: usize,
    pub partials_removed: usize,
    /// Over the limit with nothing left that may be removed (everything leased/protected).
    pub still_over_limit: bool,
}

impl Cache {
    /// One collection pass under `policy`.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport, CacheError> {
        let now = SystemTime::now();
        if !policy.dry_run {
            self.reclaim_dead_work()?;
            self.remove_leftovers(policy.temp_max_age);
        }
        let mut inventory = self.inventory()?;
        let mut report = GcReport {
            dry_run: policy.dry_run,
            bytes_before: inventory.total_bytes(),
            ..Default::default()
        };

        let stale: Vec<PathBuf> = inventory
            .partials
            .iter()
            .filter(|p| age(now, p.modified) > policy.partial_max_age)
            .map(|p| p.path.clone())
            .collect();
        for path in &stale {
            self.remove_path(path, policy.dry_run)?;
        }
        inventory.partials.retain(|p| !stale.contains(&p.path));
        report.partials_removed = stale.len();

        let target = self.target_bytes(policy, report.bytes_before)?;
        let over = |inventory: &Inventory| target.is_some_and(|t| inventory.total_bytes() > t);

        // Blobs no snapshot needs, oldest first; young ones may belong to a pull in flight.
        let referenced = inventory.referenced_blobs();
        let mut orphans: Vec<_> = inventory
            .blobs
            .iter()
            .filter(|b| !referenced.contains(&b.digest) && age(now, b.modified) > policy.blob_grace)
            .cloned()
            .collect();
        orphans.sort_by_key(|b| b.modified);
        for blob in orphans {
            if self.remove_blob(&blob.digest, policy.dry_run)? {
                inventory.blobs.retain(|b| b.digest != blob.digest);
                report.blobs_removed += 1;
            }
        }

        // Least recently used snapshots while over the target.
        while over(&inventory) {
            let candidate = inventory
                .snapshots
                .iter()
                .filter(|s| !s.leased && !policy.protected.contains(&s.info.digest))
                .min_by_key(|s| s.last_used)
                .map(|s| s.info.digest.clone());
            let Some(digest) = candidate else {
                report.still_over_limit = true;
                break;
            };
            let entry = inventory
                .snapshots
                .iter()
                .position(|s| s.info.digest == digest)
                .map(|i| inventory.snapshots.remove(i))
                .expect("candidate is in the inventory");
            // Decided under the snapshot's lock: a lease may have arrived meanwhile.
            if !policy.dry_run && !self.remove_snapshot_unless_leased(&digest)? {
                continue;
            }
            report
                .snapshots_removed
                .push(format!("{} ({})", entry.info.reference, digest));
            let still_needed = inventory.referenced_blobs();
            let freed: Vec<Digest> = entry
                .info
                .blobs
                .iter()
                .chain(entry.info.files.iter().map(|f| &f.digest))
                .filter(|d| !still_needed.contains(*d))
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            for digest in freed {
                if inventory.blobs.iter().any(|b| b.digest == digest)
                    && self.remove_blob(&digest, policy.dry_run)?
                {
                    inventory.blobs.retain(|b| b.digest != digest);
                    report.blobs_removed += 1;
                }
            }
        }

        report.bytes_after = inventory.total_bytes();
        report.bytes_freed = report.bytes_before.saturating_sub(report.bytes_after);
        Ok(report)
    }

    /// The size to shrink to, if the cache is over a limit right now.
    fn target_bytes(&self, policy: &GcPolicy, current: u64) -> Result<Option<u64>, CacheError> {
        let mut target: Option<u64> = None;
        if let Some(max) = policy.max_size {
            if current > max {
                target = Some((max as f64 * policy.low_watermark) as u64);
            }
        }
        if let Some(high) = policy.high_watermark {
            let stat = nix::sys::statvfs::statvfs(self.root())
                .map_err(|e| CacheError::io(self.root(), e.into()))?;
            let total = stat.blocks() as u64 * stat.fragment_size() as u64;
            let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            let used = total.saturating_sub(free);
            if total > 0 && used as f64 / total as f64 > high {
                let must_free = used.saturating_sub((total as f64 * policy.low_watermark) as u64);
                let fs_target = current.saturating_sub(must_free);
                target = Some(target.map_or(fs_target, |t| t.min(fs_target)));
            }
        }
        Ok(target)
    }

    /// Removes a blob no live work holds (dry: says whether it would). Returns whether it went.
    fn remove_blob(&self, blob: &Digest, dry_run: bool) -> Result<bool, CacheError> {
        if dry_run {
            return Ok(!self.blob_is_leased(blob)?);
        }
        self.remove_blob_unless_leased(blob)
    }

    fn remove_path(&self, path: &std::path::Path, dry_run: bool) -> Result<(), CacheError> {
        if dry_run {
            return Ok(());
        }
        remove_tree(path)
    }
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

//! Restart reconciliation: after a crash or upgrade the daemon compares the lease files with
//! the mount table. A lease whose target is still mounted is kept; a lease without its mount
//! (the crash fell between lease and mount, or someone unmounted) is dropped; a mount of a
//! cache snapshot without a lease is adopted so GC keeps its snapshot. Nothing here fails the
//! daemon: odd state is logged and left for unpublish to clean.

use crate::csi::mountinfo;
use crate::csi::volumes::{mount_table, real_path, snapshot_of_mount, Volumes};

/// What reconciliation found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub kept: usize,
    pub dropped: usize,
    pub adopted: usize,
}

pub fn reconcile(volumes: &Volumes) -> Reconciled {
    let mut outcome = Reconciled::default();
    let table = match mount_table() {
        Ok(table) => table,
        Err(status) => {
            tracing::error!(error = %status.message(), "cannot read the mount table; leases left as they are");
            return outcome;
        }
    };
    let leases = match volumes.csi_leases() {
        Ok(leases) => leases,
        Err(status) => {
            tracing::error!(error = %status.message(), "cannot read the lease files; leases left as they are");
            return outcome;
        }
    };
    let cache = volumes.cache();
    let mut leased_targets = Vec::new();
    for lease in &leases {
        let Some(target) = &lease.target else {
            continue;
        };
        let here = real_path(target);
        if let Some(mount) = mountinfo::mounts_at(&table, &here).last() {
            // Something is mounted there: keep the lease even if the mount does not look like
            // this snapshot (losing a lease could let GC delete files a pod is reading).
            if snapshot_of_mount(cache, &table, mount).as_ref() != Some(&lease.snapshot) {
                tracing::warn!(target = %target.display(), snapshot = %lease.snapshot, root = %mount.root.display(), "leased target shows something else; keeping the lease until unpublish");
            }
            outcome.kept += 1;
            leased_targets.push(here);
            continue;
        }
        tracing::warn!(target = %target.display(), snapshot = %lease.snapshot, "lease without its mount; dropping it");
        match cache.drop_lease(&lease.snapshot, &lease.holder) {
            Ok(_) => outcome.dropped += 1,
            Err(e) => {
                tracing::error!(error = %crate::errors::render(&e), "cannot drop the stale lease; leaving it")
            }
        }
    }
    for entry in &table {
        let Some(snapshot) = snapshot_of_mount(cache, &table, entry) else {
            continue;
        };
        if leased_targets.contains(&entry.mount_point) {
            continue;
        }
        tracing::warn!(target = %entry.mount_point.display(), %snapshot, "mount of a cache snapshot without a lease; adopting it");
        match volumes.adopt(&snapshot, &entry.mount_point) {
            Ok(()) => {
                outcome.adopted += 1;
                leased_targets.push(entry.mount_point.clone());
            }
            Err(status) => {
                tracing::error!(error = %status.message(), "cannot record a lease for it")
            }
        }
    }
    outcome
}

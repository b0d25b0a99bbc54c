//! The daemon's GC loop: every minute, refresh the cache metrics and, when a size limit or a
//! watermark is set, collect garbage. Leased (mounted) and warm-listed models are never removed.

use super::warm_loop::WarmShared;
use crate::cache::{Cache, GcPolicy};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

pub struct GcLoop {
    pub cache: Cache,
    /// Size limit and watermarks; without either, only garbage (stale partials, orphan blobs) goes.
    pub policy: GcPolicy,
    pub every: Duration,
    pub metrics: Arc<Metrics>,
    pub warm: WarmShared,
}

impl GcLoop {
    pub async fn run(self) {
        loop {
            self.pass().await;
            tokio::time::sleep(self.every).await;
        }
    }

    /// One pass, also used right after a pull so a burst of models does not overfill the disk.
    pub async fn pass(&self) {
        let mut policy = self.policy.clone();
        policy.protected = self.warm.protected.lock().expect("warm state lock").clone();
        let cache = self.cache.clone();
        let result = tokio::task::spawn_blocking(move || {
            let report = cache.gc(&policy)?;
            let inventory = cache.inventory()?;
            Ok::<_, crate::cache::CacheError>((report, inventory))
        })
        .await
        .expect("gc task panicked");
        match result {
            Ok((report, inventory)) => {
                if report.bytes_freed > 0 || report.still_over_limit {
                    tracing::info!(
                        freed = report.bytes_freed,
                        models = report.snapshots_removed.len(),
                        blobs = report.blobs_removed,
                        still_over_limit = report.still_over_limit,
                        "garbage collected"
                    );
                }
                self.metrics.record_gc(&report);
                self.metrics.record_inventory(&inventory);
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::render(&e), "garbage collection failed; retrying next pass")
            }
        }
    }
}

//! What the snapshot builder and the streamed layers share: the job a snapshot build runs
//! under, the per-layer context, and the bridge to blocking filesystem work.

use super::source::Source;
use super::PullError;
use crate::artifact::Plan;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::materialize::{self, MaterializeError};
use crate::progress::Progress;
use std::collections::HashSet;

/// What building a snapshot needs besides the cache and the registry.
pub struct SnapshotJob<'a> {
    pub plan: &'a Plan,
    /// Archive layers to download and unpack at once (see `streamed_layers`).
    pub streamed: &'a HashSet<Digest>,
    pub limits: materialize::Limits,
    /// Downloads at once: streamed layers after the first are fetched ahead into their partials.
    pub concurrency: usize,
    pub progress: &'a Progress,
}

/// What every layer of one attempt shares.
pub struct LayerJobs<'a> {
    pub cache: &'a Cache,
    pub source: &'a Source<'a>,
    pub job: &'a SnapshotJob<'a>,
    pub claimed: &'a std::sync::Mutex<HashSet<Digest>>,
    /// A resumed layer that fails may ask for another attempt.
    pub may_retry: bool,
}

/// Runs filesystem work on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MaterializeError> + Send + 'static,
) -> Result<T, PullError> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .expect("snapshot task panicked")?)
}

/// Whether a layer's media type says it is a plain (uncompressed) tar.
pub fn is_plain_tar(media_type: &str) -> bool {
    !media_type.contains("gzip") && !media_type.contains("zstd")
}

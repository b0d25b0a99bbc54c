//! The daemon's warm loop: pulls the warm list's models at start, on every interval, and as
//! soon as the file changes (a ConfigMap update), without a restart. Warm models are
//! protected from GC.

use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::registry::RegistryClient;
use crate::warm::{warm_once, WarmList, WarmState, WarmStatus};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(2);

/// State shared with GC and the status endpoints.
#[derive(Clone, Default)]
pub struct WarmShared {
    /// Snapshots the warm list keeps; GC never removes them.
    pub protected: Arc<Mutex<HashSet<Digest>>>,
    /// Each entry's state after the last pass.
    pub statuses: Arc<Mutex<Vec<WarmStatus>>>,
}

pub struct WarmLoop {
    pub file: PathBuf,
    pub node_labels: BTreeMap<String, String>,
    pub cache: PathBuf,
    pub registry: Arc<RegistryClient>,
    pub concurrency: usize,
    pub policy: Option<Arc<crate::policy::Policy>>,
    pub metrics: Arc<Metrics>,
    pub shared: WarmShared,
}

impl WarmLoop {
    /// Runs until the task is dropped or aborted.
    pub async fn run(self) {
        let mut last_content: Option<Vec<u8>> = None;
        let mut next_pass = Instant::now();
        let mut interval = Duration::from_secs(600);
        loop {
            let content = std::fs::read(&self.file).ok();
            let changed = content.is_some() && content != last_content;
            if changed || Instant::now() >= next_pass {
                if changed && last_content.is_some() {
                    tracing::info!(file = %self.file.display(), "warm list changed; warming now");
                }
                last_content = content;
                match WarmList::load(&self.file) {
                    Ok(list) => {
                        interval = list.interval;
                        self.pass(&list).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %crate::errors::render(&e), "warm list unusable; keeping the previous state")
                    }
                }
                next_pass = Instant::now() + interval;
            }
            tokio::time::sleep(FILE_POLL).await;
        }
    }

    async fn pass(&self, list: &WarmList) {
        let started = Instant::now();
        let statuses = warm_once(
            list,
            &self.node_labels,
            &self.cache,
            &self.registry,
            self.concurrency,
            self.policy.as_ref(),
            true,
        )
        .await;
        for status in &statuses {
            let figures = match status.state {
                WarmState::NotForThisNode => continue,
                WarmState::Ready => Some((status.bytes_fetched, status.bytes_reused)),
                WarmState::Failed => None,
            };
            self.metrics
                .record_pull_figures("warm", figures, status.seconds);
        }
        self.metrics
            .record_warm_states(statuses.iter().map(|s| match s.state {
                WarmState::Ready => "ready",
                WarmState::Failed => "failed",
                WarmState::NotForThisNode => "not_for_this_node",
            }));
        let protected: HashSet<Digest> = statuses
            .iter()
            .filter_map(|s| s.digest.as_deref())
            .filter_map(|d| d.parse().ok())
            .collect();
        *self.shared.protected.lock().expect("warm state lock") = protected;
        *self.shared.statuses.lock().expect("warm state lock") = statuses;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "warm pass done");
    }
}

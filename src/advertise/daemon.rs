//! The node-label loop inside `tugboat node`: at start it reads the Node's labels and patches
//! them to what the cache holds (so labels left by a crash, a wiped hostPath or a hand edit
//! are corrected), then rescans the cache every few seconds and patches only when the label
//! set differs, all changes in one patch. In steady state it sends nothing but a GET every
//! ten minutes (a hand edit made meanwhile is corrected then). A failed request is logged,
//! counted and retried with backoff; it never touches a publish or a pull.

use super::api::{ClusterSource, NodeApi};
use super::plan::{self, Desired};
use super::scan::Scanner;
use super::{AdvertiseError, Mode};
use crate::cache::{Cache, CacheError};
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the daemon advertises (`tugboat node --advertise ...`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    /// This node's name (`--node-name`, NODE_NAME from the downward API).
    pub node_name: Option<String>,
    /// At most this many models are advertised (`--advertise-max-models`).
    pub max_models: usize,
    /// A kubeconfig to use instead of the in-cluster configuration (a daemon outside a pod).
    pub kubeconfig: Option<PathBuf>,
    /// How often the cache is rescanned.
    pub every: Duration,
    /// How often the Node's labels are read again although nothing changed here.
    pub resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Auto,
            node_name: None,
            max_models: 100,
            kubeconfig: None,
            every: Duration::from_secs(5),
            resync: Duration::from_secs(600),
        }
    }
}

/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Decides whether to advertise (saying once in the log why not) and prepares the loop.
/// Only `--advertise on` turns a missing node name or cluster into an error.
pub async fn start(
    settings: &Settings,
    cache: Cache,
    warm_list: Option<PathBuf>,
    metrics: Arc<Metrics>,
) -> Result<Option<Advertiser>, AdvertiseError> {
    let auto = match settings.mode {
        Mode::Off => {
            tracing::info!("node labels off (--advertise off)");
            return Ok(None);
        }
        Mode::Auto => true,
        Mode::On => false,
    };
    let off = |why: String| {
        tracing::info!("node labels off: {why} (--advertise auto)");
        Ok(None)
    };
    let node = settings
        .node_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let Some(node) = node else {
        return if auto {
            off("no node name (--node-name, or NODE_NAME from the downward API)".into())
        } else {
            Err(AdvertiseError::NodeName)
        };
    };
    let source = match &settings.kubeconfig {
        Some(path) => ClusterSource::Kubeconfig(path.clone()),
        None => ClusterSource::InCluster,
    };
    if source == ClusterSource::InCluster {
        if let Some(why) = ClusterSource::in_cluster_absent() {
            return if auto {
                off(why)
            } else {
                Err(AdvertiseError::Cluster { detail: why })
            };
        }
    }
    let api = match source
        .config()
        .await
        .and_then(|c| NodeApi::new(c, node, metrics.clone()))
    {
        Ok(api) => api,
        Err(e) if auto => return off(crate::errors::render(&e)),
        Err(e) => return Err(e),
    };
    tracing::info!(
        node,
        max_models = settings.max_models,
        "node labels on: this node's cached models are advertised on its Node object"
    );
    Ok(Some(Advertiser {
        api,
        scanner: Arc::new(Mutex::new(Scanner::new(cache, warm_list))),
        metrics,
        settings: settings.clone(),
    }))
}

/// The running loop's parts.
pub struct Advertiser {
    api: NodeApi,
    scanner: Arc<Mutex<Scanner>>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error("scanning the cache")]
    Scan(#[source] CacheError),
    #[error(transparent)]
    Api(AdvertiseError),
}

/// What the loop knows between ticks.
#[derive(Default)]
struct Known {
    /// The Node's tugboat-owned labels as the apiserver last reported them.
    labels: Option<BTreeMap<String, String>>,
    read_at: Option<Instant>,
    /// Models left out by the bound, as last said in the log.
    left_out_said: usize,
}

impl Advertiser {
    /// Runs until the task is aborted (the daemon stopping). Labels stay on the Node when the
    /// daemon stops: the models stay in the cache.
    pub async fn run(self) {
        let mut known = Known::default();
        let mut failures: u32 = 0;
        loop {
            let wait = match self.tick(&mut known).await {
                Ok(()) => {
                    failures = 0;
                    self.settings.every
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(self.settings.every, failures);
                    tracing::warn!(
                        error = %crate::errors::render(&e),
                        retry_in = wait.as_secs(),
                        "node labels not updated; retrying"
                    );
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One pass: scan, read the Node's labels if stale, patch what differs.
    async fn tick(&self, known: &mut Known) -> Result<(), TickError> {
        let desired = self.desired().await.map_err(TickError::Scan)?;
        if desired.left_out != known.left_out_said {
            if desired.left_out > 0 {
                tracing::info!(
                    advertised = desired.models,
                    left_out = desired.left_out,
                    max = self.settings.max_models,
                    "more complete models than --advertise-max-models: the warm list's and the most recently used are advertised"
                );
            }
            known.left_out_said = desired.left_out;
        }
        let stale = known
            .read_at
            .is_none_or(|at| at.elapsed() >= self.settings.resync);
        let current = match (&known.labels, stale) {
            (Some(labels), false) => labels.clone(),
            _ => {
                let labels = match self.api.labels().await {
                    Ok(labels) => plan::owned(&labels),
                    Err(e) => {
                        known.labels = None;
                        return Err(TickError::Api(e));
                    }
                };
                known.labels = Some(labels.clone());
                known.read_at = Some(Instant::now());
                labels
            }
        };
        let plan = plan::plan(&desired.labels, &current);
        if !plan.is_empty() {
            match self.api.patch(&plan.merge_patch()).await {
                Ok(after) => {
                    self.metrics.record_advertise_patch("applied");
                    tracing::info!(
                        node = self.api.node(),
                        set = plan.set.len(),
                        removed = plan.remove.len(),
                        models = desired.models,
                        "node labels updated"
                    );
                    known.labels = Some(plan::owned(&after));
                }
                Err(e) => {
                    self.metrics.record_advertise_patch("failed");
                    known.labels = None;
                    return Err(TickError::Api(e));
                }
            }
        }
        self.metrics
            .record_advertised(desired.models as u64, desired.bytes);
        Ok(())
    }

    async fn desired(&self) -> Result<Desired, CacheError> {
        let scanner = self.scanner.clone();
        let max = self.settings.max_models;
        tokio::task::spawn_blocking(move || {
            let held = scanner.lock().expect("scanner lock").scan()?;
            Ok(plan::desired(&held, max))
        })
        .await
        .expect("scan task panicked")
    }
}

/// The wait after `failures` failures in a row: the scan interval doubled each time, at most
/// five minutes.
fn backoff(every: Duration, failures: u32) -> Duration {
    every
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let every = Duration::from_secs(5);
        assert_eq!(backoff(every, 1), Duration::from_secs(10));
        assert_eq!(backoff(every, 2), Duration::from_secs(20));
        assert_eq!(backoff(every, 6), Duration::from_secs(300));
        assert_eq!(backoff(every, u32::MAX), Duration::from_secs(300));
    }

    #[tokio::test]
    async fn off_outside_a_cluster_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut settings = Settings {
            node_name: Some("node-a".into()),
            ..Settings::default()
        };
        if ClusterSource::in_cluster_absent().is_some() {
            let started = start(&settings, cache.clone(), None, metrics.clone()).await;
            assert!(matches!(started, Ok(None)));
            settings.mode = Mode::On;
            let refused = start(&settings, cache.clone(), None, metrics.clone()).await;
            assert!(matches!(refused, Err(AdvertiseError::Cluster { .. })));
        }
        settings.mode = Mode::On;
        settings.node_name = None;
        let refused = start(&settings, cache.clone(), None, metrics.clone()).await;
        assert!(matches!(refused, Err(AdvertiseError::NodeName)));
        settings.mode = Mode::Off;
        assert!(matches!(
            start(&settings, cache, None, metrics).await,
            Ok(None)
        ));
    }
}

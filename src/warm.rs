//! The warm list: a YAML file (a ConfigMap key) naming models every node should hold, and one
//! warming pass over it. `tugboat warm FILE` runs one pass; the node daemon repeats it on an
//! interval and whenever the file changes.

use crate::cache::{Cache, Lease};
use crate::errors::{Classify, FailureKind};
use crate::policy::{Gate, Mode, Policy};
use crate::progress::Progress;
use crate::pull::{pull_leased, PullError, PullPolicy, PullReport, PullRequest};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's shape:
/// ```yaml
/// interval: 10m
/// models:
///   - reference: harbor.example.com/ml-models/tinyllama:v1.0.0-gguf
///     pullPolicy: IfNotPresent      # optional
///     nodeSelector: {gpu: a100}     # optional: only nodes with these labels
///     name: tinyllama               # optional: the node label name.model.tugboat.io/tinyllama
/// ```
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmList {
    #[serde(default = "default_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default)]
    pub models: Vec<WarmEntry>,
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmEntry {
    pub reference: String,
    #[serde(default)]
    pub pull_policy: Option<PullPolicy>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// A short name for the model, advertised on the Node as `name.model.tugboat.io/<name>`
    /// while the node holds it (a label name: 1-63 letters, digits, '-', '_', '.').
    #[serde(default)]
    pub name: Option<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(600)
}

mod humantime_serde_compat {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("interval {text:?}: {e} (try 30s, 10m, 1h)"))
        })?;
        if duration < Duration::from_secs(1) {
            return Err(serde::de::Error::custom("interval must be at least 1s"));
        }
        Ok(duration)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("warm list {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("warm list {}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
}

/// Where one entry stands after a pass.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmState {
    /// In the cache.
    Ready,
    /// The node's labels do not match the entry's selector.
    NotForThisNode,
    /// The last attempt failed; the next pass retries.
    Failed,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WarmStatus {
    pub reference: String,
    pub state: WarmState,
    pub digest: Option<String>,
    pub bytes_fetched: u64,
    pub bytes_reused: u64,
    pub seconds: f64,
    pub error: Option<String>,
    /// The failure's kind (the same as `tugboat pull` of this entry would report).
    pub kind: Option<crate::errors::FailureKind>,
    /// The snapshot the entry is held in, once ready.
    #[serde(skip)]
    pub snapshot: Option<crate::digest::Digest>,
}

impl WarmList {
    /// Reads and validates the file (every reference must parse).
    pub fn load(path: &Path) -> Result<WarmList, WarmError> {
        let text = std::fs::read_to_string(path).map_err(|source| WarmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let list: WarmList = serde_yaml_ng::from_str(&text).map_err(|e| WarmError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let invalid = |detail: String| WarmError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let mut names = std::collections::BTreeSet::new();
        for entry in &list.models {
            entry
                .reference
                .parse::<Reference>()
                .map_err(|e| invalid(crate::errors::render(&e)))?;
            if let Some(name) = &entry.name {
                if let Some(problem) = crate::advertise::keys::name_problem(name) {
                    return Err(invalid(format!(
                        "name {name:?} of {}: {problem} (it becomes a node label name)",
                        entry.reference
                    )));
                }
                if !names.insert(name.as_str()) {
                    return Err(invalid(format!("name {name:?} is given to two entries")));
                }
            }
        }
        Ok(list)
    }
}

impl WarmEntry {
    fn selects(&self, node_labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node_labels.get(k) == Some(v))
    }
}

/// Lease label `owner` of the leases that keep warm-list models in the cache.
const OWNER: &str = "owner";
const OWNER_WARM: &str = "warm";

/// Pulls every entry meant for this node into `cache`, one after another (each pull is
/// itself parallel), and reports each entry's state. Failures do not stop the pass.
/// With `pin` (the node daemon), each ready model keeps a lease, so no collection removes it,
/// and the leases of models the list no longer names go.
pub async fn warm_once(
    list: &WarmList,
    node_labels: &BTreeMap<String, String>,
    cache: &Path,
    registry: &RegistryClient,
    concurrency: usize,
    policy: Option<&std::sync::Arc<crate::policy::Policy>>,
    pin: bool,
) -> Vec<WarmStatus> {
    let mut statuses = Vec::new();
    for entry in &list.models {
        let mut status = WarmStatus {
            reference: entry.reference.clone(),
            state: WarmState::NotForThisNode,
            digest: None,
            bytes_fetched: 0,
            bytes_reused: 0,
            seconds: 0.0,
            error: None,
            kind: None,
            snapshot: None,
        };
        if !entry.selects(node_labels) {
            statuses.push(status);
            continue;
        }
        let reference: Reference = entry.reference.parse().expect("validated at load");
        let request = PullRequest {
            reference,
            dest: None,
            cache: Some(cache.to_path_buf()),
            policy: entry.pull_policy.unwrap_or(PullPolicy::IfNotPresent),
            verify: false,
            concurrency,
            format: None,
            layout: Default::default(),
            dest_link: Default::default(),
        };
        let started = std::time::Instant::now();
        let result = warm_one(&request, registry, policy, pin).await;
        status.seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(report) => {
                tracing::info!(reference = %entry.reference, digest = %report.digest, fetched = report.bytes_fetched, "warm");
                status.state = WarmState::Ready;
                status.digest = Some(report.digest.to_string());
                status.snapshot = Some(request.snapshot_id(&report.digest));
                status.bytes_fetched = report.bytes_fetched;
                status.bytes_reused = report.bytes_reused;
            }
            Err(e) => {
                let error = crate::errors::render(&e);
                tracing::warn!(reference = %entry.reference, %error, "warming failed; the next pass retries");
                status.state = WarmState::Failed;
                status.error = Some(error);
                status.kind = Some(e.kind());
            }
        }
        statuses.push(status);
    }
    if pin {
        if let Err(e) = release_unlisted(cache, &statuses) {
            tracing::warn!(error = %crate::errors::render(&e), "cannot release the leases of models no longer warm; the next pass retries");
        }
    }
    statuses
}

/// One entry, under the node policy when there is one (mode `warm`, no namespace), held by a
/// work lease until its model is pinned.
async fn warm_one(
    request: &PullRequest,
    registry: &RegistryClient,
    policy: Option<&std::sync::Arc<Policy>>,
    pin: bool,
) -> Result<PullReport, PullError> {
    let cache = Cache::open(request.cache.as_ref().expect("warm pulls into a cache"))?;
    let held = cache.begin_work(&format!("warm {}", request.reference))?;
    let gate = match policy {
        Some(policy) => policy.admit(&request.reference, None, Mode::Warm, None)?,
        None => Gate::open(),
    };
    let anonymous;
    let client = if gate.node_credentials() {
        registry
    } else {
        anonymous = registry.anonymous()?;
        &anonymous
    };
    let report = pull_leased(request, client, &Progress::hidden(), &gate, Some(&held)).await?;
    if pin {
        cache.take_lease(&warm_lease(request, &report))?;
    }
    Ok(report)
}

/// Whether two reference texts name the same thing once normalised.
fn same_reference(a: &str, b: &str) -> bool {
    match (a.parse::<Reference>(), b.parse::<Reference>()) {
        (Ok(a), Ok(b)) => a.to_string() == b.to_string(),
        _ => a == b,
    }
}

/// The lease that keeps one warm entry's model.
fn warm_lease(request: &PullRequest, report: &PullReport) -> Lease {
    let mut labels = BTreeMap::new();
    labels.insert(OWNER.to_string(), OWNER_WARM.to_string());
    Lease {
        snapshot: request.snapshot_id(&report.digest),
        holder: format!("warm {}", report.reference),
        target: None,
        reference: report.reference.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        labels,
    }
}

/// Drops the warm leases the pass did not confirm: models the list no longer names (or not
/// for this node) and older digests of entries that resolved anew. A failed entry keeps its
/// lease: its model may still be the one the next pass finds.
fn release_unlisted(cache: &Path, statuses: &[WarmStatus]) -> Result<(), crate::cache::CacheError> {
    let cache = Cache::open(cache)?;
    for lease in cache.leases()? {
        if lease.labels.get(OWNER).map(String::as_str) != Some(OWNER_WARM) {
            continue;
        }
        let keep = statuses.iter().any(|s| {
            same_reference(&s.reference, &lease.reference)
                && match s.state {
                    WarmState::Failed => true,
                    WarmState::NotForThisNode => false,
                    WarmState::Ready => s.snapshot.as_ref() == Some(&lease.snapshot),
                }
        });
        if !keep {
            tracing::info!(reference = %lease.reference, snapshot = %lease.snapshot, "no longer warm; its model may be collected");
            cache.drop_lease(&lease.snapshot, &lease.holder)?;
        }
    }
    Ok(())
}

/// Parses `k=v,k2=v2` (the `--node-labels` flag).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{pair:?}: expected key=value"))
        })
        .collect()
}

impl Classify for WarmError {
    fn kind(&self) -> FailureKind {
        FailureKind::Input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.yaml");
        std::fs::write(
            &path,
            "interval: 10m\nmodels:\n  - reference: harbor.example.com/ml-models/tinyllama:v1.0.0-gguf\n    pullPolicy: IfNotPresent\n  - reference: r.example.com/m/x:1\n    nodeSelector: {gpu: a100}\n",
        )
        .unwrap();
        let list = WarmList::load(&path).unwrap();
        assert_eq!(list.interval, Duration::from_secs(600));
        assert_eq!(list.models.len(), 2);
        assert_eq!(list.models[0].pull_policy, Some(PullPolicy::IfNotPresent));
        let labels = parse_labels("gpu=a100,zone=a").unwrap();
        assert!(list.models[1].selects(&labels));
        assert!(!list.models[1].selects(&BTreeMap::new()));
        std::fs::write(
            &path,
            "models:\n  - reference: r.example.com/m/x:1\n    name: Llama-3.1_8B\n",
        )
        .unwrap();
        let list = WarmList::load(&path).unwrap();
        assert_eq!(list.models[0].name.as_deref(), Some("Llama-3.1_8B"));
    }

    #[test]
    fn refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.yaml");
        for bad in [
            "interval: soon\n",
            "models:\n  - reference: UPPER/x\n",
            "models:\n  - reference: r.example.com/m/x:1\n    name: -bad\n",
            "models:\n  - reference: r.example.com/m/x:1\n    name: a\n  - reference: r.example.com/m/y:1\n    name: a\n",
            "modles: []\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(WarmList::load(&path).is_err(), "{bad:?}");
        }
        assert!(WarmList::load(&dir.path().join("missing")).is_err());
    }
}

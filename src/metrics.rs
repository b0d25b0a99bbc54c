//! The node daemon's Prometheus metrics: bytes from the registry versus served from the cache, pull
//! durations, cache size, GC, in-flight pulls, CSI calls by method and code, warm entries, and
//! the models advertised on the Node (with the patches and apiserver requests that cost).
//! Encoded as OpenMetrics text for `/metrics`.

use crate::cache::{GcReport, Inventory};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `hit` (cache), `fetched` (registry) or `error`.
    pub outcome: String,
    /// `csi`, `warm` or `pull`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CsiLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PatchLabels {
    /// `applied` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// `get` or `patch`.
    pub verb: String,
}

type HistogramFamily = Family<OutcomeLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub registry_bytes: Counter,
    pub cache_served_bytes: Counter,
    pub pulls: Family<OutcomeLabels, Counter>,
    pub pull_duration: HistogramFamily,
    pub pulls_in_flight: Gauge,
    pub cache_size_bytes: Gauge,
    pub cache_models: Gauge,
    pub cache_blobs: Gauge,
    pub gc_runs: Counter,
    pub gc_freed_bytes: Counter,
    pub csi_calls: Family<CsiLabels, Counter>,
    pub warm_entries: Family<StateLabels, Gauge>,
    pub advertised_models: Gauge,
    pub advertised_bytes: Gauge,
    pub advertise_patches: Family<PatchLabels, Counter>,
    pub advertise_requests: Family<VerbLabels, Counter>,
}

fn pull_histogram() -> Histogram {
    // 10 ms .. ~80 min: cache hits at the bottom, 140 GB pulls at the top.
    Histogram::new(exponential_buckets(0.01, 2.5, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tugboat");
        let metrics = Metrics {
            registry_bytes: Counter::default(),
            cache_served_bytes: Counter::default(),
            pulls: Family::default(),
            pull_duration: Family::new_with_constructor(pull_histogram as fn() -> Histogram),
            pulls_in_flight: Gauge::default(),
            cache_size_bytes: Gauge::default(),
            cache_models: Gauge::default(),
            cache_blobs: Gauge::default(),
            gc_runs: Counter::default(),
            gc_freed_bytes: Counter::default(),
            csi_calls: Family::default(),
            warm_entries: Family::default(),
            advertised_models: Gauge::default(),
            advertised_bytes: Gauge::default(),
            advertise_patches: Family::default(),
            advertise_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "policy_refusals",
            "Requests the node access policy refused, by reason",
            crate::policy::metrics::REFUSALS.clone(),
        );
        registry.register(
            "signature_verdicts",
            "Signature policy verdicts: verified, refused, warned",
            crate::policy::metrics::SIGNATURES.clone(),
        );
        registry.register(
            "registry_bytes",
            "Bytes downloaded from registries",
            metrics.registry_bytes.clone(),
        );
        registry.register(
            "cache_served_bytes",
            "Bytes of models served from the node cache without downloading",
            metrics.cache_served_bytes.clone(),
        );
        registry.register(
            "pulls",
            "Model pulls by outcome and source",
            metrics.pulls.clone(),
        );
        registry.register(
            "pull_duration_seconds",
            "Wall time of model pulls",
            metrics.pull_duration.clone(),
        );
        registry.register(
            "pulls_in_flight",
            "Model pulls running now",
            metrics.pulls_in_flight.clone(),
        );
        registry.register(
            "cache_size_bytes",
            "Bytes the cache holds on disk (hard links counted once)",
            metrics.cache_size_bytes.clone(),
        );
        registry.register(
            "cache_models",
            "Models (snapshots) in the cache",
            metrics.cache_models.clone(),
        );
        registry.register(
            "cache_blobs",
            "Verified blobs in the cache",
            metrics.cache_blobs.clone(),
        );
        registry.register(
            "gc_runs",
            "Garbage-collection passes",
            metrics.gc_runs.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes freed by garbage collection",
            metrics.gc_freed_bytes.clone(),
        );
        registry.register(
            "csi_calls",
            "CSI calls by method and gRPC code",
            metrics.csi_calls.clone(),
        );
        registry.register(
            "warm_entries",
            "Warm-list entries by state",
            metrics.warm_entries.clone(),
        );
        registry.register(
            "advertised_models",
            "Models this node advertises as labels on its Node object",
            metrics.advertised_models.clone(),
        );
        registry.register(
            "advertised_bytes",
            "Bytes of the models this node advertises on its Node object",
            metrics.advertised_bytes.clone(),
        );
        registry.register(
            "advertise_patches",
            "Patches of the Node's labels, by outcome (applied, failed)",
            metrics.advertise_patches.clone(),
        );
        registry.register(
            "advertise_requests",
            "Requests to the Kubernetes apiserver for node labels, by verb (get, patch)",
            metrics.advertise_requests.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Records one finished pull from its figures: `(bytes fetched, bytes reused)`, or `None`
    /// for a failure.
    pub fn record_pull_figures(&self, source: &str, bytes: Option<(u64, u64)>, seconds: f64) {
        let outcome = match bytes {
            Some((fetched, reused)) => {
                self.registry_bytes.inc_by(fetched);
                self.cache_served_bytes.inc_by(reused);
                if fetched == 0 {
                    "hit"
                } else {
                    "fetched"
                }
            }
            None => "error",
        };
        let labels = OutcomeLabels {
            outcome: outcome.to_string(),
            source: source.to_string(),
        };
        self.pulls.get_or_create(&labels).inc();
        self.pull_duration.get_or_create(&labels).observe(seconds);
    }

    pub fn record_csi_call(&self, method: &str, code: &str) {
        self.csi_calls
            .get_or_create(&CsiLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn record_inventory(&self, inventory: &Inventory) {
        self.cache_size_bytes.set(inventory.total_bytes() as i64);
        self.cache_models.set(inventory.snapshots.len() as i64);
        self.cache_blobs.set(inventory.blobs.len() as i64);
    }

    pub fn record_gc(&self, report: &GcReport) {
        self.gc_runs.inc();
        self.gc_freed_bytes.inc_by(report.bytes_freed);
        self.cache_size_bytes.set(report.bytes_after as i64);
    }

    pub fn record_warm_states<'a>(&self, states: impl Iterator<Item = &'a str>) {
        self.warm_entries.clear();
        for state in states {
            self.warm_entries
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .inc();
        }
    }

    /// The models (and their bytes) the Node's labels now advertise.
    pub fn record_advertised(&self, models: u64, bytes: u64) {
        self.advertised_models.set(models as i64);
        self.advertised_bytes.set(bytes as i64);
    }

    pub fn record_advertise_patch(&self, outcome: &str) {
        self.advertise_patches
            .get_or_create(&PatchLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn record_advertise_request(&self, verb: &str) {
        self.advertise_requests
            .get_or_create(&VerbLabels {
                verb: verb.to_string(),
            })
            .inc();
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

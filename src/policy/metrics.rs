//! Policy counters, registered with the daemon's /metrics: refusals by reason, signature
//! verdicts by outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::LazyLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `verified`, `refused` or `warned`.
    pub outcome: String,
}

pub static REFUSALS: LazyLock<Family<ReasonLabels, Counter>> = LazyLock::new(Family::default);
pub static SIGNATURES: LazyLock<Family<VerdictLabels, Counter>> = LazyLock::new(Family::default);

pub fn refused(reason: super::Reason) {
    REFUSALS
        .get_or_create(&ReasonLabels {
            reason: reason.name().to_string(),
        })
        .inc();
}

pub fn signature(outcome: &str) {
    SIGNATURES
        .get_or_create(&VerdictLabels {
            outcome: outcome.to_string(),
        })
        .inc();
}

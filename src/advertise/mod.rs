//! Node labels: the node daemon tells Kubernetes which models its cache holds, as labels on its
//! own Node object, so a pod can prefer (or require) a node that already has its model.
//!
//! - `keys`: the label key scheme (what a reference is called on a Node);
//! - `scan`: what the cache holds complete (snapshots with their references, warm-list names);
//! - `plan`: the pure reconcile plan (desired set vs. the Node's tugboat-owned labels: one patch);
//! - `api`: the Kubernetes client (in-cluster config, GET the Node, merge-PATCH its labels);
//! - `daemon`: the loop inside `tugboat node` that keeps the labels equal to the cache.
//!
//! Off outside a cluster (the CLI, tests, the demo), saying so once.

pub mod api;
pub mod daemon;
pub mod keys;
pub mod plan;
pub mod scan;

use crate::errors::{Classify, FailureKind};
use std::path::PathBuf;

/// `--advertise`: whether the node's models become labels on its Node object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// On when the daemon runs in a pod (in-cluster configuration) and knows its node's name;
    /// otherwise off, said once in the log.
    #[default]
    Auto,
    /// On; the daemon refuses to start without a cluster or a node name.
    On,
    /// Off.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error(
        "--advertise on needs this node's name: --node-name, or NODE_NAME from the downward API (spec.nodeName)"
    )]
    NodeName,
    #[error("no in-cluster Kubernetes configuration ({detail}); run in a pod with a ServiceAccount token, or give --kubeconfig")]
    Cluster { detail: String },
    #[error("--kubeconfig {}: {detail}", path.display())]
    Kubeconfig { path: PathBuf, detail: String },
    #[error("{verb} node {node}: {detail}")]
    Api {
        verb: &'static str,
        node: String,
        /// The apiserver's HTTP status, when it answered.
        code: Option<u16>,
        detail: String,
    },
}

impl Classify for AdvertiseError {
    fn kind(&self) -> FailureKind {
        match self {
            AdvertiseError::NodeName
            | AdvertiseError::Cluster { .. }
            | AdvertiseError::Kubeconfig { .. } => FailureKind::Input,
            AdvertiseError::Api { code, .. } => match code {
                Some(401) => FailureKind::Unauthenticated,
                Some(403) => FailureKind::PermissionDenied,
                Some(404) => FailureKind::NotFound,
                Some(400..=499) => FailureKind::Input,
                _ => FailureKind::Network,
            },
        }
    }
}

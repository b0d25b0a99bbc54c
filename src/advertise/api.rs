//! The Kubernetes client of node labels (kube-rs): the in-cluster configuration (the pod's
//! ServiceAccount token and CA, `KUBERNETES_SERVICE_HOST`), or a kubeconfig file for a daemon
//! run outside a pod; then two requests on this node's Node object only, both on its metadata:
//! GET (the labels it has) and a JSON merge PATCH of `metadata.labels` (`null` removes one).
//! RBAC: `get` and `patch` on nodes, nothing more (manifests/rbac.yaml).

use super::AdvertiseError;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The field manager the apiserver records for the labels tugboat sets.
pub const FIELD_MANAGER: &str = "tugboat-node";

/// No request waits longer than this for the apiserver.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the cluster's address and credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterSource {
    /// The pod's ServiceAccount (`/var/run/secrets/kubernetes.io/serviceaccount`) and
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`.
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
}

impl ClusterSource {
    /// Why the in-cluster configuration cannot be there, if it cannot (checked without
    /// reading anything but the environment and one file's existence).
    pub fn in_cluster_absent() -> Option<String> {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            return Some("KUBERNETES_SERVICE_HOST is not set: not running in a pod".into());
        }
        let token = Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token");
        if !token.exists() {
            return Some(format!(
                "{} is missing: the pod has no ServiceAccount token mounted",
                token.display()
            ));
        }
        None
    }

    /// The client configuration, with tugboat's timeouts.
    pub async fn config(&self) -> Result<Config, AdvertiseError> {
        let mut config = match self {
            ClusterSource::InCluster => {
                Config::incluster().map_err(|e| AdvertiseError::Cluster {
                    detail: crate::errors::render(&e),
                })?
            }
            ClusterSource::Kubeconfig(path) => {
                let failed = |e: kube::config::KubeconfigError| AdvertiseError::Kubeconfig {
                    path: path.clone(),
                    detail: crate::errors::render(&e),
                };
                let file = Kubeconfig::read_from(path).map_err(failed)?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(failed)?
            }
        };
        config.connect_timeout = Some(TIMEOUT);
        config.read_timeout = Some(TIMEOUT);
        config.write_timeout = Some(TIMEOUT);
        Ok(config)
    }
}

/// This node's Node object.
#[derive(Clone)]
pub struct NodeApi {
    nodes: Api<Node>,
    node: String,
    metrics: Arc<Metrics>,
}

impl NodeApi {
    pub fn new(config: Config, node: &str, metrics: Arc<Metrics>) -> Result<Self, AdvertiseError> {
        let client = Client::try_from(config).map_err(|e| AdvertiseError::Cluster {
            detail: describe(&e).1,
        })?;
        Ok(NodeApi {
            nodes: Api::all(client),
            node: node.to_string(),
            metrics,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The Node's labels (one GET of its metadata).
    pub async fn labels(&self) -> Result<BTreeMap<String, String>, AdvertiseError> {
        self.metrics.record_advertise_request("get");
        let meta = self
            .nodes
            .get_metadata(&self.node)
            .await
            .map_err(|e| self.failed("get", &e))?;
        Ok(meta.metadata.labels.unwrap_or_default())
    }

    /// Applies a merge patch to the Node's metadata; returns its labels afterwards.
    pub async fn patch(
        &self,
        patch: &serde_json::Value,
    ) -> Result<BTreeMap<String, String>, AdvertiseError> {
        self.metrics.record_advertise_request("patch");
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let meta = self
            .nodes
            .patch_metadata(&self.node, &params, &Patch::Merge(patch))
            .await
            .map_err(|e| self.failed("patch", &e))?;
        Ok(meta.metadata.labels.unwrap_or_default())
    }

    fn failed(&self, verb: &'static str, error: &kube::Error) -> AdvertiseError {
        let (code, mut detail) = describe(error);
        if code == Some(403) {
            detail.push_str(
                " (the daemon's ServiceAccount needs get and patch on nodes: manifests/rbac.yaml)",
            );
        }
        AdvertiseError::Api {
            verb,
            node: self.node.clone(),
            code,
            detail,
        }
    }
}

/// A kube-rs error in words, each clause once (its own messages repeat their sources), with
/// the apiserver's HTTP status when it answered.
fn describe(error: &kube::Error) -> (Option<u16>, String) {
    match error {
        kube::Error::Api(status) => {
            let what = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            (
                Some(status.code),
                format!("the apiserver answered {}: {what}", status.code),
            )
        }
        other => {
            // Skip kube's own wrapper ("HyperError: ..."): its message is its source's.
            let text = match std::error::Error::source(other) {
                Some(source) => crate::errors::render(source),
                None => other.to_string(),
            };
            (None, text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_refusals_keep_their_status_and_say_it_once() {
        let status = kube::core::Status::failure(
            "nodes \"n1\" is forbidden: User \"system:serviceaccount:tugboat-system:tugboat-node\" cannot patch resource \"nodes\"",
            "Forbidden",
        )
        .with_code(403);
        let (code, text) = describe(&kube::Error::Api(Box::new(status)));
        assert_eq!(code, Some(403));
        assert!(
            text.starts_with("the apiserver answered 403: nodes \"n1\" is forbidden"),
            "{text}"
        );
        let status = kube::core::Status::failure("", "NotFound").with_code(404);
        let (_, text) = describe(&kube::Error::Api(Box::new(status)));
        assert_eq!(text, "the apiserver answered 404: NotFound");
    }

    #[test]
    fn other_errors_are_described_by_their_cause() {
        let e = kube::Error::ReadEvents(std::io::Error::other("connection reset"));
        assert_eq!(describe(&e), (None, "connection reset".to_string()));
        let e = kube::Error::TlsRequired;
        assert_eq!(describe(&e).1, "TLS required but no TLS stack selected");
    }

    #[test]
    fn outside_a_pod_the_in_cluster_configuration_is_absent() {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            let why = ClusterSource::in_cluster_absent().expect("absent");
            assert!(why.contains("KUBERNETES_SERVICE_HOST"), "{why}");
        }
    }
}

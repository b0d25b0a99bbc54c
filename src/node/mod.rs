//! The node daemon (`tugboat node`): opens the cache, reconciles leases with the mount table
//! left by a previous run, then serves the CSI Identity and Node services on a Unix socket
//! until SIGTERM/SIGINT, finishing in-flight calls and leaving every mount in place.

mod reconcile;
mod socket;

pub use reconcile::{reconcile, Reconciled};
pub use socket::socket_path;

use crate::cache::{Cache, CacheError};
use crate::csi::proto::identity_server::IdentityServer;
use crate::csi::proto::node_server::NodeServer;
use crate::csi::{IdentityService, NodeService, Volumes};
use crate::registry::RegistryOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything `tugboat node` is configured with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `unix:///csi/csi.sock` (or a plain absolute path).
    pub csi_endpoint: String,
    pub node_id: String,
    pub cache: PathBuf,
    pub driver_name: String,
    /// Permission bits of the socket file (default 0600: only root, i.e. kubelet, connects).
    pub socket_mode: u32,
    /// Endpoints, CA and node-wide credentials; a volume's secrets add to them per request.
    pub registry: RegistryOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("--csi-endpoint {0:?}: expected unix:///path/to/csi.sock")]
    Endpoint(String),
    #[error("--node-id is required (Kubernetes: the node name from the downward API)")]
    NodeId,
    #[error("CSI socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    if config.node_id.trim().is_empty() {
        return Err(NodeError::NodeId);
    }
    let path = socket_path(&config.csi_endpoint)?;
    let cache = Cache::open(&config.cache)?;
    let volumes = Arc::new(Volumes::new(cache.clone(), config.registry.clone()));
    let ready = Arc::new(AtomicBool::new(false));
    let listener = socket::bind(&path, config.socket_mode)?;

    let reconciled = reconcile(&volumes);
    tracing::info!(
        kept = reconciled.kept,
        dropped = reconciled.dropped,
        adopted = reconciled.adopted,
        "leases rebuilt from the mount table"
    );
    ready.store(true, Ordering::Release);

    let identity = IdentityService {
        driver_name: config.driver_name.clone(),
        cache,
        ready,
    };
    let node = NodeService {
        node_id: config.node_id.clone(),
        volumes,
    };
    tracing::info!(socket = %path.display(), node = %config.node_id, driver = %config.driver_name, cache = %config.cache.display(), "CSI node plugin serving");
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown_signal(),
        )
        .await;
    let _ = std::fs::remove_file(&path);
    served?;
    tracing::info!("CSI node plugin stopped; published volumes stay mounted");
    Ok(())
}

/// Resolves on SIGTERM (kubelet/container runtime stopping the pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight calls"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing in-flight calls"),
    }
}

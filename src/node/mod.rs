//! The node daemon (`tugboat node`): opens the cache, reconciles leases with the mount table
//! left by a previous run, then serves the CSI Identity and Node services on a Unix socket
//! until SIGTERM/SIGINT, finishing in-flight calls and leaving every mount in place. Beside
//! it run the warm loop, the GC loop, the HTTP endpoints and, in a cluster, the node-label loop
//! (`crate::advertise`).

mod gc_loop;
mod http;
mod reconcile;
mod socket;
mod warm_loop;

pub use reconcile::{reconcile, Reconciled};
pub use socket::socket_path;

use crate::cache::GcPolicy;
use crate::cache::{Cache, CacheError};
use crate::csi::proto::identity_server::IdentityServer;
use crate::csi::proto::node_server::NodeServer;
use crate::csi::{IdentityService, NodeService, Volumes};
use crate::errors::{io_kind, Classify, FailureKind};
use crate::metrics::Metrics;
use crate::registry::{RegistryClient, RegistryOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// The warm list to keep pulled, if any.
    pub warm_config: Option<PathBuf>,
    /// Labels matched against warm entries' nodeSelector.
    pub node_labels: BTreeMap<String, String>,
    /// Where /metrics, /healthz and /readyz are served, if anywhere.
    pub http_addr: Option<SocketAddr>,
    /// Size limit and watermarks for the GC loop.
    pub gc: GcPolicy,
    pub gc_interval: Duration,
    /// The node policy (`--policy`): access and signature rules.
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// Node labels: whether and how the cache's models are advertised on the Node object.
    pub advertise: crate::advertise::daemon::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("--csi-endpoint {0:?}: expected unix:///path/to/csi.sock")]
    Endpoint(String),
    #[error("--node-id is required (Kubernetes: the node name from the downward API)")]
    NodeId,
    #[error("CSI socket {}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("serving gRPC")]
    Serve(#[from] tonic::transport::Error),
    #[error("--http-addr {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registry options")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("node labels")]
    Advertise(#[from] crate::advertise::AdvertiseError),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    if config.node_id.trim().is_empty() {
        return Err(NodeError::NodeId);
    }
    let path = socket_path(&config.csi_endpoint)?;
    let cache = Cache::open(&config.cache)?;
    let metrics = Arc::new(Metrics::default());
    // Decided before anything is bound: `--advertise on` without a cluster stops here.
    let advertiser = crate::advertise::daemon::start(
        &config.advertise,
        cache.clone(),
        config.warm_config.clone(),
        metrics.clone(),
    )
    .await?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped_future = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut background = Vec::new();
    if let Some(addr) = config.http_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Http { addr, source })?;
        let state = http::HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        background.push(tokio::spawn(http::serve(
            listener,
            state,
            stopped_future(stopped.clone()),
        )));
    }
    // One registry client for the daemon's lifetime: one connection pool and one token cache
    // for every publish and the warm loop; each request brings its own credentials. The node
    // policy's host rules judge every redirect and token realm it meets.
    let mut options = config.registry.clone();
    options.redirect_guard = config.policy.as_ref().and_then(|p| p.redirect_guard());
    let registry = RegistryClient::new(options)?;
    let volumes = Arc::new(
        Volumes::new(cache.clone(), registry.clone())
            .with_metrics(metrics.clone())
            .with_policy(config.policy.clone()),
    );
    let listener = socket::bind(&path, config.socket_mode)?;

    let reconciled = reconcile(&volumes);
    tracing::info!(
        kept = reconciled.kept,
        dropped = reconciled.dropped,
        adopted = reconciled.adopted,
        "leases rebuilt from the mount table"
    );
    ready.store(true, Ordering::Release);

    // Node labels: reconciled with the cache at start, then kept equal to it.
    if let Some(advertiser) = advertiser {
        background.push(tokio::spawn(advertiser.run()));
    }

    let warm = warm_loop::WarmShared::default();
    if let Some(file) = &config.warm_config {
        let warm_loop = warm_loop::WarmLoop {
            file: file.clone(),
            node_labels: config.node_labels.clone(),
            cache: config.cache.clone(),
            registry: Arc::new(registry),
            concurrency: 4,
            policy: config.policy.clone(),
            metrics: metrics.clone(),
            shared: warm.clone(),
        };
        background.push(tokio::spawn(warm_loop.run()));
    }
    let gc_loop = gc_loop::GcLoop {
        cache: cache.clone(),
        policy: config.gc.clone(),
        every: config.gc_interval,
        metrics: metrics.clone(),
        warm,
    };
    background.push(tokio::spawn(gc_loop.run()));

    let identity = IdentityService {
        driver_name: config.driver_name.clone(),
        cache,
        ready,
    };
    let node = NodeService {
        node_id: config.node_id.clone(),
        volumes,
        metrics,
    };
    tracing::info!(socket = %path.display(), node = %config.node_id, driver = %config.driver_name, cache = %config.cache.display(), "CSI node plugin serving");
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            },
        )
        .await;
    for task in background {
        task.abort();
    }
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

impl Classify for NodeError {
    fn kind(&self) -> FailureKind {
        match self {
            NodeError::Endpoint(_) | NodeError::NodeId => FailureKind::Input,
            NodeError::Socket { source, .. } => io_kind(source),
            NodeError::Cache(e) => e.kind(),
            NodeError::Registry(e) => e.kind(),
            NodeError::Advertise(e) => e.kind(),
            NodeError::Serve(_) | NodeError::Http { .. } => FailureKind::Other,
        }
    }
}

//! The `node` subcommand: the CSI node plugin daemon kubelet talks to over a Unix socket, with
//! its warm list, garbage collection, metrics and node labels.

use super::cache::parse_percent;
use super::{Failure, PolicyArgs, RegistryArgs};
use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tugboat::cache::GcPolicy;
use tugboat::errors::FailureKind;
use tugboat::node::NodeConfig;

#[derive(Args)]
pub struct NodeArgs {
    /// Where kubelet reaches the CSI services: unix:///path/to/csi.sock.
    #[arg(
        long,
        env = "TUGBOAT_CSI_ENDPOINT",
        default_value = "unix:///csi/csi.sock"
    )]
    csi_endpoint: String,
    /// This node's name, as NodeGetInfo reports it (from the downward API: spec.nodeName).
    #[arg(long, env = "TUGBOAT_NODE_ID")]
    node_id: String,
    /// The shared content-addressed cache (a hostPath).
    #[arg(long, env = "TUGBOAT_CACHE", default_value = "/var/lib/tugboat")]
    cache: PathBuf,
    /// The CSI driver name (the CSIDriver object's name).
    #[arg(
        long,
        env = "TUGBOAT_DRIVER_NAME",
        default_value = tugboat::csi::DEFAULT_DRIVER_NAME
    )]
    driver_name: String,
    /// Permissions of the socket file, in octal.
    #[arg(long, env = "TUGBOAT_CSI_SOCKET_MODE", default_value = "0600", value_parser = parse_mode)]
    csi_socket_mode: u32,
    /// Warm list (a ConfigMap key): models pulled at start, on its interval and whenever the
    /// file changes.
    #[arg(long, value_name = "FILE", env = "TUGBOAT_WARM_CONFIG")]
    warm_config: Option<PathBuf>,
    /// This node's labels as k=v,k2=v2, matched against warm entries' nodeSelector.
    #[arg(long, env = "TUGBOAT_NODE_LABELS", value_parser = tugboat::warm::parse_labels, default_value = "")]
    node_labels: BTreeMap<String, String>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g. 0.0.0.0:9808).
    #[arg(long, value_name = "HOST:PORT", env = "TUGBOAT_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Evict least-recently-used, unused models when the cache grows past this (e.g. 500GiB).
    #[arg(long, env = "TUGBOAT_CACHE_MAX_SIZE", value_parser = tugboat::size::parse_size)]
    cache_max_size: Option<u64>,
    /// Also evict while the cache filesystem is fuller than this percentage (e.g. 85).
    #[arg(long, env = "TUGBOAT_CACHE_HIGH_WATERMARK", value_parser = parse_percent)]
    cache_high_watermark: Option<f64>,
    /// Evict down to this percentage of --cache-max-size (or of the filesystem).
    #[arg(long, env = "TUGBOAT_CACHE_LOW_WATERMARK", default_value = "80", value_parser = parse_percent)]
    cache_low_watermark: f64,
    /// Seconds between garbage-collection passes.
    #[arg(long, env = "TUGBOAT_GC_INTERVAL", default_value_t = 60)]
    gc_interval: u64,
    /// Refuse to mount anywhere but below this directory (kubelet's root, e.g. /var/lib/kubelet).
    #[arg(long, value_name = "DIR", env = "TUGBOAT_KUBELET_ROOT")]
    kubelet_root: Option<PathBuf>,
    #[command(flatten)]
    advertise: AdvertiseArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Node labels: the cache's models as labels on this node's Node object.
#[derive(Args)]
#[command(next_help_heading = "Node labels (schedule onto warm nodes)")]
pub struct AdvertiseArgs {
    /// Advertise the models this node's cache holds complete as labels on its Node object
    /// (`tugboat affinity REF` prints the matching nodeAffinity). auto: on in a pod with a
    /// ServiceAccount token and a node name, else off (said once in the log); on: refuse to
    /// start without them.
    #[arg(long, env = "TUGBOAT_ADVERTISE", value_enum, default_value = "auto")]
    advertise: tugboat::advertise::Mode,
    /// The Node object to label (from the downward API: spec.nodeName).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Advertise at most this many models: the warm list's first, then the most recently used
    /// (a log line says when some are left out).
    #[arg(
        long,
        value_name = "N",
        env = "TUGBOAT_ADVERTISE_MAX_MODELS",
        default_value_t = 100
    )]
    advertise_max_models: usize,
    /// Talk to the apiserver with this kubeconfig instead of the in-cluster configuration (a
    /// daemon run outside a pod).
    #[arg(long, value_name = "FILE", env = "TUGBOAT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

impl AdvertiseArgs {
    fn settings(&self) -> tugboat::advertise::daemon::Settings {
        tugboat::advertise::daemon::Settings {
            mode: self.advertise,
            node_name: self.node_name.clone(),
            max_models: self.advertise_max_models,
            kubeconfig: self.kubeconfig.clone(),
            ..Default::default()
        }
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal permission like 0600"))
}

pub async fn run(args: NodeArgs) -> Result<(), Failure> {
    if let Some(root) = &args.kubelet_root {
        tugboat::csi::validate::set_kubelet_root(root).map_err(|e| {
            Failure::new(FailureKind::Input, anyhow::anyhow!("--kubelet-root: {e}"))
        })?;
    }
    let config = NodeConfig {
        csi_endpoint: args.csi_endpoint,
        node_id: args.node_id,
        cache: args.cache,
        driver_name: args.driver_name,
        socket_mode: args.csi_socket_mode,
        registry: args.registry.options()?,
        warm_config: args.warm_config,
        node_labels: args.node_labels,
        http_addr: args.http_addr,
        gc: GcPolicy {
            max_size: args.cache_max_size,
            high_watermark: args.cache_high_watermark,
            low_watermark: args.cache_low_watermark,
            ..GcPolicy::default()
        },
        gc_interval: Duration::from_secs(args.gc_interval.max(1)),
        policy: args.policy.load()?,
        advertise: args.advertise.settings(),
    };
    tugboat::node::run(config)
        .await
        .map_err(Failure::classified)
}

//! The `node` subcommand: the CSI node plugin daemon kubelet talks to over a Unix socket.

use super::{exit, Failure, RegistryArgs};
use clap::Args;
use std::path::PathBuf;
use tugboat::node::NodeConfig;
use tugboat::registry::{CredentialStore, EndpointPolicy, RegistryOptions};

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
    #[command(flatten)]
    registry: RegistryArgs,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal permission like 0600"))
}

impl RegistryArgs {
    /// The registry options without building a client (the daemon builds one per request).
    fn options(&self) -> Result<RegistryOptions, Failure> {
        let mirrors = self
            .mirror
            .iter()
            .map(|m| EndpointPolicy::parse_mirror(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::new(exit::USAGE, e.into()))?;
        let credentials = CredentialStore::load(self.docker_config.as_deref())
            .map_err(|e| Failure::new(exit::USAGE, e.into()))?;
        Ok(RegistryOptions {
            endpoints: EndpointPolicy {
                plain_http: self.plain_http,
                insecure_hosts: self.insecure_registry.clone(),
                mirrors,
            },
            ca_file: self.ca_file.clone(),
            credentials,
            max_attempts: self.retries.max(1),
        })
    }
}

pub async fn run(args: NodeArgs) -> Result<(), Failure> {
    let config = NodeConfig {
        csi_endpoint: args.csi_endpoint,
        node_id: args.node_id,
        cache: args.cache,
        driver_name: args.driver_name,
        socket_mode: args.csi_socket_mode,
        registry: args.registry.options()?,
    };
    tugboat::node::run(config).await.map_err(|e| {
        let code = match e {
            tugboat::node::NodeError::Endpoint(_) | tugboat::node::NodeError::NodeId => exit::USAGE,
            _ => exit::STORAGE,
        };
        Failure::new(code, e.into())
    })
}

//! The CSI Identity service: the driver's name and version, its (node-only) capabilities, and
//! a Probe that reports whether the cache can be written.

use super::proto::identity_server::Identity;
use super::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, ProbeRequest, ProbeResponse,
};
use crate::cache::Cache;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The default CSI driver name (`--driver-name`).
pub const DEFAULT_DRIVER_NAME: &str = "model.csi.tugboat.io";

pub struct IdentityService {
    pub driver_name: String,
    pub cache: Cache,
    /// Set once restart reconciliation is done.
    pub ready: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    /// No CONTROLLER_SERVICE: volumes are inline ephemeral or static PVs.
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache_writable(&cache))
            .await
            .map_err(|_| Status::internal("probe task panicked"))?
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(ProbeResponse {
            ready: Some(self.ready.load(Ordering::Acquire)),
        }))
    }
}

/// Creates and removes a file in the cache's ingest directory.
fn cache_writable(cache: &Cache) -> Result<(), String> {
    let path = cache
        .ingest_dir()
        .join(format!(".probe-{}", std::process::id()));
    std::fs::write(&path, b"probe")
        .and_then(|()| std::fs::remove_file(&path))
        .map_err(|e| format!("cache {} is not writable: {e}", cache.root().display()))
}

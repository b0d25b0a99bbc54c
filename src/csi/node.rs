//! The CSI Node service: thin gRPC handlers that validate (validate.rs) and hand over to
//! volumes.rs. NodeStage/NodeUnstage/NodeExpand are not offered (generated Unimplemented stubs).

use super::proto::node_server::Node;
use super::proto::node_service_capability::{rpc, Rpc, Type};
use super::proto::volume_usage::Unit;
use super::proto::{
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
    NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, VolumeUsage,
};
use super::validate;
use super::volumes::Volumes;
use crate::metrics::Metrics;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct NodeService {
    pub node_id: String,
    pub volumes: Arc<Volumes>,
    pub metrics: Arc<Metrics>,
}

impl NodeService {
    /// Counts the call by method and gRPC code for `/metrics`.
    fn observed<T>(&self, method: &str, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => "Ok".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics.record_csi_call(method, &code);
        result
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let result = async {
            let publish = validate::publish(request.get_ref())?;
            self.volumes
                .publish(publish)
                .await
                .inspect_err(|status| tracing::warn!(volume = %request.get_ref().volume_id, code = ?status.code(), message = %status.message(), "NodePublishVolume failed"))?;
            Ok(Response::new(NodePublishVolumeResponse {}))
        }
        .await;
        self.observed("NodePublishVolume", result)
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let result = async {
            let (volume_id, target) = validate::unpublish(request.get_ref())?;
            self.volumes.unpublish(&volume_id, &target).await?;
            Ok(Response::new(NodeUnpublishVolumeResponse {}))
        }
        .await;
        self.observed("NodeUnpublishVolume", result)
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let result = async {
            let (volume_id, path) = validate::volume_stats(request.get_ref())?;
            let usage = self.volumes.usage(&volume_id, &path)?;
            let figure = |unit: Unit, used: u64| VolumeUsage {
                available: 0,
                total: i64::try_from(used).unwrap_or(i64::MAX),
                used: i64::try_from(used).unwrap_or(i64::MAX),
                unit: unit as i32,
            };
            Ok(Response::new(NodeGetVolumeStatsResponse {
                usage: vec![
                    figure(Unit::Bytes, usage.bytes),
                    figure(Unit::Inodes, usage.files),
                ],
                volume_condition: None,
            }))
        }
        .await;
        self.observed("NodeGetVolumeStats", result)
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let result = async {
            let capability = |kind: rpc::Type| NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: kind as i32,
                })),
            };
            Ok(Response::new(NodeGetCapabilitiesResponse {
                capabilities: vec![capability(rpc::Type::GetVolumeStats)],
            }))
        }
        .await;
        self.observed("NodeGetCapabilities", result)
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let result = async {
            Ok(Response::new(NodeGetInfoResponse {
                node_id: self.node_id.clone(),
                max_volumes_per_node: 0,
                accessible_topology: None,
            }))
        }
        .await;
        self.observed("NodeGetInfo", result)
    }
}

//! The CSI v1 node plugin: the Identity and Node gRPC services kubelet calls over a Unix
//! socket, request validation with the spec's status codes, read-only bind mounts of cache
//! snapshots, the mount table, and the leases that keep published snapshots from GC.
//! The daemon that serves these (socket, signals, restart reconciliation) is `crate::node`.

pub mod flight;
pub mod identity;
pub mod mount;
pub mod mountinfo;
pub mod node;
pub mod proto;
pub mod secrets;
pub mod status;
pub mod validate;
pub mod volumes;

pub use identity::{IdentityService, DEFAULT_DRIVER_NAME};
pub use node::NodeService;
pub use volumes::Volumes;

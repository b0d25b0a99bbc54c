//! tugboat: brings AI models from OCI registries onto Kubernetes nodes, verified byte for
//! byte, through a content-addressed on-node cache shared by every mode (init container,
//! CSI node plugin, cache warmer).

pub mod advertise;
pub mod artifact;
pub mod cache;
pub mod csi;
pub mod digest;
pub mod errors;
pub mod inspect;
pub mod materialize;
pub mod metrics;
pub mod node;
pub mod pause;
pub mod policy;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod safe_path;
pub mod size;
pub mod tenancy;
pub mod warm;

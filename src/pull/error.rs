//! The pull layer's one error type: every way a pull can fail, each said once, and the kind
//! that decides its exit code and gRPC code.

use crate::artifact::ArtifactError;
use crate::cache::CacheError;
use crate::digest::Digest;
use crate::errors::Classify;
use crate::materialize::MaterializeError;
use crate::policy::PolicyError;
use crate::registry::RegistryError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference}")]
    Artifact {
        reference: String,
        #[source]
        source: ArtifactError,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error(
        "manifest {expected}: the registry served bytes whose digest is {actual}; refusing them"
    )]
    ManifestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: the registry has only {available} of its {expected} bytes (truncated blob); nothing was kept")]
    Truncated {
        digest: Digest,
        expected: u64,
        available: u64,
    },
    #[error(
        "{reference} is not in the cache and --pull-policy Never forbids contacting the registry"
    )]
    NotCached { reference: String },
    #[error("not enough space in {}: the pull needs {needed} more bytes, {available} are free; free space, run `tugboat cache gc`, or use a larger --cache volume", path.display())]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("give --dest DIR (where the model goes) and/or --cache DIR (the node cache)")]
    NoTarget,
    #[error("{reference} is private in the node cache, and the registry did not confirm that these credentials may read it")]
    PrivateDenied {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("{reference} came through a mirror, and a mirror's copy is handed out only with the origin registry's permission: the origin refused these credentials")]
    MirrorCopyDenied {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("{reference} came through a mirror, and a mirror's copy is handed out only with the origin registry's permission: the origin could not be asked to confirm these credentials")]
    MirrorCopyUnconfirmed {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("{reference} is private in the node cache and --pull-policy Never forbids asking the registry whether these credentials may read it")]
    PrivateOffline { reference: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

pub use crate::errors::FailureKind;

impl PullError {
    /// This failure's kind (see [`crate::errors`]): its exit code and gRPC code.
    pub fn kind(&self) -> FailureKind {
        <Self as crate::errors::Classify>::kind(self)
    }
}

impl Classify for PullError {
    fn kind(&self) -> FailureKind {
        match self {
            PullError::Registry(e) => e.kind(),
            PullError::Artifact { .. } | PullError::NoTarget => FailureKind::Input,
            PullError::Cache(e) => e.kind(),
            PullError::Materialize(e) => e.kind(),
            PullError::ManifestMismatch { .. } | PullError::Truncated { .. } => {
                FailureKind::Integrity
            }
            PullError::NotCached { .. } => FailureKind::NotFound,
            PullError::NoSpace { .. } => FailureKind::NoSpace,
            // The cache's access rule refused a private model to these credentials (an
            // access-policy denial), unless the registry could not be asked at all.
            PullError::PrivateDenied { source, .. } => match source.kind() {
                kind if kind.is_refusal() => FailureKind::PermissionDenied,
                kind => kind,
            },
            PullError::PrivateOffline { .. } => FailureKind::PermissionDenied,
            // The origin's own answer: 401 unauthenticated, 403 or 404 denied.
            PullError::MirrorCopyDenied { source, .. } => match source.kind() {
                FailureKind::Unauthenticated => FailureKind::Unauthenticated,
                _ => FailureKind::PermissionDenied,
            },
            PullError::MirrorCopyUnconfirmed { source, .. } => source.kind(),
            PullError::Policy(e) => e.kind(),
        }
    }
}

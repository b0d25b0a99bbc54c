//! The one error classifier: every failure of every layer is sorted into a [`FailureKind`],
//! and each kind has exactly one exit code (every command) and one gRPC code (CSI). Commands
//! and the CSI service never choose codes themselves; they ask the error for its kind.

use crate::cache::CacheError;
use crate::inspect::InspectError;
use crate::materialize::MaterializeError;
use crate::pull::PullError;
use crate::push::PushError;
use crate::registry::RegistryError;
use tonic::Code;

/// What kind of failure happened, as scripts and kubelet need to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FailureKind {
    /// Bad usage, malformed reference, unsupported or unknown artifact, hostile manifest or
    /// archive entries refused as input.
    Input,
    /// The registry has no such thing (404), or `--pull-policy Never` and no cached copy.
    NotFound,
    /// The registry did not accept who we are (401).
    Unauthenticated,
    /// The registry or an access policy refuses these credentials (403, private model).
    PermissionDenied,
    /// The registry cannot be reached, or kept failing (429/5xx after retries, deadline).
    Network,
    /// Bytes do not match their digest or size, or were cut short.
    Integrity,
    /// The disk is full.
    NoSpace,
    /// Other local storage trouble: read-only, permissions, I/O errors.
    Storage,
    /// A signature is required and missing, or does not verify.
    Signature,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Every kind, for tables and tests.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Input,
        FailureKind::NotFound,
        FailureKind::Unauthenticated,
        FailureKind::PermissionDenied,
        FailureKind::Network,
        FailureKind::Integrity,
        FailureKind::NoSpace,
        FailureKind::Storage,
        FailureKind::Signature,
        FailureKind::Other,
    ];

    /// The process exit code of every command.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Other => 1,
            FailureKind::Input => 2,
            FailureKind::NotFound
            | FailureKind::Unauthenticated
            | FailureKind::PermissionDenied => 3,
            FailureKind::Network => 4,
            FailureKind::Integrity => 5,
            FailureKind::NoSpace | FailureKind::Storage => 6,
            FailureKind::Signature => 7,
        }
    }

    /// The gRPC status code the CSI service answers with.
    pub fn grpc_code(self) -> Code {
        match self {
            FailureKind::Input => Code::InvalidArgument,
            FailureKind::NotFound => Code::NotFound,
            FailureKind::Unauthenticated => Code::Unauthenticated,
            FailureKind::PermissionDenied => Code::PermissionDenied,
            FailureKind::Network => Code::Unavailable,
            FailureKind::Integrity => Code::DataLoss,
            FailureKind::NoSpace => Code::ResourceExhausted,
            FailureKind::Storage | FailureKind::Other => Code::Internal,
            FailureKind::Signature => Code::FailedPrecondition,
        }
    }

    /// The registry refused the request for who we are or what we asked.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            FailureKind::NotFound | FailureKind::Unauthenticated | FailureKind::PermissionDenied
        )
    }
}

/// An error that knows its kind.
pub trait Classify {
    fn kind(&self) -> FailureKind;
}

impl Classify for RegistryError {
    fn kind(&self) -> FailureKind {
        match self {
            RegistryError::Unauthorized { .. } => FailureKind::Unauthenticated,
            RegistryError::Forbidden { .. } => FailureKind::PermissionDenied,
            RegistryError::NotFound { .. } => FailureKind::NotFound,
            RegistryError::Network { .. } => FailureKind::Network,
            RegistryError::Status { .. } if self.is_transient() => FailureKind::Network,
            RegistryError::Status { .. } => FailureKind::Other,
            RegistryError::Protocol { .. } => FailureKind::Integrity,
            RegistryError::Config(_) => FailureKind::Input,
            RegistryError::RedirectRefused { .. } => FailureKind::PermissionDenied,
        }
    }
}

impl Classify for crate::policy::PolicyError {
    fn kind(&self) -> FailureKind {
        use crate::policy::PolicyError;
        match self {
            PolicyError::Load { .. } => FailureKind::Input,
            PolicyError::Denied { .. } => FailureKind::PermissionDenied,
            PolicyError::Signature { .. } => FailureKind::Signature,
            PolicyError::SignatureFetch { source, .. } => source.kind(),
        }
    }
}

/// A local I/O failure: a full disk (or quota) apart from any other storage trouble.
pub fn io_kind(error: &std::io::Error) -> FailureKind {
    match error.raw_os_error() {
        Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => {
            FailureKind::NoSpace
        }
        _ => FailureKind::Storage,
    }
}

impl Classify for CacheError {
    fn kind(&self) -> FailureKind {
        match self {
            CacheError::Io { source, .. } => io_kind(source),
            CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. } => {
                FailureKind::Integrity
            }
            CacheError::Corrupt { .. } => FailureKind::Storage,
        }
    }
}

impl Classify for MaterializeError {
    fn kind(&self) -> FailureKind {
        match self {
            MaterializeError::Cache(e) => e.kind(),
            MaterializeError::Destination { .. } => FailureKind::Storage,
            MaterializeError::UnsafeEntry { .. }
            | MaterializeError::DuplicatePath { .. }
            | MaterializeError::Limit { .. }
            | MaterializeError::Archive { .. } => FailureKind::Input,
        }
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
            PullError::Policy(e) => e.kind(),
        }
    }
}

impl Classify for InspectError {
    fn kind(&self) -> FailureKind {
        match self {
            InspectError::Registry(e) => e.kind(),
            InspectError::Artifact { .. } => FailureKind::Input,
            InspectError::Mismatch { .. } => FailureKind::Integrity,
        }
    }
}

impl Classify for PushError {
    fn kind(&self) -> FailureKind {
        match self {
            PushError::Io { source, .. } => match io_kind(source) {
                // A file that cannot be read is the caller's input, not our disk.
                FailureKind::Storage => FailureKind::Input,
                kind => kind,
            },
            PushError::Input { .. } => FailureKind::Input,
            PushError::Registry(e) => e.kind(),
        }
    }
}

impl Classify for crate::node::NodeError {
    fn kind(&self) -> FailureKind {
        use crate::node::NodeError;
        match self {
            NodeError::Endpoint(_) | NodeError::NodeId => FailureKind::Input,
            NodeError::Socket { source, .. } => io_kind(source),
            NodeError::Cache(e) => e.kind(),
            NodeError::Registry(e) => e.kind(),
            NodeError::Serve(_) | NodeError::Http { .. } => FailureKind::Other,
        }
    }
}

impl Classify for crate::warm::WarmError {
    fn kind(&self) -> FailureKind {
        FailureKind::Input
    }
}

/// The gRPC status for an error: its kind's code, its message (which never carries
/// credentials).
pub fn status(error: &(impl Classify + std::fmt::Display)) -> tonic::Status {
    tonic::Status::new(error.kind().grpc_code(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::ArtifactError;
    use crate::digest::Digest;

    /// The README's table, exactly.
    const TABLE: [(FailureKind, u8, Code); 10] = [
        (FailureKind::Input, 2, Code::InvalidArgument),
        (FailureKind::NotFound, 3, Code::NotFound),
        (FailureKind::Unauthenticated, 3, Code::Unauthenticated),
        (FailureKind::PermissionDenied, 3, Code::PermissionDenied),
        (FailureKind::Network, 4, Code::Unavailable),
        (FailureKind::Integrity, 5, Code::DataLoss),
        (FailureKind::NoSpace, 6, Code::ResourceExhausted),
        (FailureKind::Storage, 6, Code::Internal),
        (FailureKind::Signature, 7, Code::FailedPrecondition),
        (FailureKind::Other, 1, Code::Internal),
    ];

    #[test]
    fn every_kind_has_one_exit_code_and_one_grpc_code() {
        for (kind, exit, code) in TABLE {
            assert_eq!(kind.exit_code(), exit, "{kind:?}");
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
        }
        assert_eq!(TABLE.len(), FailureKind::ALL.len());
    }

    fn registry(kind: FailureKind) -> Option<RegistryError> {
        let (registry, repository, what) =
            ("r.example".to_string(), "m".to_string(), "x".to_string());
        Some(match kind {
            FailureKind::Input => RegistryError::Config("bad".into()),
            FailureKind::NotFound => RegistryError::NotFound { registry, what },
            FailureKind::Unauthenticated => RegistryError::Unauthorized {
                registry,
                repository,
                detail: "401".into(),
            },
            FailureKind::PermissionDenied => RegistryError::Forbidden {
                registry,
                repository,
            },
            FailureKind::Network => RegistryError::Status {
                registry,
                what,
                status: 503,
                attempts: 5,
                detail: String::new(),
            },
            FailureKind::Integrity => RegistryError::Protocol {
                registry,
                what,
                detail: "bad Content-Range".into(),
            },
            FailureKind::Other => RegistryError::Status {
                registry,
                what,
                status: 405,
                attempts: 1,
                detail: String::new(),
            },
            _ => return None,
        })
    }

    fn io(kind: FailureKind) -> Option<std::io::Error> {
        match kind {
            FailureKind::NoSpace => Some(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)),
            FailureKind::Storage => Some(std::io::Error::from_raw_os_error(nix::libc::EROFS)),
            _ => None,
        }
    }

    /// Each class of failure, as every command meets it, gets the same kind and therefore
    /// the same exit code and gRPC code: pull (init container, CSI publish and warm all run
    /// it), inspect and push.
    #[test]
    fn each_class_maps_the_same_in_every_command() {
        let digest = Digest::of_bytes(b"x");
        for kind in FailureKind::ALL {
            let mut seen: Vec<(&str, FailureKind)> = Vec::new();
            if let Some(e) = registry(kind) {
                seen.push(("pull", PullError::Registry(e).kind()));
                seen.push((
                    "inspect",
                    InspectError::Registry(registry(kind).unwrap()).kind(),
                ));
                seen.push(("push", PushError::Registry(registry(kind).unwrap()).kind()));
            }
            if let Some(e) = io(kind) {
                seen.push(("pull", PullError::Cache(CacheError::io("/c", e)).kind()));
                seen.push((
                    "pull (dest)",
                    PullError::Materialize(MaterializeError::Cache(CacheError::io(
                        "/d",
                        io(kind).unwrap(),
                    )))
                    .kind(),
                ));
            }
            match kind {
                FailureKind::Input => {
                    let artifact = || ArtifactError::Malformed { detail: "x".into() };
                    seen.push((
                        "pull",
                        PullError::Artifact {
                            reference: "r".into(),
                            source: artifact(),
                        }
                        .kind(),
                    ));
                    seen.push((
                        "inspect",
                        InspectError::Artifact {
                            reference: "r".into(),
                            source: artifact(),
                        }
                        .kind(),
                    ));
                    seen.push((
                        "push",
                        PushError::Input {
                            path: "/p".into(),
                            detail: "x".into(),
                        }
                        .kind(),
                    ));
                }
                FailureKind::Integrity => {
                    seen.push((
                        "pull",
                        PullError::ManifestMismatch {
                            expected: digest.clone(),
                            actual: digest.clone(),
                        }
                        .kind(),
                    ));
                    seen.push((
                        "inspect",
                        InspectError::Mismatch {
                            what: "manifest",
                            expected: digest.clone(),
                            actual: digest.clone(),
                        }
                        .kind(),
                    ));
                }
                FailureKind::NotFound => seen.push((
                    "pull --pull-policy Never",
                    PullError::NotCached {
                        reference: "r".into(),
                    }
                    .kind(),
                )),
                _ => {}
            }
            for (command, got) in &seen {
                assert_eq!(*got, kind, "{command}");
                assert_eq!(got.exit_code(), kind.exit_code(), "{command}");
                assert_eq!(got.grpc_code(), kind.grpc_code(), "{command}");
            }
        }
    }
}

//! Errors of the registry layer, each saying what the user should check.

/// What went wrong talking to a registry, classified so callers can choose exit codes and
/// retries without parsing messages. Messages never carry credentials.
use crate::errors::{Classify, FailureKind};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: authentication failed for {repository} ({detail}); check the credentials in --docker-config / $DOCKER_CONFIG or the pull secret for this registry")]
    Unauthorized {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("{registry}: access to {repository} is denied (HTTP 403); the credentials are valid but lack pull rights on this project/repository")]
    Forbidden {
        registry: String,
        repository: String,
    },
    #[error("{registry}: {what} not found (HTTP 404); check the repository name and tag, and that it was pushed to this registry")]
    NotFound { registry: String, what: String },
    #[error("{registry}: {what}: HTTP {status} after {attempts} attempt(s){detail}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        attempts: u32,
        detail: String,
    },
    #[error("{registry}: cannot reach the registry for {what} after {attempts} attempt(s): {detail}; check the host, port, --plain-http/--insecure-registry and the network")]
    Network {
        registry: String,
        what: String,
        attempts: u32,
        detail: String,
    },
    #[error("{registry}: the registry broke the protocol for {what}: {detail}")]
    Protocol {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("{registry}: {what}: the node access policy refused a redirect ({detail})")]
    RedirectRefused {
        registry: String,
        what: String,
        detail: String,
    },
}

impl RegistryError {
    /// Whether a later attempt might succeed (connection trouble, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Network { .. } => true,
            RegistryError::Status { status, .. } => {
                *status == 429 || *status == 408 || *status >= 500
            }
            _ => false,
        }
    }

    /// The registry refused the request for who we are or what we asked (auth, 404).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RegistryError::Unauthorized { .. }
                | RegistryError::Forbidden { .. }
                | RegistryError::NotFound { .. }
                | RegistryError::RedirectRefused { .. }
        )
    }
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

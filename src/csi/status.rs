//! How pull failures become gRPC statuses kubelet understands: refusals by the registry are
//! PERMISSION_DENIED or NOT_FOUND (messages name the registry), trouble reaching it is
//! UNAVAILABLE (kubelet retries), local trouble is INTERNAL or RESOURCE_EXHAUSTED. Messages come
//! from the error types, which never carry credentials.

use crate::policy::PolicyError;
use crate::pull::PullError;
use crate::registry::RegistryError;
use tonic::Status;

pub fn from_pull(error: &PullError) -> Status {
    let message = error.to_string();
    match error {
        PullError::Registry(e) | PullError::PrivateDenied { source: e, .. } => {
            from_registry(e, message)
        }
        PullError::PrivateOffline { .. } => Status::permission_denied(message),
        PullError::NotCached { .. } => Status::not_found(message),
        PullError::NoSpace { .. } => Status::resource_exhausted(message),
        PullError::Artifact { .. } => Status::invalid_argument(message),
        PullError::Policy(PolicyError::Denied { .. }) => Status::permission_denied(message),
        PullError::Policy(PolicyError::Signature { .. }) => Status::failed_precondition(message),
        PullError::Policy(PolicyError::SignatureFetch { source, .. }) => {
            from_registry(source, message)
        }
        _ => Status::internal(message),
    }
}

fn from_registry(error: &RegistryError, message: String) -> Status {
    match error {
        RegistryError::Unauthorized { .. }
        | RegistryError::Forbidden { .. }
        | RegistryError::RedirectRefused { .. } => Status::permission_denied(message),
        RegistryError::NotFound { .. } => Status::not_found(message),
        RegistryError::Config(_) => Status::failed_precondition(message),
        RegistryError::Protocol { .. } => Status::internal(message),
        _ => Status::unavailable(message),
    }
}

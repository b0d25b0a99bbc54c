//! The OCI distribution client: one connection pool, authentication (anonymous, basic, bearer
//! tokens through our own token flow), mirrors, one retry policy and ranged blob reads. It knows
//! nothing of the cache or of CSI.

mod auth;
mod client;
pub mod credentials;
pub mod endpoint;
mod error;
mod guard;
mod retry;
mod tls;
mod transfer;

pub use client::{
    BlobBody, FetchedManifest, RegistryClient, RegistryOptions, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES,
};
pub use credentials::{CredentialStore, Credentials};
pub use endpoint::EndpointPolicy;
pub use error::RegistryError;
pub use guard::RedirectGuard;
pub use retry::{Backoff, RetryPolicy};
pub use transfer::{TransferOptions, DEFAULT_MAX_REQUESTS};

//! Tenancy of the shared node cache: the cache must not become a way around a registry's
//! access control. A model fetched with credentials the registry demanded is marked private
//! in the cache; a later request served from the cache gets it only after the registry
//! confirms that request's credentials may read the manifest (a HEAD to the origin), and the
//! confirmation is remembered per credential fingerprint for [`ACCESS_TTL`] by the registry
//! client that asked (the daemon's one client, shared by every publish). Models the registry
//! serves anonymously are never marked and never checked. A mirror is held to the same rule
//! as the cache: whatever part of a pull a mirror served, the origin confirms these
//! credentials with [`confirm_access`] before the model is handed out (the pull pipeline's
//! `confirm_mirror_copy`).

use crate::cache::{Cache, CacheError};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use std::time::Duration;

/// How long a confirmed (credentials, model) pair is trusted without asking again.
pub const ACCESS_TTL: Duration = Duration::from_secs(5 * 60);

/// Notes that the registry just served `reference` (a digest reference) to this client.
pub fn remember(registry: &RegistryClient, reference: &Reference) {
    registry.note_readable(reference, ACCESS_TTL);
}

/// Asks the registry (unless it confirmed recently) whether this client may read
/// `reference`, a digest reference. Refusals are not remembered, so fixed credentials work at once.
pub async fn confirm_access(
    registry: &RegistryClient,
    reference: &Reference,
) -> Result<(), RegistryError> {
    if registry.readable_recently(reference, ACCESS_TTL) {
        return Ok(());
    }
    registry.manifest_readable(reference).await?;
    remember(registry, reference);
    Ok(())
}

/// After this client fetched `reference`'s manifest: if it sent credentials, asks anonymously
/// whether the registry would have served it anyway; if not (or if unsure), marks the model
/// private. A model fetched without credentials is public by construction.
pub async fn mark_if_private(
    cache: &Cache,
    registry: &RegistryClient,
    reference: &Reference,
) -> Result<(), CacheError> {
    let Some(digest) = reference.digest() else {
        return Ok(());
    };
    if registry.credentials_for(reference.registry()).is_none() || cache.is_private(digest)? {
        return Ok(());
    }
    let public = match registry.anonymous() {
        Ok(anonymous) => match anonymous.manifest_readable(reference).await {
            Ok(()) => true,
            Err(e) if e.is_refusal() => false,
            Err(e) => {
                tracing::warn!(%reference, error = %e, "cannot tell whether the model is public; treating it as private");
                false
            }
        },
        Err(_) => false,
    };
    if !public {
        tracing::info!(%reference, "model needs credentials; marked private in the cache");
        cache.mark_private(
            digest,
            &format!("{}/{}", reference.registry(), reference.repository()),
        )?;
    }
    Ok(())
}

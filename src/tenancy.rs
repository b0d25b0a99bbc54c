//! Tenancy of the shared node cache: the cache must not become a way around a registry's
//! access control. A model fetched with credentials the registry demanded is marked private
//! in the cache; a later request served from the cache gets it only after the registry
//! confirms that request's credentials may read the manifest (a HEAD to the origin), and the
//! confirmation is remembered per credential fingerprint for [`ACCESS_TTL`]. Models the
//! registry serves anonymously are never marked and never checked.

use crate::cache::{Cache, CacheError};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a confirmed (credentials, model) pair is trusted without asking again.
pub const ACCESS_TTL: Duration = Duration::from_secs(5 * 60);

/// (credential fingerprint or "" for anonymous, registry/repository@digest) -> confirmed at.
static CONFIRMED: LazyLock<Mutex<HashMap<(String, String), Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn memo_key(registry: &RegistryClient, reference: &Reference) -> (String, String) {
    let who = registry
        .credentials_for(reference.registry())
        .map(|c| c.fingerprint())
        .unwrap_or_default();
    (who, reference.to_string())
}

/// Notes that the registry just served `reference` (a digest reference) to this client.
pub fn remember(registry: &RegistryClient, reference: &Reference) {
    let mut memo = CONFIRMED.lock().unwrap_or_else(|p| p.into_inner());
    memo.retain(|_, at| at.elapsed() < ACCESS_TTL);
    memo.insert(memo_key(registry, reference), Instant::now());
}

/// Asks the registry (unless it confirmed recently) whether this client may read
/// `reference`, a digest reference. Refusals are not remembered, so fixed credentials work at once.
pub async fn confirm_access(
    registry: &RegistryClient,
    reference: &Reference,
) -> Result<(), RegistryError> {
    let key = memo_key(registry, reference);
    {
        let memo = CONFIRMED.lock().unwrap_or_else(|p| p.into_inner());
        if memo.get(&key).is_some_and(|at| at.elapsed() < ACCESS_TTL) {
            return Ok(());
        }
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

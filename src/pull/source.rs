//! Where a pull's manifests come from: the cache first, the registry unless the pull policy
//! forbids it, and the tenancy checks that decide whether cached bytes, or bytes a mirror
//! served, may be handed to these credentials.

use super::{PullError, PullPolicy};
use crate::artifact::{self, ArtifactError, Manifest, Parsed};
use crate::cache::Cache;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{FetchedManifest, RegistryClient};
use crate::tenancy;
use std::sync::atomic::{AtomicBool, Ordering};

/// The registry, unless the policy forbids asking it.
pub(super) struct Source<'a> {
    pub(super) registry: &'a RegistryClient,
    pub(super) reference: &'a Reference,
    pub(super) offline: bool,
    /// The origin served a manifest to this request's credentials, or confirmed they may read
    /// it (so they may read the model). A mirror's answer never sets it.
    pub(super) fetched_manifest: AtomicBool,
    /// The registry answered a Range request with the whole blob: fetch in one stream.
    pub(super) range_ignored: AtomicBool,
}

impl Source<'_> {
    /// The registry to fill a chunked partial from; offline, the partial is put away by
    /// `suspend` (the writer's) before `NotCached` is returned.
    pub(super) async fn online_or_suspend(
        &self,
        suspend: impl std::future::Future<Output = ()>,
    ) -> Result<&RegistryClient, PullError> {
        let online = self.online();
        if online.is_err() {
            suspend.await;
        }
        online
    }

    pub(super) fn online(&self) -> Result<&RegistryClient, PullError> {
        if self.offline {
            Err(PullError::NotCached {
                reference: self.reference.to_string(),
            })
        } else {
            Ok(self.registry)
        }
    }

    async fn manifest(&self, reference: &Reference) -> Result<FetchedManifest, PullError> {
        let fetched = self.online()?.manifest(reference).await?;
        if !fetched.from_mirror {
            self.fetched_manifest.store(true, Ordering::Relaxed);
        }
        Ok(fetched)
    }
}

/// Tenancy, first half: when this request's credentials fetched the manifest, remember that
/// they may read it, and mark the model private if the registry would not serve it anonymously
/// (before any blob lands, so no other request can find the bytes unmarked).
pub(super) async fn note_registry_access(
    cache: &Cache,
    source: &Source<'_>,
    manifest: &Digest,
) -> Result<(), PullError> {
    if !source.fetched_manifest.load(Ordering::Relaxed) {
        return Ok(());
    }
    let pinned = source.reference.with_digest(manifest.clone());
    tenancy::remember(source.registry, &pinned);
    tenancy::mark_if_private(cache, source.registry, &pinned).await?;
    Ok(())
}

/// Authorization through a mirror: a mirror serves whoever asks (a proxy cache, a Dragonfly
/// peer holding the model), so once a mirror served any part of this pull, the origin must
/// confirm that these credentials may read the manifest (a HEAD by digest, remembered per
/// credential fingerprint) before anything is handed out, unless the origin itself served the
/// manifest to them in this pull. Called before the blobs (when the manifest came through a
/// mirror) and again before the hand-out (when blobs did); returns whether it asked the origin
/// now. A refusal marks the model private in a shared cache, so no later request takes the
/// mirror's bytes from the cache without the origin's word either.
pub(super) async fn confirm_mirror_copy(
    cache: &Cache,
    source: &Source<'_>,
    manifest: &Digest,
    shared_cache: bool,
) -> Result<bool, PullError> {
    if source.fetched_manifest.load(Ordering::Relaxed) || !source.registry.served_by_mirror() {
        return Ok(false);
    }
    let pinned = source.reference.with_digest(manifest.clone());
    let reference = source.reference.to_string();
    match tenancy::confirm_access(source.registry, &pinned).await {
        Ok(()) => {
            source.fetched_manifest.store(true, Ordering::Relaxed);
            Ok(true)
        }
        Err(source) if source.is_refusal() => {
            if shared_cache && !cache.is_private(manifest)? {
                cache.mark_private(
                    manifest,
                    &format!("{}/{}", pinned.registry(), pinned.repository()),
                )?;
            }
            Err(PullError::MirrorCopyDenied { reference, source })
        }
        Err(source) => Err(PullError::MirrorCopyUnconfirmed { reference, source }),
    }
}

/// Tenancy, second half: a private model this request took from the cache (without the
/// registry serving it the manifest) is handed over only once the registry confirms these
/// credentials may read it. Checked after the snapshot exists, so a model marked private while
/// this request was running is caught too.
pub(super) async fn ensure_cached_access(
    cache: &Cache,
    source: &Source<'_>,
    manifest: &Digest,
) -> Result<(), PullError> {
    if source.fetched_manifest.load(Ordering::Relaxed) || !cache.is_private(manifest)? {
        return Ok(());
    }
    let reference = source.reference.to_string();
    if source.offline {
        return Err(PullError::PrivateOffline { reference });
    }
    let pinned = source.reference.with_digest(manifest.clone());
    tenancy::confirm_access(source.registry, &pinned)
        .await
        .map_err(|source| PullError::PrivateDenied { reference, source })
}

pub(super) async fn resolve_digest(
    cache: &Cache,
    source: &Source<'_>,
    policy: PullPolicy,
) -> Result<Digest, PullError> {
    let reference = source.reference;
    if let Some(digest) = reference.digest() {
        return Ok(digest.clone());
    }
    if policy != PullPolicy::Always {
        if let Some(digest) = cache.tag(&tag_key(reference))? {
            if cache.manifest(&digest)?.is_some() {
                return Ok(digest);
            }
        }
    }
    let fetched = source.manifest(reference).await?;
    let digest = cache.store_manifest(&fetched.bytes)?;
    cache.store_tag(&tag_key(reference), &digest)?;
    Ok(digest)
}

/// What the cache remembers a tag reference's resolution under.
pub fn tag_key(reference: &Reference) -> crate::cache::TagKey<'_> {
    crate::cache::TagKey {
        registry: reference.registry(),
        repository: reference.repository(),
        tag: reference.tag_or_latest(),
    }
}

/// Reads (cache first) the manifest `digest` names; an index resolves to one of its manifests
/// (for a ModelKit index, the `variant` named).
pub(super) async fn load_manifest(
    cache: &Cache,
    source: &Source<'_>,
    digest: &Digest,
    variant: Option<&str>,
) -> Result<(Digest, Manifest), PullError> {
    let mut digest = digest.clone();
    // A variant names an entry of the index the reference points at, not the manifest chosen.
    let mut variant = variant;
    for _ in 0..2 {
        let bytes = match cache.manifest(&digest)? {
            Some(bytes) => bytes,
            None => {
                let fetched = source
                    .manifest(&source.reference.with_digest(digest.clone()))
                    .await?;
                let actual = Digest::of_bytes(&fetched.bytes);
                if actual != digest {
                    return Err(PullError::ManifestMismatch {
                        expected: digest,
                        actual,
                    });
                }
                cache.store_manifest(&fetched.bytes)?;
                fetched.bytes.to_vec()
            }
        };
        let label = source.reference.with_digest(digest.clone()).to_string();
        let artifact_error = |error| PullError::Artifact {
            reference: label.clone(),
            source: error,
        };
        match artifact::manifest::parse(&bytes, None).map_err(artifact_error)? {
            Parsed::Manifest(_) if variant.is_some() => {
                return Err(artifact_error(ArtifactError::NotAnIndex {
                    wanted: variant.unwrap_or_default().to_string(),
                }))
            }
            Parsed::Manifest(manifest) => return Ok((digest, *manifest)),
            Parsed::Index(entries) => {
                let variants = artifact::kitops::variants(&bytes, &entries);
                let chosen = match (&variants, variant) {
                    (Some(variants), _) => {
                        &artifact::kitops::choose(variants, variant)
                            .map_err(artifact_error)?
                            .manifest
                    }
                    (None, Some(wanted)) => {
                        return Err(artifact_error(ArtifactError::NotAnIndex {
                            wanted: wanted.to_string(),
                        }))
                    }
                    (None, None) => {
                        artifact::manifest::select_from_index(&entries).ok_or_else(|| {
                            artifact_error(ArtifactError::Malformed {
                                detail: "the image index lists no manifests".into(),
                            })
                        })?
                    }
                };
                if chosen.digest == digest {
                    return Err(artifact_error(ArtifactError::Malformed {
                        detail: "the image index lists itself".into(),
                    }));
                }
                tracing::debug!(index = %digest, manifest = %chosen.digest, "index resolved");
                variant = None;
                digest = chosen.digest.clone();
            }
        }
    }
    Err(PullError::Artifact {
        reference: source.reference.to_string(),
        source: ArtifactError::Malformed {
            detail: "an image index points to another index; nested indexes are not followed"
                .into(),
        },
    })
}

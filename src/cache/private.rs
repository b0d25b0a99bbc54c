//! Private markers: `manifests/sha256/<hex>.private` says a manifest was fetched with
//! credentials the registry demanded, so its cached bytes may only be handed to a requester
//! the registry has confirmed (see `crate::tenancy`). The file holds the repository it came
//! from, for people reading the cache.

use super::error::CacheError;
use super::{write_atomically, Cache};
use crate::digest::Digest;
use std::path::PathBuf;

impl Cache {
    fn private_marker(&self, manifest: &Digest) -> PathBuf {
        self.root()
            .join("manifests/sha256")
            .join(format!("{}.private", manifest.hex()))
    }

    /// Marks a manifest (and so the model it describes) as readable only with credentials.
    pub fn mark_private(&self, manifest: &Digest, origin: &str) -> Result<(), CacheError> {
        write_atomically(&self.private_marker(manifest), origin.as_bytes())
    }

    /// Whether a manifest was marked private.
    pub fn is_private(&self, manifest: &Digest) -> Result<bool, CacheError> {
        let path = self.private_marker(manifest);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }
}

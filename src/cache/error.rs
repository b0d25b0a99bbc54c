//! Errors of the on-node cache.

use crate::digest::Digest;
use crate::errors::{io_kind, Classify, FailureKind};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}{}", path.display(), hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {digest}: content does not match its digest (got {actual}); the download was discarded")]
    DigestMismatch { digest: Digest, actual: Digest },
    #[error("blob {digest}: size mismatch, expected {expected} bytes, received {actual}; the download was discarded")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("cache {}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

impl CacheError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            path: path.into(),
            source,
        }
    }

    /// The failure is about content not matching what was promised.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. }
        )
    }
}

fn hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(code) if code == nix::libc::ENOSPC => {
            " (the filesystem is full; free space or point --cache at a larger volume)"
        }
        Some(code) if code == nix::libc::EACCES || code == nix::libc::EROFS => {
            " (no write access; check the volume mount and the user tugboat runs as)"
        }
        _ => "",
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

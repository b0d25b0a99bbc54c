//! Advisory file locks (flock) that serialise work on one blob or snapshot across every
//! process sharing the cache: the node daemon and any number of init containers.

use super::error::CacheError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Held while the lock is; released on drop (or by the kernel if the process dies).
pub struct FileLock {
    _lock: Flock<File>,
}

impl FileLock {
    /// Blocks (off the async runtime) until the exclusive lock on `path` is ours.
    pub async fn acquire(path: PathBuf) -> Result<FileLock, CacheError> {
        tokio::task::spawn_blocking(move || Self::acquire_blocking(&path))
            .await
            .expect("lock task panicked")
    }

    pub fn acquire_blocking(path: &Path) -> Result<FileLock, CacheError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| CacheError::io(path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| CacheError::io(path, std::io::Error::from(errno)))?;
        Ok(FileLock { _lock: lock })
    }
}

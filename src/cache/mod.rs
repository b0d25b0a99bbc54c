//! The content-addressed on-node cache: verified blobs, raw manifests, tag records and
//! materialised snapshots, shared safely by every tugboat process on the node.
//! It knows nothing of registries or CSI.

mod chunked;
mod error;
mod gc;
mod ingest;
mod lease;
mod leftovers;
mod lock;
mod private;
mod snapshot;
mod usage;
mod verify;
mod work_lease;
pub mod writeback;

pub use chunked::{
    ChunkLayout, ChunkedIngest, ChunkedWriter, FileLayout, PartialReader, Purpose, VerifiedFile,
    DOWNLOAD_STOPPED,
};
pub use error::CacheError;
pub use gc::{GcPolicy, GcReport};
pub use ingest::{BlobWriter, Ingest};
pub use lease::Lease;
pub use lock::FileLock;
pub use snapshot::{remove_tree, SnapshotBuilder, SnapshotFile, SnapshotInfo, SnapshotSlot};
pub use usage::{Inventory, SnapshotEntry};
pub use verify::VerifyReport;
pub use work_lease::WorkLease;

use crate::digest::Digest;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Handle on a cache directory (`--cache`, default `/var/lib/tugboat` for the node daemon).
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache layout under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let cache = Cache { root: root.into() };
        for dir in [
            cache.root.join("blobs/sha256"),
            cache.ingest_dir(),
            cache.root.join("manifests/sha256"),
            cache.root.join("refs"),
            cache.snapshots_dir(),
            cache.root.join("leases"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        }
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// A verified blob of the expected size is present.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> Result<bool, CacheError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.is_file() && meta.len() == size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    /// Deletes a blob whose bytes no longer hash to its name; returns whether it did.
    pub fn remove_blob_if_corrupt(&self, digest: &Digest) -> Result<bool, CacheError> {
        let path = self.blob_path(digest);
        match Digest::of_file(&path) {
            Ok(actual) if &actual == digest => Ok(false),
            Ok(_) => fs::remove_file(&path)
                .map(|_| true)
                .map_err(|e| CacheError::io(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    /// Raw manifest bytes stored under their digest, if present.
    pub fn manifest(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.root.join("manifests/sha256").join(digest.hex());
        match fs::read(&path) {
            Ok(bytes) if &Digest::of_bytes(&bytes) == digest => Ok(Some(bytes)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "stored manifest does not match its digest; ignoring it");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    /// Stores manifest bytes under their own digest.
    pub fn store_manifest(&self, bytes: &[u8]) -> Result<Digest, CacheError> {
        let digest = Digest::of_bytes(bytes);
        let path = self.root.join("manifests/sha256").join(digest.hex());
        if !path.exists() {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// The manifest digest a tag resolved to last time (lets a tag pull work offline).
    pub fn tag(&self, key: &TagKey<'_>) -> Result<Option<Digest>, CacheError> {
        let path = self.tag_path(key)?;
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    pub fn store_tag(&self, key: &TagKey<'_>, digest: &Digest) -> Result<(), CacheError> {
        let path = self.tag_path(key)?;
        let dir = path.parent().expect("tag path has a parent");
        fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
        write_atomically(&path, digest.to_string().as_bytes())
    }

    /// Forgets what a tag resolved to (the next tag pull asks the registry).
    pub fn forget_tag(&self, key: &TagKey<'_>) -> Result<(), CacheError> {
        let path = self.tag_path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    /// `refs/<registry>/<repository>/<tag>`, refusing names that are not plain path
    /// components (the cache keys on the strings it is given and trusts none of them).
    fn tag_path(&self, key: &TagKey<'_>) -> Result<PathBuf, CacheError> {
        let refs = self.root.join("refs");
        let plain = |part: &str| {
            !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\\', '\0'])
        };
        let ok = plain(key.registry) && plain(key.tag) && key.repository.split('/').all(plain);
        if !ok {
            return Err(CacheError::Corrupt {
                path: refs,
                detail: format!(
                    "refusing the tag key {}/{}:{} (not plain path components)",
                    key.registry, key.repository, key.tag
                ),
            });
        }
        Ok(refs.join(key.registry).join(key.repository).join(key.tag))
    }
}

/// What a tag is remembered under: plain strings, so the cache needs no notion of references.
#[derive(Clone, Copy, Debug)]
pub struct TagKey<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
}

/// Writes a small file via a temp file, fsync and rename: readers see old or new, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    replace_file(path, bytes, true)
}

/// Replaces `path` by rename, without fsync: for records whose loss in a power cut costs only
/// work (a resume point), never correctness.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> Result<(), CacheError> {
    let dir = path.parent().expect("path has a parent");
    let mut temp = tempfile_in(dir)?;
    temp.1
        .write_all(bytes)
        .map_err(|e| CacheError::io(&temp.0, e))?;
    if sync {
        temp.1.sync_all().map_err(|e| CacheError::io(&temp.0, e))?;
    }
    fs::rename(&temp.0, path).map_err(|e| CacheError::io(path, e))?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, fs::File), CacheError> {
    for attempt in 0..100u32 {
        let path = dir.join(format!(
            ".tmp-{}-{}-{attempt}",
            std::process::id(),
            unique()
        ));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CacheError::io(path, e)),
        }
    }
    Err(CacheError::io(
        dir,
        std::io::Error::other("cannot create a temporary file"),
    ))
}

/// A process-unique counter for temporary names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// fsyncs a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CacheError::io(dir, e))
}

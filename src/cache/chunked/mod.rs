//! Downloads in parallel chunks: each chunk is written at its offset in
//! `ingest/<hex>.partial` (pwrite), and the sidecar `ingest/<hex>.chunks` records which chunks
//! are complete (`record`). The contiguous prefix of written bytes (the frontier) grows as the
//! chunks land; a hasher thread reads it back in order, so the digest is known as soon as the
//! last chunk lands, and a [`PartialReader`] hands the same bytes, in order, to an archive
//! being unpacked while it downloads (`frontier`). After a crash only the chunks not recorded
//! are fetched again; the final size and digest check stays the gate.
//!
//! The sidecar is a resume hint, not a promise: a resume after a power cut that trusts bytes
//! the disk lost fails the final digest check, and the download starts over. So chunks are
//! not fsynced one by one; what the partial becomes decides how it is written
//! ([`Purpose`]). A blob's chunks have their writeback started as each completes, and the
//! whole is fsynced once, before it is published. A streamed archive's partial is only a
//! resume point, deleted once its snapshot commits, so its pages need never reach the disk.
//! A one-file tar layer's partial is laid out as that file — the bytes before the file's
//! (its tar headers) kept in `ingest/<hex>.head`, the file's bytes from offset 0 — so that,
//! verified, it becomes the snapshot's file by a rename.

mod frontier;
mod record;

pub use frontier::{PartialReader, DOWNLOAD_STOPPED};
pub(super) use record::{complete_prefix, sidecar_path};

use super::error::CacheError;
use super::lock::FileLock;
use super::{writeback, Cache};
use crate::digest::Digest;
use frontier::{all_zero, hash_in_order, BlobBytes, Frontier, Hashed};
use record::{head_path, open_chunked, write_sidecar, Opened};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a chunked partial becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A blob published under `blobs/` (fsynced then).
    Blob,
    /// The bytes of an archive unpacked as they arrive: never published, not fsynced.
    /// `hashed_by_reader`: the one [`PartialReader`] takes the digest as it unpacks (a plain
    /// tar), so no hasher thread reads the bytes a second time.
    Streamed { hashed_by_reader: bool },
    /// A plain tar layer holding one file: the partial is laid out as that file (see the
    /// module comment), its writeback started as chunks complete, and the hasher takes the
    /// file's digest together with the layer's.
    File(FileLayout),
}

/// Where a one-file tar layer's file lies in it: everything before it (`head`, the tar
/// headers), then `length` bytes of the file; what follows must be zeros (padding and the
/// end-of-archive blocks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    pub head: Vec<u8>,
    pub length: u64,
}

/// Outcome of asking to ingest a blob in chunks.
pub enum ChunkedIngest {
    /// The blob is already verified in the cache.
    Present,
    /// The caller must fetch `writer.missing()` chunks.
    Needed(Box<ChunkedWriter>),
}

/// How a blob is cut into chunks: every chunk is `chunk_size` bytes but the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLayout {
    pub size: u64,
    pub chunk_size: u64,
}

impl ChunkLayout {
    pub fn count(&self) -> usize {
        self.size.div_ceil(self.chunk_size.max(1)) as usize
    }

    /// Byte range `start..end` of chunk `index`.
    pub fn range(&self, index: usize) -> (u64, u64) {
        let start = index as u64 * self.chunk_size;
        (start, (start + self.chunk_size).min(self.size))
    }
}

/// The hasher thread: what it read (see [`Hashed`]).
type HasherThread = std::thread::JoinHandle<Result<Hashed, CacheError>>;

/// Writes one blob's chunks at their offsets and hashes the complete prefix in order.
pub struct ChunkedWriter {
    digest: Digest,
    layout: ChunkLayout,
    purpose: Purpose,
    bytes: BlobBytes,
    sidecar: PathBuf,
    final_path: PathBuf,
    frontier: Arc<Frontier>,
    kept: u64,
    hasher: Mutex<Option<HasherThread>>,
    _lock: FileLock,
}

/// A one-file tar layer's file, verified and ready to be renamed into a snapshot.
pub struct VerifiedFile {
    pub path: PathBuf,
    pub size: u64,
    pub digest: Digest,
}

impl Cache {
    /// Takes the per-blob lock and opens (or resumes) a chunked download of `size` bytes.
    pub async fn ingest_chunked(
        &self,
        digest: &Digest,
        size: u64,
        chunk_size: u64,
        purpose: Purpose,
    ) -> Result<ChunkedIngest, CacheError> {
        if self.has_blob(digest, size)? {
            return Ok(ChunkedIngest::Present);
        }
        let lock =
            FileLock::acquire(self.ingest_dir().join(format!("{}.lock", digest.hex()))).await?;
        if self.has_blob(digest, size)? {
            return Ok(ChunkedIngest::Present);
        }
        let partial = self.ingest_dir().join(format!("{}.partial", digest.hex()));
        let layout = ChunkLayout {
            size,
            chunk_size: chunk_size.max(1),
        };
        let head = match &purpose {
            Purpose::File(file) => file.head.clone(),
            _ => Vec::new(),
        };
        let Opened { file, done, filled } = {
            let (partial, head) = (partial.clone(), head.clone());
            tokio::task::spawn_blocking(move || {
                if !head.is_empty() {
                    super::write_replacing(&head_path(&partial), &head)?;
                }
                open_chunked(&partial, layout, head.len() as u64)
            })
            .await
            .expect("ingest task panicked")?
        };
        let bytes = BlobBytes {
            file: Arc::new(file),
            partial,
            head: Arc::new(head),
            size,
        };
        let kept = filled.iter().sum();
        let frontier = Arc::new(Frontier::new(done, filled));
        let file_length = match &purpose {
            Purpose::File(file) => Some(file.length),
            _ => None,
        };
        let hasher = match purpose {
            Purpose::Streamed {
                hashed_by_reader: true,
            } => None,
            _ => Some(
                std::thread::Builder::new()
                    .name("tugboat-hash".into())
                    .spawn({
                        let (bytes, frontier) = (bytes.clone(), frontier.clone());
                        move || hash_in_order(&bytes, &frontier, file_length)
                    })
                    .map_err(|e| CacheError::io(&bytes.partial, e))?,
            ),
        };
        let writer = ChunkedWriter {
            digest: digest.clone(),
            layout,
            purpose,
            sidecar: sidecar_path(&bytes.partial),
            bytes,
            final_path: self.blob_path(digest),
            frontier,
            kept,
            hasher: Mutex::new(hasher),
            _lock: lock,
        };
        writer.frontier.advance(layout);
        Ok(ChunkedIngest::Needed(Box::new(writer)))
    }

    /// The head an interrupted download of `digest` laid out as a file left (its tar
    /// headers), to resume it under the same layout.
    pub fn partial_head(&self, digest: &Digest) -> Option<Vec<u8>> {
        let partial = self.ingest_dir().join(format!("{}.partial", digest.hex()));
        std::fs::read(head_path(&partial)).ok()
    }
}

impl ChunkedWriter {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// Bytes kept from an earlier, interrupted download (complete chunks, and the start of
    /// the chunk a one-stream partial ended in).
    pub fn resumed_bytes(&self) -> u64 {
        self.kept
    }

    /// Indexes of the chunks still to fetch, in order.
    pub fn missing(&self) -> Vec<usize> {
        let state = self.frontier.lock();
        (0..state.done.len()).filter(|&i| !state.done[i]).collect()
    }

    /// Where fetching chunk `index` starts: past the bytes of it already written.
    pub fn resume_offset(&self, index: usize) -> u64 {
        self.layout.range(index).0 + self.frontier.lock().filled[index]
    }

    /// A reader of the blob's bytes in order, as they arrive (from byte 0: a resumed
    /// partial's complete prefix is read back from disk first).
    pub fn reader(&self) -> PartialReader {
        PartialReader {
            bytes: self.bytes.clone(),
            frontier: self.frontier.clone(),
            at: 0,
        }
    }

    fn shift(&self) -> u64 {
        self.bytes.head.len() as u64
    }

    /// Writes `bytes` at `offset` (inside a chunk being fetched) and returns the buffer.
    pub async fn write_at(&self, offset: u64, bytes: Vec<u8>) -> Result<Vec<u8>, CacheError> {
        let length = bytes.len() as u64;
        if offset + length > self.layout.size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.layout.size,
                actual: offset + length,
            });
        }
        // Bytes before the shift are the head, already known.
        let skip = self.shift().saturating_sub(offset).min(length);
        let at = (offset + skip) - self.shift();
        let (file, partial) = (self.bytes.file.clone(), self.bytes.partial.clone());
        let bytes = tokio::task::spawn_blocking(move || {
            file.write_all_at(&bytes[skip as usize..], at)
                .map(|()| bytes)
                .map_err(|e| CacheError::io(&partial, e))
        })
        .await
        .expect("chunk write panicked")?;
        self.note_written(offset, length);
        Ok(bytes)
    }

    /// Extends the in-order part of the chunk that `offset..offset + length` belongs to.
    fn note_written(&self, offset: u64, length: u64) {
        let index = (offset / self.layout.chunk_size) as usize;
        let start = self.layout.range(index).0;
        {
            let mut state = self.frontier.lock();
            let filled = &mut state.filled[index];
            if offset == start + *filled {
                *filled += length;
            }
        }
        self.frontier.advance(self.layout);
    }

    /// Records chunk `index` as complete: the disk starts writing its bytes (unless they are
    /// a throwaway resume point), then the sidecar claims it.
    pub async fn complete(&self, index: usize) -> Result<(), CacheError> {
        let (start, end) = self.layout.range(index);
        let (file, shift) = (self.bytes.file.clone(), self.shift());
        match self.purpose {
            Purpose::Blob | Purpose::File(_) => {
                let from = start.saturating_sub(shift);
                writeback::start(&file, from, end.saturating_sub(shift) - from);
            }
            Purpose::Streamed { .. } => {}
        }
        let done = {
            let mut state = self.frontier.lock();
            state.done[index] = true;
            state.done.clone()
        };
        let (sidecar, layout) = (self.sidecar.clone(), self.layout);
        tokio::task::spawn_blocking(move || write_sidecar(&sidecar, layout, &done, shift, false))
            .await
            .expect("sidecar write panicked")?;
        self.frontier.advance(self.layout);
        Ok(())
    }

    /// Stops the hasher thread: what it read (`None` for a partial hashed by its reader).
    async fn stop_hasher(&self) -> Result<Option<Hashed>, CacheError> {
        self.frontier.stop();
        let handle = self.hasher.lock().expect("hasher").take();
        match handle {
            Some(handle) => tokio::task::spawn_blocking(move || {
                handle.join().expect("the hasher thread panicked")
            })
            .await
            .expect("hasher join panicked")
            .map(Some),
            None => Ok(None),
        }
    }

    /// Checks size and digest once every chunk is complete, from the hasher thread or, for
    /// a partial hashed by its reader, from what the reader found (`read`: digest and length;
    /// `None` when it could not take them, and the partial is hashed from disk now). On a
    /// digest mismatch the partial and its records are deleted; a short download keeps them
    /// for a resume. Returns what the hasher read.
    async fn verify(&self, read: Option<(Digest, u64)>) -> Result<Option<Hashed>, CacheError> {
        let mut hashed = self.stop_hasher().await?;
        if hashed.is_none() && read.is_none() {
            hashed = Some(self.hash_from_disk().await?);
        }
        let (actual, length) = match (&hashed, read) {
            (Some(hashed), _) => (hashed.blob.clone().finish(), hashed.length),
            (None, Some(read)) => read,
            (None, None) => unreachable!("hashed above"),
        };
        let size = self.layout.size;
        if length != size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: size,
                actual: length,
            });
        }
        if actual != self.digest {
            self.remove_files();
            return Err(CacheError::DigestMismatch {
                digest: self.digest.clone(),
                actual,
            });
        }
        Ok(hashed)
    }

    /// What the complete prefix holds, read back from the partial.
    async fn hash_from_disk(&self) -> Result<Hashed, CacheError> {
        let (bytes, frontier) = (self.bytes.clone(), self.frontier.clone());
        tokio::task::spawn_blocking(move || hash_in_order(&bytes, &frontier, None))
            .await
            .expect("hash task panicked")
    }

    /// For an archive unpacked while it streamed: checks size and digest of every byte
    /// without publishing a blob (`read`: what a reader that hashed found, see [`Purpose`]).
    /// The partial stays until `abandon` once the tree built from it is committed.
    pub async fn verify_streamed(&self, read: Option<(Digest, u64)>) -> Result<(), CacheError> {
        self.verify(read).await.map(|_| ())
    }

    /// For a partial laid out as a file ([`Purpose::File`]): checks the layer's size and
    /// digest, then that only zeros follow the file. Returns the file, cut to its length,
    /// ready to be renamed into the snapshot; `None` when something follows it after all
    /// (the layer holds more than one file: unpack it from [`ChunkedWriter::reader`]).
    pub async fn verify_file(&self) -> Result<Option<VerifiedFile>, CacheError> {
        let Purpose::File(layout) = &self.purpose else {
            return Ok(None);
        };
        let hashed = self.verify(None).await?.expect("a file partial is hashed");
        let (length, end) = (layout.length, self.layout.size - self.shift());
        let (file, partial) = (self.bytes.file.clone(), self.bytes.partial.clone());
        let clean = tokio::task::spawn_blocking(move || {
            if !all_zero(&file, &partial, length, end)? {
                return Ok(false);
            }
            file.set_len(length)
                .map_err(|e| CacheError::io(&partial, e))?;
            Ok::<_, CacheError>(true)
        })
        .await
        .expect("tail check panicked")?;
        Ok(clean.then(|| VerifiedFile {
            path: self.bytes.partial.clone(),
            size: length,
            digest: hashed.file.expect("the file is hashed").finish(),
        }))
    }

    /// Verifies size and digest once every chunk is complete, then publishes the blob.
    /// On a digest mismatch the partial and its sidecar are deleted.
    pub async fn commit(self) -> Result<(), CacheError> {
        self.verify(None).await?;
        let size = self.layout.size;
        let (partial, sidecar, final_path) = (
            self.bytes.partial.clone(),
            self.sidecar.clone(),
            self.final_path.clone(),
        );
        let file = self.bytes.file.clone();
        tokio::task::spawn_blocking(move || {
            let io = |e| CacheError::io(&partial, e);
            file.set_len(size).map_err(io)?;
            file.sync_all().map_err(io)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o444))
                .map_err(io)?;
            std::fs::rename(&partial, &final_path).map_err(|e| CacheError::io(&final_path, e))?;
            let _ = std::fs::remove_file(&sidecar);
            super::sync_dir(final_path.parent().expect("blob path has a parent"))
        })
        .await
        .expect("publish task panicked")
    }

    /// Stops, keeping the partial and its records for a later resume.
    pub async fn suspend(&self) {
        let _ = self.stop_hasher().await;
    }

    /// Stops and deletes the partial and its records (their content cannot be trusted, the
    /// download goes on another way, or a snapshot now holds the bytes).
    pub async fn abandon(&self) {
        let _ = self.stop_hasher().await;
        self.remove_files();
    }

    fn remove_files(&self) {
        let partial = &self.bytes.partial;
        for path in [partial.clone(), self.sidecar.clone(), head_path(partial)] {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ChunkedWriter {
    fn drop(&mut self) {
        // Let the hasher thread and readers end with the writer when a caller gives up
        // mid-download.
        self.frontier.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_cuts_the_last_chunk_short() {
        let layout = ChunkLayout {
            size: 10,
            chunk_size: 4,
        };
        assert_eq!(layout.count(), 3);
        assert_eq!(layout.range(0), (0, 4));
        assert_eq!(layout.range(2), (8, 10));
    }
}

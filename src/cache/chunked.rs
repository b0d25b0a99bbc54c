//! Downloads in parallel chunks: each chunk is written at its offset in
//! `ingest/<hex>.partial` (pwrite), and `ingest/<hex>.chunks` records which chunks are complete
//! (written after the partial's data is fsynced, so it never claims bytes that are not on disk).
//! A hasher thread reads the partial back in order as the contiguous prefix of complete chunks
//! grows, so the digest is known as soon as the last chunk lands. After a crash only the chunks
//! not recorded are fetched again; the final size and digest check stays the gate.

use super::error::CacheError;
use super::lock::FileLock;
use super::Cache;
use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

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

/// The sidecar `ingest/<hex>.chunks`: the layout and the indexes of complete chunks.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar {
    #[serde(flatten)]
    layout: ChunkLayout,
    done: Vec<usize>,
}

/// Chunks complete on disk, read from a sidecar; `None` when it is missing or unreadable.
fn read_sidecar(path: &Path) -> Option<(ChunkLayout, Vec<bool>)> {
    let sidecar: Sidecar = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let layout = sidecar.layout;
    if layout.chunk_size == 0 {
        return None;
    }
    let mut done = vec![false; layout.count()];
    for index in sidecar.done {
        *done.get_mut(index)? = true;
    }
    Some((layout, done))
}

/// Bytes at the start of a chunked partial that are complete, for a single-stream resume.
pub(super) fn complete_prefix(sidecar: &Path, expected_size: u64) -> u64 {
    match read_sidecar(sidecar) {
        Some((layout, done)) if layout.size == expected_size => {
            let first_missing = done.iter().position(|d| !d).unwrap_or(done.len());
            layout.range(first_missing).0.min(layout.size)
        }
        _ => 0,
    }
}

pub(super) fn sidecar_path(partial: &Path) -> PathBuf {
    partial.with_extension("chunks")
}

struct Progress {
    done: Vec<bool>,
    /// Bytes from 0 covered by complete chunks (what the hasher may read).
    frontier: u64,
}

/// The hasher thread: the hash of the complete prefix and its length.
type HasherThread = std::thread::JoinHandle<Result<(Sha256, u64), CacheError>>;

/// Writes one blob's chunks at their offsets and hashes the complete prefix in order.
pub struct ChunkedWriter {
    digest: Digest,
    layout: ChunkLayout,
    file: Arc<File>,
    partial: PathBuf,
    sidecar: PathBuf,
    final_path: PathBuf,
    progress: Mutex<Progress>,
    kept: u64,
    frontier: Mutex<Option<mpsc::Sender<u64>>>,
    hasher: Mutex<Option<HasherThread>>,
    _lock: FileLock,
}

impl Cache {
    /// Takes the per-blob lock and opens (or resumes) a chunked download of `size` bytes.
    pub async fn ingest_chunked(
        &self,
        digest: &Digest,
        size: u64,
        chunk_size: u64,
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
        let (file, done) = {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || open_chunked(&partial, layout))
                .await
                .expect("ingest task panicked")?
        };
        let file = Arc::new(file);
        let kept = (0..layout.count())
            .filter(|&i| done[i])
            .map(|i| layout.range(i))
            .map(|(s, e)| e - s)
            .sum();
        let (sender, receiver) = mpsc::channel();
        let hasher = std::thread::Builder::new()
            .name("tugboat-hash".into())
            .spawn({
                let (file, partial) = (file.clone(), partial.clone());
                move || hash_in_order(&file, &partial, receiver)
            })
            .map_err(|e| CacheError::io(&partial, e))?;
        let writer = ChunkedWriter {
            digest: digest.clone(),
            layout,
            file,
            sidecar: sidecar_path(&partial),
            partial,
            final_path: self.blob_path(digest),
            progress: Mutex::new(Progress { done, frontier: 0 }),
            kept,
            frontier: Mutex::new(Some(sender)),
            hasher: Mutex::new(Some(hasher)),
            _lock: lock,
        };
        writer.advance_frontier();
        Ok(ChunkedIngest::Needed(Box::new(writer)))
    }
}

/// Opens the partial and works out which chunks it already holds: from its sidecar (under
/// any earlier chunk size), or a single-stream partial's prefix. Records the result at once,
/// before any chunk is written, so the partial is never mistaken for a single-stream one.
fn open_chunked(partial: &Path, layout: ChunkLayout) -> Result<(File, Vec<bool>), CacheError> {
    let io = |e| CacheError::io(partial, e);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(partial)
        .map_err(io)?;
    let length = file.metadata().map_err(io)?.len();
    let sidecar = sidecar_path(partial);
    // Byte ranges known complete.
    let complete: Vec<(u64, u64)> = match read_sidecar(&sidecar) {
        Some((old, done)) if old.size == layout.size => (0..old.count())
            .filter(|&i| done[i])
            .map(|i| old.range(i))
            .collect(),
        Some(_) => Vec::new(),
        None if sidecar.exists() => Vec::new(),
        None if length <= layout.size => vec![(0, length)],
        None => Vec::new(),
    };
    // A claim past the partial's end (a partial removed by GC, say) is not trusted.
    let complete: Vec<(u64, u64)> = complete.into_iter().filter(|&(_, e)| e <= length).collect();
    let covered = |start: u64, end: u64| {
        let mut at = start;
        for &(s, e) in &complete {
            if s <= at && e > at {
                at = e;
            }
        }
        at >= end
    };
    let done: Vec<bool> = (0..layout.count())
        .map(|i| {
            let (s, e) = layout.range(i);
            covered(s, e)
        })
        .collect();
    if complete.is_empty() && length > 0 {
        file.set_len(0).map_err(io)?;
    }
    write_sidecar(&sidecar, layout, &done)?;
    Ok((file, done))
}

fn write_sidecar(path: &Path, layout: ChunkLayout, done: &[bool]) -> Result<(), CacheError> {
    let sidecar = Sidecar {
        layout,
        done: (0..done.len()).filter(|&i| done[i]).collect(),
    };
    let bytes = serde_json::to_vec(&sidecar).expect("the sidecar serialises");
    super::write_atomically(path, &bytes)
}

/// Reads the partial back in order up to each new frontier and hashes it.
fn hash_in_order(
    file: &File,
    partial: &Path,
    frontier: mpsc::Receiver<u64>,
) -> Result<(Sha256, u64), CacheError> {
    let mut hasher = Sha256::new();
    let mut hashed = 0u64;
    let mut buffer = vec![0u8; 256 << 10];
    while let Ok(target) = frontier.recv() {
        while hashed < target {
            let want = (target - hashed).min(buffer.len() as u64) as usize;
            let n = file
                .read_at(&mut buffer[..want], hashed)
                .map_err(|e| CacheError::io(partial, e))?;
            if n == 0 {
                return Err(CacheError::io(
                    partial,
                    std::io::Error::other("the partial is shorter than its complete chunks"),
                ));
            }
            hasher.update(&buffer[..n]);
            hashed += n as u64;
        }
    }
    Ok((hasher, hashed))
}

impl ChunkedWriter {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// Bytes kept from an earlier, interrupted download.
    pub fn resumed_bytes(&self) -> u64 {
        self.kept
    }

    /// Indexes of the chunks still to fetch, in order.
    pub fn missing(&self) -> Vec<usize> {
        let progress = self.progress.lock().expect("chunk state");
        (0..progress.done.len())
            .filter(|&i| !progress.done[i])
            .collect()
    }

    /// Writes `bytes` at `offset` (inside a chunk being fetched) and returns the buffer.
    pub async fn write_at(&self, offset: u64, bytes: Vec<u8>) -> Result<Vec<u8>, CacheError> {
        if offset + bytes.len() as u64 > self.layout.size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.layout.size,
                actual: offset + bytes.len() as u64,
            });
        }
        let (file, partial) = (self.file.clone(), self.partial.clone());
        tokio::task::spawn_blocking(move || {
            file.write_all_at(&bytes, offset)
                .map(|()| bytes)
                .map_err(|e| CacheError::io(&partial, e))
        })
        .await
        .expect("chunk write panicked")
    }

    /// Records chunk `index` as complete: its bytes are fsynced first, then the sidecar.
    pub async fn complete(&self, index: usize) -> Result<(), CacheError> {
        let (file, partial) = (self.file.clone(), self.partial.clone());
        tokio::task::spawn_blocking(move || {
            file.sync_data().map_err(|e| CacheError::io(&partial, e))
        })
        .await
        .expect("chunk sync panicked")?;
        let done = {
            let mut progress = self.progress.lock().expect("chunk state");
            progress.done[index] = true;
            progress.done.clone()
        };
        let (sidecar, layout) = (self.sidecar.clone(), self.layout);
        tokio::task::spawn_blocking(move || write_sidecar(&sidecar, layout, &done))
            .await
            .expect("sidecar write panicked")?;
        self.advance_frontier();
        Ok(())
    }

    /// Tells the hasher how far the complete prefix now reaches.
    fn advance_frontier(&self) {
        let mut progress = self.progress.lock().expect("chunk state");
        let first_missing = progress
            .done
            .iter()
            .position(|d| !d)
            .unwrap_or(progress.done.len());
        let frontier = if first_missing == progress.done.len() {
            self.layout.size
        } else {
            self.layout.range(first_missing).0
        };
        if frontier > progress.frontier {
            progress.frontier = frontier;
            if let Some(sender) = self.frontier.lock().expect("frontier").as_ref() {
                let _ = sender.send(frontier);
            }
        }
    }

    async fn stop_hasher(&self) -> Result<(Sha256, u64), CacheError> {
        self.frontier.lock().expect("frontier").take();
        let handle = self.hasher.lock().expect("hasher").take();
        match handle {
            Some(handle) => tokio::task::spawn_blocking(move || {
                handle.join().expect("the hasher thread panicked")
            })
            .await
            .expect("hasher join panicked"),
            None => Err(CacheError::io(
                &self.partial,
                std::io::Error::other("blob hasher already finished"),
            )),
        }
    }

    /// Verifies size and digest once every chunk is complete, then publishes the blob.
    /// On a digest mismatch the partial and its sidecar are deleted.
    pub async fn commit(self) -> Result<(), CacheError> {
        let (hasher, hashed) = self.stop_hasher().await?;
        let size = self.layout.size;
        if hashed != size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: size,
                actual: hashed,
            });
        }
        let actual = Digest::from_hasher(hasher);
        let (partial, sidecar, final_path) = (
            self.partial.clone(),
            self.sidecar.clone(),
            self.final_path.clone(),
        );
        if actual != self.digest {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&sidecar);
            return Err(CacheError::DigestMismatch {
                digest: self.digest.clone(),
                actual,
            });
        }
        let file = self.file.clone();
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

    /// Stops, keeping the partial and its sidecar for a later resume.
    pub async fn suspend(&self) {
        let _ = self.stop_hasher().await;
    }

    /// Stops and deletes the partial and its sidecar (their content cannot be trusted, or the
    /// download goes on another way).
    pub async fn abandon(&self) {
        let _ = self.stop_hasher().await;
        let _ = std::fs::remove_file(&self.partial);
        let _ = std::fs::remove_file(&self.sidecar);
    }
}

impl Drop for ChunkedWriter {
    fn drop(&mut self) {
        // Let the hasher thread end with the writer when a caller gives up mid-download.
        if let Ok(mut frontier) = self.frontier.lock() {
            frontier.take();
        }
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

    #[test]
    fn a_resume_under_another_chunk_size_keeps_only_covered_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        std::fs::write(&partial, vec![7u8; 12]).unwrap();
        let old = ChunkLayout {
            size: 12,
            chunk_size: 3,
        };
        write_sidecar(&sidecar_path(&partial), old, &[true, true, false, true]).unwrap();
        let new = ChunkLayout {
            size: 12,
            chunk_size: 4,
        };
        let (_, done) = open_chunked(&partial, new).unwrap();
        assert_eq!(done, vec![true, false, false]);
        assert_eq!(complete_prefix(&sidecar_path(&partial), 12), 4);
    }

    #[test]
    fn a_single_stream_partial_counts_as_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        std::fs::write(&partial, vec![7u8; 9]).unwrap();
        let layout = ChunkLayout {
            size: 12,
            chunk_size: 4,
        };
        let (_, done) = open_chunked(&partial, layout).unwrap();
        assert_eq!(done, vec![true, true, false]);
    }
}

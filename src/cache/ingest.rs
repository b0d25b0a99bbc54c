//! Downloads in flight: `ingest/<hex>.partial` is appended to, hashed as it grows, and renamed
//! into `blobs/sha256/<hex>` only after size and digest match. A partial survives a crash and
//! is resumed from its length; its prefix is re-hashed so the whole blob is always verified.
//! (Large blobs fetched in parallel chunks go through `chunked.rs`; a partial it left is
//! resumed here from its prefix of complete chunks.)

use super::error::CacheError;
use super::lock::FileLock;
use super::Cache;
use crate::digest::Digest;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Outcome of asking to ingest a blob.
pub enum Ingest {
    /// The blob is already verified in the cache (maybe another process just fetched it).
    Present,
    /// The caller must feed bytes from `writer.offset()` onwards.
    Needed(BlobWriter),
}

enum Message {
    Data(Bytes),
    Restart,
}

struct WriterState {
    file: BufWriter<File>,
    hasher: Sha256,
    written: u64,
}

/// Writes one blob's bytes on a blocking thread (hashing overlaps the network).
pub struct BlobWriter {
    digest: Digest,
    expected_size: u64,
    offset: u64,
    resumed_from: u64,
    partial: PathBuf,
    final_path: PathBuf,
    sender: Option<mpsc::Sender<Message>>,
    task: Option<JoinHandle<Result<WriterState, CacheError>>>,
    _lock: FileLock,
}

impl Cache {
    /// Takes the per-blob lock and opens (or resumes) the partial download.
    pub async fn ingest(&self, digest: &Digest, expected_size: u64) -> Result<Ingest, CacheError> {
        if self.has_blob(digest, expected_size)? {
            return Ok(Ingest::Present);
        }
        let lock =
            FileLock::acquire(self.ingest_dir().join(format!("{}.lock", digest.hex()))).await?;
        if self.has_blob(digest, expected_size)? {
            return Ok(Ingest::Present);
        }
        let partial = self.ingest_dir().join(format!("{}.partial", digest.hex()));
        let final_path = self.blob_path(digest);
        let opened = {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || open_partial(&partial, expected_size))
                .await
                .expect("ingest task panicked")?
        };
        let offset = opened.written;
        let (sender, receiver) = mpsc::channel(64);
        let task = tokio::task::spawn_blocking({
            let partial = partial.clone();
            move || write_loop(opened, receiver, &partial)
        });
        Ok(Ingest::Needed(BlobWriter {
            digest: digest.clone(),
            expected_size,
            offset,
            resumed_from: offset,
            partial,
            final_path,
            sender: Some(sender),
            task: Some(task),
            _lock: lock,
        }))
    }
}

impl BlobWriter {
    /// Bytes already on disk (or queued): where the next request should start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes that were on disk from an earlier, interrupted download.
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The registry ignored our Range request: start over from byte 0.
    pub async fn restart(&mut self) -> Result<(), CacheError> {
        self.offset = 0;
        self.send(Message::Restart).await
    }

    /// Appends bytes; refuses a body that runs past the size the manifest declared.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        let end = self.offset + chunk.len() as u64;
        if end > self.expected_size {
            self.abandon().await;
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.expected_size,
                actual: end,
            });
        }
        self.offset = end;
        self.send(Message::Data(chunk)).await
    }

    /// Verifies size and digest, then publishes the blob. On mismatch the partial is deleted.
    pub async fn commit(mut self) -> Result<(), CacheError> {
        let state = self.finish_writing().await?;
        let digest = self.digest.clone();
        let expected = self.expected_size;
        let partial = self.partial.clone();
        let final_path = self.final_path.clone();
        tokio::task::spawn_blocking(move || {
            publish(state, &digest, expected, &partial, &final_path)
        })
        .await
        .expect("publish task panicked")
    }

    /// The partial download's path (a streamed archive re-reads its prefix from it).
    pub fn partial_path(&self) -> &std::path::Path {
        &self.partial
    }

    /// For a layer unpacked while it streams: checks the size and digest of every byte
    /// written, without publishing a blob. The partial stays (unsynced; it is only a resume
    /// point) until `discard` once the tree built from it is committed. A short partial is
    /// kept for a resume; one with a wrong digest is deleted.
    pub async fn verify_streamed(&mut self) -> Result<(), CacheError> {
        let state = self.finish_writing().await?;
        if state.written != self.expected_size {
            let error = CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.expected_size,
                actual: state.written,
            };
            if state.written > self.expected_size {
                let _ = std::fs::remove_file(&self.partial);
            }
            return Err(error);
        }
        let actual = Digest::from_hasher(state.hasher);
        if actual != self.digest {
            let _ = std::fs::remove_file(&self.partial);
            return Err(CacheError::DigestMismatch {
                digest: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Deletes the partial (its bytes now live in a committed snapshot, or cannot be trusted)
    /// and releases the blob's lock. Deleted before writeback, its pages never reach the disk.
    pub async fn discard(mut self) {
        self.abandon().await;
    }

    /// Stops writing and keeps the partial for a later resume (network trouble).
    pub async fn suspend(mut self) -> Result<(), CacheError> {
        self.finish_writing().await.map(|_| ())
    }

    /// Stops writing but keeps the partial for a later resume, for callers that keep the
    /// writer (the lock) until they return.
    pub async fn abandon_keeping_partial(&mut self) {
        let _ = self.finish_writing().await;
    }

    /// Stops writing and deletes the partial (its content cannot be trusted).
    pub async fn abandon(&mut self) {
        let _ = self.finish_writing().await;
        let _ = std::fs::remove_file(&self.partial);
    }

    async fn send(&mut self, message: Message) -> Result<(), CacheError> {
        let sent = match &self.sender {
            Some(sender) => sender.send(message).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer thread stopped: its result says why.
        match self.finish_writing().await {
            Err(e) => Err(e),
            Ok(_) => Err(CacheError::io(
                &self.partial,
                std::io::Error::other("blob writer stopped"),
            )),
        }
    }

    async fn finish_writing(&mut self) -> Result<WriterState, CacheError> {
        self.sender.take();
        match self.task.take() {
            Some(task) => task.await.expect("blob writer panicked"),
            None => Err(CacheError::io(
                &self.partial,
                std::io::Error::other("blob writer already finished"),
            )),
        }
    }
}

fn open_partial(path: &PathBuf, expected_size: u64) -> Result<WriterState, CacheError> {
    let io = |e| CacheError::io(path, e);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut length = file.metadata().map_err(io)?.len();
    // A chunked download left this partial: only its prefix of complete chunks is kept.
    let sidecar = super::chunked::sidecar_path(path);
    if sidecar.exists() {
        length = length.min(super::chunked::complete_prefix(&sidecar, expected_size));
        file.set_len(length).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::remove_file(&sidecar).map_err(|e| CacheError::io(&sidecar, e))?;
    }
    if length > expected_size {
        file.set_len(0).map_err(io)?;
        length = 0;
    }
    // Re-hash what an earlier attempt left, so the final digest covers every byte.
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut remaining = length;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    while remaining > 0 {
        let want = remaining.min(buffer.len() as u64) as usize;
        let n = file.read(&mut buffer[..want]).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        remaining -= n as u64;
    }
    let written = length - remaining;
    file.set_len(written).map_err(io)?;
    file.seek(SeekFrom::Start(written)).map_err(io)?;
    Ok(WriterState {
        file: BufWriter::with_capacity(256 << 10, file),
        hasher,
        written,
    })
}

fn write_loop(
    mut state: WriterState,
    mut receiver: mpsc::Receiver<Message>,
    path: &PathBuf,
) -> Result<WriterState, CacheError> {
    let io = |e| CacheError::io(path, e);
    while let Some(message) = receiver.blocking_recv() {
        match message {
            Message::Data(chunk) => {
                state.file.write_all(&chunk).map_err(io)?;
                state.hasher.update(&chunk);
                state.written += chunk.len() as u64;
            }
            Message::Restart => {
                state.file.flush().map_err(io)?;
                let file = state.file.get_mut();
                file.set_len(0).map_err(io)?;
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                state.hasher = Sha256::new();
                state.written = 0;
            }
        }
    }
    state.file.flush().map_err(io)?;
    Ok(state)
}

fn publish(
    state: WriterState,
    digest: &Digest,
    expected_size: u64,
    partial: &PathBuf,
    final_path: &PathBuf,
) -> Result<(), CacheError> {
    let WriterState {
        file,
        hasher,
        written,
    } = state;
    let discard = |error: CacheError| {
        let _ = std::fs::remove_file(partial);
        Err(error)
    };
    if written != expected_size {
        if written < expected_size {
            // Short: keep it for a resume; the caller decides whether to retry.
            return Err(CacheError::SizeMismatch {
                digest: digest.clone(),
                expected: expected_size,
                actual: written,
            });
        }
        return discard(CacheError::SizeMismatch {
            digest: digest.clone(),
            expected: expected_size,
            actual: written,
        });
    }
    let actual = Digest::from_hasher(hasher);
    if &actual != digest {
        return discard(CacheError::DigestMismatch {
            digest: digest.clone(),
            actual,
        });
    }
    let file = file
        .into_inner()
        .map_err(|e| CacheError::io(partial, e.into_error()))?;
    file.sync_all().map_err(|e| CacheError::io(partial, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o444))
        .map_err(|e| CacheError::io(partial, e))?;
    drop(file);
    std::fs::rename(partial, final_path).map_err(|e| CacheError::io(final_path, e))?;
    super::sync_dir(final_path.parent().expect("blob path has a parent"))
}

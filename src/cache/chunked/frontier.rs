//! The in-order prefix of a chunked download (the frontier) and the readers that follow it:
//! the hasher thread, and the [`PartialReader`] an archive is unpacked from while it
//! downloads. Both read the blob's bytes through [`BlobBytes`], which knows where a partial
//! laid out as a file keeps its head.

use super::super::error::CacheError;
use super::ChunkLayout;
use crate::digest::twin::{update_both, Sha256State};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Which chunks are complete and how far the in-order prefix reaches, shared by the writer,
/// the hasher thread and any [`PartialReader`].
pub(super) struct Frontier {
    state: Mutex<FrontierState>,
    moved: Condvar,
}

pub(super) struct FrontierState {
    pub done: Vec<bool>,
    /// Bytes written in order from each chunk's start (a chunk's stream writes sequentially).
    pub filled: Vec<u64>,
    /// The first chunk not complete (every one before it is).
    first_open: usize,
    /// Bytes from 0 that are on disk (in the page cache at least): what readers may read.
    reached: u64,
    /// How far `reached` was when the readers were last woken.
    announced: u64,
    /// The writer stopped: readers get no further than `reached`.
    stopped: bool,
}

/// Readers are woken when the prefix has grown by this much (or is complete), not on every
/// write: fewer wake-ups, and each read a long one.
const WAKE_STEP: u64 = 1 << 20;

impl Frontier {
    pub fn new(done: Vec<bool>, filled: Vec<u64>) -> Self {
        Frontier {
            state: Mutex::new(FrontierState {
                done,
                filled,
                first_open: 0,
                reached: 0,
                announced: 0,
                stopped: false,
            }),
            moved: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, FrontierState> {
        self.state.lock().expect("chunk state")
    }

    /// Recomputes how far the prefix reaches after a write or a completed chunk, and wakes
    /// the readers.
    pub fn advance(&self, layout: ChunkLayout) {
        let mut state = self.lock();
        while state.first_open < state.done.len() && state.done[state.first_open] {
            state.first_open += 1;
        }
        let first_open = state.first_open;
        let reached = if first_open == state.done.len() {
            layout.size
        } else {
            layout.range(first_open).0 + state.filled[first_open]
        };
        state.reached = state.reached.max(reached);
        if state.reached >= state.announced + WAKE_STEP || state.reached == layout.size {
            state.announced = state.reached;
            self.moved.notify_all();
        }
    }

    pub fn stop(&self) {
        self.lock().stopped = true;
        self.moved.notify_all();
    }

    /// Waits until bytes past `at` may be read; returns how far they reach and whether the
    /// writer has stopped (then nothing more will come).
    fn wait_past(&self, at: u64, size: u64) -> (u64, bool) {
        let mut state = self.lock();
        // A reader only waits for what has not been announced: at most one wake step.
        while state.announced <= at && at < size && !state.stopped {
            state = self.moved.wait(state).expect("chunk state");
        }
        (state.reached, state.stopped)
    }
}

/// A blob's bytes as a chunked partial holds them: at their own offsets, or, laid out as a
/// file, the first `head.len()` bytes in memory and byte `x` at `x - head.len()`.
#[derive(Clone)]
pub(super) struct BlobBytes {
    pub file: Arc<File>,
    pub partial: PathBuf,
    pub head: Arc<Vec<u8>>,
    pub size: u64,
}

impl BlobBytes {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        let shift = self.head.len() as u64;
        if at < shift {
            let from = &self.head[at as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            return Ok(n);
        }
        self.file.read_at(buf, at - shift)
    }
}

/// What the hasher read: the blob's digest state, how many bytes, and the digest of the
/// file a partial laid out as a file holds (its bytes `head.len()..head.len() + length`).
pub(super) struct Hashed {
    pub blob: Sha256State,
    pub length: u64,
    pub file: Option<Sha256State>,
}

/// Reads the blob back in order as the frontier grows and hashes it, until every byte is
/// hashed or the writer stops. `file_length`: the bytes after the head also feed the file's
/// digest, in the same pass (`digest::twin`).
pub(super) fn hash_in_order(
    bytes: &BlobBytes,
    frontier: &Frontier,
    file_length: Option<u64>,
) -> Result<Hashed, CacheError> {
    let shift = bytes.head.len() as u64;
    let file_end = file_length.map(|n| shift + n);
    let mut blob = Sha256State::new();
    let mut file = file_length.map(|_| Sha256State::new());
    let mut hashed = 0u64;
    let mut buffer = vec![0u8; 256 << 10];
    while hashed < bytes.size {
        let (reached, stopped) = frontier.wait_past(hashed, bytes.size);
        if reached <= hashed && stopped {
            break;
        }
        while hashed < reached {
            // Stop reads at the head's and the file's ends, so each piece is all in one.
            let mut until = reached;
            for bound in [Some(shift), file_end].into_iter().flatten() {
                if hashed < bound {
                    until = until.min(bound);
                }
            }
            let want = (until - hashed).min(buffer.len() as u64) as usize;
            let n = bytes
                .read_at(&mut buffer[..want], hashed)
                .map_err(|e| CacheError::io(&bytes.partial, e))?;
            if n == 0 {
                return Err(CacheError::io(
                    &bytes.partial,
                    io::Error::other("the partial is shorter than its complete chunks"),
                ));
            }
            let in_file = hashed >= shift && file_end.is_some_and(|end| hashed < end);
            match (&mut file, in_file) {
                (Some(file), true) => update_both(&mut blob, file, &buffer[..n]),
                _ => blob.update(&buffer[..n]),
            }
            hashed += n as u64;
        }
    }
    Ok(Hashed {
        blob,
        length: hashed,
        file,
    })
}

/// The bytes of a chunked download in order, as they arrive: a blocking `Read` that waits for
/// the frontier, for an archive unpacked while it downloads. Ends at the blob's size; fails if
/// the download stops short.
pub struct PartialReader {
    pub(super) bytes: BlobBytes,
    pub(super) frontier: Arc<Frontier>,
    pub(super) at: u64,
}

/// What a [`PartialReader`] reports when its download stopped before the last byte.
pub const DOWNLOAD_STOPPED: &str = "the download stopped before the archive's last byte";

impl io::Read for PartialReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.bytes.size;
        if buf.is_empty() || self.at >= size {
            return Ok(0);
        }
        let (reached, _) = self.frontier.wait_past(self.at, size);
        if reached <= self.at {
            // Not `Interrupted`: readers would retry that for ever.
            return Err(io::Error::other(DOWNLOAD_STOPPED));
        }
        let want = (reached - self.at).min(buf.len() as u64) as usize;
        let n = self.bytes.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the partial download is shorter than its complete chunks",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Whether `path`'s bytes `from..to` are all zero (a tar's padding and end blocks).
pub(super) fn all_zero(file: &File, path: &Path, from: u64, to: u64) -> Result<bool, CacheError> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buffer.len());
        let n = file
            .read_at(&mut buffer[..want], at)
            .map_err(|e| CacheError::io(path, e))?;
        if n == 0 {
            return Ok(false);
        }
        if buffer[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

//! What a chunked partial holds, on disk: the sidecar `ingest/<hex>.chunks` (the chunk layout,
//! the indexes of complete chunks, and the shift of a partial laid out as a file), the head
//! `ingest/<hex>.head` of such a partial, and the reading of both when a partial is opened.

use super::super::error::CacheError;
use super::ChunkLayout;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The sidecar: the layout and the indexes of complete chunks.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar {
    #[serde(flatten)]
    layout: ChunkLayout,
    done: Vec<usize>,
    /// Blob bytes before this offset are in the head file, not the partial (which holds
    /// byte `x` at `x - shift`).
    #[serde(default)]
    shift: u64,
}

/// Chunks recorded complete in a sidecar, and its shift; `None` when it is missing or
/// unreadable.
fn read_sidecar(path: &Path) -> Option<(ChunkLayout, Vec<bool>, u64)> {
    let sidecar: Sidecar = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let layout = sidecar.layout;
    if layout.chunk_size == 0 {
        return None;
    }
    let mut done = vec![false; layout.count()];
    for index in sidecar.done {
        *done.get_mut(index)? = true;
    }
    Some((layout, done, sidecar.shift))
}

/// Records the complete chunks. Only the first record is fsynced (so that a chunked partial
/// is never taken for a one-stream prefix); later ones claim only what the final digest
/// check will vouch for.
pub(super) fn write_sidecar(
    path: &Path,
    layout: ChunkLayout,
    done: &[bool],
    shift: u64,
    durable: bool,
) -> Result<(), CacheError> {
    let sidecar = Sidecar {
        layout,
        done: (0..done.len()).filter(|&i| done[i]).collect(),
        shift,
    };
    let bytes = serde_json::to_vec(&sidecar).expect("the sidecar serialises");
    if durable {
        super::super::write_atomically(path, &bytes)
    } else {
        super::super::write_replacing(path, &bytes)
    }
}

/// Bytes at the start of a chunked partial that are complete, for a single-stream resume (a
/// partial laid out as a file holds none at their own offsets).
pub(in crate::cache) fn complete_prefix(sidecar: &Path, expected_size: u64) -> u64 {
    match read_sidecar(sidecar) {
        Some((layout, done, 0)) if layout.size == expected_size => {
            let first_missing = done.iter().position(|d| !d).unwrap_or(done.len());
            layout.range(first_missing).0.min(layout.size)
        }
        _ => 0,
    }
}

pub(in crate::cache) fn sidecar_path(partial: &Path) -> PathBuf {
    partial.with_extension("chunks")
}

pub(in crate::cache) fn head_path(partial: &Path) -> PathBuf {
    partial.with_extension("head")
}

/// A chunked partial as found: which chunks are complete, and how many bytes from each
/// chunk's start are already there (all of a complete chunk; part of the chunk a one-stream
/// partial ends in).
pub(super) struct Opened {
    pub file: File,
    pub done: Vec<bool>,
    pub filled: Vec<u64>,
}

/// Opens the partial and works out which chunks it already holds: from its sidecar (under
/// any earlier chunk size, but only with the same shift), or a single-stream partial's
/// prefix. Records the result at once, before any chunk is written, so the partial is never
/// mistaken for a single-stream one.
pub(super) fn open_chunked(
    partial: &Path,
    layout: ChunkLayout,
    shift: u64,
) -> Result<Opened, CacheError> {
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
    // Byte ranges of the blob known complete.
    let complete: Vec<(u64, u64)> = match read_sidecar(&sidecar) {
        Some((old, done, old_shift)) if old.size == layout.size && old_shift == shift => (0..old
            .count())
            .filter(|&i| done[i])
            .map(|i| old.range(i))
            .collect(),
        Some(_) => Vec::new(),
        None if sidecar.exists() => Vec::new(),
        None if shift == 0 && length <= layout.size => vec![(0, length)],
        None => Vec::new(),
    };
    // A claim past the partial's end (a partial removed by GC, say) is not trusted.
    let complete: Vec<(u64, u64)> = complete
        .into_iter()
        .filter(|&(_, e)| e.saturating_sub(shift) <= length)
        .collect();
    // How far the known ranges reach from `start`, without a gap.
    let reach = |start: u64| {
        let mut at = start;
        for &(s, e) in &complete {
            if s <= at && e > at {
                at = e;
            }
        }
        at
    };
    let (mut done, mut filled) = (Vec::new(), Vec::new());
    for index in 0..layout.count() {
        let (start, end) = layout.range(index);
        let reached = reach(start).min(end);
        done.push(reached == end);
        filled.push(reached - start);
    }
    if complete.is_empty() && length > 0 {
        file.set_len(0).map_err(io)?;
    }
    write_sidecar(&sidecar, layout, &done, shift, true)?;
    Ok(Opened { file, done, filled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_under_another_chunk_size_keeps_only_covered_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        std::fs::write(&partial, vec![7u8; 12]).unwrap();
        let old = ChunkLayout {
            size: 12,
            chunk_size: 3,
        };
        write_sidecar(
            &sidecar_path(&partial),
            old,
            &[true, true, false, true],
            0,
            true,
        )
        .unwrap();
        let new = ChunkLayout {
            size: 12,
            chunk_size: 4,
        };
        let opened = open_chunked(&partial, new, 0).unwrap();
        assert_eq!(opened.done, vec![true, false, false]);
        assert_eq!(opened.filled, vec![4, 2, 0]);
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
        let opened = open_chunked(&partial, layout, 0).unwrap();
        assert_eq!(opened.done, vec![true, true, false]);
        assert_eq!(opened.filled, vec![4, 4, 1]);
    }

    #[test]
    fn a_partial_laid_out_as_a_file_is_kept_only_under_the_same_shift() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        let layout = ChunkLayout {
            size: 12,
            chunk_size: 4,
        };
        std::fs::write(&partial, vec![7u8; 10]).unwrap();
        write_sidecar(
            &sidecar_path(&partial),
            layout,
            &[true, false, true],
            2,
            true,
        )
        .unwrap();
        // Neither a one-stream resume nor another shift may read it.
        assert_eq!(complete_prefix(&sidecar_path(&partial), 12), 0);
        let same = open_chunked(&partial, layout, 2).unwrap();
        assert_eq!(same.done, vec![true, false, true]);
        let other = open_chunked(&partial, layout, 0).unwrap();
        assert_eq!(other.done, vec![false, false, false]);
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 0);
    }
}

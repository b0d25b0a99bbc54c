//! Plan + verified blobs -> directory trees: the snapshot in the cache (raw layers hard-linked
//! from their blobs, archives unpacked safely by `extract`), and the copy of it in the user's
//! `--dest` (reflinks or copies, never the cache's own inodes unless `--link hard`; see
//! `dest_copy`; folders and symlinks recreated), installed so a reader never sees a
//! half-placed model.

mod dest_copy;
pub mod extract;
pub mod limits;
mod parallel;
pub mod stamp;
pub mod stream;

use crate::artifact::Plan;
use crate::cache::{remove_tree, CacheError, SnapshotFile};
use crate::errors::{Classify, FailureKind};
use crate::safe_path::SafePath;
use std::fs;
use std::path::{Path, PathBuf};

pub use dest_copy::DestLink;
pub use limits::{ByteSize, Limits};
pub use stamp::Stamp;

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("destination {}: {detail}", path.display())]
    Destination { path: PathBuf, detail: String },
    #[error(
        "layer {digest}: refusing the archive entry {entry:?}: {reason}; nothing was installed"
    )]
    UnsafeEntry {
        digest: String,
        entry: String,
        reason: String,
    },
    #[error("layer {digest}: {path:?} is claimed twice ({detail}); refusing an ambiguous model, nothing was installed")]
    DuplicatePath {
        digest: String,
        path: String,
        detail: String,
    },
    #[error("layer {digest}: {detail}; nothing was installed")]
    Limit { digest: String, detail: String },
    #[error("layer {digest} is not a readable tar archive: {detail}")]
    Archive { digest: String, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError + '_ {
    move |e| MaterializeError::Cache(CacheError::io(path, e))
}

/// Places a snapshot's files into `dest` and writes the stamp last. Files are staged inside
/// `dest/.tugboat/` and renamed into place, so an interrupted install leaves no torn file.
pub fn install(
    snapshot: &Path,
    files: &[SnapshotFile],
    dest: &Path,
    stamp: &Stamp,
    how: DestLink,
) -> Result<(), MaterializeError> {
    fs::create_dir_all(dest).map_err(io(dest))?;
    let work = stamp::work_dir(dest);
    fs::create_dir_all(&work).map_err(io(&work))?;
    let staging = work.join(format!(
        "staging-{}-{}",
        std::process::id(),
        crate::cache::unique()
    ));
    let result = stage_and_swap(snapshot, files, dest, &staging, how);
    let _ = remove_tree(&staging);
    result?;
    // Files of an earlier model that the new one does not have are removed.
    if let Some(previous) = Stamp::read(dest) {
        let keep = top_entries(snapshot)?;
        for old in &previous.files {
            if !keep.iter().any(|k| k == old.path.top()) {
                remove_tree(&dest.join(old.path.top()))?;
            }
        }
    }
    stamp.write(dest)?;
    Ok(())
}

/// The names directly inside a snapshot (the entries an install places in `dest`).
fn top_entries(snapshot: &Path) -> Result<Vec<String>, MaterializeError> {
    let mut tops = Vec::new();
    for entry in fs::read_dir(snapshot).map_err(io(snapshot))? {
        let entry = entry.map_err(io(snapshot))?;
        tops.push(entry.file_name().to_string_lossy().into_owned());
    }
    tops.sort_unstable();
    Ok(tops)
}

/// Mirrors the snapshot into `staging` (files placed as `how` says, folders and symlinks
/// recreated; durable before anything moves), then renames each top-level entry into `dest`
/// and makes the renames durable.
fn stage_and_swap(
    snapshot: &Path,
    _files: &[SnapshotFile],
    dest: &Path,
    staging: &Path,
    how: DestLink,
) -> Result<(), MaterializeError> {
    fs::create_dir_all(staging).map_err(io(staging))?;
    let tops = top_entries(snapshot)?;
    let mut tree = Tree {
        jobs: Vec::new(),
        dirs: vec![staging.to_path_buf()],
    };
    for top in &tops {
        if top == stamp::WORK_DIR {
            return Err(MaterializeError::Destination {
                path: dest.join(top),
                detail: format!(
                    "the model contains a top-level {:?}, which tugboat reserves",
                    stamp::WORK_DIR
                ),
            });
        }
        mirror(&snapshot.join(top), &staging.join(top), &mut tree)?;
    }
    dest_copy::place_all(&tree.jobs, &tree.dirs, how)
        .map_err(|(path, e)| MaterializeError::Cache(CacheError::io(path, e)))?;
    for top in &tops {
        let from = staging.join(top);
        let to = dest.join(top);
        let replacing_dir = fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir());
        let placing_dir = fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir());
        if replacing_dir || (placing_dir && fs::symlink_metadata(&to).is_ok()) {
            remove_tree(&to)?;
        }
        fs::rename(&from, &to).map_err(io(&to))?;
    }
    crate::cache::sync_dir(dest)?;
    Ok(())
}

/// What mirroring a snapshot leaves to do: the files to place, and the folders made.
struct Tree {
    jobs: Vec<dest_copy::Job>,
    dirs: Vec<PathBuf>,
}

/// Recreates `from` (a trusted snapshot entry) at `to`: folders and symlinks now, files as
/// jobs for `dest_copy::place_all`.
fn mirror(from: &Path, to: &Path, tree: &mut Tree) -> Result<(), MaterializeError> {
    let meta = fs::symlink_metadata(from).map_err(io(from))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(from).map_err(io(from))?;
        std::os::unix::fs::symlink(&target, to).map_err(io(to))
    } else if kind.is_dir() {
        fs::create_dir(to).map_err(io(to))?;
        tree.dirs.push(to.to_path_buf());
        for entry in fs::read_dir(from).map_err(io(from))? {
            let entry = entry.map_err(io(from))?;
            mirror(&entry.path(), &to.join(entry.file_name()), tree)?;
        }
        Ok(())
    } else {
        tree.jobs.push(dest_copy::Job {
            source: from.to_path_buf(),
            target: to.to_path_buf(),
        });
        Ok(())
    }
}

/// Inside the cache (blob -> snapshot): hard link when possible (same filesystem), otherwise
/// a kernel-side copy.
pub fn link_or_copy(source: &Path, target: &Path) -> Result<(), MaterializeError> {
    if fs::symlink_metadata(target).is_ok() {
        fs::remove_file(target).map_err(io(target))?;
    }
    match fs::hard_link(source, target) {
        Ok(()) => Ok(()),
        Err(_) => {
            fs::copy(source, target).map_err(io(target))?;
            Ok(())
        }
    }
}

/// Paths the plan declares (files, and the folders archives declare), for messages.
pub fn planned_paths(plan: &Plan) -> Vec<&SafePath> {
    plan.entries
        .iter()
        .filter_map(|e| e.declared_path())
        .collect()
}

impl Classify for MaterializeError {
    fn kind(&self) -> FailureKind {
        match self {
            MaterializeError::Cache(e) => e.kind(),
            MaterializeError::Destination { .. } => FailureKind::Storage,
            MaterializeError::UnsafeEntry { .. }
            | MaterializeError::DuplicatePath { .. }
            | MaterializeError::Limit { .. }
            | MaterializeError::Archive { .. } => FailureKind::Input,
        }
    }
}

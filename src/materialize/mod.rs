//! Plan + verified blobs -> directory trees: the snapshot in the cache, and the copy of it in
//! the user's `--dest` (hard links when on one filesystem, else copies), installed so a reader
//! never sees a half-placed model.

pub mod stamp;

use crate::artifact::{Action, Plan};
use crate::cache::{remove_tree, Cache, CacheError, SnapshotFile};
use crate::safe_path::SafePath;
use std::fs;
use std::path::{Path, PathBuf};

pub use stamp::Stamp;

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{format} layer {digest} is an archive; unpacking is not supported for it yet")]
    UnpackUnsupported {
        format: &'static str,
        digest: String,
    },
    #[error("destination {}: {detail}", path.display())]
    Destination { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError + '_ {
    move |e| MaterializeError::Cache(CacheError::io(path, e))
}

/// Lays the plan's files out under `dir` (a snapshot being built) from the cache's blobs.
pub fn build_tree(
    plan: &Plan,
    cache: &Cache,
    dir: &Path,
) -> Result<Vec<SnapshotFile>, MaterializeError> {
    let mut files = Vec::new();
    for entry in &plan.entries {
        match &entry.action {
            Action::File { path } => {
                let target = path.under(dir);
                create_parent(&target)?;
                link_or_copy(&cache.blob_path(&entry.blob.digest), &target)?;
                files.push(SnapshotFile {
                    path: path.clone(),
                    size: entry.blob.size,
                    digest: entry.blob.digest.clone(),
                });
            }
            Action::Unpack { .. } => {
                return Err(MaterializeError::UnpackUnsupported {
                    format: plan.format.name(),
                    digest: entry.blob.digest.to_string(),
                })
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Places a snapshot's files into `dest` and writes the stamp last. Files are staged inside
/// `dest/.tugboat/` and renamed into place, so an interrupted install leaves no torn file.
pub fn install(
    snapshot: &Path,
    files: &[SnapshotFile],
    dest: &Path,
    stamp: &Stamp,
) -> Result<(), MaterializeError> {
    fs::create_dir_all(dest).map_err(io(dest))?;
    let work = stamp::work_dir(dest);
    fs::create_dir_all(&work).map_err(io(&work))?;
    let staging = work.join(format!(
        "staging-{}-{}",
        std::process::id(),
        crate::cache::unique()
    ));
    let result = stage_and_swap(snapshot, files, dest, &staging);
    let _ = remove_tree(&staging);
    result?;
    // Files of an earlier model that the new one does not have are removed.
    if let Some(previous) = Stamp::read(dest) {
        let keep: std::collections::HashSet<&str> = files.iter().map(|f| f.path.top()).collect();
        for old in &previous.files {
            if !keep.contains(old.path.top()) {
                remove_tree(&dest.join(old.path.top()))?;
            }
        }
    }
    stamp.write(dest)?;
    Ok(())
}

fn stage_and_swap(
    snapshot: &Path,
    files: &[SnapshotFile],
    dest: &Path,
    staging: &Path,
) -> Result<(), MaterializeError> {
    fs::create_dir_all(staging).map_err(io(staging))?;
    for file in files {
        let target = file.path.under(staging);
        create_parent(&target)?;
        link_or_copy(&file.path.under(snapshot), &target)?;
    }
    let mut tops: Vec<&str> = files.iter().map(|f| f.path.top()).collect();
    tops.sort_unstable();
    tops.dedup();
    for top in tops {
        let from = staging.join(top);
        let to = dest.join(top);
        if top == stamp::WORK_DIR {
            return Err(MaterializeError::Destination {
                path: to,
                detail: format!(
                    "the model contains a top-level {:?}, which tugboat reserves",
                    stamp::WORK_DIR
                ),
            });
        }
        if fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
            remove_tree(&to)?;
        }
        fs::rename(&from, &to).map_err(io(&to))?;
    }
    Ok(())
}

fn create_parent(path: &Path) -> Result<(), MaterializeError> {
    let parent = path.parent().expect("joined path has a parent");
    fs::create_dir_all(parent).map_err(io(parent))
}

/// Hard link when possible (same filesystem), otherwise a kernel-side copy.
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

/// Paths the plan will create, for error messages and dry runs.
pub fn planned_paths(plan: &Plan) -> Vec<&SafePath> {
    plan.entries
        .iter()
        .map(|e| match &e.action {
            Action::File { path } => path,
            Action::Unpack { under } => under,
        })
        .collect()
}

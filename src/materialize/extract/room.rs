//! Making room for an entry in the tree: the folders above it (never through a symlink, and
//! outside images never turning a file into a folder), what already stands at its path (a
//! second entry for one path is refused outside images), and removing a path with the files
//! recorded under it.

use super::{io_err, Tree};
use crate::cache::remove_tree;
use crate::materialize::MaterializeError;
use crate::safe_path::SafePath;
use std::collections::HashSet;
use std::fs;
use std::io;

impl Tree {
    pub(super) fn remove(&mut self, path: &SafePath) -> Result<(), MaterializeError> {
        remove_tree(&path.under(&self.root))?;
        let prefix = format!("{path}/");
        self.files
            .retain(|p, _| p != path && !p.as_str().starts_with(&prefix));
        Ok(())
    }

    /// The first ancestor of `path` in the tree that is a symlink, if any.
    pub(super) fn through_symlink(&self, path: &SafePath) -> Option<String> {
        let mut prefix = self.root.clone();
        let parts: Vec<&str> = path.as_str().split('/').collect();
        for part in &parts[..parts.len() - 1] {
            prefix.push(part);
            if fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink()) {
                return Some(prefix.strip_prefix(&self.root).ok()?.display().to_string());
            }
        }
        None
    }

    /// Creates the folders above `path`; refuses to pass through a symlink, and (outside
    /// images) to turn a file into a folder.
    pub(super) fn ensure_parent(
        &mut self,
        path: &SafePath,
        digest: &str,
        overlay: bool,
        mut created: Option<&mut HashSet<String>>,
    ) -> Result<(), MaterializeError> {
        let parts: Vec<&str> = path.as_str().split('/').collect();
        let mut rel = String::new();
        for part in &parts[..parts.len() - 1] {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(part);
            let at = self.root.join(&rel);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(MaterializeError::UnsafeEntry {
                        digest: digest.to_string(),
                        entry: path.to_string(),
                        reason: format!("it passes through the symlink {rel:?}"),
                    })
                }
                Ok(_) if overlay => {
                    self.remove(&SafePath::new(&rel).expect("prefix of a safe path"))?;
                }
                Ok(_) => {
                    return Err(MaterializeError::DuplicatePath {
                        digest: digest.to_string(),
                        path: path.to_string(),
                        detail: format!("{rel:?} is a file, not a folder"),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&at)(e)),
            }
            if let Some(created) = created.as_deref_mut() {
                self.count_for(digest, path.as_str())?;
                created.insert(rel.clone());
            }
            fs::create_dir(&at).map_err(io_err(&at))?;
        }
        Ok(())
    }

    /// Makes room for a new entry at `path`. Returns true when a folder is already there
    /// and a folder is wanted. Outside images, a second entry for one path is refused.
    pub(super) fn clear_target(
        &mut self,
        path: &SafePath,
        digest: &str,
        want_dir: bool,
        overlay: bool,
    ) -> Result<bool, MaterializeError> {
        let at = path.under(&self.root);
        match fs::symlink_metadata(&at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&at)(e)),
            Ok(meta) if meta.is_dir() && want_dir => Ok(true),
            Ok(_) if overlay => {
                self.remove(path)?;
                Ok(false)
            }
            Ok(_) => Err(MaterializeError::DuplicatePath {
                digest: digest.to_string(),
                path: path.to_string(),
                detail: "the model already has an entry there".into(),
            }),
        }
    }
}

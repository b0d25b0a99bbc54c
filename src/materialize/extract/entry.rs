//! The safe tar entry rules: each entry of a hostile archive is placed or refused. Absolute
//! names, `..`, paths outside the folder a layer declares, symlinks and hard links leading out
//! of the tree (resolved in archive coordinates, through `--subpath`), device nodes and FIFOs
//! are refused; setuid/setgid/sticky bits are dropped; regular files are hashed as they are
//! written (and feed the layer digest when their bytes are the archive's own).

use super::layer::{is_at_or_below, Layer, Place};
use super::overlay::WHITEOUT;
use super::{io_err, Tree};
use crate::cache::{writeback, SnapshotFile, VerifiedFile};
use crate::digest::twin::{update_both, Sha256State};
use crate::materialize::MaterializeError;
use crate::safe_path::SafePath;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

impl Tree {
    /// The UTF-8 target of a symlink or hard link entry (`kind` names it in errors).
    fn link_target<R: Read>(
        entry: &tar::Entry<'_, R>,
        layer: &Layer<'_>,
        raw: &str,
        kind: &str,
    ) -> Result<String, MaterializeError> {
        entry
            .link_name_bytes()
            .map(|b| String::from_utf8(b.into_owned()))
            .ok_or_else(|| Self::refuse(layer, raw, format!("a {kind} without a target")))?
            .map_err(|_| Self::refuse(layer, raw, format!("the {kind} target is not UTF-8")))
    }

    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        layer: &mut Layer<'_>,
    ) -> Result<(), MaterializeError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            return Ok(());
        }
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| Self::refuse(layer, "?", "the name is not UTF-8"))?;
        if raw.starts_with('/') {
            return Err(Self::refuse(layer, &raw, "absolute paths are not allowed"));
        }
        let is_root = raw.split('/').all(|part| part.is_empty() || part == ".");
        if is_root {
            return match kind {
                T::Directory => Ok(()),
                _ => Err(Self::refuse(layer, &raw, "names the archive's root")),
            };
        }
        let path = SafePath::new(&raw).map_err(|e| Self::refuse(layer, &raw, e.reason))?;
        if let Some(within) = &layer.unpack.within {
            if !is_at_or_below(&path, within) {
                return Err(Self::refuse(
                    layer,
                    &raw,
                    format!("it lies outside \"{within}\", the folder this layer declares"),
                ));
            }
        }
        let name = path.as_str().rsplit('/').next().unwrap_or_default();
        if layer.unpack.overlay && name.starts_with(WHITEOUT) {
            return self.whiteout(&path, name, layer, &raw);
        }
        let target = match self.place(&path, layer.selection) {
            Place::At(target) if layer.selection.wants_path(&target) => target,
            _ => return Ok(()),
        };
        match kind {
            T::Directory => {
                self.ensure_parent(
                    &target,
                    &layer.digest,
                    layer.unpack.overlay,
                    Some(&mut layer.created),
                )?;
                if !self.clear_target(&target, &layer.digest, true, layer.unpack.overlay)? {
                    self.count(layer, &raw)?;
                    let dir = target.under(&self.root);
                    fs::create_dir(&dir).map_err(io_err(&dir))?;
                }
                layer.created.insert(target.to_string());
                Ok(())
            }
            T::Regular | T::Continuous => self.regular(entry, &target, layer, &raw, true),
            // A sparse entry's bytes are not the archive's: its holes read as zeros.
            T::GNUSparse => self.regular(entry, &target, layer, &raw, false),
            T::Symlink => self.symlink(entry, &path, &target, layer, &raw),
            T::Link => self.hardlink(entry, &target, layer, &raw),
            T::Char | T::Block | T::Fifo => Err(Self::refuse(
                layer,
                &raw,
                "device nodes and FIFOs are not allowed in a model",
            )),
            other => Err(Self::refuse(
                layer,
                &raw,
                format!("unsupported tar entry type {other:?}"),
            )),
        }
    }

    /// Writes a file entry; `contiguous`: its bytes are the archive's own, in order (so they
    /// can feed the layer digest too).
    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &SafePath,
        layer: &mut Layer<'_>,
        raw: &str,
        contiguous: bool,
    ) -> Result<(), MaterializeError> {
        let declared = entry.size();
        self.charge(layer, declared, raw)?;
        self.count(layer, raw)?;
        self.ensure_parent(
            target,
            &layer.digest,
            layer.unpack.overlay,
            Some(&mut layer.created),
        )?;
        self.clear_target(target, &layer.digest, false, layer.unpack.overlay)?;
        let path = target.under(&self.root);
        if let Some(adopted) = layer.adopt.take() {
            return self.adopt(entry, adopted, target, layer, raw);
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut hasher = Sha256State::new();
        let tap = layer.tap.clone().filter(|_| contiguous);
        let mut buffer = vec![0u8; 256 << 10];
        let mut written = 0u64;
        let mut writeback_from = 0u64;
        loop {
            let read = match &tap {
                Some(tap) => {
                    tap.borrow_mut().in_content = true;
                    let read = entry.read(&mut buffer);
                    tap.borrow_mut().in_content = false;
                    read
                }
                None => entry.read(&mut buffer),
            };
            let n = read.map_err(|e| self.read_error(layer, e, &format!("reading {raw:?}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > declared {
                self.charge(layer, n as u64, raw)?;
            }
            match &tap {
                Some(tap) => update_both(&mut tap.borrow_mut().hasher, &mut hasher, &buffer[..n]),
                None => hasher.update(&buffer[..n]),
            }
            file.write_all(&buffer[..n]).map_err(io_err(&path))?;
            if written - writeback_from >= writeback::STEP {
                writeback::start(&file, writeback_from, written - writeback_from);
                writeback_from = written;
            }
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let mode = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&path))?;
        self.files.insert(
            target.clone(),
            SnapshotFile {
                path: target.clone(),
                size: written,
                digest: hasher.finish(),
            },
        );
        layer.created.insert(target.to_string());
        Ok(())
    }

    /// The file entry of a one-file layer: its verified file, renamed into place (never over
    /// anything), with the entry's mode.
    fn adopt<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        adopted: VerifiedFile,
        target: &SafePath,
        layer: &mut Layer<'_>,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        if adopted.size != entry.size() {
            return Err(Self::refuse(
                layer,
                raw,
                "the downloaded file does not have the size its header declares",
            ));
        }
        let path = target.under(&self.root);
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &adopted.path,
            nix::fcntl::AT_FDCWD,
            &path,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|errno| io_err(&path)(io::Error::from(errno)))?;
        let mode = entry.header().mode().unwrap_or(0o644);
        let mode = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        self.files.insert(
            target.clone(),
            SnapshotFile {
                path: target.clone(),
                size: adopted.size,
                digest: adopted.digest,
            },
        );
        layer.created.insert(target.to_string());
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &SafePath,
        target: &SafePath,
        layer: &mut Layer<'_>,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        let link = Self::link_target(entry, layer, raw, "symlink")?;
        let escape = || {
            Self::refuse(
                layer,
                raw,
                format!("the symlink to {link:?} leads out of the tree"),
            )
        };
        // Resolve in archive coordinates: absolute targets only in images (rooted at the
        // image's root); `..` only leading, and never above the root.
        let mut resolved: Vec<&str> = if link.starts_with('/') {
            if !layer.unpack.overlay {
                return Err(escape());
            }
            Vec::new()
        } else {
            path.as_str().split('/').collect()
        };
        if !link.starts_with('/') {
            resolved.pop();
        }
        let mut seen_name = false;
        for part in link.split('/') {
            match part {
                "" | "." => {}
                ".." if !seen_name => {
                    resolved.pop().ok_or_else(escape)?;
                }
                ".." => {
                    return Err(Self::refuse(
                        layer,
                        raw,
                        format!("the symlink target {link:?} has '..' after a name"),
                    ))
                }
                name => {
                    seen_name = true;
                    resolved.push(name);
                }
            }
        }
        if link.is_empty() {
            return Err(Self::refuse(layer, raw, "a symlink with an empty target"));
        }
        // Where the target lands in the tree.
        let destination: Option<SafePath> = if resolved.is_empty() {
            match layer.selection.subpath() {
                None => None,
                Some(_) => return Err(escape()),
            }
        } else {
            let archive_path = SafePath::new(&resolved.join("/")).map_err(|_| escape())?;
            if let Some(within) = &layer.unpack.within {
                if !is_at_or_below(&archive_path, within) {
                    return Err(escape());
                }
            }
            match self.place(&archive_path, layer.selection) {
                Place::Root => None,
                Place::At(p) => Some(p),
                Place::Outside => return Err(escape()),
            }
        };
        let relative = relative_link(target, destination.as_ref());
        self.count(layer, raw)?;
        self.ensure_parent(
            target,
            &layer.digest,
            layer.unpack.overlay,
            Some(&mut layer.created),
        )?;
        self.clear_target(target, &layer.digest, false, layer.unpack.overlay)?;
        let at = target.under(&self.root);
        std::os::unix::fs::symlink(&relative, &at).map_err(io_err(&at))?;
        layer.created.insert(target.to_string());
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        target: &SafePath,
        layer: &mut Layer<'_>,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        let link = Self::link_target(entry, layer, raw, "hard link")?;
        let outside = || {
            Self::refuse(
                layer,
                raw,
                format!("the hard link to {link:?} leads out of the tree"),
            )
        };
        if link.starts_with('/') {
            return Err(outside());
        }
        let source = SafePath::new(&link).map_err(|_| outside())?;
        if let Some(within) = &layer.unpack.within {
            if !is_at_or_below(&source, within) {
                return Err(outside());
            }
        }
        let Place::At(source) = self.place(&source, layer.selection) else {
            return Err(outside());
        };
        if self.through_symlink(&source).is_some() {
            return Err(outside());
        }
        let from = source.under(&self.root);
        match fs::symlink_metadata(&from) {
            Ok(meta) if meta.is_file() => {}
            _ => {
                return Err(Self::refuse(
                    layer,
                    raw,
                    format!("the hard link target {link:?} is not a file unpacked earlier"),
                ))
            }
        }
        let Some(original) = self.files.get(&source).cloned() else {
            return Err(Self::refuse(
                layer,
                raw,
                format!("the hard link target {link:?} is not a file unpacked earlier"),
            ));
        };
        self.count(layer, raw)?;
        self.ensure_parent(
            target,
            &layer.digest,
            layer.unpack.overlay,
            Some(&mut layer.created),
        )?;
        self.clear_target(target, &layer.digest, false, layer.unpack.overlay)?;
        let at = target.under(&self.root);
        fs::hard_link(&from, &at).map_err(io_err(&at))?;
        self.files.insert(
            target.clone(),
            SnapshotFile {
                path: target.clone(),
                ..original
            },
        );
        layer.created.insert(target.to_string());
        Ok(())
    }
}

/// The relative symlink text leading from the link at `link` to `target` (`None`: the root).
fn relative_link(link: &SafePath, target: Option<&SafePath>) -> String {
    let from: Vec<&str> = link.as_str().split('/').collect();
    let from = &from[..from.len() - 1];
    let to: Vec<&str> = target.map_or_else(Vec::new, |t| t.as_str().split('/').collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links() {
        let p = |s: &str| SafePath::new(s).unwrap();
        assert_eq!(relative_link(&p("a/b/link"), Some(&p("a/c"))), "../c");
        assert_eq!(relative_link(&p("link"), Some(&p("x/y"))), "x/y");
        assert_eq!(relative_link(&p("a/link"), None), "..");
        assert_eq!(relative_link(&p("a/link"), Some(&p("a"))), ".");
    }
}

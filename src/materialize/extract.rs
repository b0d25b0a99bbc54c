//! Safe unpacking of tar layers (plain, gzip, zstd) into a snapshot being built, hashing each
//! regular file as it is written. Asked to, it also takes the digest of the layer's own bytes
//! as the tar reader consumes them: for a plain tar, a file's bytes feed the layer digest and
//! the file's digest in one pass (`digest::twin`), so unpacking costs barely more hashing than
//! storing the layer would. Archives are hostile input: absolute names, `..`, paths
//! through symlinks, links leading out of the tree, device nodes and FIFOs are refused;
//! setuid/setgid/sticky bits are dropped; the entry count and the expanded bytes are capped.
//! On any refusal the caller drops the snapshot builder, which removes the partial tree.

use super::limits::Limits;
use super::MaterializeError;
use crate::artifact::{kitfile, Action, Descriptor, ManifestKitfile, Selection, Unpack};
use crate::cache::{remove_tree, writeback, CacheError, FileLayout, SnapshotFile, VerifiedFile};
use crate::digest::twin::{update_both, Sha256State};
use crate::digest::Digest;
use crate::safe_path::SafePath;
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// The tree under construction: every regular file placed so far, and the running totals
/// the limits apply to.
pub struct Tree {
    root: PathBuf,
    limits: Limits,
    files: BTreeMap<SafePath, SnapshotFile>,
    /// Entries and bytes placed so far; shared with the trees `fork` made, so the limits
    /// hold for all archives together even when they unpack at once.
    placed: Arc<AtomicU64>,
    expanded: Arc<AtomicU64>,
}

/// Where an archive path lands in the tree.
enum Place {
    Root,
    At(SafePath),
    Outside,
}

/// Per-layer state.
struct Layer<'l> {
    digest: String,
    unpack: &'l Unpack,
    selection: &'l Selection,
    budget: u64,
    expanded: u64,
    /// Tree paths this layer created (whiteouts only hide what lower layers made).
    created: HashSet<String>,
    /// The layer digest being taken of a plain tar: regular files' bytes are fed to it
    /// together with the file's digest.
    tap: Option<Rc<RefCell<LayerTap>>>,
    /// A one-file layer's file, already downloaded and verified: the regular entry becomes
    /// this file (renamed into place) instead of being read from the archive.
    adopt: Option<VerifiedFile>,
}

impl<'l> Layer<'l> {
    fn new(digest: String, unpack: &'l Unpack, selection: &'l Selection, budget: u64) -> Self {
        Layer {
            digest,
            unpack,
            selection,
            budget,
            expanded: 0,
            created: HashSet::new(),
            tap: None,
            adopt: None,
        }
    }
}

/// The sha256 and length of an archive's own bytes (its layer digest), as unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigest {
    pub digest: Digest,
    pub bytes: u64,
}

/// The running layer digest of bytes the tar reader consumed. While a regular file's bytes
/// are read (`in_content`) the reader leaves them to the extractor, which hashes them into
/// this and the file's digest at once.
struct LayerTap {
    hasher: Sha256State,
    read: u64,
    in_content: bool,
}

/// Hashes what is read or consumed through it into the shared [`LayerTap`].
struct TapReader<B> {
    inner: B,
    tap: Rc<RefCell<LayerTap>>,
}

impl<B: BufRead> Read for TapReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut tap = self.tap.borrow_mut();
        tap.read += n as u64;
        if !tap.in_content {
            tap.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<B: BufRead> BufRead for TapReader<B> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Ok(buffered) = self.inner.fill_buf() {
            let mut tap = self.tap.borrow_mut();
            let amount = amount.min(buffered.len());
            tap.read += amount as u64;
            tap.hasher.update(&buffered[..amount]);
        }
        self.inner.consume(amount);
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MaterializeError + '_ {
    move |e| MaterializeError::Cache(CacheError::io(path, e))
}

impl Tree {
    pub fn new(root: &Path, limits: Limits) -> Self {
        Tree {
            root: root.to_path_buf(),
            limits,
            files: BTreeMap::new(),
            placed: Arc::new(AtomicU64::new(0)),
            expanded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A tree over the same folder and limit counters, holding none of this tree's files:
    /// an archive whose paths cannot overlap another's (no image layers) unpacks into it on
    /// its own thread, then `merge` brings its files back. Outside images a path is never
    /// removed or placed twice, so the result does not depend on the order they ran in.
    pub fn fork(&self) -> Tree {
        Tree {
            root: self.root.clone(),
            limits: self.limits,
            files: BTreeMap::new(),
            placed: Arc::clone(&self.placed),
            expanded: Arc::clone(&self.expanded),
        }
    }

    /// Takes the files a forked tree placed.
    pub fn merge(&mut self, forked: Tree) {
        self.files.extend(forked.files);
    }

    pub fn into_files(self) -> Vec<SnapshotFile> {
        self.files.into_values().collect()
    }

    /// Places a raw blob as the file `path` (hard link from the cache, else a copy).
    pub fn place_blob(
        &mut self,
        path: &SafePath,
        blob: &Path,
        descriptor: &Descriptor,
    ) -> Result<(), MaterializeError> {
        let digest = descriptor.digest.to_string();
        self.ensure_parent(path, &digest, false, None)?;
        self.clear_target(path, &digest, false, false)?;
        super::link_or_copy(blob, &path.under(&self.root))?;
        self.files.insert(
            path.clone(),
            SnapshotFile {
                path: path.clone(),
                size: descriptor.size,
                digest: descriptor.digest.clone(),
            },
        );
        Ok(())
    }

    /// Lays one plan entry from its verified blob at `blob`: a file linked, a Kitfile written
    /// as YAML, an archive unpacked.
    pub fn place_entry(
        &mut self,
        action: &Action,
        blob: &Path,
        descriptor: &Descriptor,
        selection: &Selection,
    ) -> Result<(), MaterializeError> {
        match action {
            Action::File { path } => self.place_blob(path, blob, descriptor),
            Action::Kitfile { path } => self.place_kitfile(path, blob, descriptor),
            Action::Unpack(unpack) => self.unpack(blob, descriptor, unpack, selection),
        }
    }

    /// Writes a ModelKit's config (the Kitfile as JSON) as the YAML `kit unpack` writes; a
    /// config kit could not read either is written as it is (JSON is YAML too).
    fn place_kitfile(
        &mut self,
        path: &SafePath,
        blob: &Path,
        descriptor: &Descriptor,
    ) -> Result<(), MaterializeError> {
        let json = fs::read(blob).map_err(io_err(blob))?;
        self.write_kitfile(path, json, &descriptor.digest.to_string())
    }

    /// Writes the Kitfile a manifest carries (see [`ManifestKitfile`]), unless a layer
    /// already placed something at its path (the artifact's own file wins).
    pub fn place_manifest_kitfile(
        &mut self,
        kitfile: &ManifestKitfile,
    ) -> Result<(), MaterializeError> {
        if fs::symlink_metadata(kitfile.path.under(&self.root)).is_ok() {
            tracing::debug!(path = %kitfile.path, "a layer placed a file where the manifest's Kitfile goes; keeping the layer's");
            return Ok(());
        }
        let json = kitfile.json.clone().into_bytes();
        self.write_kitfile(&kitfile.path, json, "the manifest's Kitfile annotation")
    }

    /// Writes a Kitfile given as JSON as YAML (as it is, when kit could not read it either:
    /// JSON is YAML too); `origin` names where it came from in messages.
    fn write_kitfile(
        &mut self,
        path: &SafePath,
        json: Vec<u8>,
        origin: &str,
    ) -> Result<(), MaterializeError> {
        let yaml = kitfile::kitfile_yaml(&json).unwrap_or_else(|reason| {
            tracing::warn!(%origin, %reason, "the Kitfile is not one kit can read; writing it as it is");
            json
        });
        self.ensure_parent(path, origin, false, None)?;
        self.clear_target(path, origin, false, false)?;
        let at = path.under(&self.root);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&at)
            .and_then(|mut file| file.write_all(&yaml))
            .map_err(io_err(&at))?;
        self.files.insert(
            path.clone(),
            SnapshotFile {
                path: path.clone(),
                size: yaml.len() as u64,
                digest: Digest::of_bytes(&yaml),
            },
        );
        Ok(())
    }

    /// Unpacks the archive blob at `blob` (already verified against `descriptor`).
    pub fn unpack(
        &mut self,
        blob: &Path,
        descriptor: &Descriptor,
        unpack: &Unpack,
        selection: &Selection,
    ) -> Result<(), MaterializeError> {
        let file = fs::File::open(blob).map_err(io_err(blob))?;
        self.unpack_from(file, descriptor, unpack, selection)
    }

    /// Unpacks an archive read from `source` as it arrives (a download in flight, or a blob
    /// on disk). The caller verifies the bytes' digest before the tree is published.
    pub fn unpack_from(
        &mut self,
        source: impl Read + 'static,
        descriptor: &Descriptor,
        unpack: &Unpack,
        selection: &Selection,
    ) -> Result<(), MaterializeError> {
        self.unpack_source(source, descriptor, unpack, selection, false)
            .map(|_| ())
    }

    /// [`Tree::unpack_from`] that also takes the digest of every byte of `source` (read to
    /// its end), for the caller to check against the layer's. `None` for a compressed
    /// archive, whose bytes the caller must hash itself.
    pub fn unpack_hashing(
        &mut self,
        source: impl Read + 'static,
        descriptor: &Descriptor,
        unpack: &Unpack,
        selection: &Selection,
    ) -> Result<Option<LayerDigest>, MaterializeError> {
        self.unpack_source(source, descriptor, unpack, selection, true)
    }

    fn unpack_source(
        &mut self,
        source: impl Read + 'static,
        descriptor: &Descriptor,
        unpack: &Unpack,
        selection: &Selection,
        hash_layer: bool,
    ) -> Result<Option<LayerDigest>, MaterializeError> {
        let digest = descriptor.digest.to_string();
        let archive_error = |detail: String| MaterializeError::Archive {
            digest: digest.clone(),
            detail,
        };
        let mut buffered = BufReader::with_capacity(256 << 10, source);
        let magic = buffered
            .fill_buf()
            .map_err(|e| self.read_error_for(&digest, e, "reading the archive"))?
            .to_vec();
        let gzip = magic.starts_with(&[0x1f, 0x8b]);
        let zstd = magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        let tap = (hash_layer && !gzip && !zstd).then(|| {
            Rc::new(RefCell::new(LayerTap {
                hasher: Sha256State::new(),
                read: 0,
                in_content: false,
            }))
        });
        let decoded: Box<dyn Read> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        } else if zstd {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| archive_error(format!("zstd: {e}")))?,
            )
        } else if let Some(tap) = &tap {
            Box::new(TapReader {
                inner: buffered,
                tap: Rc::clone(tap),
            })
        } else {
            Box::new(buffered)
        };
        let budget = self.limits.layer_budget(descriptor.size);
        // The tar reader buffers long names and pax headers in memory: cap the whole
        // decompressed stream too, so no single header can grow without bound.
        let stream_cap = budget
            .min(self.limits.max_expanded.0)
            .saturating_add(self.limits.max_files.saturating_mul(2048))
            .saturating_add(1 << 20);
        // Only an annotated tar digest needs the decompressed stream hashed (the layer digest
        // is checked on the download's own thread).
        let reader = CappedHashingReader {
            inner: decoded,
            hasher: unpack.tar_digest.as_ref().map(|_| Sha256::new()),
            read: 0,
            cap: stream_cap,
        };
        let mut archive = tar::Archive::new(reader);
        let mut layer = Layer::new(digest.clone(), unpack, selection, budget);
        layer.tap = tap.clone();
        let entries = archive
            .entries()
            .map_err(|e| self.read_error(&layer, e, "reading the archive"))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| self.read_error(&layer, e, "reading an entry header"))?;
            self.entry(&mut entry, &mut layer)?;
        }
        let mut reader = archive.into_inner();
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| self.read_error(&layer, e, "reading the archive's end"))?;
        if let Some(expected) = &unpack.tar_digest {
            let hasher = reader.hasher.take();
            let actual = Digest::from_hasher(hasher.expect("hashed when a digest is expected"));
            if &actual != expected {
                return Err(archive_error(format!(
                    "the unpacked tar has digest {actual}, but the layer's annotation promises {expected}"
                )));
            }
        }
        Ok(tap.map(|tap| {
            let tap = tap.borrow();
            LayerDigest {
                digest: tap.hasher.clone().finish(),
                bytes: tap.read,
            }
        }))
    }

    /// Places a one-file tar layer whose file was downloaded on its own (see
    /// [`one_file_layout`]): `head`'s entries (folders, then the file's header) go through the
    /// same checks as any archive's, and the file entry becomes `file`, renamed into place.
    /// Returns false when the selection leaves the file out (the caller deletes it).
    pub fn adopt_file(
        &mut self,
        head: &[u8],
        descriptor: &Descriptor,
        unpack: &Unpack,
        selection: &Selection,
        file: VerifiedFile,
    ) -> Result<bool, MaterializeError> {
        let budget = self.limits.layer_budget(descriptor.size);
        let mut layer = Layer::new(descriptor.digest.to_string(), unpack, selection, budget);
        layer.adopt = Some(file);
        let mut archive = tar::Archive::new(io::Cursor::new(head));
        let entries = archive
            .entries()
            .map_err(|e| self.read_error(&layer, e, "reading the archive"))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| self.read_error(&layer, e, "reading an entry header"))?;
            let regular = matches!(
                entry.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            );
            self.entry(&mut entry, &mut layer)?;
            if regular {
                // The file's bytes are not in the head: the file entry is the last one read.
                break;
            }
        }
        Ok(layer.adopt.is_none())
    }

    fn read_error(&self, layer: &Layer<'_>, e: io::Error, what: &str) -> MaterializeError {
        self.read_error_for(&layer.digest, e, what)
    }

    fn read_error_for(&self, digest: &str, e: io::Error, what: &str) -> MaterializeError {
        if e.kind() == io::ErrorKind::FileTooLarge {
            return MaterializeError::Limit {
                digest: digest.to_string(),
                detail: e.to_string(),
            };
        }
        MaterializeError::Archive {
            digest: digest.to_string(),
            detail: format!("{what}: {e}"),
        }
    }

    /// Flushes every file and folder of the tree to disk (the snapshot is published next).
    pub fn sync(&self) -> Result<(), MaterializeError> {
        sync_tree(&self.root)
    }

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

    fn refuse(layer: &Layer<'_>, entry: &str, reason: impl Into<String>) -> MaterializeError {
        MaterializeError::UnsafeEntry {
            digest: layer.digest.clone(),
            entry: entry.chars().take(200).collect(),
            reason: reason.into(),
        }
    }

    fn entry<R: Read>(
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

    /// Maps an archive path to the tree through `--subpath`.
    fn place(&self, path: &SafePath, selection: &Selection) -> Place {
        match selection.reroot(path) {
            Some(Some(target)) => Place::At(target),
            Some(None) => Place::Root,
            None => Place::Outside,
        }
    }

    fn count(&mut self, layer: &Layer<'_>, raw: &str) -> Result<(), MaterializeError> {
        self.count_for(&layer.digest, raw)
    }

    fn count_for(&mut self, digest: &str, raw: &str) -> Result<(), MaterializeError> {
        let placed = self.placed.fetch_add(1, Ordering::Relaxed) + 1;
        if placed > self.limits.max_files {
            return Err(MaterializeError::Limit {
                digest: digest.to_string(),
                detail: format!(
                    "the archives hold more than {} entries (limit reached at {raw:?}); raise \
                     --max-files if the model really has this many files",
                    self.limits.max_files
                ),
            });
        }
        Ok(())
    }

    fn charge(
        &mut self,
        layer: &mut Layer<'_>,
        bytes: u64,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        layer.expanded = layer.expanded.saturating_add(bytes);
        let expanded = self
            .expanded
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if layer.expanded > layer.budget {
            return Err(MaterializeError::Limit {
                digest: layer.digest.clone(),
                detail: format!(
                    "it expands to more than {} bytes at {raw:?}, over {}x its compressed size \
                     (a decompression bomb?); raise --max-compression-ratio (now {}) if the model \
                     really compresses this well",
                    layer.budget, self.limits.max_ratio, self.limits.max_ratio
                ),
            });
        }
        if expanded > self.limits.max_expanded.0 {
            return Err(MaterializeError::Limit {
                digest: layer.digest.clone(),
                detail: format!(
                    "unpacked files would exceed {} in total (at {raw:?}); raise \
                     --max-expanded-size if the model is really this large",
                    self.limits.max_expanded
                ),
            });
        }
        Ok(())
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

    /// Image whiteouts: `.wh.NAME` hides NAME, `.wh..wh..opq` hides a folder's lower content.
    fn whiteout(
        &mut self,
        path: &SafePath,
        name: &str,
        layer: &mut Layer<'_>,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        let parent = path.as_str().rsplit_once('/').map(|(p, _)| p);
        let join = |leaf: Option<&str>| -> Option<String> {
            match (parent, leaf) {
                (Some(p), Some(l)) => Some(format!("{p}/{l}")),
                (Some(p), None) => Some(p.to_string()),
                (None, Some(l)) => Some(l.to_string()),
                (None, None) => None,
            }
        };
        let (hidden, opaque) = if name == OPAQUE {
            (join(None), true)
        } else {
            (join(Some(&name[WHITEOUT.len()..])), false)
        };
        let hidden = match hidden {
            None => None,
            Some(h) => Some(SafePath::new(&h).map_err(|e| Self::refuse(layer, raw, e.reason))?),
        };
        // Which tree folder/path is hidden, after --subpath.
        let place = match &hidden {
            None => Place::Root,
            Some(h) => match self.place(h, layer.selection) {
                Place::Outside
                    if layer
                        .selection
                        .subpath()
                        .is_some_and(|sub| is_at_or_below(sub, h)) =>
                {
                    // The whiteout hides a folder holding the whole subpath.
                    return self.clear_dir(None, layer);
                }
                other => other,
            },
        };
        match (place, opaque) {
            (Place::Outside, _) => Ok(()),
            (Place::Root, _) => self.clear_dir(None, layer),
            (Place::At(p), true) => {
                if self.through_symlink(&p).is_some() {
                    return Err(Self::refuse(
                        layer,
                        raw,
                        "the whiteout passes through a symlink",
                    ));
                }
                if fs::symlink_metadata(p.under(&self.root)).is_ok_and(|m| m.is_dir()) {
                    self.clear_dir(Some(&p), layer)?;
                }
                Ok(())
            }
            (Place::At(p), false) => {
                if layer.created.contains(p.as_str()) {
                    return Ok(());
                }
                if self.through_symlink(&p).is_some() {
                    return Err(Self::refuse(
                        layer,
                        raw,
                        "the whiteout passes through a symlink",
                    ));
                }
                self.remove(&p)
            }
        }
    }

    /// Removes what lower layers put in `dir` (the root when `None`), keeping this layer's.
    fn clear_dir(
        &mut self,
        dir: Option<&SafePath>,
        layer: &Layer<'_>,
    ) -> Result<(), MaterializeError> {
        let at = dir.map_or_else(|| self.root.to_path_buf(), |d| d.under(&self.root));
        let children: Vec<String> = fs::read_dir(&at)
            .map_err(io_err(&at))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&at))?;
        for child in children {
            let rel = match dir {
                Some(d) => format!("{d}/{child}"),
                None => child,
            };
            let rel = SafePath::new(&rel).expect("a child of a safe path is safe");
            if layer.created.contains(rel.as_str()) {
                if fs::symlink_metadata(rel.under(&self.root)).is_ok_and(|m| m.is_dir()) {
                    self.clear_dir(Some(&rel), layer)?;
                }
            } else {
                self.remove(&rel)?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, path: &SafePath) -> Result<(), MaterializeError> {
        remove_tree(&path.under(&self.root))?;
        let prefix = format!("{path}/");
        self.files
            .retain(|p, _| p != path && !p.as_str().starts_with(&prefix));
        Ok(())
    }

    /// The first ancestor of `path` in the tree that is a symlink, if any.
    fn through_symlink(&self, path: &SafePath) -> Option<String> {
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
    fn ensure_parent(
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
    fn clear_target(
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

/// `path` equals `dir` or lies below it.
fn is_at_or_below(path: &SafePath, dir: &SafePath) -> bool {
    path == dir
        || path
            .as_str()
            .strip_prefix(dir.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
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

/// Hashes the decompressed tar stream (when asked to) and stops it past `cap` bytes.
struct CappedHashingReader {
    inner: Box<dyn Read>,
    hasher: Option<Sha256>,
    read: u64,
    cap: u64,
}

impl Read for CappedHashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "the decompressed archive exceeds {} bytes (a decompression bomb?); raise \
                     --max-compression-ratio or --max-expanded-size if the model is really this large",
                    self.cap
                ),
            ));
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Largest tar head (headers before a layer's one file) looked for.
pub const ONE_FILE_HEAD_PROBE: u64 = 64 << 10;

/// Whether a plain tar layer of `size` bytes that starts with `probe` holds just one regular
/// file (after any folders), as modctl and `kit pack` write a model file: then the file's
/// bytes are one contiguous range of the layer, followed by padding and end blocks only
/// (checked once they arrive). Returns the head (every byte before the file) and the file's
/// length.
pub fn one_file_layout(probe: &[u8], size: u64) -> Option<FileLayout> {
    let mut archive = tar::Archive::new(io::Cursor::new(probe));
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        match entry.header().entry_type() {
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let start = entry.raw_file_position();
                let length = entry.size();
                let padding = length.next_multiple_of(512) - length;
                // Two end blocks at least, and no more than a record's worth of padding.
                let tail = size.checked_sub(start.checked_add(length)?)?;
                let fits = tail >= padding + 1024 && tail <= padding + 20 * 512 + 1024;
                return fits.then(|| FileLayout {
                    head: probe[..start as usize].to_vec(),
                    length,
                });
            }
            _ => return None,
        }
    }
    None
}

/// fsyncs every regular file and folder below (and including) `dir`; symlinks are skipped.
fn sync_tree(dir: &Path) -> Result<(), MaterializeError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `entries` (name, content; `None` content: a folder), GNU long names and all.
    fn tar_of(entries: &[(&str, Option<&[u8]>)], pax: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        for (name, content) in entries {
            let mut header = tar::Header::new_gnu();
            match content {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    builder.append_data(&mut header, name, *bytes).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, name, io::empty()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_one_file_layer_is_found_past_folders_long_names_and_pax_headers() {
        let content = vec![7u8; 5000];
        let long = format!("shard/{}.safetensors", "x".repeat(120));
        for (layer, pax) in [
            (
                vec![("shard", None), (long.as_str(), Some(&content[..]))],
                vec![],
            ),
            (
                vec![("model.bin", Some(&content[..]))],
                vec![("comment", &b"packed by a test"[..])],
            ),
        ] {
            let bytes = tar_of(&layer, &pax);
            let found = one_file_layout(&bytes[..bytes.len().min(4096)], bytes.len() as u64)
                .expect("one file");
            assert_eq!(found.length, 5000);
            let start = found.head.len();
            assert_eq!(&bytes[start..start + 5000], &content[..]);
            assert_eq!(found.head, bytes[..start]);
        }
    }

    #[test]
    fn other_layers_are_not_taken_for_one_file() {
        let content = vec![1u8; 3000];
        // Two files whose second cannot hide in the padding, a link first, a short layer.
        let two = tar_of(
            &[
                ("a", Some(&content[..])),
                ("b", Some(&vec![2u8; 20_000][..])),
            ],
            &[],
        );
        assert!(one_file_layout(&two, two.len() as u64).is_none());
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "link", "a").unwrap();
        let link = builder.into_inner().unwrap();
        assert!(one_file_layout(&link, link.len() as u64).is_none());
        let one = tar_of(&[("a", Some(&content[..]))], &[]);
        assert!(one_file_layout(&one, one.len() as u64 - 1024).is_none());
    }

    #[test]
    fn relative_links() {
        let p = |s: &str| SafePath::new(s).unwrap();
        assert_eq!(relative_link(&p("a/b/link"), Some(&p("a/c"))), "../c");
        assert_eq!(relative_link(&p("link"), Some(&p("x/y"))), "x/y");
        assert_eq!(relative_link(&p("a/link"), None), "..");
        assert_eq!(relative_link(&p("a/link"), Some(&p("a"))), ".");
    }
}

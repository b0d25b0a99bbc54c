//! Opening a tar layer (plain, gzip, zstd; the compression told by its magic bytes) from a
//! blob or a download in flight, capping the decompressed stream (long names and pax headers
//! are buffered by the tar reader), checking an annotated tar digest, and walking its entries
//! through the entry rules. Asked to, it also returns the digest of a plain tar's own bytes.

use super::layer::Layer;
use super::readers::{CappedHashingReader, LayerDigest, LayerTap, TapReader};
use super::{io_err, Tree};
use crate::artifact::{Descriptor, Selection, Unpack};
use crate::digest::twin::Sha256State;
use crate::digest::Digest;
use crate::materialize::MaterializeError;
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

impl Tree {
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
}

//! The readers between a layer's bytes and the tar reader: the tap that takes a plain tar's
//! layer digest as the tar reader consumes it (a regular file's bytes are left to the
//! extractor, which hashes them into the layer digest and the file's digest in one pass,
//! `digest::twin`), and the cap (and optional digest) on a decompressed stream.

use crate::digest::twin::Sha256State;
use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

/// The sha256 and length of an archive's own bytes (its layer digest), as unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigest {
    pub digest: Digest,
    pub bytes: u64,
}

/// The running layer digest of bytes the tar reader consumed. While a regular file's bytes
/// are read (`in_content`) the reader leaves them to the extractor, which hashes them into
/// this and the file's digest at once.
pub(super) struct LayerTap {
    pub(super) hasher: Sha256State,
    pub(super) read: u64,
    pub(super) in_content: bool,
}

/// Hashes what is read or consumed through it into the shared [`LayerTap`].
pub(super) struct TapReader<B> {
    pub(super) inner: B,
    pub(super) tap: Rc<RefCell<LayerTap>>,
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
/// Hashes the decompressed tar stream (when asked to) and stops it past `cap` bytes.
pub(super) struct CappedHashingReader {
    pub(super) inner: Box<dyn Read>,
    pub(super) hasher: Option<Sha256>,
    pub(super) read: u64,
    pub(super) cap: u64,
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

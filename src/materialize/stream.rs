//! The byte source of an archive unpacked while it downloads: first the prefix an earlier,
//! interrupted pull left in its partial file (read back from disk, not fetched again), then
//! the chunks the download hands over through a bounded channel. A blocking `Read`, so the
//! tar reader runs on a blocking thread while the network stays async; the channel's bound
//! keeps memory flat whatever the layer's size.

use bytes::{Buf, Bytes};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use tokio::sync::mpsc::Receiver;

/// Chunks in flight between the download and the extractor.
pub const CHANNEL_CHUNKS: usize = 4;

pub struct StreamSource {
    prefix: Option<io::Take<File>>,
    chunks: Receiver<Bytes>,
    current: Bytes,
}

impl StreamSource {
    /// Reads `prefix` bytes of `partial` first (none when `prefix` is 0), then `chunks` until
    /// the sender is dropped.
    pub fn new(partial: &Path, prefix: u64, chunks: Receiver<Bytes>) -> io::Result<Self> {
        let prefix = match prefix {
            0 => None,
            n => Some(File::open(partial)?.take(n)),
        };
        Ok(StreamSource {
            prefix,
            chunks,
            current: Bytes::new(),
        })
    }
}

impl Read for StreamSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(prefix) = &mut self.prefix {
            let n = prefix.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if prefix.limit() > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the partial download is shorter than recorded",
                ));
            }
            self.prefix = None;
        }
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

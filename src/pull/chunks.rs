//! Parallel ranged download of one large blob: when to split it (blob size), how big the
//! chunks are, how many streams fetch them (ramped up while the measured throughput keeps
//! growing, or fixed by `--streams-per-blob`), and the streams themselves, each writing its
//! chunk at its offset through a bounded buffer. Chunks are handed out in order, so the
//! verified prefix grows steadily behind them.

use super::PullError;
use crate::cache::ChunkedWriter;
use crate::progress::BlobProgress;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError, TransferOptions};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Blobs smaller than this keep one stream unless `--chunk-size` asks otherwise.
const MIN_CHUNKED_BLOB: u64 = 256 << 20;
const MIN_CHUNK: u64 = 8 << 20;
const MAX_CHUNK: u64 = 64 << 20;
/// Streams per blob the ramp may reach when `--streams-per-blob` is not given.
const DEFAULT_MAX_STREAMS: usize = 16;
/// Streams a ramp starts with.
const INITIAL_STREAMS: usize = 4;
/// Bytes a stream gathers before one positioned write: the per-stream memory bound. The
/// buffer is reused for every write of a request (no allocation churn across threads).
const WRITE_BUFFER: usize = 256 << 10;
/// How long each step of the ramp is measured before deciding to double the streams.
const RAMP_WINDOW: Duration = Duration::from_millis(1000);
/// Doubling the streams must raise throughput by this factor to keep ramping.
const RAMP_GAIN: f64 = 1.2;

/// How one blob is fetched in chunks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    pub chunk_size: u64,
    pub max_streams: usize,
    /// The streams were set by the user: no ramp.
    pub fixed: bool,
}

/// The chunking for a blob of `size` bytes, or `None` for one stream. Through a mirror a blob
/// is one stream unless `--streams-per-blob` or `--chunk-size` say otherwise: measured with
/// Dragonfly's dfdaemon (bench/fleet.sh), concurrent ranges of one blob each went back to the
/// origin (2.4x the model from the origin, 5.7x slower than one stream, which dfdaemon fetches
/// in parallel pieces itself); a caching proxy fetches the whole blob once anyway.
pub(super) fn tuning(size: u64, options: &TransferOptions, mirrored: bool) -> Option<Tuning> {
    if mirrored && options.streams_per_blob.is_none() && options.chunk_size.is_none() {
        return None;
    }
    let max_streams = options
        .streams_per_blob
        .unwrap_or(DEFAULT_MAX_STREAMS)
        .min(options.max_requests);
    if max_streams <= 1 {
        return None;
    }
    let chunk_size = match options.chunk_size {
        Some(chunk) => chunk,
        None if size < MIN_CHUNKED_BLOB => return None,
        // About eight chunks per stream, so the last chunks in flight leave a short tail.
        None => (size / (max_streams as u64 * 8))
            .clamp(MIN_CHUNK, MAX_CHUNK)
            .next_multiple_of(1 << 20),
    };
    (size > chunk_size).then_some(Tuning {
        chunk_size,
        max_streams,
        fixed: options.streams_per_blob.is_some(),
    })
}

pub(super) enum Outcome {
    /// Every chunk is on disk.
    Complete,
    /// The registry answered a Range request with the whole blob: fetch it in one stream.
    RangeIgnored,
}

/// Fetches every missing chunk of `writer`'s blob. `fetched` grows as the bytes arrive (a
/// caller that drops the download early still counts what came).
pub(super) async fn download(
    reference: &Reference,
    registry: &RegistryClient,
    writer: &ChunkedWriter,
    tuning: Tuning,
    bar: &mut BlobProgress,
    fetched: &mut u64,
) -> Result<Outcome, PullError> {
    let mut queue: VecDeque<usize> = writer.missing().into();
    let received = AtomicU64::new(0);
    let mut reported = 0u64;
    let mut running = FuturesUnordered::new();
    let mut ramp = Ramp::new(tuning);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    tracing::debug!(digest = %writer.digest(), chunks = queue.len(), chunk_size = tuning.chunk_size, "fetching in chunks");
    let outcome = loop {
        while running.len() < ramp.streams {
            match queue.pop_front() {
                Some(index) => {
                    running.push(fetch_chunk(reference, registry, writer, index, &received))
                }
                None => break,
            }
        }
        if running.is_empty() {
            break Ok(Outcome::Complete);
        }
        tokio::select! {
            finished = running.next() => match finished.expect("streams are running") {
                Ok(true) => {}
                Ok(false) => break Ok(Outcome::RangeIgnored),
                Err(e) => break Err(e),
            },
            _ = ticker.tick() => {
                let total = received.load(Ordering::Relaxed);
                bar.advance(total - reported);
                *fetched += total - reported;
                reported = total;
                ramp.step(total, writer);
            }
        }
    };
    drop(running);
    let total = received.load(Ordering::Relaxed);
    bar.advance(total - reported);
    *fetched += total - reported;
    outcome
}

/// Doubles the streams while each doubling raises the measured throughput enough.
struct Ramp {
    streams: usize,
    max: usize,
    ramping: bool,
    since: Instant,
    bytes_at: u64,
    best: f64,
}

impl Ramp {
    fn new(tuning: Tuning) -> Self {
        let streams = if tuning.fixed {
            tuning.max_streams
        } else {
            INITIAL_STREAMS.min(tuning.max_streams)
        };
        Ramp {
            streams,
            max: tuning.max_streams,
            ramping: !tuning.fixed && streams < tuning.max_streams,
            since: Instant::now(),
            bytes_at: 0,
            best: 0.0,
        }
    }

    fn step(&mut self, total: u64, writer: &ChunkedWriter) {
        let elapsed = self.since.elapsed();
        if !self.ramping || elapsed < RAMP_WINDOW {
            return;
        }
        let rate = (total - self.bytes_at) as f64 / elapsed.as_secs_f64();
        self.since = Instant::now();
        self.bytes_at = total;
        if rate > self.best * RAMP_GAIN {
            self.best = rate;
            self.streams = (self.streams * 2).min(self.max);
        } else {
            self.ramping = false;
        }
        if !self.ramping || self.streams == self.max {
            self.ramping = false;
            tracing::debug!(digest = %writer.digest(), streams = self.streams, mib_per_s = format!("{:.1}", self.best / 1048576.0), "streams settled");
        }
    }
}

/// Fetches one chunk, resuming inside it after transient failures. `Ok(false)`: the
/// registry ignored the Range request.
async fn fetch_chunk(
    reference: &Reference,
    registry: &RegistryClient,
    writer: &ChunkedWriter,
    index: usize,
    received: &AtomicU64,
) -> Result<bool, PullError> {
    let (start, end) = writer.layout().range(index);
    let mut at = writer.resume_offset(index);
    // One budget for the chunk: every resume draws from it; progress restarts its clock.
    let mut backoff = registry.retry_policy().backoff();
    loop {
        let before = at;
        let outcome = fetch_range(reference, registry, writer, &mut at, end, received).await;
        let error = match outcome {
            Ok(false) => return Ok(false),
            Ok(true) if at == end => {
                writer.complete(index).await?;
                return Ok(true);
            }
            Ok(true) => RegistryError::Network {
                registry: reference.registry().to_string(),
                what: format!("blob {}", writer.digest()),
                attempts: backoff.attempt(),
                detail: format!("the body of bytes {start}-{end} ended at {at}"),
            },
            Err(PullError::Registry(RegistryError::Status { status: 416, .. })) => {
                return Err(PullError::Truncated {
                    digest: writer.digest().clone(),
                    expected: writer.layout().size,
                    available: at,
                })
            }
            Err(PullError::Registry(e)) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        if at > before {
            backoff.progressed();
        }
        let Some(delay) = backoff.next_delay(None) else {
            return Err(error.into());
        };
        tracing::warn!(digest = %writer.digest(), offset = at, %error, "chunk interrupted; resuming");
        tokio::time::sleep(delay).await;
    }
}

/// One request for bytes `*at..end`, written as they arrive; `*at` follows what is on disk.
async fn fetch_range(
    reference: &Reference,
    registry: &RegistryClient,
    writer: &ChunkedWriter,
    at: &mut u64,
    end: u64,
    received: &AtomicU64,
) -> Result<bool, PullError> {
    let mut body = registry
        .blob_range(reference, writer.digest(), *at, Some(end))
        .await?;
    if !body.resumed {
        return Ok(false);
    }
    let mut buffer = Vec::with_capacity(WRITE_BUFFER);
    let mut failure = None;
    while *at + (buffer.len() as u64) < end {
        let piece = match body.stream.next().await {
            Some(Ok(piece)) => piece,
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            None => break,
        };
        // A registry that sends past the requested end is cut at the chunk's end.
        let room = (end - *at) as usize - buffer.len();
        let piece = &piece[..piece.len().min(room)];
        buffer.extend_from_slice(piece);
        received.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if buffer.len() >= WRITE_BUFFER {
            buffer = flush(writer, at, buffer).await?;
        }
    }
    drop(body);
    flush(writer, at, buffer).await?;
    match failure {
        // A body error after the chunk's last byte costs nothing.
        Some(e) if *at < end => Err(e.into()),
        _ => Ok(true),
    }
}

/// Writes the buffer at `*at` and hands it back empty for reuse.
async fn flush(
    writer: &ChunkedWriter,
    at: &mut u64,
    buffer: Vec<u8>,
) -> Result<Vec<u8>, PullError> {
    if buffer.is_empty() {
        return Ok(buffer);
    }
    let n = buffer.len() as u64;
    let mut buffer = writer.write_at(*at, buffer).await?;
    *at += n;
    buffer.clear();
    Ok(buffer)
}

/// The pull pipeline must stay `Send`: the daemon runs it with `tokio::spawn`.
#[allow(dead_code)]
fn pull_is_send(
    request: &'static super::PullRequest,
    registry: &'static RegistryClient,
    progress: &'static crate::progress::Progress,
) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&super::pull(request, registry, progress));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_blobs_keep_one_stream_and_large_ones_get_bounded_chunks() {
        let auto = TransferOptions::default();
        assert!(tuning(10 << 20, &auto, false).is_none());
        let big = tuning(2 << 30, &auto, false).unwrap();
        assert_eq!(big.chunk_size, 16 << 20);
        assert_eq!(big.max_streams, DEFAULT_MAX_STREAMS);
        assert!(!big.fixed);
        let huge = tuning(140 << 30, &auto, false).unwrap();
        assert_eq!(huge.chunk_size, MAX_CHUNK);
        let one = TransferOptions::new(None, Some(1), 32);
        assert!(tuning(2 << 30, &one, false).is_none());
        let set = TransferOptions::new(Some(1 << 20), Some(3), 32);
        let t = tuning(5 << 20, &set, false).unwrap();
        assert_eq!((t.chunk_size, t.max_streams, t.fixed), (1 << 20, 3, true));
        let capped = TransferOptions::new(None, Some(64), 8);
        assert_eq!(tuning(2 << 30, &capped, false).unwrap().max_streams, 8);
    }
}

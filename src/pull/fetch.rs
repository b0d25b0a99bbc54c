//! Downloads a plan's blobs into the cache: large ones in parallel Range chunks, small ones
//! (and registries that ignore Range) in one stream resumed from the partial's length.

use super::job::is_plain_tar;
use super::source::Source;
use super::{chunks, PullError};
use crate::artifact::{self, Action, Plan};
use crate::cache::{Cache, CacheError, ChunkedIngest, ChunkedWriter, Ingest, Purpose};
use crate::digest::Digest;
use crate::progress::Progress;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashSet;

#[derive(Default, Clone, Copy)]
pub(super) struct Fetched {
    pub(super) fetched: u64,
    pub(super) reused: u64,
}

/// Archive layers unpacked while they download (never stored as blobs): those not already in
/// the cache, used once and only as an archive.
pub(super) fn streamed_layers(cache: &Cache, plan: &Plan) -> Result<HashSet<Digest>, PullError> {
    let mut streamed = HashSet::new();
    for entry in &plan.entries {
        let digest = &entry.blob.digest;
        let uses = plan
            .entries
            .iter()
            .filter(|e| &e.blob.digest == digest)
            .count();
        if matches!(entry.action, Action::Unpack(_))
            && uses == 1
            && !cache.has_blob(digest, entry.blob.size)?
        {
            streamed.insert(digest.clone());
        }
    }
    Ok(streamed)
}

/// Downloads every blob the plan places as is (archives in `streamed` are left to
/// `build_snapshot`).
pub(super) async fn fetch_blobs(
    cache: &Cache,
    source: &Source<'_>,
    plan: &Plan,
    streamed: &HashSet<Digest>,
    concurrency: usize,
    progress: &Progress,
) -> Result<Fetched, PullError> {
    let mut blobs: Vec<&artifact::Descriptor> = Vec::new();
    for entry in &plan.entries {
        if streamed.contains(&entry.blob.digest) {
            continue;
        }
        if !blobs.iter().any(|b| b.digest == entry.blob.digest) {
            blobs.push(&entry.blob);
        }
    }
    // Largest first, so the long download starts at once.
    blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
    // A compressed streamed archive's partial lives beside its unpacked files until the
    // snapshot commits: count it as a blob. A plain tar's is counted once, as its unpacked
    // size: modctl's one-file layers become their file (a many-file plain tar needs its
    // size twice until it commits, and a full disk then fails the pull cleanly).
    let in_flight: Vec<&artifact::Descriptor> = plan
        .entries
        .iter()
        .filter(|e| streamed.contains(&e.blob.digest) && !is_plain_tar(&e.blob.media_type))
        .map(|e| &e.blob)
        .collect();
    check_space(
        cache,
        &[blobs.as_slice(), in_flight.as_slice()].concat(),
        plan.unpacked_bytes_estimate(),
    )?;
    // The futures are built up front (not in a `map` closure) so the pipeline stays `Send`.
    let downloads: Vec<_> = blobs
        .into_iter()
        .map(|blob| fetch_blob(cache, source, blob, progress))
        .collect();
    let totals = futures_util::stream::iter(downloads)
        .buffer_unordered(concurrency.max(1))
        .try_fold(Fetched::default(), |acc, one| async move {
            Ok(Fetched {
                fetched: acc.fetched + one.fetched,
                reused: acc.reused + one.reused,
            })
        })
        .await?;
    Ok(totals)
}

/// Refuses to start a download the cache filesystem cannot hold.
/// `unpacked` is what unpacking archives will add (at least their compressed size).
pub(super) fn check_space(
    cache: &Cache,
    blobs: &[&artifact::Descriptor],
    unpacked: u64,
) -> Result<(), PullError> {
    let mut needed = unpacked;
    for blob in blobs {
        if !cache.has_blob(&blob.digest, blob.size)? {
            needed = needed.saturating_add(blob.size);
        }
    }
    if needed == 0 {
        return Ok(());
    }
    let path = cache.root().to_path_buf();
    let stat = nix::sys::statvfs::statvfs(&path).map_err(|e| CacheError::io(&path, e.into()))?;
    let available = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    if needed > available {
        return Err(PullError::NoSpace {
            path,
            needed,
            available,
        });
    }
    Ok(())
}

/// How one attempt at a blob ended.
pub(super) enum Attempt {
    /// The cache already had it.
    Present,
    /// Downloaded, verified and stored.
    Stored,
    /// A resumed download did not verify: go again from nothing.
    Again,
    /// The registry ignores Range: go again in one stream.
    RangeIgnored,
}

/// Fetches one blob into the cache: large blobs in parallel Range chunks, small ones (and
/// registries that ignore Range) in one stream.
pub(super) async fn fetch_blob(
    cache: &Cache,
    source: &Source<'_>,
    blob: &artifact::Descriptor,
    progress: &Progress,
) -> Result<Fetched, PullError> {
    let label = progress_label(blob);
    let mirrored = source.registry.has_mirror(source.reference);
    let mut tuning = chunks::tuning(blob.size, source.registry.transfer(), mirrored);
    let mut fetched = 0u64;
    // A partial left by a crash is trusted only as far as the final digest check; if that
    // fails after a resume, one fresh download from byte 0 follows.
    let mut may_retry = true;
    loop {
        let attempt = match tuning {
            Some(tuning) => {
                let job = (blob, label.as_str(), progress);
                fetch_chunked(cache, source, job, tuning, &mut fetched, may_retry).await?
            }
            None => {
                let job = (blob, label.as_str(), progress);
                fetch_whole(cache, source, job, &mut fetched, may_retry).await?
            }
        };
        match attempt {
            Attempt::Present => {
                return Ok(Fetched {
                    fetched,
                    reused: if fetched == 0 { blob.size } else { 0 },
                })
            }
            Attempt::Stored => return Ok(Fetched { fetched, reused: 0 }),
            Attempt::Again => {
                tracing::warn!(digest = %blob.digest, "a resumed download did not verify; downloading it again from the start");
                may_retry = false;
            }
            Attempt::RangeIgnored => {
                tracing::info!(digest = %blob.digest, "the registry ignores Range requests; downloading in one stream");
                tuning = None;
            }
        }
    }
}

/// The name a blob's progress bar shows.
pub(super) fn progress_label(blob: &artifact::Descriptor) -> String {
    blob.annotations
        .get(artifact::oras::TITLE)
        .cloned()
        .unwrap_or_else(|| blob.digest.hex()[..12].to_string())
}

/// What a download attempt is about: the blob, its progress label, and the progress display.
pub(super) type Job<'a> = (&'a artifact::Descriptor, &'a str, &'a Progress);

/// One attempt in parallel Range chunks (see `chunks`).
pub(super) async fn fetch_chunked(
    cache: &Cache,
    source: &Source<'_>,
    (blob, label, progress): Job<'_>,
    tuning: chunks::Tuning,
    fetched: &mut u64,
    may_retry: bool,
) -> Result<Attempt, PullError> {
    let writer = match cache
        .ingest_chunked(&blob.digest, blob.size, tuning.chunk_size, Purpose::Blob)
        .await?
    {
        ChunkedIngest::Present => return Ok(Attempt::Present),
        ChunkedIngest::Needed(writer) => writer,
    };
    let registry = source.online_or_suspend(writer.suspend()).await?;
    let resumed = writer.resumed_bytes() > 0;
    let mut bar = progress.blob(label, blob.size, writer.resumed_bytes());
    let outcome = chunks::download(
        source.reference,
        registry,
        &writer,
        tuning,
        &mut bar,
        fetched,
    )
    .await;
    match outcome {
        Ok(chunks::Outcome::Complete) => {}
        Ok(chunks::Outcome::RangeIgnored) => {
            writer.abandon().await;
            bar.reset();
            return Ok(Attempt::RangeIgnored);
        }
        Err(e) => {
            put_away_failed(&writer, &e).await;
            return Err(e);
        }
    }
    committed(writer.commit().await, bar, resumed, may_retry)
}

/// After a failed chunked download: a partial whose bytes cannot be trusted (a truncated
/// blob, a digest mismatch) is deleted; after any other failure it is kept for a resume.
pub(super) async fn put_away_failed(writer: &ChunkedWriter, error: &PullError) {
    let untrustworthy = matches!(error, PullError::Truncated { .. })
        || matches!(error, PullError::Cache(c) if c.is_integrity());
    if untrustworthy {
        writer.abandon().await;
    } else {
        writer.suspend().await;
    }
}

/// The end of an attempt: a stored blob, or one more try from byte 0 when a resumed partial
/// did not verify.
pub(super) fn committed(
    commit: Result<(), CacheError>,
    bar: crate::progress::BlobProgress,
    resumed: bool,
    may_retry: bool,
) -> Result<Attempt, PullError> {
    match commit {
        Ok(()) => {
            bar.finish();
            Ok(Attempt::Stored)
        }
        Err(CacheError::DigestMismatch { .. }) if resumed && may_retry => Ok(Attempt::Again),
        Err(e) => Err(e.into()),
    }
}

/// One attempt in a single stream, resumed with Range from the partial's length.
pub(super) async fn fetch_whole(
    cache: &Cache,
    source: &Source<'_>,
    (blob, label, progress): Job<'_>,
    fetched: &mut u64,
    may_retry: bool,
) -> Result<Attempt, PullError> {
    let mut writer = match cache.ingest(&blob.digest, blob.size).await? {
        Ingest::Present => return Ok(Attempt::Present),
        Ingest::Needed(writer) => writer,
    };
    let registry = match source.online() {
        Ok(registry) => registry,
        Err(e) => {
            writer.suspend().await?;
            return Err(e);
        }
    };
    let mut bar = progress.blob(label, blob.size, writer.offset());
    let resumed = writer.resumed_from() > 0;
    let feed = Feed {
        bar: &mut bar,
        fetched,
        tap: None,
    };
    download_with_resume(source, registry, blob, &mut writer, feed).await?;
    committed(writer.commit().await, bar, resumed, may_retry)
}

/// Where downloaded bytes go besides the writer: the progress bar, the fetched-bytes count,
/// and (for an archive unpacked while it streams) the extractor's channel.
pub(super) struct Feed<'a> {
    pub(super) bar: &'a mut crate::progress::BlobProgress,
    pub(super) fetched: &'a mut u64,
    pub(super) tap: Option<&'a tokio::sync::mpsc::Sender<bytes::Bytes>>,
}

/// How a request's body ended.
pub(super) enum BodyEnd {
    /// The body ended (maybe short: the caller checks the offset).
    Ended,
    /// The extractor stopped reading (it refused the archive): stop downloading.
    TapClosed,
}

/// Feeds the writer until it holds the whole blob, resuming with Range after transient
/// failures. A registry that cannot serve the declared size is an integrity failure.
pub(super) async fn download_with_resume(
    source: &Source<'_>,
    registry: &RegistryClient,
    blob: &artifact::Descriptor,
    writer: &mut crate::cache::BlobWriter,
    mut feed: Feed<'_>,
) -> Result<(), PullError> {
    let digest = &blob.digest;
    // One budget for the whole blob: every resume draws from it; progress restarts its clock.
    let mut backoff = registry.retry_policy().backoff();
    loop {
        let before = writer.offset();
        // Every byte is here (a kill between the last byte and the rename, or a body error
        // after the last byte): nothing to fetch, the commit verifies them.
        if writer.offset() == blob.size {
            return Ok(());
        }
        let outcome = download_body(source.reference, registry, writer, &mut feed).await;
        let error = match outcome {
            Ok(BodyEnd::TapClosed) => {
                writer.abandon_keeping_partial().await;
                return Ok(());
            }
            Ok(BodyEnd::Ended) if writer.offset() == blob.size => return Ok(()),
            Ok(BodyEnd::Ended) => RegistryError::Network {
                registry: source.reference.registry().to_string(),
                what: format!("blob {digest}"),
                attempts: backoff.attempt(),
                detail: format!(
                    "the body ended after {} of {} bytes",
                    writer.offset(),
                    blob.size
                ),
            },
            Err(PullError::Registry(RegistryError::Status { status: 416, .. })) => {
                let available = writer.offset();
                writer.abandon().await;
                return Err(PullError::Truncated {
                    digest: digest.clone(),
                    expected: blob.size,
                    available,
                });
            }
            Err(PullError::Registry(e)) if e.is_transient() => e,
            Err(e) => {
                writer.abandon_keeping_partial().await;
                return Err(e);
            }
        };
        if writer.offset() > before {
            backoff.progressed();
        }
        let Some(delay) = backoff.next_delay(None) else {
            writer.abandon_keeping_partial().await;
            return Err(error.into());
        };
        tracing::warn!(%digest, offset = writer.offset(), %error, "download interrupted; resuming");
        tokio::time::sleep(delay).await;
    }
}

/// One request's worth of body, appended to the writer from its current offset.
pub(super) async fn download_body(
    reference: &Reference,
    registry: &RegistryClient,
    writer: &mut crate::cache::BlobWriter,
    feed: &mut Feed<'_>,
) -> Result<BodyEnd, PullError> {
    let offset = writer.offset();
    let mut body = registry.blob(reference, writer.digest(), offset).await?;
    // Bytes of a body served from 0 that the writer (and the extractor) already have.
    let mut skip = 0u64;
    if offset > 0 && !body.resumed {
        if feed.tap.is_some() {
            // The extractor has consumed the prefix: drop it from the body instead.
            tracing::info!(digest = %writer.digest(), "registry ignored the Range request; skipping the bytes already unpacked");
            skip = offset;
        } else {
            tracing::info!(digest = %writer.digest(), "registry ignored the Range request; downloading from the start");
            writer.restart().await?;
            feed.bar.reset();
        }
    }
    while let Some(chunk) = body.stream.next().await {
        let mut chunk = chunk?;
        let n = chunk.len() as u64;
        *feed.fetched += n;
        if skip > 0 {
            let dropped = skip.min(n);
            skip -= dropped;
            chunk = chunk.slice(dropped as usize..);
            if chunk.is_empty() {
                continue;
            }
        }
        let n = chunk.len() as u64;
        writer.write(chunk.clone()).await?;
        feed.bar.advance(n);
        if let Some(tap) = feed.tap {
            if tap.send(chunk).await.is_err() {
                return Ok(BodyEnd::TapClosed);
            }
        }
    }
    Ok(BodyEnd::Ended)
}

//! One archive layer downloaded while the extractor unpacks it, three ways:
//! - a one-file plain tar (modctl's and `kit pack`'s model files) in parallel ranged chunks,
//!   written as its file from the start (`cache::chunked`, `Purpose::File`): once the layer
//!   verifies, the file is renamed into the tree, with no extractor and no copy;
//! - any other archive large enough for chunks, fetched in parallel ranged chunks into its
//!   partial while the extractor reads the partial's in-order prefix as it grows (a plain
//!   tar's digest taken by the extractor, together with its files' digests);
//! - smaller archives (or a registry that ignores Range) in one stream, teed to the partial
//!   and the extractor.
//!
//! Every way a killed pull keeps the partial: the re-run reads back the bytes it holds and
//! fetches only the rest.

use super::fetch::{download_with_resume, progress_label, put_away_failed, Feed};
use super::job::{blocking, is_plain_tar, LayerJobs};
use super::source::Source;
use super::{chunks, PullError};
use crate::artifact;
use crate::cache::{Cache, CacheError, ChunkedIngest, ChunkedWriter, FileLayout, Ingest, Purpose};
use crate::materialize::extract::{self, LayerDigest, Tree};
use crate::materialize::{self, MaterializeError};
use futures_util::StreamExt;
use std::sync::atomic::Ordering;

/// A streamed layer's partial download, kept until the snapshot built from it is published.
pub(super) enum Partial {
    Whole(Box<crate::cache::BlobWriter>),
    Chunked(Box<ChunkedWriter>),
}

impl Partial {
    /// Checks the size and digest of every byte written (`read`: the digest the extractor
    /// took, for a partial hashed by its reader).
    async fn verify(&mut self, read: Option<LayerDigest>) -> Result<(), CacheError> {
        match self {
            Partial::Whole(writer) => writer.verify_streamed().await,
            Partial::Chunked(writer) => {
                let read = read.map(|read| (read.digest, read.bytes));
                writer.verify_streamed(read).await
            }
        }
    }

    pub async fn discard(self) {
        match self {
            Partial::Whole(writer) => writer.discard().await,
            Partial::Chunked(writer) => writer.abandon().await,
        }
    }

    /// Stops writing and keeps the partial for a later resume: its bytes are sound, the
    /// trouble was on this side (a full disk, an I/O error).
    async fn keep(self) {
        match self {
            Partial::Whole(writer) => {
                let _ = writer.suspend().await;
            }
            Partial::Chunked(writer) => writer.suspend().await,
        }
    }
}

/// One archive layer to unpack while it downloads.
pub(super) struct StreamedLayer<'a> {
    pub blob: &'a artifact::Descriptor,
    pub unpack: artifact::Unpack,
    pub selection: artifact::Selection,
}

/// How one streamed layer ended.
pub(super) enum Layer {
    /// Unpacked into the tree; the verified partial is deleted once the snapshot is published
    /// (none when another pull had stored the layer as a blob meanwhile).
    Unpacked(Tree, Option<Partial>),
    /// Build the tree once more: a resumed partial did not hold what it claimed, or the
    /// registry ignored Range.
    Again,
}

/// Downloads one archive layer into its partial while the extractor unpacks the same bytes
/// into `tree`: in parallel ranged chunks when the layer is large enough and the registry
/// honours Range, else in one stream. Returns how it ended and the bytes fetched.
pub(super) async fn stream_layer(
    layers: &LayerJobs<'_>,
    tree: Tree,
    layer: StreamedLayer<'_>,
) -> Result<(Layer, u64), PullError> {
    let source = layers.source;
    let chunked = chunks::tuning(layer.blob.size, source.registry.transfer())
        .filter(|_| !source.offline && !source.range_ignored.load(Ordering::Relaxed));
    let Some(tuning) = chunked else {
        return stream_layer_whole(layers, tree, layer).await;
    };
    let (file, probed) = one_file_layout(layers, &layer).await?;
    let (outcome, fetched) = match file {
        Some(file) => {
            tracing::debug!(digest = %layer.blob.digest, head = file.head.len(), "a one-file tar layer: fetched in chunks as its file");
            stream_layer_file(layers, tree, layer, tuning, file).await?
        }
        None => {
            tracing::debug!(digest = %layer.blob.digest, "an archive: fetched in chunks and unpacked as they land");
            stream_layer_chunked(layers, tree, layer, tuning).await?
        }
    };
    Ok((outcome, fetched + probed))
}

/// How a plain tar layer lays out its one file (see `extract::one_file_layout`), from the
/// head an interrupted pull left or the layer's first bytes; `None` for any other archive.
/// Also returns the bytes fetched to find out.
async fn one_file_layout(
    layers: &LayerJobs<'_>,
    layer: &StreamedLayer<'_>,
) -> Result<(Option<FileLayout>, u64), PullError> {
    let blob = layer.blob;
    let unpack = &layer.unpack;
    if !is_plain_tar(&blob.media_type) || unpack.overlay || unpack.tar_digest.is_some() {
        return Ok((None, 0));
    }
    let mut fetched = 0u64;
    let probe = match layers.cache.partial_head(&blob.digest) {
        Some(head) => head,
        None => {
            let end = blob.size.min(extract::ONE_FILE_HEAD_PROBE);
            let registry = layers.source.online()?;
            let mut body = registry
                .blob_range(layers.source.reference, &blob.digest, 0, Some(end))
                .await?;
            let mut probe = Vec::new();
            while probe.len() < end as usize {
                match body.stream.next().await {
                    Some(piece) => {
                        let piece = piece?;
                        fetched += piece.len() as u64;
                        probe.extend_from_slice(&piece);
                    }
                    None => break,
                }
            }
            probe.truncate(end as usize);
            probe
        }
    };
    Ok((extract::one_file_layout(&probe, blob.size), fetched))
}

/// A one-file tar layer in parallel ranged chunks, written as its file from the start: once
/// the layer verifies, the file is renamed into the tree (no copy, no extractor). A layer
/// holding more after all is unpacked from its partial.
async fn stream_layer_file(
    layers: &LayerJobs<'_>,
    mut tree: Tree,
    layer: StreamedLayer<'_>,
    tuning: chunks::Tuning,
    file: FileLayout,
) -> Result<(Layer, u64), PullError> {
    let (cache, source) = (layers.cache, layers.source);
    let blob = layer.blob;
    let head = file.head.clone();
    let ingest = cache
        .ingest_chunked(
            &blob.digest,
            blob.size,
            tuning.chunk_size,
            Purpose::File(file),
        )
        .await?;
    let writer = match ingest {
        ChunkedIngest::Present => return unpack_stored(cache, tree, layer).await,
        ChunkedIngest::Needed(writer) => writer,
    };
    let registry = source.online_or_suspend(writer.suspend()).await?;
    let kept = writer.resumed_bytes();
    let mut bar = layers
        .job
        .progress
        .blob(&progress_label(blob), blob.size, kept);
    let mut fetched = 0u64;
    let downloaded = chunks::download(
        source.reference,
        registry,
        &writer,
        tuning,
        &mut bar,
        &mut fetched,
    )
    .await;
    // The partial is laid out as the file: a one-stream download cannot go on from it.
    if !download_complete(downloaded, &writer, source, false).await? {
        return Ok((Layer::Again, fetched));
    }
    let resumed = kept > 0 && layers.may_retry;
    let verified = match writer.verify_file().await {
        Ok(verified) => verified,
        Err(CacheError::DigestMismatch { .. }) if resumed => {
            tracing::warn!(digest = %blob.digest, "a resumed layer did not verify; fetching it again from the start");
            return Ok((Layer::Again, fetched));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(verified) = verified else {
        // More than one file after all: unpack the verified bytes like any archive.
        tracing::debug!(digest = %blob.digest, "the layer holds more than its first file; unpacking it");
        let extracted = spawn_extractor(tree, writer.reader(), &layer, false)
            .await
            .expect("extractor panicked");
        let layer = settle(blob, extracted, Partial::Chunked(writer), false).await?;
        bar.finish();
        return Ok((layer, fetched));
    };
    let (descriptor, unpack, selection) = (blob.clone(), layer.unpack, layer.selection);
    let placed = blocking(move || {
        tree.adopt_file(&head, &descriptor, &unpack, &selection, verified)
            .map(|_| tree)
    })
    .await;
    match placed {
        Ok(tree) => {
            bar.finish();
            Ok((
                Layer::Unpacked(tree, Some(Partial::Chunked(writer))),
                fetched,
            ))
        }
        Err(refused) => {
            writer.abandon().await;
            Err(refused)
        }
    }
}

/// Whether a layer's chunked download completed: false when the registry ignored Range (the
/// layer is built again in one stream; `keep_chunks`: its partial's complete chunks serve
/// that download, else the partial is deleted). A failure puts the partial away first.
async fn download_complete(
    downloaded: Result<chunks::Outcome, PullError>,
    writer: &ChunkedWriter,
    source: &Source<'_>,
    keep_chunks: bool,
) -> Result<bool, PullError> {
    match downloaded {
        Ok(chunks::Outcome::Complete) => Ok(true),
        Ok(chunks::Outcome::RangeIgnored) => {
            if !keep_chunks {
                writer.abandon().await;
            }
            source.range_ignored.store(true, Ordering::Relaxed);
            Ok(false)
        }
        Err(e) => {
            put_away_failed(writer, &e).await;
            Err(e)
        }
    }
}

/// Unpacks a layer another pull stored as a blob while this one waited for its lock.
async fn unpack_stored(
    cache: &Cache,
    mut tree: Tree,
    layer: StreamedLayer<'_>,
) -> Result<(Layer, u64), PullError> {
    let StreamedLayer {
        blob,
        unpack,
        selection,
    } = layer;
    let (path, descriptor) = (cache.blob_path(&blob.digest), blob.clone());
    let tree = blocking(move || {
        tree.unpack(&path, &descriptor, &unpack, &selection)?;
        Ok(tree)
    })
    .await?;
    Ok((Layer::Unpacked(tree, None), 0))
}

/// What an extractor thread hands back: the tree, and how unpacking ended (with the digest
/// of the bytes it read, when it was asked to take it and could).
type Extracted = (Tree, Result<Option<LayerDigest>, MaterializeError>);

/// Starts the extractor on its own thread, reading `source`; `hash_layer`: it takes the
/// digest of what it reads (see `Tree::unpack_hashing`).
fn spawn_extractor(
    mut tree: Tree,
    source: impl std::io::Read + Send + 'static,
    layer: &StreamedLayer<'_>,
    hash_layer: bool,
) -> tokio::task::JoinHandle<Extracted> {
    let (descriptor, unpack, selection) = (
        layer.blob.clone(),
        layer.unpack.clone(),
        layer.selection.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let result = if hash_layer {
            tree.unpack_hashing(source, &descriptor, &unpack, &selection)
        } else {
            tree.unpack_from(source, &descriptor, &unpack, &selection)
                .map(|()| None)
        };
        (tree, result)
    })
}

/// The layer in parallel ranged chunks; the extractor follows the partial's in-order prefix.
async fn stream_layer_chunked(
    layers: &LayerJobs<'_>,
    tree: Tree,
    layer: StreamedLayer<'_>,
    tuning: chunks::Tuning,
) -> Result<(Layer, u64), PullError> {
    let (cache, source) = (layers.cache, layers.source);
    let blob = layer.blob;
    // A plain tar's digest is taken by the extractor, together with its files' digests; a
    // compressed one's by the writer's hasher thread, beside the decompression.
    let hashed_by_reader = is_plain_tar(&blob.media_type);
    let purpose = Purpose::Streamed { hashed_by_reader };
    let ingest = cache
        .ingest_chunked(&blob.digest, blob.size, tuning.chunk_size, purpose)
        .await?;
    let writer = match ingest {
        ChunkedIngest::Present => return unpack_stored(cache, tree, layer).await,
        ChunkedIngest::Needed(writer) => writer,
    };
    let registry = source.online_or_suspend(writer.suspend()).await?;
    let kept = writer.resumed_bytes();
    if kept > 0 {
        tracing::info!(digest = %blob.digest, bytes = kept, "unpacking the bytes an interrupted pull left, then fetching the rest");
    }
    let mut extractor = spawn_extractor(tree, writer.reader(), &layer, hashed_by_reader);
    let mut bar = layers
        .job
        .progress
        .blob(&progress_label(blob), blob.size, kept);
    let mut fetched = 0u64;
    let mut download = Box::pin(chunks::download(
        source.reference,
        registry,
        &writer,
        tuning,
        &mut bar,
        &mut fetched,
    ));
    let first = tokio::select! {
        downloaded = &mut download => First::Download(downloaded),
        joined = &mut extractor => First::Extractor(joined.expect("extractor panicked")),
    };
    let (downloaded, (tree, extracted)) = match first {
        First::Download(downloaded) => {
            drop(download);
            if !matches!(downloaded, Ok(chunks::Outcome::Complete)) {
                // Nothing more will come: the extractor stops at what it has.
                writer.suspend().await;
            }
            (downloaded, extractor.await.expect("extractor panicked"))
        }
        First::Extractor((tree, Ok(read))) => (download.await, (tree, Ok(read))),
        First::Extractor((tree, Err(refused))) => {
            // The archive was refused: stop downloading it.
            drop(download);
            (Ok(chunks::Outcome::Complete), (tree, Err(refused)))
        }
    };
    // The chunks already complete stay for the one-stream download.
    if !download_complete(downloaded, &writer, source, true).await? {
        return Ok((Layer::Again, fetched));
    }
    let resumed = kept > 0 && layers.may_retry;
    let layer = settle(blob, (tree, extracted), Partial::Chunked(writer), resumed).await?;
    if matches!(layer, Layer::Unpacked(..)) {
        bar.finish();
    }
    Ok((layer, fetched))
}

/// Which of a chunked layer's download and extractor ended first.
enum First {
    Download(Result<chunks::Outcome, PullError>),
    Extractor(Extracted),
}

/// The end of a streamed layer whose download completed: a refused archive keeps nothing of
/// its partial; the bytes must match the layer's size and digest. A layer `resumed` from a
/// partial that fails either way is tried again from nothing. An unpacking that failed on
/// this side (a full disk) keeps the partial, as a failed chunked download does.
async fn settle(
    blob: &artifact::Descriptor,
    (tree, extracted): Extracted,
    mut partial: Partial,
    resumed: bool,
) -> Result<Layer, PullError> {
    let read = match extracted {
        Ok(read) => read,
        Err(MaterializeError::Cache(local)) if !local.is_integrity() => {
            // The disk, not the archive, failed: the downloaded bytes stay for the next try.
            partial.keep().await;
            return Err(PullError::Cache(local));
        }
        Err(refused) => {
            partial.discard().await;
            if resumed {
                tracing::warn!(digest = %blob.digest, error = %crate::errors::render(&refused), "a resumed layer did not unpack; fetching it again from the start");
                return Ok(Layer::Again);
            }
            return Err(refused.into());
        }
    };
    match partial.verify(read).await {
        Ok(()) => Ok(Layer::Unpacked(tree, Some(partial))),
        Err(CacheError::DigestMismatch { .. }) if resumed => {
            tracing::warn!(digest = %blob.digest, "a resumed layer did not verify; fetching it again from the start");
            Ok(Layer::Again)
        }
        Err(e) => Err(e.into()),
    }
}

/// The layer in one stream, teed into its partial (the resume point) and the extractor. A
/// partial an earlier pull left is re-read from disk and the rest fetched with Range.
async fn stream_layer_whole(
    layers: &LayerJobs<'_>,
    tree: Tree,
    layer: StreamedLayer<'_>,
) -> Result<(Layer, u64), PullError> {
    let (cache, source) = (layers.cache, layers.source);
    let blob = layer.blob;
    let mut writer = match cache.ingest(&blob.digest, blob.size).await? {
        Ingest::Needed(writer) => writer,
        Ingest::Present => return unpack_stored(cache, tree, layer).await,
    };
    let registry = match source.online() {
        Ok(registry) => registry,
        Err(e) => {
            writer.suspend().await?;
            return Err(e);
        }
    };
    let prefix = writer.offset();
    if prefix > 0 {
        tracing::info!(digest = %blob.digest, bytes = prefix, "unpacking the bytes an interrupted pull left, then resuming the download");
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(materialize::stream::CHANNEL_CHUNKS);
    let partial = writer.partial_path().to_path_buf();
    let stream = materialize::stream::StreamSource::new(&partial, prefix, receiver)
        .map_err(|e| CacheError::io(&partial, e))?;
    let extractor = spawn_extractor(tree, stream, &layer, false);
    let mut bar = layers
        .job
        .progress
        .blob(&progress_label(blob), blob.size, prefix);
    let mut fetched = 0u64;
    let feed = Feed {
        bar: &mut bar,
        fetched: &mut fetched,
        tap: Some(&sender),
    };
    let downloaded = download_with_resume(source, registry, blob, &mut writer, feed).await;
    drop(sender);
    let (tree, extracted) = extractor.await.expect("extractor panicked");
    // A download that failed keeps its partial for the next pull (the writer decided).
    downloaded?;
    let resumed = prefix > 0 && layers.may_retry;
    let layer = settle(
        blob,
        (tree, extracted),
        Partial::Whole(Box::new(writer)),
        resumed,
    )
    .await?;
    if matches!(layer, Layer::Unpacked(..)) {
        bar.finish();
    }
    Ok((layer, fetched))
}

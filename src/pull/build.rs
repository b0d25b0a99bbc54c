//! Building a snapshot from a plan: raw layers linked from their blobs, archives unpacked from
//! their blobs or, for streamed layers (see `streamed_layers`), while they download (see
//! `streamed`). The snapshot is published only after every streamed layer's size and digest
//! verified; on any failure the staged tree is removed. Streamed layers' partials are deleted
//! once it is published, so the cache keeps one copy of the bytes. A resumed layer that fails
//! to unpack or verify (a partial a power cut damaged) makes the tree be built once more, that
//! layer from nothing.

use super::fetch::{download_with_resume, Feed};
use super::job::{blocking, LayerJobs, SnapshotJob};
use super::source::Source;
use super::streamed::{stream_layer, Layer, Partial, StreamedLayer};
use super::PullError;
use crate::artifact::{self, Action};
use crate::cache::{Cache, Ingest, SnapshotInfo, SnapshotSlot};
use crate::digest::Digest;
use crate::materialize::extract::Tree;
use crate::progress::Progress;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::path::PathBuf;

/// A tree with every plan entry laid in, waiting to be published.
struct BuiltTree {
    tree: Tree,
    partials: Vec<Partial>,
}

/// How one attempt at the tree ended.
enum Attempt {
    Built(BuiltTree),
    /// A resumed partial did not hold what it claimed, or the registry ignored Range: build
    /// once more from what is left (the failing layer from nothing).
    Again,
}

/// Builds and publishes the snapshot (see the module comment). Returns its description, its
/// folder and the bytes fetched from the registry.
pub(super) async fn build_snapshot(
    cache: &Cache,
    source: &Source<'_>,
    snapshot_id: &Digest,
    job: SnapshotJob<'_>,
) -> Result<(SnapshotInfo, PathBuf, u64), PullError> {
    let mut fetched = 0u64;
    for attempt in 1..=2 {
        let builder = match cache.snapshot_slot(snapshot_id).await? {
            SnapshotSlot::Ready(info) => {
                return Ok((info, cache.snapshot_dir(snapshot_id), fetched))
            }
            SnapshotSlot::Build(builder) => builder,
        };
        let dir = builder.dir().to_path_buf();
        let built = build_tree(cache, source, &dir, &job, attempt == 1, &mut fetched).await;
        match built {
            Ok(Attempt::Built(built)) => {
                let (info, dir) = commit(source, snapshot_id, builder, &job, built).await?;
                return Ok((info, dir, fetched));
            }
            Ok(Attempt::Again) => {
                tracing::warn!(snapshot = %snapshot_id, "building the model tree once more");
            }
            Err(e @ PullError::Materialize(_)) => {
                // A refused archive: keep nothing of this model's streamed layers.
                for digest in job.streamed {
                    discard_partial(cache, digest).await;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the second attempt never asks for another")
}

/// One attempt at laying every plan entry into `dir`. Image layers are unpacked one after
/// another (in manifest order), but their downloads need not wait: later streamed layers are
/// fetched ahead into their partials, which their turn then reads back from disk before
/// resuming from the network.
async fn build_tree(
    cache: &Cache,
    source: &Source<'_>,
    dir: &std::path::Path,
    job: &SnapshotJob<'_>,
    may_retry: bool,
    fetched: &mut u64,
) -> Result<Attempt, PullError> {
    let claimed = std::sync::Mutex::new(HashSet::new());
    let ahead: Vec<&artifact::Descriptor> = job
        .plan
        .entries
        .iter()
        .filter(|e| job.streamed.contains(&e.blob.digest))
        .map(|e| &e.blob)
        .skip(1)
        .collect();
    let prefetch = futures_util::stream::iter(
        ahead
            .into_iter()
            .map(|blob| fetch_ahead(cache, source, blob, &claimed))
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(job.concurrency.saturating_sub(1).max(1))
    .fold(0u64, |total, bytes| async move { total + bytes });
    let layers = LayerJobs {
        cache,
        source,
        job,
        claimed: &claimed,
        may_retry,
    };
    let build = lay_entries(&layers, dir);
    tokio::pin!(prefetch, build);
    // When the tree is done (or refused) first, what is still fetching ahead is dropped.
    let (built, ahead_bytes) = tokio::select! {
        built = &mut build => (built, 0),
        bytes = &mut prefetch => (build.await, bytes),
    };
    *fetched += ahead_bytes;
    let (attempt, bytes) = built?;
    *fetched += bytes;
    Ok(attempt)
}

/// Deletes a streamed layer's partial download, under its lock.
async fn discard_partial(cache: &Cache, digest: &Digest) {
    if let Ok(Ingest::Needed(writer)) = cache.ingest(digest, u64::MAX).await {
        writer.discard().await;
    }
}

/// Fetches a streamed layer ahead of its turn into its partial (no extraction), unless its
/// turn has come. Failures are left to the layer's own download; returns the bytes fetched.
async fn fetch_ahead(
    cache: &Cache,
    source: &Source<'_>,
    blob: &artifact::Descriptor,
    claimed: &std::sync::Mutex<HashSet<Digest>>,
) -> u64 {
    let is_claimed = || claimed.lock().expect("claims lock").contains(&blob.digest);
    if is_claimed() {
        return 0;
    }
    let Ok(registry) = source.online() else {
        return 0;
    };
    let mut writer = match cache.ingest(&blob.digest, blob.size).await {
        Ok(Ingest::Needed(writer)) => writer,
        _ => return 0,
    };
    if is_claimed() {
        // Its turn came while we waited for the lock: the extractor's download takes over.
        let _ = writer.suspend().await;
        return 0;
    }
    let mut bar = Progress::hidden().blob("", blob.size, writer.offset());
    let mut fetched = 0u64;
    let feed = Feed {
        bar: &mut bar,
        fetched: &mut fetched,
        tap: None,
    };
    if let Err(e) = download_with_resume(source, registry, blob, &mut writer, feed).await {
        tracing::debug!(digest = %blob.digest, error = %crate::errors::render(&e), "fetching ahead stopped; the layer's turn resumes it");
    }
    writer.abandon_keeping_partial().await;
    fetched
}

/// Lays every plan entry into a tree at `dir`. Streamed archives whose paths cannot overlap
/// (no image layers in the plan) each unpack on their own thread as their bytes arrive, up to
/// `concurrency` at once; image layers go one after another, in order, since a later one may
/// replace or hide what an earlier one placed. Returns the attempt and the bytes fetched.
async fn lay_entries(
    layers: &LayerJobs<'_>,
    dir: &std::path::Path,
) -> Result<(Attempt, u64), PullError> {
    let (cache, job) = (layers.cache, layers.job);
    let plan = job.plan;
    let mut tree = Tree::new(dir, job.limits);
    let mut partials = Vec::new();
    let mut fetched = 0u64;
    let mut again = false;
    let parallel = !plan
        .entries
        .iter()
        .any(|e| matches!(&e.action, Action::Unpack(u) if u.overlay));
    let mut forked = Vec::new();
    for entry in &plan.entries {
        layers
            .claimed
            .lock()
            .expect("claims lock")
            .insert(entry.blob.digest.clone());
        let selection = plan.selection.clone();
        tree = match entry.action.clone() {
            Action::Unpack(unpack) if job.streamed.contains(&entry.blob.digest) => {
                let layer = StreamedLayer {
                    blob: &entry.blob,
                    unpack,
                    selection,
                };
                if parallel {
                    forked.push(stream_layer(layers, tree.fork(), layer));
                    tree
                } else {
                    let (outcome, bytes) = stream_layer(layers, tree, layer).await?;
                    fetched += bytes;
                    match outcome {
                        Layer::Unpacked(tree, partial) => {
                            partials.extend(partial);
                            tree
                        }
                        Layer::Again => return Ok((Attempt::Again, fetched)),
                    }
                }
            }
            action => {
                let (blob, descriptor) = (cache.blob_path(&entry.blob.digest), entry.blob.clone());
                blocking(move || {
                    tree.place_entry(&action, &blob, &descriptor, &selection)?;
                    Ok(tree)
                })
                .await?
            }
        };
    }
    // Every layer runs to its end (so no extractor is still writing when a failure removes
    // the staged tree); the first failure is the answer.
    let results: Vec<_> = futures_util::stream::iter(forked)
        .buffered(job.concurrency.max(1))
        .collect()
        .await;
    let mut failure = None;
    for result in results {
        match result {
            Ok((outcome, bytes)) => {
                fetched += bytes;
                match outcome {
                    Layer::Unpacked(layer_tree, partial) => {
                        tree.merge(layer_tree);
                        partials.extend(partial);
                    }
                    Layer::Again => again = true,
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if again {
        return Ok((Attempt::Again, fetched));
    }
    if let Some(kitfile) = plan.kitfile.clone() {
        tree = blocking(move || {
            tree.place_manifest_kitfile(&kitfile)?;
            Ok(tree)
        })
        .await?;
    }
    Ok((Attempt::Built(BuiltTree { tree, partials }), fetched))
}

/// Syncs the built tree, publishes the snapshot, then deletes the streamed layers' partials.
async fn commit(
    source: &Source<'_>,
    snapshot_id: &Digest,
    builder: crate::cache::SnapshotBuilder,
    job: &SnapshotJob<'_>,
    built: BuiltTree,
) -> Result<(SnapshotInfo, PathBuf), PullError> {
    let plan = job.plan;
    let info = SnapshotInfo {
        reference: source.reference.to_string(),
        digest: snapshot_id.clone(),
        format: plan.format.name().to_string(),
        files: Vec::new(),
        created: super::now(),
        // Streamed archives leave no blob: the snapshot's file digests vouch for their bytes.
        blobs: plan
            .entries
            .iter()
            .map(|e| e.blob.digest.clone())
            .filter(|d| !job.streamed.contains(d))
            .collect(),
    };
    let BuiltTree { tree, partials } = built;
    let (info, dir) = blocking(move || {
        tree.sync()?;
        let info = SnapshotInfo {
            files: tree.into_files(),
            ..info
        };
        let dir = builder.commit(&info)?;
        Ok((info, dir))
    })
    .await?;
    for partial in partials {
        partial.discard().await;
    }
    Ok((info, dir))
}

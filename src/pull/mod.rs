//! The one pull pipeline every mode calls: reference -> manifest -> plan -> blobs -> snapshot
//! -> destination. Pull policies decide when the registry is asked at all.

use crate::artifact::{self, Format, Manifest};
use crate::cache::{Cache, SnapshotFile, SnapshotInfo, WorkLease};
use crate::digest::Digest;
use crate::materialize::{self, Stamp};
use crate::policy::{self, Gate};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod build;
mod chunks;
mod error;
mod fetch;
mod job;
mod source;
mod streamed;

use build::build_snapshot;
pub use error::PullError;
use fetch::{fetch_blobs, streamed_layers, Fetched};
use job::SnapshotJob;
pub use source::tag_key;
use source::{
    confirm_mirror_copy, ensure_cached_access, load_manifest, note_registry_access, resolve_digest,
    Source,
};

/// When to contact the registry, as for Kubernetes images.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum PullPolicy {
    /// Use the cache (or the destination's stamp) when it has the model; a cached tag needs no network.
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Resolve the tag at the registry every time; blobs already cached are reused.
    #[value(name = "Always")]
    Always,
    /// Never contact the registry: the cache has the model or the pull fails.
    #[value(name = "Never")]
    Never,
}

#[derive(Clone, Debug)]
pub struct PullRequest {
    pub reference: Reference,
    pub dest: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    pub policy: PullPolicy,
    pub verify: bool,
    pub concurrency: usize,
    pub format: Option<Format>,
    /// What part of the model to take, and how far its archives may expand.
    pub layout: Layout,
    /// How `dest` files are made from the cache's (copies unless hard links are asked for).
    pub dest_link: materialize::DestLink,
}

/// `--subpath`/`--include`/`--exclude`/`--only` and the unpacking limits of one pull.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub selection: artifact::Selection,
    pub limits: materialize::Limits,
    /// Which variant of a ModelKit index (`--variant`); `None` for an index of one.
    pub variant: Option<String>,
}

impl PullRequest {
    /// The snapshot this request materialises: the manifest digest itself for the whole
    /// model in its detected format, else a digest derived from the manifest and the choice.
    pub fn snapshot_id(&self, manifest: &Digest) -> Digest {
        let key = self.layout.selection.key();
        match (self.format, key.is_empty()) {
            (None, true) => manifest.clone(),
            (format, _) => Digest::of_bytes(
                format!(
                    "{manifest}\nformat={};{key}",
                    format.map_or("auto", |f| f.name())
                )
                .as_bytes(),
            ),
        }
    }
}

/// The summary `--json` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    pub reference: String,
    pub digest: Digest,
    pub format: String,
    pub dest: Option<PathBuf>,
    pub snapshot: Option<PathBuf>,
    pub files: Vec<SnapshotFile>,
    pub bytes_fetched: u64,
    pub bytes_reused: u64,
    pub seconds: f64,
    pub cache_hit: bool,
}

/// Pulls a model into the cache and, if asked, into `dest`.
pub async fn pull(
    request: &PullRequest,
    registry: &RegistryClient,
    progress: &Progress,
) -> Result<PullReport, PullError> {
    pull_gated(request, registry, progress, &Gate::open()).await
}

/// [`pull`] under a node policy's judgement of this request: the registry host is checked
/// before any connection, the announced size after the manifest and before any blob, and
/// signatures before anything is handed out.
pub async fn pull_gated(
    request: &PullRequest,
    registry: &RegistryClient,
    progress: &Progress,
    gate: &Gate,
) -> Result<PullReport, PullError> {
    pull_leased(request, registry, progress, gate, None).await
}

/// [`pull_gated`] whose cache reads are held by `held`, a work lease the caller keeps past
/// the pull until it has installed the result itself (a CSI publish's mount, a warm-list
/// lease). Without one, the pull holds its own until its result is in `dest`.
pub async fn pull_leased(
    request: &PullRequest,
    registry: &RegistryClient,
    progress: &Progress,
    gate: &Gate,
    held: Option<&WorkLease>,
) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let reference = &request.reference;
    if let Some(report) = stamp_hit(request, started) {
        let snapshot = report.snapshot_id.clone();
        if !gate.checks_signatures()
            || verdicts_dir(request).is_some_and(|dir| gate.remembered(&dir, &snapshot))
        {
            return Ok(report.report);
        }
    }
    let (cache, ephemeral) = match (&request.cache, &request.dest) {
        (Some(root), _) => (Cache::open(root)?, false),
        (None, Some(dest)) => (
            Cache::open(materialize::stamp::work_dir(dest).join("cache"))?,
            true,
        ),
        (None, None) => return Err(PullError::NoTarget),
    };
    // Held before anything in the cache is looked at, released once the result is installed.
    let own;
    let lease = match held {
        Some(lease) if lease.cache().root() == cache.root() => lease,
        _ => {
            own = cache.begin_work(&format!("pull {reference}"))?;
            &own
        }
    };
    // This pull's own record of what mirrors served it.
    let registry = &registry.for_one_pull();
    let source = Source {
        registry,
        reference,
        offline: request.policy == PullPolicy::Never,
        fetched_manifest: AtomicBool::new(false),
        range_ignored: AtomicBool::new(false),
    };

    gate.before_contact(reference).await?;
    let top_digest = resolve_digest(&cache, &source, request.policy).await?;
    let variant = request.layout.variant.as_deref();
    let (manifest_digest, manifest) = load_manifest(&cache, &source, &top_digest, variant).await?;
    gate.check_manifest(reference, &manifest)?;
    // A manifest from a mirror: the origin decides before any blob is fetched.
    if let Err(e) = confirm_mirror_copy(&cache, &source, &manifest_digest, !ephemeral).await {
        return Err(discard_refused(request, &cache, ephemeral, e));
    }
    if !ephemeral {
        note_registry_access(&cache, &source, &manifest_digest).await?;
    }

    let snapshot_id = request.snapshot_id(&manifest_digest);
    lease.hold_snapshot(&snapshot_id).await?;
    let model = Wanted {
        cache: &cache,
        source: &source,
        manifest: &manifest,
        snapshot_id: &snapshot_id,
        lease,
    };
    let (info, snapshot_dir, fetched, cache_hit) =
        ensure_snapshot(request, &model, progress).await?;

    // Blobs from a mirror: the origin decides before anything is handed out.
    let confirmed = match confirm_mirror_copy(&cache, &source, &manifest_digest, !ephemeral).await {
        Ok(confirmed) => confirmed,
        Err(e) => return Err(discard_refused(request, &cache, ephemeral, e)),
    };
    if !ephemeral {
        if confirmed {
            note_registry_access(&cache, &source, &manifest_digest).await?;
        }
        ensure_cached_access(&cache, &source, &manifest_digest).await?;
    }
    if gate.checks_signatures() {
        let verdicts = verdicts_dir(request).unwrap_or_else(|| cache.root().join("verdicts"));
        let mut digests = vec![top_digest.clone()];
        if manifest_digest != top_digest {
            digests.push(manifest_digest.clone());
        }
        let model = policy::signatures::Model {
            registry,
            reference,
            digests,
            snapshot: &snapshot_id,
            whole: snapshot_id == manifest_digest,
            dir: &snapshot_dir,
            files: &info.files,
            verdicts: &verdicts,
            offline: source.offline,
        };
        if let Err(e) = gate.before_handout(model).await {
            return Err(discard_refused(request, &cache, ephemeral, e.into()));
        }
    }
    if !ephemeral {
        cache.touch_snapshot(&snapshot_id);
    }
    crate::pause::point("install").await;
    if let Some(dest) = &request.dest {
        let stamp = Stamp {
            reference: reference.to_string(),
            digest: manifest_digest.clone(),
            format: info.format.clone(),
            files: info.files.clone(),
            pulled_at: now(),
            snapshot: (snapshot_id != manifest_digest).then(|| snapshot_id.clone()),
        };
        let (snapshot, files) = (snapshot_dir.clone(), info.files.clone());
        let (dest_owned, how) = (dest.clone(), request.dest_link);
        tokio::task::spawn_blocking(move || {
            materialize::install(&snapshot, &files, &dest_owned, &stamp, how)
        })
        .await
        .expect("install task panicked")?;
    }
    if ephemeral {
        crate::cache::remove_tree(cache.root())?;
    }
    Ok(PullReport {
        reference: reference.to_string(),
        digest: manifest_digest,
        format: info.format.clone(),
        dest: request.dest.clone(),
        snapshot: (!ephemeral).then_some(snapshot_dir),
        files: info.files,
        bytes_fetched: fetched.fetched,
        bytes_reused: fetched.reused,
        seconds: started.elapsed().as_secs_f64(),
        cache_hit,
    })
}

/// A refused model: nothing of it stays under the destination (a pull without `--cache` keeps
/// its work cache there). Returns the refusal, or the error removing it.
fn discard_refused(
    request: &PullRequest,
    cache: &Cache,
    ephemeral: bool,
    refusal: PullError,
) -> PullError {
    if let (true, Some(dest)) = (ephemeral, &request.dest) {
        if let Err(e) = crate::cache::remove_tree(cache.root()) {
            return e.into();
        }
        let _ = std::fs::remove_dir(materialize::stamp::work_dir(dest));
    }
    refusal
}

/// The model a pull wants in the cache, and the lease that holds what it reads.
struct Wanted<'a> {
    cache: &'a Cache,
    source: &'a Source<'a>,
    manifest: &'a Manifest,
    snapshot_id: &'a Digest,
    lease: &'a WorkLease,
}

/// The snapshot, from the cache (re-hashed first with `--verify`) or built from the plan's
/// blobs, each held by the lease before it is looked at. Returns its description, its
/// directory, the bytes fetched and reused, and whether it was a cache hit.
async fn ensure_snapshot(
    request: &PullRequest,
    wanted: &Wanted<'_>,
    progress: &Progress,
) -> Result<(SnapshotInfo, PathBuf, Fetched, bool), PullError> {
    let cache = wanted.cache;
    let snapshot_id = wanted.snapshot_id;
    let mut existing = cache.snapshot(snapshot_id)?;
    if request.verify {
        if let Some(info) = existing.take() {
            existing = verified_snapshot(cache, info).await?;
        }
    }
    if let Some(info) = existing {
        let reused = Fetched {
            fetched: 0,
            reused: info.total_size(),
        };
        return Ok((info, cache.snapshot_dir(snapshot_id), reused, true));
    }
    let plan = artifact::plan_selected(wanted.manifest, request.format, &request.layout.selection)
        .map_err(|source| PullError::Artifact {
            reference: request.reference.to_string(),
            source,
        })?;
    wanted
        .lease
        .hold_blobs(plan.entries.iter().map(|e| &e.blob.digest))?;
    let streamed = streamed_layers(cache, &plan)?;
    let mut fetched = fetch_blobs(
        cache,
        wanted.source,
        &plan,
        &streamed,
        request.concurrency,
        progress,
    )
    .await?;
    let job = SnapshotJob {
        plan: &plan,
        streamed: &streamed,
        limits: request.layout.limits,
        concurrency: request.concurrency,
        progress,
    };
    let (info, dir, streamed_bytes) =
        build_snapshot(cache, wanted.source, snapshot_id, job).await?;
    fetched.fetched += streamed_bytes;
    Ok((info, dir, fetched, false))
}

/// Where signature verdicts are remembered: beside the shared cache, else in the
/// destination's work directory.
fn verdicts_dir(request: &PullRequest) -> Option<PathBuf> {
    match (&request.cache, &request.dest) {
        (Some(cache), _) => Some(cache.join("verdicts")),
        (None, Some(dest)) => Some(materialize::stamp::work_dir(dest).join("verdicts")),
        (None, None) => None,
    }
}

/// A destination that already holds the model: the report and the snapshot id it was built from.
struct StampHit {
    report: PullReport,
    snapshot_id: Digest,
}

/// The destination already holds this model (a restored PVC, a re-run init container).
fn stamp_hit(request: &PullRequest, started: Instant) -> Option<StampHit> {
    let dest = request.dest.as_ref()?;
    // The stamp records the variant's manifest, not the name that chose it: ask the cache.
    if request.layout.variant.is_some() {
        return None;
    }
    let reference = &request.reference;
    let stamp = Stamp::read(dest)?;
    let same_model = match reference.digest() {
        Some(digest) => &stamp.digest == digest,
        None => request.policy != PullPolicy::Always && stamp.reference == reference.to_string(),
    };
    let same_choice =
        stamp.snapshot.as_ref().unwrap_or(&stamp.digest) == &request.snapshot_id(&stamp.digest);
    if !same_model || !same_choice {
        return None;
    }
    if let Err(why) = stamp.check(dest, request.verify) {
        tracing::warn!(dest = %dest.display(), %why, "destination no longer matches its stamp; pulling again");
        return None;
    }
    tracing::info!(dest = %dest.display(), digest = %stamp.digest, "destination already holds the model");
    let size = stamp.files.iter().map(|f| f.size).sum();
    let snapshot_id = stamp
        .snapshot
        .clone()
        .unwrap_or_else(|| stamp.digest.clone());
    let report = PullReport {
        reference: reference.to_string(),
        digest: stamp.digest,
        format: stamp.format,
        dest: Some(dest.clone()),
        snapshot: None,
        files: stamp.files,
        bytes_fetched: 0,
        bytes_reused: size,
        seconds: started.elapsed().as_secs_f64(),
        cache_hit: true,
    };
    Some(StampHit {
        report,
        snapshot_id,
    })
}

/// Re-hashes a snapshot's files (`--verify`). A file that no longer matches its digest takes
/// its blob and the snapshot with it, so the pull fetches and rebuilds them.
async fn verified_snapshot(
    cache: &Cache,
    info: SnapshotInfo,
) -> Result<Option<SnapshotInfo>, PullError> {
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        let dir = cache.snapshot_dir(&info.digest);
        let mut damaged = Vec::new();
        for file in &info.files {
            let path = file.path.under(&dir);
            if Digest::of_file(&path).ok().as_ref() != Some(&file.digest) {
                damaged.push(file.digest.clone());
            }
        }
        if damaged.is_empty() {
            return Ok(Some(info));
        }
        tracing::warn!(snapshot = %info.digest, files = damaged.len(), "cached files no longer match their digests; fetching them again");
        for digest in &damaged {
            cache.remove_blob_if_corrupt(digest)?;
        }
        cache.remove_snapshot(&info.digest)?;
        Ok(None)
    })
    .await
    .expect("verify task panicked")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

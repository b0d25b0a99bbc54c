//! The one pull pipeline every mode calls: reference -> manifest -> plan -> blobs -> snapshot
//! -> destination. Pull policies decide when the registry is asked at all.

use crate::artifact::{self, Action, ArtifactError, Format, Manifest, Parsed, Plan};
use crate::cache::{
    Cache, CacheError, ChunkedIngest, ChunkedWriter, Ingest, Purpose, SnapshotFile, SnapshotInfo,
};
use crate::digest::Digest;
use crate::materialize::{self, MaterializeError, Stamp};
use crate::policy::{self, Gate, PolicyError};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::registry::{FetchedManifest, RegistryClient, RegistryError};
use crate::tenancy;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

mod build;
mod chunks;
mod streamed;

use build::{build_snapshot, SnapshotJob};

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

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference}: {source}")]
    Artifact {
        reference: String,
        #[source]
        source: ArtifactError,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error(
        "manifest {expected}: the registry served bytes whose digest is {actual}; refusing them"
    )]
    ManifestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: the registry has only {available} of its {expected} bytes (truncated blob); nothing was kept")]
    Truncated {
        digest: Digest,
        expected: u64,
        available: u64,
    },
    #[error(
        "{reference} is not in the cache and --pull-policy Never forbids contacting the registry"
    )]
    NotCached { reference: String },
    #[error("not enough space in {}: the pull needs {needed} more bytes, {available} are free; free space, run `tugboat cache gc`, or use a larger --cache volume", path.display())]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("give --dest DIR (where the model goes) and/or --cache DIR (the node cache)")]
    NoTarget,
    #[error("{reference} is private in the node cache, and the registry did not confirm that these credentials may read it: {source}")]
    PrivateDenied {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("{reference} is private in the node cache and --pull-policy Never forbids asking the registry whether these credentials may read it")]
    PrivateOffline { reference: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

pub use crate::errors::FailureKind;

impl PullError {
    /// This failure's kind (see [`crate::errors`]): its exit code and gRPC code.
    pub fn kind(&self) -> FailureKind {
        <Self as crate::errors::Classify>::kind(self)
    }
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
    if !ephemeral {
        note_registry_access(&cache, &source, &manifest_digest).await?;
    }

    let mut fetched = Fetched::default();
    let snapshot_id = request.snapshot_id(&manifest_digest);
    let mut existing = cache.snapshot(&snapshot_id)?;
    if request.verify {
        if let Some(info) = existing.take() {
            existing = verified_snapshot(&cache, info).await?;
        }
    }
    let (info, snapshot_dir, cache_hit) = match existing {
        Some(info) => {
            fetched.reused = info.total_size();
            (info, cache.snapshot_dir(&snapshot_id), true)
        }
        None => {
            let plan =
                artifact::plan_selected(&manifest, request.format, &request.layout.selection)
                    .map_err(|source| PullError::Artifact {
                        reference: reference.to_string(),
                        source,
                    })?;
            let streamed = streamed_layers(&cache, &plan)?;
            fetched = fetch_blobs(
                &cache,
                &source,
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
                build_snapshot(&cache, &source, &snapshot_id, job).await?;
            fetched.fetched += streamed_bytes;
            (info, dir, false)
        }
    };

    if !ephemeral {
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
            if let (true, Some(dest)) = (ephemeral, &request.dest) {
                // Nothing of a refused model stays under the destination.
                crate::cache::remove_tree(cache.root())?;
                let _ = std::fs::remove_dir(materialize::stamp::work_dir(dest));
            }
            return Err(e.into());
        }
    }
    if !ephemeral {
        cache.touch_snapshot(&snapshot_id);
    }
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

/// The registry, unless the policy forbids asking it.
struct Source<'a> {
    registry: &'a RegistryClient,
    reference: &'a Reference,
    offline: bool,
    /// The registry served a manifest to this request's credentials (so it may read the model).
    fetched_manifest: AtomicBool,
    /// The registry answered a Range request with the whole blob: fetch in one stream.
    range_ignored: AtomicBool,
}

impl Source<'_> {
    /// The registry to fill a chunked partial from; offline, the partial is put away by
    /// `suspend` (the writer's) before `NotCached` is returned.
    async fn online_or_suspend(
        &self,
        suspend: impl std::future::Future<Output = ()>,
    ) -> Result<&RegistryClient, PullError> {
        let online = self.online();
        if online.is_err() {
            suspend.await;
        }
        online
    }

    fn online(&self) -> Result<&RegistryClient, PullError> {
        if self.offline {
            Err(PullError::NotCached {
                reference: self.reference.to_string(),
            })
        } else {
            Ok(self.registry)
        }
    }

    async fn manifest(&self, reference: &Reference) -> Result<FetchedManifest, PullError> {
        let fetched = self.online()?.manifest(reference).await?;
        self.fetched_manifest.store(true, Ordering::Relaxed);
        Ok(fetched)
    }
}

/// Tenancy, first half: when this request's credentials fetched the manifest, remember that
/// they may read it, and mark the model private if the registry would not serve it anonymously
/// (before any blob lands, so no other request can find the bytes unmarked).
async fn note_registry_access(
    cache: &Cache,
    source: &Source<'_>,
    manifest: &Digest,
) -> Result<(), PullError> {
    if !source.fetched_manifest.load(Ordering::Relaxed) {
        return Ok(());
    }
    let pinned = source.reference.with_digest(manifest.clone());
    tenancy::remember(source.registry, &pinned);
    tenancy::mark_if_private(cache, source.registry, &pinned).await?;
    Ok(())
}

/// Tenancy, second half: a private model this request took from the cache (without the
/// registry serving it the manifest) is handed over only once the registry confirms these
/// credentials may read it. Checked after the snapshot exists, so a model marked private while
/// this request was running is caught too.
async fn ensure_cached_access(
    cache: &Cache,
    source: &Source<'_>,
    manifest: &Digest,
) -> Result<(), PullError> {
    if source.fetched_manifest.load(Ordering::Relaxed) || !cache.is_private(manifest)? {
        return Ok(());
    }
    let reference = source.reference.to_string();
    if source.offline {
        return Err(PullError::PrivateOffline { reference });
    }
    let pinned = source.reference.with_digest(manifest.clone());
    tenancy::confirm_access(source.registry, &pinned)
        .await
        .map_err(|source| PullError::PrivateDenied { reference, source })
}

async fn resolve_digest(
    cache: &Cache,
    source: &Source<'_>,
    policy: PullPolicy,
) -> Result<Digest, PullError> {
    let reference = source.reference;
    if let Some(digest) = reference.digest() {
        return Ok(digest.clone());
    }
    if policy != PullPolicy::Always {
        if let Some(digest) = cache.tag(&tag_key(reference))? {
            if cache.manifest(&digest)?.is_some() {
                return Ok(digest);
            }
        }
    }
    let fetched = source.manifest(reference).await?;
    let digest = cache.store_manifest(&fetched.bytes)?;
    cache.store_tag(&tag_key(reference), &digest)?;
    Ok(digest)
}

/// What the cache remembers a tag reference's resolution under.
pub fn tag_key(reference: &Reference) -> crate::cache::TagKey<'_> {
    crate::cache::TagKey {
        registry: reference.registry(),
        repository: reference.repository(),
        tag: reference.tag_or_latest(),
    }
}

/// Reads (cache first) the manifest `digest` names; an index resolves to one of its manifests
/// (for a ModelKit index, the `variant` named).
async fn load_manifest(
    cache: &Cache,
    source: &Source<'_>,
    digest: &Digest,
    variant: Option<&str>,
) -> Result<(Digest, Manifest), PullError> {
    let mut digest = digest.clone();
    // A variant names an entry of the index the reference points at, not the manifest chosen.
    let mut variant = variant;
    for _ in 0..2 {
        let bytes = match cache.manifest(&digest)? {
            Some(bytes) => bytes,
            None => {
                let fetched = source
                    .manifest(&source.reference.with_digest(digest.clone()))
                    .await?;
                let actual = Digest::of_bytes(&fetched.bytes);
                if actual != digest {
                    return Err(PullError::ManifestMismatch {
                        expected: digest,
                        actual,
                    });
                }
                cache.store_manifest(&fetched.bytes)?;
                fetched.bytes.to_vec()
            }
        };
        let label = source.reference.with_digest(digest.clone()).to_string();
        let artifact_error = |error| PullError::Artifact {
            reference: label.clone(),
            source: error,
        };
        match artifact::manifest::parse(&bytes, None).map_err(artifact_error)? {
            Parsed::Manifest(_) if variant.is_some() => {
                return Err(artifact_error(ArtifactError::NotAnIndex {
                    wanted: variant.unwrap_or_default().to_string(),
                }))
            }
            Parsed::Manifest(manifest) => return Ok((digest, *manifest)),
            Parsed::Index(entries) => {
                let variants = artifact::kitops::variants(&bytes, &entries);
                let chosen = match (&variants, variant) {
                    (Some(variants), _) => {
                        &artifact::kitops::choose(variants, variant)
                            .map_err(artifact_error)?
                            .manifest
                    }
                    (None, Some(wanted)) => {
                        return Err(artifact_error(ArtifactError::NotAnIndex {
                            wanted: wanted.to_string(),
                        }))
                    }
                    (None, None) => {
                        artifact::manifest::select_from_index(&entries).ok_or_else(|| {
                            artifact_error(ArtifactError::Malformed {
                                detail: "the image index lists no manifests".into(),
                            })
                        })?
                    }
                };
                if chosen.digest == digest {
                    return Err(artifact_error(ArtifactError::Malformed {
                        detail: "the image index lists itself".into(),
                    }));
                }
                tracing::debug!(index = %digest, manifest = %chosen.digest, "index resolved");
                variant = None;
                digest = chosen.digest.clone();
            }
        }
    }
    Err(PullError::Artifact {
        reference: source.reference.to_string(),
        source: ArtifactError::Malformed {
            detail: "an image index points to another index; nested indexes are not followed"
                .into(),
        },
    })
}

#[derive(Default, Clone, Copy)]
struct Fetched {
    fetched: u64,
    reused: u64,
}

/// Archive layers unpacked while they download (never stored as blobs): those not already in
/// the cache, used once and only as an archive.
fn streamed_layers(cache: &Cache, plan: &Plan) -> Result<HashSet<Digest>, PullError> {
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
async fn fetch_blobs(
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
        .filter(|e| {
            streamed.contains(&e.blob.digest) && !streamed::is_plain_tar(&e.blob.media_type)
        })
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
fn check_space(
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
enum Attempt {
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
async fn fetch_blob(
    cache: &Cache,
    source: &Source<'_>,
    blob: &artifact::Descriptor,
    progress: &Progress,
) -> Result<Fetched, PullError> {
    let label = progress_label(blob);
    let mut tuning = chunks::tuning(blob.size, source.registry.transfer());
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
fn progress_label(blob: &artifact::Descriptor) -> String {
    blob.annotations
        .get(artifact::oras::TITLE)
        .cloned()
        .unwrap_or_else(|| blob.digest.hex()[..12].to_string())
}

/// What a download attempt is about: the blob, its progress label, and the progress display.
type Job<'a> = (&'a artifact::Descriptor, &'a str, &'a Progress);

/// One attempt in parallel Range chunks (see `chunks`).
async fn fetch_chunked(
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
async fn put_away_failed(writer: &ChunkedWriter, error: &PullError) {
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
fn committed(
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
async fn fetch_whole(
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
struct Feed<'a> {
    bar: &'a mut crate::progress::BlobProgress,
    fetched: &'a mut u64,
    tap: Option<&'a tokio::sync::mpsc::Sender<bytes::Bytes>>,
}

/// How a request's body ended.
enum BodyEnd {
    /// The body ended (maybe short: the caller checks the offset).
    Ended,
    /// The extractor stopped reading (it refused the archive): stop downloading.
    TapClosed,
}

/// Feeds the writer until it holds the whole blob, resuming with Range after transient
/// failures. A registry that cannot serve the declared size is an integrity failure.
async fn download_with_resume(
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
async fn download_body(
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

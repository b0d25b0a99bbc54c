//! What NodePublishVolume and NodeUnpublishVolume do, apart from gRPC: ensure the model is in
//! the cache (one shared pull per model and secret), bind it read-only onto the pod's target,
//! and record a lease so garbage collection keeps the snapshot; undo it on unpublish. All state
//! lives on disk (lease files, the mount table), so a restarted daemon carries on where it was.

use super::flight::Flights;
use super::mountinfo::{self, MountEntry};
use super::validate::Publish;
use super::{mount, secrets, status};
use crate::cache::{Cache, Lease, WorkLease};
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::policy::{Gate, Mode as RequestMode, Policy};
use crate::progress::Progress;
use crate::pull::{self, PullReport, PullRequest};
use crate::registry::RegistryClient;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tonic::Status;

/// Lease label keys (the cache stores them, this module reads them).
const OWNER: &str = "owner";
const OWNER_CSI: &str = "csi";
const VOLUME_ID: &str = "volume_id";
const ACCESS_MODE: &str = "access_mode";
const READONLY: &str = "readonly";
const SUB_PATH: &str = "sub_path";
const POD: &str = "pod";
const ADOPTED: &str = "adopted";

/// One pull per (reference, policy, secret fingerprint).
type FlightKey = (String, String, String);
type PullOutcome = Result<Arc<Pulled>, Status>;

/// A shared pull's result, and the work lease that holds its snapshot until every publish
/// that joined the pull has recorded its own lease (dropped with the last of them).
pub struct Pulled {
    report: PullReport,
    _held: WorkLease,
}

pub struct Volumes {
    cache: Cache,
    /// The daemon's one client; each publish takes a view of it with the pod's credentials.
    registry: RegistryClient,
    flights: Flights<FlightKey, PullOutcome>,
    busy: Arc<Mutex<HashSet<String>>>,
    metrics: Arc<Metrics>,
    policy: Option<Arc<Policy>>,
}

/// Usage figures of one published volume.
pub struct VolumeUsage {
    pub bytes: u64,
    pub files: u64,
}

impl Volumes {
    pub fn new(cache: Cache, registry: RegistryClient) -> Self {
        Volumes {
            cache,
            registry,
            flights: Flights::default(),
            busy: Arc::default(),
            metrics: Arc::default(),
            policy: None,
        }
    }

    /// Judges every publish by this node policy.
    pub fn with_policy(mut self, policy: Option<Arc<Policy>>) -> Self {
        self.policy = policy;
        self
    }

    /// Records pulls in these metrics (the daemon's); a private set otherwise.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Pulls under way.
    pub fn pulls_in_flight(&self) -> usize {
        self.flights.len()
    }

    pub async fn publish(&self, request: Publish) -> Result<(), Status> {
        let _busy = self.claim(&request.volume_id)?;
        let table = mount_table()?;
        let leases = self.csi_leases()?;
        if let Some(done) = self.already_published(&request, &leases, &table)? {
            return done;
        }
        let (snapshot_dir, lease) = self.ensure_leased_model(&request).await?;
        let snapshot = lease.snapshot.clone();
        let source = match self.mount_source(&snapshot_dir, &request) {
            Ok(source) => source,
            Err(status) => {
                let _ = self.cache.drop_lease(&snapshot, &lease.holder);
                return Err(status);
            }
        };
        if let Err(status) = create_target(&request.target) {
            let _ = self.cache.drop_lease(&snapshot, &lease.holder);
            return Err(status);
        }
        let target = request.target.clone();
        let mounted =
            tokio::task::spawn_blocking(move || mount::bind_read_only(&source, &target)).await;
        match mounted {
            Ok(Ok(())) => {
                tracing::info!(volume = %request.volume_id, pod = %request.pod, target = %request.target.display(), reference = %request.reference, %snapshot, "volume published");
                Ok(())
            }
            Ok(Err(errno)) => {
                let _ = self.cache.drop_lease(&snapshot, &lease.holder);
                Err(Status::internal(format!(
                    "bind-mounting the model onto {}: {errno}",
                    request.target.display()
                )))
            }
            Err(_) => {
                let _ = self.cache.drop_lease(&snapshot, &lease.holder);
                Err(Status::internal("the mount task panicked"))
            }
        }
    }

    /// `Some(answer)` when this request repeats or conflicts with a publish already in place.
    fn already_published(
        &self,
        request: &Publish,
        leases: &[Lease],
        table: &[MountEntry],
    ) -> Result<Option<Result<(), Status>>, Status> {
        let here = real_path(&request.target);
        let mounted_here = mountinfo::mounts_at(table, &here);
        if !mounted_here.is_empty() {
            let ours = leases
                .iter()
                .find(|l| l.target.as_deref() == Some(request.target.as_path()));
            return Ok(Some(match ours {
                Some(lease) if same_parameters(lease, request) => Ok(()),
                Some(lease) if lease.labels.contains_key(ADOPTED) => {
                    self.claim_adopted(lease, request)
                }
                Some(_) => Err(Status::already_exists(format!(
                    "volume is already published at {} with other parameters",
                    request.target.display()
                ))),
                None => Err(Status::already_exists(format!(
                    "{} is already a mount point, not of this volume",
                    request.target.display()
                ))),
            }));
        }
        let elsewhere = leases.iter().any(|l| {
            l.labels.get(VOLUME_ID) == Some(&request.volume_id)
                && l.target.as_deref() != Some(request.target.as_path())
                && l.target
                    .as_deref()
                    .is_some_and(|t| !mountinfo::mounts_at(table, &real_path(t)).is_empty())
        });
        if elsewhere && !request.shareable() {
            return Ok(Some(Err(Status::failed_precondition(format!(
                "volume {} is already published at another target and its access mode allows one",
                request.volume_id
            )))));
        }
        Ok(None)
    }

    /// The model's snapshot with this volume's lease on it. Garbage collection may remove a
    /// snapshot between the pull and the lease; then the model is ensured once more.
    async fn ensure_leased_model(&self, request: &Publish) -> Result<(PathBuf, Lease), Status> {
        for _ in 0..3 {
            let pulled = self.ensure_model(request).await?;
            let report = &pulled.report;
            let snapshot_dir = report
                .snapshot
                .clone()
                .ok_or_else(|| Status::internal("the pull kept no snapshot in the cache"))?;
            let snapshot = snapshot_digest(&snapshot_dir)?;
            let lease = self.lease_for(request, &snapshot, &report.reference);
            if self.cache.lease_snapshot(&lease).await.map_err(internal)? {
                return Ok((snapshot_dir, lease));
            }
            tracing::info!(%snapshot, "snapshot removed by garbage collection before it was leased; ensuring it again");
        }
        Err(Status::unavailable(
            "the model's snapshot keeps disappearing from the cache (garbage collection under disk pressure?); retry",
        ))
    }

    /// The model's snapshot, from the cache or one pull shared by every request for the same
    /// reference with the same secret. A caller that gives up (kubelet's deadline) leaves the
    /// pull running; the retried call joins it.
    async fn ensure_model(&self, request: &Publish) -> Result<Arc<Pulled>, Status> {
        let mode = if request.ephemeral {
            RequestMode::Inline
        } else {
            RequestMode::Pv
        };
        let gate = match &self.policy {
            Some(policy) => policy
                .admit(
                    &request.reference,
                    request.namespace.as_deref(),
                    mode,
                    request.signature_policy.as_deref(),
                )
                .map_err(|e| crate::errors::status(&e))?,
            None => Gate::open(),
        };
        // The node's own credentials only where the policy grants them; the pod's secret always.
        let mut credentials = if gate.node_credentials() {
            self.registry.credentials().clone()
        } else {
            Default::default()
        };
        secrets::apply(&request.secrets, &request.reference, &mut credentials)?;
        let client = self.registry.with_credentials(credentials);
        let key = (
            request.reference.to_string(),
            format!("{:?} {:?}|{}", request.policy, request.variant, gate.key()),
            secrets::fingerprint(&request.secrets),
        );
        let slot_key = key.0.clone();
        let pull_request = PullRequest {
            reference: request.reference.clone(),
            dest: None,
            cache: Some(self.cache.root().to_path_buf()),
            policy: request.policy,
            verify: false,
            concurrency: 4,
            format: None,
            layout: pull::Layout {
                variant: request.variant.clone(),
                ..Default::default()
            },
            dest_link: Default::default(),
        };
        let (metrics, cache) = (self.metrics.clone(), self.cache.clone());
        let work = move || async move {
            let _slot = gate
                .pull_slot(&pull_request.reference, &slot_key)
                .map_err(|e| crate::errors::status(&e))?;
            let started = std::time::Instant::now();
            metrics.pulls_in_flight.inc();
            let held = cache
                .begin_work(&format!("publish {}", pull_request.reference))
                .map_err(|e| status::from_pull(&e.into()))?;
            let result = pull::pull_leased(
                &pull_request,
                &client,
                &Progress::hidden(),
                &gate,
                Some(&held),
            )
            .await;
            metrics.pulls_in_flight.dec();
            let figures = result
                .as_ref()
                .ok()
                .map(|r| (r.bytes_fetched, r.bytes_reused));
            metrics.record_pull_figures("csi", figures, started.elapsed().as_secs_f64());
            result
                .map(|report| {
                    Arc::new(Pulled {
                        report,
                        _held: held,
                    })
                })
                .map_err(|e| status::from_pull(&e))
        };
        let (outcome, started) = self
            .flights
            .run(key, work)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !started {
            tracing::debug!(reference = %request.reference, "joined a pull already under way");
        }
        outcome
    }

    /// The directory to bind: the snapshot or its `subPath`, which must stay inside it.
    fn mount_source(&self, snapshot_dir: &Path, request: &Publish) -> Result<PathBuf, Status> {
        let Some(sub_path) = &request.sub_path else {
            return Ok(snapshot_dir.to_path_buf());
        };
        let wanted = sub_path.under(snapshot_dir);
        let real = std::fs::canonicalize(&wanted).map_err(|_| {
            Status::not_found(format!(
                "subPath {sub_path} does not exist in {}",
                request.reference
            ))
        })?;
        let root = std::fs::canonicalize(snapshot_dir).map_err(internal_io)?;
        if !real.starts_with(&root) || !real.is_dir() {
            return Err(Status::invalid_argument(format!(
                "subPath {sub_path} is not a directory inside {}",
                request.reference
            )));
        }
        Ok(real)
    }

    fn lease_for(&self, request: &Publish, snapshot: &Digest, reference: &str) -> Lease {
        let mut labels = BTreeMap::new();
        labels.insert(OWNER.to_string(), OWNER_CSI.to_string());
        labels.insert(VOLUME_ID.to_string(), request.volume_id.clone());
        labels.insert(
            ACCESS_MODE.to_string(),
            request.mode.as_str_name().to_string(),
        );
        labels.insert(READONLY.to_string(), request.readonly.to_string());
        if let Some(sub_path) = &request.sub_path {
            labels.insert(SUB_PATH.to_string(), sub_path.to_string());
        }
        if !request.pod.is_empty() {
            labels.insert(POD.to_string(), request.pod.clone());
        }
        Lease {
            snapshot: snapshot.clone(),
            holder: holder(&request.volume_id, &request.target),
            target: Some(request.target.clone()),
            reference: reference.to_string(),
            created: now(),
            labels,
        }
    }

    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), Status> {
        let _busy = self.claim(volume_id)?;
        let here = real_path(target);
        // Stacked mounts (a repeated publish that raced a crash) come off one by one.
        for _ in 0..16 {
            if mountinfo::mounts_at(&mount_table()?, &here).is_empty() {
                break;
            }
            let path = here.clone();
            tokio::task::spawn_blocking(move || mount::unmount(&path))
                .await
                .map_err(|_| Status::internal("the unmount task panicked"))?
                .map_err(|errno| {
                    Status::internal(format!("unmounting {}: {errno}", target.display()))
                })?;
        }
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "removing {} after unmounting: {e}",
                    target.display()
                )))
            }
        }
        let mut dropped = 0;
        for lease in self.csi_leases()? {
            if lease.target.as_deref() == Some(target) {
                self.cache
                    .drop_lease(&lease.snapshot, &lease.holder)
                    .map_err(internal)?;
                dropped += 1;
            }
        }
        tracing::info!(volume = %volume_id, target = %target.display(), leases = dropped, "volume unpublished");
        Ok(())
    }

    /// Size of a published volume; NOT_FOUND unless `volume_id` is mounted at `path`.
    pub fn usage(&self, volume_id: &str, path: &Path) -> Result<VolumeUsage, Status> {
        let lease = self
            .csi_leases()?
            .into_iter()
            .find(|l| {
                l.labels.get(VOLUME_ID).map(String::as_str) == Some(volume_id)
                    && l.target.as_deref() == Some(path)
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {volume_id} is not published at {}",
                    path.display()
                ))
            })?;
        if mountinfo::mounts_at(&mount_table()?, &real_path(path)).is_empty() {
            return Err(Status::not_found(format!(
                "volume {volume_id} is not mounted at {}",
                path.display()
            )));
        }
        let info = self
            .cache
            .snapshot(&lease.snapshot)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("the volume's snapshot is gone from the cache"))?;
        Ok(VolumeUsage {
            bytes: info.total_size(),
            files: info.files.len() as u64,
        })
    }

    /// Leases held by published volumes.
    pub fn csi_leases(&self) -> Result<Vec<Lease>, Status> {
        Ok(self
            .cache
            .leases()
            .map_err(internal)?
            .into_iter()
            .filter(|l| l.labels.get(OWNER).map(String::as_str) == Some(OWNER_CSI))
            .collect())
    }

    /// kubelet publishes again a volume whose mount was adopted at restart: the lease becomes
    /// this volume's own.
    fn claim_adopted(&self, adopted: &Lease, request: &Publish) -> Result<(), Status> {
        let lease = self.lease_for(request, &adopted.snapshot, &request.reference.to_string());
        self.cache.take_lease(&lease).map_err(internal)?;
        self.cache
            .drop_lease(&adopted.snapshot, &adopted.holder)
            .map_err(internal)?;
        tracing::info!(volume = %request.volume_id, target = %request.target.display(), "adopted mount claimed by its volume");
        Ok(())
    }

    /// Records a lease for a mount of one of our snapshots that has none (found at restart).
    pub fn adopt(&self, snapshot: &Digest, target: &Path) -> Result<(), Status> {
        let mut labels = BTreeMap::new();
        labels.insert(OWNER.to_string(), OWNER_CSI.to_string());
        labels.insert(ADOPTED.to_string(), "true".to_string());
        let lease = Lease {
            snapshot: snapshot.clone(),
            holder: holder("adopted", target),
            target: Some(target.to_path_buf()),
            reference: String::new(),
            created: now(),
            labels,
        };
        self.cache.take_lease(&lease).map_err(internal)
    }

    /// Marks a volume busy; ABORTED (the spec's "operation pending for volume") if it already is.
    fn claim(&self, volume_id: &str) -> Result<Claim, Status> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(volume_id.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on volume {volume_id} is already in progress; retry"
            )));
        }
        Ok(Claim {
            busy: self.busy.clone(),
            volume_id: volume_id.to_string(),
        })
    }
}

/// The cache snapshot a mount shows, if it shows one: its mountinfo root lies under the
/// filesystem path of `snapshots/` on the same device.
pub fn snapshot_of_mount(
    cache: &Cache,
    table: &[MountEntry],
    entry: &MountEntry,
) -> Option<Digest> {
    let snapshots = std::fs::canonicalize(cache.snapshots_dir()).ok()?;
    let holder = mountinfo::containing(table, &snapshots)?;
    let inside = holder
        .root
        .join(snapshots.strip_prefix(&holder.mount_point).ok()?);
    if entry.device != holder.device || entry.id == holder.id {
        return None;
    }
    let rest = entry.root.strip_prefix(&inside).ok()?;
    let first = rest.components().next()?.as_os_str().to_str()?;
    Digest::from_hex(first).ok()
}

/// Releases a volume claimed by [`Volumes::claim`].
struct Claim {
    busy: Arc<Mutex<HashSet<String>>>,
    volume_id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.volume_id);
        }
    }
}

fn same_parameters(lease: &Lease, request: &Publish) -> bool {
    let label = |key: &str| lease.labels.get(key).cloned().unwrap_or_default();
    label(VOLUME_ID) == request.volume_id
        && label(ACCESS_MODE) == request.mode.as_str_name()
        && label(READONLY) == request.readonly.to_string()
        && label(SUB_PATH)
            == request
                .sub_path
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default()
        && (lease.reference == request.reference.to_string()
            || request
                .reference
                .digest()
                .is_some_and(|d| *d == lease.snapshot))
}

/// A lease holder per (volume, target): a static PV may be published at several targets.
fn holder(volume_id: &str, target: &Path) -> String {
    let hash = Digest::of_bytes(target.as_os_str().as_encoded_bytes());
    format!("csi~{volume_id}~{}", &hash.hex()[..16])
}

fn snapshot_digest(dir: &Path) -> Result<Digest, Status> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| Digest::from_hex(n).ok())
        .ok_or_else(|| Status::internal(format!("unexpected snapshot path {}", dir.display())))
}

fn create_target(target: &Path) -> Result<(), Status> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(target)
        .map_err(|e| {
            Status::internal(format!(
                "creating the target directory {}: {e}",
                target.display()
            ))
        })
}

pub fn mount_table() -> Result<Vec<MountEntry>, Status> {
    mountinfo::read().map_err(|e| Status::internal(format!("reading /proc/self/mountinfo: {e}")))
}

/// The path as the mount table shows it (symlinks resolved) when it exists.
pub fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn internal(error: impl std::error::Error) -> Status {
    Status::internal(crate::errors::render(&error))
}

fn internal_io(error: std::io::Error) -> Status {
    Status::internal(error.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

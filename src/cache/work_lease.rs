//! Work leases: what a running pull, publish or warm pass will read from the cache, held from
//! the moment it starts planning until its result is installed, as containerd's leases are.
//!
//! The holder keeps an exclusive flock on `leases/work/<id>` for as long as it lives. Before it
//! looks at a snapshot or a blob it records a marker for it: `leases/<snapshot-hex>/work-<id>`
//! (a [`Lease`] file, so everything that honours snapshot leases honours it) or
//! `leases/blobs/<blob-hex>.<id>`. Garbage collection and `cache rm` never remove what the
//! marker of a live holder covers. A holder whose lock is free has died (the kernel drops a
//! flock with its process, whatever PID namespace the process ran in): its markers are
//! reclaimed by the next collection, so nothing stays pinned after a crash.

use super::error::CacheError;
use super::lock::FileLock;
use super::{Cache, Lease};
use crate::digest::Digest;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Holder names of work markers start with this; the rest is the work's id.
const MARKER_PREFIX: &str = "work-";
/// Lease label: who holds the lease (`work` for these).
const OWNER: &str = "owner";
const OWNER_WORK: &str = "work";

/// One piece of work's hold on the cache. Dropping it releases everything it held.
pub struct WorkLease {
    cache: Cache,
    id: String,
    what: String,
    snapshots: Mutex<Vec<Digest>>,
    blobs: Mutex<Vec<Digest>>,
    _alive: Flock<File>,
}

/// What a live holder says about itself (the body of `leases/work/<id>`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Holder {
    what: String,
    pid: u32,
    created: u64,
}

impl Cache {
    fn work_dir(&self) -> PathBuf {
        self.leases_dir().join("work")
    }

    fn blob_markers_dir(&self) -> PathBuf {
        self.leases_dir().join("blobs")
    }

    /// Starts a piece of work (`what` names it for people reading `leases/`, e.g.
    /// `pull registry/repo:tag`). Take it before planning: it must exist before anything the
    /// work will read is looked at.
    pub fn begin_work(&self, what: &str) -> Result<WorkLease, CacheError> {
        let dir = self.work_dir();
        fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        fs::create_dir_all(self.blob_markers_dir())
            .map_err(|e| CacheError::io(self.blob_markers_dir(), e))?;
        let id = format!(
            "{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            super::unique()
        );
        // Locked under a hidden name, then renamed: nobody can see the file unlocked.
        let hidden = dir.join(format!(".{id}"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&hidden)
            .map_err(|e| CacheError::io(&hidden, e))?;
        let alive = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| CacheError::io(&hidden, errno.into()))?;
        let holder = Holder {
            what: what.to_string(),
            pid: std::process::id(),
            created: now(),
        };
        let body = serde_json::to_vec(&holder).expect("holder serialises");
        std::io::Write::write_all(&mut &*alive, &body).map_err(|e| CacheError::io(&hidden, e))?;
        let path = dir.join(&id);
        fs::rename(&hidden, &path).map_err(|e| CacheError::io(&path, e))?;
        Ok(WorkLease {
            cache: self.clone(),
            id,
            what: what.to_string(),
            snapshots: Mutex::default(),
            blobs: Mutex::default(),
            _alive: alive,
        })
    }

    /// Whether the work `id` is still running: its file exists and someone holds its lock.
    fn work_alive(&self, id: &str) -> bool {
        let path = self.work_dir().join(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            // Unreadable: assume it lives rather than free what it may hold.
            Err(_) => return true,
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_free) => false,
            Err((_, Errno::EWOULDBLOCK)) => true,
            Err(_) => true,
        }
    }

    /// Whether a live work lease holds the blob.
    pub fn blob_is_leased(&self, blob: &Digest) -> Result<bool, CacheError> {
        let prefix = format!("{}.", blob.hex());
        let dir = self.blob_markers_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CacheError::io(dir, e)),
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if self.work_alive(id) {
                return Ok(true);
            }
            let _ = fs::remove_file(entry.path());
        }
        Ok(false)
    }

    /// Removes a blob unless a live work lease holds it, deciding under the lock markers are
    /// recorded under. Returns whether it was removed.
    pub fn remove_blob_unless_leased(&self, blob: &Digest) -> Result<bool, CacheError> {
        let _markers = self.blob_markers_lock()?;
        if self.blob_is_leased(blob)? {
            return Ok(false);
        }
        super::remove_tree(&self.blob_path(blob))?;
        Ok(true)
    }

    fn blob_markers_lock(&self) -> Result<FileLock, CacheError> {
        let dir = self.blob_markers_dir();
        fs::create_dir_all(&dir).map_err(|e| CacheError::io(&dir, e))?;
        FileLock::acquire_blocking(&self.leases_dir().join("blobs.lock"))
    }

    /// A snapshot lease file named `holder` is a work marker: `Some(alive)` says whether its
    /// work still runs; `None`, it is another kind of lease.
    pub(super) fn work_marker_alive(&self, holder_file: &str) -> Option<bool> {
        let id = holder_file.strip_prefix(MARKER_PREFIX)?;
        Some(self.work_alive(id))
    }

    /// Removes what dead holders left: their files and every marker naming them.
    pub fn reclaim_dead_work(&self) -> Result<usize, CacheError> {
        let dir = self.work_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(CacheError::io(dir, e)),
        };
        let mut dead = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !self.work_alive(&name) {
                dead.push(name);
            }
        }
        if dead.is_empty() {
            return Ok(0);
        }
        for marker in self.markers_of(&dead)? {
            let _ = fs::remove_file(marker);
        }
        for id in &dead {
            tracing::info!(work = %id, "reclaimed the lease of work that is no longer running");
            let _ = fs::remove_file(dir.join(id));
        }
        Ok(dead.len())
    }

    /// Every marker file of the given works.
    fn markers_of(&self, ids: &[String]) -> Result<Vec<PathBuf>, CacheError> {
        let mut found = Vec::new();
        let wanted_snapshot: Vec<String> = ids
            .iter()
            .map(|id| format!("{MARKER_PREFIX}{id}"))
            .collect();
        let root = self.leases_dir();
        for dir in fs::read_dir(&root)
            .map_err(|e| CacheError::io(&root, e))?
            .filter_map(Result::ok)
        {
            let is_blobs = dir.file_name() == "blobs";
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.filter_map(Result::ok) {
                let name = file.file_name().to_string_lossy().into_owned();
                let ours = if is_blobs {
                    name.split_once('.')
                        .is_some_and(|(_, id)| ids.iter().any(|w| w == id))
                } else {
                    wanted_snapshot.contains(&name)
                };
                if ours {
                    found.push(file.path());
                }
            }
        }
        Ok(found)
    }
}

impl WorkLease {
    /// The work's id (its file under `leases/work/`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Holds a snapshot (which may not exist yet): from now on it is not removed while this
    /// work lives. Recorded under the snapshot's lock, where removals are decided, so after
    /// this returns the snapshot either exists and stays, or is absent.
    pub async fn hold_snapshot(&self, snapshot: &Digest) -> Result<(), CacheError> {
        if self.holds_snapshot(snapshot) {
            return Ok(());
        }
        let mut labels = BTreeMap::new();
        labels.insert(OWNER.to_string(), OWNER_WORK.to_string());
        labels.insert("pid".to_string(), std::process::id().to_string());
        let lease = Lease {
            snapshot: snapshot.clone(),
            holder: format!("{MARKER_PREFIX}{}", self.id),
            target: None,
            reference: self.what.clone(),
            created: now(),
            labels,
        };
        let lock = self
            .cache
            .snapshots_dir()
            .join(format!("{}.lock", snapshot.hex()));
        let _held = FileLock::acquire(lock).await?;
        self.cache.take_lease(&lease)?;
        self.snapshots
            .lock()
            .expect("lease state lock")
            .push(snapshot.clone());
        Ok(())
    }

    fn holds_snapshot(&self, snapshot: &Digest) -> bool {
        self.snapshots
            .lock()
            .expect("lease state lock")
            .contains(snapshot)
    }

    /// Holds blobs (present or not): from now on none of them is removed while this work
    /// lives. Recorded under the lock blob removals are decided under.
    pub fn hold_blobs<'a>(
        &self,
        blobs: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<(), CacheError> {
        let mut held = self.blobs.lock().expect("lease state lock");
        let new: Vec<&Digest> = blobs.into_iter().filter(|b| !held.contains(b)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let _markers = self.cache.blob_markers_lock()?;
        for blob in new {
            let path = self.blob_marker(blob);
            fs::write(&path, b"").map_err(|e| CacheError::io(&path, e))?;
            held.push(blob.clone());
        }
        Ok(())
    }

    fn blob_marker(&self, blob: &Digest) -> PathBuf {
        self.cache
            .blob_markers_dir()
            .join(format!("{}.{}", blob.hex(), self.id))
    }
}

impl Drop for WorkLease {
    fn drop(&mut self) {
        let holder = format!("{MARKER_PREFIX}{}", self.id);
        for snapshot in std::mem::take(self.snapshots.get_mut().expect("lease state lock")) {
            let _ = self.cache.drop_lease(&snapshot, &holder);
        }
        for blob in std::mem::take(self.blobs.get_mut().expect("lease state lock")) {
            let _ = fs::remove_file(self.blob_marker(&blob));
        }
        let _ = fs::remove_file(self.cache.work_dir().join(&self.id));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease on a fresh cache holding one snapshot and one blob.
    fn holding(dir: &std::path::Path) -> (Cache, WorkLease, Digest, Digest) {
        let cache = Cache::open(dir).unwrap();
        let blob = Digest::of_bytes(b"blob");
        let snapshot = Digest::of_bytes(b"snapshot");
        let work = cache.begin_work("pull r/m:1").unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(work.hold_snapshot(&snapshot))
            .unwrap();
        work.hold_blobs([&blob]).unwrap();
        (cache, work, snapshot, blob)
    }

    #[test]
    fn a_live_lease_holds_and_a_dropped_one_releases() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, work, snapshot, blob) = holding(dir.path());
        assert!(cache.is_leased(&snapshot).unwrap());
        assert!(cache.blob_is_leased(&blob).unwrap());
        assert_eq!(cache.reclaim_dead_work().unwrap(), 0);
        drop(work);
        assert!(!cache.is_leased(&snapshot).unwrap());
        assert!(!cache.blob_is_leased(&blob).unwrap());
    }

    #[test]
    fn a_dead_holders_markers_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed holder leaves: its file (nobody holds its lock) and its markers.
        let (cache, work, snapshot, blob) = holding(dir.path());
        let left: Vec<(PathBuf, Vec<u8>)> = walk(&cache.leases_dir());
        drop(work);
        for (path, body) in &left {
            fs::write(path, body).unwrap();
        }
        assert!(!cache.is_leased(&snapshot).unwrap());
        assert!(!cache.blob_is_leased(&blob).unwrap());
        assert_eq!(cache.reclaim_dead_work().unwrap(), 1);
        assert!(walk(&cache.leases_dir()).is_empty());
    }

    /// Every file under `dir` (lock files aside) with its bytes.
    fn walk(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else if path.extension().is_none_or(|e| e != "lock") {
                found.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
        found
    }
}

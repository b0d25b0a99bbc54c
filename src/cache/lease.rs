//! Leases: who holds a snapshot. One small JSON file per holder under
//! `leases/<snapshot-hex>/<holder-escaped>`: durable ones (a published CSI volume, a warm-list
//! entry) and the markers of work still running (`work_lease.rs`). A snapshot with a lease
//! must never be removed by garbage collection. The cache does not interpret durable holders;
//! their owners (the CSI node service, the warm loop) put what they need in `labels`.

use super::error::CacheError;
use super::lock::FileLock;
use super::{write_atomically, Cache};
use crate::digest::Digest;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

/// One holder of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The snapshot held.
    pub snapshot: Digest,
    /// Who holds it; unique per snapshot (any text, escaped into the file name).
    pub holder: String,
    /// Where the holder exposes the snapshot (a mount target), if anywhere.
    #[serde(default)]
    pub target: Option<PathBuf>,
    /// The reference the snapshot was asked for, for people reading `leases/`.
    #[serde(default)]
    pub reference: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
    /// The holder's own details.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Cache {
    pub fn leases_dir(&self) -> PathBuf {
        self.root().join("leases")
    }

    fn lease_path(&self, snapshot: &Digest, holder: &str) -> PathBuf {
        self.leases_dir()
            .join(snapshot.hex())
            .join(escape_holder(holder))
    }

    /// Records a lease (replacing the holder's previous record for this snapshot).
    pub fn take_lease(&self, lease: &Lease) -> Result<(), CacheError> {
        let path = self.lease_path(&lease.snapshot, &lease.holder);
        let dir = path.parent().expect("lease path has a parent");
        fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
        let json = serde_json::to_vec_pretty(lease).expect("lease serialises");
        write_atomically(&path, &json)
    }

    /// Takes a lease on a snapshot that must still exist, under the snapshot's lock (the lock
    /// garbage collection holds while it removes one). `Ok(false)`: the snapshot is gone.
    pub async fn lease_snapshot(&self, lease: &Lease) -> Result<bool, CacheError> {
        let lock = self
            .snapshots_dir()
            .join(format!("{}.lock", lease.snapshot.hex()));
        let _held = FileLock::acquire(lock).await?;
        if self.snapshot(&lease.snapshot)?.is_none() {
            return Ok(false);
        }
        self.take_lease(lease)?;
        Ok(true)
    }

    /// Removes a lease; returns whether it existed. The per-snapshot directory stays (an
    /// empty one holds nothing), so a concurrent `take_lease` never loses its directory.
    pub fn drop_lease(&self, snapshot: &Digest, holder: &str) -> Result<bool, CacheError> {
        let path = self.lease_path(snapshot, holder);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    /// Whether anything holds the snapshot: a durable lease (an unreadable lease file still
    /// counts) or the marker of work still running. A dead work's marker is removed here.
    pub fn is_leased(&self, snapshot: &Digest) -> Result<bool, CacheError> {
        let dir = self.leases_dir().join(snapshot.hex());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CacheError::io(dir, e)),
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.work_marker_alive(&name) {
                Some(false) => {
                    let _ = fs::remove_file(entry.path());
                }
                Some(true) | None => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Every readable lease. Files that do not parse are logged and skipped (never deleted:
    /// they still protect their snapshot through [`Cache::is_leased`]).
    pub fn leases(&self) -> Result<Vec<Lease>, CacheError> {
        let root = self.leases_dir();
        let mut found = Vec::new();
        for dir in fs::read_dir(&root).map_err(|e| CacheError::io(&root, e))? {
            let dir = dir.map_err(|e| CacheError::io(&root, e))?;
            let Ok(snapshot) = Digest::from_hex(&dir.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.filter_map(Result::ok) {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || self.work_marker_alive(&name) == Some(false) {
                    continue;
                }
                let path = file.path();
                match fs::read(&path).map(|b| serde_json::from_slice::<Lease>(&b)) {
                    Ok(Ok(lease)) if lease.snapshot == snapshot => found.push(lease),
                    // Its holder let go between the listing and the read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    _ => {
                        tracing::warn!(path = %path.display(), "unreadable lease file; it keeps its snapshot but is otherwise ignored")
                    }
                }
            }
        }
        Ok(found)
    }
}

/// Holder text as a single safe file name: `[A-Za-z0-9_-]` and inner dots kept, everything
/// else `%XX`; very long names become a hash.
fn escape_holder(holder: &str) -> String {
    let mut out = String::with_capacity(holder.len());
    for (i, byte) in holder.bytes().enumerate() {
        let keep =
            byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || (byte == b'.' && i > 0);
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() || out.len() > 200 {
        return format!("h-{}", Digest::of_bytes(holder.as_bytes()).hex());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_escape_to_safe_names() {
        assert_eq!(escape_holder("csi-abc.1"), "csi-abc.1");
        assert_eq!(escape_holder("../x"), "%2E.%2Fx");
        assert_eq!(escape_holder("a/b c"), "a%2Fb%20c");
        assert!(escape_holder(&"x".repeat(300)).starts_with("h-"));
        assert!(escape_holder("").starts_with("h-"));
    }

    #[test]
    fn take_list_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let snapshot = Digest::of_bytes(b"model");
        assert!(!cache.is_leased(&snapshot).unwrap());
        let lease = Lease {
            snapshot: snapshot.clone(),
            holder: "vol/1".into(),
            target: Some("/pods/a".into()),
            reference: "r/m:1".into(),
            created: 1,
            labels: BTreeMap::new(),
        };
        cache.take_lease(&lease).unwrap();
        assert!(cache.is_leased(&snapshot).unwrap());
        assert_eq!(cache.leases().unwrap(), vec![lease]);
        assert!(cache.drop_lease(&snapshot, "vol/1").unwrap());
        assert!(!cache.drop_lease(&snapshot, "vol/1").unwrap());
        assert!(!cache.is_leased(&snapshot).unwrap());
    }
}

//! Leftovers of killed writers: the hidden temporary files a process writes and renames into
//! place (`.tmp-*` beside lease files, snapshot descriptions and tag records; a work lease's
//! `leases/work/.<id>` before it is locked and renamed). A writer killed between write and
//! rename leaves one behind; nothing reads it, and garbage collection removes it once it is
//! older than any live writer would leave it.

use super::Cache;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

impl Cache {
    /// Removes hidden temporary files older than `max_age`; returns how many went.
    pub fn remove_leftovers(&self, max_age: Duration) -> usize {
        let now = SystemTime::now();
        let mut removed = 0;
        let root = self.root();
        for dir in ["leases", "snapshots", "refs"] {
            removed += sweep(&root.join(dir), now, max_age);
        }
        removed
    }
}

/// Sweeps one tree: hidden regular files (never `.lock` files or `.building-*` trees, which
/// their own owners manage) past `max_age`.
fn sweep(dir: &Path, now: SystemTime, max_age: Duration) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_dir() {
            if !name.starts_with('.') {
                removed += sweep(&entry.path(), now, max_age);
            }
            continue;
        }
        let temporary = name.starts_with(".tmp-") || is_unrenamed_work(dir, &name);
        if !kind.is_file() || !temporary {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > max_age);
        if old && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed a temporary file a killed writer left");
            removed += 1;
        }
    }
    removed
}

/// `leases/work/.<id>`: a work lease its holder never got to rename.
fn is_unrenamed_work(dir: &Path, name: &str) -> bool {
    dir.file_name().is_some_and(|d| d == "work")
        && name.starts_with('.')
        && !name.ends_with(".lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_temporaries_go_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let leases = cache.root().join("leases");
        fs::create_dir_all(leases.join("abc")).unwrap();
        fs::create_dir_all(leases.join("work")).unwrap();
        let left = [
            leases.join("abc/.tmp-1-2-0"),
            leases.join("work/.9-9-9"),
            cache.root().join("snapshots/.tmp-3-4-0"),
        ];
        let kept = [
            leases.join("abc/work-1-2-3"),
            leases.join("blobs.lock"),
            cache.root().join("snapshots/abc.lock"),
        ];
        for path in left.iter().chain(&kept) {
            fs::write(path, b"x").unwrap();
        }
        assert_eq!(
            cache.remove_leftovers(Duration::from_secs(60)),
            0,
            "young ones stay"
        );
        assert_eq!(cache.remove_leftovers(Duration::ZERO), left.len());
        assert!(left.iter().all(|p| !p.exists()));
        assert!(kept.iter().all(|p| p.exists()));
    }
}

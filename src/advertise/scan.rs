//! What the cache holds complete, as the node advertises it: every whole-model snapshot (the
//! snapshot of a manifest, not of a `--subpath`/`--include` choice or a forced format) with
//! the references that reach it offline: its manifest digest, the digests of image indexes
//! that resolve to it, the tags `refs/` records for it (what an `IfNotPresent` tag pull on this
//! node would use), and the names the warm list gives it. Also each model's size, last use
//! and place in the warm list, which decide what is advertised first.
//!
//! A scan reads directory listings, file metadata and the small `refs/` records; a snapshot's
//! description and an index's bytes are read once and remembered (both are immutable under
//! their names), so rescanning every few seconds costs little at hundreds of models.

use crate::artifact::{self, Parsed};
use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::warm::WarmList;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One model the cache holds complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The snapshot, named by its manifest's digest.
    pub snapshot: Digest,
    /// Digests a by-digest reference may name it by: the manifest's, and those of image
    /// indexes that resolve to it.
    pub digests: BTreeSet<Digest>,
    /// Tag references (no digest) the cache resolves to it, each with the digest it records
    /// for the tag (the manifest's, or an index's that resolves to it).
    pub tags: BTreeMap<String, Digest>,
    /// Warm-list names given to it, each with the digest its entry resolves to.
    pub names: BTreeMap<String, Digest>,
    /// The model's bytes (its files' sizes).
    pub bytes: u64,
    /// When a pull or publish last used it.
    pub last_used: SystemTime,
    /// Position of the first warm-list entry that keeps it, if any.
    pub warm: Option<usize>,
}

/// A snapshot's description as far as advertising needs it, remembered per inode.
#[derive(Clone, Debug)]
struct Described {
    inode: u64,
    /// The snapshot is of a whole manifest (its name is a stored manifest's digest).
    whole: bool,
    reference: String,
    bytes: u64,
}

/// Scans one cache, remembering what does not change between scans.
pub struct Scanner {
    cache: Cache,
    warm_list: Option<PathBuf>,
    described: HashMap<String, Described>,
    /// What each stored manifest digest resolves to when it is an index (`None`: not one).
    children: HashMap<Digest, Option<Digest>>,
}

impl Scanner {
    pub fn new(cache: Cache, warm_list: Option<PathBuf>) -> Self {
        Scanner {
            cache,
            warm_list,
            described: HashMap::new(),
            children: HashMap::new(),
        }
    }

    /// The complete models, the warm list's first (in its order), then the most recently
    /// used.
    pub fn scan(&mut self) -> Result<Vec<Held>, CacheError> {
        let mut held = self.snapshots()?;
        self.add_reference_digests(&mut held);
        for (reference, digest) in self.tags() {
            if let Some(snapshot) = self.resolve(&digest, &held) {
                let model = held.get_mut(&snapshot).expect("resolved to a held model");
                model.digests.insert(digest.clone());
                model.tags.insert(reference, digest);
            }
        }
        self.add_warm_list(&mut held);
        let mut models: Vec<Held> = held.into_values().collect();
        models.sort_by(|a, b| {
            (a.warm.is_none(), a.warm)
                .cmp(&(b.warm.is_none(), b.warm))
                .then(b.last_used.cmp(&a.last_used))
                .then(a.snapshot.cmp(&b.snapshot))
        });
        Ok(models)
    }

    /// Every complete whole-model snapshot: its description and its directory both present
    /// (a commit writes the description first, a removal deletes it first).
    fn snapshots(&mut self) -> Result<HashMap<Digest, Held>, CacheError> {
        let dir = self.cache.snapshots_dir();
        let entries = fs::read_dir(&dir).map_err(|e| CacheError::io(&dir, e))?;
        let mut seen = BTreeSet::new();
        let mut held = HashMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(digest) = Digest::from_hex(hex) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !self.cache.snapshot_dir(&digest).is_dir() {
                continue;
            }
            seen.insert(hex.to_string());
            let known = self
                .described
                .get(hex)
                .filter(|d| d.inode == meta.ino())
                .cloned();
            let described = match known {
                Some(described) => described,
                None => {
                    let Some(info) = self.cache.snapshot(&digest)? else {
                        continue;
                    };
                    let described = Described {
                        inode: meta.ino(),
                        whole: self.cache.manifest(&digest)?.is_some(),
                        reference: info.reference.clone(),
                        bytes: info.total_size(),
                    };
                    self.described.insert(hex.to_string(), described.clone());
                    described
                }
            };
            if !described.whole {
                continue;
            }
            held.insert(
                digest.clone(),
                Held {
                    snapshot: digest.clone(),
                    digests: BTreeSet::from([digest]),
                    tags: BTreeMap::new(),
                    names: BTreeMap::new(),
                    bytes: described.bytes,
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    warm: None,
                },
            );
        }
        self.described.retain(|hex, _| seen.contains(hex));
        Ok(held)
    }

    /// A snapshot pulled as `repo@sha256:<index>` is reachable by the index's digest too.
    fn add_reference_digests(&mut self, held: &mut HashMap<Digest, Held>) {
        let pulled_by: Vec<(Digest, Digest)> = held
            .keys()
            .filter_map(|snapshot| {
                let described = self.described.get(snapshot.hex())?;
                let reference: Reference = described.reference.parse().ok()?;
                let digest = reference.digest()?;
                (digest != snapshot).then(|| (snapshot.clone(), digest.clone()))
            })
            .collect();
        for (snapshot, digest) in pulled_by {
            if self.resolve(&digest, held).as_ref() == Some(&snapshot) {
                held.get_mut(&snapshot)
                    .expect("a held snapshot")
                    .digests
                    .insert(digest);
            }
        }
    }

    /// Every tag `refs/<registry>/<repository>/<tag>` records, as a normalised reference
    /// with the digest recorded.
    fn tags(&self) -> Vec<(String, Digest)> {
        let refs = self.cache.root().join("refs");
        let mut out = Vec::new();
        let Ok(registries) = fs::read_dir(&refs) else {
            return out;
        };
        for registry in registries.flatten() {
            let Some(host) = registry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            walk_tags(&registry.path(), &host, &mut Vec::new(), &mut out);
        }
        out
    }

    /// The warm list's entries: their names, and their place for the models they resolve to.
    fn add_warm_list(&mut self, held: &mut HashMap<Digest, Held>) {
        let Some(path) = self.warm_list.clone() else {
            return;
        };
        let list = match WarmList::load(&path) {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %crate::errors::render(&e), "warm list unreadable; advertising no warm names");
                return;
            }
        };
        for (position, entry) in list.models.iter().enumerate() {
            let Ok(reference) = entry.reference.parse::<Reference>() else {
                continue;
            };
            let top = match reference.digest() {
                Some(digest) => Some(digest.clone()),
                None => self
                    .cache
                    .tag(&crate::pull::tag_key(&reference))
                    .ok()
                    .flatten(),
            };
            let Some(top) = top else { continue };
            let Some(snapshot) = self.resolve(&top, held) else {
                continue;
            };
            let model = held.get_mut(&snapshot).expect("resolved to a held model");
            model.warm = Some(model.warm.map_or(position, |p| p.min(position)));
            if let Some(name) = &entry.name {
                model.names.insert(name.clone(), top);
            }
        }
    }

    /// The held snapshot `digest` reaches: itself, or the manifest an index chooses as a
    /// pull without `--variant` would (at most two index levels, as pulls follow).
    fn resolve(&mut self, digest: &Digest, held: &HashMap<Digest, Held>) -> Option<Digest> {
        let mut digest = digest.clone();
        for _ in 0..3 {
            if held.contains_key(&digest) {
                return Some(digest);
            }
            digest = self.child(&digest)?;
        }
        None
    }

    /// The manifest the index stored under `digest` resolves to; `None` for a manifest that
    /// is not an index, or one the cache does not hold.
    fn child(&mut self, digest: &Digest) -> Option<Digest> {
        if let Some(known) = self.children.get(digest) {
            return known.clone();
        }
        let bytes = self.cache.manifest(digest).ok().flatten()?;
        let child = match artifact::manifest::parse(&bytes, None) {
            Ok(Parsed::Index(entries)) => match artifact::kitops::variants(&bytes, &entries) {
                Some(variants) => artifact::kitops::choose(&variants, None)
                    .ok()
                    .map(|v| v.manifest.digest.clone()),
                None => artifact::manifest::select_from_index(&entries).map(|d| d.digest.clone()),
            },
            _ => None,
        }
        .filter(|child| child != digest);
        self.children.insert(digest.clone(), child.clone());
        child
    }
}

/// Collects the tag records under `dir` (`repository` holds the path walked so far).
fn walk_tags(
    dir: &Path,
    host: &str,
    repository: &mut Vec<String>,
    out: &mut Vec<(String, Digest)>,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        // Temporary files of a record being written (`.tmp-*`): tags never start with '.'.
        if name.starts_with('.') {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if repository.len() < 32 {
                repository.push(name);
                walk_tags(&entry.path(), host, repository, out);
                repository.pop();
            }
            continue;
        }
        if repository.is_empty() || !kind.is_file() {
            continue;
        }
        let text = format!("{host}/{}:{name}", repository.join("/"));
        let (Ok(reference), Ok(recorded)) =
            (text.parse::<Reference>(), fs::read_to_string(entry.path()))
        else {
            continue;
        };
        if reference.digest().is_some() {
            continue;
        }
        if let Ok(digest) = recorded.trim().parse::<Digest>() {
            out.push((reference.to_string(), digest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{SnapshotFile, SnapshotInfo, TagKey};
    use crate::safe_path::SafePath;

    /// A manifest (distinct per seed) stored in the cache.
    fn manifest(cache: &Cache, seed: &str) -> Digest {
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"annotations":{{"seed":"{seed}"}}}}"#
        );
        cache.store_manifest(bytes.as_bytes()).unwrap()
    }

    fn index(cache: &Cache, children: &[&Digest]) -> Digest {
        let entries: Vec<String> = children
            .iter()
            .map(|d| {
                format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":1}}"#)
            })
            .collect();
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            entries.join(",")
        );
        cache.store_manifest(bytes.as_bytes()).unwrap()
    }

    /// A committed snapshot named `id` of `bytes` bytes, as a pull leaves it.
    fn snapshot(cache: &Cache, id: &Digest, reference: &str, bytes: u64) {
        let info = SnapshotInfo {
            reference: reference.to_string(),
            digest: id.clone(),
            format: "oras".into(),
            files: vec![SnapshotFile {
                path: SafePath::new("model.gguf").unwrap(),
                size: bytes,
                digest: Digest::of_bytes(b"file"),
            }],
            created: 0,
            blobs: Vec::new(),
        };
        let dir = cache.snapshot_dir(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            cache.snapshots_dir().join(format!("{}.json", id.hex())),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
    }

    fn tag(cache: &Cache, reference: &str, digest: &Digest) {
        let r: Reference = reference.parse().unwrap();
        cache
            .store_tag(
                &TagKey {
                    registry: r.registry(),
                    repository: r.repository(),
                    tag: r.tag_or_latest(),
                },
                digest,
            )
            .unwrap();
    }

    #[test]
    fn whole_snapshots_with_their_tags_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let a = manifest(&cache, "a");
        snapshot(&cache, &a, "127.0.0.1:5000/models/a:v1", 1000);
        tag(&cache, "127.0.0.1:5000/models/a:v1", &a);
        tag(&cache, "127.0.0.1:5000/models/a:stable", &a);
        // A tag whose model is gone is not advertised.
        let gone = manifest(&cache, "gone");
        tag(&cache, "127.0.0.1:5000/models/gone:v1", &gone);
        // A `--subpath` snapshot is not the whole model: no manifest has its name.
        let partial = Digest::of_bytes(b"derived id");
        snapshot(&cache, &partial, "127.0.0.1:5000/models/a:v1", 10);
        // Half a snapshot: a description without its directory.
        let half = manifest(&cache, "half");
        snapshot(&cache, &half, "127.0.0.1:5000/models/half:v1", 10);
        fs::remove_dir(cache.snapshot_dir(&half)).unwrap();

        let held = Scanner::new(cache.clone(), None).scan().unwrap();
        assert_eq!(held.len(), 1, "{held:?}");
        let model = &held[0];
        assert_eq!(model.snapshot, a);
        assert_eq!(model.digests, BTreeSet::from([a.clone()]));
        assert_eq!(
            model.tags,
            BTreeMap::from([
                ("127.0.0.1:5000/models/a:stable".to_string(), a.clone()),
                ("127.0.0.1:5000/models/a:v1".to_string(), a.clone()),
            ])
        );
        assert_eq!(model.bytes, 1000);
        assert_eq!(model.warm, None);
    }

    #[test]
    fn an_index_reaches_the_manifest_it_resolves_to() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let child = manifest(&cache, "child");
        let other = manifest(&cache, "other platform");
        let by_tag = index(&cache, &[&child, &other]);
        snapshot(&cache, &child, "docker.io/org/m:v2", 5);
        tag(&cache, "org/m:v2", &by_tag);
        // A snapshot whose recorded reference names an index resolving elsewhere: not its name.
        let by_digest = index(&cache, &[&child]);
        let pinned = manifest(&cache, "pinned");
        snapshot(&cache, &pinned, &format!("h.example/p@{by_digest}"), 5);
        let held = Scanner::new(cache.clone(), None).scan().unwrap();
        let model = held.iter().find(|m| m.snapshot == child).unwrap();
        assert_eq!(
            model.digests,
            BTreeSet::from([child.clone(), by_tag.clone()])
        );
        assert_eq!(
            model.tags,
            BTreeMap::from([("docker.io/org/m:v2".to_string(), by_tag.clone())])
        );
        let pinned_model = held.iter().find(|m| m.snapshot == pinned).unwrap();
        assert_eq!(pinned_model.digests, BTreeSet::from([pinned.clone()]));

        // Pulled as `repo@sha256:<index>`: the index's digest names the snapshot too.
        let via = index(&cache, &[&pinned]);
        fs::remove_file(cache.snapshots_dir().join(format!("{}.json", pinned.hex()))).unwrap();
        snapshot(&cache, &pinned, &format!("h.example/p@{via}"), 5);
        let held = Scanner::new(cache.clone(), None).scan().unwrap();
        let pinned_model = held.iter().find(|m| m.snapshot == pinned).unwrap();
        assert_eq!(pinned_model.digests, BTreeSet::from([pinned.clone(), via]));
    }

    #[test]
    fn warm_entries_come_first_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let old = manifest(&cache, "old");
        let recent = manifest(&cache, "recent");
        let warm = manifest(&cache, "warm");
        for (d, r) in [
            (&old, "h.example/old:v1"),
            (&recent, "h.example/recent:v1"),
            (&warm, "h.example/warm:v1"),
        ] {
            snapshot(&cache, d, r, 1);
            tag(&cache, r, d);
        }
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let touch = |d: &Digest, t| {
            let f = fs::File::options()
                .write(true)
                .open(cache.snapshots_dir().join(format!("{}.json", d.hex())))
                .unwrap();
            f.set_modified(t).unwrap();
        };
        touch(&old, at(1_000));
        touch(&recent, at(3_000));
        touch(&warm, at(2_000));
        let list = dir.path().join("warm.yaml");
        fs::write(
            &list,
            format!(
                "models:\n  - reference: h.example/missing:v1\n    name: missing\n  \
                 - reference: h.example/warm:v1\n    name: tiny\n  - reference: h.example/old@{old}\n"
            ),
        )
        .unwrap();
        let mut scanner = Scanner::new(cache.clone(), Some(list.clone()));
        let held = scanner.scan().unwrap();
        let order: Vec<&Digest> = held.iter().map(|m| &m.snapshot).collect();
        assert_eq!(order, [&warm, &old, &recent]);
        assert_eq!(held[0].warm, Some(1));
        assert_eq!(
            held[0].names,
            BTreeMap::from([("tiny".to_string(), warm.clone())])
        );
        assert_eq!(held[1].warm, Some(2));
        assert!(held[2].names.is_empty());

        // A model removed (GC, `cache rm`) is gone from the next scan; an unreadable warm
        // list only loses the names.
        fs::remove_file(cache.snapshots_dir().join(format!("{}.json", warm.hex()))).unwrap();
        fs::write(&list, "models: [").unwrap();
        let held = scanner.scan().unwrap();
        let order: Vec<&Digest> = held.iter().map(|m| &m.snapshot).collect();
        assert_eq!(order, [&recent, &old]);
        assert!(held.iter().all(|m| m.names.is_empty() && m.warm.is_none()));
    }
}

//! Manifest in, file plan out: which blobs to fetch and where each lands in the model tree.
//! Pure: no I/O. One module per packaging format; detection picks one unless `--format` does.

pub mod describe;
pub mod docker;
pub mod image;
pub mod kit_filter;
pub mod kitfile;
pub mod kitops;
pub mod manifest;
pub mod modelpack;
pub mod oras;
pub mod select;

pub use manifest::{Descriptor, Manifest, Parsed};
pub use select::{Kind, Selection, SelectionError};

use crate::digest::Digest;
use crate::safe_path::{SafePath, UnsafePath};
use std::collections::BTreeMap;

/// Packaging formats tugboat understands.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ORAS files (titled layers) and directories.
    Oras,
    /// CNCF ModelPack (model-spec).
    Modelpack,
    /// KitOps ModelKit.
    Kitops,
    /// An OCI/Docker image whose filesystem holds the model (KServe Modelcars).
    Image,
    /// A Docker model artifact (`docker model push`, Docker Hub `ai/*`).
    Docker,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Oras => "oras",
            Format::Modelpack => "modelpack",
            Format::Kitops => "kitops",
            Format::Image => "image",
            Format::Docker => "docker",
        }
    }
}

/// What to do with one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The blob is the file at `path` (hard-linked from the cache).
    File { path: SafePath },
    /// The blob is a ModelKit's config, the Kitfile as JSON: written at `path` as the YAML
    /// `kit unpack` writes (see `kitfile`).
    Kitfile { path: SafePath },
    /// The blob is a tar archive (plain, gzip or zstd: told by its first bytes) to unpack.
    Unpack(Unpack),
}

/// How one archive layer is unpacked into the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpack {
    /// Every entry must lie at or below this archive path, else the layer is refused (an ORAS
    /// directory holds only `title/...`; a ModelPack tar only its `filepath`).
    pub within: Option<SafePath>,
    /// Image semantics: `.wh.` whiteouts delete what lower layers put there, and a later layer
    /// may replace a file. Elsewhere a path claimed twice is refused.
    pub overlay: bool,
    /// sha256 of the uncompressed tar stream, checked when given (`io.deis.oras.content.digest`).
    pub tar_digest: Option<Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEntry {
    pub blob: Descriptor,
    pub action: Action,
    /// The layer's kind (ModelPack, KitOps), for `--only` and `inspect`.
    pub kind: Option<Kind>,
}

impl PlanEntry {
    /// The model path this entry declares (a file's path, an archive's declared folder).
    pub fn declared_path(&self) -> Option<&SafePath> {
        match &self.action {
            Action::File { path } | Action::Kitfile { path } => Some(path),
            Action::Unpack(unpack) => unpack.within.as_ref(),
        }
    }
}

/// A Kitfile the manifest itself carries, with no blob of its own: `kit pack` in ModelPack
/// format puts it, as JSON, in the manifest's `ml.kitops.modelkit.kitfile` annotation, and
/// `kit unpack` writes it beside the model as YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestKitfile {
    pub path: SafePath,
    pub json: String,
}

/// The complete recipe for one model tree.
#[derive(Clone, Debug)]
pub struct Plan {
    pub format: Format,
    pub entries: Vec<PlanEntry>,
    /// Written after the entries, unless one of them placed a file at its path.
    pub kitfile: Option<ManifestKitfile>,
    pub annotations: BTreeMap<String, String>,
    /// Filters applied to archive entries while unpacking (file entries are already filtered).
    pub selection: Selection,
    /// Layers the selection left out: never downloaded.
    pub skipped: Vec<PlanEntry>,
}

impl Plan {
    /// Bytes of every distinct blob the plan needs.
    pub fn total_bytes(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter(|e| seen.insert(e.blob.digest.clone()))
            .map(|e| e.blob.size)
            .sum()
    }

    /// Bytes the unpacked archives will take at least (their compressed size; the real
    /// figure is known only while unpacking).
    pub fn unpacked_bytes_estimate(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| matches!(e.action, Action::Unpack(_)))
            .map(|e| e.blob.size)
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("malformed manifest: {detail}")]
    Malformed { detail: String },
    #[error("annotation {annotation} names an unsafe path")]
    UnsafeName {
        annotation: &'static str,
        #[source]
        source: UnsafePath,
    },
    #[error("two layers claim the path {path:?}")]
    DuplicatePath { path: String },
    #[error("layer {digest}: its title {title:?} and its filepath {filepath:?} disagree; refusing an ambiguous layer")]
    NamesDisagree {
        digest: String,
        title: String,
        filepath: String,
    },
    #[error(
        "the artifact has no files tugboat knows how to place (format {format}); try --format"
    )]
    Empty { format: &'static str },
    #[error("nothing in this {format} artifact matches the selection (--subpath/--include/--exclude/--only); it has {layers} layer(s)")]
    NothingSelected { format: &'static str, layers: usize },
    #[error("--only selects ModelPack/KitOps layer kinds; this artifact is {format}, use --include/--exclude instead")]
    KindsUnsupported { format: &'static str },
    #[error("{format} layer {digest} has media type {media_type:?}, which tugboat does not know how to place")]
    UnknownLayer {
        format: &'static str,
        digest: String,
        media_type: String,
    },
    #[error("this is a ModelKit index of several variants; name one with --variant (CSI: the `variant` volume attribute). Variants: {variants}")]
    VariantNeeded { variants: String },
    #[error("no variant of this ModelKit index is {wanted:?}; give its tag, a label value or key=value. Variants: {variants}")]
    NoSuchVariant { wanted: String, variants: String },
    #[error("--variant {wanted:?} matches several variants of this ModelKit index: {variants}; name one by its tag or key=value")]
    AmbiguousVariant { wanted: String, variants: String },
    #[error("--variant {wanted:?} was given, but this artifact is not a ModelKit index (it has no variants)")]
    NotAnIndex { wanted: String },
    #[error("tugboat does not know this kind of artifact (artifactType {artifact_type}, config {config}, layers {layers}); if it holds files tugboat can place, name the packaging with --format oras|modelpack|kitops|image")]
    UnknownArtifact {
        artifact_type: String,
        config: String,
        layers: String,
    },
    #[error("format {format} is not supported by this build: {detail}")]
    Unsupported {
        format: &'static str,
        detail: String,
    },
}

/// Detects the format of `manifest` (unless `forced`) and builds its plan with everything.
pub fn plan(manifest: &Manifest, forced: Option<Format>) -> Result<Plan, ArtifactError> {
    plan_selected(manifest, forced, &Selection::default())
}

/// Detects the format (unless `forced`) and builds the plan `selection` asks for.
pub fn plan_selected(
    manifest: &Manifest,
    forced: Option<Format>,
    selection: &Selection,
) -> Result<Plan, ArtifactError> {
    let format = match forced {
        Some(format) => format,
        None => detect(manifest)?,
    };
    check_names_agree(manifest)?;
    let all = match format {
        Format::Oras => oras::plan(manifest)?,
        Format::Modelpack => modelpack::plan(manifest)?,
        Format::Kitops => kitops::plan(manifest)?,
        Format::Image => image::plan(manifest)?,
        Format::Docker => docker::plan(manifest)?,
    };
    if all.is_empty() {
        return Err(ArtifactError::Empty {
            format: format.name(),
        });
    }
    if !selection.only().is_empty() && all.iter().all(|e| e.kind.is_none()) {
        return Err(ArtifactError::KindsUnsupported {
            format: format.name(),
        });
    }
    check_paths_disjoint(&all)?;
    let layers = all.len();
    let (mut entries, mut skipped) = (Vec::new(), Vec::new());
    for mut entry in all {
        let wanted = selection.wants_kind(entry.kind)
            && selection.wants_layer(&entry.blob.digest.to_string())
            && select_entry(&mut entry, selection);
        if wanted {
            entries.push(entry);
        } else {
            skipped.push(entry);
        }
    }
    if entries.is_empty() {
        return Err(ArtifactError::NothingSelected {
            format: format.name(),
            layers,
        });
    }
    let kitfile = match format {
        Format::Modelpack => modelpack::manifest_kitfile(manifest),
        _ => None,
    }
    .filter(|_| selection.wants_kind(Some(Kind::Config)))
    .and_then(|kitfile| match selection.reroot(&kitfile.path) {
        Some(Some(path)) if selection.wants_path(&path) => {
            Some(ManifestKitfile { path, ..kitfile })
        }
        _ => None,
    });
    Ok(Plan {
        format,
        entries,
        kitfile,
        annotations: manifest.annotations.clone(),
        selection: selection.clone(),
        skipped,
    })
}

/// Applies `--subpath` and the globs to one entry: files are moved or dropped here; an
/// archive is dropped only when its declared folder cannot hold anything wanted.
fn select_entry(entry: &mut PlanEntry, selection: &Selection) -> bool {
    match &mut entry.action {
        Action::File { path } | Action::Kitfile { path } => match selection.reroot(path) {
            Some(Some(moved)) if selection.wants_path(&moved) => {
                *path = moved;
                true
            }
            _ => false,
        },
        Action::Unpack(unpack) => {
            let Some(declared) = &unpack.within else {
                return true;
            };
            match selection.reroot(declared) {
                Some(Some(moved)) => selection.could_want_below(&moved),
                Some(None) => true,
                // The declared folder may still contain the subpath.
                None => selection
                    .subpath()
                    .is_some_and(|sub| sub.as_str().starts_with(&format!("{declared}/"))),
            }
        }
    }
}

/// The packaging of `manifest`; an artifact none of the formats recognise is refused with the
/// media types it carries (rather than failing later as a broken image).
fn detect(manifest: &Manifest) -> Result<Format, ArtifactError> {
    if kitops::detect(manifest) {
        Ok(Format::Kitops)
    } else if modelpack::detect(manifest) {
        Ok(Format::Modelpack)
    } else if docker::detect(manifest) {
        Ok(Format::Docker)
    } else if oras::detect(manifest) {
        Ok(Format::Oras)
    } else if image::detect(manifest) {
        Ok(Format::Image)
    } else {
        let mut layers: Vec<&str> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        layers.dedup();
        Err(ArtifactError::UnknownArtifact {
            artifact_type: manifest
                .artifact_type
                .clone()
                .unwrap_or_else(|| "(none)".into()),
            config: manifest.config.media_type.clone(),
            layers: if layers.is_empty() {
                "(none)".into()
            } else {
                layers.join(", ")
            },
        })
    }
}

/// A layer named twice (ORAS title and ModelPack filepath) must name one path.
fn check_names_agree(manifest: &Manifest) -> Result<(), ArtifactError> {
    for layer in &manifest.layers {
        let (Some(title), Some(filepath)) = (
            layer.annotations.get(oras::TITLE),
            layer
                .annotations
                .get(modelpack::FILEPATH)
                .or_else(|| layer.annotations.get(modelpack::CNAI_FILEPATH)),
        ) else {
            continue;
        };
        let same = match (SafePath::new(title), SafePath::new(filepath)) {
            (Ok(a), Ok(b)) => a == b,
            _ => title == filepath,
        };
        if !same {
            return Err(ArtifactError::NamesDisagree {
                digest: layer.digest.to_string(),
                title: title.clone(),
                filepath: filepath.clone(),
            });
        }
    }
    Ok(())
}

/// No two file entries may claim one path, nor may a file sit where another needs a folder.
fn check_paths_disjoint(entries: &[PlanEntry]) -> Result<(), ArtifactError> {
    let mut files = std::collections::BTreeSet::new();
    for entry in entries {
        if let Action::File { path } | Action::Kitfile { path } = &entry.action {
            if !files.insert(path.as_str().to_string()) {
                return Err(ArtifactError::DuplicatePath {
                    path: path.to_string(),
                });
            }
        }
    }
    let mut folders: Vec<&str> = entries
        .iter()
        .filter_map(|e| match &e.action {
            Action::Unpack(u) => u.within.as_ref().map(SafePath::as_str),
            Action::File { .. } | Action::Kitfile { .. } => None,
        })
        .collect();
    for path in &files {
        folders.extend(path.rsplit_once('/').map(|(parent, _)| parent));
    }
    for folder in folders {
        let mut prefix = String::new();
        for part in folder.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if files.contains(&prefix) {
                return Err(ArtifactError::DuplicatePath { path: prefix });
            }
        }
    }
    Ok(())
}

/// Parses a layer path annotation as a safe relative path.
fn annotated_path(annotation: &'static str, value: &str) -> Result<SafePath, ArtifactError> {
    SafePath::new(value).map_err(|source| ArtifactError::UnsafeName { annotation, source })
}

//! Manifest in, file plan out: which blobs to fetch and where each lands in the model tree.
//! Pure: no I/O. One module per packaging format; detection picks one unless `--format` does.

pub mod manifest;
pub mod oras;

pub use manifest::{Descriptor, Manifest, Parsed};

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
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Oras => "oras",
            Format::Modelpack => "modelpack",
            Format::Kitops => "kitops",
            Format::Image => "image",
        }
    }
}

/// What to do with one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The blob is the file at `path` (hard-linked from the cache).
    File { path: SafePath },
    /// The blob is a tar archive (maybe compressed) to unpack under `under`.
    Unpack { under: SafePath },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEntry {
    pub blob: Descriptor,
    pub action: Action,
}

/// The complete recipe for one model tree.
#[derive(Clone, Debug)]
pub struct Plan {
    pub format: Format,
    pub entries: Vec<PlanEntry>,
    pub annotations: BTreeMap<String, String>,
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
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("malformed manifest: {detail}")]
    Malformed { detail: String },
    #[error("annotation {annotation} names an unsafe path: {source}")]
    UnsafeName {
        annotation: &'static str,
        #[source]
        source: UnsafePath,
    },
    #[error("two layers claim the path {path:?}")]
    DuplicatePath { path: String },
    #[error(
        "the artifact has no files tugboat knows how to place (format {format}); try --format"
    )]
    Empty { format: &'static str },
    #[error("format {format} is not supported by this build: {detail}")]
    Unsupported {
        format: &'static str,
        detail: String,
    },
}

/// Detects the format of `manifest` (unless `forced`) and builds its plan.
pub fn plan(manifest: &Manifest, forced: Option<Format>) -> Result<Plan, ArtifactError> {
    let format = forced.unwrap_or_else(|| detect(manifest));
    let entries = match format {
        Format::Oras => oras::plan(manifest)?,
        other => {
            return Err(ArtifactError::Unsupported {
                format: other.name(),
                detail: "only ORAS file artifacts are handled so far".into(),
            })
        }
    };
    if entries.is_empty() {
        return Err(ArtifactError::Empty {
            format: format.name(),
        });
    }
    check_paths_disjoint(&entries)?;
    Ok(Plan {
        format,
        entries,
        annotations: manifest.annotations.clone(),
    })
}

fn detect(manifest: &Manifest) -> Format {
    if oras::detect(manifest) {
        Format::Oras
    } else {
        Format::Image
    }
}

/// No two file entries may claim one path, nor may a file sit where another needs a folder.
fn check_paths_disjoint(entries: &[PlanEntry]) -> Result<(), ArtifactError> {
    let mut files = std::collections::BTreeSet::new();
    for entry in entries {
        if let Action::File { path } = &entry.action {
            if !files.insert(path.as_str().to_string()) {
                return Err(ArtifactError::DuplicatePath {
                    path: path.to_string(),
                });
            }
        }
    }
    for path in &files {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() && files.contains(&prefix) {
                return Err(ArtifactError::DuplicatePath { path: prefix });
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
    }
    Ok(())
}

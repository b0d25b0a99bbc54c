//! `tugboat push DIR REF`: a minimal packager that uploads a directory as an ORAS-style
//! artifact (one layer per file, titled by its path), enough for demos, tests and CI.

use crate::digest::Digest;
use crate::errors::{io_kind, Classify, FailureKind};
use crate::materialize::stamp::WORK_DIR;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::safe_path::SafePath;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_ARTIFACT_TYPE: &str = "application/vnd.tugboat.model.v1";
pub const LAYER_MEDIA_TYPE: &str = "application/octet-stream";
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Input { path: PathBuf, detail: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What was pushed.
#[derive(Debug, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    pub digest: Digest,
    pub files: Vec<PushedFile>,
}

#[derive(Debug, serde::Serialize)]
pub struct PushedFile {
    pub path: String,
    pub size: u64,
    pub digest: Digest,
    pub uploaded: bool,
}

pub struct PushOptions {
    pub artifact_type: String,
    pub annotations: BTreeMap<String, String>,
    pub concurrency: usize,
}

/// Uploads every regular file under `dir` and then the manifest tagging them.
pub async fn push(
    registry: &RegistryClient,
    dir: &Path,
    reference: &Reference,
    options: &PushOptions,
) -> Result<PushReport, PushError> {
    let files = collect_files(dir)?;
    if files.is_empty() {
        return Err(PushError::Input {
            path: dir.to_path_buf(),
            detail: "no regular files to push".into(),
        });
    }
    let pushed: Vec<PushedFile> = futures_util::stream::iter(files)
        .map(|(title, path)| async move {
            let (digest, size) = tokio::task::spawn_blocking({
                let path = path.clone();
                move || -> std::io::Result<(Digest, u64)> {
                    Ok((Digest::of_file(&path)?, std::fs::metadata(&path)?.len()))
                }
            })
            .await
            .expect("hash task panicked")
            .map_err(|source| PushError::Io {
                path: path.clone(),
                source,
            })?;
            let uploaded = !registry.blob_exists(reference, &digest).await?;
            if uploaded {
                tracing::info!(file = %title, size, "uploading");
                registry
                    .push_blob_file(reference, &digest, size, &path)
                    .await?;
            }
            Ok::<_, PushError>(PushedFile {
                path: title.to_string(),
                size,
                digest,
                uploaded,
            })
        })
        .buffered(options.concurrency.max(1))
        .try_collect()
        .await?;

    let config_digest = Digest::of_bytes(EMPTY_CONFIG);
    if !registry.blob_exists(reference, &config_digest).await? {
        let temp = std::env::temp_dir().join(format!("tugboat-empty-{}", std::process::id()));
        std::fs::write(&temp, EMPTY_CONFIG).map_err(|source| PushError::Io {
            path: temp.clone(),
            source,
        })?;
        let result = registry
            .push_blob_file(reference, &config_digest, EMPTY_CONFIG.len() as u64, &temp)
            .await;
        let _ = std::fs::remove_file(&temp);
        result?;
    }
    let manifest =
        oras_manifest(&config_digest, &pushed, options).map_err(|e| PushError::Input {
            path: dir.to_path_buf(),
            detail: format!("cannot build the manifest: {e}"),
        })?;
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let digest = registry
        .push_manifest(
            reference,
            bytes.into(),
            crate::artifact::manifest::OCI_MANIFEST,
        )
        .await?;
    Ok(PushReport {
        reference: reference.to_string(),
        digest,
        files: pushed,
    })
}

/// The ORAS-style manifest of the pushed files (oci-spec's builders: the image spec's field
/// names and optional fields exactly): the empty config, one titled layer per file.
fn oras_manifest(
    config_digest: &Digest,
    pushed: &[PushedFile],
    options: &PushOptions,
) -> Result<oci_spec::image::ImageManifest, oci_spec::OciSpecError> {
    use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};
    let digest = |d: &Digest| d.to_string().parse::<oci_spec::image::Digest>();
    let config = DescriptorBuilder::default()
        .media_type(MediaType::Other(EMPTY_MEDIA_TYPE.into()))
        .digest(digest(config_digest)?)
        .size(EMPTY_CONFIG.len() as u64)
        .data("e30=")
        .build()?;
    let layers = pushed
        .iter()
        .map(|f| {
            DescriptorBuilder::default()
                .media_type(MediaType::Other(LAYER_MEDIA_TYPE.into()))
                .digest(digest(&f.digest)?)
                .size(f.size)
                .annotations(std::collections::HashMap::from([(
                    crate::artifact::oras::TITLE.to_string(),
                    f.path.to_string(),
                )]))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(options.artifact_type.clone()))
        .config(config)
        .layers(layers);
    if !options.annotations.is_empty() {
        builder = builder.annotations(
            options
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    builder.build()
}

/// Regular files under `dir`, sorted, titled by their relative path; tugboat's own folder and
/// symlinks are skipped.
fn collect_files(dir: &Path) -> Result<Vec<(SafePath, PathBuf)>, PushError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| PushError::Io {
            path: current.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| PushError::Io {
                path: current.clone(),
                source,
            })?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| PushError::Io {
                path: path.clone(),
                source,
            })?;
            if entry.file_name() == WORK_DIR {
                continue;
            }
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let relative = path.strip_prefix(dir).expect("walked under dir");
                let title = relative
                    .to_str()
                    .and_then(|s| SafePath::new(s).ok())
                    .ok_or_else(|| PushError::Input {
                        path: path.clone(),
                        detail: "file name is not a UTF-8 relative path".into(),
                    })?;
                found.push((title, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

impl Classify for PushError {
    fn kind(&self) -> FailureKind {
        match self {
            PushError::Io { source, .. } => match io_kind(source) {
                // A file that cannot be read is the caller's input, not our disk.
                FailureKind::Storage => FailureKind::Input,
                kind => kind,
            },
            PushError::Input { .. } => FailureKind::Input,
            PushError::Registry(e) => e.kind(),
        }
    }
}

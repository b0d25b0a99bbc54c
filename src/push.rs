//! `tugboat push DIR REF`: a minimal packager that uploads a directory as an ORAS-style
//! artifact (one layer per file, titled by its path), enough for demos, tests and CI.

use crate::digest::Digest;
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
    #[error("{}: {source}", path.display())]
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
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::artifact::manifest::OCI_MANIFEST,
        "artifactType": options.artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config_digest.to_string(), "size": EMPTY_CONFIG.len(), "data": "e30="},
        "layers": pushed.iter().map(|f| serde_json::json!({
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": f.digest.to_string(),
            "size": f.size,
            "annotations": {crate::artifact::oras::TITLE: f.path},
        })).collect::<Vec<_>>(),
        "annotations": options.annotations,
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
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

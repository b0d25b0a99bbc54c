//! Building artifacts to their specs for the format tests: tar layers (including hostile
//! entries the `tar` crate's safe API would refuse to write), gzip/zstd, and pushing a
//! manifest with a chosen config, artifactType and layer media types/annotations straight
//! through the distribution API.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::time::Duration;

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One tar entry; names and link targets are written verbatim (hostile ones too).
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    CharDevice(&'a str),
}

fn header(
    name: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    link: Option<&str>,
) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        assert!(name.len() < 100, "test names stay short");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    header
}

/// A tar archive of `entries`, in order.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        use tar::EntryType as T;
        let (h, data): (tar::Header, &[u8]) = match entry {
            Entry::File(n, d) => (header(n, T::Regular, d.len() as u64, 0o644, None), d),
            Entry::FileMode(n, d, m) => (header(n, T::Regular, d.len() as u64, *m, None), d),
            Entry::Dir(n) => (header(n, T::Directory, 0, 0o755, None), &[]),
            Entry::Symlink(n, t) => (header(n, T::Symlink, 0, 0o777, Some(t)), &[]),
            Entry::Hardlink(n, t) => (header(n, T::Link, 0, 0o644, Some(t)), &[]),
            Entry::Fifo(n) => (header(n, T::Fifo, 0, 0o644, None), &[]),
            Entry::CharDevice(n) => (header(n, T::Char, 0, 0o644, None), &[]),
        };
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A tar header announcing a regular file of `size` bytes (for bombs built in pieces).
pub fn file_header(name: &str, size: u64) -> Vec<u8> {
    header(name, tar::EntryType::Regular, size, 0o644, None)
        .as_bytes()
        .to_vec()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A layer to push: media type, bytes, annotations.
pub struct Layer {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub annotations: Vec<(String, String)>,
}

impl Layer {
    pub fn new(media_type: &str, bytes: Vec<u8>, annotations: &[(&str, &str)]) -> Layer {
        Layer {
            media_type: media_type.to_string(),
            bytes,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build()
}

pub fn upload(host: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let agent = agent();
    let head = format!("http://{host}/v2/{repo}/blobs/{digest}");
    if agent.head(&head).call().is_ok() {
        return digest;
    }
    let resp = agent
        .post(&format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .call()
        .expect("start upload");
    let location = resp.header("Location").unwrap().to_string();
    let mut url = if location.starts_with('/') {
        format!("http://{host}{location}")
    } else {
        location
    };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("digest={}", digest.replace(':', "%3A")));
    agent
        .put(&url)
        .set("Content-Type", "application/octet-stream")
        .send_bytes(bytes)
        .expect("upload blob");
    digest
}

/// Pushes a manifest with the given config and layers; returns the manifest digest.
pub fn push_artifact(
    host: &str,
    repo: &str,
    tag: &str,
    artifact_type: Option<&str>,
    config: (&str, &[u8]),
    layers: &[Layer],
    annotations: &[(&str, &str)],
) -> String {
    let config_digest = upload(host, repo, config.1);
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let digest = upload(host, repo, &l.bytes);
            let mut v = serde_json::json!({
                "mediaType": l.media_type, "digest": digest, "size": l.bytes.len(),
            });
            if !l.annotations.is_empty() {
                let map: serde_json::Map<String, serde_json::Value> = l
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                    .collect();
                v["annotations"] = serde_json::Value::Object(map);
            }
            v
        })
        .collect();
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.0, "digest": config_digest, "size": config.1.len()},
        "layers": layers,
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = serde_json::Value::from(t);
    }
    if !annotations.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        manifest["annotations"] = serde_json::Value::Object(map);
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    agent()
        .put(&format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_bytes(&bytes)
        .expect("put manifest");
    sha256(&bytes)
}

/// Pushes an OCI image index under `tag`: `entries` are `(manifest digest, entry annotations,
/// extra entry fields)` of manifests already in `repo`. Returns the index digest.
#[allow(dead_code)]
pub fn push_index(
    host: &str,
    repo: &str,
    tag: &str,
    artifact_type: Option<&str>,
    entries: &[(String, serde_json::Value, serde_json::Value)],
) -> String {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, annotations, extra)| {
            let mut body = Vec::new();
            agent()
                .get(&format!("http://{host}/v2/{repo}/manifests/{digest}"))
                .set("Accept", "application/vnd.oci.image.manifest.v1+json")
                .call()
                .expect("get manifest")
                .into_reader()
                .read_to_end(&mut body)
                .unwrap();
            let size = body.len();
            let mut entry = serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest, "size": size, "annotations": annotations,
            });
            if let serde_json::Value::Object(fields) = extra {
                for (k, v) in fields {
                    entry[k] = v.clone();
                }
            }
            entry
        })
        .collect();
    let mut index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    if let Some(t) = artifact_type {
        index["artifactType"] = serde_json::Value::from(t);
    }
    let bytes = serde_json::to_vec(&index).unwrap();
    agent()
        .put(&format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .set("Content-Type", "application/vnd.oci.image.index.v1+json")
        .send_bytes(&bytes)
        .expect("put index");
    sha256(&bytes)
}

/// Reads a whole file (tests compare trees).
pub fn read(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .read_to_end(&mut out)
        .unwrap();
    out
}

//! OpenSSF model signing (`model_signing sign key ...`): a sigstore bundle shipped inside the
//! model (default `model.sig`) whose DSSE envelope carries an in-toto statement listing every
//! file's sha256. The envelope must verify with a configured key, and the files tugboat
//! materialised (whose sha256 the snapshot records) must be exactly the files signed.

use super::keys::{self, Key};
use crate::cache::SnapshotFile;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest signature file read.
pub const MAX_BUNDLE: u64 = 16 * 1024 * 1024;
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: Option<String>,
    dsse_envelope: Option<Envelope>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(serde::Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

/// DSSE's pre-authentication encoding: what the signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// What a verified signature file says: the signer and the signed files (name -> sha256 hex).
pub struct Signed {
    pub signer: String,
    pub files: BTreeMap<String, String>,
}

/// A parsed (not yet verified) model-signing bundle.
pub struct Opened {
    payload_type: String,
    payload: Vec<u8>,
    signatures: Vec<Vec<u8>>,
}

impl Opened {
    /// Parses sigstore bundle bytes down to the DSSE envelope.
    pub fn parse(bytes: &[u8]) -> Result<Opened, String> {
        let bundle: Bundle = serde_json::from_slice(bytes)
            .map_err(|e| format!("the signature file is not a sigstore bundle ({e})"))?;
        if !bundle
            .media_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/vnd.dev.sigstore.bundle"))
        {
            return Err("the signature file is not a sigstore bundle (mediaType)".into());
        }
        let envelope = bundle.dsse_envelope.ok_or(
            "the bundle has no DSSE envelope (only model-signing's DSSE bundles are supported)",
        )?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = b64
            .decode(envelope.payload.trim())
            .map_err(|_| "the envelope's payload is not base64".to_string())?;
        Ok(Opened {
            payload_type: envelope.payload_type,
            payload,
            signatures: envelope
                .signatures
                .iter()
                .filter_map(|s| b64.decode(s.sig.trim()).ok())
                .collect(),
        })
    }

    /// The configured key that signed the envelope, if any.
    pub fn signer<'k>(&self, keys: &'k [Key]) -> Option<&'k Key> {
        let message = pae(&self.payload_type, &self.payload);
        self.signatures
            .iter()
            .find_map(|sig| keys::signer(keys, &message, sig))
    }

    /// The signed files (name -> sha256 hex) the in-toto statement lists.
    pub fn files(&self) -> Result<BTreeMap<String, String>, String> {
        let statement: serde_json::Value = serde_json::from_slice(&self.payload)
            .map_err(|e| format!("the signed statement is not JSON ({e})"))?;
        if statement.get("predicateType").and_then(|v| v.as_str()) != Some(PREDICATE_TYPE) {
            return Err(format!(
                "the signed statement's predicateType is not {PREDICATE_TYPE}"
            ));
        }
        let predicate = &statement["predicate"];
        let method = predicate
            .pointer("/serialization/method")
            .and_then(|v| v.as_str());
        if method != Some("files") {
            return Err(format!(
                "serialization method {method:?} is not supported (sign with the default `files` method and sha256)"
            ));
        }
        let mut files = BTreeMap::new();
        for resource in predicate["resources"].as_array().into_iter().flatten() {
            let name = resource["name"].as_str().unwrap_or_default();
            let algorithm = resource["algorithm"].as_str().unwrap_or_default();
            let digest = resource["digest"].as_str().unwrap_or_default();
            if algorithm != "sha256" {
                return Err(format!(
                    "file {name:?} is signed with {algorithm:?}; only sha256 is supported"
                ));
            }
            files.insert(name.to_string(), digest.to_ascii_lowercase());
        }
        Ok(files)
    }
}

/// Reads and verifies the signature file; `Err` says why it does not count.
pub fn verify_bundle(path: &Path, keys: &[Key]) -> Result<Signed, String> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > MAX_BUNDLE {
        return Err(format!("{} is too large to be a signature", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let opened = Opened::parse(&bytes)?;
    let signer = opened.signer(keys).ok_or(
        "the signature verifies with none of the configured keys (another key, or a tampered statement)",
    )?;
    Ok(Signed {
        signer: signer.name.clone(),
        files: opened.files()?,
    })
}

/// Compares the signed files with the materialised ones (`whole`: the snapshot is the whole
/// model, so every signed file must be there too).
pub fn compare(
    signed: &Signed,
    files: &[SnapshotFile],
    signature_file: &str,
    whole: bool,
) -> Result<(), String> {
    let mut seen = 0;
    for file in files {
        let name = file.path.as_str();
        if name == signature_file {
            continue;
        }
        match signed.files.get(name) {
            Some(digest) if digest == file.digest.hex() => seen += 1,
            Some(_) => return Err(format!("file {name} differs from what was signed")),
            None => return Err(format!("file {name} is not covered by the signature")),
        }
    }
    if whole && seen != signed.files.len() {
        let missing: Vec<&str> = signed
            .files
            .keys()
            .filter(|name| !files.iter().any(|f| f.path.as_str() == name.as_str()))
            .map(String::as_str)
            .collect();
        return Err(format!(
            "signed file(s) missing from the model: {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

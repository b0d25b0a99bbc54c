//! cosign signatures of a manifest digest, found through the OCI 1.1 referrers API where the
//! registry has it, else cosign's `sha256-<hex>.sig` tag. Each signature layer is a
//! simple-signing payload whose `critical.image.docker-manifest-digest` must be the exact
//! digest being pulled, signed (annotation `dev.cosignproject.cosign/signature`, base64 DER
//! ECDSA) by one of the configured keys.

use super::keys::{self, Key};
use crate::artifact::manifest::{self as manifests, Parsed};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use base64::Engine as _;
use futures_util::StreamExt as _;

pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIG_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Payloads are small JSON documents; anything larger is not a signature.
const MAX_PAYLOAD: usize = 256 * 1024;

/// One signature found for a digest.
pub struct Found {
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    /// `referrers` or `tag`.
    pub via: &'static str,
}

/// The cosign signature tag of a digest: `sha256-<hex>.sig` in the same repository.
pub fn signature_tag(reference: &Reference, digest: &Digest) -> Result<Reference, RegistryError> {
    format!(
        "{}/{}:sha256-{}.sig",
        reference.registry(),
        reference.repository(),
        digest.hex()
    )
    .parse()
    .map_err(|e| RegistryError::Config(format!("cosign signature tag: {e}")))
}

/// Every cosign signature attached to `digest`.
pub async fn find(
    registry: &RegistryClient,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<Found>, RegistryError> {
    let mut manifests_found = Vec::new();
    let mut via = "tag";
    if let Some(index) = registry.referrers(reference, digest).await? {
        if let Ok(Parsed::Index(entries)) = manifests::parse(&index, None) {
            for entry in entries {
                if entry.artifact_type.as_deref() == Some(SIG_ARTIFACT_TYPE) {
                    let fetched = registry
                        .manifest(&reference.with_digest(entry.digest.clone()))
                        .await?;
                    if Digest::of_bytes(&fetched.bytes) == entry.digest {
                        manifests_found.push(fetched.bytes.to_vec());
                    }
                }
            }
            via = "referrers";
        }
    }
    if manifests_found.is_empty() {
        via = "tag";
        match registry.manifest(&signature_tag(reference, digest)?).await {
            Ok(fetched) => manifests_found.push(fetched.bytes.to_vec()),
            Err(RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut found = Vec::new();
    for bytes in manifests_found {
        let Ok(Parsed::Manifest(manifest)) = manifests::parse(&bytes, None) else {
            continue;
        };
        for layer in &manifest.layers {
            let Some(encoded) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
                continue;
            };
            let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
            else {
                continue;
            };
            if layer.size > MAX_PAYLOAD as u64 {
                continue;
            }
            let payload = read_blob(registry, reference, &layer.digest).await?;
            if Digest::of_bytes(&payload) != layer.digest {
                continue;
            }
            found.push(Found {
                payload,
                signature,
                via,
            });
        }
    }
    Ok(found)
}

async fn read_blob(
    registry: &RegistryClient,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = registry.blob(reference, digest, 0).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.stream.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > MAX_PAYLOAD {
            break;
        }
    }
    Ok(bytes)
}

/// The digest a simple-signing payload names.
pub fn payload_digest(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value
        .pointer("/critical/image/docker-manifest-digest")?
        .as_str()
        .map(str::to_string)
}

/// Judges the signatures found for `digest`: `Ok(signer)` for the first one a key verifies
/// whose payload names `digest`; otherwise why none counts.
pub fn judge(found: &[Found], digest: &Digest, keys: &[Key]) -> Result<String, String> {
    if found.is_empty() {
        return Err(format!(
            "no cosign signature for {digest} (neither the referrers API nor the sha256-{}.sig tag has one)",
            digest.hex()
        ));
    }
    let mut reasons = Vec::new();
    for one in found {
        let Some(signer) = keys::signer(keys, &one.payload, &one.signature) else {
            reasons.push(format!(
                "a signature ({}) verifies with none of the configured keys (another key, or a tampered payload)",
                one.via
            ));
            continue;
        };
        match payload_digest(&one.payload) {
            Some(named) if named == digest.to_string() => return Ok(signer.name.clone()),
            Some(named) => reasons.push(format!(
                "a signature by {} names {named}, not {digest}",
                signer.name
            )),
            None => reasons.push("a signed payload is not a simple-signing document".into()),
        }
    }
    Err(reasons.join("; "))
}

//! `tugboat inspect`'s view of signatures: every cosign signature attached to the digest and
//! every model-signing file in the artifact, with the signer when a key of the node policy
//! verifies it. Listing never refuses anything.

use super::keys::{self, Key};
use super::{cosign, model_signing};
use crate::artifact::manifest::{self as manifests, Parsed};
use crate::artifact::oras::TITLE;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use futures_util::StreamExt as _;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Listed {
    /// `cosign` or `model-signing`.
    pub kind: &'static str,
    /// Where it was found: `referrers`, `tag`, or the file's path in the model.
    pub found: String,
    /// What it signs: the digest a cosign payload names, or how many files model-signing lists.
    pub signs: String,
    /// The policy key that verifies it; `None` when no configured key does (or no policy).
    pub signer: Option<String>,
}

/// Lists the signatures of `digest` (a manifest of `reference`).
pub async fn list(
    registry: &RegistryClient,
    reference: &Reference,
    digest: &Digest,
    keys: &[Key],
) -> Result<Vec<Listed>, crate::registry::RegistryError> {
    let mut out = Vec::new();
    for one in cosign::find(registry, reference, digest).await? {
        let names = cosign::payload_digest(&one.payload).unwrap_or_else(|| "?".into());
        out.push(Listed {
            kind: "cosign",
            found: one.via.to_string(),
            signs: names,
            signer: keys::signer(keys, &one.payload, &one.signature).map(|k| k.name.clone()),
        });
    }
    let fetched = registry
        .manifest(&reference.with_digest(digest.clone()))
        .await?;
    let Ok(Parsed::Manifest(manifest)) = manifests::parse(&fetched.bytes, None) else {
        return Ok(out);
    };
    for layer in &manifest.layers {
        let Some(title) = layer.annotations.get(TITLE) else {
            continue;
        };
        if !title.ends_with(".sig") || layer.size > model_signing::MAX_BUNDLE {
            continue;
        }
        let mut body = registry.blob(reference, &layer.digest, 0).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        if Digest::of_bytes(&bytes) != layer.digest {
            continue;
        }
        let Ok(opened) = model_signing::Opened::parse(&bytes) else {
            continue;
        };
        out.push(Listed {
            kind: "model-signing",
            found: title.clone(),
            signs: match opened.files() {
                Ok(files) => format!("{} file(s)", files.len()),
                Err(why) => why,
            },
            signer: opened.signer(keys).map(|k| k.name.clone()),
        });
    }
    Ok(out)
}

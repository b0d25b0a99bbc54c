//! Public keys from the node's configuration (PEM: ECDSA P-256 or Ed25519) and signature
//! checks with them.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use std::path::Path;

/// The algorithms a configured key may use.
#[derive(Clone, Debug)]
enum Algorithm {
    /// ECDSA over P-256 with SHA-256 (cosign's and model-signing's default).
    P256(VerifyingKey),
    /// Ed25519 (the message itself is signed).
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A configured key: where it came from (shown as the signer) and the key itself.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    key: Algorithm,
    /// The PEM bytes (part of a requirement's fingerprint).
    pub pem: Vec<u8>,
}

impl Key {
    pub fn load(path: &Path) -> Result<Key, String> {
        let pem = std::fs::read(path).map_err(|e| format!("key {}: {e}", path.display()))?;
        let text = std::str::from_utf8(&pem)
            .map_err(|_| format!("key {}: not a PEM file", path.display()))?;
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        let key = match text.trim().parse::<VerifyingKey>() {
            Ok(key) => Algorithm::P256(key),
            Err(_) => Algorithm::Ed25519(
                ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| {
                    format!(
                        "key {}: not a PEM public key (-----BEGIN PUBLIC KEY-----) for ECDSA \
                         P-256 or Ed25519, the algorithms supported",
                        path.display()
                    )
                })?,
            ),
        };
        Ok(Key {
            name: path.display().to_string(),
            key,
            pem,
        })
    }

    /// Checks a signature over `message`: ASN.1 DER (or raw 64-byte) ECDSA P-256 / SHA-256,
    /// or a 64-byte Ed25519 signature.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Algorithm::P256(key) => Signature::from_der(signature)
                .or_else(|_| Signature::from_slice(signature))
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            Algorithm::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| key.verify_strict(message, &s).is_ok()),
        }
    }
}

/// The first key that verifies `signature` over `message`.
pub fn signer<'k>(keys: &'k [Key], message: &[u8], signature: &[u8]) -> Option<&'k Key> {
    keys.iter().find(|k| k.verifies(message, signature))
}

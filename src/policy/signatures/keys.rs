//! Public keys from the node's configuration (PEM, ECDSA P-256) and signature checks with them.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use std::path::Path;

/// A configured key: where it came from (shown as the signer) and the key itself.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    key: VerifyingKey,
    /// The PEM bytes (part of a requirement's fingerprint).
    pub pem: Vec<u8>,
}

impl Key {
    pub fn load(path: &Path) -> Result<Key, String> {
        let pem = std::fs::read(path).map_err(|e| format!("key {}: {e}", path.display()))?;
        let text = std::str::from_utf8(&pem)
            .map_err(|_| format!("key {}: not a PEM file", path.display()))?;
        let key: VerifyingKey = text.trim().parse().map_err(|_| {
            format!(
                "key {}: not a PEM ECDSA P-256 public key (-----BEGIN PUBLIC KEY-----); \
                 only P-256 keys are supported",
                path.display()
            )
        })?;
        Ok(Key {
            name: path.display().to_string(),
            key,
            pem,
        })
    }

    /// Checks an ASN.1 DER (or raw 64-byte) ECDSA P-256 / SHA-256 signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let signature = Signature::from_der(signature)
            .or_else(|_| Signature::from_slice(signature))
            .ok();
        signature.is_some_and(|s| self.key.verify(message, &s).is_ok())
    }
}

/// The first key that verifies `signature` over `message`.
pub fn signer<'k>(keys: &'k [Key], message: &[u8], signature: &[u8]) -> Option<&'k Key> {
    keys.iter().find(|k| k.verifies(message, signature))
}

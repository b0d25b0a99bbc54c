//! Which certificate authorities the registry clients trust, and what happens without any.
//!
//! Trust comes from the system CA store (what `SSL_CERT_FILE` / `SSL_CERT_DIR` name, else the
//! distribution's bundle, e.g. `/etc/ssl/certs/ca-certificates.crt`) plus `--ca-file`. An image
//! may ship no CA bundle at all: that must not stop plain-HTTP or `--insecure-registry` pulls,
//! and a verified TLS request then fails before it is sent, naming the locations tried and
//! `--ca-file`. There is deliberately no bundled fallback (a copy of Mozilla's roots compiled
//! into the binary): it would go stale with the binary, could not be extended or pruned by the
//! cluster's operators, and would hide a broken image. The image built by scripts/ ships
//! Debian's bundle.

use super::endpoint::Endpoint;
use super::error::RegistryError;
use std::sync::OnceLock;

/// Whether the system CA store holds at least one certificate; probed once per process.
fn system_store_has_roots() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let result = rustls_native_certs::load_native_certs();
        for error in &result.errors {
            tracing::debug!(%error, "reading the system CA store");
        }
        !result.certs.is_empty()
    })
}

/// Where the system CA store was looked for, for the error message.
fn locations_tried() -> String {
    let mut tried = Vec::new();
    for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(value) = std::env::var_os(var) {
            tried.push(format!("{var}={}", value.to_string_lossy()));
        }
    }
    if tried.is_empty() {
        tried.push(
            "/etc/ssl/certs/ca-certificates.crt, /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem, \
             /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/ca-bundle.pem, /etc/ssl/cert.pem, \
             /etc/ssl/certs/, /etc/pki/tls/certs/ (SSL_CERT_FILE and SSL_CERT_DIR unset)"
                .to_string(),
        );
    }
    tried.join(", ")
}

/// Sets the roots of a client that verifies TLS: the system store plus `extra` (`--ca-file`),
/// or `extra` alone when the system store is empty, so that building the client never fails
/// for want of a CA bundle (the client then refuses verified TLS through [`require_roots`]).
pub(super) fn with_roots(
    builder: reqwest::ClientBuilder,
    extra: &[reqwest::Certificate],
) -> reqwest::ClientBuilder {
    if system_store_has_roots() {
        builder.tls_certs_merge(extra.iter().cloned())
    } else {
        builder.tls_certs_only(extra.iter().cloned())
    }
}

/// Refuses a request over verified TLS when there is nothing to verify it against: no system
/// CA store and no `--ca-file`. Plain HTTP and `--insecure-registry` endpoints always pass.
pub(super) fn require_roots(endpoint: &Endpoint, has_ca_file: bool) -> Result<(), RegistryError> {
    if endpoint.scheme != "https" || endpoint.insecure || has_ca_file || system_store_has_roots() {
        return Ok(());
    }
    Err(no_roots_error(&endpoint.host))
}

/// The error for a verified TLS connection without any CA certificate to check it against.
pub(super) fn no_roots_error(host: &str) -> RegistryError {
    RegistryError::Config(format!(
        "cannot verify TLS for {host}: no CA certificates found (tried {}); mount a CA bundle \
         there or point SSL_CERT_FILE at one, or pass --ca-file FILE (env TUGBOAT_CA_FILE) with \
         the registry's CA; for a registry without TLS use --plain-http or --insecure-registry {host}",
        locations_tried()
    ))
}

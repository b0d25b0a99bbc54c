//! Cosign signatures written as cosign writes them (simple-signing payload signed with an
//! openssl-made key, `dev.cosignproject.cosign/signature`, pushed under cosign's
//! `sha256-<hex>.sig` tag), for the tests that need signed models.
#![allow(dead_code)]

use crate::artifacts::{push_artifact, Layer};
use crate::common::run;
use base64::Engine as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

pub fn sh(cmd: &mut Command, what: &str) {
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.stdout,
        out.stderr
    );
}

/// An ECDSA P-256 key pair in PEM: (private, public).
pub fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    sh(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(&private),
        "openssl ecparam",
    );
    sh(
        Command::new("openssl")
            .args(["ec", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
        "openssl ec -pubout",
    );
    (private, public)
}

/// A cosign signature of `signed_digest` (what the payload names) under `repo`'s signature
/// tag for `attached_to`, written as cosign writes it. `tamper` alters the payload after signing.
pub fn cosign_attach(
    reg_host: &str,
    repo: &str,
    tag: &str,
    signed_digest: &str,
    private: &Path,
    tamper: bool,
) -> String {
    let payload = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{reg_host}/{repo}")},
            "image": {"docker-manifest-digest": signed_digest},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.json");
    fs::write(&file, &payload).unwrap();
    let sig_file = dir.path().join("payload.sig");
    if private.to_string_lossy().ends_with("ed25519.pem") {
        sh(
            Command::new("openssl")
                .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
                .arg(private)
                .arg("-in")
                .arg(&file)
                .arg("-out")
                .arg(&sig_file),
            "openssl pkeyutl -sign (ed25519)",
        );
    } else {
        sh(
            Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(private)
                .arg("-out")
                .arg(&sig_file)
                .arg(&file),
            "openssl dgst -sign",
        );
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(fs::read(&sig_file).unwrap());
    let payload = if tamper {
        payload.replace(
            "cosign container image signature",
            "cosign container image signaturE",
        )
    } else {
        payload
    };
    push_artifact(
        reg_host,
        repo,
        tag,
        None,
        (
            "application/vnd.oci.image.config.v1+json",
            b"{\"architecture\":\"\",\"os\":\"\"}",
        ),
        &[Layer::new(
            SIMPLE_SIGNING,
            payload.into_bytes(),
            &[("dev.cosignproject.cosign/signature", &signature)],
        )],
        &[],
    )
}

pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

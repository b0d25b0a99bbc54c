//! An image without a CA bundle: the system CA store is made empty for the binary
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` pointing at nothing, which is what rustls-native-certs reads
//! instead of the distribution's bundle). Plain-HTTP and `--insecure-registry` pulls still work;
//! a verified TLS pull fails before any request, naming the CA locations tried and `--ca-file`;
//! `--ca-file` alone is then enough. The TLS registry is a real `docker-registry` with a
//! certificate from a CA made for the test.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const NO_FILE: &str = "/nonexistent/tugboat-test/ca-certificates.crt";
const NO_DIR: &str = "/nonexistent/tugboat-test/certs";

/// Makes `cmd` see an empty system CA store.
fn without_ca_store(cmd: &mut Command) -> &mut Command {
    cmd.env("SSL_CERT_FILE", NO_FILE)
        .env("SSL_CERT_DIR", NO_DIR)
}

fn model(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("model.bin");
    write_random_file(&file, 3 * 1024 * 1024 + 17, 13);
    file
}

#[test]
fn plain_http_and_insecure_registry_pulls_need_no_ca_store() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let file = model(work.path());
    push_raw_files(&registry.host(), "models/plain", "v1", &[&file]);
    let reference = registry.reference("models/plain:v1");

    let dest = work.path().join("plain");
    let run = run(
        without_ca_store(&mut pull_cmd(&reference, &dest, None, &[])),
        TIMEOUT,
    );
    run.assert_ok("--plain-http pull without a CA store");
    assert_same_files(&dest, &[("model.bin", &file)]);

    let dest = work.path().join("insecure");
    let mut cmd = tugboat();
    cmd.arg("pull")
        .arg(&reference)
        .arg("--dest")
        .arg(&dest)
        .arg("--insecure-registry")
        .arg(registry.host());
    run_ok(without_ca_store(&mut cmd), "--insecure-registry pull");
    assert_same_files(&dest, &[("model.bin", &file)]);
}

fn run_ok(cmd: &mut Command, what: &str) {
    run(cmd, TIMEOUT).assert_ok(what);
}

#[test]
fn tls_pull_without_a_ca_store_names_the_locations_tried_and_ca_file() {
    let registry = Registry::start_tls();
    let work = tempfile::tempdir().unwrap();
    let file = model(work.path());
    let upload = work.path().join("upload");
    std::fs::create_dir(&upload).unwrap();
    std::fs::copy(&file, upload.join("model.bin")).unwrap();
    let reference = registry.reference("models/tls:v1");
    let mut push = tugboat();
    push.arg("push")
        .arg(&upload)
        .arg(&reference)
        .arg("--ca-file")
        .arg(registry.tls_ca());
    run_ok(&mut push, "push over TLS with --ca-file");

    // No CA store, no --ca-file: refused before any request, with what to do.
    let dest = work.path().join("refused");
    let mut cmd = tugboat();
    cmd.arg("pull").arg(&reference).arg("--dest").arg(&dest);
    let refused = run(without_ca_store(&mut cmd), TIMEOUT);
    eprintln!("{}", refused.stderr);
    refused.assert_code(2, "a TLS pull without any CA certificate");
    for needle in [
        "no CA certificates found",
        &format!("SSL_CERT_FILE={NO_FILE}"),
        &format!("SSL_CERT_DIR={NO_DIR}"),
        "--ca-file",
        "127.0.0.1",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "the error does not mention {needle:?}:\n{}",
            refused.stderr
        );
    }
    assert!(
        !refused.stderr.contains("builder error"),
        "{}",
        refused.stderr
    );
    assert!(
        !dest.exists() || list_dir(&dest).is_empty(),
        "a refused pull left {:?}",
        list_dir(&dest)
    );

    // The registry's CA alone is enough, and the bytes arrive intact.
    let dest = work.path().join("with-ca");
    let mut cmd = tugboat();
    cmd.arg("pull")
        .arg(&reference)
        .arg("--dest")
        .arg(&dest)
        .arg("--ca-file")
        .arg(registry.tls_ca());
    run_ok(without_ca_store(&mut cmd), "TLS pull with --ca-file only");
    assert_same_files(&dest, &[("model.bin", &file)]);
}

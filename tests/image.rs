//! The image scripts/build-image.sh makes without a Docker engine (here from the test build of
//! the binary; the Dockerfile's build stage runs the same script on the release binary):
//! - the OCI archive is reproducible and its one layer holds exactly the binary, the shared
//!   libraries ldd lists, a CA bundle, /etc/passwd and /etc/group, and /tmp, all owned by 0:0
//!   with fixed mtimes; every digest in it is right;
//! - inside that filesystem alone (chroot, as uid 65532 like the init containers) the binary
//!   pulls a model over plain HTTP from the loopback registry; with the CA bundle taken out it
//!   still does, a TLS pull fails naming the CA locations and --ca-file, and --ca-file suffices.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.sh")
}

fn build_archive(out: &Path) {
    let status = Command::new(script())
        .arg("archive")
        .arg(env!("CARGO_BIN_EXE_tugboat"))
        .arg(out)
        .arg("test")
        .status()
        .unwrap();
    assert!(status.success(), "scripts/build-image.sh archive failed");
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let path = layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    assert_eq!(
        sha256_file(&path),
        digest,
        "blob content does not match its name"
    );
    path
}

fn untar(archive: &Path, into: &Path, gzip: bool) {
    std::fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg(if gzip { "-xzf" } else { "-xf" })
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The archive unpacked: (layout dir, the layer blob).
fn unpack(archive: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let layout = dir.join("layout");
    untar(archive, &layout, false);
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let manifest = json(&blob(&layout, entry["digest"].as_str().unwrap()));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/tugboat");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    // diff_id: the digest of the uncompressed layer.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} | sha256sum", layer.display()))
        .output()
        .unwrap();
    let diff_id = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", diff_id.split_whitespace().next().unwrap())
    );
    (layout, layer)
}

#[test]
fn the_archive_is_reproducible_and_holds_exactly_what_the_binary_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    build_archive(&a);
    build_archive(&b);
    assert_eq!(sha256_file(&a), sha256_file(&b), "two builds differ");
    let (_, layer) = unpack(&a, dir.path());

    let listing = Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&layer)
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "0/0", "not owned by 0:0: {line}");
        assert_eq!(fields[3], "1970-01-01", "mtime not fixed: {line}");
        if !fields[0].starts_with('d') {
            files.insert(fields[5].to_string());
        }
        if fields[5] == "tmp/" {
            assert_eq!(fields[0], "drwxrwxrwt", "/tmp must be 1777");
        }
    }
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_tugboat"))
        .output()
        .unwrap();
    let mut expected: BTreeSet<String> = String::from_utf8(ldd.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .map(|p| p.trim_start_matches('/').to_string())
        .collect();
    for f in [
        "usr/local/bin/tugboat",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
    ] {
        expected.insert(f.to_string());
    }
    assert_eq!(files, expected, "the layer's files");
}

fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("SKIPPED: chroot into the image's filesystem needs root");
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and this test cannot run: it needs root");
    }
    false
}

/// `tugboat ARGS` run inside `rootfs` as uid/gid 65532 (the init containers' user).
fn in_image(rootfs: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new("chroot");
    cmd.arg("--userspec=65532:65532")
        .arg(rootfs)
        .arg("/usr/local/bin/tugboat")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NO_PROXY", "127.0.0.1");
    run(&mut cmd, TIMEOUT)
}

#[test]
fn in_its_own_filesystem_as_nonroot_it_pulls_with_and_without_a_ca_bundle() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    build_archive(&archive);
    let (_, layer) = unpack(&archive, dir.path());
    let rootfs = dir.path().join("rootfs");
    untar(&layer, &rootfs, true);
    let models = rootfs.join("models");
    std::fs::create_dir(&models).unwrap();
    nix::unistd::chown(&models, Some(65532.into()), Some(65532.into())).unwrap();

    let file = dir.path().join("model.bin");
    write_random_file(&file, 2 * 1024 * 1024 + 5, 21);
    let plain = Registry::start();
    push_raw_files(&plain.host(), "models/img", "v1", &[&file]);
    let reference = plain.reference("models/img:v1");

    in_image(
        &rootfs,
        &["pull", &reference, "--dest", "/models/a", "--plain-http"],
    )
    .assert_ok("plain-HTTP pull inside the image");
    assert_same_files(&models.join("a"), &[("model.bin", &file)]);

    // The same image without its CA bundle: plain HTTP still works ...
    std::fs::remove_file(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    in_image(
        &rootfs,
        &["pull", &reference, "--dest", "/models/b", "--plain-http"],
    )
    .assert_ok("plain-HTTP pull inside the image without a CA bundle");
    assert_same_files(&models.join("b"), &[("model.bin", &file)]);

    // ... a TLS pull says what is missing ...
    let tls = Registry::start_tls();
    let upload = dir.path().join("upload");
    std::fs::create_dir(&upload).unwrap();
    std::fs::copy(&file, upload.join("model.bin")).unwrap();
    let tls_ref = tls.reference("models/img:v1");
    let mut push = tugboat();
    push.arg("push")
        .arg(&upload)
        .arg(&tls_ref)
        .arg("--ca-file")
        .arg(tls.tls_ca());
    run(&mut push, TIMEOUT).assert_ok("push over TLS");
    let refused = in_image(&rootfs, &["pull", &tls_ref, "--dest", "/models/c"]);
    eprintln!("{}", refused.stderr);
    refused.assert_code(2, "TLS pull without a CA bundle");
    for needle in [
        "no CA certificates found",
        "/etc/ssl/certs/ca-certificates.crt",
        "--ca-file",
    ] {
        assert!(refused.stderr.contains(needle), "{}", refused.stderr);
    }
    // ... and the registry's CA alone is enough.
    std::fs::copy(tls.tls_ca(), rootfs.join("tmp/ca.pem")).unwrap();
    in_image(
        &rootfs,
        &[
            "pull",
            &tls_ref,
            "--dest",
            "/models/d",
            "--ca-file",
            "/tmp/ca.pem",
        ],
    )
    .assert_ok("TLS pull with --ca-file inside the image without a CA bundle");
    assert_same_files(&models.join("d"), &[("model.bin", &file)]);
}

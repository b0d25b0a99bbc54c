//! `tugboat push` against a real registry on loopback: round trips through `tugboat pull`
//! and oras-py, a file over 1 GiB, and HTTP basic auth from a docker config.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;

fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-test-")
        .tempdir()
        .unwrap()
}

/// A directory with three model files; returns their (name, path).
fn model_dir(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let files = [
        ("model.gguf", 6 * MIB + 5),
        ("config.json", 700),
        ("tokenizer.json", MIB + 1),
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, (name, size))| {
            let p = dir.join(name);
            write_random_file(&p, *size, 200 + i as u64);
            (*name, p)
        })
        .collect()
}

fn as_refs<'a>(files: &'a [(&'static str, PathBuf)]) -> Vec<(&'static str, &'a Path)> {
    files.iter().map(|(n, p)| (*n, p.as_path())).collect()
}

// --- 1. round trips ---------------------------------------------------------------------

#[test]
fn push_dir_then_pull_is_byte_identical() {
    let reg = Registry::start();
    let src = tmp();
    let files = model_dir(src.path());
    push(src.path(), &reg.reference("models/tiny:v1"), &[]).assert_ok("tugboat push");

    // The manifest is an ORAS-style artifact: one titled layer per file.
    let (_, manifest) = get_manifest(&reg.host(), None, "models/tiny", "v1");
    let mut titles: Vec<String> = manifest_layers(&manifest)
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        vec!["config.json", "model.gguf", "tokenizer.json"],
        "layer titles of pushed manifest: {manifest}"
    );

    let work = tmp();
    let dest = work.path().join("dest");
    pull(
        &reg.reference("models/tiny:v1"),
        &dest,
        Some(&work.path().join("cache")),
        &[],
    )
    .assert_ok("pull of pushed dir");
    assert_same_files(&dest, &as_refs(&files));
    assert_eq!(
        list_dir(&dest),
        vec!["config.json", "model.gguf", "tokenizer.json"]
    );
}

#[test]
fn pushed_artifact_is_readable_by_oras_py() {
    let reg = Registry::start();
    let src = tmp();
    let files = model_dir(src.path());
    push(src.path(), &reg.reference("models/tiny:v1"), &[]).assert_ok("tugboat push");

    let out = tmp();
    oras_pull(&reg.host(), "models/tiny:v1", out.path());
    assert_same_files(out.path(), &as_refs(&files));
}

#[test]
fn push_sets_annotations_and_artifact_type() {
    let reg = Registry::start();
    let src = tmp();
    model_dir(src.path());
    push(
        src.path(),
        &reg.reference("models/tiny:v1"),
        &[
            "--annotation",
            "org.cnai.model.name=tiny",
            "--annotation",
            "org.cnai.model.quantization=Q4_K_M",
            "--artifact-type",
            "application/vnd.example.model",
        ],
    )
    .assert_ok("tugboat push with annotations");
    let (_, manifest) = get_manifest(&reg.host(), None, "models/tiny", "v1");
    assert_eq!(
        manifest["annotations"]["org.cnai.model.name"], "tiny",
        "{manifest}"
    );
    assert_eq!(
        manifest["annotations"]["org.cnai.model.quantization"], "Q4_K_M",
        "{manifest}"
    );
    assert_eq!(
        manifest["artifactType"], "application/vnd.example.model",
        "{manifest}"
    );
}

// --- 2. large file ----------------------------------------------------------------------

#[test]
fn push_and_pull_file_over_1gib() {
    let reg = Registry::start();
    let src = tmp();
    let size = 1126 * MIB + 7; // ~1.1 GiB, not a multiple of any chunk size
    let file = src.path().join("model.gguf");
    write_random_file(&file, size, 11);
    push(src.path(), &reg.reference("models/big:v1"), &[]).assert_ok("push of 1.1 GiB file");
    // Sent in 256 MiB PATCH chunks (5 for 1126 MiB, 1 for the config blob), never one request
    // that outlives a timeout.
    let patches = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/models/big/blobs/uploads/"))
        .count();
    assert_eq!(patches, 6, "PATCH requests of the uploads:\n{}", reg.log());

    let work = tmp();
    let dest = work.path().join("dest");
    pull(
        &reg.reference("models/big:v1"),
        &dest,
        Some(&work.path().join("cache")),
        &[],
    )
    .assert_ok("pull of 1.1 GiB file");
    assert_same_files(&dest, &[("model.gguf", &file)]);
}

// --- 8. basic auth ----------------------------------------------------------------------

const USER: &str = "alice";
const PASS: &str = "s3cret-pw";

fn write_docker_config(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.json");
    fs::write(&path, docker_config_json(host, user, pass)).unwrap();
    path
}

fn assert_auth_error(out: &Run, host: &str, what: &str) {
    out.assert_code(3, what);
    let msg = out.stderr.to_lowercase();
    assert!(
        out.stderr.contains(host),
        "{what}: message should name the registry {host}:\n{}",
        out.stderr
    );
    assert!(
        msg.contains("credential") || msg.contains("authenticat") || msg.contains("unauthorized"),
        "{what}: message should mention credentials/authentication:\n{}",
        out.stderr
    );
}

#[test]
fn basic_auth_push_and_pull_with_docker_config_file() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let work = tmp();
    let config = write_docker_config(&work.path().join("docker"), &reg.host(), USER, PASS);
    let config = config.to_str().unwrap();
    let src = tmp();
    let files = model_dir(src.path());

    push(
        src.path(),
        &reg.reference("models/private:v1"),
        &["--docker-config", config],
    )
    .assert_ok("push with credentials");

    let dest = work.path().join("dest");
    pull(
        &reg.reference("models/private:v1"),
        &dest,
        Some(&work.path().join("cache")),
        &["--docker-config", config],
    )
    .assert_ok("pull with credentials");
    assert_same_files(&dest, &as_refs(&files));
}

#[test]
fn basic_auth_docker_config_env_var() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let (user, pass) = reg.credentials().unwrap();
    let layers = vec![(Some("model.gguf"), random_bytes(MIB as usize, 3))];
    push_raw_artifact_auth(
        &reg.host(),
        Some((user, pass)),
        "models/private",
        "v1",
        &layers,
        &[],
    );
    let work = tmp();
    let config_dir = work.path().join("docker");
    write_docker_config(&config_dir, &reg.host(), USER, PASS);

    let dest = work.path().join("dest");
    let mut cmd = pull_cmd(
        &reg.reference("models/private:v1"),
        &dest,
        Some(&work.path().join("cache")),
        &[],
    );
    cmd.env("DOCKER_CONFIG", &config_dir);
    run(&mut cmd, TIMEOUT).assert_ok("pull with DOCKER_CONFIG=dir");
    assert_eq!(fs::read(dest.join("model.gguf")).unwrap(), layers[0].1);

    // $DOCKER_CONFIG names the only place to look, as for docker: a directory without
    // config.json means no credentials, even when ~/.docker/config.json has them.
    let home = work.path().join("home");
    write_docker_config(&home.join(".docker"), &reg.host(), USER, PASS);
    let empty = work.path().join("empty-docker-config");
    fs::create_dir_all(&empty).unwrap();
    let dest = work.path().join("dest-empty-config");
    let mut cmd = pull_cmd(&reg.reference("models/private:v1"), &dest, None, &[]);
    cmd.env("DOCKER_CONFIG", &empty).env("HOME", &home);
    run(&mut cmd, TIMEOUT).assert_code(3, "no config.json in $DOCKER_CONFIG: no credentials");
}

#[test]
fn wrong_or_missing_credentials_exit_3() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let (user, pass) = reg.credentials().unwrap();
    push_raw_artifact_auth(
        &reg.host(),
        Some((user, pass)),
        "models/private",
        "v1",
        &[(Some("model.gguf"), random_bytes(4096, 5))],
        &[],
    );
    let work = tmp();
    let bad = write_docker_config(&work.path().join("bad"), &reg.host(), USER, "wrong");
    let bad = bad.to_str().unwrap();
    let reference = reg.reference("models/private:v1");

    let out = pull(
        &reference,
        &work.path().join("d1"),
        Some(&work.path().join("cache")),
        &["--docker-config", bad],
    );
    assert_auth_error(&out, &reg.host(), "pull with a wrong password");
    assert!(list_dir(&work.path().join("d1")).is_empty());

    let empty = work.path().join("empty.json");
    fs::write(&empty, "{}").unwrap();
    let out = pull(
        &reference,
        &work.path().join("d2"),
        Some(&work.path().join("cache")),
        &["--docker-config", empty.to_str().unwrap()],
    );
    assert_auth_error(&out, &reg.host(), "pull without credentials");

    let src = tmp();
    model_dir(src.path());
    let out = push(
        src.path(),
        &reg.reference("models/other:v1"),
        &["--docker-config", bad],
    );
    assert_auth_error(&out, &reg.host(), "push with a wrong password");
}

#[test]
fn version_prints_something() {
    let out = run(tugboat().arg("version"), TIMEOUT);
    out.assert_ok("tugboat version");
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "version output should contain {}: {}",
        env!("CARGO_PKG_VERSION"),
        out.stdout
    );
}

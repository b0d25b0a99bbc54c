//! `tugboat pull` against a real registry on loopback: integrity, resume, sharing a cache,
//! offline re-pulls, hostile manifests, exit codes and the `--json` report.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;

fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-test-")
        .tempdir()
        .unwrap()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A small two-file model pushed raw; returns (manifest digest, [(title, bytes)]).
fn push_small_model(reg: &Registry, repo: &str, tag: &str) -> (String, Vec<(String, Vec<u8>)>) {
    let files = vec![
        ("model.gguf".to_string(), random_bytes(3 * MIB as usize, 1)),
        (
            "config.json".to_string(),
            br#"{"architecture":"llama","quantization":"Q4_K_M"}"#.to_vec(),
        ),
    ];
    let layers: Vec<(Option<&str>, Vec<u8>)> = files
        .iter()
        .map(|(t, b)| (Some(t.as_str()), b.clone()))
        .collect();
    let digest = push_raw_artifact(&reg.host(), repo, tag, &layers, &[]);
    (digest, files)
}

fn assert_files_eq(dest: &Path, files: &[(String, Vec<u8>)]) {
    for (title, bytes) in files {
        let path = dest.join(title);
        let got = fs::read(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}; dest has {:?}", path.display(), walk(dest)));
        assert!(
            got == *bytes,
            "{title}: pulled bytes differ from pushed bytes"
        );
    }
}

// --- harness self-check ----------------------------------------------------------------

/// The other tests count registry traffic from its log; make sure the parsing is right.
#[test]
fn harness_counts_blob_gets_and_bytes_from_registry_log() {
    let mut reg = Registry::start();
    let (digest, files) = push_small_model(&reg, "models/tiny", "v1");
    let (manifest_digest, manifest) = get_manifest(&reg.host(), None, "models/tiny", "v1");
    assert_eq!(manifest_digest, digest);
    assert_eq!(manifest_layers(&manifest).len(), 2);
    let weights = sha256_bytes(&files[0].1);
    let size = files[0].1.len() as u64;
    assert!(reg.blob_data_path(&weights).is_file());

    let mark = reg.mark();
    assert_eq!(
        get_blob(&reg.host(), "models/tiny", &weights, None),
        files[0].1
    );
    let tail = get_blob(&reg.host(), "models/tiny", &weights, Some(1000));
    assert_eq!(tail, files[0].1[1000..]);
    let gets = reg.blob_gets_since(mark);
    assert_eq!(
        gets,
        vec![
            BlobGet {
                digest: weights.clone(),
                status: 200,
                bytes_written: size
            },
            BlobGet {
                digest: weights.clone(),
                status: 206,
                bytes_written: size - 1000
            },
        ]
    );
    assert_eq!(
        reg.blob_bytes_written_since(mark, &weights),
        2 * size - 1000
    );
    assert_eq!(reg.request_count(), mark + 2);

    reg.restart();
    assert_eq!(
        get_blob(&reg.host(), "models/tiny", &weights, None),
        files[0].1
    );
    assert_eq!(reg.blob_get_count(&weights), 3);
    reg.stop();
    assert!(ureq::get(&format!("http://{}/v2/", reg.host()))
        .call()
        .is_err());
}

// --- 1. interoperability ----------------------------------------------------------------

#[test]
fn pull_of_oras_py_pushed_multi_file_model_is_byte_identical() {
    let reg = Registry::start();
    let src = tmp();
    let files = [
        ("model.gguf", 5 * MIB + 17),
        ("config.json", 913),
        ("tokenizer.json", 2 * MIB + 3),
    ];
    let mut paths = Vec::new();
    for (i, (name, size)) in files.iter().enumerate() {
        let p = src.path().join(name);
        write_random_file(&p, *size, 100 + i as u64);
        paths.push(p);
    }
    oras_push(&reg.host(), "models/tiny:v1", &paths);

    let work = tmp();
    let dest = work.path().join("dest");
    let cache = work.path().join("cache");
    pull(&reg.reference("models/tiny:v1"), &dest, Some(&cache), &[])
        .assert_ok("pull of oras-py artifact");

    let originals: Vec<(&str, &Path)> = files
        .iter()
        .zip(&paths)
        .map(|((n, _), p)| (*n, p.as_path()))
        .collect();
    assert_same_files(&dest, &originals);
    assert_eq!(
        list_dir(&dest),
        vec!["config.json", "model.gguf", "tokenizer.json"],
        "dest should hold exactly the three model files (besides .tugboat/)"
    );
}

// --- 3. integrity -----------------------------------------------------------------------

/// Push a model, damage its weights blob in registry storage with `damage`, pull, and check
/// the pull is refused with exit 5 and leaves nothing behind.
fn assert_damaged_blob_is_refused(damage: impl FnOnce(&Path)) {
    let reg = Registry::start();
    let (_, files) = push_small_model(&reg, "models/tiny", "v1");
    let weights = sha256_bytes(&files[0].1);
    let data = reg.blob_data_path(&weights);
    assert!(
        data.is_file(),
        "registry blob file {} missing",
        data.display()
    );
    damage(&data);

    let work = tmp();
    let dest = work.path().join("dest");
    let cache = work.path().join("cache");
    let out = pull(&reg.reference("models/tiny:v1"), &dest, Some(&cache), &[]);
    out.assert_code(
        5,
        "pull (with --cache) of a damaged blob must be an integrity error",
    );
    assert!(
        out.stderr.contains(hex(&weights)),
        "stderr should name the bad blob {weights}:\n{}",
        out.stderr
    );
    let cached = cache.join("blobs/sha256").join(hex(&weights));
    assert!(
        !cached.exists(),
        "a blob that failed its digest must never land in blobs/: {}",
        cached.display()
    );
    assert!(
        list_dir(&dest).is_empty(),
        "dest must hold none of the model files after a failed pull, has {:?}",
        walk(&dest)
    );

    // Without --cache the download state lives in DEST/.tugboat: same verdict.
    let dest = work.path().join("dest-nocache");
    let out = pull(&reg.reference("models/tiny:v1"), &dest, None, &[]);
    out.assert_code(
        5,
        "pull (no cache) of a damaged blob must be an integrity error",
    );
    assert!(
        out.stderr.contains(hex(&weights)),
        "stderr should name the bad blob {weights}:\n{}",
        out.stderr
    );
    assert!(
        list_dir(&dest).is_empty(),
        "dest (no cache) must hold none of the model files after a failed pull, has {:?}",
        walk(&dest)
    );
}

#[test]
fn corrupted_blob_fails_with_exit_5_and_is_not_cached() {
    assert_damaged_blob_is_refused(|data| {
        let mut bytes = fs::read(data).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(data, bytes).unwrap();
    });
}

#[test]
fn truncated_blob_fails_with_exit_5_and_is_not_cached() {
    assert_damaged_blob_is_refused(|data| {
        let len = fs::metadata(data).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(data)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    });
}

// --- 4. resume after SIGKILL ------------------------------------------------------------

fn find_partial(cache: &Path) -> Option<PathBuf> {
    fs::read_dir(cache.join("ingest"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".partial"))
}

/// Outcome of one attempt at killing a pull part-way.
enum KillAttempt {
    Killed { partial: PathBuf, partial_len: u64 },
    FinishedFirst,
}

const SINGLE_STREAM: &[&str] = &["--concurrency", "1", "--streams-per-blob", "1"];

fn start_and_kill_pull(reference: &str, dest: &Path, cache: &Path, size: u64) -> KillAttempt {
    // One stream: this test pins resuming from the partial's length (tests/ranged.rs covers
    // parallel chunks).
    let mut cmd = pull_cmd(reference, dest, Some(cache), SINGLE_STREAM);
    let waiting_for = format!("ingest/*.partial reaching 25% of {size} bytes");
    let partial = kill_when(&mut cmd, &waiting_for, cache, || {
        find_partial(cache).filter(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0) >= size / 4)
    });
    match partial {
        Some(partial) => {
            let partial_len = fs::metadata(&partial)
                .unwrap_or_else(|e| panic!("partial {} gone after kill: {e}", partial.display()))
                .len();
            KillAttempt::Killed {
                partial,
                partial_len,
            }
        }
        None => KillAttempt::FinishedFirst,
    }
}

#[test]
fn killed_pull_resumes_with_range_and_fetches_only_the_rest() {
    let reg = Registry::start();
    let src = tmp();
    // If loopback is so fast that 1 GiB completes between two polls, try a bigger file.
    for (attempt, size) in [(1u64, 1024 * MIB), (2, 3 * 1024 * MIB)] {
        let file = src.path().join("model.gguf");
        write_random_file(&file, size, 40 + attempt);
        let tag = format!("v{attempt}");
        push_raw_files(&reg.host(), "models/big", &tag, &[&file]);
        let digest = sha256_file(&file);
        let reference = reg.reference(&format!("models/big:{tag}"));

        let work = tmp();
        let dest = work.path().join("dest");
        let cache = work.path().join("cache");
        let (partial, partial_len) = match start_and_kill_pull(&reference, &dest, &cache, size) {
            KillAttempt::Killed {
                partial,
                partial_len,
            } => (partial, partial_len),
            KillAttempt::FinishedFirst => {
                eprintln!("attempt {attempt}: pull of {size} bytes finished before the kill");
                continue;
            }
        };
        assert!(
            partial_len < size,
            "partial already complete ({partial_len} of {size}) at kill"
        );
        assert!(
            partial.file_name().unwrap().to_string_lossy() == format!("{}.partial", hex(&digest)),
            "partial should be named after the blob: {}",
            partial.display()
        );

        // Let the registry log the aborted GET before marking, so it is not counted later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while reg.blob_gets().iter().all(|g| g.digest != digest) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(300));
        let mark = reg.mark();

        pull(&reference, &dest, Some(&cache), SINGLE_STREAM)
            .assert_ok("pull resumed after SIGKILL");
        assert_same_files(&dest, &[("model.gguf", &file)]);

        let gets = reg.blob_downloads_since(mark, &digest);
        let fetched: u64 = gets.iter().map(|g| g.bytes_written).sum();
        eprintln!(
            "blob {size} bytes, killed at partial {partial_len}, resumed fetch {fetched}: {gets:?}"
        );
        assert!(
            fetched < size,
            "resumed pull re-downloaded the whole blob ({fetched} bytes, partial had {partial_len}); GETs: {gets:?}"
        );
        assert_eq!(
            fetched,
            size - partial_len,
            "resumed pull should fetch exactly size - partial_len = {} - {partial_len}; GETs: {gets:?}",
            size
        );
        assert!(
            gets.iter().any(|g| g.status == 206),
            "resume should use a Range request (206): {gets:?}"
        );
        return;
    }
    panic!(
        "could not interrupt a pull: even a 3 GiB pull finished before reaching 25% was observed"
    );
}

// --- 5. one cache, two processes --------------------------------------------------------

#[test]
fn concurrent_pulls_sharing_a_cache_download_each_blob_once() {
    let reg = Registry::start();
    let files = vec![
        ("model.gguf".to_string(), random_bytes(96 * MIB as usize, 7)),
        (
            "tokenizer.json".to_string(),
            random_bytes(24 * MIB as usize, 8),
        ),
        ("config.json".to_string(), b"{\"a\":1}".to_vec()),
    ];
    let layers: Vec<(Option<&str>, Vec<u8>)> = files
        .iter()
        .map(|(t, b)| (Some(t.as_str()), b.clone()))
        .collect();
    push_raw_artifact(&reg.host(), "models/shared", "v1", &layers, &[]);
    let reference = reg.reference("models/shared:v1");

    let work = tmp();
    let cache = work.path().join("cache");
    let dest_a = work.path().join("a");
    let dest_b = work.path().join("b");
    let mark = reg.mark();
    let (ra, rb) = thread::scope(|s| {
        let a = s.spawn(|| pull(&reference, &dest_a, Some(&cache), &[]));
        let b = s.spawn(|| pull(&reference, &dest_b, Some(&cache), &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    ra.assert_ok("first of two concurrent pulls");
    rb.assert_ok("second of two concurrent pulls");
    assert_files_eq(&dest_a, &files);
    assert_files_eq(&dest_b, &files);

    for (title, bytes) in &files {
        let digest = sha256_bytes(bytes);
        let gets = reg.blob_downloads_since(mark, &digest);
        let served: u64 = gets.iter().map(|g| g.bytes_written).sum();
        assert_eq!(
            served,
            bytes.len() as u64,
            "{title}: registry should serve the blob exactly once to two processes sharing a cache; GETs: {gets:?}"
        );
        assert_eq!(
            gets.len(),
            1,
            "{title}: expected one GET with 200/206; GETs: {gets:?}"
        );
    }
}

// --- 6. offline re-pulls from the cache -------------------------------------------------

#[test]
fn digest_pull_is_served_from_cache_with_registry_stopped() {
    let mut reg = Registry::start();
    let (digest, files) = push_small_model(&reg, "models/tiny", "v1");
    let reference = reg.reference(&format!("models/tiny@{digest}"));
    let work = tmp();
    let cache = work.path().join("cache");
    pull(&reference, &work.path().join("d1"), Some(&cache), &[]).assert_ok("first digest pull");

    reg.stop();
    let d2 = work.path().join("d2");
    pull(&reference, &d2, Some(&cache), &[])
        .assert_ok("digest pull with registry stopped must come from the cache");
    assert_files_eq(&d2, &files);
}

#[test]
fn digest_pull_from_warm_cache_sends_no_registry_request() {
    let reg = Registry::start();
    let (digest, files) = push_small_model(&reg, "models/tiny", "v1");
    let reference = reg.reference(&format!("models/tiny@{digest}"));
    let work = tmp();
    let cache = work.path().join("cache");
    pull(&reference, &work.path().join("d1"), Some(&cache), &[]).assert_ok("first digest pull");

    let mark = reg.mark();
    let d2 = work.path().join("d2");
    pull(&reference, &d2, Some(&cache), &[]).assert_ok("warm digest pull");
    assert_files_eq(&d2, &files);
    let requests = reg.requests_since(mark);
    assert!(
        requests.is_empty(),
        "a warm digest pull must not contact the registry, saw {requests:?}"
    );
}

#[test]
fn tag_pull_if_not_present_uses_cached_tag_with_registry_stopped() {
    let mut reg = Registry::start();
    let (_, files) = push_small_model(&reg, "models/tiny", "v1");
    let reference = reg.reference("models/tiny:v1");
    let work = tmp();
    let cache = work.path().join("cache");
    pull(&reference, &work.path().join("d1"), Some(&cache), &[]).assert_ok("first tag pull");

    reg.stop();
    let d2 = work.path().join("d2");
    pull(
        &reference,
        &d2,
        Some(&cache),
        &["--pull-policy", "IfNotPresent"],
    )
    .assert_ok("IfNotPresent tag pull with registry stopped must use the cached tag");
    assert_files_eq(&d2, &files);
}

#[test]
fn pull_policy_never_on_empty_cache_fails_without_contacting_registry() {
    let reg = Registry::start();
    push_small_model(&reg, "models/tiny", "v1");
    let work = tmp();
    let dest = work.path().join("dest");
    let mark = reg.mark();
    let out = pull(
        &reg.reference("models/tiny:v1"),
        &dest,
        Some(&work.path().join("cache")),
        &["--pull-policy", "Never"],
    );
    assert!(
        !out.status.success(),
        "Never with an empty cache must fail; stdout:\n{}",
        out.stdout
    );
    let msg = out.stderr.to_lowercase();
    assert!(
        msg.contains("never") || msg.contains("cache"),
        "message should say the model is not in the cache and policy is Never:\n{}",
        out.stderr
    );
    assert!(list_dir(&dest).is_empty(), "dest has {:?}", walk(&dest));
    assert!(
        reg.requests_since(mark).is_empty(),
        "--pull-policy Never must not contact the registry: {:?}",
        reg.requests_since(mark)
    );
}

// --- 7. the dest stamp without a cache --------------------------------------------------

#[test]
fn second_pull_into_stamped_dest_skips_registry_without_cache() {
    let mut reg = Registry::start();
    let (_, files) = push_small_model(&reg, "models/tiny", "v1");
    let reference = reg.reference("models/tiny:v1");
    let work = tmp();
    let dest = work.path().join("dest");
    let first = pull(&reference, &dest, None, &["--json"]);
    first.assert_ok("first pull without --cache");
    assert_files_eq(&dest, &files);

    reg.stop();
    let second = pull(&reference, &dest, None, &["--json"]);
    second.assert_ok("re-pull into a stamped dest with the registry stopped");
    assert_eq!(
        second.json()["cache_hit"],
        serde_json::Value::Bool(true),
        "re-pull should report cache_hit: {}",
        second.stdout
    );
    assert_files_eq(&dest, &files);
}

#[test]
fn verify_repairs_a_modified_file_in_dest() {
    let reg = Registry::start();
    let (_, files) = push_small_model(&reg, "models/tiny", "v1");
    let reference = reg.reference("models/tiny:v1");
    let work = tmp();
    let dest = work.path().join("dest");
    pull(&reference, &dest, None, &[]).assert_ok("first pull");

    // Tamper with the weights in place (same size, one byte changed).
    let weights = dest.join("model.gguf");
    let mut bytes = fs::read(&weights).unwrap();
    bytes[1234] ^= 0x01;
    fs::write(&weights, bytes).unwrap();

    pull(&reference, &dest, None, &["--verify"]).assert_ok("pull --verify after tampering");
    assert_files_eq(&dest, &files);
}

// --- 9. hostile annotations -------------------------------------------------------------

#[test]
fn hostile_titles_are_refused_and_nothing_escapes_dest() {
    let reg = Registry::start();
    // Safety: the layer carrying "/etc/passwd" holds the current /etc/passwd bytes, so even
    // a broken implementation running as root cannot damage the machine; a write is still
    // detected through the file's inode and mtime.
    let passwd = Path::new("/etc/passwd");
    let passwd_bytes = fs::read(passwd).unwrap();
    let passwd_meta = fs::metadata(passwd).unwrap();

    for (i, title) in ["../x", "/etc/passwd", "a/../../b"].iter().enumerate() {
        let payload = if *title == "/etc/passwd" {
            passwd_bytes.clone()
        } else {
            b"pwned\n".to_vec()
        };
        let layers = vec![
            (Some("ok.txt"), b"benign\n".to_vec()),
            (Some(*title), payload),
        ];
        let tag = format!("v{i}");
        push_raw_artifact(&reg.host(), "models/hostile", &tag, &layers, &[]);

        for use_cache in [true, false] {
            let parent = tmp();
            let dest = parent.path().join("dest");
            let cache = parent.path().join("cache");
            let out = pull(
                &reg.reference(&format!("models/hostile:{tag}")),
                &dest,
                use_cache.then_some(cache.as_path()),
                &[],
            );
            assert!(
                !out.status.success(),
                "title {title:?} (cache: {use_cache}) must be refused; stdout:\n{}\nstderr:\n{}",
                out.stdout,
                out.stderr
            );
            assert!(
                out.stderr.contains(title),
                "stderr should quote the offending title {title:?}:\n{}",
                out.stderr
            );
            let mut top = list_dir(parent.path());
            top.retain(|n| n != "dest" && n != "cache");
            assert!(
                top.is_empty(),
                "title {title:?}: files written next to dest: {top:?}"
            );
            assert!(
                list_dir(&dest).is_empty(),
                "title {title:?}: dest should have no files, has {:?}",
                walk(&dest)
            );
            // A refused title never becomes a file anywhere, not even inside the cache.
            let leaked: Vec<_> = walk(&cache)
                .into_iter()
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name == "x" || name == "b" || name == "passwd"
                })
                .collect();
            assert!(
                leaked.is_empty(),
                "title {title:?}: hostile file materialised in the cache: {leaked:?}"
            );
            let now = fs::metadata(passwd).unwrap();
            assert_eq!(
                (now.ino(), now.mtime(), now.mtime_nsec()),
                (
                    passwd_meta.ino(),
                    passwd_meta.mtime(),
                    passwd_meta.mtime_nsec()
                ),
                "/etc/passwd was written by the pull of title {title:?}"
            );
            assert_eq!(fs::read(passwd).unwrap(), passwd_bytes);
        }
    }
}

// --- 10. exit codes ---------------------------------------------------------------------

#[test]
fn malformed_references_exit_2() {
    let work = tmp();
    for reference in [
        "UPPER/Case:tag",
        "127.0.0.1:5000/repo:",
        "repo@sha256:xyz",
        "",
    ] {
        let out = pull(reference, &work.path().join("dest"), None, &[]);
        out.assert_code(2, &format!("malformed reference {reference:?}"));
        assert!(
            !out.stderr.trim().is_empty(),
            "reference {reference:?}: exit 2 without a message"
        );
    }
}

#[test]
fn nonexistent_tag_exits_3_with_not_found() {
    let reg = Registry::start();
    push_small_model(&reg, "models/tiny", "v1");
    let work = tmp();
    for reference in ["models/tiny:nope", "models/missing:v1"] {
        let out = pull(
            &reg.reference(reference),
            &work.path().join("dest"),
            Some(&work.path().join("cache")),
            &[],
        );
        out.assert_code(3, &format!("pull of nonexistent {reference}"));
        assert!(
            out.stderr.to_lowercase().contains("not found"),
            "{reference}: message should say not found:\n{}",
            out.stderr
        );
    }
}

#[test]
fn registry_down_exits_4() {
    let port = free_port();
    let work = tmp();
    let out = pull(
        &format!("127.0.0.1:{port}/models/tiny:v1"),
        &work.path().join("dest"),
        Some(&work.path().join("cache")),
        &[],
    );
    out.assert_code(4, "pull from a closed port");
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "message should name the registry:\n{}",
        out.stderr
    );
}

/// Only the `--check-args` flag skips the work: no environment variable in a pod can turn a
/// pull into a no-op that exits 0.
#[test]
fn only_the_check_args_flag_skips_the_pull() {
    let port = free_port();
    let work = tmp();
    let reference = format!("127.0.0.1:{port}/models/tiny:v1");
    let dest = work.path().join("dest");
    let mut cmd = pull_cmd(&reference, &dest, None, &[]);
    cmd.env("TUGBOAT_CHECK_ARGS", "1");
    run(&mut cmd, Duration::from_secs(120)).assert_code(4, "the env var is ignored");
    pull(&reference, &dest, None, &["--check-args"]).assert_ok("--check-args");
    pull(&reference, &dest, None, &["--check-args", "--no-such-flag"])
        .assert_code(2, "--check-args still parses");
}

// --- 11. --json -------------------------------------------------------------------------

#[test]
fn json_report_counts_fetched_and_reused_bytes() {
    let reg = Registry::start();
    let (digest, files) = push_small_model(&reg, "models/tiny", "v1");
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let reference = reg.reference("models/tiny:v1");
    let work = tmp();
    let cache = work.path().join("cache");

    let cold_dest = work.path().join("cold");
    let cold = pull(&reference, &cold_dest, Some(&cache), &["--json"]);
    cold.assert_ok("cold pull --json");
    let report = cold.json();
    assert_eq!(report["digest"], digest.as_str(), "report: {report}");
    assert!(
        report["reference"]
            .as_str()
            .is_some_and(|r| r.contains("models/tiny")),
        "report.reference: {report}"
    );
    assert!(report["dest"].is_string(), "report.dest: {report}");
    assert!(report["seconds"].is_number(), "report.seconds: {report}");
    assert_eq!(report["cache_hit"], false, "report: {report}");
    assert_eq!(report["bytes_fetched"], total, "cold pull: {report}");
    let listed = report["files"]
        .as_array()
        .expect("report.files is an array");
    assert_eq!(listed.len(), files.len(), "report.files: {report}");
    for (title, bytes) in &files {
        let entry = listed
            .iter()
            .find(|f| {
                f["path"]
                    .as_str()
                    .is_some_and(|p| p == title || p.ends_with(&format!("/{title}")))
            })
            .unwrap_or_else(|| panic!("{title} missing from report.files: {report}"));
        assert_eq!(entry["size"], bytes.len() as u64, "{title}: {entry}");
        assert_eq!(
            entry["digest"],
            sha256_bytes(bytes).as_str(),
            "{title}: {entry}"
        );
    }

    let warm = pull(
        &reference,
        &work.path().join("warm"),
        Some(&cache),
        &["--json"],
    );
    warm.assert_ok("warm pull --json");
    let report = warm.json();
    assert_eq!(report["bytes_fetched"], 0, "warm pull: {report}");
    assert_eq!(report["bytes_reused"], total, "warm pull: {report}");
    assert_eq!(report["cache_hit"], true, "warm pull: {report}");
    assert_eq!(report["digest"], digest.as_str(), "report: {report}");
}

// --- 12. cache ls -----------------------------------------------------------------------

#[test]
fn cache_ls_lists_pulled_model() {
    let reg = Registry::start();
    let (digest, _) = push_small_model(&reg, "models/tiny", "v1");
    let work = tmp();
    let cache = work.path().join("cache");
    pull(
        &reg.reference("models/tiny:v1"),
        &work.path().join("dest"),
        Some(&cache),
        &[],
    )
    .assert_ok("pull");

    let mut cmd = tugboat();
    cmd.args(["cache", "ls", "--cache"]).arg(&cache);
    let out = run(&mut cmd, TIMEOUT);
    out.assert_ok("cache ls");
    assert!(
        out.stdout.contains(&hex(&digest)[..12]),
        "cache ls should show (at least 12 hex digits of) the manifest digest {digest}:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("models/tiny"),
        "cache ls should show the reference:\n{}",
        out.stdout
    );

    let mut cmd = tugboat();
    cmd.args(["cache", "ls", "--json", "--cache"]).arg(&cache);
    let out = run(&mut cmd, TIMEOUT);
    out.assert_ok("cache ls --json");
    let text = out.json().to_string();
    assert!(
        text.contains(hex(&digest)),
        "cache ls --json should include {digest}: {text}"
    );
}

// --- dest files are the consumer's own ---------------------------------------------------

/// A consumer running as root that makes a `--dest` file writable and overwrites it changes
/// its own copy only: the cache's blob, other destinations and `cache verify` are untouched.
/// With `--link hard` (opt-in) the file is the cache's inode, which is the documented risk.
#[test]
fn a_root_write_in_dest_leaves_the_cache_untouched() {
    if !nix::unistd::geteuid().is_root() {
        skip("the dest-isolation test writes as root (root ignores file modes)");
        return;
    }
    let reg = Registry::start();
    let (_, files) = push_small_model(&reg, "models/iso", "v1");
    let work = tmp();
    let cache = work.path().join("cache");
    let (dest, other) = (work.path().join("dest"), work.path().join("other"));
    let reference = reg.reference("models/iso:v1");
    pull(&reference, &dest, Some(&cache), &[]).assert_ok("pull");
    pull(&reference, &other, Some(&cache), &[]).assert_ok("second pull");
    let weights = hex(&sha256_bytes(&files[0].1)).to_string();
    let blob = cache.join("blobs/sha256").join(&weights);

    let file = dest.join("model.gguf");
    assert_ne!(
        fs::metadata(&file).unwrap().ino(),
        fs::metadata(&blob).unwrap().ino(),
        "a dest file must not be the cache's inode"
    );
    // What a root consumer can do to any file it can see.
    let mut perms = fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&file, perms).unwrap();
    fs::write(&file, b"tampered").unwrap();

    assert_eq!(
        sha256_file(&blob),
        format!("sha256:{weights}"),
        "cache blob changed"
    );
    assert_files_eq(&other, &files);
    let mut verify = tugboat();
    verify.args(["cache", "verify", "--cache"]).arg(&cache);
    run(&mut verify, Duration::from_secs(60)).assert_ok("cache verify after the write");

    // `--link hard` shares the cache's inode (fast, for consumers that cannot write it).
    let hard = work.path().join("hard");
    pull(&reference, &hard, Some(&cache), &["--link", "hard"]).assert_ok("pull --link hard");
    assert_eq!(
        fs::metadata(hard.join("model.gguf")).unwrap().ino(),
        fs::metadata(&blob).unwrap().ino()
    );
}

/// One failure, one exit code, whichever command meets it: a repository that does not exist
/// (3) and a registry that cannot be reached (4) read the same in pull, inspect, warm and push.
#[test]
fn each_failure_class_has_one_exit_code_in_every_command() {
    let reg = Registry::start();
    let work = tmp();
    let model = work.path().join("model");
    fs::create_dir_all(&model).unwrap();
    fs::write(model.join("config.json"), b"{}").unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    for (reference, code, class) in [
        (reg.reference("nowhere/model:v1"), 3, "not found"),
        (format!("{closed}/models/m:v1"), 4, "network"),
    ] {
        let cache = work.path().join("cache");
        let dest = work.path().join("dest");
        let warm_list = work.path().join("warm.yaml");
        fs::write(&warm_list, format!("models:\n  - reference: {reference}\n")).unwrap();
        let commands: Vec<(&str, Vec<String>)> = vec![
            (
                "pull",
                vec![
                    "pull".into(),
                    reference.clone(),
                    "--dest".into(),
                    dest.display().to_string(),
                ],
            ),
            ("inspect", vec!["inspect".into(), reference.clone()]),
            (
                "warm",
                vec![
                    "warm".into(),
                    warm_list.display().to_string(),
                    "--cache".into(),
                    cache.display().to_string(),
                ],
            ),
        ];
        for (name, args) in commands {
            let mut cmd = tugboat();
            cmd.args(&args).args(["--plain-http", "--retries", "2"]);
            run(&mut cmd, Duration::from_secs(120)).assert_code(code, &format!("{name}: {class}"));
        }
        if class == "network" {
            let mut cmd = tugboat();
            cmd.arg("push")
                .arg(&model)
                .arg(&reference)
                .args(["--plain-http", "--retries", "2"]);
            run(&mut cmd, Duration::from_secs(120)).assert_code(code, &format!("push: {class}"));
        }
    }
}

//! Archive layers unpacked while they download. A pull SIGKILLed half way through a 1 GiB
//! tar layer keeps what it downloaded (the partial in `ingest/`): the re-run unpacks those
//! bytes from disk and fetches only the rest with Range, counted at the registry's log; no
//! half-built snapshot is ever visible, and once the snapshot is published neither the tar
//! blob nor the partial stays in the cache. Both ways a layer downloads are killed: parallel
//! ranged chunks (the default for a layer this size; the sidecar `ingest/<hex>.chunks` says
//! which chunks are complete) and one stream (`--streams-per-blob 1`).
//!
//! Every streamed path in small chunks, file for file and with the recorded file digests
//! right (a one-file tar laid out as its file, plain and compressed tars unpacked from the
//! partial); hostile and damaged archives refused with nothing left, on each path.

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;

use artifacts::{gzip, push_artifact, tar, Entry, Layer};
use common::*;
use std::fs;
use std::path::Path;

const GIB: u64 = 1 << 30;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-stream-")
        .tempdir()
        .unwrap()
}

/// `tugboat cache ARGS --cache CACHE`.
fn run_cmd(args: &[&str], cache: &Path) -> Run {
    run(
        tugboat().args(args).arg("--cache").arg(cache),
        std::time::Duration::from_secs(120),
    )
}

/// The chunks a chunked partial's sidecar records as complete, in bytes.
fn complete_chunk_bytes(sidecar: &std::path::Path) -> Option<u64> {
    let record: serde_json::Value = serde_json::from_slice(&fs::read(sidecar).ok()?).ok()?;
    let (size, chunk) = (record["size"].as_u64()?, record["chunk_size"].as_u64()?);
    let done = record["done"].as_array()?;
    Some(
        done.iter()
            .filter_map(|i| i.as_u64())
            .map(|i| (size - i * chunk).min(chunk))
            .sum(),
    )
}

#[test]
fn killed_half_way_through_a_one_gib_tar_layer_fetched_in_chunks() {
    killed_half_way_resumes_where_it_stopped(&[]);
}

#[test]
fn killed_half_way_through_a_one_gib_tar_layer_in_one_stream() {
    killed_half_way_resumes_where_it_stopped(&["--streams-per-blob", "1"]);
}

/// The two 1 GiB kills run one after the other: each needs about 4 GiB of disk at its peak
/// (the registry's blob, the partial, the tree and the destination).
static ONE_GIB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn killed_half_way_resumes_where_it_stopped(extra: &[&str]) {
    let _one_at_a_time = ONE_GIB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let chunked = extra.is_empty();
    let reg = Registry::start();
    let src = tmp();
    let shard = src.path().join("shard");
    fs::create_dir_all(&shard).unwrap();
    let model = shard.join("model.safetensors");
    write_random_file(&model, GIB, 91);
    let config = src.path().join("config.json");
    fs::write(&config, br#"{"descriptor":{"name":"big"},"config":{}}"#).unwrap();
    // modctl's layout, pushed by modelpack-client: one uncompressed tar holding one file.
    let manifest_digest = modelpack_push(
        &reg.host(),
        "big/tar:v1",
        &config,
        &[(&shard, "application/vnd.cncf.model.weight.v1.tar")],
    );
    // The source's digest is all the test needs of it once pushed: its gigabyte goes.
    let model_sha = sha256_file(&model);
    drop(src);
    let (_, manifest) = get_manifest(&reg.host(), None, "big/tar", "v1");
    let (_, digest, size) = manifest_layers(&manifest).remove(0);
    let hex = digest.trim_start_matches("sha256:").to_string();

    let work = tmp();
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    let reference = reg.reference("big/tar:v1");
    let partial = cache.join("ingest").join(format!("{hex}.partial"));
    let sidecar = cache.join("ingest").join(format!("{hex}.chunks"));
    // What the partial holds for a resume: its complete chunks, or a one-stream prefix.
    let kept_now = || {
        if chunked {
            complete_chunk_bytes(&sidecar)
        } else {
            fs::metadata(&partial).ok().map(|m| m.len())
        }
    };
    let mut cmd = pull_cmd(&reference, &dest, Some(&cache), extra);
    let killed = kill_when(&mut cmd, "half the tar layer downloaded", &cache, || {
        kept_now().filter(|&kept| kept >= size / 2)
    });
    assert!(killed.is_some(), "the pull finished before half of 1 GiB");

    // Nothing half-built is visible: no snapshot, nothing in the destination.
    let manifest_hex = manifest_digest.trim_start_matches("sha256:");
    assert!(
        !cache.join("snapshots").join(manifest_hex).exists(),
        "a snapshot was published before its layer verified"
    );
    assert!(!dest.join("shard/model.safetensors").exists());
    assert!(partial.exists(), "the partial survives");
    assert_eq!(sidecar.exists(), chunked, "a sidecar exactly for chunks");
    let kept = kept_now().expect("the partial's record survives");
    assert!(kept > 0 && kept < size, "kept {kept} of {size} bytes");

    let mark = reg.mark();
    let run = pull(
        &reference,
        &dest,
        Some(&cache),
        &[extra, &["--json"]].concat(),
    );
    run.assert_ok("re-run after SIGKILL");
    assert_eq!(
        sha256_file(&dest.join("shard/model.safetensors")),
        model_sha,
        "the unpacked file is right"
    );
    let refetched = reg.blob_bytes_written_since(mark, &digest);
    let requests = reg.blob_downloads_since(mark, &digest).len();
    eprintln!(
        "killed with {kept} of {size} bytes kept; the re-run fetched {refetched} bytes in \
         {requests} requests"
    );
    assert_eq!(
        refetched,
        size - kept,
        "the re-run fetches exactly the bytes the partial did not hold"
    );
    assert_eq!(run.json()["bytes_fetched"], refetched, "and reports them");
    if chunked {
        assert!(requests > 1, "the rest comes in parallel chunks");
    } else {
        assert_eq!(requests, 1, "the rest comes in one ranged request");
    }
    // One copy: the partial is gone and no tar blob was stored.
    assert!(
        !partial.exists() && !sidecar.exists(),
        "the partial is deleted once the snapshot is published"
    );
    assert!(!cache.join("blobs/sha256").join(&hex).exists());
}

const MIB: usize = 1 << 20;
const TAR: &str = "application/vnd.cncf.model.weight.v1.tar";
const TAR_GZIP: &str = "application/vnd.cncf.model.weight.v1.tar+gzip";

/// Small layers fetched in parallel 64 KiB chunks, so every streamed path runs: a one-file
/// tar laid out as its file, a plain tar unpacked from the partial (the extractor takes the
/// layer digest), a compressed one (the hasher thread takes it).
const CHUNKED: &[&str] = &["--chunk-size", "64KiB", "--streams-per-blob", "4"];

fn push_modelpack_layers(reg: &Registry, repo: &str, layers: &[Layer]) -> String {
    let config =
        br#"{"descriptor":{"name":"m"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}"#;
    push_artifact(
        &reg.host(),
        repo,
        "v1",
        Some("application/vnd.cncf.model.manifest.v1+json"),
        ("application/vnd.cncf.model.config.v1+json", config),
        layers,
        &[],
    )
}

/// Pulls `REPO:v1` into a fresh `dest` and `cache` (the returned folder's), with `extra`.
fn pull_fresh(reg: &Registry, repo: &str, extra: &[&str]) -> (Run, tempfile::TempDir) {
    let work = tmp();
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    let run = pull(
        &reg.reference(&format!("{repo}:v1")),
        &dest,
        Some(&cache),
        extra,
    );
    (run, work)
}

/// Nothing of a refused or failed pull stays: no destination files, no snapshot, nothing in
/// `ingest/` or `blobs/` but locks.
fn assert_nothing_left(dest: &Path, cache: &Path) {
    assert!(list_dir(dest).is_empty(), "dest has {:?}", walk(dest));
    for sub in ["snapshots", "ingest", "blobs/sha256"] {
        let kept: Vec<_> = list_dir(&cache.join(sub))
            .into_iter()
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(kept.is_empty(), "{sub} kept {kept:?}");
    }
}

#[test]
fn archives_fetched_in_chunks_unpack_file_for_file_and_verify_from_the_snapshot() {
    let reg = Registry::start();
    let big = random_bytes(3 * MIB + 17, 5);
    let other = random_bytes(MIB, 6);
    let small = b"tokenizer".to_vec();
    let layers = [
        // modctl's layout: one file in its own tar (after its folder).
        Layer::new(
            TAR,
            tar(&[
                Entry::Dir("shard/"),
                Entry::File("shard/model.safetensors", &big),
            ]),
            &[("org.cncf.model.filepath", "shard")],
        ),
        // One big file, then a small one inside what would be the tar's padding.
        Layer::new(
            TAR,
            tar(&[
                Entry::File("pair/a.bin", &other),
                Entry::File("pair/b.json", &small),
            ]),
            &[("org.cncf.model.filepath", "pair")],
        ),
        // Many files in one plain tar.
        Layer::new(
            TAR,
            tar(&[
                Entry::Dir("dir/"),
                Entry::File("dir/x.bin", &other),
                Entry::Symlink("dir/link", "x.bin"),
                Entry::File("dir/y.bin", &big),
            ]),
            &[("org.cncf.model.filepath", "dir")],
        ),
        Layer::new(
            TAR_GZIP,
            gzip(&tar(&[Entry::File("gz/z.bin", &big)])),
            &[("org.cncf.model.filepath", "gz")],
        ),
    ];
    let expected: Vec<(&str, &[u8])> = vec![
        ("shard/model.safetensors", &big),
        ("pair/a.bin", &other),
        ("pair/b.json", &small),
        ("dir/x.bin", &other),
        ("dir/y.bin", &big),
        ("gz/z.bin", &big),
    ];
    push_modelpack_layers(&reg, "chunked/tars", &layers);
    let (run, work) = pull_fresh(&reg, "chunked/tars", &[CHUNKED, &["--json"]].concat());
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    run.assert_ok("tar layers in 64 KiB chunks");
    for (path, bytes) in &expected {
        assert_eq!(fs::read(dest.join(path)).unwrap(), *bytes, "{path}");
    }
    assert_eq!(
        fs::read_link(dest.join("dir/link")).unwrap().to_str(),
        Some("x.bin")
    );
    // Every recorded file digest is the sha256 of its bytes.
    let files = run.json()["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), expected.len(), "{files:?}");
    for file in &files {
        let path = file["path"].as_str().unwrap();
        let bytes = expected.iter().find(|(p, _)| *p == path).unwrap().1;
        assert_eq!(
            file["digest"].as_str().unwrap(),
            sha256_bytes(bytes),
            "{path}"
        );
        assert_eq!(file["size"].as_u64().unwrap(), bytes.len() as u64, "{path}");
    }
    // One copy of the bytes: no partial, no tar blob; `cache verify` re-hashes the files.
    let ingest: Vec<_> = list_dir(&cache.join("ingest"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(ingest.is_empty(), "ingest kept {ingest:?}");
    assert!(list_dir(&cache.join("blobs/sha256")).is_empty());
    let verify = run_cmd(&["cache", "verify", "--json"], &cache);
    verify.assert_ok("cache verify");
    let report = verify.json();
    assert_eq!(report["files_checked"], expected.len(), "{report}");
    // A changed byte in a snapshot file is found and the model dropped for a re-pull.
    let snapshot = cache.join("snapshots").join(
        run.json()["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let damaged = snapshot.join("shard/model.safetensors");
    let mut perms = fs::metadata(&damaged).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&damaged, perms).unwrap();
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[MIB] ^= 1;
    fs::write(&damaged, bytes).unwrap();
    run_cmd(&["cache", "verify"], &cache).assert_code(5, "a damaged unpacked file");
    assert!(!snapshot.exists(), "the damaged model is dropped");
}

#[test]
fn hostile_and_damaged_archives_fetched_in_chunks_leave_nothing() {
    let reg = Registry::start();
    let big = random_bytes(MIB, 8);
    let cases: Vec<(&str, Layer, &str)> = vec![
        // The one-file path: its one header is checked like any entry.
        (
            "evil/onefile",
            Layer::new(TAR, tar(&[Entry::File("../escaped", &big)]), &[]),
            "'..'",
        ),
        (
            "evil/abs",
            Layer::new(TAR, tar(&[Entry::File("/etc/evil", &big)]), &[]),
            "absolute",
        ),
        // The plain-tar extractor, after a big file has been written.
        (
            "evil/symlink",
            Layer::new(
                TAR,
                tar(&[
                    Entry::File("ok.bin", &big),
                    Entry::Symlink("link", "../../../etc/passwd"),
                    Entry::File("more.bin", &big),
                ]),
                &[],
            ),
            "leads out of the tree",
        ),
        (
            "evil/device",
            Layer::new(
                TAR_GZIP,
                gzip(&tar(&[
                    Entry::File("ok.bin", &big),
                    Entry::CharDevice("dev"),
                ])),
                &[],
            ),
            "device nodes",
        ),
    ];
    for (repo, layer, needle) in cases {
        push_modelpack_layers(&reg, repo, &[layer]);
        let (run, work) = pull_fresh(&reg, repo, CHUNKED);
        let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
        run.assert_code(2, repo);
        assert!(run.stderr.contains(needle), "{repo}: {}", run.stderr);
        assert_nothing_left(&dest, &cache);
    }
    // Damaged in registry storage: the one-file path and the extractor's own digest both
    // refuse it as an integrity failure.
    for (repo, entries) in [
        ("damaged/onefile", vec![Entry::File("w.bin", &big)]),
        (
            "damaged/twofiles",
            vec![Entry::File("w.bin", &big), Entry::File("v.bin", &big)],
        ),
    ] {
        let layer = Layer::new(TAR, tar(&entries), &[]);
        let digest = sha256_bytes(&layer.bytes);
        push_modelpack_layers(&reg, repo, &[layer]);
        let data = reg.blob_data_path(&digest);
        let mut bytes = fs::read(&data).unwrap();
        bytes[2 * 512 + MIB / 2] ^= 0xff;
        fs::write(&data, bytes).unwrap();
        let (run, work) = pull_fresh(&reg, repo, CHUNKED);
        let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
        run.assert_code(5, repo);
        assert!(
            run.stderr.contains(digest.trim_start_matches("sha256:")),
            "{repo}: {}",
            run.stderr
        );
        assert_nothing_left(&dest, &cache);
    }
}

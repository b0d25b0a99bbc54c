//! Archive layers unpacked while they download. A pull SIGKILLed half way through a 1 GiB
//! tar layer keeps what it downloaded (the partial in `ingest/`): the re-run unpacks that
//! prefix from disk and fetches only the rest with Range, counted at the registry's log; no
//! half-built snapshot is ever visible, and once the snapshot is published neither the tar
//! blob nor the partial stays in the cache.

mod common;

use common::*;
use std::fs;

const GIB: u64 = 1 << 30;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-stream-")
        .tempdir()
        .unwrap()
}

#[test]
fn killed_half_way_through_a_one_gib_tar_layer_resumes_where_it_stopped() {
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
    let (_, manifest) = get_manifest(&reg.host(), None, "big/tar", "v1");
    let (_, digest, size) = manifest_layers(&manifest).remove(0);
    let hex = digest.trim_start_matches("sha256:").to_string();

    let work = tmp();
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    let reference = reg.reference("big/tar:v1");
    let partial = cache.join("ingest").join(format!("{hex}.partial"));
    let mut cmd = pull_cmd(&reference, &dest, Some(&cache), &[]);
    let killed = kill_when(&mut cmd, "half the tar layer downloaded", &cache, || {
        let len = fs::metadata(&partial).ok()?.len();
        (len >= size / 2).then_some(len)
    });
    assert!(killed.is_some(), "the pull finished before half of 1 GiB");

    // Nothing half-built is visible: no snapshot, nothing in the destination.
    let manifest_hex = manifest_digest.trim_start_matches("sha256:");
    assert!(
        !cache.join("snapshots").join(manifest_hex).exists(),
        "a snapshot was published before its layer verified"
    );
    assert!(!dest.join("shard/model.safetensors").exists());
    let kept = fs::metadata(&partial).expect("the partial survives").len();
    assert!(kept > 0 && kept < size, "kept {kept} of {size} bytes");

    let mark = reg.mark();
    pull(&reference, &dest, Some(&cache), &["--json"]).assert_ok("re-run after SIGKILL");
    assert_eq!(
        sha256_file(&dest.join("shard/model.safetensors")),
        sha256_file(&model),
        "the unpacked file is right"
    );
    let refetched = reg.blob_bytes_written_since(mark, &digest);
    eprintln!(
        "killed with {kept} of {size} bytes kept; the re-run fetched {refetched} bytes \
         ({} requests)",
        reg.blob_downloads_since(mark, &digest).len()
    );
    assert_eq!(
        refetched,
        size - kept,
        "the re-run fetches exactly the bytes the partial did not hold"
    );
    // One copy: the partial is gone and no tar blob was stored.
    assert!(
        !partial.exists(),
        "the partial is deleted once the snapshot is published"
    );
    assert!(!cache.join("blobs/sha256").join(&hex).exists());
}
